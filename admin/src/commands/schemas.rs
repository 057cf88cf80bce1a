//! `sava-admin schemas`: subjects of the schema registry and their versions.
//!
//! The registry speaks the Danube schema API, which finds a version by
//! schema id: `get --version` looks the subject's id up first.

use anyhow::{Result, bail};
use sava_proto::ErrorKind;
use sava_proto::danube_schema as registry;

use super::{read_file, show};
use crate::api::{Api, Reply};
use crate::cli::{OutputFormat, SchemaKind, SchemasCommand};
use crate::output::{Column, Fields, Table, truncate};
use crate::time::format_time;
use crate::views::{
    CompatibilityModeView, CompatibilityView, RegisteredView, SchemaView, VersionView,
};

/// Who `register` says created a version.
const CREATED_BY: &str = "sava-admin";

pub(super) async fn run(api: &Api, output: OutputFormat, command: SchemasCommand) -> Result<()> {
    let mut registry = api.registry();
    match command {
        SchemasCommand::Register {
            subject,
            kind,
            file,
        } => {
            let request = registry::RegisterSchemaRequest {
                subject: subject.clone(),
                schema_type: kind.registry_name().into(),
                schema_definition: definition(kind, file.as_deref())?.into(),
                description: String::new(),
                created_by: CREATED_BY.into(),
                tags: Vec::new(),
            };
            let reply = registry.register_schema(request).await.reply(api)?;
            let registered = RegisteredView {
                subject,
                schema_id: reply.schema_id,
                version: reply.version,
                is_new_version: reply.is_new_version,
                fingerprint: reply.fingerprint,
            };
            show(output, &registered, print_registered)
        }
        SchemasCommand::Get { subject, version } => {
            let schema = get(api, &subject, version).await?;
            show(output, &schema, print_schema)
        }
        SchemasCommand::Versions { subject } => {
            let request = registry::ListVersionsRequest { subject };
            let reply = registry.list_versions(request).await.reply(api)?;
            let versions: Vec<VersionView> = reply.versions.into_iter().map(Into::into).collect();
            show(output, versions.as_slice(), print_versions)
        }
        SchemasCommand::Check {
            subject,
            kind,
            file,
        } => {
            let request = registry::CheckCompatibilityRequest {
                subject: subject.clone(),
                new_schema_definition: definition(kind, file.as_deref())?.into(),
                schema_type: kind.registry_name().into(),
                compatibility_mode: None,
            };
            let reply = registry.check_compatibility(request).await.reply(api)?;
            let check = CompatibilityView {
                subject,
                compatible: reply.is_compatible,
                errors: reply.errors,
            };
            show(output, &check, print_check)?;
            if !check.compatible {
                bail!(
                    "the schema is not compatible with the latest version of subject {}",
                    check.subject
                );
            }
            Ok(())
        }
        SchemasCommand::SetCompatibility { subject, mode } => {
            let request = registry::SetCompatibilityModeRequest {
                subject: subject.clone(),
                compatibility_mode: mode.registry_name().into(),
            };
            let reply = registry.set_compatibility_mode(request).await.reply(api)?;
            let view = CompatibilityModeView {
                subject,
                compatibility_mode: mode.registry_name().into(),
                message: reply.message,
            };
            show(output, &view, |view| println!("{}", view.message))
        }
    }
}

/// The definition to send: the file's contents, or none for the types that
/// need none.
fn definition(kind: SchemaKind, file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    match file {
        Some(path) => read_file(path),
        None if kind == SchemaKind::Json => bail!("--type json needs --file with a JSON Schema"),
        None => Ok(Vec::new()),
    }
}

/// The subject's latest schema, or its version `version`.
async fn get(api: &Api, subject: &str, version: Option<u32>) -> Result<SchemaView> {
    let mut registry = api.registry();
    let latest_request = registry::GetLatestSchemaRequest {
        subject: subject.into(),
    };
    let latest = registry
        .get_latest_schema(latest_request)
        .await
        .reply(api)?;
    let Some(version) = version.filter(|version| *version != latest.version) else {
        return Ok(latest.into());
    };

    let request = registry::GetSchemaRequest {
        schema_id: latest.schema_id,
        version: Some(version),
    };
    match registry.get_schema(request).await {
        Ok(reply) => Ok(reply.into_inner().into()),
        // The broker names the schema id; the subject is what the user typed.
        Err(status) if ErrorKind::from_code(status.code()) == ErrorKind::NotFound => {
            bail!("schema subject {subject} has no version {version}")
        }
        Err(status) => Err(api.error(status)),
    }
}

fn print_registered(registered: &RegisteredView) {
    if registered.is_new_version {
        println!(
            "registered version {} of subject {} (schema id {})",
            registered.version, registered.subject, registered.schema_id
        );
    } else {
        println!(
            "subject {} already has this schema as version {} (schema id {})",
            registered.subject, registered.version, registered.schema_id
        );
    }
}

fn print_schema(schema: &SchemaView) {
    Fields::new()
        .add("subject", &schema.subject)
        .add("version", schema.version.to_string())
        .add("schema id", schema.schema_id.to_string())
        .add("type", &schema.schema_type)
        .add("compatibility", &schema.compatibility_mode)
        .add("fingerprint", &schema.fingerprint)
        .add("created", format_time(schema.created_at_ms))
        .add("created by", &schema.created_by)
        .add("description", &schema.description)
        .add("tags", schema.tags.join(", "))
        .print();

    if !schema.definition.is_empty() {
        // JSON definitions are re-indented; anything else prints as stored.
        let definition = serde_json::from_str::<serde_json::Value>(&schema.definition)
            .ok()
            .and_then(|value| serde_json::to_string_pretty(&value).ok())
            .unwrap_or_else(|| schema.definition.clone());
        println!("\nDEFINITION\n{definition}");
    }
}

fn print_versions(versions: &[VersionView]) {
    // Descriptions are rarely set; their column only takes room when one is.
    let described = versions
        .iter()
        .any(|version| !version.description.is_empty());
    let mut columns = vec![
        ("VERSION", Column::Number),
        ("SCHEMA ID", Column::Number),
        ("CREATED", Column::Word),
        ("CREATED BY", Column::Text),
        ("FINGERPRINT", Column::Text),
    ];
    if described {
        columns.push(("DESCRIPTION", Column::Text));
    }

    let mut table = Table::new(&columns);
    for version in versions {
        let mut row = vec![
            version.version.to_string(),
            version.schema_id.to_string(),
            format_time(version.created_at_ms),
            version.created_by.clone(),
            truncate(&version.fingerprint, 16),
        ];
        if described {
            row.push(version.description.clone());
        }
        table.row(row);
    }
    table.print();
}

fn print_check(check: &CompatibilityView) {
    if check.compatible {
        println!("compatible with subject {}", check.subject);
        return;
    }
    println!("not compatible with subject {}:", check.subject);
    for error in &check.errors {
        println!("- {error}");
    }
}

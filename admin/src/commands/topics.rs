//! `sava-admin topics`: create, delete, describe, stats, unload and
//! policies.

use std::path::PathBuf;

use anyhow::Result;
use sava_proto::sava::v1 as pb;

use super::{print_deleted, read_file, show, subscriptions};
use crate::api::{Api, Reply};
use crate::cli::{OutputFormat, SchemaKind, TopicsCommand};
use crate::output::{Column, Fields, Table, format_bytes, format_rate, yes_no};
use crate::time::{age_since, format_time};
use crate::views::{
    Changed, ClientView, DeletedView, StatsView, TopicPoliciesView, TopicView, UnloadedView,
};

pub(super) async fn run(api: &Api, output: OutputFormat, command: TopicsCommand) -> Result<()> {
    let mut admin = api.admin();
    match command {
        TopicsCommand::List { namespace } => {
            let request = pb::ListTopicsRequest {
                namespace: namespace.unwrap_or_default(),
            };
            let reply = admin.list_topics(request).await.reply(api)?;
            let topics: Vec<TopicView> = reply.topics.into_iter().map(Into::into).collect();
            show(output, topics.as_slice(), print_list)
        }
        TopicsCommand::Create {
            topic,
            partitions,
            reliable,
            schema,
            schema_file,
        } => {
            let request = create_request(topic, partitions, reliable, schema, schema_file)?;
            let mut info = admin.create_topic(request).await.reply(api)?;
            let note = std::mem::take(&mut info.note);
            let created = Changed::new(TopicView::from(info), note);
            show(output, &created, print_created)
        }
        TopicsCommand::Delete { topic, force } => {
            let request = pb::DeleteTopicRequest { name: topic, force };
            let deleted = admin.delete_topic(request).await.reply(api)?;
            show(output, &DeletedView::from(deleted), print_deleted)
        }
        TopicsCommand::Describe { topic } => {
            let request = pb::DescribeTopicRequest { name: topic };
            let info = admin.describe_topic(request).await.reply(api)?;
            show(output, &TopicView::from(info), print_one)
        }
        TopicsCommand::Stats { topic } => {
            let request = pb::TopicStatsRequest { name: topic };
            let stats = admin.topic_stats(request).await.reply(api)?;
            show(output, &StatsView::from(stats), print_stats)
        }
        TopicsCommand::Policies { topic } => {
            let request = pb::GetTopicPoliciesRequest { topic };
            let reply = admin.get_topic_policies(request).await.reply(api)?;
            show(output, &TopicPoliciesView::from(reply), print_policies)
        }
        TopicsCommand::SetPolicy { topic, key, value } => {
            let request = pb::SetTopicPolicyRequest { topic, key, value };
            let reply = admin.set_topic_policy(request).await.reply(api)?;
            show(output, &TopicPoliciesView::from(reply), print_policies)
        }
        TopicsCommand::Unload { topic } => {
            let request = pb::UnloadTopicRequest {
                name: topic.clone(),
            };
            let reply = admin.unload_topic(request).await.reply(api)?;
            let unloaded = UnloadedView {
                topic,
                unloaded: reply.unloaded,
                note: (!reply.note.is_empty()).then_some(reply.note),
            };
            show(output, &unloaded, |unloaded| match &unloaded.note {
                Some(note) => println!("{note}"),
                None => println!("unloaded topic {}", unloaded.topic),
            })
        }
    }
}

/// The request `topics create` sends; the schema file is read here.
fn create_request(
    name: String,
    partitions: u32,
    reliable: bool,
    schema: Option<SchemaKind>,
    schema_file: Option<PathBuf>,
) -> Result<pb::CreateTopicRequest> {
    let definition = match &schema_file {
        Some(path) => read_file(path)?,
        None => Vec::new(),
    };
    let dispatch_mode = match reliable {
        true => pb::DispatchMode::Reliable,
        false => pb::DispatchMode::NonReliable,
    };
    Ok(pb::CreateTopicRequest {
        name,
        partitions,
        dispatch_mode: dispatch_mode as i32,
        schema: schema.map(|kind| wire_schema(kind, definition)),
    })
}

fn wire_schema(kind: SchemaKind, definition: Vec<u8>) -> pb::Schema {
    let schema_type = match kind {
        SchemaKind::Bytes => pb::SchemaType::Bytes,
        SchemaKind::String => pb::SchemaType::String,
        SchemaKind::Int64 => pb::SchemaType::Int64,
        SchemaKind::Json => pb::SchemaType::Json,
    };
    pb::Schema {
        schema_type: schema_type as i32,
        definition: definition.into(),
    }
}

/// Prints topics as a table; shared with `namespaces topics`.
pub(super) fn print_list(topics: &[TopicView]) {
    let mut table = Table::new(&[
        ("NAME", Column::Text),
        ("DISPATCH", Column::Word),
        ("PARTITIONS", Column::Number),
        ("SCHEMA", Column::Word),
        ("AGE", Column::Number),
    ]);
    for topic in topics {
        table.row(vec![
            topic.name.clone(),
            topic.dispatch_mode.clone(),
            topic.partitions.to_string(),
            schema_cell(topic),
            age_since(topic.created_at_ms),
        ]);
    }
    table.print();
}

fn print_created(created: &Changed<TopicView>) {
    let topic = &created.item;
    if let Some(note) = &created.note {
        println!("{note}");
        return;
    }
    let partitions = match topic.partitions {
        0 => String::new(),
        1 => ", 1 partition".to_string(),
        n => format!(", {n} partitions"),
    };
    let schema = match &topic.schema {
        Some(schema) => format!(", schema {}", schema.schema_type),
        None => String::new(),
    };
    println!(
        "created topic {} ({}{partitions}{schema})",
        topic.name, topic.dispatch_mode
    );
}

fn print_one(topic: &TopicView) {
    let mut fields = Fields::new();
    fields
        .add("name", &topic.name)
        .add("dispatch mode", &topic.dispatch_mode)
        .add("partitions", topic.partitions.to_string());
    if let Some(parent) = &topic.partition_of {
        fields.add("partition of", parent);
    }
    match &topic.schema {
        Some(schema) => fields
            .add("schema subject", &schema.subject)
            .add("schema version", schema.version.to_string())
            .add("schema type", &schema.schema_type),
        None => fields.add("schema", "none"),
    };
    fields
        .add("created", format_time(topic.created_at_ms))
        .add("owner", topic.owner_url.as_deref().unwrap_or("not loaded"))
        .print();
}

fn print_stats(stats: &StatsView) {
    Fields::new()
        .add("name", &stats.name)
        .add("messages in", stats.messages_in.to_string())
        .add("bytes in", format_bytes(stats.bytes_in))
        .add("messages out", stats.messages_out.to_string())
        .add("rate in", format_rate(stats.rate_in))
        .add("rate out", format_rate(stats.rate_out))
        .add("next offset", stats.next_offset.to_string())
        .add("local storage", format_bytes(stats.local_bytes))
        .add("offloaded", format_bytes(stats.offloaded_bytes))
        .add("producers", stats.producers.len().to_string())
        .add("subscriptions", stats.subscriptions.len().to_string())
        .print();

    if !stats.producers.is_empty() {
        println!("\nPRODUCERS");
        print_clients(&stats.producers);
    }
    if !stats.subscriptions.is_empty() {
        println!("\nSUBSCRIPTIONS");
        subscriptions::print_list(&stats.name, &stats.subscriptions);
    }
}

/// Prints producers or consumers as a table.
pub(super) fn print_clients(clients: &[ClientView]) {
    let mut table = Table::new(&[
        ("ID", Column::Number),
        ("NAME", Column::Text),
        ("MODE", Column::Word),
        ("CONNECTED", Column::Word),
    ]);
    for client in clients {
        table.row(vec![
            client.id.to_string(),
            client.name.clone(),
            client.mode.clone(),
            yes_no(client.connected),
        ]);
    }
    table.print();
}

fn schema_cell(topic: &TopicView) -> String {
    match &topic.schema {
        Some(schema) => format!("{} v{}", schema.schema_type, schema.version),
        None => "-".to_string(),
    }
}

fn print_policies(view: &TopicPoliciesView) {
    let own = |value: Option<u64>, effective: u64| match value {
        Some(value) => format!("{value} (the topic's)"),
        None => format!("{effective} (the namespace's)"),
    };
    let effective = &view.effective;
    let backlog_policy = match &view.backlog_policy {
        Some(policy) => format!("{policy} (the topic's)"),
        None => format!("{} (the namespace's)", effective.backlog_policy),
    };
    Fields::new()
        .add("topic", &view.topic)
        .add(
            "retention_age_secs",
            own(view.retention_age_secs, effective.retention_age_secs),
        )
        .add(
            "retention_bytes",
            own(view.retention_bytes, effective.retention_bytes),
        )
        .add(
            "backlog_quota_bytes",
            own(view.backlog_quota_bytes, effective.backlog_quota_bytes),
        )
        .add("backlog_policy", backlog_policy)
        .print();
}

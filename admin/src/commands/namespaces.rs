//! `sava-admin namespaces`: namespaces, their topics and their policies.

use anyhow::Result;
use sava_proto::sava::v1 as pb;

use super::{print_deleted, show, topics};
use crate::api::{Api, Reply};
use crate::cli::{NamespacesCommand, OutputFormat};
use crate::output::{Column, Fields, Table, format_bytes, yes_no};
use crate::time::age_since;
use crate::views::{
    Changed, DeletedView, NamespacePoliciesView, NamespaceView, PoliciesView, TopicView,
};

pub(super) async fn run(api: &Api, output: OutputFormat, command: NamespacesCommand) -> Result<()> {
    let mut admin = api.admin();
    match command {
        NamespacesCommand::List => {
            let reply = admin
                .list_namespaces(pb::ListNamespacesRequest {})
                .await
                .reply(api)?;
            let namespaces: Vec<NamespaceView> =
                reply.namespaces.into_iter().map(Into::into).collect();
            show(output, namespaces.as_slice(), print_list)
        }
        NamespacesCommand::Create { namespace } => {
            let request = pb::CreateNamespaceRequest { name: namespace };
            let mut info = admin.create_namespace(request).await.reply(api)?;
            let note = std::mem::take(&mut info.note);
            let created = Changed::new(NamespaceView::from(info), note);
            show(output, &created, |created| match &created.note {
                Some(note) => println!("{note}"),
                None => println!("created namespace {}", created.item.name),
            })
        }
        NamespacesCommand::Delete { namespace, force } => {
            let request = pb::DeleteNamespaceRequest {
                name: namespace,
                force,
            };
            let deleted = admin.delete_namespace(request).await.reply(api)?;
            show(output, &DeletedView::from(deleted), print_deleted)
        }
        NamespacesCommand::Topics { namespace } => {
            let request = pb::ListTopicsRequest { namespace };
            let reply = admin.list_topics(request).await.reply(api)?;
            let topics: Vec<TopicView> = reply.topics.into_iter().map(Into::into).collect();
            show(output, topics.as_slice(), topics::print_list)
        }
        NamespacesCommand::Policies { namespace } => {
            let request = pb::GetNamespaceRequest { name: namespace };
            let info = admin.get_namespace(request).await.reply(api)?;
            show(output, &NamespacePoliciesView::from(info), print_policies)
        }
        NamespacesCommand::SetPolicy {
            namespace,
            key,
            value,
        } => {
            let request = pb::SetNamespacePolicyRequest {
                name: namespace,
                key: key.clone(),
                value: value.clone(),
            };
            let info = admin.set_namespace_policy(request).await.reply(api)?;
            show(output, &NamespacePoliciesView::from(info), |view| {
                println!("set {key} of namespace {} to {value}", view.namespace);
                print_policies(view);
            })
        }
    }
}

fn print_list(namespaces: &[NamespaceView]) {
    let mut table = Table::new(&[
        ("NAME", Column::Text),
        ("TOPICS", Column::Number),
        ("AUTO-CREATE", Column::Word),
        ("MAX MESSAGE", Column::Number),
        ("AGE", Column::Number),
    ]);
    for namespace in namespaces {
        table.row(vec![
            namespace.name.clone(),
            namespace.topics.to_string(),
            yes_no(namespace.policies.auto_create_topics),
            max_message(&namespace.policies),
            age_since(namespace.created_at_ms),
        ]);
    }
    table.print();
}

fn print_policies(view: &NamespacePoliciesView) {
    let policies = &view.policies;
    let max_message_bytes = match policies.max_message_bytes {
        0 => "0 (the broker's limit)".to_string(),
        bytes => format!("{bytes} ({})", format_bytes(bytes)),
    };
    Fields::new()
        .add("namespace", &view.namespace)
        .add(
            "auto_create_topics",
            policies.auto_create_topics.to_string(),
        )
        .add("max_message_bytes", max_message_bytes)
        .add("default_dispatch_mode", &policies.default_dispatch_mode)
        .add(
            "retention_age_secs",
            policies.retention_age_secs.to_string(),
        )
        .add("retention_bytes", policies.retention_bytes.to_string())
        .add(
            "backlog_quota_bytes",
            policies.backlog_quota_bytes.to_string(),
        )
        .add("backlog_policy", &policies.backlog_policy)
        .print();
}

/// The table cell for a namespace's message size limit.
fn max_message(policies: &PoliciesView) -> String {
    match policies.max_message_bytes {
        0 => "broker".to_string(),
        bytes => format_bytes(bytes),
    }
}

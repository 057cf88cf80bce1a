//! `sava-admin subscriptions`: a topic's subscriptions and their cursors.

use anyhow::Result;
use sava_proto::sava::v1 as pb;

use super::{print_deleted, show, start_position, topics};
use crate::api::{Api, Reply};
use crate::cli::{OutputFormat, SubscriptionKind, SubscriptionsCommand};
use crate::output::{Column, Fields, Table, format_bytes};
use crate::time::format_age;
use crate::views::{Changed, DeletedView, SubscriptionView};

pub(super) async fn run(
    api: &Api,
    output: OutputFormat,
    command: SubscriptionsCommand,
) -> Result<()> {
    let mut admin = api.admin();
    match command {
        SubscriptionsCommand::List { topic } => {
            let subscriptions = list(api, &topic).await?;
            show(output, subscriptions.as_slice(), |subscriptions| {
                print_list(&topic, subscriptions)
            })
        }
        SubscriptionsCommand::Create {
            topic,
            subscription,
            kind,
            from,
        } => {
            let request = pb::CreateSubscriptionRequest {
                topic,
                subscription,
                subscription_type: wire_type(kind) as i32,
                start: from.map(start_position),
            };
            let mut info = admin.create_subscription(request).await.reply(api)?;
            let note = std::mem::take(&mut info.note);
            let created = Changed::new(SubscriptionView::from(info), note);
            show(output, &created, |created| match &created.note {
                Some(note) => println!("{note}"),
                None => {
                    let subscription = &created.item;
                    println!(
                        "created {} subscription {} on {}",
                        subscription.subscription_type, subscription.name, subscription.topic
                    );
                }
            })
        }
        SubscriptionsCommand::Delete {
            topic,
            subscription,
            force,
        } => {
            let request = pb::DeleteSubscriptionRequest {
                topic,
                subscription,
                force,
            };
            let deleted = admin.delete_subscription(request).await.reply(api)?;
            show(output, &DeletedView::from(deleted), print_deleted)
        }
        SubscriptionsCommand::Reset {
            topic,
            subscription,
            to,
        } => {
            let request = pb::ResetSubscriptionRequest {
                topic,
                subscription,
                position: Some(start_position(to)),
            };
            let info = admin.reset_subscription(request).await.reply(api)?;
            show(output, &SubscriptionView::from(info), |subscription| {
                println!(
                    "reset subscription {} on {} to {to}",
                    subscription.name, subscription.topic
                );
            })
        }
        SubscriptionsCommand::SetPolicy {
            topic,
            subscription,
            key,
            value,
        } => {
            let request = pb::SetSubscriptionPolicyRequest {
                topic,
                subscription,
                key: key.clone(),
                value: value.clone(),
            };
            let info = admin.set_subscription_policy(request).await.reply(api)?;
            show(output, &SubscriptionView::from(info), |subscription| {
                println!(
                    "set {key} = {value} on subscription {} of {}",
                    subscription.name, subscription.topic
                );
            })
        }
        SubscriptionsCommand::Describe {
            topic,
            subscription,
        } => {
            let request = pb::DescribeSubscriptionRequest {
                topic,
                subscription,
            };
            let info = admin.describe_subscription(request).await.reply(api)?;
            show(output, &SubscriptionView::from(info), print_one)
        }
    }
}

/// The subscriptions of `topic`, or of each of its partitions when it is
/// partitioned (the broker lists one partition at a time).
async fn list(api: &Api, topic: &str) -> Result<Vec<SubscriptionView>> {
    let mut admin = api.admin();
    let describe = pb::DescribeTopicRequest { name: topic.into() };
    let info = admin.describe_topic(describe).await.reply(api)?;
    let names: Vec<String> = match info.partitions {
        0 => vec![info.name],
        count => (0..count)
            .map(|index| format!("{}-part-{index}", info.name))
            .collect(),
    };

    let mut subscriptions = Vec::new();
    for name in names {
        let request = pb::ListSubscriptionsRequest { topic: name };
        let reply = admin.list_subscriptions(request).await.reply(api)?;
        subscriptions.extend(reply.subscriptions.into_iter().map(SubscriptionView::from));
    }
    Ok(subscriptions)
}

fn wire_type(kind: SubscriptionKind) -> pb::SubscriptionType {
    match kind {
        SubscriptionKind::Exclusive => pb::SubscriptionType::Exclusive,
        SubscriptionKind::Shared => pb::SubscriptionType::Shared,
        SubscriptionKind::Failover => pb::SubscriptionType::Failover,
        SubscriptionKind::KeyShared => pb::SubscriptionType::KeyShared,
    }
}

/// Prints the subscriptions of `topic` as a table, with a PART column (the partition index)
/// when they belong to its partitions; shared with `topics stats`.
pub(super) fn print_list(topic: &str, subscriptions: &[SubscriptionView]) {
    let of_partitions = subscriptions
        .iter()
        .any(|subscription| subscription.topic != topic);
    let mut columns = vec![
        ("NAME", Column::Text),
        ("TYPE", Column::Word),
        ("CURSOR", Column::Number),
        ("BACKLOG", Column::Number),
        ("SIZE", Column::Number),
        ("OLDEST", Column::Number),
        ("CONSUMERS", Column::Number),
    ];
    if of_partitions {
        columns.insert(0, ("PART", Column::Text));
    }

    let partition_prefix = format!("{topic}-part-");
    let mut table = Table::new(&columns);
    for subscription in subscriptions {
        let mut row = vec![
            subscription.name.clone(),
            subscription.subscription_type.clone(),
            subscription.cursor.to_string(),
            subscription.backlog_messages.to_string(),
            format_bytes(subscription.backlog_bytes),
            oldest(subscription),
            subscription.consumers.len().to_string(),
        ];
        if of_partitions {
            let partition = subscription.topic.strip_prefix(&partition_prefix);
            row.insert(0, partition.unwrap_or(&subscription.topic).to_string());
        }
        table.row(row);
    }
    table.print();
}

fn print_one(subscription: &SubscriptionView) {
    Fields::new()
        .add("topic", &subscription.topic)
        .add("name", &subscription.name)
        .add("type", &subscription.subscription_type)
        .add("cursor", subscription.cursor.to_string())
        .add(
            "backlog",
            format!("{} messages", subscription.backlog_messages),
        )
        .add("backlog size", format_bytes(subscription.backlog_bytes))
        .add("oldest unacked", oldest(subscription))
        .add("pending", subscription.pending.to_string())
        .add("delivered", subscription.delivered.to_string())
        .add("redelivered", subscription.redelivered.to_string())
        .add("dropped", subscription.dropped.to_string())
        .add("dead-lettered", subscription.dead_lettered.to_string())
        .add(
            "ack timeout",
            off_or(subscription.ack_timeout_ms, |ms| format!("{ms} ms")),
        )
        .add(
            "max deliveries",
            off_or(subscription.max_deliveries.into(), |n| n.to_string()),
        )
        .add(
            "on max deliveries",
            subscription
                .on_max_deliveries
                .clone()
                .unwrap_or_else(|| "-".into()),
        )
        .add(
            "dead letters to",
            subscription
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| "-".into()),
        )
        .add("consumers", subscription.consumers.len().to_string())
        .print();

    if !subscription.consumers.is_empty() {
        println!("\nCONSUMERS");
        topics::print_clients(&subscription.consumers);
    }
}

/// `off` for 0, else the value as `show` writes it.
fn off_or(value: u64, show: impl Fn(u64) -> String) -> String {
    match value {
        0 => "off".to_string(),
        value => show(value),
    }
}

/// The age of the oldest unacknowledged message, `-` when there is none.
fn oldest(subscription: &SubscriptionView) -> String {
    match subscription.oldest_unacked_age_ms {
        0 => "-".to_string(),
        age => format_age(age),
    }
}

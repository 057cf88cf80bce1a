//! `sava-admin brokers`: the brokers of the cluster.

use anyhow::Result;
use sava_proto::sava::v1 as pb;

use super::show;
use crate::api::{Api, Reply};
use crate::cli::{BrokersCommand, OutputFormat};
use crate::output::{Column, Fields, Table, yes_no};
use crate::time::{age_since, format_time};
use crate::views::BrokerView;

pub(super) async fn run(api: &Api, output: OutputFormat, command: BrokersCommand) -> Result<()> {
    let mut admin = api.admin();
    match command {
        BrokersCommand::List => {
            let reply = admin
                .list_brokers(pb::ListBrokersRequest {})
                .await
                .reply(api)?;
            let brokers: Vec<BrokerView> = reply.brokers.into_iter().map(Into::into).collect();
            show(output, brokers.as_slice(), print_list)
        }
        BrokersCommand::Leader => {
            let leader = admin.get_leader(pb::GetLeaderRequest {}).await.reply(api)?;
            show(output, &BrokerView::from(leader), print_one)
        }
        BrokersCommand::Describe { id } => {
            let request = pb::DescribeBrokerRequest { broker_id: id };
            let broker = admin.describe_broker(request).await.reply(api)?;
            show(output, &BrokerView::described(broker), print_one)
        }
        BrokersCommand::Drain { id } => {
            let request = pb::DrainBrokerRequest { broker_id: id };
            let broker = admin.drain_broker(request).await.reply(api)?;
            show(output, &BrokerView::described(broker), print_one)
        }
        BrokersCommand::Activate { id } => {
            let request = pb::ActivateBrokerRequest { broker_id: id };
            let broker = admin.activate_broker(request).await.reply(api)?;
            show(output, &BrokerView::described(broker), print_one)
        }
    }
}

fn print_list(brokers: &[BrokerView]) {
    let mut table = Table::new(&[
        ("ID", Column::Text),
        ("STATE", Column::Word),
        ("LEADER", Column::Word),
        ("OWNED", Column::Number),
        ("MSG/S", Column::Number),
        ("UPTIME", Column::Number),
        ("CLIENT URL", Column::Text),
    ]);
    for broker in brokers {
        table.row(vec![
            broker.broker_id.clone(),
            state_of(broker),
            yes_no(broker.leader),
            broker.owned_topics.to_string(),
            broker.messages_in_per_sec.to_string(),
            age_since(broker.started_at_ms),
            broker.client_url.clone(),
        ]);
    }
    table.print();
}

/// The state, or `dead` for a broker whose lease expired.
fn state_of(broker: &BrokerView) -> String {
    match broker.alive {
        true => broker.state.clone(),
        false => "dead".into(),
    }
}

fn print_one(broker: &BrokerView) {
    let mut fields = Fields::new();
    fields
        .add("id", &broker.broker_id)
        .add("state", state_of(broker))
        .add("leader", yes_no(broker.leader))
        .add("topics owned", broker.owned_topics.to_string())
        .add("topics loaded", broker.topics.to_string())
        .add("messages in/s", broker.messages_in_per_sec.to_string())
        .add("registered", format_time(broker.started_at_ms))
        .add("lease expires", format_time(broker.lease_expires_ms))
        .add("client url", &broker.client_url)
        .add("admin url", &broker.admin_url)
        .add("http url", &broker.http_url);
    if let Some(version) = &broker.version {
        fields.add("version", version);
    }
    if let Some(names) = &broker.owned_topic_names {
        fields.add("owns", names.join(" "));
    }
    fields.print();
}

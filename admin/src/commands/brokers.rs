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
            show(output, &BrokerView::from(broker), print_one)
        }
    }
}

fn print_list(brokers: &[BrokerView]) {
    let mut table = Table::new(&[
        ("ID", Column::Text),
        ("STATE", Column::Word),
        ("LEADER", Column::Word),
        ("TOPICS", Column::Number),
        ("UPTIME", Column::Number),
        ("CLIENT URL", Column::Text),
    ]);
    for broker in brokers {
        table.row(vec![
            broker.broker_id.clone(),
            broker.state.clone(),
            yes_no(broker.leader),
            broker.topics.to_string(),
            age_since(broker.started_at_ms),
            broker.client_url.clone(),
        ]);
    }
    table.print();
}

fn print_one(broker: &BrokerView) {
    Fields::new()
        .add("id", &broker.broker_id)
        .add("state", &broker.state)
        .add("leader", yes_no(broker.leader))
        .add("topics loaded", broker.topics.to_string())
        .add("started", format_time(broker.started_at_ms))
        .add("uptime", age_since(broker.started_at_ms))
        .add("version", &broker.version)
        .add("client url", &broker.client_url)
        .add("admin url", &broker.admin_url)
        .print();
}

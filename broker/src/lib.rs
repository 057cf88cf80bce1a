//! The Sava broker.
//!
//! - [`api`]: thin gRPC adapters (`danube`, `danube_schema`, `sava.v1`).
//! - [`broker`]: the core they share: topics, producers, consumers, schemas.
//! - [`topic`], [`subscription`], [`dispatch`]: the publish path and the
//!   choice of consumer for every subscription type.
//! - [`cluster`]: membership with leases, the leader's placement of topics,
//!   ownership epochs, hand-over and drain.
//! - [`config`], [`server`], [`http`]: configuration, listeners, health and
//!   metrics.

pub mod api;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod error;
mod gates;
pub mod http;
pub mod log;
pub mod message;
pub mod metrics;
pub mod names;
pub mod offload;
pub mod schema;
pub mod server;
pub mod subscription;
pub mod topic;

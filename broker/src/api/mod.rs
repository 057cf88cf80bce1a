//! The gRPC adapters. Each turns its generated types into the core's
//! (`crate::broker`) and back, and owns nothing else: no wire type reaches a
//! dispatcher or a log.

pub mod admin;
pub mod danube;
pub mod danube_admin;
pub mod danube_proxy;
pub mod forward;
pub mod native;
pub mod schema;
pub mod session;

use std::pin::Pin;

use futures::Stream;

/// The boxed response stream type every server-streaming method returns.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

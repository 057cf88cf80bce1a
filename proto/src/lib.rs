//! Sava's wire protocol.
//!
//! - [`danube`] and [`danube_schema`]: the API of Danube 0.16 clients, field
//!   for field, so their published clients work against Sava unchanged;
//!   [`danube_admin`]: the admin services Danube's admin tools call.
//! - [`sava::v1`]: the native API, with batched publishing and credit-based
//!   consumption over bidirectional streams.
//! - [`error`]: the one place where Sava's error kinds become gRPC codes.
//! - [`telemetry`]: W3C trace context in message attributes, the convention
//!   clients and brokers share, and (feature `export`) the logging and span
//!   export setup of Sava's binaries.

#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod telemetry;

/// The Danube-compatible client API (package `danube`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]
pub mod danube {
    tonic::include_proto!("danube");
}

/// The Danube-compatible schema registry API (package `danube_schema`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]
pub mod danube_schema {
    tonic::include_proto!("danube_schema");
}

/// The admin API of Danube 0.16 (package `danube_admin`): the BrokerAdmin,
/// NamespaceAdmin and TopicAdmin services its admin tools call.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]
pub mod danube_admin {
    tonic::include_proto!("danube_admin");
}

/// Sava's own packages.
pub mod sava {
    /// The native API, version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]
    pub mod v1 {
        tonic::include_proto!("sava.v1");
    }
}

pub use error::{ErrorKind, WireError};

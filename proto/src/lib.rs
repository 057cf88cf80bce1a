//! Sava's wire protocol.
//!
//! - [`danube`] and [`danube_schema`]: the API of Danube 0.16 clients, field
//!   for field, so their published clients work against Sava unchanged.
//! - [`sava::v1`]: the native API, with batched publishing and credit-based
//!   consumption over bidirectional streams.
//! - [`error`]: the one place where Sava's error kinds become gRPC codes.

#![warn(missing_docs)]

pub mod error;

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

/// Sava's own packages.
pub mod sava {
    /// The native API, version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::clone_on_ref_ptr)]
    pub mod v1 {
        tonic::include_proto!("sava.v1");
    }
}

pub use error::{ErrorKind, WireError};

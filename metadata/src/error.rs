//! The one error type of the metadata crate.
//!
//! Variants are shaped around what a caller can do next: retry
//! ([`MetadataError::is_retryable`]), report a missing or duplicate entity, or
//! refuse bad input. Backend-specific failures fold into `Unavailable` (the
//! store cannot be reached; retry) or `Backend` (anything else; do not retry).

use std::error::Error as StdError;

/// A boxed error from a backend, kept as the source of a [`MetadataError`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The result type of every fallible metadata operation.
pub type Result<T> = std::result::Result<T, MetadataError>;

/// What went wrong in a metadata operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The named entity does not exist.
    #[error("{what} not found")]
    NotFound { what: String },

    /// The named entity exists already, with different contents.
    #[error("{what} already exists")]
    AlreadyExists { what: String },

    /// The named entity still holds children (a namespace with topics).
    #[error("{what} is not empty")]
    NotEmpty { what: String },

    /// The request itself is wrong (a bad name, an unknown mode); retrying
    /// it unchanged fails the same way.
    #[error("invalid request: {reason}")]
    Invalid { reason: String },

    /// A serializable transaction read something another transaction changed
    /// and committed meanwhile. Retry the whole transaction.
    #[error("transaction conflicted with a concurrent commit")]
    Conflict,

    /// The commit may or may not have been applied. Retry: every Sava
    /// transaction is idempotent.
    #[error("transaction commit outcome is unknown")]
    UnknownResult,

    /// A write to a topic's durable history made in an ownership epoch that
    /// is no longer the current one: another broker owns the topic now.
    #[error(
        "topic `{topic}` is owned in epoch {current} now; a write from epoch {epoch} is refused"
    )]
    Fenced {
        topic: String,
        epoch: u64,
        current: u64,
    },

    /// A value is larger than the store accepts.
    #[error("value of key {key} is {size} bytes, above the limit of {limit} bytes")]
    ValueTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },

    /// The store cannot be reached right now. Retry later.
    #[error("metadata store unavailable: {source}")]
    Unavailable { source: BoxError },

    /// A metadata URL that names no usable backend.
    #[error("invalid metadata url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// A stored record that does not decode.
    #[error("corrupt metadata record at key {key}: {reason}")]
    Corrupt { key: String, reason: String },

    /// Any other backend failure (I/O, a broken database file). Not retried.
    #[error("metadata backend error: {0}")]
    Backend(#[source] BoxError),
}

impl MetadataError {
    /// Whether running the same transaction again may succeed.
    ///
    /// True for conflicts, unknown commit outcomes and an unreachable store;
    /// false for everything a retry would only repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MetadataError::Conflict
                | MetadataError::UnknownResult
                | MetadataError::Unavailable { .. }
        )
    }

    /// Wraps any backend error as [`MetadataError::Backend`].
    pub fn backend(error: impl Into<BoxError>) -> Self {
        MetadataError::Backend(error.into())
    }

    /// Wraps any backend error as [`MetadataError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        MetadataError::Unavailable {
            source: error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_conflict_unknown_result_and_unavailable_are_retryable() {
        assert!(MetadataError::Conflict.is_retryable());
        assert!(MetadataError::UnknownResult.is_retryable());
        assert!(MetadataError::unavailable("connection refused").is_retryable());

        assert!(!MetadataError::backend("disk full").is_retryable());
        assert!(
            !MetadataError::Invalid {
                reason: "bad".into()
            }
            .is_retryable()
        );
        assert!(
            !MetadataError::NotFound {
                what: "topic /a/b".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn messages_name_the_entity_in_lower_case() {
        let error = MetadataError::NotFound {
            what: "namespace `ns`".into(),
        };
        assert_eq!(error.to_string(), "namespace `ns` not found");

        let error = MetadataError::ValueTooLarge {
            key: "k".into(),
            size: 10,
            limit: 5,
        };
        assert_eq!(
            error.to_string(),
            "value of key k is 10 bytes, above the limit of 5 bytes"
        );
    }
}

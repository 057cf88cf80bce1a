//! The one error type of the client.
//!
//! Variants follow what a caller can do: a [`Error::Broker`] or
//! [`Error::Rejected`] carries the broker's [`ErrorKind`] (retry, fix the
//! request, give up), [`Error::Transport`] means the broker could not be
//! reached, and [`Error::Closed`] means the producer or consumer is gone.

use std::time::Duration;

use sava_proto::{ErrorKind, WireError};

/// What can go wrong when talking to Sava.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker (or the gRPC layer on the way to it) answered a request
    /// with an error status.
    #[error("{message}")]
    Broker {
        /// What the caller can do about it.
        kind: ErrorKind,
        /// The broker's own words, naming the problem.
        message: String,
    },

    /// The broker refused the batch a message was part of. The other
    /// batches of the producer are not affected.
    #[error("message refused by the broker: {message}")]
    Rejected {
        /// What the caller can do about it.
        kind: ErrorKind,
        /// The broker's own words, naming the problem.
        message: String,
        /// The index, inside its batch, of the message that caused the
        /// refusal, when the broker named one.
        message_index: Option<u32>,
    },

    /// The connection to a broker could not be set up.
    #[error("cannot connect to {url}")]
    Transport {
        /// The URL that was dialed.
        url: String,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },

    /// The producer or consumer was closed, or its background task ended.
    #[error("the producer or consumer is closed")]
    Closed,

    /// An argument given to the client is not valid (a malformed URL, a
    /// zero partition count, a message from another consumer).
    #[error("{0}")]
    InvalidArgument(String),

    /// The broker did not answer in time.
    #[error("no answer from the broker after {after:?} while {operation}")]
    Timeout {
        /// What the client was waiting for.
        operation: &'static str,
        /// How long it waited.
        after: Duration,
    },

    /// The broker sent something the protocol does not allow.
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
}

impl Error {
    /// The broker's error kind, for the errors that carry one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Broker { kind, .. } | Error::Rejected { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether trying again later (after a new lookup) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Broker { kind, .. } => is_retryable_kind(*kind),
            Error::Transport { .. } | Error::Timeout { .. } | Error::Protocol(_) => true,
            _ => false,
        }
    }

    /// A copy of the error for one more waiter, where the error can be
    /// copied; the transport source cannot, so its text is kept instead.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Broker { kind, message } => Error::Broker {
                kind: *kind,
                message: message.clone(),
            },
            Error::Rejected {
                kind,
                message,
                message_index,
            } => Error::Rejected {
                kind: *kind,
                message: message.clone(),
                message_index: *message_index,
            },
            Error::Transport { url, source } => Error::Broker {
                kind: ErrorKind::Unavailable,
                message: format!("cannot connect to {url}: {source}"),
            },
            Error::Closed => Error::Closed,
            Error::InvalidArgument(message) => Error::InvalidArgument(message.clone()),
            Error::Timeout { operation, after } => Error::Timeout {
                operation,
                after: *after,
            },
            Error::Protocol(message) => Error::Protocol(message.clone()),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let wire = WireError::from(status);
        Error::Broker {
            kind: wire.kind,
            message: wire.message,
        }
    }
}

/// Kinds worth retrying after a new lookup: the broker may recover, or the
/// topic may have moved.
pub(crate) fn is_retryable_kind(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Unavailable | ErrorKind::ResourceExhausted | ErrorKind::Internal
    )
}

/// The result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_a_broker_error_with_its_kind_and_message() {
        let status = tonic::Status::not_found("topic /default/missing does not exist");
        let error = Error::from(status);
        assert_eq!(error.kind(), Some(ErrorKind::NotFound));
        assert_eq!(error.to_string(), "topic /default/missing does not exist");
        assert!(!error.is_retryable());
    }

    #[test]
    fn an_unavailable_broker_is_worth_retrying() {
        let error = Error::from(tonic::Status::unavailable("broker is stopping"));
        assert!(error.is_retryable());
    }
}

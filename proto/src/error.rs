//! The one mapping between Sava's error kinds and gRPC status codes.
//!
//! Every crate that answers a client turns its own errors into a
//! [`WireError`], and only this module decides which `tonic::Code` each kind
//! becomes. The codes matter to clients: Danube's client retries
//! `UNAVAILABLE`, `DEADLINE_EXCEEDED` and `RESOURCE_EXHAUSTED` and then looks
//! the topic up again, and treats every other code as final.

use tonic::{Code, Status};

/// What went wrong, in terms of what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed: a bad name, a payload that breaks the
    /// schema, an oversized message. Retrying the same request fails again.
    InvalidArgument,
    /// The named topic, subscription, producer, consumer or schema does not
    /// exist.
    NotFound,
    /// The thing being created exists already.
    AlreadyExists,
    /// The request conflicts with the current state: an exclusive producer
    /// or consumer holds the topic, the dispatch mode differs.
    Conflict,
    /// A limit or quota is reached; retrying later may succeed.
    ResourceExhausted,
    /// This broker cannot serve the request now (not the owner, stopping,
    /// metadata unreachable); look the topic up again and retry.
    Unavailable,
    /// The caller may not do this (a policy forbids it).
    PermissionDenied,
    /// The request needs something this broker does not implement.
    Unsupported,
    /// A bug or an unexpected failure inside the broker.
    Internal,
}

impl ErrorKind {
    /// The gRPC code clients see for this kind.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Conflict => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Unsupported => Code::Unimplemented,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// The kind a client should assume for a status it received.
    pub fn from_code(code: Code) -> ErrorKind {
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition | Code::Aborted => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Unavailable,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
            Code::Unimplemented => ErrorKind::Unsupported,
            _ => ErrorKind::Internal,
        }
    }
}

/// An error on its way to a client: a kind and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What the caller can do about it.
    pub kind: ErrorKind,
    /// One lower-case line that names what was wrong.
    pub message: String,
}

impl WireError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

impl From<WireError> for Status {
    fn from(error: WireError) -> Status {
        Status::new(error.kind.code(), error.message)
    }
}

impl From<Status> for WireError {
    fn from(status: Status) -> WireError {
        WireError::new(ErrorKind::from_code(status.code()), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_a_round_trip_through_its_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Conflict,
            ErrorKind::ResourceExhausted,
            ErrorKind::Unavailable,
            ErrorKind::PermissionDenied,
            ErrorKind::Unsupported,
            ErrorKind::Internal,
        ];
        for kind in kinds {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
    }

    #[test]
    fn a_status_carries_the_message_that_names_the_problem() {
        let status: Status =
            WireError::new(ErrorKind::NotFound, "topic /default/x does not exist").into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "topic /default/x does not exist");
    }
}

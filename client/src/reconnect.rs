//! What producer and consumer tasks share for reconnecting: exponential
//! backoff with jitter, and which errors end the retrying.
//!
//! Each broken stream owns one [`Backoff`]; a successful reconnect resets it.

use std::time::Duration;

use rand::Rng;
use sava_proto::ErrorKind;
use tokio::time::Instant;

use crate::error::Error;

/// How many times in a row a reopen may meet a conflict (an exclusive
/// producer or consumer) before giving up: right after a stream breaks, the
/// broker may not have noticed yet that the old one is gone.
const CONFLICT_ATTEMPTS: u32 = 10;

/// The first delay after a stream breaks.
const INITIAL: Duration = Duration::from_millis(100);

/// The longest delay between two attempts.
const MAXIMUM: Duration = Duration::from_secs(5);

/// Delays that double after every failed attempt, up to [`MAXIMUM`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: INITIAL,
            attempts: 0,
        }
    }

    /// The delay to wait before the next attempt. A random quarter is taken
    /// off so that many clients cut off at once do not come back in step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAXIMUM);
        self.attempts += 1;

        let jitter = rand::rng().random_range(0.0..0.25);
        delay.mul_f64(1.0 - jitter)
    }

    /// How many delays were handed out since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// Whether a failed reopen, after `attempts` tries, should end the
/// producer or consumer partition instead of being retried.
pub(crate) fn is_final(error: &Error, attempts: u32) -> bool {
    match error.kind() {
        Some(ErrorKind::Conflict) => attempts >= CONFLICT_ATTEMPTS,
        Some(
            ErrorKind::InvalidArgument
            | ErrorKind::NotFound
            | ErrorKind::PermissionDenied
            | ErrorKind::Unsupported,
        ) => true,
        _ => false,
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_starts_over() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();

        assert!(delays[0] <= INITIAL && delays[0] >= INITIAL.mul_f64(0.75));
        assert!(delays[1] > INITIAL);
        assert!(delays.iter().all(|delay| *delay <= MAXIMUM));
        assert!(delays[9] >= MAXIMUM.mul_f64(0.75));
        assert_eq!(backoff.attempts(), 10);

        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }

    #[test]
    fn a_missing_topic_ends_retrying_and_an_unavailable_broker_does_not() {
        let missing = Error::from(tonic::Status::not_found("topic /default/t does not exist"));
        let unavailable = Error::from(tonic::Status::unavailable("broker is stopping"));
        let conflict = Error::from(tonic::Status::failed_precondition("producer exists"));

        assert!(is_final(&missing, 0));
        assert!(!is_final(&unavailable, 100));
        assert!(!is_final(&conflict, 1));
        assert!(is_final(&conflict, CONFLICT_ATTEMPTS));
    }
}

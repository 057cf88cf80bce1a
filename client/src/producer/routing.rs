//! Choosing the partition of each message.
//!
//! Keyed messages go by a stable hash of their key, so one key always lands
//! on the same partition, in every process and every version of this crate.
//! Other messages go round robin, one batch's worth at a time, so batches
//! stay full instead of being spread thin over every partition.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::batch::BatchLimits;

/// How a producer spreads messages over the partitions of a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routing {
    /// Messages with a key go to the partition chosen by the key's hash;
    /// messages without one go round robin, a batch at a time.
    #[default]
    KeyHash,
    /// Every message goes round robin, a batch at a time, key or not.
    RoundRobin,
}

/// The partition index for a key among `partitions`: FNV-1a (64 bits) of the
/// key's bytes, modulo the partition count.
pub(crate) fn partition_for_key(key: &str, partitions: usize) -> usize {
    debug_assert!(partitions > 0);
    (fnv1a(key.as_bytes()) % partitions as u64) as usize
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The partition chooser shared by every sender of a producer.
#[derive(Debug)]
pub(crate) struct Router {
    routing: Routing,
    partitions: usize,
    limits: BatchLimits,
    /// A round-robin batch also ends after this long, so a slow producer
    /// still visits every partition.
    switch_after: Duration,
    round_robin: Mutex<RoundRobin>,
}

#[derive(Debug)]
struct RoundRobin {
    partition: usize,
    bytes: usize,
    messages: usize,
    since: Instant,
}

impl Router {
    pub(crate) fn new(
        routing: Routing,
        partitions: usize,
        limits: BatchLimits,
        linger: Duration,
    ) -> Router {
        debug_assert!(partitions > 0);
        Router {
            routing,
            partitions,
            limits,
            switch_after: linger.max(Duration::from_millis(1)),
            round_robin: Mutex::new(RoundRobin {
                partition: 0,
                bytes: 0,
                messages: 0,
                since: Instant::now(),
            }),
        }
    }

    /// The partition for a message with `key` taking `bytes` in a batch.
    pub(crate) fn choose(&self, key: Option<&str>, bytes: usize) -> usize {
        if self.partitions == 1 {
            return 0;
        }
        match (self.routing, key) {
            (Routing::KeyHash, Some(key)) => partition_for_key(key, self.partitions),
            _ => self.next_round_robin(bytes, Instant::now()),
        }
    }

    fn next_round_robin(&self, bytes: usize, now: Instant) -> usize {
        let mut state = self
            .round_robin
            .lock()
            .expect("the round-robin lock is never held across a panic");

        let batch_is_full = state.messages >= self.limits.max_messages
            || state.bytes + bytes > self.limits.max_bytes;
        let batch_is_old = now.duration_since(state.since) >= self.switch_after;
        if state.messages > 0 && (batch_is_full || batch_is_old) {
            state.partition = (state.partition + 1) % self.partitions;
            state.messages = 0;
            state.bytes = 0;
        }
        if state.messages == 0 {
            state.since = now;
        }

        state.messages += 1;
        state.bytes += bytes;
        state.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_bytes: 1000,
        max_messages: 3,
    };

    #[test]
    fn the_key_hash_is_fnv1a_and_never_changes() {
        // Published FNV-1a test vectors: changing them would move keys to
        // other partitions for every existing topic.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);

        assert_eq!(
            partition_for_key("a", 7),
            (0xaf63_dc4c_8601_ec8c_u64 % 7) as usize
        );
        for partitions in 1..10 {
            let first = partition_for_key("order-42", partitions);
            assert!(first < partitions);
            assert_eq!(partition_for_key("order-42", partitions), first);
        }
    }

    #[test]
    fn keyed_messages_stick_to_their_partition() {
        let router = Router::new(Routing::KeyHash, 4, LIMITS, Duration::from_secs(60));
        let expected = partition_for_key("user-1", 4);
        for _ in 0..10 {
            assert_eq!(router.choose(Some("user-1"), 10), expected);
        }
    }

    #[test]
    fn round_robin_moves_on_after_a_full_batch() {
        let router = Router::new(Routing::RoundRobin, 3, LIMITS, Duration::from_secs(60));
        let chosen: Vec<usize> = (0..9).map(|_| router.choose(Some("ignored"), 10)).collect();
        assert_eq!(chosen, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(router.choose(None, 10), 0);
    }

    #[test]
    fn round_robin_moves_on_before_a_batch_passes_max_bytes() {
        let router = Router::new(Routing::KeyHash, 2, LIMITS, Duration::from_secs(60));
        let chosen: Vec<usize> = (0..4).map(|_| router.choose(None, 600)).collect();
        assert_eq!(chosen, [0, 1, 0, 1]);
    }

    #[test]
    fn round_robin_moves_on_after_the_linger_time() {
        let router = Router::new(Routing::RoundRobin, 2, LIMITS, Duration::from_millis(5));
        let start = Instant::now();
        assert_eq!(router.next_round_robin(10, start), 0);
        assert_eq!(
            router.next_round_robin(10, start + Duration::from_millis(1)),
            0
        );
        assert_eq!(
            router.next_round_robin(10, start + Duration::from_millis(6)),
            1
        );
    }
}

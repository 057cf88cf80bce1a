//! The choice of consumer for each message, per subscription type.
//!
//! - Exclusive: the one consumer.
//! - Failover: consumers sorted by name (then id); partition `p` is served
//!   by the consumer at `p % n`, so the partitions of one topic spread over
//!   the consumers and a departure moves the partition to the next one.
//! - Shared: round robin over the consumers that have room, so a slow
//!   consumer gets fewer messages instead of stalling the others.
//! - Key-Shared: a consistent-hash ring of consumer names (many points per
//!   consumer), so one key always lands on one consumer and a consumer that
//!   joins or leaves moves few keys. Key filters (globs) give explicit
//!   control: a key that some consumer's filters match goes to one of those
//!   consumers (by the ring); any other key goes to the consumers without
//!   filters, or, when every consumer has filters, to any consumer.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::SubscriptionType;
use crate::error::BrokerError;

/// Points each consumer puts on the Key-Shared ring.
const RING_POINTS: u32 = 128;

/// A consumer as the router sees it.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    pub name: String,
    filters: Option<GlobSet>,
}

impl Member {
    /// A member accepting every key when `key_filters` is empty.
    pub fn new(id: u64, name: &str, key_filters: &[String]) -> Result<Member, BrokerError> {
        Ok(Member {
            id,
            name: name.to_string(),
            filters: compile_filters(key_filters)?,
        })
    }

    fn matches(&self, key: &str) -> bool {
        self.filters.as_ref().is_some_and(|set| set.is_match(key))
    }
}

/// Chooses consumers for one subscription.
#[derive(Debug)]
pub struct Router {
    kind: SubscriptionType,
    partition: u32,
    /// Sorted by (name, id): the stable order Failover relies on.
    members: Vec<Member>,
    ring: BTreeMap<(u64, u64), u64>,
    next: usize,
}

impl Router {
    /// A router for a subscription of `kind` on partition `partition` (0
    /// for a topic that is not partitioned).
    pub fn new(kind: SubscriptionType, partition: u32) -> Router {
        Router {
            kind,
            partition,
            members: Vec::new(),
            ring: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn kind(&self) -> SubscriptionType {
        self.kind
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds a consumer, replacing one with the same id.
    pub fn insert(&mut self, member: Member) {
        self.remove(member.id);
        if self.kind == SubscriptionType::KeyShared {
            for point in 0..RING_POINTS {
                let hash = hash_str(&format!("{}#{point}", member.name));
                self.ring.insert((hash, member.id), member.id);
            }
        }
        let place = self
            .members
            .partition_point(|m| (m.name.as_str(), m.id) < (member.name.as_str(), member.id));
        self.members.insert(place, member);
    }

    /// Removes a consumer; returns whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.id != id);
        self.ring.retain(|_, member| *member != id);
        before != self.members.len()
    }

    /// The consumer that should get a message with routing key `key`, given
    /// how many more messages each member can take now (`room`, indexed like
    /// [`Router::members`]). `None` when the rightful consumer has no room
    /// or no consumer may take it; the caller then drops or holds it.
    pub fn choose(&mut self, key: &str, room: &[usize]) -> Option<usize> {
        debug_assert_eq!(room.len(), self.members.len());
        if self.members.is_empty() {
            return None;
        }
        let chosen = match self.kind {
            SubscriptionType::Exclusive => Some(0),
            SubscriptionType::Failover => Some(self.partition as usize % self.members.len()),
            SubscriptionType::Shared => return self.next_with_room(room),
            SubscriptionType::KeyShared => self.owner_of(key),
        }?;
        (room[chosen] > 0).then_some(chosen)
    }

    /// The member that owns `key`, ignoring room.
    pub fn owner_of(&self, key: &str) -> Option<usize> {
        let hash = hash_str(key);
        self.walk(hash, |m| m.matches(key))
            .or_else(|| self.walk(hash, |m| m.filters.is_none()))
            .or_else(|| self.walk(hash, |_| true))
    }

    /// The first member clockwise from `hash` on the ring that `eligible`
    /// accepts.
    fn walk(&self, hash: u64, eligible: impl Fn(&Member) -> bool) -> Option<usize> {
        let clockwise = self
            .ring
            .range((hash, 0)..)
            .chain(self.ring.range(..(hash, 0)));
        for (_, id) in clockwise {
            let index = self.members.iter().position(|m| m.id == *id)?;
            if eligible(&self.members[index]) {
                return Some(index);
            }
        }
        None
    }

    fn next_with_room(&mut self, room: &[usize]) -> Option<usize> {
        let count = self.members.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            if room[index] > 0 {
                self.next = (index + 1) % count;
                return Some(index);
            }
        }
        None
    }
}

fn compile_filters(patterns: &[String]) -> Result<Option<GlobSet>, BrokerError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|error| {
            BrokerError::InvalidRequest(format!(
                "key filter {pattern:?} is not a valid glob: {error}"
            ))
        })?;
        builder.add(glob);
    }
    let set = builder.build().map_err(|error| {
        BrokerError::InvalidRequest(format!("key filters do not compile: {error}"))
    })?;
    Ok(Some(set))
}

/// FNV-1a followed by a 64-bit finalizer: stable across processes and
/// versions, which the ring needs so keys stay put after a restart.
fn hash_str(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(kind: SubscriptionType, names: &[&str]) -> Router {
        let mut router = Router::new(kind, 0);
        for (id, name) in names.iter().enumerate() {
            router.insert(Member::new(id as u64 + 1, name, &[]).unwrap());
        }
        router
    }

    fn chosen_name(router: &mut Router, key: &str) -> Option<String> {
        let room = vec![usize::MAX; router.members().len()];
        let index = router.choose(key, &room)?;
        Some(router.members()[index].name.clone())
    }

    #[test]
    fn exclusive_sends_everything_to_its_consumer_and_nothing_when_it_is_full() {
        let mut r = router(SubscriptionType::Exclusive, &["only"]);
        assert_eq!(r.choose("k", &[3]), Some(0));
        assert_eq!(r.choose("k", &[0]), None);
    }

    #[test]
    fn shared_skips_consumers_without_room_and_rotates_among_the_rest() {
        let mut r = router(SubscriptionType::Shared, &["a", "b", "c"]);
        let picks: Vec<_> = (0..4).map(|_| r.choose("", &[1, 0, 1]).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(r.choose("", &[0, 0, 0]), None);
    }

    #[test]
    fn failover_picks_by_name_order_and_the_next_takes_over_when_the_active_leaves() {
        let mut r = router(SubscriptionType::Failover, &["zed", "alice", "bob"]);
        assert_eq!(chosen_name(&mut r, ""), Some("alice".into()));
        let alice = r.members()[0].id;
        r.remove(alice);
        assert_eq!(chosen_name(&mut r, ""), Some("bob".into()));
    }

    #[test]
    fn failover_spreads_partitions_over_consumers() {
        let mut active = Vec::new();
        for partition in 0..3 {
            let mut r = Router::new(SubscriptionType::Failover, partition);
            for (id, name) in ["a", "b", "c"].iter().enumerate() {
                r.insert(Member::new(id as u64, name, &[]).unwrap());
            }
            active.push(chosen_name(&mut r, "").unwrap());
        }
        assert_eq!(active, vec!["a", "b", "c"]);
    }

    #[test]
    fn a_failover_active_without_room_holds_rather_than_passing_to_another() {
        let mut r = router(SubscriptionType::Failover, &["a", "b"]);
        assert_eq!(r.choose("", &[0, 5]), None);
    }

    #[test]
    fn key_shared_keeps_each_key_on_one_consumer() {
        let mut r = router(SubscriptionType::KeyShared, &["a", "b", "c"]);
        for key in ["k1", "k2", "k3", "user-9"] {
            let first = chosen_name(&mut r, key);
            for _ in 0..5 {
                assert_eq!(chosen_name(&mut r, key), first);
            }
        }
    }

    #[test]
    fn key_shared_moves_few_keys_when_a_consumer_joins() {
        let mut r = router(SubscriptionType::KeyShared, &["a", "b", "c"]);
        let keys: Vec<String> = (0..3000).map(|i| format!("key-{i}")).collect();
        let before: Vec<_> = keys.iter().map(|k| chosen_name(&mut r, k)).collect();

        r.insert(Member::new(99, "d", &[]).unwrap());
        let after: Vec<_> = keys.iter().map(|k| chosen_name(&mut r, k)).collect();

        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let to_new = after.iter().filter(|a| a.as_deref() == Some("d")).count();
        assert_eq!(moved, to_new, "keys only move to the new consumer");
        assert!(
            moved < keys.len() / 2,
            "{moved} of {} keys moved",
            keys.len()
        );
        assert!(
            moved > keys.len() / 10,
            "the new consumer got only {moved} keys"
        );
    }

    #[test]
    fn key_shared_spreads_keys_over_every_consumer() {
        let mut r = router(SubscriptionType::KeyShared, &["a", "b", "c"]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(chosen_name(&mut r, &format!("k{i}")).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n > 500), "{counts:?}");
    }

    #[test]
    fn key_filters_send_matching_keys_to_the_consumers_that_asked_for_them() {
        let mut r = Router::new(SubscriptionType::KeyShared, 0);
        r.insert(Member::new(1, "eu", &["eu-*".into()]).unwrap());
        r.insert(Member::new(2, "us", &["us-*".into()]).unwrap());
        r.insert(Member::new(3, "rest", &[]).unwrap());
        for i in 0..50 {
            assert_eq!(chosen_name(&mut r, &format!("eu-{i}")), Some("eu".into()));
            assert_eq!(chosen_name(&mut r, &format!("us-{i}")), Some("us".into()));
            assert_eq!(
                chosen_name(&mut r, &format!("asia-{i}")),
                Some("rest".into())
            );
        }
    }

    #[test]
    fn keys_no_filter_matches_fall_back_to_any_consumer_when_all_have_filters() {
        let mut r = Router::new(SubscriptionType::KeyShared, 0);
        r.insert(Member::new(1, "eu", &["eu-*".into()]).unwrap());
        r.insert(Member::new(2, "us", &["us-*".into()]).unwrap());
        let owner = chosen_name(&mut r, "asia-1");
        assert!(owner.is_some());
        assert_eq!(
            chosen_name(&mut r, "asia-1"),
            owner,
            "the fallback is stable"
        );
    }

    #[test]
    fn an_invalid_glob_is_refused() {
        assert!(Member::new(1, "x", &["[".into()]).is_err());
    }

    #[test]
    fn a_subscription_without_consumers_chooses_nobody() {
        let mut r = Router::new(SubscriptionType::Shared, 0);
        assert_eq!(r.choose("k", &[]), None);
    }
}

//! Dispatch: which consumer of a subscription gets each message.
//!
//! [`router::Router`] holds the choice for every subscription type and is
//! pure (no I/O, no locks), so each rule is unit-tested on its own. The
//! subscription modules drive it: [`push`] for non-reliable topics, where
//! messages go straight from the publish call into consumer buffers, and
//! [`reliable`] for reliable topics, where one task per subscription reads
//! the topic's log and tracks what each consumer has not acknowledged.

pub mod consumer;
pub mod push;
pub mod reliable;
pub mod router;

use std::fmt;

/// How a subscription shares its messages among its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionType {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl SubscriptionType {
    pub fn name(self) -> &'static str {
        match self {
            SubscriptionType::Exclusive => "exclusive",
            SubscriptionType::Shared => "shared",
            SubscriptionType::Failover => "failover",
            SubscriptionType::KeyShared => "key-shared",
        }
    }
}

impl fmt::Display for SubscriptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

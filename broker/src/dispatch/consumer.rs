//! One consumer of a subscription and the buffer its deliveries wait in.
//!
//! The dispatcher pushes deliveries into the consumer's current session
//! only while [`ConsumerHandle::room`] allows it: the room is the smaller of
//! the free buffer space and, for clients that grant credits (the native
//! API), the credits not yet spent. The session's stream task drains the
//! buffer onto the wire. A new session (a reconnect, or an Exclusive
//! takeover by the same name) replaces the channel, which ends the old
//! stream.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use crate::message::Delivery;

/// The receiving end of one session.
pub type DeliveryReceiver = mpsc::UnboundedReceiver<Vec<Delivery>>;

/// A consumer attached (or attachable) to a subscription.
#[derive(Debug)]
pub struct ConsumerHandle {
    pub id: u64,
    pub name: String,
    pub topic: String,
    pub subscription: String,
    pub key_filters: Vec<String>,
    /// Whether the client grants credits (native API); Danube clients do not.
    credit_flow: bool,
    credits: AtomicI64,
    buffered: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
    dropped_total: AtomicU64,
    delivered: AtomicU64,
    delivered_counter: Arc<AtomicU64>,
    session: Mutex<Session>,
    /// Woken when room grows, so a waiting reliable dispatcher sends more.
    room_changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Session {
    id: u64,
    sender: Option<mpsc::UnboundedSender<Vec<Delivery>>>,
    unclaimed: Option<DeliveryReceiver>,
    detached_since: Option<Instant>,
}

/// What [`ConsumerHandle::new`] needs to know.
pub struct ConsumerSpec {
    pub id: u64,
    pub name: String,
    pub topic: String,
    pub subscription: String,
    pub key_filters: Vec<String>,
    pub credit_flow: bool,
    pub capacity: usize,
    /// The subscription's count of delivered messages, shared by its consumers.
    pub delivered_counter: Arc<AtomicU64>,
}

impl ConsumerHandle {
    /// A consumer with a first session whose receiver waits to be claimed.
    pub fn new(spec: ConsumerSpec, room_changed: Arc<Notify>) -> ConsumerHandle {
        let (sender, receiver) = mpsc::unbounded_channel();
        ConsumerHandle {
            id: spec.id,
            name: spec.name,
            topic: spec.topic,
            subscription: spec.subscription,
            key_filters: spec.key_filters,
            credit_flow: spec.credit_flow,
            credits: AtomicI64::new(0),
            buffered: AtomicUsize::new(0),
            capacity: spec.capacity.max(1),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_counter: spec.delivered_counter,
            session: Mutex::new(Session {
                id: 1,
                sender: Some(sender),
                unclaimed: Some(receiver),
                detached_since: None,
            }),
            room_changed,
        }
    }

    /// How many more messages may be pushed now.
    pub fn room(&self) -> usize {
        let free = self.capacity.saturating_sub(self.buffered.load(Ordering::Acquire));
        if !self.credit_flow {
            return free;
        }
        let credits = self.credits.load(Ordering::Acquire).max(0) as usize;
        free.min(credits)
    }

    /// Pushes deliveries that fit in [`ConsumerHandle::room`]. Returns them
    /// back when no session is open.
    pub fn push(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
        let count = deliveries.len();
        let session = self.lock_session();
        let Some(sender) = &session.sender else {
            return Err(deliveries);
        };
        self.buffered.fetch_add(count, Ordering::AcqRel);
        if self.credit_flow {
            self.credits.fetch_sub(count as i64, Ordering::AcqRel);
        }
        sender.send(deliveries).map_err(|error| {
            self.buffered.fetch_sub(count, Ordering::AcqRel);
            error.0
        })
    }

    /// Called by the stream task for each chunk it takes off the buffer.
    pub fn taken(&self, count: usize) {
        self.buffered.fetch_sub(count, Ordering::AcqRel);
        self.delivered.fetch_add(count as u64, Ordering::Relaxed);
        self.delivered_counter.fetch_add(count as u64, Ordering::Relaxed);
        self.room_changed.notify_one();
    }

    /// Adds credits granted by the client.
    pub fn grant(&self, credits: u32) {
        self.credits.fetch_add(i64::from(credits), Ordering::AcqRel);
        self.room_changed.notify_one();
    }

    /// Counts messages lost because the consumer had no room.
    pub fn count_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        self.dropped_total.fetch_add(count, Ordering::Relaxed);
    }

    /// Messages dropped since the consumer joined.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Messages dropped since the last call (non-reliable topics).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Claims the receiver for a stream: the first session's one when it is
    /// still unclaimed, else a new session that ends the previous stream.
    /// Returns the session id and the receiver.
    pub fn attach(&self) -> (u64, DeliveryReceiver) {
        let mut session = self.lock_session();
        session.detached_since = None;
        if let Some(receiver) = session.unclaimed.take() {
            return (session.id, receiver);
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        session.id += 1;
        session.sender = Some(sender);
        self.buffered.store(0, Ordering::Release);
        (session.id, receiver)
    }

    /// Ends session `session_id` if it is still the current one; returns
    /// whether it was (a newer session may have replaced it).
    pub fn detach(&self, session_id: u64) -> bool {
        let mut session = self.lock_session();
        if session.id != session_id {
            return false;
        }
        session.sender = None;
        session.unclaimed = None;
        session.detached_since = Some(Instant::now());
        self.buffered.store(0, Ordering::Release);
        self.credits.store(0, Ordering::Release);
        true
    }

    /// Ends whatever session is open, for good.
    pub fn close(&self) {
        let mut session = self.lock_session();
        session.sender = None;
        session.unclaimed = None;
        session.detached_since.get_or_insert_with(Instant::now);
    }

    /// When the consumer lost its last session, if it has none now.
    pub fn detached_since(&self) -> Option<Instant> {
        self.lock_session().detached_since
    }

    pub fn is_attached(&self) -> bool {
        self.lock_session().sender.is_some()
    }

    fn lock_session(&self) -> std::sync::MutexGuard<'_, Session> {
        // A panic while holding this lock leaves a consistent Session.
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

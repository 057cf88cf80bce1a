//! One consumer of a subscription and the buffer its deliveries wait in.
//!
//! The dispatcher pushes deliveries into the consumer's current session
//! only while there is room in its buffer. The session's stream task moves
//! them onto the wire, and for clients that grant credits (the native API)
//! never more than the credits allow: the buffer absorbs a burst while the
//! client's next credits are on their way. Reliable dispatch also keeps the
//! buffer within the credits ([`ConsumerHandle::credited_room`]), so that
//! unacknowledged messages are not parked with a consumer that cannot take
//! them. A new session (a reconnect, or an Exclusive
//! takeover by the same name) replaces the channel, which ends the old
//! stream.
//!
//! The buffer is bounded in messages and in bytes ([`BufferLimit`]): the
//! message bound alone would let a consumer of 5 MiB messages pin
//! gigabytes. A message is admitted while the buffered bytes are below
//! the bound, so the buffer overshoots it by at most one message and a
//! message larger than the bound still gets through an empty buffer.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use crate::message::{Delivery, Message};

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
    buffered_bytes: AtomicUsize,
    limit: BufferLimit,
    dropped: AtomicU64,
    dropped_total: AtomicU64,
    delivered: AtomicU64,
    delivered_counter: Arc<AtomicU64>,
    delivered_bytes: Arc<AtomicU64>,
    session: Mutex<Session>,
    /// Woken when room grows, so a waiting reliable dispatcher sends more.
    room_changed: Arc<Notify>,
    /// Woken when credits arrive, so a waiting stream sends more.
    credits_granted: Notify,
}

#[derive(Debug, Default)]
struct Session {
    id: u64,
    sender: Option<mpsc::UnboundedSender<Vec<Delivery>>>,
    unclaimed: Option<DeliveryReceiver>,
    detached_since: Option<Instant>,
}

/// How much one consumer's buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLimit {
    /// Messages, whatever their size.
    pub messages: usize,
    /// Payload, key and attributes, as [`Message::message_bytes`] counts them.
    pub bytes: usize,
}

/// What [`ConsumerHandle::new`] needs to know.
pub struct ConsumerSpec {
    pub id: u64,
    pub name: String,
    pub topic: String,
    pub subscription: String,
    pub key_filters: Vec<String>,
    pub credit_flow: bool,
    pub buffer: BufferLimit,
    /// The subscription's count of delivered messages, shared by its consumers.
    pub delivered_counter: Arc<AtomicU64>,
    /// The subscription's count of delivered message bytes (payload, key
    /// and attributes, as counted in), shared by its consumers.
    pub delivered_bytes: Arc<AtomicU64>,
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
            buffered_bytes: AtomicUsize::new(0),
            limit: BufferLimit {
                messages: spec.buffer.messages.max(1),
                bytes: spec.buffer.bytes.max(1),
            },
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_counter: spec.delivered_counter,
            delivered_bytes: spec.delivered_bytes,
            session: Mutex::new(Session {
                id: 1,
                sender: Some(sender),
                unclaimed: Some(receiver),
                detached_since: None,
            }),
            room_changed,
            credits_granted: Notify::new(),
        }
    }

    /// How many more messages fit in the buffer now: none once its bytes
    /// reached their bound.
    pub fn room(&self) -> usize {
        if self.byte_room() == 0 {
            return 0;
        }
        self.limit
            .messages
            .saturating_sub(self.buffered.load(Ordering::Acquire))
    }

    /// How many more bytes may be buffered before the buffer is full.
    pub fn byte_room(&self) -> usize {
        self.limit
            .bytes
            .saturating_sub(self.buffered_bytes.load(Ordering::Acquire))
    }

    /// How many more messages may be buffered without exceeding the
    /// client's credits.
    pub fn credited_room(&self) -> usize {
        if !self.credit_flow {
            return self.room();
        }
        let credits = self.credits.load(Ordering::Acquire).max(0) as usize;
        let buffered = self.buffered.load(Ordering::Acquire);
        self.room().min(credits.saturating_sub(buffered))
    }

    /// Takes up to `want` credits, waiting until at least one is granted.
    /// Clients without credit flow get `want` at once.
    pub async fn take_credits(&self, want: usize) -> usize {
        if !self.credit_flow || want == 0 {
            return want;
        }
        loop {
            let available = self.credits.load(Ordering::Acquire);
            if available > 0 {
                let take = (available as usize).min(want);
                let taken = self.credits.compare_exchange(
                    available,
                    available - take as i64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if taken.is_ok() {
                    return take;
                }
                continue;
            }
            self.credits_granted.notified().await;
        }
    }

    /// Pushes deliveries that fit in [`ConsumerHandle::room`], `bytes` of
    /// messages in all (as [`Room::taken_bytes`] counted them). Returns them
    /// back when no session is open.
    pub fn push(&self, deliveries: Vec<Delivery>, bytes: usize) -> Result<(), Vec<Delivery>> {
        let count = deliveries.len();
        debug_assert_eq!(bytes, delivery_bytes(&deliveries));
        let session = self.lock_session();
        let Some(sender) = &session.sender else {
            return Err(deliveries);
        };
        self.buffered.fetch_add(count, Ordering::AcqRel);
        self.buffered_bytes.fetch_add(bytes, Ordering::AcqRel);
        sender.send(deliveries).map_err(|error| {
            self.buffered.fetch_sub(count, Ordering::AcqRel);
            self.buffered_bytes.fetch_sub(bytes, Ordering::AcqRel);
            error.0
        })
    }

    /// Called by the stream task of session `session` for the messages it
    /// moved onto the wire. A session that a newer one replaced may still
    /// hand over what it held; the buffer stopped counting that when the
    /// newer session attached.
    pub fn taken(&self, session: u64, deliveries: &[Delivery]) {
        let count = deliveries.len();
        let bytes = delivery_bytes(deliveries);
        let current = self.lock_session();
        if current.id == session {
            let before = self.buffered.fetch_sub(count, Ordering::AcqRel);
            let bytes_before = self.buffered_bytes.fetch_sub(bytes, Ordering::AcqRel);
            debug_assert!(
                before >= count && bytes_before >= bytes,
                "buffer counts underflow"
            );
        }
        drop(current);
        self.delivered.fetch_add(count as u64, Ordering::Relaxed);
        self.delivered_counter
            .fetch_add(count as u64, Ordering::Relaxed);
        self.delivered_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.room_changed.notify_one();
    }

    /// Adds credits granted by the client.
    pub fn grant(&self, credits: u32) {
        self.credits.fetch_add(i64::from(credits), Ordering::AcqRel);
        self.credits_granted.notify_one();
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
        self.buffered_bytes.store(0, Ordering::Release);
        // The new stream's client grants its own credits.
        self.credits.store(0, Ordering::Release);
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
        self.buffered_bytes.store(0, Ordering::Release);
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
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn delivery_bytes(deliveries: &[Delivery]) -> usize {
    deliveries.iter().map(|d| d.message.message_bytes()).sum()
}

/// What each consumer of a subscription can still take during one
/// dispatch pass, in messages (what the router chooses by) and in bytes.
#[derive(Debug)]
pub struct Room {
    messages: Vec<usize>,
    bytes: Vec<usize>,
    /// Bytes given to each consumer in this pass.
    taken: Vec<usize>,
}

impl Room {
    /// `messages_of` says how many messages a consumer may take; a consumer
    /// whose buffer has no byte room left takes none.
    pub fn of(
        consumers: &[Arc<ConsumerHandle>],
        messages_of: impl Fn(&ConsumerHandle) -> usize,
    ) -> Room {
        let bytes: Vec<usize> = consumers.iter().map(|c| c.byte_room()).collect();
        let messages = consumers
            .iter()
            .zip(&bytes)
            .map(|(consumer, &bytes)| if bytes == 0 { 0 } else { messages_of(consumer) })
            .collect();
        let taken = vec![0; consumers.len()];
        Room {
            messages,
            bytes,
            taken,
        }
    }

    /// Messages each consumer may still take, in consumer order.
    pub fn messages(&self) -> &[usize] {
        &self.messages
    }

    /// Messages all consumers together may still take.
    pub fn total_messages(&self) -> usize {
        self.messages
            .iter()
            .fold(0, |sum, room| sum.saturating_add(*room))
    }

    /// Whether no consumer may take another message in this pass.
    pub fn is_exhausted(&self) -> bool {
        self.messages.iter().all(|room| *room == 0)
    }

    /// Counts `message` as given to consumer `index`.
    pub fn take(&mut self, index: usize, message: &Message) {
        debug_assert!(
            self.messages[index] > 0,
            "routed to a consumer without room"
        );
        let size = message.message_bytes();
        self.messages[index] -= 1;
        self.bytes[index] = self.bytes[index].saturating_sub(size);
        self.taken[index] += size;
        if self.bytes[index] == 0 {
            self.messages[index] = 0;
        }
    }

    /// Bytes of the messages given to consumer `index` in this pass, for
    /// [`ConsumerHandle::push`].
    pub fn taken_bytes(&self, index: usize) -> usize {
        self.taken[index]
    }
}

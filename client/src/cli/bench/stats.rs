//! What the bench measures and how it reports it: per-worker tallies with
//! an HDR latency histogram, shared counters for progress and stopping, the
//! progress bar, and the final report in text or JSON.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Mode, Plan};
use crate::cli::OutputArg;

/// The highest latency the histograms hold: an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What one producer or consumer task counted.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) messages: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) latency_us: Histogram<u64>,
    /// When the last message was acknowledged or received.
    pub(crate) last_at: Option<Instant>,
    /// Messages the broker dropped for a slow consumer (non-reliable).
    pub(crate) dropped: u64,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            messages: 0,
            errors: 0,
            first_error: None,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("the histogram bounds are valid constants"),
            last_at: None,
            dropped: 0,
        }
    }

    /// Counts one message that took `latency`.
    pub(crate) fn record(&mut self, latency: Duration, at: Instant) {
        self.messages += 1;
        self.latency_us
            .saturating_record(latency.as_micros() as u64);
        self.last_at = Some(at);
    }

    /// Counts a failure, keeping the text of the first one.
    pub(crate) fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.messages += other.messages;
        self.errors += other.errors;
        self.dropped += other.dropped;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds always add");
        self.last_at = self.last_at.max(other.last_at);
    }
}

/// Counters shared by every task of a run, for the progress bar and for
/// deciding when consumers are done.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) acknowledged: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Consumers stop once they received this many messages together.
    target: AtomicU64,
    producers_done: AtomicBool,
    producers_done_at: OnceLock<Instant>,
}

/// How long consumers wait for one more message once nothing more is
/// expected to come (the producers are done, or a backlog seems drained).
const IDLE_LIMIT: Duration = Duration::from_secs(3);

impl Meter {
    pub(crate) fn new(target: Option<u64>) -> Arc<Meter> {
        Arc::new(Meter {
            acknowledged: AtomicU64::new(0),
            received: AtomicU64::new(0),
            target: AtomicU64::new(target.unwrap_or(u64::MAX)),
            producers_done: AtomicBool::new(false),
            producers_done_at: OnceLock::new(),
        })
    }

    /// Producers are finished: consumers wait for what was acknowledged.
    pub(crate) fn producers_finished(&self, acknowledged: u64) {
        self.target.store(acknowledged, Ordering::Relaxed);
        let _ = self.producers_done_at.set(Instant::now());
        self.producers_done.store(true, Ordering::Release);
    }

    /// Whether every expected message arrived (one atomic load).
    pub(crate) fn all_received(&self) -> bool {
        self.received.load(Ordering::Relaxed) >= self.target.load(Ordering::Relaxed)
    }

    /// Whether a consumer should stop: every expected message arrived, the
    /// consume deadline passed, or nothing came for a while when nothing
    /// more is coming.
    pub(crate) fn consumers_should_stop(
        &self,
        plan: &Plan,
        deadline: Option<Instant>,
        last_message_at: Instant,
        now: Instant,
    ) -> bool {
        if self.received.load(Ordering::Relaxed) >= self.target.load(Ordering::Relaxed) {
            return true;
        }
        if plan.mode == Mode::Consume && deadline.is_some_and(|deadline| now >= deadline) {
            return true;
        }

        let idle_since = match plan.mode {
            Mode::Consume => last_message_at,
            _ if self.producers_done.load(Ordering::Acquire) => {
                let done_at = *self.producers_done_at.get().unwrap_or(&now);
                last_message_at.max(done_at)
            }
            _ => return false,
        };
        now.duration_since(idle_since) >= IDLE_LIMIT
    }
}

/// Microseconds since the Unix epoch at `at`, as stamped into e2e
/// payloads. Reckoned from one reading of the wall clock at the first call
/// and the monotonic clock since, so a caller that already read the time
/// for its own use does not read it again.
pub(crate) fn unix_micros(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (anchor, anchor_micros) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), wall.as_micros() as u64)
    });
    match at.checked_duration_since(anchor) {
        Some(since) => anchor_micros + since.as_micros() as u64,
        None => anchor_micros.saturating_sub(anchor.duration_since(at).as_micros() as u64),
    }
}

/// The latency at `now` of a message stamped by [`unix_micros`] in its
/// first 8 bytes.
pub(crate) fn stamped_latency(payload: &[u8], now: Instant) -> Duration {
    let Some(stamp) = payload.first_chunk::<8>() else {
        return Duration::ZERO;
    };
    let sent = u64::from_le_bytes(*stamp);
    Duration::from_micros(unix_micros(now).saturating_sub(sent))
}

/// The latency at `now` of a message from the broker's publish time.
pub(crate) fn published_latency(publish_time: SystemTime, now: Instant) -> Duration {
    let now = UNIX_EPOCH + Duration::from_micros(unix_micros(now));
    now.duration_since(publish_time).unwrap_or_default()
}

/// The progress bar on stderr, hidden when stderr is not a terminal.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    pub(crate) fn start(plan: &Plan, meter: Arc<Meter>) -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let (length, template) = match plan.count {
            Some(count) => (
                count,
                "{elapsed_precise} [{bar:40}] {pos}/{len} msgs, {msg}",
            ),
            None => (
                plan.duration.as_secs(),
                "{elapsed_precise} [{bar:40}] {pos}/{len} s, {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(length), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }

        let mode = plan.mode;
        let counted = plan.count.is_some();
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut interval = tokio::time::interval(Duration::from_millis(200));
            loop {
                interval.tick().await;
                let messages = match mode {
                    Mode::Produce => meter.acknowledged.load(Ordering::Relaxed),
                    Mode::Consume | Mode::E2e => meter.received.load(Ordering::Relaxed),
                };
                let elapsed = started.elapsed();
                let rate = messages as f64 / elapsed.as_secs_f64().max(1e-3);
                ticking.set_position(if counted { messages } else { elapsed.as_secs() });
                ticking.set_message(format!("{messages} msgs at {rate:.0} msgs/s"));
            }
        });
        Progress { bar, ticker }
    }

    pub(crate) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// The result of a run, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    pub(crate) api: &'static str,
    pub(crate) size: usize,
    /// Messages measured: acknowledged for produce, received otherwise.
    pub(crate) messages: u64,
    /// Messages the broker acknowledged to the producers (produce, e2e).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) acknowledged: Option<u64>,
    pub(crate) duration_secs: f64,
    pub(crate) msgs_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) latency_us: Latency,
    /// Messages the broker dropped because a consumer did not keep up.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) dropped: u64,
    pub(crate) errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

impl Report {
    /// Throughput over `elapsed`; megabytes are 10^6 bytes of payload.
    pub(crate) fn new(plan: &Plan, measured: &Tally, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-6);
        let bytes = measured.messages as f64 * plan.size as f64;
        Report {
            mode: plan.mode.name(),
            api: plan.api.name(),
            size: plan.size,
            messages: measured.messages,
            acknowledged: None,
            duration_secs: seconds,
            msgs_per_sec: measured.messages as f64 / seconds,
            mb_per_sec: bytes / 1e6 / seconds,
            latency_us: Latency::of(&measured.latency_us),
            dropped: measured.dropped,
            errors: 0,
            first_error: None,
        }
    }

    pub(crate) fn print(&self, output: OutputArg) -> anyhow::Result<()> {
        match output {
            OutputArg::Json => println!("{}", serde_json::to_string(self)?),
            OutputArg::Text => println!("{}", self.text()),
        }
        Ok(())
    }

    fn text(&self) -> String {
        let latency_kind = match self.mode {
            "produce" => "publish to ack",
            "e2e" => "publish to receive",
            _ => "broker publish time to receive",
        };
        let mut text = format!(
            "bench {} ({} api): {} messages of {} bytes in {:.2} s\n\
             throughput: {:.0} msgs/s, {:.2} MB/s\n\
             latency ({latency_kind}, µs): p50 {}, p99 {}, p99.9 {}, max {}",
            self.mode,
            self.api,
            self.messages,
            self.size,
            self.duration_secs,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
        );
        if let Some(acknowledged) = self.acknowledged {
            text.push_str(&format!("\nacknowledged by the broker: {acknowledged}"));
        }
        if self.dropped > 0 {
            let dropped = self.dropped;
            text.push_str(&format!(
                "\ndropped by the broker for slow consumers: {dropped}"
            ));
        }
        if self.errors > 0 {
            let first = self.first_error.as_deref().unwrap_or("unknown");
            text.push_str(&format!("\nerrors: {} (first: {first})", self.errors));
        }
        text
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_tallies_add_counts_and_keep_the_first_error() {
        let now = Instant::now();
        let mut first = Tally::new();
        first.record(Duration::from_micros(100), now);
        let mut second = Tally::new();
        second.record(Duration::from_micros(300), now + Duration::from_millis(1));
        second.error("broker refused the batch");

        first.merge(second);
        assert_eq!(first.messages, 2);
        assert_eq!(first.errors, 1);
        assert_eq!(
            first.first_error.as_deref(),
            Some("broker refused the batch")
        );
        assert_eq!(first.last_at, Some(now + Duration::from_millis(1)));
        assert!(first.latency_us.max() >= 300);
    }

    #[test]
    fn a_stamped_payload_measures_its_age() {
        let now = Instant::now();
        let stamp = unix_micros(now) - 5_000;
        let mut payload = stamp.to_le_bytes().to_vec();
        payload.extend_from_slice(b"rest of the payload");
        assert_eq!(stamped_latency(&payload, now), Duration::from_millis(5));
        assert_eq!(stamped_latency(b"short", now), Duration::ZERO);
    }

    #[test]
    fn stamps_follow_the_wall_clock() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let stamped = Duration::from_micros(unix_micros(Instant::now()));
        assert!(
            stamped.abs_diff(wall) < Duration::from_secs(1),
            "{stamped:?} {wall:?}"
        );
    }
}

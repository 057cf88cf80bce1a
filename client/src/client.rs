//! The [`Client`]: connections to brokers and topic lookups.
//!
//! A client keeps one HTTP/2 channel per broker URL, created on first use
//! and shared by every producer and consumer cloned from it. Lookups go to
//! the service URL; streams go to the URL of the broker that owns the topic.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sava_proto::sava::v1::sava_client_client::SavaClientClient;
use sava_proto::sava::v1::{LookupRequest, LookupResponse, TopicSettings};
use tonic::transport::{Channel, Endpoint};

use crate::consumer::ConsumerBuilder;
use crate::error::{Error, Result};
use crate::producer::ProducerBuilder;

/// The largest message the client accepts from a broker: a delivery batch
/// of big payloads goes well past gRPC's default of 4 MiB.
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A handle on a Sava cluster, reached through one service URL.
///
/// Cloning is cheap: clones share their connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    service_url: String,
    settings: Settings,
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    connect_timeout: Duration,
    operation_timeout: Duration,
}

/// Configures a [`Client`]; made by [`Client::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    service_url: String,
    settings: Settings,
}

impl ClientBuilder {
    /// How long to wait for a TCP connection to a broker (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long to wait for a broker to answer a lookup, an open or a
    /// subscribe (default 10 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.settings.operation_timeout = timeout;
        self
    }

    /// Connects to the service URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the URL is malformed and
    /// [`Error::Transport`] when no broker answers at it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the connection attempt; nothing else is
    /// lost.
    pub async fn build(self) -> Result<Client> {
        let service_url = normalize_url(&self.service_url);
        let endpoint = endpoint(&service_url, self.settings)?;

        let channel = endpoint
            .connect()
            .await
            .map_err(|source| Error::Transport {
                url: service_url.clone(),
                source,
            })?;

        let channels = HashMap::from([(service_url.clone(), channel)]);
        Ok(Client {
            inner: Arc::new(Inner {
                service_url,
                settings: self.settings,
                channels: Mutex::new(channels),
            }),
        })
    }
}

impl Client {
    /// Starts configuring a client for the broker (or cluster) at
    /// `service_url`, such as `http://127.0.0.1:6650`.
    pub fn builder(service_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            service_url: service_url.into(),
            settings: Settings {
                connect_timeout: Duration::from_secs(5),
                operation_timeout: Duration::from_secs(10),
            },
        }
    }

    /// The URL lookups are sent to.
    pub fn service_url(&self) -> &str {
        &self.inner.service_url
    }

    /// The channel to the service URL, for calling other gRPC services of
    /// the broker (the Danube-compatible API, for instance) over the same
    /// tuned connection.
    pub fn channel(&self) -> Channel {
        // The service URL was validated and cached by `build`.
        self.channel_to(&self.inner.service_url)
            .expect("the service url was validated when the client was built")
    }

    /// Starts configuring a producer on `topic` (`/namespace/topic`).
    pub fn producer(&self, topic: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder::new(self.clone(), topic.into())
    }

    /// Starts configuring a consumer of `topic` in `subscription`.
    pub fn consumer(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
    ) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), topic.into(), subscription.into())
    }

    /// Looks `topic` up on the service URL, creating it with `create` when
    /// given and missing.
    pub(crate) async fn lookup(
        &self,
        topic: &str,
        create: Option<TopicSettings>,
    ) -> Result<LookupResponse> {
        let mut stub = self.stub(&self.inner.service_url)?;
        let request = LookupRequest {
            topic: topic.to_owned(),
            create,
        };

        let response = self
            .with_timeout("looking up a topic", stub.lookup(request))
            .await??;
        Ok(response.into_inner())
    }

    /// A stub for the broker that owns partition `index` of the topic of
    /// `lookup` (the topic itself when it is not partitioned); brokers that
    /// name no owner are asked themselves.
    pub(crate) fn owner_stub(
        &self,
        lookup: &LookupResponse,
        index: usize,
    ) -> Result<SavaClientClient<Channel>> {
        let url = lookup
            .partition_owner_urls
            .get(index)
            .unwrap_or(&lookup.owner_url);
        if url.is_empty() {
            return self.stub(&self.inner.service_url);
        }
        self.stub(&normalize_url(url))
    }

    /// Runs `future`, failing with [`Error::Timeout`] after the operation
    /// timeout.
    pub(crate) async fn with_timeout<F: Future>(
        &self,
        operation: &'static str,
        future: F,
    ) -> Result<F::Output> {
        let after = self.inner.settings.operation_timeout;
        tokio::time::timeout(after, future)
            .await
            .map_err(|_| Error::Timeout { operation, after })
    }

    fn stub(&self, url: &str) -> Result<SavaClientClient<Channel>> {
        let channel = self.channel_to(url)?;
        Ok(SavaClientClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE))
    }

    /// The cached channel to `url`, made lazily: it connects on first use
    /// and reconnects by itself after a failure.
    fn channel_to(&self, url: &str) -> Result<Channel> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .expect("the channel cache lock is never held across a panic");
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }

        let channel = endpoint(url, self.inner.settings)?.connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service_url", &self.inner.service_url)
            .finish_non_exhaustive()
    }
}

/// An endpoint tuned for streaming: no Nagle delay, large HTTP/2 windows so
/// a single stream can carry hundreds of MB/s, and keepalives that notice a
/// dead broker within half a minute.
fn endpoint(url: &str, settings: Settings) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| Error::InvalidArgument(format!("invalid broker url `{url}`: {error}")))?;

    Ok(endpoint
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(32 * 1024 * 1024)
        .max_frame_size(MAX_FRAME_BYTES))
}

/// The largest HTTP/2 frame the client accepts: large frames carry a batch
/// of deliveries in a few reads rather than one read per 16 KiB.
const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// One spelling per URL, so the channel cache does not hold two
/// connections to the same broker.
fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_differ_only_by_a_trailing_slash_share_a_channel() {
        assert_eq!(
            normalize_url("http://a:6650/"),
            normalize_url("http://a:6650")
        );
    }

    #[test]
    fn a_malformed_url_is_an_invalid_argument() {
        let settings = Client::builder("x").settings;
        let error = endpoint("not a url", settings).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    }
}

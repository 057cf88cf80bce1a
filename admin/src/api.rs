//! The connection to a broker's admin port, which serves both the
//! `sava.v1.Admin` service and the schema registry, and the one place where
//! a gRPC status becomes the error line the user sees.

use std::error::Error as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sava_proto::WireError;
use sava_proto::danube_schema::schema_registry_client::SchemaRegistryClient;
use sava_proto::sava::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// How long connecting to the admin port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one admin call may take; deleting a namespace with many topics
/// is the slowest.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected admin port.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    url: String,
    channel: Channel,
}

impl Api {
    /// Connects to the admin API at `url`; `host:port` alone means
    /// `http://host:port`.
    pub(crate) async fn connect(url: &str) -> Result<Api> {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid admin url {url:?}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);

        let channel = endpoint.connect().await.map_err(|error| {
            anyhow!(
                "cannot connect to the admin api at {url}: {}",
                chain(&error)
            )
        })?;
        Ok(Api { url, channel })
    }

    /// A client of the `sava.v1.Admin` service.
    pub(crate) fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// A client of the schema registry.
    pub(crate) fn registry(&self) -> SchemaRegistryClient<Channel> {
        SchemaRegistryClient::new(self.channel.clone())
    }

    /// The error to show for `status`. The broker's messages already name
    /// the problem, so they are kept as they are; transport failures and
    /// bare codes get the URL and what the code means.
    pub(crate) fn error(&self, status: Status) -> anyhow::Error {
        let url = &self.url;
        if let Some(source) = status.source() {
            return anyhow!("the admin api at {url} failed: {}", chain(source));
        }
        if !status.message().trim().is_empty() {
            return WireError::from(status).into();
        }
        match status.code() {
            Code::Unimplemented => {
                anyhow!("the admin api at {url} does not implement this call; is it a sava broker?")
            }
            Code::DeadlineExceeded => {
                anyhow!("the admin api at {url} did not answer within {CALL_TIMEOUT:?}")
            }
            code => anyhow!(
                "the admin api at {url} answered {}, without a message",
                code.description().to_lowercase()
            ),
        }
    }
}

/// Turns a call's result into the answer or the error to show.
pub(crate) trait Reply<T> {
    fn reply(self, api: &Api) -> Result<T>;
}

impl<T> Reply<T> for std::result::Result<Response<T>, Status> {
    fn reply(self, api: &Api) -> Result<T> {
        self.map(Response::into_inner)
            .map_err(|status| api.error(status))
    }
}

/// An error and its sources on one line, `outer: inner: innermost`, without
/// repeating a source that its parent already quotes.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! Admin calls about a topic another broker owns are passed on to that
//! broker's admin API, so an operator can point `sava-admin` at any broker.
//!
//! A passed-on call carries the `x-sava-forwarded` header; a broker that
//! gets one answers it itself, whatever it thinks of the ownership, so a
//! call never travels further than one hop while ownership moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sava_proto::sava::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::broker::Broker;
use crate::error::BrokerError;

/// The header that marks a call passed on by another broker.
pub const FORWARDED: &str = "x-sava-forwarded";

/// Channels to other brokers (their admin or client APIs), made on first
/// use.
#[derive(Debug, Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// The admin API of the live broker that owns `topic`, when that is not
    /// `broker` and `request` was not passed on already.
    pub async fn owner_of<T>(
        &self,
        broker: &Arc<Broker>,
        topic: &str,
        request: &Request<T>,
    ) -> Result<Option<AdminClient<Channel>>, Status> {
        if request.metadata().contains_key(FORWARDED) {
            return Ok(None);
        }
        let Some(owner) = broker.cluster.current_owner(topic).await? else {
            return Ok(None);
        };
        if owner.broker_id == broker.broker_id {
            return Ok(None);
        }
        Ok(Some(AdminClient::new(self.channel(&owner.admin_url)?)))
    }

    /// A channel to `url`, made once and kept.
    pub(super) fn channel(&self, url: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|error| {
                BrokerError::InvalidRequest(format!("broker admin url {url} is invalid: {error}"))
            })?
            .connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// `inner` as a call passed on to the owner.
pub fn passed_on<T>(inner: T) -> Request<T> {
    let mut request = Request::new(inner);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// Answers a call on the topic's owner when another broker owns it:
/// `on_owner!(self, request, method, topic)` returns that broker's reply.
macro_rules! on_owner {
    ($api:ident, $request:ident, $method:ident, $topic:expr) => {
        let topic = $topic;
        if let Some(mut owner) = $api
            .forwarder
            .owner_of(&$api.broker, &topic, &$request)
            .await?
        {
            return owner
                .$method(crate::api::forward::passed_on($request.into_inner()))
                .await;
        }
    };
}
pub(crate) use on_owner;

//! Danube clients in a cluster talk to the broker they looked a topic up
//! on, which passes their calls on to the owner.
//!
//! Danube's client looks a topic up again through the broker it is
//! connected to, and when that broker is the owner that just died, it never
//! finds the new one. So a broker that does not own a looked-up topic
//! answers `Redirect` with `proxy` set and its own URL to connect to: the
//! client then sends every call to it with the owner in the
//! `x-danube-broker-url` header, and the broker passes it on (one hop,
//! marked with `x-sava-forwarded`). When the owner dies, the calls fail with
//! UNAVAILABLE, the client looks the topic up again through this live
//! broker, and follows the new owner. `cluster.proxy_danube_clients = false`
//! answers plain redirects instead, saving the hop.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};

use super::forward::{FORWARDED, Forwarder};

/// The header Danube's client names the owning broker in.
pub const BROKER_URL_HEADER: &str = "x-danube-broker-url";

/// Channels to the owners calls are passed on to.
#[derive(Debug, Default)]
pub struct DanubeProxy {
    channels: Forwarder,
}

impl DanubeProxy {
    /// Where to pass `request` on to: the broker its header names, when that
    /// is not `own_url` and the call was not passed on already.
    pub fn target<T>(&self, request: &Request<T>, own_url: &str) -> Option<(String, Channel)> {
        let metadata = request.metadata();
        if metadata.contains_key(FORWARDED) {
            return None;
        }
        let owner = metadata.get(BROKER_URL_HEADER)?.to_str().ok()?;
        if same_url(owner, own_url) {
            return None;
        }
        let channel = self.channels.channel(owner).ok()?;
        Some((owner.to_owned(), channel))
    }
}

/// `inner` as a call passed on to `owner`.
pub fn passed_on<T>(inner: T, owner: &str) -> Request<T> {
    let mut request = super::forward::passed_on(inner);
    if let Ok(value) = owner.parse() {
        request.metadata_mut().insert(BROKER_URL_HEADER, value);
    }
    request
}

/// The error a client gets when the owner cannot be reached: UNAVAILABLE,
/// so it retries and then looks the topic up again.
pub fn unreachable(owner: &str, status: Status) -> Status {
    match is_unreachable(&status) {
        true => Status::unavailable(format!(
            "the topic's owner {owner} cannot be reached ({}); look the topic up again",
            status.message()
        )),
        false => status,
    }
}

/// Whether `status` says the call did not reach a broker (rather than the
/// broker refusing it).
pub fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Holds a call whose owner cannot be reached until that owner's lease
/// ran out, at most `limit`: Danube's client gives up after a few quick
/// retries, and only once the lease expired does a new lookup find the new
/// owner.
pub async fn wait_out_lease(brokers: &[sava_metadata::BrokerRecord], owner: &str, limit: Duration) {
    let now = crate::topic::now_ms();
    let Some(record) = brokers
        .iter()
        .find(|b| same_url(&b.client_url, owner) && b.is_alive(now))
    else {
        return;
    };
    let left = Duration::from_millis(record.lease_expires_ms.saturating_sub(now));
    tokio::time::sleep(left.min(limit)).await;
}

/// Whether two broker URLs name the same address, ignoring a trailing `/`.
fn same_url(left: &str, right: &str) -> bool {
    left.trim_end_matches('/') == right.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_owner(owner: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(BROKER_URL_HEADER, owner.parse().unwrap());
        request
    }

    #[tokio::test]
    async fn calls_naming_another_broker_are_passed_on_once() {
        let proxy = DanubeProxy::default();
        let own = "http://127.0.0.1:6650";
        assert!(proxy.target(&Request::new(()), own).is_none());
        assert!(
            proxy
                .target(&with_owner("http://127.0.0.1:6650/"), own)
                .is_none()
        );

        let (owner, _) = proxy
            .target(&with_owner("http://10.0.0.2:6650"), own)
            .unwrap();
        assert_eq!(owner, "http://10.0.0.2:6650");
        let forwarded = passed_on((), &owner);
        assert!(proxy.target(&forwarded, own).is_none());
    }
}

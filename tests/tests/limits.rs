//! Refusals that name the problem, while the broker keeps serving: message
//! size, a contradicted dispatch mode, a namespace that forbids creating
//! topics, and a clean stop on SIGTERM.

use std::time::Duration;

use sava_client::{Client, Message};
use sava_tests::Broker;

async fn client(broker: &Broker) -> Client {
    Client::builder(broker.service_url())
        .build()
        .await
        .expect("client connects")
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_next_one_goes_through() {
    let (_config_dir, config) = limits_config(64 * 1024);
    let broker = Broker::start_with(["--config", config.as_str()])
        .await
        .unwrap();
    let client = client(&broker).await;
    let producer = client.producer("/default/big").create().await.unwrap();

    let refused = producer
        .send(Message::new(vec![b'x'; 64 * 1024 + 1]))
        .await
        .unwrap()
        .await;
    let error = refused.expect_err("too large").to_string();
    assert!(error.contains("over the limit of 65536 bytes"), "{error}");

    let accepted = producer
        .send(Message::new(vec![b'x'; 1024]))
        .await
        .unwrap()
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
}

#[tokio::test]
async fn a_producer_asking_for_the_other_dispatch_mode_is_refused() {
    let broker = Broker::start().await.unwrap();
    let client = client(&broker).await;
    let _reliable = client
        .producer("/default/mode")
        .reliable(true)
        .create()
        .await
        .unwrap();

    let refused = client
        .producer("/default/mode")
        .reliable(false)
        .create()
        .await;
    let error = refused.expect_err("refused").to_string();
    assert!(
        error.contains("is reliable") && error.contains("non-reliable"),
        "{error}"
    );
}

#[tokio::test]
async fn a_namespace_without_auto_creation_refuses_unknown_topics() {
    let broker = Broker::start().await.unwrap();
    let admin = |args: &[&str]| {
        broker
            .sava_admin_command()
            .unwrap()
            .args(args)
            .output()
            .unwrap()
    };
    assert!(admin(&["namespaces", "create", "strict"]).status.success());
    let set = admin(&[
        "namespaces",
        "set-policy",
        "strict",
        "auto_create_topics",
        "false",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let client = client(&broker).await;
    let refused = client.producer("/strict/unknown").create().await;
    let error = refused.expect_err("refused").to_string();
    assert!(
        error.contains("strict") && error.contains("creating topics"),
        "{error}"
    );

    assert!(
        admin(&["topics", "create", "/strict/known"])
            .status
            .success()
    );
    assert!(client.producer("/strict/known").create().await.is_ok());
}

#[tokio::test]
async fn sigterm_stops_the_broker_cleanly() {
    let mut broker = Broker::start().await.unwrap();
    let pid = broker.pid().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let status = broker.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("the broker exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}: {}", broker.log_tail());
    assert!(
        broker.log_tail().contains("broker stopped"),
        "{}",
        broker.log_tail()
    );
}

/// A config file setting the largest message, in a directory that lives as
/// long as the returned guard.
fn limits_config(max_message_bytes: usize) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sava.toml");
    let text = format!("[limits]\nmax_message_bytes = {max_message_bytes}\n");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

//! A full disk: reliable producers get a clear error, reads keep working,
//! and writes resume once space returns. The broker's segment directory is
//! a small tmpfs that the test mounts (the tests run as root, as CI does).

use std::process::Command;
use std::time::Duration;

use sava_client::{Client, Message, StartPosition};
use sava_tests::Broker;
use tokio::time::{Instant, sleep, timeout};

/// A tmpfs mounted on a directory for the test's life.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root, as tests/run.sh runs"
        );
        SmallDisk { dir }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_producers_keeps_reads_and_recovers_when_space_returns() {
    let broker = Broker::start().await.unwrap();
    // Reliable topics keep their segments under <data dir>/topics.
    let disk = SmallDisk::mount(broker.data_dir().join("topics"), "2m");
    let client = Client::builder(broker.service_url()).build().await.unwrap();
    let topic = "/default/full";
    let producer = client
        .producer(topic)
        .reliable(true)
        .create()
        .await
        .unwrap();
    let mut consumer = client
        .consumer(topic, "reader")
        .start(StartPosition::Earliest)
        .subscribe()
        .await
        .unwrap();

    let mut acked = 0u64;
    let error = loop {
        assert!(acked < 10_000, "the 2 MiB disk never filled");
        match producer
            .send(Message::new(vec![b'd'; 4096]))
            .await
            .unwrap()
            .await
        {
            Ok(_) => acked += 1,
            Err(error) => break error.to_string(),
        }
    };
    assert!(
        error.to_lowercase().contains("disk") || error.contains("space"),
        "{error}"
    );
    assert!(acked > 0);

    for offset in 0..acked {
        let message = timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(message.offset, offset, "reads keep working on a full disk");
        consumer.ack(&message).unwrap();
    }

    disk.resize("16m");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match producer.send(Message::new("after")).await.unwrap().await {
            Ok(id) => {
                assert!(id.offset >= acked, "no offset is reused after the failure");
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "writes did not resume: {error}"),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

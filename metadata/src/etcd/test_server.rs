//! A throwaway etcd server for tests and benchmarks: one `etcd` process on
//! free 127.0.0.1 ports, with its data in a temporary directory, killed by
//! its process id when the last handle to it drops (also when a test fails).
//!
//! [`EtcdTestServer::shared`] hands every caller in a process the same
//! server while any of them holds it; tests keep apart by key prefix.

use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// How long a fresh etcd is given to answer.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often it is asked meanwhile.
const READY_POLL: Duration = Duration::from_millis(50);
/// How many times a start is tried with new ports, in case another process
/// took a port between probing and binding.
const START_ATTEMPTS: usize = 3;
/// How much of etcd's log an error quotes.
const LOG_TAIL_BYTES: usize = 2000;

static SHARED: tokio::sync::Mutex<Weak<EtcdTestServer>> =
    tokio::sync::Mutex::const_new(Weak::new());

/// Why a test etcd could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error(
        "the `etcd` binary is not on PATH: install the etcd-server package \
         (apt-get install etcd-server; tests/run.sh does)"
    )]
    NotInstalled,

    #[error("could not prepare or spawn etcd: {0}")]
    Io(#[from] std::io::Error),

    #[error("etcd exited during startup ({status}); its log ends with:\n{log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },

    #[error("etcd did not answer within {deadline:?}; its log ends with:\n{log}")]
    NotReady { deadline: Duration, log: String },
}

/// A running etcd, stopped on drop.
#[derive(Debug)]
pub struct EtcdTestServer {
    child: Child,
    endpoint: String,
    /// Removed after the process is killed (fields drop after `drop`).
    data_dir: tempfile::TempDir,
}

impl EtcdTestServer {
    /// The server every caller in this process shares while any holds it;
    /// started when none is running.
    ///
    /// # Errors
    ///
    /// As [`EtcdTestServer::start`].
    pub async fn shared() -> Result<Arc<Self>, TestServerError> {
        let mut shared = SHARED.lock().await;
        if let Some(server) = shared.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(Self::start().await?);
        *shared = Arc::downgrade(&server);
        Ok(server)
    }

    /// Starts a new etcd and waits until it answers.
    ///
    /// # Errors
    ///
    /// `NotInstalled` when there is no `etcd` binary, `Exited` or `NotReady`
    /// (quoting its log) when it does not come up.
    pub async fn start() -> Result<Self, TestServerError> {
        let mut attempt = 1;
        loop {
            match Self::start_once().await {
                Err(TestServerError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    async fn start_once() -> Result<Self, TestServerError> {
        let data_dir = tempfile::Builder::new()
            .prefix("sava-test-etcd-")
            .tempdir()?;
        let (client_port, peer_port) = free_port_pair()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = File::create(data_dir.path().join("etcd.log"))?;

        let spawned = Command::new("etcd")
            .arg("--name=sava-test")
            .arg(format!(
                "--data-dir={}",
                data_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=sava-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(TestServerError::NotInstalled);
            }
            Err(error) => return Err(error.into()),
        };

        let mut server = EtcdTestServer {
            child,
            endpoint: format!("127.0.0.1:{client_port}"),
            data_dir,
        };
        server.wait_until_ready().await?;
        Ok(server)
    }

    /// Polls etcd until it answers a status request, the process exits or
    /// the deadline passes.
    async fn wait_until_ready(&mut self) -> Result<(), TestServerError> {
        let deadline = Instant::now() + READY_DEADLINE;
        let options = ConnectOptions::new()
            .with_connect_timeout(READY_POLL * 4)
            .with_timeout(READY_POLL * 4);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log_tail();
                return Err(TestServerError::Exited { status, log });
            }

            let client = Client::connect([self.endpoint.as_str()], Some(options.clone())).await;
            if let Ok(mut client) = client
                && client.status().await.is_ok()
            {
                return Ok(());
            }

            if Instant::now() >= deadline {
                let log = self.log_tail();
                let deadline = READY_DEADLINE;
                return Err(TestServerError::NotReady { deadline, log });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The process id, for tests that pause the server (`SIGSTOP`) to make
    /// the store unreachable.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client address, `127.0.0.1:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The metadata URL of this server with every key under `prefix/`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoint)
    }

    fn log_tail(&self) -> String {
        let mut log = String::new();
        let path = self.data_dir.path().join("etcd.log");
        if let Err(error) = File::open(&path).and_then(|mut file| file.read_to_string(&mut log)) {
            return format!("(could not read {}: {error})", path.display());
        }
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..log.len())
            .find(|&index| log.is_char_boundary(index))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }
}

impl Drop for EtcdTestServer {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away, so there is nothing to flush.
        if let Err(error) = self.child.kill() {
            tracing::warn!(pid = self.child.id(), %error, "could not kill test etcd");
        }
        let _ = self.child.wait();
    }
}

/// Two distinct free ports on 127.0.0.1, both held until both are chosen.
fn free_port_pair() -> std::io::Result<(u16, u16)> {
    let first = TcpListener::bind("127.0.0.1:0")?;
    let second = TcpListener::bind("127.0.0.1:0")?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

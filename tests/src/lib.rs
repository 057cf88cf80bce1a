//! The harness of Sava's end-to-end tests: real `sava-broker` processes on
//! free loopback ports, and the `sava` CLI pointed at them.
//!
//! [`Broker::start`] runs the broker binary with its data directory and log
//! file in a fresh temporary directory, and returns once `GET /readyz`
//! answers 200. A [`Broker`] can be killed (`SIGKILL`, like a crash) and
//! restarted on the same data directory and ports; it is killed when
//! dropped. Binaries are found through `SAVA_BROKER_BIN` and `SAVA_BIN`, or
//! next to the running test executable, or in `<workspace>/target/<profile>`,
//! so run `cargo build --workspace --bins` before the tests.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub mod clients;
mod s3;
pub use s3::{BUCKET, S3Server, S3ServerKind};

/// How long a broker may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(50);

/// How many lines of the broker's log go into a startup error.
const LOG_TAIL_LINES: usize = 40;

/// A `sava-broker` process owned by a test.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    binary: PathBuf,
    /// Holds the data directory and the log; deleted on drop.
    root: TempDir,
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    http_addr: SocketAddr,
    extra_args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
}

impl Broker {
    /// Starts a broker with the default settings and waits until it is
    /// ready.
    ///
    /// # Errors
    ///
    /// When the binary is missing, cannot be started, exits, or is not ready
    /// within 20 s; the error includes the end of the broker's log.
    pub async fn start() -> Result<Broker> {
        Broker::start_with(Vec::<OsString>::new()).await
    }

    /// Starts a broker with `extra_args` after the harness's own flags
    /// (data dir, addresses, advertised URL), and waits until it is ready.
    /// The same arguments are used again by [`Broker::restart`].
    ///
    /// # Errors
    ///
    /// As for [`Broker::start`].
    pub async fn start_with<I, S>(extra_args: I) -> Result<Broker>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Broker::start_with_env(extra_args, &[]).await
    }

    /// Starts a broker like [`Broker::start_with`], with `env` set in its
    /// environment (at every restart too).
    ///
    /// # Errors
    ///
    /// As for [`Broker::start`].
    pub async fn start_with_env<I, S>(extra_args: I, env: &[(&str, String)]) -> Result<Broker>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let binary = broker_binary()?;
        let root = tempfile::Builder::new()
            .prefix("sava-broker-")
            .tempdir()
            .context("cannot create a temporary directory for the broker")?;
        std::fs::create_dir(root.path().join("data"))
            .context("cannot create the broker's data directory")?;
        let [client_addr, admin_addr, http_addr] = free_addrs()?;
        let mut broker = Broker {
            child: None,
            binary,
            root,
            client_addr,
            admin_addr,
            http_addr,
            extra_args: extra_args.into_iter().map(Into::into).collect(),
            env: env
                .iter()
                .map(|(name, value)| (OsString::from(name), Some(OsString::from(value))))
                .collect(),
        };
        broker.launch().await?;
        Ok(broker)
    }

    /// Sets (or with `None` removes) a variable of the broker's environment
    /// for its next start.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(existing, _)| existing != name);
        self.env
            .push((OsString::from(name), value.map(OsString::from)));
    }

    /// The URL of the client API (native and Danube-compatible).
    pub fn service_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// The URL of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The address of the client API.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The broker's data directory; it survives [`Broker::kill`] and
    /// [`Broker::restart`].
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The file the broker's stdout and stderr go to, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("broker.log")
    }

    /// The whole log of the broker, over its restarts; empty when it
    /// cannot be read.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Whether the process is running (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while the broker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `limit` for the broker to exit on its own (after a
    /// signal the test sent) and returns its exit status; `None` when it is
    /// still running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Kills the broker with `SIGKILL`, as a crash would, and reaps it.
    /// Killing a broker that is not running does nothing.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent or the process cannot be reaped.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            child.kill().context("cannot kill sava-broker")?;
        }
        child.wait().context("cannot reap sava-broker")?;
        Ok(())
    }

    /// `GET path` on the broker's HTTP port: the status code and the body.
    ///
    /// # Errors
    ///
    /// When the broker does not answer within 5 s.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_addr, path).await
    }

    /// Whether `GET /readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        is_ready(self.http_addr).await
    }

    /// Sends `SIGTERM`, as an operator or systemd stopping the broker does;
    /// [`Broker::wait_exit`] waits for the exit.
    ///
    /// # Errors
    ///
    /// When the broker is not running or the signal cannot be sent.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("the broker is not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// Kills the broker if it runs, then starts it again on the same data
    /// directory, ports and arguments, and waits until it is ready.
    ///
    /// # Errors
    ///
    /// As for [`Broker::start`].
    pub async fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.launch().await
    }

    /// A command running the `sava` CLI against this broker (through
    /// `SAVA_SERVICE_URL`).
    ///
    /// # Errors
    ///
    /// When the `sava` binary cannot be found.
    pub fn sava_command(&self) -> Result<Command> {
        let mut command = sava_command()?;
        command.env("SAVA_SERVICE_URL", self.service_url());
        Ok(command)
    }

    /// A command running the `sava-admin` CLI against this broker's admin
    /// API.
    ///
    /// # Errors
    ///
    /// When the `sava-admin` binary cannot be found.
    pub fn sava_admin_command(&self) -> Result<Command> {
        let mut command = Command::new(find_binary("sava-admin", "SAVA_ADMIN_BIN")?);
        command.arg("--admin-url").arg(self.admin_url());
        Ok(command)
    }

    /// Runs `sava-admin` with `args` against this broker.
    ///
    /// # Panics
    ///
    /// When the binary cannot be found or started.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        self.sava_admin_command()
            .expect("sava-admin is built")
            .args(args)
            .output()
            .expect("sava-admin runs")
    }

    /// Runs `sava-admin` with `args` and returns its standard output.
    ///
    /// # Panics
    ///
    /// When it fails; the message holds its standard error.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let output = self.admin(args);
        assert!(
            output.status.success(),
            "sava-admin {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `sava-admin --output json` with `args` and parses its output.
    ///
    /// # Panics
    ///
    /// When it fails or prints something that is not JSON.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let text = self.admin_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("sava-admin {args:?}: {e}: {text}"))
    }

    /// Starts the process and waits for readiness. Right after a kill the
    /// ports may still be held for a moment; a start that fails because an
    /// address is in use is tried again until the deadline.
    async fn launch(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn()?;
            match self.wait_ready(deadline).await {
                Ok(()) => return Ok(()),
                Err(error) if !self.is_running() && self.log_tail().contains("in use") => {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    self.kill()?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    // Do not leave a half-started broker behind.
                    let _ = self.kill();
                    return Err(error);
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open the broker log {}", log_path.display()))?;
        writeln!(log, "--- sava-test-harness: starting sava-broker ---")?;
        let stderr = log.try_clone().context("cannot share the broker log")?;

        let mut command = Command::new(&self.binary);
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let child = command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--client-addr")
            .arg(self.client_addr.to_string())
            .arg("--admin-addr")
            .arg(self.admin_addr.to_string())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .arg("--advertised-url")
            .arg(self.service_url())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `/readyz` until it answers 200, the process exits, or the
    /// deadline passes.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "sava-broker exited ({status}) before it was ready; log {}:\n{}",
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            if is_ready(self.http_addr).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "sava-broker was not ready at http://{}/readyz after {READY_TIMEOUT:?}; log {}:\n{}",
                    self.http_addr,
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A command running the `sava` CLI (with the default service URL).
///
/// # Errors
///
/// When the `sava` binary cannot be found.
pub fn sava_command() -> Result<Command> {
    Ok(Command::new(sava_binary()?))
}

/// The `sava-broker` binary: `SAVA_BROKER_BIN`, or the one built with the
/// tests.
///
/// # Errors
///
/// When no such binary exists.
pub fn broker_binary() -> Result<PathBuf> {
    find_binary("sava-broker", "SAVA_BROKER_BIN")
}

/// The `sava` CLI binary: `SAVA_BIN`, or the one built with the tests.
///
/// # Errors
///
/// When no such binary exists.
pub fn sava_binary() -> Result<PathBuf> {
    find_binary("sava", "SAVA_BIN")
}

fn find_binary(name: &str, variable: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{variable} names {}, which is not a file", path.display());
        }
        return Ok(path);
    }

    let mut candidates = Vec::new();
    // Test executables live in target/<profile>/deps, binaries one level up.
    if let Ok(executable) = std::env::current_exe()
        && let Some(directory) = executable.parent()
    {
        let profile_dir = if directory.ends_with("deps") {
            directory.parent().unwrap_or(directory)
        } else {
            directory
        };
        candidates.push(profile_dir.join(name));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    candidates.push(target_dir.join(profile).join(name));

    if let Some(found) = candidates.iter().find(|candidate| candidate.is_file()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates
        .iter()
        .map(|candidate| candidate.display().to_string())
        .collect();
    bail!(
        "cannot find the {name} binary (searched {}); run `cargo build --workspace --bins` or set {variable}",
        searched.join(", ")
    )
}

/// Three distinct free ports on 127.0.0.1. All are bound at once so they
/// differ, then released for the broker to take.
fn free_addrs() -> Result<[SocketAddr; 3]> {
    let listeners = [bind_any()?, bind_any()?, bind_any()?];
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); 3];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr().context("cannot read a free port")?;
    }
    Ok(addrs)
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_addr() -> SocketAddr {
    let listener = bind_any().expect("a free port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

fn bind_any() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")
}

/// `GET path` from `addr` over HTTP/1.0 (so the body ends with the
/// connection): the status code and the body.
///
/// # Errors
///
/// When the server does not answer within 5 s or the answer is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status =
        status_code(&response).with_context(|| format!("GET http://{addr}{path}: not HTTP"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// Whether `GET /readyz` answers 200, within a second.
async fn is_ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;

        let mut response = Vec::with_capacity(256);
        let mut chunk = [0; 256];
        while !response.windows(2).any(|window| window == b"\r\n") && response.len() < 4096 {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..read]);
        }
        Ok::<_, std::io::Error>(status_code(&response) == Some(200))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

/// The status code of an HTTP response's status line.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|byte| *byte == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The last [`LOG_TAIL_LINES`] lines of the file at `path`.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_code_comes_from_the_status_line() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"),
            Some(200)
        );
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"garbage"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn free_addresses_are_distinct_loopback_ports() {
        let addrs = free_addrs().unwrap();
        assert!(
            addrs
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() != 0)
        );
        assert_ne!(addrs[0], addrs[1]);
        assert_ne!(addrs[1], addrs[2]);
        assert_ne!(addrs[0], addrs[2]);
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        let text: String = (0..100).map(|line| format!("line {line}\n")).collect();
        std::fs::write(&path, text).unwrap();

        let tail = log_tail(&path);
        assert!(tail.starts_with("line 60"));
        assert!(tail.ends_with("line 99"));
    }

    #[tokio::test]
    async fn readiness_fails_fast_when_nothing_listens() {
        let addr = bind_any().unwrap().local_addr().unwrap();
        assert!(!is_ready(addr).await);
    }
}

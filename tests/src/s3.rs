//! A real S3-compatible server for a test, started through the scripts in
//! `localstack/` (so every run proves them), on a free loopback port, with
//! its pid file and state in a temporary directory of the test's own.
//!
//! The server is stopped when the [`S3Server`] is dropped. `pause` and
//! `resume` freeze and thaw the process (SIGSTOP, SIGCONT), which makes the
//! store unreachable without losing what it holds: moto keeps objects in
//! memory, so a real restart would empty it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which server `localstack/start.sh` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3ServerKind {
    /// moto's server: quick to start, objects in memory.
    Moto,
    /// LocalStack's S3, on Python 3.13.
    LocalStack,
}

impl S3ServerKind {
    fn name(self) -> &'static str {
        match self {
            S3ServerKind::Moto => "moto",
            S3ServerKind::LocalStack => "localstack",
        }
    }
}

/// A running S3 server with one bucket, `sava`.
#[derive(Debug)]
pub struct S3Server {
    kind: S3ServerKind,
    run_dir: TempDir,
    port: u16,
    pid: u32,
}

/// The bucket the server is started with.
pub const BUCKET: &str = "sava";

impl S3Server {
    /// Installs the server when missing (see `localstack/install.sh`),
    /// starts it and creates the bucket.
    ///
    /// # Errors
    ///
    /// When the scripts fail; the error carries their output.
    pub fn start(kind: S3ServerKind) -> Result<S3Server> {
        let run_dir = tempfile::Builder::new()
            .prefix("sava-s3-")
            .tempdir()
            .context("cannot create a run directory for the S3 server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port")?
            .port();

        let output = script("start.sh")
            .arg(kind.name())
            .arg("--port")
            .arg(port.to_string())
            .arg("--bucket")
            .arg(BUCKET)
            .env("SAVA_LOCALSTACK_RUN_DIR", run_dir.path())
            .output()
            .context("cannot run localstack/start.sh")?;
        if !output.status.success() {
            bail!(
                "localstack/start.sh {} failed ({}):\n{}\n{}",
                kind.name(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let pid_file = run_dir.path().join(format!("{}.pid", kind.name()));
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("cannot read {}", pid_file.display()))?
            .trim()
            .parse()
            .context("the pid file holds no pid")?;
        Ok(S3Server {
            kind,
            run_dir,
            port,
            pid,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://sava/<prefix>`, for `storage.object_store`.
    pub fn object_store_url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The standard variables that point an S3 client (the broker) here.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Freezes the server: requests hang until [`S3Server::resume`].
    pub fn pause(&self) -> Result<()> {
        signal(self.pid, "-STOP")
    }

    pub fn resume(&self) -> Result<()> {
        signal(self.pid, "-CONT")
    }

    /// The keys of the bucket under `prefix`, sorted.
    ///
    /// # Errors
    ///
    /// When the request fails or the listing is truncated (over 1000 keys).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let path = format!("/{BUCKET}?list-type=2&prefix={}", encode(prefix));
        let (status, body) = self.request("GET", &path, &[]).await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            bail!("listing {prefix} answered {status}: {body}");
        }
        if body.contains("<IsTruncated>true</IsTruncated>") {
            bail!("listing {prefix} is truncated; the test expects fewer keys");
        }
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Writes an object directly, bypassing the broker.
    pub async fn put_object(&self, key: &str, body: &[u8]) -> Result<()> {
        let path = format!("/{BUCKET}/{}", encode_path(key));
        let (status, answer) = self.request("PUT", &path, body).await?;
        if status != 200 {
            bail!(
                "putting {key} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }

    /// One unsigned HTTP/1.1 request (both servers accept them).
    async fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;

        let split = find(&response, b"\r\n\r\n").context("no end of headers in the response")?;
        let headers = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no status in the response")?;
        let mut body = response[split + 4..].to_vec();
        if headers.contains("transfer-encoding: chunked") {
            body = dechunk(&body)?;
        }
        Ok((status, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = signal(self.pid, "-CONT");
        let _ = script("stop.sh")
            .arg(self.kind.name())
            .env("SAVA_LOCALSTACK_RUN_DIR", self.run_dir.path())
            .output();
    }
}

fn script(name: &str) -> Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../localstack")
        .join(name);
    let mut command = Command::new("bash");
    command.arg(path);
    command
}

fn signal(pid: u32, which: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill {which} {pid} failed");
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").context("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a chunk size that is not hex")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("a chunk cut short")?);
        body = body.get(size + 2..).context("a chunk without its end")?;
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encodes a key for a path, keeping its slashes.
fn encode_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

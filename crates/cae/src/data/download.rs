//! A verified HTTP(S) download: streamed to a temporary file, hashed on the way, checked against
//! the expected size and checksums, and only then renamed into place.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::io::atomic;

/// Timeouts of a download.
#[derive(Debug, Clone)]
pub(crate) struct DownloadOptions {
    /// Limit on resolving the host name and opening the connection (TLS included).
    pub connect_timeout: Duration,
    /// Limit on any single read from the server: a stalled server fails after this long
    /// instead of hanging.
    pub read_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The host could not be resolved or connected to: the machine is probably offline.
///
/// It sits in the error chain of [`download`] so callers can add advice on getting the file
/// some other way (`err.chain().any(|e| e.is::<Unreachable>())`).
#[derive(Debug, thiserror::Error)]
#[error("cae could not reach {host} (offline, or the host is unreachable): {reason}")]
pub(crate) struct Unreachable {
    pub host: String,
    pub reason: String,
}

/// Downloads `url` to `dest` with the default [`DownloadOptions`]; see [`download_with`].
pub(crate) fn download(
    url: &str,
    dest: &Path,
    expected_bytes: Option<u64>,
    md5_hex: Option<&str>,
    sha256_hex: Option<&str>,
) -> Result<()> {
    let expected = Expected {
        bytes: expected_bytes,
        md5: md5_hex,
        sha256: sha256_hex,
    };
    download_with(url, dest, &expected, &DownloadOptions::default())
}

/// What a download must match; `None` skips that check.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expected<'a> {
    pub bytes: Option<u64>,
    pub md5: Option<&'a str>,
    pub sha256: Option<&'a str>,
}

/// Downloads `url` to `dest`, checking the size and checksums in `expected`.
///
/// The body goes to a temporary file beside `dest` that is renamed to `dest` only once every
/// check has passed ([`atomic::write_with`]); on any failure the temporary file is removed and
/// `dest` is not created.
pub(crate) fn download_with(
    url: &str,
    dest: &Path,
    expected: &Expected,
    options: &DownloadOptions,
) -> Result<()> {
    atomic::write_with(dest, |out| fetch(url, out, expected, options))
        .with_context(|| format!("downloading {url} to {} failed", dest.display()))
}

/// Streams the body of `url` into `out` and checks it.
fn fetch(
    url: &str,
    out: &mut dyn Write,
    expected: &Expected,
    options: &DownloadOptions,
) -> Result<()> {
    let response = request(url, options)?;
    let announced = response.body().content_length();
    check_announced_size(announced, expected.bytes)?;
    let reader = response.into_body().into_reader();
    let digests = stream(reader, out, announced, expected.bytes, options)?;
    digests.verify(expected)
}

/// Checks the size and checksums of the file at `path` against `expected`.
pub(crate) fn verify_file(path: &Path, expected: &Expected) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut digests = Digests::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
    }
    digests
        .verify(expected)
        .with_context(|| format!("{} does not match", path.display()))
}

const CHUNK: usize = 256 * 1024;

fn request(url: &str, options: &DownloadOptions) -> Result<ureq::http::Response<ureq::Body>> {
    let agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(options.connect_timeout))
        .timeout_connect(Some(options.connect_timeout))
        .timeout_per_read(Some(options.read_timeout))
        .build()
        .new_agent();
    agent
        .get(url)
        // The checksums are of the file as stored; a transparently decompressed body would differ.
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| request_error(url, e))
}

fn request_error(url: &str, error: ureq::Error) -> anyhow::Error {
    use ureq::Error as E;
    let unreachable = match &error {
        E::HostNotFound | E::ConnectionFailed => true,
        E::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        E::Io(e) => is_unreachable_io(e),
        _ => false,
    };
    if unreachable {
        return Unreachable {
            host: host_of(url).to_string(),
            reason: error.to_string(),
        }
        .into();
    }
    match error {
        E::StatusCode(code) => anyhow::anyhow!("the server answered HTTP {code}"),
        E::Timeout(_) => anyhow::anyhow!("the server stopped answering ({error})"),
        other => anyhow::Error::new(other).context("the request failed"),
    }
}

fn is_unreachable_io(error: &io::Error) -> bool {
    use io::ErrorKind as K;
    let refused = matches!(
        error.kind(),
        K::ConnectionRefused
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
    );
    // Name resolution failures have no ErrorKind of their own; std words them like this.
    refused || error.to_string().contains("failed to lookup address")
}

/// The host (and port) part of `url`, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

fn check_announced_size(announced: Option<u64>, expected: Option<u64>) -> Result<()> {
    if let (Some(announced), Some(expected)) = (announced, expected)
        && announced != expected
    {
        bail!("the server announces {announced} bytes but {expected} were expected");
    }
    Ok(())
}

/// Copies the body to `out`, hashing it; fails if it ends before `announced` bytes or grows
/// past `limit` bytes.
fn stream(
    mut reader: impl Read,
    out: &mut dyn Write,
    announced: Option<u64>,
    limit: Option<u64>,
    options: &DownloadOptions,
) -> Result<Digests> {
    let progress = Reporter::start(announced);
    let mut digests = Digests::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, digests.bytes, announced, options)),
        };
        digests.update(&buf[..n]);
        if let Some(limit) = limit
            && digests.bytes > limit
        {
            bail!("the server sent more than the {limit} expected bytes");
        }
        out.write_all(&buf[..n])
            .context("cannot write the download")?;
        progress.advance(n as u64);
    }
    drop(progress);
    if let Some(announced) = announced
        && digests.bytes < announced
    {
        bail!(
            "the transfer was cut short: got {} of the {announced} announced bytes",
            digests.bytes
        );
    }
    Ok(digests)
}

fn read_error(
    error: io::Error,
    received: u64,
    announced: Option<u64>,
    options: &DownloadOptions,
) -> anyhow::Error {
    let of = announced.map_or(String::new(), |n| format!(" of {n}"));
    if is_timeout(&error) {
        anyhow::anyhow!(
            "the server stalled: no data for {:?} after {received}{of} bytes ({error})",
            options.read_timeout
        )
    } else {
        anyhow::anyhow!("the transfer broke off after {received}{of} bytes: {error}")
    }
}

/// ureq reports its own read timeouts as an `io::Error` wrapping `ureq::Error::Timeout`.
fn is_timeout(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::TimedOut
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)))
}

/// Follows the downloads of this process, as bytes arrive. The library shows nothing itself:
/// the `cae` command installs a progress bar with [`set_progress`].
pub trait DownloadProgress: Send + Sync {
    /// A download starts; `total` is the size the server announced.
    fn started(&self, total: Option<u64>);
    /// `bytes` more arrived.
    fn advanced(&self, bytes: u64);
    /// The download ended, completely or not.
    fn finished(&self);
}

static PROGRESS: std::sync::OnceLock<Box<dyn DownloadProgress>> = std::sync::OnceLock::new();

/// Sets what follows every download of this process (once; later calls are ignored).
pub fn set_progress(progress: Box<dyn DownloadProgress>) {
    let _ = PROGRESS.set(progress);
}

/// Reports to [`set_progress`]'s receiver, if there is one, and says `finished` when dropped.
struct Reporter(Option<&'static dyn DownloadProgress>);

impl Reporter {
    fn start(total: Option<u64>) -> Self {
        let progress = PROGRESS.get().map(|p| &**p);
        if let Some(progress) = progress {
            progress.started(total);
        }
        Self(progress)
    }

    fn advance(&self, bytes: u64) {
        if let Some(progress) = self.0 {
            progress.advanced(bytes);
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(progress) = self.0 {
            progress.finished();
        }
    }
}

#[derive(Default)]
struct Digests {
    bytes: u64,
    md5: Md5,
    sha256: Sha256,
}

impl Digests {
    fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.md5.update(chunk);
        self.sha256.update(chunk);
    }

    fn verify(self, expected: &Expected) -> Result<()> {
        if let Some(bytes) = expected.bytes
            && bytes != self.bytes
        {
            bail!("wrong size: expected {bytes} bytes, got {}", self.bytes);
        }
        check_digest("MD5", expected.md5, &hex(&self.md5.finalize()))?;
        check_digest("SHA-256", expected.sha256, &hex(&self.sha256.finalize()))
    }
}

fn check_digest(name: &str, expected: Option<&str>, actual: &str) -> Result<()> {
    match expected {
        Some(expected) if !expected.trim().eq_ignore_ascii_case(actual) => {
            bail!(
                "{name} mismatch: expected {}, got {actual}",
                expected.trim()
            )
        }
        _ => Ok(()),
    }
}

/// Lower-case hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

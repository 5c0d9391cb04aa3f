//! Object storage: one trait, four backends, and the retry layer around them.
//!
//! Every backend stores opaque objects under string keys relative to its configured `prefix`, with
//! string metadata (MyHoard puts one key, `json`, into it). Transfers stream: `put` reads a body of
//! unknown length part by part, `get` writes into a caller's `Write`. Nothing here holds an object
//! whole in memory, and nothing outside this module knows which cloud is in use.
//!
//! Runs on whichever thread calls it (uploader and downloader pools, operator commands). It never
//! logs errors: it returns them, classified by [`ErrorKind`], so that the retry layer and callers
//! can decide what is transient.

mod azure;
mod gcs;
mod http;
mod local;
mod multipart;
mod retry;
mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use retry::{RetryPolicy, Retrying};

/// Per-object metadata: string keys and values, as rohmu stores them.
pub type Metadata = BTreeMap<String, String>;

/// What kind of failure a storage operation met; decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or bucket) does not exist.
    NotFound,
    /// Credentials were refused or lack permission. Never retried.
    PermissionDenied,
    /// Timeouts, connection resets, 5xx and 429 answers. Retried with backoff.
    Transient,
    /// The storage configuration itself is unusable.
    InvalidConfig,
    /// Reading the body to upload failed; the fault is the caller's source, not the storage.
    Source,
    /// Anything else the server refused; not retried.
    Other,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Transient
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Transient => "transient error",
            ErrorKind::InvalidConfig => "invalid storage configuration",
            ErrorKind::Source => "reading upload source failed",
            ErrorKind::Other => "storage error",
        })
    }
}

/// A failed storage operation on one key.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {key:?}: {kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub operation: &'static str,
    pub key: String,
    pub message: String,
}

impl Error {
    pub fn new(
        kind: ErrorKind,
        operation: &'static str,
        key: impl Into<String>,
        message: impl fmt::Display,
    ) -> Error {
        Error {
            kind,
            operation,
            key: key.into(),
            message: message.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Classifies an `io::Error` met while talking to a server: everything network-shaped is
    /// transient.
    pub fn from_io(operation: &'static str, key: &str, err: &std::io::Error) -> Error {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            // A key below an existing object (`a/b/c` where `a/b` is a file) does not exist either.
            Io::NotFound | Io::NotADirectory => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::TimedOut
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::ConnectionRefused
            | Io::BrokenPipe
            | Io::UnexpectedEof
            | Io::Interrupted
            | Io::WouldBlock
            | Io::NotConnected => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        Error::new(kind, operation, key, err)
    }

    /// Classifies an HTTP status answered by a server.
    pub fn from_status(operation: &'static str, key: &str, status: u16, body: &str) -> Error {
        let kind = match status {
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::PermissionDenied,
            408 | 429 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        let body = body.trim();
        let excerpt: String = body.chars().take(300).collect();
        Error::new(kind, operation, key, format!("HTTP {status}: {excerpt}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One stored object as a listing or `head` reports it. `key` is relative to the backend prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Present when asked for (`ListOptions::with_metadata`, and always from `head`).
    pub metadata: Option<Metadata>,
}

/// What a listing returns: objects under the prefix and, for a shallow listing, the immediate
/// "directories" below it (each ending in `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    pub prefixes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ListOptions {
    /// Walk every level below the prefix instead of stopping at the next `/`.
    pub deep: bool,
    /// Fetch each object's metadata (one extra request per object on S3).
    pub with_metadata: bool,
}

/// The object storage interface every backend implements.
///
/// Keys never start with `/`; a listing prefix that names a "directory" ends with `/`.
pub trait ObjectStorage: Send + Sync {
    /// Stores everything `body` yields under `key`, replacing any existing object, and returns the
    /// number of bytes stored. The object becomes visible only when the whole body is stored: a
    /// failed or interrupted put never leaves a short object behind.
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> Result<u64>;

    /// Writes bytes `start..end` (end exclusive, clamped to the object size) into `out`. A range
    /// starting at or past the end writes nothing and succeeds.
    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64>;

    /// Size and metadata of one object.
    fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// Objects (and, when shallow, sub-prefixes) whose keys start with `prefix`.
    fn list(&self, prefix: &str, options: ListOptions) -> Result<Listing>;

    /// Deletes one object; `NotFound` when there was none.
    fn delete(&self, key: &str) -> Result<()>;

    /// Writes the object's bytes from `offset` on into `out`, returning how many were written.
    /// `offset` 0 is a plain download; a non-zero offset resumes an interrupted one. An offset at
    /// or past the end writes nothing and succeeds.
    fn get_from(&self, key: &str, offset: u64, out: &mut (dyn Write + Send)) -> Result<u64> {
        self.get_range(key, offset, u64::MAX, out)
    }

    /// Writes the whole object into `out`.
    fn get(&self, key: &str, out: &mut (dyn Write + Send)) -> Result<u64> {
        self.get_from(key, 0, out)
    }
}

/// Where and how to reach object storage: rohmu's `object_storage` config dict.
///
/// Its `Debug` leaves out the cloud backends' settings, which hold credentials, so a config can
/// be logged whole.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "storage_type", rename_all = "snake_case")]
pub enum StorageConfig {
    Local(local::LocalConfig),
    S3(s3::S3Config),
    Google(gcs::GcsConfig),
    Azure(azure::AzureConfig),
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The local backend has no secrets; it is printed in full.
            StorageConfig::Local(local) => f.debug_tuple("Local").field(local).finish(),
            StorageConfig::S3(_) => f.write_str("S3(<redacted>)"),
            StorageConfig::Google(_) => f.write_str("Google(<redacted>)"),
            StorageConfig::Azure(_) => f.write_str("Azure(<redacted>)"),
        }
    }
}

impl StorageConfig {
    /// Problems with this config that can be found without contacting the storage, each with
    /// the key it concerns (relative to the `object_storage` object).
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            StorageConfig::Local(config) => config.problems(),
            StorageConfig::S3(config) => config.problems(),
            StorageConfig::Google(config) => config.problems(),
            StorageConfig::Azure(config) => config.problems(),
        }
    }
}

/// Opens the backend a config names, wrapped in the retry layer. Uploads retry each part with
/// the same policy inside the backend.
pub fn open(config: &StorageConfig, retry: RetryPolicy) -> Result<Arc<dyn ObjectStorage>> {
    let backend: Box<dyn ObjectStorage> = match config {
        StorageConfig::Local(config) => Box::new(local::LocalStorage::open(config)?),
        StorageConfig::S3(config) => Box::new(s3::S3Storage::open(config, retry)?),
        StorageConfig::Google(config) => Box::new(gcs::GcsStorage::open(config, retry)?),
        StorageConfig::Azure(config) => Box::new(azure::AzureStorage::open(config, retry)?),
    };
    Ok(Arc::new(Retrying::new(backend, retry)))
}

/// Joins a backend's configured prefix with relative keys, the way rohmu does: the prefix is
/// stripped of slashes at both ends and followed by exactly one `/`.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyPrefix(String);

impl KeyPrefix {
    pub(crate) fn new(prefix: Option<&str>) -> KeyPrefix {
        let trimmed = prefix.unwrap_or("").trim_matches('/');
        if trimmed.is_empty() {
            KeyPrefix(String::new())
        } else {
            KeyPrefix(format!("{trimmed}/"))
        }
    }

    /// The backend key for a relative key.
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{}", self.0, key.trim_start_matches('/'))
    }

    /// The relative key for a backend key; `None` when it is outside the prefix.
    pub(crate) fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.0.as_str())
    }
}

/// Copies `reader` into `out` in 1 MiB steps, counting bytes; used by the HTTP backends' downloads.
pub(crate) fn copy_body(
    operation: &'static str,
    key: &str,
    reader: &mut dyn Read,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::from_io(operation, key, &err)),
        };
        out.write_all(&buffer[..n]).map_err(|err| {
            // The sink failing is the caller's problem (disk full, a failed pipeline stage), so it
            // must not be retried as if the network had failed.
            Error::new(
                ErrorKind::Source,
                operation,
                key,
                format!("writing downloaded data: {err}"),
            )
        })?;
        copied += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_joins_like_rohmu() {
        let cases = [
            (None, "a/b", "a/b"),
            (Some(""), "a", "a"),
            (Some("/p/"), "a", "p/a"),
            (Some("p"), "/a", "p/a"),
            (Some("p/q"), "site/x", "p/q/site/x"),
        ];
        for (prefix, key, full) in cases {
            let prefix = KeyPrefix::new(prefix);
            assert_eq!(prefix.full(key), full);
            assert_eq!(prefix.relative(full), Some(key.trim_start_matches('/')));
        }
        assert_eq!(KeyPrefix::new(Some("p")).relative("other/a"), None);
    }

    #[test]
    fn http_status_classification() {
        let cases = [
            (404, ErrorKind::NotFound),
            (403, ErrorKind::PermissionDenied),
            (401, ErrorKind::PermissionDenied),
            (429, ErrorKind::Transient),
            (503, ErrorKind::Transient),
            (500, ErrorKind::Transient),
            (400, ErrorKind::Other),
            (409, ErrorKind::Other),
        ];
        for (status, kind) in cases {
            assert_eq!(
                Error::from_status("get", "k", status, "").kind,
                kind,
                "{status}"
            );
        }
    }
}

//! The `s3` backend: any S3-compatible store through rust-s3's synchronous client.
//!
//! Uploads use the multipart API by hand (through `multipart.rs`) instead of rust-s3's
//! `put_object_stream`, which has a fixed 8 MiB part size and sends an empty last part when the
//! body is an exact multiple of it. rust-s3's own retries are switched off: the retry layer here
//! decides. Metadata travels as `x-amz-meta-<key>` headers.
//!
//! Timeouts: rust-s3's `request_timeout` is a deadline for the whole request, body included, so
//! it would cut long downloads and slow part uploads. Small requests (head, list, delete, starting
//! and completing uploads) get `read_timeout` as their deadline; transfers get none and rely on the
//! HTTP client's idle read timeout instead.

use std::io::{Read, Write};
use std::sync::Once;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::Part;
use s3::{Bucket, Region};
use serde::{Deserialize, Serialize};

use super::multipart::{self, PartSink};
use super::{
    Error, ErrorKind, KeyPrefix, ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage, Result,
    RetryPolicy,
};

const METADATA_HEADER_PREFIX: &str = "x-amz-meta-";
const CONTENT_TYPE: &str = "application/octet-stream";
const MIN_PART_SIZE: usize = 5 << 20;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub region: String,
    pub bucket_name: String,
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    #[serde(default)]
    pub aws_secret_access_key: Option<String>,
    #[serde(default)]
    pub aws_session_token: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Custom endpoint host (any S3-compatible store). Without it, AWS's endpoint for `region`.
    #[serde(default)]
    pub host: Option<String>,
    /// rohmu takes the port as a string or a number; both are accepted.
    #[serde(default)]
    pub port: Option<serde_json::Value>,
    /// `path` (rohmu's default), `virtual` or `auto`.
    #[serde(default = "default_addressing_style")]
    pub addressing_style: String,
    #[serde(default)]
    pub is_secure: bool,
    #[serde(default)]
    pub is_verify_tls: bool,
    #[serde(default)]
    pub cert_path: Option<String>,
    /// Multipart part size in bytes.
    #[serde(default = "default_segment_size")]
    pub segment_size: usize,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub proxy_info: Option<serde_json::Value>,
    /// Seconds, as a string or a number; accepted for rohmu compatibility.
    #[serde(default)]
    pub connect_timeout: Option<serde_json::Value>,
    /// Seconds, as a string or a number: the deadline of each small request (default 60).
    #[serde(default)]
    pub read_timeout: Option<serde_json::Value>,
    #[serde(default)]
    pub use_dualstack_endpoint: Option<bool>,
    #[serde(default)]
    pub min_multipart_chunk_size: Option<usize>,
}

fn default_addressing_style() -> String {
    "path".into()
}

fn default_segment_size() -> usize {
    8 << 20
}

/// A seconds value given as a JSON number or a numeric string.
fn seconds(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s > 0.0)
}

impl S3Config {
    fn port(&self) -> Option<u16> {
        match self.port.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.bucket_name.is_empty() {
            problems.push(("bucket_name".into(), "must not be empty".into()));
        }
        if self.port.is_some() && self.port().is_none() {
            problems.push(("port".into(), "must be a port number".into()));
        }
        if self.port.is_some() && self.host.is_none() {
            problems.push(("port".into(), "port needs host".into()));
        }
        if !["path", "virtual", "auto"].contains(&self.addressing_style.as_str()) {
            problems.push((
                "addressing_style".into(),
                format!(
                    "must be path, virtual or auto, not {:?}",
                    self.addressing_style
                ),
            ));
        }
        if self.segment_size < MIN_PART_SIZE {
            problems.push((
                "segment_size".into(),
                format!("must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)"),
            ));
        }
        if self.aws_access_key_id.is_some() != self.aws_secret_access_key.is_some() {
            problems.push((
                "aws_access_key_id".into(),
                "aws_access_key_id and aws_secret_access_key must be set together".into(),
            ));
        }
        for (key, value) in [
            ("connect_timeout", &self.connect_timeout),
            ("read_timeout", &self.read_timeout),
        ] {
            if let Some(value) = value
                && seconds(value).is_none()
            {
                problems.push((key.into(), "must be a positive number of seconds".into()));
            }
        }
        if self.proxy_info.is_some() {
            problems.push(("proxy_info".into(), "proxies are not supported".into()));
        }
        if self.encrypted {
            problems.push((
                "encrypted".into(),
                "server-side encryption is not supported".into(),
            ));
        }
        if self.cert_path.is_some() {
            problems.push((
                "cert_path".into(),
                "custom CA certificates are not supported".into(),
            ));
        }
        problems
    }
}

pub struct S3Storage {
    /// For short requests: deadline `read_timeout`.
    bucket: Box<Bucket>,
    /// For downloads and part uploads: no whole-request deadline.
    transfer_bucket: Box<Bucket>,
    prefix: KeyPrefix,
    part_size: usize,
    retry: RetryPolicy,
}

fn s3_error(operation: &'static str, key: &str, err: S3Error) -> Error {
    match err {
        S3Error::HttpFailWithBody(status, body) => {
            Error::from_status(operation, key, status, &body)
        }
        S3Error::Io(io) => Error::from_io(operation, key, &io),
        S3Error::Atto(atto) => {
            let kind = match atto.kind() {
                attohttpc::ErrorKind::Io(io) => Error::from_io(operation, key, io).kind,
                attohttpc::ErrorKind::ConnectNotSupported
                | attohttpc::ErrorKind::InvalidBaseUrl
                | attohttpc::ErrorKind::InvalidUrlHost
                | attohttpc::ErrorKind::InvalidUrlPort
                | attohttpc::ErrorKind::InvalidResponse(_)
                | attohttpc::ErrorKind::TooManyRedirections => ErrorKind::Transient,
                _ => ErrorKind::Other,
            };
            Error::new(kind, operation, key, atto)
        }
        S3Error::Credentials(err) => Error::new(ErrorKind::PermissionDenied, operation, key, err),
        other => Error::new(ErrorKind::Other, operation, key, other),
    }
}

impl S3Storage {
    pub fn open(config: &S3Config, retry: RetryPolicy) -> Result<S3Storage> {
        let invalid = |message: String| {
            Error::new(
                ErrorKind::InvalidConfig,
                "open",
                &config.bucket_name,
                message,
            )
        };
        // Retries are ours; rust-s3 would otherwise sleep and retry behind our back.
        static DISABLE_CRATE_RETRIES: Once = Once::new();
        DISABLE_CRATE_RETRIES.call_once(|| s3::set_retries(0));

        let region = match &config.host {
            Some(host) => {
                let scheme = if config.is_secure { "https" } else { "http" };
                let endpoint = match config.port() {
                    Some(port) => format!("{scheme}://{host}:{port}"),
                    None => format!("{scheme}://{host}"),
                };
                Region::Custom {
                    region: config.region.clone(),
                    endpoint,
                }
            }
            None => config
                .region
                .parse()
                .map_err(|err| invalid(format!("unknown region {:?}: {err}", config.region)))?,
        };
        let credentials = Credentials::new(
            config.aws_access_key_id.as_deref(),
            config.aws_secret_access_key.as_deref(),
            config.aws_session_token.as_deref(),
            None,
            None,
        )
        .map_err(|err| invalid(format!("credentials: {err}")))?;
        let mut bucket = Bucket::new(&config.bucket_name, region, credentials)
            .map_err(|err| invalid(err.to_string()))?;
        // rohmu's "auto" picks virtual-host style only for AWS; custom hosts get path style.
        let path_style = match config.addressing_style.as_str() {
            "virtual" => false,
            "auto" => config.host.is_some(),
            _ => true,
        };
        if path_style {
            bucket.set_path_style();
        } else {
            bucket.set_subdomain_style();
        }
        let mut transfer_bucket = bucket.clone();
        transfer_bucket.set_request_timeout(None);
        let deadline = config
            .read_timeout
            .as_ref()
            .and_then(seconds)
            .unwrap_or(60.0);
        bucket.set_request_timeout(Some(Duration::from_secs_f64(deadline)));
        Ok(S3Storage {
            bucket,
            transfer_bucket,
            prefix: KeyPrefix::new(config.prefix.as_deref()),
            part_size: config
                .segment_size
                .max(config.min_multipart_chunk_size.unwrap_or(0)),
            retry,
        })
    }

    /// A handle whose requests also carry the metadata headers.
    fn with_metadata(&self, key: &str, metadata: &Metadata) -> Result<Box<Bucket>> {
        let mut headers = http::HeaderMap::new();
        for (name, value) in metadata {
            let header = format!("{METADATA_HEADER_PREFIX}{name}");
            let name = http_header_name(&header).ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    "upload",
                    key,
                    format!("bad metadata key {name:?}"),
                )
            })?;
            let value = value.parse().map_err(|_| {
                Error::new(
                    ErrorKind::Other,
                    "upload",
                    key,
                    format!("metadata {header} is not a valid header value"),
                )
            })?;
            headers.insert(name, value);
        }
        self.bucket
            .with_extra_headers(headers)
            .map(Box::new)
            .map_err(|err| s3_error("upload", key, err))
    }

    fn object_info(&self, full: &str, size: u64, metadata: Option<Metadata>) -> Option<ObjectInfo> {
        Some(ObjectInfo {
            key: self.prefix.relative(full)?.to_owned(),
            size,
            metadata,
        })
    }
}

fn http_header_name(name: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

/// Tells the sink's failures apart from the network's: rust-s3 reports both as `S3Error::Io`.
struct SinkWatch<'a> {
    out: &'a mut (dyn Write + Send),
    failure: Option<String>,
    written: u64,
}

impl Write for SinkWatch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(err) => {
                self.failure = Some(err.to_string());
                Err(err)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

struct S3Upload<'a> {
    storage: &'a S3Storage,
    key: String,
    metadata: &'a Metadata,
}

struct S3MultipartState {
    upload_id: String,
    parts: Vec<Part>,
}

impl PartSink for S3Upload<'_> {
    type Upload = S3MultipartState;

    fn put_whole(&self, data: &[u8]) -> Result<()> {
        let bucket = self.storage.with_metadata(&self.key, self.metadata)?;
        let mut transfer = bucket.clone();
        transfer.set_request_timeout(None);
        transfer
            .put_object_with_content_type(&self.key, data, CONTENT_TYPE)
            .map(|_| ())
            .map_err(|err| s3_error("upload", &self.key, err))
    }

    fn begin(&self) -> Result<S3MultipartState> {
        let bucket = self.storage.with_metadata(&self.key, self.metadata)?;
        let response = bucket
            .initiate_multipart_upload(&self.key, CONTENT_TYPE)
            .map_err(|err| s3_error("start multipart upload", &self.key, err))?;
        Ok(S3MultipartState {
            upload_id: response.upload_id,
            parts: Vec::new(),
        })
    }

    fn put_part(
        &self,
        upload: &mut S3MultipartState,
        number: u32,
        _offset: u64,
        data: &[u8],
        _is_last: bool,
    ) -> Result<()> {
        let part = self
            .storage
            .transfer_bucket
            .put_multipart_chunk(data, &self.key, number, &upload.upload_id, CONTENT_TYPE)
            .map_err(|err| s3_error("upload part", &self.key, err))?;
        upload.parts.retain(|p| p.part_number != number);
        upload.parts.push(part);
        Ok(())
    }

    fn complete(&self, upload: &S3MultipartState, _total: u64) -> Result<()> {
        self.storage
            .transfer_bucket
            .complete_multipart_upload(&self.key, &upload.upload_id, upload.parts.clone())
            .map(|_| ())
            .map_err(|err| s3_error("complete multipart upload", &self.key, err))
    }

    fn abort(&self, upload: S3MultipartState) {
        if let Err(err) = self
            .storage
            .bucket
            .abort_upload(&self.key, &upload.upload_id)
        {
            log::warn!("aborting multipart upload of {:?} failed: {err}", self.key);
        }
    }
}

impl ObjectStorage for S3Storage {
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> Result<u64> {
        let sink = S3Upload {
            storage: self,
            key: self.prefix.full(key),
            metadata,
        };
        multipart::upload(&sink, key, body, self.part_size, &self.retry)
    }

    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        if end <= start {
            return Ok(0);
        }
        let full = self.prefix.full(key);
        let mut watch = SinkWatch {
            out,
            failure: None,
            written: 0,
        };
        let last = (end != u64::MAX).then(|| end - 1);
        let result = if start == 0 && last.is_none() {
            self.transfer_bucket.get_object_to_writer(&full, &mut watch)
        } else {
            self.transfer_bucket
                .get_object_range_to_writer(&full, start, last, &mut watch)
        };
        match (result, watch.failure) {
            (_, Some(failure)) => Err(Error::new(
                ErrorKind::Source,
                "download",
                key,
                format!("writing downloaded data: {failure}"),
            )),
            (Ok(_), None) => Ok(watch.written),
            // A range starting at the end of the object: nothing left to send.
            (Err(S3Error::HttpFailWithBody(416, _)), None) => Ok(0),
            (Err(err), None) => Err(s3_error("download", key, err)),
        }
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        let full = self.prefix.full(key);
        let (head, _) = self
            .bucket
            .head_object(&full)
            .map_err(|err| s3_error("head", key, err))?;
        let metadata: Metadata = head.metadata.unwrap_or_default().into_iter().collect();
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: head
                .content_length
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            metadata: Some(metadata),
        })
    }

    fn list(&self, prefix: &str, options: ListOptions) -> Result<Listing> {
        let full_prefix = self.prefix.full(prefix);
        let delimiter = (!options.deep).then(|| "/".to_owned());
        let pages = self
            .bucket
            .list(full_prefix, delimiter)
            .map_err(|err| s3_error("list", prefix, err))?;
        let mut listing = Listing::default();
        for page in pages {
            for object in page.contents {
                let Some(mut info) = self.object_info(&object.key, object.size, None) else {
                    continue;
                };
                if options.with_metadata {
                    // S3 listings carry no user metadata: one HEAD per object, as rohmu does.
                    info.metadata = self.head(&info.key)?.metadata;
                }
                listing.objects.push(info);
            }
            for common in page.common_prefixes.unwrap_or_default() {
                if let Some(relative) = self.prefix.relative(&common.prefix) {
                    listing.prefixes.push(relative.to_owned());
                }
            }
        }
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        listing.prefixes.sort();
        Ok(listing)
    }

    fn delete(&self, key: &str) -> Result<()> {
        // S3 answers 204 to deleting a missing key; the trait promises NotFound.
        self.head(key)?;
        self.bucket
            .delete_object(self.prefix.full(key))
            .map(|_| ())
            .map_err(|err| s3_error("delete", key, err))
    }
}

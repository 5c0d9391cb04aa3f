//! HTTP plumbing shared by the backends that speak REST through ureq (GCS and Azure): the agent
//! configuration, the mapping of ureq failures and HTTP answers onto [`ErrorKind`], URL
//! percent-encoding, and streaming a (possibly ranged) download into the caller's writer.
//!
//! It exists so that both backends classify the same network failure the same way; everything
//! cloud-specific (URLs, auth, upload protocols) stays in the backend modules.

use std::io::{self, Read, Write};
use std::time::Duration;

use ureq::http;

use super::{Error, ErrorKind, Result, copy_body};

pub(crate) type Response = http::Response<ureq::Body>;

/// How much of an error answer's body goes into the error message.
const ERROR_BODY_LIMIT: u64 = 4096;

/// The agent one storage uses for all its requests, so connections are pooled across them.
///
/// Non-2xx answers come back as responses (`http_status_as_error(false)`) so that each backend
/// classifies them itself, and redirects are never followed: GCS answers an unfinished resumable
/// chunk with 308, which is protocol, not a redirect. There is deliberately no deadline on a whole
/// request: a multi-gigabyte download may rightly take hours. Instead every phase that can stall
/// has its own limit, and `timeout_per_read`/`timeout_per_write` turn a stalled transfer into a
/// (transient) timeout; they also cover the wait for response headers, so they are as long as the
/// time a server may take to answer a large commit.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_send_request(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        .user_agent(concat!("myhoard/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// The kind of a ureq failure (one that produced no HTTP answer).
fn kind_of(err: &ureq::Error) -> ErrorKind {
    match err {
        ureq::Error::Io(io) => Error::from_io("", "", io).kind,
        // A server that stalls, vanishes, or cuts a response short: worth another try.
        ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => ErrorKind::Transient,
        ureq::Error::StatusCode(status) => Error::from_status("", "", *status, "").kind,
        // The endpoint itself cannot work, however often it is tried.
        ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::TlsRequired => ErrorKind::InvalidConfig,
        // TLS verification failures, malformed headers we built, oversized answers: permanent.
        _ => ErrorKind::Other,
    }
}

/// Classifies a failure to get an HTTP answer at all.
pub(crate) fn request_error(operation: &'static str, key: &str, err: ureq::Error) -> Error {
    match err {
        ureq::Error::Io(io) => Error::from_io(operation, key, &io),
        other => Error::new(kind_of(&other), operation, key, other),
    }
}

/// Classifies a non-success HTTP answer, quoting the start of its body (and Azure's error code
/// header, the only detail a HEAD answer carries).
pub(crate) fn status_error(operation: &'static str, key: &str, response: Response) -> Error {
    let status = response.status().as_u16();
    let code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    // The body only decorates the message; failing to read it must not hide the status.
    let _ = response
        .into_body()
        .into_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_end(&mut body);
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if let Some(code) = code {
        text = format!("{code} {text}");
    }
    Error::from_status(operation, key, status, &text)
}

/// Reads a whole (small) answer body: listings, object resources, tokens.
pub(crate) fn read_body(
    operation: &'static str,
    key: &str,
    response: Response,
    limit: u64,
) -> Result<Vec<u8>> {
    response
        .into_body()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|err| request_error(operation, key, err))
}

/// Reads and parses a JSON answer body.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    key: &str,
    response: Response,
) -> Result<T> {
    let body = read_body(operation, key, response, 64 << 20)?;
    serde_json::from_slice(&body).map_err(|err| {
        Error::new(
            ErrorKind::Other,
            operation,
            key,
            format!("unexpected answer from server: {err}"),
        )
    })
}

/// A response body whose read errors keep their classification.
///
/// ureq hands its own failures (timeouts, protocol errors) to `Read` callers as
/// `io::ErrorKind::Other` wrapping a `ureq::Error`, which [`Error::from_io`] would call permanent.
/// A download that times out half way must be retried (and resumed), so the wrapped error is
/// turned back into an `io::Error` of a kind `from_io` classifies the same way.
struct ClassifiedBody<R>(R);

impl<R: Read> Read for ClassifiedBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|err| match ureq::Error::from(err) {
                ureq::Error::Io(io) => io,
                other => {
                    let kind = match kind_of(&other) {
                        ErrorKind::Transient => io::ErrorKind::TimedOut,
                        _ => io::ErrorKind::Other,
                    };
                    io::Error::new(kind, other.to_string())
                }
            })
    }
}

/// The `Range` header value for bytes `start..end` (`end` exclusive, `u64::MAX` for "to the end");
/// `None` when the whole object is wanted.
pub(crate) fn range_header(start: u64, end: u64) -> Option<String> {
    match (start, end) {
        (0, u64::MAX) => None,
        (start, u64::MAX) => Some(format!("bytes={start}-")),
        (start, end) => Some(format!("bytes={start}-{}", end - 1)),
    }
}

/// Streams the answer to a GET for bytes `start..end` into `out`; returns the bytes written.
///
/// 416 (the range starts at or past the end) is an empty success, as the trait promises. A server
/// that ignores the range and answers 200 with the whole object is tolerated by skipping and
/// truncating locally, so a resumed download never writes a byte twice.
pub(crate) fn receive_download(
    operation: &'static str,
    key: &str,
    response: Response,
    start: u64,
    end: u64,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let status = response.status().as_u16();
    let skip = match status {
        200 => start,
        206 => 0,
        416 => return Ok(0),
        _ => return Err(status_error(operation, key, response)),
    };
    let mut body = ClassifiedBody(response.into_body().into_reader());
    if skip > 0 {
        let skipped = io::copy(&mut (&mut body).take(skip), &mut io::sink())
            .map_err(|err| Error::from_io(operation, key, &err))?;
        if skipped < skip {
            return Ok(0);
        }
    }
    let mut limited = body.take(end.saturating_sub(start));
    copy_body(operation, key, &mut limited, out)
}

/// Percent-encodes `value` for a URL: everything but RFC 3986 unreserved characters, and `/` too
/// unless `keep_slash` (Azure blob paths keep their slashes, GCS object names in a path segment
/// must not).
pub(crate) fn percent_encode(value: &str, keep_slash: bool) -> String {
    let mut encoded = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/')
        {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A query string (`?a=b&c=d`, or empty) with every name and value percent-encoded.
pub(crate) fn query_string(pairs: &[(&str, String)]) -> String {
    let mut query = String::new();
    for (index, (name, value)) in pairs.iter().enumerate() {
        query.push(if index == 0 { '?' } else { '&' });
        query.push_str(&percent_encode(name, false));
        query.push('=');
        query.push_str(&percent_encode(value, false));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        let cases = [
            ("plain-name_1.~", false, "plain-name_1.~"),
            ("a/b c", false, "a%2Fb%20c"),
            ("a/b c", true, "a/b%20c"),
            ("x+y=z&q?#%", false, "x%2By%3Dz%26q%3F%23%25"),
            ("2024-01-02T03:04:05", true, "2024-01-02T03%3A04%3A05"),
            ("ä€", false, "%C3%A4%E2%82%AC"),
            ("", false, ""),
        ];
        for (input, keep_slash, expected) in cases {
            assert_eq!(percent_encode(input, keep_slash), expected, "{input:?}");
        }
        assert_eq!(
            query_string(&[("prefix", "a b/".into()), ("delimiter", "/".into())]),
            "?prefix=a%20b%2F&delimiter=%2F"
        );
        assert_eq!(query_string(&[]), "");
    }

    #[test]
    fn range_headers() {
        assert_eq!(range_header(0, u64::MAX), None);
        assert_eq!(range_header(5, u64::MAX).as_deref(), Some("bytes=5-"));
        assert_eq!(range_header(0, 10).as_deref(), Some("bytes=0-9"));
        assert_eq!(range_header(3, 4).as_deref(), Some("bytes=3-3"));
    }

    #[test]
    fn ureq_failures_are_classified() {
        let cases = [
            (
                ureq::Error::Timeout(ureq::Timeout::RecvBody),
                ErrorKind::Transient,
            ),
            (ureq::Error::ConnectionFailed, ErrorKind::Transient),
            (ureq::Error::HostNotFound, ErrorKind::Transient),
            (
                ureq::Error::Io(io::ErrorKind::ConnectionReset.into()),
                ErrorKind::Transient,
            ),
            (
                ureq::Error::Io(io::ErrorKind::ConnectionRefused.into()),
                ErrorKind::Transient,
            ),
            (ureq::Error::BadUri("x".into()), ErrorKind::InvalidConfig),
            (ureq::Error::StatusCode(503), ErrorKind::Transient),
            (ureq::Error::StatusCode(403), ErrorKind::PermissionDenied),
            (ureq::Error::TooManyRedirects, ErrorKind::Other),
        ];
        for (err, kind) in cases {
            let text = err.to_string();
            assert_eq!(request_error("op", "k", err).kind, kind, "{text}");
        }
    }

    #[test]
    fn wrapped_body_errors_keep_their_kind() {
        struct Failing(ureq::Error);
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                let err = std::mem::replace(&mut self.0, ureq::Error::ConnectionFailed);
                Err(err.into_io())
            }
        }
        let mut out = Vec::new();
        let mut body = ClassifiedBody(Failing(ureq::Error::Timeout(ureq::Timeout::PerRead)));
        let mut sink: &mut (dyn Write + Send) = &mut out;
        let err = copy_body("download", "k", &mut body, &mut sink).expect_err("must fail");
        assert_eq!(err.kind, ErrorKind::Transient);
        let mut body = ClassifiedBody(Failing(ureq::Error::TooManyRedirects));
        let err = copy_body("download", "k", &mut body, &mut sink).expect_err("must fail");
        assert_eq!(err.kind, ErrorKind::Other);
    }
}

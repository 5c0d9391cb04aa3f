//! The `google` backend: Google Cloud Storage over its JSON API, through ureq.
//!
//! Owns everything GCS-specific: object URLs (names percent-encoded into one path segment),
//! service-account OAuth (an RS256 JWT signed with ring, exchanged for an access token that is
//! cached until shortly before it expires), and the two upload protocols. A body that fits in one
//! chunk goes up as a single `multipart/related` request carrying the metadata and the bytes, so
//! the object appears with its metadata at once; a larger one goes through a resumable session
//! whose chunks are driven by `multipart.rs`. GCS only makes a resumable object visible when the
//! chunk declaring the total size arrives, which gives the trait's "no short object" promise.
//!
//! Listings carry each object's user metadata, so `with_metadata` costs no extra requests here.
//! With an `endpoint` and no credentials (fake-gcs-server), requests go unauthenticated.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::{Deserialize, Serialize};
use ureq::SendBody;
use ureq::http::{self as uhttp, Method};

use super::http::{
    self, Response, percent_encode, query_string, read_json, request_error, status_error,
};
use super::multipart::{self, PartSink};
use super::{
    Error, ErrorKind, KeyPrefix, ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage, Result,
    RetryPolicy,
};

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const JWT_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the JWT; Google caps it at one hour.
const JWT_LIFETIME_SECS: u64 = 3600;
/// A cached token is replaced this long before it expires, so no request carries a token that
/// runs out in flight (and some clock skew is absorbed).
const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(300);
/// Resumable chunks other than the last must be multiples of this.
const CHUNK_GRANULE: usize = 256 << 10;
const CONTENT_TYPE: &str = "application/octet-stream";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    #[serde(default)]
    pub project_id: Option<String>,
    pub bucket_name: String,
    /// Path of a service-account JSON key file.
    #[serde(default)]
    pub credential_file: Option<PathBuf>,
    /// The service-account JSON key itself, inline.
    #[serde(default)]
    pub credentials: Option<serde_json::Value>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Accepted for rohmu compatibility; proxies are not supported.
    #[serde(default)]
    pub proxy_info: Option<serde_json::Value>,
    /// Ours: the API endpoint, e.g. `http://127.0.0.1:4443` for an emulator. Without credentials
    /// the requests then go unauthenticated.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Ours: bytes per resumable-upload chunk, a multiple of 256 KiB.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
}

fn default_chunk_size() -> usize {
    8 << 20
}

impl GcsConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.bucket_name.is_empty() {
            problems.push(("bucket_name".into(), "must not be empty".into()));
        }
        if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(256 << 10) {
            problems.push((
                "chunk_size".into(),
                "must be a positive multiple of 262144".into(),
            ));
        }
        if self.credentials.is_some() && self.credential_file.is_some() {
            problems.push((
                "credentials".into(),
                "give either credentials or credential_file, not both".into(),
            ));
        }
        if self.credentials.is_none() && self.credential_file.is_none() && self.endpoint.is_none() {
            problems.push((
                "credential_file".into(),
                "credentials or credential_file is required unless endpoint names an emulator"
                    .into(),
            ));
        }
        if self.proxy_info.is_some() {
            problems.push(("proxy_info".into(), "proxies are not supported".into()));
        }
        problems
    }
}

/// The parts of a service-account JSON key that signing needs.
#[derive(Deserialize)]
struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct CachedToken {
    bearer: String,
    refresh_at: Instant,
}

/// Service-account OAuth: signs JWTs and keeps the access token they buy.
struct TokenSource {
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key_pair: RsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// Held across a refresh, so concurrent callers wait for one token instead of each fetching.
    cached: Mutex<Option<CachedToken>>,
}

/// `header.claims`, each part base64url-encoded JSON: what the RS256 signature covers.
fn jwt_signing_input(
    client_email: &str,
    key_id: Option<&str>,
    token_uri: &str,
    now: u64,
) -> String {
    let header = JwtHeader {
        alg: "RS256",
        typ: "JWT",
        kid: key_id,
    };
    let claims = JwtClaims {
        iss: client_email,
        scope: SCOPE,
        aud: token_uri,
        iat: now,
        exp: now + JWT_LIFETIME_SECS,
    };
    // Serializing these plain structs cannot fail; an empty part would be rejected by the server.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(&claims).unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// The DER inside a PEM block, and whether it is PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE
/// KEY`).
fn pem_der(pem: &str) -> Result<(Vec<u8>, bool), String> {
    let mut label = None;
    let mut body = String::new();
    for line in pem.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches('-').trim().to_owned());
        } else if line.starts_with("-----END ") {
            break;
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    let label = label.ok_or("private_key is not a PEM block")?;
    let der = STANDARD
        .decode(body)
        .map_err(|err| format!("private_key is not valid base64: {err}"))?;
    match label.as_str() {
        "PRIVATE KEY" => Ok((der, true)),
        "RSA PRIVATE KEY" => Ok((der, false)),
        other => Err(format!(
            "private_key is a {other:?}, not an RSA private key"
        )),
    }
}

impl TokenSource {
    fn new(key: ServiceAccountKey) -> Result<TokenSource, String> {
        if let Some(kind) = &key.kind
            && kind != "service_account"
        {
            return Err(format!(
                "credentials of type {kind:?} are not supported, only service_account"
            ));
        }
        let (der, pkcs8) = pem_der(&key.private_key)?;
        let key_pair = if pkcs8 {
            RsaKeyPair::from_pkcs8(&der)
        } else {
            RsaKeyPair::from_der(&der)
        }
        .map_err(|err| format!("private_key rejected: {err}"))?;
        Ok(TokenSource {
            client_email: key.client_email,
            key_id: key.private_key_id,
            token_uri: key
                .token_uri
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            key_pair,
            rng: ring::rand::SystemRandom::new(),
            cached: Mutex::new(None),
        })
    }

    fn assertion(&self, now: u64) -> Result<String, String> {
        let input = jwt_signing_input(
            &self.client_email,
            self.key_id.as_deref(),
            &self.token_uri,
            now,
        );
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the token request failed".to_owned())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// A valid access token, fetched anew when the cached one is (nearly) expired.
    fn bearer(&self, agent: &ureq::Agent, operation: &'static str, key: &str) -> Result<String> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = cached.as_ref()
            && token.refresh_at > Instant::now()
        {
            return Ok(token.bearer.clone());
        }
        let token = self.fetch(agent, operation, key)?;
        let bearer = token.bearer.clone();
        *cached = Some(token);
        Ok(bearer)
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn fetch(
        &self,
        agent: &ureq::Agent,
        operation: &'static str,
        key: &str,
    ) -> Result<CachedToken> {
        let failed = |err: Error| {
            Error::new(
                err.kind,
                operation,
                key,
                format!(
                    "getting an access token from {}: {}",
                    self.token_uri, err.message
                ),
            )
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| {
                Error::new(
                    ErrorKind::Other,
                    operation,
                    key,
                    "system clock is before 1970",
                )
            })?
            .as_secs();
        let assertion = self
            .assertion(now)
            .map_err(|message| Error::new(ErrorKind::Other, operation, key, message))?;
        let form = format!(
            "grant_type={}&assertion={}",
            percent_encode(JWT_GRANT_TYPE, false),
            percent_encode(&assertion, false)
        );
        let requested = Instant::now();
        let response = agent
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .map_err(|err| failed(request_error(operation, key, err)))?;
        match response.status().as_u16() {
            200 => {}
            // invalid_grant, a deleted key, a skewed clock: the credentials do not work.
            400 | 401 | 403 => {
                let err = status_error(operation, key, response);
                return Err(failed(Error {
                    kind: ErrorKind::PermissionDenied,
                    ..err
                }));
            }
            _ => return Err(failed(status_error(operation, key, response))),
        }
        let answer: TokenAnswer = read_json(operation, key, response).map_err(failed)?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(JWT_LIFETIME_SECS));
        // Refresh early, but never sooner than half way through a (short) lifetime.
        let keep = lifetime
            .saturating_sub(TOKEN_EARLY_REFRESH)
            .max(lifetime / 2);
        Ok(CachedToken {
            bearer: answer.access_token,
            refresh_at: requested + keep,
        })
    }
}

/// Reads the service-account key the config names: inline (as a JSON object or a string holding
/// one) or from `credential_file`.
fn load_key(config: &GcsConfig) -> Result<Option<ServiceAccountKey>, String> {
    let value = match (&config.credentials, &config.credential_file) {
        (Some(serde_json::Value::String(text)), _) => {
            serde_json::from_str(text).map_err(|err| format!("credentials: not JSON: {err}"))?
        }
        (Some(value), _) => value.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("reading credential_file {}: {err}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|err| format!("credential_file {} is not JSON: {err}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    serde_json::from_value(value)
        .map(Some)
        .map_err(|err| format!("not a service-account key: {err}"))
}

/// An object resource as the JSON API returns it (only the fields used).
#[derive(Deserialize)]
struct ObjectResource {
    name: String,
    #[serde(deserialize_with = "size_from_string_or_number")]
    size: u64,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// GCS sends 64-bit sizes as JSON strings; accept numbers too, as emulators may.
fn size_from_string_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => text.parse().map_err(serde::de::Error::custom),
        serde_json::Value::Number(number) => number
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("size is not a non-negative integer")),
        other => Err(serde::de::Error::custom(format!(
            "size is {other}, not a number"
        ))),
    }
}

#[derive(Deserialize)]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(rename = "nextPageToken", default)]
    next_page_token: Option<String>,
}

/// A request body.
#[derive(Clone, Copy)]
enum Payload<'a> {
    None,
    Bytes(&'a [u8]),
    /// `head`, the object's bytes, `tail`: a `multipart/related` body sent without copying the
    /// bytes into a second buffer.
    Related(&'a [u8], &'a [u8], &'a [u8]),
}

pub struct GcsStorage {
    agent: ureq::Agent,
    /// `https://storage.googleapis.com` or the emulator's URL, without a trailing slash.
    endpoint: String,
    /// Percent-encoded, ready for URLs.
    bucket: String,
    prefix: KeyPrefix,
    chunk_size: usize,
    auth: Option<TokenSource>,
    retry: RetryPolicy,
}

impl GcsStorage {
    pub fn open(config: &GcsConfig, retry: RetryPolicy) -> Result<GcsStorage> {
        let invalid = |message: String| {
            Error::new(
                ErrorKind::InvalidConfig,
                "open",
                &config.bucket_name,
                message,
            )
        };
        if config.bucket_name.is_empty() {
            return Err(invalid("bucket_name must not be empty".into()));
        }
        // A resumable session rejects intermediate chunks of any other size.
        if config.chunk_size == 0 || !config.chunk_size.is_multiple_of(CHUNK_GRANULE) {
            return Err(invalid(format!(
                "chunk_size must be a positive multiple of {CHUNK_GRANULE}"
            )));
        }
        let auth = match load_key(config).map_err(&invalid)? {
            Some(key) => Some(TokenSource::new(key).map_err(&invalid)?),
            None if config.endpoint.is_some() => None,
            None => return Err(invalid("credentials or credential_file is required".into())),
        };
        let endpoint = config
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_owned();
        Ok(GcsStorage {
            agent: http::agent(),
            endpoint,
            bucket: percent_encode(&config.bucket_name, false),
            prefix: KeyPrefix::new(config.prefix.as_deref()),
            chunk_size: config.chunk_size,
            auth,
            retry,
        })
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
            percent_encode(name, false)
        )
    }

    fn upload_url(&self, upload_type: &str) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={upload_type}",
            self.endpoint, self.bucket
        )
    }

    /// Sends one request, with a bearer token when configured. A 401 on a cached token (revoked,
    /// or expired early by clock skew) gets one more try with a freshly fetched token; every body
    /// here is a slice, so it can be sent again.
    fn send(
        &self,
        operation: &'static str,
        key: &str,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
    ) -> Result<Response> {
        let mut fresh_token = false;
        loop {
            let bearer = match &self.auth {
                Some(auth) => Some(auth.bearer(&self.agent, operation, key)?),
                None => None,
            };
            let mut builder = uhttp::Request::builder().method(method.clone()).uri(url);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(bearer) = &bearer {
                builder = builder.header("authorization", format!("Bearer {bearer}"));
            }
            let bad_request = |err: uhttp::Error| {
                Error::new(
                    ErrorKind::Other,
                    operation,
                    key,
                    format!("building request: {err}"),
                )
            };
            let sent = match payload {
                Payload::None => self.agent.run(builder.body(()).map_err(bad_request)?),
                Payload::Bytes(bytes) => {
                    let request = builder.header("content-length", bytes.len()).body(bytes);
                    self.agent.run(request.map_err(bad_request)?)
                }
                Payload::Related(head, bytes, tail) => {
                    let length = head.len() + bytes.len() + tail.len();
                    let mut reader = head.chain(bytes).chain(tail);
                    let request = builder
                        .header("content-length", length)
                        .body(SendBody::from_reader(&mut reader));
                    self.agent.run(request.map_err(bad_request)?)
                }
            };
            let response = sent.map_err(|err| request_error(operation, key, err))?;
            if response.status() == 401
                && !fresh_token
                && let Some(auth) = &self.auth
            {
                auth.forget();
                fresh_token = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends a request whose success is a 2xx answer with nothing we need in its body.
    fn expect_success(
        &self,
        operation: &'static str,
        key: &str,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
    ) -> Result<Response> {
        let response = self.send(operation, key, method, url, headers, payload)?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(status_error(operation, key, response))
        }
    }

    fn object_info(&self, object: ObjectResource, with_metadata: bool) -> Option<ObjectInfo> {
        Some(ObjectInfo {
            key: self.prefix.relative(&object.name)?.to_owned(),
            size: object.size,
            metadata: with_metadata.then(|| object.metadata.unwrap_or_default()),
        })
    }
}

/// A `multipart/related` boundary that does not occur in `data`. Checking beats trusting
/// randomness: the body is at hand anyway.
fn boundary_for(data: &[u8]) -> String {
    (0u64..)
        .map(|n| format!("myhoard-part-boundary-{n:016x}"))
        .find(|boundary| {
            !data
                .windows(boundary.len())
                .any(|window| window == boundary.as_bytes())
        })
        .unwrap_or_default()
}

/// How many bytes a 308 answer says the session holds: its `Range: bytes=0-N` header, or none.
fn persisted_bytes(response: &Response) -> Option<u64> {
    parse_persisted(response.headers().get("range")?.to_str().ok()?)
}

fn parse_persisted(range: &str) -> Option<u64> {
    let last: u64 = range
        .trim()
        .strip_prefix("bytes=")?
        .split_once('-')?
        .1
        .trim()
        .parse()
        .ok()?;
    last.checked_add(1)
}

/// Reads and drops an answer body so the connection can go back to the pool.
fn drain(response: Response) {
    let _ = std::io::copy(
        &mut response.into_body().into_reader(),
        &mut std::io::sink(),
    );
}

struct GcsUpload<'a> {
    storage: &'a GcsStorage,
    /// The caller's key, for errors.
    key: &'a str,
    /// The object name in the bucket.
    name: String,
    metadata: &'a Metadata,
}

/// A resumable upload session.
struct Session {
    uri: String,
    /// Bytes the server has confirmed holding.
    persisted: u64,
    /// Set after a failed chunk: ask the server how much it holds before sending more, since a
    /// chunk cut short may still have been partly stored.
    resync: bool,
    /// The chunk declaring the total was accepted: the object exists.
    finished: bool,
}

impl GcsUpload<'_> {
    /// The object resource to create: name, content type and user metadata.
    fn resource(&self) -> Vec<u8> {
        let resource = serde_json::json!({
            "name": self.name,
            "contentType": CONTENT_TYPE,
            "metadata": self.metadata,
        });
        resource.to_string().into_bytes()
    }

    /// Asks the session how far it got (`Content-Range: bytes */*` with no body), as GCS
    /// documents for resuming. Emulators may differ: fake-gcs-server takes this request as the
    /// end of the upload and commits what it holds, so recovery after a failed chunk can only be
    /// exercised against real GCS or a fake that follows the protocol.
    fn resync(&self, session: &mut Session) -> Result<()> {
        let operation = "query upload status";
        let response = self.storage.send(
            operation,
            self.key,
            Method::PUT,
            &session.uri,
            &[("content-range", "bytes */*")],
            Payload::Bytes(&[]),
        )?;
        match response.status().as_u16() {
            308 => session.persisted = persisted_bytes(&response).unwrap_or(0),
            200 | 201 => session.finished = true,
            _ => return Err(status_error(operation, self.key, response)),
        }
        drain(response);
        session.resync = false;
        Ok(())
    }

    /// Sends what the server does not hold yet of the chunk `offset..offset + data.len()`.
    fn send_chunk(
        &self,
        session: &mut Session,
        offset: u64,
        data: &[u8],
        is_last: bool,
    ) -> Result<()> {
        let operation = "upload part";
        let end = offset + data.len() as u64;
        if session.resync {
            self.resync(session)?;
        }
        loop {
            if session.finished {
                return if is_last {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::Other,
                        operation,
                        self.key,
                        "GCS finished the upload before its last chunk",
                    ))
                };
            }
            // The previous chunk is gone from our buffer: if the server lost part of it, the
            // upload cannot go on.
            if session.persisted < offset || session.persisted > end {
                return Err(Error::new(
                    ErrorKind::Other,
                    operation,
                    self.key,
                    format!(
                        "GCS holds {} bytes, expected between {offset} and {end}",
                        session.persisted
                    ),
                ));
            }
            if session.persisted == end && !is_last {
                return Ok(());
            }
            let from = session.persisted;
            let rest = &data[(from - offset) as usize..];
            let total = if is_last {
                end.to_string()
            } else {
                "*".to_owned()
            };
            let range = if rest.is_empty() {
                // Everything is there but the size was never declared: finalize.
                format!("bytes */{total}")
            } else {
                format!("bytes {from}-{}/{total}", end - 1)
            };
            let response = self.storage.send(
                operation,
                self.key,
                Method::PUT,
                &session.uri,
                &[("content-range", &range), ("content-type", CONTENT_TYPE)],
                Payload::Bytes(rest),
            )?;
            match response.status().as_u16() {
                308 => {
                    let persisted = persisted_bytes(&response).unwrap_or(0);
                    drain(response);
                    if persisted <= from {
                        return Err(Error::new(
                            ErrorKind::Transient,
                            operation,
                            self.key,
                            "GCS stored none of the chunk",
                        ));
                    }
                    // Possibly only part of the chunk: the loop sends the rest.
                    session.persisted = persisted;
                }
                200 | 201 => {
                    drain(response);
                    session.persisted = end;
                    session.finished = true;
                }
                _ => return Err(status_error(operation, self.key, response)),
            }
        }
    }
}

impl PartSink for GcsUpload<'_> {
    type Upload = Session;

    fn put_whole(&self, data: &[u8]) -> Result<()> {
        let boundary = boundary_for(data);
        let mut head =
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .into_bytes();
        head.extend_from_slice(&self.resource());
        head.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n").as_bytes(),
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let content_type = format!("multipart/related; boundary={boundary}");
        let response = self.storage.expect_success(
            "upload",
            self.key,
            Method::POST,
            &self.storage.upload_url("multipart"),
            &[("content-type", &content_type)],
            Payload::Related(&head, data, tail.as_bytes()),
        )?;
        drain(response);
        Ok(())
    }

    fn begin(&self) -> Result<Session> {
        let operation = "start resumable upload";
        let response = self.storage.expect_success(
            operation,
            self.key,
            Method::POST,
            &self.storage.upload_url("resumable"),
            &[
                ("content-type", "application/json; charset=UTF-8"),
                ("x-upload-content-type", CONTENT_TYPE),
            ],
            Payload::Bytes(&self.resource()),
        )?;
        let uri = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    operation,
                    self.key,
                    "GCS gave no session URI",
                )
            })?;
        drain(response);
        Ok(Session {
            uri,
            persisted: 0,
            resync: false,
            finished: false,
        })
    }

    fn put_part(
        &self,
        session: &mut Session,
        _number: u32,
        offset: u64,
        data: &[u8],
        is_last: bool,
    ) -> Result<()> {
        let sent = self.send_chunk(session, offset, data, is_last);
        if sent.is_err() {
            session.resync = true;
        }
        sent
    }

    fn complete(&self, session: &Session, _total: u64) -> Result<()> {
        // The last chunk declared the size, which is what completes a resumable upload.
        if session.finished {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Other,
                "complete upload",
                self.key,
                "the last chunk was not accepted",
            ))
        }
    }

    fn abort(&self, session: Session) {
        // GCS answers a cancelled session with 499; an unfinished session would also expire by
        // itself after a week, and never becomes an object.
        match self.storage.send(
            "abort upload",
            self.key,
            Method::DELETE,
            &session.uri,
            &[],
            Payload::None,
        ) {
            Ok(response) => drain(response),
            Err(err) => log::warn!(
                "cancelling the resumable upload of {:?} failed: {err}",
                self.key
            ),
        }
    }
}

impl ObjectStorage for GcsStorage {
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> Result<u64> {
        let sink = GcsUpload {
            storage: self,
            key,
            name: self.prefix.full(key),
            metadata,
        };
        multipart::upload(&sink, key, body, self.chunk_size, &self.retry)
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
        let url = format!("{}?alt=media", self.object_url(&self.prefix.full(key)));
        let range = http::range_header(start, end);
        let headers: Vec<(&str, &str)> = range
            .iter()
            .map(|range| ("range", range.as_str()))
            .collect();
        let response = self.send("download", key, Method::GET, &url, &headers, Payload::None)?;
        http::receive_download("download", key, response, start, end, out)
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        let url = self.object_url(&self.prefix.full(key));
        let response = self.expect_success("head", key, Method::GET, &url, &[], Payload::None)?;
        let object: ObjectResource = read_json("head", key, response)?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: object.size,
            metadata: Some(object.metadata.unwrap_or_default()),
        })
    }

    fn list(&self, prefix: &str, options: ListOptions) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut page_token: Option<String> = None;
        loop {
            let mut query = vec![("prefix", self.prefix.full(prefix))];
            if !options.deep {
                query.push(("delimiter", "/".to_owned()));
            }
            if let Some(token) = page_token.take() {
                query.push(("pageToken", token));
            }
            let url = format!(
                "{}/storage/v1/b/{}/o{}",
                self.endpoint,
                self.bucket,
                query_string(&query)
            );
            let response =
                self.expect_success("list", prefix, Method::GET, &url, &[], Payload::None)?;
            let page: ObjectList = read_json("list", prefix, response)?;
            for object in page.items {
                if let Some(info) = self.object_info(object, options.with_metadata) {
                    listing.objects.push(info);
                }
            }
            for common in page.prefixes {
                if let Some(relative) = self.prefix.relative(&common) {
                    listing.prefixes.push(relative.to_owned());
                }
            }
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => break,
            }
        }
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        listing.prefixes.sort();
        // A prefix spanning a page boundary is reported on each page.
        listing.prefixes.dedup();
        Ok(listing)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let url = self.object_url(&self.prefix.full(key));
        let response =
            self.expect_success("delete", key, Method::DELETE, &url, &[], Payload::None)?;
        drain(response);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_part(part: &str) -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn jwt_header_and_claims() {
        let input = jwt_signing_input(
            "backup@project.iam.gserviceaccount.com",
            Some("key-1"),
            "https://oauth2.googleapis.com/token",
            1_700_000_000,
        );
        let (header, claims) = input.split_once('.').expect("two parts");
        assert!(
            !input.contains(['=', '+', '/']),
            "base64url without padding: {input}"
        );
        assert_eq!(
            decode_part(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "key-1"})
        );
        assert_eq!(
            decode_part(claims),
            serde_json::json!({
                "iss": "backup@project.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/devstorage.read_write",
                "aud": "https://oauth2.googleapis.com/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        // The exact bytes of the header, as the server will hash them.
        assert_eq!(
            header,
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"key-1"}"#)
        );
        let without_kid = jwt_signing_input("a@b", None, "https://t", 0);
        let header = without_kid.split_once('.').expect("two parts").0;
        assert_eq!(
            decode_part(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
    }

    #[test]
    fn pem_blocks() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_der(pem), Ok((vec![0, 1, 2, 3], true)));
        let escaped_in_json =
            "-----BEGIN RSA PRIVATE KEY-----\r\nAAEC\r\n-----END RSA PRIVATE KEY-----";
        assert_eq!(pem_der(escaped_in_json), Ok((vec![0, 1, 2], false)));
        assert!(pem_der("not a key").is_err());
        assert!(pem_der("-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----").is_err());
        assert!(pem_der("-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----").is_err());
    }

    #[test]
    fn bad_keys_are_config_errors() {
        let config = |credentials: serde_json::Value| GcsConfig {
            project_id: None,
            bucket_name: "b".into(),
            credential_file: None,
            credentials: Some(credentials),
            prefix: None,
            proxy_info: None,
            endpoint: None,
            chunk_size: 256 << 10,
        };
        let cases = [
            serde_json::json!({"type": "authorized_user", "client_email": "a", "private_key": "x"}),
            serde_json::json!({"type": "service_account", "client_email": "a"}),
            serde_json::json!({"client_email": "a", "private_key": "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----"}),
            serde_json::json!("{not json"),
        ];
        for credentials in cases {
            let err = GcsStorage::open(&config(credentials.clone()), RetryPolicy::default())
                .err()
                .expect("must fail");
            assert_eq!(err.kind, ErrorKind::InvalidConfig, "{credentials}");
        }
        let mut emulator = config(serde_json::Value::Null);
        emulator.credentials = None;
        assert_eq!(
            GcsStorage::open(&emulator, RetryPolicy::default())
                .err()
                .map(|e| e.kind),
            Some(ErrorKind::InvalidConfig)
        );
        emulator.endpoint = Some("http://127.0.0.1:1/".into());
        let storage = GcsStorage::open(&emulator, RetryPolicy::default()).expect("emulator config");
        assert_eq!(storage.endpoint, "http://127.0.0.1:1");
        assert_eq!(
            storage.object_url("a/b c"),
            "http://127.0.0.1:1/storage/v1/b/b/o/a%2Fb%20c"
        );
        emulator.chunk_size = 1000;
        assert_eq!(
            GcsStorage::open(&emulator, RetryPolicy::default())
                .err()
                .map(|e| e.kind),
            Some(ErrorKind::InvalidConfig)
        );
    }

    #[test]
    fn object_resources_parse() {
        let page: ObjectList = serde_json::from_str(
            r#"{"kind": "storage#objects", "nextPageToken": "tok",
                "prefixes": ["p/site/"],
                "items": [
                  {"name": "p/a", "size": "12", "metadata": {"json": "{\"a\": 1}"}},
                  {"name": "p/b", "size": 0}
                ]}"#,
        )
        .expect("parse");
        assert_eq!(page.next_page_token.as_deref(), Some("tok"));
        assert_eq!(page.prefixes, ["p/site/"]);
        assert_eq!(page.items[0].size, 12);
        assert_eq!(
            page.items[0]
                .metadata
                .as_ref()
                .and_then(|m| m.get("json"))
                .map(String::as_str),
            Some("{\"a\": 1}")
        );
        assert_eq!(page.items[1].size, 0);
        assert!(page.items[1].metadata.is_none());
        assert!(serde_json::from_str::<ObjectResource>(r#"{"name": "x", "size": "-1"}"#).is_err());
        let empty: ObjectList =
            serde_json::from_str(r#"{"kind": "storage#objects"}"#).expect("parse");
        assert!(empty.items.is_empty() && empty.next_page_token.is_none());
    }

    #[test]
    fn persisted_ranges() {
        assert_eq!(parse_persisted("bytes=0-262143"), Some(262144));
        assert_eq!(parse_persisted(" bytes=0-0 "), Some(1));
        assert_eq!(parse_persisted("bytes=0-"), None);
        assert_eq!(parse_persisted("0-5"), None);
        assert_eq!(parse_persisted("bytes=0-18446744073709551615"), None);
    }

    #[test]
    fn boundary_avoids_the_data() {
        let first = boundary_for(b"hello");
        assert_eq!(first, "myhoard-part-boundary-0000000000000000");
        let data = format!("xx{first}yy");
        let second = boundary_for(data.as_bytes());
        assert_ne!(second, first);
        assert!(!data.contains(&second));
    }
}

//! The HTTP API: MyHoard's routes on tiny_http, each request parsed and validated into a typed
//! [`ApiRequest`] and handed to the controller as a [`Command`] carrying its own reply channel.
//!
//! This layer owns no state and decides nothing about modes or backups: it checks that a
//! request is well formed (route, method, JSON shape, field types, dates in the future), with
//! Python MyHoard's status codes and messages, and turns whatever the controller answers into the
//! response. Whether a mode change or a restore is allowed is the controller's call.
//!
//! Threads: a small pool of `http-N` threads, each looping on tiny_http's `recv_timeout`, so one
//! slow request (a `wait_for_upload` of 30 s, whose waiting the controller does) never holds up
//! the others. A thread blocks only on its socket, on handing the command over (at most
//! [`SEND_TIMEOUT`], the controller's channel is bounded) and on its reply channel (the request's
//! own wait plus [`REPLY_GRACE`]); each of those ends early when [`HttpServer::shutdown`] is
//! called. It never touches the database or object storage.
//!
//! Where MyHoard is quirky the quirk stays, so existing automation keeps working: a non-boolean
//! `force` counts as false, any `order` other than `asc` sorts descending, `target_time` may be
//! epoch seconds (what MyHoard parses) as well as ISO 8601 (what it documents). New here:
//! `target_gtid` for restores, MariaDB `"<domain>-<server>"` origins in `PUT /replication_state`,
//! and 404/405/413/503 bodies that are JSON `{"message": ...}` like every other error.
//!
//! Mirrors `web_server.py` (`WebServer`) of Python MyHoard.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SubsecRound, TimeZone, Utc};
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, select};
use serde_json::{Map, Value, json};

use crate::gtid::{Gtid, GtidSet, Origin};

/// How many `http-N` threads serve requests, hence how many slow requests can wait at once
/// while `GET /status` still answers.
pub const WORKER_THREADS: usize = 4;

/// The largest request body accepted; anything longer is answered 413. The largest legitimate
/// body, a replication state for a handful of servers, is a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a request may wait to be accepted by the controller (its command channel is
/// bounded) before it is answered 503.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the controller may take to answer, on top of the wait the request itself asked for
/// (`wait_for_upload`, `expire_after_seconds`, `wait_for_applied_preservation`).
pub const REPLY_GRACE: Duration = Duration::from_secs(30);

/// How often an idle worker looks up from tiny_http's queue to see whether it should stop:
/// the upper bound on how long [`HttpServer::shutdown`] waits for an idle worker.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// One API call, validated: everything the controller needs to act on it.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /status`.
    GetStatus,
    /// `PUT /status`.
    SetMode(ModeRequest),
    /// `GET /status/restore`.
    GetRestoreStatus,
    /// `GET /backup[?order=asc|desc]`. `None` keeps the storage listing order.
    ListBackups { order: Option<SortOrder> },
    /// `POST /backup {"backup_type": "basebackup", "incremental": bool?}`.
    RequestBasebackup { incremental: bool },
    /// `POST /backup {"backup_type": "binlog", "wait_for_upload": seconds?}`: rotate the binlog
    /// and, with a wait, answer once it is uploaded or the wait is over (a timeout is a success).
    RotateBinlog { wait_for_upload: Option<Duration> },
    /// `PUT /replication_state`: the executed GTIDs of every server of the cluster.
    SetReplicationState(ReplicationState),
    /// `PATCH /backup/settings {"paused_until": ISO 8601 | null}`; `None` resumes backups.
    PauseBackups { until: Option<DateTime<Utc>> },
    /// `PATCH /backup/{stream_id} {"broken": bool, "expire_after_seconds": number?}`; with
    /// `expire_after`, the controller answers with the outcome, waiting at most that long.
    MarkBroken {
        stream_id: String,
        broken: bool,
        expire_after: Option<Duration>,
    },
    /// `PUT /backup/{stream_id}/preserve {"preserve_until": ISO 8601 UTC | null,
    /// "wait_for_applied_preservation": seconds?}`; `until: None` removes the preservation.
    Preserve {
        stream_id: String,
        until: Option<DateTime<Utc>>,
        wait: Option<Duration>,
    },
    /// `PATCH /binlogs {"binlog_index": N}`: skip the binlog scanner forward past a gap.
    SetBinlogIndex { index: u64 },
}

impl ApiRequest {
    /// MyHoard's handler name, used in its `myhoard.http.<name>` timing metric.
    pub fn name(&self) -> &'static str {
        match self {
            ApiRequest::GetStatus => "status_show",
            ApiRequest::SetMode(_) => "status_update",
            ApiRequest::GetRestoreStatus => "restore_status_show",
            ApiRequest::ListBackups { .. } => "backup_list",
            ApiRequest::RequestBasebackup { .. } | ApiRequest::RotateBinlog { .. } => {
                "backup_create"
            }
            ApiRequest::SetReplicationState(_) => "replication_state_set",
            ApiRequest::PauseBackups { .. } => "backup_settings_update",
            ApiRequest::MarkBroken { .. } => "backup_update",
            ApiRequest::Preserve { .. } => "backup_preserve",
            ApiRequest::SetBinlogIndex { .. } => "binlogs_update",
        }
    }

    /// The wait the request itself asked for, which the controller spends before answering.
    pub fn requested_wait(&self) -> Option<Duration> {
        match self {
            ApiRequest::RotateBinlog { wait_for_upload } => *wait_for_upload,
            ApiRequest::MarkBroken { expire_after, .. } => *expire_after,
            ApiRequest::Preserve { wait, .. } => *wait,
            _ => None,
        }
    }
}

/// `PUT /status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeRequest {
    pub mode: RequestedMode,
    /// Only ever true for `active`: MyHoard reads `force` for no other mode.
    pub force: bool,
    /// Present exactly when `mode` is `restore`.
    pub restore: Option<RestoreRequest>,
}

/// The modes a client may ask for; `idle` and `promote` are reached only by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedMode {
    Active,
    Observe,
    Restore,
}

impl RequestedMode {
    /// The name used in the API and in state files.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestedMode::Active => "active",
            RequestedMode::Observe => "observe",
            RequestedMode::Restore => "restore",
        }
    }
}

/// What `PUT /status {"mode": "restore", ...}` asks to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequest {
    pub site: String,
    pub stream_id: String,
    pub target: RestoreTarget,
    pub rebuild_tables: bool,
}

/// How far a restore goes.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreTarget {
    /// Everything the backup's stream holds.
    Latest,
    /// Transactions committed at or before `epoch` (whole seconds: binlog commit timestamps have
    /// no finer resolution, so a fractional time is rounded down). With `approximate_ok`, the
    /// restore may stop at the last transaction before the target when it cannot tell exactly.
    Time { epoch: i64, approximate_ok: bool },
    /// Up to and including this transaction (`target_gtid`, ours).
    Gtid(Gtid),
}

/// Server name → the GTIDs that server has executed, as `PUT /replication_state` sends it.
/// Origins are MySQL UUIDs (or `uuid:tag`) or MariaDB `"<domain>-<server>"`; the sets are
/// normalised, so serializing one gives the canonical form of what was sent.
pub type ReplicationState = BTreeMap<String, GtidSet>;

/// The `order` of `GET /backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Ascending,
    Descending,
}

// ---------------------------------------------------------------------------------------------
// Replies and commands
// ---------------------------------------------------------------------------------------------

/// A failed request: its HTTP status and the text of its `{"message": ...}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    /// An error of any status.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is invalid, or not allowed in the current state (MyHoard's
    /// `BadRequest` and `ValueError`).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// 500: something failed that the client could not have prevented.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }

    /// 503: the controller did not take or answer the request in time.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, message)
    }

    /// The response body: `{"message": ...}`.
    pub fn body(&self) -> Value {
        json!({ "message": self.message })
    }
}

/// The controller's answer: the success body, or an error.
pub type Reply = Result<Value, ApiError>;

/// A request on its way to the controller, with the channel for its answer. The HTTP thread
/// waits on the other end; if the controller drops `reply` without sending, the client gets 503.
#[derive(Debug)]
pub struct Command {
    pub request: ApiRequest,
    pub reply: Sender<Reply>,
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// A route matched with an allowed method, before its body is read.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    GetStatus,
    PutStatus,
    GetRestoreStatus,
    GetBackups { order: Option<SortOrder> },
    PostBackup,
    PatchBackupSettings,
    PatchBackup { stream_id: String },
    PutPreserve { stream_id: String },
    PutReplicationState,
    PatchBinlogs,
}

impl Route {
    /// Whether the handler reads a JSON body (MyHoard's GET handlers never look at theirs).
    fn takes_body(&self) -> bool {
        !matches!(
            self,
            Route::GetStatus | Route::GetRestoreStatus | Route::GetBackups { .. }
        )
    }
}

// The `Allow` header of a 405, for a known path asked with a method it does not serve.
const ALLOW_BACKUPS: &str = "GET, HEAD, POST";
const ALLOW_STATUS: &str = "GET, HEAD, PUT";
const ALLOW_GET: &str = "GET, HEAD";
const ALLOW_PATCH: &str = "PATCH";
const ALLOW_PUT: &str = "PUT";

/// Why routing failed; a 405 carries the methods the path does serve.
#[derive(Debug, Clone, PartialEq)]
struct RouteError {
    error: ApiError,
    allow: Option<&'static str>,
}

impl From<ApiError> for RouteError {
    fn from(error: ApiError) -> RouteError {
        RouteError { error, allow: None }
    }
}

/// Matches `method` and the request target (path and query) against MyHoard's routes.
fn route(method: &str, target: &str) -> Result<Route, RouteError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let not_found = || RouteError::from(ApiError::new(404, format!("Not found: {path}")));
    let Some(relative) = path.strip_prefix('/') else {
        return Err(not_found());
    };
    let segments: Vec<&str> = relative.split('/').collect();
    // HEAD is GET without the body, which tiny_http leaves out by itself (aiohttp routes HEAD to
    // every GET handler too).
    let route_method = if method == "HEAD" { "GET" } else { method };
    let wrong_method = |allow: &'static str| RouteError {
        error: ApiError::new(
            405,
            format!("Method {method} is not allowed for {path}, allowed: {allow}"),
        ),
        allow: Some(allow),
    };
    match (segments.as_slice(), route_method) {
        (["status"], "GET") => Ok(Route::GetStatus),
        (["status"], "PUT") => Ok(Route::PutStatus),
        (["status"], _) => Err(wrong_method(ALLOW_STATUS)),
        (["status", "restore"], "GET") => Ok(Route::GetRestoreStatus),
        (["status", "restore"], _) => Err(wrong_method(ALLOW_GET)),
        (["backup"], "GET") => Ok(Route::GetBackups {
            order: sort_order(query)?,
        }),
        (["backup"], "POST") => Ok(Route::PostBackup),
        (["backup"], _) => Err(wrong_method(ALLOW_BACKUPS)),
        // Registered before `/backup/{stream_id}`, as in MyHoard, so no stream is called this.
        (["backup", "settings"], "PATCH") => Ok(Route::PatchBackupSettings),
        (["backup", stream_id], "PATCH") if !stream_id.is_empty() => Ok(Route::PatchBackup {
            stream_id: path_segment(stream_id).ok_or_else(not_found)?,
        }),
        (["backup", stream_id], _) if !stream_id.is_empty() => Err(wrong_method(ALLOW_PATCH)),
        (["backup", stream_id, "preserve"], "PUT") if !stream_id.is_empty() => {
            Ok(Route::PutPreserve {
                stream_id: path_segment(stream_id).ok_or_else(not_found)?,
            })
        }
        (["backup", stream_id, "preserve"], _) if !stream_id.is_empty() => {
            Err(wrong_method(ALLOW_PUT))
        }
        (["replication_state"], "PUT") => Ok(Route::PutReplicationState),
        (["replication_state"], _) => Err(wrong_method(ALLOW_PUT)),
        (["binlogs"], "PATCH") => Ok(Route::PatchBinlogs),
        (["binlogs"], _) => Err(wrong_method(ALLOW_PATCH)),
        _ => Err(not_found()),
    }
}

/// The `order` query parameter of `GET /backup`. As in MyHoard, `asc` sorts ascending and any
/// other value descending; an absent or empty one keeps the listing order.
fn sort_order(query: &str) -> Result<Option<SortOrder>, ApiError> {
    let mut order = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if query_component(name).as_deref() != Some("order") {
            continue;
        }
        let value = query_component(value).ok_or_else(|| {
            ApiError::bad_request("Query parameter 'order' is not valid percent-encoded UTF-8")
        })?;
        order = match value.as_str() {
            "" => None,
            "asc" => Some(SortOrder::Ascending),
            _ => Some(SortOrder::Descending),
        };
    }
    Ok(order)
}

/// A path segment, percent-decoded. `None` if the escapes are broken, the result is not UTF-8,
/// or it holds a `/` (an encoded slash would let a stream id name another object's folder).
fn path_segment(raw: &str) -> Option<String> {
    let decoded = percent_decode(raw, false)?;
    (!decoded.contains('/')).then_some(decoded)
}

/// A query-string name or value: percent-decoded, `+` meaning a space.
fn query_component(raw: &str) -> Option<String> {
    percent_decode(raw, true)
}

/// Decodes `%XX` escapes (and `+` when `plus_is_space`); `None` for a broken escape or a result
/// that is not UTF-8.
fn percent_decode(raw: &str, plus_is_space: bool) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                // from_str_radix alone would also take a sign ("%+5").
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                i += 1;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

// ---------------------------------------------------------------------------------------------
// Parsing bodies
// ---------------------------------------------------------------------------------------------

/// Parses one request, as the server does: route and method, then (for the handlers that take
/// one) the JSON body. `now` decides whether `paused_until` and `preserve_until` are in the
/// future. Pure, so every route and message is tested without a socket.
pub fn parse_request(
    method: &str,
    target: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<ApiRequest, ApiError> {
    let route = route(method, target).map_err(|route_error| route_error.error)?;
    parse_route(route, body, now)
}

fn parse_route(route: Route, body: &[u8], now: DateTime<Utc>) -> Result<ApiRequest, ApiError> {
    let object = if route.takes_body() {
        json_object(body)?
    } else {
        Map::new()
    };
    match route {
        Route::GetStatus => Ok(ApiRequest::GetStatus),
        Route::GetRestoreStatus => Ok(ApiRequest::GetRestoreStatus),
        Route::GetBackups { order } => Ok(ApiRequest::ListBackups { order }),
        Route::PutStatus => parse_mode_request(&object).map(ApiRequest::SetMode),
        Route::PostBackup => parse_backup_create(&object),
        Route::PutReplicationState => {
            parse_replication_state(&object).map(ApiRequest::SetReplicationState)
        }
        Route::PatchBackupSettings => parse_backup_settings(&object, now),
        Route::PatchBackup { stream_id } => parse_mark_broken(stream_id, &object),
        Route::PutPreserve { stream_id } => parse_preserve(stream_id, &object, now),
        Route::PatchBinlogs => parse_binlog_index(&object),
    }
}

/// The body as a JSON object, with MyHoard's two messages.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "Failed to deserialize request body as JSON: {error}"
        ))
    })?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::bad_request("Request body must be JSON object")),
    }
}

/// `PUT /status`, checked in MyHoard's order so the same bad body gets the same message.
fn parse_mode_request(body: &Map<String, Value>) -> Result<ModeRequest, ApiError> {
    let mode = body.get("mode");
    match mode.and_then(Value::as_str) {
        Some("active") => Ok(ModeRequest {
            mode: RequestedMode::Active,
            // MyHoard's quirk, kept: anything but a JSON boolean means "no force".
            force: matches!(body.get("force"), Some(Value::Bool(true))),
            restore: None,
        }),
        Some("observe") => Ok(ModeRequest {
            mode: RequestedMode::Observe,
            force: false,
            restore: None,
        }),
        Some("restore") => Ok(ModeRequest {
            mode: RequestedMode::Restore,
            force: false,
            restore: Some(parse_restore_request(body)?),
        }),
        _ => Err(ApiError::bad_request(format!(
            "Unexpected value {} for field 'mode'",
            python_repr(mode.unwrap_or(&Value::Null))
        ))),
    }
}

fn parse_restore_request(body: &Map<String, Value>) -> Result<RestoreRequest, ApiError> {
    let rebuild_tables = optional_bool(body, "rebuild_tables")?.unwrap_or(false);
    let site = required_string(body, "site")?;
    let stream_id = required_string(body, "stream_id")?;
    let target_time = match body.get("target_time") {
        None | Some(Value::Null) => None,
        Some(value) => Some(target_epoch(value).ok_or_else(|| {
            ApiError::bad_request(
                "Field 'target_time' must be an integer (epoch seconds) or an ISO 8601 date and \
                 time when present",
            )
        })?),
    };
    let approximate_ok = optional_bool(body, "target_time_approximate_ok")?.unwrap_or(false);
    let target_gtid = match body.get("target_gtid") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.parse::<Gtid>().map_err(|error| {
            ApiError::bad_request(format!(
                "Field 'target_gtid' must be a GTID (uuid:N, uuid:tag:N or domain-server-N) when \
                 present: {error}"
            ))
        })?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Field 'target_gtid' must be a string when present",
            ));
        }
    };
    let target = match (target_time, target_gtid) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Fields 'target_time' and 'target_gtid' cannot both be given",
            ));
        }
        (Some(epoch), None) => RestoreTarget::Time {
            epoch,
            approximate_ok,
        },
        (None, Some(gtid)) => RestoreTarget::Gtid(gtid),
        (None, None) => RestoreTarget::Latest,
    };
    Ok(RestoreRequest {
        site,
        stream_id,
        target,
        rebuild_tables,
    })
}

/// `target_time` as whole epoch seconds: an integer (what MyHoard parses), a float (rounded
/// down), or an ISO 8601 string (what MyHoard documents; without an offset it is UTC).
fn target_epoch(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                return Some(integer);
            }
            if number.is_u64() {
                return None; // above i64::MAX
            }
            let seconds = number.as_f64()?.floor();
            // i64::MAX as f64 rounds up to 2^63, which is out of range, hence `<`.
            (seconds.is_finite() && seconds >= i64::MIN as f64 && seconds < i64::MAX as f64)
                .then_some(seconds as i64)
        }
        Value::String(text) => Some(parse_iso_datetime(text)?.utc.timestamp()),
        _ => None,
    }
}

/// `POST /backup`.
fn parse_backup_create(body: &Map<String, Value>) -> Result<ApiRequest, ApiError> {
    match body.get("backup_type").and_then(Value::as_str) {
        Some("basebackup") => {
            if body.get("wait_for_upload").is_some_and(is_truthy) {
                return Err(ApiError::bad_request(
                    "wait_for_upload currently not supported for basebackup",
                ));
            }
            let incremental = optional_bool(body, "incremental")?.unwrap_or(false);
            Ok(ApiRequest::RequestBasebackup { incremental })
        }
        Some("binlog") => Ok(ApiRequest::RotateBinlog {
            wait_for_upload: optional_seconds(body, "wait_for_upload")?,
        }),
        _ => Err(ApiError::bad_request(
            "`backup_type` must be set to `basebackup` or `binlog` in request body",
        )),
    }
}

/// `PUT /replication_state`, checked with MyHoard's messages, then read into GTID sets.
fn parse_replication_state(body: &Map<String, Value>) -> Result<ReplicationState, ApiError> {
    // The outer "must be name => object mapping" check of MyHoard cannot fail here: a body that
    // is not an object was already refused with "Request body must be JSON object".
    let mut state = ReplicationState::new();
    for (server, gtids) in body {
        let Value::Object(gtids) = gtids else {
            return Err(ApiError::bad_request(
                "Replication state objects must be uuid => object mappings",
            ));
        };
        let mut executed = GtidSet::new();
        for (origin, ranges) in gtids {
            // MyHoard accepts any UUID here; MariaDB origins are "<domain>-<server>".
            if origin.parse::<Origin>().is_err() {
                return Err(ApiError::bad_request(
                    "Replication state objects must be uuid => object mappings",
                ));
            }
            let Value::Array(ranges) = ranges else {
                return Err(ApiError::bad_request(
                    "Individual values must be uuid => [[start1, end1], ...] mappings",
                ));
            };
            for range in ranges {
                let Some(pair @ [_, _]) = range.as_array().map(Vec::as_slice) else {
                    return Err(ApiError::bad_request(
                        "List entries must be 2 element ([start, end]) lists",
                    ));
                };
                if !pair.iter().all(|end| end.is_i64() || end.is_u64()) {
                    return Err(ApiError::bad_request(
                        "Range start/end values must be integers",
                    ));
                }
            }
            // The shape is right; the GTID module checks the numbers (no 0, start <= end, within
            // the flavour's limits) and normalises.
            let single = Value::Object(Map::from_iter([(
                origin.clone(),
                Value::Array(ranges.clone()),
            )]));
            let parsed: GtidSet = serde_json::from_value(single).map_err(|error| {
                ApiError::bad_request(format!(
                    "Invalid GTID ranges for {origin:?} of server {server:?}: {error}"
                ))
            })?;
            executed.union_with(&parsed);
        }
        state.insert(server.clone(), executed);
    }
    Ok(state)
}

/// `PATCH /backup/settings`.
fn parse_backup_settings(
    body: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<ApiRequest, ApiError> {
    let Some(paused_until) = body.get("paused_until") else {
        return Err(ApiError::bad_request(
            "No valid resource parameters were specified, valid params are: paused_until",
        ));
    };
    let until = match paused_until {
        Value::Null => None,
        value => {
            // A naive time is UTC here, unlike preserve_until (MyHoard treats the two so).
            let until = value
                .as_str()
                .and_then(parse_iso_datetime)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "`paused_until` must be a valid isoformat datetime string or null.",
                    )
                })?
                .utc;
            if until < now {
                return Err(ApiError::bad_request(
                    "`paused_until` must be a date in the future.",
                ));
            }
            Some(until)
        }
    };
    Ok(ApiRequest::PauseBackups { until })
}

/// `PATCH /backup/{stream_id}`.
fn parse_mark_broken(stream_id: String, body: &Map<String, Value>) -> Result<ApiRequest, ApiError> {
    let Some(Value::Bool(broken)) = body.get("broken") else {
        return Err(ApiError::bad_request(
            "Field 'broken' must be given and a boolean",
        ));
    };
    Ok(ApiRequest::MarkBroken {
        stream_id,
        broken: *broken,
        expire_after: optional_seconds(body, "expire_after_seconds")?,
    })
}

/// `PUT /backup/{stream_id}/preserve`, with MyHoard's messages.
fn parse_preserve(
    stream_id: String,
    body: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<ApiRequest, ApiError> {
    let until = match body.get("preserve_until") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let parsed = value.as_str().and_then(parse_iso_datetime).ok_or_else(|| {
                ApiError::bad_request("`preserve_until` must be a valid isoformat datetime string.")
            })?;
            // MyHoard wants an explicit UTC offset: a naive time is ambiguous on the way into
            // preserved.json, which other MyHoard nodes read.
            if parsed
                .offset
                .is_none_or(|offset| offset.local_minus_utc() != 0)
            {
                return Err(ApiError::bad_request(
                    "`preserve_until` must be in UTC timezone.",
                ));
            }
            if parsed.utc < now {
                return Err(ApiError::bad_request(
                    "`preserve_until` must be a date in the future.",
                ));
            }
            Some(parsed.utc)
        }
    };
    Ok(ApiRequest::Preserve {
        stream_id,
        until,
        wait: optional_seconds(body, "wait_for_applied_preservation")?,
    })
}

/// `PATCH /binlogs`.
fn parse_binlog_index(body: &Map<String, Value>) -> Result<ApiRequest, ApiError> {
    match body.get("binlog_index").and_then(Value::as_u64) {
        Some(index) if index >= 1 => Ok(ApiRequest::SetBinlogIndex { index }),
        _ => Err(ApiError::bad_request(
            "Field 'binlog_index' must be an integer >= 1",
        )),
    }
}

fn required_string(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match body.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(ApiError::bad_request(format!(
            "Field '{field}' must be given and a string"
        ))),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field '{field}' must be a boolean when present"
        ))),
    }
}

/// A number of seconds to wait. Absent, null and 0 mean no wait, as MyHoard's `if wait:` reads
/// them.
fn optional_seconds(body: &Map<String, Value>, field: &str) -> Result<Option<Duration>, ApiError> {
    let invalid = || {
        ApiError::bad_request(format!(
            "Field '{field}' must be a non-negative number of seconds when present"
        ))
    };
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => {
            let seconds = number.as_f64().ok_or_else(invalid)?;
            let wait = Duration::try_from_secs_f64(seconds).map_err(|_| invalid())?;
            Ok((!wait.is_zero()).then_some(wait))
        }
        Some(_) => Err(invalid()),
    }
}

/// Python's truthiness of a JSON value, for the checks MyHoard writes as `if value:`.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(value) => *value,
        Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
    }
}

/// A JSON value as Python's `repr` prints the decoded value, so "Unexpected value 'idle' for
/// field 'mode'" reads exactly as MyHoard's.
fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => python_string_repr(text),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{}: {}", python_string_repr(key), python_repr(value)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn python_string_repr(text: &str) -> String {
    // Python quotes with ' unless the text holds a ' and no ".
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut repr = String::with_capacity(text.len() + 2);
    repr.push(quote);
    for c in text.chars() {
        match c {
            '\\' => repr.push_str("\\\\"),
            '\n' => repr.push_str("\\n"),
            '\r' => repr.push_str("\\r"),
            '\t' => repr.push_str("\\t"),
            c if c == quote => {
                repr.push('\\');
                repr.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(repr, "\\x{:02x}", c as u32);
            }
            c => repr.push(c),
        }
    }
    repr.push(quote);
    repr
}

// ---------------------------------------------------------------------------------------------
// ISO 8601
// ---------------------------------------------------------------------------------------------

/// A parsed ISO 8601 date and time: the instant (a naive time taken as UTC) and the offset it
/// was written with, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IsoDateTime {
    utc: DateTime<Utc>,
    offset: Option<FixedOffset>,
}

/// Parses the forms Python's `datetime.fromisoformat` reads and clients send:
/// `2024-05-01T12:30:00`, with any one character between date and time (`T`, a space), optional
/// seconds and fraction, an optional offset (`Z`, `+02:00`, `+0200`), or a bare date (midnight).
/// Fractions beyond microseconds are dropped, as Python keeps microseconds only.
fn parse_iso_datetime(text: &str) -> Option<IsoDateTime> {
    let text = text.trim();
    let (text, zulu) = match text.strip_suffix(['Z', 'z']) {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let zulu_offset = zulu.then(|| FixedOffset::east_opt(0)).flatten();
    let Some(time) = text.get(10..).filter(|time| !time.is_empty()) else {
        let midnight = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?;
        return Some(IsoDateTime {
            utc: Utc.from_utc_datetime(&midnight),
            offset: zulu_offset,
        });
    };
    let separator = time.chars().next()?;
    let text = format!("{}T{}", &text[..10], &time[separator.len_utf8()..]);
    const FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"];
    if !zulu {
        for format in FORMATS {
            if let Ok(parsed) = DateTime::parse_from_str(&text, &format!("{format}%z")) {
                return Some(IsoDateTime {
                    utc: parsed.with_timezone(&Utc).trunc_subsecs(6),
                    offset: Some(*parsed.offset()),
                });
            }
        }
    }
    let naive = FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(&text, format).ok())?;
    Some(IsoDateTime {
        utc: Utc.from_utc_datetime(&naive).trunc_subsecs(6),
        offset: zulu_offset,
    })
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// The limits one server works with; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    send_timeout: Duration,
    reply_grace: Duration,
    max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            send_timeout: SEND_TIMEOUT,
            reply_grace: REPLY_GRACE,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// The listening API: [`WORKER_THREADS`] `http-N` threads answering requests by way of the
/// controller's command channel. Dropping it (or [`HttpServer::shutdown`]) stops and joins them.
pub struct HttpServer {
    /// Never sent on: dropping it disconnects every worker's receiver, which is their signal to
    /// stop, also in the middle of waiting for the controller.
    stop: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
    server: Arc<tiny_http::Server>,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Listens on `address:port` (port 0 picks a free one) and starts the workers, which send
    /// each valid request to `commands`.
    pub fn start(address: &str, port: u16, commands: Sender<Command>) -> io::Result<HttpServer> {
        HttpServer::start_with(address, port, commands, Limits::default())
    }

    fn start_with(
        address: &str,
        port: u16,
        commands: Sender<Command>,
        limits: Limits,
    ) -> io::Result<HttpServer> {
        // Binding here rather than in tiny_http keeps the io::Error (address in use, permission
        // denied) and gives the address port 0 resolved to.
        let listener = TcpListener::bind((address, port))?;
        let local_addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None).map_err(io::Error::other)?;
        let server = Arc::new(server);
        let (stop, stopped) = bounded::<()>(0);
        let mut http_server = HttpServer {
            stop: Some(stop),
            workers: Vec::with_capacity(WORKER_THREADS),
            server,
            local_addr,
        };
        for n in 0..WORKER_THREADS {
            let worker = Worker {
                server: Arc::clone(&http_server.server),
                commands: commands.clone(),
                stopped: stopped.clone(),
                limits,
            };
            // On failure, dropping `http_server` stops and joins the workers already started.
            let handle = thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || worker.run())?;
            http_server.workers.push(handle);
        }
        log::info!("HTTP API listening on {local_addr}");
        Ok(http_server)
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the workers, answering requests still waiting for the controller with 503, joins
    /// them and closes the listening socket.
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        // Dropping the sender first wakes workers blocked on the controller; idle ones see it
        // within POLL_INTERVAL.
        drop(self.stop.take());
        for worker in self.workers.drain(..) {
            let name = worker.thread().name().unwrap_or("http").to_owned();
            if worker.join().is_err() {
                log::error!("{name} panicked");
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_workers();
        // The tiny_http server, dropped with the last Arc after this, stops its accept thread
        // and closes the listening socket.
    }
}

/// What one `http-N` thread works with.
struct Worker {
    server: Arc<tiny_http::Server>,
    commands: Sender<Command>,
    /// Disconnected when the server shuts down.
    stopped: Receiver<()>,
    limits: Limits,
}

impl Worker {
    fn run(self) {
        while !self.is_stopped() {
            match self.server.recv_timeout(POLL_INTERVAL) {
                Ok(Some(request)) => self.handle(request),
                Ok(None) => {}
                // tiny_http reports a failed accept() once and then accepts no more connections;
                // requests on connections already open still arrive, so keep serving those.
                Err(error) => log::error!("HTTP API stopped accepting connections: {error}"),
            }
        }
    }

    fn is_stopped(&self) -> bool {
        matches!(self.stopped.try_recv(), Err(TryRecvError::Disconnected))
    }

    fn handle(&self, mut request: tiny_http::Request) {
        let started = Instant::now();
        let method = request.method().as_str().to_owned();
        let target = request.url().to_owned();
        let (reply, allow) = match self.answer(&method, &target, &mut request) {
            Ok(value) => (Ok(value), None),
            Err(RouteError { error, allow }) => (Err(error), allow),
        };
        let (status, body) = match &reply {
            Ok(value) => (200, value.to_string()),
            Err(error) => (error.status, error.body().to_string()),
        };
        let mut response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "application/json"));
        if let Some(allow) = allow {
            response.add_header(header("Allow", allow));
        }
        if let Err(error) = request.respond(response) {
            log::debug!("{method} {target}: could not send the response: {error}");
        }
        let elapsed = started.elapsed();
        match reply {
            Err(error) if status >= 500 => {
                log::warn!("{method} {target} {status} in {elapsed:.1?}: {error}");
            }
            _ => log::debug!("{method} {target} {status} in {elapsed:.1?}"),
        }
    }

    fn answer(
        &self,
        method: &str,
        target: &str,
        request: &mut tiny_http::Request,
    ) -> Result<Value, RouteError> {
        let route = route(method, target)?;
        let body = if route.takes_body() {
            read_body(request, self.limits.max_body_bytes)?
        } else {
            Vec::new()
        };
        let api_request = parse_route(route, &body, Utc::now())?;
        Ok(self.dispatch(api_request)?)
    }

    /// Hands the request to the controller and waits for its answer.
    fn dispatch(&self, request: ApiRequest) -> Reply {
        let reply_timeout = request
            .requested_wait()
            .unwrap_or_default()
            .saturating_add(self.limits.reply_grace);
        let name = request.name();
        let (reply, replies) = bounded(1);
        let command = Command { request, reply };
        select! {
            send(self.commands, command) -> sent => {
                if sent.is_err() {
                    return Err(ApiError::unavailable("The controller is not running"));
                }
            }
            recv(self.stopped) -> _ => {
                return Err(ApiError::unavailable("The server is shutting down"));
            }
            default(self.limits.send_timeout) => {
                return Err(ApiError::unavailable(format!(
                    "The controller did not accept the request ({name}) within {:?}",
                    self.limits.send_timeout
                )));
            }
        }
        select! {
            recv(replies) -> reply => reply.unwrap_or_else(|_| {
                Err(ApiError::unavailable(format!(
                    "The controller stopped without answering the request ({name})"
                )))
            }),
            recv(self.stopped) -> _ => Err(ApiError::unavailable("The server is shutting down")),
            default(reply_timeout) => Err(ApiError::unavailable(format!(
                "The controller did not answer the request ({name}) within {reply_timeout:?}"
            ))),
        }
    }
}

/// How much of a too-large body without a declared length (chunked) is read and thrown away
/// after the first `limit` bytes, so that the client, still sending, gets to read its 413 and
/// the connection stays usable. Past that the connection is left to fail.
const DRAIN_FACTOR: u64 = 16;

/// Reads a request body of at most `limit` bytes; a longer one is a 413.
fn read_body(request: &mut tiny_http::Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, format!("Request body is larger than {limit} bytes"));
    // A declared length is refused before reading anything; tiny_http then discards the unread
    // body itself, to keep the connection in step.
    if request.body_length().is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit_bytes = u64::try_from(limit).unwrap_or(u64::MAX);
    let mut body = Vec::new();
    let reader = request.as_reader();
    reader
        .take(limit_bytes.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|error| ApiError::bad_request(format!("Failed to read request body: {error}")))?;
    if body.len() > limit {
        // Best effort: a read error here only means the client went away.
        let _ = io::copy(
            &mut reader.take(limit_bytes.saturating_mul(DRAIN_FACTOR)),
            &mut io::sink(),
        );
        return Err(too_large());
    }
    Ok(body)
}

/// A response header from constant parts.
fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name, value).expect("constant header names and values are ASCII")
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::net::TcpStream;

    use super::*;

    /// The `now` of every parsing case: dates after it are in the future.
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parse(method: &str, target: &str, body: &str) -> Result<ApiRequest, ApiError> {
        parse_request(method, target, body.as_bytes(), now())
    }

    /// Runs a table of cases whose outcome is a request.
    fn assert_parses(cases: &[(&str, &str, &str, ApiRequest)]) {
        for (method, target, body, expected) in cases {
            assert_eq!(
                parse(method, target, body).as_ref(),
                Ok(expected),
                "{method} {target} {body}"
            );
        }
    }

    /// Runs a table of cases whose outcome is an error: its status and its exact message.
    fn assert_refuses(cases: &[(&str, &str, &str, u16, &str)]) {
        for (method, target, body, status, message) in cases {
            let error =
                parse(method, target, body).expect_err(&format!("{method} {target} {body}"));
            assert_eq!(
                (error.status, error.message.as_str()),
                (*status, *message),
                "{method} {target} {body}"
            );
        }
    }

    const UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    fn mode(mode: RequestedMode, force: bool) -> ApiRequest {
        ApiRequest::SetMode(ModeRequest {
            mode,
            force,
            restore: None,
        })
    }

    fn restore(target: RestoreTarget, rebuild_tables: bool) -> ApiRequest {
        ApiRequest::SetMode(ModeRequest {
            mode: RequestedMode::Restore,
            force: false,
            restore: Some(RestoreRequest {
                site: "default".to_owned(),
                stream_id: "s1".to_owned(),
                target,
                rebuild_tables,
            }),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Routes
    // -----------------------------------------------------------------------------------------

    #[test]
    fn routes_and_methods() {
        use ApiRequest::*;
        use SortOrder::*;
        assert_parses(&[
            ("GET", "/status", "", GetStatus),
            ("HEAD", "/status", "", GetStatus),
            ("HEAD", "/backup", "", ListBackups { order: None }),
            // GET handlers never read their body, as in MyHoard.
            ("GET", "/status", "{not json", GetStatus),
            ("GET", "/status/restore", "", GetRestoreStatus),
            ("GET", "/backup", "", ListBackups { order: None }),
            (
                "GET",
                "/backup?order=asc",
                "",
                ListBackups {
                    order: Some(Ascending),
                },
            ),
            (
                "GET",
                "/backup?order=desc",
                "",
                ListBackups {
                    order: Some(Descending),
                },
            ),
            // MyHoard sorts descending for anything but "asc".
            (
                "GET",
                "/backup?order=DESC",
                "",
                ListBackups {
                    order: Some(Descending),
                },
            ),
            (
                "GET",
                "/backup?order=ASC",
                "",
                ListBackups {
                    order: Some(Descending),
                },
            ),
            ("GET", "/backup?order=", "", ListBackups { order: None }),
            (
                "GET",
                "/backup?x=1&order=%61sc",
                "",
                ListBackups {
                    order: Some(Ascending),
                },
            ),
            ("GET", "/backup?orderx=asc", "", ListBackups { order: None }),
            (
                "PATCH",
                "/binlogs",
                r#"{"binlog_index": 3}"#,
                SetBinlogIndex { index: 3 },
            ),
            (
                "PATCH",
                "/backup/2024-01-01T00%3A00%3A00Z_abc",
                r#"{"broken": true}"#,
                MarkBroken {
                    stream_id: "2024-01-01T00:00:00Z_abc".to_owned(),
                    broken: true,
                    expire_after: None,
                },
            ),
            (
                "PUT",
                "/backup/s%201/preserve",
                "{}",
                Preserve {
                    stream_id: "s 1".to_owned(),
                    until: None,
                    wait: None,
                },
            ),
            // "settings" is the settings route, never a stream.
            (
                "PATCH",
                "/backup/settings",
                r#"{"paused_until": null}"#,
                PauseBackups { until: None },
            ),
        ]);
        assert_refuses(&[
            ("GET", "/", "", 404, "Not found: /"),
            ("GET", "/nope", "", 404, "Not found: /nope"),
            ("GET", "/status/", "", 404, "Not found: /status/"),
            ("GET", "/backup/", "", 404, "Not found: /backup/"),
            (
                "PUT",
                "/backup//preserve",
                "{}",
                404,
                "Not found: /backup//preserve",
            ),
            (
                "PUT",
                "/backup/s1/preserve/x",
                "{}",
                404,
                "Not found: /backup/s1/preserve/x",
            ),
            ("GET", "status", "", 404, "Not found: status"),
            // An encoded slash or broken escape cannot name a stream.
            (
                "PATCH",
                "/backup/a%2Fb",
                "{}",
                404,
                "Not found: /backup/a%2Fb",
            ),
            (
                "PATCH",
                "/backup/a%zz",
                "{}",
                404,
                "Not found: /backup/a%zz",
            ),
            (
                "PATCH",
                "/backup/a%+5",
                "{}",
                404,
                "Not found: /backup/a%+5",
            ),
            (
                "PATCH",
                "/backup/a%ff",
                "{}",
                404,
                "Not found: /backup/a%ff",
            ),
            (
                "GET",
                "/backup?order=%ff",
                "",
                400,
                "Query parameter 'order' is not valid percent-encoded UTF-8",
            ),
            (
                "DELETE",
                "/status",
                "",
                405,
                "Method DELETE is not allowed for /status, allowed: GET, HEAD, PUT",
            ),
            (
                "HEAD",
                "/binlogs",
                "",
                405,
                "Method HEAD is not allowed for /binlogs, allowed: PATCH",
            ),
            (
                "POST",
                "/status/restore",
                "",
                405,
                "Method POST is not allowed for /status/restore, allowed: GET, HEAD",
            ),
            (
                "PUT",
                "/backup",
                "{}",
                405,
                "Method PUT is not allowed for /backup, allowed: GET, HEAD, POST",
            ),
            (
                "GET",
                "/backup/settings",
                "",
                405,
                "Method GET is not allowed for /backup/settings, allowed: PATCH",
            ),
            (
                "DELETE",
                "/backup/s1",
                "",
                405,
                "Method DELETE is not allowed for /backup/s1, allowed: PATCH",
            ),
            (
                "POST",
                "/backup/s1/preserve",
                "{}",
                405,
                "Method POST is not allowed for /backup/s1/preserve, allowed: PUT",
            ),
            (
                "GET",
                "/replication_state",
                "",
                405,
                "Method GET is not allowed for /replication_state, allowed: PUT",
            ),
            (
                "PUT",
                "/binlogs",
                "{}",
                405,
                "Method PUT is not allowed for /binlogs, allowed: PATCH",
            ),
        ]);
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let cases = [
            ("DELETE", "/status", ALLOW_STATUS),
            ("PUT", "/status/restore", ALLOW_GET),
            ("DELETE", "/backup", ALLOW_BACKUPS),
            ("PUT", "/backup/settings", ALLOW_PATCH),
            ("GET", "/backup/s1/preserve", ALLOW_PUT),
            ("POST", "/replication_state", ALLOW_PUT),
            ("GET", "/binlogs", ALLOW_PATCH),
        ];
        for (method, target, allow) in cases {
            let error = route(method, target).unwrap_err();
            assert_eq!(error.error.status, 405, "{method} {target}");
            assert_eq!(error.allow, Some(allow), "{method} {target}");
        }
        assert_eq!(route("GET", "/nope").unwrap_err().allow, None);
    }

    #[test]
    fn every_body_must_be_a_json_object() {
        let routes = [
            ("PUT", "/status"),
            ("POST", "/backup"),
            ("PUT", "/replication_state"),
            ("PATCH", "/backup/settings"),
            ("PATCH", "/backup/s1"),
            ("PUT", "/backup/s1/preserve"),
            ("PATCH", "/binlogs"),
        ];
        for (method, target) in routes {
            for body in ["", "{mode", "{\"a\": 1,}", "nul"] {
                let error = parse(method, target, body).unwrap_err();
                assert_eq!(error.status, 400, "{method} {target} {body:?}");
                assert!(
                    error
                        .message
                        .starts_with("Failed to deserialize request body as JSON: "),
                    "{method} {target} {body:?}: {}",
                    error.message
                );
            }
            let error = parse_request(method, target, b"\"\xff\"", now()).unwrap_err();
            assert!(
                error.message.starts_with("Failed to deserialize"),
                "{error:?}"
            );
            for body in ["[1, 2]", "\"x\"", "5", "null", "true"] {
                assert_eq!(
                    parse(method, target, body),
                    Err(ApiError::bad_request("Request body must be JSON object")),
                    "{method} {target} {body}"
                );
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // PUT /status
    // -----------------------------------------------------------------------------------------

    #[test]
    fn mode_requests() {
        use RequestedMode::*;
        use RestoreTarget::*;
        let restore_body = |extra: &str| {
            format!(r#"{{"mode": "restore", "site": "default", "stream_id": "s1"{extra}}}"#)
        };
        let gtid = |text: &str| Gtid(text.parse().unwrap());
        let time = |epoch, approximate_ok| Time {
            epoch,
            approximate_ok,
        };
        let cases: Vec<(String, ApiRequest)> = vec![
            (r#"{"mode": "active"}"#.into(), mode(Active, false)),
            (
                r#"{"mode": "active", "force": true}"#.into(),
                mode(Active, true),
            ),
            (
                r#"{"mode": "active", "force": false}"#.into(),
                mode(Active, false),
            ),
            // MyHoard's quirk: a force that is not a JSON boolean is no force.
            (
                r#"{"mode": "active", "force": "true"}"#.into(),
                mode(Active, false),
            ),
            (
                r#"{"mode": "active", "force": 1}"#.into(),
                mode(Active, false),
            ),
            // force is read for active only.
            (
                r#"{"mode": "observe", "force": true}"#.into(),
                mode(Observe, false),
            ),
            (restore_body(""), restore(Latest, false)),
            (
                restore_body(r#", "target_time": null"#),
                restore(Latest, false),
            ),
            (
                restore_body(r#", "rebuild_tables": true"#),
                restore(Latest, true),
            ),
            (
                restore_body(r#", "rebuild_tables": null"#),
                restore(Latest, false),
            ),
            (
                restore_body(r#", "target_time": 1700000000"#),
                restore(time(1_700_000_000, false), false),
            ),
            (
                restore_body(r#", "target_time": 1700000000, "target_time_approximate_ok": true"#),
                restore(time(1_700_000_000, true), false),
            ),
            (
                restore_body(r#", "target_time": 1700000000, "target_time_approximate_ok": null"#),
                restore(time(1_700_000_000, false), false),
            ),
            // Fractions are rounded down: commit timestamps are whole seconds.
            (
                restore_body(r#", "target_time": 1700000000.999"#),
                restore(time(1_700_000_000, false), false),
            ),
            (
                restore_body(r#", "target_time": -5.5"#),
                restore(time(-6, false), false),
            ),
            (
                restore_body(r#", "target_time": 0"#),
                restore(time(0, false), false),
            ),
            // ISO 8601, as MyHoard's README documents it.
            (
                restore_body(r#", "target_time": "2023-11-14T22:13:20Z""#),
                restore(time(1_700_000_000, false), false),
            ),
            (
                restore_body(r#", "target_time": "2023-11-14T22:13:20+00:00""#),
                restore(time(1_700_000_000, false), false),
            ),
            (
                restore_body(r#", "target_time": "2023-11-15T00:13:20.75+02:00""#),
                restore(time(1_700_000_000, false), false),
            ),
            // A naive time is UTC.
            (
                restore_body(r#", "target_time": "2023-11-14 22:13:20""#),
                restore(time(1_700_000_000, false), false),
            ),
            (
                restore_body(&format!(r#", "target_gtid": "{UUID}:23""#)),
                restore(gtid(&format!("{UUID}:23")), false),
            ),
            (
                restore_body(&format!(r#", "target_gtid": "{UUID}:mytag:5""#)),
                restore(gtid(&format!("{UUID}:mytag:5")), false),
            ),
            (
                restore_body(r#", "target_gtid": "0-1-100", "target_time": null"#),
                restore(gtid("0-1-100"), false),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse("PUT", "/status", &body), Ok(expected), "{body}");
        }
    }

    #[test]
    fn mode_request_errors() {
        let restore_body = |extra: &str| {
            format!(r#"{{"mode": "restore", "site": "default", "stream_id": "s1"{extra}}}"#)
        };
        let target_time = "Field 'target_time' must be an integer (epoch seconds) or an ISO 8601 \
                           date and time when present";
        let cases: Vec<(String, String)> = vec![
            ("{}".into(), "Unexpected value None for field 'mode'".into()),
            (
                r#"{"mode": null}"#.into(),
                "Unexpected value None for field 'mode'".into(),
            ),
            (
                r#"{"mode": "idle"}"#.into(),
                "Unexpected value 'idle' for field 'mode'".into(),
            ),
            (
                r#"{"mode": "promote"}"#.into(),
                "Unexpected value 'promote' for field 'mode'".into(),
            ),
            (
                r#"{"mode": "Active"}"#.into(),
                "Unexpected value 'Active' for field 'mode'".into(),
            ),
            (
                r#"{"mode": 5}"#.into(),
                "Unexpected value 5 for field 'mode'".into(),
            ),
            (
                r#"{"mode": true}"#.into(),
                "Unexpected value True for field 'mode'".into(),
            ),
            (
                r#"{"mode": ["active", 1]}"#.into(),
                "Unexpected value ['active', 1] for field 'mode'".into(),
            ),
            (
                r#"{"mode": {"a": null}}"#.into(),
                "Unexpected value {'a': None} for field 'mode'".into(),
            ),
            (
                r#"{"mode": "it's"}"#.into(),
                r#"Unexpected value "it's" for field 'mode'"#.into(),
            ),
            // MyHoard checks rebuild_tables first, then site, then stream_id.
            (
                r#"{"mode": "restore", "rebuild_tables": "yes"}"#.into(),
                "Field 'rebuild_tables' must be a boolean when present".into(),
            ),
            (
                r#"{"mode": "restore"}"#.into(),
                "Field 'site' must be given and a string".into(),
            ),
            (
                r#"{"mode": "restore", "site": 1, "stream_id": "s1"}"#.into(),
                "Field 'site' must be given and a string".into(),
            ),
            (
                r#"{"mode": "restore", "site": "default"}"#.into(),
                "Field 'stream_id' must be given and a string".into(),
            ),
            (
                r#"{"mode": "restore", "site": "default", "stream_id": null}"#.into(),
                "Field 'stream_id' must be given and a string".into(),
            ),
            (
                restore_body(r#", "target_time": "yesterday""#),
                target_time.into(),
            ),
            (restore_body(r#", "target_time": true"#), target_time.into()),
            (restore_body(r#", "target_time": [1]"#), target_time.into()),
            (
                restore_body(r#", "target_time": 1e300"#),
                target_time.into(),
            ),
            (
                restore_body(r#", "target_time": 18446744073709551615"#),
                target_time.into(),
            ),
            (
                restore_body(r#", "target_time": 1, "target_time_approximate_ok": "yes""#),
                "Field 'target_time_approximate_ok' must be a boolean when present".into(),
            ),
            (
                restore_body(r#", "target_gtid": 5"#),
                "Field 'target_gtid' must be a string when present".into(),
            ),
            (
                restore_body(&format!(r#", "target_gtid": "{UUID}:5", "target_time": 1"#)),
                "Fields 'target_time' and 'target_gtid' cannot both be given".into(),
            ),
        ];
        for (body, message) in cases {
            assert_eq!(
                parse("PUT", "/status", &body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
        for gtid in ["nope", "0-1", &format!("{UUID}:0"), "0-1-x", ""] {
            let body = restore_body(&format!(r#", "target_gtid": "{gtid}""#));
            let error = parse("PUT", "/status", &body).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(
                error.message.starts_with(
                    "Field 'target_gtid' must be a GTID (uuid:N, uuid:tag:N or domain-server-N) \
                     when present: "
                ),
                "{gtid}: {}",
                error.message
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // POST /backup
    // -----------------------------------------------------------------------------------------

    #[test]
    fn backup_requests() {
        use ApiRequest::*;
        let rotate = |wait| RotateBinlog {
            wait_for_upload: wait,
        };
        let cases = [
            (
                r#"{"backup_type": "basebackup"}"#,
                RequestBasebackup { incremental: false },
            ),
            (
                r#"{"backup_type": "basebackup", "incremental": true}"#,
                RequestBasebackup { incremental: true },
            ),
            (
                r#"{"backup_type": "basebackup", "incremental": null}"#,
                RequestBasebackup { incremental: false },
            ),
            // A falsy wait is no wait, as MyHoard's `if wait_for_upload:` reads it.
            (
                r#"{"backup_type": "basebackup", "wait_for_upload": 0}"#,
                RequestBasebackup { incremental: false },
            ),
            (r#"{"backup_type": "binlog"}"#, rotate(None)),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": null}"#,
                rotate(None),
            ),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": 0}"#,
                rotate(None),
            ),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": 30}"#,
                rotate(Some(Duration::from_secs(30))),
            ),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": 0.5}"#,
                rotate(Some(Duration::from_millis(500))),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse("POST", "/backup", body), Ok(expected), "{body}");
        }
        let wrong_type = "`backup_type` must be set to `basebackup` or `binlog` in request body";
        let wait = "Field 'wait_for_upload' must be a non-negative number of seconds when present";
        let errors = [
            ("{}", wrong_type),
            (r#"{"backup_type": "full"}"#, wrong_type),
            (r#"{"backup_type": null}"#, wrong_type),
            (r#"{"backup_type": 1}"#, wrong_type),
            (
                r#"{"backup_type": "basebackup", "wait_for_upload": 5}"#,
                "wait_for_upload currently not supported for basebackup",
            ),
            (
                r#"{"backup_type": "basebackup", "wait_for_upload": "x"}"#,
                "wait_for_upload currently not supported for basebackup",
            ),
            (
                r#"{"backup_type": "basebackup", "incremental": "yes"}"#,
                "Field 'incremental' must be a boolean when present",
            ),
            (r#"{"backup_type": "binlog", "wait_for_upload": -1}"#, wait),
            (r#"{"backup_type": "binlog", "wait_for_upload": "5"}"#, wait),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": true}"#,
                wait,
            ),
            (
                r#"{"backup_type": "binlog", "wait_for_upload": 1e300}"#,
                wait,
            ),
        ];
        for (body, message) in errors {
            assert_eq!(
                parse("POST", "/backup", body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // PUT /replication_state
    // -----------------------------------------------------------------------------------------

    #[test]
    fn replication_states() {
        let cases: Vec<(String, Vec<(&str, String)>)> = vec![
            ("{}".into(), vec![]),
            // design.md's MariaDB example.
            (
                r#"{"server1": {"0-1": [[1, 100]], "2-1": [[1, 29]]}}"#.into(),
                vec![("server1", "0-1:1-100,2-1:1-29".into())],
            ),
            // Normalised: overlapping and adjacent ranges merge, case folds; a server with no
            // GTIDs stays, with an empty set.
            (
                format!(
                    r#"{{"a": {{"{}": [[7, 9], [1, 5], [6, 6]]}}, "b": {{}}}}"#,
                    UUID.to_uppercase()
                ),
                vec![("a", format!("{UUID}:1-9")), ("b", String::new())],
            ),
            (
                format!(r#"{{"a": {{"{UUID}": [], "{UUID}:tag": [[2, 3]]}}}}"#),
                vec![("a", format!("{UUID}:tag:2-3"))],
            ),
        ];
        for (body, expected) in cases {
            let expected: ReplicationState = expected
                .into_iter()
                .map(|(name, set)| (name.to_owned(), set.parse().unwrap()))
                .collect();
            assert_eq!(
                parse("PUT", "/replication_state", &body),
                Ok(ApiRequest::SetReplicationState(expected)),
                "{body}"
            );
        }
        let objects = "Replication state objects must be uuid => object mappings";
        let values = "Individual values must be uuid => [[start1, end1], ...] mappings";
        let entries = "List entries must be 2 element ([start, end]) lists";
        let integers = "Range start/end values must be integers";
        let errors = [
            (r#"{"a": []}"#.to_owned(), objects),
            (r#"{"a": null}"#.to_owned(), objects),
            (r#"{"a": {"nope": [[1, 2]]}}"#.to_owned(), objects),
            (r#"{"a": {"0-1-2": [[1, 2]]}}"#.to_owned(), objects),
            (format!(r#"{{"a": {{"{UUID}": {{}}}}}}"#), values),
            (format!(r#"{{"a": {{"{UUID}": null}}}}"#), values),
            (format!(r#"{{"a": {{"{UUID}": [1, 2]}}}}"#), entries),
            (format!(r#"{{"a": {{"{UUID}": [[1]]}}}}"#), entries),
            (format!(r#"{{"a": {{"{UUID}": [[1, 2, 3]]}}}}"#), entries),
            (format!(r#"{{"a": {{"{UUID}": [["1", 2]]}}}}"#), integers),
            (format!(r#"{{"a": {{"{UUID}": [[1.5, 2]]}}}}"#), integers),
            (format!(r#"{{"a": {{"{UUID}": [[1, null]]}}}}"#), integers),
        ];
        for (body, message) in errors {
            assert_eq!(
                parse("PUT", "/replication_state", &body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
        // Right shape, impossible numbers: refused by the GTID module, naming the place.
        let numbers = [
            (
                format!(r#"{{"a": {{"{UUID}": [[0, 5]]}}}}"#),
                "transaction number 0",
            ),
            (
                format!(r#"{{"a": {{"{UUID}": [[5, 3]]}}}}"#),
                "reversed interval",
            ),
            (
                format!(r#"{{"a": {{"{UUID}": [[-1, 3]]}}}}"#),
                "invalid value",
            ),
            (
                format!(r#"{{"a": {{"{UUID}": [[1, 9223372036854775807]]}}}}"#),
                "number too large",
            ),
        ];
        for (body, detail) in numbers {
            let error = parse("PUT", "/replication_state", &body).unwrap_err();
            assert_eq!(error.status, 400, "{body}");
            assert!(
                error.message.starts_with(&format!(
                    "Invalid GTID ranges for \"{UUID}\" of server \"a\": "
                )) && error.message.contains(detail),
                "{body}: {}",
                error.message
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Backup settings, broken, preserve, binlogs
    // -----------------------------------------------------------------------------------------

    #[test]
    fn pause_requests() {
        let pause = |until: Option<&str>| ApiRequest::PauseBackups {
            until: until.map(utc),
        };
        let cases = [
            (r#"{"paused_until": null}"#, pause(None)),
            (
                r#"{"paused_until": "2024-06-01T00:00:00Z"}"#,
                pause(Some("2024-06-01T00:00:00Z")),
            ),
            // Naive means UTC; other offsets are converted.
            (
                r#"{"paused_until": "2024-06-01T00:00:00"}"#,
                pause(Some("2024-06-01T00:00:00Z")),
            ),
            (
                r#"{"paused_until": "2024-06-01T02:00:00+02:00"}"#,
                pause(Some("2024-06-01T00:00:00Z")),
            ),
            (
                r#"{"paused_until": "2024-06-01T00:00:00Z", "other": 1}"#,
                pause(Some("2024-06-01T00:00:00Z")),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse("PATCH", "/backup/settings", body),
                Ok(expected),
                "{body}"
            );
        }
        let invalid = "`paused_until` must be a valid isoformat datetime string or null.";
        let errors = [
            (
                "{}",
                "No valid resource parameters were specified, valid params are: paused_until",
            ),
            (
                r#"{"paused": null}"#,
                "No valid resource parameters were specified, valid params are: paused_until",
            ),
            (
                r#"{"paused_until": "2023-12-31T23:59:59Z"}"#,
                "`paused_until` must be a date in the future.",
            ),
            (r#"{"paused_until": "tomorrow"}"#, invalid),
            (r#"{"paused_until": 1800000000}"#, invalid),
            (r#"{"paused_until": true}"#, invalid),
        ];
        for (body, message) in errors {
            assert_eq!(
                parse("PATCH", "/backup/settings", body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
    }

    #[test]
    fn broken_marks() {
        let mark = |broken, expire_after| ApiRequest::MarkBroken {
            stream_id: "s1".to_owned(),
            broken,
            expire_after,
        };
        let cases = [
            (r#"{"broken": true}"#, mark(true, None)),
            (r#"{"broken": false}"#, mark(false, None)),
            (
                r#"{"broken": true, "expire_after_seconds": 60}"#,
                mark(true, Some(Duration::from_secs(60))),
            ),
            (
                r#"{"broken": true, "expire_after_seconds": 2.5}"#,
                mark(true, Some(Duration::from_millis(2500))),
            ),
            (
                r#"{"broken": true, "expire_after_seconds": null}"#,
                mark(true, None),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse("PATCH", "/backup/s1", body), Ok(expected), "{body}");
        }
        let broken = "Field 'broken' must be given and a boolean";
        let errors = [
            ("{}", broken),
            (r#"{"broken": null}"#, broken),
            (r#"{"broken": "true"}"#, broken),
            (r#"{"broken": 1}"#, broken),
            (
                r#"{"broken": true, "expire_after_seconds": "60"}"#,
                "Field 'expire_after_seconds' must be a non-negative number of seconds when \
                 present",
            ),
        ];
        for (body, message) in errors {
            assert_eq!(
                parse("PATCH", "/backup/s1", body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
    }

    #[test]
    fn preserve_requests() {
        let preserve = |until: Option<&str>, wait| ApiRequest::Preserve {
            stream_id: "s1".to_owned(),
            until: until.map(utc),
            wait,
        };
        let cases = [
            ("{}", preserve(None, None)),
            (r#"{"preserve_until": null}"#, preserve(None, None)),
            (
                r#"{"preserve_until": "2024-06-01T00:00:00Z"}"#,
                preserve(Some("2024-06-01T00:00:00Z"), None),
            ),
            (
                r#"{"preserve_until": "2024-06-01T00:00:00.123456789+00:00"}"#,
                preserve(Some("2024-06-01T00:00:00.123456Z"), None),
            ),
            (
                r#"{"preserve_until": null, "wait_for_applied_preservation": 10}"#,
                preserve(None, Some(Duration::from_secs(10))),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse("PUT", "/backup/s1/preserve", body),
                Ok(expected),
                "{body}"
            );
        }
        let invalid = "`preserve_until` must be a valid isoformat datetime string.";
        let not_utc = "`preserve_until` must be in UTC timezone.";
        let errors = [
            (r#"{"preserve_until": "2024-06-01T00:00:00"}"#, not_utc),
            (
                r#"{"preserve_until": "2024-06-01T02:00:00+02:00"}"#,
                not_utc,
            ),
            (
                r#"{"preserve_until": "2023-06-01T00:00:00Z"}"#,
                "`preserve_until` must be a date in the future.",
            ),
            (r#"{"preserve_until": "soon"}"#, invalid),
            (r#"{"preserve_until": 1800000000}"#, invalid),
            (
                r#"{"wait_for_applied_preservation": "10"}"#,
                "Field 'wait_for_applied_preservation' must be a non-negative number of seconds \
                 when present",
            ),
        ];
        for (body, message) in errors {
            assert_eq!(
                parse("PUT", "/backup/s1/preserve", body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
    }

    #[test]
    fn binlog_index_requests() {
        assert_parses(&[
            (
                "PATCH",
                "/binlogs",
                r#"{"binlog_index": 1}"#,
                ApiRequest::SetBinlogIndex { index: 1 },
            ),
            (
                "PATCH",
                "/binlogs",
                r#"{"binlog_index": 123456}"#,
                ApiRequest::SetBinlogIndex { index: 123_456 },
            ),
        ]);
        let message = "Field 'binlog_index' must be an integer >= 1";
        for body in [
            "{}",
            r#"{"binlog_index": 0}"#,
            r#"{"binlog_index": -1}"#,
            r#"{"binlog_index": 1.5}"#,
            r#"{"binlog_index": "5"}"#,
            r#"{"binlog_index": null}"#,
        ] {
            assert_eq!(
                parse("PATCH", "/binlogs", body),
                Err(ApiError::bad_request(message)),
                "{body}"
            );
        }
    }

    #[test]
    fn requested_waits_and_names() {
        let seconds = Duration::from_secs;
        let cases = [
            (ApiRequest::GetStatus, None, "status_show"),
            (
                ApiRequest::RotateBinlog {
                    wait_for_upload: Some(seconds(30)),
                },
                Some(seconds(30)),
                "backup_create",
            ),
            (
                ApiRequest::MarkBroken {
                    stream_id: "s".into(),
                    broken: true,
                    expire_after: Some(seconds(5)),
                },
                Some(seconds(5)),
                "backup_update",
            ),
            (
                ApiRequest::Preserve {
                    stream_id: "s".into(),
                    until: None,
                    wait: Some(seconds(7)),
                },
                Some(seconds(7)),
                "backup_preserve",
            ),
            (
                ApiRequest::SetBinlogIndex { index: 2 },
                None,
                "binlogs_update",
            ),
        ];
        for (request, wait, name) in cases {
            assert_eq!(request.requested_wait(), wait, "{request:?}");
            assert_eq!(request.name(), name, "{request:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // ISO 8601, Python repr
    // -----------------------------------------------------------------------------------------

    #[test]
    fn iso_datetimes() {
        let zero = FixedOffset::east_opt(0);
        let plus_two = FixedOffset::east_opt(2 * 3600);
        let cases = [
            ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00Z", zero),
            ("2024-05-01t12:30:00z", "2024-05-01T12:30:00Z", zero),
            ("2024-05-01T12:30:00+00:00", "2024-05-01T12:30:00Z", zero),
            (
                "2024-05-01T14:30:00+02:00",
                "2024-05-01T12:30:00Z",
                plus_two,
            ),
            ("2024-05-01T14:30:00+0200", "2024-05-01T12:30:00Z", plus_two),
            (
                "2024-05-01 14:30:00.5+02:00",
                "2024-05-01T12:30:00.5Z",
                plus_two,
            ),
            ("2024-05-01T14:30+02:00", "2024-05-01T12:30:00Z", plus_two),
            ("2024-05-01T12:30:00", "2024-05-01T12:30:00Z", None),
            ("2024-05-01 12:30", "2024-05-01T12:30:00Z", None),
            (
                "2024-05-01T12:30:00.123456789",
                "2024-05-01T12:30:00.123456Z",
                None,
            ),
            ("  2024-05-01T12:30:00Z ", "2024-05-01T12:30:00Z", zero),
            ("2024-05-01", "2024-05-01T00:00:00Z", None),
            ("2024-05-01_12:30:00", "2024-05-01T12:30:00Z", None),
            ("2024-05-01\u{e9}12:30:00Z", "2024-05-01T12:30:00Z", zero),
        ];
        for (text, instant, offset) in cases {
            assert_eq!(
                parse_iso_datetime(text),
                Some(IsoDateTime {
                    utc: utc(instant),
                    offset
                }),
                "{text}"
            );
        }
        for text in [
            "",
            "Z",
            "2024-13-01T00:00:00Z",
            "2024-02-30",
            "2024-05-01T25:00:00",
            "2024-05-01T12:30:00+02:00Z",
            "2024-05-01T",
            "2024-05-01TT12:30",
            "2024-05-0",
            "1714566600",
            "yesterday",
        ] {
            assert_eq!(parse_iso_datetime(text), None, "{text}");
        }
    }

    #[test]
    fn python_reprs() {
        let cases = [
            (json!(null), "None"),
            (json!(true), "True"),
            (json!(false), "False"),
            (json!(5), "5"),
            (json!(-1.5), "-1.5"),
            (json!("idle"), "'idle'"),
            (json!("it's"), r#""it's""#),
            (json!("say \"it's\""), r#"'say "it\'s"'"#),
            (json!("a\\b\nc\u{1}"), r"'a\\b\nc\x01'"),
            (json!([]), "[]"),
            (json!(["a", [1, null]]), "['a', [1, None]]"),
            (json!({"k": "v", "n": {}}), "{'k': 'v', 'n': {}}"),
        ];
        for (value, repr) in cases {
            assert_eq!(python_repr(&value), repr, "{value}");
        }
    }

    #[test]
    fn percent_decoding() {
        let cases = [
            ("abc", false, Some("abc")),
            ("a%3Ab%3a", false, Some("a:b:")),
            ("a+b", false, Some("a+b")),
            ("a+b", true, Some("a b")),
            ("%C3%A9", false, Some("é")),
            ("%", false, None),
            ("%4", false, None),
            ("%g1", false, None),
            ("%-1", false, None),
            ("%C3", false, None),
        ];
        for (raw, plus_is_space, decoded) in cases {
            assert_eq!(
                percent_decode(raw, plus_is_space).as_deref(),
                decoded,
                "{raw}"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // The server, over real HTTP, with a stand-in controller
    // -----------------------------------------------------------------------------------------

    /// What a client sees of a response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        content_type: Option<String>,
        allow: Option<String>,
        body: Value,
    }

    impl Answer {
        fn message(&self) -> &str {
            self.body["message"].as_str().unwrap_or_default()
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    }

    fn call(
        agent: &ureq::Agent,
        server: SocketAddr,
        method: &str,
        target: &str,
        body: Option<ureq::SendBody<'static>>,
    ) -> Answer {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{server}{target}"));
        let response = match body {
            Some(body) => agent.run(request.body(body).unwrap()),
            None => agent.run(request.body(()).unwrap()),
        };
        let mut response = response.unwrap_or_else(|error| panic!("{method} {target}: {error}"));
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|value: &ureq::http::HeaderValue| value.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type");
        let allow = header("allow");
        let text = response.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{method} {target}: body {text:?}: {error}"));
        Answer {
            status: response.status().as_u16(),
            content_type,
            allow,
            body,
        }
    }

    fn json_body(body: &str) -> Option<ureq::SendBody<'static>> {
        Some(ureq::SendBody::from_owned_reader(Cursor::new(
            body.as_bytes().to_vec(),
        )))
    }

    /// The stand-in controller's answer to each request. Requests that ask for a wait are
    /// answered from their own thread after that wait, as the controller's task threads would.
    fn fake_answer(request: &ApiRequest) -> Reply {
        match request {
            ApiRequest::GetStatus => Ok(json!({"mode": "idle"})),
            ApiRequest::SetMode(mode) => Ok(json!({"mode": mode.mode.as_str()})),
            ApiRequest::ListBackups { order } => {
                Ok(json!({"backups": null, "order": format!("{order:?}")}))
            }
            ApiRequest::SetReplicationState(state) => {
                serde_json::to_value(state).map_err(|error| ApiError::internal(error.to_string()))
            }
            ApiRequest::SetBinlogIndex { .. } => {
                Err(ApiError::bad_request("Binlog index cannot be decreased."))
            }
            ApiRequest::Preserve { stream_id, .. } => {
                Err(ApiError::internal(format!("Backup {stream_id} not found")))
            }
            _ => Ok(json!({"success": true})),
        }
    }

    /// Answers commands until every sender is gone; returns the requests it saw.
    fn fake_controller(commands: Receiver<Command>) -> JoinHandle<Vec<ApiRequest>> {
        thread::spawn(move || {
            let mut seen = Vec::new();
            let mut waiting = Vec::new();
            for Command { request, reply } in commands {
                let answer = fake_answer(&request);
                match request.requested_wait() {
                    Some(wait) => waiting.push(thread::spawn(move || {
                        thread::sleep(wait);
                        let _ = reply.send(answer);
                    })),
                    None => {
                        let _ = reply.send(answer);
                    }
                }
                seen.push(request);
            }
            for handle in waiting {
                handle.join().unwrap();
            }
            seen
        })
    }

    fn short_limits() -> Limits {
        Limits {
            send_timeout: Duration::from_millis(300),
            reply_grace: Duration::from_millis(300),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }

    #[test]
    fn serves_routes_and_errors_over_http_and_survives_bad_input() {
        let (commands, received) = bounded(8);
        let controller = fake_controller(received);
        let server = HttpServer::start("127.0.0.1", 0, commands).unwrap();
        let address = server.local_addr();
        assert!(address.ip().is_loopback() && address.port() != 0);
        let client = agent();
        let request = |method, target, body| call(&client, address, method, target, body);

        let answer = request("GET", "/status", None);
        assert_eq!(
            (answer.status, &answer.body),
            (200, &json!({"mode": "idle"}))
        );
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));

        let answer = request("PUT", "/status", json_body(r#"{"mode": "observe"}"#));
        assert_eq!(
            (answer.status, &answer.body),
            (200, &json!({"mode": "observe"}))
        );

        let answer = request("GET", "/backup?order=asc", None);
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            json!({"backups": null, "order": "Some(Ascending)"})
        );

        let answer = request(
            "POST",
            "/backup",
            json_body(r#"{"backup_type": "basebackup", "incremental": true}"#),
        );
        assert_eq!(
            (answer.status, &answer.body),
            (200, &json!({"success": true}))
        );

        // The controller sees normalised sets, and its answer goes back as it is.
        let answer = request(
            "PUT",
            "/replication_state",
            json_body(r#"{"s1": {"0-1": [[4, 9], [1, 3]]}}"#),
        );
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, json!({"s1": {"0-1": [[1, 9]]}}));

        // Controller errors keep their status and message.
        let answer = request("PATCH", "/binlogs", json_body(r#"{"binlog_index": 5}"#));
        assert_eq!(answer.status, 400);
        assert_eq!(
            answer.body,
            json!({"message": "Binlog index cannot be decreased."})
        );
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        let answer = request("PUT", "/backup/s1/preserve", json_body("{}"));
        assert_eq!(answer.status, 500);
        assert_eq!(answer.body, json!({"message": "Backup s1 not found"}));

        // Bad input never reaches the controller, and each is a JSON error.
        let answer = request("PUT", "/status", json_body("{mode"));
        assert_eq!(answer.status, 400);
        assert!(
            answer
                .message()
                .starts_with("Failed to deserialize request body as JSON: "),
            "{answer:?}"
        );
        let answer = request("PUT", "/status", json_body("[1, 2]"));
        assert_eq!(answer.status, 400);
        assert_eq!(answer.message(), "Request body must be JSON object");
        let answer = request(
            "PUT",
            "/status",
            json_body(r#"{"mode": "restore", "site": 5}"#),
        );
        assert_eq!(answer.status, 400);
        assert_eq!(answer.message(), "Field 'site' must be given and a string");
        let answer = request("PATCH", "/binlogs", json_body(r#"{"binlog_index": "x"}"#));
        assert_eq!(answer.status, 400);
        assert_eq!(
            answer.message(),
            "Field 'binlog_index' must be an integer >= 1"
        );
        let answer = request("GET", "/nope", None);
        assert_eq!(answer.status, 404);
        assert_eq!(answer.message(), "Not found: /nope");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        let answer = request("DELETE", "/status", None);
        assert_eq!(answer.status, 405);
        assert_eq!(answer.allow.as_deref(), Some("GET, HEAD, PUT"));
        assert_eq!(
            answer.message(),
            "Method DELETE is not allowed for /status, allowed: GET, HEAD, PUT"
        );
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));

        // Too large, with a declared length and chunked.
        let oversize = vec![b' '; 2 * MAX_BODY_BYTES];
        let answer = request(
            "PUT",
            "/replication_state",
            Some(ureq::SendBody::from_owned_reader(Cursor::new(
                oversize.clone(),
            ))),
        );
        assert_eq!(answer.status, 413);
        assert_eq!(
            answer.message(),
            format!("Request body is larger than {MAX_BODY_BYTES} bytes")
        );
        let declared = ureq::http::Request::builder()
            .method("PUT")
            .uri(format!("http://{address}/replication_state"))
            .body(oversize)
            .unwrap();
        let mut response = client.run(declared).unwrap();
        assert_eq!(response.status().as_u16(), 413);
        let body: Value = response.body_mut().read_json().unwrap();
        assert_eq!(
            body["message"],
            format!("Request body is larger than {MAX_BODY_BYTES} bytes")
        );
        // Just under the limit is read and parsed.
        let mut padded = br#"{"s1": {}}"#.to_vec();
        padded.resize(MAX_BODY_BYTES, b' ');
        let answer = request(
            "PUT",
            "/replication_state",
            Some(ureq::SendBody::from_owned_reader(Cursor::new(padded))),
        );
        assert_eq!((answer.status, &answer.body), (200, &json!({"s1": {}})));

        // Still serving, on the same connection pool and on a new one.
        let answer = request("GET", "/status", None);
        assert_eq!(
            (answer.status, &answer.body),
            (200, &json!({"mode": "idle"}))
        );
        let answer = call(&agent(), address, "GET", "/status/restore", None);
        assert_eq!(answer.status, 200);

        server.shutdown();
        let seen = controller.join().unwrap();
        let names: Vec<&str> = seen.iter().map(ApiRequest::name).collect();
        assert_eq!(
            names,
            [
                "status_show",
                "status_update",
                "backup_list",
                "backup_create",
                "replication_state_set",
                "binlogs_update",
                "backup_preserve",
                "replication_state_set",
                "status_show",
                "restore_status_show",
            ]
        );
    }

    #[test]
    fn a_slow_request_does_not_hold_up_others() {
        let (commands, received) = bounded(8);
        let controller = fake_controller(received);
        let server = HttpServer::start("127.0.0.1", 0, commands).unwrap();
        let address = server.local_addr();
        let slow = thread::spawn(move || {
            let started = Instant::now();
            let answer = call(
                &agent(),
                address,
                "POST",
                "/backup",
                json_body(r#"{"backup_type": "binlog", "wait_for_upload": 2}"#),
            );
            (answer, started.elapsed())
        });
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let answer = call(&agent(), address, "GET", "/status", None);
        let fast = started.elapsed();
        assert_eq!(answer.status, 200);
        assert!(fast < Duration::from_secs(1), "GET /status took {fast:?}");

        let (answer, slow_took) = slow.join().unwrap();
        assert_eq!(
            (answer.status, &answer.body),
            (200, &json!({"success": true}))
        );
        assert!(slow_took >= Duration::from_secs(2), "{slow_took:?}");
        server.shutdown();
        assert_eq!(controller.join().unwrap().len(), 2);
    }

    #[test]
    fn a_missing_or_busy_controller_is_503() {
        // Gone: the receiving end was dropped.
        let (commands, received) = bounded::<Command>(1);
        drop(received);
        let server = HttpServer::start_with("127.0.0.1", 0, commands, short_limits()).unwrap();
        let answer = call(&agent(), server.local_addr(), "GET", "/status", None);
        assert_eq!(answer.status, 503);
        assert_eq!(answer.message(), "The controller is not running");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        // Bad input is still answered without the controller.
        let answer = call(
            &agent(),
            server.local_addr(),
            "PUT",
            "/status",
            json_body("[]"),
        );
        assert_eq!(answer.status, 400);
        server.shutdown();

        // Busy: nobody takes the command off the channel.
        let (commands, _received) = bounded::<Command>(0);
        let server = HttpServer::start_with("127.0.0.1", 0, commands, short_limits()).unwrap();
        let started = Instant::now();
        let answer = call(&agent(), server.local_addr(), "GET", "/status", None);
        let took = started.elapsed();
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.message(),
            "The controller did not accept the request (status_show) within 300ms"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        server.shutdown();
    }

    #[test]
    fn an_unanswered_request_is_503() {
        let (commands, received) = bounded::<Command>(8);
        // Keeps the first reply sender without answering, drops the second.
        let controller = thread::spawn(move || {
            let kept = received.recv().unwrap();
            let dropped = received.recv().unwrap();
            drop(dropped);
            received.recv().ok();
            kept
        });
        let server = HttpServer::start_with("127.0.0.1", 0, commands, short_limits()).unwrap();
        let address = server.local_addr();

        let started = Instant::now();
        let answer = call(
            &agent(),
            address,
            "POST",
            "/backup",
            json_body(r#"{"backup_type": "binlog", "wait_for_upload": 0.5}"#),
        );
        let took = started.elapsed();
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.message(),
            "The controller did not answer the request (backup_create) within 800ms"
        );
        // The request's own wait plus the grace.
        assert!(took >= Duration::from_millis(800), "{took:?}");

        let answer = call(&agent(), address, "GET", "/status", None);
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.message(),
            "The controller stopped without answering the request (status_show)"
        );
        server.shutdown();
        let kept = controller.join().unwrap();
        assert_eq!(
            kept.request,
            ApiRequest::RotateBinlog {
                wait_for_upload: Some(Duration::from_millis(500))
            }
        );
    }

    #[test]
    fn shutdown_answers_waiting_requests_and_closes_the_socket() {
        let (commands, received) = bounded::<Command>(8);
        let (arrived, arrivals) = bounded::<()>(8);
        // Holds every reply sender: nothing is ever answered.
        let controller = thread::spawn(move || {
            let mut held = Vec::new();
            for command in received {
                held.push(command);
                let _ = arrived.send(());
            }
            held
        });
        let server = HttpServer::start("127.0.0.1", 0, commands).unwrap();
        let address = server.local_addr();
        let waiting: Vec<_> = (0..WORKER_THREADS)
            .map(|_| thread::spawn(move || call(&agent(), address, "GET", "/status", None)))
            .collect();
        // Every worker is now blocked on the controller (REPLY_GRACE is 30 s).
        for _ in 0..WORKER_THREADS {
            arrivals.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let started = Instant::now();
        server.shutdown();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
        for client in waiting {
            let answer = client.join().unwrap();
            assert_eq!(answer.status, 503);
            assert_eq!(answer.message(), "The server is shutting down");
        }
        // The workers' command senders are gone with them.
        assert_eq!(controller.join().unwrap().len(), WORKER_THREADS);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(address).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{address} still accepts connections"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

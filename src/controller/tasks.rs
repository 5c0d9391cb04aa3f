//! The blocking jobs the controller hands to task threads: database statements, storage
//! listings and marker writes, snapshots. Each runs on its own named thread and reports one
//! [`Event`] back; the controller never waits for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use crossbeam_channel::Sender;

use super::Context;
use super::state::StreamState;
use crate::backup_stream::layout::{self, BasebackupInfo, Promotion, SnapshotObjectInfo};
use crate::backup_stream::remote::{self, BackupEntry};
use crate::basebackup::{self, SnapshotJob, SnapshotProgress};
use crate::db::{Client, Flavor};
use crate::gtid::GtidSet;
use crate::pipeline::Encoding;

/// A task's report.
#[derive(Debug)]
pub enum Event {
    ServerProbed(Result<ServerInfo, String>),
    BackupsListed {
        result: Result<Vec<BackupEntry>, String>,
        info_cache: BTreeMap<String, BasebackupInfo>,
        /// The controller's listing generation when the listing started.
        generation: u64,
    },
    Rotated {
        result: Result<RotationOutcome, String>,
        /// Forced rotations are only logged; API ones are answered.
        reply: Option<Sender<crate::http::Reply>>,
        wait_for_upload: Option<Duration>,
    },
    SnapshotProgress {
        stream_id: String,
        progress: Box<SnapshotProgress>,
    },
    SnapshotDone {
        stream_id: String,
        result: Result<Box<BasebackupInfo>, String>,
    },
    MarkerWritten {
        stream_id: String,
        marker: Marker,
        result: Result<f64, String>,
    },
    StreamDeleted {
        stream_id: String,
        result: Result<usize, String>,
    },
    /// An API request changed marker objects: the backup list is out of date.
    StorageChanged,
    /// What the streams other servers upload to hold (observe and promote mode).
    StreamsObserved(Result<Vec<super::observe::ObservedStream>, String>),
    /// A binlog purge round's `PURGE BINARY LOGS TO` ran: the binlogs it removed, by
    /// `SHOW BINARY LOGS` before and after.
    BinlogsPurged {
        round: super::purging::PurgeRound,
        result: Result<Vec<crate::db::BinaryLog>, crate::db::Error>,
    },
    /// A promotion attempt's outcome.
    TakenOver(Result<super::promote::Takeover, String>),
    /// The streams a failback could not take back that are now closed, and why the others,
    /// if any, are not.
    SupersededClosed {
        closed: Vec<super::state::SupersededStream>,
        error: Option<String>,
    },
    /// Stored binlogs a promoted server lacked were applied: how many files.
    MissingApplied(Result<usize, String>),
    /// Whether the server may be promoted, for a pending `PUT /status`.
    PromotableChecked {
        result: Result<(), String>,
        request: crate::http::ModeRequest,
        reply: Sender<crate::http::Reply>,
    },
}

/// A marker an API request writes.
#[derive(Debug, Clone)]
pub enum ApiMarker {
    /// `broken.json` written (true) or deleted (false).
    Broken(bool),
    /// `preserved.json` with this `preserve_until` (ISO 8601, or none).
    Preserved(Option<String>),
}

/// What the controller learns from the server at start.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub flavor: Flavor,
    pub server_uuid: String,
    pub server_id: u32,
}

#[derive(Debug, Clone)]
pub struct RotationOutcome {
    /// The local index of the binlog the rotation closed.
    pub closed_index: Option<u64>,
    /// The server's executed GTIDs right after the rotation: the same set later means nothing
    /// was written since. (Not the binlog position: MariaDB writes a checkpoint event into the
    /// new binlog a moment after the rotation, which would look like a write.)
    pub executed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marker {
    Completed,
    Closed,
}

/// Runs `job` on a new named thread that reports through `events`.
pub fn spawn(name: &str, events: &Sender<Event>, job: impl FnOnce() -> Event + Send + 'static) {
    let events = events.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = events.send(job());
        });
    if let Err(err) = spawned {
        log::error!("cannot start task thread {name}: {err}");
    }
}

fn connect(ctx: &Context) -> anyhow::Result<Client> {
    Ok(Client::connect(&ctx.config.mysql.client_params)?)
}

pub fn probe_server(ctx: &Context) -> Event {
    let result = (|| -> anyhow::Result<ServerInfo> {
        let mut client = connect(ctx)?;
        let identity = client.server_identity()?;
        let server_uuid = client
            .query_text("SELECT @@GLOBAL.server_uuid")
            .ok()
            .flatten()
            .unwrap_or_else(|| identity.origin().to_string());
        Ok(ServerInfo {
            flavor: client.flavor(),
            server_uuid,
            server_id: identity.server_id(),
        })
    })();
    Event::ServerProbed(result.map_err(|e| format!("{e:#}")))
}

pub fn list_backups(
    ctx: &Context,
    mut info_cache: BTreeMap<String, BasebackupInfo>,
    generation: u64,
) -> Event {
    let mut all = Vec::new();
    let mut failure = None;
    for (name, site) in &ctx.sites {
        log::debug!("listing the backups of site {name}");
        match remote::list_site_backups(
            site.storage.as_ref(),
            name,
            site.recovery_only,
            &mut info_cache,
        ) {
            Ok(backups) => all.extend(backups),
            Err(err) => {
                failure = Some(format!("listing backups of site {name}: {err}"));
                break;
            }
        }
    }
    Event::BackupsListed {
        result: match failure {
            Some(message) => Err(message),
            None => Ok(all),
        },
        info_cache,
        generation,
    }
}

/// `FLUSH BINARY LOGS`, then which file it closed.
pub fn rotate(ctx: &Context) -> anyhow::Result<RotationOutcome> {
    let mut client = connect(ctx)?;
    client.flush_binary_logs()?;
    let logs = client.binary_logs()?;
    let closed_index = logs
        .iter()
        .rev()
        .nth(1)
        .and_then(|log| crate::db::flavor::log_file_index(&log.name));
    Ok(RotationOutcome {
        closed_index,
        executed: client.executed_gtids()?.to_gtid_set().to_string(),
    })
}

/// The server's executed GTIDs now, to tell whether anything was written since the last
/// rotation.
pub fn executed_gtids(ctx: &Context) -> anyhow::Result<String> {
    Ok(connect(ctx)?.executed_gtids()?.to_gtid_set().to_string())
}

/// Takes the snapshot of `stream`, then closes the binlog it ended in and writes the stream's
/// first promotion record and `basebackup.json`.
pub fn take_snapshot(
    ctx: &Arc<Context>,
    flavor: Flavor,
    stream: &StreamState,
    cancel: &AtomicBool,
    events: &Sender<Event>,
) -> Event {
    let stream_id = stream.stream_id.clone();
    let result = snapshot_and_describe(ctx, flavor, stream, cancel, events);
    Event::SnapshotDone {
        stream_id,
        result: result.map(Box::new).map_err(|e| format!("{e:#}")),
    }
}

fn snapshot_and_describe(
    ctx: &Arc<Context>,
    flavor: Flavor,
    stream: &StreamState,
    cancel: &AtomicBool,
    events: &Sender<Event>,
) -> anyhow::Result<BasebackupInfo> {
    let site = ctx
        .sites
        .get(&stream.site)
        .with_context(|| format!("unknown site {}", stream.site))?;
    let prefix = layout::stream_prefix(&stream.site, &stream.stream_id);
    let started = Utc::now();
    let metadata = layout::json_metadata(&SnapshotObjectInfo {
        backup_started_at: layout::epoch_seconds(started),
        uploaded_from: ctx.config.server_id,
    });
    let stream_id = stream.stream_id.clone();
    let progress_events = events.clone();
    let progress = move |progress: &SnapshotProgress| {
        let _ = progress_events.send(Event::SnapshotProgress {
            stream_id: stream_id.clone(),
            progress: Box::new(progress.clone()),
        });
    };
    let job = SnapshotJob {
        flavor,
        config: &ctx.config,
        storage: site.storage.as_ref(),
        key_prefix: &prefix,
        encoding: Encoding {
            compression: site.compression,
            key: Some(&site.public_key),
        },
        split_size: site.split_size,
        metadata: &metadata,
        cancel,
        progress: &progress,
    };
    // MyHoard's timing of the snapshot tool, whichever tool it is.
    let tool_started = std::time::Instant::now();
    let snapshot = basebackup::take_snapshot(&job);
    ctx.metrics.timing(
        "myhoard.basebackup.xtrabackup_backup",
        tool_started.elapsed(),
        &[("success", if snapshot.is_ok() { "1" } else { "0" })],
    );
    let snapshot = snapshot?;
    // Close the binlog the snapshot ended in, so that it is uploaded at once.
    let mut client = connect(ctx)?;
    client.flush_binary_logs()?;
    let executed = client.executed_gtids()?.to_gtid_set();
    let end_ts = layout::epoch_seconds(Utc::now()) + 1.0;
    let gtid_executed = snapshot_gtids(flavor, snapshot.gtid.as_deref(), &executed);
    remote::put_marker(
        site.storage.as_ref(),
        &layout::promotion_key(&prefix, ctx.config.server_id),
        &Promotion {
            promoted_at: end_ts,
            server_id: ctx.config.server_id,
            start_index: 1,
        },
    )?;
    let info = BasebackupInfo {
        backup_reason: stream.backup_reason.clone(),
        binlog_index: snapshot.binlog_index,
        binlog_name: snapshot.binlog_name.clone(),
        binlog_position: snapshot.binlog_position,
        checkpoints_file_content: snapshot.checkpoints_file_content.clone(),
        compressed_size: snapshot.compressed_size,
        encryption_key: None,
        end_size: snapshot.end_size,
        end_ts,
        gtid: snapshot.gtid.clone(),
        gtid_executed,
        incremental: false,
        required_streams: None,
        initiated_at: stream.created_at,
        lsn_info: snapshot
            .lsn_info
            .as_ref()
            .and_then(|lsn| serde_json::to_value(lsn).ok()),
        normalized_backup_time: stream.normalized_backup_time.clone(),
        number_of_files: snapshot.number_of_files,
        split_size: site.split_size.unwrap_or(0),
        number_of_splits: snapshot.number_of_splits,
        start_size: snapshot.start_size,
        start_ts: snapshot.start_ts,
        tool_version: snapshot.tool_version.clone(),
        uploaded_from: ctx.config.server_id,
        snapshot_tool: Some(snapshot.tool.to_string()),
        snapshot_format: Some(snapshot.format.to_string()),
        server_version: Some(client.version_string().to_owned()),
        compression_algorithm: Some(site.compression.algorithm.to_string()),
        extra: BTreeMap::new(),
    };
    remote::put_marker(
        site.storage.as_ref(),
        &format!("{prefix}/{}", layout::BASEBACKUP_INFO_NAME),
        &info,
    )?;
    Ok(info)
}

/// MyHoard's `gtid_executed` of a snapshot: the server's executed set, cut per origin at the
/// snapshot's GTID position (later transactions are not in the snapshot).
fn snapshot_gtids(flavor: Flavor, position: Option<&str>, executed: &GtidSet) -> GtidSet {
    let Some(position) = position.filter(|p| !p.trim().is_empty()) else {
        return executed.clone();
    };
    match crate::db::client::parse_server_gtids(flavor, position) {
        Ok(parsed) => parsed.to_gtid_set(),
        Err(err) => {
            log::warn!("cannot parse snapshot GTID position {position:?}: {err}");
            executed.clone()
        }
    }
}

pub fn write_marker(ctx: &Context, stream: &StreamState, marker: Marker) -> Event {
    let result = put_stream_marker(ctx, &stream.site, &stream.stream_id, marker);
    Event::MarkerWritten {
        stream_id: stream.stream_id.clone(),
        marker,
        result: result.map_err(|e| format!("{e:#}")),
    }
}

/// Writes `marker` (`completed.json` or `closed.json`) into a stream, with this server's id and
/// the time now, which it returns.
fn put_stream_marker(
    ctx: &Context,
    site: &str,
    stream_id: &str,
    marker: Marker,
) -> anyhow::Result<f64> {
    let now = layout::epoch_seconds(Utc::now());
    let handle = ctx
        .sites
        .get(site)
        .with_context(|| format!("unknown site {site}"))?;
    let storage = handle.storage.as_ref();
    let prefix = layout::stream_prefix(site, stream_id);
    let server_id = ctx.config.server_id;
    match marker {
        Marker::Completed => remote::put_marker(
            storage,
            &format!("{prefix}/{}", layout::COMPLETED_NAME),
            &layout::CompletedMarker {
                completed_at: now,
                server_id,
            },
        )?,
        Marker::Closed => remote::put_marker(
            storage,
            &format!("{prefix}/{}", layout::CLOSED_NAME),
            &layout::ClosedMarker {
                closed_at: now,
                server_id,
            },
        )?,
    }
    Ok(now)
}

/// Writes the `closed.json` of each of `streams`, this server's id in it, until one fails.
pub fn close_streams(ctx: &Context, streams: Vec<super::state::SupersededStream>) -> Event {
    let mut closed = Vec::with_capacity(streams.len());
    for stream in streams {
        let written = put_stream_marker(ctx, &stream.site, &stream.stream_id, Marker::Closed);
        if let Err(err) = written {
            return Event::SupersededClosed {
                closed,
                error: Some(format!("closing {}: {err:#}", stream.stream_id)),
            };
        }
        closed.push(stream);
    }
    Event::SupersededClosed {
        closed,
        error: None,
    }
}

/// Writes or removes the marker an API request asked for.
pub fn write_api_marker(
    ctx: &Context,
    site: &str,
    stream_id: &str,
    marker: &ApiMarker,
) -> Result<(), String> {
    let handle = ctx
        .sites
        .get(site)
        .ok_or_else(|| format!("unknown site {site}"))?;
    let prefix = layout::stream_prefix(site, stream_id);
    let storage = handle.storage.as_ref();
    let server_id = ctx.config.server_id;
    let result = match marker {
        ApiMarker::Broken(true) => remote::put_marker(
            storage,
            &format!("{prefix}/{}", layout::BROKEN_NAME),
            &layout::BrokenMarker {
                broken_at: layout::epoch_seconds(Utc::now()),
                server_id,
            },
        ),
        ApiMarker::Broken(false) => {
            remote::delete_if_present(storage, &format!("{prefix}/{}", layout::BROKEN_NAME))
        }
        ApiMarker::Preserved(until) => remote::put_marker(
            storage,
            &format!("{prefix}/{}", layout::PRESERVED_NAME),
            &layout::PreservedMarker {
                preserve_until: until.clone(),
                server_id,
            },
        ),
    };
    result.map_err(|err| {
        log::error!("writing a marker of {stream_id}: {err}");
        err.to_string()
    })
}

pub fn delete_stream(ctx: &Context, site: &str, stream_id: &str) -> Event {
    let result = match ctx.sites.get(site) {
        Some(handle) => remote::delete_stream(
            handle.storage.as_ref(),
            &layout::stream_prefix(site, stream_id),
        )
        .map_err(|e| e.to_string()),
        None => Err(format!("unknown site {site}")),
    };
    Event::StreamDeleted {
        stream_id: stream_id.to_owned(),
        result,
    }
}

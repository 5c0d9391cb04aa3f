//! The controller: owns all mutable state and the mode state machine, and never blocks on I/O.
//!
//! It waits on four inputs at once: API commands (from the `http` threads), binlog-watcher
//! reports, uploader outcomes and task events, plus a tick. Every blocking step (a statement,
//! a listing, a snapshot, an upload) goes to a task thread or the uploader pool, and the
//! outcome comes back as a message; state changes are persisted before they are acted on.
//!
//! Active mode, per tick (MyHoard's order where it has one): refresh the backup list when it is
//! stale; request a scheduled backup when due; start a new stream when one is requested and
//! fewer than two exist; hand closed binlogs of every streaming stream to the uploaders in
//! order; mark a caught-up stream completed and close the older one; rotate the binlog when
//! writes happened and none rotated it for `forced_binlog_rotation_interval`; delete backups
//! retention no longer keeps.

mod observe;
mod promote;
mod purging;
pub mod state;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, select};
use serde_json::json;

use crate::backup_stream::layout::{self, BasebackupInfo, BinlogInfo, CompletedMarker};
use crate::backup_stream::upload::{UploadJob, UploadOutcome};
use crate::binlog_scanner::{WatcherEvent, WatcherRequest};
use crate::config::Config;
use crate::http::{ApiError, ApiRequest, Command, ModeRequest, Reply, RequestedMode};
use crate::metrics::Metrics;
use crate::pipeline::compress::CompressionSettings;
use crate::pipeline::encrypt::{PrivateKey, PublicKey};
use crate::restore::coordinator::{RestoreHandle, RestoreOutcome};
use crate::schedule::{self, BackupReason, BackupRequest};
use crate::state as state_files;
use crate::storage::ObjectStorage;
use state::{
    ActiveDetails, ControllerState, Mode, Phase, RestoreOptions, StreamState, SupersededStream,
};
use tasks::{Event, Marker, ServerInfo};

/// At most this many streams exist at once (the old one keeps uploading until the new one has
/// caught up, so there is never a gap in recoverable time).
const MAX_STREAMS: usize = 2;
/// Re-list the backups this often outside active mode, and ten times less often in it.
const BACKUP_REFRESH_INTERVAL: f64 = 120.0;
const TICK: Duration = Duration::from_millis(200);
/// How often a running snapshot's progress is logged.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often active mode sends the backup streams' gauges (MyHoard: every loop, 1 s or more).
const STREAM_STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long after a failure to close the streams a failback could not take back to try again.
const CLOSE_SUPERSEDED_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// One backup site, ready to use.
pub struct SiteHandle {
    pub storage: Arc<dyn ObjectStorage>,
    pub compression: CompressionSettings,
    pub public_key: PublicKey,
    pub private_key: PrivateKey,
    pub split_size: Option<u64>,
    pub recovery_only: bool,
}

/// What every thread may read: the config, the opened sites and the metrics handle.
pub struct Context {
    pub config: Config,
    pub sites: BTreeMap<String, SiteHandle>,
    pub metrics: Metrics,
}

impl Context {
    pub fn state_path(&self, name: &str) -> PathBuf {
        self.config.state_directory.join(name)
    }

    fn stream_state_path(&self, stream_id: &str) -> PathBuf {
        self.state_path(&format!("{}.json", layout::safe_stream_id(stream_id)))
    }
}

/// A live stream: its persisted state and the uploads in flight.
struct Stream {
    state: StreamState,
    /// local index → (remote index, finished).
    in_flight: BTreeMap<u64, (u64, bool)>,
    retry_uploads_at: Option<Instant>,
    snapshot_running: Option<Arc<AtomicBool>>,
    snapshot_retry_at: Option<Instant>,
    marker_pending: bool,
    progress: Option<crate::basebackup::SnapshotProgress>,
    progress_logged_at: Option<Instant>,
}

impl Stream {
    fn new(state: StreamState) -> Stream {
        Stream {
            state,
            in_flight: BTreeMap::new(),
            retry_uploads_at: None,
            snapshot_running: None,
            snapshot_retry_at: None,
            marker_pending: false,
            progress: None,
            progress_logged_at: None,
        }
    }
}

/// An API call waiting for uploads: `POST /backup {"backup_type": "binlog", "wait_for_upload"}`.
struct UploadWaiter {
    local_index: u64,
    deadline: Instant,
    reply: Sender<Reply>,
}

/// The inputs and outputs the controller is wired to.
pub struct Channels {
    pub commands: Receiver<Command>,
    pub watcher_events: Receiver<WatcherEvent>,
    pub watcher_requests: Sender<WatcherRequest>,
    pub upload_jobs: Sender<UploadJob>,
    pub upload_outcomes: Receiver<UploadOutcome>,
    pub shutdown: Receiver<()>,
    /// The mode as last persisted, for the service manager's status line.
    pub mode_changes: Option<Sender<Mode>>,
}

pub struct Controller {
    ctx: Arc<Context>,
    state: ControllerState,
    state_path: PathBuf,
    streams: BTreeMap<String, Stream>,
    binlogs: Vec<BinlogInfo>,
    binlogs_loaded: bool,
    server: Option<ServerInfo>,
    probing: bool,
    probe_retry_at: Option<Instant>,
    refreshing: bool,
    rotating: bool,
    /// The server's executed GTIDs right after our last rotation.
    executed_after_rotation: Option<String>,
    deleting: BTreeSet<String>,
    /// Bumped whenever the controller changes storage in a way a listing shows (a deleted
    /// backup, a marker): a listing started before that is stale and is redone.
    listing_generation: u64,
    info_cache: BTreeMap<String, BasebackupInfo>,
    /// Finished backup listings; a new one makes the observed streams stale.
    backups_listed_count: u64,
    /// What the last look at other servers' streams found; `None` before the first.
    observed: Option<Vec<observe::ObservedStream>>,
    observing: bool,
    observed_at: f64,
    observed_listing_generation: u64,
    /// A promotion attempt is running on a task thread.
    promoting: bool,
    promote_retry_at: Option<Instant>,
    /// The last promotion attempt found stored transactions this server lacks.
    waiting_for_missing: bool,
    /// A `PUT /status` is being checked on a task thread.
    mode_change_checking: bool,
    /// The superseded streams are being closed on a task thread; after a failure, not again
    /// before this.
    closing_superseded: bool,
    close_superseded_retry_at: Option<Instant>,
    /// Why binlogs were last kept, as logged at info level (logged again only on a change).
    last_purge_hold_logged: Option<purging::HoldKey>,
    /// When a purge round last removed binlogs, and when nothing was last overdue for
    /// purging (epoch seconds; since this start, as they are not persisted).
    last_binlog_purge: f64,
    last_could_have_purged: f64,
    stream_stats_sent_at: Option<Instant>,
    /// Commit time (epoch seconds) of the newest transaction any stream has stored.
    newest_backed_up_commit: Option<u64>,
    waiters: Vec<UploadWaiter>,
    restore: Option<RestoreHandle>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    channels: Channels,
}

fn now_epoch() -> f64 {
    layout::epoch_seconds(Utc::now())
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

impl Controller {
    /// Loads the persisted state (a fresh one when there is none).
    pub fn new(ctx: Arc<Context>, channels: Channels) -> anyhow::Result<Controller> {
        let state_path = ctx.state_path(state::CONTROLLER_STATE_FILE);
        let state: ControllerState = state_files::read_json(&state_path)?.unwrap_or_default();
        let mut streams = BTreeMap::new();
        for stream_id in &state.owned_stream_ids {
            let path = ctx.stream_state_path(stream_id);
            match state_files::read_json::<StreamState>(&path)? {
                Some(stream_state) => {
                    streams.insert(stream_id.clone(), Stream::new(stream_state));
                }
                None => log::warn!(
                    "no state file for owned stream {stream_id}; it is dropped from this node"
                ),
            }
        }
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let mut controller = Controller {
            ctx,
            state,
            state_path,
            streams,
            binlogs: Vec::new(),
            binlogs_loaded: false,
            server: None,
            probing: false,
            probe_retry_at: None,
            refreshing: false,
            rotating: false,
            executed_after_rotation: None,
            deleting: BTreeSet::new(),
            listing_generation: 0,
            info_cache: BTreeMap::new(),
            backups_listed_count: 0,
            observed: None,
            observing: false,
            observed_at: 0.0,
            observed_listing_generation: 0,
            promoting: false,
            promote_retry_at: None,
            closing_superseded: false,
            close_superseded_retry_at: None,
            waiting_for_missing: false,
            mode_change_checking: false,
            last_purge_hold_logged: None,
            last_binlog_purge: now_epoch(),
            last_could_have_purged: now_epoch(),
            stream_stats_sent_at: None,
            newest_backed_up_commit: None,
            waiters: Vec::new(),
            restore: None,
            events_tx,
            events_rx,
            channels,
        };
        controller
            .state
            .owned_stream_ids
            .retain(|id| controller.streams.contains_key(id));
        controller.persist();
        Ok(controller)
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    /// Runs until the shutdown channel fires or closes; then stops in-flight work at a safe
    /// point (snapshots are cancelled; their stream restarts the snapshot on the next start).
    pub fn run(mut self) {
        log::info!("controller started in mode {}", self.state.mode);
        self.notify_mode();
        for _ in self.streams.keys() {
            // Our streams carry on after a restart (or a reload), as MyHoard's do.
            self.ctx
                .metrics
                .increase("myhoard.backup_started", &[("resumed", "true")]);
        }
        loop {
            select! {
                recv(self.channels.commands) -> command => match command {
                    Ok(command) => self.handle_command(command),
                    Err(_) => break,
                },
                recv(self.channels.watcher_events) -> event => {
                    if let Ok(event) = event { self.handle_watcher(event) }
                },
                recv(self.channels.upload_outcomes) -> outcome => {
                    if let Ok(outcome) = outcome { self.handle_upload(outcome) }
                },
                recv(self.events_rx) -> event => {
                    if let Ok(event) = event { self.handle_event(event) }
                },
                recv(self.channels.shutdown) -> _ => break,
                default(TICK) => {},
            }
            self.tick();
        }
        self.shut_down();
    }

    fn shut_down(&mut self) {
        log::info!("controller stopping");
        for stream in self.streams.values() {
            if let Some(cancel) = &stream.snapshot_running {
                cancel.store(true, Ordering::SeqCst);
            }
        }
        if let Some(restore) = self.restore.take() {
            restore.stop();
        }
        self.persist();
        for waiter in self.waiters.drain(..) {
            let _ = waiter
                .reply
                .send(Err(ApiError::unavailable("myhoard is shutting down")));
        }
    }

    fn persist(&mut self) {
        if let Err(err) = state_files::write_json(&self.state_path, &self.state) {
            // Nothing can go on safely without durable state; keep trying each tick.
            log::error!("saving controller state: {err}");
            self.count_error("save_state");
        }
    }

    /// `myhoard.generic_errors`: a failure of the controller's own work that has no metric of
    /// its own, tagged with where it happened.
    fn count_error(&self, location: &str) {
        self.ctx
            .metrics
            .increase("myhoard.generic_errors", &[("where", location)]);
    }

    fn persist_stream(&self, stream_id: &str) {
        if let Some(stream) = self.streams.get(stream_id)
            && let Err(err) =
                state_files::write_json(&self.ctx.stream_state_path(stream_id), &stream.state)
        {
            log::error!("saving state of stream {stream_id}: {err}");
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        if self.state.mode != mode {
            log::info!("mode {} → {mode}", self.state.mode);
            self.state.mode = mode;
            if !matches!(mode, Mode::Promote | Mode::Active) {
                // Whether to close them is for the next master to decide.
                self.state.superseded_streams.clear();
            }
            self.persist();
            self.notify_mode();
        }
    }

    fn notify_mode(&self) {
        self.ctx
            .metrics
            .set_global_tag("controller_mode", self.state.mode.as_str());
        if let Some(changes) = &self.channels.mode_changes {
            let _ = changes.send(self.state.mode);
        }
    }

    // --- inputs ----------------------------------------------------------------------------

    fn handle_watcher(&mut self, event: WatcherEvent) {
        match event {
            WatcherEvent::Initial(binlogs) => {
                self.binlogs = binlogs;
                self.binlogs.dedup_by_key(|b| b.local_index);
                self.binlogs_loaded = true;
                self.send_local_binlog_gauges();
            }
            WatcherEvent::Scanned(result) => {
                let metrics = &self.ctx.metrics;
                if !result.removed.is_empty() {
                    metrics.increase_by("myhoard.binlog.removed", result.removed.len(), &[]);
                    let removed: BTreeSet<u64> = result.removed.iter().copied().collect();
                    self.binlogs.retain(|b| !removed.contains(&b.local_index));
                }
                let known = self.binlogs.last().map(|b| b.local_index).unwrap_or(0);
                let mut added = result.added;
                added.retain(|b| b.local_index > known);
                if !added.is_empty() {
                    for info in &added {
                        log::info!(
                            "new binlog {} ({} bytes, {} GTID ranges)",
                            info.file_name,
                            info.file_size,
                            info.gtid_ranges.len()
                        );
                    }
                    metrics.increase_by("myhoard.binlog.count_new", added.len(), &[]);
                    let new_bytes: u64 = added.iter().map(|b| b.file_size).sum();
                    metrics.increase_by("myhoard.binlog.size_new", new_bytes, &[]);
                    self.state.last_binlog_rotation = now_epoch();
                    self.binlogs.extend(added);
                }
                self.send_local_binlog_gauges();
            }
            WatcherEvent::Failed(_) => {}
        }
    }

    /// `myhoard.binlog.count` and `.size`: the closed local binlogs the controller knows.
    fn send_local_binlog_gauges(&self) {
        let n_bytes: u64 = self.binlogs.iter().map(|b| b.file_size).sum();
        let metrics = &self.ctx.metrics;
        metrics.gauge("myhoard.binlog.count", self.binlogs.len(), &[]);
        metrics.gauge("myhoard.binlog.size", n_bytes, &[]);
    }

    fn handle_upload(&mut self, outcome: UploadOutcome) {
        let Some(stream) = self.streams.get_mut(&outcome.stream_id) else {
            return;
        };
        let local_index = outcome.info.local_index;
        let metrics = &self.ctx.metrics;
        match outcome.result {
            Ok(stats) => {
                metrics.increase("myhoard.binlog.upload", &[]);
                metrics.increase_by("myhoard.binlog.upload_bytes", stats.stored_bytes, &[]);
                log::info!(
                    "uploaded {} as {} ({} bytes stored, {:.2} s)",
                    outcome.info.file_name,
                    outcome.info.remote_key.as_deref().unwrap_or("?"),
                    stats.stored_bytes,
                    stats.seconds
                );
                if let Some(entry) = stream.in_flight.get_mut(&local_index) {
                    entry.1 = true;
                }
                stream.state.backup_errors = 0;
                // Commit the contiguous finished prefix, in order.
                let mut advanced = false;
                while let Some((&index, &(remote_index, true))) = stream.in_flight.first_key_value()
                {
                    stream.in_flight.remove(&index);
                    stream.state.last_processed_local_index = index;
                    stream.state.next_index = remote_index + 1;
                    stream.state.valid_local_binlog_found = true;
                    stream.state.last_binlog_upload_time = Some(now_epoch());
                    advanced = true;
                }
                if advanced {
                    stream.state.updated_at = now_epoch();
                    let id = outcome.stream_id.clone();
                    self.persist_stream(&id);
                }
            }
            Err(message) => {
                metrics.increase("myhoard.binlog.upload_errors", &[]);
                stream.state.backup_errors += 1;
                let backoff = Duration::from_secs_f64(
                    1.5f64
                        .powi(stream.state.backup_errors.min(10) as i32)
                        .min(30.0),
                );
                log::error!(
                    "uploading {} failed (attempt {}), retrying in {backoff:?}: {message}",
                    outcome.info.file_name,
                    stream.state.backup_errors
                );
                // Drop it and everything after it from the in-flight set: they are redone in
                // order, to the same keys.
                stream.in_flight.retain(|index, _| *index < local_index);
                stream.retry_uploads_at = Some(Instant::now() + backoff);
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::ServerProbed(result) => {
                self.probing = false;
                match result {
                    Ok(info) => {
                        log::info!(
                            "connected to {} (server_id {}, uuid {})",
                            info.flavor,
                            info.server_id,
                            info.server_uuid
                        );
                        if info.server_id != self.ctx.config.server_id {
                            log::error!(
                                "the server's server_id is {} but the config says {}; binlog \
                                 objects are named after the config's",
                                info.server_id,
                                self.ctx.config.server_id
                            );
                        }
                        self.state.server_uuid = Some(info.server_uuid.clone());
                        self.server = Some(info);
                        self.persist();
                    }
                    Err(message) => {
                        log::warn!("cannot reach the database server yet: {message}");
                        self.probe_retry_at = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            Event::BackupsListed {
                result,
                info_cache,
                generation,
            } => {
                self.refreshing = false;
                self.info_cache = info_cache;
                if generation != self.listing_generation {
                    // Storage changed while it was listed: list again.
                    self.state.backups_fetched_at = 0.0;
                    return;
                }
                match result {
                    Ok(backups) => {
                        self.state.backups = backups;
                        self.state.backups_fetched_at = now_epoch();
                        self.backups_listed_count += 1;
                        self.persist();
                        if self.state.mode == Mode::Active {
                            self.apply_retention();
                        }
                    }
                    Err(message) => {
                        log::error!("{message}");
                        self.ctx.metrics.increase("myhoard.remote_read_errors", &[]);
                        self.state.backups_fetched_at = now_epoch() - BACKUP_REFRESH_INTERVAL + 5.0;
                    }
                }
            }
            Event::StreamsObserved(result) => self.streams_observed(result),
            Event::BinlogsPurged { round, result } => self.binlogs_purged(round, result),
            Event::TakenOver(result) => {
                let before: BTreeSet<String> = self.streams.keys().cloned().collect();
                self.taken_over(result);
                for _ in self.streams.keys().filter(|id| !before.contains(*id)) {
                    // A promoted server resumes the streams it took over.
                    self.ctx
                        .metrics
                        .increase("myhoard.backup_started", &[("resumed", "true")]);
                }
            }
            Event::MissingApplied(result) => self.missing_applied(result),
            Event::PromotableChecked {
                result,
                request,
                reply,
            } => {
                self.mode_change_checking = false;
                let answer = match result {
                    // Still observe: nothing else could change the mode meanwhile.
                    Ok(()) if self.state.mode == Mode::Observe => self.set_mode_request(request),
                    Ok(()) => Err(bad_request(format!(
                        "Mode changed to {} while promotion was checked",
                        self.state.mode
                    ))),
                    Err(message) => {
                        log::warn!("promotion refused: {message}");
                        Err(bad_request(message))
                    }
                };
                let _ = reply.send(answer);
            }
            Event::Rotated {
                result,
                reply,
                wait_for_upload,
            } => {
                self.rotating = false;
                match result {
                    Ok(outcome) => {
                        self.state.last_binlog_rotation = now_epoch();
                        self.executed_after_rotation = Some(outcome.executed.clone());
                        let _ = self
                            .channels
                            .watcher_requests
                            .try_send(WatcherRequest::ScanNow);
                        if let Some(reply) = reply {
                            match (wait_for_upload, outcome.closed_index) {
                                (Some(wait), Some(local_index)) => {
                                    self.waiters.push(UploadWaiter {
                                        local_index,
                                        deadline: Instant::now() + wait,
                                        reply,
                                    });
                                }
                                _ => {
                                    let _ = reply.send(Ok(json!({"success": true})));
                                }
                            }
                        }
                    }
                    Err(message) => {
                        log::error!("rotating the binlog failed: {message}");
                        self.count_error("rotate_binlog");
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(ApiError::internal(format!(
                                "rotating the binlog failed: {message}"
                            ))));
                        }
                    }
                }
            }
            Event::SnapshotProgress {
                stream_id,
                progress,
            } => {
                let metrics = &self.ctx.metrics;
                metrics.gauge(
                    "myhoard.backup_stream.basebackup_bytes_uploaded",
                    progress.stored_bytes,
                    &[],
                );
                if let Some(percent) = progress.estimated_percent() {
                    metrics.gauge("myhoard.basebackup.estimated_progress", percent, &[]);
                }
                if let Some(stream) = self.streams.get_mut(&stream_id) {
                    let due = stream
                        .progress_logged_at
                        .is_none_or(|at| at.elapsed() >= PROGRESS_LOG_INTERVAL);
                    if due {
                        stream.progress_logged_at = Some(Instant::now());
                        log::info!(
                            "snapshot of {stream_id}: {:?}, {} MiB read, {} MiB stored{}",
                            progress.stage,
                            progress.original_bytes >> 20,
                            progress.stored_bytes >> 20,
                            progress
                                .estimated_percent()
                                .map(|p| format!(
                                    ", about {p:.0}% of {} MiB",
                                    progress.estimated_total_bytes >> 20
                                ))
                                .unwrap_or_default()
                        );
                    }
                    stream.progress = Some(*progress);
                }
            }
            Event::SnapshotDone { stream_id, result } => self.snapshot_done(&stream_id, result),
            Event::MarkerWritten {
                stream_id,
                marker,
                result,
            } => self.marker_written(&stream_id, marker, result),
            Event::StorageChanged => {
                self.listing_generation += 1;
                self.state.backups_fetched_at = 0.0;
            }
            Event::SupersededClosed { closed, error } => self.superseded_closed(closed, error),
            Event::StreamDeleted { stream_id, result } => {
                self.deleting.remove(&stream_id);
                match result {
                    Ok(count) => {
                        self.listing_generation += 1;
                        log::info!("deleted backup {stream_id} ({count} objects)");
                        self.state.backups.retain(|b| b.stream_id != stream_id);
                        self.info_cache.remove(&stream_id);
                        let _ = state_files::remove(&self.ctx.stream_state_path(&stream_id));
                        self.persist();
                        self.apply_retention();
                    }
                    Err(message) => {
                        log::error!("deleting backup {stream_id}: {message}");
                        self.count_error("delete_backup");
                    }
                }
            }
        }
    }

    fn snapshot_done(&mut self, stream_id: &str, result: Result<Box<BasebackupInfo>, String>) {
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return;
        };
        stream.snapshot_running = None;
        stream.progress = None;
        let metrics = &self.ctx.metrics;
        metrics.gauge("myhoard.backup_stream.basebackup_requested", 0u64, &[]);
        match result {
            Ok(info) => {
                // MyHoard's uncompressed size is the data directory's at the end.
                let incremental = [(
                    "incremental",
                    if info.incremental { "True" } else { "False" },
                )];
                metrics.gauge(
                    "myhoard.basebackup.bytes_compressed",
                    info.compressed_size,
                    &incremental,
                );
                if let Some(end_size) = info.end_size {
                    metrics.gauge(
                        "myhoard.basebackup.bytes_uncompressed",
                        end_size,
                        &incremental,
                    );
                    if end_size > 0 && info.compressed_size > 0 {
                        metrics.gauge(
                            "myhoard.basebackup.compression_ratio",
                            end_size as f64 / info.compressed_size as f64,
                            &incremental,
                        );
                    }
                }
                log::info!(
                    "snapshot of stream {stream_id} stored: {} bytes in {} split(s), binlog {} \
                     position {}, GTID {}",
                    info.compressed_size,
                    info.number_of_splits,
                    info.binlog_name.as_deref().unwrap_or("?"),
                    info.binlog_position.unwrap_or(0),
                    info.gtid.as_deref().unwrap_or("")
                );
                stream.state.basebackup_info = Some(*info);
                stream.state.active_details.phase = Phase::BinlogCatchup;
                stream.state.updated_at = now_epoch();
                self.persist_stream(stream_id);
                self.state.backups_fetched_at = 0.0;
                self.persist();
            }
            Err(message) => {
                metrics.increase("myhoard.basebackup.errors", &[]);
                stream.state.basebackup_errors += 1;
                let backoff = Duration::from_secs_f64(
                    1.5f64
                        .powi(stream.state.basebackup_errors.min(14) as i32)
                        .min(3000.0),
                );
                log::error!(
                    "snapshot of stream {stream_id} failed (attempt {}), retrying in \
                     {backoff:?}: {message}",
                    stream.state.basebackup_errors
                );
                stream.snapshot_retry_at = Some(Instant::now() + backoff);
                self.persist_stream(stream_id);
            }
        }
    }

    fn marker_written(&mut self, stream_id: &str, marker: Marker, result: Result<f64, String>) {
        let server_id = self.ctx.config.server_id;
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return;
        };
        stream.marker_pending = false;
        let at = match result {
            Ok(at) => at,
            Err(message) => {
                log::error!("writing the {marker:?} marker of {stream_id}: {message}");
                self.ctx
                    .metrics
                    .increase("myhoard.remote_write_errors", &[]);
                return;
            }
        };
        match marker {
            Marker::Completed => {
                log::info!("backup {stream_id} is complete");
                stream.state.completed_info = Some(CompletedMarker {
                    completed_at: at,
                    server_id,
                });
                stream.state.active_details.phase = Phase::Binlog;
                self.persist_stream(stream_id);
            }
            Marker::Closed => {
                log::info!("backup {stream_id} is closed; its successor carries on");
                stream.state.closed_info = Some(layout::ClosedMarker {
                    closed_at: at,
                    server_id,
                });
                stream.state.active_details.phase = Phase::None;
                self.persist_stream(stream_id);
                self.streams.remove(stream_id);
                self.state.owned_stream_ids.retain(|id| id != stream_id);
                let _ = state_files::remove(&self.ctx.stream_state_path(stream_id));
            }
        }
        self.listing_generation += 1;
        self.state.backups_fetched_at = 0.0;
        self.persist();
    }

    // --- API -------------------------------------------------------------------------------

    fn handle_command(&mut self, command: Command) {
        let Command { request, reply } = command;
        match request {
            ApiRequest::RotateBinlog { wait_for_upload } => {
                self.rotate_for_api(wait_for_upload, reply);
            }
            ApiRequest::SetBinlogIndex { index } => self.skip_binlogs_for_api(index, reply),
            ApiRequest::SetMode(request) => self.set_mode_for_api(request, reply),
            request @ (ApiRequest::MarkBroken { .. } | ApiRequest::Preserve { .. }) => {
                self.write_marker_for_api(request, reply);
            }
            request => {
                let answer = self.answer(request);
                let _ = reply.send(answer);
            }
        }
    }

    fn answer(&mut self, request: ApiRequest) -> Reply {
        match request {
            ApiRequest::GetStatus => {
                let mut status = json!({"mode": self.state.mode});
                // Ours, added: the progress of snapshots being taken.
                let snapshots: Vec<serde_json::Value> = self
                    .streams
                    .iter()
                    .filter_map(|(id, stream)| {
                        let progress = stream.progress.as_ref()?;
                        Some(json!({
                            "stream_id": id,
                            "stage": progress.stage,
                            "original_bytes": progress.original_bytes,
                            "stored_bytes": progress.stored_bytes,
                            "estimated_total_bytes": progress.estimated_total_bytes,
                            "estimated_percent": progress.estimated_percent(),
                        }))
                    })
                    .collect();
                if !snapshots.is_empty() {
                    status["basebackups_in_progress"] = serde_json::Value::Array(snapshots);
                }
                Ok(status)
            }
            ApiRequest::GetRestoreStatus => match (&self.state.mode, &self.restore) {
                (Mode::Restore, Some(restore)) => Ok(restore.status_json()),
                (Mode::Restore, None) => Err(ApiError::internal("restore has not started yet")),
                (mode, _) => Err(bad_request(format!(
                    "Mode is {mode}, restore status is not available"
                ))),
            },
            ApiRequest::ListBackups { order } => {
                if self.state.backups_fetched_at == 0.0 {
                    return Ok(json!({"backups": null}));
                }
                let mut backups = self.state.backups.clone();
                if let Some(order) = order {
                    backups.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
                    if order == crate::http::SortOrder::Descending {
                        backups.reverse();
                    }
                }
                Ok(json!({ "backups": backups }))
            }
            ApiRequest::RequestBasebackup { incremental } => {
                if incremental {
                    return Err(bad_request(
                        "incremental backups are not supported by this snapshot tool",
                    ));
                }
                if self.state.mode != Mode::Active {
                    return Err(bad_request(format!(
                        "Mode is {}, backups can only be requested in active mode",
                        self.state.mode
                    )));
                }
                let now = Utc::now();
                let request = BackupRequest {
                    reason: BackupReason::Requested,
                    normalized_backup_time: self.normalized_time(now),
                    incremental: false,
                };
                self.state.backup_request = Some(schedule::merge_backup_request(
                    self.state.backup_request.as_ref(),
                    request,
                ));
                self.persist();
                Ok(json!({"success": true}))
            }
            ApiRequest::RotateBinlog { .. } | ApiRequest::SetMode(_) => unreachable_request(),
            ApiRequest::SetReplicationState(state) => {
                let value =
                    serde_json::to_value(&state).map_err(|e| ApiError::internal(e.to_string()))?;
                if let serde_json::Value::Object(map) = &value {
                    self.state.replication_state = map.clone();
                    self.persist();
                }
                Ok(value)
            }
            ApiRequest::PauseBackups { until } => {
                self.state.paused_backups_until = until.map(|t| t.to_rfc3339());
                self.persist();
                Ok(json!({"success": true}))
            }
            ApiRequest::SetBinlogIndex { .. }
            | ApiRequest::MarkBroken { .. }
            | ApiRequest::Preserve { .. } => unreachable_request(),
        }
    }

    /// `PATCH /backup/{id}` and `PUT /backup/{id}/preserve`: the marker is written (or
    /// removed) by a task thread, which answers the request once storage has it.
    fn write_marker_for_api(&mut self, request: ApiRequest, reply: Sender<Reply>) {
        let (stream_id, marker) = match request {
            ApiRequest::MarkBroken {
                stream_id, broken, ..
            } => {
                if self.state.mode != Mode::Active {
                    let _ = reply.send(Err(bad_request(format!(
                        "Mode is {}, backups can only be marked broken in active mode",
                        self.state.mode
                    ))));
                    return;
                }
                (stream_id, tasks::ApiMarker::Broken(broken))
            }
            ApiRequest::Preserve {
                stream_id, until, ..
            } => (
                stream_id,
                tasks::ApiMarker::Preserved(
                    until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)),
                ),
            ),
            _ => {
                let _ = reply.send(unreachable_request());
                return;
            }
        };
        let Some(backup) = self.state.backups.iter().find(|b| b.stream_id == stream_id) else {
            let _ = reply.send(Err(bad_request(format!(
                "Stream {stream_id} was not found in the backup list"
            ))));
            return;
        };
        let site = backup.site.clone();
        let ctx = Arc::clone(&self.ctx);
        tasks::spawn("write-marker", &self.events_tx, move || {
            let result = tasks::write_api_marker(&ctx, &site, &stream_id, &marker);
            let _ = reply.send(match &result {
                Ok(()) => Ok(json!({"success": true})),
                Err(message) => Err(ApiError::internal(message.clone())),
            });
            Event::StorageChanged
        });
    }

    /// `PUT /status`. A standby asked to become active is checked first, on a task thread
    /// (the server is asked); meanwhile other mode requests are refused, so concurrent ones
    /// leave one consistent outcome.
    fn set_mode_for_api(&mut self, request: ModeRequest, reply: Sender<Reply>) {
        if self.mode_change_checking {
            let _ = reply.send(Err(bad_request(
                "Another mode change is being checked; try again once it is answered",
            )));
            return;
        }
        if self.state.mode == Mode::Observe
            && request.mode == RequestedMode::Active
            && !request.force
        {
            self.mode_change_checking = true;
            let ctx = Arc::clone(&self.ctx);
            tasks::spawn("check-promotable", &self.events_tx, move || {
                Event::PromotableChecked {
                    result: promote::check_promotable(&ctx),
                    request,
                    reply,
                }
            });
            return;
        }
        let _ = reply.send(self.set_mode_request(request));
    }

    fn set_mode_request(&mut self, request: ModeRequest) -> Reply {
        let current = self.state.mode;
        match request.mode {
            RequestedMode::Restore => {
                if current != Mode::Idle {
                    return Err(bad_request(format!(
                        "Current mode is {current}, restore only allowed while in idle mode"
                    )));
                }
                let Some(restore) = request.restore else {
                    return Err(bad_request("Field 'site' must be given and a string"));
                };
                let options = self.validate_restore(restore)?;
                crate::restore::coordinator::clear_state(&self.ctx)
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                self.state.restore_options = Some(options);
                self.set_mode(Mode::Restore);
            }
            RequestedMode::Observe => match current {
                Mode::Idle | Mode::Observe => self.set_mode(Mode::Observe),
                Mode::Restore => {
                    let complete = self.restore.as_ref().is_some_and(|r| r.is_complete());
                    if !complete {
                        return Err(bad_request(
                            "Restore is not complete, cannot switch to observe mode",
                        ));
                    }
                    self.finish_restore();
                    self.set_mode(Mode::Observe);
                }
                Mode::Active | Mode::Promote => {
                    return Err(bad_request(format!(
                        "Switch from {current} to observe mode is not allowed"
                    )));
                }
            },
            RequestedMode::Active => match current {
                Mode::Promote if request.force && self.waiting_for_missing => {
                    log::warn!(
                        "promotion forced: stored transactions this server lacks are given up"
                    );
                    self.state.force_promote = true;
                    self.promote_retry_at = None;
                    self.persist();
                }
                Mode::Active | Mode::Promote => {
                    if request.force {
                        return Err(bad_request(
                            "Can only force promotion while waiting for binlogs to be applied",
                        ));
                    }
                    log::info!("already {current}; nothing to do");
                }
                Mode::Idle | Mode::Observe => {
                    if request.force {
                        return Err(bad_request(
                            "Can only force promotion while waiting for binlogs to be applied",
                        ));
                    }
                    // Observe passed `check_promotable` (set_mode_for_api) to get here.
                    self.state.backups_fetched_at = 0.0;
                    self.set_mode(Mode::Promote);
                }
                Mode::Restore => {
                    let Some(restore) = &self.restore else {
                        return Err(bad_request("Restore has not started"));
                    };
                    if request.force {
                        if !restore.force_complete() {
                            return Err(bad_request(
                                "Can only force promotion while waiting for binlogs to be applied",
                            ));
                        }
                        // The restore finishes without the rest of the binlogs, and the
                        // server is promoted accepting their loss.
                        log::warn!("restore forced to complete; promoting afterwards");
                        self.state.promote_on_restore_completion = true;
                        self.state.force_promote = true;
                        self.persist();
                    } else if !restore.is_complete() {
                        return Err(bad_request(
                            "Restore is not complete, cannot switch to active mode",
                        ));
                    } else {
                        self.finish_restore();
                        self.state.backups_fetched_at = 0.0;
                        self.set_mode(Mode::Promote);
                    }
                }
            },
        }
        Ok(json!({"mode": self.state.mode}))
    }

    fn validate_restore(
        &self,
        request: crate::http::RestoreRequest,
    ) -> Result<RestoreOptions, ApiError> {
        let backup = self
            .state
            .backups
            .iter()
            .find(|b| b.site == request.site && b.stream_id == request.stream_id)
            .ok_or_else(|| {
                bad_request(format!(
                    "Requested backup '{}' for site '{}' not found",
                    request.stream_id, request.site
                ))
            })?;
        let info = backup.basebackup_info.as_ref().ok_or_else(|| {
            bad_request(format!(
                "Backup '{}' has no snapshot yet and cannot be restored",
                request.stream_id
            ))
        })?;
        if backup.broken_at.is_some() {
            return Err(bad_request(format!(
                "Backup '{}' is marked broken",
                request.stream_id
            )));
        }
        let (target_time, approximate_ok, target_gtid) = match &request.target {
            crate::http::RestoreTarget::Latest => (None, false, None),
            crate::http::RestoreTarget::Time {
                epoch,
                approximate_ok,
            } => {
                let epoch = *epoch;
                if (epoch as f64) < info.end_ts.floor() - 1.0 {
                    return Err(bad_request(format!(
                        "Requested target time {epoch} is before the backup's end time {}",
                        info.end_ts as i64
                    )));
                }
                if let Some(closed_at) = backup.closed_at
                    && epoch as f64 > closed_at
                {
                    return Err(bad_request(format!(
                        "Requested target time {epoch} is after the backup was closed at {}",
                        closed_at as i64
                    )));
                }
                (Some(epoch), *approximate_ok, None)
            }
            crate::http::RestoreTarget::Gtid(gtid) => {
                if info.gtid_executed.contains_gtid(gtid) {
                    return Err(bad_request(format!(
                        "Requested target GTID {gtid} is already in the backup's snapshot"
                    )));
                }
                (None, false, Some(gtid.to_string()))
            }
        };
        let data_dir = &self.ctx.config.mysql.data_directory;
        if let Ok(mut entries) = std::fs::read_dir(data_dir)
            && entries.next().is_some()
        {
            return Err(bad_request(format!(
                "MySQL data directory {} is not empty",
                data_dir.display()
            )));
        }
        Ok(RestoreOptions {
            site: request.site,
            stream_id: request.stream_id,
            target_time,
            target_time_approximate_ok: approximate_ok,
            target_gtid,
            rebuild_tables: request.rebuild_tables,
        })
    }

    fn finish_restore(&mut self) {
        if let Some(restore) = self.restore.take() {
            restore.stop();
        }
        self.state.restore_options = None;
        self.persist();
    }

    /// `PATCH /binlogs`: the watcher owns the scanner; its answer is relayed from a task
    /// thread so the controller does not wait for it.
    fn skip_binlogs_for_api(&mut self, index: u64, reply: Sender<Reply>) {
        let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
        let request = WatcherRequest::SkipTo {
            index,
            reply: answer_tx,
        };
        if self.channels.watcher_requests.try_send(request).is_err() {
            let _ = reply.send(Err(ApiError::unavailable("the binlog watcher is busy")));
            return;
        }
        let relay = std::thread::Builder::new()
            .name("skip-binlogs".into())
            .spawn(move || {
                // The watcher answers between polls, within milliseconds.
                let answer = match answer_rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Ok(())) => Ok(json!({"success": true})),
                    Ok(Err(message)) => Err(bad_request(message)),
                    Err(_) => Err(ApiError::unavailable("the binlog watcher did not answer")),
                };
                let _ = reply.send(answer);
            });
        if let Err(err) = relay {
            log::error!("cannot start a thread for PATCH /binlogs: {err}");
        }
    }

    fn rotate_for_api(&mut self, wait_for_upload: Option<Duration>, reply: Sender<Reply>) {
        if self.state.mode != Mode::Active {
            let _ = reply.send(Err(bad_request(format!(
                "Mode is {}, binlogs can only be rotated in active mode",
                self.state.mode
            ))));
            return;
        }
        self.rotating = true;
        let ctx = Arc::clone(&self.ctx);
        tasks::spawn("rotate", &self.events_tx, move || Event::Rotated {
            result: tasks::rotate(&ctx).map_err(|e| format!("{e:#}")),
            reply: Some(reply),
            wait_for_upload,
        });
    }

    // --- the tick ----------------------------------------------------------------------------

    fn tick(&mut self) {
        self.answer_waiters();
        if let Some(restore) = &self.restore
            && let Some(outcome) = restore.poll_outcome()
        {
            self.restore_finished(outcome);
        }
        match self.state.mode {
            Mode::Idle => self.refresh_backups_if_stale(BACKUP_REFRESH_INTERVAL),
            Mode::Observe => self.tick_observe(),
            Mode::Promote => self.tick_promote(),
            Mode::Active => self.tick_active(),
            Mode::Restore => self.tick_restore(),
        }
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let streaming: Vec<u64> = self
            .streams
            .values()
            .filter(|s| {
                matches!(
                    s.state.active_details.phase,
                    Phase::BinlogCatchup | Phase::Binlog
                )
            })
            .map(|s| s.state.last_processed_local_index)
            .collect();
        let now = Instant::now();
        self.waiters.retain(|waiter| {
            let done = streaming
                .iter()
                .all(|uploaded| *uploaded >= waiter.local_index);
            if done || now >= waiter.deadline {
                // A timeout is still a success, as in MyHoard.
                let _ = waiter.reply.send(Ok(json!({"success": true})));
                false
            } else {
                true
            }
        });
    }

    fn refresh_backups_if_stale(&mut self, interval: f64) {
        if self.refreshing || now_epoch() - self.state.backups_fetched_at < interval {
            return;
        }
        self.refreshing = true;
        let ctx = Arc::clone(&self.ctx);
        let cache = self.info_cache.clone();
        let generation = self.listing_generation;
        tasks::spawn("list-backups", &self.events_tx, move || {
            tasks::list_backups(&ctx, cache, generation)
        });
    }

    fn ensure_server_probed(&mut self) -> bool {
        if self.server.is_some() {
            return true;
        }
        if !self.probing && self.probe_retry_at.is_none_or(|at| Instant::now() >= at) {
            self.probing = true;
            let ctx = Arc::clone(&self.ctx);
            tasks::spawn("probe-server", &self.events_tx, move || {
                tasks::probe_server(&ctx)
            });
        }
        false
    }

    fn tick_active(&mut self) {
        if !self.ensure_server_probed() || !self.binlogs_loaded {
            return;
        }
        self.refresh_backups_if_stale(BACKUP_REFRESH_INTERVAL * 10.0);
        self.request_scheduled_backup();
        self.start_new_stream_if_requested();
        let ids: Vec<String> = self.streams.keys().cloned().collect();
        for id in &ids {
            self.drive_stream(id);
        }
        self.complete_and_close_streams();
        self.rotate_if_due();
        self.purge_binlogs_if_due();
        self.send_stream_stats();
    }

    /// Active mode's gauges of the backup streams, every [`STREAM_STATS_INTERVAL`]: MyHoard's
    /// pending binlogs and upload ages (the minimum and maximum over the streams), and ours,
    /// the age of the newest transaction stored.
    fn send_stream_stats(&mut self) {
        let metrics = &self.ctx.metrics;
        if self.streams.is_empty()
            || !metrics.is_enabled()
            || self
                .stream_stats_sent_at
                .is_some_and(|at| at.elapsed() < STREAM_STATS_INTERVAL)
        {
            return;
        }
        self.stream_stats_sent_at = Some(Instant::now());
        let now = now_epoch();
        let streaming = |stream: &&Stream| {
            matches!(
                stream.state.active_details.phase,
                Phase::BinlogCatchup | Phase::Binlog
            )
        };
        let mut counts = Vec::new();
        let mut bytes = Vec::new();
        let mut upload_ages = Vec::new();
        let mut upload_delays = Vec::new();
        for stream in self.streams.values() {
            let pending = Self::pending_binlogs(&self.binlogs, &stream.state);
            counts.push(pending.len() as u64);
            bytes.push(pending.iter().map(|b| b.file_size).sum::<u64>());
            let is_streaming = streaming(&stream);
            let last_upload = stream
                .state
                .last_binlog_upload_time
                .unwrap_or(stream.state.created_at);
            upload_ages.push(if is_streaming { now - last_upload } else { 0.0 });
            // MyHoard takes the oldest pending binlog's mtime; the scanner's time is as good.
            let oldest_pending = pending.first().filter(|_| is_streaming);
            upload_delays.push(oldest_pending.map_or(0.0, |b| (now - b.processed_at).max(0.0)));
        }
        let min_max = |values: &[u64]| {
            (
                values.iter().copied().min().unwrap_or(0),
                values.iter().copied().max().unwrap_or(0),
            )
        };
        let float_min_max = |values: &[f64]| {
            (
                values.iter().copied().fold(f64::INFINITY, f64::min),
                values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        let (min, max) = min_max(&counts);
        metrics.gauge("myhoard.pending_binlog_count_min", min, &[]);
        metrics.gauge("myhoard.pending_binlog_count_max", max, &[]);
        let (min, max) = min_max(&bytes);
        metrics.gauge("myhoard.pending_binlog_bytes_min", min, &[]);
        metrics.gauge("myhoard.pending_binlog_bytes_max", max, &[]);
        let (min, max) = float_min_max(&upload_ages);
        metrics.gauge("myhoard.binlog_upload_age_min", min, &[]);
        metrics.gauge("myhoard.binlog_upload_age_max", max, &[]);
        let (min, max) = float_min_max(&upload_delays);
        metrics.gauge("myhoard.binlog_upload_delay_min", min.round() as i64, &[]);
        metrics.gauge("myhoard.binlog_upload_delay_max", max.round() as i64, &[]);

        // The live recovery point: the newest commit in any binlog a stream has stored. Kept
        // once seen, so that purging the binlog it was in does not lose it.
        let stored_up_to = self
            .streams
            .values()
            .filter(streaming)
            .map(|s| s.state.last_processed_local_index)
            .max();
        if let Some(stored_up_to) = stored_up_to {
            let newest = self
                .binlogs
                .iter()
                .filter(|b| b.local_index <= stored_up_to)
                .filter_map(|b| b.gtid_ranges.iter().map(|range| range.end_ts).max())
                .max();
            self.newest_backed_up_commit = self.newest_backed_up_commit.max(newest);
        }
        if let Some(commit) = self.newest_backed_up_commit {
            self.ctx.metrics.gauge(
                "myhoard.backup_stream.recovery_point_age",
                (now - commit as f64).max(0.0),
                &[],
            );
        }
    }

    fn stream_schedules(&self) -> Vec<schedule::StreamSchedule> {
        self.streams
            .values()
            .map(|s| schedule::StreamSchedule {
                normalized_backup_time: DateTime::parse_from_rfc3339(
                    &s.state.normalized_backup_time,
                )
                .ok()
                .map(|t| t.with_timezone(&Utc)),
                reason: match s.state.backup_reason.as_str() {
                    "scheduled" => Some(BackupReason::Scheduled),
                    "requested" => Some(BackupReason::Requested),
                    _ => None,
                },
                created_at: s.state.created_at,
            })
            .collect()
    }

    fn normalized_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let previous = schedule::previous_normalized_backup_time(&self.stream_schedules());
        schedule::normalized_backup_time(&self.ctx.config.backup_settings, previous, now)
    }

    fn request_scheduled_backup(&mut self) {
        let streams = self.stream_schedules();
        let paused_until = self
            .state
            .paused_backups_until
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let due = schedule::scheduled_backup_due(
            &self.ctx.config.backup_settings,
            &schedule::ScheduleState {
                streams: &streams,
                pending_request: self.state.backup_request.as_ref(),
                paused_until,
            },
            Utc::now(),
        );
        if let Some(request) = due {
            log::info!(
                "scheduled backup due for {}",
                request.normalized_backup_time.to_rfc3339()
            );
            self.state.backup_request = Some(schedule::merge_backup_request(
                self.state.backup_request.as_ref(),
                request,
            ));
            self.persist();
        }
    }

    fn start_new_stream_if_requested(&mut self) {
        let Some(request) = self.state.backup_request.clone() else {
            return;
        };
        if self.streams.len() >= MAX_STREAMS {
            return;
        }
        let now = Utc::now();
        let stream_id = layout::new_stream_id(now);
        let site = self.ctx.config.backup_settings.upload_site.clone();
        let latest_complete = self.binlogs.last().map(|b| b.local_index).unwrap_or(0);
        let state = StreamState {
            stream_id: stream_id.clone(),
            site,
            mode: "active".to_owned(),
            active_details: ActiveDetails {
                phase: Phase::Basebackup,
            },
            backup_reason: match request.reason {
                BackupReason::Requested => "requested".to_owned(),
                BackupReason::Scheduled => "scheduled".to_owned(),
            },
            normalized_backup_time: request
                .normalized_backup_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            created_at: layout::epoch_seconds(now),
            basebackup_info: None,
            basebackup_errors: 0,
            completed_info: None,
            closed_info: None,
            next_index: 1,
            last_processed_local_index: 0,
            initial_latest_complete_binlog_index: latest_complete,
            valid_local_binlog_found: false,
            last_binlog_upload_time: None,
            updated_at: layout::epoch_seconds(now),
            backup_errors: 0,
            takeover_remote_gtids: None,
        };
        log::info!(
            "starting backup stream {stream_id} ({})",
            state.backup_reason
        );
        self.ctx
            .metrics
            .increase("myhoard.backup_started", &[("resumed", "false")]);
        self.streams.insert(stream_id.clone(), Stream::new(state));
        self.persist_stream(&stream_id);
        self.state.owned_stream_ids.push(stream_id);
        self.state.backup_request = None;
        self.persist();
    }

    fn drive_stream(&mut self, stream_id: &str) {
        let Some(server) = self.server.clone() else {
            return;
        };
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return;
        };
        match stream.state.active_details.phase {
            Phase::Basebackup => {
                if stream.snapshot_running.is_some()
                    || stream
                        .snapshot_retry_at
                        .is_some_and(|at| Instant::now() < at)
                {
                    return;
                }
                let cancel = Arc::new(AtomicBool::new(false));
                stream.snapshot_running = Some(Arc::clone(&cancel));
                let ctx = Arc::clone(&self.ctx);
                let state = stream.state.clone();
                let events = self.events_tx.clone();
                log::info!("taking the snapshot of stream {stream_id}");
                self.ctx
                    .metrics
                    .gauge("myhoard.backup_stream.basebackup_requested", 1u64, &[]);
                tasks::spawn("snapshot", &self.events_tx, move || {
                    tasks::take_snapshot(&ctx, server.flavor, &state, &cancel, &events)
                });
            }
            Phase::BinlogCatchup | Phase::Binlog => {
                self.skip_binlogs_already_stored(stream_id);
                self.dispatch_uploads(stream_id);
            }
            Phase::None => {}
        }
    }

    /// The local binlogs `stream` still has to upload, in order.
    fn pending_binlogs<'a>(binlogs: &'a [BinlogInfo], state: &StreamState) -> Vec<&'a BinlogInfo> {
        let first_needed =
            if state.valid_local_binlog_found || state.takeover_remote_gtids.is_some() {
                0
            } else {
                state
                    .basebackup_info
                    .as_ref()
                    .and_then(|info| info.binlog_index)
                    .unwrap_or(0)
            };
        binlogs
            .iter()
            .filter(|b| {
                b.local_index > state.last_processed_local_index && b.local_index >= first_needed
            })
            .collect()
    }

    fn dispatch_uploads(&mut self, stream_id: &str) {
        let ctx = Arc::clone(&self.ctx);
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return;
        };
        if stream
            .retry_uploads_at
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let Some(site) = ctx.sites.get(&stream.state.site) else {
            return;
        };
        let pending = Self::pending_binlogs(&self.binlogs, &stream.state);
        let prefix = layout::stream_prefix(&stream.state.site, &stream.state.stream_id);
        for (offset, binlog) in pending.iter().enumerate() {
            if stream.in_flight.contains_key(&binlog.local_index) {
                continue;
            }
            if stream.in_flight.len() >= ctx.config.restore.download_workers.clamp(2, 4) {
                break;
            }
            let remote_index = stream.state.next_index + offset as u64;
            let mut info = (*binlog).clone();
            info.remote_index = Some(remote_index);
            info.remote_key = Some(layout::binlog_key(
                &prefix,
                remote_index,
                ctx.config.server_id,
            ));
            info.compression_algorithm = Some(site.compression.algorithm.to_string());
            info.server_id = ctx.config.server_id;
            let job = UploadJob {
                stream_id: stream_id.to_owned(),
                storage: Arc::clone(&site.storage),
                compression: site.compression,
                public_key: site.public_key.clone(),
                info,
            };
            match self.channels.upload_jobs.try_send(job) {
                Ok(()) => {
                    stream
                        .in_flight
                        .insert(binlog.local_index, (remote_index, false));
                }
                Err(_) => break,
            }
        }
    }

    fn complete_and_close_streams(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        // A caught-up stream in catch-up is complete.
        let catching_up: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.state.active_details.phase == Phase::BinlogCatchup
                    && !s.marker_pending
                    && s.in_flight.is_empty()
                    && Self::pending_binlogs(&self.binlogs, &s.state).is_empty()
                    && s.state.valid_local_binlog_found
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in catching_up {
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.marker_pending = true;
                let state = stream.state.clone();
                let ctx = Arc::clone(&ctx);
                tasks::spawn("mark-completed", &self.events_tx, move || {
                    tasks::write_marker(&ctx, &state, Marker::Completed)
                });
            }
        }
        // Of several completed streams, all but the newest are closed.
        let mut completed: Vec<(f64, String)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.state.active_details.phase == Phase::Binlog)
            .map(|(id, s)| (s.state.created_at, id.clone()))
            .collect();
        completed.sort_by(|a, b| a.0.total_cmp(&b.0));
        completed.pop();
        for (_, id) in completed {
            if let Some(stream) = self.streams.get_mut(&id)
                && !stream.marker_pending
                && stream.in_flight.is_empty()
            {
                stream.marker_pending = true;
                let state = stream.state.clone();
                let ctx = Arc::clone(&ctx);
                tasks::spawn("mark-closed", &self.events_tx, move || {
                    tasks::write_marker(&ctx, &state, Marker::Closed)
                });
            }
        }
        self.close_superseded_streams();
    }

    /// Closes the streams a failback could not take back once a backup of this server's own
    /// is complete (see [`promote`]).
    fn close_superseded_streams(&mut self) {
        // Checked on every tick: the usual case, nothing to close, returns first.
        if self.state.superseded_streams.is_empty()
            || self.closing_superseded
            || self
                .close_superseded_retry_at
                .is_some_and(|at| Instant::now() < at)
            || !self
                .streams
                .values()
                .any(|stream| stream.state.completed_info.is_some())
        {
            return;
        }
        self.closing_superseded = true;
        let streams = self.state.superseded_streams.clone();
        let ctx = Arc::clone(&self.ctx);
        tasks::spawn("close-superseded", &self.events_tx, move || {
            tasks::close_streams(&ctx, streams)
        });
    }

    fn superseded_closed(&mut self, closed: Vec<SupersededStream>, error: Option<String>) {
        self.closing_superseded = false;
        for stream in &closed {
            log::info!(
                "backup {} is closed; this server's own backup carries on",
                stream.stream_id
            );
        }
        self.state
            .superseded_streams
            .retain(|stream| !closed.contains(stream));
        if let Some(message) = error {
            log::error!(
                "closing a stream this server could not take back, retrying in \
                 {CLOSE_SUPERSEDED_RETRY_INTERVAL:?}: {message}"
            );
            self.ctx
                .metrics
                .increase("myhoard.remote_write_errors", &[]);
            self.close_superseded_retry_at = Some(Instant::now() + CLOSE_SUPERSEDED_RETRY_INTERVAL);
        }
        if !closed.is_empty() {
            self.listing_generation += 1;
            self.state.backups_fetched_at = 0.0;
        }
        self.persist();
    }

    fn rotate_if_due(&mut self) {
        if self.rotating {
            return;
        }
        let streaming = self.streams.values().any(|s| {
            matches!(
                s.state.active_details.phase,
                Phase::BinlogCatchup | Phase::Binlog
            )
        });
        let interval = self
            .ctx
            .config
            .backup_settings
            .forced_binlog_rotation_interval
            .as_secs_f64();
        if !streaming || now_epoch() - self.state.last_binlog_rotation < interval {
            return;
        }
        self.rotating = true;
        let ctx = Arc::clone(&self.ctx);
        let unchanged_since = self.executed_after_rotation.clone();
        tasks::spawn("rotate", &self.events_tx, move || {
            let result = (|| -> anyhow::Result<tasks::RotationOutcome> {
                let executed = tasks::executed_gtids(&ctx)?;
                if unchanged_since.as_ref() == Some(&executed) {
                    // Nothing written since the last rotation: a new empty file helps nobody.
                    return Ok(tasks::RotationOutcome {
                        closed_index: None,
                        executed,
                    });
                }
                log::info!("forcing a binlog rotation: the interval has passed");
                tasks::rotate(&ctx)
            })();
            Event::Rotated {
                result: result.map_err(|e| format!("{e:#}")),
                reply: None,
                wait_for_upload: None,
            }
        });
    }

    fn apply_retention(&mut self) {
        if self.state.mode != Mode::Active || !self.deleting.is_empty() {
            return;
        }
        let live: BTreeSet<String> = self.streams.keys().cloned().collect();
        let candidates: Vec<crate::retention::RetentionCandidate> = self
            .state
            .backups
            .iter()
            .map(|b| crate::retention::RetentionCandidate {
                stream_id: b.stream_id.clone(),
                completed_at: b.completed_at,
                closed_at: b.closed_at,
                broken: b.broken_at.is_some(),
                preserve_until: b
                    .preserve_until
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                recovery_site: b.recovery_site,
                incremental: b
                    .basebackup_info
                    .as_ref()
                    .is_some_and(|info| info.incremental),
            })
            .collect();
        let decision = crate::retention::backup_to_purge(
            &candidates,
            &self.ctx.config.backup_settings,
            &live,
            Utc::now(),
        );
        if let crate::retention::Decision::Purge(stream_id) = decision
            && let Some(backup) = self.state.backups.iter().find(|b| b.stream_id == stream_id)
        {
            log::info!("retention: deleting backup {stream_id}");
            let site = backup.site.clone();
            self.deleting.insert(stream_id.clone());
            let ctx = Arc::clone(&self.ctx);
            tasks::spawn("delete-backup", &self.events_tx, move || {
                tasks::delete_stream(&ctx, &site, &stream_id)
            });
        }
    }

    // --- restore -----------------------------------------------------------------------------

    fn tick_restore(&mut self) {
        self.refresh_backups_if_stale(BACKUP_REFRESH_INTERVAL);
        self.purge_binlogs_if_due();
        if self.restore.is_some() {
            return;
        }
        let Some(options) = self.state.restore_options.clone() else {
            log::error!("restore mode without restore options; back to idle");
            self.set_mode(Mode::Idle);
            return;
        };
        match crate::restore::coordinator::start(Arc::clone(&self.ctx), options) {
            Ok(handle) => self.restore = Some(handle),
            Err(err) => log::error!("cannot start the restore: {err:#}"),
        }
    }

    fn restore_finished(&mut self, outcome: RestoreOutcome) {
        match outcome {
            RestoreOutcome::Completed => {
                self.finish_restore();
                self.server = None;
                self.state.backups_fetched_at = 0.0;
                if self.state.promote_on_restore_completion {
                    log::info!("restore completed; promoting as forced");
                    self.state.promote_on_restore_completion = false;
                    self.set_mode(Mode::Promote);
                } else {
                    log::info!("restore completed; switching to observe mode");
                    self.set_mode(Mode::Observe);
                }
            }
            RestoreOutcome::Failed(message) => {
                // The coordinator keeps its failed phase for /status/restore; the mode stays
                // restore until an operator acts.
                log::error!("restore failed: {message}");
            }
        }
    }
}

fn unreachable_request() -> Reply {
    Err(ApiError::internal("request routed to the wrong handler"))
}

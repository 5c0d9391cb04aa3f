//! The restore coordinator: MyHoard's restore phases, run on the `restore` task thread.
//!
//! `getting_backup_info` → `initiating_binlog_downloads` → `restoring_basebackup` (download,
//! decrypt, decompress, unpack, prepare, move into the data directory) → `refreshing_binlogs`
//! → `applying_binlogs` ⇄ `waiting_for_apply_to_finish` → `finalizing` → `completed`; or
//! `failed`. The phase and everything needed to resume are in `restore_coordinator_state.json`,
//! written before each step acts, so a `kill -9` of the daemon resumes at the stored phase (a
//! snapshot restore starts over from the download; a batch being applied is applied on from
//! where the server's applier stands).
//!
//! Binlogs are fetched by a pool of `downloader-N` threads into the relay log directory
//! (`<relay prefix>.prefetch.<index>`); the bytes downloaded, downloading and being applied
//! never exceed `restore_max_binlog_bytes` (at least one file is always allowed, as in
//! MyHoard). The server's applier deletes relay logs once applied.
//!
//! Every phase is retried with backoff after an error; an integrity failure (a tampered or
//! corrupted object) is never retried: the restore fails with that reason.
//!
//! Metrics: MyHoard's (`myhoard.restore_errors`, `myhoard.restore.binlogs_restored`,
//! `myhoard.restore.pending_binlogs`, `myhoard.unexpected_sql_thread_starts`, the snapshot
//! restore's progress and total time, `myhoard.basebackup_broken`) and ours: a restore's start,
//! completion and failure (`myhoard.restore.started|completed|failed`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::apply::{
    self, ApplyState, BatchFile, BinlogFile, PlannedFile, Progress, RestoreTarget, StopPlanner,
};
use crate::backup_stream::layout::{self, BasebackupInfo, BinlogInfo};
use crate::backup_stream::remote;
use crate::basebackup::{self, RestoreSnapshotJob};
use crate::controller::Context;
use crate::controller::state::RestoreOptions;
use crate::db::{Client, Flavor};
use crate::gtid::{Gtid, GtidSet};
use crate::mysqld::{self, ServerOptions};
use crate::pipeline::{self, compress::Algorithm};
use crate::state as state_files;

pub const STATE_FILE: &str = "restore_coordinator_state.json";
const MAX_BASEBACKUP_ERRORS: u32 = 4;
const MAX_DOWNLOAD_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    GettingBackupInfo,
    InitiatingBinlogDownloads,
    RestoringBasebackup,
    PreparingBackup,
    RebuildingTables,
    RefreshingBinlogs,
    ApplyingBinlogs,
    WaitingForApplyToFinish,
    Finalizing,
    Completed,
    Failed,
    FailedBasebackup,
    BrokenBasebackup,
}

/// `restore_coordinator_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreState {
    pub phase: Phase,
    pub options: RestoreOptions,
    pub basebackup_info: Option<BasebackupInfo>,
    pub basebackup_restore_errors: u32,
    pub basebackup_compressed_bytes_downloaded: u64,
    pub basebackup_compressed_bytes_total: u64,
    pub basebackup_prepare_progress: Option<f64>,
    /// The binlogs to replay, in order (fenced and gapless), with `remote_*` fields.
    pub binlogs: Vec<BinlogInfo>,
    /// How many of `binlogs` are applied.
    pub binlogs_restored: usize,
    /// How many of `binlogs` (after the applied ones) are in the batch being applied.
    pub applying: usize,
    pub apply: Option<ApplyState>,
    /// The batch handed to the applier, kept so a crash in the middle of handing it over can
    /// hand over the same batch again.
    pub batch: Vec<BatchRecord>,
    /// The target lies within the binlogs planned so far: nothing after them is needed.
    pub target_reached: bool,
    pub server_options: Option<ServerOptions>,
    pub errors: u32,
    pub failure: Option<String>,
    pub file_fail_counters: BTreeMap<u64, u32>,
    /// A restore to the latest transaction of the newest backup also replays the backups
    /// completed after it started (MyHoard's `_extend_binlog_stream_list`): decided once, when
    /// the backup info is read.
    #[serde(default)]
    pub follows_newer_backups: bool,
    /// The newer backups' streams whose binlogs follow the restored one's, oldest first. Once a
    /// stream follows, the ones before it take no new binlogs: the newer stream holds them.
    #[serde(default)]
    pub followed_streams: Vec<String>,
    /// The backup whose snapshot is restored, when it is not the one asked for: after that
    /// one's snapshot failed, an earlier backup's, whose binlogs lead into the asked one's
    /// (MyHoard's `_switch_basebackup_if_possible`). The asked-for stream then follows it.
    #[serde(default)]
    pub snapshot_stream: Option<String>,
    /// `rebuild_tables`: the last table rewritten, `(schema, table)`, so a resumed rebuild
    /// goes on after it.
    #[serde(default)]
    pub last_rebuilt_table: Option<(String, String)>,
    /// After the snapshot failed for good: no earlier backup to fall back to was found, so the
    /// failure is final. Until then a failed snapshot is not an end, so a restart in between
    /// still looks for one.
    #[serde(default)]
    pub no_earlier_backup: bool,
}

/// One file of the batch being applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub path: PathBuf,
    pub plan: PlannedFile,
}

/// How a restore ended.
#[derive(Debug, Clone)]
pub enum RestoreOutcome {
    Completed,
    Failed(String),
}

/// The controller's view of a running restore.
pub struct RestoreHandle {
    status: Arc<Mutex<RestoreState>>,
    force: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    outcome: Receiver<RestoreOutcome>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RestoreHandle {
    /// `GET /status/restore`.
    pub fn status_json(&self) -> serde_json::Value {
        let state = match self.status.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let pending = state
            .binlogs
            .len()
            .saturating_sub(state.binlogs_restored + state.applying);
        json!({
            "basebackup_compressed_bytes_downloaded": state.basebackup_compressed_bytes_downloaded,
            "basebackup_compressed_bytes_total": state.basebackup_compressed_bytes_total,
            "basebackup_prepare_progress": state.basebackup_prepare_progress,
            "binlogs_being_restored": state.applying,
            "binlogs_pending": pending,
            "binlogs_restored": state.binlogs_restored,
            "phase": state.phase,
            "current_backup_name": state.snapshot_stream.as_ref().unwrap_or(&state.options.stream_id),
            "current_backup_incremental": false,
            "restore_chain_index": 1,
            "restore_chain_total": 1,
            "failure_reason": state.failure,
        })
    }

    pub fn is_complete(&self) -> bool {
        self.status
            .lock()
            .map(|s| s.phase == Phase::Completed)
            .unwrap_or(false)
    }

    /// `force`: stop applying at the current batch and finish; only while a batch is applied.
    pub fn force_complete(&self) -> bool {
        let applying = self
            .status
            .lock()
            .map(|s| s.phase == Phase::WaitingForApplyToFinish)
            .unwrap_or(false);
        if applying {
            self.force.store(true, Ordering::SeqCst);
        }
        applying
    }

    pub fn poll_outcome(&self) -> Option<RestoreOutcome> {
        self.outcome.try_recv().ok()
    }

    /// Stops the thread at its next safe point and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the restore thread panicked");
        }
    }
}

/// Deletes a previous restore's state (a new restore was requested).
pub fn clear_state(ctx: &Context) -> anyhow::Result<()> {
    state_files::remove(&ctx.state_path(STATE_FILE))?;
    Ok(())
}

/// Starts (or resumes) the restore described by `options`.
pub fn start(ctx: Arc<Context>, options: RestoreOptions) -> anyhow::Result<RestoreHandle> {
    let path = ctx.state_path(STATE_FILE);
    let state = match state_files::read_json::<RestoreState>(&path)? {
        Some(state) if state.options == options => state,
        _ => RestoreState {
            phase: Phase::GettingBackupInfo,
            options,
            basebackup_info: None,
            basebackup_restore_errors: 0,
            basebackup_compressed_bytes_downloaded: 0,
            basebackup_compressed_bytes_total: 0,
            basebackup_prepare_progress: None,
            binlogs: Vec::new(),
            binlogs_restored: 0,
            applying: 0,
            apply: None,
            batch: Vec::new(),
            target_reached: false,
            server_options: None,
            errors: 0,
            failure: None,
            file_fail_counters: BTreeMap::new(),
            follows_newer_backups: false,
            followed_streams: Vec::new(),
            last_rebuilt_table: None,
            snapshot_stream: None,
            no_earlier_backup: false,
        },
    };
    let status = Arc::new(Mutex::new(state.clone()));
    let force = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (outcome_tx, outcome_rx) = crossbeam_channel::bounded(1);
    let mut coordinator = Coordinator {
        ctx,
        state,
        path,
        status: Arc::clone(&status),
        force: Arc::clone(&force),
        stop: Arc::clone(&stop),
        downloads: None,
        flavor: None,
    };
    let thread = std::thread::Builder::new()
        .name("restore".into())
        .spawn(move || {
            let outcome = coordinator.run();
            if let Some(outcome) = outcome {
                let _ = outcome_tx.send(outcome);
            }
        })?;
    Ok(RestoreHandle {
        status,
        force,
        stop,
        outcome: outcome_rx,
        thread: Some(thread),
    })
}

struct Coordinator {
    ctx: Arc<Context>,
    state: RestoreState,
    path: PathBuf,
    status: Arc<Mutex<RestoreState>>,
    force: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    downloads: Option<Downloads>,
    flavor: Option<Flavor>,
}

/// A failure that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Permanent(String);

impl Coordinator {
    /// Runs phases until completed, failed or stopped (`None`).
    fn run(&mut self) -> Option<RestoreOutcome> {
        log::info!(
            "restoring backup {} of site {} from phase {:?}",
            self.state.options.stream_id,
            self.state.options.site,
            self.state.phase
        );
        let metrics = self.ctx.metrics.clone();
        // A restore that had ended before this start (the daemon restarted since) is not
        // counted again.
        let ended_before = self.has_ended();
        if !ended_before {
            let resumed = self.state.phase != Phase::GettingBackupInfo;
            metrics.increase(
                "myhoard.restore.started",
                &[("resumed", if resumed { "true" } else { "false" })],
            );
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            let current = self.state.phase;
            match current {
                Phase::Completed => {
                    if !ended_before {
                        metrics.increase("myhoard.restore.completed", &[]);
                    }
                    return Some(RestoreOutcome::Completed);
                }
                Phase::FailedBasebackup | Phase::BrokenBasebackup
                    if !self.state.no_earlier_backup =>
                {
                    match self.switch_to_earlier_backup() {
                        Ok(true) => {}
                        Ok(false) => {
                            self.state.no_earlier_backup = true;
                            self.save();
                        }
                        Err(err) => {
                            self.state.errors += 1;
                            let backoff = backoff(self.state.errors);
                            log::error!(
                                "listing backups for an earlier snapshot (attempt {}), retrying \
                                 in {backoff:?}: {err:#}",
                                self.state.errors
                            );
                            self.sleep(backoff);
                        }
                    }
                    continue;
                }
                phase @ (Phase::Failed | Phase::FailedBasebackup | Phase::BrokenBasebackup) => {
                    if !ended_before {
                        metrics
                            .increase("myhoard.restore.failed", &[("phase", &phase_name(phase))]);
                    }
                    return Some(RestoreOutcome::Failed(
                        self.state.failure.clone().unwrap_or_default(),
                    ));
                }
                _ => {}
            }
            let phase = self.state.phase;
            match self.step() {
                Ok(()) => self.state.errors = 0,
                Err(err) => {
                    metrics.increase("myhoard.restore_errors", &[("phase", &phase_name(phase))]);
                    let permanent = is_permanent(&err);
                    self.state.errors += 1;
                    let message = format!("{err:#}");
                    if permanent {
                        log::error!("restore failed in phase {phase:?}: {message}");
                        self.state.failure = Some(message);
                        self.state.phase = match phase {
                            Phase::RestoringBasebackup | Phase::PreparingBackup => {
                                Phase::FailedBasebackup
                            }
                            _ => Phase::Failed,
                        };
                        self.save();
                        if self.state.phase == Phase::FailedBasebackup {
                            metrics.increase("myhoard.basebackup_broken", &[]);
                            self.mark_broken_if_configured();
                        }
                        continue;
                    }
                    if matches!(phase, Phase::RestoringBasebackup | Phase::PreparingBackup) {
                        self.state.basebackup_restore_errors += 1;
                        if self.state.basebackup_restore_errors >= MAX_BASEBACKUP_ERRORS {
                            log::error!(
                                "restoring the snapshot failed {MAX_BASEBACKUP_ERRORS} times: {message}"
                            );
                            self.state.failure = Some(message);
                            self.state.phase = Phase::FailedBasebackup;
                            self.save();
                            metrics.increase("myhoard.basebackup_broken", &[]);
                            self.mark_broken_if_configured();
                            continue;
                        }
                    }
                    self.state.failure = Some(message.clone());
                    let backoff = backoff(self.state.errors);
                    log::error!(
                        "restore phase {phase:?} failed (attempt {}), retrying in {backoff:?}: \
                         {message}",
                        self.state.errors
                    );
                    self.save();
                    self.sleep(backoff);
                }
            }
        }
    }

    /// `restore_auto_mark_backups_broken`: a snapshot that cannot be restored is marked broken
    /// (`broken.json`), so that nobody else tries it and retention does not count it.
    fn mark_broken_if_configured(&self) {
        if !self.ctx.config.restore.auto_mark_backups_broken {
            return;
        }
        let Ok(site) = self.site() else { return };
        let key = format!("{}/{}", self.stream_prefix(), layout::BROKEN_NAME);
        let marker = layout::BrokenMarker {
            broken_at: layout::epoch_seconds(chrono::Utc::now()),
            server_id: self.ctx.config.server_id,
        };
        match remote::put_marker(site.storage.as_ref(), &key, &marker) {
            Ok(()) => log::warn!("marked backup {} broken", self.state.options.stream_id),
            Err(err) => log::error!(
                "marking backup {} broken: {err}",
                self.state.options.stream_id
            ),
        }
    }

    /// Whether the restore is over: completed, or failed with nothing left to try (a failed
    /// snapshot ends it only once no earlier backup was found to fall back to).
    fn has_ended(&self) -> bool {
        match self.state.phase {
            Phase::FailedBasebackup | Phase::BrokenBasebackup => self.state.no_earlier_backup,
            phase => is_terminal(phase),
        }
    }

    fn sleep(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn save(&self) {
        if let Err(err) = state_files::write_json(&self.path, &self.state) {
            log::error!("saving restore state: {err}");
        }
        if let Ok(mut status) = self.status.lock() {
            *status = self.state.clone();
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        log::info!("restore phase {:?} → {phase:?}", self.state.phase);
        self.state.phase = phase;
        self.state.failure = None;
        self.save();
        self.send_pending_binlogs();
    }

    /// `myhoard.restore.pending_binlogs`: binlogs planned and not yet handed to the applier.
    fn send_pending_binlogs(&self) {
        let pending = self
            .state
            .binlogs
            .len()
            .saturating_sub(self.state.binlogs_restored + self.state.applying);
        self.ctx
            .metrics
            .gauge("myhoard.restore.pending_binlogs", pending, &[]);
    }

    fn site(&self) -> anyhow::Result<&crate::controller::SiteHandle> {
        self.ctx.sites.get(&self.state.options.site).ok_or_else(|| {
            anyhow!(Permanent(format!(
                "unknown site {}",
                self.state.options.site
            )))
        })
    }

    /// The stream of the snapshot being restored.
    fn snapshot_stream_id(&self) -> &str {
        self.state
            .snapshot_stream
            .as_deref()
            .unwrap_or(&self.state.options.stream_id)
    }

    fn stream_prefix(&self) -> String {
        layout::stream_prefix(&self.state.options.site, self.snapshot_stream_id())
    }

    /// The streams whose binlogs the restore replays, in order: the snapshot's, then the ones
    /// that follow it.
    fn binlog_streams(&self) -> Vec<String> {
        std::iter::once(self.snapshot_stream_id().to_owned())
            .chain(self.state.followed_streams.iter().cloned())
            .collect()
    }

    /// After the snapshot failed for good (or is marked broken): starts over from the newest
    /// earlier backup, if there is one, whose binlogs then lead into this one's. Returns
    /// whether it switched; an error is a failure to list the backups, worth retrying.
    fn switch_to_earlier_backup(&mut self) -> anyhow::Result<bool> {
        let backups = self.completed_backups()?;
        let failed = self.snapshot_stream_id().to_owned();
        let Some(failed_at) = backups
            .iter()
            .find(|b| b.stream_id == failed)
            .and_then(|b| b.completed_at)
            .or_else(|| self.state.basebackup_info.as_ref().map(|info| info.end_ts))
        else {
            log::error!(
                "no completion time known for {failed}, so no earlier backup to fall back to: the restore fails"
            );
            return Ok(false);
        };
        let Some(earlier) = backups
            .into_iter()
            .rev()
            .find(|b| b.completed_at.is_some_and(|at| at < failed_at) && b.stream_id != failed)
        else {
            log::error!("no backup completed before {failed} to fall back to: the restore fails");
            return Ok(false);
        };
        log::warn!(
            "the snapshot of {failed} cannot be restored ({}); falling back to the earlier \
             backup {}, whose binlogs lead into it",
            self.state.failure.as_deref().unwrap_or("marked broken"),
            earlier.stream_id
        );
        self.ctx
            .metrics
            .increase("myhoard.restore.switched_to_earlier_backup", &[]);
        if let Some(downloads) = self.downloads.take() {
            downloads.shut_down();
        }
        remove_prefetched(&self.ctx.config.mysql.relay_log_prefix);
        // The streams from the earlier one's successor on: the failed one and those it was
        // to be followed by.
        let mut followed: Vec<String> = self.binlog_streams();
        followed.retain(|stream| *stream != earlier.stream_id);
        self.state.followed_streams = followed;
        self.state.snapshot_stream = Some(earlier.stream_id);
        self.state.basebackup_info = None;
        self.state.basebackup_restore_errors = 0;
        self.state.basebackup_compressed_bytes_downloaded = 0;
        self.state.basebackup_prepare_progress = None;
        self.state.binlogs.clear();
        self.state.binlogs_restored = 0;
        self.state.applying = 0;
        self.state.apply = None;
        self.state.batch.clear();
        self.state.target_reached = false;
        self.state.last_rebuilt_table = None;
        self.state.server_options = None;
        self.state.errors = 0;
        self.set_phase(Phase::GettingBackupInfo);
        Ok(true)
    }

    fn step(&mut self) -> anyhow::Result<()> {
        match self.state.phase {
            Phase::GettingBackupInfo => self.get_backup_info(),
            Phase::InitiatingBinlogDownloads => {
                self.refresh_binlogs()?;
                self.set_phase(Phase::RestoringBasebackup);
                Ok(())
            }
            Phase::RestoringBasebackup | Phase::PreparingBackup => self.restore_basebackup(),
            Phase::RebuildingTables => self.rebuild_tables(),
            Phase::RefreshingBinlogs => {
                self.refresh_binlogs()?;
                self.start_server_for_apply()?;
                self.set_phase(if self.state.binlogs.is_empty() {
                    Phase::Finalizing
                } else {
                    Phase::ApplyingBinlogs
                });
                Ok(())
            }
            Phase::ApplyingBinlogs => self.apply_next_batch(),
            Phase::WaitingForApplyToFinish => self.wait_for_apply(),
            Phase::Finalizing => self.finalize(),
            Phase::Completed
            | Phase::Failed
            | Phase::FailedBasebackup
            | Phase::BrokenBasebackup => Ok(()),
        }
    }

    fn get_backup_info(&mut self) -> anyhow::Result<()> {
        let site = self.site()?;
        let storage = Arc::clone(&site.storage);
        let prefix = self.stream_prefix();
        let info: BasebackupInfo = remote::read_json_object(
            storage.as_ref(),
            &format!("{prefix}/{}", layout::BASEBACKUP_INFO_NAME),
        )?;
        match storage.head(&format!("{prefix}/{}", layout::BROKEN_NAME)) {
            Ok(_) => {
                self.state.failure = Some("the backup is marked broken".to_owned());
                self.set_phase(Phase::BrokenBasebackup);
                return Ok(());
            }
            Err(err) if err.kind() == crate::storage::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        if info.uploaded_from == self.ctx.config.server_id {
            bail!(Permanent(format!(
                "this server's server_id {} is the backup source's: a restored server needs its \
                 own server_id, or its applier skips every replayed transaction",
                info.uploaded_from
            )));
        }
        self.state.basebackup_compressed_bytes_total = info.compressed_size;
        self.state.basebackup_info = Some(info);
        if matches!(self.target()?, RestoreTarget::Latest) {
            let backups = self.completed_backups()?;
            // Only a restore of the newest backup follows newer ones: one of an older backup
            // to its latest transaction means the end of that backup's stream.
            self.state.follows_newer_backups = backups
                .last()
                .is_some_and(|newest| newest.stream_id == self.state.options.stream_id);
        }
        self.set_phase(Phase::InitiatingBinlogDownloads);
        Ok(())
    }

    /// The site's completed, unbroken backups, oldest completion first.
    fn completed_backups(&self) -> anyhow::Result<Vec<remote::BackupEntry>> {
        let site = self.site()?;
        let mut backups: Vec<remote::BackupEntry> = remote::list_site_backups(
            site.storage.as_ref(),
            &self.state.options.site,
            false,
            &mut BTreeMap::new(),
        )?
        .into_iter()
        .filter(|b| b.completed_at.is_some() && b.broken_at.is_none())
        .collect();
        backups.sort_by(|a, b| {
            let at = |entry: &remote::BackupEntry| entry.completed_at.unwrap_or_default();
            at(a).total_cmp(&at(b))
        });
        Ok(backups)
    }

    /// The last stream whose binlogs the restore replays: the snapshot's, or the newest
    /// followed one's.
    fn current_stream_id(&self) -> &str {
        self.state
            .followed_streams
            .last()
            .map_or(self.snapshot_stream_id(), String::as_str)
    }

    /// Everything the planned binlogs and the snapshot hold.
    fn planned_gtids(&self) -> GtidSet {
        let mut gtids = self
            .state
            .basebackup_info
            .as_ref()
            .map(|info| info.gtid_executed.clone())
            .unwrap_or_default();
        for binlog in &self.state.binlogs {
            gtids.union_with(&binlog.gtids());
        }
        gtids
    }

    /// Takes the next backup completed after the current stream's, if its snapshot lies within
    /// what is planned (so its binlogs continue ours without a gap). Returns whether one was
    /// taken.
    fn follow_newer_backup(&mut self) -> anyhow::Result<bool> {
        let backups = self.completed_backups()?;
        let current = self.current_stream_id().to_owned();
        let Some(current_completed) = backups
            .iter()
            .find(|b| b.stream_id == current)
            .and_then(|b| b.completed_at)
        else {
            // The current backup is gone from the listing (retention): nothing to order by.
            return Ok(false);
        };
        let Some(next) = backups.into_iter().find(|b| {
            b.completed_at.is_some_and(|at| at > current_completed)
                && b.stream_id != self.state.options.stream_id
                && !self.state.followed_streams.contains(&b.stream_id)
        }) else {
            return Ok(false);
        };
        let Some(next_info) = next.basebackup_info.as_ref() else {
            return Ok(false);
        };
        let planned = self.planned_gtids();
        if !planned.contains(&next_info.gtid_executed) {
            log::warn!(
                "backup {} completed after {current}, but its snapshot holds transactions the \
                 stored binlogs do not reach ({}): the restore ends where they do",
                next.stream_id,
                next_info.gtid_executed.difference(&planned)
            );
            return Ok(false);
        }
        log::info!(
            "backup {} completed after {current}: its binlogs continue the restore",
            next.stream_id
        );
        self.state.followed_streams.push(next.stream_id);
        self.save();
        Ok(true)
    }

    fn target(&self) -> anyhow::Result<RestoreTarget> {
        let options = &self.state.options;
        Ok(match (&options.target_gtid, options.target_time) {
            (Some(gtid), _) => RestoreTarget::Gtid(
                gtid.parse::<Gtid>()
                    .map_err(|e| anyhow!(Permanent(format!("target GTID {gtid}: {e}"))))?,
            ),
            (None, Some(epoch)) => RestoreTarget::time(epoch, options.target_time_approximate_ok)
                .ok_or_else(|| {
                anyhow!(Permanent(format!("target time {epoch} is out of range")))
            })?,
            (None, None) => RestoreTarget::Latest,
        })
    }

    /// Lists the binlog streams from the last one with planned binlogs on, and appends what
    /// the target needs that is not planned yet: from the snapshot's stream, its binlogs from
    /// the snapshot on; from each stream after it, those that continue the plan, once its
    /// snapshot lies within the plan (so that nothing between them is missing). Planned
    /// binlogs stay as they are; a stream before one that has planned binlogs takes no more
    /// (the later one holds what it would add).
    fn refresh_binlogs(&mut self) -> anyhow::Result<()> {
        let info = self
            .state
            .basebackup_info
            .clone()
            .context("no snapshot info")?;
        let site = self.site()?;
        let storage = Arc::clone(&site.storage);
        let target = self.target()?;
        let streams = self.binlog_streams();
        let site_name = self.state.options.site.clone();
        let in_stream = |binlog: &BinlogInfo, stream: &str| {
            let prefix = format!("{}/", layout::stream_prefix(&site_name, stream));
            binlog
                .remote_key
                .as_deref()
                .is_some_and(|key| key.starts_with(&prefix))
        };
        let open_from = streams
            .iter()
            .rposition(|stream| self.state.binlogs.iter().any(|b| in_stream(b, stream)))
            .unwrap_or(0);
        let known = self.state.binlogs.len();
        for (position, stream) in streams.iter().enumerate().skip(open_from) {
            if self.state.target_reached || target_within(&self.state.binlogs, &target) {
                break;
            }
            let prefix = layout::stream_prefix(&site_name, stream);
            let all = remote::valid_remote_binlogs(storage.as_ref(), &prefix)?;
            let new = if position == 0 {
                let planned = self.state.binlogs.len();
                binlogs_needed(all, Some(&info), &target)
                    .into_iter()
                    .skip(planned)
                    .collect()
            } else {
                let stream_info: BasebackupInfo = remote::read_json_object(
                    storage.as_ref(),
                    &format!("{prefix}/{}", layout::BASEBACKUP_INFO_NAME),
                )?;
                let planned = self.planned_gtids();
                if !planned.contains(&stream_info.gtid_executed) {
                    log::warn!(
                        "the binlogs planned so far do not reach backup {stream}'s snapshot \
                         (missing {}): its binlogs cannot follow yet",
                        stream_info.gtid_executed.difference(&planned)
                    );
                    break;
                }
                binlogs_needed(
                    continuing_binlogs(all, &self.state.binlogs, planned),
                    None,
                    &target,
                )
            };
            self.state.binlogs.extend(new);
        }
        if self.state.binlogs.len() > known {
            log::info!(
                "{} binlogs to replay ({} new)",
                self.state.binlogs.len(),
                self.state.binlogs.len() - known
            );
            self.save();
        }
        Ok(())
    }

    fn restore_basebackup(&mut self) -> anyhow::Result<()> {
        let info = self
            .state
            .basebackup_info
            .clone()
            .context("no snapshot info")?;
        let site = self.site()?;
        let storage = Arc::clone(&site.storage);
        let private_key = site.private_key.clone();
        let ctx = Arc::clone(&self.ctx);
        let config = &ctx.config;
        mysqld::stop(&config.mysqld).context("stopping mysqld before the snapshot restore")?;
        wipe_server_files(config)?;
        self.set_phase(Phase::RestoringBasebackup);
        let work_dir = config.temporary_directory.join("myhoard-restore");
        if work_dir.exists() {
            std::fs::remove_dir_all(&work_dir)
                .with_context(|| format!("removing {}", work_dir.display()))?;
        }
        let algorithm: Algorithm = info
            .compression_algorithm
            .as_deref()
            .unwrap_or("snappy")
            .parse()
            .map_err(|e| anyhow!(Permanent(format!("snapshot compression: {e}"))))?;
        let status = Arc::clone(&self.status);
        let metrics = self.ctx.metrics.clone();
        let restore_started = Instant::now();
        let progress = move |progress: &basebackup::RestoreProgress| {
            metrics.gauge(
                "myhoard.restore.basebackup_bytes_downloaded",
                progress.downloaded_bytes,
                &[],
            );
            if let Some(percent) = progress.prepare_percent {
                metrics.gauge(
                    "myhoard.basebackup_restore.xtrabackup_prepare_progress",
                    percent,
                    &[],
                );
            }
            if let Ok(mut status) = status.lock() {
                status.basebackup_compressed_bytes_downloaded = progress.downloaded_bytes;
                status.basebackup_prepare_progress = progress.prepare_percent;
                if progress.prepare_percent.is_some() {
                    status.phase = Phase::PreparingBackup;
                }
            }
        };
        let tool = info
            .snapshot_tool
            .as_deref()
            .unwrap_or("xtrabackup")
            .parse()
            .map_err(|e| anyhow!(Permanent(format!("snapshot tool: {e}"))))?;
        let job = RestoreSnapshotJob {
            tool,
            number_of_splits: info.number_of_splits,
            storage: storage.as_ref(),
            key_prefix: &self.stream_prefix(),
            algorithm,
            private_key: Some(&private_key),
            config,
            work_dir: &work_dir,
            cancel: &self.stop,
            progress: &progress,
        };
        let restored = basebackup::restore_snapshot(&job).map_err(|err| {
            if matches!(err, basebackup::Error::Integrity { .. }) {
                anyhow!(Permanent(format!("snapshot integrity check failed: {err}")))
            } else {
                anyhow!(err)
            }
        })?;
        log::info!(
            "snapshot restored into {}: {restored:?}",
            config.mysql.data_directory.display()
        );
        self.ctx.metrics.gauge(
            "myhoard.basebackup_restore.total_time",
            restore_started.elapsed().as_secs_f64(),
            &[],
        );
        self.state.basebackup_compressed_bytes_downloaded = info.compressed_size;
        self.state.basebackup_prepare_progress = Some(100.0);
        self.set_phase(if self.state.options.rebuild_tables {
            Phase::RebuildingTables
        } else {
            Phase::RefreshingBinlogs
        });
        Ok(())
    }

    /// `rebuild_tables`: `ALTER TABLE ... FORCE` on every InnoDB table of the restored
    /// snapshot before any binlog is replayed, as MyHoard does for tables whose on-disk format
    /// an upgrade left damaged. Rewrites are not binlogged; each finished table is recorded, so
    /// a resumed restore goes on with the next. Duplicate-key, BLOB-key and key-too-long
    /// refusals (1062, 1148, 1291) leave that table as it is.
    fn rebuild_tables(&mut self) -> anyhow::Result<()> {
        const REBUILD_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
        const LEFT_AS_IS: [u16; 3] = [1062, 1148, 1291];
        self.start_server_for_apply()?;
        let mut client =
            Client::connect_with_timeout(&self.ctx.config.mysql.client_params, REBUILD_TIMEOUT)?;
        let flavor = client.flavor();
        client.execute_all(&flavor.table_rebuild_session_statements())?;
        let tables = client.innodb_tables()?;
        let start = self
            .state
            .last_rebuilt_table
            .as_ref()
            .and_then(|last| tables.iter().position(|table| table == last))
            .map_or(0, |done| done + 1);
        for (number, (schema, table)) in tables.iter().enumerate().skip(start) {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let started = Instant::now();
            match client.execute(&flavor.rebuild_table_statement(schema, table)) {
                Ok(()) => log::info!(
                    "rebuilt table {schema}.{table} ({} of {}) in {:.1?}",
                    number + 1,
                    tables.len(),
                    started.elapsed()
                ),
                Err(err) if err.code().is_some_and(|code| LEFT_AS_IS.contains(&code)) => {
                    log::warn!("table {schema}.{table} left as it is: {err}");
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("rebuilding table {schema}.{table}"));
                }
            }
            self.state.last_rebuilt_table = Some((schema.clone(), table.clone()));
            self.save();
        }
        self.set_phase(Phase::RefreshingBinlogs);
        Ok(())
    }

    fn connect(&mut self) -> anyhow::Result<Client> {
        let client = Client::connect(&self.ctx.config.mysql.client_params)?;
        self.flavor = Some(client.flavor());
        Ok(client)
    }

    fn flavor(&mut self) -> anyhow::Result<Flavor> {
        if let Some(flavor) = self.flavor {
            return Ok(flavor);
        }
        Ok(self.connect()?.flavor())
    }

    /// Starts the server the way the applier needs it, once (the options are persisted, so a
    /// resumed restore does not restart a server that already runs with them).
    fn start_server_for_apply(&mut self) -> anyhow::Result<()> {
        let info = self
            .state
            .basebackup_info
            .clone()
            .context("no snapshot info")?;
        let config = &self.ctx.config;
        let flavor = info
            .server_version
            .as_deref()
            .context("the backup does not record its server version")
            .and_then(|version| Ok(Flavor::parse(version)?))
            .map_err(|e| anyhow!(Permanent(format!("{e:#}"))))?;
        self.flavor = Some(flavor);
        let mut apply_options = apply::apply_mysqld_options(
            flavor,
            config.server_id,
            info.uploaded_from,
            &config.mysql.relay_log_prefix,
            &config.mysql.relay_log_index_file,
        )
        .map_err(|e| anyhow!(Permanent(format!("{e:#}"))))?;
        // No fsync per replayed commit: each commit still reaches the OS, so a crash of mysqld
        // loses nothing; only an OS crash can lose the last second, and after one the restore
        // is started over. The final restart goes back to the server's own settings.
        apply_options.extend([
            "--innodb-flush-log-at-trx-commit=2".to_owned(),
            "--sync-binlog=0".to_owned(),
        ]);
        let options = ServerOptions {
            with_binlog: flavor.is_mariadb(),
            with_gtids: true,
            options: apply_options,
        };
        if self.state.server_options.as_ref() != Some(&options) {
            mysqld::restart(&config.mysqld, &config.mysql.client_params, &options)?;
            self.state.server_options = Some(options);
            self.save();
        }
        let mut apply_state = self.state.apply.clone().unwrap_or_else(|| {
            ApplyState::new(
                config.mysql.relay_log_prefix.clone(),
                config.mysql.relay_log_index_file.clone(),
            )
        });
        if !apply_state.prepared {
            let mut client = self.connect()?;
            let mut save = self.saver();
            apply::prepare_server(
                &mut client,
                &mut apply_state,
                &info.gtid_executed,
                &mut save,
            )?;
            self.state.apply = Some(apply_state);
            self.save();
        }
        Ok(())
    }

    /// The persistence callback the applier steps take: the whole restore state with the
    /// applier's part replaced.
    fn saver(&self) -> impl FnMut(&ApplyState) -> std::io::Result<()> + use<> {
        let mut snapshot = self.state.clone();
        let path = self.path.clone();
        move |apply: &ApplyState| {
            snapshot.apply = Some(apply.clone());
            state_files::write_json(&path, &snapshot).map_err(std::io::Error::other)
        }
    }

    fn downloads(&mut self) -> anyhow::Result<&mut Downloads> {
        if self.downloads.is_none() {
            let site = self.site()?;
            self.downloads = Some(Downloads::start(
                Arc::clone(&site.storage),
                site.private_key.clone(),
                self.ctx.config.restore.download_workers,
                self.ctx.config.mysql.relay_log_prefix.clone(),
            )?);
        }
        self.downloads
            .as_mut()
            .ok_or_else(|| anyhow!("downloader pool missing"))
    }

    /// Queues downloads within the disk budget and returns the files downloaded so far, in
    /// order, from the first not yet applied.
    fn prefetch(&mut self) -> anyhow::Result<Vec<(BinlogInfo, PathBuf)>> {
        let budget = self.ctx.config.restore.max_binlog_bytes;
        let first = self.state.binlogs_restored + self.state.applying;
        let wanted: Vec<BinlogInfo> = self.state.binlogs[first..].to_vec();
        let applying_bytes: u64 = self.state.binlogs[self.state.binlogs_restored..first]
            .iter()
            .map(|b| b.file_size)
            .sum();
        let downloads = self.downloads()?;
        downloads.collect_results()?;
        let mut used = applying_bytes + downloads.bytes_held();
        for (slot, binlog) in (first..).zip(&wanted) {
            if downloads.is_known(slot) {
                continue;
            }
            // At least one file is always allowed, as in MyHoard.
            if used > 0 && used + binlog.file_size > budget {
                break;
            }
            used += binlog.file_size;
            downloads.queue(slot, binlog.clone())?;
        }
        let mut ready = Vec::new();
        for (slot, binlog) in (first..).zip(wanted) {
            match downloads.ready_path(slot) {
                Some(path) => ready.push((binlog, path)),
                None => break,
            }
        }
        Ok(ready)
    }

    fn apply_next_batch(&mut self) -> anyhow::Result<()> {
        let mut apply_state = self.state.apply.clone().context("apply not prepared")?;
        if apply_state.batch.is_some() && !self.state.batch.is_empty() {
            // A crash while handing the batch over: hand the same batch over again.
            return self.hand_over(apply_state);
        }
        if self.state.binlogs_restored >= self.state.binlogs.len() {
            if !self.state.target_reached && self.state.options.target_time.is_none() {
                // Uploads that arrived while the planned ones were applied, and then those of
                // backups completed since.
                self.refresh_binlogs()?;
                while self.state.binlogs_restored >= self.state.binlogs.len()
                    && self.state.follows_newer_backups
                    && self.follow_newer_backup()?
                {
                    self.refresh_binlogs()?;
                }
            }
            if self.state.binlogs_restored >= self.state.binlogs.len() {
                self.set_phase(Phase::Finalizing);
            }
            return Ok(());
        }
        let ready = self.prefetch()?;
        if ready.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        let flavor = self.flavor()?;
        let info = self
            .state
            .basebackup_info
            .clone()
            .context("no snapshot info")?;
        let mut planner =
            StopPlanner::new(flavor, apply_state.applied_gtids.clone(), self.target()?)
                .map_err(|e| anyhow!(Permanent(format!("{e:#}"))))?;
        let mut batch = Vec::new();
        let mut consumed = 0;
        for (binlog, path) in &ready {
            if planner.is_reached() {
                break;
            }
            let position = self.state.binlogs_restored + consumed;
            let start_pos = if position == 0 {
                info.binlog_position.unwrap_or(4)
            } else {
                4
            };
            let before = planner.clone();
            let plan = planner
                .plan_file(&BinlogFile {
                    path: path.clone(),
                    source_file: binlog.file_name.clone(),
                    start_pos,
                })
                .map_err(|e| anyhow!(Permanent(format!("{}: {e:#}", binlog.file_name))))?;
            if !batch.is_empty() && plan.is_applied() && plan.start_pos > start_pos.max(4) {
                // It starts after transactions held already (MariaDB, the first binlog of a
                // promoted server): only a batch's first file can start inside it.
                planner = before;
                break;
            }
            consumed += 1;
            if plan.is_applied() {
                batch.push(BatchRecord {
                    path: path.clone(),
                    plan,
                });
            } else {
                log::info!("{}: nothing to apply from it", binlog.file_name);
                let _ = std::fs::remove_file(path);
            }
        }
        let reached = planner.is_reached();
        let first_slot = self.state.binlogs_restored;
        let downloads = self.downloads()?;
        for slot in first_slot..first_slot + consumed {
            downloads.handed_over(slot);
        }
        if reached {
            self.state.target_reached = true;
        }
        if batch.is_empty() {
            self.ctx
                .metrics
                .increase_by("myhoard.restore.binlogs_restored", consumed, &[]);
            self.state.binlogs_restored += consumed;
            if reached {
                self.drop_unneeded_binlogs();
            }
            self.save();
            return Ok(());
        }
        self.state.applying = consumed;
        self.state.batch = batch;
        self.save();
        apply_state = self.state.apply.clone().context("apply not prepared")?;
        self.hand_over(apply_state)
    }

    fn hand_over(&mut self, mut apply_state: ApplyState) -> anyhow::Result<()> {
        let files: Vec<BatchFile> = self
            .state
            .batch
            .iter()
            .map(|record| BatchFile {
                path: record.path.clone(),
                plan: record.plan.clone(),
            })
            .collect();
        let mut client = self.connect()?;
        let mut save = self.saver();
        apply::apply_batch(&mut client, &mut apply_state, &files, &mut save)?;
        self.state.apply = Some(apply_state);
        self.set_phase(Phase::WaitingForApplyToFinish);
        Ok(())
    }

    /// After the target: the binlogs beyond it are not needed (nor downloaded further).
    fn drop_unneeded_binlogs(&mut self) {
        let keep = self.state.binlogs_restored + self.state.applying;
        self.state.binlogs.truncate(keep);
        if let Some(downloads) = self.downloads.take() {
            downloads.shut_down();
        }
        remove_prefetched(&self.ctx.config.mysql.relay_log_prefix);
    }

    fn wait_for_apply(&mut self) -> anyhow::Result<()> {
        // Keep downloads flowing for the next batch while this one applies.
        if !self.state.target_reached {
            self.prefetch()?;
        }
        let mut apply_state = self.state.apply.clone().context("apply not prepared")?;
        let mut client = self.connect()?;
        if self.force.load(Ordering::SeqCst) {
            log::warn!("forced: finishing the restore without waiting for the batch");
            client.execute(&client.flavor().stop_replica_statement())?;
            self.state.target_reached = true;
            self.drop_unneeded_binlogs();
            self.set_phase(Phase::Finalizing);
            return Ok(());
        }
        let mut save = self.saver();
        let progress = apply::poll_batch(
            &mut client,
            &mut apply_state,
            Duration::from_millis(500),
            &mut save,
        )?;
        self.state.apply = Some(apply_state);
        match progress {
            Progress::Running { restarted, .. } => {
                if restarted {
                    log::warn!("the SQL thread was not running; started it again");
                    self.ctx.metrics.increase(
                        "myhoard.unexpected_sql_thread_starts",
                        &[("sql.errno", "0")],
                    );
                }
                self.save();
                Ok(())
            }
            Progress::Failed { errno, message } => {
                // apply_batch with the same batch starts the SQL thread again.
                self.ctx.metrics.increase(
                    "myhoard.unexpected_sql_thread_starts",
                    &[("sql.errno", &errno.to_string())],
                );
                self.set_phase(Phase::ApplyingBinlogs);
                bail!("the applier stopped with error {errno}: {message}")
            }
            Progress::Done => {
                self.ctx.metrics.increase_by(
                    "myhoard.restore.binlogs_restored",
                    self.state.applying,
                    &[],
                );
                self.state.binlogs_restored += self.state.applying;
                self.state.applying = 0;
                self.state.batch.clear();
                log::info!(
                    "applied {} of {} binlogs",
                    self.state.binlogs_restored,
                    self.state.binlogs.len()
                );
                if self.state.target_reached {
                    self.drop_unneeded_binlogs();
                }
                self.set_phase(Phase::ApplyingBinlogs);
                Ok(())
            }
        }
    }

    fn finalize(&mut self) -> anyhow::Result<()> {
        if let Some(mut apply_state) = self.state.apply.clone()
            && !apply_state.finished
        {
            let mut client = self.connect()?;
            let mut save = self.saver();
            apply::finish(&mut client, &mut apply_state, &mut save)?;
            self.state.apply = Some(apply_state);
            self.save();
        }
        if let Some(downloads) = self.downloads.take() {
            downloads.shut_down();
        }
        remove_prefetched(&self.ctx.config.mysql.relay_log_prefix);
        let config = &self.ctx.config;
        mysqld::restart(
            &config.mysqld,
            &config.mysql.client_params,
            &ServerOptions {
                with_binlog: true,
                with_gtids: true,
                options: Vec::new(),
            },
        )?;
        self.state.server_options = None;
        self.set_phase(Phase::Completed);
        log::info!("restore of {} completed", self.state.options.stream_id);
        Ok(())
    }
}

/// Whether the planned binlogs already hold a GTID target (nothing after them is needed).
/// Time targets are cut while listing, by [`binlogs_needed`].
fn target_within(planned: &[BinlogInfo], target: &RestoreTarget) -> bool {
    match target {
        RestoreTarget::Gtid(gtid) => planned.iter().any(|b| b.gtids().contains_gtid(gtid)),
        RestoreTarget::Latest | RestoreTarget::Time { .. } => false,
    }
}

/// A followed stream's binlogs that continue the planned ones: those not planned yet (by
/// object key) that hold a transaction nothing planned holds. The newer stream's first binlogs
/// repeat the previous stream's last ones, which the previous stream's objects already cover.
fn continuing_binlogs(
    stream: Vec<BinlogInfo>,
    planned: &[BinlogInfo],
    mut planned_gtids: GtidSet,
) -> Vec<BinlogInfo> {
    let planned_keys: std::collections::BTreeSet<&str> = planned
        .iter()
        .filter_map(|b| b.remote_key.as_deref())
        .collect();
    let mut new = Vec::new();
    for binlog in stream {
        if binlog
            .remote_key
            .as_deref()
            .is_some_and(|key| planned_keys.contains(key))
        {
            continue;
        }
        let gtids = binlog.gtids();
        if planned_gtids.contains(&gtids) {
            continue;
        }
        planned_gtids.union_with(&gtids);
        new.push(binlog);
    }
    new
}

/// The binlogs a restore to `target` needs, from a stream's valid sequence: from the one the
/// snapshot ended in on, and none that starts after the target (by the binlog metadata's
/// transaction timestamps, whole seconds, or its GTID ranges). The exact stop inside the last
/// one is the applier's plan.
fn binlogs_needed(
    all: Vec<BinlogInfo>,
    snapshot: Option<&BasebackupInfo>,
    target: &RestoreTarget,
) -> Vec<BinlogInfo> {
    let start = snapshot
        .and_then(|info| {
            all.iter()
                .position(|b| Some(b.file_name.as_str()) == info.binlog_name.as_deref())
        })
        .unwrap_or(0);
    let mut needed = Vec::new();
    for binlog in all.into_iter().skip(start) {
        match target {
            RestoreTarget::Latest => {}
            RestoreTarget::Time { at, .. } => {
                let first_ts = binlog.gtid_ranges.iter().map(|r| r.start_ts as i64).min();
                if first_ts.is_some_and(|ts| ts > at.timestamp()) {
                    break;
                }
            }
            RestoreTarget::Gtid(gtid) => {
                let contains = binlog.gtids().contains_gtid(gtid);
                needed.push(binlog);
                if contains {
                    break;
                }
                continue;
            }
        }
        needed.push(binlog);
    }
    needed
}

/// The backoff before retry `attempt` (from 1) of a failed step: 1.5 s growing to a minute.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs_f64(1.5f64.powi(attempt.min(12) as i32).min(60.0))
}

fn is_terminal(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Completed | Phase::Failed | Phase::FailedBasebackup | Phase::BrokenBasebackup
    )
}

/// A phase as `GET /status/restore` names it (`failed_basebackup`), for metric tags.
fn phase_name(phase: Phase) -> String {
    match serde_json::to_value(phase) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{phase:?}"),
    }
}

fn is_permanent(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<Permanent>()
            || cause
                .downcast_ref::<pipeline::Error>()
                .is_some_and(|e| matches!(e, pipeline::Error::Encryption(_)))
    })
}

/// Deletes what the server's previous life left: the data directory's contents and its own
/// binlogs and relay logs (their GTID state would clash with the restored one).
fn wipe_server_files(config: &crate::config::Config) -> anyhow::Result<()> {
    let data = &config.mysql.data_directory;
    if data.exists() {
        for entry in
            std::fs::read_dir(data).with_context(|| format!("listing {}", data.display()))?
        {
            let path = entry?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for prefix in [&config.mysql.binlog_prefix, &config.mysql.relay_log_prefix] {
        remove_with_prefix(prefix)?;
    }
    for file in [&config.mysql.relay_log_index_file] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// Removes `<prefix>.*` files.
fn remove_with_prefix(prefix: &Path) -> anyhow::Result<()> {
    let Some(dir) = prefix.parent() else {
        return Ok(());
    };
    let Some(stem) = prefix.file_name().map(|s| s.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}.")) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Removes `<relay prefix>.prefetch.<slot>.part` files; complete downloads are kept.
fn remove_partial_downloads(relay_prefix: &Path) {
    let Some(dir) = relay_prefix.parent() else {
        return;
    };
    let Some(stem) = relay_prefix
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}.prefetch.")) && name.ends_with(".part") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => log::info!("removed the partial download {name}"),
                Err(err) => log::warn!("removing the partial download {name}: {err}"),
            }
        }
    }
}

fn remove_prefetched(relay_prefix: &Path) {
    let Some(dir) = relay_prefix.parent() else {
        return;
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(".prefetch") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

// --- the downloader pool ---------------------------------------------------------------------

/// A binlog's place in the restore's plan (`RestoreState::binlogs`): unique across the
/// streams a restore replays, where remote indexes restart at 1 in each.
type Slot = usize;

struct DownloadJob {
    slot: Slot,
    binlog: BinlogInfo,
    path: PathBuf,
}

struct DownloadResult {
    slot: Slot,
    result: Result<(), String>,
    integrity: bool,
}

/// `downloader-N` threads fetching binlogs into `<relay prefix>.prefetch.<slot>` files.
struct Downloads {
    jobs: Option<Sender<DownloadJob>>,
    results: Receiver<DownloadResult>,
    threads: Vec<std::thread::JoinHandle<()>>,
    relay_prefix: PathBuf,
    /// slot → (file size, downloaded path once done).
    known: BTreeMap<Slot, (u64, Option<PathBuf>)>,
    failures: BTreeMap<Slot, u32>,
    retry: VecDeque<(Slot, BinlogInfo)>,
    infos: BTreeMap<Slot, BinlogInfo>,
}

impl Downloads {
    fn start(
        storage: Arc<dyn crate::storage::ObjectStorage>,
        private_key: crate::pipeline::encrypt::PrivateKey,
        workers: usize,
        relay_prefix: PathBuf,
    ) -> anyhow::Result<Downloads> {
        // A daemon killed while downloading left its partial files: nothing resumes them, and
        // until their slot is queued again they would hold disk outside the budget.
        remove_partial_downloads(&relay_prefix);
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<DownloadJob>();
        let (results_tx, results_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        for n in 0..workers.max(1) {
            let jobs = jobs_rx.clone();
            let results = results_tx.clone();
            let storage = Arc::clone(&storage);
            let key = private_key.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("downloader-{n}"))
                    .spawn(move || {
                        for job in jobs {
                            let (result, integrity) =
                                download_binlog(storage.as_ref(), &key, &job.binlog, &job.path);
                            let _ = results.send(DownloadResult {
                                slot: job.slot,
                                result,
                                integrity,
                            });
                        }
                    })?,
            );
        }
        Ok(Downloads {
            jobs: Some(jobs_tx),
            results: results_rx,
            threads,
            relay_prefix,
            known: BTreeMap::new(),
            failures: BTreeMap::new(),
            retry: VecDeque::new(),
            infos: BTreeMap::new(),
        })
    }

    fn path_for(&self, slot: Slot) -> PathBuf {
        let mut path = self.relay_prefix.as_os_str().to_owned();
        path.push(format!(".prefetch.{slot:06}"));
        PathBuf::from(path)
    }

    fn is_known(&self, slot: Slot) -> bool {
        self.known.contains_key(&slot)
    }

    fn bytes_held(&self) -> u64 {
        self.known.values().map(|(size, _)| size).sum()
    }

    fn queue(&mut self, slot: Slot, binlog: BinlogInfo) -> anyhow::Result<()> {
        let path = self.path_for(slot);
        self.infos.insert(slot, binlog.clone());
        // A daemon killed before this one may have fetched this file already. It is renamed
        // into place only once complete and checked, so it is kept: downloading it again would
        // hold it twice on disk meanwhile, over `restore_max_binlog_bytes`.
        if std::fs::metadata(&path).is_ok_and(|meta| meta.len() == binlog.file_size) {
            log::info!("{}: downloaded before the restart, kept", binlog.file_name);
            self.known.insert(slot, (binlog.file_size, Some(path)));
            return Ok(());
        }
        self.known.insert(slot, (binlog.file_size, None));
        let jobs = self.jobs.as_ref().context("downloader pool stopped")?;
        jobs.send(DownloadJob { slot, binlog, path })
            .map_err(|_| anyhow!("downloader pool stopped"))
    }

    fn collect_results(&mut self) -> anyhow::Result<()> {
        while let Ok(DownloadResult {
            slot,
            result,
            integrity,
        }) = self.results.try_recv()
        {
            let name = self
                .infos
                .get(&slot)
                .map(|info| info.file_name.clone())
                .unwrap_or_default();
            match result {
                Ok(()) => {
                    let path = self.path_for(slot);
                    if let Some(entry) = self.known.get_mut(&slot) {
                        entry.1 = Some(path);
                    }
                }
                Err(message) if integrity => {
                    bail!(Permanent(format!(
                        "binlog {name} failed its integrity check: {message}"
                    )));
                }
                Err(message) => {
                    let count = self.failures.entry(slot).or_default();
                    *count += 1;
                    log::error!("downloading binlog {name} failed (attempt {count}): {message}");
                    if *count >= MAX_DOWNLOAD_FAILURES {
                        bail!(Permanent(format!(
                            "downloading binlog {name} failed {MAX_DOWNLOAD_FAILURES} times: \
                             {message}"
                        )));
                    }
                    self.known.remove(&slot);
                    if let Some(info) = self.infos.get(&slot) {
                        self.retry.push_back((slot, info.clone()));
                    }
                }
            }
        }
        while let Some((slot, binlog)) = self.retry.pop_front() {
            self.queue(slot, binlog)?;
        }
        Ok(())
    }

    fn ready_path(&self, slot: Slot) -> Option<PathBuf> {
        self.known.get(&slot).and_then(|(_, path)| path.clone())
    }

    /// The file now belongs to the server's applier, which deletes it once applied.
    fn handed_over(&mut self, slot: Slot) {
        self.known.remove(&slot);
        self.infos.remove(&slot);
    }

    fn shut_down(mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Downloads one binlog to `path` through a temporary name, renamed into place only after the
/// integrity check passed. The bool tells an integrity failure from others.
pub(crate) fn download_binlog(
    storage: &dyn crate::storage::ObjectStorage,
    key: &crate::pipeline::encrypt::PrivateKey,
    binlog: &BinlogInfo,
    path: &Path,
) -> (Result<(), String>, bool) {
    let Some(remote_key) = binlog.remote_key.as_deref() else {
        return (Err("binlog without a remote key".to_owned()), false);
    };
    let algorithm: Algorithm = match binlog
        .compression_algorithm
        .as_deref()
        .unwrap_or("snappy")
        .parse()
    {
        Ok(algorithm) => algorithm,
        Err(err) => return (Err(err.to_string()), true),
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let result = (|| -> Result<(), pipeline::Error> {
        let file = std::fs::File::create(&partial).map_err(pipeline::Error::Sink)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        pipeline::download(storage, remote_key, &mut out, algorithm, Some(key))?;
        let file = out
            .into_inner()
            .map_err(|e| pipeline::Error::Sink(e.into_error()))?;
        file.sync_all().map_err(pipeline::Error::Sink)?;
        std::fs::rename(&partial, path).map_err(pipeline::Error::Sink)
    })();
    match result {
        Ok(()) => (Ok(()), false),
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            let integrity = matches!(err, pipeline::Error::Encryption(_));
            (Err(format!("{remote_key}: {err}")), integrity)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gtid::{GtidRange, Origin};

    #[test]
    fn only_partial_downloads_of_this_relay_prefix_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            ("relay.prefetch.000003.part", false),
            ("relay.prefetch.000004", true),
            ("relay.000001", true),
            ("relay.index", true),
            ("other.prefetch.000003.part", true),
        ];
        for (name, _) in names {
            std::fs::write(dir.path().join(name), b"bytes").expect("writing");
        }
        remove_partial_downloads(&dir.path().join("relay"));
        for (name, kept) in names {
            assert_eq!(dir.path().join(name).exists(), kept, "{name}");
        }
    }

    /// A binlog of stream `stream` holding MariaDB GTIDs 0-1-`start`..=`end` (none when
    /// `start` is 0).
    fn binlog(stream: &str, index: u64, start: u64, end: u64) -> BinlogInfo {
        let gtid_ranges = if start == 0 {
            Vec::new()
        } else {
            vec![GtidRange {
                end,
                end_ts: 1_700_000_000,
                server_id: 1,
                server_uuid: Origin::mariadb(0, 1),
                start,
                start_ts: 1_700_000_000,
            }]
        };
        BinlogInfo {
            file_name: format!("binlog.{index:06}"),
            file_size: 1000,
            full_name: format!("/var/lib/mysql/binlog.{index:06}"),
            gtid_ranges,
            local_index: index,
            processed_at: 0.0,
            processing_time: 0.0,
            server_id: 1,
            remote_index: Some(index),
            remote_key: Some(format!("default/{stream}/binlogs/0/{index}_1")),
            compression_algorithm: None,
            remote_file_size: None,
            extra: BTreeMap::new(),
        }
    }

    fn gtids_through(end: u64) -> GtidSet {
        let mut set = GtidSet::new();
        if end > 0 {
            let interval = crate::gtid::Interval::new(1, end).expect("interval");
            set.insert_interval(Origin::mariadb(0, 1), interval);
        }
        set
    }

    #[test]
    fn a_followed_stream_continues_after_what_is_planned() {
        /// Planned binlogs, the followed stream's, planned GTIDs 1..=n, the keys expected.
        type Case = (Vec<BinlogInfo>, Vec<BinlogInfo>, u64, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            // b starts inside a's last binlog (the same file): only b's later ones follow.
            (
                vec![binlog("a", 1, 1, 10), binlog("a", 2, 11, 20)],
                vec![binlog("b", 1, 11, 20), binlog("b", 2, 21, 30)],
                20,
                vec!["default/b/binlogs/0/2_1"],
            ),
            // Binlogs without transactions add nothing.
            (
                vec![binlog("a", 1, 1, 10)],
                vec![binlog("b", 1, 0, 0), binlog("b", 2, 11, 12)],
                10,
                vec!["default/b/binlogs/0/2_1"],
            ),
            // A second refresh of the same stream appends only what is new.
            (
                vec![binlog("a", 1, 1, 10), binlog("b", 2, 11, 12)],
                vec![
                    binlog("b", 1, 5, 10),
                    binlog("b", 2, 11, 12),
                    binlog("b", 3, 13, 15),
                ],
                12,
                vec!["default/b/binlogs/0/3_1"],
            ),
            // A binlog partly planned still follows: the applier skips what is held.
            (
                vec![binlog("a", 1, 1, 10)],
                vec![binlog("b", 1, 8, 14)],
                10,
                vec!["default/b/binlogs/0/1_1"],
            ),
            // Nothing new.
            (
                vec![binlog("a", 1, 1, 10)],
                vec![binlog("b", 1, 1, 10)],
                10,
                vec![],
            ),
        ];
        for (planned, stream, through, expected) in cases {
            let got = continuing_binlogs(stream, &planned, gtids_through(through));
            let keys: Vec<&str> = got.iter().filter_map(|b| b.remote_key.as_deref()).collect();
            assert_eq!(keys, expected, "planned through {through}");
        }
    }
}

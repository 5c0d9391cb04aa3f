//! Promote mode: a standby takes over the backup streams the old master was writing to.
//!
//! On a task thread, for each resumable, unclosed stream of the backup list:
//!
//! 1. The valid remote binlogs are listed (fenced by the existing `promotions/` records), and
//!    `promotions/<our server_id>` is written with `start_index` = the next index: from there
//!    on, only our uploads count for every reader, and whatever the deposed master still
//!    uploads is ignored.
//! 2. The binlogs are listed again *ignoring our own record*: an upload the old master
//!    finished in between is valid after all, and if the next index moved, the record is
//!    written again with it. (MyHoard's two-step write; it closes the race where a reader
//!    could use an old-master binlog the new master then overwrites in its timeline.)
//!
//!    The layout holds one record per server, so a record of ours already there can only be
//!    moved ([`layout::own_promotion`]). It is kept as it is while it still owns the stream's
//!    last binlogs (we started the stream, or uploaded under it) and nobody was promoted
//!    since. When another server was promoted after it (a failback to the old master), the
//!    stream is not taken over: moving our record would leave the indexes it covers without
//!    their owner and make the whole stream unreadable (no record from index 1). A new backup
//!    starts instead, as when there is no stream to take over, and once it is complete the
//!    old stream is closed (`closed.json`): it stays restorable up to its last binlog, and
//!    retention, which never purges an unclosed backup, can let it go in time. Not before:
//!    should this server fail before its own backup is complete, a server promoted then can
//!    still take the old stream over and keep the chain of binlogs unbroken.
//! 3. The stream's stored GTIDs (snapshot plus valid binlogs) must all be executed here. When
//!    some are not (replication was behind when the master died), the stored binlogs holding
//!    them are downloaded and applied through the server's own replication applier (the
//!    restore's relay-log replay, [`crate::restore::apply`]), then the takeover runs again.
//!    `PUT /status {"mode": "active", "force": true}` meanwhile accepts their loss. Nothing
//!    of that step is persisted: after a crash it starts over from the server's executed
//!    GTIDs, so what was applied already is not fetched again.
//!
//! The controller then owns the stream: it uploads, from the next index on, the first local
//! binlog holding a transaction the stream does not have and every one after it (MyHoard's
//! rule for a promoted server resuming someone else's stream; earlier local binlogs only hold
//! what the old master already stored). With no stream to take over, the node goes straight to
//! active, where the first backup is due at once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backup_stream::layout::{self, BinlogInfo, OwnPromotion, Promotion};
use crate::backup_stream::remote::{self, BackupEntry};
use crate::db::Client;
use crate::gtid::GtidSet;
use crate::restore::apply::{self, ApplyState, BinlogFile, Progress, RestoreTarget};
use crate::restore::coordinator::download_binlog;
use anyhow::Context as _;

use super::observe::{self, ObservedStream};
use super::state::{ActiveDetails, Mode, Phase, StreamState, SupersededStream};
use super::tasks::{self, Event};
use super::{Context, Controller, Stream, now_epoch};

/// How long promotion waits before trying again when the server lacks stored transactions.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The idle state of a replica's SQL thread (`Replica_SQL_Running_State`; MariaDB and older
/// MySQL say `Slave`).
const SQL_THREAD_IDLE: &str = "has read all relay log; waiting for more updates";

/// MyHoard's checks before a standby in observe mode may become active: the server is still
/// read-only (the HA system opens it for writes once promoted), its replication IO thread is
/// stopped (cut off from the old master), and its SQL thread, if running, has applied every
/// relay log; that thread is then stopped. No replication at all is accepted with a warning.
/// The error is the message for the refused request.
pub fn check_promotable(ctx: &Context) -> Result<(), String> {
    let check = || -> anyhow::Result<Result<(), String>> {
        let mut client = Client::connect(&ctx.config.mysql.client_params)?;
        if !client.read_only()? {
            return Ok(Err(
                "read_only is OFF: a standby is promoted while still read-only, \
                           and opened for writes after the promotion"
                    .to_owned(),
            ));
        }
        let Some(status) = client.replica_status()? else {
            log::warn!("promoting a server that has no replication configured");
            return Ok(Ok(()));
        };
        if status.io_running != "No" {
            return Ok(Err(format!(
                "the replication IO thread is {}: stop replicating from the old master first",
                status.io_running
            )));
        }
        if status.sql_running {
            if !status.sql_running_state.contains(SQL_THREAD_IDLE) {
                return Ok(Err(format!(
                    "the replication SQL thread is still applying relay logs ({}); promote \
                     once it has applied them",
                    status.sql_running_state
                )));
            }
            client.execute(&client.flavor().stop_sql_thread_statement())?;
        }
        Ok(Ok(()))
    };
    check().unwrap_or_else(|err| Err(format!("cannot check the server: {err:#}")))
}

/// The outcome of one promotion attempt.
#[derive(Debug)]
pub enum Takeover {
    /// The streams taken over, with their promotion records written, and those a failback
    /// cannot take back.
    Ready {
        taken: Vec<ObservedStream>,
        superseded: Vec<SupersededStream>,
    },
    /// The streams hold transactions this server has not executed.
    Missing {
        stream_id: String,
        missing: GtidSet,
        site: String,
        /// The stream's valid binlogs, in order.
        binlogs: Vec<BinlogInfo>,
    },
}

/// How long applying one batch of the missing binlogs may take before promotion gives up on
/// this attempt.
const APPLY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Downloads the stored binlogs from the first holding a transaction the server lacks, and
/// applies them with the relay-log replay, in batches that each fit in
/// `restore_max_binlog_bytes` of disk, as a restore does: each batch is downloaded, applied and
/// deleted before the next. Returns how many files were applied. Runs on a task thread.
pub fn apply_missing(ctx: &Context, site: &str, binlogs: &[BinlogInfo]) -> anyhow::Result<usize> {
    let handle = ctx
        .sites
        .get(site)
        .with_context(|| format!("unknown backup site {site}"))?;
    let mut client = Client::connect(&ctx.config.mysql.client_params)?;
    let executed = client.executed_gtids()?.to_gtid_set();
    let first_missing = binlogs
        .iter()
        .position(|binlog| !binlog.gtids().difference(&executed).is_empty());
    let Some(first_missing) = first_missing else {
        return Ok(0);
    };
    let mysql = &ctx.config.mysql;
    let cleanup = |files: &[BinlogFile]| {
        for file in files {
            let _ = std::fs::remove_file(&file.path);
        }
    };
    // A crash starts this step over from the server's GTIDs: nothing to persist.
    let mut save = |_: &ApplyState| Ok(());
    let mut state = ApplyState::new(
        mysql.relay_log_prefix.clone(),
        mysql.relay_log_index_file.clone(),
    );
    let mut held = executed;
    let mut n_applied = 0;
    let missing = &binlogs[first_missing..];
    let budget = ctx.config.restore.max_binlog_bytes;
    for batch in batches_within(missing, |binlog| binlog.file_size, budget) {
        let mut files = Vec::with_capacity(batch.len());
        for binlog in batch {
            let index = binlog.remote_index.unwrap_or(0);
            let path = PathBuf::from(format!(
                "{}.promote.{index:06}",
                mysql.relay_log_prefix.display()
            ));
            log::info!(
                "promotion: fetching stored binlog {index} ({})",
                binlog.file_name
            );
            if let (Err(message), _) =
                download_binlog(handle.storage.as_ref(), &handle.private_key, binlog, &path)
            {
                cleanup(&files);
                anyhow::bail!("downloading binlog {index}: {message}");
            }
            files.push(BinlogFile {
                path,
                source_file: binlog.file_name.clone(),
                start_pos: apply::BINLOG_START,
            });
        }
        let result = apply_files(&mut client, &mut state, &held, &files, &mut save);
        cleanup(&files);
        n_applied += result?;
        held = state.applied_gtids.clone();
    }
    if state.prepared {
        apply::finish(&mut client, &mut state, &mut save)?;
    }
    Ok(n_applied)
}

/// Consecutive runs of `files` whose sizes add up to at most `budget` bytes, each at least one
/// file (a file larger than the budget goes alone).
fn batches_within<T>(files: &[T], size: impl Fn(&T) -> u64, budget: u64) -> Vec<&[T]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut used = 0u64;
    for (index, file) in files.iter().enumerate() {
        if index > start && used.saturating_add(size(file)) > budget {
            batches.push(&files[start..index]);
            start = index;
            used = 0;
        }
        used = used.saturating_add(size(file));
    }
    if start < files.len() {
        batches.push(&files[start..]);
    }
    batches
}

/// Applies the downloaded `files` on top of `held` (what the server has) and waits until they
/// are applied; returns how many of them had transactions to apply.
fn apply_files(
    client: &mut Client,
    state: &mut ApplyState,
    held: &GtidSet,
    files: &[BinlogFile],
    save: &mut apply::SaveState<'_>,
) -> anyhow::Result<usize> {
    let batch =
        apply::plan(client.flavor(), held, files, &RestoreTarget::Latest)?.batch_files(files);
    if batch.is_empty() {
        return Ok(0);
    }
    apply::prepare_server(client, state, held, save)?;
    apply::apply_batch(client, state, &batch, save)?;
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        match apply::poll_batch(client, state, Duration::from_secs(5), save)? {
            Progress::Done => return Ok(batch.len()),
            Progress::Failed { errno, message } => {
                anyhow::bail!("the SQL thread failed: {errno} {message}")
            }
            Progress::Running { .. } if Instant::now() > deadline => {
                anyhow::bail!("not applied within {APPLY_TIMEOUT:?}")
            }
            Progress::Running { .. } => {}
        }
    }
}

/// Writes our promotion record to each stream of `backups` worth taking over (see the module
/// doc) and checks that this server has everything they store. Runs on a task thread.
pub fn take_over(
    ctx: &Context,
    backups: &[BackupEntry],
    server_id: u32,
    force: bool,
) -> anyhow::Result<Takeover> {
    let mut client = Client::connect(&ctx.config.mysql.client_params)?;
    let mut taken = Vec::new();
    let mut superseded = Vec::new();
    for (backup, info) in observe::observable(backups) {
        let Some(site) = ctx.sites.get(&backup.site) else {
            continue;
        };
        let storage = site.storage.as_ref();
        let prefix = layout::stream_prefix(&backup.site, &backup.stream_id);
        let key = layout::promotion_key(&prefix, server_id);
        let look = |ignore_own: bool| -> anyhow::Result<(u64, Vec<_>, Vec<Promotion>)> {
            let binlogs = remote::list_remote_binlogs(storage, &prefix)?;
            let mut promotions = remote::list_promotions(storage, &prefix)?;
            if ignore_own {
                promotions.retain(|promotion| promotion.server_id != server_id);
            }
            let valid = layout::valid_binlog_sequence(binlogs, &promotions)?;
            let next = valid
                .last()
                .and_then(|b| b.remote_index)
                .map_or(1, |i| i + 1);
            Ok((next, valid, promotions))
        };
        let next_index = |ignore_own: bool| -> anyhow::Result<(u64, Vec<_>)> {
            look(ignore_own).map(|(next, valid, _)| (next, valid))
        };
        let write_record = |start_index: u64| -> anyhow::Result<()> {
            let promotion = Promotion {
                promoted_at: now_epoch(),
                server_id,
                start_index,
            };
            remote::put_marker(storage, &key, &promotion).with_context(|| format!("writing {key}"))
        };
        let listing = || format!("listing the binlogs of {}", backup.stream_id);
        let (first_look, valid, promotions) = look(false).with_context(listing)?;
        let (second_look, binlogs) = match layout::own_promotion(&promotions, &valid, server_id) {
            OwnPromotion::Superseded { by, start_index } => {
                log::warn!(
                    "stream {}: not taken over: this server's promotions record was superseded \
                     by server {by}'s from binlog index {start_index}, and taking the stream \
                     back would need a second record of this server, which the layout cannot \
                     hold (moving ours would leave the indexes it covers without their \
                     owner); a new backup starts instead, and the stream is closed once that \
                     backup is complete",
                    backup.stream_id
                );
                superseded.push(SupersededStream {
                    site: backup.site.clone(),
                    stream_id: backup.stream_id.clone(),
                });
                continue;
            }
            OwnPromotion::Keep => {
                log::info!(
                    "stream {}: this server's promotions record still owns the stream's last \
                     binlogs and stays as it is",
                    backup.stream_id
                );
                (first_look, valid)
            }
            OwnPromotion::Write => {
                write_record(first_look)?;
                let (second_look, binlogs) = next_index(true).with_context(listing)?;
                if second_look != first_look {
                    log::info!(
                        "stream {}: the old master stored binlogs up to {} meanwhile",
                        backup.stream_id,
                        second_look - 1
                    );
                    write_record(second_look)?;
                }
                (second_look, binlogs)
            }
        };
        log::info!(
            "stream {}: binlogs from index {second_look} on are ours",
            backup.stream_id
        );
        let stream = ObservedStream::new(backup, info, binlogs);
        if !force {
            let executed = client.executed_gtids()?.to_gtid_set();
            let missing = stream.remote_gtids.difference(&executed);
            if !missing.is_empty() {
                return Ok(Takeover::Missing {
                    stream_id: stream.stream_id,
                    missing,
                    site: stream.site,
                    binlogs: stream.binlogs,
                });
            }
        }
        taken.push(stream);
    }
    Ok(Takeover::Ready { taken, superseded })
}

impl Controller {
    /// Promote mode, per tick: once the backup list is fresh, take the streams over on a task
    /// thread; then switch to active.
    pub(super) fn tick_promote(&mut self) {
        if !self.ensure_server_probed() || !self.binlogs_loaded {
            return;
        }
        if self.state.backups_fetched_at == 0.0 {
            self.refresh_backups_if_stale(0.0);
            return;
        }
        if self.refreshing
            || self.promoting
            || self
                .promote_retry_at
                .is_some_and(|at| std::time::Instant::now() < at)
        {
            return;
        }
        let candidates: Vec<BackupEntry> = observe::observable(&self.state.backups)
            .into_iter()
            .filter(|(backup, _)| !self.streams.contains_key(&backup.stream_id))
            .map(|(backup, _)| backup.clone())
            .collect();
        if candidates.is_empty() {
            self.state.force_promote = false;
            self.set_mode(Mode::Active);
            return;
        }
        self.promoting = true;
        let ctx = std::sync::Arc::clone(&self.ctx);
        let server_id = self.ctx.config.server_id;
        let force = self.state.force_promote;
        tasks::spawn("promote", &self.events_tx, move || {
            Event::TakenOver(
                take_over(&ctx, &candidates, server_id, force).map_err(|e| format!("{e:#}")),
            )
        });
    }

    pub(super) fn taken_over(&mut self, result: Result<Takeover, String>) {
        self.promoting = false;
        let streams = match result {
            Ok(Takeover::Ready { taken, superseded }) => {
                for stream in superseded {
                    if !self.state.superseded_streams.contains(&stream) {
                        self.state.superseded_streams.push(stream);
                    }
                }
                taken
            }
            Ok(Takeover::Missing {
                stream_id,
                missing,
                site,
                binlogs,
            }) => {
                log::warn!(
                    "promotion: backup stream {stream_id} stores transactions this server has \
                     not executed ({missing}); applying them from storage (PUT /status \
                     {{\"mode\": \"active\", \"force\": true}} accepts their loss instead)"
                );
                self.waiting_for_missing = true;
                self.promoting = true;
                let ctx = std::sync::Arc::clone(&self.ctx);
                tasks::spawn("promote-apply", &self.events_tx, move || {
                    Event::MissingApplied(
                        apply_missing(&ctx, &site, &binlogs).map_err(|e| format!("{e:#}")),
                    )
                });
                return;
            }
            Err(message) => {
                log::error!("promotion failed, retrying in {RETRY_INTERVAL:?}: {message}");
                self.promote_retry_at = Some(std::time::Instant::now() + RETRY_INTERVAL);
                return;
            }
        };
        self.waiting_for_missing = false;
        let now = now_epoch();
        for observed in streams {
            let info = &observed.basebackup_info;
            let stream_id = observed.stream_id.clone();
            let state = StreamState {
                stream_id: stream_id.clone(),
                site: observed.site.clone(),
                mode: "active".to_owned(),
                active_details: ActiveDetails {
                    phase: if observed.completed {
                        Phase::Binlog
                    } else {
                        Phase::BinlogCatchup
                    },
                },
                backup_reason: info.backup_reason.clone(),
                normalized_backup_time: info.normalized_backup_time.clone(),
                created_at: info.initiated_at,
                next_index: observed.next_index(),
                basebackup_info: Some(info.clone()),
                basebackup_errors: 0,
                completed_info: None,
                closed_info: None,
                last_processed_local_index: 0,
                initial_latest_complete_binlog_index: 0,
                valid_local_binlog_found: false,
                last_binlog_upload_time: Some(now),
                updated_at: now,
                backup_errors: 0,
                takeover_remote_gtids: Some(observed.remote_gtids.clone()),
            };
            log::info!(
                "took over backup stream {stream_id}: next binlog index {}",
                state.next_index
            );
            self.streams.insert(stream_id.clone(), Stream::new(state));
            self.persist_stream(&stream_id);
            self.state.owned_stream_ids.push(stream_id);
        }
        self.state.force_promote = false;
        self.state.backups_fetched_at = 0.0;
        self.persist();
        self.set_mode(Mode::Active);
    }

    pub(super) fn missing_applied(&mut self, result: Result<usize, String>) {
        self.promoting = false;
        match result {
            Ok(0) => {
                // What the server lacks is in no stored binlog (it is older than the
                // snapshot): only replication or force can settle it.
                log::error!(
                    "promotion: the transactions this server lacks are in no stored binlog; \
                     retrying in {RETRY_INTERVAL:?} (PUT /status {{\"mode\": \"active\", \
                     \"force\": true}} accepts their loss)"
                );
                self.promote_retry_at = Some(std::time::Instant::now() + RETRY_INTERVAL);
            }
            Ok(n_files) => {
                log::info!("promotion: applied {n_files} stored binlogs; taking over again");
                self.promote_retry_at = None;
            }
            Err(message) => {
                log::error!(
                    "promotion: applying the stored binlogs failed, retrying in \
                     {RETRY_INTERVAL:?}: {message}"
                );
                self.promote_retry_at = Some(std::time::Instant::now() + RETRY_INTERVAL);
            }
        }
    }

    /// A stream taken over from another server: skips (marks processed without uploading)
    /// the leading local binlogs whose transactions the stream already stores, up to the first
    /// one it does not. Called before uploads are dispatched, with none in flight.
    pub(super) fn skip_binlogs_already_stored(&mut self, stream_id: &str) {
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return;
        };
        if stream.state.valid_local_binlog_found || !stream.in_flight.is_empty() {
            return;
        }
        let Some(stored) = stream.state.takeover_remote_gtids.clone() else {
            return;
        };
        let mut skipped = None;
        for binlog in self
            .binlogs
            .iter()
            .filter(|b| b.local_index > stream.state.last_processed_local_index)
        {
            let gtids = binlog.gtids();
            if !gtids.is_empty() && !gtids.difference(&stored).is_empty() {
                stream.state.valid_local_binlog_found = true;
                break;
            }
            skipped = Some(binlog.local_index);
        }
        if let Some(local_index) = skipped {
            log::info!(
                "stream {stream_id}: local binlogs up to {local_index} hold nothing the stream \
                 lacks; not uploaded"
            );
            stream.state.last_processed_local_index = local_index;
        }
        if skipped.is_some() || stream.state.valid_local_binlog_found {
            stream.state.updated_at = now_epoch();
            self.persist_stream(stream_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fit_the_budget() {
        /// The file sizes, the budget, and the batches as sizes.
        type Case = (&'static [u64], u64, &'static [&'static [u64]]);
        let cases: &[Case] = &[
            (&[], 10, &[]),
            (&[4], 10, &[&[4]]),
            (&[4, 6], 10, &[&[4, 6]]),
            (&[4, 7], 10, &[&[4], &[7]]),
            (&[3, 3, 3, 3], 6, &[&[3, 3], &[3, 3]]),
            // Larger than the budget: alone, never skipped.
            (&[25], 10, &[&[25]]),
            (&[2, 25, 2], 10, &[&[2], &[25], &[2]]),
            (&[0, 0, 10, 0], 10, &[&[0, 0, 10, 0]]),
            (&[u64::MAX, 1], 10, &[&[u64::MAX], &[1]]),
            // A budget no sum exceeds.
            (&[u64::MAX, 1], u64::MAX, &[&[u64::MAX, 1]]),
        ];
        for &(sizes, budget, expected) in cases {
            let batches = batches_within(sizes, |size| *size, budget);
            assert_eq!(batches, expected, "{sizes:?} within {budget}");
        }
    }
}

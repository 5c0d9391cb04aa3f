//! Observe mode: what a standby knows of the backup streams another server uploads to.
//!
//! Every listing of the backups is followed by a look at each resumable, unclosed stream of a
//! backup site: its valid remote binlogs (fenced by the `promotions/` records, gapless) and
//! with them the GTIDs the stream holds: the snapshot's `gtid_executed` plus every valid
//! binlog's ranges (MyHoard's `remote_gtid_executed`). Binlog purge reads it to tell which
//! local binlogs a backup still needs; promotion reads it to pick up a stream where the old
//! master left it.

use chrono::Utc;

use crate::backup_stream::layout::{BasebackupInfo, BinlogInfo};
use crate::backup_stream::remote::{self, BackupEntry};
use crate::gtid::GtidSet;
use crate::purge;

use super::tasks::Event;
use super::{Context, Controller, layout};

/// How often the observed streams' remote binlogs are listed again.
pub(super) const OBSERVE_INTERVAL: f64 = 10.0;

/// One stream another server uploads to, as its objects show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedStream {
    pub site: String,
    pub stream_id: String,
    pub basebackup_info: BasebackupInfo,
    pub completed: bool,
    /// The valid remote binlogs, by remote index from 1, gapless.
    pub binlogs: Vec<BinlogInfo>,
    /// The snapshot's GTIDs plus every valid remote binlog's.
    pub remote_gtids: GtidSet,
}

impl ObservedStream {
    /// The stream of `backup`, whose snapshot is `info`, with its valid remote `binlogs`.
    pub fn new(backup: &BackupEntry, info: &BasebackupInfo, binlogs: Vec<BinlogInfo>) -> Self {
        let mut remote_gtids = info.gtid_executed.clone();
        for binlog in &binlogs {
            remote_gtids.union_with(&binlog.gtids());
        }
        ObservedStream {
            site: backup.site.clone(),
            stream_id: backup.stream_id.clone(),
            basebackup_info: info.clone(),
            completed: backup.completed_at.is_some(),
            binlogs,
            remote_gtids,
        }
    }

    /// The remote index the next binlog of this stream gets.
    pub fn next_index(&self) -> u64 {
        self.binlogs
            .last()
            .and_then(|binlog| binlog.remote_index)
            .map_or(1, |index| index + 1)
    }
}

/// The streams worth observing in `backups`: resumable (the snapshot is stored), not closed,
/// not on a recovery-only site.
pub fn observable(backups: &[BackupEntry]) -> Vec<(&BackupEntry, &BasebackupInfo)> {
    backups
        .iter()
        .filter(|backup| backup.resumable && backup.closed_at.is_none() && !backup.recovery_site)
        .filter_map(|backup| Some((backup, backup.basebackup_info.as_ref()?)))
        .collect()
}

/// Lists what each observable stream of `backups` holds. Runs on a task thread.
pub fn observe_streams(
    ctx: &Context,
    backups: &[BackupEntry],
) -> anyhow::Result<Vec<ObservedStream>> {
    let mut observed = Vec::new();
    for (backup, info) in observable(backups) {
        let Some(site) = ctx.sites.get(&backup.site) else {
            continue;
        };
        let prefix = layout::stream_prefix(&backup.site, &backup.stream_id);
        let binlogs = remote::valid_remote_binlogs(site.storage.as_ref(), &prefix)
            .map_err(|err| err.context(format!("listing the binlogs of {}", backup.stream_id)))?;
        observed.push(ObservedStream::new(backup, info, binlogs));
    }
    Ok(observed)
}

impl Controller {
    /// Observe mode, per tick: know the server, keep the backup list and the observed streams
    /// current, purge what nothing needs.
    pub(super) fn tick_observe(&mut self) {
        self.ensure_server_probed();
        self.refresh_backups_if_stale(super::BACKUP_REFRESH_INTERVAL);
        self.observe_streams_if_stale();
        self.purge_binlogs_if_due();
    }

    /// Lists the observed streams' binlogs again once [`OBSERVE_INTERVAL`] has passed, or at
    /// once after a new backup list.
    pub(super) fn observe_streams_if_stale(&mut self) {
        if self.observing || self.state.backups_fetched_at == 0.0 {
            return;
        }
        let now = layout::epoch_seconds(Utc::now());
        if now - self.observed_at < OBSERVE_INTERVAL
            && self.observed_listing_generation == self.backups_listed_count
        {
            return;
        }
        self.observing = true;
        self.observed_at = now;
        self.observed_listing_generation = self.backups_listed_count;
        let ctx = std::sync::Arc::clone(&self.ctx);
        let backups = self.state.backups.clone();
        super::tasks::spawn("observe-streams", &self.events_tx, move || {
            Event::StreamsObserved(observe_streams(&ctx, &backups).map_err(|e| format!("{e:#}")))
        });
    }

    pub(super) fn streams_observed(&mut self, result: Result<Vec<ObservedStream>, String>) {
        self.observing = false;
        match result {
            Ok(observed) => self.observed = Some(observed),
            Err(message) => log::warn!("cannot observe the backup streams: {message}"),
        }
    }

    /// The observed streams as the purge policy sees them (outside active mode).
    pub(super) fn observed_stream_views(&self) -> Vec<purge::StreamView> {
        self.observed
            .iter()
            .flatten()
            .map(|stream| purge::StreamView {
                has_basebackup_info: true,
                initial_latest_complete_binlog_index: None,
                uploaded: purge::Uploaded::RemoteGtids(stream.remote_gtids.clone()),
            })
            .collect()
    }
}

//! Finds the server's closed binlogs and what they contain, and notices purged ones.
//!
//! A binlog counts as closed once the next file exists: the file the server is writing is never
//! read. Each closed file is parsed with [`crate::binlog`] for its GTID ranges (MyHoard's
//! `gtid_ranges`) and recorded, in order, in `binlog_scanner_state.binlogs` (append-only) with
//! the counters in `binlog_scanner_state.json`. Those files are the single record of which local
//! binlogs exist: streams derive what they still have to upload from them, so a crash between
//! scanning and uploading loses nothing.
//!
//! The scanner is owned by the `binlog-watcher` thread ([`spawn_watcher`]), which polls often
//! (a closed binlog should be in storage within a second) and reports to the controller.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::backup_stream::layout::{BinlogInfo, epoch_seconds};
use crate::binlog::{self, ReadOptions, Tail};
use crate::db::flavor::{log_file_index, log_file_name};
use crate::gtid::GtidRange;
use crate::state::{self, AppendOnlyList};

pub const STATE_FILE: &str = "binlog_scanner_state.json";
pub const LIST_FILE: &str = "binlog_scanner_state.binlogs";
/// At most this many files are parsed per scan, so reports keep flowing during a backlog.
const MAX_FILES_PER_SCAN: usize = 50;

/// `binlog_scanner_state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScannerState {
    pub last_add: Option<f64>,
    pub last_remove: Option<f64>,
    /// The next local index to look for; 0 before the first scan.
    pub next_index: u64,
    pub total_binlog_count: u64,
    pub total_binlog_size: u64,
}

pub struct BinlogScanner {
    prefix: PathBuf,
    server_id: u32,
    state_path: PathBuf,
    state: ScannerState,
    binlogs: AppendOnlyList<BinlogInfo>,
    /// Logged once per missing index, not on every poll.
    reported_missing: Option<u64>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub added: Vec<BinlogInfo>,
    /// Local indexes of files that disappeared (purged), oldest first.
    pub removed: Vec<u64>,
    /// A binlog index that is missing while later ones exist: the chain is broken there.
    pub missing: Option<u64>,
}

impl BinlogScanner {
    pub fn open(
        state_directory: &Path,
        binlog_prefix: &Path,
        server_id: u32,
    ) -> anyhow::Result<BinlogScanner> {
        let state_path = state_directory.join(STATE_FILE);
        let mut state: ScannerState = state::read_json(&state_path)?.unwrap_or_default();
        let binlogs: AppendOnlyList<BinlogInfo> =
            AppendOnlyList::open(&state_directory.join(LIST_FILE))?;
        // The list is written before the counters: after a crash in between, the list is ahead
        // and decides, or the last file would be recorded twice.
        if let Some(last) = binlogs.entries().last()
            && last.local_index >= state.next_index
        {
            state.next_index = last.local_index + 1;
        }
        Ok(BinlogScanner {
            prefix: binlog_prefix.to_owned(),
            server_id,
            state_path,
            state,
            binlogs,
            reported_missing: None,
        })
    }

    pub fn binlogs(&self) -> &[BinlogInfo] {
        self.binlogs.entries()
    }

    pub fn state(&self) -> &ScannerState {
        &self.state
    }

    fn path_of(&self, index: u64) -> PathBuf {
        PathBuf::from(log_file_name(&self.prefix.to_string_lossy(), index))
    }

    /// Indexes of the binlog files present on disk, sorted.
    fn existing_indexes(&self) -> anyhow::Result<Vec<u64>> {
        let dir = self.prefix.parent().unwrap_or(Path::new("."));
        let stem = self
            .prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&stem)
                && rest.starts_with('.')
                && let Some(index) = log_file_index(&name)
            {
                indexes.push(index);
            }
        }
        indexes.sort_unstable();
        Ok(indexes)
    }

    /// Moves the next index forward past a gap (`PATCH /binlogs`). The file must exist.
    pub fn skip_to(&mut self, index: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            index > self.state.next_index,
            "Binlog index cannot be decreased."
        );
        anyhow::ensure!(
            self.path_of(index).exists(),
            "Binlog with index {index} does not exist"
        );
        self.state.next_index = index;
        state::write_json(&self.state_path, &self.state)?;
        Ok(())
    }

    /// Records new closed binlogs and purged ones.
    pub fn scan(&mut self) -> anyhow::Result<ScanResult> {
        let mut result = ScanResult {
            removed: self.scan_removed()?,
            ..ScanResult::default()
        };
        if self.state.next_index == 0 {
            // First start: begin with the oldest file the server still has.
            match self.existing_indexes()?.first() {
                Some(first) => self.state.next_index = *first,
                None => return Ok(result),
            }
        }
        while result.added.len() < MAX_FILES_PER_SCAN {
            let index = self.state.next_index;
            let path = self.path_of(index);
            if !path.exists() {
                if self.existing_indexes()?.iter().any(|i| *i > index) {
                    if self.reported_missing != Some(index) {
                        log::error!(
                            "binlog with index {index} ({}) is missing while later ones exist; \
                             the backup is broken from here (PATCH /binlogs moves past it)",
                            path.display()
                        );
                        self.reported_missing = Some(index);
                    }
                    result.missing = Some(index);
                }
                break;
            }
            if !self.path_of(index + 1).exists() {
                break; // still being written
            }
            let started = Instant::now();
            let summary = binlog::read_summary(
                &path,
                ReadOptions {
                    tail: Tail::Reject,
                    ..ReadOptions::default()
                },
            )
            .with_context(|| format!("reading {}", path.display()))?;
            let info = BinlogInfo {
                file_name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                file_size: summary.size,
                full_name: path.display().to_string(),
                gtid_ranges: compact_ranges(summary.gtid_ranges),
                local_index: index,
                processed_at: epoch_seconds(Utc::now()),
                processing_time: started.elapsed().as_secs_f64(),
                server_id: self.server_id,
                remote_index: None,
                remote_key: None,
                compression_algorithm: None,
                remote_file_size: None,
                extra: Default::default(),
            };
            self.state.next_index = index + 1;
            self.state.total_binlog_count += 1;
            self.state.total_binlog_size += info.file_size;
            result.added.push(info);
        }
        if !result.added.is_empty() {
            // The list first: the state's next_index must never run ahead of it.
            self.binlogs.append(result.added.clone())?;
            self.state.last_add = Some(epoch_seconds(Utc::now()));
            state::write_json(&self.state_path, &self.state)?;
        }
        Ok(result)
    }

    fn scan_removed(&mut self) -> anyhow::Result<Vec<u64>> {
        let removed: Vec<u64> = self
            .binlogs
            .entries()
            .iter()
            .take_while(|info| !Path::new(&info.full_name).exists())
            .map(|info| info.local_index)
            .collect();
        if !removed.is_empty() {
            let bytes: u64 = self.binlogs.entries()[..removed.len()]
                .iter()
                .map(|i| i.file_size)
                .sum();
            self.binlogs.remove_head(removed.len())?;
            self.state.total_binlog_count = self
                .state
                .total_binlog_count
                .saturating_sub(removed.len() as u64);
            self.state.total_binlog_size = self.state.total_binlog_size.saturating_sub(bytes);
            self.state.last_remove = Some(epoch_seconds(Utc::now()));
            state::write_json(&self.state_path, &self.state)?;
        }
        Ok(removed)
    }
}

/// Merges the ranges of each origin that continue each other. In file order, transactions of
/// several origins (MySQL tagged and untagged GTIDs written by concurrent sessions) interleave,
/// and each switch starts a new range: thousands per file, too many for the object metadata
/// they are stored in (S3 caps user metadata at 2 KiB). Per origin, a file's sequence numbers
/// are contiguous, so the merged ranges name the same transactions; the time stamps become the
/// earliest and latest of the merged ones. Ranges keep the order of their first transaction.
pub fn compact_ranges(ranges: Vec<GtidRange>) -> Vec<GtidRange> {
    let mut merged: Vec<GtidRange> = Vec::new();
    for range in ranges {
        let continues = merged.iter_mut().rev().find(|existing| {
            existing.server_uuid == range.server_uuid
                && existing.end.checked_add(1) == Some(range.start)
        });
        match continues {
            Some(existing) => {
                existing.end = range.end;
                existing.start_ts = existing.start_ts.min(range.start_ts);
                existing.end_ts = existing.end_ts.max(range.end_ts);
            }
            None => merged.push(range),
        }
    }
    merged
}

/// What the watcher tells the controller.
#[derive(Debug)]
pub enum WatcherEvent {
    /// Everything recorded so far, sent once at start.
    Initial(Vec<BinlogInfo>),
    Scanned(ScanResult),
    Failed(String),
}

/// Requests to the watcher.
#[derive(Debug)]
pub enum WatcherRequest {
    /// Scan now instead of at the next poll.
    ScanNow,
    SkipTo {
        index: u64,
        reply: Sender<Result<(), String>>,
    },
}

/// Starts the `binlog-watcher` thread: polls every `interval`, stops when `requests` is dropped.
pub fn spawn_watcher(
    mut scanner: BinlogScanner,
    interval: Duration,
    requests: Receiver<WatcherRequest>,
    events: Sender<WatcherEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("binlog-watcher".into())
        .spawn(move || {
            if events
                .send(WatcherEvent::Initial(scanner.binlogs().to_vec()))
                .is_err()
            {
                return;
            }
            let mut last_error: Option<String> = None;
            loop {
                match scanner.scan() {
                    Ok(result) => {
                        last_error = None;
                        if (!result.added.is_empty()
                            || !result.removed.is_empty()
                            || result.missing.is_some())
                            && events.send(WatcherEvent::Scanned(result)).is_err()
                        {
                            return;
                        }
                    }
                    Err(err) => {
                        let message = format!("{err:#}");
                        if last_error.as_ref() != Some(&message) {
                            log::error!("scanning binlogs: {message}");
                            if events.send(WatcherEvent::Failed(message.clone())).is_err() {
                                return;
                            }
                        }
                        last_error = Some(message);
                    }
                }
                match requests.recv_timeout(interval) {
                    Ok(WatcherRequest::ScanNow) => {}
                    Ok(WatcherRequest::SkipTo { index, reply }) => {
                        let _ = reply.send(scanner.skip_to(index).map_err(|e| format!("{e:#}")));
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gtid::Origin;

    fn range(origin: &Origin, start: u64, end: u64, ts: u64) -> GtidRange {
        GtidRange {
            end,
            end_ts: ts + 1,
            server_id: 1,
            server_uuid: origin.clone(),
            start,
            start_ts: ts,
        }
    }

    #[test]
    fn interleaved_origins_compact_to_one_range_each() {
        let a = Origin::mariadb(0, 1);
        let b = Origin::mariadb(1, 1);
        let input = vec![
            range(&a, 1, 2, 10),
            range(&b, 7, 7, 11),
            range(&a, 3, 5, 12),
            range(&b, 8, 9, 13),
            range(&a, 9, 9, 14), // a gap in a: stays separate
        ];
        let output = compact_ranges(input);
        let summary: Vec<(u64, u64, u64, u64)> = output
            .iter()
            .map(|r| (r.start, r.end, r.start_ts, r.end_ts))
            .collect();
        assert_eq!(summary, [(1, 5, 10, 13), (7, 9, 11, 14), (9, 9, 14, 15)]);
    }
}

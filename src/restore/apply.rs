//! Replaying binlogs into a restored server through its own replication applier (Python
//! MyHoard's relay-log trick, `restore_coordinator.py`), on MariaDB and MySQL, and deciding
//! where the replay stops.
//!
//! Two halves:
//!
//! - **Where to stop** ([`StopPlanner`], [`plan`]): reads the downloaded binlogs with our own
//!   parser ([`crate::binlog`]) and decides, file by file, whether each is needed and where in
//!   the last one the SQL thread must stop for a [`RestoreTarget`]: the latest transaction, a
//!   point in time, or one GTID. It also computes the GTIDs the server holds once the replay is
//!   complete, so completion is checked by GTIDs, never by relay log names. No server involved.
//! - **The replay** ([`prepare_server`], [`apply_batch`], [`poll_batch`], [`finish`]): hands a
//!   batch of downloaded files to the server as its relay logs and runs only the SQL thread. Each
//!   step records its progress in an [`ApplyState`], which the caller persists through the `save`
//!   callback every step takes, so a crash of the daemon or of mysqld at any instant resumes
//!   where it stood: calling the same function again with the same arguments carries on.
//!
//! # The protocol, per batch
//!
//! Every batch is handed over the same way, on both flavours (mariadb.md §5 "protocol B"):
//! `STOP REPLICA; RESET REPLICA ALL` (which deletes the previous relay logs and keeps MariaDB's
//! `gtid_slave_pos` and MySQL's `gtid_executed`; MariaDB deletes the index too, MySQL 9.7
//! leaves a fresh, empty and closed `relay.000001` listed in it, which is replaced: seen on both
//! servers here, with no relay log left open), the files renamed into place as
//! `<relay_log_prefix>.000001`, `.000002`, ..., a fresh relay log index listing them with full
//! paths, `CHANGE ... RELAY_LOG_FILE=<first>, RELAY_LOG_POS=<start>` (MariaDB also names the
//! source binlog: its parallel applier crashes without it), then `START REPLICA SQL_THREAD
//! [UNTIL ...]`. Python MyHoard instead appends further batches with `FLUSH RELAY LOGS`
//! (protocol A), because `RESET REPLICA` drops replicated temporary tables; with row-based
//! binlogs (MyHoard's requirement) temporary tables are never replicated. Protocol B needs no
//! guessing of the names the server picks next (the cause of MyHoard's "unexpected extra relay
//! log" repairs), and every batch starts from the same known state, which is what makes each
//! step idempotent.
//!
//! Where the batch stops ([`Until`]): MySQL `UNTIL SQL_AFTER_GTIDS` with the last GTID to apply
//! (what MyHoard does). MariaDB has no GTID form that works here (mariadb.md §5), so it stops at
//! `UNTIL RELAY_LOG_FILE/RELAY_LOG_POS`: the offset of the first GTID event not to apply, in the
//! relay log that is the copy of the stop binlog. Relay log names are ours, so this holds even
//! when the replayed binlogs are not consecutively numbered (a restore across a failover
//! follows a new server's numbering, and empty files are left out), where the source binlog
//! name the SQL thread tracks, taken from the previous file's Rotate event, would be wrong.
//!
//! Completion is judged by GTIDs ([`crate::db::Client::wait_for_gtids`]: MySQL
//! `WAIT_FOR_EXECUTED_GTID_SET`, MariaDB `MASTER_GTID_WAIT` on `gtid_slave_pos`), never by
//! `Relay_Log_File`: the servers do not reliably advance it (mariadb.md §5, MyHoard PR #12).
//! An SQL thread error is reported with its `Last_SQL_Errno`/`Last_SQL_Error`; an SQL thread
//! that is not running for another reason (mysqld was restarted: replication never starts at
//! boot) is started again with the same UNTIL clause; on MariaDB, from the first transaction
//! the server does not hold, as its saved position can lag one commit behind a `kill -9`.
//!
//! The server runs with [`apply_mysqld_options`] meanwhile; restarting it is the caller's job.
//! Applied relay logs are deleted by the server itself (`relay_log_purge`); the caller counts
//! the disk the files it handed over take.
//!
//! Runs on a task thread: every function here blocks on the server or the disk. Nothing here
//! logs; errors are typed ([`Error`]) and returned.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::binlog::{self, BinlogReader, ReadOptions, Tail, Transaction};
use crate::db::flavor::{self, log_file_name};
use crate::db::{self, ApplyUntil, Client, Flavor, RelayLogStart, UntilCondition};
use crate::gtid::{Gtid, GtidSet, Origin};

/// The first event offset of every binlog, after the 4-byte magic number.
pub const BINLOG_START: u64 = 4;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a plan could not be made or a replay step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binlog(#[from] binlog::Error),
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Flavor(#[from] flavor::Error),
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The caller's `save` callback failed; the step that called it is not done.
    #[error("saving the binlog apply state: {0}")]
    SaveState(io::Error),
    #[error("binlog {file} was written by {found:?}, but the restored server is {expected}", file = file.display())]
    FlavorMismatch {
        file: PathBuf,
        expected: Flavor,
        found: binlog::Flavor,
    },
    #[error(
        "start position {start_pos} of binlog {source_file} is inside a transaction \
         (offsets {start}..{end}): the snapshot's binlog position must be a transaction boundary"
    )]
    StartInsideTransaction {
        source_file: String,
        start_pos: u64,
        start: u64,
        end: u64,
    },
    /// MariaDB replays whatever it is given (no GTID auto-skip without GTID mode), so a
    /// transaction held already, after one to apply in the same file, would be applied twice.
    #[error(
        "transaction {gtid} at offset {offset} of binlog {source_file} is already held \
         ({snapshot}) but follows a transaction to apply: the binlogs do not form one history"
    )]
    AlreadyInSnapshot {
        gtid: Gtid,
        source_file: String,
        offset: u64,
        snapshot: GtidSet,
    },
    #[error("target gtid {gtid} is a {found} gtid, but the restored server is {expected}")]
    TargetFlavor {
        gtid: Gtid,
        expected: Flavor,
        found: &'static str,
    },
    /// A later transaction of the target's origin (MariaDB: its domain) came first: the target
    /// is not in these binlogs.
    #[error(
        "target gtid {target} is not in the binlogs: {seen} at offset {offset} of {source_file} \
         comes after it and was reached first"
    )]
    TargetSkipped {
        target: Gtid,
        seen: Box<Gtid>,
        source_file: String,
        offset: u64,
    },
    #[error("target gtid {gtid} is not in any of the binlogs")]
    TargetNotFound { gtid: Gtid },
    #[error(
        "the restored server's server_id {server_id} also wrote transactions in the binlogs to \
         replay: the server would silently skip them"
    )]
    SameServerId { server_id: u32 },
    #[error("the relay log {what} {path} must be an absolute UTF-8 path", path = path.display())]
    RelayLogPath { what: &'static str, path: PathBuf },
    #[error("a batch needs at least one file")]
    EmptyBatch,
    #[error("binlog {source_file} is marked {action} in the plan: it must not be applied")]
    NotToApply {
        source_file: String,
        action: &'static str,
    },
    #[error(
        "binlog {source_file} stops the replay but is not the last file of its batch; a batch \
         must end with its stop point"
    )]
    StopNotLast { source_file: String },
    #[error("apply_batch before prepare_server")]
    NotPrepared,
    #[error(
        "another batch (starting with {in_progress}) is still being applied; poll it until done \
         before handing over the next"
    )]
    BatchInProgress { in_progress: String },
    #[error("binlog {path} to hand over is missing (and not in place as {relay_log} either)", path = path.display(), relay_log = relay_log.display())]
    MissingFile { path: PathBuf, relay_log: PathBuf },
    #[error("no batch is being applied")]
    NoBatch,
    #[error(
        "the batch is still being handed over ({stage:?}): call apply_batch again to complete it"
    )]
    BatchNotStarted { stage: BatchStage },
    #[error(
        "the server shows no replication status: the relay log replay was reset behind our back"
    )]
    NoReplicaStatus,
    #[error(
        "the SQL thread stopped at its UNTIL point ({condition:?} {file} {pos}) without applying \
         every expected transaction ({expected})"
    )]
    StoppedShort {
        condition: UntilCondition,
        file: String,
        pos: u64,
        expected: GtidSet,
    },
    #[error(
        "the server has GTIDs the snapshot does not ({server}, snapshot {snapshot}): it is not \
         a fresh restore of that snapshot"
    )]
    GtidsDiverge { server: GtidSet, snapshot: GtidSet },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Where to stop
// ---------------------------------------------------------------------------------------------

/// What a restore replays up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreTarget {
    /// Every transaction in the binlogs.
    Latest,
    /// A point in time.
    ///
    /// Exact (`approximate_ok` false): the longest run of transactions, in binlog order, that
    /// all committed at or before `at`. A transaction's commit time is MySQL's
    /// `immediate_commit_timestamp` (microseconds) where the binlog has it, else the header
    /// timestamp of the event that commits it, in whole seconds as the server wrote it
    /// (MariaDB): there, "at or before `T.000000`" includes everything committed during second
    /// `T`, which is all the server recorded. Python MyHoard's API gives whole epoch seconds
    /// ([`RestoreTarget::time`]). The replay stops before the first transaction committed after
    /// the target; should a clock step give a later transaction an earlier time, it is not
    /// applied either, because what follows that first later transaction may depend on it.
    ///
    /// Approximate (`approximate_ok` true, Python MyHoard's `target_time_approximate_ok`): whole
    /// files, every one whose first transaction to apply committed at or before the target, so
    /// the SQL thread needs no UNTIL clause (which makes MySQL's applier single threaded).
    Time {
        at: DateTime<Utc>,
        approximate_ok: bool,
    },
    /// Up to and including this transaction.
    Gtid(#[serde(with = "gtid_text")] Gtid),
}

impl RestoreTarget {
    /// A point in time given as whole seconds since the epoch, as Python MyHoard's API takes
    /// it; `None` when out of range.
    pub fn time(epoch_seconds: i64, approximate_ok: bool) -> Option<RestoreTarget> {
        let at = DateTime::from_timestamp(epoch_seconds, 0)?;
        Some(RestoreTarget::Time { at, approximate_ok })
    }
}

/// One downloaded binlog of the restore, in replay order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogFile {
    /// Where the downloaded copy is.
    pub path: PathBuf,
    /// The source server's name for it, such as `binlog.000042`.
    pub source_file: String,
    /// Where the replay starts in it: the snapshot's binlog position for the binlog the
    /// snapshot ended in, else [`BINLOG_START`]. Only transactions starting at or after it
    /// count.
    pub start_pos: u64,
}

/// What to do with one binlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum FileAction {
    /// Hand it over whole.
    Apply,
    /// Hand it over, and stop the SQL thread in it: the last file the restore needs.
    ApplyUntil { stop: StopPoint },
    /// It has no transaction to apply (empty, or none after the start position): do not hand
    /// it over. Later files may still be needed.
    Skip,
    /// The target was reached in an earlier file (or before this file's first transaction):
    /// neither this file nor any later one is needed.
    NotNeeded,
}

impl FileAction {
    fn name(&self) -> &'static str {
        match self {
            FileAction::Apply => "apply",
            FileAction::ApplyUntil { .. } => "apply_until",
            FileAction::Skip => "skip",
            FileAction::NotNeeded => "not_needed",
        }
    }
}

/// Where the SQL thread stops in the last file of a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopPoint {
    /// Offset of the first transaction not to apply: the start of its GTID event, which is
    /// also where the last applied transaction's commit event ends (unless non-transaction
    /// events such as MariaDB binlog checkpoints sit in between).
    pub next_transaction_start: u64,
    /// The server's UNTIL clause for it.
    pub until: Until,
}

/// The UNTIL clause of a stop, in the source's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// MySQL: `SQL_AFTER_GTIDS` with the last transaction to apply.
    AfterGtids(GtidSet),
    /// MariaDB (and MySQL when the last transaction to apply is anonymous): before the event at
    /// `pos` of source binlog `file`. [`apply_batch`] turns it into the same offset of the relay
    /// log that copy became (see the module doc for why).
    SourcePosition { file: String, pos: u64 },
}

impl Until {
    /// The clause as [`Flavor::start_sql_thread`] takes it, in source binlog terms.
    pub fn as_apply_until(&self) -> ApplyUntil<'_> {
        match self {
            Until::AfterGtids(gtids) => ApplyUntil::AfterGtids(gtids),
            Until::SourcePosition { file, pos } => ApplyUntil::SourcePosition { file, pos: *pos },
        }
    }
}

/// A transaction the replay applies: the last one of a file, or of the whole restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTransaction {
    /// `None` for a MySQL anonymous transaction.
    #[serde(with = "optional_gtid_text")]
    pub gtid: Option<Gtid>,
    pub source_file: String,
    /// Offsets of its GTID event and just past its commit event.
    pub start: u64,
    pub end: u64,
    /// Microseconds since the epoch (see [`RestoreTarget::Time`]).
    pub commit_time_us: u64,
}

/// The planner's verdict on one binlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub source_file: String,
    pub start_pos: u64,
    pub action: FileAction,
    /// The GTIDs the replay adds from this file (on MySQL without those the snapshot already
    /// has, which the server skips).
    pub gtids: GtidSet,
    /// Header server ids of those transactions: the restored server must have another one.
    pub server_ids: BTreeSet<u32>,
    /// Transactions the replay applies from this file, anonymous ones included.
    pub n_transactions: u64,
    pub last_applied: Option<AppliedTransaction>,
}

impl PlannedFile {
    fn new(file: &BinlogFile, action: FileAction) -> PlannedFile {
        PlannedFile {
            source_file: file.source_file.clone(),
            start_pos: file.start_pos.max(BINLOG_START),
            action,
            gtids: GtidSet::new(),
            server_ids: BTreeSet::new(),
            n_transactions: 0,
            last_applied: None,
        }
    }

    /// Whether the file is handed over to the server.
    pub fn is_applied(&self) -> bool {
        matches!(
            self.action,
            FileAction::Apply | FileAction::ApplyUntil { .. }
        )
    }

    /// Where the SQL thread stops in it, if it is the last file of the restore.
    pub fn stop(&self) -> Option<&StopPoint> {
        match &self.action {
            FileAction::ApplyUntil { stop } => Some(stop),
            _ => None,
        }
    }
}

/// A whole plan: every file's verdict and what the server holds at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPlan {
    /// One per input file, in order.
    pub files: Vec<PlannedFile>,
    /// The snapshot's GTIDs plus every GTID the replay applies: what the server holds once it
    /// is complete.
    pub expected_gtids: GtidSet,
    /// The last transaction applied; `None` when there is nothing to apply.
    pub last_applied: Option<AppliedTransaction>,
    /// Whether the target was reached within the files given (always false for
    /// [`RestoreTarget::Latest`]: a later binlog could still add transactions).
    pub target_reached: bool,
}

impl ApplyPlan {
    /// Whether no file needs handing over: the target lies before the first transaction after
    /// the snapshot, or there is no such transaction.
    pub fn nothing_to_apply(&self) -> bool {
        !self.files.iter().any(PlannedFile::is_applied)
    }

    /// The files to hand over, with their index in [`ApplyPlan::files`].
    pub fn files_to_apply(&self) -> impl Iterator<Item = (usize, &PlannedFile)> {
        self.files
            .iter()
            .enumerate()
            .filter(|(_, file)| file.is_applied())
    }

    /// The files to hand over, as a batch of `files`: the downloads the plan was made from, in
    /// the same order.
    pub fn batch_files(&self, files: &[BinlogFile]) -> Vec<BatchFile> {
        self.files_to_apply()
            .filter_map(|(index, planned)| {
                files.get(index).map(|file| BatchFile {
                    path: file.path.clone(),
                    plan: planned.clone(),
                })
            })
            .collect()
    }

    /// Every header server id among the transactions to apply.
    pub fn server_ids(&self) -> BTreeSet<u32> {
        self.files
            .iter()
            .flat_map(|file| file.server_ids.iter().copied())
            .collect()
    }
}

/// Plans a whole restore at once: [`StopPlanner`] over `files`. Files after the target are not
/// read.
pub fn plan(
    flavor: Flavor,
    snapshot_gtids: &GtidSet,
    files: &[BinlogFile],
    target: &RestoreTarget,
) -> Result<ApplyPlan, Error> {
    let mut planner = StopPlanner::new(flavor, snapshot_gtids.clone(), target.clone())?;
    for file in files {
        planner.plan_file(file)?;
    }
    planner.finish()
}

/// Decides file by file, in replay order, what a restore needs, so the coordinator can download
/// and apply as it goes: once [`StopPlanner::is_reached`], no later file is needed.
#[derive(Debug, Clone)]
pub struct StopPlanner {
    flavor: Flavor,
    target: RestoreTarget,
    expected_gtids: GtidSet,
    reached: bool,
    target_gtid_found: bool,
    last_applied: Option<AppliedTransaction>,
    files: Vec<PlannedFile>,
}

impl StopPlanner {
    /// A planner for a server of `flavor` restored from a snapshot holding `snapshot_gtids`.
    /// Fails when a GTID target is of the other flavour.
    pub fn new(
        flavor: Flavor,
        snapshot_gtids: GtidSet,
        target: RestoreTarget,
    ) -> Result<StopPlanner, Error> {
        let mut reached = false;
        if let RestoreTarget::Gtid(gtid) = &target {
            let is_mariadb = gtid.origin().is_mariadb();
            if is_mariadb != flavor.is_mariadb() {
                return Err(Error::TargetFlavor {
                    gtid: gtid.clone(),
                    expected: flavor,
                    found: if is_mariadb { "MariaDB" } else { "MySQL" },
                });
            }
            // Already in the snapshot: nothing to replay at all.
            reached = in_snapshot(&snapshot_gtids, gtid);
        }
        Ok(StopPlanner {
            flavor,
            target,
            expected_gtids: snapshot_gtids,
            reached,
            target_gtid_found: reached,
            last_applied: None,
            files: Vec::new(),
        })
    }

    /// Whether the target has been reached: later files are not needed.
    pub fn is_reached(&self) -> bool {
        self.reached
    }

    /// The snapshot's GTIDs plus those of every transaction planned so far.
    pub fn expected_gtids(&self) -> &GtidSet {
        &self.expected_gtids
    }

    /// Reads `file` (unless the target was already reached) and decides what to do with it.
    pub fn plan_file(&mut self, file: &BinlogFile) -> Result<PlannedFile, Error> {
        let planned = if self.reached {
            PlannedFile::new(file, FileAction::NotNeeded)
        } else {
            self.read_file(file)?
        };
        self.files.push(planned.clone());
        Ok(planned)
    }

    /// The whole plan. Fails when a GTID target was not found in any file.
    pub fn finish(self) -> Result<ApplyPlan, Error> {
        if let RestoreTarget::Gtid(gtid) = &self.target
            && !self.target_gtid_found
        {
            return Err(Error::TargetNotFound { gtid: gtid.clone() });
        }
        Ok(ApplyPlan {
            files: self.files,
            expected_gtids: self.expected_gtids,
            last_applied: self.last_applied,
            target_reached: self.reached,
        })
    }

    fn read_file(&mut self, file: &BinlogFile) -> Result<PlannedFile, Error> {
        let mut planned = PlannedFile::new(file, FileAction::Apply);
        let start_pos = planned.start_pos;
        // A file still being written (the source's active binlog) ends in a partial event: its
        // complete transactions are applied, as the SQL thread does.
        let options = ReadOptions {
            tail: Tail::Tolerate,
            ..ReadOptions::default()
        };
        let mut reader = BinlogReader::open(&file.path, options)?;
        let found = reader.format().flavor;
        let expected = match self.flavor {
            Flavor::MariaDb(_) => binlog::Flavor::Mariadb,
            Flavor::MySql(_) => binlog::Flavor::Mysql,
        };
        if found != expected {
            return Err(Error::FlavorMismatch {
                file: file.path.clone(),
                expected: self.flavor,
                found,
            });
        }
        let limit_us = match self.target {
            RestoreTarget::Time { at, .. } => at.timestamp_micros(),
            _ => i64::MAX,
        };
        // A time past i64 microseconds (year 294247) is after any target.
        let after_target = |transaction: &Transaction| {
            i64::try_from(transaction.commit_time_us).map_or(true, |commit| commit > limit_us)
        };
        // The GTID target was just applied: the next transaction is where the SQL thread stops.
        let mut stop_after_last = false;
        let mut seen_first = false;
        while let Some(transaction) = reader.next_transaction()? {
            if transaction.start < start_pos {
                if transaction.end > start_pos {
                    return Err(Error::StartInsideTransaction {
                        source_file: file.source_file.clone(),
                        start_pos,
                        start: transaction.start,
                        end: transaction.end,
                    });
                }
                continue;
            }
            if stop_after_last {
                self.stop_before(&mut planned, transaction.start);
                return Ok(planned);
            }
            if self.already_held(&transaction, &planned, file)? {
                if transaction
                    .gtid
                    .as_ref()
                    .is_some_and(|gtid| gtid.origin().is_mariadb())
                {
                    // MariaDB would apply it again: the file starts after it.
                    planned.start_pos = transaction.end;
                }
                continue;
            }
            match &self.target {
                RestoreTarget::Latest => {}
                RestoreTarget::Gtid(target) => match &transaction.gtid {
                    Some(gtid) if gtid == target => {
                        self.target_gtid_found = true;
                        stop_after_last = true;
                    }
                    Some(gtid) if passes(gtid, target) => {
                        return Err(Error::TargetSkipped {
                            target: target.clone(),
                            seen: Box::new(gtid.clone()),
                            source_file: file.source_file.clone(),
                            offset: transaction.start,
                        });
                    }
                    _ => {}
                },
                RestoreTarget::Time {
                    approximate_ok: false,
                    ..
                } => {
                    if after_target(&transaction) {
                        if planned.n_transactions == 0 {
                            self.reached = true;
                            planned.action = FileAction::NotNeeded;
                        } else {
                            self.stop_before(&mut planned, transaction.start);
                        }
                        return Ok(planned);
                    }
                }
                RestoreTarget::Time {
                    approximate_ok: true,
                    ..
                } => {
                    if !seen_first && after_target(&transaction) {
                        self.reached = true;
                        planned.action = FileAction::NotNeeded;
                        return Ok(planned);
                    }
                }
            }
            seen_first = true;
            self.apply(&mut planned, &transaction, file);
        }
        if stop_after_last {
            // The target is the file's last transaction: the whole file, and nothing after it.
            self.reached = true;
        } else if planned.n_transactions == 0 {
            planned.action = FileAction::Skip;
        }
        Ok(planned)
    }

    /// Whether the server will hold `transaction` already: it is in the snapshot or in an
    /// earlier planned file (binlogs of two servers overlap after a failover: the promoted
    /// server's first uploaded binlog can repeat the old master's last transactions). MySQL
    /// skips such transactions by itself; they are left out of the plan. MariaDB applies
    /// whatever it is handed, so they must lead the file, which then starts after them; one
    /// after a transaction to apply is an error.
    fn already_held(
        &self,
        transaction: &Transaction,
        planned: &PlannedFile,
        file: &BinlogFile,
    ) -> Result<bool, Error> {
        let Some(gtid) = &transaction.gtid else {
            return Ok(false);
        };
        if !in_snapshot(&self.expected_gtids, gtid) {
            return Ok(false);
        }
        if gtid.origin().is_mariadb() && planned.n_transactions > 0 {
            return Err(Error::AlreadyInSnapshot {
                gtid: gtid.clone(),
                source_file: file.source_file.clone(),
                offset: transaction.start,
                snapshot: self.expected_gtids.clone(),
            });
        }
        Ok(true)
    }

    fn apply(&mut self, planned: &mut PlannedFile, transaction: &Transaction, file: &BinlogFile) {
        planned.n_transactions += 1;
        planned.server_ids.insert(transaction.server_id);
        if let Some(gtid) = &transaction.gtid {
            planned.gtids.insert(gtid);
            self.expected_gtids.insert(gtid);
        }
        let applied = AppliedTransaction {
            gtid: transaction.gtid.clone(),
            source_file: file.source_file.clone(),
            start: transaction.start,
            end: transaction.end,
            commit_time_us: transaction.commit_time_us,
        };
        planned.last_applied = Some(applied.clone());
        self.last_applied = Some(applied);
    }

    /// Ends the restore in `planned`, before the transaction starting at `next_start`.
    fn stop_before(&mut self, planned: &mut PlannedFile, next_start: u64) {
        self.reached = true;
        let last_gtid = planned
            .last_applied
            .as_ref()
            .and_then(|last| last.gtid.as_ref());
        let until = match (self.flavor, last_gtid) {
            (Flavor::MySql(_), Some(gtid)) => Until::AfterGtids(GtidSet::from_gtid(gtid)),
            _ => Until::SourcePosition {
                file: planned.source_file.clone(),
                pos: next_start,
            },
        };
        planned.action = FileAction::ApplyUntil {
            stop: StopPoint {
                next_transaction_start: next_start,
                until,
            },
        };
    }
}

/// Whether `gtid` is in the snapshot. MySQL: in the set. MariaDB: its domain's position is at
/// or past it (sequence numbers are per domain, whichever server wrote them; the sets built
/// from MariaDB positions read "last N" as `1..=N` per server, which a GTID of another server
/// of the domain would otherwise miss).
fn in_snapshot(snapshot: &GtidSet, gtid: &Gtid) -> bool {
    match gtid.origin() {
        Origin::Mysql { .. } => snapshot.contains_gtid(gtid),
        Origin::Mariadb { domain, .. } => {
            domain_position(snapshot, *domain).is_some_and(|position| position >= gtid.sequence())
        }
    }
}

/// The highest sequence number of MariaDB `domain` in `set`.
fn domain_position(set: &GtidSet, domain: u32) -> Option<u64> {
    set.iter()
        .filter_map(|(origin, intervals)| match origin {
            Origin::Mariadb { domain: d, .. } if *d == domain => intervals.last(),
            _ => None,
        })
        .map(|interval| interval.end())
        .max()
}

/// Whether `seen`, met before `target`, proves `target` will not come: a later transaction of
/// the same origin (MariaDB: of the same domain, under `gtid_strict_mode`).
fn passes(seen: &Gtid, target: &Gtid) -> bool {
    let same_stream = match (seen.origin(), target.origin()) {
        (Origin::Mariadb { domain: a, .. }, Origin::Mariadb { domain: b, .. }) => a == b,
        (a, b) => a == b,
    };
    same_stream && seen.sequence() > target.sequence()
}

// ---------------------------------------------------------------------------------------------
// The replay
// ---------------------------------------------------------------------------------------------

/// The mysqld options the restored server needs while binlogs are replayed into it
/// ([`Flavor::relay_apply_mysqld_options`]: its own `server_id`, replication not started at
/// boot, `relay_log_recovery` off, read-only, the relay log names), plus on MySQL the binlog
/// off as Python MyHoard runs it ([`Flavor::mysqld_binlog_off_options`]; mysql.md §4: applied
/// GTIDs then go to `mysql.gtid_executed`, and the restored server's binlog does not repeat the
/// whole replay). MariaDB keeps its binlog and `log_slave_updates`, the tested recipe (mariadb.md
/// §5, §8): the replayed transactions keep their GTIDs in its binlog, so its `gtid_binlog_state`
/// continues the source's history with no fixing afterwards.
///
/// `source_server_id` is the server id the binlogs were written with; after a failover the
/// binlogs hold several, and the restored server needs one different from all of them
/// ([`ApplyPlan::server_ids`]; [`apply_batch`] checks it against the running server).
pub fn apply_mysqld_options(
    flavor: Flavor,
    own_server_id: u32,
    source_server_id: u32,
    relay_log_prefix: &Path,
    relay_log_index: &Path,
) -> Result<Vec<String>, Error> {
    let mut options = flavor.relay_apply_mysqld_options(
        own_server_id,
        source_server_id,
        relay_log_prefix,
        relay_log_index,
    )?;
    if flavor.is_mysql() {
        options.extend(flavor.mysqld_binlog_off_options());
    }
    Ok(options)
}

/// One file of a batch: the downloaded copy and its verdict from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFile {
    /// Where the downloaded copy is; [`apply_batch`] moves it into the relay log directory.
    pub path: PathBuf,
    pub plan: PlannedFile,
}

/// How far the current batch has been handed over: the step [`apply_batch`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStage {
    /// `STOP REPLICA; RESET REPLICA ALL`.
    Resetting,
    /// Moving the files into place and writing the relay log index.
    Placing,
    /// `CHANGE ... RELAY_LOG_FILE`.
    Configuring,
    /// `START REPLICA SQL_THREAD`.
    Starting,
    /// Handed over; [`poll_batch`] until done.
    Running,
}

/// One file of the batch being applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOverFile {
    pub source_file: String,
    /// Where it was downloaded to.
    pub download_path: PathBuf,
    /// Its relay log name, `<relay_log_prefix>.000001` and so on.
    pub relay_log: PathBuf,
}

/// Where the current batch stops, in relay log terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchUntil {
    /// MySQL `UNTIL SQL_AFTER_GTIDS`.
    AfterGtids(GtidSet),
    /// `UNTIL RELAY_LOG_FILE = file, RELAY_LOG_POS = pos`.
    RelayPosition { file: String, pos: u64 },
}

impl BatchUntil {
    fn as_apply_until(&self) -> ApplyUntil<'_> {
        match self {
            BatchUntil::AfterGtids(gtids) => ApplyUntil::AfterGtids(gtids),
            BatchUntil::RelayPosition { file, pos } => {
                ApplyUntil::RelayPosition { file, pos: *pos }
            }
        }
    }
}

/// The batch being handed over or applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchState {
    pub stage: BatchStage,
    pub files: Vec<HandedOverFile>,
    /// Where the SQL thread starts in the first file.
    pub start_pos: u64,
    /// What the server holds once the batch is applied.
    pub expected_gtids: GtidSet,
    pub until: Option<BatchUntil>,
    /// Where the last relay log is cut: the start of the first transaction not to apply. The
    /// UNTIL clause alone is not enough: MySQL's multi-threaded applier has been seen to run
    /// past `UNTIL SQL_AFTER_GTIDS` when started again after a crash left gaps to fill, and,
    /// without any crash, when the last GTID to apply is tagged and still being applied as the
    /// next transaction comes (MySQL 9.7.4: five transactions past, in the replay test). With
    /// nothing after the stop in the relay logs, nothing can be applied past it.
    #[serde(default)]
    pub cut_last_at: Option<u64>,
    /// `START REPLICA SQL_THREAD` statements issued for the batch (more than one after a
    /// restart of mysqld or a retry).
    pub n_sql_thread_starts: u64,
}

/// Everything the replay needs to resume after a crash. The caller persists it whenever a step
/// calls `save`, and hands it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyState {
    /// `mysql.relay_log_prefix`: relay logs are `<prefix>.000001`, ...
    pub relay_log_prefix: PathBuf,
    /// `mysql.relay_log_index_file`.
    pub relay_log_index: PathBuf,
    /// [`prepare_server`] is done.
    pub prepared: bool,
    /// What the server holds for sure: the snapshot's GTIDs plus every completed batch's.
    pub applied_gtids: GtidSet,
    pub n_batches_applied: u64,
    pub n_files_applied: u64,
    /// The batch in progress.
    pub batch: Option<BatchState>,
    /// [`finish`] is done.
    pub finished: bool,
}

impl ApplyState {
    /// The state before anything was done, for a server whose relay logs are named by
    /// `relay_log_prefix` and listed in `relay_log_index` (both absolute, as mysqld is given
    /// them).
    pub fn new(relay_log_prefix: PathBuf, relay_log_index: PathBuf) -> ApplyState {
        ApplyState {
            relay_log_prefix,
            relay_log_index,
            prepared: false,
            applied_gtids: GtidSet::new(),
            n_batches_applied: 0,
            n_files_applied: 0,
            batch: None,
            finished: false,
        }
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every transaction of the batch is applied.
    Done,
    /// The SQL thread is applying it (or was just started again: `restarted`).
    Running {
        relay_log_file: String,
        relay_log_pos: u64,
        source_log_file: String,
        source_log_pos: u64,
        /// `Replica_SQL_Running_State`.
        sql_thread_state: String,
        restarted: bool,
    },
    /// The SQL thread stopped on an error. [`apply_batch`] with the same batch starts it again.
    Failed { errno: u32, message: String },
}

/// The persistence callback every step takes: write the state durably (atomically) before
/// returning.
pub type SaveState<'a> = dyn FnMut(&ApplyState) -> io::Result<()> + 'a;

fn save_state(save: &mut SaveState<'_>, state: &ApplyState) -> Result<(), Error> {
    save(state).map_err(Error::SaveState)
}

/// Makes the restored server ready for the replay: forgets any replication configuration the
/// snapshot brought along (`STOP REPLICA; RESET REPLICA ALL`, what Python MyHoard's deletes
/// from `mysql.slave_master_info` and friends achieve; a snapshot of a replica has them), and
/// gives it the snapshot's GTID state:
///
/// - MariaDB: `SET GLOBAL gtid_slave_pos` to the snapshot's position (the restored data does
///   not record it anywhere the server reads), which the replay then advances;
/// - MySQL: nothing after a clone, which brings `gtid_executed` along (mysql.md §3). When the
///   server has fewer GTIDs than the snapshot (an XtraBackup restore: `mysql.gtid_executed` is
///   only persisted on binlog rotation, what MyHoard patches), its GTID history is reset and
///   `gtid_purged` set to the snapshot's.
///
/// Done once: afterwards (the state says so) it does nothing, so it never moves
/// `gtid_slave_pos` back over applied batches.
pub fn prepare_server(
    client: &mut Client,
    state: &mut ApplyState,
    snapshot_gtids: &GtidSet,
    save: &mut SaveState<'_>,
) -> Result<(), Error> {
    if state.prepared {
        return Ok(());
    }
    let flavor = client.flavor();
    client.execute(&flavor.stop_replica_statement())?;
    client.execute(&flavor.reset_replica_all_statement())?;
    match flavor {
        Flavor::MariaDb(_) => {
            client.execute_all(&flavor.restore_gtid_state_statements(snapshot_gtids)?)?;
        }
        Flavor::MySql(_) => {
            let server = client.gtid_state()?.executed();
            if !server.contains(snapshot_gtids) {
                if !snapshot_gtids.contains(&server) {
                    return Err(Error::GtidsDiverge {
                        server,
                        snapshot: snapshot_gtids.clone(),
                    });
                }
                client.execute_all(&flavor.restore_gtid_state_statements(snapshot_gtids)?)?;
            }
        }
    }
    state.prepared = true;
    state.applied_gtids = snapshot_gtids.clone();
    save_state(save, state)
}

/// Hands `batch` to the server as its relay logs and starts the SQL thread (see the module doc
/// for the protocol); returns once the SQL thread runs. The batch is files from the plan that
/// are applied ([`PlannedFile::is_applied`]), in order; only the last may carry the stop point,
/// whose UNTIL clause is then used.
///
/// Resumable: after a crash, call it again with the same batch and it carries on from the step
/// the state records. Called again once the batch runs (after [`Progress::Failed`], say), it
/// starts the SQL thread again. A different batch is refused until [`poll_batch`] reported the
/// current one done.
pub fn apply_batch(
    client: &mut Client,
    state: &mut ApplyState,
    batch: &[BatchFile],
    save: &mut SaveState<'_>,
) -> Result<(), Error> {
    if !state.prepared {
        return Err(Error::NotPrepared);
    }
    let flavor = client.flavor();
    match &state.batch {
        Some(current) if !is_same_batch(current, batch) => {
            return Err(Error::BatchInProgress {
                in_progress: current
                    .files
                    .first()
                    .map(|file| file.source_file.clone())
                    .unwrap_or_default(),
            });
        }
        Some(_) => {}
        None => {
            let new_batch = new_batch_state(client, state, batch)?;
            state.batch = Some(new_batch);
            save_state(save, state)?;
        }
    }
    loop {
        let Some(current) = state.batch.as_mut() else {
            return Err(Error::NoBatch);
        };
        match current.stage {
            BatchStage::Resetting => {
                client.execute(&flavor.stop_replica_statement())?;
                client.execute(&flavor.reset_replica_all_statement())?;
                current.stage = BatchStage::Placing;
            }
            BatchStage::Placing => {
                place_files(
                    flavor,
                    &current.files,
                    current.cut_last_at,
                    &state.relay_log_index,
                )?;
                current.stage = BatchStage::Configuring;
            }
            BatchStage::Configuring => {
                // A state read back from disk could hold anything: no indexing.
                let first = current.files.first().ok_or(Error::EmptyBatch)?;
                let relay_log_file = file_name(&first.relay_log)?;
                let start = RelayLogStart {
                    relay_log_file: &relay_log_file,
                    relay_log_pos: current.start_pos,
                    source_log: Some((&first.source_file, current.start_pos)),
                };
                client.execute(&flavor.change_source_to_relay_logs(&start))?;
                current.stage = BatchStage::Starting;
            }
            BatchStage::Starting | BatchStage::Running => {
                start_sql_thread(client, current)?;
                current.stage = BatchStage::Running;
                save_state(save, state)?;
                return Ok(());
            }
        }
        save_state(save, state)?;
    }
}

/// Starts the batch's SQL thread with its UNTIL clause. On MariaDB a stopped SQL thread is
/// first moved past the transactions the server already holds ([`mariadb_resume_point`]).
fn start_sql_thread(client: &mut Client, batch: &mut BatchState) -> Result<(), Error> {
    let flavor = client.flavor();
    if flavor.is_mariadb()
        && let Some(status) = client.replica_status()?
        && !status.sql_running
        && let Some(resume) = mariadb_resume_point(client, batch, &status)?
    {
        let start = RelayLogStart {
            relay_log_file: &resume.relay_log_file,
            relay_log_pos: resume.pos,
            source_log: Some((&resume.source_file, resume.pos)),
        };
        client.execute(&flavor.change_source_to_relay_logs(&start))?;
    }
    let until = batch.until.as_ref().map(BatchUntil::as_apply_until);
    client.execute(&flavor.start_sql_thread(until.as_ref())?)?;
    batch.n_sql_thread_starts += 1;
    Ok(())
}

/// Where a MariaDB SQL thread resumes the batch, when that is not where the server would.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResumePoint {
    relay_log_file: String,
    source_file: String,
    /// Offset of the GTID event of the first transaction the server does not hold.
    pos: u64,
}

/// MariaDB keeps the SQL thread's position in `relay-log.info`, a plain file written after
/// each commit, so a mysqld killed between a commit and that write restarts one transaction
/// early, and replaying it again fails (ERROR 1950 under `gtid_strict_mode`, 1062 without).
/// What is committed is known for sure from the GTIDs (`gtid_slave_pos` is updated in the
/// transaction itself, and the binlog decides crash recovery): this reads the relay logs from
/// the server's position and returns the first transaction it does not hold, when applied ones
/// come before it. `None`: the server's position is right, or it is not in this batch's files
/// (nothing to correct it with). MySQL needs none of this: its position is kept in a table,
/// and GTID auto-skip passes over what it holds.
fn mariadb_resume_point(
    client: &mut Client,
    batch: &BatchState,
    status: &db::ReplicaStatus,
) -> Result<Option<ResumePoint>, Error> {
    let Some(first) = batch.files.iter().position(|file| {
        file_name(&file.relay_log).is_ok_and(|name| name == status.relay_log_file)
    }) else {
        return Ok(None);
    };
    let held = client.gtid_state()?.executed();
    let resume_at = |file: &HandedOverFile, pos| -> Result<Option<ResumePoint>, Error> {
        Ok(Some(ResumePoint {
            relay_log_file: file_name(&file.relay_log)?,
            source_file: file.source_file.clone(),
            pos,
        }))
    };
    // The end of the last held transaction passed over, in which file.
    let mut skipped: Option<(&HandedOverFile, u64)> = None;
    for (index, file) in batch.files.iter().enumerate().skip(first) {
        let from = if index == first {
            status.relay_log_pos
        } else {
            0
        };
        let options = ReadOptions {
            tail: Tail::Tolerate,
            ..ReadOptions::default()
        };
        let mut reader = BinlogReader::open(&file.relay_log, options)?;
        while let Some(transaction) = reader.next_transaction()? {
            if transaction.start < from {
                continue;
            }
            let is_held = transaction
                .gtid
                .as_ref()
                .is_some_and(|gtid| in_snapshot(&held, gtid));
            if is_held {
                skipped = Some((file, transaction.end));
                continue;
            }
            return match skipped {
                Some(_) => resume_at(file, transaction.start),
                None => Ok(None),
            };
        }
    }
    // Everything left is held (the SQL thread then has nothing to do and polling sees the
    // batch complete from the GTIDs): after the last transaction, not where it would replay.
    match skipped {
        Some((file, end)) => resume_at(file, end),
        None => Ok(None),
    }
}

/// Whether `batch` is the one `current` records (the same downloads of the same binlogs).
fn is_same_batch(current: &BatchState, batch: &[BatchFile]) -> bool {
    current.files.len() == batch.len()
        && current.files.iter().zip(batch).all(|(handed, file)| {
            handed.source_file == file.plan.source_file && handed.download_path == file.path
        })
}

/// Checks `batch` and works out its relay log names, start, stop and expected GTIDs.
fn new_batch_state(
    client: &mut Client,
    state: &ApplyState,
    batch: &[BatchFile],
) -> Result<BatchState, Error> {
    let flavor = client.flavor();
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Err(Error::EmptyBatch);
    };
    let prefix = relay_log_prefix(state)?;
    for (index, file) in batch.iter().enumerate() {
        if !file.plan.is_applied() {
            return Err(Error::NotToApply {
                source_file: file.plan.source_file.clone(),
                action: file.plan.action.name(),
            });
        }
        if file.plan.stop().is_some() && index + 1 != batch.len() {
            return Err(Error::StopNotLast {
                source_file: file.plan.source_file.clone(),
            });
        }
    }
    // The same server id would make the server skip every replayed event silently (and hang
    // MySQL's applier under an UNTIL clause): refuse before handing anything over.
    let server_id = client.server_id()?;
    if batch
        .iter()
        .any(|file| file.plan.server_ids.contains(&server_id))
    {
        return Err(Error::SameServerId { server_id });
    }
    let files: Vec<HandedOverFile> = batch
        .iter()
        .enumerate()
        .map(|(index, file)| HandedOverFile {
            source_file: file.plan.source_file.clone(),
            download_path: file.path.clone(),
            relay_log: PathBuf::from(log_file_name(prefix, index as u64 + 1)),
        })
        .collect();
    let mut expected_gtids = state.applied_gtids.clone();
    for file in batch {
        expected_gtids.union_with(&file.plan.gtids);
    }
    let until = match last.plan.stop() {
        None => None,
        Some(stop) => Some(match &stop.until {
            Until::AfterGtids(gtids) => BatchUntil::AfterGtids(gtids.clone()),
            // The relay log holding that binlog is the batch's last; the offsets are the
            // source's, as the files are byte copies.
            Until::SourcePosition { pos, .. } => {
                let last_relay_log = files.last().map(|file| file.relay_log.as_path());
                BatchUntil::RelayPosition {
                    file: file_name(last_relay_log.unwrap_or(Path::new("")))?,
                    pos: *pos,
                }
            }
        }),
    };
    if let Some(until) = &until {
        // Refuse a clause the flavour cannot run before touching anything.
        flavor.start_sql_thread(Some(&until.as_apply_until()))?;
    }
    Ok(BatchState {
        stage: BatchStage::Resetting,
        files,
        start_pos: first.plan.start_pos,
        expected_gtids,
        until,
        cut_last_at: last.plan.stop().map(|stop| stop.next_transaction_start),
        n_sql_thread_starts: 0,
    })
}

/// The relay log prefix as the UTF-8 text statements need; it must be absolute, like the
/// index entries written from it.
fn relay_log_prefix(state: &ApplyState) -> Result<&str, Error> {
    let problem = |what, path: &Path| Error::RelayLogPath {
        what,
        path: path.to_owned(),
    };
    for (what, path) in [
        ("prefix", &state.relay_log_prefix),
        ("index", &state.relay_log_index),
    ] {
        if !path.is_absolute() || path.to_str().is_none() || path.parent().is_none() {
            return Err(problem(what, path));
        }
    }
    state
        .relay_log_prefix
        .to_str()
        .ok_or_else(|| problem("prefix", &state.relay_log_prefix))
}

/// The last component of a relay log path, as statements name it.
fn file_name(path: &Path) -> Result<String, Error> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::RelayLogPath {
            what: "file",
            path: path.to_owned(),
        })
}

/// Moves each download to its relay log name (a file already moved there by an interrupted
/// earlier run is kept), writes the relay log index listing them, and makes both durable.
fn place_files(
    flavor: Flavor,
    files: &[HandedOverFile],
    cut_last_at: Option<u64>,
    index: &Path,
) -> Result<(), Error> {
    for file in files {
        match fs::symlink_metadata(&file.download_path) {
            Ok(_) => move_into_place(&file.download_path, &file.relay_log)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if !file.relay_log.is_file() {
                    return Err(Error::MissingFile {
                        path: file.download_path.clone(),
                        relay_log: file.relay_log.clone(),
                    });
                }
            }
            Err(err) => return Err(io_error("checking", &file.download_path)(err)),
        }
    }
    // Cut after the move, never the download: a download is what a resumed restore plans
    // from again, and a relay log is ours alone. Cutting to the same length twice is a no-op.
    if let (Some(cut_at), Some(last)) = (cut_last_at, files.last()) {
        cut_relay_log(&last.relay_log, cut_at)?;
    }
    let relay_logs: Vec<&Path> = files.iter().map(|file| file.relay_log.as_path()).collect();
    write_atomically(index, flavor.relay_log_index_text(&relay_logs).as_bytes())?;
    let directories: BTreeSet<&Path> = relay_logs
        .iter()
        .filter_map(|relay_log| relay_log.parent())
        .collect();
    for directory in directories {
        sync_directory(directory)?;
    }
    Ok(())
}

/// Shortens `relay_log` to `length` bytes (when longer) and syncs it.
fn cut_relay_log(relay_log: &Path, length: u64) -> Result<(), Error> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(relay_log)
        .map_err(io_error("opening to cut", relay_log))?;
    let current = file
        .metadata()
        .map_err(io_error("reading the size of", relay_log))?
        .len();
    if current > length {
        file.set_len(length)
            .and_then(|()| file.sync_all())
            .map_err(io_error("cutting", relay_log))?;
    }
    Ok(())
}

/// Renames `from` to `to`; across file systems, copies to a temporary name beside `to`,
/// syncs, renames, then removes `from`. `to` never shows a partial file.
fn move_into_place(from: &Path, to: &Path) -> Result<(), Error> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::CrossesDevices => {
            let temporary = with_suffix(to, ".copying");
            fs::copy(from, &temporary).map_err(io_error("copying to", &temporary))?;
            File::open(&temporary)
                .and_then(|copy| copy.sync_all())
                .map_err(io_error("syncing", &temporary))?;
            fs::rename(&temporary, to).map_err(io_error("renaming", &temporary))?;
            fs::remove_file(from).map_err(io_error("removing", from))
        }
        Err(err) => Err(io_error("moving into place", from)(err)),
    }
}

/// Writes `path` through a temporary file beside it, synced, then renamed over it.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let temporary = with_suffix(path, ".tmp");
    let mut file = File::create(&temporary).map_err(io_error("creating", &temporary))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("renaming", &temporary))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_directory(directory: &Path) -> Result<(), Error> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("syncing directory", directory))
}

/// Checks on the running batch, waiting up to `wait` (at least a second, capped below the
/// client's timeout; see [`Client::wait_for_gtids`]) for it to complete, so a caller can loop
/// on it without sleeping.
///
/// - Done once the server holds the batch's expected GTIDs; the state then records the batch
///   as applied and is saved.
/// - An SQL thread stopped on an error is [`Progress::Failed`].
/// - An SQL thread stopped without error and without an UNTIL condition (mysqld restarted:
///   replication is not started at boot) is started again with the batch's UNTIL clause.
/// - An SQL thread stopped at its UNTIL point without the expected GTIDs is
///   [`Error::StoppedShort`]: the plan and the files disagree.
pub fn poll_batch(
    client: &mut Client,
    state: &mut ApplyState,
    wait: Duration,
    save: &mut SaveState<'_>,
) -> Result<Progress, Error> {
    let Some(batch) = state.batch.as_mut() else {
        return Err(Error::NoBatch);
    };
    if batch.stage != BatchStage::Running {
        return Err(Error::BatchNotStarted { stage: batch.stage });
    }
    if client.wait_for_gtids(&batch.expected_gtids, wait)? {
        return complete_batch(state, save);
    }
    let status = client.replica_status()?.ok_or(Error::NoReplicaStatus)?;
    if !status.sql_running {
        // The thread may have stopped right after the wait gave up, having applied the last
        // transaction: look again now that it can no longer move.
        if client.wait_for_gtids(&batch.expected_gtids, Duration::ZERO)? {
            return complete_batch(state, save);
        }
        if status.last_sql_errno != 0 {
            return Ok(Progress::Failed {
                errno: status.last_sql_errno,
                message: status.last_sql_error,
            });
        }
        if status.until_condition != UntilCondition::None {
            return Err(Error::StoppedShort {
                condition: status.until_condition,
                file: status.until_log_file,
                pos: status.until_log_pos,
                expected: batch.expected_gtids.clone(),
            });
        }
        start_sql_thread(client, batch)?;
        save_state(save, state)?;
        return Ok(Progress::Running {
            relay_log_file: status.relay_log_file,
            relay_log_pos: status.relay_log_pos,
            source_log_file: status.relay_source_log_file,
            source_log_pos: status.exec_source_log_pos,
            sql_thread_state: status.sql_running_state,
            restarted: true,
        });
    }
    Ok(Progress::Running {
        relay_log_file: status.relay_log_file,
        relay_log_pos: status.relay_log_pos,
        source_log_file: status.relay_source_log_file,
        source_log_pos: status.exec_source_log_pos,
        sql_thread_state: status.sql_running_state,
        restarted: false,
    })
}

fn complete_batch(state: &mut ApplyState, save: &mut SaveState<'_>) -> Result<Progress, Error> {
    if let Some(batch) = state.batch.take() {
        state.applied_gtids = batch.expected_gtids;
        state.n_batches_applied += 1;
        state.n_files_applied += batch.files.len() as u64;
    }
    save_state(save, state)?;
    Ok(Progress::Done)
}

/// Ends the replay: `STOP REPLICA; RESET REPLICA ALL`, so the dummy replication source and
/// any relay logs left (after a stop in the middle of a file) are gone. Idempotent.
pub fn finish(
    client: &mut Client,
    state: &mut ApplyState,
    save: &mut SaveState<'_>,
) -> Result<(), Error> {
    let flavor = client.flavor();
    client.execute(&flavor.stop_replica_statement())?;
    client.execute(&flavor.reset_replica_all_statement())?;
    state.batch = None;
    state.finished = true;
    save_state(save, state)
}

// ---------------------------------------------------------------------------------------------
// Serde helpers
// ---------------------------------------------------------------------------------------------

/// A [`Gtid`] as its text (`uuid:5`, `uuid:tag:5`, `0-1-5`).
mod gtid_text {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::gtid::Gtid;

    pub fn serialize<S: Serializer>(gtid: &Gtid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(gtid)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Gtid, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// An optional [`Gtid`] as its text, or null.
mod optional_gtid_text {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::gtid::Gtid;

    pub fn serialize<S: Serializer>(gtid: &Option<Gtid>, serializer: S) -> Result<S::Ok, S::Error> {
        match gtid {
            Some(gtid) => serializer.collect_str(gtid),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Gtid>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| text.parse().map_err(de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    //! The planner against the real binlogs in `tests/data/binlog` (MariaDB 10.11 and MySQL
    //! 9.7). Expected values come from the transactions the binlog reader finds in each file
    //! (itself tested against the servers' own `SHOW BINLOG EVENTS`), never from constants that
    //! would change when the fixtures are made again.

    use std::path::{Path, PathBuf};

    use super::*;

    fn fixture_dir(flavor: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/binlog")
            .join(flavor)
    }

    /// The fixture binlogs of `flavor`, as a restore's files from position 4.
    fn fixture_files(flavor: &str) -> Vec<BinlogFile> {
        let mut paths: Vec<PathBuf> = fs::read_dir(fixture_dir(flavor))
            .expect("fixture directory")
            .map(|entry| entry.expect("fixture entry").path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("binlog.0"))
            })
            .collect();
        paths.sort();
        assert!(paths.len() >= 5, "too few {flavor} fixtures: {paths:?}");
        paths
            .into_iter()
            .map(|path| BinlogFile {
                source_file: path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .expect("name")
                    .to_owned(),
                path,
                start_pos: BINLOG_START,
            })
            .collect()
    }

    /// Every complete transaction of a file, in order.
    fn transactions(file: &BinlogFile) -> Vec<Transaction> {
        let options = ReadOptions {
            tail: Tail::Tolerate,
            ..ReadOptions::default()
        };
        let reader = BinlogReader::open(&file.path, options).expect("opening a fixture");
        reader
            .collect::<Result<Vec<_>, _>>()
            .expect("reading a fixture")
    }

    fn mariadb() -> Flavor {
        Flavor::parse("10.11.14-MariaDB-0+deb12u2-log").expect("MariaDB version")
    }

    fn mysql() -> Flavor {
        Flavor::parse("9.7.4-2").expect("MySQL version")
    }

    fn both() -> [(&'static str, Flavor); 2] {
        [("mariadb", mariadb()), ("mysql", mysql())]
    }

    fn ok<T>(result: Result<T, Error>) -> T {
        match result {
            Ok(value) => value,
            Err(err) => panic!("{err}"),
        }
    }

    fn gtid_set(transactions: &[&Transaction]) -> GtidSet {
        transactions
            .iter()
            .filter_map(|transaction| transaction.gtid.clone())
            .collect()
    }

    fn actions(restore_plan: &ApplyPlan) -> Vec<&'static str> {
        restore_plan
            .files
            .iter()
            .map(|file| file.action.name())
            .collect()
    }

    /// The microsecond instant `commit_time_us` as a target.
    fn time_target(commit_time_us: u64, approximate_ok: bool) -> RestoreTarget {
        let micros = i64::try_from(commit_time_us).expect("commit time in range");
        RestoreTarget::Time {
            at: DateTime::from_timestamp_micros(micros).expect("a time"),
            approximate_ok,
        }
    }

    #[test]
    fn latest_applies_every_file_with_transactions() {
        for (name, flavor) in both() {
            let files = fixture_files(name);
            let restore_plan = ok(plan(
                flavor,
                &GtidSet::new(),
                &files,
                &RestoreTarget::Latest,
            ));
            assert_eq!(restore_plan.files.len(), files.len());
            let mut all = GtidSet::new();
            let mut last = None;
            for (file, planned) in files.iter().zip(&restore_plan.files) {
                let transactions = transactions(file);
                let expected = if transactions.is_empty() {
                    "skip"
                } else {
                    "apply"
                };
                assert_eq!(
                    planned.action.name(),
                    expected,
                    "{name} {}",
                    file.source_file
                );
                assert_eq!(planned.n_transactions, transactions.len() as u64);
                let gtids = gtid_set(&transactions.iter().collect::<Vec<_>>());
                assert_eq!(planned.gtids, gtids, "{name} {}", file.source_file);
                all.union_with(&gtids);
                if let Some(transaction) = transactions.last() {
                    last = Some((file.source_file.clone(), transaction.start));
                }
            }
            assert!(!restore_plan.target_reached, "Latest is never reached");
            assert!(!restore_plan.nothing_to_apply());
            assert_eq!(restore_plan.expected_gtids, all, "{name}");
            let last_applied = restore_plan
                .last_applied
                .as_ref()
                .expect("a last transaction");
            assert_eq!(
                Some((last_applied.source_file.clone(), last_applied.start)),
                last
            );
            assert!(restore_plan.files.iter().all(|file| file.stop().is_none()));
            // The fixtures were written by server 1 (and MariaDB's session server_id=7 once).
            assert!(
                restore_plan.server_ids().contains(&1),
                "{:?}",
                restore_plan.server_ids()
            );
        }
        // Both fixture sets have empty files (rotations right after a setting change).
        let restore_plan = ok(plan(
            mysql(),
            &GtidSet::new(),
            &fixture_files("mysql"),
            &RestoreTarget::Latest,
        ));
        assert!(
            actions(&restore_plan).contains(&"skip"),
            "{:?}",
            actions(&restore_plan)
        );
    }

    /// A GTID with transactions after it in its own file: the SQL thread stops before the next
    /// one, and nothing later is read.
    #[test]
    fn gtid_target_in_the_middle_of_a_file() {
        for (name, flavor) in both() {
            let mut files = fixture_files(name);
            // The first file's fourth transaction, which has others after it.
            let first = transactions(&files[0]);
            assert!(first.len() > 5, "{name}: {} transactions", first.len());
            let stop = &first[3];
            let next = &first[4];
            let target = stop.gtid.clone().expect("a GTID");
            // Later files are never read: they need not even exist.
            files[1].path = PathBuf::from("/nonexistent/binlog");
            let restore_plan = ok(plan(
                flavor,
                &GtidSet::new(),
                &files,
                &RestoreTarget::Gtid(target.clone()),
            ));
            let mut expected_actions = vec!["apply_until"];
            expected_actions.resize(files.len(), "not_needed");
            assert_eq!(actions(&restore_plan), expected_actions, "{name}");
            assert!(restore_plan.target_reached);
            let planned = &restore_plan.files[0];
            let stop_point = planned.stop().expect("a stop point");
            assert_eq!(stop_point.next_transaction_start, next.start);
            let until = if flavor.is_mysql() {
                Until::AfterGtids(GtidSet::from_gtid(&target))
            } else {
                Until::SourcePosition {
                    file: files[0].source_file.clone(),
                    pos: next.start,
                }
            };
            assert_eq!(stop_point.until, until, "{name}");
            assert_eq!(planned.n_transactions, 4);
            let applied: Vec<&Transaction> = first[..4].iter().collect();
            assert_eq!(restore_plan.expected_gtids, gtid_set(&applied));
            assert_eq!(planned.gtids, gtid_set(&applied));
            let last = restore_plan.last_applied.as_ref().expect("last applied");
            assert_eq!(last.gtid.as_ref(), Some(&target));
            assert_eq!((last.start, last.end), (stop.start, stop.end));
            // The stop offset is where the stop transaction ends, unless something that is not
            // a transaction sits in between.
            assert!(stop.end <= next.start);
            // The clause as the flavour writes it.
            let statement = flavor.start_sql_thread(Some(&stop_point.until.as_apply_until()));
            let statement = statement.expect("a statement");
            assert!(statement.contains("UNTIL"), "{statement}");
        }
    }

    #[test]
    fn gtid_target_last_in_its_file_applies_the_whole_file() {
        for (name, flavor) in both() {
            let files = fixture_files(name);
            let first = transactions(&files[0]);
            let last = first.last().expect("transactions");
            let target = last.gtid.clone().expect("a GTID");
            let restore_plan = ok(plan(
                flavor,
                &GtidSet::new(),
                &files,
                &RestoreTarget::Gtid(target),
            ));
            let mut expected_actions = vec!["apply"];
            expected_actions.resize(files.len(), "not_needed");
            assert_eq!(actions(&restore_plan), expected_actions, "{name}");
            assert!(restore_plan.target_reached);
            assert_eq!(
                restore_plan.expected_gtids,
                gtid_set(&first.iter().collect::<Vec<_>>())
            );
        }
    }

    #[test]
    fn gtid_target_in_the_snapshot_needs_nothing() {
        for (name, flavor) in both() {
            let files = fixture_files(name);
            let first = transactions(&files[0]);
            let target = first[2].gtid.clone().expect("a GTID");
            let snapshot = gtid_set(&first[..5].iter().collect::<Vec<_>>());
            let restore_plan = ok(plan(
                flavor,
                &snapshot,
                &files,
                &RestoreTarget::Gtid(target),
            ));
            assert!(
                restore_plan.nothing_to_apply(),
                "{name}: {:?}",
                actions(&restore_plan)
            );
            assert!(
                restore_plan
                    .files
                    .iter()
                    .all(|file| file.action == FileAction::NotNeeded)
            );
            assert_eq!(restore_plan.expected_gtids, snapshot);
            assert_eq!(restore_plan.last_applied, None);
        }
    }

    #[test]
    fn missing_gtid_targets_are_errors() {
        // Never seen at all: an error at the end, after reading every file.
        let files = fixture_files("mysql");
        let absent: Gtid = "16926568-e922-11f1-804a-02fc0000ffff:3"
            .parse()
            .expect("gtid");
        let result = plan(
            mysql(),
            &GtidSet::new(),
            &files,
            &RestoreTarget::Gtid(absent.clone()),
        );
        assert!(
            matches!(&result, Err(Error::TargetNotFound { gtid }) if *gtid == absent),
            "{result:?}"
        );

        // A later transaction of the same origin comes first: an error right there, before the
        // replay goes past the target. The MySQL fixture has 11111111-...:7 and no :5.
        let skipped: Gtid = "11111111-2222-3333-4444-555555555555:5"
            .parse()
            .expect("gtid");
        let result = plan(
            mysql(),
            &GtidSet::new(),
            &files,
            &RestoreTarget::Gtid(skipped.clone()),
        );
        match result {
            Err(Error::TargetSkipped { target, seen, .. }) => {
                assert_eq!(target, skipped);
                assert_eq!(seen.sequence(), 7);
            }
            other => panic!("{other:?}"),
        }

        // MariaDB: sequence numbers are per domain. 0-5-3 names no transaction of these files
        // (0-1-3 does), and 0-1-4 proves it will not come.
        let files = fixture_files("mariadb");
        let skipped: Gtid = "0-5-3".parse().expect("gtid");
        let result = plan(
            mariadb(),
            &GtidSet::new(),
            &files,
            &RestoreTarget::Gtid(skipped),
        );
        assert!(
            matches!(&result, Err(Error::TargetSkipped { seen, .. }) if seen.to_string() == "0-1-4"),
            "{result:?}"
        );

        // A target of the other flavour.
        let result = StopPlanner::new(mariadb(), GtidSet::new(), RestoreTarget::Gtid(absent));
        assert!(
            matches!(result, Err(Error::TargetFlavor { .. })),
            "{result:?}"
        );
    }

    /// MySQL records commit times in microseconds: an exact time stops between two
    /// transactions of one file; the stop transaction's own time is "at or before".
    #[test]
    fn exact_time_stops_in_the_middle_of_a_file() {
        let files = fixture_files("mysql");
        let first = transactions(&files[0]);
        let (k, stop) = first
            .iter()
            .enumerate()
            .skip(2)
            .find(|(k, transaction)| {
                first
                    .get(k + 1)
                    .is_some_and(|next| next.commit_time_us > transaction.commit_time_us)
            })
            .expect("two transactions with different commit times");
        let restore_plan = ok(plan(
            mysql(),
            &GtidSet::new(),
            &files,
            &time_target(stop.commit_time_us, false),
        ));
        let mut expected_actions = vec!["apply_until"];
        expected_actions.resize(files.len(), "not_needed");
        assert_eq!(actions(&restore_plan), expected_actions);
        let stop_point = restore_plan.files[0].stop().expect("a stop");
        assert_eq!(stop_point.next_transaction_start, first[k + 1].start);
        assert_eq!(
            stop_point.until,
            Until::AfterGtids(GtidSet::from_gtid(stop.gtid.as_ref().expect("gtid")))
        );
        assert_eq!(
            restore_plan.expected_gtids,
            gtid_set(&first[..=k].iter().collect::<Vec<_>>())
        );

        // One microsecond earlier, the stop transaction is no longer included.
        let restore_plan = ok(plan(
            mysql(),
            &GtidSet::new(),
            &files,
            &time_target(stop.commit_time_us - 1, false),
        ));
        assert_eq!(
            restore_plan.files[0]
                .stop()
                .map(|stop| stop.next_transaction_start),
            Some(stop.start)
        );
    }

    #[test]
    fn time_before_the_first_transaction_needs_nothing() {
        for (name, flavor) in both() {
            let files = fixture_files(name);
            let first = transactions(&files[0]);
            let target = time_target(first[0].commit_time_us - 1, false);
            let restore_plan = ok(plan(flavor, &GtidSet::new(), &files, &target));
            assert!(
                restore_plan.nothing_to_apply(),
                "{name}: {:?}",
                actions(&restore_plan)
            );
            assert!(restore_plan.target_reached);
            assert_eq!(restore_plan.expected_gtids, GtidSet::new());
            // Approximately the same: the first file starts after the target.
            let target = time_target(first[0].commit_time_us - 1, true);
            let restore_plan = ok(plan(flavor, &GtidSet::new(), &files, &target));
            assert!(
                restore_plan.nothing_to_apply(),
                "{name}: {:?}",
                actions(&restore_plan)
            );
        }
    }

    /// A target between the last transaction of one file and the first of a later one, with
    /// empty files in between: the earlier file whole, the empty ones skipped, the rest not
    /// needed.
    #[test]
    fn time_in_files_without_transactions() {
        let files = fixture_files("mysql");
        let per_file: Vec<Vec<Transaction>> = files.iter().map(transactions).collect();
        // The first run of empty files with transactions on both sides.
        let empty = (1..files.len() - 1)
            .find(|&i| per_file[i].is_empty() && !per_file[i - 1].is_empty())
            .expect("an empty file after a non-empty one");
        let resume = (empty..files.len())
            .find(|&i| !per_file[i].is_empty())
            .expect("a non-empty file after the empty ones");
        let before = per_file[empty - 1].last().expect("a transaction");
        let after = &per_file[resume][0];
        assert!(before.commit_time_us < after.commit_time_us);
        let target = time_target(after.commit_time_us - 1, false);
        let restore_plan = ok(plan(mysql(), &GtidSet::new(), &files, &target));
        for (i, planned) in restore_plan.files.iter().enumerate() {
            let expected = if i < empty {
                if per_file[i].is_empty() {
                    "skip"
                } else {
                    "apply"
                }
            } else if i < resume {
                "skip"
            } else {
                "not_needed"
            };
            assert_eq!(
                planned.action.name(),
                expected,
                "file {i}: {:?}",
                actions(&restore_plan)
            );
        }
        assert!(restore_plan.target_reached);
        let last = restore_plan
            .last_applied
            .as_ref()
            .expect("a last transaction");
        assert_eq!(last.start, before.start);
        assert_eq!(last.source_file, files[empty - 1].source_file);
    }

    /// MySQL with `gtid_mode` OFF_PERMISSIVE writes anonymous transactions: a stop after one has
    /// no GTID for SQL_AFTER_GTIDS, so it stops by position.
    #[test]
    fn exact_time_after_an_anonymous_transaction_stops_by_position() {
        let files = fixture_files("mysql");
        let (index, anonymous) = files
            .iter()
            .enumerate()
            .find_map(|(i, file)| {
                let transactions = transactions(file);
                (transactions.len() >= 2 && transactions.iter().all(|t| t.gtid.is_none()))
                    .then_some((i, transactions))
            })
            .expect("a file of anonymous transactions");
        let stop = &anonymous[0];
        let target = time_target(stop.commit_time_us, false);
        let restore_plan = ok(plan(mysql(), &GtidSet::new(), &files, &target));
        let stop_point = restore_plan.files[index].stop().expect("a stop");
        assert_eq!(
            stop_point.until,
            Until::SourcePosition {
                file: files[index].source_file.clone(),
                pos: anonymous[1].start,
            }
        );
        assert_eq!(restore_plan.files[index].n_transactions, 1);
        assert!(restore_plan.files[index].gtids.is_empty());
    }

    /// With `approximate_ok`, every file whose first transaction is at or before the target is
    /// applied whole, even past the target; the first file starting after it ends the restore.
    #[test]
    fn approximate_time_applies_whole_files() {
        let files = fixture_files("mysql");
        let first = transactions(&files[0]);
        let second = transactions(&files[1]);
        // Between the first file's first transaction and the second file's first.
        let target = time_target(first[1].commit_time_us, true);
        let restore_plan = ok(plan(mysql(), &GtidSet::new(), &files, &target));
        let mut expected_actions = vec!["apply"];
        expected_actions.resize(files.len(), "not_needed");
        assert_eq!(actions(&restore_plan), expected_actions);
        assert_eq!(restore_plan.files[0].n_transactions, first.len() as u64);
        // At the second file's first transaction: both files, whole.
        let target = time_target(second[0].commit_time_us, true);
        let restore_plan = ok(plan(mysql(), &GtidSet::new(), &files, &target));
        assert_eq!(&actions(&restore_plan)[..3], ["apply", "apply", "skip"]);
        assert_eq!(restore_plan.files[1].n_transactions, second.len() as u64);
        assert!(restore_plan.files.iter().all(|file| file.stop().is_none()));

        // MariaDB records whole seconds: the second of the first transaction covers the files
        // written within it, and a file of the next second is not needed.
        let files = fixture_files("mariadb");
        let per_file: Vec<Vec<Transaction>> = files.iter().map(transactions).collect();
        let first_second = per_file[0][0].commit_time_us;
        let target = time_target(first_second, true);
        let restore_plan = ok(plan(mariadb(), &GtidSet::new(), &files, &target));
        for (i, planned) in restore_plan.files.iter().enumerate() {
            let expected = match per_file[i].first() {
                None => "skip",
                Some(first) if first.commit_time_us <= first_second => "apply",
                Some(_) => "not_needed",
            };
            if expected == "not_needed" {
                assert!(
                    restore_plan.files[i..]
                        .iter()
                        .all(|f| f.action == FileAction::NotNeeded)
                );
                break;
            }
            assert_eq!(
                planned.action.name(),
                expected,
                "file {i}: {:?}",
                actions(&restore_plan)
            );
        }
    }

    /// The restore's first file starts at the snapshot's position: only what follows counts.
    #[test]
    fn first_file_starts_at_the_snapshot_position() {
        for (name, flavor) in both() {
            let mut files = fixture_files(name);
            let first = transactions(&files[0]);
            let snapshot = gtid_set(&first[..3].iter().collect::<Vec<_>>());
            files[0].start_pos = first[3].start;
            let restore_plan = ok(plan(flavor, &snapshot, &files, &RestoreTarget::Latest));
            assert_eq!(restore_plan.files[0].start_pos, first[3].start);
            assert_eq!(restore_plan.files[0].n_transactions, first.len() as u64 - 3);
            let rest = gtid_set(&first[3..].iter().collect::<Vec<_>>());
            assert_eq!(restore_plan.files[0].gtids, rest, "{name}");
            assert!(restore_plan.expected_gtids.contains(&snapshot));

            // A position inside a transaction is refused.
            files[0].start_pos = first[3].start + 1;
            let result = plan(flavor, &snapshot, &files, &RestoreTarget::Latest);
            assert!(
                matches!(result, Err(Error::StartInsideTransaction { start, .. }) if start == first[3].start),
                "{name}: {result:?}"
            );
        }
    }

    /// MariaDB replays whatever it is handed: held transactions leading a file are skipped by
    /// starting the file after them. MySQL skips those itself, so they are only left out of the
    /// restore_plan.
    #[test]
    fn transactions_already_in_the_snapshot() {
        let files = fixture_files("mariadb");
        let first = transactions(&files[0]);
        let snapshot: GtidSet = "0-1:1-5".parse().expect("set");
        let restore_plan = ok(plan(mariadb(), &snapshot, &files, &RestoreTarget::Latest));
        assert_eq!(restore_plan.files[0].start_pos, first[5].start);
        assert_eq!(restore_plan.files[0].n_transactions, first.len() as u64 - 5);

        // The same file twice (two servers' overlapping binlogs): the second copy holds nothing
        // new, and is skipped whole.
        let twice = [files[0].clone(), files[0].clone()];
        let restore_plan = ok(plan(mariadb(), &snapshot, &twice, &RestoreTarget::Latest));
        assert_eq!(restore_plan.files[1].action, FileAction::Skip);

        let files = fixture_files("mysql");
        let first = transactions(&files[0]);
        let snapshot = gtid_set(&first[..5].iter().collect::<Vec<_>>());
        let restore_plan = ok(plan(mysql(), &snapshot, &files, &RestoreTarget::Latest));
        assert_eq!(restore_plan.files[0].n_transactions, first.len() as u64 - 5);
        assert!(
            restore_plan.files[0]
                .gtids
                .intersection(&snapshot)
                .is_empty()
        );
        let all = gtid_set(&first.iter().collect::<Vec<_>>());
        assert!(restore_plan.expected_gtids.contains(&all));
    }

    #[test]
    fn binlogs_of_the_other_flavour_are_refused() {
        let files = fixture_files("mariadb");
        let result = plan(mysql(), &GtidSet::new(), &files, &RestoreTarget::Latest);
        assert!(
            matches!(
                result,
                Err(Error::FlavorMismatch {
                    found: binlog::Flavor::Mariadb,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    /// The planner used file by file stops asking for files once the target is reached.
    #[test]
    fn planner_reports_when_no_more_files_are_needed() {
        let files = fixture_files("mariadb");
        let first = transactions(&files[0]);
        let target = RestoreTarget::Gtid(first[1].gtid.clone().expect("gtid"));
        let mut planner = ok(StopPlanner::new(mariadb(), GtidSet::new(), target));
        assert!(!planner.is_reached());
        let planned = ok(planner.plan_file(&files[0]));
        assert!(planned.stop().is_some());
        assert!(planner.is_reached());
        assert_eq!(
            planner.expected_gtids(),
            &gtid_set(&first[..2].iter().collect::<Vec<_>>())
        );
        let later = ok(planner.plan_file(&files[1]));
        assert_eq!(later.action, FileAction::NotNeeded);
        let restore_plan = ok(planner.finish());
        assert_eq!(restore_plan.files.len(), 2);
    }

    #[test]
    fn plans_and_states_round_trip_through_json() {
        let files = fixture_files("mysql");
        let first = transactions(&files[0]);
        let target = RestoreTarget::Gtid(first[3].gtid.clone().expect("gtid"));
        let restore_plan = ok(plan(mysql(), &GtidSet::new(), &files, &target));
        let json = serde_json::to_string(&restore_plan).expect("serialize");
        let back: ApplyPlan = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, restore_plan);

        let targets = [
            RestoreTarget::Latest,
            target,
            RestoreTarget::time(1_795_646_816, true).expect("time"),
        ];
        for target in targets {
            let json = serde_json::to_string(&target).expect("serialize");
            let back: RestoreTarget = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, target, "{json}");
        }

        let mut state = ApplyState::new("/r/relay".into(), "/r/relay.index".into());
        state.prepared = true;
        state.applied_gtids = restore_plan.expected_gtids.clone();
        state.batch = Some(BatchState {
            stage: BatchStage::Configuring,
            files: vec![HandedOverFile {
                source_file: "binlog.000001".to_owned(),
                download_path: "/d/binlog.000001".into(),
                relay_log: "/r/relay.000001".into(),
            }],
            start_pos: 4,
            expected_gtids: restore_plan.expected_gtids.clone(),
            until: Some(BatchUntil::RelayPosition {
                file: "relay.000001".to_owned(),
                pos: 1234,
            }),
            cut_last_at: Some(1234),
            n_sql_thread_starts: 0,
        });
        let json = serde_json::to_string(&state).expect("serialize");
        let back: ApplyState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, state);
    }

    #[test]
    fn mysqld_options_for_the_replay() {
        let prefix = Path::new("/var/lib/mysql/relay");
        let index = Path::new("/var/lib/mysql/relay.index");
        let mysql_options = ok(apply_mysqld_options(mysql(), 2, 1, prefix, index));
        assert!(mysql_options.contains(&"--server-id=2".to_owned()));
        assert!(mysql_options.contains(&"--relay-log-recovery=OFF".to_owned()));
        assert!(mysql_options.contains(&"--disable-log-bin".to_owned()));
        let mariadb_options = ok(apply_mysqld_options(mariadb(), 2, 1, prefix, index));
        assert!(mariadb_options.contains(&"--skip-slave-start".to_owned()));
        assert!(
            !mariadb_options
                .iter()
                .any(|option| option.contains("log-bin")),
            "{mariadb_options:?}"
        );
        let result = apply_mysqld_options(mysql(), 1, 1, prefix, index);
        assert!(
            matches!(
                result,
                Err(Error::Flavor(flavor::Error::SameServerId { server_id: 1 }))
            ),
            "{result:?}"
        );
    }
}

//! Full snapshots ("basebackups"): taking one of the running server into object storage, and
//! restoring one into an empty data directory.
//!
//! Taking one ([`take_snapshot`]) runs the snapshot tool [`choose_snapshot_tool`] picks for
//! the server and streams its output, never staged on local disk, through the
//! [`crate::pipeline`] (our compression and rohmu encryption) into objects named as
//! MyHoard names them (`<site>/<stream_id>/basebackup.xbstream`, `.002`, ...; see [`split_key`]):
//!
//! - MariaDB: `mariabackup --backup --stream=xbstream`;
//! - MySQL with Percona XtraBackup on `PATH`: `xtrabackup --backup --stream=xbstream`, without
//!   XtraBackup's own compression and encryption (XtraBackup cannot be installed on this
//!   project's machines: its command lines and output parsing are unit-tested only);
//! - MySQL otherwise: the clone plugin. `CLONE LOCAL DATA DIRECTORY` copies the data into a
//!   private directory under `temporary_directory`; a throw-away mysqld is then started on the
//!   copy (no networking, no binlog, its own socket) because the clone's consistent point
//!   (`performance_schema.clone_status`) is only recorded when a server first starts on a
//!   cloned directory, never on the donor; then the directory goes out as a tar archive and is
//!   removed.
//!
//! The result ([`SnapshotResult`]) carries everything `basebackup.json` needs; writing it, and
//! closing the binlog the snapshot ended in, is the caller's (the backup stream's) job.
//!
//! Restoring one ([`restore_snapshot`]) fetches the splits in order straight into the stdin of
//! the extractor (`mbstream -x`, `xbstream -x`, `tar -x`), prepares the files
//! (`mariabackup`/`xtrabackup --prepare`; a clone needs none) and moves them into the data
//! directory, which must be empty or missing. Every split's MAC is checked by the pipeline; the
//! extractor may have written unauthenticated bytes by the time a check fails, so everything
//! is unpacked into a scratch directory that is deleted on any failure and never moved into
//! the data directory.
//!
//! Runs on a task thread, plus scoped helper threads per child process (see `child`) and per
//! transfer (see the pipeline). Blocks for as long as the snapshot takes; a cancel flag, checked
//! at least every 100 ms, kills the child process and ends the call with [`Error::Cancelled`].
//! Progress goes to a callback about once a second. Output of every child is logged line by
//! line under `myhoard::basebackup::<program>`. Errors are returned, typed, never logged here.
//! Mirrors Python MyHoard's `basebackup_operation.py` and `basebackup_restore_operation.py`.

mod child;
mod clone;
mod command;
mod datadir;
mod output;
mod restore;
mod split;
mod xbstream;

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::db::{self, Flavor, SnapshotTool, Version};
use crate::pipeline::encrypt;
use crate::pipeline::{self, Algorithm, Encoding, PublicKey};
use crate::storage::{Metadata, ObjectStorage};

pub use datadir::counts_toward_estimate;
pub use output::{LsnInfo, SnapshotPosition};
pub use restore::{
    RestoreProgress, RestoreSnapshotJob, RestoreStage, RestoredSnapshot, restore_snapshot,
};
pub use split::{FIRST_SPLIT_NAME, split_key};

/// The oldest MySQL with the clone plugin.
const CLONE_PLUGIN_MINIMUM: Version = Version::new(8, 0, 17);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a snapshot or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cancel flag was set; the child process was killed.
    #[error("cancelled")]
    Cancelled,
    /// No tool can take a snapshot of this server here.
    #[error("no snapshot tool for {flavor}: {}", .reasons.join("; "))]
    NoSnapshotTool {
        flavor: String,
        reasons: Vec<String>,
    },
    /// A program the restore needs is not installed.
    #[error("{program} not found in PATH")]
    ProgramNotFound { program: String },
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for a child process: {source}")]
    Wait { source: std::io::Error },
    /// The child process failed by itself; its last output lines say why.
    #[error("{program} exited with {status}{}", tail_text(.stderr_tail))]
    ToolFailed {
        program: String,
        status: String,
        stderr_tail: Vec<String>,
    },
    /// XtraBackup failed because the redo log was overwritten before it was copied (MyHoard's
    /// `BlockMismatchError`): the server writes redo faster than the backup reads it.
    #[error(
        "{program} failed: the redo log wrapped around before it was copied (log block mismatch){}",
        tail_text(.stderr_tail)
    )]
    BlockMismatch {
        program: String,
        stderr_tail: Vec<String>,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the snapshot stream: {source}")]
    ReadStream { source: std::io::Error },
    /// The tool produced no bytes at all.
    #[error("the snapshot tool produced an empty stream")]
    EmptyStream,
    #[error("uploading {key}: {source}")]
    Upload {
        key: String,
        source: pipeline::Error,
    },
    #[error("downloading {key}: {source}")]
    Download {
        key: String,
        source: pipeline::Error,
    },
    /// A split could not be authenticated: it was modified, cut short, or encrypted for
    /// another key. Nothing from the restore was kept.
    #[error("{key} failed its integrity check: {source}")]
    Integrity { key: String, source: encrypt::Error },
    #[error(transparent)]
    Database(#[from] db::Error),
    #[error(transparent)]
    Flavor(db::flavor::Error),
    /// A `client_params` value cannot be written into an option file (it holds both kinds of
    /// quote). The value itself is not in the message: it may be the password.
    #[error("mysql.client_params.{key} cannot be written into an option file")]
    UnwritableOption { key: String },
    #[error(
        "the data directory {path} is not empty: a snapshot is restored only into an empty or missing one"
    )]
    DataDirectoryNotEmpty { path: PathBuf },
    #[error("the restore work directory {path} is not empty")]
    WorkDirectoryNotEmpty { path: PathBuf },
    /// The throw-away mysqld on a cloned directory failed.
    #[error("temporary server on the cloned data: {message}{}", tail_text(.log_tail))]
    TemporaryServer {
        message: String,
        log_tail: Vec<String>,
    },
}

impl Error {
    /// Errors that say more than a child's failure they may have caused: a tampered split
    /// makes the extractor choke on garbage, but the tampering is the news.
    fn outranks_tool_failure(&self) -> bool {
        matches!(self, Error::Integrity { .. } | Error::Cancelled)
    }

    /// Whether this is [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last output:\n  {}", lines.join("\n  "))
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// The names `basebackup.json` (`snapshot_tool`) and logs use: `mariabackup`, `xtrabackup`,
/// `clone`.
impl fmt::Display for SnapshotTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotTool::MariaBackup => "mariabackup",
            SnapshotTool::XtraBackup => "xtrabackup",
            SnapshotTool::ClonePlugin => "clone",
        })
    }
}

impl FromStr for SnapshotTool {
    type Err = String;

    fn from_str(name: &str) -> Result<SnapshotTool, String> {
        match name {
            "mariabackup" => Ok(SnapshotTool::MariaBackup),
            "xtrabackup" => Ok(SnapshotTool::XtraBackup),
            "clone" => Ok(SnapshotTool::ClonePlugin),
            other => Err(format!(
                "unknown snapshot tool {other:?} (expected mariabackup, xtrabackup or clone)"
            )),
        }
    }
}

impl Serialize for SnapshotTool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SnapshotTool {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// How the snapshot stream is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// XtraBackup's stream format (mariabackup's `mbstream` is the same).
    Xbstream,
    /// A POSIX tar archive of the cloned data directory.
    Tar,
}

impl ArchiveFormat {
    pub fn of(tool: SnapshotTool) -> ArchiveFormat {
        match tool {
            SnapshotTool::MariaBackup | SnapshotTool::XtraBackup => ArchiveFormat::Xbstream,
            SnapshotTool::ClonePlugin => ArchiveFormat::Tar,
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Xbstream => "xbstream",
            ArchiveFormat::Tar => "tar",
        })
    }
}

/// A program found on `PATH`, with what it says to `--version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledProgram {
    pub path: PathBuf,
    /// stdout and stderr of `<program> --version`; empty when it would not say.
    pub version_output: String,
}

/// The tool picked for a server, and why the ones preferred over it were not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolChoice {
    pub tool: SnapshotTool,
    /// The program to run; `None` for the clone plugin, which is SQL.
    pub program: Option<PathBuf>,
    /// One line per preferred tool passed over, for the log.
    pub passed_over: Vec<String>,
}

/// The one place that decides which tool snapshots a server, by flavour and version, from the
/// programs `installed` finds (see [`probe_program`]). Tried in [`Flavor::snapshot_tools`]
/// order:
///
/// - mariabackup (`mariadb-backup`, then `mariabackup`) must come from the server's own
///   major.minor series: MariaDB supports a backup tool only with its own series;
/// - XtraBackup must be built for the server's major.minor series (PXB 8.0 for MySQL 8.0, 8.4
///   for 8.4, ...); XtraBackup itself refuses what it cannot handle within a series;
/// - the clone plugin needs MySQL 8.0.17 or later.
///
/// A tool whose version output cannot be read is given the benefit of the doubt.
pub fn choose_snapshot_tool(
    flavor: Flavor,
    installed: &dyn Fn(&str) -> Option<InstalledProgram>,
) -> Result<ToolChoice, Error> {
    let server = flavor.version();
    let same_series =
        |version: Version| version.major == server.major && version.minor == server.minor;
    let mut passed_over = Vec::new();
    for &tool in flavor.snapshot_tools() {
        match tool {
            SnapshotTool::MariaBackup | SnapshotTool::XtraBackup => {
                let Some(program) = tool.programs().iter().find_map(|name| installed(name)) else {
                    passed_over.push(format!(
                        "{tool}: {} not found",
                        tool.programs().join(" or ")
                    ));
                    continue;
                };
                match output::parse_tool_server_version(&program.version_output) {
                    Some(built_for) if !same_series(built_for) => passed_over.push(format!(
                        "{tool}: {} is built for {built_for}, the server is {flavor}",
                        program.path.display()
                    )),
                    _ => {
                        return Ok(ToolChoice {
                            tool,
                            program: Some(program.path),
                            passed_over,
                        });
                    }
                }
            }
            SnapshotTool::ClonePlugin => {
                if server >= CLONE_PLUGIN_MINIMUM {
                    return Ok(ToolChoice {
                        tool,
                        program: None,
                        passed_over,
                    });
                }
                passed_over.push(format!(
                    "clone: needs MySQL {CLONE_PLUGIN_MINIMUM} or later, the server is {flavor}"
                ));
            }
        }
    }
    Err(Error::NoSnapshotTool {
        flavor: flavor.to_string(),
        reasons: passed_over,
    })
}

/// Looks `name` up in `PATH` (or, without one, the usual system directories).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// [`find_program`], plus what the program says to `--version`.
pub fn probe_program(name: &str) -> Option<InstalledProgram> {
    let path = find_program(name)?;
    let version_output = match Command::new(&path).arg("--version").output() {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        }
        Err(_) => String::new(),
    };
    Some(InstalledProgram {
        path,
        version_output,
    })
}

// ---------------------------------------------------------------------------------------------
// Taking a snapshot
// ---------------------------------------------------------------------------------------------

/// What to snapshot and where to put it.
pub struct SnapshotJob<'a> {
    pub flavor: Flavor,
    pub config: &'a Config,
    pub storage: &'a dyn ObjectStorage,
    /// `<site>/<stream_id>`: the splits go below it.
    pub key_prefix: &'a str,
    /// Our compression and, with a key, rohmu encryption of every split.
    pub encoding: Encoding<'a, PublicKey>,
    /// At most this many raw stream bytes per split; `None` (or 0): one object.
    pub split_size: Option<u64>,
    /// Stored with every split (MyHoard: `json={"backup_started_at": ..., "uploaded_from": ...}`).
    pub metadata: &'a Metadata,
    pub cancel: &'a AtomicBool,
    /// Called about once a second, from a helper thread.
    pub progress: &'a (dyn Fn(&SnapshotProgress) + Sync),
}

/// What a snapshot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStage {
    /// `CLONE LOCAL DATA DIRECTORY` is copying the data.
    Cloning,
    /// A temporary server on the cloned data is recording its consistent point.
    ReadingClonePosition,
    /// The stream is being stored.
    Streaming,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    pub stage: SnapshotStage,
    /// Raw stream bytes read from the tool so far.
    pub original_bytes: u64,
    /// Bytes sent to storage so far (compressed and encrypted).
    pub stored_bytes: u64,
    /// About how many raw bytes the stream will have (MyHoard's "filtered size" of the data
    /// directory; for a clone, the cloned directory's size). 0 when unknown.
    pub estimated_total_bytes: u64,
    /// Files the tool finished.
    pub files_done: u64,
    /// Splits stored so far.
    pub splits_done: u32,
}

impl SnapshotProgress {
    /// `original_bytes / estimated_total_bytes` as a percentage, at most 100; `None` without an
    /// estimate. (Redo copied during the backup can make the stream longer than the estimate.)
    pub fn estimated_percent(&self) -> Option<f64> {
        (self.estimated_total_bytes > 0).then(|| {
            (self.original_bytes as f64 * 100.0 / self.estimated_total_bytes as f64).min(100.0)
        })
    }
}

/// A finished snapshot: everything `basebackup.json` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub tool: SnapshotTool,
    pub format: ArchiveFormat,
    /// `tool_version` of `xtrabackup_info` (`10.11.14-MariaDB`, `8.0.35-30`); for a clone, the
    /// server's version.
    pub tool_version: Option<String>,
    /// The binlog the consistent point is in (`binlog.000012`); `None` when the server runs
    /// without a binlog.
    pub binlog_name: Option<String>,
    /// Its numeric suffix.
    pub binlog_index: Option<u64>,
    /// The offset in it where the first transaction after the snapshot starts.
    pub binlog_position: Option<u64>,
    /// The server's GTIDs at the consistent point in its own syntax (MySQL `uuid:1-100,...`,
    /// MariaDB `0-1-128,...`).
    pub gtid: Option<String>,
    /// The redo log range copied (mariabackup, XtraBackup).
    pub lsn_info: Option<LsnInfo>,
    /// The text of `xtrabackup_checkpoints` (mariabackup, XtraBackup).
    pub checkpoints_file_content: Option<String>,
    pub number_of_splits: u32,
    /// Bytes stored over all splits.
    pub compressed_size: u64,
    /// Bytes of the raw stream.
    pub original_size: u64,
    /// Data directory bytes before and after; `None` when it could not be measured.
    pub start_size: Option<u64>,
    pub end_size: Option<u64>,
    /// Files in the snapshot.
    pub number_of_files: u64,
    /// Unix time (seconds) when the snapshot started and when the tool finished. MyHoard's
    /// `end_ts` is one second later, after the caller closed the binlog; that is the caller's.
    pub start_ts: f64,
    pub end_ts: f64,
    pub compression_algorithm: Algorithm,
}

impl SnapshotResult {
    /// The consistent point, when the server had a binlog.
    pub fn position(&self) -> Option<SnapshotPosition> {
        Some(SnapshotPosition {
            binlog_name: self.binlog_name.clone()?,
            binlog_index: self.binlog_index,
            binlog_position: self.binlog_position?,
            gtid: self.gtid.clone(),
        })
    }
}

/// Takes a full snapshot with the tool [`choose_snapshot_tool`] picks and stores it; see the
/// module doc. On failure, splits already stored stay (the caller deletes the stream's
/// objects); no partial split is ever visible.
pub fn take_snapshot(job: &SnapshotJob<'_>) -> Result<SnapshotResult, Error> {
    let choice = choose_snapshot_tool(job.flavor, &probe_program)?;
    for reason in &choice.passed_over {
        log::info!("snapshot tool passed over: {reason}");
    }
    log::info!(
        "taking a {} snapshot of {} into {}",
        choice.tool,
        job.flavor,
        split_key(job.key_prefix, 1)
    );
    match (choice.tool, &choice.program) {
        (SnapshotTool::ClonePlugin, _) => clone::take(job),
        (tool, Some(program)) => xbstream::take(job, tool, program),
        (tool, None) => Err(Error::ProgramNotFound {
            program: tool.to_string(),
        }),
    }
}

/// Counters behind a snapshot's progress reports, shared with the helper threads.
struct SnapshotMeter<'a> {
    job: &'a SnapshotJob<'a>,
    stage: Mutex<SnapshotStage>,
    original_bytes: AtomicU64,
    stored_bytes: AtomicU64,
    estimated_total_bytes: AtomicU64,
    files_done: AtomicU64,
    splits_done: AtomicU32,
}

impl<'a> SnapshotMeter<'a> {
    fn new(job: &'a SnapshotJob<'a>, stage: SnapshotStage, estimate: u64) -> SnapshotMeter<'a> {
        SnapshotMeter {
            job,
            stage: Mutex::new(stage),
            original_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            estimated_total_bytes: AtomicU64::new(estimate),
            files_done: AtomicU64::new(0),
            splits_done: AtomicU32::new(0),
        }
    }

    fn set_stage(&self, stage: SnapshotStage) {
        *child::lock(&self.stage) = stage;
        self.report();
    }

    fn report(&self) {
        let progress = SnapshotProgress {
            stage: *child::lock(&self.stage),
            original_bytes: self.original_bytes.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            estimated_total_bytes: self.estimated_total_bytes.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            splits_done: self.splits_done.load(Ordering::Relaxed),
        };
        (self.job.progress)(&progress);
    }
}

/// Runs `command` and stores its stdout as the snapshot's splits.
fn stream_to_storage(
    meter: &SnapshotMeter<'_>,
    command: &mut Command,
    name: &str,
    log_target: &str,
    on_line: &(dyn Fn(&str) -> output::Severity + Sync),
) -> Result<split::UploadedSplits, Error> {
    let job = meter.job;
    let unused = AtomicU64::new(0);
    let storage = split::MeteredStorage {
        inner: job.storage,
        stored: &meter.stored_bytes,
        fetched: &unused,
    };
    let on_tick = || meter.report();
    let supervision = child::Supervision {
        name,
        log_target,
        cancel: job.cancel,
        on_line,
        on_tick: &on_tick,
    };
    child::run(
        command,
        &supervision,
        child::DataPipe::Stdout,
        |stream, _| {
            let child::DataStream::Stdout(stdout) = stream else {
                return Err(Error::Spawn {
                    program: name.to_owned(),
                    source: std::io::Error::other("no stdout pipe"),
                });
            };
            let counted = split::CountingReader {
                inner: stdout,
                count: &meter.original_bytes,
                cancel: job.cancel,
            };
            // Large reads: the tool writes in big blocks and each read is a system call.
            let mut reader = BufReader::with_capacity(1 << 20, counted);
            split::upload_splits(
                &mut reader,
                &storage,
                job.key_prefix,
                job.split_size,
                job.metadata,
                &job.encoding,
                &|index| {
                    meter.splits_done.store(index, Ordering::Relaxed);
                    meter.report();
                },
            )
        },
    )
}

/// Measures the data directory for sizes and estimates. A failure only costs the estimate, so
/// it is logged here and not returned.
fn measure_data_dir(config: &Config) -> Option<datadir::DirSize> {
    let dir = &config.mysql.data_directory;
    match datadir::measure(dir) {
        Ok(size) => Some(size),
        Err(err) => {
            log::warn!(
                "cannot measure the data directory {}: {err}; snapshot progress has no estimate",
                dir.display()
            );
            None
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// A private scratch directory under `temporary_directory`, removed when dropped.
fn scratch_dir(config: &Config, prefix: &str) -> Result<tempfile::TempDir, Error> {
    let parent = &config.temporary_directory;
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        action: "creating",
        path: parent.clone(),
        source,
    })?;
    remove_stale_scratch_dirs(parent, prefix);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|source| Error::Io {
            action: "creating a directory in",
            path: parent.clone(),
            source,
        })
}

/// Removes what a daemon killed in the middle of a snapshot left under `temporary_directory`
/// (one snapshot runs at a time, so any directory of the kind is stale). A clone the server
/// still writes into the directory then fails, which ends it.
fn remove_stale_scratch_dirs(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => log::warn!(
                "removed {}, left by an interrupted snapshot",
                path.display()
            ),
            Err(err) => log::warn!("removing {}: {err}", path.display()),
        }
    }
}

/// Removes a scratch directory, logging (not returning) a failure: the work is done, and a
/// leftover directory under `temporary_directory` only costs space.
fn remove_scratch_dir(dir: tempfile::TempDir) {
    let path = dir.path().to_owned();
    if let Err(err) = dir.close() {
        log::warn!("removing {}: {err}", path.display());
    }
}

/// `path` made absolute against the current directory: the server and the tools resolve
/// relative paths against their own working directories.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|source| Error::Io {
        action: "resolving",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(programs: &[(&str, &str)]) -> impl Fn(&str) -> Option<InstalledProgram> {
        let programs: Vec<(String, String)> = programs
            .iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect();
        move |name: &str| {
            programs
                .iter()
                .find(|(program, _)| program == name)
                .map(|(program, version)| InstalledProgram {
                    path: PathBuf::from(format!("/usr/bin/{program}")),
                    version_output: version.clone(),
                })
        }
    }

    fn flavor(version: &str) -> Flavor {
        Flavor::parse(version).expect("flavor")
    }

    const MARIABACKUP_10_11: &str =
        "mariabackup based on MariaDB server 10.11.14-MariaDB debian-linux-gnu (x86_64)";
    const PXB_8_0: &str =
        "xtrabackup version 8.0.35-30 based on MySQL server 8.0.35 Linux (x86_64) (revision id: x)";

    #[test]
    fn mariadb_uses_mariabackup_of_its_own_series() {
        let choice = choose_snapshot_tool(
            flavor("10.11.6-MariaDB-log"),
            &installed(&[("mariabackup", MARIABACKUP_10_11)]),
        )
        .expect("choice");
        assert_eq!(choice.tool, SnapshotTool::MariaBackup);
        assert_eq!(choice.program, Some(PathBuf::from("/usr/bin/mariabackup")));
        // The newer name wins when both exist.
        let choice = choose_snapshot_tool(
            flavor("10.11.6-MariaDB-log"),
            &installed(&[
                ("mariabackup", MARIABACKUP_10_11),
                ("mariadb-backup", MARIABACKUP_10_11),
            ]),
        )
        .expect("choice");
        assert_eq!(
            choice.program,
            Some(PathBuf::from("/usr/bin/mariadb-backup"))
        );
        // Another series, or none at all: no tool.
        let err = choose_snapshot_tool(
            flavor("11.4.3-MariaDB"),
            &installed(&[("mariabackup", MARIABACKUP_10_11)]),
        )
        .expect_err("wrong series");
        assert!(err.to_string().contains("built for 10.11.14"), "{err}");
        let err =
            choose_snapshot_tool(flavor("10.11.6-MariaDB"), &installed(&[])).expect_err("missing");
        assert!(matches!(err, Error::NoSnapshotTool { .. }), "{err}");
    }

    #[test]
    fn mysql_prefers_xtrabackup_of_its_series_then_clone() {
        let choice = choose_snapshot_tool(flavor("8.0.36"), &installed(&[("xtrabackup", PXB_8_0)]))
            .expect("choice");
        assert_eq!(choice.tool, SnapshotTool::XtraBackup);
        assert!(choice.passed_over.is_empty());

        let choice = choose_snapshot_tool(flavor("8.4.3"), &installed(&[("xtrabackup", PXB_8_0)]))
            .expect("choice");
        assert_eq!(choice.tool, SnapshotTool::ClonePlugin);
        assert_eq!(choice.program, None);
        assert_eq!(choice.passed_over.len(), 1, "{:?}", choice.passed_over);

        let choice = choose_snapshot_tool(flavor("9.7.4-2"), &installed(&[])).expect("choice");
        assert_eq!(choice.tool, SnapshotTool::ClonePlugin);
        assert!(choice.passed_over[0].contains("xtrabackup not found"));

        // Unreadable version output: XtraBackup is tried anyway.
        let choice = choose_snapshot_tool(flavor("8.0.36"), &installed(&[("xtrabackup", "")]))
            .expect("choice");
        assert_eq!(choice.tool, SnapshotTool::XtraBackup);

        // Before 8.0.17 there is no clone plugin.
        let err = choose_snapshot_tool(flavor("8.0.16"), &installed(&[])).expect_err("none");
        assert!(err.to_string().contains("8.0.17"), "{err}");
    }

    #[test]
    fn tool_and_format_names() {
        for tool in [
            SnapshotTool::MariaBackup,
            SnapshotTool::XtraBackup,
            SnapshotTool::ClonePlugin,
        ] {
            let json = serde_json::to_string(&tool).expect("serialize");
            assert_eq!(json, format!("\"{tool}\""));
            let back: SnapshotTool = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, tool);
        }
        assert_eq!(
            ArchiveFormat::of(SnapshotTool::ClonePlugin).to_string(),
            "tar"
        );
        assert_eq!(
            serde_json::to_string(&ArchiveFormat::of(SnapshotTool::MariaBackup)).expect("json"),
            "\"xbstream\""
        );
        assert!("xtrabackupx".parse::<SnapshotTool>().is_err());
    }

    #[test]
    fn snapshot_result_round_trips_through_json() {
        let result = SnapshotResult {
            tool: SnapshotTool::MariaBackup,
            format: ArchiveFormat::Xbstream,
            tool_version: Some("10.11.14-MariaDB".into()),
            binlog_name: Some("binlog.000012".into()),
            binlog_index: Some(12),
            binlog_position: Some(4567),
            gtid: Some("0-1-128".into()),
            lsn_info: Some(LsnInfo { start: 10, end: 20 }),
            checkpoints_file_content: Some("backup_type = full-backuped\n".into()),
            number_of_splits: 3,
            compressed_size: 1000,
            original_size: 5000,
            start_size: Some(4000),
            end_size: None,
            number_of_files: 42,
            start_ts: 1.5,
            end_ts: 2.5,
            compression_algorithm: Algorithm::Zstd,
        };
        let json = serde_json::to_value(&result).expect("serialize");
        assert_eq!(json["tool"], "mariabackup");
        assert_eq!(json["format"], "xbstream");
        assert_eq!(json["compression_algorithm"], "zstd");
        let back: SnapshotResult = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, result);
        assert_eq!(
            result.position(),
            Some(SnapshotPosition {
                binlog_name: "binlog.000012".into(),
                binlog_index: Some(12),
                binlog_position: 4567,
                gtid: Some("0-1-128".into()),
            })
        );
    }

    #[test]
    fn progress_percent() {
        let mut progress = SnapshotProgress {
            stage: SnapshotStage::Streaming,
            original_bytes: 50,
            stored_bytes: 10,
            estimated_total_bytes: 200,
            files_done: 1,
            splits_done: 0,
        };
        assert_eq!(progress.estimated_percent(), Some(25.0));
        progress.original_bytes = 500;
        assert_eq!(progress.estimated_percent(), Some(100.0));
        progress.estimated_total_bytes = 0;
        assert_eq!(progress.estimated_percent(), None);
    }
}

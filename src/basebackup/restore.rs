//! Restoring a snapshot into an empty data directory: download → extract → prepare → move into
//! place (Python MyHoard's `BasebackupRestoreOperation`).
//!
//! All splits are fetched in order and decrypted, authenticated and decompressed by the
//! pipeline straight into the extractor's stdin, one continuous stream with no staged copy.
//! The extractor unpacks into `work_dir`; a split whose MAC fails may already have been partly
//! unpacked, so on any failure `work_dir` is deleted and nothing reaches the data directory.
//! The data directory must be empty or missing, before and after the download.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::output::{self, PrepareLog, Severity, SnapshotPosition};
use super::split::{CountingWriter, MeteredStorage, split_key};
use super::{Error, child, command, datadir, find_program, probe_program};
use crate::config::Config;
use crate::db::SnapshotTool;
use crate::pipeline::{self, Algorithm, PrivateKey};
use crate::storage::ObjectStorage;

/// What to restore, from where, into which server configuration.
pub struct RestoreSnapshotJob<'a> {
    /// The tool that took the snapshot (`basebackup.json`'s `snapshot_tool`; Python MyHoard's
    /// backups are XtraBackup's).
    pub tool: SnapshotTool,
    pub storage: &'a dyn ObjectStorage,
    /// `<site>/<stream_id>`.
    pub key_prefix: &'a str,
    pub number_of_splits: u32,
    /// The snapshot's compression (`compression_algorithm`).
    pub algorithm: Algorithm,
    /// The site's private key; `None` for an unencrypted snapshot.
    pub private_key: Option<&'a PrivateKey>,
    /// `mysql.data_directory` is the destination; `mysql.config_file_name` is handed to the
    /// tools.
    pub config: &'a Config,
    /// Scratch space under `temporary_directory`, missing or empty; removed at the end.
    pub work_dir: &'a Path,
    pub cancel: &'a AtomicBool,
    /// Called about once a second, from a helper thread.
    pub progress: &'a (dyn Fn(&RestoreProgress) + Sync),
}

/// What a restore is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStage {
    /// Fetching the splits into the extractor.
    Downloading,
    /// `--prepare`: InnoDB recovery of the copied redo log.
    Preparing,
    /// Moving the files into the data directory.
    MovingIntoPlace,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub stage: RestoreStage,
    /// Stored (compressed, encrypted) bytes fetched so far: MyHoard's
    /// `basebackup_bytes_downloaded`.
    pub downloaded_bytes: u64,
    /// Raw stream bytes handed to the extractor so far.
    pub extracted_bytes: u64,
    pub splits_done: u32,
    pub number_of_splits: u32,
    /// How far `--prepare` got, 0 to 100, once it says.
    pub prepare_percent: Option<f64>,
}

/// A restored snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredSnapshot {
    pub tool: SnapshotTool,
    pub data_directory: PathBuf,
    /// The consistent point as the restored files record it (`xtrabackup_binlog_info`, or the
    /// clone's `#clone/#view_status`); `None` when they record none.
    pub position: Option<SnapshotPosition>,
    pub downloaded_bytes: u64,
    pub extracted_bytes: u64,
    pub number_of_splits: u32,
}

/// Restores a snapshot; see the module doc. Refuses to start unless the data directory is
/// empty or missing and `work_dir` is too.
pub fn restore_snapshot(job: &RestoreSnapshotJob<'_>) -> Result<RestoredSnapshot, Error> {
    datadir::require_empty_data_dir(&job.config.mysql.data_directory)?;
    if !datadir::is_empty_or_missing(job.work_dir)? {
        return Err(Error::WorkDirectoryNotEmpty {
            path: job.work_dir.to_owned(),
        });
    }
    fs::create_dir_all(job.work_dir).map_err(|source| Error::Io {
        action: "creating",
        path: job.work_dir.to_owned(),
        source,
    })?;
    let result = restore_into(job);
    // After a success only leftovers remain (the tool's own files); after a failure, maybe
    // unauthenticated bytes. Either way it goes.
    if let Err(err) = datadir::remove_path(job.work_dir) {
        log::warn!("{err}");
    }
    result
}

/// Counters behind a restore's progress reports.
struct RestoreMeter<'a> {
    job: &'a RestoreSnapshotJob<'a>,
    stage: Mutex<RestoreStage>,
    downloaded_bytes: AtomicU64,
    extracted_bytes: AtomicU64,
    splits_done: AtomicU32,
    prepare_percent: Mutex<Option<f64>>,
}

impl RestoreMeter<'_> {
    fn set_stage(&self, stage: RestoreStage) {
        *child::lock(&self.stage) = stage;
        self.report();
    }

    fn report(&self) {
        let progress = RestoreProgress {
            stage: *child::lock(&self.stage),
            downloaded_bytes: self.downloaded_bytes.load(Ordering::Relaxed),
            extracted_bytes: self.extracted_bytes.load(Ordering::Relaxed),
            splits_done: self.splits_done.load(Ordering::Relaxed),
            number_of_splits: self.job.number_of_splits,
            prepare_percent: *child::lock(&self.prepare_percent),
        };
        (self.job.progress)(&progress);
    }
}

fn restore_into(job: &RestoreSnapshotJob<'_>) -> Result<RestoredSnapshot, Error> {
    let meter = RestoreMeter {
        job,
        stage: Mutex::new(RestoreStage::Downloading),
        downloaded_bytes: AtomicU64::new(0),
        extracted_bytes: AtomicU64::new(0),
        splits_done: AtomicU32::new(0),
        prepare_percent: Mutex::new(None),
    };
    meter.report();
    download_and_extract(job, &meter)?;
    let position = read_position(job.tool, job.work_dir)?;
    if job.tool != SnapshotTool::ClonePlugin {
        meter.set_stage(RestoreStage::Preparing);
        prepare(job, &meter)?;
    }
    remove_copied_binlogs(job.work_dir, position.as_ref())?;

    meter.set_stage(RestoreStage::MovingIntoPlace);
    let data_dir = &job.config.mysql.data_directory;
    // Someone may have put files there while we downloaded.
    datadir::require_empty_data_dir(data_dir)?;
    let moved = match job.tool {
        SnapshotTool::ClonePlugin => datadir::move_contents(job.work_dir, data_dir),
        tool => move_back(job, tool),
    };
    if let Err(err) = moved {
        // The directory was empty before, so everything in it is ours: leave it empty for the
        // next attempt rather than half restored.
        if let Err(cleanup) = datadir::remove_contents(data_dir) {
            log::warn!("cleaning up the half restored data directory: {cleanup}");
        }
        return Err(err);
    }
    remove_server_identity(data_dir)?;
    meter.report();
    Ok(RestoredSnapshot {
        tool: job.tool,
        data_directory: data_dir.clone(),
        position,
        downloaded_bytes: meter.downloaded_bytes.load(Ordering::Relaxed),
        extracted_bytes: meter.extracted_bytes.load(Ordering::Relaxed),
        number_of_splits: job.number_of_splits.max(1),
    })
}

/// The extractor of a tool's stream, and its arguments.
fn extractor(tool: SnapshotTool, work_dir: &Path) -> (&'static str, Vec<std::ffi::OsString>) {
    match tool.stream_extractor() {
        Some(program) => (program, command::extract_stream_args(work_dir)),
        None => ("tar", command::tar_extract_args(work_dir)),
    }
}

/// Fetches every split, in order, into the extractor's stdin.
fn download_and_extract(
    job: &RestoreSnapshotJob<'_>,
    meter: &RestoreMeter<'_>,
) -> Result<(), Error> {
    let (name, args) = extractor(job.tool, job.work_dir);
    let program = find_program(name).ok_or_else(|| Error::ProgramNotFound {
        program: name.to_owned(),
    })?;
    let unused = AtomicU64::new(0);
    let storage = MeteredStorage {
        inner: job.storage,
        stored: &unused,
        fetched: &meter.downloaded_bytes,
    };
    let log_target = format!("myhoard::basebackup::{name}");
    let on_tick = || meter.report();
    let supervision = child::Supervision {
        name,
        log_target: &log_target,
        cancel: job.cancel,
        on_line: &|_| Severity::Info,
        on_tick: &on_tick,
    };
    let mut extract = Command::new(program);
    extract.args(args);
    child::run(
        &mut extract,
        &supervision,
        child::DataPipe::Stdin,
        |stream, _| {
            let child::DataStream::Stdin(stdin) = stream else {
                return Err(Error::Spawn {
                    program: name.to_owned(),
                    source: std::io::Error::other("no stdin pipe"),
                });
            };
            let mut input = CountingWriter {
                inner: stdin,
                count: &meter.extracted_bytes,
                cancel: job.cancel,
            };
            for index in 1..=job.number_of_splits.max(1) {
                let key = split_key(job.key_prefix, index);
                pipeline::download(&storage, &key, &mut input, job.algorithm, job.private_key)
                    .map_err(|source| match source {
                        pipeline::Error::Encryption(source) => Error::Integrity { key, source },
                        source => Error::Download { key, source },
                    })?;
                meter.splits_done.store(index, Ordering::Relaxed);
                meter.report();
            }
            // Dropping stdin here ends the extractor's input.
            Ok(())
        },
    )
}

/// The consistent point the extracted files record.
fn read_position(tool: SnapshotTool, work_dir: &Path) -> Result<Option<SnapshotPosition>, Error> {
    let (file, parse): (PathBuf, fn(&str) -> Option<SnapshotPosition>) = match tool {
        SnapshotTool::ClonePlugin => (
            work_dir.join("#clone").join("#view_status"),
            output::parse_clone_view_status,
        ),
        SnapshotTool::MariaBackup | SnapshotTool::XtraBackup => (
            work_dir.join("xtrabackup_binlog_info"),
            output::parse_binlog_info,
        ),
    };
    match fs::read_to_string(&file) {
        Ok(text) => Ok(parse(&text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "reading",
            path: file,
            source,
        }),
    }
}

/// The program that prepares and moves back the tool's backups.
fn tool_program(tool: SnapshotTool) -> Result<PathBuf, Error> {
    tool.programs()
        .iter()
        .find_map(|name| find_program(name))
        .ok_or_else(|| Error::ProgramNotFound {
            program: tool.programs().join(" or "),
        })
}

/// The server's option file when it exists.
fn server_option_file(config: &Config) -> Option<&Path> {
    let file = config.mysql.config_file_name.as_path();
    file.is_file().then_some(file)
}

/// `--prepare`, with progress from its recovery lines.
fn prepare(job: &RestoreSnapshotJob<'_>, meter: &RestoreMeter<'_>) -> Result<(), Error> {
    let tool = job.tool;
    let program = tool_program(tool)?;
    let checkpoints = fs::read_to_string(job.work_dir.join("xtrabackup_checkpoints"))
        .map(|text| output::parse_checkpoints(&text))
        .unwrap_or_default();
    let (defaults_file, xtrabackup_version) = match tool {
        // mariabackup reads the backup's own `backup-my.cnf` for the InnoDB settings; the
        // server's file could point it at the live data directory's paths.
        SnapshotTool::MariaBackup => (None, None),
        _ => (
            server_option_file(job.config),
            probe_program("xtrabackup")
                .and_then(|installed| output::parse_xtrabackup_version(&installed.version_output)),
        ),
    };
    let prepare_log = Mutex::new(PrepareLog::new(checkpoints.last_lsn));
    let on_line = |line: &str| {
        let mut prepare_log = child::lock(&prepare_log);
        let severity = prepare_log.parse_line(line);
        *child::lock(&meter.prepare_percent) = prepare_log.percent;
        severity
    };
    let on_tick = || meter.report();
    let name = tool.to_string();
    let log_target = format!("myhoard::basebackup::{name}");
    let supervision = child::Supervision {
        name: &name,
        log_target: &log_target,
        cancel: job.cancel,
        on_line: &on_line,
        on_tick: &on_tick,
    };
    let mut command = Command::new(program);
    command.args(command::prepare_args(
        tool,
        defaults_file,
        job.work_dir,
        job.config.restore.free_memory_percentage,
        xtrabackup_version,
    ));
    child::run(&mut command, &supervision, child::DataPipe::None, |_, _| {
        Ok(())
    })?;
    *child::lock(&meter.prepare_percent) = Some(100.0);
    meter.report();
    Ok(())
}

/// `--move-back` into the data directory.
fn move_back(job: &RestoreSnapshotJob<'_>, tool: SnapshotTool) -> Result<(), Error> {
    let program = tool_program(tool)?;
    let name = tool.to_string();
    let log_target = format!("myhoard::basebackup::{name}");
    let supervision = child::Supervision {
        name: &name,
        log_target: &log_target,
        cancel: job.cancel,
        on_line: &|line| {
            if line.contains("[ERROR]") || line.contains("Error:") {
                Severity::Error
            } else {
                Severity::Info
            }
        },
        on_tick: &|| {},
    };
    let mut command = Command::new(program);
    command.args(command::move_back_args(
        tool,
        server_option_file(job.config),
        job.work_dir,
        &job.config.mysql.data_directory,
    ));
    child::run(&mut command, &supervision, child::DataPipe::None, |_, _| {
        Ok(())
    })
}

/// Deletes the binlog index and binlogs a backup may carry (XtraBackup 8.0 puts the current
/// binlog into it and would restore it to the source's path on move-back). They are the
/// source's, and the restored server's own binlog must start empty.
fn remove_copied_binlogs(
    work_dir: &Path,
    position: Option<&SnapshotPosition>,
) -> Result<(), Error> {
    let Some((prefix, _)) = position.and_then(|p| p.binlog_name.rsplit_once('.')) else {
        return Ok(());
    };
    let entries = fs::read_dir(work_dir).map_err(|source| Error::Io {
        action: "reading",
        path: work_dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "reading",
            path: work_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let is_copied_binlog = name.strip_prefix(prefix).is_some_and(|rest| {
            rest == ".index"
                || rest.strip_prefix('.').is_some_and(|digits| {
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })
        });
        if is_copied_binlog {
            datadir::remove_path(&entry.path())?;
        }
    }
    Ok(())
}

/// Deletes `auto.cnf`, so the restored server makes itself a new `server_uuid`, and the
/// backup tool's own `xtrabackup_*` files (MyHoard does the same).
fn remove_server_identity(data_dir: &Path) -> Result<(), Error> {
    let entries = fs::read_dir(data_dir).map_err(|source| Error::Io {
        action: "reading",
        path: data_dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "reading",
            path: data_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "auto.cnf" || name.starts_with("xtrabackup_") {
            datadir::remove_path(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_binlogs_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "binlog.000012",
            "binlog.index",
            "binlog.000011",
            "binlog.cnf",
            "ibdata1",
            "xtrabackup_binlog_info",
        ] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        let position = SnapshotPosition::new("binlog.000012", 157, "");
        remove_copied_binlogs(dir.path(), Some(&position)).expect("remove");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("read")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        left.sort();
        assert_eq!(left, ["binlog.cnf", "ibdata1", "xtrabackup_binlog_info"]);
        remove_copied_binlogs(dir.path(), None).expect("no position, nothing to do");
    }

    #[test]
    fn identity_and_tool_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "auto.cnf",
            "xtrabackup_info",
            "xtrabackup_binlog_pos_innodb",
            "ibdata1",
        ] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        remove_server_identity(dir.path()).expect("remove");
        let left: Vec<String> = fs::read_dir(dir.path())
            .expect("read")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(left, ["ibdata1"]);
    }

    #[test]
    fn position_from_extracted_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_position(SnapshotTool::MariaBackup, dir.path()).expect("read"),
            None
        );
        fs::write(
            dir.path().join("xtrabackup_binlog_info"),
            "binlog.000006\t27771\t0-1-128\n",
        )
        .expect("write");
        assert_eq!(
            read_position(SnapshotTool::MariaBackup, dir.path()).expect("read"),
            Some(SnapshotPosition::new("binlog.000006", 27771, "0-1-128"))
        );
        fs::create_dir(dir.path().join("#clone")).expect("mkdir");
        fs::write(
            dir.path().join("#clone").join("#view_status"),
            "2 1\n1 2\nLOCAL INSTANCE\n0\n\n/b/binlog.000003\n1200\nu:1-9\n",
        )
        .expect("write");
        assert_eq!(
            read_position(SnapshotTool::ClonePlugin, dir.path()).expect("read"),
            Some(SnapshotPosition::new("binlog.000003", 1200, "u:1-9"))
        );
    }

    #[test]
    fn extractors() {
        let dir = Path::new("/w");
        assert_eq!(extractor(SnapshotTool::MariaBackup, dir).0, "mbstream");
        assert_eq!(extractor(SnapshotTool::XtraBackup, dir).0, "xbstream");
        assert_eq!(extractor(SnapshotTool::ClonePlugin, dir).0, "tar");
    }
}

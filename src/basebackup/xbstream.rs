//! Snapshots with `mariabackup` (MariaDB) or `xtrabackup` (MySQL): the tool streams xbstream
//! to stdout, logs progress on stderr, and leaves `xtrabackup_info` and
//! `xtrabackup_checkpoints` in `--extra-lsndir`, where the binlog position is read from (its
//! stderr line is cut at 8192 bytes, too short for a long GTID set).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::output::{self, BackupLog};
use super::{
    ArchiveFormat, Error, SnapshotJob, SnapshotMeter, SnapshotResult, SnapshotStage, child,
    command, measure_data_dir, remove_scratch_dir, scratch_dir, stream_to_storage, unix_now,
};
use crate::db::SnapshotTool;

pub(super) fn take(
    job: &SnapshotJob<'_>,
    tool: SnapshotTool,
    program: &Path,
) -> Result<SnapshotResult, Error> {
    let start_ts = unix_now();
    let config = job.config;
    let start_size = measure_data_dir(config);
    let meter = SnapshotMeter::new(
        job,
        SnapshotStage::Streaming,
        start_size.map_or(0, |size| size.estimate_bytes),
    );
    // Reported at once, so the snapshot shows as in progress from its start: the watchdog's
    // first tick is a second away, and a small data directory can be done before it.
    meter.report();

    let scratch = scratch_dir(config, "myhoard-basebackup-")?;
    let defaults_file = scratch.path().join("backup.cnf");
    let target_dir = scratch.path().join("target");
    let lsn_dir = scratch.path().join("lsn");
    for dir in [&target_dir, &lsn_dir] {
        fs::create_dir(dir).map_err(|source| Error::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
    }
    let server_options =
        fs::read_to_string(&config.mysql.config_file_name).map_err(|source| Error::Io {
            action: "reading",
            path: config.mysql.config_file_name.clone(),
            source,
        })?;
    let defaults = command::defaults_file_text(&server_options, &config.mysql.client_params, tool)?;
    write_private_file(&defaults_file, &defaults)?;

    let name = tool.to_string();
    let log_target = format!("myhoard::basebackup::{name}");
    let backup_log = Mutex::new(BackupLog::default());
    let on_line = |line: &str| {
        let mut backup_log = child::lock(&backup_log);
        let severity = backup_log.parse_line(line);
        meter
            .files_done
            .store(backup_log.files_done, Ordering::Relaxed);
        severity
    };
    let mut backup = Command::new(program);
    backup.args(command::backup_args(
        tool,
        &defaults_file,
        &config.xtrabackup,
        &target_dir,
        &lsn_dir,
    ));
    let streamed = stream_to_storage(&meter, &mut backup, &name, &log_target, &on_line);
    let backup_log = backup_log
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uploaded = match streamed {
        Err(Error::ToolFailed {
            program,
            stderr_tail,
            ..
        }) if backup_log.block_mismatch => {
            return Err(Error::BlockMismatch {
                program,
                stderr_tail,
            });
        }
        other => other?,
    };
    let end_ts = unix_now();

    let info = match read_optional(&lsn_dir.join("xtrabackup_info"))? {
        Some(text) => output::parse_backup_info(&text),
        None => {
            log::warn!("{name} left no xtrabackup_info; using the binlog position from its log");
            output::BackupInfo::default()
        }
    };
    let checkpoints_text = read_optional(&lsn_dir.join("xtrabackup_checkpoints"))?;
    let checkpoints = checkpoints_text.as_deref().map(output::parse_checkpoints);
    let position = info.position.or(backup_log.position);
    let lsn_info = backup_log.lsn_info.or_else(|| {
        let checkpoints = checkpoints?;
        Some(output::LsnInfo {
            start: checkpoints.to_lsn?,
            end: checkpoints.last_lsn?,
        })
    });
    remove_scratch_dir(scratch);
    let end_size = measure_data_dir(config);
    meter.report();

    Ok(SnapshotResult {
        tool,
        format: ArchiveFormat::of(tool),
        tool_version: info.tool_version,
        binlog_name: position.as_ref().map(|p| p.binlog_name.clone()),
        binlog_index: position.as_ref().and_then(|p| p.binlog_index),
        binlog_position: position.as_ref().map(|p| p.binlog_position),
        gtid: position.and_then(|p| p.gtid),
        lsn_info,
        checkpoints_file_content: checkpoints_text,
        number_of_splits: uploaded.number_of_splits,
        compressed_size: uploaded.stored_bytes,
        original_size: uploaded.original_bytes,
        start_size: start_size.map(|size| size.total_bytes),
        end_size: end_size.map(|size| size.total_bytes),
        number_of_files: backup_log.files_done,
        start_ts,
        end_ts,
        compression_algorithm: job.encoding.compression.algorithm,
    })
}

/// Writes a file only its owner can read: it holds the database password.
fn write_private_file(path: &Path, text: &str) -> Result<(), Error> {
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| Error::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

/// A file's text, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_file_is_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.cnf");
        write_private_file(&path, "[client]\npassword=\"x\"\n").expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private_file(&path, "again").is_err());
        assert_eq!(
            read_optional(&dir.path().join("missing")).expect("read"),
            None
        );
        assert!(
            read_optional(&path)
                .expect("read")
                .is_some_and(|text| text.contains("[client]"))
        );
    }
}

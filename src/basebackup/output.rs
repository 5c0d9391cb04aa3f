//! What the snapshot tools print and leave behind, parsed: the lines of `mariabackup` and
//! `xtrabackup` on stderr (files streamed, redo log range, binlog position, prepare progress),
//! the `key = value` files of `--extra-lsndir` (`xtrabackup_info`, `xtrabackup_checkpoints`),
//! `xtrabackup_binlog_info` inside a backup, the clone plugin's `#clone/#view_status`, and the
//! tools' `--version` lines.
//!
//! Pure: text in, values out; nothing here does I/O or logs. The line formats are the ones
//! Python MyHoard parses (`basebackup_operation.py`, `basebackup_restore_operation.py`) plus
//! MariaDB's own wording, as recorded from mariabackup 10.11 on this project's machines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::db::Version;
use crate::db::flavor::log_file_index;

/// Where a snapshot stands in the source's binlog: the consistent point the tool reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPosition {
    /// The binlog file name without directory, such as `binlog.000012`.
    pub binlog_name: String,
    /// Its numeric suffix (12), when it has one.
    pub binlog_index: Option<u64>,
    /// The offset in that file where the first transaction after the snapshot starts.
    pub binlog_position: u64,
    /// The server's GTIDs at that point in its own syntax, whitespace removed: MySQL
    /// `uuid:1-100,uuid2:1-5`, MariaDB `0-1-128,1-2-7`. `None` when the tool reported none.
    pub gtid: Option<String>,
}

impl SnapshotPosition {
    /// A position from a binlog file name (a full path is cut to its last component), an
    /// offset and GTID text (empty means none).
    pub fn new(binlog_file: &str, binlog_position: u64, gtid: &str) -> SnapshotPosition {
        let binlog_name = binlog_file
            .rsplit('/')
            .next()
            .unwrap_or(binlog_file)
            .to_owned();
        let gtid: String = gtid.chars().filter(|c| !c.is_whitespace()).collect();
        SnapshotPosition {
            binlog_index: log_file_index(&binlog_name),
            binlog_name,
            binlog_position,
            gtid: (!gtid.is_empty()).then_some(gtid),
        }
    }
}

/// The redo log range a backup copied: MyHoard's `lsn_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsnInfo {
    pub start: u64,
    pub end: u64,
}

/// Reads `filename 'binlog.000006', position '27771', GTID of the last change '0-1-128'`, the
/// form of both the `binlog_pos` line of `xtrabackup_info` and the `MySQL binlog position:`
/// line on stderr. The GTID part is optional; MySQL GTID sets may run over several lines.
pub fn parse_binlog_pos(text: &str) -> Option<SnapshotPosition> {
    let (_, rest) = text.split_once("filename '")?;
    let (file, rest) = rest.split_once('\'')?;
    let (_, rest) = rest.split_once("position '")?;
    let (position, rest) = rest.split_once('\'')?;
    let position = position.trim().parse().ok()?;
    let gtid = match rest.split_once("GTID of the last change '") {
        Some((_, gtid)) => gtid.rsplit_once('\'').map_or(gtid, |(gtid, _)| gtid),
        None => "",
    };
    if file.trim().is_empty() {
        return None;
    }
    Some(SnapshotPosition::new(file.trim(), position, gtid))
}

/// Reads `xtrabackup_binlog_info` (in the backup and, after a restore, in the data
/// directory): `binlog.000006<TAB>27771<TAB>0-1-128`, the GTID column optional and possibly
/// continued on further lines (`uuid:1-5,\nuuid2:1-3`).
pub fn parse_binlog_info(text: &str) -> Option<SnapshotPosition> {
    let text = text.trim_start();
    let (file, rest) = text.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (position, gtid) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let position = position.parse().ok()?;
    Some(SnapshotPosition::new(file, position, gtid))
}

/// The `key = value` lines of `xtrabackup_info` and `xtrabackup_checkpoints`. A line that does
/// not start a new key continues the previous value (a GTID set over several lines), joined
/// with a newline.
pub fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        let new_key = line.split_once(" = ").filter(|(key, _)| {
            !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        match (new_key, &last_key) {
            (Some((key, value)), _) => {
                values.insert(key.to_owned(), value.trim_end().to_owned());
                last_key = Some(key.to_owned());
            }
            // `key =` with nothing after it (`name = ` loses its trailing space to editors).
            (None, _) if line.ends_with(" =") => {
                let key = line.trim_end_matches(" =").to_owned();
                values.insert(key.clone(), String::new());
                last_key = Some(key);
            }
            (None, Some(key)) if !line.trim().is_empty() => {
                if let Some(value) = values.get_mut(key) {
                    value.push('\n');
                    value.push_str(line.trim_end());
                }
            }
            (None, _) => {}
        }
    }
    values
}

/// What the snapshot tool wrote into `--extra-lsndir/xtrabackup_info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupInfo {
    /// `tool_version`: `10.11.14-MariaDB`, `8.0.35-30`.
    pub tool_version: Option<String>,
    /// `binlog_pos`, parsed.
    pub position: Option<SnapshotPosition>,
    /// `innodb_from_lsn` and `innodb_to_lsn`.
    pub innodb_lsn: Option<LsnInfo>,
}

pub fn parse_backup_info(text: &str) -> BackupInfo {
    let values = parse_key_values(text);
    let number = |key: &str| values.get(key).and_then(|value| value.trim().parse().ok());
    BackupInfo {
        tool_version: values
            .get("tool_version")
            .map(|version| version.trim().to_owned())
            .filter(|version| !version.is_empty()),
        position: values
            .get("binlog_pos")
            .and_then(|pos| parse_binlog_pos(pos)),
        innodb_lsn: number("innodb_from_lsn")
            .zip(number("innodb_to_lsn"))
            .map(|(start, end)| LsnInfo { start, end }),
    }
}

/// `xtrabackup_checkpoints`: the LSNs a prepare works towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoints {
    pub from_lsn: Option<u64>,
    pub to_lsn: Option<u64>,
    /// The end of the copied redo log: where a prepare's recovery finishes.
    pub last_lsn: Option<u64>,
}

pub fn parse_checkpoints(text: &str) -> Checkpoints {
    let values = parse_key_values(text);
    let number = |key: &str| values.get(key).and_then(|value| value.trim().parse().ok());
    Checkpoints {
        from_lsn: number("from_lsn"),
        to_lsn: number("to_lsn"),
        last_lsn: number("last_lsn"),
    }
}

/// The clone plugin's `#clone/#view_status`, which backs `performance_schema.clone_status`:
///
/// ```text
/// <state> <flags>
/// <begin time> <end time>
/// <source>
/// <error number>
/// <error message>
/// <binlog file, full path>
/// <binlog position>
/// <gtid_executed, possibly over several lines>
/// ```
///
/// The binlog lines are filled in when a server first starts on the cloned directory; before
/// that they are empty and this returns `None`.
pub fn parse_clone_view_status(text: &str) -> Option<SnapshotPosition> {
    let lines: Vec<&str> = text.lines().collect();
    let file = lines.get(5)?.trim();
    let position = lines.get(6)?.trim().parse().ok()?;
    if file.is_empty() {
        return None;
    }
    let gtid = lines.get(7..).map(|rest| rest.concat()).unwrap_or_default();
    Some(SnapshotPosition::new(file, position, &gtid))
}

/// How a line of tool output should be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Error,
}

/// The state gathered from `mariabackup --backup` or `xtrabackup --backup` stderr, line by
/// line (MyHoard's `_process_output_line`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupLog {
    /// Files the tool finished streaming.
    pub files_done: u64,
    /// The redo log range, from the last line of a backup.
    pub lsn_info: Option<LsnInfo>,
    /// The `MySQL binlog position:` line. `xtrabackup_info` is the better source: stderr lines
    /// are cut at 8192 bytes, which a long GTID set exceeds.
    pub position: Option<SnapshotPosition>,
    /// The redo log was overwritten before the backup copied it (XtraBackup's "log block
    /// numbers mismatch", mariabackup's "Was only able to copy log"), which turns a failure
    /// into MyHoard's `BlockMismatchError`.
    pub block_mismatch: bool,
}

impl BackupLog {
    /// Takes one line into account and says how to log it.
    pub fn parse_line(&mut self, line: &str) -> Severity {
        let trimmed = line.trim_end();
        // mariabackup: `[01] ... Streaming ./db/t.ibd` then `[01] ...         ...done`;
        // xtrabackup: `... [Xtrabackup] Done: Streaming ./db/t.ibd` (or `Done: Compressing,
        // encrypting and streaming ...` when it compresses itself).
        if trimmed.ends_with(" ...done") || trimmed.ends_with("\t...done") || line.contains("Done:")
        {
            self.files_done += 1;
        }
        if let Some(lsn) = parse_copied_lsn_range(line) {
            self.lsn_info = Some(lsn);
        }
        if let Some((_, rest)) = line.split_once("MySQL binlog position:")
            && let Some(position) = parse_binlog_pos(rest)
        {
            self.position = Some(position);
        }
        // MariaDB's wording of the same failure: "Was only able to copy log from A to B, not C;
        // try increasing innodb_log_file_size".
        if line.contains("log block numbers mismatch")
            || line.contains("expected log block no")
            || line.contains("Was only able to copy log from")
        {
            self.block_mismatch = true;
        }
        if line.contains("[ERROR]")
            || line.contains(" Failed ")
            || line.contains(" failed ")
            || line.contains(" Invalid ")
            || line.contains("Error:")
        {
            Severity::Error
        } else {
            Severity::Info
        }
    }
}

/// `Transaction log of lsn (18153472) to (18153482) was copied.` (XtraBackup) or `Redo log
/// (from LSN 1618956 to 1809519) was copied.` (mariabackup).
fn parse_copied_lsn_range(line: &str) -> Option<LsnInfo> {
    if let Some((_, rest)) = line.split_once("Transaction log of lsn (") {
        let (start, rest) = rest.split_once(')')?;
        let (_, rest) = rest.split_once('(')?;
        let (end, _) = rest.split_once(')')?;
        return Some(LsnInfo {
            start: start.trim().parse().ok()?,
            end: end.trim().parse().ok()?,
        });
    }
    let (_, rest) = line.split_once("Redo log (from LSN ")?;
    let (start, rest) = rest.split_once(" to ")?;
    let (end, _) = rest.split_once(')')?;
    Some(LsnInfo {
        start: start.trim().parse().ok()?,
        end: end.trim().parse().ok()?,
    })
}

/// How far a `--prepare` has got, from its recovery lines (MyHoard's
/// `BasebackupRestoreOperation` progress): the redo log is scanned from the checkpoint the
/// backup started at up to `last_lsn` of `xtrabackup_checkpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrepareLog {
    /// Where recovery ends: `last_lsn` of the backup's checkpoints.
    pub target_lsn: Option<u64>,
    /// The first LSN recovery reported.
    pub first_lsn: Option<u64>,
    /// 0 to 100, once known.
    pub percent: Option<f64>,
}

impl PrepareLog {
    pub fn new(target_lsn: Option<u64>) -> PrepareLog {
        PrepareLog {
            target_lsn,
            ..PrepareLog::default()
        }
    }

    /// Takes one line of prepare output into account and says how to log it.
    pub fn parse_line(&mut self, line: &str) -> Severity {
        if line.contains("Shutdown completed; log sequence number") {
            // XtraBackup's last line of a successful recovery.
            self.percent = Some(100.0);
        } else if let Some(lsn) = recovery_lsn(line) {
            let first = *self.first_lsn.get_or_insert(lsn);
            if let Some(target) = self.target_lsn {
                let percent = if target > first {
                    lsn.saturating_sub(first) as f64 * 100.0 / (target - first) as f64
                } else {
                    100.0
                };
                self.percent = Some(percent.clamp(0.0, 100.0));
            }
        }
        if line.contains("[ERROR]") || line.contains("Error:") {
            Severity::Error
        } else {
            Severity::Info
        }
    }
}

/// An LSN recovery reached: XtraBackup `Doing recovery: scanned up to log sequence number N`;
/// MariaDB `Starting crash recovery from checkpoint LSN=N`, `Read redo log up to LSN=N`, `End
/// of log at LSN=N`.
fn recovery_lsn(line: &str) -> Option<u64> {
    let digits = if let Some((_, rest)) = line.split_once("scanned up to log sequence number ") {
        rest
    } else if line.contains("crash recovery from checkpoint")
        || line.contains("Read redo log up to")
        || line.contains("End of log at")
    {
        line.split_once("LSN=")?.1
    } else {
        return None;
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The version of the server a backup tool was built from: `mariabackup based on MariaDB
/// server 10.11.14-MariaDB ...` → 10.11.14, `xtrabackup version 8.0.35-30 based on MySQL
/// server 8.0.35 Linux ...` → 8.0.35.
pub fn parse_tool_server_version(text: &str) -> Option<Version> {
    let (_, rest) = text.split_once(" server ")?;
    parse_version(rest.trim_start())
}

/// XtraBackup's own version: `xtrabackup version 8.0.35-30 ...` → 8.0.35.
pub fn parse_xtrabackup_version(text: &str) -> Option<Version> {
    let (_, rest) = text.split_once("xtrabackup version ")?;
    parse_version(rest)
}

/// `major.minor.patch` at the start of `text`.
fn parse_version(text: &str) -> Option<Version> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let mut numbers = text[..end].split('.').map(|part| part.parse::<u16>().ok());
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next().flatten().unwrap_or(0);
    Some(Version::new(major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// stderr of `mariabackup --backup --stream=xbstream` 10.11.14 on this project's machines,
    /// cut to the interesting parts (the real run had 147 streamed files).
    const MARIABACKUP_BACKUP_STDERR: &str = "\
[00] 2026-11-26 01:22:35 Connecting to MariaDB server host: localhost, user: root, password: not set, port: not set, socket: /tmp/bbx/a/mysqld.sock
[00] 2026-11-26 01:22:35 Using server version 10.11.14-MariaDB-0+deb12u2-log
mariabackup based on MariaDB server 10.11.14-MariaDB debian-linux-gnu (x86_64)
[00] 2026-11-26 01:22:35 uses posix_fadvise().
[00] 2026-11-26 01:22:35 cd to /tmp/bbx/a/data/
2026-11-26  1:22:35 0 [Note] InnoDB: Memory-mapped log (block size=4096 bytes)
[00] 2026-11-26 01:22:35 Streaming /tmp/bbx/a/data//aria_log_control to <STDOUT>
[00] 2026-11-26 01:22:35         ...done
[00] 2026-11-26 01:22:35 Streaming ./shop/t.ibd
[00] 2026-11-26 01:22:35         ...done
[00] 2026-11-26 01:22:35 Streaming ibdata1
[00] 2026-11-26 01:22:35         ...done
[00] 2026-11-26 01:22:35 aria table file ./mysql/time_zone.MAI is copied successfully.
[01] 2026-11-26 01:22:36 Streaming ./performance_schema/db.opt to <STDOUT>
[01] 2026-11-26 01:22:36         ...done
[00] 2026-11-26 01:22:36 Starting BACKUP STAGE BLOCK_COMMIT
[00] 2026-11-26 01:22:41 Streaming xtrabackup_binlog_info
[00] 2026-11-26 01:22:41         ...done
[00] 2026-11-26 01:22:41 Backup created in directory '/tmp/bbx/bk/tmp/'
[00] 2026-11-26 01:22:41 MySQL binlog position: filename 'binlog.000001', position '1065137', GTID of the last change '0-1-3'
[00] 2026-11-26 01:22:41 Streaming backup-my.cnf
[00] 2026-11-26 01:22:41         ...done
[00] 2026-11-26 01:22:41 Streaming xtrabackup_info
[00] 2026-11-26 01:22:41         ...done
[00] 2026-11-26 01:22:41 Redo log (from LSN 1618956 to 1809519) was copied.
[00] 2026-11-26 01:22:41 completed OK!
";

    /// `--extra-lsndir/xtrabackup_info` of the same run.
    const MARIABACKUP_INFO: &str = "\
uuid = e03e3dad-e937-11f1-86ab-02fc00000001
name = 
tool_name = mariabackup
tool_command = --defaults-file=/tmp/bbx/a/my.cnf --backup --stream=xbstream --target-dir=bk/tmp --extra-lsndir=bk/lsn
tool_version = 10.11.14-MariaDB
ibbackup_version = 10.11.14-MariaDB
server_version = 10.11.14-MariaDB-0+deb12u2-log
start_time = 2026-11-26 01:22:35
end_time = 2026-11-26 01:22:41
lock_time = 1795656155
binlog_pos = filename 'binlog.000001', position '1065137', GTID of the last change '0-1-3'
innodb_from_lsn = 0
innodb_to_lsn = 1618956
partial = N
incremental = N
format = mbstream
compressed = N
";

    const MARIABACKUP_CHECKPOINTS: &str = "\
backup_type = full-backuped
from_lsn = 0
to_lsn = 1618956
last_lsn = 1809519
recover_binlog_info = 0
";

    /// stderr of `xtrabackup --backup --stream=xbstream` (PXB 8.0.35) without `--compress` and
    /// `--encrypt`, written from the formats Python MyHoard parses and Percona's documented
    /// output: XtraBackup cannot be installed on this project's machines.
    const XTRABACKUP_BACKUP_STDERR: &str = "\
2024-03-01T10:00:00.100000-00:00 0 [Note] [MY-011825] [Xtrabackup] recognized server arguments: --datadir=/var/lib/mysql --server-id=1 --log_bin=/var/lib/mysql/binlog
2024-03-01T10:00:00.100000-00:00 0 [Note] [MY-011825] [Xtrabackup] recognized client arguments: --backup=1 --stream=xbstream --target-dir=/tmp/myhoard-basebackup-x/target
xtrabackup version 8.0.35-30 based on MySQL server 8.0.35 Linux (x86_64) (revision id: 6beb4b49)
2024-03-01T10:00:00.200000-00:00 0 [Note] [MY-011825] [Xtrabackup] Connecting to MySQL server host: 127.0.0.1, user: root, password: set, port: 3306, socket: not set
2024-03-01T10:00:00.210000-00:00 0 [Note] [MY-011825] [Xtrabackup] Using server version 8.0.35
2024-03-01T10:00:00.400000-00:00 0 [Note] [MY-011825] [Xtrabackup] Executing LOCK INSTANCE FOR BACKUP ...
2024-03-01T10:00:00.500000-00:00 0 [Note] [MY-011825] [Xtrabackup] >> log scanned up to (18153472)
2024-03-01T10:00:00.600000-00:00 1 [Note] [MY-011825] [Xtrabackup] Streaming ./ibdata1
2024-03-01T10:00:00.900000-00:00 1 [Note] [MY-011825] [Xtrabackup] Done: Streaming ./ibdata1
2024-03-01T10:00:00.910000-00:00 1 [Note] [MY-011825] [Xtrabackup] Streaming ./db1/t.ibd
2024-03-01T10:00:00.950000-00:00 1 [Note] [MY-011825] [Xtrabackup] Done: Streaming ./db1/t.ibd
2024-03-01T10:00:01.000000-00:00 0 [Note] [MY-011825] [Xtrabackup] Streaming ./mysql.ibd
2024-03-01T10:00:01.200000-00:00 0 [Note] [MY-011825] [Xtrabackup] Done: Streaming ./mysql.ibd
2024-03-01T10:00:01.300000-00:00 0 [ERROR] [MY-011825] [Xtrabackup] Failed to open ./db1/gone.ibd (it was dropped)
2024-03-01T10:00:01.500000-00:00 0 [Note] [MY-011825] [Xtrabackup] MySQL binlog position: filename 'binlog.000003', position '157', GTID of the last change 'c8f0a6a2-d7c1-11ee-9a5e-0242ac110002:1-10'
2024-03-01T10:00:01.600000-00:00 0 [Note] [MY-011825] [Xtrabackup] Streaming <STDOUT>/backup-my.cnf
2024-03-01T10:00:01.610000-00:00 0 [Note] [MY-011825] [Xtrabackup] Done: Streaming <STDOUT>/backup-my.cnf
2024-03-01T10:00:01.700000-00:00 0 [Note] [MY-011825] [Xtrabackup] Transaction log of lsn (18153472) to (18153482) was copied.
2024-03-01T10:00:01.800000-00:00 0 [Note] [MY-011825] [Xtrabackup] completed OK!
";

    /// PXB's `xtrabackup_info` with a GTID set over two lines, as MySQL prints sets with
    /// several UUIDs.
    const XTRABACKUP_INFO: &str = "\
uuid = 3b3e4f2a-d7c2-11ee-8a5c-0242ac110002
name = 
tool_name = xtrabackup
tool_command = --defaults-file=/tmp/myhoard-basebackup-x/backup.cnf --backup --stream=xbstream
tool_version = 8.0.35-30
ibbackup_version = 8.0.35-30
server_version = 8.0.35
start_time = 2024-03-01 10:00:00
end_time = 2024-03-01 10:00:01
lock_time = 0
binlog_pos = filename 'binlog.000003', position '157', GTID of the last change 'c8f0a6a2-d7c1-11ee-9a5e-0242ac110002:1-10,
d1e2f3a4-d7c1-11ee-9a5e-0242ac110003:1-5'
innodb_from_lsn = 0
innodb_to_lsn = 18153472
partial = N
incremental = N
format = xbstream
compressed = N
encrypted = N
";

    #[test]
    fn mariabackup_stderr_gives_files_lsn_and_position() {
        let mut log = BackupLog::default();
        let mut errors = 0;
        for line in MARIABACKUP_BACKUP_STDERR.lines() {
            if log.parse_line(line) == Severity::Error {
                errors += 1;
            }
        }
        assert_eq!(log.files_done, 7);
        assert_eq!(
            log.lsn_info,
            Some(LsnInfo {
                start: 1618956,
                end: 1809519
            })
        );
        assert_eq!(
            log.position,
            Some(SnapshotPosition {
                binlog_name: "binlog.000001".into(),
                binlog_index: Some(1),
                binlog_position: 1065137,
                gtid: Some("0-1-3".into()),
            })
        );
        assert!(!log.block_mismatch);
        assert_eq!(errors, 0);
    }

    #[test]
    fn xtrabackup_stderr_gives_files_lsn_position_and_errors() {
        let mut log = BackupLog::default();
        let severities: Vec<Severity> = XTRABACKUP_BACKUP_STDERR
            .lines()
            .map(|line| log.parse_line(line))
            .collect();
        assert_eq!(log.files_done, 4);
        assert_eq!(
            log.lsn_info,
            Some(LsnInfo {
                start: 18153472,
                end: 18153482
            })
        );
        let position = log.position.expect("position");
        assert_eq!(position.binlog_name, "binlog.000003");
        assert_eq!(position.binlog_index, Some(3));
        assert_eq!(position.binlog_position, 157);
        assert_eq!(
            position.gtid.as_deref(),
            Some("c8f0a6a2-d7c1-11ee-9a5e-0242ac110002:1-10")
        );
        assert_eq!(
            severities.iter().filter(|s| **s == Severity::Error).count(),
            1
        );
    }

    #[test]
    fn block_mismatch_is_noticed() {
        let mut log = BackupLog::default();
        log.parse_line(
            "2024-03-01T10:00:01.000000-00:00 0 [ERROR] [MY-011825] [Xtrabackup] log block numbers mismatch:",
        );
        assert!(log.block_mismatch);
        let mut log = BackupLog::default();
        log.parse_line(
            "[Xtrabackup] expected log block no. 93413, but got no. 224997 from the log file.",
        );
        assert!(log.block_mismatch);
        // Recorded from mariabackup 10.11 under a heavy write load with a 64 MiB redo log.
        let mut log = BackupLog::default();
        log.parse_line(
            "[00] 2026-11-26 01:48:18 Was only able to copy log from 49688561 to 67113834, \
             not 513124246; try increasing innodb_log_file_size",
        );
        assert!(log.block_mismatch);
    }

    #[test]
    fn mariabackup_info_and_checkpoints() {
        let info = parse_backup_info(MARIABACKUP_INFO);
        assert_eq!(info.tool_version.as_deref(), Some("10.11.14-MariaDB"));
        assert_eq!(
            info.position,
            Some(SnapshotPosition::new("binlog.000001", 1065137, "0-1-3"))
        );
        assert_eq!(
            info.innodb_lsn,
            Some(LsnInfo {
                start: 0,
                end: 1618956
            })
        );
        let checkpoints = parse_checkpoints(MARIABACKUP_CHECKPOINTS);
        assert_eq!(checkpoints.from_lsn, Some(0));
        assert_eq!(checkpoints.to_lsn, Some(1618956));
        assert_eq!(checkpoints.last_lsn, Some(1809519));
    }

    #[test]
    fn xtrabackup_info_with_a_gtid_set_over_two_lines() {
        let info = parse_backup_info(XTRABACKUP_INFO);
        assert_eq!(info.tool_version.as_deref(), Some("8.0.35-30"));
        let position = info.position.expect("binlog_pos");
        assert_eq!(position.binlog_name, "binlog.000003");
        assert_eq!(position.binlog_position, 157);
        assert_eq!(
            position.gtid.as_deref(),
            Some(
                "c8f0a6a2-d7c1-11ee-9a5e-0242ac110002:1-10,d1e2f3a4-d7c1-11ee-9a5e-0242ac110003:1-5"
            )
        );
        // The continuation line did not become a key, and later keys are intact.
        let values = parse_key_values(XTRABACKUP_INFO);
        assert_eq!(values.get("format").map(String::as_str), Some("xbstream"));
        assert_eq!(values.get("name").map(String::as_str), Some(""));
        assert!(!values.keys().any(|key| key.contains("d1e2f3a4")));
    }

    /// Name, index, position and GTID of a parsed position.
    type Fields<'a> = (&'a str, Option<u64>, u64, Option<&'a str>);

    #[test]
    fn binlog_pos_variants() {
        let cases: &[(&str, Option<Fields<'_>>)] = &[
            (
                "filename 'binlog.000006', position '27771', GTID of the last change '0-1-128'",
                Some(("binlog.000006", Some(6), 27771, Some("0-1-128"))),
            ),
            (
                "filename '/var/lib/mysql/bin.000012', position '4'",
                Some(("bin.000012", Some(12), 4, None)),
            ),
            (
                "filename 'mysql-bin.000002', position '154', GTID of the last change ''",
                Some(("mysql-bin.000002", Some(2), 154, None)),
            ),
            (
                "filename 'b.000001', position '99', GTID of the last change '0-1-5,1-2-7'",
                Some(("b.000001", Some(1), 99, Some("0-1-5,1-2-7"))),
            ),
            ("filename '', position '4'", None),
            ("filename 'binlog.000001', position 'x'", None),
            ("no position here", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_binlog_pos(text);
            let parsed = parsed.as_ref().map(|p| {
                (
                    p.binlog_name.as_str(),
                    p.binlog_index,
                    p.binlog_position,
                    p.gtid.as_deref(),
                )
            });
            assert_eq!(parsed, *expected, "{text}");
        }
    }

    #[test]
    fn binlog_info_file() {
        assert_eq!(
            parse_binlog_info("binlog.000006\t27771\t0-1-128\n"),
            Some(SnapshotPosition::new("binlog.000006", 27771, "0-1-128"))
        );
        assert_eq!(
            parse_binlog_info("binlog.000003\t157\tuuid-a:1-10,\nuuid-b:1-5\n")
                .and_then(|p| p.gtid),
            Some("uuid-a:1-10,uuid-b:1-5".to_owned())
        );
        assert_eq!(
            parse_binlog_info("binlog.000003\t157\n"),
            Some(SnapshotPosition::new("binlog.000003", 157, ""))
        );
        assert_eq!(parse_binlog_info(""), None);
        assert_eq!(parse_binlog_info("binlog.000003\tx\n"), None);
    }

    #[test]
    fn clone_view_status_before_and_after_the_first_start() {
        // Recorded from MySQL 9.7 right after `CLONE LOCAL DATA DIRECTORY`...
        let fresh = "2 1\n1795656187240707 1795656187440258\nLOCAL INSTANCE\n0\n\n\n0\n\n";
        assert_eq!(parse_clone_view_status(fresh), None);
        // ...and after a server started and stopped on the cloned directory.
        let started = "2 1\n1795656187240707 1795656217183117\nLOCAL INSTANCE\n0\n\n\
                       /tmp/bbx/m/binlog/binlog.000001\n856\n\
                       e76ead37-e937-11f1-b5a0-02fc00000001:1-3\n";
        assert_eq!(
            parse_clone_view_status(started),
            Some(SnapshotPosition::new(
                "binlog.000001",
                856,
                "e76ead37-e937-11f1-b5a0-02fc00000001:1-3"
            ))
        );
        let two_uuids = "2 1\n1 2\nLOCAL INSTANCE\n0\n\n/b/binlog.000004\n1200\nu1:1-3,\nu2:1-9\n";
        assert_eq!(
            parse_clone_view_status(two_uuids).and_then(|p| p.gtid),
            Some("u1:1-3,u2:1-9".to_owned())
        );
        assert_eq!(parse_clone_view_status("2 1\n"), None);
    }

    #[test]
    fn mariabackup_prepare_progress() {
        // Recorded `mariabackup --prepare` lines; the checkpoints' last_lsn is 1809519.
        let lines = [
            "[00] 2026-11-26 01:22:47 Starting InnoDB instance for recovery.",
            "2026-11-26  1:22:47 0 [Note] InnoDB: Starting crash recovery from checkpoint LSN=45502",
            "2026-11-26  1:22:47 0 [Note] InnoDB: Read redo log up to LSN=927510",
            "2026-11-26  1:22:47 0 [Note] InnoDB: End of log at LSN=1809519",
            "[00] 2026-11-26 01:22:47 completed OK!",
        ];
        let mut log = PrepareLog::new(Some(1809519));
        let mut seen = Vec::new();
        for line in lines {
            log.parse_line(line);
            seen.push(log.percent.map(|p| p.round() as i64));
        }
        assert_eq!(seen, [None, Some(0), Some(50), Some(100), Some(100)]);
    }

    #[test]
    fn xtrabackup_prepare_progress() {
        let mut log = PrepareLog::new(Some(3000));
        log.parse_line("[Xtrabackup] Doing recovery: scanned up to log sequence number 1000");
        assert_eq!(log.percent, Some(0.0));
        log.parse_line("[Xtrabackup] Doing recovery: scanned up to log sequence number 2000");
        assert_eq!(log.percent, Some(50.0));
        log.parse_line("[InnoDB] Shutdown completed; log sequence number 3010");
        assert_eq!(log.percent, Some(100.0));
        // Without a target, no percentage can be given.
        let mut log = PrepareLog::new(None);
        log.parse_line("[Xtrabackup] Doing recovery: scanned up to log sequence number 2000");
        assert_eq!(log.percent, None);
    }

    #[test]
    fn tool_versions() {
        assert_eq!(
            parse_tool_server_version(
                "mariabackup based on MariaDB server 10.11.14-MariaDB debian-linux-gnu (x86_64)"
            ),
            Some(Version::new(10, 11, 14))
        );
        let pxb = "xtrabackup version 8.0.35-30 based on MySQL server 8.0.35 Linux (x86_64) \
                   (revision id: 6beb4b49)";
        assert_eq!(parse_tool_server_version(pxb), Some(Version::new(8, 0, 35)));
        assert_eq!(parse_xtrabackup_version(pxb), Some(Version::new(8, 0, 35)));
        assert_eq!(
            parse_xtrabackup_version("xtrabackup version 8.4.0-1 based on MySQL server 8.4.0"),
            Some(Version::new(8, 4, 0))
        );
        assert_eq!(parse_tool_server_version("garbage"), None);
    }
}

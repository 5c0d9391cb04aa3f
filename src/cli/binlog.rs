//! `myhoard binlog inspect`: what the daemon's binlog reader sees in binlog files, as JSON lines.
//!
//! One line per file: size, server version, checksum algorithm, the GTID set the file holds (in
//! the server's syntax and in MyHoard's JSON form), the state before and after it, the
//! transaction count, first and last commit times, and whether the file is complete. With
//! `--transactions`, one line per transaction comes first. Operators use it to check a binlog
//! before uploading or after downloading one, and tests use it to compare against the server.
//!
//! A file that cannot be read is reported on stderr with the offset at fault, and the other
//! files are still inspected; the command then fails (exit 1) naming how many files were bad.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::binlog::{
    self, BinlogReader, BinlogSummary, Checksum, FileEnd, Flavor, GtidState, ReadOptions, Tail,
    Transaction, TransactionEnd,
};
use crate::gtid::GtidSet;

pub struct InspectOptions {
    /// Also print one line per transaction.
    pub transactions: bool,
    /// The files are closed binlogs: an incomplete last event is an error rather than a file
    /// still being written.
    pub strict: bool,
}

pub fn inspect(files: &[PathBuf], options: &InspectOptions, out: &mut dyn Write) -> Result<()> {
    let read_options = ReadOptions {
        tail: if options.strict {
            Tail::Reject
        } else {
            Tail::Tolerate
        },
        ..ReadOptions::default()
    };
    let mut n_failed = 0;
    for path in files {
        match inspect_file(path, options, read_options, out)? {
            Ok(()) => {}
            Err(error) => {
                // Reported here, once; the loop goes on so one bad file does not hide the rest.
                eprintln!("myhoard: {error}");
                n_failed += 1;
            }
        }
    }
    out.flush()?;
    if n_failed > 0 {
        bail!(
            "{n_failed} of {} binlog files could not be read",
            files.len()
        );
    }
    Ok(())
}

/// Inspects one file. The outer error is a failure to write the output, which stops
/// everything; the inner one is a bad binlog.
fn inspect_file(
    path: &Path,
    options: &InspectOptions,
    read_options: ReadOptions,
    out: &mut dyn Write,
) -> Result<Result<(), binlog::Error>> {
    let mut reader = match BinlogReader::open(path, read_options) {
        Ok(reader) => reader,
        Err(error) => return Ok(Err(error)),
    };
    loop {
        match reader.next_transaction() {
            Ok(Some(transaction)) if options.transactions => {
                write_line(out, &transaction_line(path, &transaction))?;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(error) => return Ok(Err(error)),
        }
    }
    match reader.finish() {
        Ok(summary) => {
            write_line(out, &file_line(&summary))?;
            Ok(Ok(()))
        }
        Err(error) => Ok(Err(error)),
    }
}

/// One transaction, as printed. Structs rather than `json!` so the keys keep this order.
#[derive(Serialize)]
struct TransactionLine<'a> {
    r#type: &'static str,
    file: &'a Path,
    gtid: Option<String>,
    start: u64,
    end: u64,
    commit_time: String,
    commit_epoch: f64,
    ended_by: TransactionEnd,
}

fn transaction_line<'a>(path: &'a Path, transaction: &Transaction) -> TransactionLine<'a> {
    TransactionLine {
        r#type: "transaction",
        file: path,
        gtid: transaction.gtid.as_ref().map(ToString::to_string),
        start: transaction.start,
        end: transaction.end,
        commit_time: iso8601(transaction.commit_time_us),
        commit_epoch: epoch_seconds(transaction.commit_time_us),
        ended_by: transaction.ended_by,
    }
}

/// One file, as printed.
#[derive(Serialize)]
struct FileLine<'a> {
    r#type: &'static str,
    file: &'a Path,
    size: u64,
    server_version: &'a str,
    flavor: Flavor,
    checksum: Checksum,
    /// The file's GTIDs in the server's syntax (MariaDB, which has none for sets, in the
    /// extended `domain-server:1-5` form).
    gtid_set: String,
    /// The same set in MyHoard's JSON form.
    gtids: &'a GtidSet,
    /// The state before the file: a MySQL GTID set or a MariaDB `gtid_binlog_state`.
    previous_gtids: Option<String>,
    previous_gtids_json: Option<GtidSet>,
    /// The state after the file, in the same syntax: what the next file starts from.
    gtids_after: String,
    transactions: u64,
    anonymous_transactions: u64,
    first_commit: Option<String>,
    first_commit_epoch: Option<f64>,
    last_commit: Option<String>,
    last_commit_epoch: Option<f64>,
    complete: bool,
    end: &'static str,
    next_file: Option<&'a str>,
    in_use: bool,
    partial_tail_bytes: u64,
    unfinished_transaction_start: Option<u64>,
}

fn file_line(summary: &BinlogSummary) -> FileLine<'_> {
    let (end, next_file) = match &summary.end {
        FileEnd::Rotate { next_file, .. } => ("rotate", Some(next_file.as_str())),
        FileEnd::Stop => ("stop", None),
        FileEnd::Open => ("open", None),
    };
    let previous = summary.previous_gtids.as_ref();
    FileLine {
        r#type: "file",
        file: &summary.file,
        size: summary.size,
        server_version: &summary.server_version,
        flavor: summary.flavor,
        checksum: summary.checksum,
        gtid_set: summary.gtids.to_string(),
        gtids: &summary.gtids,
        previous_gtids: previous.map(GtidState::to_server_string),
        previous_gtids_json: previous.map(GtidState::to_gtid_set),
        gtids_after: summary.state_after().to_server_string(),
        transactions: summary.n_transactions,
        anonymous_transactions: summary.n_anonymous,
        first_commit: summary.first_commit_us.map(iso8601),
        first_commit_epoch: summary.first_commit_us.map(epoch_seconds),
        last_commit: summary.last_commit_us.map(iso8601),
        last_commit_epoch: summary.last_commit_us.map(epoch_seconds),
        complete: summary.is_complete(),
        end,
        next_file,
        in_use: summary.in_use,
        partial_tail_bytes: summary.partial_tail_bytes,
        unfinished_transaction_start: summary.unfinished_transaction,
    }
}

/// Writes one JSON line.
fn write_line(out: &mut dyn Write, line: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn epoch_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a time in microseconds since the epoch.
fn iso8601(us: u64) -> String {
    let seconds = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso8601(1_795_646_816_304_776),
            "2026-11-25T22:46:56.304776Z"
        );
        assert_eq!(iso8601(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(
            iso8601(4_107_542_399_999_999),
            "2100-02-28T23:59:59.999999Z"
        );
        assert_eq!(
            iso8601(u64::MAX).len(),
            "294247-01-10T04:00:54.775807Z".len()
        );
    }
}

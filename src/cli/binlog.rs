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
//!
//! Without `--transactions`, files are read on as many threads as there are cores and printed
//! in the order given, the same bytes as one at a time.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::binlog::{
    self, BinlogReader, BinlogSummary, Checksum, FileEnd, Flavor, GtidState, ReadOptions, Tail,
    Transaction,
};
use crate::gtid::{GtidSet, Origin};

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
    // With --transactions a file prints tens of megabytes, and a worker can get only
    // CHUNKS_AHEAD of its file's output ahead of the file being printed: the files would be
    // read one at a time anyway, and handing the output over would only cost.
    let workers = if options.transactions {
        1
    } else {
        thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(files.len())
    };
    let n_failed = if workers > 1 {
        inspect_in_parallel(files, options, read_options, workers, out)?
    } else {
        inspect_one_at_a_time(files, options, read_options, out)?
    };
    out.flush()?;
    if n_failed > 0 {
        bail!(
            "{n_failed} of {} binlog files could not be read",
            files.len()
        );
    }
    Ok(())
}

/// Inspects the files in turn; returns how many could not be read.
fn inspect_one_at_a_time(
    files: &[PathBuf],
    options: &InspectOptions,
    read_options: ReadOptions,
    out: &mut dyn Write,
) -> Result<usize> {
    let mut n_failed = 0;
    for path in files {
        if let Err(error) = inspect_file(path, options, read_options, out)? {
            // Reported here, once; the loop goes on so one bad file does not hide the rest.
            eprintln!("myhoard: {error}");
            n_failed += 1;
        }
    }
    Ok(n_failed)
}

/// How much of a file's output a worker may get ahead of the file being printed, in chunks of
/// [`CHUNK_SIZE`]: a worker that is that far ahead waits, so memory stays bounded whatever the
/// number of transactions.
const CHUNKS_AHEAD: usize = 16;
const CHUNK_SIZE: usize = 64 << 10;

/// What a worker sends for its file: output, then how the file ended.
enum FileOutput {
    Chunk(Vec<u8>),
    Failed(binlog::Error),
}

/// Inspects `workers` files at a time (a scan is bound by one core's checksum and decoding
/// speed, and a node's binlogs are many files) and prints their output in file order, exactly
/// as one at a time would. Returns how many files could not be read.
fn inspect_in_parallel(
    files: &[PathBuf],
    options: &InspectOptions,
    read_options: ReadOptions,
    workers: usize,
    out: &mut dyn Write,
) -> Result<usize> {
    // Every file's job owns the sending side of its output channel, so the channel closes
    // when the worker is done with the file.
    let (job_sender, jobs) = crossbeam_channel::unbounded();
    let mut outputs = Vec::with_capacity(files.len());
    for path in files {
        let (sender, receiver) = crossbeam_channel::bounded::<FileOutput>(CHUNKS_AHEAD);
        outputs.push(receiver);
        // The receiving side is right here: sending cannot fail.
        let _ = job_sender.send((path, sender));
    }
    drop(job_sender);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        for _ in 0..workers {
            let jobs = jobs.clone();
            let stop = &stop;
            scope.spawn(move || {
                for (path, sender) in jobs {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut chunks = ChunkWriter {
                        sender: &sender,
                        chunk: Vec::with_capacity(CHUNK_SIZE),
                    };
                    // An output error means the printing side is gone: it reports why.
                    let Ok(result) = inspect_file(path, options, read_options, &mut chunks) else {
                        break;
                    };
                    if chunks.flush().is_err() {
                        break;
                    }
                    if let Err(error) = result
                        && sender.send(FileOutput::Failed(error)).is_err()
                    {
                        break;
                    }
                }
            });
        }
        let printed = print_in_order(outputs, out);
        if printed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        printed
    })
}

/// Prints each file's output as it arrives, file after file; returns how many failed.
fn print_in_order(
    outputs: Vec<crossbeam_channel::Receiver<FileOutput>>,
    out: &mut dyn Write,
) -> Result<usize> {
    let mut n_failed = 0;
    for output in outputs {
        for message in output {
            match message {
                FileOutput::Chunk(chunk) => out.write_all(&chunk)?,
                FileOutput::Failed(error) => {
                    // Reported here, once, in file order.
                    eprintln!("myhoard: {error}");
                    n_failed += 1;
                }
            }
        }
    }
    Ok(n_failed)
}

/// A file's output, sent on in chunks.
struct ChunkWriter<'a> {
    sender: &'a crossbeam_channel::Sender<FileOutput>,
    chunk: Vec<u8>,
}

impl ChunkWriter<'_> {
    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_SIZE));
        self.sender
            .send(FileOutput::Chunk(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the output was closed"))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.chunk.extend_from_slice(bytes);
        if self.chunk.len() >= CHUNK_SIZE {
            self.send_chunk()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()
    }
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
    if options.transactions {
        let mut lines = TransactionLines::new(path)?;
        loop {
            match reader.next_transaction() {
                Ok(Some(transaction)) => out.write_all(lines.format(&transaction)?)?,
                Ok(None) => break,
                Err(error) => return Ok(Err(error)),
            }
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

/// Formats transaction lines: `{"type":"transaction","file":..,"gtid":..,"start":..,"end":..,
/// "commit_time":..,"commit_epoch":..,"ended_by":..}`, the bytes serde_json writes for them.
/// A file prints millions of them, so what stays the same from one to the next (the file, the
/// GTID's origin, the commit time's second) is formatted once and reused.
struct TransactionLines {
    /// `{"type":"transaction","file":"<file>","gtid":`
    prefix: Vec<u8>,
    /// The last origin seen and its GTID text up to the sequence number, as the start of a
    /// JSON string: `"uuid:` or `"0-1-`.
    origin: Option<(Origin, Vec<u8>)>,
    /// The last commit second seen and its `YYYY-MM-DDTHH:MM:SS`.
    second: Option<(u64, String)>,
    line: Vec<u8>,
}

impl TransactionLines {
    fn new(path: &Path) -> Result<TransactionLines> {
        let mut prefix = br#"{"type":"transaction","file":"#.to_vec();
        serde_json::to_writer(&mut prefix, path)?;
        prefix.extend_from_slice(br#","gtid":"#);
        Ok(TransactionLines {
            prefix,
            origin: None,
            second: None,
            line: Vec::with_capacity(256),
        })
    }

    /// The line of `transaction`, newline included.
    fn format(&mut self, transaction: &Transaction) -> Result<&[u8]> {
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(&self.prefix);
        match &transaction.gtid {
            None => line.extend_from_slice(b"null"),
            Some(gtid) => {
                if self
                    .origin
                    .as_ref()
                    .is_none_or(|(origin, _)| origin != gtid.origin())
                {
                    let separator = match gtid.origin() {
                        Origin::Mysql { .. } => ':',
                        Origin::Mariadb { .. } => '-',
                    };
                    let mut head = serde_json::to_vec(&format!("{}{separator}", gtid.origin()))?;
                    head.pop(); // the closing quote: the sequence number follows
                    self.origin = Some((gtid.origin().clone(), head));
                }
                if let Some((_, head)) = &self.origin {
                    line.extend_from_slice(head);
                }
                write!(line, "{}\"", gtid.sequence())?;
            }
        }
        let us = transaction.commit_time_us;
        let seconds = us / 1_000_000;
        if self
            .second
            .as_ref()
            .is_none_or(|(second, _)| *second != seconds)
        {
            self.second = Some((seconds, iso8601_seconds(seconds)));
        }
        let second = self.second.as_ref().map_or("", |(_, text)| text.as_str());
        write!(
            line,
            r#","start":{},"end":{},"commit_time":"{second}.{:06}Z","commit_epoch":"#,
            transaction.start,
            transaction.end,
            us % 1_000_000,
        )?;
        serde_json::to_writer(&mut *line, &epoch_seconds(us))?;
        line.extend_from_slice(br#","ended_by":"#);
        serde_json::to_writer(&mut *line, &transaction.ended_by)?;
        line.extend_from_slice(b"}\n");
        Ok(line)
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
    format!("{}.{:06}Z", iso8601_seconds(us / 1_000_000), us % 1_000_000)
}

/// `YYYY-MM-DDTHH:MM:SS` for a time in seconds since the epoch.
fn iso8601_seconds(seconds: u64) -> String {
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
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
    use crate::binlog::TransactionEnd;

    /// The fixture binlogs of both flavours with a damaged copy and a missing file among them.
    fn files_with_bad_ones(dir: &Path) -> Vec<PathBuf> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/binlog");
        let mut files: Vec<PathBuf> = ["mariadb", "mysql"]
            .iter()
            .flat_map(|flavor| {
                let dir = fixtures.join(flavor);
                (1..=5).map(move |n| dir.join(format!("binlog.00000{n}")))
            })
            .filter(|path| path.exists())
            .collect();
        assert!(files.len() >= 8, "the fixtures are missing: {files:?}");
        let mut damaged = std::fs::read(&files[1]).expect("a fixture");
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x55;
        let damaged_path = dir.join("damaged.000002");
        std::fs::write(&damaged_path, damaged).expect("writing the damaged copy");
        files.insert(3, damaged_path);
        files.insert(6, dir.join("missing.000001"));
        files
    }

    #[test]
    fn parallel_output_is_the_one_at_a_time_output() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = files_with_bad_ones(dir.path());
        for transactions in [false, true] {
            for strict in [false, true] {
                let options = InspectOptions {
                    transactions,
                    strict,
                };
                let read_options = ReadOptions {
                    tail: if strict { Tail::Reject } else { Tail::Tolerate },
                    ..ReadOptions::default()
                };
                let mut expected = Vec::new();
                let n_failed = inspect_one_at_a_time(&files, &options, read_options, &mut expected)
                    .expect("inspecting");
                assert_eq!(n_failed, 2, "the damaged and the missing file");
                let n_lines = String::from_utf8_lossy(&expected).lines().count();
                assert!(n_lines >= files.len() - 2, "{n_lines} lines");
                for workers in [2, 3, files.len() + 1] {
                    let mut output = Vec::new();
                    let n_failed =
                        inspect_in_parallel(&files, &options, read_options, workers, &mut output)
                            .expect("inspecting");
                    assert_eq!(n_failed, 2);
                    assert!(
                        output == expected,
                        "{workers} workers, transactions {transactions}, strict {strict}"
                    );
                }
            }
        }
    }

    /// An output that fails after `capacity` bytes, as a closed pipe does.
    struct ClosingOutput {
        capacity: usize,
        written: usize,
    }

    impl Write for ClosingOutput {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.written + bytes.len() > self.capacity {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
            }
            self.written += bytes.len();
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_stops_every_worker() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let files = files_with_bad_ones(dir.path());
        let options = InspectOptions {
            transactions: true,
            strict: false,
        };
        let mut output = ClosingOutput {
            capacity: 100,
            written: 0,
        };
        // Returns (the scope joined every worker) with the output's error.
        let result = inspect_in_parallel(&files, &options, ReadOptions::default(), 2, &mut output);
        let error = result.expect_err("the output failed");
        assert!(error.to_string().contains("closed"), "{error:#}");
    }

    #[test]
    fn transaction_lines_are_what_serde_writes() {
        let transaction = |gtid: Option<&str>, us: u64, ended_by| Transaction {
            gtid: gtid.map(|text| text.parse().expect("gtid")),
            start: 120,
            end: 4567,
            commit_time_us: us,
            gtid_event_timestamp: 0,
            server_id: 1,
            ended_by,
        };
        let uuid = "16926568-e922-11f1-804a-02fc00000001";
        // Origins and seconds change from line to line, come back, and repeat.
        let cases = [
            (
                transaction(Some(&format!("{uuid}:7")), 1_795_693_907_505_105, TransactionEnd::Xid),
                format!(r#""gtid":"{uuid}:7","start":120,"end":4567,"commit_time":"2026-11-26T11:51:47.505105Z","commit_epoch":1795693907.505105,"ended_by":"xid""#),
            ),
            (
                transaction(Some(&format!("{uuid}:tag_1:3")), 1_795_693_907_000_000, TransactionEnd::Commit),
                format!(r#""gtid":"{uuid}:tag_1:3","start":120,"end":4567,"commit_time":"2026-11-26T11:51:47.000000Z","commit_epoch":1795693907.0,"ended_by":"commit""#),
            ),
            (
                transaction(None, 1_795_693_908_000_001, TransactionEnd::Statement),
                r#""gtid":null,"start":120,"end":4567,"commit_time":"2026-11-26T11:51:48.000001Z","commit_epoch":1795693908.000001,"ended_by":"statement""#.to_string(),
            ),
            (
                transaction(Some(&format!("{uuid}:8")), 0, TransactionEnd::Boundary),
                format!(r#""gtid":"{uuid}:8","start":120,"end":4567,"commit_time":"1970-01-01T00:00:00.000000Z","commit_epoch":0.0,"ended_by":"boundary""#),
            ),
            (
                transaction(Some("0-1-452920"), 0, TransactionEnd::Xid),
                r#""gtid":"0-1-452920","start":120,"end":4567,"commit_time":"1970-01-01T00:00:00.000000Z","commit_epoch":0.0,"ended_by":"xid""#.to_string(),
            ),
        ];
        let path = Path::new("/var/lib/mysql/\"odd\" name");
        let mut lines = TransactionLines::new(path).expect("prefix");
        for (transaction, fields) in cases {
            let expected = format!(
                "{{\"type\":\"transaction\",\"file\":\"/var/lib/mysql/\\\"odd\\\" name\",{fields}}}\n"
            );
            let line = lines.format(&transaction).expect("formats");
            assert_eq!(String::from_utf8_lossy(line), expected);
        }
    }

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

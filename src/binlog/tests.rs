//! Tests of the reader against the real binlogs in `tests/data/binlog` (MariaDB 10.11 and MySQL
//! 9.7, made by the `make-fixtures.sh` scripts there), and a bounded fuzz run over random and
//! mutated input.
//!
//! The expected values come from the servers, not from this reader: transaction boundaries and
//! GTIDs from the `SHOW BINLOG EVENTS` output recorded beside each fixture, commit timestamps
//! from `mysqlbinlog`/`mariadb-binlog` output.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::binlog::event::HEADER_LEN;
use crate::gtid::{Gtid, GtidSet, MariadbGtidState};

fn fixture_dir(flavor: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/binlog")
        .join(flavor)
}

fn fixtures(flavor: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir(flavor))
        .expect("fixture directory")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("binlog.0"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {flavor} fixtures");
    files
}

/// One row of `SHOW BINLOG EVENTS` (`mysql -N` batch output, tab-separated).
struct Row {
    pos: u64,
    kind: String,
    end: u64,
    info: String,
}

fn show_binlog_events(binlog: &Path) -> Vec<Row> {
    let name = binlog.file_name().and_then(|n| n.to_str()).expect("name");
    let path = binlog.with_file_name(format!("events-{name}.txt"));
    let text = std::fs::read_to_string(&path).expect("events file");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.splitn(6, '\t').collect();
            assert!(
                fields.len() >= 5,
                "short row in {}: {line:?}",
                path.display()
            );
            Row {
                pos: fields[1].parse().expect("Pos"),
                kind: fields[2].to_owned(),
                end: fields[4].parse().expect("End_log_pos"),
                info: fields.get(5).copied().unwrap_or("").replace("\\n", ""),
            }
        })
        .collect()
}

/// What the server says about one file.
struct Expected {
    /// `(gtid, start, end)` per transaction; a transaction runs from its GTID event to the
    /// last event before the next GTID, Rotate, Stop or checkpoint event.
    transactions: Vec<(Option<String>, u64, u64)>,
    previous: Option<String>,
    end: &'static str,
    size: u64,
}

fn is_gtid_row(kind: &str) -> bool {
    matches!(kind, "Gtid" | "Anonymous_Gtid" | "Gtid_tagged_log_event")
}

fn expected(binlog: &Path) -> Expected {
    let rows = show_binlog_events(binlog);
    let mut transactions = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if !is_gtid_row(&row.kind) {
            continue;
        }
        let mut end = row.end;
        for next in &rows[i + 1..] {
            let boundary = is_gtid_row(&next.kind)
                || matches!(
                    next.kind.as_str(),
                    "Rotate" | "Stop" | "Binlog_checkpoint" | "Gtid_list" | "Previous_gtids"
                );
            if boundary {
                break;
            }
            end = next.end;
        }
        let gtid = if row.info.contains("GTID_NEXT") {
            // MySQL: SET @@SESSION.GTID_NEXT= 'uuid:5' or 'ANONYMOUS'.
            let quoted = row.info.split('\'').nth(1).expect("quoted gtid");
            (quoted != "ANONYMOUS").then(|| quoted.to_owned())
        } else {
            // MariaDB: GTID 0-1-5, BEGIN GTID 0-1-5, XA START ... GTID 0-1-5.
            Some(
                row.info
                    .rsplit("GTID ")
                    .next()
                    .expect("gtid")
                    .trim()
                    .to_owned(),
            )
        };
        transactions.push((gtid, row.pos, end));
    }
    let previous = rows
        .iter()
        .find(|row| matches!(row.kind.as_str(), "Gtid_list" | "Previous_gtids"))
        .map(|row| row.info.trim_matches(['[', ']']).to_owned());
    let last = rows.last().expect("rows");
    let end = match last.kind.as_str() {
        "Rotate" => "rotate",
        "Stop" => "stop",
        _ => "open",
    };
    Expected {
        transactions,
        previous,
        end,
        size: last.end,
    }
}

/// `# at N` offsets of GTID events and the commit timestamps `mysqlbinlog` decodes from them.
fn mysqlbinlog_commit_timestamps(binlog: &Path) -> BTreeMap<u64, u64> {
    let name = binlog.file_name().and_then(|n| n.to_str()).expect("name");
    let path = binlog.with_file_name(format!("mysqlbinlog-{name}.txt"));
    let text = std::fs::read_to_string(path).expect("mysqlbinlog output");
    let mut at = 0;
    let mut timestamps = BTreeMap::new();
    for line in text.lines() {
        if let Some(offset) = line.strip_prefix("# at ") {
            at = offset.trim().parse().expect("offset");
        } else if let Some((_, rest)) = line.split_once("immediate_commit_timestamp=") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            timestamps.insert(at, digits.parse().expect("timestamp"));
        }
    }
    timestamps
}

/// Seconds since the epoch of `mariadb-binlog`'s `#YYMMDD HH:MM:SS` header time (printed in
/// UTC by the fixture script), keyed by the event's `end_log_pos`.
fn mariadb_binlog_header_times(binlog: &Path) -> BTreeMap<u64, u64> {
    let name = binlog.file_name().and_then(|n| n.to_str()).expect("name");
    let path = binlog.with_file_name(format!("mariadb-binlog-{name}.txt"));
    let text = std::fs::read_to_string(path).expect("mariadb-binlog output");
    let mut times = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let date: u64 = rest[..6].parse().expect("date");
        let time: Vec<u64> = rest[7..15]
            .trim()
            .split(':')
            .map(|part| part.parse().expect("time"))
            .collect();
        let (year, month, day) = (2000 + date / 10000, date / 100 % 100, date % 100);
        let seconds =
            days_from_civil(year, month, day) * 86_400 + time[0] * 3600 + time[1] * 60 + time[2];
        let end: u64 = rest
            .split("end_log_pos ")
            .nth(1)
            .and_then(|tail| tail.split_whitespace().next())
            .expect("end_log_pos")
            .parse()
            .expect("end_log_pos number");
        times.insert(end, seconds);
    }
    times
}

fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn read_all(path: &Path, options: ReadOptions) -> Result<(Vec<Transaction>, BinlogSummary), Error> {
    let mut reader = BinlogReader::open(path, options)?;
    let mut transactions = Vec::new();
    while let Some(transaction) = reader.next_transaction()? {
        transactions.push(transaction);
    }
    Ok((transactions, reader.finish()?))
}

fn check_against_server(flavor: &str) {
    let files = fixtures(flavor);
    let mut previous_after: Option<String> = None;
    for path in &files {
        let want = expected(path);
        for buffer_size in [DEFAULT_BUFFER_SIZE, 8192, 1000, 64] {
            let options = ReadOptions {
                tail: Tail::Reject,
                buffer_size,
            };
            let (transactions, summary) = read_all(path, options)
                .unwrap_or_else(|e| panic!("{} (buffer {buffer_size}): {e}", path.display()));
            let got: Vec<(Option<String>, u64, u64)> = transactions
                .iter()
                .map(|t| (t.gtid.as_ref().map(ToString::to_string), t.start, t.end))
                .collect();
            assert_eq!(
                got,
                want.transactions,
                "{} buffer {buffer_size}",
                path.display()
            );
            assert_eq!(summary.n_transactions, want.transactions.len() as u64);
            assert_eq!(summary.size, want.size, "{}", path.display());
            let end = match summary.end {
                FileEnd::Rotate { .. } => "rotate",
                FileEnd::Stop => "stop",
                FileEnd::Open => "open",
            };
            assert_eq!(end, want.end, "{}", path.display());
            assert_eq!(summary.is_complete(), want.end != "open");
            assert_eq!(summary.in_use, want.end == "open", "{}", path.display());

            // The file's set is exactly its transactions' GTIDs.
            let mut set = GtidSet::new();
            for (gtid, _, _) in &want.transactions {
                if let Some(gtid) = gtid {
                    set.insert(&Gtid::from_str(gtid).expect("server gtid"));
                }
            }
            assert_eq!(summary.gtids, set, "{}", path.display());
            let anonymous = want.transactions.iter().filter(|t| t.0.is_none()).count();
            assert_eq!(summary.n_anonymous, anonymous as u64);

            // The state before: as the server printed it, and as the previous file left it.
            let previous = summary.previous_gtids.as_ref().expect("previous gtids");
            let want_previous = want.previous.as_deref().expect("server previous gtids");
            match previous {
                GtidState::Mysql(set) => {
                    assert_eq!(
                        *set,
                        GtidSet::parse_mysql(want_previous).expect("server set")
                    );
                }
                GtidState::Mariadb(state) => assert_eq!(
                    *state,
                    MariadbGtidState::from_str(want_previous).expect("server state")
                ),
            }
            if let Some(after) = &previous_after
                && buffer_size == DEFAULT_BUFFER_SIZE
            {
                assert_eq!(
                    previous.to_server_string(),
                    *after,
                    "{} does not start where the previous file ended",
                    path.display()
                );
            }
            if buffer_size == 64 {
                previous_after = Some(summary.state_after().to_server_string());
            }
        }
    }
}

#[test]
fn mariadb_fixtures_match_show_binlog_events() {
    check_against_server("mariadb");
}

#[test]
fn mysql_fixtures_match_show_binlog_events() {
    check_against_server("mysql");
}

#[test]
fn mysql_commit_times_are_immediate_commit_timestamps() {
    let mut checked = 0;
    for path in fixtures("mysql") {
        let want = mysqlbinlog_commit_timestamps(&path);
        let (transactions, _) = read_all(&path, ReadOptions::default()).expect("reads");
        for transaction in transactions {
            assert_eq!(
                Some(&transaction.commit_time_us),
                want.get(&transaction.start),
                "{} transaction at {}",
                path.display(),
                transaction.start
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
}

#[test]
fn mariadb_commit_times_are_the_committing_events_header_time() {
    let mut checked = 0;
    for path in fixtures("mariadb") {
        let want = mariadb_binlog_header_times(&path);
        let (transactions, summary) = read_all(&path, ReadOptions::default()).expect("reads");
        for transaction in &transactions {
            let seconds = want.get(&transaction.end).expect("event ending there");
            assert_eq!(transaction.commit_time_us, seconds * 1_000_000);
            checked += 1;
        }
        assert_eq!(
            summary.first_commit_us,
            transactions.first().map(|t| t.commit_time_us)
        );
        assert_eq!(
            summary.last_commit_us,
            transactions.last().map(|t| t.commit_time_us)
        );
    }
    assert!(checked > 15);
}

#[test]
fn final_state_matches_the_servers() {
    // state.txt: what the server reported after the last fixture file was written.
    let mysql = std::fs::read_to_string(fixture_dir("mysql").join("state.txt")).expect("state");
    let executed = mysql.lines().nth(1).expect("gtid_executed line");
    let files = fixtures("mysql");
    let mut union = GtidSet::new();
    for path in &files {
        union.union_with(
            &read_summary(path, ReadOptions::default())
                .expect("reads")
                .gtids,
        );
    }
    assert_eq!(union, GtidSet::parse_mysql(executed).expect("server set"));
    let last = read_summary(files.last().expect("files"), ReadOptions::default()).expect("reads");
    assert_eq!(last.state_after().to_server_string(), executed);

    let mariadb = std::fs::read_to_string(fixture_dir("mariadb").join("state.txt")).expect("state");
    let binlog_state = mariadb
        .lines()
        .next()
        .and_then(|line| line.split('\t').nth(1))
        .expect("gtid_binlog_state");
    let files = fixtures("mariadb");
    let last = read_summary(files.last().expect("files"), ReadOptions::default()).expect("reads");
    assert_eq!(
        last.state_after(),
        GtidState::Mariadb(MariadbGtidState::from_str(binlog_state).expect("server state"))
    );
}

#[test]
fn tagged_and_anonymous_transactions() {
    let dir = fixture_dir("mysql");
    let (transactions, summary) =
        read_all(&dir.join("binlog.000001"), ReadOptions::default()).expect("reads");
    let tagged: Vec<String> = transactions
        .iter()
        .filter_map(|t| t.gtid.as_ref().map(ToString::to_string))
        .filter(|gtid| gtid.matches(':').count() == 2)
        .collect();
    assert_eq!(
        tagged,
        [
            "16926568-e922-11f1-804a-02fc00000001:tag1:1",
            "16926568-e922-11f1-804a-02fc00000001:tag1:2",
            "16926568-e922-11f1-804a-02fc00000001:tag_2:1",
            "11111111-2222-3333-4444-555555555555:tagx:3",
        ]
    );
    assert_eq!(summary.n_anonymous, 0);
    let ends: Vec<TransactionEnd> = transactions.iter().map(|t| t.ended_by).collect();
    assert!(ends.contains(&TransactionEnd::XaPrepare));
    assert!(ends.contains(&TransactionEnd::Commit));
    assert!(ends.contains(&TransactionEnd::Statement));
    assert!(!ends.contains(&TransactionEnd::Boundary));

    let (transactions, summary) =
        read_all(&dir.join("binlog.000005"), ReadOptions::default()).expect("reads");
    assert_eq!(summary.n_anonymous, 2);
    assert!(transactions.iter().all(|t| t.gtid.is_none()));
    assert!(summary.gtids.is_empty());

    let (transactions, _) =
        read_all(&dir.join("binlog.000002"), ReadOptions::default()).expect("reads");
    assert!(
        transactions
            .iter()
            .any(|t| t.ended_by == TransactionEnd::Payload)
    );
}

/// A reader that hands out one byte per call and is interrupted in between, as a pipe might.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    interrupt: bool,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let Some(&byte) = self.data.get(self.pos) else {
            return Ok(0);
        };
        match buf.first_mut() {
            Some(slot) => *slot = byte,
            None => return Ok(0),
        }
        self.pos += 1;
        Ok(1)
    }
}

fn summary_of(name: &str, data: &[u8], options: ReadOptions) -> Result<BinlogSummary, Error> {
    BinlogReader::new(name, data, options)?.finish()
}

#[test]
fn the_summary_is_the_same_with_or_without_the_transactions() {
    for path in fixtures("mariadb").into_iter().chain(fixtures("mysql")) {
        for buffer_size in [DEFAULT_BUFFER_SIZE, 1000, 64] {
            let options = ReadOptions {
                buffer_size,
                ..ReadOptions::default()
            };
            let (transactions, with) = read_all(&path, options).expect("reads");
            let without = read_summary(&path, options).expect("reads");
            assert_eq!(with, without, "{} buffer {buffer_size}", path.display());
            assert_eq!(without.n_transactions, transactions.len() as u64);
        }
    }
}

#[test]
fn short_reads_change_nothing() {
    for path in fixtures("mariadb").into_iter().chain(fixtures("mysql")) {
        let data = std::fs::read(&path).expect("fixture");
        let whole = summary_of("f", &data, ReadOptions::default()).expect("reads");
        let input = Trickle {
            data,
            pos: 0,
            interrupt: false,
        };
        let options = ReadOptions {
            buffer_size: 100,
            ..ReadOptions::default()
        };
        let trickled = BinlogReader::new("f", input, options)
            .and_then(BinlogReader::finish)
            .expect("reads");
        assert_eq!(trickled, whole, "{}", path.display());
    }
}

fn fixture_bytes(flavor: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir(flavor).join(name)).expect("fixture")
}

#[test]
fn truncation_is_a_partial_tail_or_an_error() {
    let data = fixture_bytes("mariadb", "binlog.000001");
    let rows = show_binlog_events(&fixture_dir("mariadb").join("binlog.000001"));
    let boundaries: Vec<u64> = rows.iter().map(|row| row.end).collect();
    for len in 0..data.len() {
        let cut = &data[..len];
        let tolerant = summary_of("cut", cut, ReadOptions::default());
        let strict = summary_of(
            "cut",
            cut,
            ReadOptions {
                tail: Tail::Reject,
                ..ReadOptions::default()
            },
        );
        if len < 256 {
            // Magic number and format description: damage in any mode.
            let error = tolerant.expect_err("no header");
            assert!(matches!(
                error,
                Error::Truncated { .. } | Error::BadMagic { .. }
            ));
            assert!(strict.is_err());
            continue;
        }
        let summary = tolerant.expect("a cut file is tolerated");
        let last_boundary = boundaries
            .iter()
            .copied()
            .filter(|&b| b <= len as u64)
            .max()
            .expect("boundary");
        assert_eq!(summary.size, len as u64);
        assert_eq!(summary.partial_tail_bytes, len as u64 - last_boundary);
        assert!(!summary.is_complete());
        if summary.partial_tail_bytes == 0 {
            assert_eq!(strict.expect("cut at an event boundary"), summary);
        } else {
            let error = strict.expect_err("cut inside an event");
            assert!(matches!(error, Error::Truncated { .. }));
            assert_eq!(error.offset(), last_boundary);
        }
    }
}

#[test]
fn open_transaction_at_the_end_is_not_counted() {
    let data = fixture_bytes("mysql", "binlog.000010");
    // Up to and including the Write_rows event of the last transaction (SHOW BINLOG EVENTS:
    // Gtid at 376, Xid at 637..668).
    let summary = summary_of("cut", &data[..637], ReadOptions::default()).expect("reads");
    assert_eq!(summary.n_transactions, 0);
    assert_eq!(summary.unfinished_transaction, Some(376));
    assert!(summary.gtids.is_empty());
}

#[test]
fn the_transactions_before_a_damaged_event_are_handed_out_first() {
    // Checksums are checked many events ahead of the one being read; a damaged event must
    // still only stop the reader when it gets there.
    let mut checked = 0;
    for flavor in ["mariadb", "mysql"] {
        for path in fixtures(flavor) {
            let data = std::fs::read(&path).expect("fixture");
            let (whole, summary) = read_all(&path, ReadOptions::default()).expect("intact fixture");
            let Some(last) = whole.last() else { continue };
            if summary.checksum == Checksum::None {
                continue;
            }
            checked += 1;
            // A byte in the middle of the last transaction's last event.
            let at = (last.end - 8) as usize;
            let mut bad = data.clone();
            bad[at] ^= 0x01;
            let mut reader =
                BinlogReader::new("bad", &bad[..], ReadOptions::default()).expect("header intact");
            let mut before = Vec::new();
            let error = loop {
                match reader.next_transaction() {
                    Ok(Some(transaction)) => before.push(transaction),
                    Ok(None) => panic!("{}: the damage went unnoticed", path.display()),
                    Err(error) => break error,
                }
            };
            assert!(matches!(error, Error::Checksum { .. }), "{error}");
            assert_eq!(before, whole[..whole.len() - 1], "{}", path.display());
            assert!(error.offset() > last.start && error.offset() < last.end);
        }
    }
    assert!(checked >= 4, "only {checked} fixtures with checksums");
}

#[test]
fn corruption_is_reported_with_its_offset() {
    let data = fixture_bytes("mariadb", "binlog.000002");
    let rows = show_binlog_events(&fixture_dir("mariadb").join("binlog.000002"));
    // A flipped byte inside each event (a big row event included) fails its checksum.
    for row in &rows {
        let mut bad = data.clone();
        let at = (row.pos + (row.end - row.pos) / 2) as usize;
        bad[at] ^= 0x40;
        for buffer_size in [DEFAULT_BUFFER_SIZE, 4096] {
            let options = ReadOptions {
                buffer_size,
                ..ReadOptions::default()
            };
            let error = summary_of("bad", &bad, options).expect_err("corrupt");
            assert_eq!(error.file(), Path::new("bad"));
            if row.pos == 4 {
                assert_eq!(error.offset(), 4);
            } else {
                assert!(
                    matches!(error, Error::Checksum { .. }),
                    "{error} (row at {})",
                    row.pos
                );
                assert_eq!(error.offset(), row.pos);
            }
        }
    }

    let mut bad = data.clone();
    bad[0] = b'x';
    let error = summary_of("bad", &bad, ReadOptions::default()).expect_err("bad magic");
    assert!(matches!(error, Error::BadMagic { .. }));
    assert!(error.to_string().contains("bad"));

    let mut bad = data.clone();
    bad[0] = 0xfd;
    let error = summary_of("bad", &bad, ReadOptions::default()).expect_err("encrypted");
    assert!(matches!(error, Error::Encrypted { .. }));

    // An event length below the header size, in a file without checksums to catch it first.
    let mut bad = fixture_bytes("mariadb", "binlog.000004");
    bad[363 + 9..363 + 13].copy_from_slice(&7u32.to_le_bytes());
    let error = summary_of("bad", &bad, ReadOptions::default()).expect_err("short event");
    assert!(matches!(error, Error::EventLength { length: 7, .. }));
    assert_eq!(error.offset(), 363);
    assert!(error.to_string().contains("offset 363"));
}

#[test]
fn unknown_events_are_skipped() {
    // A MySQL 9.x Large_transaction_header_event (type 43, flagged ignorable), which 9.7.4
    // does not write yet, spliced in after Previous_gtids: it must change nothing but offsets.
    let data = fixture_bytes("mysql", "binlog.000001");
    let at = 158; // SHOW BINLOG EVENTS: Previous_gtids 127..158
    let mut extra = Vec::new();
    let length = (HEADER_LEN + 10 + 100 + 4) as u32;
    extra.extend_from_slice(&0u32.to_le_bytes()); // timestamp
    extra.push(43);
    extra.extend_from_slice(&1u32.to_le_bytes()); // server id
    extra.extend_from_slice(&length.to_le_bytes());
    extra.extend_from_slice(&(at as u32 + length).to_le_bytes());
    extra.extend_from_slice(&0x80u16.to_le_bytes()); // LOG_EVENT_IGNORABLE_F
    extra.push(1); // version
    extra.extend_from_slice(&4000u64.to_le_bytes());
    extra.push(event::XID_EVENT);
    extra.extend_from_slice(&[0xaa; 100]); // padding
    let crc = crc32fast::hash(&extra);
    extra.extend_from_slice(&crc.to_le_bytes());
    let mut spliced = data[..at].to_vec();
    spliced.extend_from_slice(&extra);
    spliced.extend_from_slice(&data[at..]);

    let read = |bytes: &[u8]| {
        let mut reader = BinlogReader::new("x", bytes, ReadOptions::default()).expect("opens");
        let mut transactions = Vec::new();
        while let Some(transaction) = reader.next_transaction().expect("reads") {
            transactions.push(transaction);
        }
        (transactions, reader.finish().expect("summary"))
    };
    let (original, original_summary) = read(&data);
    let (shifted, summary) = read(&spliced);
    assert_eq!(original.len(), shifted.len());
    for (a, b) in original.iter().zip(&shifted) {
        assert_eq!(a.gtid, b.gtid);
        assert_eq!(a.start + u64::from(length), b.start);
        assert_eq!(a.end + u64::from(length), b.end);
    }
    assert_eq!(summary.gtids, original_summary.gtids);
    assert_eq!(summary.size, original_summary.size + u64::from(length));
    assert!(summary.is_complete());
}

#[test]
fn the_first_event_must_be_a_format_description() {
    let mut data = fixture_bytes("mysql", "binlog.000003");
    data[4 + 4] = event::QUERY_EVENT;
    let error = summary_of("x", &data, ReadOptions::default()).expect_err("no fde");
    assert!(
        matches!(error, Error::Malformed { offset: 4, .. }),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bounded fuzzing: random bytes and mutated fixtures must give a summary or an error naming the
// file and an offset inside it, never a panic or a hang. (cargo-fuzz needs nightly; this runs on
// stable in CI.)
// ---------------------------------------------------------------------------------------------

/// Reads `data` both ways and checks the outcome is well-formed.
fn fuzz_one(data: &[u8], buffer_size: usize) {
    for tail in [Tail::Tolerate, Tail::Reject] {
        let options = ReadOptions { tail, buffer_size };
        let outcome = BinlogReader::new("fuzz", data, options).and_then(|mut reader| {
            let mut last_end = 0;
            while let Some(transaction) = reader.next_transaction()? {
                assert!(transaction.start < transaction.end);
                assert!(transaction.start >= last_end);
                assert!(transaction.end <= data.len() as u64);
                last_end = transaction.end;
            }
            reader.finish()
        });
        // Reading only the summary builds no transactions but must come to the same end.
        let summary_only = BinlogReader::new("fuzz", data, options).and_then(BinlogReader::finish);
        match (&outcome, &summary_only) {
            (Ok(both), Ok(only)) => assert_eq!(both, only),
            (Err(both), Err(only)) => assert_eq!(both.to_string(), only.to_string()),
            _ => {
                panic!("handing out transactions changed the outcome: {outcome:?} {summary_only:?}")
            }
        }
        match outcome {
            Ok(summary) => assert!(summary.size <= data.len() as u64),
            Err(error) => {
                assert_eq!(error.file(), Path::new("fuzz"));
                assert!(error.offset() <= data.len() as u64, "{error}");
                assert!(error.to_string().contains("fuzz"));
            }
        }
    }
}

fn all_fixture_bytes() -> &'static [Vec<u8>] {
    static FIXTURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        fixtures("mariadb")
            .into_iter()
            .chain(fixtures("mysql"))
            .map(|path| std::fs::read(path).expect("fixture"))
            // The 64 KiB files make each case slow without exercising anything new.
            .filter(|data| data.len() < 8192)
            .collect()
    })
}

/// A fixture with its checksums recomputed after mutation, so the mutation reaches the
/// decoders instead of stopping at the first CRC check.
fn rechecksum(data: &mut [u8]) {
    let mut pos = 4;
    let mut crc = true;
    while pos + HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes([
            data[pos + 9],
            data[pos + 10],
            data[pos + 11],
            data[pos + 12],
        ]) as usize;
        if len < HEADER_LEN + 4 || pos + len > data.len() {
            return;
        }
        if data[pos + 4] == event::FORMAT_DESCRIPTION_EVENT {
            crc = data[pos + len - 5] == 1;
        }
        if crc {
            let mut covered = data[pos..pos + len - 4].to_vec();
            if covered[4] == event::FORMAT_DESCRIPTION_EVENT {
                covered[17] &= !event::FLAG_BINLOG_IN_USE;
            }
            let sum = crc32fast::hash(&covered);
            data[pos + len - 4..pos + len].copy_from_slice(&sum.to_le_bytes());
        }
        pos += len;
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { at: usize },
    Splice { from: usize, len: usize, to: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn apply(data: &mut Vec<u8>, mutation: &Mutation) {
    let len = data.len().max(1);
    match mutation {
        Mutation::Flip { at, mask } => {
            if let Some(byte) = data.get_mut(at % len) {
                *byte ^= mask;
            }
        }
        Mutation::Set { at, value } => {
            if let Some(byte) = data.get_mut(at % len) {
                *byte = *value;
            }
        }
        Mutation::Truncate { at } => data.truncate(at % len),
        Mutation::Splice { from, len: n, to } => {
            let from = from % len;
            let end = (from + n).min(data.len());
            let piece = data.get(from..end).unwrap_or(&[]).to_vec();
            let to = (to % len).min(data.len());
            data.splice(to..to, piece);
        }
        Mutation::Insert { at, bytes } => {
            let at = (at % len).min(data.len());
            data.splice(at..at, bytes.iter().copied());
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), any::<u8>()])
            .prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 1..200usize, any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Splice { from, len, to }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    // 10000 cases of each take a few seconds in a debug build; PROPTEST_CASES runs more (or fewer).
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_random_bytes(
        tail in proptest::collection::vec(any::<u8>(), 0..600),
        with_magic in any::<bool>(),
        buffer_size in prop_oneof![Just(64usize), Just(4096)],
    ) {
        let mut data = Vec::new();
        if with_magic {
            data.extend_from_slice(b"\xfebin");
        }
        data.extend_from_slice(&tail);
        fuzz_one(&data, buffer_size);
    }

    #[test]
    fn fuzz_mutated_fixtures(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        fix_checksums in any::<bool>(),
        buffer_size in prop_oneof![Just(64usize), Just(1000), Just(1 << 16)],
    ) {
        let originals = all_fixture_bytes();
        let mut data = originals[which % originals.len()].clone();
        for mutation in &mutations {
            apply(&mut data, mutation);
        }
        if fix_checksums {
            rechecksum(&mut data);
        }
        fuzz_one(&data, buffer_size);
    }
}

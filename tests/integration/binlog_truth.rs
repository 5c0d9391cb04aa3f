//! The binlog reader (`myhoard::binlog`) against the servers' own view of their binlogs, on both
//! flavours: the load generator writes binlogs with every kind of transaction, and for each
//! closed file the reader's transactions (GTID, start and end offsets), transaction count,
//! starting state and GTID set must equal what `SHOW BINLOG EVENTS IN 'file'` says; the state
//! after the last file must equal the server's `@@gtid_executed` (MySQL) or
//! `@@gtid_binlog_state` and `@@gtid_binlog_pos` (MariaDB). A replica's relay logs are checked
//! the same way against `SHOW RELAYLOG EVENTS`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use myhoard::binlog::{self, BinlogReader, FileEnd, GtidState, ReadOptions, Tail};
use myhoard::gtid::{Gtid, GtidSet, MariadbGtidState};

use crate::harness::db::{DbOptions, DbServer, Flavor};
use crate::harness::load::{Load, LoadOptions, Until};

#[test]
fn mariadb_reader_matches_the_server() {
    reader_matches_the_server(Flavor::MariaDb);
}

#[test]
fn mysql_reader_matches_the_server() {
    reader_matches_the_server(Flavor::MySql);
}

#[test]
fn mariadb_relay_logs_match_the_server() {
    relay_logs_match_the_server(Flavor::MariaDb);
}

#[test]
fn mysql_relay_logs_match_the_server() {
    relay_logs_match_the_server(Flavor::MySql);
}

/// One row of `SHOW BINLOG EVENTS`: `Log_name, Pos, Event_type, Server_id, End_log_pos, Info`.
type Row = (String, u64, String, u32, u64, String);

fn is_gtid_row(kind: &str) -> bool {
    matches!(kind, "Gtid" | "Anonymous_Gtid" | "Gtid_tagged_log_event")
}

/// The server's transactions of one file: `(gtid, start, end)`, a transaction running from its
/// GTID event to the last event before the next GTID, Rotate, Stop or checkpoint event.
fn server_transactions(rows: &[Row]) -> Vec<(Option<String>, u64, u64)> {
    let mut transactions = Vec::new();
    for (i, (_, pos, kind, _, end, info)) in rows.iter().enumerate() {
        if !is_gtid_row(kind) {
            continue;
        }
        let mut last_end = *end;
        for (_, _, next_kind, _, next_end, _) in &rows[i + 1..] {
            if is_gtid_row(next_kind)
                || matches!(
                    next_kind.as_str(),
                    "Rotate" | "Stop" | "Binlog_checkpoint" | "Gtid_list" | "Previous_gtids"
                )
            {
                break;
            }
            last_end = *next_end;
        }
        let gtid = if info.contains("GTID_NEXT") {
            // MySQL: SET @@SESSION.GTID_NEXT= 'uuid:5' or 'ANONYMOUS'.
            let quoted = info.split('\'').nth(1).expect("quoted gtid");
            (quoted != "ANONYMOUS").then(|| quoted.to_owned())
        } else {
            // MariaDB: GTID 0-1-5, BEGIN GTID 0-1-5, XA START ... GTID 0-1-5; transactions that
            // were group-committed together also carry their commit id: BEGIN GTID 0-1-5 cid=288.
            let after = info.rsplit("GTID ").next().expect("gtid");
            Some(after.split_whitespace().next().expect("gtid").to_owned())
        };
        transactions.push((gtid, *pos, last_end));
    }
    transactions
}

/// Transactions the load generator does not make: another MariaDB domain and server id; MySQL
/// anonymous transactions (gtid_mode stepped down to OFF_PERMISSIVE and back, which rotates).
fn extra_transactions(server: &DbServer) {
    match server.flavor() {
        Flavor::MariaDb => server.sql(
            "CREATE TABLE IF NOT EXISTS myhoard_load.extra (id INT PRIMARY KEY) ENGINE=InnoDB; \
             SET SESSION gtid_domain_id = 3; \
             INSERT INTO myhoard_load.extra VALUES (1); \
             SET SESSION server_id = 77; \
             INSERT INTO myhoard_load.extra VALUES (2); \
             SET SESSION gtid_domain_id = 0; \
             INSERT INTO myhoard_load.extra VALUES (3)",
        ),
        Flavor::MySql => {
            server.sql(
                "CREATE TABLE IF NOT EXISTS myhoard_load.extra (id INT PRIMARY KEY) ENGINE=InnoDB",
            );
            server.sql("SET GLOBAL gtid_mode = ON_PERMISSIVE");
            server.sql("SET GLOBAL gtid_mode = OFF_PERMISSIVE");
            server.sql(
                "INSERT INTO myhoard_load.extra VALUES (1); \
                 BEGIN; INSERT INTO myhoard_load.extra VALUES (2); COMMIT",
            );
            server.sql("SET GLOBAL gtid_mode = ON_PERMISSIVE");
            server.sql("SET GLOBAL gtid_mode = ON");
            server.sql("INSERT INTO myhoard_load.extra VALUES (3)");
        }
    }
}

fn reader_matches_the_server(flavor: Flavor) {
    let Some(server) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };
    for round in 0..3u64 {
        let options = LoadOptions {
            threads: 2,
            ..LoadOptions::new(Until::Transactions(120), 11 + round)
        };
        let stats = Load::run_with(&server, options).join();
        assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
        if round == 1 {
            extra_transactions(&server);
        }
        server.flush_binary_logs();
    }
    // A last transaction in the active file, which stays open.
    server.sql("INSERT INTO myhoard_load.extra VALUES (100)");

    let files = server.binlog_files();
    assert!(files.len() >= 4, "expected several binlogs, got {files:?}");
    let strict = ReadOptions {
        tail: Tail::Reject,
        ..ReadOptions::default()
    };
    let (mut n_checked, mut n_transactions, mut n_bytes) = (0, 0, 0);
    let mut previous_after: Option<GtidState> = None;
    let mut first_previous: Option<GtidState> = None;
    let mut union = GtidSet::new();
    let mut last_summary = None;
    for (i, path) in files.iter().enumerate() {
        let active = i + 1 == files.len();
        let name = file_name(path);
        let rows = show_events(&server, "SHOW BINLOG EVENTS", &name);
        let want = server_transactions(&rows);

        let mut reader =
            BinlogReader::open(path, strict).unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"));
        let mut got = Vec::new();
        while let Some(transaction) = reader
            .next_transaction()
            .unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"))
        {
            got.push((
                transaction.gtid.as_ref().map(ToString::to_string),
                transaction.start,
                transaction.end,
            ));
        }
        let summary = reader
            .finish()
            .unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"));
        assert_eq!(got, want, "{flavor:?} {name}: transactions");
        assert_eq!(summary.n_transactions, want.len() as u64, "{name}");

        // The set is the transactions' GTIDs, and nothing else.
        let mut set = GtidSet::new();
        for gtid in want.iter().filter_map(|(gtid, _, _)| gtid.as_deref()) {
            set.insert(&Gtid::from_str(gtid).expect("server gtid"));
        }
        assert_eq!(summary.gtids, set, "{flavor:?} {name}: gtid set");
        let anonymous = want.iter().filter(|(gtid, _, _)| gtid.is_none()).count();
        assert_eq!(summary.n_anonymous, anonymous as u64, "{name}");

        // The starting state, as the server prints it.
        let previous = summary
            .previous_gtids
            .clone()
            .unwrap_or_else(|| panic!("{name}: no previous gtids"));
        let (_, _, _, _, _, info) = rows
            .iter()
            .find(|row| matches!(row.2.as_str(), "Previous_gtids" | "Gtid_list"))
            .expect("previous gtids row");
        match &previous {
            GtidState::Mysql(previous) => {
                assert_eq!(
                    *previous,
                    GtidSet::parse_mysql(info).expect("server set"),
                    "{name}"
                );
            }
            GtidState::Mariadb(previous) => {
                let text = info.trim_matches(['[', ']']);
                assert_eq!(
                    *previous,
                    MariadbGtidState::from_str(text).expect("server state"),
                    "{name}"
                );
            }
        }
        // Each file starts where the one before ended.
        if let Some(after) = &previous_after {
            assert_eq!(previous, *after, "{flavor:?} {name} vs the previous file");
        }
        first_previous.get_or_insert_with(|| previous.clone());
        previous_after = Some(summary.state_after());

        if active {
            assert_eq!(summary.end, FileEnd::Open, "{name}");
            assert!(summary.in_use && !summary.is_complete(), "{name}");
        } else {
            assert!(
                matches!(summary.end, FileEnd::Rotate { .. }),
                "{name}: {:?}",
                summary.end
            );
            assert!(summary.is_complete() && !summary.in_use, "{name}");
            n_checked += 1;
        }
        assert_eq!(
            summary.size,
            std::fs::metadata(path).expect("binlog size").len()
        );
        union.union_with(&summary.gtids);
        n_transactions += summary.n_transactions;
        n_bytes += summary.size;
        last_summary = Some(summary);
    }
    assert!(n_checked >= 3);
    eprintln!(
        "{}: {n_checked} closed binlogs and the active one, {n_transactions} transactions, \
         {n_bytes} bytes, agree with the server",
        flavor.name()
    );

    // The union of the files, on top of what came before the first, is the server's view.
    let first_previous = first_previous.expect("files");
    let last = last_summary.expect("files");
    match flavor {
        Flavor::MySql => {
            let executed = GtidSet::parse_mysql(&server.gtid_executed()).expect("gtid_executed");
            assert_eq!(
                first_previous.to_gtid_set().union(&union),
                executed,
                "union of the binlogs vs @@gtid_executed"
            );
            assert_eq!(last.state_after(), GtidState::Mysql(executed));
        }
        Flavor::MariaDb => {
            let state: String = server.query_value("SELECT @@GLOBAL.gtid_binlog_state");
            let state = MariadbGtidState::from_str(&state).expect("gtid_binlog_state");
            assert_eq!(last.state_after(), GtidState::Mariadb(state.clone()));
            // The union's highest seq_no per domain and server, over the first file's state.
            let mut from_union = match &first_previous {
                GtidState::Mariadb(previous) => previous.clone(),
                GtidState::Mysql(_) => unreachable!("a mariadb file has a mariadb state"),
            };
            for (domain, server_id, sequence) in MariadbGtidState::from_gtid_set(&union)
                .expect("mariadb set")
                .iter()
            {
                from_union.update(domain, server_id, sequence);
            }
            assert_eq!(
                from_union, state,
                "union of the binlogs vs @@gtid_binlog_state"
            );
            assert_eq!(state.to_position_string(), server.gtid_executed());
        }
    }

    // The operator command agrees with the library on the closed files.
    let closed = &files[..files.len() - 1];
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_myhoard"))
        .args(["binlog", "inspect", "--strict"])
        .args(closed)
        .output()
        .expect("running myhoard binlog inspect");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), closed.len());
    for (line, path) in lines.iter().zip(closed) {
        let summary = binlog::read_summary(path, strict).expect("reads");
        assert_eq!(line["transactions"], summary.n_transactions);
        assert_eq!(line["gtid_set"], summary.gtids.to_string());
        assert_eq!(line["complete"], true);
    }
}

/// `SHOW BINLOG EVENTS` or `SHOW RELAYLOG EVENTS` of one file, `Info` read as bytes: MariaDB's
/// Annotate_rows shows statements with binary literals.
fn show_events(server: &DbServer, statement: &str, name: &str) -> Vec<Row> {
    let raw: Vec<(String, u64, String, u32, u64, Vec<u8>)> =
        server.query(&format!("{statement} IN '{name}'"));
    raw.into_iter()
        .map(|(file, pos, kind, server_id, end, info)| {
            let info = String::from_utf8_lossy(&info).into_owned();
            (file, pos, kind, server_id, end, info)
        })
        .collect()
}

fn relay_logs_match_the_server(flavor: Flavor) {
    let Some(source) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };
    let Some(replica) = DbServer::start(flavor, DbOptions::server_id(2)) else {
        return;
    };
    // Keep applied relay logs, so there is something to read.
    replica.sql("SET GLOBAL relay_log_purge = OFF");
    replica.replicate_from(&source);
    for round in 0..2u64 {
        let stats = Load::run(&source, Until::Transactions(100), 30 + round).join();
        assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
        source.flush_binary_logs();
    }
    replica.wait_until_caught_up(&source, Duration::from_secs(300));
    replica.sql("FLUSH RELAY LOGS");

    let files = replica.relay_log_files();
    assert!(!files.is_empty(), "no relay logs");
    let mut relayed = GtidSet::new();
    let mut n_transactions = 0;
    for (i, path) in files.iter().enumerate() {
        let name = file_name(path);
        let rows = show_events(&replica, "SHOW RELAYLOG EVENTS", &name);
        // In a relay log End_log_pos is the source's position, so a transaction ends where the
        // row after its last event starts (or at the end of the file).
        let size = std::fs::metadata(path).expect("relay log size").len();
        let mut want = Vec::new();
        for (j, (_, pos, kind, _, _, info)) in rows.iter().enumerate() {
            if !is_gtid_row(kind) {
                continue;
            }
            let end = rows[j + 1..]
                .iter()
                .find(|row| {
                    is_gtid_row(&row.2)
                        || matches!(
                            row.2.as_str(),
                            "Rotate"
                                | "Stop"
                                | "Binlog_checkpoint"
                                | "Gtid_list"
                                | "Previous_gtids"
                                | "Format_desc"
                        )
                })
                .map_or(size, |row| row.1);
            let gtid =
                server_transactions(&[(String::new(), *pos, kind.clone(), 0, end, info.clone())])
                    .pop()
                    .and_then(|(gtid, _, _)| gtid);
            want.push((gtid, *pos, end));
        }
        let options = ReadOptions {
            // The last relay log is still open for writing.
            tail: if i + 1 == files.len() {
                Tail::Tolerate
            } else {
                Tail::Reject
            },
            ..ReadOptions::default()
        };
        let mut reader =
            BinlogReader::open(path, options).unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"));
        let mut got = Vec::new();
        while let Some(transaction) = reader
            .next_transaction()
            .unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"))
        {
            got.push((
                transaction.gtid.as_ref().map(ToString::to_string),
                transaction.start,
                transaction.end,
            ));
        }
        let summary = reader
            .finish()
            .unwrap_or_else(|e| panic!("{flavor:?} {name}: {e}"));
        assert_eq!(got, want, "{flavor:?} relay log {name}: transactions");
        relayed.union_with(&summary.gtids);
        n_transactions += summary.n_transactions;
    }

    // Everything the source logged reached the relay logs.
    let mut logged = GtidSet::new();
    for path in source.binlog_files() {
        logged.union_with(
            &binlog::read_summary(&path, ReadOptions::default())
                .unwrap_or_else(|e| panic!("{flavor:?} source binlog: {e}"))
                .gtids,
        );
    }
    assert_eq!(
        relayed, logged,
        "{flavor:?}: relay logs vs the source's binlogs"
    );
    eprintln!(
        "{}: {} relay logs, {n_transactions} transactions, agree with the server",
        flavor.name(),
        files.len()
    );
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .expect("binlog file name")
        .to_owned()
}

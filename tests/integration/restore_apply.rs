//! The binlog replay of a restore (`myhoard::restore::apply`) against real servers, MariaDB
//! 10.11 and MySQL 9.7: a source under the harness's load (DDL, large transactions, tables
//! without a primary key, tagged GTIDs on MySQL) with binlog rotations, replayed into a fresh
//! server of the other `server_id`, in batches, through the planner's stop points:
//!
//! 1. from the first binlog to a GTID in the middle of a file, in several batches, with the
//!    daemon "crashing" (its state save failing) after every step of the first hand-over;
//! 2. from there (a start in the middle of a file) to an exact point in time, again in the
//!    middle of a file, all in one batch, with `kill -9` of the restored server while it applies
//!    (so the SQL thread is started again with its UNTIL clause);
//! 3. from there to the latest transaction, in several batches.
//!
//! Both servers come from the same initialised data directory and the source's first binlog
//! holds its whole history, so the empty target is a faithful "snapshot" of the source before
//! its first transaction. The references are the source's own checksums and GTIDs, taken while
//! its load was paused exactly at each stop point (nothing was written in between), and the
//! end state after the load.

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::DateTime;
use myhoard::binlog::{BinlogReader, ReadOptions, Tail};
use myhoard::config::{ClientParams, Secret};
use myhoard::db::{BinlogStatus, Client, Flavor, GtidState, RelayLogStart, ServerGtids};
use myhoard::gtid::{Gtid, GtidSet};
use myhoard::restore::apply::{
    self, ApplyPlan, ApplyState, BatchFile, BatchStage, BinlogFile, Progress, RestoreTarget,
};

use crate::harness::db::{DbOptions, DbServer, Flavor as ServerFlavor, PASSWORD, USER};
use crate::harness::load::{Load, Until};

macro_rules! flavour_tests {
    ($module:ident, $flavor:expr) => {
        mod $module {
            #[test]
            fn replays_to_a_gtid_a_time_and_the_latest_through_crashes() {
                super::replays_to_a_gtid_a_time_and_the_latest_through_crashes($flavor);
            }
        }
    };
}

flavour_tests!(mariadb, crate::harness::db::Flavor::MariaDb);
flavour_tests!(mysql, crate::harness::db::Flavor::MySql);

/// How long one batch may take to apply on a busy 2-core machine.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);

fn tcp_params(server: &DbServer) -> ClientParams {
    ClientParams {
        host: "127.0.0.1".to_owned(),
        port: server.port(),
        user: USER.to_owned(),
        password: Secret::new(PASSWORD.to_owned()),
        require_ssl: false,
        ca_file: None,
        unix_socket: None,
    }
}

fn connect(server: &DbServer) -> Client {
    match Client::connect(&tcp_params(server)) {
        Ok(client) => client,
        Err(err) => panic!("connecting: {err}\n{}", server.log_tail()),
    }
}

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

fn basename(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .expect("a file name")
        .to_owned()
}

/// Where the caller would keep the replay state: every save is checked to survive a JSON round
/// trip (it goes to a state file), and with `crash_every_other` every other save fails, the
/// first one included, as if the daemon died right after the step's work and before recording
/// it. `saves` lists the batch stage of each save, and whether it "crashed".
struct Persisted {
    state: ApplyState,
    crash_every_other: bool,
    saves: Vec<(Option<BatchStage>, bool)>,
}

impl Persisted {
    fn save(&mut self, state: &ApplyState) -> io::Result<()> {
        let json = serde_json::to_vec(state).map_err(io::Error::other)?;
        let back: ApplyState = serde_json::from_slice(&json).map_err(io::Error::other)?;
        assert_eq!(&back, state, "the state does not survive JSON");
        let crash = self.crash_every_other && self.saves.len().is_multiple_of(2);
        self.saves
            .push((state.batch.as_ref().map(|batch| batch.stage), crash));
        if crash {
            return Err(io::Error::other("simulated crash before the save"));
        }
        self.state = back;
        Ok(())
    }
}

/// The source at a stop point: its binlog position, GTIDs and table checksums.
struct Mark {
    status: BinlogStatus,
    checksums: std::collections::BTreeMap<String, u64>,
}

fn mark(source: &DbServer, client: &mut Client) -> Mark {
    Mark {
        status: ok(client.binlog_status()),
        checksums: source.checksum_all_tables(),
    }
}

/// The last transaction in `binlog` up to `position`, read while the server still writes the
/// file.
fn last_transaction_gtid(binlog: &Path, position: u64) -> Gtid {
    let options = ReadOptions {
        tail: Tail::Tolerate,
        ..ReadOptions::default()
    };
    let reader = ok(BinlogReader::open(binlog, options));
    let mut last = None;
    for transaction in reader {
        let transaction = ok(transaction);
        if transaction.end <= position {
            last = transaction.gtid;
        }
    }
    last.expect("a transaction before the mark")
}

/// What the restored server has applied, in the source's terms: MySQL `gtid_executed`,
/// MariaDB `gtid_slave_pos` (its binlog has the replayed transactions too, but `gtid_binlog_pos`
/// would not tell them from local writes).
fn applied(client: &mut Client) -> ServerGtids {
    match ok(client.gtid_state()) {
        GtidState::MySql { executed, .. } => ServerGtids::MySql(executed),
        GtidState::MariaDb { slave_pos, .. } => ServerGtids::MariaDb(slave_pos),
    }
}

/// Runs the load for `duration`, rotating the binlog every `rotate_every`.
fn load_with_rotations(source: &DbServer, seed: u64, duration: Duration, rotate_every: Duration) {
    let load = Load::run(source, Until::Stopped, seed);
    let deadline = Instant::now() + duration;
    let mut n_rotations = 0;
    while Instant::now() < deadline {
        thread::sleep(rotate_every.min(deadline.saturating_duration_since(Instant::now())));
        if Instant::now() < deadline {
            source.flush_binary_logs();
            n_rotations += 1;
        }
    }
    let stats = load.stop();
    assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
    assert!(stats.transactions > 20, "too little load: {stats:?}");
    eprintln!("load {seed}: {n_rotations} rotations, {stats:?}");
}

/// The source's binlogs from `first` (a name) on, "downloaded" (copied) into `downloads`, the
/// first one starting at `start_pos`.
fn download(
    source: &DbServer,
    downloads: &Path,
    leg: &str,
    first: &str,
    start_pos: u64,
) -> Vec<BinlogFile> {
    let binlogs = source.binlog_files();
    let index = binlogs
        .iter()
        .position(|binlog| basename(binlog) == first)
        .unwrap_or_else(|| panic!("{first} not among {binlogs:?}"));
    binlogs[index..]
        .iter()
        .enumerate()
        .map(|(i, binlog)| {
            let source_file = basename(binlog);
            let path = downloads.join(format!("{leg}-{source_file}"));
            ok(fs::copy(binlog, &path));
            BinlogFile {
                path,
                source_file,
                start_pos: if i == 0 {
                    start_pos
                } else {
                    apply::BINLOG_START
                },
            }
        })
        .collect()
}

/// The plan's files to apply, in batches of at most `batch_size`.
fn batches(plan: &ApplyPlan, files: &[BinlogFile], batch_size: usize) -> Vec<Vec<BatchFile>> {
    plan.batch_files(files)
        .chunks(batch_size)
        .map(<[BatchFile]>::to_vec)
        .collect()
}

/// Hands `batch` over; with `persisted.crash_every_other`, every step is done twice, resuming
/// from what was last persisted, as a restarted daemon does.
fn hand_over(client: &mut Client, persisted: &mut Persisted, batch: &[BatchFile]) {
    let mut state = persisted.state.clone();
    let mut n_crashes = 0;
    persisted.saves.clear();
    loop {
        match apply::apply_batch(client, &mut state, batch, &mut |s| persisted.save(s)) {
            Ok(()) => break,
            Err(apply::Error::SaveState(_)) => {
                n_crashes += 1;
                assert!(n_crashes < 20, "apply_batch does not get anywhere");
                state = persisted.state.clone();
            }
            Err(err) => panic!("apply_batch: {err}"),
        }
    }
    if persisted.crash_every_other {
        // A crash after each step (recording the new batch, the reset, placing the files,
        // CHANGE, START), and each step done again before it is recorded.
        use BatchStage::{Configuring, Placing, Resetting, Running, Starting};
        let stages = [Resetting, Placing, Configuring, Starting, Running];
        let expected: Vec<(Option<BatchStage>, bool)> = stages
            .iter()
            .flat_map(|&stage| [(Some(stage), true), (Some(stage), false)])
            .collect();
        assert_eq!(persisted.saves, expected);
        assert_eq!(n_crashes, 5);
    }
    assert_eq!(state, persisted.state);
    // The relay log holding the stop ends right before the first transaction not to apply.
    if let Some(stop) = batch.last().and_then(|file| file.plan.stop()) {
        let handed_over = state.batch.as_ref().and_then(|batch| batch.files.last());
        let relay_log = &handed_over.expect("a batch in progress").relay_log;
        let length = std::fs::metadata(relay_log)
            .expect("the last relay log")
            .len();
        assert_eq!(length, stop.next_transaction_start, "{relay_log:?}");
    }
}

/// Polls the running batch until it is applied; panics on an SQL thread error or a timeout.
/// Returns how often the SQL thread had to be started again.
fn wait_until_applied(client: &mut Client, persisted: &mut Persisted, target: &DbServer) -> u64 {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let mut state = persisted.state.clone();
    let mut n_restarts = 0;
    loop {
        let progress = apply::poll_batch(client, &mut state, Duration::from_secs(2), &mut |s| {
            persisted.save(s)
        });
        match ok(progress) {
            Progress::Done => break,
            Progress::Running { restarted, .. } => n_restarts += u64::from(restarted),
            Progress::Failed { errno, message } => {
                panic!(
                    "the SQL thread failed: {errno} {message}\n{}",
                    target.log_tail()
                )
            }
        }
        assert!(
            Instant::now() < deadline,
            "the batch was not applied within {APPLY_TIMEOUT:?}: {:?}",
            state.batch
        );
    }
    assert_eq!(state, persisted.state);
    assert!(state.batch.is_none());
    n_restarts
}

/// Applies every batch of the plan, in order.
fn apply_plan(
    client: &mut Client,
    persisted: &mut Persisted,
    target: &DbServer,
    batches: &[Vec<BatchFile>],
) {
    for (i, batch) in batches.iter().enumerate() {
        persisted.crash_every_other = i == 0;
        hand_over(client, persisted, batch);
        persisted.crash_every_other = false;
        let n_files_before = persisted.state.n_files_applied;
        wait_until_applied(client, persisted, target);
        assert_eq!(
            persisted.state.n_files_applied,
            n_files_before + batch.len() as u64
        );
        // The server took the files over (the downloads are gone).
        assert!(batch.iter().all(|file| !file.path.exists()));
    }
}

/// Hands `batch` over, kills the restored server (`kill -9`) once it has applied part of it,
/// starts it again and polls the batch to its end. Returns the new client.
fn apply_through_a_kill(
    client: Client,
    persisted: &mut Persisted,
    target: &mut DbServer,
    batch: &[BatchFile],
) -> Client {
    let mut client = client;
    let expected = {
        let mut expected = persisted.state.applied_gtids.clone();
        for file in batch {
            expected.union_with(&file.plan.gtids);
        }
        expected
    };
    hand_over(&mut client, persisted, batch);
    let before = applied(&mut client).to_gtid_set();
    let deadline = Instant::now() + APPLY_TIMEOUT;
    // A few transactions in, so the position MariaDB saved after its commits has moved past
    // some of them (it may lag the last commit: the window the rewind below makes certain).
    while applied(&mut client)
        .to_gtid_set()
        .difference(&before)
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the batch does not progress");
        thread::sleep(Duration::from_millis(5));
    }
    target.kill9();
    drop(client);
    target.start_again();
    let mut client = connect(target);
    if client.flavor().is_mariadb() {
        rewind_relay_position(&mut client, persisted);
    }
    let at_restart = applied(&mut client).to_gtid_set();
    eprintln!(
        "killed after applying {} of {} transactions",
        at_restart.difference(&before).count(),
        expected.difference(&before).count()
    );
    assert!(
        !at_restart.contains(&expected),
        "the batch had finished before the kill: nothing left to resume"
    );
    let n_restarts = wait_until_applied(&mut client, persisted, target);
    assert!(n_restarts >= 1, "the SQL thread was not started again");
    assert_eq!(persisted.state.applied_gtids, expected);
    client
}

/// Moves the MariaDB SQL thread's position back over transactions the server holds: what a
/// mysqld killed between a commit and its `relay-log.info` write leaves (its `kill -9` lands
/// there now and then), made certain. The replay must skip them rather than apply them again
/// (ERROR 1950 under `gtid_strict_mode`).
fn rewind_relay_position(client: &mut Client, persisted: &Persisted) {
    let status = ok(client.replica_status()).expect("a replication status after the restart");
    assert!(!status.sql_running, "the SQL thread runs right after boot");
    let batch = persisted.state.batch.as_ref().expect("a batch in progress");
    let (index, file) = batch
        .files
        .iter()
        .enumerate()
        .find(|(_, file)| basename(&file.relay_log) == status.relay_log_file)
        .unwrap_or_else(|| panic!("{status:?} is not in the batch's relay logs"));
    let rewind_to = if index == 0 { batch.start_pos } else { 4 };
    let held = applied(client).to_gtid_set();
    let mut reader = ok(BinlogReader::open(
        &file.relay_log,
        ReadOptions {
            tail: Tail::Tolerate,
            ..ReadOptions::default()
        },
    ));
    let mut n_held_passed_again = 0;
    while let Some(transaction) = ok(reader.next_transaction()) {
        if transaction.start >= rewind_to && transaction.end <= status.relay_log_pos {
            let gtid = transaction.gtid.expect("MariaDB transactions have GTIDs");
            assert!(
                held.contains_gtid(&gtid),
                "{gtid} before the position is not held"
            );
            n_held_passed_again += 1;
        }
    }
    assert!(
        n_held_passed_again > 0,
        "nothing to rewind over: {status:?}, batch starts at {rewind_to}"
    );
    eprintln!(
        "rewound the SQL thread from {} {} to {rewind_to}, over {n_held_passed_again} applied transactions",
        status.relay_log_file, status.relay_log_pos
    );
    let flavor = client.flavor();
    ok(
        client.execute(&flavor.change_source_to_relay_logs(&RelayLogStart {
            relay_log_file: &status.relay_log_file,
            relay_log_pos: rewind_to,
            source_log: Some((&file.source_file, rewind_to)),
        })),
    );
}

fn epoch_now() -> Duration {
    ok(SystemTime::now().duration_since(UNIX_EPOCH))
}

/// Ends the source's history so far with a tagged transaction that takes the applier a while
/// (an update of 32k rows). MySQL's `UNTIL SQL_AFTER_GTIDS` runs past such a stop, as its
/// applier goes on to the next transactions while a worker still applies this one (five more
/// when the relay log was left whole): the replay must stop there all the same.
fn end_with_a_large_tagged_transaction(source: &DbServer) {
    source.sql(
        "CREATE DATABASE IF NOT EXISTS myhoard_mark; \
         CREATE TABLE myhoard_mark.wide (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)); \
         INSERT INTO myhoard_mark.wide (v) VALUES (REPEAT('x', 200))",
    );
    for _ in 0..15 {
        source.sql("INSERT INTO myhoard_mark.wide (v) SELECT v FROM myhoard_mark.wide");
    }
    source.sql(
        "SET gtid_next = 'AUTOMATIC:mark'; \
         UPDATE myhoard_mark.wide SET v = REPEAT('y', 200); \
         SET gtid_next = 'AUTOMATIC'",
    );
}

fn replays_to_a_gtid_a_time_and_the_latest_through_crashes(server_flavor: ServerFlavor) {
    let Some(source) = DbServer::start(server_flavor, DbOptions::server_id(1)) else {
        return;
    };
    let Some(mut target) = DbServer::create(server_flavor, DbOptions::server_id(2)) else {
        return;
    };
    let mut source_client = connect(&source);
    let flavor: Flavor = source_client.flavor();

    // The restored server runs with exactly the options the replay prescribes (after the
    // harness's own, so they win).
    let options = ok(apply::apply_mysqld_options(
        flavor,
        2,
        1,
        &target.relay_log_prefix(),
        &target.relay_log_index(),
    ));
    let mut target_options = target.options().clone();
    target_options.extra_cnf = options
        .iter()
        .map(|option| option.trim_start_matches("--").to_owned())
        .collect();
    target.set_options(target_options);
    target.start_again();

    // --- the source's history, with the load paused at two stop points --------------------
    load_with_rotations(
        &source,
        1,
        Duration::from_secs(4),
        Duration::from_millis(900),
    );
    if flavor.is_mysql() {
        end_with_a_large_tagged_transaction(&source);
    }
    let gtid_mark = mark(&source, &mut source_client);
    let target_gtid = last_transaction_gtid(
        &source
            .binlog_prefix()
            .with_file_name(&gtid_mark.status.file),
        gtid_mark.status.position,
    );
    eprintln!("GTID mark {target_gtid} in {:?}", gtid_mark.status);

    // The file goes on after the mark: the stop is in the middle of it.
    load_with_rotations(
        &source,
        2,
        Duration::from_secs(3),
        Duration::from_millis(1300),
    );
    let time_mark = mark(&source, &mut source_client);
    // Every transaction so far committed before `time_target`, every later one more than a
    // second after it (MariaDB records whole seconds).
    let time_target_seconds = epoch_now().as_secs() + 1;
    while epoch_now() < Duration::from_secs(time_target_seconds + 1) + Duration::from_millis(100) {
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("time mark {time_target_seconds} at {:?}", time_mark.status);

    load_with_rotations(
        &source,
        3,
        Duration::from_secs(5),
        Duration::from_millis(1500),
    );
    source.flush_binary_logs();
    let end_mark = mark(&source, &mut source_client);
    eprintln!(
        "end {:?}, {} binlogs",
        end_mark.status,
        source.binlog_files().len()
    );

    // --- the replay --------------------------------------------------------------------------
    let downloads = tempfile::tempdir().expect("a download directory");
    let mut client = connect(&target);
    let mut persisted = Persisted {
        state: ApplyState::new(target.relay_log_prefix(), target.relay_log_index()),
        crash_every_other: false,
        saves: Vec::new(),
    };
    {
        let mut state = persisted.state.clone();
        ok(apply::prepare_server(
            &mut client,
            &mut state,
            &GtidSet::new(),
            &mut |s| persisted.save(s),
        ));
        assert!(persisted.state.prepared);
    }

    // 1. From the very beginning to the GTID mark, two files per batch.
    let first_binlog = basename(&source.binlog_files()[0]);
    let files = download(
        &source,
        downloads.path(),
        "1",
        &first_binlog,
        apply::BINLOG_START,
    );
    let gtid_plan = ok(apply::plan(
        flavor,
        &GtidSet::new(),
        &files,
        &RestoreTarget::Gtid(target_gtid.clone()),
    ));
    assert!(gtid_plan.target_reached);
    assert_eq!(
        gtid_plan.expected_gtids,
        gtid_mark.status.gtids.to_gtid_set()
    );
    let stop_file = gtid_plan
        .files
        .iter()
        .find_map(|file| file.stop().map(|stop| (file, stop)));
    let (stop_file, gtid_stop) = stop_file.expect("a stop in the middle of a file");
    assert_eq!(stop_file.source_file, gtid_mark.status.file);
    let gtid_batches = batches(&gtid_plan, &files, 2);
    assert!(
        gtid_batches.len() >= 2,
        "too few files for two batches: {:?}",
        gtid_plan.files
    );
    apply_plan(&mut client, &mut persisted, &target, &gtid_batches);
    assert_eq!(applied(&mut client), gtid_mark.status.gtids);
    assert_eq!(target.checksum_all_tables(), gtid_mark.checksums);
    assert_eq!(
        persisted.state.applied_gtids,
        gtid_mark.status.gtids.to_gtid_set()
    );

    // 2. From the middle of that file to the time mark.
    let files = download(
        &source,
        downloads.path(),
        "2",
        &gtid_mark.status.file,
        gtid_stop.next_transaction_start,
    );
    let at = DateTime::from_timestamp(time_target_seconds as i64, 0).expect("a time");
    let time_plan = ok(apply::plan(
        flavor,
        &gtid_plan.expected_gtids,
        &files,
        &RestoreTarget::Time {
            at,
            approximate_ok: false,
        },
    ));
    assert!(time_plan.target_reached);
    assert_eq!(
        time_plan.expected_gtids,
        time_mark.status.gtids.to_gtid_set()
    );
    let (time_stop_file, time_stop) = time_plan
        .files
        .iter()
        .find_map(|file| file.stop().map(|stop| (file, stop)))
        .expect("a stop in the middle of a file");
    assert_eq!(time_stop_file.source_file, time_mark.status.file);
    let last_applied = time_plan.last_applied.as_ref().expect("a last transaction");
    assert!(last_applied.commit_time_us <= time_target_seconds * 1_000_000);
    let time_batches = batches(&time_plan, &files, usize::MAX);
    assert_eq!(time_batches.len(), 1);
    assert!(time_batches[0].len() >= 2, "{:?}", time_plan.files);
    let mut client = apply_through_a_kill(client, &mut persisted, &mut target, &time_batches[0]);
    assert_eq!(applied(&mut client), time_mark.status.gtids);
    assert_eq!(target.checksum_all_tables(), time_mark.checksums);

    // 3. To the latest transaction.
    let files = download(
        &source,
        downloads.path(),
        "3",
        &time_mark.status.file,
        time_stop.next_transaction_start,
    );
    let latest_plan = ok(apply::plan(
        flavor,
        &time_plan.expected_gtids,
        &files,
        &RestoreTarget::Latest,
    ));
    assert!(!latest_plan.target_reached);
    assert_eq!(
        latest_plan.expected_gtids,
        end_mark.status.gtids.to_gtid_set()
    );
    let latest_batches = batches(&latest_plan, &files, 2);
    assert!(latest_batches.len() >= 2, "{:?}", latest_plan.files);
    apply_plan(&mut client, &mut persisted, &target, &latest_batches);
    assert_eq!(applied(&mut client), end_mark.status.gtids);
    assert_eq!(target.checksum_all_tables(), end_mark.checksums);
    assert_eq!(
        persisted.state.applied_gtids,
        end_mark.status.gtids.to_gtid_set()
    );

    // The replay is taken down: no replication source, and no relay log with anything in it
    // (MySQL's RESET REPLICA ALL leaves a fresh, empty relay log behind; MariaDB none).
    {
        let mut state = persisted.state.clone();
        ok(apply::finish(&mut client, &mut state, &mut |s| {
            persisted.save(s)
        }));
    }
    assert!(persisted.state.finished);
    assert_eq!(ok(client.replica_status()), None);
    for relay_log in target.relay_log_files() {
        let summary = ok(myhoard::binlog::read_summary(
            &relay_log,
            ReadOptions::default(),
        ));
        assert_eq!(summary.n_transactions, 0, "{summary:?}");
    }
}

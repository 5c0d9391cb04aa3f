//! Restores through the real daemon: a source server under load backed up to SeaweedFS, then
//! fresh servers restored by a second daemon to the latest transaction, a point in time and a
//! GTID, checked table by table against the source's checksums at that point.
//!
//! The reference points are taken with the load paused: the source's checksums and executed
//! GTIDs are read, and the next phase of load starts only after a whole second has passed, so
//! "the last transaction at or before second T" and "up to and including GTID G" both name
//! exactly the paused state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backup_daemon::wait_gapless_stream;
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbOptions, DbServer, Flavor};
use crate::harness::load::{Load, LoadOptions, Until};
use crate::harness::myhoard::shared_key_pair;
use crate::harness::seaweedfs;
use myhoard::backup_stream::layout::{self, BasebackupInfo};

/// A reference point of the source: what a restore to it must reproduce.
pub(crate) struct Checkpoint {
    pub checksums: BTreeMap<String, u64>,
    /// The last transaction committed (server syntax).
    pub last_gtid: String,
    /// Epoch seconds at or after the last commit and before the next.
    pub time: i64,
}

pub(crate) fn db_options(flavor: Flavor, server_id: u32) -> DbOptions {
    let mut options = DbOptions::server_id(server_id);
    if flavor == Flavor::MySql {
        options
            .extra_cnf
            .push("plugin-load-add=mysql_clone.so".to_owned());
    }
    options
}

fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The GTID of the source's newest transaction.
fn last_gtid(db: &DbServer) -> String {
    match db.flavor() {
        Flavor::MariaDb => db.query_value::<String>("SELECT @@GLOBAL.gtid_binlog_pos"),
        Flavor::MySql => {
            let uuid: String = db.query_value("SELECT @@GLOBAL.server_uuid");
            let executed = db.gtid_executed();
            // The untagged interval of the server's own uuid: its last number.
            let ours = executed
                .split(',')
                .find(|part| part.trim().starts_with(&uuid))
                .unwrap_or_default()
                .to_owned();
            let last = ours
                .split(':')
                .rfind(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .and_then(|interval| interval.rsplit('-').next())
                .unwrap_or_default()
                .to_owned();
            format!("{uuid}:{last}")
        }
    }
}

pub(crate) fn checkpoint(db: &DbServer) -> Checkpoint {
    let checksums = db.checksum_all_tables();
    let last_gtid = last_gtid(db);
    // Let the second of the last commit pass, and start the next load a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let time = now_epoch();
    std::thread::sleep(Duration::from_millis(1100));
    Checkpoint {
        checksums,
        last_gtid,
        time,
    }
}

pub(crate) fn load_phase(db: &DbServer, seconds: u64, seed: u64) {
    let mut options = LoadOptions::new(Until::Duration(Duration::from_secs(seconds)), seed);
    // Tagged GTIDs would make "the last transaction" ambiguous to name for MySQL here.
    options.tagged_gtids = false;
    options.threads = 1;
    let stats = Load::run_with(db, options).join();
    assert!(
        stats.transactions > 10,
        "load phase committed too little: {stats:?}"
    );
}

struct Source {
    db: DbServer,
    daemon: Daemon,
    backup: Value,
    checkpoints: Vec<Checkpoint>,
    site: Value,
    _dir: tempfile::TempDir,
}

pub(crate) fn site(hint: &str) -> Option<Value> {
    let storage = seaweedfs::shared_bucket(hint)?;
    let keys = shared_key_pair();
    Some(json!({
        "compression": { "algorithm": "zstd" },
        "encryption_keys": { "public": keys.public_pem, "private": keys.private_pem },
        "object_storage": storage,
    }))
}

/// A source with a completed backup and three checkpoints after it.
fn backed_up_source(flavor: Flavor, hint: &str) -> Option<Source> {
    backed_up_source_on(flavor, site(hint)?)
}

fn backed_up_source_on(flavor: Flavor, site: Value) -> Option<Source> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = DbServer::start(flavor, db_options(flavor, 1))?;
    load_phase(&db, 5, 1);
    let mut config = daemon::config_for(&db, dir.path(), site.clone(), Daemon::pick_port());
    config["backup_settings"]["forced_binlog_rotation_interval"] = 3.into();
    let daemon = Daemon::start(dir.path(), &config);
    let (status, body) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    let mut checkpoints = Vec::new();
    for seed in 2..5 {
        load_phase(&db, 3, seed);
        checkpoints.push(checkpoint(&db));
    }
    daemon.rotate_and_wait();
    let executed = {
        let flavor = myhoard::db::Flavor::parse(db.version()).expect("flavor");
        myhoard::db::client::parse_server_gtids(flavor, &db.gtid_executed())
            .expect("gtids")
            .to_gtid_set()
    };
    wait_gapless_stream(&daemon, &backup, &executed);
    Some(Source {
        db,
        daemon,
        backup,
        checkpoints,
        site,
        _dir: dir,
    })
}

/// A restore target: a stopped server with an empty data directory, and an idle daemon for it.
pub(crate) struct Target {
    pub db: DbServer,
    pub daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.daemon.kill9();
        // The daemon started this mysqld itself (start_command): end it by its pid file.
        let pid_file = self.db.dir().join("mysqld.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        {
            daemon::send_signal(pid, daemon::SIGKILL);
        }
    }
}

pub(crate) fn restore_target(
    flavor: Flavor,
    site: &Value,
    server_id: u32,
    tweak: impl FnOnce(&mut Value),
) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = DbServer::create(flavor, db_options(flavor, server_id)).expect("server binaries");
    empty_dir(&db.data_dir());
    let mut config = daemon::config_for(&db, dir.path(), site.clone(), Daemon::pick_port());
    tweak(&mut config);
    let daemon = Daemon::start(dir.path(), &config);
    daemon.wait_for("the backup list", Duration::from_secs(60), |d| {
        (!d.backups().is_empty()).then_some(())
    });
    Target {
        db,
        daemon,
        _dir: dir,
    }
}

fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("emptying the data directory");
            } else {
                std::fs::remove_file(&path).expect("emptying the data directory");
            }
        }
    }
}

/// Asks for a restore and waits until the daemon switched to observe on its own.
pub(crate) fn restore_and_wait(target: &Target, request: Value) -> Value {
    let (status, body) = target.daemon.put("/status", request.clone());
    assert_eq!(status, 200, "restore request {request}: {body}");
    let mut last_status = Value::Null;
    target
        .daemon
        .wait_for("the restore to complete", Duration::from_secs(600), |d| {
            if d.mode() == "observe" {
                return Some(());
            }
            let (code, status) = d.get("/status/restore");
            if code == 200 {
                assert_ne!(
                    status["phase"],
                    "failed",
                    "restore failed: {status}\n{}",
                    d.log_tail()
                );
                // A failed snapshot ends the restore only when there is no earlier backup to
                // fall back to, which the daemon says.
                assert!(
                    status["phase"] != "failed_basebackup"
                        || !d.log_text().contains("the restore fails"),
                    "restore failed: {status}\n{}",
                    d.log_tail()
                );
                last_status = status;
            }
            None
        });
    last_status
}

pub(crate) fn assert_same_tables(
    target: &mut DbServer,
    expected: &BTreeMap<String, u64>,
    what: &str,
) {
    target.attach_to_running();
    let restored = target.checksum_all_tables();
    assert_eq!(
        &restored, expected,
        "{what}: restored tables differ from the source"
    );
}

fn restores_to_every_kind_of_target(flavor: Flavor) {
    let Some(source) = backed_up_source(flavor, "restore") else {
        return;
    };
    let stream_id = source.backup["stream_id"].clone();
    // 1. To the latest transaction (after a final rotation everything is uploaded).
    let mut target = restore_target(flavor, &source.site, 2, |_| {});
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": stream_id}),
    );
    let latest = &source.checkpoints[2];
    assert_same_tables(&mut target.db, &latest.checksums, "latest");
    assert_eq!(
        target.db.query_value::<i64>("SELECT @@GLOBAL.read_only"),
        0,
        "the restored server runs with its normal settings"
    );
    drop(target);
    // 2. To an exact point in time (the first checkpoint).
    let mut target = restore_target(flavor, &source.site, 3, |_| {});
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": stream_id,
               "target_time": source.checkpoints[0].time}),
    );
    assert_same_tables(
        &mut target.db,
        &source.checkpoints[0].checksums,
        "target_time",
    );
    drop(target);
    // 3. To a GTID (the second checkpoint's last transaction), with a small disk budget.
    let mut target = restore_target(flavor, &source.site, 4, |config| {
        config["restore_max_binlog_bytes"] = (256 * 1024).into();
    });
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": stream_id,
               "target_gtid": source.checkpoints[1].last_gtid}),
    );
    assert_same_tables(
        &mut target.db,
        &source.checkpoints[1].checksums,
        "target_gtid",
    );
    drop(target);
    drop(source.daemon);
    drop(source.db);
}

#[test]
fn mariadb_restores_latest_time_and_gtid() {
    restores_to_every_kind_of_target(Flavor::MariaDb);
}

#[test]
fn mysql_restores_latest_time_and_gtid() {
    restores_to_every_kind_of_target(Flavor::MySql);
}

/// The downloaded binlogs on disk, each with its size: relay logs that are copies of the
/// source's binlogs, prefetched and partly downloaded files. Not the relay logs the restoring
/// server opens itself after the last file of a batch (a few hundred bytes): the budget is for
/// downloaded binlogs, and those start with a format description event of the server's own
/// `server_id` where copies carry the source's.
fn downloaded_binlogs(db: &DbServer) -> Vec<(String, u64)> {
    let prefix = db.relay_log_prefix();
    let Some(dir) = prefix.parent() else {
        return Vec::new();
    };
    let stem = prefix
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let own_server_id = db.options().server_id;
    let written_by_the_server = |path: &Path| {
        let mut head = [0u8; 13];
        std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
            .is_ok_and(|()| {
                u32::from_le_bytes([head[9], head[10], head[11], head[12]]) == own_server_id
            })
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{stem}.")) && !name.ends_with(".index")
        })
        .filter(|e| !written_by_the_server(&e.path()))
        .filter_map(|e| {
            let size = e.metadata().ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), size))
        })
        .collect()
}

/// The source's backup stream id and the sizes of the binlogs stored in it.
fn stored_binlog_sizes(source: &Source) -> (String, Vec<u64>) {
    let stream_id = source.backup["stream_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let objects = crate::backup_daemon::stored_objects(&source.daemon.dir().join("myhoard.json"));
    let binlogs = crate::backup_daemon::stream_binlogs(&objects, &stream_id);
    let sizes = binlogs.values().map(|(_, b)| b.file_size).collect();
    (stream_id, sizes)
}

/// A restore under `kill -9` of the daemon in each phase it can be caught in, with a disk
/// budget a fraction of the binlogs' total, sampled all along: it resumes every time, never
/// holds more than the budget, and ends with exactly the source's data.
fn restore_survives_kill9_in_each_phase_within_budget(flavor: Flavor) {
    let Some(source) = backed_up_source(flavor, "kill9-restore") else {
        return;
    };
    let (stream_id, sizes) = stored_binlog_sizes(&source);
    let total: u64 = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let budget = largest.max(total / 5);
    assert!(
        total >= 2 * budget,
        "too few binlog bytes for a budget test: {total} vs {budget}"
    );
    let mut target = restore_target(flavor, &source.site, 5, |config| {
        config["restore_max_binlog_bytes"] = budget.into();
    });
    let (status, body) = target.daemon.put(
        "/status",
        json!({"mode": "restore", "site": "default", "stream_id": stream_id}),
    );
    assert_eq!(status, 200, "{body}");
    let mut kills = Vec::new();
    let mut pending = vec![
        "restoring_basebackup",
        "waiting_for_apply_to_finish",
        "finalizing",
    ];
    let mut peak = 0u64;
    let mut files_at_peak = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "restore did not finish\n{}",
            target.daemon.log_tail()
        );
        let files = downloaded_binlogs(&target.db);
        let bytes: u64 = files.iter().map(|(_, size)| size).sum();
        if bytes > peak {
            peak = bytes;
            files_at_peak = files;
        }
        if target.daemon.mode() == "observe" {
            break;
        }
        let (code, status) = target.daemon.get("/status/restore");
        if code == 200 {
            let phase = status["phase"].as_str().unwrap_or_default().to_owned();
            assert!(
                !phase.starts_with("failed"),
                "restore failed: {status}\n{}",
                target.daemon.log_tail()
            );
            if pending.first() == Some(&phase.as_str()) {
                pending.remove(0);
                target.daemon.kill9();
                kills.push(phase);
                target.daemon.start_again();
            } else if let Some(position) = pending.iter().position(|p| *p == phase) {
                // An earlier phase went by between two samples.
                pending.drain(..position);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        kills.len() >= 2,
        "caught too few phases to kill in: {kills:?}"
    );
    assert!(
        peak <= budget,
        "downloaded binlogs on disk peaked at {peak} bytes, budget {budget}: {files_at_peak:?}"
    );
    assert_same_tables(
        &mut target.db,
        &source.checkpoints[2].checksums,
        "after kills",
    );
    eprintln!(
        "killed the daemon in {kills:?}; peak binlog bytes {peak} of budget {budget}, total {total}"
    );
}

#[test]
fn mariadb_restore_survives_kill9_in_each_phase_within_budget() {
    restore_survives_kill9_in_each_phase_within_budget(Flavor::MariaDb);
}

#[test]
fn mysql_restore_survives_kill9_in_each_phase_within_budget() {
    restore_survives_kill9_in_each_phase_within_budget(Flavor::MySql);
}

/// Tampered objects: a flipped byte in a binlog object and in the snapshot object each stop
/// the restore with an integrity error, and nothing from them is applied.
fn restore_refuses_tampered_objects(flavor: Flavor) {
    let storage_dir = tempfile::tempdir().expect("tempdir");
    let keys = shared_key_pair();
    let site = daemon::local_site(storage_dir.path(), &keys, "zstd");
    let Some(source) = backed_up_source_on(flavor, site.clone()) else {
        return;
    };
    let stream_id = source.backup["stream_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stream_dir = storage_dir.path().join("default").join(&stream_id);
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).expect("reading object");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(path, bytes).expect("writing object");
    };
    // A binlog in the middle of the stream.
    let binlog = stream_dir.join("binlogs/0/3_1");
    assert!(binlog.exists(), "no binlog 3 in {}", stream_dir.display());
    flip(&binlog);
    let target = restore_target(flavor, &site, 6, |_| {});
    let (status, body) = target.daemon.put(
        "/status",
        json!({"mode": "restore", "site": "default", "stream_id": stream_id}),
    );
    assert_eq!(status, 200, "{body}");
    let failed = target
        .daemon
        .wait_for("the restore to fail", Duration::from_secs(600), |d| {
            let (_, status) = d.get("/status/restore");
            (status["phase"] == "failed").then_some(status)
        });
    let reason = failed["failure_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("integrity"), "failure reason: {failed}");
    assert!(
        target.daemon.log_text().contains("integrity"),
        "the log names the integrity failure"
    );
    drop(target);
    // The snapshot itself: its first split keeps MyHoard's name `basebackup.xbstream` whatever
    // the format (MariaDB's mbstream, MySQL's tar of the cloned data directory).
    let info: BasebackupInfo =
        serde_json::from_value(source.backup["basebackup_info"].clone()).expect("basebackup_info");
    let expected_format = match flavor {
        Flavor::MariaDb => "xbstream",
        Flavor::MySql => "tar",
    };
    assert_eq!(
        info.snapshot_format.as_deref(),
        Some(expected_format),
        "snapshot format"
    );
    assert!(info.number_of_splits >= 1, "no snapshot splits: {info:?}");
    let snapshot_key =
        layout::basebackup_split_key(&layout::stream_prefix("default", &stream_id), 1);
    let snapshot = storage_dir.path().join(&snapshot_key);
    assert!(
        snapshot.is_file(),
        "no snapshot object {}",
        snapshot.display()
    );
    flip(&snapshot);
    let target = restore_target(flavor, &site, 7, |_| {});
    let (status, body) = target.daemon.put(
        "/status",
        json!({"mode": "restore", "site": "default", "stream_id": stream_id}),
    );
    assert_eq!(status, 200, "{body}");
    let failed = target
        .daemon
        .wait_for("the restore to fail", Duration::from_secs(600), |d| {
            let (_, status) = d.get("/status/restore");
            status["phase"]
                .as_str()
                .is_some_and(|p| p.starts_with("failed"))
                .then_some(status)
        });
    let reason = failed["failure_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("integrity"), "failure reason: {failed}");
    let data_dir_entries = std::fs::read_dir(target.db.data_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        data_dir_entries, 0,
        "nothing from a tampered snapshot reaches the data directory"
    );
}

#[test]
fn mariadb_restore_refuses_tampered_objects() {
    restore_refuses_tampered_objects(Flavor::MariaDb);
}

#[test]
fn mysql_restore_refuses_tampered_objects() {
    restore_refuses_tampered_objects(Flavor::MySql);
}

/// `PUT /status {"mode": "active", "force": true}` while a restore applies binlogs: the restore
/// finishes without the rest, the server is promoted accepting their loss, takes the backup
/// stream over and backs up its own writes into it. Force anywhere else is a 400.
fn forced_restore_promotes(flavor: Flavor, target_server_id: u32) {
    let Some(source) = backed_up_source(flavor, "force") else {
        return;
    };
    let (stream_id, sizes) = stored_binlog_sizes(&source);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    drop(source.daemon);
    // One binlog per batch: plenty of moments that are "waiting for apply".
    let mut target = restore_target(flavor, &source.site, target_server_id, |config| {
        config["restore_max_binlog_bytes"] = largest.into();
    });
    let (status, body) = target.daemon.put(
        "/status",
        json!({"mode": "restore", "site": "default", "stream_id": stream_id}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = target
        .daemon
        .put("/status", json!({"mode": "active", "force": true}));
    assert_eq!(status, 400, "force before any binlog is applied: {body}");
    // The phase leaves "waiting for apply" between batches, possibly between our look at it
    // and the request: a refusal then is right, and the next batch is another chance.
    let body = target.daemon.wait_for(
        "a force accepted while binlogs are applied",
        Duration::from_secs(300),
        |d| {
            let (_, status) = d.get("/status/restore");
            if status["phase"] != "waiting_for_apply_to_finish" {
                return None;
            }
            let (status, body) = d.put("/status", json!({"mode": "active", "force": true}));
            match status {
                200 => Some(body),
                400 if body["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Can only force")) =>
                {
                    None
                }
                _ => panic!("force refused: {status} {body}\n{}", d.log_tail()),
            }
        },
    );
    assert_eq!(body["mode"], "restore", "{body}");
    target.daemon.wait_mode("active", Duration::from_secs(300));
    target.db.attach_to_running();
    let (status, body) = target
        .daemon
        .put("/status", json!({"mode": "active", "force": true}));
    assert_eq!(status, 400, "force once active: {body}");

    // The promoted server's own writes go into the stream it was restored from.
    target
        .db
        .sql("CREATE DATABASE after_force; CREATE TABLE after_force.t (id INT PRIMARY KEY); INSERT INTO after_force.t VALUES (1)");
    target.daemon.rotate_and_wait();
    let objects = crate::backup_daemon::stored_objects(&target.daemon.dir().join("myhoard.json"));
    let binlogs = crate::backup_daemon::stream_binlogs(&objects, &stream_id);
    assert!(
        binlogs
            .values()
            .any(|(_, binlog)| binlog.server_id == target_server_id),
        "the promoted server uploaded nothing to {stream_id}\n{}",
        target.daemon.log_tail()
    );
}

#[test]
fn mariadb_forced_restore_promotes() {
    forced_restore_promotes(Flavor::MariaDb, 6);
}

#[test]
fn mysql_forced_restore_promotes() {
    forced_restore_promotes(Flavor::MySql, 6);
}

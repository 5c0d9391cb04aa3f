//! The real daemon in active mode against real MariaDB/MySQL servers and SeaweedFS: snapshots,
//! binlog streams that are gapless from the snapshot on, crash safety, storage outages,
//! retention, and the HTTP API's answers to bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::StorageServer;
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbOptions, DbServer, Flavor};
use crate::harness::load::{Load, Until};
use crate::harness::myhoard::shared_key_pair;
use crate::harness::seaweedfs;
use myhoard::backup_stream::layout::{self, BasebackupInfo, BinlogInfo};
use myhoard::gtid::GtidSet;

fn db_options(flavor: Flavor, server_id: u32) -> DbOptions {
    let mut options = DbOptions::server_id(server_id);
    if flavor == Flavor::MySql {
        options
            .extra_cnf
            .push("plugin-load-add=mysql_clone.so".to_owned());
    }
    options
}

/// Every object of the storage the daemon's config names, via `myhoard storage ls`.
pub fn stored_objects(config_path: &Path) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_myhoard"))
        .args(["storage", "ls", "--deep", "--json", "--config"])
        .arg(config_path)
        .output()
        .expect("running myhoard storage ls");
    assert!(
        output.status.success(),
        "storage ls failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("key").is_some())
        .collect()
}

fn metadata_json<T: serde::de::DeserializeOwned>(object: &Value) -> Option<T> {
    let text = object["metadata"]["json"].as_str()?;
    serde_json::from_str(text).ok()
}

/// The binlog objects of one stream, by remote index, with their metadata.
pub fn stream_binlogs(objects: &[Value], stream_id: &str) -> BTreeMap<u64, (String, BinlogInfo)> {
    let marker = format!("/{stream_id}/binlogs/");
    objects
        .iter()
        .filter(|o| o["key"].as_str().is_some_and(|k| k.contains(&marker)))
        .map(|o| {
            let key = o["key"].as_str().unwrap_or_default().to_owned();
            let info: BinlogInfo = metadata_json(o).expect("binlog metadata");
            let name = key.rsplit('/').next().unwrap_or_default();
            let index: u64 = name
                .split('_')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("index");
            (index, (key, info))
        })
        .collect()
}

fn server_gtids(db: &DbServer) -> GtidSet {
    let flavor = myhoard::db::Flavor::parse(db.version()).expect("flavor");
    myhoard::db::client::parse_server_gtids(flavor, &db.gtid_executed())
        .expect("parsing executed GTIDs")
        .to_gtid_set()
}

/// Checks that the stream's binlogs are numbered 1..n without gaps or duplicates, start with
/// the snapshot's binlog, follow each other locally, and together with the snapshot hold every
/// transaction in `executed`.
pub fn assert_gapless_stream(objects: &[Value], backup: &Value, executed: &GtidSet) {
    let stream_id = backup["stream_id"].as_str().expect("stream_id");
    let info: BasebackupInfo =
        serde_json::from_value(backup["basebackup_info"].clone()).expect("basebackup_info");
    let binlogs = stream_binlogs(objects, stream_id);
    assert!(!binlogs.is_empty(), "no binlogs uploaded for {stream_id}");
    let indexes: Vec<u64> = binlogs.keys().copied().collect();
    assert_eq!(
        indexes,
        (1..=indexes.len() as u64).collect::<Vec<_>>(),
        "remote indexes"
    );
    let names: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["key"].as_str())
        .filter(|k| k.contains(&format!("/{stream_id}/binlogs/")))
        .collect();
    assert_eq!(
        names.len(),
        binlogs.len(),
        "one object per index: {names:?}"
    );
    let first = &binlogs[&1].1;
    assert_eq!(
        Some(first.file_name.as_str()),
        info.binlog_name.as_deref(),
        "first binlog"
    );
    let locals: Vec<u64> = binlogs.values().map(|(_, b)| b.local_index).collect();
    for pair in locals.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "local binlogs follow each other: {locals:?}"
        );
    }
    let mut stored = info.gtid_executed.clone();
    for (_, binlog) in binlogs.values() {
        stored.union_with(&binlog.gtids());
    }
    assert!(
        stored.contains(executed),
        "transactions missing from the backup: {}",
        executed.difference(&stored)
    );
}

/// Waits until the stream's binlogs hold every transaction in `executed` (uploads of large
/// binlogs can outlast `wait_for_upload`), then checks the stream as
/// [`assert_gapless_stream`] does.
pub fn wait_gapless_stream(daemon: &Daemon, backup: &Value, executed: &GtidSet) {
    let config_path = daemon.dir().join("myhoard.json");
    let stream_id = backup["stream_id"].as_str().unwrap_or_default().to_owned();
    let info: BasebackupInfo =
        serde_json::from_value(backup["basebackup_info"].clone()).expect("basebackup_info");
    daemon.wait_for(
        "every transaction to be uploaded",
        Duration::from_secs(300),
        |_| {
            let objects = stored_objects(&config_path);
            let mut stored = info.gtid_executed.clone();
            for (_, binlog) in stream_binlogs(&objects, &stream_id).values() {
                stored.union_with(&binlog.gtids());
            }
            stored.contains(executed).then_some(())
        },
    );
    assert_gapless_stream(&stored_objects(&config_path), backup, executed);
}

fn start_active(
    flavor: Flavor,
    dir: &Path,
    site: Value,
    tweak: impl FnOnce(&mut Value),
) -> Option<(DbServer, Daemon)> {
    let db = DbServer::start(flavor, db_options(flavor, 1))?;
    let mut config = daemon::config_for(&db, dir, site, Daemon::pick_port());
    tweak(&mut config);
    let daemon = Daemon::start(dir, &config);
    let (status, body) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    daemon.wait_mode("active", Duration::from_secs(60));
    Some((db, daemon))
}

fn s3_site(hint: &str) -> Option<Value> {
    let storage = seaweedfs::shared_bucket(hint)?;
    let keys = shared_key_pair();
    Some(json!({
        "compression": { "algorithm": "zstd" },
        "encryption_keys": { "public": keys.public_pem, "private": keys.private_pem },
        "object_storage": storage,
    }))
}

fn backup_under_load(flavor: Flavor) {
    let Some(site) = s3_site("active") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((db, mut daemon)) = start_active(flavor, dir.path(), site, |config| {
        config["backup_settings"]["forced_binlog_rotation_interval"] = 2.into();
    }) else {
        return;
    };
    let load = Load::run(&db, Until::Stopped, 11);
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    // Forced rotation starts once the snapshot is done, however long that took on this
    // machine: the load goes on until it has made a few binlogs.
    let stream_id = backup["stream_id"].as_str().unwrap_or_default();
    let config_path = daemon.dir().join("myhoard.json");
    daemon.wait_for(
        "five binlogs from forced rotation every 2 s",
        Duration::from_secs(120),
        |_| {
            std::thread::sleep(Duration::from_secs(1));
            (stream_binlogs(&stored_objects(&config_path), stream_id).len() >= 5).then_some(())
        },
    );
    let stats = load.stop();
    assert!(
        stats.transactions > 100 && stats.errors.is_empty(),
        "the load committed too little or failed: {stats:?}"
    );
    daemon.rotate_and_wait();
    let executed = server_gtids(&db);
    wait_gapless_stream(&daemon, &backup, &executed);
    // GET /backup lists it as MyHoard does.
    let listed = daemon.backups();
    let entry = listed
        .iter()
        .find(|b| b["stream_id"] == backup["stream_id"])
        .expect("backup listed");
    for field in [
        "basebackup_info",
        "broken_at",
        "closed_at",
        "completed_at",
        "preserve_until",
        "recovery_site",
        "resumable",
        "site",
        "stream_id",
    ] {
        assert!(entry.get(field).is_some(), "field {field} missing: {entry}");
    }
    assert_eq!(entry["resumable"], true);
    assert!(
        daemon.log_text().contains("MiB read"),
        "snapshot progress is logged while it runs"
    );
    assert_eq!(entry["site"], "default");
    assert!(
        daemon.stop(),
        "clean shutdown on SIGTERM:\n{}",
        daemon.log_tail()
    );
}

#[test]
fn mariadb_backup_under_load_is_gapless() {
    backup_under_load(Flavor::MariaDb);
}

#[test]
fn mysql_backup_under_load_is_gapless() {
    backup_under_load(Flavor::MySql);
}

/// Bad input to every route gets a 400 with a message, and the daemon keeps working.
#[test]
fn bad_requests_get_400_with_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let keys = shared_key_pair();
    let Some(db) = DbServer::start(Flavor::MariaDb, db_options(Flavor::MariaDb, 1)) else {
        return;
    };
    let config = daemon::config_for(
        &db,
        dir.path(),
        daemon::local_site(&storage, &keys, "snappy"),
        Daemon::pick_port(),
    );
    let daemon = Daemon::start(dir.path(), &config);
    let cases: &[(&str, &str, &str)] = &[
        ("PUT", "/status", "{not json"),
        ("PUT", "/status", "[1, 2]"),
        ("PUT", "/status", r#"{"mode": "promote"}"#),
        ("PUT", "/status", r#"{"mode": 7}"#),
        ("PUT", "/status", r#"{"mode": "restore"}"#),
        (
            "PUT",
            "/status",
            r#"{"mode": "restore", "site": "default", "stream_id": 5}"#,
        ),
        (
            "PUT",
            "/status",
            r#"{"mode": "restore", "site": "default", "stream_id": "nope"}"#,
        ),
        (
            "PUT",
            "/status",
            r#"{"mode": "restore", "site": "default", "stream_id": "x", "target_time": 5, "target_gtid": "0-1-5"}"#,
        ),
        ("POST", "/backup", r#"{"backup_type": "full"}"#),
        ("POST", "/backup", r#"{"backup_type": 3}"#),
        ("POST", "/backup", "{}"),
        ("PUT", "/replication_state", r#"{"a": 1}"#),
        (
            "PUT",
            "/replication_state",
            r#"{"a": {"not-a-uuid": [[1, 2]]}}"#,
        ),
        ("PUT", "/replication_state", r#"{"a": {"0-1": [[1]]}}"#),
        ("PATCH", "/binlogs", r#"{"binlog_index": "x"}"#),
        (
            "PATCH",
            "/backup/settings",
            r#"{"paused_until": "yesterday"}"#,
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = daemon.send(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body} → {status} {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path} {body}: no message in {answer}"
        );
    }
    // Forbidden transition: active cannot go to observe.
    let (status, _) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200);
    daemon.wait_mode("active", Duration::from_secs(60));
    let (status, answer) = daemon.put("/status", json!({"mode": "observe"}));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not allowed")
    );
    // Still working.
    assert_eq!(daemon.mode(), "active");
    let (status, _) = daemon.get("/backup");
    assert_eq!(status, 200);
}

/// `kill -9` of the daemon at five moments (during the snapshot, then during uploads under
/// load): after each restart it resumes, and the stream stays gapless with one object per
/// index.
fn kill9_during_snapshot_and_uploads(flavor: Flavor) {
    let Some(site) = s3_site("kill9") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((db, mut daemon)) = start_active(flavor, dir.path(), site, |config| {
        config["backup_settings"]["forced_binlog_rotation_interval"] = 1.into();
    }) else {
        return;
    };
    let load = Load::run(&db, Until::Stopped, 21);
    // 1. During the snapshot: MariaDB's half a second after it started (it takes over 10 s
    // here), MySQL's while the server runs the daemon's CLONE, which goes on after the daemon
    // is gone. The killed process's whole log must show the snapshot started and not stored.
    match flavor {
        Flavor::MariaDb => {
            daemon.wait_for("the snapshot to start", Duration::from_secs(60), |d| {
                d.log_text().contains(SNAPSHOT_STARTED).then_some(())
            });
            std::thread::sleep(Duration::from_millis(500));
        }
        Flavor::MySql => {
            // Polled closely, as a small clone may take only a second or so. Should it be
            // missed all the same, the kill comes while the temporary server starts, still
            // within the snapshot.
            let deadline = Instant::now() + Duration::from_secs(60);
            while db.query_value::<u64>(RUNNING_CLONES) == 0
                && !daemon.log_text().contains(CLONE_COPIED)
            {
                assert!(
                    Instant::now() < deadline,
                    "the daemon's CLONE never ran:\n{}",
                    daemon.log_tail()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    daemon.kill9();
    let log = daemon.log_text();
    assert!(
        log.contains(SNAPSHOT_STARTED) && !snapshot_stored(&log),
        "the first kill missed the snapshot:\n{}",
        daemon.log_tail()
    );
    daemon.start_again();
    assert_eq!(
        daemon.mode(),
        "active",
        "mode after the kill in the snapshot"
    );
    // 2. During uploads: the snapshot is taken again from scratch, then the kills come while
    // the load's binlogs (rotated every second) are uploaded. Each kill comes the given
    // milliseconds after the previous restart; none may make the daemon redo the snapshot.
    daemon.wait_for("the snapshot to be stored", Duration::from_secs(300), |d| {
        snapshot_stored(&d.log_text()).then_some(())
    });
    // The new daemon stopped the killed one's CLONE before starting its own: the server runs
    // one at a time and refuses a second with error 3634.
    let log = daemon.log_text();
    assert!(
        !log.contains("Too many concurrent clone operations"),
        "the new snapshot ran into the killed daemon's CLONE:\n{}",
        daemon.log_tail()
    );
    let mut uploads_before_kills = 0;
    for (round, pause_ms) in [4_000u64, 2_300, 5_100, 3_300].into_iter().enumerate() {
        let run_starts_at = daemon.log_text().len();
        std::thread::sleep(Duration::from_millis(pause_ms));
        daemon.kill9();
        let log = daemon.log_text();
        let run_log = log.get(run_starts_at..).unwrap_or_default();
        assert!(
            !run_log.contains(SNAPSHOT_STARTED),
            "restart {round} took the stored snapshot again:\n{}",
            daemon.log_tail()
        );
        uploads_before_kills += run_log.matches("uploaded binlog").count();
        daemon.start_again();
        assert_eq!(
            daemon.mode(),
            "active",
            "mode after the kill in uploads {round}"
        );
    }
    assert!(
        uploads_before_kills > 0,
        "no binlog upload went on while the daemon was being killed"
    );
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(5));
    let stats = load.stop();
    assert!(stats.transactions > 50, "{stats:?}");
    daemon.rotate_and_wait();
    let executed = server_gtids(&db);
    wait_gapless_stream(&daemon, &backup, &executed);
    let objects = stored_objects(&daemon.dir().join("myhoard.json"));
    // Exactly one backup stream: restarts resumed it instead of starting others.
    let streams: std::collections::BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| o["key"].as_str())
        .filter_map(|k| k.split('/').nth(1))
        .collect();
    assert_eq!(streams.len(), 1, "streams: {streams:?}");
    // Nothing the killed daemons started (mariabackup, a clone's temporary mysqld) runs on:
    // only their children mention the temporary directory, and the running daemon is past
    // its snapshot.
    let temporary = dir.path().join("tmp");
    let orphans = processes_mentioning(&temporary.display().to_string());
    assert!(
        orphans.is_empty(),
        "processes of killed daemons still run: {orphans:#?}"
    );
    // Nor is their scratch space left: the next snapshot cleared it, and its own is gone.
    let leftovers: Vec<String> = std::fs::read_dir(&temporary)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("myhoard-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "snapshot scratch directories left in {}: {leftovers:?}",
        temporary.display()
    );
}

/// How many `CLONE` statements a MySQL server runs.
const RUNNING_CLONES: &str =
    "SELECT COUNT(*) FROM performance_schema.processlist WHERE INFO LIKE 'CLONE LOCAL%'";

/// What the daemon logs once the server's CLONE is done.
const CLONE_COPIED: &str = "starting a temporary server on the cloned data";

/// What the daemon logs when it starts a snapshot.
const SNAPSHOT_STARTED: &str = "taking the snapshot of stream";

/// Whether `log` says a snapshot was stored.
fn snapshot_stored(log: &str) -> bool {
    log.lines()
        .any(|line| line.contains("snapshot of stream ") && line.contains(" stored: "))
}

/// The command lines of the running processes that contain `text`.
fn processes_mentioning(text: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|command_line| command_line.contains(text))
        .collect()
}

#[test]
fn mariadb_kill9_during_snapshot_and_uploads_loses_nothing() {
    kill9_during_snapshot_and_uploads(Flavor::MariaDb);
}

#[test]
fn mysql_kill9_during_snapshot_and_uploads_loses_nothing() {
    kill9_during_snapshot_and_uploads(Flavor::MySql);
}

/// SeaweedFS stopped for 60 s in the middle of uploads: the daemon retries and catches up.
fn storage_outage_is_retried_and_caught_up(flavor: Flavor) {
    let Some(mut server) = seaweedfs::SeaweedFs::start() else {
        return;
    };
    let bucket = "outage";
    server.create_bucket(bucket);
    let keys = shared_key_pair();
    let site = json!({
        "compression": { "algorithm": "snappy" },
        "encryption_keys": { "public": keys.public_pem, "private": keys.private_pem },
        "object_storage": server.config(bucket),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((db, daemon)) = start_active(flavor, dir.path(), site, |config| {
        config["backup_settings"]["forced_binlog_rotation_interval"] = 2.into();
    }) else {
        return;
    };
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    let load = Load::run(&db, Until::Stopped, 31);
    std::thread::sleep(Duration::from_secs(3));
    server.kill();
    std::thread::sleep(Duration::from_secs(60));
    server.restart();
    std::thread::sleep(Duration::from_secs(5));
    let stats = load.stop();
    assert!(stats.transactions > 50, "{stats:?}");
    daemon.rotate_and_wait();
    // The backlog may take a few retries to drain after the outage.
    let executed = server_gtids(&db);
    wait_gapless_stream(&daemon, &backup, &executed);
    assert!(
        daemon.log_text().contains("retrying"),
        "the outage should have shown as retried uploads in the log"
    );
}

#[test]
fn mariadb_storage_outage_is_retried_and_caught_up() {
    storage_outage_is_retried_and_caught_up(Flavor::MariaDb);
}

#[test]
fn mysql_storage_outage_is_retried_and_caught_up() {
    storage_outage_is_retried_and_caught_up(Flavor::MySql);
}

/// Retention: with backup_count_max 2 (and min 1), the third completed backup makes the daemon
/// delete the oldest stream and all its objects; the two newest stay.
#[test]
fn retention_deletes_the_oldest_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let keys = shared_key_pair();
    let Some((db, daemon)) = start_active(
        Flavor::MariaDb,
        dir.path(),
        daemon::local_site(&storage, &keys, "snappy"),
        |config| {
            config["backup_settings"]["backup_count_max"] = 2.into();
            config["backup_settings"]["backup_count_min"] = 1.into();
        },
    ) else {
        return;
    };
    let config_path = daemon.dir().join("myhoard.json");
    let stream_ids = |objects: &[Value]| -> std::collections::BTreeSet<String> {
        objects
            .iter()
            .filter_map(|o| o["key"].as_str())
            .filter_map(|k| k.split('/').nth(1).map(str::to_owned))
            .collect()
    };
    let mut created = Vec::new();
    for round in 0..3 {
        let backup = daemon.wait_for("a new completed backup", Duration::from_secs(300), |d| {
            d.backups().into_iter().find(|b| {
                b["completed_at"].is_number()
                    && !created.contains(&b["stream_id"].as_str().unwrap_or_default().to_owned())
            })
        });
        created.push(backup["stream_id"].as_str().unwrap_or_default().to_owned());
        db.sql(&format!("CREATE DATABASE IF NOT EXISTS r{round}"));
        db.flush_binary_logs();
        if round < 2 {
            let (status, body) = daemon.post("/backup", json!({"backup_type": "basebackup"}));
            assert_eq!(status, 200, "{body}");
        }
    }
    // The oldest is closed once its successor completed, then deleted by retention.
    let oldest = created[0].clone();
    daemon.wait_for(
        "the oldest backup to be deleted",
        Duration::from_secs(120),
        |_| (!stream_ids(&stored_objects(&config_path)).contains(&oldest)).then_some(()),
    );
    let remaining = stream_ids(&stored_objects(&config_path));
    assert!(
        remaining.contains(&created[1]) && remaining.contains(&created[2]),
        "{remaining:?}"
    );
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    // The cached list drops it as soon as the deletion is reported back.
    daemon.wait_for(
        "GET /backup to drop the deleted backup",
        Duration::from_secs(30),
        |d| {
            (!d.backups()
                .iter()
                .any(|b| b["stream_id"] == oldest.as_str()))
            .then_some(())
        },
    );
}

/// `PATCH /backup/{id}` marks a backup broken and back, `PUT /backup/{id}/preserve` records a
/// preservation; both show in storage and in `GET /backup`.
/// Sets `field` of a marker object's metadata (`completed.json`, `closed.json`) in local
/// storage, as if the marker had been written at `epoch`.
fn backdate_marker(storage: &Path, stream_id: &str, name: &str, field: &str, epoch: f64) {
    let path = storage
        .join(layout::stream_prefix("default", stream_id))
        .join(format!("{name}.metadata"));
    let text = std::fs::read_to_string(&path).expect("reading the marker's metadata");
    let mut metadata: Value = serde_json::from_str(&text).expect("metadata JSON");
    let inner = metadata[layout::METADATA_KEY]
        .as_str()
        .expect("the marker's json metadata")
        .to_owned();
    let mut marker: Value = serde_json::from_str(&inner).expect("marker JSON");
    marker[field] = epoch.into();
    metadata[layout::METADATA_KEY] = marker.to_string().into();
    std::fs::write(&path, metadata.to_string()).expect("writing the marker's metadata");
}

/// Retention by age: with `backup_age_days_max` 1, a backup closed three days ago is deleted
/// with all its objects, while the newer ones stay; before it was old, it stayed too.
#[test]
fn retention_deletes_backups_older_than_the_age_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let keys = shared_key_pair();
    let Some((_db, mut daemon)) = start_active(
        Flavor::MariaDb,
        dir.path(),
        daemon::local_site(&storage, &keys, "snappy"),
        |config| {
            config["backup_settings"]["backup_age_days_max"] = 1.into();
            config["backup_settings"]["backup_count_min"] = 1.into();
            config["backup_settings"]["backup_count_max"] = 10.into();
        },
    ) else {
        return;
    };
    let config_path = daemon.dir().join("myhoard.json");
    let first = daemon.wait_completed_backup(Duration::from_secs(300));
    let first_id = first["stream_id"].as_str().unwrap_or_default().to_owned();
    let (status, body) = daemon.post("/backup", json!({"backup_type": "basebackup"}));
    assert_eq!(status, 200, "{body}");
    let second_id = daemon.wait_for(
        "the second backup, and the first closed",
        Duration::from_secs(300),
        |d| {
            let backups = d.backups();
            let closed = backups
                .iter()
                .any(|b| b["stream_id"] == first_id.as_str() && b["closed_at"].is_number());
            backups
                .iter()
                .find(|b| b["stream_id"] != first_id.as_str() && b["completed_at"].is_number())
                .filter(|_| closed)
                .and_then(|b| b["stream_id"].as_str().map(str::to_owned))
        },
    );
    let stored_streams = || -> std::collections::BTreeSet<String> {
        stored_objects(&config_path)
            .iter()
            .filter_map(|o| o["key"].as_str())
            .filter_map(|k| k.split('/').nth(1).map(str::to_owned))
            .collect()
    };
    // Young, both stay (retention runs after every listing, which the closing forced).
    std::thread::sleep(Duration::from_secs(5));
    let before = stored_streams();
    assert!(
        before.contains(&first_id) && before.contains(&second_id),
        "{before:?}"
    );
    assert!(daemon.stop(), "the daemon should stop cleanly");
    let three_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
        - 3.0 * 86_400.0;
    backdate_marker(
        &storage,
        &first_id,
        layout::COMPLETED_NAME,
        "completed_at",
        three_days_ago,
    );
    backdate_marker(
        &storage,
        &first_id,
        layout::CLOSED_NAME,
        "closed_at",
        three_days_ago,
    );
    // The daemon keeps its backup list cached across restarts (re-listed every 20 minutes in
    // active mode, as MyHoard does) and re-lists after a backup completes: a third backup
    // makes it see the first one's age.
    daemon.start_again();
    let (status, body) = daemon.post("/backup", json!({"backup_type": "basebackup"}));
    assert_eq!(status, 200, "{body}");
    daemon.wait_for(
        "the old backup to be deleted",
        Duration::from_secs(300),
        |_| (!stored_streams().contains(&first_id)).then_some(()),
    );
    let after = stored_streams();
    assert!(
        after.contains(&second_id) && after.len() == 2,
        "the young backups stay: {after:?}"
    );
}

#[test]
fn mark_broken_and_preserve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let keys = shared_key_pair();
    let Some((_db, daemon)) = start_active(
        Flavor::MariaDb,
        dir.path(),
        daemon::local_site(&storage, &keys, "snappy"),
        |_| {},
    ) else {
        return;
    };
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    let stream_id = backup["stream_id"].as_str().unwrap_or_default().to_owned();
    let listed = |field: &'static str| {
        let stream_id = stream_id.clone();
        move |d: &Daemon| {
            d.backups()
                .into_iter()
                .find(|b| b["stream_id"] == stream_id.as_str())
                .map(|b| b[field].clone())
        }
    };
    let (status, body) = daemon.send(
        "PATCH",
        &format!("/backup/{stream_id}"),
        r#"{"broken": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        storage
            .join("default")
            .join(&stream_id)
            .join("broken.json")
            .exists()
    );
    let get_broken = listed("broken_at");
    daemon.wait_for("broken_at in the list", Duration::from_secs(30), |d| {
        get_broken(d).filter(Value::is_number)
    });
    let (status, body) = daemon.send(
        "PATCH",
        &format!("/backup/{stream_id}"),
        r#"{"broken": false}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !storage
            .join("default")
            .join(&stream_id)
            .join("broken.json")
            .exists()
    );
    daemon.wait_for("broken_at cleared", Duration::from_secs(30), |d| {
        get_broken(d).filter(Value::is_null)
    });
    let (status, body) = daemon.put(
        &format!("/backup/{stream_id}/preserve"),
        json!({"preserve_until": "2099-01-01T00:00:00+00:00"}),
    );
    assert_eq!(status, 200, "{body}");
    let get_preserve = listed("preserve_until");
    let preserve_until =
        daemon.wait_for("preserve_until in the list", Duration::from_secs(30), |d| {
            get_preserve(d).filter(Value::is_string)
        });
    assert!(
        preserve_until
            .as_str()
            .unwrap_or_default()
            .starts_with("2099-01-01T00:00:00")
    );
    let (status, body) = daemon.send("PATCH", "/backup/no-such-stream", r#"{"broken": true}"#);
    assert_eq!(status, 400, "{body}");
}

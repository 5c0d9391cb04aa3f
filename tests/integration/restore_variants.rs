//! Restores beyond the plain targets:
//!
//! - A restore to the latest transaction follows what the source stores while it runs: when
//!   the source completes a newer backup (and closes the restored one's stream) in the middle
//!   of the restore, the restore goes on with the newer backup's binlogs, and ends with the
//!   source's data as of its last upload, not as of the restored stream's end.
//! - A snapshot that fails its integrity check makes the restore fall back to the backup
//!   before it, whose binlogs lead into the asked one's: the restore still reaches the latest
//!   transaction.
//! - `rebuild_tables` rewrites every InnoDB table of the snapshot before the replay.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backup_daemon::wait_gapless_stream;
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use myhoard::backup_stream::layout;

use crate::restore_daemon::{
    assert_same_tables, checkpoint, db_options, load_phase, restore_and_wait, restore_target, site,
};

const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

fn executed_gtids(db: &DbServer) -> myhoard::gtid::GtidSet {
    let version: String = db.query_value("SELECT VERSION()");
    let flavor = myhoard::db::Flavor::parse(&version).expect("flavor");
    myhoard::db::client::parse_server_gtids(flavor, &db.gtid_executed())
        .expect("gtids")
        .to_gtid_set()
}

fn stream_id(backup: &Value) -> String {
    backup["stream_id"].as_str().unwrap_or_default().to_owned()
}

/// A source server under a short load, backed up by an active daemon, with more load after
/// the backup and everything uploaded.
struct Source {
    db: DbServer,
    daemon: Daemon,
    backup: Value,
    _dir: tempfile::TempDir,
}

fn backed_up_source(flavor: Flavor, site: &Value) -> Option<Source> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = DbServer::start(flavor, db_options(flavor, 1))?;
    load_phase(&db, 4, 1);
    let mut config = daemon::config_for(&db, dir.path(), site.clone(), Daemon::pick_port());
    config["backup_settings"]["forced_binlog_rotation_interval"] = 3.into();
    let daemon = Daemon::start(dir.path(), &config);
    let (status, body) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    load_phase(&db, 3, 2);
    daemon.rotate_and_wait();
    Some(Source {
        db,
        daemon,
        backup,
        _dir: dir,
    })
}

/// Asks the source for a new backup and waits until it is complete and the first stream
/// closed.
fn complete_second_backup(source: &Source, first_id: &str) -> Value {
    let (status, body) = source
        .daemon
        .post("/backup", json!({"backup_type": "basebackup"}));
    assert_eq!(status, 200, "{body}");
    source.daemon.wait_for(
        "the second backup, and the first stream closed",
        Duration::from_secs(300),
        |d| {
            let backups = d.backups();
            let closed = backups
                .iter()
                .any(|b| stream_id(b) == first_id && b["closed_at"].is_number());
            let second = backups
                .into_iter()
                .find(|b| stream_id(b) != first_id && b["completed_at"].is_number());
            second.filter(|_| closed)
        },
    )
}

fn follows_a_backup_completed_during_the_restore(flavor: Flavor) {
    let Some(site) = site("follow") else { return };
    let Some(source) = backed_up_source(flavor, &site) else {
        return;
    };
    let first_id = stream_id(&source.backup);

    // The restore starts from the newest backup, then its daemon is frozen while the source
    // completes the next backup, closes the first stream and commits more.
    let mut target = restore_target(flavor, &site, 2, |_| {});
    let (status, body) = target.daemon.put(
        "/status",
        json!({"mode": "restore", "site": "default", "stream_id": first_id}),
    );
    assert_eq!(status, 200, "{body}");
    target.daemon.wait_for(
        "the snapshot restore to start",
        Duration::from_secs(120),
        |d| {
            let (_, status) = d.get("/status/restore");
            let phase = status["phase"].as_str().unwrap_or_default().to_owned();
            assert!(!phase.starts_with("failed"), "{status}");
            (phase != "getting_backup_info" && phase != "initiating_binlog_downloads").then_some(())
        },
    );
    daemon::send_signal(target.daemon.pid(), SIGSTOP);

    let second = complete_second_backup(&source, &first_id);
    load_phase(&source.db, 3, 3);
    let latest = checkpoint(&source.db);
    source.daemon.rotate_and_wait();
    wait_gapless_stream(&source.daemon, &second, &executed_gtids(&source.db));

    daemon::send_signal(target.daemon.pid(), SIGCONT);
    // Observe mode is where a completed restore leaves the daemon.
    target.daemon.wait_mode("observe", Duration::from_secs(600));
    assert!(
        target.daemon.log_text().contains(&format!(
            "backup {} completed after {first_id}",
            stream_id(&second)
        )),
        "the restore should have followed the newer backup\n{}",
        target.daemon.log_tail()
    );
    assert_same_tables(
        &mut target.db,
        &latest.checksums,
        "latest, across two backups",
    );
    drop(target);
    drop(source);
}

#[test]
fn mariadb_follows_a_backup_completed_during_the_restore() {
    follows_a_backup_completed_during_the_restore(Flavor::MariaDb);
}

#[test]
fn mysql_follows_a_backup_completed_during_the_restore() {
    follows_a_backup_completed_during_the_restore(Flavor::MySql);
}

/// InnoDB tablespace ids of the load's tables: a rebuilt table gets a new one.
fn tablespace_ids(db: &DbServer) -> BTreeMap<String, u64> {
    let table = match db.flavor() {
        Flavor::MariaDb => "INNODB_SYS_TABLES",
        Flavor::MySql => "INNODB_TABLES",
    };
    db.query::<(String, u64)>(&format!(
        "SELECT NAME, SPACE FROM information_schema.{table} WHERE NAME LIKE '{}/%'",
        crate::harness::load::LOAD_DATABASE
    ))
    .into_iter()
    .collect()
}

fn rebuilds_every_table_before_the_replay(flavor: Flavor) {
    let Some(site) = site("rebuild") else { return };
    let Some(source) = backed_up_source(flavor, &site) else {
        return;
    };
    let latest = checkpoint(&source.db);
    source.daemon.rotate_and_wait();
    wait_gapless_stream(&source.daemon, &source.backup, &executed_gtids(&source.db));
    let source_spaces = tablespace_ids(&source.db);
    assert!(!source_spaces.is_empty(), "the load made no tables");

    let mut target = restore_target(flavor, &site, 2, |_| {});
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": stream_id(&source.backup),
               "rebuild_tables": true}),
    );
    assert_same_tables(&mut target.db, &latest.checksums, "latest, tables rebuilt");
    let log = target.daemon.log_text();
    assert!(
        log.contains("restore phase RebuildingTables → RefreshingBinlogs"),
        "the restore should have gone through rebuilding_tables\n{}",
        target.daemon.log_tail()
    );
    // Tables the snapshot held were rewritten: new tablespaces. (Tables the replay created
    // afterwards have new ones anyway.)
    let restored_spaces = tablespace_ids(&target.db);
    let kept: Vec<&String> = source_spaces
        .iter()
        .filter(|(name, space)| restored_spaces.get(*name) == Some(*space))
        .map(|(name, _)| name)
        .collect();
    assert!(kept.is_empty(), "tables not rebuilt: {kept:?}");
    // The rewrites were not binlogged: the restored server holds exactly the source's
    // transactions, none of its own.
    assert_eq!(
        executed_gtids(&target.db),
        executed_gtids(&source.db),
        "GTIDs after the rebuild"
    );
    drop(target);
    drop(source);
}

#[test]
fn mariadb_rebuilds_every_table_before_the_replay() {
    rebuilds_every_table_before_the_replay(Flavor::MariaDb);
}

#[test]
fn mysql_rebuilds_every_table_before_the_replay() {
    rebuilds_every_table_before_the_replay(Flavor::MySql);
}

fn falls_back_to_the_earlier_backup_when_the_snapshot_is_corrupt(flavor: Flavor) {
    let storage_dir = tempfile::tempdir().expect("tempdir");
    let site = daemon::local_site(
        storage_dir.path(),
        &crate::harness::myhoard::shared_key_pair(),
        "zstd",
    );
    let Some(source) = backed_up_source(flavor, &site) else {
        return;
    };
    let first_id = stream_id(&source.backup);
    let second = complete_second_backup(&source, &first_id);
    let second_id = stream_id(&second);
    load_phase(&source.db, 3, 3);
    let latest = checkpoint(&source.db);
    source.daemon.rotate_and_wait();
    wait_gapless_stream(&source.daemon, &second, &executed_gtids(&source.db));

    // One flipped byte in the newest snapshot's first object.
    let snapshot = storage_dir.path().join(layout::basebackup_split_key(
        &layout::stream_prefix("default", &second_id),
        1,
    ));
    let mut bytes = std::fs::read(&snapshot).expect("reading the snapshot object");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&snapshot, bytes).expect("writing the snapshot object");

    // At first the earlier backup is out of sight, so the corrupt snapshot ends the restore.
    let first_dir = storage_dir
        .path()
        .join(layout::stream_prefix("default", &first_id));
    let hidden_dir = storage_dir.path().join("hidden-first-backup");
    std::fs::rename(&first_dir, &hidden_dir).expect("hiding the first backup");
    let mut target = restore_target(flavor, &site, 2, |config| {
        config["restore_auto_mark_backups_broken"] = true.into();
    });
    let request = json!({"mode": "restore", "site": "default", "stream_id": second_id});
    let (status, body) = target.daemon.put("/status", request);
    assert_eq!(status, 200, "{body}");
    let state_path = target
        .daemon
        .dir()
        .join("state")
        .join("restore_coordinator_state.json");
    let saved_state =
        || -> Option<Value> { serde_json::from_slice(&std::fs::read(&state_path).ok()?).ok() };
    // The failure is logged before the end of the search is saved: wait for both.
    target
        .daemon
        .wait_for("the restore to fail", Duration::from_secs(300), |d| {
            let (code, status) = d.get("/status/restore");
            let failed = code == 200 && status["phase"] == "failed_basebackup";
            if !(failed && d.log_text().contains("the restore fails")) {
                return None;
            }
            saved_state()
                .is_some_and(|state| state["no_earlier_backup"] == true)
                .then_some(())
        });

    // A daemon killed after saving the failure and before looking for an earlier backup
    // leaves the search undone in its state; restarted, it looks, and the first backup (back
    // in sight) is found.
    target.daemon.kill9();
    std::fs::rename(&hidden_dir, &first_dir).expect("bringing the first backup back");
    let mut state = saved_state().expect("the restore state");
    assert_eq!(state["phase"], "failed_basebackup", "{state}");
    assert_eq!(state["no_earlier_backup"], true, "{state}");
    state["no_earlier_backup"] = false.into();
    std::fs::write(&state_path, state.to_string()).expect("writing the restore state");
    target.daemon.start_again();
    target.daemon.wait_mode("observe", Duration::from_secs(600));
    let log = target.daemon.log_text();
    assert!(
        log.contains(&format!("falling back to the earlier backup {first_id}")),
        "the restore should have fallen back to {first_id}\n{}",
        target.daemon.log_tail()
    );
    assert_same_tables(
        &mut target.db,
        &latest.checksums,
        "latest, from the earlier snapshot",
    );
    // The corrupt backup is marked broken for everyone else.
    let broken = storage_dir
        .path()
        .join(layout::stream_prefix("default", &second_id))
        .join(layout::BROKEN_NAME);
    assert!(broken.is_file(), "{} missing", broken.display());
    drop(target);
    drop(source);
}

#[test]
fn mariadb_falls_back_to_the_earlier_backup_when_the_snapshot_is_corrupt() {
    falls_back_to_the_earlier_backup_when_the_snapshot_is_corrupt(Flavor::MariaDb);
}

#[test]
fn mysql_falls_back_to_the_earlier_backup_when_the_snapshot_is_corrupt() {
    falls_back_to_the_earlier_backup_when_the_snapshot_is_corrupt(Flavor::MySql);
}

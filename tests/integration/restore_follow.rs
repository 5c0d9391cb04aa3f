//! A restore to the latest transaction follows what the source stores while it runs: when the
//! source completes a newer backup (and closes the restored one's stream) in the middle of the
//! restore, the restore goes on with the newer backup's binlogs, and ends with the source's
//! data as of its last upload, not as of the restored stream's end.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backup_daemon::wait_gapless_stream;
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use crate::restore_daemon::{
    assert_same_tables, checkpoint, db_options, load_phase, restore_target, site,
};

const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

fn executed_gtids(db: &DbServer) -> myhoard::gtid::GtidSet {
    let flavor = myhoard::db::Flavor::parse(db.version()).expect("flavor");
    myhoard::db::client::parse_server_gtids(flavor, &db.gtid_executed())
        .expect("gtids")
        .to_gtid_set()
}

fn stream_id(backup: &Value) -> String {
    backup["stream_id"].as_str().unwrap_or_default().to_owned()
}

fn follows_a_backup_completed_during_the_restore(flavor: Flavor) {
    let Some(site) = site("follow") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(source_db) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    load_phase(&source_db, 4, 1);
    let mut config = daemon::config_for(&source_db, dir.path(), site.clone(), Daemon::pick_port());
    config["backup_settings"]["forced_binlog_rotation_interval"] = 3.into();
    let source = Daemon::start(dir.path(), &config);
    let (status, body) = source.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    let first = source.wait_completed_backup(Duration::from_secs(300));
    let first_id = stream_id(&first);
    load_phase(&source_db, 3, 2);
    source.rotate_and_wait();

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

    let (status, body) = source.post("/backup", json!({"backup_type": "basebackup"}));
    assert_eq!(status, 200, "{body}");
    let second = source.wait_for(
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
    );
    load_phase(&source_db, 3, 3);
    let latest = checkpoint(&source_db);
    source.rotate_and_wait();
    wait_gapless_stream(&source, &second, &executed_gtids(&source_db));

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
    drop(source_db);
}

#[test]
fn mariadb_follows_a_backup_completed_during_the_restore() {
    follows_a_backup_completed_during_the_restore(Flavor::MariaDb);
}

#[test]
fn mysql_follows_a_backup_completed_during_the_restore() {
    follows_a_backup_completed_during_the_restore(Flavor::MySql);
}

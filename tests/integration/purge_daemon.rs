//! Binlog purge in the real daemon (active mode, local storage) against a real MariaDB/MySQL
//! server with a real replica: a binlog goes only once it is uploaded and every server of the
//! replication state has executed its transactions, and the newest uploaded binlog stays.
//! Purge rounds run every second, at most two files each.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::backup_daemon::{stored_objects, stream_binlogs};
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbOptions, DbServer, Flavor};
use crate::harness::myhoard::shared_key_pair;
use crate::restore_daemon::db_options;
use myhoard::backup_stream::layout::BasebackupInfo;
use myhoard::gtid::GtidSet;

/// The name the replica has in the replication state.
const REPLICA: &str = "replica";

fn executed(db: &DbServer) -> GtidSet {
    let flavor = myhoard::db::Flavor::parse(db.version()).expect("flavor");
    myhoard::db::client::parse_server_gtids(flavor, &db.gtid_executed())
        .expect("parsing executed GTIDs")
        .to_gtid_set()
}

/// `PUT /replication_state` naming the replica with what it has executed now.
fn put_replication_state(daemon: &Daemon, replica: &DbServer) -> GtidSet {
    let executed = executed(replica);
    let (status, body) = daemon.put("/replication_state", json!({ REPLICA: executed }));
    assert_eq!(status, 200, "PUT /replication_state: {body}");
    executed
}

/// The source's binlog files (base names), oldest first; the last is the active one.
fn local_binlogs(db: &DbServer) -> Vec<String> {
    db.binlog_files()
        .iter()
        .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
        .collect()
}

fn binlog_number(name: &str) -> u64 {
    name.rsplit('.')
        .next()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no binlog number in {name:?}"))
}

/// Writes one transaction; returns the name of the binlog it went to (the active one).
fn insert(db: &DbServer, note: &str) -> String {
    let name = local_binlogs(db).pop().expect("an active binlog");
    db.sql(&format!(
        "INSERT INTO purge_test.t (note) VALUES ('{note}')"
    ));
    name
}

/// Writes one transaction into each of `n` binlogs, closing each; returns their names.
fn write_binlogs(db: &DbServer, n: usize, label: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = insert(db, &format!("{label} {i}"));
            db.flush_binary_logs();
            name
        })
        .collect()
}

fn set_replication(replica: &DbServer, running: bool) {
    let statement = match (replica.flavor(), running) {
        (Flavor::MySql, true) => "START REPLICA",
        (Flavor::MySql, false) => "STOP REPLICA",
        (Flavor::MariaDb, true) => "START SLAVE",
        (Flavor::MariaDb, false) => "STOP SLAVE",
    };
    replica.sql(statement);
}

/// Checks for a few purge rounds (one a second) that every binlog of `kept` stays.
fn assert_kept(db: &DbServer, daemon: &Daemon, kept: &[String], why: &str) {
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        let present = local_binlogs(db);
        for name in kept {
            assert!(
                present.contains(name),
                "{name} was purged although {why}; binlogs now {present:?}\n{}",
                daemon.log_tail()
            );
        }
    }
}

fn purge_follows_uploads_and_replication(flavor: Flavor) {
    let Some(source) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    let Some(replica) = DbServer::start(flavor, DbOptions::server_id(2)) else {
        return;
    };
    replica.replicate_from(&source);
    source.sql(
        "CREATE DATABASE purge_test; \
         CREATE TABLE purge_test.t (id INT PRIMARY KEY AUTO_INCREMENT, note VARCHAR(64))",
    );
    source.flush_binary_logs();
    replica.wait_until_caught_up(&source, Duration::from_secs(60));

    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let mut config = daemon::config_for(
        &source,
        dir.path(),
        daemon::local_site(&storage, &shared_key_pair(), "snappy"),
        Daemon::pick_port(),
    );
    // Two files a round at most, so that capped rounds follow each other at once.
    config["binlog_purge_settings"] = json!({
        "enabled": true,
        "max_bytes_per_cycle": null,
        "max_files_per_cycle": 2,
        "min_binlog_age_before_purge": 1,
        "purge_interval": 1,
        "purge_when_observe_no_streams": true,
    });
    let daemon = Daemon::start(dir.path(), &config);
    // Before anything can be purged: the replica still reads the source's binlogs.
    put_replication_state(&daemon, &replica);
    let (status, body) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    daemon.wait_mode("active", Duration::from_secs(60));
    let backup = daemon.wait_completed_backup(Duration::from_secs(120));
    let stream_id = backup["stream_id"].as_str().expect("stream_id").to_owned();
    let info: BasebackupInfo =
        serde_json::from_value(backup["basebackup_info"].clone()).expect("basebackup_info");
    let snapshot_binlog = info.binlog_name.clone().expect("the snapshot's binlog");

    // (a) The replica has executed the "old" binlogs' transactions but not the "new" ones'.
    let old = write_binlogs(&source, 3, "old");
    replica.wait_until_caught_up(&source, Duration::from_secs(60));
    set_replication(&replica, false);
    let replicated = put_replication_state(&daemon, &replica);
    let mut new = write_binlogs(&source, 2, "new");
    new.push(insert(&source, "new 2"));
    // The daemon closes the last one and waits until it is uploaded.
    daemon.rotate_and_wait();
    assert!(
        !replicated.contains(&executed(&source)),
        "the stopped replica has every transaction"
    );
    daemon.wait_for(
        "the replicated binlogs to be purged",
        Duration::from_secs(60),
        |_| {
            let present = local_binlogs(&source);
            (!old.iter().any(|name| present.contains(name))).then_some(())
        },
    );
    assert_kept(
        &source,
        &daemon,
        &new,
        "the replica has not executed its transactions",
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("not yet replicated to server \"{REPLICA}\"")),
        "the hold is logged:\n{}",
        daemon.log_tail()
    );
    assert!(
        log.contains("purged binlogs up to"),
        "{}",
        daemon.log_tail()
    );

    // (b) Caught up: everything uploaded goes but the newest uploaded binlog (strictly below
    // the last one uploaded, as MyHoard has it).
    set_replication(&replica, true);
    replica.wait_until_caught_up(&source, Duration::from_secs(60));
    put_replication_state(&daemon, &replica);
    daemon.wait_for(
        "the newly replicated binlogs to be purged",
        Duration::from_secs(60),
        |_| {
            let present = local_binlogs(&source);
            (!new[..2].iter().any(|name| present.contains(name))).then_some(())
        },
    );
    let config_path = daemon.dir().join("myhoard.json");
    let newest_upload = || {
        stream_binlogs(&stored_objects(&config_path), &stream_id)
            .into_values()
            .last()
            .expect("uploaded binlogs")
    };
    let (newest_key, newest) = newest_upload();
    let newest_uploaded = newest.file_name;
    assert_eq!(newest_uploaded, new[2], "the newest uploaded binlog");
    assert_kept(
        &source,
        &daemon,
        std::slice::from_ref(&newest_uploaded),
        "it is the newest uploaded binlog",
    );
    let present = local_binlogs(&source);
    assert_eq!(
        present.first(),
        Some(&newest_uploaded),
        "everything older went: {present:?}"
    );

    // (c) Binlogs not uploaded stay, though every server has executed their transactions:
    // uploads fail while a file stands where the stream's binlog objects go.
    let (binlog_dir, _) = newest_key.rsplit_once('/').expect("a key in a directory");
    let binlog_dir = storage.join(binlog_dir);
    let aside = binlog_dir.with_extension("aside");
    std::fs::rename(&binlog_dir, &aside).expect("moving the binlog objects aside");
    std::fs::write(&binlog_dir, "not a directory").expect("blocking uploads");
    let unuploaded = write_binlogs(&source, 2, "unuploaded");
    replica.wait_until_caught_up(&source, Duration::from_secs(60));
    put_replication_state(&daemon, &replica);
    let failed = format!("uploading {} failed", unuploaded[0]);
    daemon.wait_for("an upload to fail", Duration::from_secs(60), |daemon| {
        daemon.log_text().contains(&failed).then_some(())
    });
    let mut kept = vec![newest_uploaded.clone()];
    kept.extend(unuploaded.iter().cloned());
    assert_kept(
        &source,
        &daemon,
        &kept,
        "it is not uploaded, or is the newest uploaded one",
    );
    std::fs::remove_file(&binlog_dir).expect("unblocking uploads");
    std::fs::rename(&aside, &binlog_dir).expect("moving the binlog objects back");
    daemon.wait_for(
        "the binlogs uploaded late to be purged",
        Duration::from_secs(60),
        |_| {
            let present = local_binlogs(&source);
            (!present.contains(&newest_uploaded) && !present.contains(&unuploaded[0])).then_some(())
        },
    );
    let (_, newest) = newest_upload();
    assert_eq!(
        newest.file_name, unuploaded[1],
        "the newest uploaded binlog"
    );
    let present = local_binlogs(&source);
    assert_eq!(present.first(), Some(&unuploaded[1]), "{present:?}");

    // Every binlog purged from the snapshot's on was uploaded first. (Older ones predate the
    // backup, which does not need them.)
    let objects = stored_objects(&config_path);
    let uploaded: BTreeSet<String> = stream_binlogs(&objects, &stream_id)
        .into_values()
        .map(|(_, binlog)| binlog.file_name)
        .collect();
    let purged = binlog_number(&snapshot_binlog)..binlog_number(&unuploaded[1]);
    assert!(purged.clone().count() >= 8, "purged {purged:?}");
    let (prefix, _) = snapshot_binlog.rsplit_once('.').expect("a numbered binlog");
    for number in purged {
        let name = format!("{prefix}.{number:06}");
        assert!(
            uploaded.contains(&name),
            "{name} was purged but never uploaded; uploaded: {uploaded:?}"
        );
    }
    assert!(
        !daemon.log_text().contains("purging binlogs failed"),
        "{}",
        daemon.log_tail()
    );
}

#[test]
fn mariadb_purge_follows_uploads_and_replication() {
    purge_follows_uploads_and_replication(Flavor::MariaDb);
}

#[test]
fn mysql_purge_follows_uploads_and_replication() {
    purge_follows_uploads_and_replication(Flavor::MySql);
}

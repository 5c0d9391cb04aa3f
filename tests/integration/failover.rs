//! Failover through the real daemons: a master and two standbys replicating from it, each with
//! its own myhoard on one SeaweedFS bucket. The master is cut off from its standbys (left
//! running, writing and uploading), a standby is promoted, takes the backup stream over and
//! goes on backing it up; the other standby re-points to it. Restores to times before and at
//! the failover and to the latest transaction then give exactly the surviving timeline: what
//! the deposed master wrote after the promotion is in storage but never restored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backup_daemon::stored_objects;
use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use crate::restore_daemon::{
    assert_same_tables, checkpoint, db_options, load_phase, restore_and_wait, restore_target, site,
};
use myhoard::backup_stream::layout::{BinlogInfo, ClosedMarker, Promotion};

const CAUGHT_UP: Duration = Duration::from_secs(120);

fn stop_replication(db: &DbServer) {
    db.sql(match db.flavor() {
        Flavor::MariaDb => "STOP SLAVE",
        Flavor::MySql => "STOP REPLICA",
    });
}

fn metadata<T: serde::de::DeserializeOwned>(object: &Value) -> Option<T> {
    serde_json::from_str(object["metadata"]["json"].as_str()?).ok()
}

/// A daemon for `db` in `mode`, on `site`.
fn daemon_for(db: &DbServer, dir: &std::path::Path, site: &Value, mode: &str) -> Daemon {
    daemon_with(db, dir, site, mode, |_| {})
}

fn daemon_with(
    db: &DbServer,
    dir: &std::path::Path,
    site: &Value,
    mode: &str,
    tweak: impl FnOnce(&mut Value),
) -> Daemon {
    let mut config = daemon::config_for(db, dir, site.clone(), Daemon::pick_port());
    config["backup_settings"]["forced_binlog_rotation_interval"] = 2.into();
    tweak(&mut config);
    let daemon = Daemon::start(dir, &config);
    let (status, body) = daemon.put("/status", json!({"mode": mode}));
    assert_eq!(status, 200, "{body}");
    daemon
}

fn survives_a_failover(flavor: Flavor) {
    let Some(site) = site("failover") else {
        return;
    };
    let Some(master) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    let standby = DbServer::start(flavor, db_options(flavor, 2)).expect("a standby");
    let other_standby = DbServer::start(flavor, db_options(flavor, 3)).expect("a standby");
    standby.replicate_from(&master);
    other_standby.replicate_from(&master);
    load_phase(&master, 3, 1);

    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let master_daemon = daemon_for(&master, dirs[0].path(), &site, "active");
    let backup = master_daemon.wait_completed_backup(Duration::from_secs(300));
    let stream_id = backup["stream_id"]
        .as_str()
        .expect("a stream id")
        .to_owned();
    // Promotion catches up in batches within restore_max_binlog_bytes: one binlog each here.
    let standby_daemon = daemon_with(&standby, dirs[1].path(), &site, "observe", |config| {
        config["restore_max_binlog_bytes"] = 1.into();
    });
    // The other standby purges its binlogs once the backup stores their transactions.
    let other_daemon = daemon_with(&other_standby, dirs[2].path(), &site, "observe", |config| {
        config["binlog_purge_settings"]["enabled"] = true.into();
        config["binlog_purge_settings"]["min_binlog_age_before_purge"] = 1.into();
        config["binlog_purge_settings"]["purge_interval"] = 1.into();
    });

    load_phase(&master, 3, 2);
    let before = checkpoint(&master);
    standby.wait_until_caught_up(&master, CAUGHT_UP);

    // Observe mode purges a standby's closed binlog once the backup stores every transaction
    // in it.
    other_standby.wait_until_caught_up(&master, CAUGHT_UP);
    other_standby.flush_binary_logs();
    let closed = other_standby.binlog_files()[0].clone();
    master_daemon.rotate_and_wait();
    // Within the observer's 10 s round, a purge round and a listing; slack for a busy machine.
    other_daemon.wait_for(
        "the standby's binlog purged",
        Duration::from_secs(180),
        |_| (!closed.exists()).then_some(()),
    );

    // A standby still replicating, or open for writes, is not promoted.
    let refused = |what: &str| {
        let (status, body) = standby_daemon.put("/status", json!({"mode": "active"}));
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
        assert_eq!(standby_daemon.mode(), "observe", "{what}");
    };
    standby.sql("SET GLOBAL read_only = ON");
    refused("replicating");
    // The standby falls behind: what follows reaches only the master, its backup and the
    // other standby.
    stop_replication(&standby);
    standby.sql("SET GLOBAL read_only = OFF");
    refused("read_only off");
    standby.sql("SET GLOBAL read_only = ON");
    // At least two binlogs the standby lacks.
    for seed in [3, 7] {
        load_phase(&master, 2, seed);
        master_daemon.rotate_and_wait();
    }
    other_standby.wait_until_caught_up(&master, CAUGHT_UP);
    let at_failover = checkpoint(&master);
    assert_ne!(
        standby.checksum_all_tables(),
        at_failover.checksums,
        "the standby did not fall behind"
    );

    // The master is cut off; the lagging standby is promoted: it applies what the backup has
    // and it lacks, takes the stream over, and is then opened for writes.
    stop_replication(&other_standby);
    let (status, body) = standby_daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "promote", "{body}");
    standby_daemon.wait_mode("active", Duration::from_secs(180));
    assert_eq!(
        standby.checksum_all_tables(),
        at_failover.checksums,
        "the promoted standby lacks what the backup stored"
    );
    let n_fetched = standby_daemon
        .log_text()
        .matches("promotion: fetching stored binlog")
        .count();
    assert!(
        n_fetched >= 2,
        "{n_fetched} binlogs fetched, in batches of one"
    );
    standby.sql("SET GLOBAL read_only = OFF");

    // The deposed master goes on writing and uploading into the same stream.
    load_phase(&master, 3, 4);
    master_daemon.rotate_and_wait();

    // The other standby follows the new master, which takes writes and backs them up.
    other_standby.replicate_from(&standby);
    load_phase(&standby, 3, 5);
    standby_daemon.rotate_and_wait();
    other_standby.wait_until_caught_up(&standby, CAUGHT_UP);
    let after = checkpoint(&standby);
    standby_daemon.rotate_and_wait();
    drop(master_daemon);
    drop(other_daemon);

    // Storage: the new master's promotion record, its binlogs from there on, and the deposed
    // master's uploads at the same indexes, all side by side.
    let objects = stored_objects(&dirs[0].path().join("myhoard.json"));
    let promotion: Promotion = objects
        .iter()
        .find(|o| {
            o["key"]
                .as_str()
                .is_some_and(|k| k.ends_with(&format!("{stream_id}/promotions/2")))
        })
        .and_then(metadata)
        .expect("the new master's promotion record");
    assert!(promotion.start_index > 1, "{promotion:?}");
    let binlogs: Vec<BinlogInfo> = objects
        .iter()
        .filter(|o| {
            o["key"]
                .as_str()
                .is_some_and(|k| k.contains(&format!("{stream_id}/binlogs/")))
        })
        .filter_map(metadata)
        .collect();
    let index_of = |b: &BinlogInfo| b.remote_index.unwrap_or(0);
    assert!(
        binlogs
            .iter()
            .any(|b| b.server_id == 1 && index_of(b) >= promotion.start_index),
        "the deposed master uploaded nothing after the promotion: the fencing is untested"
    );
    assert!(
        binlogs
            .iter()
            .any(|b| b.server_id == 2 && index_of(b) == promotion.start_index),
        "the new master did not continue the stream at {}",
        promotion.start_index
    );
    assert!(
        binlogs
            .iter()
            .filter(|b| b.server_id == 2)
            .all(|b| index_of(b) >= promotion.start_index)
    );

    // Restores give the surviving timeline: before, at and after the failover.
    let cases = [
        ("latest", None, &after),
        ("before the failover", Some(before.time), &before),
        ("at the failover", Some(at_failover.time), &at_failover),
    ];
    for (n, (what, time, expected)) in cases.into_iter().enumerate() {
        let mut target = restore_target(flavor, &site, 11 + n as u32, |_| {});
        let mut request = json!({"mode": "restore", "site": "default", "stream_id": stream_id});
        if let Some(time) = time {
            request["target_time"] = time.into();
        }
        restore_and_wait(&target, request);
        assert_same_tables(&mut target.db, &expected.checksums, what);
    }
    drop(standby_daemon);
}

#[test]
fn mariadb_backup_chain_survives_a_failover() {
    survives_a_failover(Flavor::MariaDb);
}

#[test]
fn mysql_backup_chain_survives_a_failover() {
    survives_a_failover(Flavor::MySql);
}

/// A site on the shared bucket for `hint`, a master (server 1) and a standby (server 2)
/// replicating from it, after `load_seconds` of load on the master. `None` where the site or
/// the servers cannot be had (outside CI).
fn master_and_standby(
    flavor: Flavor,
    hint: &str,
    load_seconds: u64,
) -> Option<(Value, DbServer, DbServer)> {
    let site = site(hint)?;
    let master = DbServer::start(flavor, db_options(flavor, 1))?;
    let standby = DbServer::start(flavor, db_options(flavor, 2)).expect("a standby");
    standby.replicate_from(&master);
    load_phase(&master, load_seconds, 1);
    Some((site, master, standby))
}

/// Promotion while the master's backup is not resumable (its snapshot never finished: the
/// master's daemon died during it): the promoted standby starts a backup stream of its own,
/// which restores to the new master's data.
fn promotion_without_a_resumable_stream(flavor: Flavor) {
    let Some((site, master, standby)) = master_and_standby(flavor, "promote-new", 3) else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut master_daemon = daemon_for(&master, dirs[0].path(), &site, "active");
    master_daemon.wait_for("a snapshot in progress", Duration::from_secs(60), |d| {
        let (_, status) = d.get("/status");
        status["basebackups_in_progress"].is_array().then_some(())
    });
    master_daemon.kill9();
    let standby_daemon = daemon_for(&standby, dirs[1].path(), &site, "observe");
    standby.wait_until_caught_up(&master, CAUGHT_UP);
    stop_replication(&standby);
    standby.sql("SET GLOBAL read_only = ON");
    let (status, body) = standby_daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    standby_daemon.wait_mode("active", Duration::from_secs(120));
    standby.sql("SET GLOBAL read_only = OFF");
    let backup = standby_daemon.wait_completed_backup(Duration::from_secs(300));
    assert_eq!(
        backup["basebackup_info"]["uploaded_from"], 2,
        "the completed backup is not the new master's own: {backup}"
    );
    for other in standby_daemon.backups() {
        if other["stream_id"] != backup["stream_id"] {
            assert_eq!(other["resumable"], false, "{other}");
            assert!(other["completed_at"].is_null(), "{other}");
        }
    }
    load_phase(&standby, 3, 2);
    let latest = checkpoint(&standby);
    standby_daemon.rotate_and_wait();
    let mut target = restore_target(flavor, &site, 11, |_| {});
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": backup["stream_id"]}),
    );
    assert_same_tables(&mut target.db, &latest.checksums, "latest");
}

#[test]
fn mariadb_promotion_without_a_resumable_stream_starts_a_new_one() {
    promotion_without_a_resumable_stream(Flavor::MariaDb);
}

#[test]
fn mysql_promotion_without_a_resumable_stream_starts_a_new_one() {
    promotion_without_a_resumable_stream(Flavor::MySql);
}

/// Failback: the master (server 1, which started the backup stream) fails over to its
/// standby (server 2), rejoins as the new master's standby under a fresh daemon, and is then
/// promoted again. MyHoard's layout holds one `promotions/<server_id>` record per server, so
/// taking the stream back would have to move server 1's record from index 1, and the stream
/// would have no owner from index 1 on: unreadable for every reader. The re-promoted server
/// leaves the stream's records as they are and starts a backup of its own, and closes the old
/// stream once that backup is complete. Which records a promotion writes is storage logic, the
/// same for both flavours; MariaDB runs it.
#[test]
fn mariadb_failback_closes_the_stream_readable_and_starts_a_new_backup() {
    let flavor = Flavor::MariaDb;
    let Some((site, master, standby)) = master_and_standby(flavor, "failback", 2) else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut master_daemon = daemon_for(&master, dirs[0].path(), &site, "active");
    let backup = master_daemon.wait_completed_backup(Duration::from_secs(300));
    let stream_id = backup["stream_id"]
        .as_str()
        .expect("a stream id")
        .to_owned();
    let standby_daemon = daemon_for(&standby, dirs[1].path(), &site, "observe");
    load_phase(&master, 2, 2);
    master_daemon.rotate_and_wait();
    standby.wait_until_caught_up(&master, CAUGHT_UP);

    // Failover: the master stops (its daemon too), the standby takes the stream over.
    master.sql("SET GLOBAL read_only = ON");
    assert!(
        master_daemon.stop(),
        "the master's daemon did not stop cleanly"
    );
    stop_replication(&standby);
    standby.sql("SET GLOBAL read_only = ON");
    let (status, body) = standby_daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    standby_daemon.wait_mode("active", Duration::from_secs(180));
    standby.sql("SET GLOBAL read_only = OFF");

    // The old master rejoins as the new master's standby, with a fresh daemon, replicating
    // from the transactions its binlog holds.
    master.sql("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos");
    master.replicate_from(&standby);
    let rejoined_daemon = daemon_for(&master, dirs[2].path(), &site, "observe");
    load_phase(&standby, 2, 3);
    standby_daemon.rotate_and_wait();
    master.wait_until_caught_up(&standby, CAUGHT_UP);

    // Failback.
    standby.sql("SET GLOBAL read_only = ON");
    stop_replication(&master);
    let (status, body) = rejoined_daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    rejoined_daemon.wait_mode("active", Duration::from_secs(180));
    assert!(
        rejoined_daemon
            .log_text()
            .contains(&format!("stream {stream_id}: not taken over")),
        "{}",
        rejoined_daemon.log_tail()
    );
    // The stream stays open while the re-promoted server's own backup is not complete yet: a
    // server promoted meanwhile could still take it over.
    let closed_key = format!("{stream_id}/closed.json");
    let is_closed_marker = |o: &Value| o["key"].as_str().is_some_and(|k| k.contains(&closed_key));
    assert!(
        !stored_objects(&dirs[0].path().join("myhoard.json"))
            .iter()
            .any(is_closed_marker),
        "the old stream was closed before the new backup was complete"
    );
    master.sql("SET GLOBAL read_only = OFF");
    let new_backup = rejoined_daemon.wait_for(
        "the re-promoted server's own backup",
        Duration::from_secs(300),
        |d| {
            d.backups().into_iter().find(|b| {
                b["stream_id"] != stream_id.as_str()
                    && b["completed_at"].is_number()
                    && b["basebackup_info"]["uploaded_from"] == 1
            })
        },
    );
    drop(standby_daemon);

    // The stream still has its record from index 1 and reads as one gapless sequence of both
    // servers' binlogs.
    let objects = stored_objects(&dirs[0].path().join("myhoard.json"));
    let in_stream = |part: &str| {
        let prefix = format!("{stream_id}/{part}");
        objects
            .iter()
            .filter(move |o| o["key"].as_str().is_some_and(|k| k.contains(&prefix)))
    };
    let promotions: Vec<Promotion> = in_stream("promotions/").filter_map(metadata).collect();
    let own = promotions
        .iter()
        .find(|p| p.server_id == 1)
        .expect("server 1's record");
    assert_eq!(
        own.start_index, 1,
        "server 1's record was moved: {promotions:?}"
    );
    let binlogs: Vec<BinlogInfo> = in_stream("binlogs/").filter_map(metadata).collect();
    let valid = myhoard::backup_stream::layout::valid_binlog_sequence(binlogs, &promotions)
        .expect("the stream reads as one sequence");
    for server_id in [1, 2] {
        assert!(
            valid.iter().any(|b| b.server_id == server_id),
            "no valid binlog of server {server_id}: {valid:?}"
        );
    }
    assert_ne!(new_backup["stream_id"], stream_id.as_str());

    // Once that backup is complete, the re-promoted server closes the old stream, so that
    // retention, which never purges an unclosed backup, is not stopped by it for good.
    let listed = rejoined_daemon.wait_for(
        "the old stream listed as closed",
        Duration::from_secs(60),
        |d| {
            d.backups()
                .into_iter()
                .find(|b| b["stream_id"] == stream_id.as_str() && b["closed_at"].is_number())
        },
    );
    let closed: Vec<ClosedMarker> = stored_objects(&dirs[0].path().join("myhoard.json"))
        .iter()
        .filter(|o| is_closed_marker(o))
        .filter_map(metadata)
        .collect();
    let closed = closed.first().expect("the old stream's closed.json");
    assert_eq!(closed.server_id, 1, "{closed:?}");
    assert_eq!(listed["closed_at"].as_f64(), Some(closed.closed_at));
}

//! `PUT /status` through the real daemon: every forbidden transition and malformed body is a
//! 400 with a message and changes nothing, and concurrent promotion requests leave one
//! consistent outcome (one promotion, one backup stream).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use crate::restore_daemon::{db_options, site};

fn refused(daemon: &Daemon, body: &str, mode_before: &str) {
    let (status, answer) = daemon.send("PUT", "/status", body);
    assert_eq!(status, 400, "PUT /status {body} in {mode_before}: {answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "PUT /status {body}: no message in {answer}"
    );
    assert_eq!(daemon.mode(), mode_before, "after PUT /status {body}");
}

fn accepted(daemon: &Daemon, body: Value, mode_after: &str) {
    let (status, answer) = daemon.put("/status", body.clone());
    assert_eq!(status, 200, "PUT /status {body}: {answer}");
    assert_eq!(answer["mode"], mode_after, "PUT /status {body}: {answer}");
}

fn transitions(flavor: Flavor) {
    let Some(site) = site("modes") else { return };
    let Some(db) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = daemon::config_for(&db, dir.path(), site, Daemon::pick_port());
    let daemon = Daemon::start(dir.path(), &config);

    // idle: only restore (with a valid backup), observe and active are accepted.
    for body in [
        r#"{"mode": "idle"}"#,
        r#"{"mode": "promote"}"#,
        r#"{"mode": "sideways"}"#,
        r#"{"mode": 5}"#,
        r#"{}"#,
        r#"["active"]"#,
        r#"{"mode": "active""#,
        r#"{"mode": "active", "force": true}"#,
        r#"{"mode": "restore"}"#,
        r#"{"mode": "restore", "site": "default", "stream_id": "no-such-backup"}"#,
        r#"{"mode": "restore", "site": "elsewhere", "stream_id": "x"}"#,
    ] {
        refused(&daemon, body, "idle");
    }

    // observe: again observe is a no-op; restore is only allowed from idle.
    accepted(&daemon, json!({"mode": "observe"}), "observe");
    accepted(&daemon, json!({"mode": "observe"}), "observe");
    for body in [
        r#"{"mode": "restore", "site": "default", "stream_id": "x"}"#,
        r#"{"mode": "active", "force": true}"#,
        r#"{"mode": "idle"}"#,
    ] {
        refused(&daemon, body, "observe");
    }
    // A server open for writes is not promoted from observe.
    db.sql("SET GLOBAL read_only = OFF");
    refused(&daemon, r#"{"mode": "active"}"#, "observe");

    // Concurrent promotion requests: one promotion, one outcome.
    db.sql("SET GLOBAL read_only = ON");
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| daemon.put("/status", json!({"mode": "active"}))))
            .collect();
        requests
            .into_iter()
            .map(|request| request.join().expect("a request thread"))
            .collect()
    });
    assert!(
        answers.iter().any(|(status, _)| *status == 200),
        "no request was accepted: {answers:?}"
    );
    for (status, answer) in &answers {
        match status {
            200 => assert!(
                answer["mode"] == "promote" || answer["mode"] == "active",
                "{answer}"
            ),
            400 => assert!(answer["message"].is_string(), "{answer}"),
            other => panic!("unexpected answer {other} {answer}"),
        }
    }
    daemon.wait_mode("active", Duration::from_secs(60));
    db.sql("SET GLOBAL read_only = OFF");
    let backup = daemon.wait_completed_backup(Duration::from_secs(300));
    // active: no way out, and force is refused.
    for body in [
        r#"{"mode": "observe"}"#,
        r#"{"mode": "restore", "site": "default", "stream_id": "x"}"#,
        r#"{"mode": "active", "force": true}"#,
        r#"{"mode": "idle"}"#,
    ] {
        refused(&daemon, body, "active");
    }
    accepted(&daemon, json!({"mode": "active"}), "active");
    let backups = daemon.backups();
    assert_eq!(
        backups.len(),
        1,
        "concurrent promotions started more than one backup: {backups:?}"
    );
    assert_eq!(backups[0]["stream_id"], backup["stream_id"]);
}

#[test]
fn mariadb_mode_transitions() {
    transitions(Flavor::MariaDb);
}

#[test]
fn mysql_mode_transitions() {
    transitions(Flavor::MySql);
}

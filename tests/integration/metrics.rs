//! statsd metrics from the real daemon: a UDP sink stands in for statsd while a MariaDB source
//! is backed up in active mode (snapshot, binlog uploads, purge rounds) and restored onto a
//! second server by a second daemon pointing at the same sink. The datagrams are checked for
//! MyHoard's names, tags (the config's and `controller_mode`), wire format and sensible values.
//! The metrics code is the same for both flavours, so MariaDB alone is run.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use crate::harness::myhoard::shared_key_pair;
use crate::restore_daemon::{db_options, load_phase, restore_and_wait, restore_target};

/// A statsd stand-in: every datagram received on a loopback UDP port, in order.
struct StatsdSink {
    port: u16,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatsdSink {
    fn start() -> StatsdSink {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding the statsd sink");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let port = socket.local_addr().expect("sink address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                        let datagram = String::from_utf8_lossy(&buffer[..len]).into_owned();
                        received.lock().expect("sink lock").push(datagram);
                    }
                }
            })
        };
        StatsdSink {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn datagrams(&self) -> Vec<String> {
        self.received.lock().expect("sink lock").clone()
    }

    /// The metrics received so far that `node` sent.
    fn metrics_of(&self, node: &str) -> Vec<Metric> {
        self.datagrams()
            .iter()
            .map(|datagram| {
                Metric::parse(datagram)
                    .unwrap_or_else(|| panic!("not a statsd datagram: {datagram:?}"))
            })
            .filter(|metric| metric.tags.get("node").map(String::as_str) == Some(node))
            .collect()
    }
}

impl Drop for StatsdSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One datagram, `name,tag=value,...:value|type`.
#[derive(Debug, Clone)]
struct Metric {
    raw: String,
    name: String,
    tags: BTreeMap<String, String>,
    value: f64,
    kind: String,
}

impl Metric {
    fn parse(datagram: &str) -> Option<Metric> {
        let (name_and_tags, value_and_kind) = datagram.split_once(':')?;
        let (value, kind) = value_and_kind.split_once('|')?;
        let mut parts = name_and_tags.split(',');
        let name = parts.next()?.to_owned();
        let tags = parts
            .map(|tag| {
                tag.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Metric {
            raw: datagram.to_owned(),
            name,
            tags,
            value: value.parse().ok()?,
            kind: kind.to_owned(),
        })
    }

    fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).map(String::as_str)
    }
}

/// The metrics named `name`, waiting up to `timeout` for at least one that `accept` takes.
fn wait_metric(
    sink: &StatsdSink,
    node: &str,
    name: &str,
    timeout: Duration,
    accept: impl Fn(&Metric) -> bool,
    log_tail: impl Fn() -> String,
) -> Vec<Metric> {
    let deadline = Instant::now() + timeout;
    loop {
        let named: Vec<Metric> = sink
            .metrics_of(node)
            .into_iter()
            .filter(|m| m.name == name)
            .collect();
        if named.iter().any(&accept) {
            return named;
        }
        if Instant::now() > deadline {
            let mut names: Vec<String> =
                sink.metrics_of(node).into_iter().map(|m| m.name).collect();
            names.sort();
            names.dedup();
            panic!(
                "{node} sent no acceptable {name} within {timeout:?}; got {named:?}\n\
                 metrics seen: {names:?}\n{}",
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn statsd_config(config: &mut Value, port: u16, node: &str) {
    config["statsd"] = json!({
        "host": "127.0.0.1",
        "port": port,
        "tags": {"app": "myhoard-test", "node": node},
    });
}

#[test]
fn mariadb_daemon_sends_metrics_while_backing_up_and_restoring() {
    let flavor = Flavor::MariaDb;
    let Some(db) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    let sink = StatsdSink::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let site = daemon::local_site(&dir.path().join("storage"), &shared_key_pair(), "zstd");
    load_phase(&db, 3, 1);
    let mut config = daemon::config_for(&db, dir.path(), site.clone(), Daemon::pick_port());
    statsd_config(&mut config, sink.port, "source");
    config["binlog_purge_settings"]["enabled"] = true.into();
    config["binlog_purge_settings"]["min_binlog_age_before_purge"] = 1.into();
    config["binlog_purge_settings"]["purge_interval"] = 1.into();
    let source = Daemon::start(dir.path(), &config);
    let (status, body) = source.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    let backup = source.wait_completed_backup(Duration::from_secs(120));
    db.sql("CREATE DATABASE metrics_test; CREATE TABLE metrics_test.t (id INT PRIMARY KEY)");
    for n in 0..3 {
        db.sql(&format!("INSERT INTO metrics_test.t VALUES ({n})"));
        source.rotate_and_wait();
    }
    let source_log = || source.log_tail();
    let wait = Duration::from_secs(30);

    // Backup side, in active mode.
    let started = wait_metric(
        &sink,
        "source",
        "myhoard.backup_started",
        wait,
        |_| true,
        source_log,
    );
    assert_eq!(
        started[0].raw,
        "myhoard.backup_started,resumed=false,node=source,controller_mode=active,\
         app=myhoard-test:1|c",
        "MyHoard's wire format: tags in reverse alphabetical order"
    );
    let compressed = wait_metric(
        &sink,
        "source",
        "myhoard.basebackup.bytes_compressed",
        wait,
        |m| m.value > 0.0,
        source_log,
    );
    assert_eq!(compressed[0].kind, "g");
    assert_eq!(compressed[0].tag("incremental"), Some("False"));
    let timing = wait_metric(
        &sink,
        "source",
        "myhoard.basebackup.xtrabackup_backup",
        wait,
        |m| m.tag("success") == Some("1"),
        source_log,
    );
    assert_eq!(timing[0].kind, "ms");
    assert!(
        timing[0].value > 0.0 && timing[0].value < 600.0,
        "the snapshot's time is in seconds, as MyHoard sends it: {:?}",
        timing[0]
    );
    let uploads = wait_metric(
        &sink,
        "source",
        "myhoard.binlog.upload",
        wait,
        |_| true,
        source_log,
    );
    assert!(
        uploads.len() >= 3,
        "one upload counted per binlog at least for the three rotations: {uploads:?}"
    );
    assert!(uploads.iter().all(|m| m.kind == "c" && m.value == 1.0));
    let uploaded_bytes = wait_metric(
        &sink,
        "source",
        "myhoard.binlog.upload_bytes",
        wait,
        |m| m.value > 0.0,
        source_log,
    );
    assert!(
        uploaded_bytes.len() >= uploads.len(),
        "bytes counted with every upload: {uploaded_bytes:?}"
    );
    let recovery_point = wait_metric(
        &sink,
        "source",
        "myhoard.backup_stream.recovery_point_age",
        wait,
        |_| true,
        source_log,
    );
    // The last insert was backed up moments ago; a few seconds of slack for a busy machine.
    let newest = recovery_point.last().expect("a recovery point");
    assert!(
        (0.0..120.0).contains(&newest.value),
        "the newest backed-up transaction is recent: {newest:?}"
    );
    wait_metric(
        &sink,
        "source",
        "myhoard.pending_binlog_count_max",
        wait,
        |m| m.value >= 0.0,
        source_log,
    );
    wait_metric(
        &sink,
        "source",
        "myhoard.binlog.time_since_any_purged",
        wait,
        |m| m.value >= 0.0,
        source_log,
    );
    wait_metric(
        &sink,
        "source",
        "myhoard.binlog.time_since_could_have_purged",
        wait,
        |m| m.value >= 0.0,
        source_log,
    );
    wait_metric(
        &sink,
        "source",
        "myhoard.binlog.purged_per_cycle.files",
        wait,
        |m| m.value >= 1.0,
        source_log,
    );
    wait_metric(
        &sink,
        "source",
        "myhoard.binlog.count_new",
        wait,
        |m| m.value >= 1.0,
        source_log,
    );
    let source_metrics = sink.metrics_of("source");
    assert!(
        source_metrics
            .iter()
            .all(|m| m.tag("app") == Some("myhoard-test") && m.tag("controller_mode").is_some()),
        "every metric carries the config's and the mode's tags: {:?}",
        source_metrics
            .iter()
            .find(|m| m.tag("app") != Some("myhoard-test"))
    );
    assert!(
        source_metrics
            .iter()
            .any(|m| m.tag("controller_mode") == Some("active")),
        "the mode tag follows the mode"
    );
    assert!(
        !source_metrics
            .iter()
            .any(|m| m.name == "myhoard.binlog.upload_errors"),
        "no upload failed"
    );

    // Restore side: a second server and daemon, into observe mode at the end.
    let target = restore_target(flavor, &site, 2, |config| {
        statsd_config(config, sink.port, "target");
    });
    restore_and_wait(
        &target,
        json!({"mode": "restore", "site": "default", "stream_id": backup["stream_id"]}),
    );
    let target_log = || target.daemon.log_tail();
    let restore_started = wait_metric(
        &sink,
        "target",
        "myhoard.restore.started",
        wait,
        |_| true,
        target_log,
    );
    assert_eq!(restore_started.len(), 1, "{restore_started:?}");
    assert_eq!(restore_started[0].tag("resumed"), Some("false"));
    assert_eq!(restore_started[0].tag("controller_mode"), Some("restore"));
    let completed = wait_metric(
        &sink,
        "target",
        "myhoard.restore.completed",
        wait,
        |_| true,
        target_log,
    );
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].tag("app"), Some("myhoard-test"));
    let restored = wait_metric(
        &sink,
        "target",
        "myhoard.restore.binlogs_restored",
        wait,
        |_| true,
        target_log,
    );
    let n_restored: f64 = restored.iter().map(|m| m.value).sum();
    assert!(
        n_restored >= 3.0,
        "binlogs of the three rotations restored: {restored:?}"
    );
    wait_metric(
        &sink,
        "target",
        "myhoard.basebackup_restore.total_time",
        wait,
        |m| m.value > 0.0,
        target_log,
    );
    wait_metric(
        &sink,
        "target",
        "myhoard.restore.basebackup_bytes_downloaded",
        wait,
        |m| m.value > 0.0,
        target_log,
    );
    let pending = wait_metric(
        &sink,
        "target",
        "myhoard.restore.pending_binlogs",
        wait,
        |m| m.value == 0.0,
        target_log,
    );
    assert!(
        pending.iter().any(|m| m.value >= 1.0),
        "binlogs were pending before they were applied: {pending:?}"
    );
    let target_metrics = sink.metrics_of("target");
    assert!(
        !target_metrics
            .iter()
            .any(|m| m.name == "myhoard.restore.failed" || m.name == "myhoard.restore_errors"),
        "the restore went through without errors: {:?}",
        target_metrics
            .iter()
            .filter(|m| m.name.starts_with("myhoard.restore"))
            .collect::<Vec<_>>()
    );
    let mut names: Vec<String> = sink
        .datagrams()
        .iter()
        .filter_map(|d| Metric::parse(d))
        .map(|m| format!("{} ({})", m.name, m.kind))
        .collect();
    names.sort();
    names.dedup();
    eprintln!("metric names received: {names:#?}");
}

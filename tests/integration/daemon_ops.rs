//! The daemon as a service manager sees it: `sd_notify` messages on a test `NOTIFY_SOCKET`,
//! journald priority prefixes under `JOURNAL_STREAM`, SIGHUP reloads (a valid changed config
//! applied once no snapshot is being taken, an invalid one refused with the daemon running on),
//! and no secret of the config anywhere in its log.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::daemon::{self, Daemon};
use crate::harness::db::{DbServer, Flavor};
use crate::harness::myhoard::shared_key_pair;
use crate::restore_daemon::{db_options, load_phase};

const SIGHUP: i32 = 1;

/// The `sd_notify` datagrams received so far, in order.
struct NotifySocket {
    socket: UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    /// Waits until `message` arrives (after those already seen), failing after `timeout`.
    fn wait_for(&mut self, message: &str, timeout: Duration) {
        let seen = self.received.len();
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        loop {
            if self.received[seen..].iter().any(|m| m == message) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} within {timeout:?}; received {:?}",
                self.received
            );
            if let Ok(n) = self.socket.recv(&mut buffer) {
                self.received
                    .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        }
    }
}

fn write_config(daemon: &Daemon, config: &Value) {
    std::fs::write(
        daemon.config_path(),
        serde_json::to_vec_pretty(config).expect("serializing"),
    )
    .expect("writing the config");
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

#[test]
fn notifications_reload_journald_priorities_and_no_secrets() {
    let flavor = Flavor::MariaDb;
    let Some(db) = DbServer::start(flavor, db_options(flavor, 1)) else {
        return;
    };
    load_phase(&db, 2, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("storage");
    let keys = shared_key_pair();
    let site = daemon::local_site(&storage, &keys, "zstd");
    let mut config = daemon::config_for(&db, dir.path(), site, Daemon::pick_port());
    let sentry = FakeSentry::start();
    config["sentry_dsn"] = sentry.dsn().into();
    config["statsd"]["tags"] = json!({"app": "myhoard-test"});
    let notify_path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&notify_path);
    let notify_env = notify_path.display().to_string();
    let mut daemon = Daemon::start_with_env(
        dir.path(),
        &config,
        &[
            ("NOTIFY_SOCKET", &notify_env),
            ("JOURNAL_STREAM", "8:12345"),
        ],
    );
    notify.wait_for("READY=1", Duration::from_secs(30));
    notify.wait_for("STATUS=mode idle", Duration::from_secs(10));

    // A reload asked for while the snapshot is taken waits for it: the snapshot is not
    // thrown away and taken again.
    let (status, body) = daemon.put("/status", json!({"mode": "active"}));
    assert_eq!(status, 200, "{body}");
    daemon.wait_for("a snapshot in progress", Duration::from_secs(60), |d| {
        let (_, status) = d.get("/status");
        status["basebackups_in_progress"].is_array().then_some(())
    });
    config["backup_settings"]["forced_binlog_rotation_interval"] = 1.into();
    write_config(&daemon, &config);
    daemon::send_signal(daemon.pid(), SIGHUP);
    notify.wait_for("RELOADING=1", Duration::from_secs(300));
    notify.wait_for("READY=1", Duration::from_secs(60));
    let log = daemon.log_text();
    assert_eq!(
        count(&log, "taking the snapshot of stream"),
        1,
        "the reload did not wait for the snapshot:\n{log}"
    );
    assert!(
        log.contains("configuration changed (backup_settings.forced_binlog_rotation_interval)"),
        "{log}"
    );
    daemon.wait_completed_backup(Duration::from_secs(120));
    assert_eq!(daemon.mode(), "active");

    // The new setting is in effect: a write is rotated out and uploaded within seconds without
    // being asked (with the old hour-long interval it would not be), and without writes there
    // is no rotation at all.
    std::thread::sleep(Duration::from_secs(3));
    let rotations = count(&daemon.log_text(), "forcing a binlog rotation");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&daemon.log_text(), "forcing a binlog rotation"),
        rotations,
        "rotations without writes"
    );
    db.sql("CREATE DATABASE after_reload; CREATE TABLE after_reload.t (id INT PRIMARY KEY); INSERT INTO after_reload.t VALUES (1)");
    daemon.wait_for("a forced rotation", Duration::from_secs(60), |d| {
        (count(&d.log_text(), "forcing a binlog rotation") > rotations).then_some(())
    });

    // An invalid config is refused; the daemon runs on with the old one.
    let mut invalid = config.clone();
    invalid["backup_settings"]["forced_binlog_rotation_interval"] = "soon".into();
    invalid["no_such_key"] = 1.into();
    write_config(&daemon, &invalid);
    let n_reloads = count(&daemon.log_text(), "RELOADING");
    daemon::send_signal(daemon.pid(), SIGHUP);
    daemon.wait_for("the refusal", Duration::from_secs(30), |d| {
        d.log_text()
            .contains("is not a valid configuration")
            .then_some(())
    });
    let log = daemon.log_text();
    assert!(
        log.contains("no_such_key"),
        "every problem is logged:\n{log}"
    );
    assert!(
        log.contains("forced_binlog_rotation_interval"),
        "every problem is logged:\n{log}"
    );
    assert_eq!(count(&log, "RELOADING"), n_reloads);
    // The error went to Sentry too, with the statsd tags.
    let event = sentry.wait_for("is not a valid configuration", Duration::from_secs(30));
    assert!(event.contains("myhoard-test"), "no statsd tag in {event}");
    assert_eq!(daemon.mode(), "active");
    daemon.rotate_and_wait();
    write_config(&daemon, &config);

    // Stopping.
    assert!(
        daemon.stop(),
        "myhoard did not exit 0\n{}",
        daemon.log_tail()
    );
    notify.wait_for("STOPPING=1", Duration::from_secs(10));

    // Under journald every line starts with its syslog priority, and there is no second
    // timestamp (journald adds its own).
    let log = daemon.log_text();
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let priority = line.get(..3).unwrap_or_default();
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "no priority prefix: {line}"
        );
        assert!(
            !line[3..].starts_with("20") && !line[3..].starts_with('['),
            "a timestamp under journald: {line}"
        );
    }
    let with = |priority: &str, text: &str| {
        lines
            .iter()
            .any(|line| line.starts_with(priority) && line.contains(text))
    };
    assert!(with("<3>", "is not a valid configuration"), "{log}");
    assert!(with("<6>", "uploaded"), "{log}");

    // No secret of the config in the log.
    let password = crate::harness::db::PASSWORD.to_owned();
    let private_key = keys.private_pem.clone();
    let key_body: Vec<&str> = private_key
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 20)
        .collect();
    assert!(!key_body.is_empty());
    for secret in key_body.iter().copied().chain([password.as_str()]) {
        if secret.len() >= 6 {
            assert!(!log.contains(secret), "a secret in the log: {secret}");
        }
    }
    assert!(!log.contains("PRIVATE KEY"), "a private key in the log");
    assert!(!log.contains(&sentry.dsn()), "the Sentry DSN in the log");
}

/// A port already taken is a startup error that names the address, and nothing is left
/// running; the test harness then starts the daemon on a fresh port, as it does when another
/// test's server takes a daemon's port between its pick and the daemon's start.
#[test]
fn a_taken_http_port_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = taken.local_addr().expect("its address").port();
    let mut config = daemon::example_config();
    daemon::without_systemd(&mut config);
    // Nothing is started in idle mode: the database is never reached.
    config["start_command"] = json!(["/bin/true"]);
    config["http_port"] = port.into();
    // Every path of the example config into the test's directory: nothing of the host's is
    // touched (a /var/lib/myhoard left behind would stop tests/systemd.sh).
    for (key, name) in [("state_directory", "state"), ("temporary_directory", "tmp")] {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("creating a directory");
        config[key] = path.display().to_string().into();
    }
    let storage = dir.path().join("storage");
    config["backup_sites"]["default"]["object_storage"]["directory"] =
        storage.display().to_string().into();
    let mysql = dir.path().join("mysql");
    for (key, name) in [
        ("binlog_prefix", "binlog"),
        ("config_file_name", "my.cnf"),
        ("data_directory", "data"),
        ("relay_log_index_file", "relay.index"),
        ("relay_log_prefix", "relay"),
    ] {
        config["mysql"][key] = mysql.join(name).display().to_string().into();
    }
    let config_path = dir.path().join("direct.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config).expect("serializing"),
    )
    .expect("writing the config");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_myhoard"))
        .args(["run", "--config"])
        .arg(&config_path)
        .output()
        .expect("running myhoard");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "listening on 127.0.0.1:{port}: Address already in use"
        )),
        "unclear error: {stderr}"
    );

    let mut daemon = Daemon::start(dir.path(), &config);
    assert_eq!(daemon.get("/status").0, 200);
    assert!(
        daemon.log_text().contains("already in use"),
        "the first start did not meet the taken port:\n{}",
        daemon.log_tail()
    );
    assert!(daemon.stop(), "the daemon did not stop cleanly");
    assert!(
        storage.is_dir(),
        "the local storage is not where the config says"
    );
    drop(taken);
}

/// A panic in any thread reaches Sentry, with the statsd tags, through the reporting that
/// `error_reporting::init` sets up for the daemon. Nothing makes the daemon panic on purpose, so
/// the same reporting is driven here in the test process, on a named thread as the daemon's are.
#[test]
fn panics_are_reported_to_sentry_with_the_statsd_tags() {
    let sentry = FakeSentry::start();
    let mut config = daemon::example_config();
    config["sentry_dsn"] = sentry.dsn().into();
    config["statsd"]["tags"] = json!({ "app": "myhoard-panic-test" });
    let config = match myhoard::config::Config::from_value(config) {
        Ok(config) => config,
        Err(errors) => panic!("test config is invalid:\n{errors}"),
    };
    let reporting = myhoard::error_reporting::init(&config);
    let worker = std::thread::Builder::new()
        .name("uploader-0".into())
        .spawn(|| panic!("injected panic for the Sentry test"))
        .expect("spawning a thread");
    assert!(worker.join().is_err(), "the thread did not panic");
    // Dropping the guard flushes what is queued, as the daemon does when it exits.
    drop(reporting);
    let event = sentry.wait_for(
        "injected panic for the Sentry test",
        Duration::from_secs(10),
    );
    assert!(
        event.contains("myhoard-panic-test"),
        "no statsd tag in {event}"
    );
    assert!(
        event.contains("\"mechanism\":{\"type\":\"panic\""),
        "not reported as a panic: {event}"
    );
}

/// A Sentry endpoint on loopback that keeps the bodies it is sent.
struct FakeSentry {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeSentry {
    fn start() -> FakeSentry {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("a fake Sentry server");
        let port = server
            .server_addr()
            .to_ip()
            .map(|address| address.port())
            .expect("a TCP address");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let received = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
                if let Ok(mut bodies) = received.lock() {
                    bodies.push(String::from_utf8_lossy(&body).into_owned());
                }
                let _ = request.respond(tiny_http::Response::from_string("{}"));
            }
        });
        FakeSentry { port, bodies }
    }

    fn dsn(&self) -> String {
        format!("http://0123456789abcdef@127.0.0.1:{}/42", self.port)
    }

    /// The first body received that contains `text`.
    fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bodies) = self.bodies.lock()
                && let Some(body) = bodies.iter().find(|body| body.contains(text))
            {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "Sentry received no event with {text:?}: {:?}",
                self.bodies.lock().map(|b| b.len())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

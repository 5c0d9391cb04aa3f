//! The database client against real servers, MariaDB 10.11 and MySQL 9.7: logins over TCP, the
//! unix socket and TLS (MySQL 9.7 accounts use caching_sha2_password, the only plugin it has),
//! the flavour probe, every typed statement after real writes and binlog rotations, and
//! MyHoard's relay-log replay driven entirely by the statements `Flavor` writes, stopped at a
//! point in time and resumed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use myhoard::config::{ClientParams, Secret};
use myhoard::db::flavor::log_file_name;
use myhoard::db::{
    ApplyUntil, Client, ErrorKind, GtidState, LONG_TIMEOUT, RelayLogStart, ServerGtids,
    ServerIdentity, UntilCondition,
};
use myhoard::gtid::{GtidSet, MariadbGtidState};

use crate::harness::db::{DbOptions, DbServer, Flavor as ServerFlavor, PASSWORD, USER};

// --- helpers -----------------------------------------------------------------------------------

/// `client_params` for TCP to the server, as the harness's `client_params()` describes it.
fn tcp_params(server: &DbServer) -> ClientParams {
    let json = server.client_params();
    assert_eq!(json["host"], "127.0.0.1");
    assert_eq!(json["port"], server.port());
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

fn socket_params(server: &DbServer) -> ClientParams {
    ClientParams {
        unix_socket: Some(server.socket()),
        ..tcp_params(server)
    }
}

fn tls_params(server: &DbServer, ca_file: Option<PathBuf>) -> ClientParams {
    ClientParams {
        require_ssl: true,
        ca_file,
        ..tcp_params(server)
    }
}

fn connect(params: &ClientParams) -> Client {
    match Client::connect(params) {
        Ok(client) => client,
        Err(err) => panic!("connecting with {params:?}: {err}"),
    }
}

fn ok<T>(result: Result<T, myhoard::db::Error>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

fn text(client: &mut Client, query: &str) -> String {
    ok(client.query_text(query)).unwrap_or_default()
}

/// The TLS cipher of the client's session, empty without TLS.
fn ssl_cipher(client: &mut Client) -> String {
    let table = if client.flavor().is_mysql() {
        "performance_schema.session_status"
    } else {
        "information_schema.SESSION_STATUS"
    };
    text(
        client,
        &format!("SELECT VARIABLE_VALUE FROM {table} WHERE VARIABLE_NAME = 'Ssl_cipher'"),
    )
}

/// Checks the session: the probed flavour matches the server, it runs in database `mysql` with
/// utf8mb4, as `USER` from `host` (`localhost` for the socket, `127.0.0.1` for TCP).
fn check_session(client: &mut Client, server: &DbServer, host: &str) {
    assert_eq!(
        client.flavor().is_mariadb(),
        server.flavor() == ServerFlavor::MariaDb
    );
    assert_eq!(client.version_string(), server.version());
    assert_eq!(text(client, "SELECT DATABASE()"), "mysql");
    assert_eq!(text(client, "SELECT @@character_set_client"), "utf8mb4");
    assert_eq!(text(client, "SELECT USER()"), format!("{USER}@{host}"));
}

fn mysql_set(text: &str) -> GtidSet {
    match GtidSet::parse_mysql(text) {
        Ok(set) => set,
        Err(err) => panic!("{text:?}: {err}"),
    }
}

fn mariadb_position(text: &str) -> MariadbGtidState {
    match text.parse() {
        Ok(state) => state,
        Err(err) => panic!("{text:?}: {err}"),
    }
}

/// The harness's view of the server's GTIDs, in the client's types.
fn harness_gtids(server: &DbServer) -> ServerGtids {
    match server.flavor() {
        ServerFlavor::MySql => ServerGtids::MySql(mysql_set(&server.gtid_executed())),
        ServerFlavor::MariaDb => ServerGtids::MariaDb(mariadb_position(&server.gtid_executed())),
    }
}

fn basename(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn insert_rows(server: &DbServer, table: &str, ids: std::ops::RangeInclusive<u32>) {
    for id in ids {
        server.sql(&format!(
            "INSERT INTO {table} VALUES ({id}, SHA2('{id}', 256))"
        ));
    }
}

// --- logins --------------------------------------------------------------------------------------

fn logins(flavor: ServerFlavor) {
    let Some(mut server) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };

    if flavor == ServerFlavor::MySql {
        // Every account uses caching_sha2_password; emptying the auth cache makes the next
        // logins take the full-authentication path (RSA key exchange over plain TCP, cleartext
        // over the socket, plain over TLS). LOCAL: a logged FLUSH would use up a GTID.
        let plugin: String = server.query_value(&format!(
            "SELECT plugin FROM mysql.user WHERE user = '{USER}' AND host = '%'"
        ));
        assert_eq!(plugin, "caching_sha2_password");
    }
    let cold_cache = |server: &DbServer| {
        if server.flavor() == ServerFlavor::MySql {
            server.sql("FLUSH LOCAL PRIVILEGES");
        }
    };

    for warm in [false, true] {
        if !warm {
            cold_cache(&server);
        }
        let mut tcp = connect(&tcp_params(&server));
        check_session(&mut tcp, &server, "127.0.0.1");
        assert_eq!(ssl_cipher(&mut tcp), "", "plain TCP has no TLS");
        assert_eq!(
            tcp.server(),
            format!("127.0.0.1:{} as {USER}", server.port())
        );
        drop(tcp);

        if !warm {
            cold_cache(&server);
        }
        let mut socket = connect(&socket_params(&server));
        check_session(&mut socket, &server, "localhost");
        assert_eq!(
            socket.server(),
            format!("socket {} as {USER}", server.socket().display())
        );
    }

    // TLS: MySQL generates its own certificates; the MariaDB servers get ours.
    let ca_file = match flavor {
        ServerFlavor::MySql => Some(server.data_dir().join("ca.pem")),
        ServerFlavor::MariaDb => {
            // Without TLS on the server, requiring it fails clearly instead of falling back.
            let err = match Client::connect(&tls_params(&server, None)) {
                Ok(_) => {
                    panic!("TLS was required but the server has none, yet the connection worked")
                }
                Err(err) => err,
            };
            assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
            assert!(err.to_string().contains("secure connection"), "{err}");
            enable_mariadb_tls(&mut server)
        }
    };
    if let Some(ca_file) = ca_file {
        cold_cache(&server);
        let mut verified = connect(&tls_params(&server, Some(ca_file.clone())));
        check_session(&mut verified, &server, "127.0.0.1");
        let cipher = ssl_cipher(&mut verified);
        assert!(!cipher.is_empty(), "no TLS with require_ssl and ca_file");
        eprintln!("{} TLS with the CA verified: {cipher}", flavor.name());
        assert!(verified.server().ends_with(" over TLS"));

        let mut unverified = connect(&tls_params(&server, None));
        assert!(
            !ssl_cipher(&mut unverified).is_empty(),
            "no TLS with require_ssl alone"
        );

        // A CA that did not sign the server's certificate is refused.
        let other_ca = server.dir().join("other-ca.pem");
        if make_ca(server.dir(), "other-ca") {
            let err = match Client::connect(&tls_params(&server, Some(other_ca))) {
                Ok(_) => panic!("a certificate from another CA was accepted"),
                Err(err) => err,
            };
            assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
            eprintln!("{} with a foreign CA: {err}", flavor.name());
        }
    }

    // A wrong password: access denied, over every transport, never showing the password.
    let wrong = "wrong-Pa55word-4711";
    let mut attempts = vec![tcp_params(&server), socket_params(&server)];
    if flavor == ServerFlavor::MySql {
        attempts.push(tls_params(&server, None));
    }
    for mut params in attempts {
        params.password = Secret::new(wrong.to_owned());
        cold_cache(&server);
        let err = match Client::connect(&params) {
            Ok(_) => panic!("a wrong password was accepted: {params:?}"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
        assert!(err.kind().is_connection_failure());
        assert!(!err.kind().is_transient());
        assert_eq!(err.code(), Some(1045), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("connecting to "), "{message}");
        assert!(message.contains("Access denied for user"), "{message}");
        for shown in [message.clone(), format!("{err:?}"), format!("{params:?}")] {
            assert!(!shown.contains(wrong), "the password leaked: {shown}");
            assert!(!shown.contains(PASSWORD), "the password leaked: {shown}");
        }
        eprintln!("{}: {message}", flavor.name());
    }

    // Nothing listening: a transient connection failure.
    let mut closed = tcp_params(&server);
    closed.port = crate::harness::free_port();
    let err = match Client::connect(&closed) {
        Ok(_) => panic!("connected to a closed port"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.kind().is_transient());
    let mut missing = socket_params(&server);
    missing.unix_socket = Some(server.dir().join("no-such.sock"));
    let err = match Client::connect(&missing) {
        Ok(_) => panic!("connected to a missing socket"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
}

/// Makes a CA (`<name>.pem`, `<name>-key.pem`) in `dir` with openssl; false (with a note) when
/// openssl is missing.
fn make_ca(dir: &Path, name: &str) -> bool {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN=myhoard test {name}"))
        .args([
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
        ])
        .output();
    match status {
        Ok(output) if output.status.success() => true,
        Ok(output) => panic!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => {
            eprintln!("note: skipping the TLS checks: cannot run openssl: {err}");
            false
        }
    }
}

/// Gives a MariaDB server a CA and a certificate signed by it (X.509 v3, as rustls requires),
/// restarts it with TLS on, and returns the CA file; `None` without openssl.
fn enable_mariadb_tls(server: &mut DbServer) -> Option<PathBuf> {
    let dir = server.dir().join("tls");
    fs::create_dir_all(&dir).expect("creating the tls directory");
    if !make_ca(&dir, "ca") {
        return None;
    }
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("running openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing server.ext");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server-cert.pem",
    ]);
    let mut options = server.options().clone();
    options.extra_cnf.extend([
        format!("ssl-ca={}", dir.join("ca.pem").display()),
        format!("ssl-cert={}", dir.join("server-cert.pem").display()),
        format!("ssl-key={}", dir.join("server-key.pem").display()),
    ]);
    server.set_options(options);
    server.restart();
    Some(dir.join("ca.pem"))
}

#[test]
fn mariadb_logins() {
    logins(ServerFlavor::MariaDb);
}

#[test]
fn mysql_logins() {
    logins(ServerFlavor::MySql);
}

// --- typed statements ------------------------------------------------------------------------------

fn typed_statements(flavor: ServerFlavor) {
    let Some(server) = DbServer::start(flavor, DbOptions::server_id(7)) else {
        return;
    };
    let mut client = connect(&tcp_params(&server));
    let db_flavor = client.flavor();
    eprintln!("{} probed as {db_flavor}", server.version());

    // Identity.
    assert_eq!(ok(client.server_id()), 7);
    let identity = ok(client.server_identity());
    assert_eq!(identity.server_id(), 7);
    match identity {
        ServerIdentity::MySql { server_uuid, .. } => {
            let uuid: String = server.query_value("SELECT @@GLOBAL.server_uuid");
            assert_eq!(server_uuid.to_string(), uuid);
        }
        ServerIdentity::MariaDb { domain_id, .. } => assert_eq!(domain_id, 0),
    }

    // read_only, and MySQL's super_read_only.
    assert!(!ok(client.read_only()));
    ok(client.execute("SET GLOBAL read_only = ON"));
    assert!(ok(client.read_only()));
    ok(client.execute("SET GLOBAL read_only = OFF"));
    assert!(!ok(client.read_only()));
    if db_flavor.is_mysql() {
        ok(client.execute("SET GLOBAL super_read_only = ON"));
        assert!(ok(client.read_only()));
        ok(client.execute("SET GLOBAL super_read_only = OFF"));
        ok(client.execute("SET GLOBAL read_only = OFF"));
        assert!(!ok(client.read_only()));
    }

    // No replication configured.
    assert_eq!(ok(client.replica_status()), None);

    // Some writes: 2 DDL + 5 inserts, one GTID each.
    server.sql("CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v VARCHAR(64))");
    insert_rows(&server, "shop.items", 1..=5);
    let status = ok(client.binlog_status());
    eprintln!("{}: binlog status {status:?}", flavor.name());
    assert_eq!(status.gtids, harness_gtids(&server));
    assert_eq!(ok(client.executed_gtids()), status.gtids);
    assert_eq!(status.gtids.to_gtid_set().count(), 7);
    match &status.gtids {
        ServerGtids::MySql(set) => {
            assert_eq!(set, &mysql_set(&format!("{}:1-7", identity.origin())));
        }
        ServerGtids::MariaDb(position) => assert_eq!(position.to_string(), "0-7-7"),
    }
    let files = server.binlog_files();
    let active = files.last().map(|path| basename(path)).unwrap_or_default();
    assert_eq!(status.file, active);
    assert!(status.position > 4);

    let logs = ok(client.binary_logs());
    let names: Vec<String> = logs.iter().map(|log| log.name.clone()).collect();
    let expected: Vec<String> = files.iter().map(|path| basename(path)).collect();
    assert_eq!(names, expected);
    let last = logs.last().expect("at least one binlog");
    assert_eq!(
        last.size, status.position,
        "the active binlog's size is the write position"
    );
    for log in &logs {
        let on_disk =
            fs::metadata(server.binlog_prefix().with_file_name(&log.name)).expect("binlog file");
        assert_eq!(on_disk.len(), log.size, "{}", log.name);
    }

    // FLUSH BINARY LOGS: a new file, and no GTID used up by the flush itself.
    ok(client.flush_binary_logs());
    let after_flush = ok(client.binlog_status());
    assert_eq!(
        after_flush.gtids, status.gtids,
        "FLUSH BINARY LOGS must not be logged with a GTID"
    );
    assert_eq!(
        after_flush.file,
        log_file_name(
            "binlog",
            myhoard::db::flavor::log_file_index(&status.file).expect("index") + 1
        )
    );
    assert_eq!(ok(client.binary_logs()).len(), logs.len() + 1);

    // More writes, another rotation, then purge everything but the active file.
    insert_rows(&server, "shop.items", 6..=8);
    ok(client.flush_binary_logs());
    let before_purge = ok(client.binlog_status());
    assert_eq!(before_purge.gtids.to_gtid_set().count(), 10);
    // MariaDB keeps the files it may need for crash recovery until its binlog checkpoint moves
    // on (a moment after a rotation), without an error: purge again until they are gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let remaining = loop {
        ok(client.purge_binary_logs_to(&before_purge.file));
        let remaining = ok(client.binary_logs());
        if remaining.len() == 1 || Instant::now() >= deadline {
            break remaining;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert_eq!(remaining[0].name, before_purge.file);
    assert_eq!(server.binlog_files().len(), 1);

    // Every GTID variable.
    let state = ok(client.gtid_state());
    eprintln!("{}: gtid state {state:?}", flavor.name());
    assert_eq!(state.executed(), before_purge.gtids.to_gtid_set());
    match &state {
        GtidState::MySql { executed, purged } => {
            // The purged files held every transaction so far.
            assert_eq!(purged, executed);
        }
        GtidState::MariaDb {
            binlog_pos,
            current_pos,
            slave_pos,
            binlog_state,
        } => {
            assert_eq!(binlog_pos.to_string(), "0-7-10");
            assert_eq!(
                current_pos, binlog_pos,
                "our own server id: current_pos follows the binlog"
            );
            assert!(slave_pos.is_empty());
            assert_eq!(binlog_state.to_string(), "0-7-10");
        }
    }

    // A statement the server refuses: a typed SQL error, and the session stays usable.
    let err = match client.execute("SELECT * FROM shop.no_such_table WHERE v = 'not-in-the-label'")
    {
        Ok(()) => panic!("selecting from a missing table worked"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Sql, "{err}");
    assert_eq!(err.code(), Some(1146), "{err}");
    assert_eq!(
        err.statement,
        "SELECT * FROM shop.no_such_table WHERE v = …"
    );
    assert!(!err.kind().is_connection_failure());
    assert_eq!(ok(client.server_id()), 7);
    let err = match client.purge_binary_logs_to("binlog.999999") {
        Ok(()) => panic!("purging to a missing binlog worked"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Sql, "{err}");
    eprintln!("{}: {err}", flavor.name());

    // The same answers through the socket and with the long timeout.
    let mut socket = match Client::connect_with_timeout(&socket_params(&server), LONG_TIMEOUT) {
        Ok(client) => client,
        Err(err) => panic!("{err}"),
    };
    let again = ok(socket.binlog_status());
    assert_eq!(
        (&again.file, &again.gtids),
        (&before_purge.file, &before_purge.gtids)
    );
    // MariaDB appends a Binlog_checkpoint event once the previous files are safe: no GTID.
    assert!(again.position >= before_purge.position);
    assert_eq!(ok(socket.gtid_state()), state);

    // Waiting for GTIDs: MySQL waits on gtid_executed (reached at once); MariaDB on
    // gtid_slave_pos, which a primary's own writes do not advance.
    let executed = state.executed();
    let started = Instant::now();
    let reached = ok(client.wait_for_gtids(&executed, Duration::from_secs(1)));
    assert_eq!(
        reached,
        db_flavor.is_mysql(),
        "waited {:?}",
        started.elapsed()
    );
    assert!(ok(
        client.wait_for_gtids(&GtidSet::new(), Duration::from_secs(1))
    ));
}

#[test]
fn mariadb_typed_statements() {
    typed_statements(ServerFlavor::MariaDb);
}

#[test]
fn mysql_typed_statements() {
    typed_statements(ServerFlavor::MySql);
}

// --- the relay-log replay ----------------------------------------------------------------------------

/// Polls the replica status until the SQL thread has stopped, failing on an SQL error.
fn wait_for_sql_thread_stop(client: &mut Client, timeout: Duration) -> myhoard::db::ReplicaStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let status = ok(client.replica_status()).expect("a replica status row");
        assert_eq!(status.last_sql_errno, 0, "SQL thread failed: {status:?}");
        if !status.sql_running {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the SQL thread did not stop: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the client's server has applied `gtids`.
fn wait_for_applied(client: &mut Client, gtids: &GtidSet, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !ok(client.wait_for_gtids(gtids, Duration::from_secs(3))) {
        let status = ok(client.replica_status());
        if let Some(status) = &status {
            assert_eq!(status.last_sql_errno, 0, "SQL thread failed: {status:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{gtids} not applied in {timeout:?}: {status:?}"
        );
    }
}

/// Copies the source's closed binlogs into the target's relay log directory as relay.000001,
/// ... and writes the relay log index, as the restore does.
fn hand_over_binlogs(
    source: &DbServer,
    target: &DbServer,
    flavor: myhoard::db::Flavor,
) -> Vec<PathBuf> {
    let binlogs = source.binlog_files();
    let closed = &binlogs[..binlogs.len() - 1];
    let prefix = target.relay_log_prefix().display().to_string();
    let mut relay_logs = Vec::new();
    for (i, binlog) in closed.iter().enumerate() {
        let relay_log = PathBuf::from(flavor.log_file_name(&prefix, i as u64 + 1));
        fs::copy(binlog, &relay_log).expect("copying a binlog");
        relay_logs.push(relay_log);
    }
    let paths: Vec<&Path> = relay_logs.iter().map(PathBuf::as_path).collect();
    fs::write(
        target.relay_log_index(),
        flavor.relay_log_index_text(&paths),
    )
    .expect("writing the relay log index");
    relay_logs
}

fn relay_log_replay(flavor: ServerFlavor) {
    let Some(source) = DbServer::start(flavor, DbOptions::server_id(1)) else {
        return;
    };
    let Some(mut target) = DbServer::start(flavor, DbOptions::server_id(2)) else {
        return;
    };
    let mut source_client = connect(&tcp_params(&source));
    let db_flavor = source_client.flavor();

    // The target gets exactly the options the flavour prescribes for a replay (the harness's
    // own my.cnf has most of them already; these come last and win), read-only, and for MySQL
    // no binlog, as Python MyHoard applies.
    let mut extra: Vec<String> = ok_flavor(db_flavor.relay_apply_mysqld_options(
        2,
        1,
        &target.relay_log_prefix(),
        &target.relay_log_index(),
    ));
    if db_flavor.is_mysql() {
        extra.extend(db_flavor.mysqld_binlog_off_options());
    }
    let mut options = target.options().clone();
    options.extra_cnf = extra
        .iter()
        .map(|option| option.trim_start_matches("--").to_owned())
        .collect();
    target.set_options(options);
    target.restart();
    assert!(
        target.relay_log_files().is_empty(),
        "a fresh server has no relay logs: {:?}",
        target.relay_log_files()
    );

    // Source: a first batch (the point in time to stop at), a second batch, a rotation, a
    // third batch in the next file, and a last rotation so that both files are closed.
    source.sql("CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, v VARCHAR(64))");
    insert_rows(&source, "shop.items", 1..=5);
    let early_mark = ok(source_client.binlog_status());
    insert_rows(&source, "shop.items", 6..=10);
    let mark = ok(source_client.binlog_status());
    insert_rows(&source, "shop.items", 11..=20);
    ok(source_client.flush_binary_logs());
    insert_rows(&source, "shop.items", 21..=25);
    ok(source_client.flush_binary_logs());
    let end = ok(source_client.binlog_status());
    let all = end.gtids.to_gtid_set();
    assert_eq!(all.count(), 27);
    eprintln!("{}: stop at {mark:?}, end {end:?}", flavor.name());

    let relay_logs = hand_over_binlogs(&source, &target, db_flavor);
    assert_eq!(relay_logs.len(), 2);
    let first_binlog = basename(&source.binlog_files()[0]);

    let mut client = connect(&tcp_params(&target));
    assert!(ok(client.read_only()), "the replay runs read-only");
    assert_eq!(ok(client.server_id()), 2);
    // What the (empty) snapshot held: nothing.
    ok(client.execute_all(&ok_flavor(
        db_flavor.restore_gtid_state_statements(&GtidSet::new()),
    )));
    let relay_start = RelayLogStart {
        relay_log_file: &basename(&relay_logs[0]),
        relay_log_pos: 4,
        source_log: Some((&first_binlog, 4)),
    };
    ok(client.execute(&db_flavor.change_source_to_relay_logs(&relay_start)));

    // First stop by relay log position, which both flavours have: relay.000001 is a byte copy
    // of the first binlog, so the offsets are the source's.
    assert_eq!(early_mark.file, first_binlog);
    let relay_until = ApplyUntil::RelayPosition {
        file: relay_start.relay_log_file,
        pos: early_mark.position,
    };
    ok(client.execute(&ok_flavor(db_flavor.start_sql_thread(Some(&relay_until)))));
    let stopped = wait_for_sql_thread_stop(&mut client, Duration::from_secs(120));
    eprintln!("{}: stopped at the early mark: {stopped:?}", flavor.name());
    let count: u64 = target.query_value("SELECT COUNT(*) FROM shop.items");
    assert_eq!(
        count, 5,
        "exactly the rows before the early mark are applied"
    );
    assert_eq!(stopped.until_condition, UntilCondition::RelayPosition);
    assert_eq!(stopped.until_log_file, relay_start.relay_log_file);
    assert_eq!(stopped.until_log_pos, early_mark.position);
    assert_eq!(stopped.relay_log_pos, early_mark.position);
    assert_eq!(
        ok(client.gtid_state()).executed(),
        early_mark.gtids.to_gtid_set()
    );

    // Then stop at the mark: MySQL by GTID, MariaDB by the source binlog position.
    let mark_gtids = mark.gtids.to_gtid_set();
    let until = match db_flavor {
        myhoard::db::Flavor::MySql(_) => ApplyUntil::AfterGtids(&mark_gtids),
        myhoard::db::Flavor::MariaDb(_) => ApplyUntil::SourcePosition {
            file: &mark.file,
            pos: mark.position,
        },
    };
    if db_flavor.is_mariadb() {
        // The GTID form is refused before it reaches the server.
        assert!(
            db_flavor
                .start_sql_thread(Some(&ApplyUntil::AfterGtids(&mark_gtids)))
                .is_err()
        );
    }
    ok(client.execute(&ok_flavor(db_flavor.start_sql_thread(Some(&until)))));
    let stopped = wait_for_sql_thread_stop(&mut client, Duration::from_secs(120));
    eprintln!("{}: stopped at the mark: {stopped:?}", flavor.name());
    assert_eq!(stopped.source_host, "dummy");
    assert_eq!(stopped.io_running, "No");
    let count: u64 = target.query_value("SELECT COUNT(*) FROM shop.items");
    assert_eq!(count, 10, "exactly the first batch is applied");
    match db_flavor {
        myhoard::db::Flavor::MySql(_) => {
            assert!(
                matches!(
                    stopped.until_condition,
                    UntilCondition::SqlAfterGtids | UntilCondition::Done
                ),
                "{stopped:?}"
            );
            let executed = ok(client.gtid_state()).executed();
            assert_eq!(executed, mark_gtids);
            assert_eq!(stopped.executed_gtids.as_ref(), Some(&mark_gtids));
        }
        myhoard::db::Flavor::MariaDb(_) => {
            assert_eq!(stopped.until_condition, UntilCondition::SourcePosition);
            assert_eq!(stopped.until_log_file, mark.file);
            assert_eq!(stopped.until_log_pos, mark.position);
            assert_eq!(stopped.exec_source_log_pos, mark.position);
            assert_eq!(stopped.relay_source_log_file, mark.file);
            assert_eq!(stopped.using_gtid.as_deref(), Some("No"));
            let GtidState::MariaDb { slave_pos, .. } = ok(client.gtid_state()) else {
                panic!("not a MariaDB state");
            };
            assert_eq!(ServerGtids::MariaDb(slave_pos), mark.gtids);
        }
    }

    // Resume without UNTIL: everything else is applied.
    ok(client.execute(&ok_flavor(db_flavor.start_sql_thread(None))));
    wait_for_applied(&mut client, &all, Duration::from_secs(120));
    let count: u64 = target.query_value("SELECT COUNT(*) FROM shop.items");
    assert_eq!(count, 25);
    assert_eq!(target.checksum_all_tables(), source.checksum_all_tables());
    // The SQL thread then goes idle on the hot relay log the server added after the copies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let status = ok(client.replica_status()).expect("a replica status row");
        if status.sql_running_state.contains("read all relay log") || Instant::now() >= deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{}: caught up: {running:?}", flavor.name());
    assert_eq!(running.relay_log_file, db_flavor.log_file_name("relay", 3));
    assert!(running.sql_running);
    assert_eq!(running.until_condition, UntilCondition::None);
    assert!(
        running.sql_running_state.contains("read all relay log"),
        "{running:?}"
    );
    assert_eq!(running.last_sql_errno, 0);

    // Finish: stop, forget the dummy source.
    ok(client.execute(&db_flavor.stop_replica_statement()));
    let stopped = ok(client.replica_status()).expect("a replica status row");
    assert!(!stopped.sql_running);
    ok(client.execute(&db_flavor.reset_replica_all_statement()));
    assert_eq!(ok(client.replica_status()), None);

    // GTID state of a restored server, set from the source's.
    let source_state = ok(source_client.gtid_state());
    ok(client.execute_all(&ok_flavor(db_flavor.restore_gtid_state_statements(&all))));
    match (ok(client.gtid_state()), &source_state) {
        (GtidState::MySql { executed, purged }, _) => {
            assert_eq!(executed, all);
            assert_eq!(purged, all);
        }
        (
            GtidState::MariaDb { slave_pos, .. },
            GtidState::MariaDb {
                binlog_state: source_binlog_state,
                ..
            },
        ) => {
            assert_eq!(slave_pos.to_gtid_set(), all);
            // The restored server's binlog continues the source's history.
            let statements =
                ok_flavor(db_flavor.set_gtid_binlog_state_statements(source_binlog_state));
            ok(client.execute_all(&statements));
            let GtidState::MariaDb { binlog_state, .. } = ok(client.gtid_state()) else {
                panic!("not a MariaDB state");
            };
            assert_eq!(&binlog_state, source_binlog_state);
            ok(client.execute("SET GLOBAL read_only = OFF"));
            target.sql("INSERT INTO shop.items VALUES (26, 'local')");
            let GtidState::MariaDb { binlog_pos, .. } = ok(client.gtid_state()) else {
                panic!("not a MariaDB state");
            };
            assert_eq!(
                binlog_pos.to_string(),
                "0-2-28",
                "the next local write continues the sequence"
            );
        }
        (state, source) => panic!("mixed flavours: {state:?} vs {source:?}"),
    }
}

fn ok_flavor<T>(result: Result<T, myhoard::db::flavor::Error>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn mariadb_relay_log_replay() {
    relay_log_replay(ServerFlavor::MariaDb);
}

#[test]
fn mysql_relay_log_replay() {
    relay_log_replay(ServerFlavor::MySql);
}

//! Proves the database harness (`harness::db`, `harness::load`) on both flavours with real
//! servers: the load generator fills binlogs and advances GTIDs by exactly the transactions it
//! committed, data survives a clean restart and a `kill -9`, a replica catches up with identical
//! checksums, and the `mysql` crate logs in over TCP, TLS and the socket.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, OptsBuilder};

use crate::harness::db::{DbOptions, DbServer, Flavor, PASSWORD, USER};
use crate::harness::load::{GTID_TAG, LOAD_DATABASE, Load, Until};

macro_rules! flavour_tests {
    ($module:ident, $flavor:expr) => {
        mod $module {
            #[test]
            fn load_writes_binlogs_and_gtids() {
                super::load_writes_binlogs_and_gtids($flavor);
            }

            #[test]
            fn data_survives_clean_restart_and_kill9() {
                super::data_survives_clean_restart_and_kill9($flavor);
            }

            #[test]
            fn replica_catches_up_with_identical_checksums() {
                super::replica_catches_up_with_identical_checksums($flavor);
            }

            #[test]
            fn password_login_over_tcp_and_socket() {
                super::password_login_over_tcp_and_socket($flavor);
            }
        }
    };
}

flavour_tests!(mariadb, crate::harness::db::Flavor::MariaDb);
flavour_tests!(mysql, crate::harness::db::Flavor::MySql);

/// How many transactions a GTID position stands for. MySQL: the sum of the interval lengths of
/// the set (tagged GTIDs included). MariaDB: the sum of the sequence numbers over domains, which
/// is the count when, as here, each domain has one writer and strict mode.
fn gtid_count(flavor: Flavor, position: &str) -> u64 {
    let mut count = 0;
    for part in position
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match flavor {
            Flavor::MySql => {
                // uuid:1-5:tag:1-3:7
                for token in part.split(':').skip(1) {
                    if !token.starts_with(|c: char| c.is_ascii_digit()) {
                        continue; // a tag
                    }
                    let (start, end) = token.split_once('-').unwrap_or((token, token));
                    let start: u64 = start.parse().expect("GTID interval start");
                    let end: u64 = end.parse().expect("GTID interval end");
                    count += end - start + 1;
                }
            }
            Flavor::MariaDb => {
                let seq = part.rsplit('-').next().expect("domain-server-seq");
                count += seq.parse::<u64>().expect("GTID sequence number");
            }
        }
    }
    count
}

fn load_writes_binlogs_and_gtids(flavor: Flavor) {
    let Some(server) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };
    let gtids_before = gtid_count(flavor, &server.gtid_executed());

    let stats = Load::run(&server, Until::Duration(Duration::from_secs(4)), 7).join();
    assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
    assert!(
        stats.transactions >= 20,
        "too little load in 4 s: {stats:?}"
    );
    eprintln!("{} load: {stats:?}", flavor.name());

    // Every committed transaction got exactly one GTID; the load's own CREATE statements
    // (database and three tables per worker, each its own GTID) come on top.
    let setup_statements = 1 + 3 * 2;
    let gtid_position = server.gtid_executed();
    assert_eq!(
        gtid_count(flavor, &gtid_position) - gtids_before,
        stats.transactions + setup_statements,
        "GTIDs added against transactions committed; position {gtid_position}, {stats:?}"
    );
    if flavor == Flavor::MySql && stats.transactions >= 100 {
        // One transaction in ten is tagged: with this many, some are.
        assert!(stats.tagged_transactions > 0, "{stats:?}");
        assert!(
            gtid_position.contains(&format!(":{GTID_TAG}:")),
            "no tagged GTID in {gtid_position}"
        );
    }
    let rows: u64 = server.query_value(&format!("SELECT COUNT(*) FROM {LOAD_DATABASE}.kv_0"));
    assert!(rows > 0, "the load left kv_0 empty");

    // Binlogs: under the prefix, numbered, real binlog files, the same list the server shows.
    let files = server.binlog_files();
    assert!(
        !files.is_empty(),
        "no binlog in {}",
        server.binlog_index().display()
    );
    let prefix = server.binlog_prefix().display().to_string();
    let mut total_size = 0;
    for file in &files {
        let name = file.display().to_string();
        let suffix = name
            .strip_prefix(&format!("{prefix}."))
            .unwrap_or_else(|| panic!("{name} is not under the prefix {prefix}"));
        assert!(
            suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_digit()),
            "binlog name {name}"
        );
        assert_eq!(read_magic(file), *b"\xfebin", "{name} is not a binlog");
        total_size += fs::metadata(file).expect("binlog metadata").len();
    }
    assert!(
        total_size >= stats.payload_bytes,
        "binlogs ({total_size} bytes) smaller than the payload committed ({} bytes)",
        stats.payload_bytes
    );
    let shown: Vec<String> = server
        .query_rows("SHOW BINARY LOGS")
        .into_iter()
        .map(|row| row.get::<String, _>(0).expect("Log_name"))
        .collect();
    let listed: Vec<String> = files
        .iter()
        .map(|file| {
            file.file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(shown, listed);

    // The flavour's own mysqlbinlog reads them (for MySQL: sid's, through its loader).
    let Some(mysqlbinlog) = flavor.tool("mysqlbinlog") else {
        return;
    };
    let output = Command::new(&mysqlbinlog)
        .arg("--no-defaults")
        .arg(&files[0])
        .output()
        .expect("running mysqlbinlog");
    assert!(
        output.status.success(),
        "{} {}: {}",
        mysqlbinlog.display(),
        files[0].display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let gtid_marker = match flavor {
        Flavor::MySql => "SET @@SESSION.GTID_NEXT=",
        Flavor::MariaDb => "GTID 0-1-",
    };
    assert!(
        text.matches(gtid_marker).count() as u64 >= stats.transactions,
        "mysqlbinlog shows fewer than {} GTIDs in {}",
        stats.transactions,
        files[0].display()
    );

    server.flush_binary_logs();
    assert_eq!(
        server.binlog_files().len(),
        files.len() + 1,
        "FLUSH BINARY LOGS opened no new binlog"
    );
}

fn read_magic(path: &Path) -> [u8; 4] {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    magic
}

fn data_survives_clean_restart_and_kill9(flavor: Flavor) {
    let Some(mut server) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };
    let stats = Load::run(&server, Until::Transactions(150), 11).join();
    assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
    let checksums = server.checksum_all_tables();
    assert!(
        checksums
            .keys()
            .any(|table| table.starts_with(LOAD_DATABASE)),
        "no load table checksummed: {checksums:?}"
    );
    let gtids = server.gtid_executed();

    server.restart();
    assert_eq!(
        server.checksum_all_tables(),
        checksums,
        "contents changed across a clean restart"
    );
    assert_eq!(server.gtid_executed(), gtids);

    let stats = Load::run(&server, Until::Transactions(100), 12).join();
    assert!(
        stats.errors.is_empty(),
        "the load failed after the restart: {stats:?}"
    );
    let checksums = server.checksum_all_tables();
    let gtids = server.gtid_executed();
    server.kill9();
    server.start_again();
    assert_eq!(
        server.checksum_all_tables(),
        checksums,
        "contents changed across kill -9 with no load"
    );
    assert_eq!(server.gtid_executed(), gtids);

    // kill -9 in the middle of a load: every transaction the client saw committed survives, and
    // at most one more per worker (committed, but killed before the reply came back).
    let before = gtid_count(flavor, &gtids);
    let load = Load::run(&server, Until::Stopped, 13);
    thread::sleep(Duration::from_millis(2500));
    server.kill9();
    let stats = load.join();
    assert_eq!(
        stats.errors.len(),
        2,
        "both workers should have lost the server: {stats:?}"
    );
    assert!(
        stats.transactions > 0,
        "no transaction before the kill: {stats:?}"
    );
    server.start_again();
    let after = gtid_count(flavor, &server.gtid_executed());
    assert!(
        after >= before + stats.transactions && after <= before + stats.transactions + 2,
        "after the crash the server has {after} GTIDs; {before} before the load, which committed {}",
        stats.transactions
    );
    // Recovered and writable, and stable from here on.
    let stats = Load::run(&server, Until::Transactions(50), 14).join();
    assert!(
        stats.errors.is_empty(),
        "the load failed after crash recovery: {stats:?}"
    );
    let checksums = server.checksum_all_tables();
    server.restart();
    assert_eq!(server.checksum_all_tables(), checksums);
}

fn replica_catches_up_with_identical_checksums(flavor: Flavor) {
    let Some(source) = DbServer::start(flavor, DbOptions::server_id(1)) else {
        return;
    };
    let replica_options = DbOptions {
        server_id: 2,
        read_only: true,
        ..DbOptions::default()
    };
    // Created stopped and started later, as a restore target would be.
    let mut replica =
        DbServer::create(flavor, replica_options).expect("the source started, so the replica can");
    replica.start_again();
    replica.replicate_from(&source);

    let stats = Load::run(&source, Until::Duration(Duration::from_secs(4)), 21).join();
    assert!(stats.errors.is_empty(), "the load failed: {stats:?}");
    replica.wait_until_caught_up(&source, Duration::from_secs(120));

    let source_checksums = source.checksum_all_tables();
    assert!(source_checksums.contains_key(&format!("{LOAD_DATABASE}.nopk_0")));
    assert_eq!(replica.checksum_all_tables(), source_checksums);
    assert_eq!(replica.gtid_executed(), source.gtid_executed());

    let status = replica.replica_status();
    let io_running = status
        .get("Replica_IO_Running")
        .or_else(|| status.get("Slave_IO_Running"))
        .map(String::as_str);
    assert_eq!(io_running, Some("Yes"), "{status:?}");
    let relay_logs = replica.relay_log_files();
    assert!(!relay_logs.is_empty(), "the replica has no relay log");
    for file in &relay_logs {
        assert!(
            file.starts_with(replica.relay_log_prefix().parent().expect("relay dir"))
                && file
                    .display()
                    .to_string()
                    .starts_with(&replica.relay_log_prefix().display().to_string()),
            "relay log {} is not under the prefix",
            file.display()
        );
    }
    assert!(
        !replica.binlog_files().is_empty(),
        "log_replica_updates: the replica has binlogs too"
    );
}

fn password_login_over_tcp_and_socket(flavor: Flavor) {
    let Some(server) = DbServer::start(flavor, DbOptions::default()) else {
        return;
    };
    let expected_plugin = match flavor {
        Flavor::MySql => "caching_sha2_password",
        Flavor::MariaDb => "mysql_native_password",
    };
    let plugins: Vec<(String, String)> = server.query(&format!(
        "SELECT host, plugin FROM mysql.user WHERE user = '{USER}' ORDER BY host"
    ));
    assert_eq!(
        plugins,
        vec![
            ("%".to_owned(), expected_plugin.to_owned()),
            ("localhost".to_owned(), expected_plugin.to_owned())
        ]
    );

    // Cold cache (FLUSH PRIVILEGES empties MySQL's caching_sha2 cache: full authentication,
    // here through the server's RSA key), then warm (fast authentication).
    for round in ["cold", "warm"] {
        if round == "cold" {
            server.sql("FLUSH LOCAL PRIVILEGES");
        }
        let mut conn =
            Conn::new(server.tcp_opts()).unwrap_or_else(|err| panic!("{round} TCP login: {err}"));
        assert_eq!(transport(flavor, &mut conn), "TCP/IP", "{round} TCP login");
        assert_eq!(current_user(&mut conn), format!("{USER}@%"));
    }

    server.sql("FLUSH LOCAL PRIVILEGES");
    let mut conn = Conn::new(server.socket_opts()).expect("socket login");
    assert_eq!(transport(flavor, &mut conn), "Socket");
    assert_eq!(current_user(&mut conn), format!("{USER}@localhost"));

    if flavor == Flavor::MySql {
        server.sql("FLUSH LOCAL PRIVILEGES");
        let mut conn = Conn::new(server.tls_opts()).expect("TLS login");
        assert_eq!(transport(flavor, &mut conn), "SSL/TLS");
        let cipher: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .expect("Ssl_cipher");
        assert!(
            cipher.is_some_and(|(_, cipher)| !cipher.is_empty()),
            "no TLS cipher"
        );
    }

    // MyHoard's client_params, as its config has them.
    let params = server.client_params();
    let opts = OptsBuilder::new()
        .ip_or_hostname(params["host"].as_str())
        .tcp_port(
            params["port"]
                .as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .expect("port"),
        )
        .user(params["user"].as_str())
        .pass(params["password"].as_str())
        .prefer_socket(false);
    assert_eq!(params["require_ssl"], false);
    let mut conn = Conn::new(opts).expect("login with client_params");
    assert_eq!(
        conn.query_first::<u32, _>("SELECT 1").expect("SELECT 1"),
        Some(1)
    );

    let wrong = server.tcp_opts().pass(Some(format!("not-{PASSWORD}")));
    match Conn::new(wrong) {
        Err(::mysql::Error::MySqlError(error)) => assert_eq!(error.code, 1045, "{error}"),
        Err(other) => panic!("a wrong password gave {other:?}, not access denied"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
}

/// How this connection reaches the server: `TCP/IP`, `SSL/TLS` or `Socket`.
fn transport(flavor: Flavor, conn: &mut Conn) -> String {
    match flavor {
        Flavor::MySql => conn
            .query_first("SELECT CONNECTION_TYPE FROM performance_schema.threads WHERE PROCESSLIST_ID = CONNECTION_ID()")
            .expect("reading the connection type")
            .expect("this connection's thread"),
        // MariaDB's performance_schema is off by default; the processlist host tells.
        Flavor::MariaDb => {
            let host: String = conn
                .query_first("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
                .expect("reading the processlist")
                .expect("this connection in the processlist");
            if host == "localhost" { "Socket".to_owned() } else { "TCP/IP".to_owned() }
        }
    }
}

fn current_user(conn: &mut Conn) -> String {
    conn.query_first("SELECT CURRENT_USER()")
        .expect("CURRENT_USER()")
        .expect("a row")
}

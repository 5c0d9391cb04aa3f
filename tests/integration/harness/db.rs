//! Real database servers for tests: MariaDB 10.11 (Debian's `mariadbd`) and MySQL 9.7 (Debian
//! sid's, unpacked by `tests/install-db.sh` and run through its own dynamic loader).
//!
//! [`DbServer::start`] runs an independent server in a fresh temporary directory, on a free port
//! on 127.0.0.1 and a unix socket, set up the way MyHoard expects its servers:
//!
//! - binlogs on, `binlog_format=ROW`, under [`DbServer::binlog_prefix`] (`<dir>/binlog/binlog`,
//!   index `<dir>/binlog/binlog.index`), so files are `binlog.000001`, `binlog.000002`, ...;
//! - GTIDs: MySQL `gtid_mode=ON` and `enforce_gtid_consistency=ON`; MariaDB's native GTIDs with
//!   `gtid_strict_mode=ON`; replicated transactions are logged too (`log_replica_updates` /
//!   `log_slave_updates`);
//! - relay logs under [`DbServer::relay_log_prefix`] (`<dir>/relay/relay`, index
//!   `<dir>/relay/relay.index`), `relay_log_recovery=OFF`, replication threads not started at
//!   boot (`skip-replica-start` / `skip-slave-start`);
//! - InnoDB, the given `server_id` and `read_only`, `skip-name-resolve`;
//! - durability relaxed to what survives a process crash (`innodb_flush_log_at_trx_commit=2`,
//!   `sync_binlog=0`): a `kill -9` loses nothing, only a machine crash could. The machines are
//!   small and busy; override with [`DbOptions::extra_cnf`] when a test needs fsyncs;
//! - the account [`USER`]@`localhost` (socket) and [`USER`]@`%` (TCP) with [`PASSWORD`] and every
//!   privilege, using the server's default auth plugin: `caching_sha2_password` on MySQL 9.7 (the
//!   only one it has), `mysql_native_password` on MariaDB. No other root account exists.
//!
//! Everything is in the server's directory ([`DbServer::dir`]): `my.cnf` (the whole server
//! configuration, passed as `--defaults-file`; its `[client]` group has the socket, user and
//! password), `data/`, `binlog/`, `relay/`, `tmp/`, `files/` (`secure_file_priv`) and
//! `mysqld.err` (the error log, which also gets the process's stdout and stderr).
//!
//! Initialising a data directory is slow (here MariaDB 4-6 s, MySQL 6-8 s), so each test process
//! initialises one template per flavour, the first time it starts a server of that flavour, and
//! copies it for every server (MySQL copies lose `auto.cnf`, so each server gets its own
//! `server_uuid`). The templates are temporary directories removed at exit: nothing is cached
//! across processes. nextest runs every test in a process of its own, so a test pays this once
//! per flavour it uses, however many servers it starts.
//!
//! Servers are killed (SIGKILL) when dropped, and by the kernel when the test process dies
//! (`PR_SET_PDEATHSIG`, see [`super::ServerProcess`]), so none outlives its test, panics
//! included. [`DbServer::stop`] is the clean shutdown (SIGTERM, as a service manager does).
//!
//! The API at a glance:
//!
//! ```ignore
//! let Some(mut source) = DbServer::start(Flavor::MySql, DbOptions::server_id(1)) else {
//!     return; // not installed, and not under CI
//! };
//! source.sql("CREATE DATABASE db1; CREATE TABLE db1.t (id INT PRIMARY KEY)");
//! let n: u64 = source.query_value("SELECT COUNT(*) FROM db1.t");
//! let gtids = source.gtid_executed();          // MySQL gtid_executed / MariaDB gtid_binlog_pos
//! source.flush_binary_logs();
//! let binlogs = source.binlog_files();         // <dir>/binlog/binlog.000001, ...
//! let config = source.myhoard_mysql_config();  // MyHoard's `mysql` section, client_params included
//!
//! let replica = DbServer::start(Flavor::MySql, DbOptions::server_id(2)).expect("replica");
//! replica.replicate_from(&source);
//! replica.wait_until_caught_up(&source, Duration::from_secs(60));
//! assert_eq!(replica.checksum_all_tables(), source.checksum_all_tables());
//!
//! source.restart();   // clean: SIGTERM, wait, start on the same directory and port
//! source.kill9();     // crash
//! source.start_again();
//! ```
//!
//! [`DbServer::create`] prepares a server without starting it (a restore target), and
//! [`DbServer::mysqld_command`] is the command line that starts it, for code that starts the
//! server itself. [`Flavor::tool`] finds the matching `mysqlbinlog`, `mysql`, ... . The load
//! generator is in [`super::load`].
//!
//! When the server binaries are missing, [`DbServer::start`] prints a note and returns `None`
//! (the test then passes vacuously), except under `CI`, where it panics: see
//! [`super::require_tool`].

// An API for every integration test that needs a server; not all of it is used by each build.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mysql::prelude::{FromRow, FromValue, Queryable};
use mysql::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn, Row, SslOpts};
use serde_json::json;
use tempfile::TempDir;

use super::{
    ServerProcess, at_exit, free_port, lock, log_tail, require_tool,
    spawn_with_parent_death_signal, tools_dir, wait_until,
};

/// The account every server has, for both the socket (`root@localhost`) and TCP (`root@%`).
pub const USER: &str = "root";
/// [`USER`]'s password.
pub const PASSWORD: &str = "myhoard-test-pw";

/// How long a server may take to start (crash recovery included) or to shut down. Generous:
/// the machines have 2 cores and run other tests at the same time.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// MariaDB 10.11 from Debian bookworm (`mariadbd`, `mariadb-install-db`).
    MariaDb,
    /// MySQL 9.7 from Debian sid, from `<tools>/mysql97/bin/mysqld` (`tests/install-db.sh`).
    MySql,
}

impl Flavor {
    /// Both flavours, for tests that run against each.
    pub const ALL: [Flavor; 2] = [Flavor::MariaDb, Flavor::MySql];

    /// `"mariadb"` or `"mysql"`.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::MariaDb => "mariadb",
            Flavor::MySql => "mysql",
        }
    }

    /// A client tool of this flavour: `"mysql"`, `"mysqlbinlog"`, `"mysqladmin"` or
    /// `"mysqldump"`. MariaDB: its own names (`mariadb`, `mariadb-binlog`, ...); MySQL: the
    /// wrappers in [`mysql97_bin_dir`]. Each reads no defaults files unless given
    /// `--defaults-file` (MySQL's wrappers ensure it; pass `--no-defaults` first to MariaDB's).
    /// `None` (with a note) when missing outside CI, like [`super::require_tool`].
    pub fn tool(self, name: &str) -> Option<PathBuf> {
        match self {
            Flavor::MariaDb => {
                let mariadb_name = match name {
                    "mysql" => "mariadb",
                    "mysqlbinlog" => "mariadb-binlog",
                    "mysqladmin" => "mariadb-admin",
                    "mysqldump" => "mariadb-dump",
                    other => other,
                };
                require_tool(mariadb_name)
            }
            Flavor::MySql => require_tool(&mysql97_bin_dir().join(name).to_string_lossy()),
        }
    }

    fn index(self) -> usize {
        match self {
            Flavor::MariaDb => 0,
            Flavor::MySql => 1,
        }
    }
}

/// Where `tests/install-db.sh` puts the MySQL 9.7 wrappers (`mysqld`, `mysql`, `mysqlbinlog`,
/// `mysqladmin`, `mysqldump`). They are not in `<tools>/bin`, so that `mysql` and `mysqlbinlog`
/// in `PATH` stay MariaDB's.
pub fn mysql97_bin_dir() -> PathBuf {
    tools_dir().join("mysql97").join("bin")
}

/// Options for [`DbServer::start`]. `DbOptions::default()` is server_id 1, writable.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// `server_id`; servers that replicate from each other need different ones.
    pub server_id: u32,
    /// `read_only` at startup (MyHoard's standbys run read-only).
    pub read_only: bool,
    /// Lines appended to the `[mysqld]` group of `my.cnf`, after the harness's own, so they win:
    /// for example `"plugin-load-add=mysql_clone.so"` (MySQL's clone plugin) or
    /// `"innodb_flush_log_at_trx_commit=1"`.
    pub extra_cnf: Vec<String>,
}

impl Default for DbOptions {
    fn default() -> DbOptions {
        DbOptions {
            server_id: 1,
            read_only: false,
            extra_cnf: Vec::new(),
        }
    }
}

impl DbOptions {
    /// The defaults with another `server_id`.
    pub fn server_id(server_id: u32) -> DbOptions {
        DbOptions {
            server_id,
            ..DbOptions::default()
        }
    }
}

/// The programs one flavour needs.
#[derive(Debug, Clone)]
struct Binaries {
    /// `mariadbd`, or the MySQL `mysqld` wrapper.
    mysqld: PathBuf,
    /// `mariadb-install-db`; MySQL initialises with `mysqld --initialize-insecure`.
    install_db: Option<PathBuf>,
}

impl Binaries {
    fn find(flavor: Flavor) -> Option<Binaries> {
        match flavor {
            Flavor::MariaDb => {
                // /usr/sbin is not in every user's PATH.
                let mysqld = if is_file(Path::new("/usr/sbin/mariadbd")) {
                    require_tool("/usr/sbin/mariadbd")?
                } else {
                    require_tool("mariadbd")?
                };
                let install_db = require_tool("mariadb-install-db")?;
                Some(Binaries {
                    mysqld,
                    install_db: Some(install_db),
                })
            }
            Flavor::MySql => {
                let mysqld = mysql97_bin_dir().join("mysqld");
                let mysqld = require_tool(&mysqld.to_string_lossy())?;
                Some(Binaries {
                    mysqld,
                    install_db: None,
                })
            }
        }
    }
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file())
}

/// One running (or stopped) server. Killed when dropped, then its directory is removed.
pub struct DbServer {
    flavor: Flavor,
    options: DbOptions,
    binaries: Binaries,
    port: u16,
    version: String,
    // Fields drop in declaration order: connections first, then the server, then its files.
    pool: Option<Pool>,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl std::fmt::Debug for DbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbServer")
            .field("flavor", &self.flavor)
            .field("server_id", &self.options.server_id)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("running", &self.process.is_some())
            .finish()
    }
}

impl DbServer {
    /// Starts a fresh server of `flavor` and waits until it accepts connections.
    ///
    /// Returns `None` (after printing why) when the server binaries are not installed and `CI`
    /// is not set. Panics, with the server's error log, when it does not come up.
    pub fn start(flavor: Flavor, options: DbOptions) -> Option<DbServer> {
        let (binaries, template) = binaries_and_template(flavor)?;
        let mut failures = Vec::new();
        // A port picked as free can be taken by another process before the server binds it;
        // a fresh directory and port fix that.
        for _ in 0..3 {
            let mut server =
                DbServer::prepared(flavor, options.clone(), binaries.clone(), &template);
            match server.launch() {
                Ok(()) => return Some(server),
                Err(error) => {
                    let port_taken = error.contains("already in use");
                    failures.push(error);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "{} did not start:\n{}",
            flavor.name(),
            failures.join("\n---\n")
        );
    }

    /// Like [`DbServer::start`], but leaves the server stopped: its directory, `my.cnf` and an
    /// initialised data directory are ready, and [`DbServer::start_again`] starts it. For restore
    /// targets: empty or replace [`DbServer::data_dir`] first, or let the code under test start
    /// it with [`DbServer::mysqld_command`].
    pub fn create(flavor: Flavor, options: DbOptions) -> Option<DbServer> {
        let (binaries, template) = binaries_and_template(flavor)?;
        Some(DbServer::prepared(flavor, options, binaries, &template))
    }

    fn prepared(
        flavor: Flavor,
        options: DbOptions,
        binaries: Binaries,
        template: &Path,
    ) -> DbServer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("myhoard-db-{}-", flavor.name()))
            .tempdir()
            .expect("creating the server directory");
        let server = DbServer {
            flavor,
            options,
            binaries,
            port: free_port(),
            version: String::new(),
            pool: None,
            process: None,
            dir,
        };
        if let Err(error) = server.prepare(template) {
            panic!("preparing {}: {error}", server.dir.path().display());
        }
        server
    }

    /// Copies the template data directory and writes `my.cnf`.
    fn prepare(&self, template: &Path) -> io::Result<()> {
        let dir = self.dir.path();
        if self.socket().as_os_str().len() > 100 {
            return Err(io::Error::other(format!(
                "the socket path {} is too long for a unix socket; set TMPDIR to a shorter directory",
                self.socket().display()
            )));
        }
        copy_dir(&template.join("data"), &self.data_dir())?;
        if self.flavor == Flavor::MySql {
            // Every copy would otherwise have the template's server_uuid.
            fs::remove_file(self.data_dir().join("auto.cnf"))?;
        }
        for sub in ["binlog", "relay", "tmp", "files"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(self.config_file(), self.my_cnf())
    }

    fn my_cnf(&self) -> String {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        let mut lines: Vec<String> = vec!["[mysqld]".into()];
        if running_as_root() {
            lines.push("user=root".into());
        }
        lines.extend([
            format!("datadir={}", self.data_dir().display()),
            format!("tmpdir={}", path("tmp")),
            format!("socket={}", self.socket().display()),
            format!("port={}", self.port),
            "bind-address=127.0.0.1".into(),
            format!("pid-file={}", path("mysqld.pid")),
            format!("log-error={}", self.error_log().display()),
            format!("secure-file-priv={}", path("files")),
            "skip-name-resolve=ON".into(),
            format!("server-id={}", self.options.server_id),
            format!("log-bin={}", self.binlog_prefix().display()),
            format!("log-bin-index={}", self.binlog_index().display()),
            "binlog-format=ROW".into(),
            format!("relay-log={}", self.relay_log_prefix().display()),
            format!("relay-log-index={}", self.relay_log_index().display()),
            "relay-log-recovery=OFF".into(),
            format!(
                "read-only={}",
                if self.options.read_only { "ON" } else { "OFF" }
            ),
            "default-storage-engine=InnoDB".into(),
            "innodb-buffer-pool-size=128M".into(),
            "max-allowed-packet=64M".into(),
            "innodb-flush-log-at-trx-commit=2".into(),
            "sync-binlog=0".into(),
        ]);
        match self.flavor {
            Flavor::MySql => lines.extend(
                [
                    "gtid-mode=ON",
                    "enforce-gtid-consistency=ON",
                    "log-replica-updates=ON",
                    "skip-replica-start=ON",
                    "mysqlx=OFF",
                    "innodb-redo-log-capacity=64M",
                ]
                .map(String::from),
            ),
            Flavor::MariaDb => lines.extend(
                [
                    "gtid-strict-mode=ON",
                    "log-slave-updates=ON",
                    "skip-slave-start",
                    "innodb-log-file-size=64M",
                ]
                .map(String::from),
            ),
        }
        lines.extend(self.options.extra_cnf.iter().cloned());
        lines.extend([
            String::new(),
            "[client]".into(),
            format!("socket={}", self.socket().display()),
            format!("user={USER}"),
            format!("password={PASSWORD}"),
        ]);
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// Spawns the server on the existing directory and waits until it answers.
    fn launch(&mut self) -> Result<(), String> {
        let [program, args @ ..] = &self.mysqld_command()[..] else {
            return Err("empty mysqld command".to_owned());
        };
        let mut command = Command::new(program);
        command.args(args);
        let name = format!(
            "{} (server_id {})",
            self.flavor.name(),
            self.options.server_id
        );
        let mut process = ServerProcess::spawn(&name, command, &self.error_log())
            .map_err(|err| format!("spawning {}: {err}", self.binaries.mysqld.display()))?;
        let opts = self.socket_opts();
        let ready = wait_until(
            "the server to accept connections",
            START_TIMEOUT,
            &mut process,
            || {
                let mut conn = Conn::new(opts.clone()).map_err(|err| err.to_string())?;
                conn.query_first::<String, _>("SELECT VERSION()")
                    .map_err(|err| err.to_string())?
                    .ok_or_else(|| "SELECT VERSION() returned no row".to_owned())
            },
        );
        match ready {
            Ok(version) => {
                self.version = version;
                self.pool = Some(
                    Pool::new(self.socket_opts_builder().pool_opts(
                        PoolOpts::default().with_constraints(PoolConstraints::new_const::<0, 32>()),
                    ))
                    .map_err(|err| format!("creating the connection pool: {err}"))?,
                );
                self.process = Some(process);
                Ok(())
            }
            Err(error) => {
                process.kill();
                Err(format!(
                    "{name} on port {}: {error}\n{}:\n{}",
                    self.port,
                    self.error_log().display(),
                    log_tail(&self.error_log(), 40)
                ))
            }
        }
    }

    // --- lifecycle ---------------------------------------------------------------------------

    /// Whether the server process is running (started and neither stopped nor killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(process) => process.exit_status().is_none(),
            None => false,
        }
    }

    /// Clean shutdown: SIGTERM, then waits for the process to exit. Panics, with the error log,
    /// when it does not exit within 3 minutes (it is then killed) or exits with an error. Does
    /// nothing when the server is not running.
    pub fn stop(&mut self) {
        self.pool = None;
        let Some(mut process) = self.process.take() else {
            return;
        };
        if process.exit_status().is_none() {
            // The process is our unreaped child, so its PID cannot have been reused.
            // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
            let sent = unsafe { kill(process.pid() as i32, SIGTERM) };
            if sent != 0 {
                let error = io::Error::last_os_error();
                process.kill();
                panic!("sending SIGTERM to {}: {error}", process.pid());
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = process.exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                process.kill();
                panic!(
                    "{} did not shut down within {STOP_TIMEOUT:?} of SIGTERM; killed it. Log:\n{}",
                    self.flavor.name(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{} exited with {status} on shutdown. Log:\n{}",
            self.flavor.name(),
            self.log_tail()
        );
    }

    /// Kills the server with SIGKILL (a crash: no shutdown, InnoDB recovers at the next start)
    /// and reaps it. Does nothing when it is not running.
    pub fn kill9(&mut self) {
        self.pool = None;
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same directory, port and configuration (after
    /// [`DbServer::stop`] or [`DbServer::kill9`]) and waits until it answers. Panics when it is
    /// still running or does not come up.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: the server is still running"
        );
        self.process = None;
        if let Err(error) = self.launch() {
            panic!("{} did not start again: {error}", self.flavor.name());
        }
    }

    /// Connects to a server on this directory that something else started (myhoard's
    /// `start_command` during a restore), for queries; the harness does not own its process.
    pub fn attach_to_running(&mut self) {
        match Pool::new(self.socket_opts()) {
            Ok(pool) => self.pool = Some(pool),
            Err(err) => panic!("connecting to the {} server: {err}", self.flavor.name()),
        }
    }

    /// [`DbServer::stop`], then [`DbServer::start_again`].
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Rewrites `my.cnf` with changed options (for example `read_only`, or extra lines); takes
    /// effect at the next [`DbServer::start_again`].
    pub fn set_options(&mut self, options: DbOptions) {
        self.options = options;
        if let Err(err) = fs::write(self.config_file(), self.my_cnf()) {
            panic!("writing {}: {err}", self.config_file().display());
        }
    }

    // --- where things are --------------------------------------------------------------------

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// `SELECT VERSION()` at the last start, for example `9.7.4-2` or `10.11.14-MariaDB-0+deb12u2-log`.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn options(&self) -> &DbOptions {
        &self.options
    }

    pub fn server_id(&self) -> u32 {
        self.options.server_id
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (everything below is removed when the server is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The unix socket (`<dir>/mysqld.sock`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// `datadir` (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `my.cnf`, the server's whole configuration (`--defaults-file`). Tools such as
    /// `mariabackup --defaults-file=...` can read it; its `[client]` group has socket, user and
    /// password.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("my.cnf")
    }

    /// The error log, which also receives the process's stdout and stderr.
    pub fn error_log(&self) -> PathBuf {
        self.dir.path().join("mysqld.err")
    }

    /// The last 60 lines of the error log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.error_log(), 60)
    }

    /// The binlog path prefix (`log_bin`): files are `<prefix>.000001`, ...
    pub fn binlog_prefix(&self) -> PathBuf {
        self.dir.path().join("binlog").join("binlog")
    }

    /// `log_bin_index`: one binlog path per line (full paths, as the prefix is one).
    pub fn binlog_index(&self) -> PathBuf {
        self.dir.path().join("binlog").join("binlog.index")
    }

    /// The binlog files listed in the index, oldest first (the last one is the active file).
    pub fn binlog_files(&self) -> Vec<PathBuf> {
        read_index(&self.binlog_index(), &self.dir.path().join("binlog"))
    }

    /// The relay log path prefix (`relay_log`): files are `<prefix>.000001`, ...
    pub fn relay_log_prefix(&self) -> PathBuf {
        self.dir.path().join("relay").join("relay")
    }

    /// `relay_log_index`.
    pub fn relay_log_index(&self) -> PathBuf {
        self.dir.path().join("relay").join("relay.index")
    }

    /// The relay log files listed in the index (empty when there is no index yet).
    pub fn relay_log_files(&self) -> Vec<PathBuf> {
        read_index(&self.relay_log_index(), &self.dir.path().join("relay"))
    }

    /// The command line that starts this server in the foreground, as MyHoard's
    /// `start_command` would run it: the server binary and `--defaults-file=<my.cnf>`. (For MySQL
    /// the binary is the wrapper that runs sid's mysqld through its own loader.)
    pub fn mysqld_command(&self) -> Vec<String> {
        vec![
            self.binaries.mysqld.display().to_string(),
            format!("--defaults-file={}", self.config_file().display()),
        ]
    }

    /// The PID of the running server process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    // --- client side -------------------------------------------------------------------------

    /// MyHoard's `mysql.client_params`: TCP to 127.0.0.1 with [`USER`] and [`PASSWORD`], no TLS.
    pub fn client_params(&self) -> serde_json::Value {
        json!({
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "require_ssl": false,
        })
    }

    /// MyHoard's whole `mysql` config section for this server.
    pub fn myhoard_mysql_config(&self) -> serde_json::Value {
        json!({
            "binlog_prefix": self.binlog_prefix(),
            "client_params": self.client_params(),
            "config_file_name": self.config_file(),
            "data_directory": self.data_dir(),
            "relay_log_index_file": self.relay_log_index(),
            "relay_log_prefix": self.relay_log_prefix(),
        })
    }

    /// Connection options for the unix socket as [`USER`], for `Conn::new` or `Pool::new`.
    pub fn socket_opts(&self) -> Opts {
        self.socket_opts_builder().into()
    }

    fn socket_opts_builder(&self) -> OptsBuilder {
        OptsBuilder::new()
            .socket(Some(self.socket().display().to_string()))
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
    }

    /// Connection options for plain TCP to 127.0.0.1 as [`USER`]. `prefer_socket` is off, so the
    /// connection really stays on TCP (the crate would otherwise switch to the socket). On MySQL
    /// the password goes through caching_sha2_password's RSA exchange (the crate asks the server
    /// for its public key by itself).
    pub fn tcp_opts(&self) -> OptsBuilder {
        OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(self.port)
            .prefer_socket(false)
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
    }

    /// [`DbServer::tcp_opts`] with TLS, trusting the server's own CA (`<datadir>/ca.pem`, which
    /// MySQL generates). Its certificates name no host, so the host name is not checked. MySQL
    /// only: these MariaDB servers run without TLS.
    pub fn tls_opts(&self) -> OptsBuilder {
        // Other crates in the test binary bring a second rustls provider, so rustls cannot pick
        // one by itself; an error means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        self.tcp_opts().ssl_opts(Some(
            SslOpts::default()
                .with_root_cert_path(Some(self.data_dir().join("ca.pem")))
                .with_danger_skip_domain_validation(true),
        ))
    }

    fn pool(&self) -> &Pool {
        match &self.pool {
            Some(pool) => pool,
            None => panic!("the {} server is not running", self.flavor.name()),
        }
    }

    /// A connection over the socket from the server's pool. Session state is reset when it goes
    /// back to the pool.
    pub fn conn(&self) -> PooledConn {
        match self.pool().get_conn() {
            Ok(conn) => conn,
            Err(err) => panic!(
                "connecting to {}: {err}\nLog:\n{}",
                self.flavor.name(),
                self.log_tail()
            ),
        }
    }

    /// Runs one or more statements (separated by `;`) and discards their results; panics on
    /// error. Each call uses its own session.
    pub fn sql(&self, statements: &str) {
        if let Err(err) = self.try_sql(statements) {
            panic!("{} failed: {err}\nin: {statements}", self.flavor.name());
        }
    }

    /// [`DbServer::sql`] returning the error instead of panicking.
    pub fn try_sql(&self, statements: &str) -> mysql::Result<()> {
        self.pool().get_conn()?.query_drop(statements)
    }

    /// All rows of a query (text protocol: every value converts to `String`).
    pub fn query_rows(&self, query: &str) -> Vec<Row> {
        self.query(query)
    }

    /// All rows of a query, converted (for example to `(String, u64)` tuples).
    pub fn query<T: FromRow>(&self, query: &str) -> Vec<T> {
        match self.conn().query(query) {
            Ok(rows) => rows,
            Err(err) => panic!("{} failed: {err}\nin: {query}", self.flavor.name()),
        }
    }

    /// The first column of the first row; panics when there is no row. For example
    /// `server.query_value::<String>("SELECT @@gtid_executed")`.
    pub fn query_value<T: FromValue>(&self, query: &str) -> T {
        match self.conn().query_first::<T, _>(query) {
            Ok(Some(value)) => value,
            Ok(None) => panic!("{query} returned no row"),
            Err(err) => panic!("{} failed: {err}\nin: {query}", self.flavor.name()),
        }
    }

    /// The server's executed GTIDs in its own syntax: MySQL `@@GLOBAL.gtid_executed` (a GTID
    /// set, possibly with tagged GTIDs, newlines removed), MariaDB `@@GLOBAL.gtid_binlog_pos`
    /// (the last `domain-server-seq` per domain in the binlog, replicated ones included).
    pub fn gtid_executed(&self) -> String {
        match self.flavor {
            Flavor::MySql => self
                .query_value::<String>("SELECT @@GLOBAL.gtid_executed")
                .replace('\n', ""),
            Flavor::MariaDb => self.query_value::<String>("SELECT @@GLOBAL.gtid_binlog_pos"),
        }
    }

    /// Closes the active binlog and opens the next one (`FLUSH BINARY LOGS`).
    pub fn flush_binary_logs(&self) {
        self.sql("FLUSH BINARY LOGS");
    }

    /// `CHECKSUM TABLE ... EXTENDED` of every base table outside the system schemas (`mysql`,
    /// `sys`, `information_schema`, `performance_schema`), keyed by `schema.table`. Equal maps
    /// mean equal contents on servers of the same flavour and version. Stop writers first: a
    /// table dropped meanwhile makes this panic.
    pub fn checksum_all_tables(&self) -> BTreeMap<String, u64> {
        let tables: Vec<(String, String)> = self.query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        );
        let mut conn = self.conn();
        let mut checksums = BTreeMap::new();
        for (schema, table) in tables {
            let statement = format!(
                "CHECKSUM TABLE {}.{} EXTENDED",
                quote_ident(&schema),
                quote_ident(&table)
            );
            let row: Option<(String, Option<u64>)> = match conn.query_first(&statement) {
                Ok(row) => row,
                Err(err) => panic!("{statement} failed: {err}"),
            };
            match row {
                Some((_, Some(checksum))) => {
                    checksums.insert(format!("{schema}.{table}"), checksum);
                }
                _ => panic!("{statement} returned no checksum: was the table dropped meanwhile?"),
            }
        }
        checksums
    }

    // --- replication -------------------------------------------------------------------------

    /// Makes this server a replica of `source` over TCP as [`USER`] and starts both replication
    /// threads. MariaDB: `CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos; START SLAVE`. MySQL:
    /// `CHANGE REPLICATION SOURCE TO ... SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1; START
    /// REPLICA` (caching_sha2_password over plain TCP).
    ///
    /// Both servers come from the same template, so a fresh replica can replicate a fresh source
    /// from its first binlog.
    pub fn replicate_from(&self, source: &DbServer) {
        assert_eq!(self.flavor, source.flavor, "replication across flavours");
        assert_ne!(
            self.options.server_id, source.options.server_id,
            "a replica needs a server_id of its own"
        );
        let statements = match self.flavor {
            Flavor::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{USER}', \
                 MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; \
                 START SLAVE",
                source.port
            ),
            Flavor::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={}, \
                 SOURCE_USER='{USER}', SOURCE_PASSWORD='{PASSWORD}', SOURCE_AUTO_POSITION=1, \
                 GET_SOURCE_PUBLIC_KEY=1, SOURCE_CONNECT_RETRY=1; START REPLICA",
                source.port
            ),
        };
        self.sql(&statements);
    }

    /// `SHOW REPLICA STATUS` (MySQL) or `SHOW SLAVE STATUS` (MariaDB) as column name to value;
    /// empty when no replication is configured.
    pub fn replica_status(&self) -> BTreeMap<String, String> {
        let statement = match self.flavor {
            Flavor::MySql => "SHOW REPLICA STATUS",
            Flavor::MariaDb => "SHOW SLAVE STATUS",
        };
        let rows = self.query_rows(statement);
        let Some(row) = rows.into_iter().next() else {
            return BTreeMap::new();
        };
        let columns = row.columns();
        let mut status = BTreeMap::new();
        for (index, column) in columns.iter().enumerate() {
            let value: Option<String> = row.get_opt(index).and_then(Result::ok).flatten();
            status.insert(column.name_str().into_owned(), value.unwrap_or_default());
        }
        status
    }

    /// Waits until this replica has applied every transaction `source` had executed when this
    /// was called (MySQL `WAIT_FOR_EXECUTED_GTID_SET`, MariaDB `MASTER_GTID_WAIT`). Panics with
    /// the replica status when the SQL thread fails, or after `timeout`.
    pub fn wait_until_caught_up(&self, source: &DbServer, timeout: Duration) {
        let target = source.gtid_executed();
        let query = match self.flavor {
            Flavor::MySql => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, 1)",
            Flavor::MariaDb => "SELECT MASTER_GTID_WAIT(?, 1)",
        };
        let deadline = Instant::now() + timeout;
        loop {
            let result: Option<i64> = match self.conn().exec_first(query, (target.as_str(),)) {
                Ok(row) => row,
                Err(err) => panic!("{query} failed: {err}"),
            };
            if result == Some(0) {
                return;
            }
            let status = self.replica_status();
            let sql_error = status
                .get("Last_SQL_Errno")
                .is_some_and(|errno| errno != "0");
            if sql_error || Instant::now() >= deadline {
                let mut message = format!(
                    "replica (server_id {}) did not catch up with {target:?} within {timeout:?}; it has {:?}\n",
                    self.options.server_id,
                    self.gtid_executed()
                );
                for (key, value) in &status {
                    if key.contains("Running") || key.contains("Error") || key.contains("Errno") {
                        let _ = writeln!(message, "  {key}: {value}");
                    }
                }
                panic!("{message}log:\n{}", self.log_tail());
            }
        }
    }
}

/// The binaries of `flavor` and its template, or `None` when they are missing outside CI.
fn binaries_and_template(flavor: Flavor) -> Option<(Binaries, PathBuf)> {
    let binaries = Binaries::find(flavor)?;
    match template(flavor, &binaries) {
        Ok(template) => Some((binaries, template)),
        Err(error) => panic!(
            "initialising the {} template data directory failed: {error}",
            flavor.name()
        ),
    }
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The files listed in a binlog or relay log index, relative names taken relative to `dir`.
fn read_index(index: &Path, dir: &Path) -> Vec<PathBuf> {
    let text = match fs::read_to_string(index) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => panic!("reading {}: {err}", index.display()),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let path = Path::new(line.trim());
            if path.is_absolute() {
                path.to_owned()
            } else {
                dir.join(path)
            }
        })
        .collect()
}

// --- the template data directories -----------------------------------------------------------

/// The initialised template directory of `flavor` (its `data/` is copied for each server), made
/// once per process. An error is remembered, so later tests fail at once with the same message.
fn template(flavor: Flavor, binaries: &Binaries) -> Result<PathBuf, String> {
    static TEMPLATES: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    TEMPLATES[flavor.index()]
        .get_or_init(|| {
            let started = Instant::now();
            let result = make_template(flavor, binaries);
            if result.is_ok() {
                eprintln!(
                    "note: initialised the {} template data directory in {:.1?}",
                    flavor.name(),
                    started.elapsed()
                );
            }
            result
        })
        .clone()
}

static TEMPLATE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_templates() {
    let dirs = std::mem::take(&mut *lock(&TEMPLATE_DIRS));
    for dir in dirs {
        let _ = fs::remove_dir_all(dir);
    }
}

fn make_template(flavor: Flavor, binaries: &Binaries) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("myhoard-db-template-{}-", flavor.name()))
        .tempdir()
        .map_err(|err| format!("creating the template directory: {err}"))?
        .keep();
    {
        let mut dirs = lock(&TEMPLATE_DIRS);
        if dirs.is_empty() {
            at_exit(remove_templates);
        }
        dirs.push(dir.clone());
    }
    let data = dir.join("data");
    let log = dir.join("init.log");
    // Temporary tables of the bootstrap go here, not to a shared /tmp.
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(|err| format!("creating {}: {err}", tmp.display()))?;
    let tmpdir_arg = format!("--tmpdir={}", tmp.display());
    // Account setup. It runs with the binlog off, so it creates no GTIDs. Only root@localhost
    // (socket) and root@% (TCP) remain, both with the password: MariaDB's passwordless
    // root@127.0.0.1 and root@::1 would otherwise win over root@% for TCP logins.
    let setup = format!(
        "ALTER USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';\n\
         CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n\
         GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;\n"
    );
    let user_arg = running_as_root().then_some("--user=root");
    match flavor {
        Flavor::MariaDb => {
            let install_db = binaries
                .install_db
                .as_ref()
                .ok_or_else(|| "mariadb-install-db not found".to_owned())?;
            let mut command = Command::new(install_db);
            command
                .arg("--no-defaults")
                .args(user_arg)
                .arg(format!("--datadir={}", data.display()))
                .arg(&tmpdir_arg)
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg("--innodb-log-file-size=64M");
            run_logged(command, &log, None)?;
            let setup = format!(
                "DELETE FROM mysql.global_priv WHERE User = '' OR (User = '{USER}' AND Host <> 'localhost');\n\
                 FLUSH PRIVILEGES;\n{setup}"
            );
            let setup_file = dir.join("setup.sql");
            fs::write(&setup_file, &setup)
                .map_err(|err| format!("writing {}: {err}", setup_file.display()))?;
            let mut command = Command::new(&binaries.mysqld);
            command
                .arg("--no-defaults")
                .arg("--bootstrap")
                .args(user_arg)
                .arg(format!("--datadir={}", data.display()))
                .arg(&tmpdir_arg)
                .args(["--innodb-log-file-size=64M", "--skip-log-bin"]);
            run_logged(command, &log, Some(&setup_file))?;
        }
        Flavor::MySql => {
            let setup_file = dir.join("setup.sql");
            fs::write(&setup_file, &setup)
                .map_err(|err| format!("writing {}: {err}", setup_file.display()))?;
            let mut command = Command::new(&binaries.mysqld);
            command
                .arg("--no-defaults")
                .args(user_arg)
                .arg(format!("--datadir={}", data.display()))
                .arg(&tmpdir_arg)
                .arg("--initialize-insecure")
                .arg(format!("--init-file={}", setup_file.display()))
                .arg(format!("--log-error={}", log.display()))
                .args(["--innodb-redo-log-capacity=64M", "--mysqlx=OFF"]);
            run_logged(command, &log, None)?;
        }
    }
    Ok(dir)
}

/// Runs an initialisation command to completion, with `stdin` as its input and its output
/// appended to `log`; the error carries the log tail. Spawned like the servers, so the kernel
/// kills it if the test process dies.
fn run_logged(mut command: Command, log: &Path, stdin: Option<&Path>) -> Result<(), String> {
    let describe = format!("{command:?}");
    let output = fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| format!("opening {}: {err}", log.display()))?;
    let output_err = output
        .try_clone()
        .map_err(|err| format!("opening {}: {err}", log.display()))?;
    let input = match stdin {
        Some(path) => Stdio::from(
            fs::File::open(path).map_err(|err| format!("opening {}: {err}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    command.stdin(input).stdout(output).stderr(output_err);
    let mut child = spawn_with_parent_death_signal(command)
        .map_err(|err| format!("spawning {describe}: {err}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!(
                    "{describe} exited with {status}:\n{}",
                    log_tail(log, 40)
                ));
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{describe} did not finish within {START_TIMEOUT:?}:\n{}",
                    log_tail(log, 40)
                ));
            }
            Err(err) => return Err(format!("waiting for {describe}: {err}")),
        }
    }
}

/// Copies a directory tree (regular files and directories; data directories have nothing else).
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) always succeeds and has no preconditions.
    unsafe { geteuid() == 0 }
}

const SIGTERM: c_int = 15;

unsafe extern "C" {
    fn kill(pid: i32, signal: c_int) -> c_int;
    fn geteuid() -> u32;
}

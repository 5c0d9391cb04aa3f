//! Which database server we talk to, and everything that differs because of it.
//!
//! A [`Flavor`] is MariaDB or MySQL with its version, read once from `SELECT VERSION()` when a
//! [`Client`](super::Client) connects. Every statement, variable, column name, server option and
//! tool that differs between MariaDB 10.6+, MySQL 8.0, 8.4 and 9.x lives here as a method, so the
//! rest of the daemon never branches on the server itself: it asks its `Flavor`.
//!
//! Pure: no I/O, no logging; methods return SQL text, column names and option lists. The recipes
//! follow what was tested on this project's machines (`shared/reference/mariadb.md` for MariaDB
//! 10.11, `shared/reference/mysql.md` for MySQL 9.7) where that differs from the vendors' manuals
//! or from Python MyHoard, which only knew MySQL (`restore_coordinator.py`,
//! `basebackup_operation.py`).
//!
//! The relay-log trick in short (MyHoard's way of replaying binlogs on a restored server without
//! a replication connection): copy the binlogs into the restored server's relay log directory as
//! `relay.000001`, `relay.000002`, ..., list them with full paths in the relay log index, point a
//! dummy replication source at them with [`Flavor::change_source_to_relay_logs`], and run only
//! the SQL thread, [`Flavor::start_sql_thread`], optionally until a point in time.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::gtid::{self, GtidSet, MariadbGtidState};

/// A server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest MariaDB we support: 10.6 is the oldest maintained series, and it has the `REPLICA`
/// statement synonyms (10.5.1+) and `mariadb-backup` (10.5+).
pub const MARIADB_MINIMUM: Version = Version::new(10, 6, 0);
/// The oldest MySQL we support. Python MyHoard supports 8.0 and 8.4 and nothing older.
pub const MYSQL_MINIMUM: Version = Version::new(8, 0, 0);

// MySQL versions where a statement or option changed. MariaDB kept its own names throughout.
/// `SHOW REPLICA STATUS` (with renamed columns), `START/STOP/RESET REPLICA`.
const MYSQL_REPLICA_STATEMENTS: Version = Version::new(8, 0, 22);
/// `CHANGE REPLICATION SOURCE TO` with `SOURCE_*` options, `UNTIL SOURCE_LOG_FILE`.
const MYSQL_CHANGE_REPLICATION_SOURCE: Version = Version::new(8, 0, 23);
/// `performance_schema.processlist`; `information_schema.PROCESSLIST` is deprecated from 8.0.35.
const MYSQL_PERFORMANCE_SCHEMA_PROCESSLIST: Version = Version::new(8, 0, 22);
/// `--skip-replica-start`, `--replica-preserve-commit-order`.
const MYSQL_REPLICA_OPTIONS: Version = Version::new(8, 0, 26);
/// `SHOW BINARY LOG STATUS`; 8.4 removed `SHOW MASTER STATUS`.
const MYSQL_BINARY_LOG_STATUS: Version = Version::new(8, 2, 0);
/// `RESET BINARY LOGS AND GTIDS`, the only form left in 8.4 (`RESET MASTER` is gone).
const MYSQL_RESET_BINARY_LOGS_AND_GTIDS: Version = Version::new(8, 4, 0);

/// Why a version string names no supported server, or why a flavour cannot do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `SELECT VERSION()` returned something without a `major.minor[.patch]` prefix.
    #[error("cannot read a server version from {text:?}")]
    UnparsableVersion { text: String },
    /// A MariaDB or MySQL older than we support (MySQL 5.7, MariaDB 10.5, ...).
    #[error(
        "{flavor} {version} is not supported (from {text:?}): myhoard needs {flavor} {minimum} or later"
    )]
    UnsupportedVersion {
        flavor: &'static str,
        version: Version,
        minimum: Version,
        text: String,
    },
    /// Something this flavour has no statement for, such as `UNTIL SQL_AFTER_GTIDS` on MariaDB.
    #[error("{flavor} cannot {what}")]
    Unsupported {
        flavor: &'static str,
        what: &'static str,
    },
    /// The restored server would have the source's `server_id`; both servers then silently skip
    /// every replayed event (and MySQL's applier hangs with an UNTIL clause).
    #[error(
        "the restored server needs a server_id other than the source's ({server_id}): with the same id every replayed event is silently skipped"
    )]
    SameServerId { server_id: u32 },
    /// A GTID set that cannot be written in this flavour's syntax (MySQL origins for MariaDB).
    #[error("gtid set not expressible for {flavor}: {source}")]
    Gtid {
        flavor: &'static str,
        #[source]
        source: gtid::Error,
    },
}

/// The database server: MariaDB or MySQL, with its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// MariaDB 10.6 or later.
    MariaDb(Version),
    /// MySQL 8.0 or later (Percona Server included).
    MySql(Version),
}

/// A program that takes a full snapshot of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotTool {
    /// MariaDB's fork of XtraBackup: `mariadb-backup --backup --stream=xbstream`, extracted with
    /// `mbstream -x`.
    MariaBackup,
    /// Percona XtraBackup: `xtrabackup --backup --stream=xbstream`, extracted with `xbstream -x`.
    /// What Python MyHoard uses; it cannot be installed on this project's test machines.
    XtraBackup,
    /// MySQL's clone plugin: `CLONE LOCAL DATA DIRECTORY`, then the directory is archived. The
    /// clone persists its GTID set, so no GTID patching is needed after a restore.
    ClonePlugin,
}

impl SnapshotTool {
    /// The program names to look for, preferred first (`None` for the clone plugin, which is SQL).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            // `mariadb-backup` is the name since 10.5; Debian still ships `mariabackup` as well.
            SnapshotTool::MariaBackup => &["mariadb-backup", "mariabackup"],
            SnapshotTool::XtraBackup => &["xtrabackup"],
            SnapshotTool::ClonePlugin => &[],
        }
    }

    /// The program that unpacks the tool's `xbstream` output, if it streams one.
    pub fn stream_extractor(self) -> Option<&'static str> {
        match self {
            SnapshotTool::MariaBackup => Some("mbstream"),
            SnapshotTool::XtraBackup => Some("xbstream"),
            SnapshotTool::ClonePlugin => None,
        }
    }
}

/// Where the SQL thread starts reading the copied binlogs: for [`Flavor::change_source_to_relay_logs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLogStart<'a> {
    /// The relay log's file name without directory, such as `relay.000001`.
    pub relay_log_file: &'a str,
    /// Offset in it: the snapshot's binlog position for the first file of a restore, else 4.
    pub relay_log_pos: u64,
    /// The source binlog that relay log is a copy of, and the same offset. MariaDB records it
    /// (`Relay_Master_Log_File` and `Exec_Master_Log_Pos` are then right from the start, and its
    /// parallel applier crashes without it); MySQL refuses it next to `RELAY_LOG_FILE` and
    /// ignores it here.
    pub source_log: Option<(&'a str, u64)>,
}

/// Where the SQL thread stops: for [`Flavor::start_sql_thread`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyUntil<'a> {
    /// After these transactions (MySQL `UNTIL SQL_AFTER_GTIDS`). Not available on MariaDB.
    AfterGtids(&'a GtidSet),
    /// Before the event at `pos` of the source binlog `file`: the start of the first GTID event
    /// not to apply. MariaDB's way of stopping at a point in time.
    SourcePosition { file: &'a str, pos: u64 },
    /// Before the event at `pos` of relay log `file`.
    RelayPosition { file: &'a str, pos: u64 },
}

/// The `SHOW REPLICA STATUS` (or `SHOW SLAVE STATUS`) columns the restore reads, by name. MySQL
/// 8.0.22 renamed them together with the statement; MariaDB never did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatusColumns {
    pub source_host: &'static str,
    pub io_running: &'static str,
    pub sql_running: &'static str,
    pub sql_running_state: &'static str,
    pub relay_log_file: &'static str,
    pub relay_log_pos: &'static str,
    pub relay_source_log_file: &'static str,
    pub exec_source_log_pos: &'static str,
    pub last_sql_errno: &'static str,
    pub last_sql_error: &'static str,
    pub until_condition: &'static str,
    pub until_log_file: &'static str,
    pub until_log_pos: &'static str,
    /// MySQL only.
    pub retrieved_gtid_set: Option<&'static str>,
    /// MySQL only.
    pub executed_gtid_set: Option<&'static str>,
    /// MariaDB only: `No`, `Slave_Pos` or `Current_Pos`.
    pub using_gtid: Option<&'static str>,
    /// MariaDB only.
    pub gtid_io_pos: Option<&'static str>,
}

/// The host name the dummy replication source gets. It is never contacted: the IO thread is
/// never started, and if it were, it would fail at once on the empty user name.
pub const DUMMY_SOURCE_HOST: &str = "dummy";

impl Flavor {
    /// The query whose answer [`Flavor::parse`] reads.
    pub const VERSION_QUERY: &'static str = "SELECT VERSION()";

    /// Reads `SELECT VERSION()`: `10.11.6-MariaDB-0+deb12u1-log`, `8.0.36`, `8.4.3`,
    /// `9.7.4-2`, `8.0.36-28` (Percona Server). MariaDB is recognised by its name in the string
    /// (and the `5.5.5-` prefix its handshake adds is skipped); everything else is MySQL.
    /// Servers older than [`MARIADB_MINIMUM`] or [`MYSQL_MINIMUM`] are refused.
    pub fn parse(text: &str) -> Result<Flavor, Error> {
        let trimmed = text.trim();
        let is_mariadb = trimmed.to_ascii_lowercase().contains("mariadb");
        let numbers = match trimmed.strip_prefix("5.5.5-") {
            Some(rest) if is_mariadb => rest,
            _ => trimmed,
        };
        let version = parse_version_prefix(numbers).ok_or_else(|| Error::UnparsableVersion {
            text: text.to_owned(),
        })?;
        let (flavor, minimum) = if is_mariadb {
            (Flavor::MariaDb(version), MARIADB_MINIMUM)
        } else {
            (Flavor::MySql(version), MYSQL_MINIMUM)
        };
        if version < minimum {
            return Err(Error::UnsupportedVersion {
                flavor: flavor.name(),
                version,
                minimum,
                text: text.to_owned(),
            });
        }
        Ok(flavor)
    }

    /// `"MariaDB"` or `"MySQL"`.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::MariaDb(_) => "MariaDB",
            Flavor::MySql(_) => "MySQL",
        }
    }

    pub fn version(self) -> Version {
        match self {
            Flavor::MariaDb(version) | Flavor::MySql(version) => version,
        }
    }

    pub fn is_mariadb(self) -> bool {
        matches!(self, Flavor::MariaDb(_))
    }

    pub fn is_mysql(self) -> bool {
        matches!(self, Flavor::MySql(_))
    }

    /// MySQL at `version` or later; false on MariaDB.
    fn mysql_at_least(self, version: Version) -> bool {
        matches!(self, Flavor::MySql(own) if own >= version)
    }

    fn unsupported(self, what: &'static str) -> Error {
        Error::Unsupported {
            flavor: self.name(),
            what,
        }
    }

    // --- binary logs -------------------------------------------------------------------------

    /// The current binlog file and position. MySQL's answer also has the executed GTID set
    /// ([`Flavor::binlog_status_gtid_column`]); MariaDB's does not, so its GTIDs come from
    /// [`Flavor::executed_gtids_query`].
    pub fn binlog_status_statement(self) -> &'static str {
        if self.mysql_at_least(MYSQL_BINARY_LOG_STATUS) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }

    /// The column of [`Flavor::binlog_status_statement`] with the executed GTID set (MySQL).
    pub fn binlog_status_gtid_column(self) -> Option<&'static str> {
        match self {
            Flavor::MySql(_) => Some("Executed_Gtid_Set"),
            Flavor::MariaDb(_) => None,
        }
    }

    /// One value: the transactions in this server's binlogs. MySQL `@@GLOBAL.gtid_executed`
    /// (a GTID set); MariaDB `@@GLOBAL.gtid_binlog_pos` (the last GTID per domain in the binlog,
    /// replicated transactions included when `log_slave_updates` is on).
    pub fn executed_gtids_query(self) -> &'static str {
        match self {
            Flavor::MySql(_) => "SELECT @@GLOBAL.gtid_executed",
            Flavor::MariaDb(_) => "SELECT @@GLOBAL.gtid_binlog_pos",
        }
    }

    /// Every GTID variable of the flavour, in one row. MySQL: `gtid_executed`, `gtid_purged`.
    /// MariaDB: `gtid_binlog_pos`, `gtid_current_pos`, `gtid_slave_pos`, `gtid_binlog_state`.
    pub fn gtid_state_query(self) -> &'static str {
        match self {
            Flavor::MySql(_) => "SELECT @@GLOBAL.gtid_executed, @@GLOBAL.gtid_purged",
            Flavor::MariaDb(_) => {
                "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_current_pos, \
                 @@GLOBAL.gtid_slave_pos, @@GLOBAL.gtid_binlog_state"
            }
        }
    }

    /// Lists the binlog files (`Log_name`, `File_size`, and on MySQL `Encrypted`).
    pub fn list_binary_logs_statement(self) -> &'static str {
        "SHOW BINARY LOGS"
    }

    /// Closes the active binlog and opens the next. Not written to the binlog itself, so it
    /// uses up no GTID (checked on both flavours by the integration tests).
    pub fn flush_binary_logs_statement(self) -> &'static str {
        "FLUSH BINARY LOGS"
    }

    /// Deletes every binlog before `file` (a name from [`Flavor::list_binary_logs_statement`],
    /// such as `binlog.000006`) and rewrites the index.
    pub fn purge_binary_logs_to_statement(self, file: &str) -> String {
        format!("PURGE BINARY LOGS TO {}", sql_string(file))
    }

    /// Deletes every binlog and starts again at `.000001`; on MySQL it also empties
    /// `gtid_executed` and `gtid_purged`.
    pub fn reset_binary_logs_statement(self) -> &'static str {
        if self.mysql_at_least(MYSQL_RESET_BINARY_LOGS_AND_GTIDS) {
            "RESET BINARY LOGS AND GTIDS"
        } else {
            "RESET MASTER"
        }
    }

    // --- GTID state after a snapshot restore --------------------------------------------------

    /// The statements that make a server restored from a snapshot know which transactions the
    /// snapshot holds (`gtids`, from the snapshot's binlog info), before binlogs are replayed.
    ///
    /// - MySQL: reset the GTID history, then `SET GLOBAL gtid_purged`: MySQL only accepts a new
    ///   `gtid_purged` over an empty `gtid_executed`. Needed after an XtraBackup restore; a clone
    ///   restore already has the right `gtid_executed` and needs nothing.
    /// - MariaDB: `SET GLOBAL gtid_slave_pos`, what the replayed transactions continue from (the
    ///   tested recipe). The replication threads must be stopped (else error 1198), and the
    ///   server's own binlogs must not hold newer GTIDs of the same domain (else error 1947):
    ///   restore into wiped binlog and relay log directories.
    pub fn restore_gtid_state_statements(self, gtids: &GtidSet) -> Result<Vec<String>, Error> {
        match self {
            Flavor::MySql(_) => Ok(vec![
                self.reset_binary_logs_statement().to_owned(),
                format!(
                    "SET GLOBAL gtid_purged = {}",
                    sql_string(&gtids.to_string())
                ),
            ]),
            Flavor::MariaDb(_) => {
                let position = self.mariadb_position(gtids)?;
                Ok(vec![format!(
                    "SET GLOBAL gtid_slave_pos = {}",
                    sql_string(&position.to_position_string())
                )])
            }
        }
    }

    /// MariaDB: the statements that make the server's binlog state `state`, for a restored
    /// server whose binlog must continue the source's GTID history (`gtid_binlog_state` is
    /// otherwise rebuilt from the binlog files alone). The binlog must be empty for the `SET`,
    /// so this resets it first: only for a freshly restored server. MySQL has no such variable:
    /// see [`Flavor::restore_gtid_state_statements`].
    pub fn set_gtid_binlog_state_statements(
        self,
        state: &MariadbGtidState,
    ) -> Result<Vec<String>, Error> {
        match self {
            Flavor::MySql(_) => Err(self.unsupported("set gtid_binlog_state (a MariaDB variable)")),
            Flavor::MariaDb(_) => Ok(vec![
                self.reset_binary_logs_statement().to_owned(),
                format!(
                    "SET GLOBAL gtid_binlog_state = {}",
                    sql_string(&state.to_string())
                ),
            ]),
        }
    }

    /// One value: 0 once this server has applied `gtids`, or after `seconds` something else
    /// (MySQL 1 on timeout, MariaDB -1). MySQL `WAIT_FOR_EXECUTED_GTID_SET` (against
    /// `gtid_executed`); MariaDB `MASTER_GTID_WAIT` (against `gtid_slave_pos`: the replication
    /// threads' progress, which is what a replay advances).
    pub fn wait_for_gtids_query(self, gtids: &GtidSet, seconds: u32) -> Result<String, Error> {
        match self {
            Flavor::MySql(_) => Ok(format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {seconds})",
                sql_string(&gtids.to_string())
            )),
            Flavor::MariaDb(_) => {
                let position = self.mariadb_position(gtids)?;
                Ok(format!(
                    "SELECT MASTER_GTID_WAIT({}, {seconds})",
                    sql_string(&position.to_position_string())
                ))
            }
        }
    }

    fn mariadb_position(self, gtids: &GtidSet) -> Result<MariadbGtidState, Error> {
        MariadbGtidState::from_gtid_set(gtids).map_err(|source| Error::Gtid {
            flavor: self.name(),
            source,
        })
    }

    // --- server identity ---------------------------------------------------------------------

    /// One value: `@@GLOBAL.server_id`.
    pub fn server_id_query(self) -> &'static str {
        "SELECT @@GLOBAL.server_id"
    }

    /// One row naming where this server's own transactions come from: `server_id` and MySQL's
    /// `server_uuid`, or `server_id` and MariaDB's `gtid_domain_id`.
    pub fn server_identity_query(self) -> &'static str {
        match self {
            Flavor::MySql(_) => "SELECT @@GLOBAL.server_id, @@GLOBAL.server_uuid",
            Flavor::MariaDb(_) => "SELECT @@GLOBAL.server_id, @@GLOBAL.gtid_domain_id",
        }
    }

    /// One row: `read_only`, and on MySQL `super_read_only` (MariaDB has no such variable).
    pub fn read_only_query(self) -> &'static str {
        match self {
            Flavor::MySql(_) => "SELECT @@GLOBAL.read_only, @@GLOBAL.super_read_only",
            Flavor::MariaDb(_) => "SELECT @@GLOBAL.read_only",
        }
    }

    // --- replication -------------------------------------------------------------------------

    /// The `REPLICA` keyword where the server's documentation prefers it (MySQL 8.0.22+, and
    /// MariaDB, whose manual calls `SLAVE` deprecated since 10.5.1), else `SLAVE`.
    fn replica_keyword(self) -> &'static str {
        match self {
            Flavor::MariaDb(_) => "REPLICA",
            Flavor::MySql(_) if self.mysql_at_least(MYSQL_REPLICA_STATEMENTS) => "REPLICA",
            Flavor::MySql(_) => "SLAVE",
        }
    }

    /// The replication status; no row when no replication source is configured (on MySQL also
    /// when the source has no host name, so the relay-log trick always names one).
    pub fn replica_status_statement(self) -> String {
        format!("SHOW {} STATUS", self.replica_keyword())
    }

    /// The columns of [`Flavor::replica_status_statement`] the restore reads.
    pub fn replica_status_columns(self) -> ReplicaStatusColumns {
        let renamed = self.mysql_at_least(MYSQL_REPLICA_STATEMENTS);
        let (mysql, mariadb) = (self.is_mysql(), self.is_mariadb());
        let pick = |new: &'static str, old: &'static str| if renamed { new } else { old };
        ReplicaStatusColumns {
            source_host: pick("Source_Host", "Master_Host"),
            io_running: pick("Replica_IO_Running", "Slave_IO_Running"),
            sql_running: pick("Replica_SQL_Running", "Slave_SQL_Running"),
            sql_running_state: pick("Replica_SQL_Running_State", "Slave_SQL_Running_State"),
            relay_log_file: "Relay_Log_File",
            relay_log_pos: "Relay_Log_Pos",
            relay_source_log_file: pick("Relay_Source_Log_File", "Relay_Master_Log_File"),
            exec_source_log_pos: pick("Exec_Source_Log_Pos", "Exec_Master_Log_Pos"),
            last_sql_errno: "Last_SQL_Errno",
            last_sql_error: "Last_SQL_Error",
            until_condition: "Until_Condition",
            until_log_file: "Until_Log_File",
            until_log_pos: "Until_Log_Pos",
            retrieved_gtid_set: mysql.then_some("Retrieved_Gtid_Set"),
            executed_gtid_set: mysql.then_some("Executed_Gtid_Set"),
            using_gtid: mariadb.then_some("Using_Gtid"),
            gtid_io_pos: mariadb.then_some("Gtid_IO_Pos"),
        }
    }

    /// Points the (never started) replication source at relay logs we copied in place:
    ///
    /// - MySQL: `CHANGE REPLICATION SOURCE TO SOURCE_HOST='dummy', SOURCE_AUTO_POSITION=0,
    ///   RELAY_LOG_FILE=..., RELAY_LOG_POS=..., PRIVILEGE_CHECKS_USER=NULL` (`CHANGE MASTER TO`
    ///   and `MASTER_*` before 8.0.23), as Python MyHoard does.
    /// - MariaDB: `CHANGE MASTER TO MASTER_HOST='dummy', MASTER_USE_GTID=no,
    ///   [MASTER_LOG_FILE=..., MASTER_LOG_POS=...,] RELAY_LOG_FILE=..., RELAY_LOG_POS=...`.
    ///   `MASTER_USE_GTID=no` is vital: in GTID mode, starting the SQL thread deletes every
    ///   relay log.
    ///
    /// The host must be set (MySQL shows no status row without it); the user stays empty, so an
    /// IO thread started by accident fails at once instead of connecting anywhere.
    pub fn change_source_to_relay_logs(self, start: &RelayLogStart<'_>) -> String {
        let relay = format!(
            "RELAY_LOG_FILE={}, RELAY_LOG_POS={}",
            sql_string(start.relay_log_file),
            start.relay_log_pos
        );
        let host = sql_string(DUMMY_SOURCE_HOST);
        match self {
            Flavor::MySql(_) if self.mysql_at_least(MYSQL_CHANGE_REPLICATION_SOURCE) => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST={host}, SOURCE_AUTO_POSITION=0, {relay}, \
                 PRIVILEGE_CHECKS_USER=NULL"
            ),
            Flavor::MySql(_) => format!(
                "CHANGE MASTER TO MASTER_HOST={host}, MASTER_AUTO_POSITION=0, {relay}, PRIVILEGE_CHECKS_USER=NULL"
            ),
            Flavor::MariaDb(_) => {
                let source = match start.source_log {
                    Some((file, pos)) => format!(
                        "MASTER_LOG_FILE={}, MASTER_LOG_POS={pos}, ",
                        sql_string(file)
                    ),
                    None => String::new(),
                };
                format!("CHANGE MASTER TO MASTER_HOST={host}, MASTER_USE_GTID=no, {source}{relay}")
            }
        }
    }

    /// Starts the SQL thread only, optionally until a point:
    ///
    /// - MySQL: `START REPLICA SQL_THREAD [UNTIL SQL_AFTER_GTIDS='...' | UNTIL
    ///   SOURCE_LOG_FILE=..., SOURCE_LOG_POS=... | UNTIL RELAY_LOG_FILE=..., RELAY_LOG_POS=...]`
    ///   (`SLAVE` and `MASTER_LOG_*` on older 8.0). `SQL_AFTER_GTIDS` makes the applier single
    ///   threaded.
    /// - MariaDB: `START REPLICA SQL_THREAD [UNTIL MASTER_LOG_FILE=..., MASTER_LOG_POS=... |
    ///   UNTIL RELAY_LOG_FILE=..., RELAY_LOG_POS=...]`. It has no GTID form that works here
    ///   (`SQL_AFTER_GTIDS` is a syntax error, `master_gtid_pos` needs GTID mode, error 1277),
    ///   so [`ApplyUntil::AfterGtids`] is an [`Error::Unsupported`]: turn the target into the
    ///   binlog offset of the first GTID event not to apply.
    pub fn start_sql_thread(self, until: Option<&ApplyUntil<'_>>) -> Result<String, Error> {
        let start = format!("START {} SQL_THREAD", self.replica_keyword());
        let Some(until) = until else {
            return Ok(start);
        };
        let source_words = if self.mysql_at_least(MYSQL_CHANGE_REPLICATION_SOURCE) {
            ("SOURCE_LOG_FILE", "SOURCE_LOG_POS")
        } else {
            ("MASTER_LOG_FILE", "MASTER_LOG_POS")
        };
        let clause = match until {
            ApplyUntil::AfterGtids(gtids) => match self {
                Flavor::MySql(_) => format!("SQL_AFTER_GTIDS = {}", sql_string(&gtids.to_string())),
                Flavor::MariaDb(_) => {
                    return Err(self.unsupported(
                        "stop the SQL thread after a GTID set (use a source binlog position)",
                    ));
                }
            },
            ApplyUntil::SourcePosition { file, pos } => {
                format!(
                    "{} = {}, {} = {pos}",
                    source_words.0,
                    sql_string(file),
                    source_words.1
                )
            }
            ApplyUntil::RelayPosition { file, pos } => {
                format!(
                    "RELAY_LOG_FILE = {}, RELAY_LOG_POS = {pos}",
                    sql_string(file)
                )
            }
        };
        Ok(format!("{start} UNTIL {clause}"))
    }

    /// Stops the SQL thread only.
    pub fn stop_sql_thread_statement(self) -> String {
        format!("STOP {} SQL_THREAD", self.replica_keyword())
    }

    /// Session settings for rebuilding every table after a restore (MyHoard's
    /// `rebuild_tables`): nothing written to the binlog (no GTIDs of the restored server's
    /// own), and old rows that newer strictness would refuse are kept as they are.
    pub fn table_rebuild_session_statements(self) -> Vec<&'static str> {
        let mut statements = vec![
            "SET SESSION sql_log_bin = 0",
            "SET SESSION sql_mode = REPLACE(REPLACE(REPLACE(@@SESSION.sql_mode, \
             'STRICT_ALL_TABLES', ''), 'NO_ZERO_DATE', ''), 'NO_ZERO_IN_DATE', '')",
            "SET SESSION innodb_strict_mode = OFF",
            "SET SESSION foreign_key_checks = 0",
        ];
        if self.is_mysql() {
            statements.push("SET SESSION sql_require_primary_key = OFF");
        }
        statements
    }

    /// Every InnoDB table but the statistics tables (`ALTER TABLE ... FORCE` on those fails),
    /// `schema, name` in a stable order, so a resumed rebuild can skip what is done.
    pub const INNODB_TABLES_QUERY: &'static str = "SELECT TABLE_SCHEMA, TABLE_NAME \
         FROM INFORMATION_SCHEMA.TABLES WHERE ENGINE = 'InnoDB' AND TABLE_TYPE = 'BASE TABLE' \
         AND NOT (TABLE_SCHEMA = 'mysql' AND TABLE_NAME IN ('innodb_index_stats', \
         'innodb_table_stats')) ORDER BY TABLE_SCHEMA, TABLE_NAME";

    /// Rewrites one table in place.
    pub fn rebuild_table_statement(self, schema: &str, table: &str) -> String {
        format!(
            "ALTER TABLE {}.{} FORCE",
            sql_identifier(schema),
            sql_identifier(table)
        )
    }

    /// Stops both replication threads.
    pub fn stop_replica_statement(self) -> String {
        format!("STOP {}", self.replica_keyword())
    }

    /// Forgets the replication position and deletes the relay logs, keeping the source settings.
    pub fn reset_replica_statement(self) -> String {
        format!("RESET {}", self.replica_keyword())
    }

    /// Forgets the replication source altogether and deletes the relay logs. MariaDB keeps
    /// `gtid_slave_pos`.
    pub fn reset_replica_all_statement(self) -> String {
        format!("RESET {} ALL", self.replica_keyword())
    }

    /// Closes the active relay log and opens the next, for handing a further batch of binlogs
    /// to a stopped SQL thread. `LOCAL`: MySQL writes a plain `FLUSH RELAY LOGS` to the binlog,
    /// where it uses up a GTID of the restored server.
    pub fn flush_relay_logs_statement(self) -> &'static str {
        "FLUSH LOCAL RELAY LOGS"
    }

    // --- the restored server's settings --------------------------------------------------------

    /// The mysqld command-line options a restored server needs while the relay-log trick
    /// replays binlogs into it:
    ///
    /// - its own `server_id`, never the source's ([`Error::SameServerId`] otherwise);
    /// - replication not started at boot (`--skip-replica-start`; `--skip-slave-start` on
    ///   MariaDB and MySQL before 8.0.26): a started SQL thread would apply everything, past
    ///   any point-in-time target;
    /// - `--relay-log-recovery=OFF`: with it on, a restart abandons the copied relay logs;
    /// - `--read-only=ON`, so clients cannot write while the replay runs (the SQL thread, and
    ///   accounts with SUPER, still can);
    /// - the relay log names the copied files were given.
    pub fn relay_apply_mysqld_options(
        self,
        server_id: u32,
        source_server_id: u32,
        relay_log_prefix: &Path,
        relay_log_index: &Path,
    ) -> Result<Vec<String>, Error> {
        if server_id == source_server_id {
            return Err(Error::SameServerId { server_id });
        }
        let skip_start = if self.mysql_at_least(MYSQL_REPLICA_OPTIONS) {
            "--skip-replica-start"
        } else {
            "--skip-slave-start"
        };
        Ok(vec![
            format!("--server-id={server_id}"),
            skip_start.to_owned(),
            "--relay-log-recovery=OFF".to_owned(),
            "--read-only=ON".to_owned(),
            format!("--relay-log={}", relay_log_prefix.display()),
            format!("--relay-log-index={}", relay_log_index.display()),
        ])
    }

    /// The mysqld options that run a server without a binlog, as Python MyHoard applies relay
    /// logs on MySQL (`restore_mysqld_options(with_binlog=False)`): replica commit ordering must
    /// then be off too, or MySQL refuses to start. Event scheduling is off as well, so restored
    /// events do not fire and collide with replayed rows.
    pub fn mysqld_binlog_off_options(self) -> Vec<String> {
        let options: &[&str] = match self {
            Flavor::MySql(_) if self.mysql_at_least(MYSQL_REPLICA_OPTIONS) => &[
                "--disable-log-bin",
                "--skip-replica-preserve-commit-order",
                "--event-scheduler=OFF",
            ],
            Flavor::MySql(_) => &[
                "--disable-log-bin",
                "--skip-slave-preserve-commit-order",
                "--event-scheduler=OFF",
            ],
            Flavor::MariaDb(_) => &["--skip-log-bin", "--event-scheduler=OFF"],
        };
        options.iter().map(|option| (*option).to_owned()).collect()
    }

    // --- snapshots -----------------------------------------------------------------------------

    /// The tools that can take a full snapshot, preferred first.
    pub fn snapshot_tools(self) -> &'static [SnapshotTool] {
        match self {
            Flavor::MariaDb(_) => &[SnapshotTool::MariaBackup],
            Flavor::MySql(_) => &[SnapshotTool::XtraBackup, SnapshotTool::ClonePlugin],
        }
    }

    /// MySQL: loads the clone plugin (persisted in `mysql.plugin`). Fails with error 1125 when it
    /// is already loaded.
    pub fn install_clone_plugin_statement(self) -> Result<&'static str, Error> {
        match self {
            Flavor::MySql(_) => Ok("INSTALL PLUGIN clone SONAME 'mysql_clone.so'"),
            Flavor::MariaDb(_) => Err(self.unsupported("clone a server (MySQL's clone plugin)")),
        }
    }

    /// MySQL: copies this server's InnoDB data into `directory` (absolute, must not exist yet).
    /// The consistent point appears in `performance_schema.clone_status` on the restored server.
    pub fn clone_local_statement(self, directory: &Path) -> Result<String, Error> {
        match self {
            Flavor::MySql(_) => Ok(format!(
                "CLONE LOCAL DATA DIRECTORY = {}",
                sql_string(&directory.display().to_string())
            )),
            Flavor::MariaDb(_) => Err(self.unsupported("clone a server (MySQL's clone plugin)")),
        }
    }

    /// MySQL: the connection ids (comma-separated; NULL when there are none) of the other
    /// sessions running a [`Flavor::clone_local_statement`] into a directory whose path matches
    /// `directory_like` (a `LIKE` pattern). Without the `PROCESS` privilege a user sees only its
    /// own sessions, which include those of an earlier daemon.
    pub fn running_local_clones_query(self, directory_like: &str) -> Result<String, Error> {
        let processlist = if self.mysql_at_least(MYSQL_PERFORMANCE_SCHEMA_PROCESSLIST) {
            "performance_schema.processlist"
        } else {
            "information_schema.PROCESSLIST"
        };
        match self {
            Flavor::MySql(_) => Ok(format!(
                "SELECT GROUP_CONCAT(ID) FROM {processlist} \
                 WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND INFO LIKE {}",
                sql_string(&format!("CLONE LOCAL DATA DIRECTORY = '{directory_like}'"))
            )),
            Flavor::MariaDb(_) => Err(self.unsupported("clone a server (MySQL's clone plugin)")),
        }
    }

    // --- file names ------------------------------------------------------------------------------

    /// The name of binlog or relay log number `index` with path prefix `prefix` (`log_bin` or
    /// `relay_log`): `<prefix>.000042`. Both flavours pad to six digits and grow beyond that.
    pub fn log_file_name(self, prefix: &str, index: u64) -> String {
        log_file_name(prefix, index)
    }

    /// The contents of a relay log index listing `files`: one full path per line, each line
    /// ending in a newline. Full paths are what both servers were tested with (MySQL needs them
    /// when `relay_log` is a full path); Python MyHoard's basenames were not tested here.
    pub fn relay_log_index_text(self, files: &[&Path]) -> String {
        let mut text = String::new();
        for file in files {
            text.push_str(&file.display().to_string());
            text.push('\n');
        }
        text
    }
}

impl fmt::Display for Flavor {
    /// `MariaDB 10.11.6`, `MySQL 8.4.3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name(), self.version())
    }
}

impl FromStr for Flavor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Flavor, Error> {
        Flavor::parse(text)
    }
}

/// `<prefix>.<index, zero-padded to six digits>`, the name of a binlog or relay log.
pub fn log_file_name(prefix: &str, index: u64) -> String {
    format!("{prefix}.{index:06}")
}

/// The number of a binlog or relay log file name (`binlog.000042` → 42, a full path works
/// too); `None` when the name has no numeric extension.
pub fn log_file_index(name: &str) -> Option<u64> {
    let (_, digits) = name.rsplit_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `name` as a quoted SQL identifier: backticks, an inner backtick doubled.
pub fn sql_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as an SQL string literal: single quotes doubled, backslashes escaped. The statements
/// built here only quote names, GTID text and paths we made ourselves; a session with
/// `NO_BACKSLASH_ESCAPES` would read a backslash in them doubled.
pub fn sql_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            _ => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// The `major.minor[.patch]` at the start of `text`; the rest (`-MariaDB-...`, `-log`, `-28`)
/// is ignored.
fn parse_version_prefix(text: &str) -> Option<Version> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let mut parts = text[..end].trim_end_matches('.').split('.');
    let mut number = |required: bool| -> Option<u16> {
        match parts.next() {
            Some(part) => part.parse().ok(),
            None if required => None,
            None => Some(0),
        }
    };
    let version = Version::new(number(true)?, number(true)?, number(false)?);
    if parts.next().is_some() {
        return None;
    }
    Some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIADB_10_6: &str = "10.6.19-MariaDB-log";
    const MARIADB_10_11: &str = "10.11.6-MariaDB-0+deb12u1-log";
    const MARIADB_11_4: &str = "11.4.3-MariaDB";
    const MYSQL_8_0_21: &str = "8.0.21";
    const MYSQL_8_0_36: &str = "8.0.36";
    const MYSQL_8_4_3: &str = "8.4.3";
    const MYSQL_9_7_0: &str = "9.7.0";

    /// Every supported version the tables below cover, oldest first per flavour.
    const ALL: [&str; 7] = [
        MARIADB_10_6,
        MARIADB_10_11,
        MARIADB_11_4,
        MYSQL_8_0_21,
        MYSQL_8_0_36,
        MYSQL_8_4_3,
        MYSQL_9_7_0,
    ];

    fn flavor(text: &str) -> Flavor {
        match Flavor::parse(text) {
            Ok(flavor) => flavor,
            Err(err) => panic!("parsing {text:?}: {err}"),
        }
    }

    /// Checks that `table` covers exactly [`ALL`], in order, and that `method` gives each value.
    fn check<T: PartialEq + fmt::Debug>(table: &[(&str, T)], method: impl Fn(Flavor) -> T) {
        let versions: Vec<&str> = table.iter().map(|(version, _)| *version).collect();
        assert_eq!(versions, ALL, "the table must list every version");
        for (text, expected) in table {
            assert_eq!(&method(flavor(text)), expected, "for {text}");
        }
    }

    #[test]
    fn parses_version_strings() {
        let cases = [
            (
                "10.11.6-MariaDB-0+deb12u1-log",
                Flavor::MariaDb(Version::new(10, 11, 6)),
            ),
            (
                "10.11.19-MariaDB-0+deb12u1-log",
                Flavor::MariaDb(Version::new(10, 11, 19)),
            ),
            (
                "5.5.5-10.11.6-MariaDB",
                Flavor::MariaDb(Version::new(10, 11, 6)),
            ),
            ("10.6.0-MariaDB", Flavor::MariaDb(Version::new(10, 6, 0))),
            (
                "11.4.3-MariaDB-ubu2404",
                Flavor::MariaDb(Version::new(11, 4, 3)),
            ),
            ("12.0.2-mariadb", Flavor::MariaDb(Version::new(12, 0, 2))),
            ("8.0.36", Flavor::MySql(Version::new(8, 0, 36))),
            ("8.0.36-28", Flavor::MySql(Version::new(8, 0, 36))),
            (
                "8.0.36-0ubuntu0.22.04.1",
                Flavor::MySql(Version::new(8, 0, 36)),
            ),
            ("8.0.21-log", Flavor::MySql(Version::new(8, 0, 21))),
            ("8.4.3", Flavor::MySql(Version::new(8, 4, 3))),
            ("9.7.4-2", Flavor::MySql(Version::new(9, 7, 4))),
            (" 9.7.0\n", Flavor::MySql(Version::new(9, 7, 0))),
            ("8.0", Flavor::MySql(Version::new(8, 0, 0))),
        ];
        for (text, expected) in cases {
            assert_eq!(Flavor::parse(text), Ok(expected), "{text:?}");
            assert_eq!(text.parse::<Flavor>(), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn refuses_unsupported_versions() {
        let cases = [
            ("5.7.44-log", "MySQL", Version::new(5, 7, 44), MYSQL_MINIMUM),
            ("5.6.51", "MySQL", Version::new(5, 6, 51), MYSQL_MINIMUM),
            (
                "10.5.27-MariaDB",
                "MariaDB",
                Version::new(10, 5, 27),
                MARIADB_MINIMUM,
            ),
            (
                "5.5.5-10.4.34-MariaDB-log",
                "MariaDB",
                Version::new(10, 4, 34),
                MARIADB_MINIMUM,
            ),
            // A MariaDB without "5.5.5-" stripping would be 5.5; with it, 10.3.
            (
                "10.3.39-MariaDB",
                "MariaDB",
                Version::new(10, 3, 39),
                MARIADB_MINIMUM,
            ),
        ];
        for (text, flavor, version, minimum) in cases {
            assert_eq!(
                Flavor::parse(text),
                Err(Error::UnsupportedVersion {
                    flavor,
                    version,
                    minimum,
                    text: text.to_owned()
                }),
                "{text:?}"
            );
        }
        let message = Flavor::parse("5.7.44").map_err(|err| err.to_string());
        assert_eq!(
            message,
            Err("MySQL 5.7.44 is not supported (from \"5.7.44\"): myhoard needs MySQL 8.0.0 or later".to_owned())
        );
    }

    #[test]
    fn refuses_unparsable_versions() {
        for text in [
            "",
            "MariaDB",
            "v8.0.36",
            "8",
            "8.",
            "8.0.36.1",
            "99999.0.0",
            "-10.11.6-MariaDB",
            "8.x",
        ] {
            assert_eq!(
                Flavor::parse(text),
                Err(Error::UnparsableVersion {
                    text: text.to_owned()
                }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn names_and_display() {
        check(
            &[
                (MARIADB_10_6, "MariaDB 10.6.19".to_owned()),
                (MARIADB_10_11, "MariaDB 10.11.6".to_owned()),
                (MARIADB_11_4, "MariaDB 11.4.3".to_owned()),
                (MYSQL_8_0_21, "MySQL 8.0.21".to_owned()),
                (MYSQL_8_0_36, "MySQL 8.0.36".to_owned()),
                (MYSQL_8_4_3, "MySQL 8.4.3".to_owned()),
                (MYSQL_9_7_0, "MySQL 9.7.0".to_owned()),
            ],
            |flavor| flavor.to_string(),
        );
        for text in ALL {
            let flavor = flavor(text);
            assert_eq!(flavor.is_mariadb(), text.contains("MariaDB"));
            assert_eq!(flavor.is_mysql(), !flavor.is_mariadb());
        }
    }

    #[test]
    fn binlog_status_statement() {
        check(
            &[
                (MARIADB_10_6, ("SHOW MASTER STATUS", None)),
                (MARIADB_10_11, ("SHOW MASTER STATUS", None)),
                (MARIADB_11_4, ("SHOW MASTER STATUS", None)),
                (
                    MYSQL_8_0_21,
                    ("SHOW MASTER STATUS", Some("Executed_Gtid_Set")),
                ),
                (
                    MYSQL_8_0_36,
                    ("SHOW MASTER STATUS", Some("Executed_Gtid_Set")),
                ),
                (
                    MYSQL_8_4_3,
                    ("SHOW BINARY LOG STATUS", Some("Executed_Gtid_Set")),
                ),
                (
                    MYSQL_9_7_0,
                    ("SHOW BINARY LOG STATUS", Some("Executed_Gtid_Set")),
                ),
            ],
            |flavor| {
                (
                    flavor.binlog_status_statement(),
                    flavor.binlog_status_gtid_column(),
                )
            },
        );
        assert_eq!(
            flavor("8.2.0").binlog_status_statement(),
            "SHOW BINARY LOG STATUS"
        );
        assert_eq!(
            flavor("8.1.0").binlog_status_statement(),
            "SHOW MASTER STATUS"
        );
    }

    #[test]
    fn binlog_statements() {
        for text in ALL {
            let flavor = flavor(text);
            assert_eq!(flavor.list_binary_logs_statement(), "SHOW BINARY LOGS");
            assert_eq!(flavor.flush_binary_logs_statement(), "FLUSH BINARY LOGS");
            assert_eq!(
                flavor.purge_binary_logs_to_statement("binlog.000006"),
                "PURGE BINARY LOGS TO 'binlog.000006'"
            );
            assert_eq!(
                flavor.purge_binary_logs_to_statement("it's\\odd"),
                "PURGE BINARY LOGS TO 'it''s\\\\odd'"
            );
        }
        check(
            &[
                (MARIADB_10_6, "RESET MASTER"),
                (MARIADB_10_11, "RESET MASTER"),
                (MARIADB_11_4, "RESET MASTER"),
                (MYSQL_8_0_21, "RESET MASTER"),
                (MYSQL_8_0_36, "RESET MASTER"),
                (MYSQL_8_4_3, "RESET BINARY LOGS AND GTIDS"),
                (MYSQL_9_7_0, "RESET BINARY LOGS AND GTIDS"),
            ],
            Flavor::reset_binary_logs_statement,
        );
    }

    #[test]
    fn gtid_queries() {
        const MARIADB: (&str, &str) = (
            "SELECT @@GLOBAL.gtid_binlog_pos",
            "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_current_pos, @@GLOBAL.gtid_slave_pos, @@GLOBAL.gtid_binlog_state",
        );
        const MYSQL: (&str, &str) = (
            "SELECT @@GLOBAL.gtid_executed",
            "SELECT @@GLOBAL.gtid_executed, @@GLOBAL.gtid_purged",
        );
        check(
            &[
                (MARIADB_10_6, MARIADB),
                (MARIADB_10_11, MARIADB),
                (MARIADB_11_4, MARIADB),
                (MYSQL_8_0_21, MYSQL),
                (MYSQL_8_0_36, MYSQL),
                (MYSQL_8_4_3, MYSQL),
                (MYSQL_9_7_0, MYSQL),
            ],
            |flavor| (flavor.executed_gtids_query(), flavor.gtid_state_query()),
        );
    }

    const UUID: &str = "2bd8e3e4-0000-11ef-8d4a-0242ac120002";

    #[test]
    fn restore_gtid_state() {
        let mysql_set: GtidSet = match format!("{UUID}:1-128").parse() {
            Ok(set) => set,
            Err(err) => panic!("{err}"),
        };
        let mariadb_set = match "0-1-128,1-2-29".parse::<MariadbGtidState>() {
            Ok(state) => state.to_gtid_set(),
            Err(err) => panic!("{err}"),
        };
        let mariadb = Ok(vec![
            "SET GLOBAL gtid_slave_pos = '0-1-128,1-2-29'".to_owned(),
        ]);
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (
                    MYSQL_8_0_21,
                    Ok(vec![
                        "RESET MASTER".to_owned(),
                        format!("SET GLOBAL gtid_purged = '{UUID}:1-128'"),
                    ]),
                ),
                (
                    MYSQL_8_0_36,
                    Ok(vec![
                        "RESET MASTER".to_owned(),
                        format!("SET GLOBAL gtid_purged = '{UUID}:1-128'"),
                    ]),
                ),
                (
                    MYSQL_8_4_3,
                    Ok(vec![
                        "RESET BINARY LOGS AND GTIDS".to_owned(),
                        format!("SET GLOBAL gtid_purged = '{UUID}:1-128'"),
                    ]),
                ),
                (
                    MYSQL_9_7_0,
                    Ok(vec![
                        "RESET BINARY LOGS AND GTIDS".to_owned(),
                        format!("SET GLOBAL gtid_purged = '{UUID}:1-128'"),
                    ]),
                ),
            ],
            |flavor| {
                let set = if flavor.is_mariadb() {
                    &mariadb_set
                } else {
                    &mysql_set
                };
                flavor.restore_gtid_state_statements(set)
            },
        );
        // A MySQL set cannot become a MariaDB position.
        let err = flavor(MARIADB_10_11).restore_gtid_state_statements(&mysql_set);
        assert!(
            matches!(
                err,
                Err(Error::Gtid {
                    flavor: "MariaDB",
                    ..
                })
            ),
            "{err:?}"
        );
        // The empty set is the empty position (a restore from the very first binlog).
        assert_eq!(
            flavor(MARIADB_10_11).restore_gtid_state_statements(&GtidSet::new()),
            Ok(vec!["SET GLOBAL gtid_slave_pos = ''".to_owned()])
        );
    }

    #[test]
    fn set_gtid_binlog_state() {
        let state = match "0-1-128,0-2-130,1-2-29".parse::<MariadbGtidState>() {
            Ok(state) => state,
            Err(err) => panic!("{err}"),
        };
        let mariadb = Ok(vec![
            "RESET MASTER".to_owned(),
            "SET GLOBAL gtid_binlog_state = '0-1-128,0-2-130,1-2-29'".to_owned(),
        ]);
        let mysql = Err(Error::Unsupported {
            flavor: "MySQL",
            what: "set gtid_binlog_state (a MariaDB variable)",
        });
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql.clone()),
                (MYSQL_8_0_36, mysql.clone()),
                (MYSQL_8_4_3, mysql.clone()),
                (MYSQL_9_7_0, mysql),
            ],
            |flavor| flavor.set_gtid_binlog_state_statements(&state),
        );
    }

    #[test]
    fn wait_for_gtids() {
        let mysql_set: GtidSet = match format!("{UUID}:1-5:7").parse() {
            Ok(set) => set,
            Err(err) => panic!("{err}"),
        };
        let mariadb_set = match "0-1-128,0-2-130".parse::<MariadbGtidState>() {
            Ok(state) => state.to_gtid_set(),
            Err(err) => panic!("{err}"),
        };
        let mysql = Ok(format!(
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('{UUID}:1-5:7', 3)"
        ));
        // MariaDB waits for one position per domain: the most recent server's.
        let mariadb = Ok("SELECT MASTER_GTID_WAIT('0-2-130', 3)".to_owned());
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql.clone()),
                (MYSQL_8_0_36, mysql.clone()),
                (MYSQL_8_4_3, mysql.clone()),
                (MYSQL_9_7_0, mysql),
            ],
            |flavor| {
                let set = if flavor.is_mariadb() {
                    &mariadb_set
                } else {
                    &mysql_set
                };
                flavor.wait_for_gtids_query(set, 3)
            },
        );
    }

    #[test]
    fn identity_queries() {
        const MARIADB: (&str, &str, &str) = (
            "SELECT @@GLOBAL.server_id",
            "SELECT @@GLOBAL.server_id, @@GLOBAL.gtid_domain_id",
            "SELECT @@GLOBAL.read_only",
        );
        const MYSQL: (&str, &str, &str) = (
            "SELECT @@GLOBAL.server_id",
            "SELECT @@GLOBAL.server_id, @@GLOBAL.server_uuid",
            "SELECT @@GLOBAL.read_only, @@GLOBAL.super_read_only",
        );
        check(
            &[
                (MARIADB_10_6, MARIADB),
                (MARIADB_10_11, MARIADB),
                (MARIADB_11_4, MARIADB),
                (MYSQL_8_0_21, MYSQL),
                (MYSQL_8_0_36, MYSQL),
                (MYSQL_8_4_3, MYSQL),
                (MYSQL_9_7_0, MYSQL),
            ],
            |flavor| {
                (
                    flavor.server_id_query(),
                    flavor.server_identity_query(),
                    flavor.read_only_query(),
                )
            },
        );
    }

    #[test]
    fn replica_control_statements() {
        fn statements(keyword: &str) -> [String; 6] {
            [
                format!("SHOW {keyword} STATUS"),
                format!("STOP {keyword} SQL_THREAD"),
                format!("STOP {keyword}"),
                format!("RESET {keyword}"),
                format!("RESET {keyword} ALL"),
                "FLUSH LOCAL RELAY LOGS".to_owned(),
            ]
        }
        check(
            &[
                (MARIADB_10_6, statements("REPLICA")),
                (MARIADB_10_11, statements("REPLICA")),
                (MARIADB_11_4, statements("REPLICA")),
                (MYSQL_8_0_21, statements("SLAVE")),
                (MYSQL_8_0_36, statements("REPLICA")),
                (MYSQL_8_4_3, statements("REPLICA")),
                (MYSQL_9_7_0, statements("REPLICA")),
            ],
            |flavor| {
                [
                    flavor.replica_status_statement(),
                    flavor.stop_sql_thread_statement(),
                    flavor.stop_replica_statement(),
                    flavor.reset_replica_statement(),
                    flavor.reset_replica_all_statement(),
                    flavor.flush_relay_logs_statement().to_owned(),
                ]
            },
        );
        assert_eq!(
            flavor("8.0.22").replica_status_statement(),
            "SHOW REPLICA STATUS"
        );
    }

    #[test]
    fn replica_status_columns() {
        let old_names = |mariadb: bool| ReplicaStatusColumns {
            source_host: "Master_Host",
            io_running: "Slave_IO_Running",
            sql_running: "Slave_SQL_Running",
            sql_running_state: "Slave_SQL_Running_State",
            relay_log_file: "Relay_Log_File",
            relay_log_pos: "Relay_Log_Pos",
            relay_source_log_file: "Relay_Master_Log_File",
            exec_source_log_pos: "Exec_Master_Log_Pos",
            last_sql_errno: "Last_SQL_Errno",
            last_sql_error: "Last_SQL_Error",
            until_condition: "Until_Condition",
            until_log_file: "Until_Log_File",
            until_log_pos: "Until_Log_Pos",
            retrieved_gtid_set: (!mariadb).then_some("Retrieved_Gtid_Set"),
            executed_gtid_set: (!mariadb).then_some("Executed_Gtid_Set"),
            using_gtid: mariadb.then_some("Using_Gtid"),
            gtid_io_pos: mariadb.then_some("Gtid_IO_Pos"),
        };
        let new_names = ReplicaStatusColumns {
            source_host: "Source_Host",
            io_running: "Replica_IO_Running",
            sql_running: "Replica_SQL_Running",
            sql_running_state: "Replica_SQL_Running_State",
            relay_source_log_file: "Relay_Source_Log_File",
            exec_source_log_pos: "Exec_Source_Log_Pos",
            ..old_names(false)
        };
        check(
            &[
                (MARIADB_10_6, old_names(true)),
                (MARIADB_10_11, old_names(true)),
                (MARIADB_11_4, old_names(true)),
                (MYSQL_8_0_21, old_names(false)),
                (MYSQL_8_0_36, new_names),
                (MYSQL_8_4_3, new_names),
                (MYSQL_9_7_0, new_names),
            ],
            Flavor::replica_status_columns,
        );
    }

    #[test]
    fn change_source_to_relay_logs() {
        let start = RelayLogStart {
            relay_log_file: "relay.000001",
            relay_log_pos: 27771,
            source_log: Some(("binlog.000006", 27771)),
        };
        let mariadb = "CHANGE MASTER TO MASTER_HOST='dummy', MASTER_USE_GTID=no, \
                       MASTER_LOG_FILE='binlog.000006', MASTER_LOG_POS=27771, \
                       RELAY_LOG_FILE='relay.000001', RELAY_LOG_POS=27771";
        let mysql = "CHANGE REPLICATION SOURCE TO SOURCE_HOST='dummy', SOURCE_AUTO_POSITION=0, \
                     RELAY_LOG_FILE='relay.000001', RELAY_LOG_POS=27771, PRIVILEGE_CHECKS_USER=NULL";
        check(
            &[
                (MARIADB_10_6, mariadb.to_owned()),
                (MARIADB_10_11, mariadb.to_owned()),
                (MARIADB_11_4, mariadb.to_owned()),
                (
                    MYSQL_8_0_21,
                    "CHANGE MASTER TO MASTER_HOST='dummy', MASTER_AUTO_POSITION=0, \
                     RELAY_LOG_FILE='relay.000001', RELAY_LOG_POS=27771, PRIVILEGE_CHECKS_USER=NULL"
                        .to_owned(),
                ),
                (MYSQL_8_0_36, mysql.to_owned()),
                (MYSQL_8_4_3, mysql.to_owned()),
                (MYSQL_9_7_0, mysql.to_owned()),
            ],
            |flavor| flavor.change_source_to_relay_logs(&start),
        );
        // Without the source binlog (a later batch), MariaDB names only the relay log.
        let later = RelayLogStart {
            relay_log_file: "relay.000005",
            relay_log_pos: 4,
            source_log: None,
        };
        assert_eq!(
            flavor(MARIADB_10_11).change_source_to_relay_logs(&later),
            "CHANGE MASTER TO MASTER_HOST='dummy', MASTER_USE_GTID=no, RELAY_LOG_FILE='relay.000005', RELAY_LOG_POS=4"
        );
        assert_eq!(flavor("8.0.23").change_source_to_relay_logs(&later), {
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='dummy', SOURCE_AUTO_POSITION=0, \
             RELAY_LOG_FILE='relay.000005', RELAY_LOG_POS=4, PRIVILEGE_CHECKS_USER=NULL"
        });
    }

    #[test]
    fn start_sql_thread() {
        let gtids: GtidSet = match format!("{UUID}:1-1866").parse() {
            Ok(set) => set,
            Err(err) => panic!("{err}"),
        };
        let after_gtids = ApplyUntil::AfterGtids(&gtids);
        let source = ApplyUntil::SourcePosition {
            file: "binlog.000010",
            pos: 40557,
        };
        let relay = ApplyUntil::RelayPosition {
            file: "relay.000005",
            pos: 40557,
        };
        type Row = [Result<String, Error>; 4];
        let mariadb_unsupported = Err(Error::Unsupported {
            flavor: "MariaDB",
            what: "stop the SQL thread after a GTID set (use a source binlog position)",
        });
        let mariadb: Row = [
            Ok("START REPLICA SQL_THREAD".to_owned()),
            mariadb_unsupported,
            Ok("START REPLICA SQL_THREAD UNTIL MASTER_LOG_FILE = 'binlog.000010', MASTER_LOG_POS = 40557".to_owned()),
            Ok("START REPLICA SQL_THREAD UNTIL RELAY_LOG_FILE = 'relay.000005', RELAY_LOG_POS = 40557".to_owned()),
        ];
        let mysql = |keyword: &str, source_word: &str| -> Row {
            [
                Ok(format!("START {keyword} SQL_THREAD")),
                Ok(format!(
                    "START {keyword} SQL_THREAD UNTIL SQL_AFTER_GTIDS = '{UUID}:1-1866'"
                )),
                Ok(format!(
                    "START {keyword} SQL_THREAD UNTIL {source_word}_LOG_FILE = 'binlog.000010', \
                     {source_word}_LOG_POS = 40557"
                )),
                Ok(format!(
                    "START {keyword} SQL_THREAD UNTIL RELAY_LOG_FILE = 'relay.000005', RELAY_LOG_POS = 40557"
                )),
            ]
        };
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql("SLAVE", "MASTER")),
                (MYSQL_8_0_36, mysql("REPLICA", "SOURCE")),
                (MYSQL_8_4_3, mysql("REPLICA", "SOURCE")),
                (MYSQL_9_7_0, mysql("REPLICA", "SOURCE")),
            ],
            |flavor| {
                [
                    flavor.start_sql_thread(None),
                    flavor.start_sql_thread(Some(&after_gtids)),
                    flavor.start_sql_thread(Some(&source)),
                    flavor.start_sql_thread(Some(&relay)),
                ]
            },
        );
        // 8.0.22 says REPLICA but still MASTER_LOG_FILE in UNTIL.
        assert_eq!(
            flavor("8.0.22").start_sql_thread(Some(&source)),
            Ok("START REPLICA SQL_THREAD UNTIL MASTER_LOG_FILE = 'binlog.000010', MASTER_LOG_POS = 40557".to_owned())
        );
    }

    #[test]
    fn relay_apply_mysqld_options() {
        let options = |skip: &str| -> Result<Vec<String>, Error> {
            Ok(vec![
                "--server-id=2".to_owned(),
                skip.to_owned(),
                "--relay-log-recovery=OFF".to_owned(),
                "--read-only=ON".to_owned(),
                "--relay-log=/var/lib/mysql/relay/relay".to_owned(),
                "--relay-log-index=/var/lib/mysql/relay/relay.index".to_owned(),
            ])
        };
        let prefix = Path::new("/var/lib/mysql/relay/relay");
        let index = Path::new("/var/lib/mysql/relay/relay.index");
        check(
            &[
                (MARIADB_10_6, options("--skip-slave-start")),
                (MARIADB_10_11, options("--skip-slave-start")),
                (MARIADB_11_4, options("--skip-slave-start")),
                (MYSQL_8_0_21, options("--skip-slave-start")),
                (MYSQL_8_0_36, options("--skip-replica-start")),
                (MYSQL_8_4_3, options("--skip-replica-start")),
                (MYSQL_9_7_0, options("--skip-replica-start")),
            ],
            |flavor| flavor.relay_apply_mysqld_options(2, 1, prefix, index),
        );
        for text in ALL {
            assert_eq!(
                flavor(text).relay_apply_mysqld_options(7, 7, prefix, index),
                Err(Error::SameServerId { server_id: 7 })
            );
        }
    }

    #[test]
    fn mysqld_binlog_off_options() {
        let mariadb = vec![
            "--skip-log-bin".to_owned(),
            "--event-scheduler=OFF".to_owned(),
        ];
        let mysql = |commit_order: &str| {
            vec![
                "--disable-log-bin".to_owned(),
                commit_order.to_owned(),
                "--event-scheduler=OFF".to_owned(),
            ]
        };
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql("--skip-slave-preserve-commit-order")),
                (MYSQL_8_0_36, mysql("--skip-replica-preserve-commit-order")),
                (MYSQL_8_4_3, mysql("--skip-replica-preserve-commit-order")),
                (MYSQL_9_7_0, mysql("--skip-replica-preserve-commit-order")),
            ],
            Flavor::mysqld_binlog_off_options,
        );
    }

    #[test]
    fn snapshot_tools() {
        let mysql: &[SnapshotTool] = &[SnapshotTool::XtraBackup, SnapshotTool::ClonePlugin];
        let mariadb: &[SnapshotTool] = &[SnapshotTool::MariaBackup];
        check(
            &[
                (MARIADB_10_6, mariadb),
                (MARIADB_10_11, mariadb),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql),
                (MYSQL_8_0_36, mysql),
                (MYSQL_8_4_3, mysql),
                (MYSQL_9_7_0, mysql),
            ],
            Flavor::snapshot_tools,
        );
        assert_eq!(
            SnapshotTool::MariaBackup.programs(),
            ["mariadb-backup", "mariabackup"]
        );
        assert_eq!(
            SnapshotTool::MariaBackup.stream_extractor(),
            Some("mbstream")
        );
        assert_eq!(SnapshotTool::XtraBackup.programs(), ["xtrabackup"]);
        assert_eq!(
            SnapshotTool::XtraBackup.stream_extractor(),
            Some("xbstream")
        );
        assert!(SnapshotTool::ClonePlugin.programs().is_empty());
        assert_eq!(SnapshotTool::ClonePlugin.stream_extractor(), None);
    }

    #[test]
    fn clone_statements() {
        let directory = Path::new("/var/lib/myhoard/clone");
        let running_clones = |processlist: &str| {
            Ok(format!(
                "SELECT GROUP_CONCAT(ID) FROM {processlist} WHERE ID <> CONNECTION_ID() \
                 AND COMMAND = 'Query' AND INFO LIKE 'CLONE LOCAL DATA DIRECTORY = ''%/x-%'''"
            ))
        };
        let mysql = |processlist| {
            (
                Ok("INSTALL PLUGIN clone SONAME 'mysql_clone.so'"),
                Ok("CLONE LOCAL DATA DIRECTORY = '/var/lib/myhoard/clone'".to_owned()),
                running_clones(processlist),
            )
        };
        let unsupported = Error::Unsupported {
            flavor: "MariaDB",
            what: "clone a server (MySQL's clone plugin)",
        };
        let mariadb = (
            Err(unsupported.clone()),
            Err(unsupported.clone()),
            Err(unsupported),
        );
        check(
            &[
                (MARIADB_10_6, mariadb.clone()),
                (MARIADB_10_11, mariadb.clone()),
                (MARIADB_11_4, mariadb),
                (MYSQL_8_0_21, mysql("information_schema.PROCESSLIST")),
                (MYSQL_8_0_36, mysql("performance_schema.processlist")),
                (MYSQL_8_4_3, mysql("performance_schema.processlist")),
                (MYSQL_9_7_0, mysql("performance_schema.processlist")),
            ],
            |flavor| {
                (
                    flavor.install_clone_plugin_statement(),
                    flavor.clone_local_statement(directory),
                    flavor.running_local_clones_query("%/x-%"),
                )
            },
        );
    }

    #[test]
    fn file_names() {
        for text in ALL {
            let flavor = flavor(text);
            assert_eq!(
                flavor.log_file_name("/var/lib/mysql/binlog", 42),
                "/var/lib/mysql/binlog.000042"
            );
            assert_eq!(flavor.log_file_name("relay", 1_234_567), "relay.1234567");
            assert_eq!(
                flavor.relay_log_index_text(&[
                    Path::new("/r/relay.000001"),
                    Path::new("/r/relay.000002")
                ]),
                "/r/relay.000001\n/r/relay.000002\n"
            );
            assert_eq!(flavor.relay_log_index_text(&[]), "");
        }
        let cases = [
            ("binlog.000042", Some(42)),
            ("/var/lib/mysql/binlog.000001", Some(1)),
            ("relay.1234567", Some(1_234_567)),
            ("mysql-bin.index", None),
            ("binlog.", None),
            ("binlog", None),
            ("binlog.00004x", None),
            ("binlog.+1", None),
        ];
        for (name, index) in cases {
            assert_eq!(log_file_index(name), index, "{name}");
        }
    }

    #[test]
    fn quotes_sql_strings() {
        let cases = [
            ("", "''"),
            ("binlog.000001", "'binlog.000001'"),
            ("it's", "'it''s'"),
            ("a\\b", "'a\\\\b'"),
            ("0-1-5,1-2-3", "'0-1-5,1-2-3'"),
        ];
        for (text, quoted) in cases {
            assert_eq!(sql_string(text), quoted, "{text:?}");
        }
    }

    #[test]
    fn quotes_sql_identifiers() {
        let cases = [
            ("t", "`t`"),
            ("my table", "`my table`"),
            ("odd`name", "`odd``name`"),
        ];
        for (name, quoted) in cases {
            assert_eq!(sql_identifier(name), quoted, "{name:?}");
        }
    }
}

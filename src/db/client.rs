//! A connection to the local database server, with typed answers to the handful of statements
//! the daemon issues.
//!
//! [`Client::connect`] opens one session from MyHoard's `mysql.client_params` (TCP or unix
//! socket, optional TLS, database `mysql`, charset utf8mb4, MyHoard's 4 s timeouts), asks the
//! server its version and keeps the resulting [`Flavor`], which picks every statement's text.
//! Answers come back parsed: binlog status, replica status, GTID state, identity, read-only.
//!
//! Blocking; runs on task threads, never on the controller thread. Errors are typed
//! ([`Error`], with an [`ErrorKind`] telling connection trouble from refused statements), name
//! the statement, and never contain the password. A client whose connection failed is dropped
//! and a new one connected; nothing here retries or logs. Mirrors Python MyHoard's
//! `util.mysql_cursor` and the statements its controller, backup stream and restore coordinator
//! run through it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Row, SslOpts, Value};

use super::flavor::{self, Flavor};
use crate::config::ClientParams;
use crate::gtid::{GtidSet, MariadbGtidState, Origin, Uuid};

/// MyHoard's `DEFAULT_MYSQL_TIMEOUT`: connecting, and waiting for any answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);
/// For statements that may take long on a busy server (`FLUSH BINARY LOGS`, purges, snapshot
/// bookkeeping): MyHoard's 4 × 5 s.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(20);

/// The database every session opens, as in MyHoard.
const DATABASE: &str = "mysql";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What went wrong, coarsely: enough to decide whether to retry, reconnect or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached or the session not set up: refused or missing socket,
    /// TLS failure, handshake trouble, too many connections.
    Connect,
    /// The server refused the login: wrong user or password, or no access to database `mysql`.
    AccessDenied,
    /// No answer within the timeout, connecting or waiting for a statement.
    Timeout,
    /// The connection broke while a statement ran (the server went away or was shut down).
    ConnectionLost,
    /// The server rejected the statement (syntax, privileges, state); the session is still fine.
    Sql,
    /// The answer did not have the shape this statement has on a supported server.
    UnexpectedResult,
    /// The server is a version we do not support, or its flavour cannot do what was asked.
    Unsupported,
}

impl ErrorKind {
    /// Connection trouble rather than a statement the server refused: the client is unusable and
    /// must be connected again. Trying again later may work, except after
    /// [`ErrorKind::AccessDenied`].
    pub fn is_connection_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect
                | ErrorKind::AccessDenied
                | ErrorKind::Timeout
                | ErrorKind::ConnectionLost
        )
    }

    /// Worth retrying as is (with a new connection): the server may be restarting or busy.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::ConnectionLost
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Connect => "cannot connect",
            ErrorKind::AccessDenied => "access denied",
            ErrorKind::Timeout => "timed out",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::Sql => "server error",
            ErrorKind::UnexpectedResult => "unexpected result",
            ErrorKind::Unsupported => "unsupported",
        })
    }
}

/// A failed connection or statement: `<statement> on <server>: <kind>: <message>`, or for a
/// connection `connecting to 127.0.0.1:3306 as root: access denied: ERROR 1045 (28000): Access
/// denied for user 'root'@'127.0.0.1' (using password: YES)`.
///
/// `statement` is a short label, never a whole statement with string literals in it, so no
/// secret ends up in a message; the password is never part of one. (A server's own message
/// about a syntax error can quote the statement near the error.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// What was being done: `connecting`, `SHOW BINARY LOG STATUS`, ... (see
    /// [`statement_label`]).
    pub statement: String,
    /// Which server: `127.0.0.1:3306 as root`, `socket /run/mysqld/mysqld.sock as root`.
    pub server: String,
    /// The server's error number, for [`ErrorKind::Sql`] and [`ErrorKind::AccessDenied`].
    pub code: Option<u16>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Error {
            kind,
            statement,
            server,
            message,
            ..
        } = self;
        if statement == CONNECTING {
            write!(f, "{statement} to {server}: {kind}: {message}")
        } else {
            write!(f, "{statement} on {server}: {kind}: {message}")
        }
    }
}

impl std::error::Error for Error {}

/// The statement label of connection errors.
const CONNECTING: &str = "connecting";

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's error number (`ER_*`), when the server sent one.
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    fn new(kind: ErrorKind, statement: &str, server: &str, message: impl fmt::Display) -> Error {
        Error {
            kind,
            statement: statement.to_owned(),
            server: server.to_owned(),
            code: None,
            message: message.to_string(),
        }
    }

    /// Classifies an error of the `mysql` crate met while connecting (`connecting` is true) or
    /// running `statement`.
    fn from_mysql(err: mysql::Error, statement: &str, server: &str, connecting: bool) -> Error {
        use mysql::{DriverError, Error as E};
        let (kind, code) = match &err {
            E::MySqlError(server_error) => {
                let code = server_error.code;
                let kind = if ACCESS_DENIED_CODES.contains(&code) {
                    ErrorKind::AccessDenied
                } else if CONNECTION_GONE_CODES.contains(&code) {
                    ErrorKind::ConnectionLost
                } else if connecting {
                    ErrorKind::Connect
                } else {
                    ErrorKind::Sql
                };
                (kind, Some(code))
            }
            E::IoError(io) if is_timeout(io) => (ErrorKind::Timeout, None),
            E::DriverError(DriverError::ConnectTimeout | DriverError::Timeout) => {
                (ErrorKind::Timeout, None)
            }
            E::FromRowError(_) | E::FromValueError(_) => (ErrorKind::UnexpectedResult, None),
            // I/O, codec, TLS and driver errors: the crate's "connectivity errors".
            _ if connecting => (ErrorKind::Connect, None),
            _ => (ErrorKind::ConnectionLost, None),
        };
        let message = match &err {
            // The server's own text, without the crate's `MySqlError { ... }` wrapping.
            E::MySqlError(server_error) => server_error.to_string(),
            E::IoError(io) => io.to_string(),
            E::DriverError(driver) => driver.to_string(),
            other => other.to_string(),
        };
        Error {
            kind,
            statement: statement.to_owned(),
            server: server.to_owned(),
            code,
            message,
        }
    }
}

/// Server errors that mean the login was refused: `ER_DBACCESS_DENIED_ERROR`,
/// `ER_ACCESS_DENIED_ERROR`, `ER_HOST_NOT_PRIVILEGED`, `ER_NOT_SUPPORTED_AUTH_MODE`,
/// `ER_ACCESS_DENIED_NO_PASSWORD_ERROR`, and MySQL's `ER_ACCOUNT_HAS_BEEN_LOCKED`.
const ACCESS_DENIED_CODES: [u16; 6] = [1044, 1045, 1130, 1251, 1698, 3118];
/// Server errors that end the session: `ER_SERVER_SHUTDOWN`, MariaDB's `ER_CONNECTION_KILLED`,
/// MySQL's `ER_SESSION_WAS_KILLED`.
const CONNECTION_GONE_CODES: [u16; 3] = [1053, 1927, 3169];

fn is_timeout(err: &std::io::Error) -> bool {
    // A socket read timeout shows as WouldBlock on Linux.
    matches!(
        err.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// A label for an arbitrary statement that cannot leak a secret: its text up to the first
/// string literal, at most 80 characters. `CREATE USER x IDENTIFIED BY 'pw'` becomes
/// `CREATE USER x IDENTIFIED BY …`.
pub fn statement_label(statement: &str) -> String {
    let statement = statement.trim();
    let cut = statement.find(['\'', '"', '`']).unwrap_or(statement.len());
    let mut label: String = statement[..cut]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let truncated = cut < statement.len() || label.chars().count() > 80;
    if label.chars().count() > 80 {
        label = label.chars().take(80).collect();
    }
    if truncated {
        if !label.is_empty() {
            label.push(' ');
        }
        label.push('…');
    }
    label
}

// ---------------------------------------------------------------------------------------------
// Connection options
// ---------------------------------------------------------------------------------------------

/// The `mysql` crate's options for `params`, with `timeout` for connecting and for every read
/// and write. Also returns the server description for error messages. (Private: the options'
/// `Debug` shows the password.)
///
/// - `unix_socket` set: the socket, and nothing else. TLS does not apply there (the crate skips
///   it silently, and the server treats the socket as secure).
/// - Otherwise TCP to `host:port`, with `prefer_socket` off: by default the crate reconnects to a
///   local server through its socket, which would quietly drop TLS and ignore the configured
///   address.
/// - TLS when `require_ssl` or `ca_file` is set, and then TLS or nothing: the crate never falls
///   back to plain TCP. With `ca_file`, the server's certificate must chain to that CA; its host
///   name is not checked, because MySQL's self-generated certificates name no host at all and
///   the server is the local one. Without `ca_file` (`require_ssl` alone, as PyMySQL does for
///   MyHoard) the connection is encrypted but the certificate is not verified.
/// - Without TLS, MySQL's `caching_sha2_password` full authentication still works: the crate
///   asks the server for its RSA key and encrypts the password with it.
fn connect_opts(params: &ClientParams, timeout: Duration) -> (Opts, String) {
    let builder = OptsBuilder::new()
        .user(Some(params.user.clone()))
        .pass(Some(params.password.expose().clone()))
        .db_name(Some(DATABASE))
        .read_timeout(Some(timeout))
        .write_timeout(Some(timeout))
        .tcp_connect_timeout(Some(timeout));
    let (builder, server) = match &params.unix_socket {
        Some(socket) => (
            builder.socket(Some(socket.display().to_string())),
            format!("socket {} as {}", socket.display(), params.user),
        ),
        None => {
            let builder = builder
                .ip_or_hostname(Some(params.host.clone()))
                .tcp_port(params.port)
                .prefer_socket(false);
            let tls = params.require_ssl || params.ca_file.is_some();
            let builder = if tls {
                builder.ssl_opts(Some(ssl_opts(params.ca_file.as_deref())))
            } else {
                builder
            };
            let address = if params.host.contains(':') {
                format!("[{}]:{}", params.host, params.port)
            } else {
                format!("{}:{}", params.host, params.port)
            };
            let tls_note = if tls { " over TLS" } else { "" };
            (builder, format!("{address} as {}{tls_note}", params.user))
        }
    };
    (builder.into(), server)
}

fn ssl_opts(ca_file: Option<&Path>) -> SslOpts {
    match ca_file {
        Some(ca_file) => SslOpts::default()
            .with_root_cert_path(Some(ca_file.to_owned()))
            .with_danger_skip_domain_validation(true),
        None => SslOpts::default().with_danger_accept_invalid_certs(true),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed answers
// ---------------------------------------------------------------------------------------------

/// The transactions a server holds, in its flavour's own form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerGtids {
    /// A MySQL GTID set (`@@gtid_executed`, `Executed_Gtid_Set`).
    MySql(GtidSet),
    /// A MariaDB position: the last GTID per domain (`@@gtid_binlog_pos`), or per domain and
    /// server (`@@gtid_binlog_state`).
    MariaDb(MariadbGtidState),
}

impl ServerGtids {
    /// As a GTID set in the flavour-neutral form (MariaDB's "last seq_no N" read as `1..=N`).
    pub fn to_gtid_set(&self) -> GtidSet {
        match self {
            ServerGtids::MySql(set) => set.clone(),
            ServerGtids::MariaDb(state) => state.to_gtid_set(),
        }
    }
}

impl fmt::Display for ServerGtids {
    /// The server's own text, newlines left out: `uuid:1-5,uuid2:3` or `0-1-5,1-2-3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerGtids::MySql(set) => set.fmt(f),
            ServerGtids::MariaDb(state) => state.fmt(f),
        }
    }
}

/// `SHOW BINARY LOG STATUS` / `SHOW MASTER STATUS`, with the GTIDs the binlog holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogStatus {
    /// The active binlog, such as `binlog.000006`.
    pub file: String,
    /// Its size so far: the offset the next event will be written at.
    pub position: u64,
    /// MySQL: `Executed_Gtid_Set` from the same answer. MariaDB: `@@gtid_binlog_pos`, read
    /// right after (the status itself has no GTIDs), so a write in between can make it newer
    /// than `position`.
    pub gtids: ServerGtids,
}

/// One line of `SHOW BINARY LOGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryLog {
    /// `binlog.000006`
    pub name: String,
    pub size: u64,
}

/// Every GTID variable of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    MySql {
        /// `@@GLOBAL.gtid_executed`
        executed: GtidSet,
        /// `@@GLOBAL.gtid_purged`
        purged: GtidSet,
    },
    MariaDb {
        /// `@@GLOBAL.gtid_binlog_pos`: the last GTID per domain in the binlog.
        binlog_pos: MariadbGtidState,
        /// `@@GLOBAL.gtid_current_pos`: the binlog's GTID for domains this server wrote last,
        /// else the replication position.
        current_pos: MariadbGtidState,
        /// `@@GLOBAL.gtid_slave_pos`: the last GTID the replication threads applied.
        slave_pos: MariadbGtidState,
        /// `@@GLOBAL.gtid_binlog_state`: the last GTID per domain and server in the binlog.
        binlog_state: MariadbGtidState,
    },
}

impl GtidState {
    /// The transactions this server has: MySQL `gtid_executed`; MariaDB the union of what its
    /// binlog holds and what replication applied (which, binlog off, is only in
    /// `gtid_slave_pos`).
    pub fn executed(&self) -> GtidSet {
        match self {
            GtidState::MySql { executed, .. } => executed.clone(),
            GtidState::MariaDb {
                binlog_state,
                slave_pos,
                ..
            } => binlog_state.to_gtid_set().union(&slave_pos.to_gtid_set()),
        }
    }
}

/// Where this server's own transactions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerIdentity {
    MySql { server_id: u32, server_uuid: Uuid },
    MariaDb { server_id: u32, domain_id: u32 },
}

impl ServerIdentity {
    pub fn server_id(&self) -> u32 {
        match *self {
            ServerIdentity::MySql { server_id, .. } | ServerIdentity::MariaDb { server_id, .. } => {
                server_id
            }
        }
    }

    /// The GTID origin of transactions written on this server: its UUID, or
    /// `<domain>-<server_id>`.
    pub fn origin(&self) -> Origin {
        match *self {
            ServerIdentity::MySql { server_uuid, .. } => Origin::mysql(server_uuid),
            ServerIdentity::MariaDb {
                server_id,
                domain_id,
            } => Origin::mariadb(domain_id, server_id),
        }
    }
}

/// `Until_Condition` of the replica status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UntilCondition {
    /// No UNTIL clause.
    None,
    /// `UNTIL SOURCE_LOG_FILE/POS` (MySQL `Source`, older MySQL and MariaDB `Master`).
    SourcePosition,
    /// `UNTIL RELAY_LOG_FILE/POS` (`Relay`).
    RelayPosition,
    /// `UNTIL SQL_BEFORE_GTIDS` (MySQL).
    SqlBeforeGtids,
    /// `UNTIL SQL_AFTER_GTIDS` (MySQL).
    SqlAfterGtids,
    /// `UNTIL SQL_AFTER_MTS_GAPS` (MySQL).
    SqlAfterMtsGaps,
    /// `UNTIL master_gtid_pos` (MariaDB `Gtid`).
    Gtid,
    /// MySQL reports `DONE` once the condition was reached and cleared.
    Done,
    /// Anything else, verbatim.
    Other(String),
}

impl UntilCondition {
    fn parse(text: &str) -> UntilCondition {
        match text {
            "" | "None" => UntilCondition::None,
            "Source" | "Master" => UntilCondition::SourcePosition,
            "Relay" => UntilCondition::RelayPosition,
            "SQL_BEFORE_GTIDS" => UntilCondition::SqlBeforeGtids,
            "SQL_AFTER_GTIDS" => UntilCondition::SqlAfterGtids,
            "SQL_AFTER_MTS_GAPS" => UntilCondition::SqlAfterMtsGaps,
            "Gtid" => UntilCondition::Gtid,
            "DONE" => UntilCondition::Done,
            other => UntilCondition::Other(other.to_owned()),
        }
    }
}

/// What the restore reads of `SHOW REPLICA STATUS` (`SHOW SLAVE STATUS`), with flavour-neutral
/// names: MySQL's 8.0.22+ `Source` wording for what MariaDB calls `Master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `Source_Host` / `Master_Host`: `dummy` during a relay-log replay.
    pub source_host: String,
    /// `Replica_IO_Running`: `Yes`, `No`, `Connecting`, ...
    pub io_running: String,
    /// `Replica_SQL_Running` is `Yes`.
    pub sql_running: bool,
    /// `Replica_SQL_Running_State`, such as `Replica has read all relay log; waiting for more
    /// updates` (MariaDB and older MySQL: `Slave has read ...`).
    pub sql_running_state: String,
    /// The relay log the SQL thread is in (file name only) and its offset there.
    pub relay_log_file: String,
    pub relay_log_pos: u64,
    /// The source binlog the SQL thread is in, and the offset it has executed up to.
    pub relay_source_log_file: String,
    pub exec_source_log_pos: u64,
    /// 0 when there was no error.
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub until_condition: UntilCondition,
    pub until_log_file: String,
    pub until_log_pos: u64,
    /// MySQL: the transactions received into the relay logs, and executed by this server.
    pub retrieved_gtids: Option<GtidSet>,
    pub executed_gtids: Option<GtidSet>,
    /// MariaDB: `No` during a relay-log replay (`Slave_Pos`, `Current_Pos` in GTID mode).
    pub using_gtid: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Row parsing (pure; unit tested with recorded answers)
// ---------------------------------------------------------------------------------------------

/// One result row: column names with their values as text (`None` for NULL), in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns(Vec<(String, Option<String>)>);

impl Columns {
    /// A row as recorded from a server, for tests: `(column, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Columns {
        Columns(
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.map(str::to_owned)))
                .collect(),
        )
    }

    fn from_row(row: Row) -> Columns {
        let names: Vec<String> = row
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        let values = row.unwrap();
        Columns(
            names
                .into_iter()
                .zip(values.into_iter().map(value_text))
                .collect(),
        )
    }

    /// The values in column order.
    fn values(&self) -> impl Iterator<Item = Option<&str>> {
        self.0.iter().map(|(_, value)| value.as_deref())
    }

    /// The value of `column`; an error when the answer has no such column.
    fn get(&self, column: &str) -> Result<Option<&str>, String> {
        self.0
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value.as_deref())
            .ok_or_else(|| format!("no column {column:?}"))
    }

    /// The value of `column`, NULL read as the empty string.
    fn text(&self, column: &str) -> Result<&str, String> {
        Ok(self.get(column)?.unwrap_or(""))
    }

    fn number<T: std::str::FromStr>(&self, column: &str) -> Result<T, String> {
        let text = self.text(column)?;
        text.trim()
            .parse()
            .map_err(|_| format!("column {column:?} is {text:?}, not a number"))
    }
}

/// A value as text: the text protocol sends everything as bytes; the binary one is formatted.
fn value_text(value: Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Double(x) => Some(x.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

fn parse_mysql_gtids(text: &str, what: &str) -> Result<GtidSet, String> {
    GtidSet::parse_mysql(text).map_err(|err| format!("{what}: {err}"))
}

fn parse_mariadb_gtids(text: &str, what: &str) -> Result<MariadbGtidState, String> {
    text.parse().map_err(|err| format!("{what}: {err}"))
}

/// The GTIDs of `text`, in `flavor`'s syntax.
pub fn parse_server_gtids(flavor: Flavor, text: &str) -> Result<ServerGtids, String> {
    match flavor {
        Flavor::MySql(_) => parse_mysql_gtids(text, "gtid set").map(ServerGtids::MySql),
        Flavor::MariaDb(_) => parse_mariadb_gtids(text, "gtid position").map(ServerGtids::MariaDb),
    }
}

/// The binlog status row; on MariaDB with `mariadb_gtids`, the `@@gtid_binlog_pos` read next.
pub fn parse_binlog_status(
    flavor: Flavor,
    row: &Columns,
    mariadb_gtids: &str,
) -> Result<BinlogStatus, String> {
    let file = row.text("File")?.to_owned();
    if file.is_empty() {
        return Err("empty File: is the binlog enabled?".to_owned());
    }
    let position = row.number("Position")?;
    let gtids = match flavor.binlog_status_gtid_column() {
        Some(column) => ServerGtids::MySql(parse_mysql_gtids(row.text(column)?, column)?),
        None => ServerGtids::MariaDb(parse_mariadb_gtids(mariadb_gtids, "gtid_binlog_pos")?),
    };
    Ok(BinlogStatus {
        file,
        position,
        gtids,
    })
}

/// The rows of `SHOW BINARY LOGS`.
pub fn parse_binary_logs(rows: &[Columns]) -> Result<Vec<BinaryLog>, String> {
    rows.iter()
        .map(|row| {
            Ok(BinaryLog {
                name: row.text("Log_name")?.to_owned(),
                size: row.number("File_size")?,
            })
        })
        .collect()
}

/// The row of [`Flavor::gtid_state_query`].
pub fn parse_gtid_state(flavor: Flavor, row: &Columns) -> Result<GtidState, String> {
    let values: Vec<&str> = row.values().map(|value| value.unwrap_or("")).collect();
    match (flavor, values.as_slice()) {
        (Flavor::MySql(_), [executed, purged]) => Ok(GtidState::MySql {
            executed: parse_mysql_gtids(executed, "gtid_executed")?,
            purged: parse_mysql_gtids(purged, "gtid_purged")?,
        }),
        (Flavor::MariaDb(_), [binlog_pos, current_pos, slave_pos, binlog_state]) => {
            Ok(GtidState::MariaDb {
                binlog_pos: parse_mariadb_gtids(binlog_pos, "gtid_binlog_pos")?,
                current_pos: parse_mariadb_gtids(current_pos, "gtid_current_pos")?,
                slave_pos: parse_mariadb_gtids(slave_pos, "gtid_slave_pos")?,
                binlog_state: parse_mariadb_gtids(binlog_state, "gtid_binlog_state")?,
            })
        }
        (_, values) => Err(format!(
            "{} values, expected {}",
            values.len(),
            if flavor.is_mysql() { 2 } else { 4 }
        )),
    }
}

/// The row of [`Flavor::server_identity_query`].
pub fn parse_server_identity(flavor: Flavor, row: &Columns) -> Result<ServerIdentity, String> {
    let values: Vec<&str> = row
        .values()
        .map(|value| value.unwrap_or("").trim())
        .collect();
    let [server_id, second] = values.as_slice() else {
        return Err(format!("{} values, expected 2", values.len()));
    };
    let server_id: u32 = server_id
        .parse()
        .map_err(|_| format!("server_id {server_id:?} is not a number"))?;
    match flavor {
        Flavor::MySql(_) => Ok(ServerIdentity::MySql {
            server_id,
            server_uuid: second
                .parse()
                .map_err(|err| format!("server_uuid: {err}"))?,
        }),
        Flavor::MariaDb(_) => Ok(ServerIdentity::MariaDb {
            server_id,
            domain_id: second
                .parse()
                .map_err(|_| format!("gtid_domain_id {second:?} is not a number"))?,
        }),
    }
}

/// The row of [`Flavor::read_only_query`]: whether ordinary clients are kept from writing
/// (`read_only`, or MySQL's `super_read_only`).
pub fn parse_read_only(row: &Columns) -> Result<bool, String> {
    let mut read_only = false;
    for value in row.values() {
        read_only |= parse_switch(value.unwrap_or(""))?;
    }
    Ok(read_only)
}

/// A server switch: `0`/`1`, `OFF`/`ON`; MariaDB 11's `read_only` levels (`NO_LOCK`, ...)
/// are all on.
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_uppercase().as_str() {
        "0" | "OFF" => Ok(false),
        "1" | "ON" | "NO_LOCK" | "NO_LOCK_NO_ADMIN" => Ok(true),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

/// The row of [`Flavor::replica_status_statement`].
pub fn parse_replica_status(flavor: Flavor, row: &Columns) -> Result<ReplicaStatus, String> {
    let names = flavor.replica_status_columns();
    let optional_gtids = |column: Option<&str>| -> Result<Option<GtidSet>, String> {
        column
            .map(|column| parse_mysql_gtids(row.text(column)?, column))
            .transpose()
    };
    Ok(ReplicaStatus {
        source_host: row.text(names.source_host)?.to_owned(),
        io_running: row.text(names.io_running)?.to_owned(),
        sql_running: row.text(names.sql_running)? == "Yes",
        sql_running_state: row.text(names.sql_running_state)?.to_owned(),
        relay_log_file: row.text(names.relay_log_file)?.to_owned(),
        relay_log_pos: row.number(names.relay_log_pos)?,
        relay_source_log_file: row.text(names.relay_source_log_file)?.to_owned(),
        exec_source_log_pos: row.number(names.exec_source_log_pos)?,
        last_sql_errno: row.number(names.last_sql_errno)?,
        last_sql_error: row.text(names.last_sql_error)?.to_owned(),
        until_condition: UntilCondition::parse(row.text(names.until_condition)?),
        until_log_file: row.text(names.until_log_file)?.to_owned(),
        until_log_pos: row.number(names.until_log_pos)?,
        retrieved_gtids: optional_gtids(names.retrieved_gtid_set)?,
        executed_gtids: optional_gtids(names.executed_gtid_set)?,
        using_gtid: names
            .using_gtid
            .map(|column| row.text(column).map(str::to_owned))
            .transpose()?,
    })
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// One session with the local server. See the module doc.
pub struct Client {
    conn: Conn,
    flavor: Flavor,
    version: String,
    server: String,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("flavor", &self.flavor)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with [`DEFAULT_TIMEOUT`] and probes the server's flavour.
    pub fn connect(params: &ClientParams) -> Result<Client, Error> {
        Client::connect_with_timeout(params, DEFAULT_TIMEOUT)
    }

    /// Connects with `timeout` for connecting and for every answer (see [`LONG_TIMEOUT`]), and
    /// probes the server's flavour. Fails with [`ErrorKind::Unsupported`] on a server version we
    /// do not support.
    pub fn connect_with_timeout(params: &ClientParams, timeout: Duration) -> Result<Client, Error> {
        let (opts, server) = connect_opts(params, timeout);
        if opts.get_ssl_opts().is_some() {
            // rust-s3 compiles in rustls' aws-lc-rs provider next to the ring one mysql uses;
            // with two, rustls cannot pick one itself and panics on the first TLS handshake.
            // Installing ring fails harmlessly when a provider is already installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut conn =
            Conn::new(opts).map_err(|err| Error::from_mysql(err, CONNECTING, &server, true))?;
        let version: Option<String> = conn
            .query_first(Flavor::VERSION_QUERY)
            .map_err(|err| Error::from_mysql(err, Flavor::VERSION_QUERY, &server, false))?;
        let version = version.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedResult,
                Flavor::VERSION_QUERY,
                &server,
                "no row",
            )
        })?;
        let flavor = Flavor::parse(&version).map_err(|err| {
            Error::new(ErrorKind::Unsupported, Flavor::VERSION_QUERY, &server, err)
        })?;
        Ok(Client {
            conn,
            flavor,
            version,
            server,
            timeout,
        })
    }

    /// The server's flavour and version, probed at connect time.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// `SELECT VERSION()` as the server answered it.
    pub fn version_string(&self) -> &str {
        &self.version
    }

    /// Which server this is, as error messages name it.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn error(&self, err: mysql::Error, statement: &str) -> Error {
        Error::from_mysql(err, statement, &self.server, false)
    }

    fn unexpected(&self, statement: &str, problem: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::UnexpectedResult,
            statement,
            &self.server,
            problem,
        )
    }

    fn unsupported(&self, statement: &str, err: flavor::Error) -> Error {
        Error::new(ErrorKind::Unsupported, statement, &self.server, err)
    }

    /// All rows of `statement`, labelled `label` in errors.
    fn rows(&mut self, statement: &str, label: &str) -> Result<Vec<Columns>, Error> {
        let rows: Vec<Row> = self
            .conn
            .query(statement)
            .map_err(|err| self.error(err, label))?;
        Ok(rows.into_iter().map(Columns::from_row).collect())
    }

    /// The only row of `statement`; an error when there is none.
    fn one_row(&mut self, statement: &str, label: &str) -> Result<Columns, Error> {
        let mut rows = self.rows(statement, label)?;
        if rows.len() != 1 {
            return Err(self.unexpected(label, format!("{} rows, expected 1", rows.len())));
        }
        Ok(rows.remove(0))
    }

    /// The first value of the only row of `statement`, NULL as the empty string.
    fn one_value(&mut self, statement: &str, label: &str) -> Result<String, Error> {
        let row = self.one_row(statement, label)?;
        let value = row
            .values()
            .next()
            .map(|value| value.unwrap_or("").to_owned());
        value.ok_or_else(|| self.unexpected(label, "no columns"))
    }

    /// Runs `statement` and discards any result. Errors name it by [`statement_label`], so a
    /// secret in a string literal stays out of messages.
    pub fn execute(&mut self, statement: &str) -> Result<(), Error> {
        self.conn
            .query_drop(statement)
            .map_err(|err| self.error(err, &statement_label(statement)))
    }

    /// The first value of the first row of `query` as text; `None` when there is no row or the
    /// value is NULL. For one-off reads the typed methods do not cover. Errors name the query by
    /// [`statement_label`].
    pub fn query_text(&mut self, query: &str) -> Result<Option<String>, Error> {
        let row: Option<Row> = self
            .conn
            .query_first(query)
            .map_err(|err| self.error(err, &statement_label(query)))?;
        Ok(row.and_then(|row| {
            let columns = Columns::from_row(row);
            columns.values().next().flatten().map(str::to_owned)
        }))
    }

    /// Runs each statement in turn, stopping at the first error.
    pub fn execute_all<S: AsRef<str>>(&mut self, statements: &[S]) -> Result<(), Error> {
        for statement in statements {
            self.execute(statement.as_ref())?;
        }
        Ok(())
    }

    /// The active binlog, its size, and the GTIDs the binlog holds.
    pub fn binlog_status(&mut self) -> Result<BinlogStatus, Error> {
        let statement = self.flavor.binlog_status_statement();
        let row = self.one_row(statement, statement)?;
        let mariadb_gtids = match self.flavor {
            Flavor::MySql(_) => String::new(),
            Flavor::MariaDb(_) => {
                let query = self.flavor.executed_gtids_query();
                self.one_value(query, query)?
            }
        };
        parse_binlog_status(self.flavor, &row, &mariadb_gtids)
            .map_err(|problem| self.unexpected(statement, problem))
    }

    /// The transactions this server's binlog holds: MySQL `@@gtid_executed`, MariaDB
    /// `@@gtid_binlog_pos`.
    pub fn executed_gtids(&mut self) -> Result<ServerGtids, Error> {
        let query = self.flavor.executed_gtids_query();
        let text = self.one_value(query, query)?;
        parse_server_gtids(self.flavor, &text).map_err(|problem| self.unexpected(query, problem))
    }

    /// Every GTID variable.
    pub fn gtid_state(&mut self) -> Result<GtidState, Error> {
        let query = self.flavor.gtid_state_query();
        let row = self.one_row(query, query)?;
        parse_gtid_state(self.flavor, &row).map_err(|problem| self.unexpected(query, problem))
    }

    /// The binlog files, oldest first.
    pub fn binary_logs(&mut self) -> Result<Vec<BinaryLog>, Error> {
        let statement = self.flavor.list_binary_logs_statement();
        let rows = self.rows(statement, statement)?;
        parse_binary_logs(&rows).map_err(|problem| self.unexpected(statement, problem))
    }

    /// `(schema, table)` of every InnoDB table a rebuild rewrites, in rebuild order.
    pub fn innodb_tables(&mut self) -> Result<Vec<(String, String)>, Error> {
        let query = Flavor::INNODB_TABLES_QUERY;
        let rows = self.rows(query, "SELECT innodb tables")?;
        rows.iter()
            .map(|row| {
                let mut values = row.values();
                match (values.next().flatten(), values.next().flatten()) {
                    (Some(schema), Some(table)) => Ok((schema.to_owned(), table.to_owned())),
                    _ => Err(self.unexpected(query, "a NULL schema or table name".to_owned())),
                }
            })
            .collect()
    }

    /// Closes the active binlog and opens the next.
    pub fn flush_binary_logs(&mut self) -> Result<(), Error> {
        let statement = self.flavor.flush_binary_logs_statement();
        self.conn
            .query_drop(statement)
            .map_err(|err| self.error(err, statement))
    }

    /// Deletes the binlogs before `file` (`binlog.000006`). MariaDB keeps files it may still
    /// need for crash recovery (right after a rotation, until its binlog checkpoint moves on)
    /// without an error or even a warning (seen on 10.11): list the binlogs again to see what
    /// went.
    pub fn purge_binary_logs_to(&mut self, file: &str) -> Result<(), Error> {
        let statement = self.flavor.purge_binary_logs_to_statement(file);
        self.conn
            .query_drop(&statement)
            .map_err(|err| self.error(err, &format!("PURGE BINARY LOGS TO {file:?}")))
    }

    /// The replication status; `None` when no replication source is configured.
    pub fn replica_status(&mut self) -> Result<Option<ReplicaStatus>, Error> {
        let statement = self.flavor.replica_status_statement();
        let mut rows = self.rows(&statement, &statement)?;
        match rows.len() {
            0 => Ok(None),
            1 => {
                let row = rows.remove(0);
                parse_replica_status(self.flavor, &row)
                    .map(Some)
                    .map_err(|problem| self.unexpected(&statement, problem))
            }
            n => Err(self.unexpected(
                &statement,
                format!("{n} rows: more than one replication channel"),
            )),
        }
    }

    /// `@@GLOBAL.server_id`.
    pub fn server_id(&mut self) -> Result<u32, Error> {
        let query = self.flavor.server_id_query();
        let text = self.one_value(query, query)?;
        text.trim()
            .parse()
            .map_err(|_| self.unexpected(query, format!("{text:?} is not a server id")))
    }

    /// `server_id` with MySQL's `server_uuid` or MariaDB's `gtid_domain_id`.
    pub fn server_identity(&mut self) -> Result<ServerIdentity, Error> {
        let query = self.flavor.server_identity_query();
        let row = self.one_row(query, query)?;
        parse_server_identity(self.flavor, &row).map_err(|problem| self.unexpected(query, problem))
    }

    /// Whether ordinary clients are kept from writing: `read_only` (or MySQL's
    /// `super_read_only`) is on.
    pub fn read_only(&mut self) -> Result<bool, Error> {
        let query = self.flavor.read_only_query();
        let row = self.one_row(query, query)?;
        parse_read_only(&row).map_err(|problem| self.unexpected(query, problem))
    }

    /// Waits until the server has applied `gtids` (see [`Flavor::wait_for_gtids_query`]), at
    /// most `wait`, rounded up to whole seconds and capped one second below the session's read
    /// timeout so the wait itself never breaks the connection. True when they are applied.
    pub fn wait_for_gtids(&mut self, gtids: &GtidSet, wait: Duration) -> Result<bool, Error> {
        const LABEL: &str = "waiting for gtids";
        let cap = self.timeout.as_secs().saturating_sub(1).max(1);
        let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).clamp(1, cap);
        let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
        let query = self
            .flavor
            .wait_for_gtids_query(gtids, seconds)
            .map_err(|err| self.unsupported(LABEL, err))?;
        let answer = self.one_value(&query, LABEL)?;
        match answer.trim() {
            "0" => Ok(true),
            // MySQL 1 and MariaDB -1: timed out.
            "1" | "-1" => Ok(false),
            other => Err(self.unexpected(LABEL, format!("answer {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Secret;

    fn flavor(text: &str) -> Flavor {
        match Flavor::parse(text) {
            Ok(flavor) => flavor,
            Err(err) => panic!("{err}"),
        }
    }

    fn mariadb() -> Flavor {
        flavor("10.11.19-MariaDB-0+deb12u1-log")
    }

    fn mysql() -> Flavor {
        flavor("9.7.4-2")
    }

    fn ok<T, E: fmt::Display>(result: Result<T, E>) -> T {
        match result {
            Ok(value) => value,
            Err(err) => panic!("{err}"),
        }
    }

    const UUID: &str = "276e0a9a-a9c9-11f0-9f1d-0242ac110002";

    fn params() -> ClientParams {
        ClientParams {
            host: "127.0.0.1".to_owned(),
            port: 3306,
            user: "myhoard".to_owned(),
            password: Secret::new("s3cret-pw".to_owned()),
            require_ssl: false,
            ca_file: None,
            unix_socket: None,
        }
    }

    #[test]
    fn builds_tcp_options() {
        let (opts, server) = connect_opts(&params(), DEFAULT_TIMEOUT);
        assert_eq!(server, "127.0.0.1:3306 as myhoard");
        assert_eq!(opts.get_ip_or_hostname(), "127.0.0.1");
        assert_eq!(opts.get_tcp_port(), 3306);
        assert_eq!(opts.get_socket(), None);
        assert!(
            !opts.get_prefer_socket(),
            "a local TCP connection must not move to the socket"
        );
        assert_eq!(opts.get_user(), Some("myhoard"));
        assert_eq!(opts.get_pass(), Some("s3cret-pw"));
        assert_eq!(opts.get_db_name(), Some("mysql"));
        assert_eq!(opts.get_read_timeout(), Some(&DEFAULT_TIMEOUT));
        assert_eq!(opts.get_write_timeout(), Some(&DEFAULT_TIMEOUT));
        assert_eq!(opts.get_tcp_connect_timeout(), Some(DEFAULT_TIMEOUT));
        assert!(opts.get_ssl_opts().is_none());
        assert!(!server.contains("s3cret"));
    }

    #[test]
    fn builds_tls_options() {
        let mut with_ca = params();
        with_ca.require_ssl = true;
        with_ca.ca_file = Some(PathBuf::from("/etc/mysql/ca.pem"));
        let (opts, server) = connect_opts(&with_ca, LONG_TIMEOUT);
        assert_eq!(server, "127.0.0.1:3306 as myhoard over TLS");
        assert_eq!(opts.get_read_timeout(), Some(&LONG_TIMEOUT));
        let Some(ssl) = opts.get_ssl_opts() else {
            panic!("TLS expected");
        };
        assert_eq!(ssl.root_cert_path(), Some(Path::new("/etc/mysql/ca.pem")));
        assert!(ssl.skip_domain_validation());
        assert!(!ssl.accept_invalid_certs());

        let mut without_ca = params();
        without_ca.require_ssl = true;
        let (opts, _) = connect_opts(&without_ca, DEFAULT_TIMEOUT);
        let Some(ssl) = opts.get_ssl_opts() else {
            panic!("TLS expected");
        };
        assert_eq!(ssl.root_cert_path(), None);
        assert!(ssl.accept_invalid_certs());

        // A CA file alone turns TLS on, as it did in Python MyHoard.
        let mut ca_only = params();
        ca_only.ca_file = Some(PathBuf::from("/etc/mysql/ca.pem"));
        let (opts, _) = connect_opts(&ca_only, DEFAULT_TIMEOUT);
        assert!(opts.get_ssl_opts().is_some());

        let mut ipv6 = params();
        ipv6.host = "::1".to_owned();
        assert_eq!(
            connect_opts(&ipv6, DEFAULT_TIMEOUT).1,
            "[::1]:3306 as myhoard"
        );
    }

    #[test]
    fn builds_socket_options() {
        let mut socket = params();
        socket.unix_socket = Some(PathBuf::from("/run/mysqld/mysqld.sock"));
        socket.require_ssl = true;
        let (opts, server) = connect_opts(&socket, DEFAULT_TIMEOUT);
        assert_eq!(server, "socket /run/mysqld/mysqld.sock as myhoard");
        assert_eq!(opts.get_socket(), Some("/run/mysqld/mysqld.sock"));
        assert!(opts.get_ssl_opts().is_none(), "no TLS over the socket");
        assert_eq!(opts.get_db_name(), Some("mysql"));
    }

    #[test]
    fn classifies_errors() {
        let server = "127.0.0.1:3306 as myhoard";
        let denied = mysql::Error::MySqlError(mysql::MySqlError {
            state: "28000".to_owned(),
            code: 1045,
            message: "Access denied for user 'myhoard'@'localhost' (using password: YES)"
                .to_owned(),
        });
        let err = Error::from_mysql(denied, "connecting", server, true);
        assert_eq!(err.kind(), ErrorKind::AccessDenied);
        assert_eq!(err.code(), Some(1045));
        assert!(err.kind().is_connection_failure());
        assert!(!err.kind().is_transient());
        assert_eq!(
            err.to_string(),
            "connecting to 127.0.0.1:3306 as myhoard: access denied: ERROR 1045 (28000): Access denied for user \
             'myhoard'@'localhost' (using password: YES)"
        );

        let syntax = mysql::Error::MySqlError(mysql::MySqlError {
            state: "42000".to_owned(),
            code: 1064,
            message: "You have an error in your SQL syntax".to_owned(),
        });
        let err = Error::from_mysql(syntax, "SHOW MASTER STATUS", server, false);
        assert_eq!(err.kind(), ErrorKind::Sql);
        assert_eq!(
            err.to_string(),
            "SHOW MASTER STATUS on 127.0.0.1:3306 as myhoard: server error: ERROR 1064 (42000): You have an \
             error in your SQL syntax"
        );
        assert!(!err.kind().is_connection_failure());

        let shutdown = mysql::Error::MySqlError(mysql::MySqlError {
            state: "08S01".to_owned(),
            code: 1053,
            message: "Server shutdown in progress".to_owned(),
        });
        assert_eq!(
            Error::from_mysql(shutdown, "SHOW BINARY LOGS", server, false).kind(),
            ErrorKind::ConnectionLost
        );

        let refused =
            mysql::Error::IoError(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let err = Error::from_mysql(refused, "connecting", server, true);
        assert_eq!(err.kind(), ErrorKind::Connect);
        assert!(err.kind().is_transient());

        let reset =
            mysql::Error::IoError(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            Error::from_mysql(reset, "FLUSH BINARY LOGS", server, false).kind(),
            ErrorKind::ConnectionLost
        );

        let timeout = mysql::Error::IoError(std::io::Error::from(std::io::ErrorKind::WouldBlock));
        let err = Error::from_mysql(timeout, "FLUSH BINARY LOGS", server, false);
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.kind().is_transient());
        let connect_timeout = mysql::Error::DriverError(mysql::DriverError::ConnectTimeout);
        assert_eq!(
            Error::from_mysql(connect_timeout, "connecting", server, true).kind(),
            ErrorKind::Timeout
        );
        let no_tls = mysql::Error::DriverError(mysql::DriverError::TlsNotSupported);
        let err = Error::from_mysql(no_tls, "connecting", server, true);
        assert_eq!(err.kind(), ErrorKind::Connect);
        assert!(err.message.contains("secure connection"), "{err}");
    }

    #[test]
    fn labels_statements_without_literals() {
        let cases = [
            ("SHOW BINARY LOGS", "SHOW BINARY LOGS"),
            ("  FLUSH\n  BINARY LOGS ", "FLUSH BINARY LOGS"),
            (
                "CREATE USER x IDENTIFIED BY 'hunter2'",
                "CREATE USER x IDENTIFIED BY …",
            ),
            (
                "CHANGE MASTER TO MASTER_HOST='dummy', MASTER_PASSWORD='pw'",
                "CHANGE MASTER TO MASTER_HOST= …",
            ),
            ("SELECT \"pw\"", "SELECT …"),
            ("'pw'", "…"),
        ];
        for (statement, label) in cases {
            assert_eq!(statement_label(statement), label, "{statement:?}");
        }
        let long = "SELECT ".to_owned() + &"a, ".repeat(60);
        let label = statement_label(&long);
        assert_eq!(label.chars().count(), 82, "{label}");
        assert!(label.ends_with(" …"));
    }

    /// `SHOW BINARY LOG STATUS` on MySQL 9.7.4 after a `FLUSH BINARY LOGS`, with a tagged GTID
    /// and two UUIDs (the server separates them with ",\n").
    #[test]
    fn parses_mysql_binlog_status() {
        let gtids = format!("{UUID}:1-12:mytag:1,\n11111111-2222-3333-4444-555555555555:1-5");
        let row = Columns::from_pairs([
            ("File", Some("binlog.000003")),
            ("Position", Some("197")),
            ("Binlog_Do_DB", Some("")),
            ("Binlog_Ignore_DB", Some("")),
            ("Executed_Gtid_Set", Some(gtids.as_str())),
        ]);
        let status = ok(parse_binlog_status(mysql(), &row, ""));
        assert_eq!(status.file, "binlog.000003");
        assert_eq!(status.position, 197);
        let expected = ok(GtidSet::parse_mysql(&gtids));
        assert_eq!(status.gtids, ServerGtids::MySql(expected.clone()));
        assert_eq!(status.gtids.to_gtid_set(), expected);
        assert_eq!(
            status.gtids.to_string(),
            format!("11111111-2222-3333-4444-555555555555:1-5,{UUID}:1-12:mytag:1")
        );

        // A fresh server: no GTIDs yet.
        let row = Columns::from_pairs([
            ("File", Some("binlog.000001")),
            ("Position", Some("158")),
            ("Executed_Gtid_Set", Some("")),
        ]);
        assert_eq!(
            ok(parse_binlog_status(mysql(), &row, "")).gtids,
            ServerGtids::MySql(GtidSet::new())
        );
    }

    /// `SHOW MASTER STATUS` on MariaDB 10.11.19 (no GTID column), with `@@gtid_binlog_pos`.
    #[test]
    fn parses_mariadb_binlog_status() {
        let row = Columns::from_pairs([
            ("File", Some("binlog.000006")),
            ("Position", Some("27771")),
            ("Binlog_Do_DB", Some("")),
            ("Binlog_Ignore_DB", Some("")),
        ]);
        let status = ok(parse_binlog_status(mariadb(), &row, "0-1-128,1-1-7"));
        assert_eq!(status.file, "binlog.000006");
        assert_eq!(status.position, 27771);
        let ServerGtids::MariaDb(position) = &status.gtids else {
            panic!("{status:?}");
        };
        assert_eq!(position.get(0, 1), Some(128));
        assert_eq!(position.get(1, 1), Some(7));
        assert_eq!(status.gtids.to_string(), "0-1-128,1-1-7");
        assert_eq!(
            status.gtids.to_gtid_set(),
            ok("0-1:1-128,1-1:1-7".parse::<GtidSet>())
        );
    }

    /// A flavour, a recorded row, the MariaDB GTID text, and what the complaint must mention.
    type BadStatus = (
        Flavor,
        Vec<(&'static str, Option<&'static str>)>,
        &'static str,
        &'static str,
    );

    #[test]
    fn refuses_bad_binlog_status() {
        let cases: [BadStatus; 5] = [
            (
                mysql(),
                vec![("File", Some("")), ("Position", Some("4"))],
                "",
                "empty File",
            ),
            (
                mysql(),
                vec![("File", Some("binlog.000001")), ("Position", Some("x"))],
                "",
                "not a number",
            ),
            (
                mysql(),
                vec![("File", Some("binlog.000001")), ("Position", Some("4"))],
                "",
                "no column \"Executed_Gtid_Set\"",
            ),
            (
                mysql(),
                vec![
                    ("File", Some("binlog.000001")),
                    ("Position", Some("4")),
                    ("Executed_Gtid_Set", Some("not-a-uuid:1")),
                ],
                "",
                "Executed_Gtid_Set",
            ),
            (
                mariadb(),
                vec![("File", Some("binlog.000001")), ("Position", Some("4"))],
                "0-1",
                "gtid_binlog_pos",
            ),
        ];
        for (flavor, pairs, gtids, expected) in cases {
            let row = Columns::from_pairs(pairs);
            match parse_binlog_status(flavor, &row, gtids) {
                Ok(status) => panic!("{row:?} parsed as {status:?}"),
                Err(problem) => {
                    assert!(problem.contains(expected), "{problem:?} lacks {expected:?}")
                }
            }
        }
    }

    #[test]
    fn parses_binary_logs() {
        // MySQL has an `Encrypted` column too; MariaDB only these two.
        let rows = [
            Columns::from_pairs([
                ("Log_name", Some("binlog.000001")),
                ("File_size", Some("1024")),
                ("Encrypted", Some("No")),
            ]),
            Columns::from_pairs([
                ("Log_name", Some("binlog.000002")),
                ("File_size", Some("197")),
            ]),
        ];
        assert_eq!(
            ok(parse_binary_logs(&rows)),
            [
                BinaryLog {
                    name: "binlog.000001".to_owned(),
                    size: 1024
                },
                BinaryLog {
                    name: "binlog.000002".to_owned(),
                    size: 197
                },
            ]
        );
        assert_eq!(ok(parse_binary_logs(&[])), []);
        let bad = [Columns::from_pairs([
            ("Log_name", Some("binlog.000001")),
            ("File_size", None),
        ])];
        assert!(parse_binary_logs(&bad).is_err());
    }

    #[test]
    fn parses_gtid_state() {
        let executed = format!("{UUID}:1-439,\n{UUID}:mytag:1");
        let row = Columns::from_pairs([
            ("@@GLOBAL.gtid_executed", Some(executed.as_str())),
            ("@@GLOBAL.gtid_purged", Some("")),
        ]);
        let state = ok(parse_gtid_state(mysql(), &row));
        assert_eq!(
            state,
            GtidState::MySql {
                executed: ok(GtidSet::parse_mysql(&executed)),
                purged: GtidSet::new(),
            }
        );
        assert_eq!(state.executed(), ok(GtidSet::parse_mysql(&executed)));

        // MariaDB after a replay with binlog on: the replayed 0-1 GTIDs, then a local write of
        // server 2 (mariadb.md section 7).
        let row = Columns::from_pairs([
            ("@@GLOBAL.gtid_binlog_pos", Some("0-2-23577")),
            ("@@GLOBAL.gtid_current_pos", Some("0-2-23577")),
            ("@@GLOBAL.gtid_slave_pos", Some("0-1-23576")),
            ("@@GLOBAL.gtid_binlog_state", Some("0-1-23576,0-2-23577")),
        ]);
        let state = ok(parse_gtid_state(mariadb(), &row));
        let GtidState::MariaDb {
            binlog_pos,
            current_pos,
            slave_pos,
            binlog_state,
        } = &state
        else {
            panic!("{state:?}");
        };
        assert_eq!(binlog_pos.get(0, 2), Some(23577));
        assert_eq!(current_pos.get(0, 2), Some(23577));
        assert_eq!(slave_pos.get(0, 1), Some(23576));
        assert_eq!(binlog_state.len(), 2);
        assert_eq!(
            state.executed(),
            ok("0-1:1-23576,0-2:1-23577".parse::<GtidSet>())
        );

        // Fresh MariaDB: all empty (NULL is read as empty too).
        let row = Columns::from_pairs([
            ("a", Some("")),
            ("b", Some("")),
            ("c", None),
            ("d", Some("")),
        ]);
        assert_eq!(
            ok(parse_gtid_state(mariadb(), &row)).executed(),
            GtidSet::new()
        );

        // Wrong number of values.
        let row = Columns::from_pairs([("a", Some(""))]);
        assert_eq!(
            parse_gtid_state(mysql(), &row),
            Err("1 values, expected 2".to_owned())
        );
    }

    #[test]
    fn parses_server_identity() {
        let row = Columns::from_pairs([
            ("@@GLOBAL.server_id", Some("1")),
            ("@@GLOBAL.server_uuid", Some(UUID)),
        ]);
        let identity = ok(parse_server_identity(mysql(), &row));
        assert_eq!(identity.server_id(), 1);
        assert_eq!(identity.origin().to_string(), UUID);

        let row = Columns::from_pairs([
            ("@@GLOBAL.server_id", Some("2")),
            ("@@GLOBAL.gtid_domain_id", Some("0")),
        ]);
        let identity = ok(parse_server_identity(mariadb(), &row));
        assert_eq!(
            identity,
            ServerIdentity::MariaDb {
                server_id: 2,
                domain_id: 0
            }
        );
        assert_eq!(identity.origin().to_string(), "0-2");

        let bad = [
            (
                mysql(),
                Columns::from_pairs([("a", Some("1")), ("b", Some("nope"))]),
            ),
            (
                mysql(),
                Columns::from_pairs([("a", Some("-1")), ("b", Some(UUID))]),
            ),
            (
                mariadb(),
                Columns::from_pairs([("a", Some("1")), ("b", Some("x"))]),
            ),
            (mariadb(), Columns::from_pairs([("a", Some("1"))])),
        ];
        for (flavor, row) in bad {
            assert!(parse_server_identity(flavor, &row).is_err(), "{row:?}");
        }
    }

    #[test]
    fn parses_read_only() {
        let cases = [
            (vec![Some("0")], Ok(false)),
            (vec![Some("1")], Ok(true)),
            (vec![Some("OFF")], Ok(false)),
            (vec![Some("ON")], Ok(true)),
            (vec![Some("NO_LOCK")], Ok(true)),
            (vec![Some("0"), Some("0")], Ok(false)),
            (vec![Some("0"), Some("1")], Ok(true)),
            (
                vec![Some("maybe")],
                Err("\"MAYBE\" is neither on nor off".to_owned()),
            ),
        ];
        for (values, expected) in cases {
            let row = Columns(
                values
                    .iter()
                    .map(|v| ("v".to_owned(), v.map(str::to_owned)))
                    .collect(),
            );
            assert_eq!(parse_read_only(&row), expected, "{values:?}");
        }
    }

    /// `SHOW REPLICA STATUS` on MySQL 9.7 after `START REPLICA SQL_THREAD UNTIL
    /// SQL_AFTER_GTIDS` reached its target (the columns the restore reads, among the 50-odd).
    #[test]
    fn parses_mysql_replica_status() {
        let executed = format!("{UUID}:1-1866");
        let row = Columns::from_pairs([
            ("Replica_IO_State", Some("")),
            ("Source_Host", Some("dummy")),
            ("Source_User", Some("")),
            ("Source_Port", Some("3306")),
            ("Relay_Log_File", Some("relay.000003")),
            ("Relay_Log_Pos", Some("40557")),
            ("Relay_Source_Log_File", Some("binlog.000003")),
            ("Replica_IO_Running", Some("No")),
            ("Replica_SQL_Running", Some("No")),
            ("Exec_Source_Log_Pos", Some("40557")),
            ("Until_Condition", Some("SQL_AFTER_GTIDS")),
            ("Until_Log_File", Some("")),
            ("Until_Log_Pos", Some("0")),
            ("Last_SQL_Errno", Some("0")),
            ("Last_SQL_Error", Some("")),
            ("Replica_SQL_Running_State", Some("")),
            ("Retrieved_Gtid_Set", Some("")),
            ("Executed_Gtid_Set", Some(executed.as_str())),
        ]);
        let status = ok(parse_replica_status(mysql(), &row));
        assert_eq!(
            status,
            ReplicaStatus {
                source_host: "dummy".to_owned(),
                io_running: "No".to_owned(),
                sql_running: false,
                sql_running_state: String::new(),
                relay_log_file: "relay.000003".to_owned(),
                relay_log_pos: 40557,
                relay_source_log_file: "binlog.000003".to_owned(),
                exec_source_log_pos: 40557,
                last_sql_errno: 0,
                last_sql_error: String::new(),
                until_condition: UntilCondition::SqlAfterGtids,
                until_log_file: String::new(),
                until_log_pos: 0,
                retrieved_gtids: Some(GtidSet::new()),
                executed_gtids: Some(ok(GtidSet::parse_mysql(&executed))),
                using_gtid: None,
            }
        );
    }

    /// `SHOW SLAVE STATUS` on MariaDB 10.11 while a replay waits for more relay log, and after a
    /// duplicate-key failure (mariadb.md sections 5 and 7).
    #[test]
    fn parses_mariadb_replica_status() {
        let waiting = [
            ("Slave_IO_State", Some("")),
            ("Master_Host", Some("dummy")),
            ("Relay_Log_File", Some("relay.000004")),
            ("Relay_Log_Pos", Some("4")),
            ("Relay_Master_Log_File", Some("binlog.000009")),
            ("Slave_IO_Running", Some("No")),
            ("Slave_SQL_Running", Some("Yes")),
            ("Exec_Master_Log_Pos", Some("4")),
            ("Until_Condition", Some("None")),
            ("Until_Log_File", Some("")),
            ("Until_Log_Pos", Some("0")),
            ("Last_SQL_Errno", Some("0")),
            ("Last_SQL_Error", Some("")),
            ("Using_Gtid", Some("No")),
            ("Gtid_IO_Pos", Some("")),
            (
                "Slave_SQL_Running_State",
                Some("Slave has read all relay log; waiting for more updates"),
            ),
        ];
        let status = ok(parse_replica_status(
            mariadb(),
            &Columns::from_pairs(waiting),
        ));
        assert!(status.sql_running);
        assert_eq!(status.relay_log_file, "relay.000004");
        assert_eq!(status.relay_source_log_file, "binlog.000009");
        assert_eq!(status.until_condition, UntilCondition::None);
        assert_eq!(status.using_gtid.as_deref(), Some("No"));
        assert_eq!(status.retrieved_gtids, None);
        assert_eq!(status.executed_gtids, None);
        assert_eq!(
            status.sql_running_state,
            "Slave has read all relay log; waiting for more updates"
        );

        let mut failed = waiting;
        failed[6] = ("Slave_SQL_Running", Some("No"));
        failed[8] = ("Until_Condition", Some("Master"));
        failed[9] = ("Until_Log_File", Some("binlog.000010"));
        failed[10] = ("Until_Log_Pos", Some("40557"));
        failed[11] = ("Last_SQL_Errno", Some("1062"));
        failed[12] = (
            "Last_SQL_Error",
            Some(
                "Could not execute Write_rows_v1 event on table shop.items; Duplicate entry '1' for key 'PRIMARY'",
            ),
        );
        let status = ok(parse_replica_status(
            mariadb(),
            &Columns::from_pairs(failed),
        ));
        assert!(!status.sql_running);
        assert_eq!(status.last_sql_errno, 1062);
        assert!(status.last_sql_error.contains("Duplicate entry"));
        assert_eq!(status.until_condition, UntilCondition::SourcePosition);
        assert_eq!(status.until_log_file, "binlog.000010");
        assert_eq!(status.until_log_pos, 40557);

        // Columns named for the wrong flavour are a clear error, not silent defaults.
        let problem = parse_replica_status(mysql(), &Columns::from_pairs(waiting));
        assert_eq!(problem, Err("no column \"Source_Host\"".to_owned()));
    }

    #[test]
    fn parses_until_conditions() {
        let cases = [
            ("None", UntilCondition::None),
            ("", UntilCondition::None),
            ("Source", UntilCondition::SourcePosition),
            ("Master", UntilCondition::SourcePosition),
            ("Relay", UntilCondition::RelayPosition),
            ("SQL_BEFORE_GTIDS", UntilCondition::SqlBeforeGtids),
            ("SQL_AFTER_GTIDS", UntilCondition::SqlAfterGtids),
            ("SQL_AFTER_MTS_GAPS", UntilCondition::SqlAfterMtsGaps),
            ("Gtid", UntilCondition::Gtid),
            ("DONE", UntilCondition::Done),
            (
                "SQL_VIEW_ID",
                UntilCondition::Other("SQL_VIEW_ID".to_owned()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(UntilCondition::parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn reads_values_as_text() {
        assert_eq!(value_text(Value::NULL), None);
        assert_eq!(
            value_text(Value::Bytes(b"binlog.000001".to_vec())).as_deref(),
            Some("binlog.000001")
        );
        assert_eq!(value_text(Value::Int(-1)).as_deref(), Some("-1"));
        assert_eq!(value_text(Value::UInt(42)).as_deref(), Some("42"));
    }
}

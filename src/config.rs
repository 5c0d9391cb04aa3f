//! The configuration file, `myhoard.json`: its keys, its defaults, and every check that can be
//! made on it before the daemon touches MySQL or object storage.
//!
//! The keys, their meanings and their defaults are Python MyHoard's, so an existing
//! `myhoard.json` keeps working; the few keys that are ours are marked "ours" here and in
//! `docs/configuration.md`. Loading is two passes. First the JSON is walked as a
//! `serde_json::Value` against the key tree in `SCHEMA`; that lists every unknown key, every
//! missing required key and every value of the wrong type in one go, where serde's
//! `deny_unknown_fields` would stop at the first. The walked value is then deserialized into
//! [`RawConfig`], and [`Config::from_raw`] checks the rules that relate values to each other,
//! parses the RSA keys, and converts units (seconds, minutes, days, bytes) once, here, so that
//! nothing else in the daemon sees a bare number of minutes.
//!
//! Runs on the main thread at start, on SIGHUP and for `validate-config`. Apart from
//! [`Config::load`], which reads the file and its permissions, it does no I/O, and it never logs:
//! problems come back as [`ConfigErrors`] and advice as [`Config::warnings`], for the caller to
//! print. Mirrors `MyHoard._load_configuration` in `myhoard.py` plus the `config[...]` reads
//! spread over `controller.py`, `backup_stream.py` and `restore_coordinator.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::pipeline::compress::{Algorithm, CompressionSettings};
use crate::pipeline::encrypt::{PrivateKey, PublicKey};
use crate::storage::StorageConfig;

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// A value that must never reach a log line: its `Debug` prints `<redacted>`. Used for the MySQL
/// password, the private key PEM and the Sentry DSN, so that `{config:?}` is safe to log.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (a connection, a key parser).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// Only the tests serialize a `RawConfig` (to compare its keys with the schema); outside them a
// secret has no business being written anywhere.
#[cfg(test)]
impl<T: serde::Serialize> serde::Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

/// One thing wrong with the configuration: the dotted key path it concerns (empty for the file
/// as a whole) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a configuration, found in one pass. `Display` prints one problem per
/// line, sorted by key path (problems at the same path keep the order they were found in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    problems: Vec<Problem>,
    /// Warnings found along the way, so that `validate-config` can show them next to the errors.
    pub warnings: Vec<String>,
}

impl ConfigErrors {
    fn new(mut problems: Vec<Problem>, warnings: Vec<String>) -> ConfigErrors {
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        ConfigErrors { problems, warnings }
    }

    fn single(message: String) -> ConfigErrors {
        ConfigErrors::new(
            vec![Problem {
                path: String::new(),
                message,
            }],
            Vec::new(),
        )
    }

    /// The problems, sorted by key path.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems and warnings while checking, and knows which values were replaced by
/// placeholders because they were missing or of the wrong type: a rule about such a value would
/// only report the placeholder, so its problems are dropped (the real one is already listed).
#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    replaced: Vec<String>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if !self.is_replaced(&path) {
            self.problems.push(Problem {
                path,
                message: message.into(),
            });
        }
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if !self.is_replaced(&path) {
            self.warnings.push(Problem {
                path,
                message: message.into(),
            });
        }
    }

    fn replace(&mut self, path: &str) {
        self.replaced.push(path.to_owned());
    }

    /// Whether `path`, or an object containing it, holds a placeholder.
    fn is_replaced(&self, path: &str) -> bool {
        self.replaced.iter().any(|replaced| {
            path == replaced
                || (path.starts_with(replaced.as_str())
                    && path.as_bytes().get(replaced.len()) == Some(&b'.'))
        })
    }

    /// The config when nothing is wrong (with the warnings in it), or every problem.
    fn finish(self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        let warnings: Vec<String> = self.warnings.iter().map(Problem::to_string).collect();
        match config {
            Some(mut config) if self.problems.is_empty() => {
                config.warnings = warnings;
                Ok(config)
            }
            _ => Err(ConfigErrors::new(self.problems, warnings)),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------
// The key tree, for the first pass
// ---------------------------------------------------------------------------------------------

/// What a value must look like. Kept next to the `Raw*` structs below; a test checks that both
/// name exactly the same keys.
#[derive(Clone, Copy)]
enum Shape {
    Bool,
    /// A non-negative integer.
    UInt,
    Int,
    /// A non-negative number, integer or not (seconds, days).
    Number,
    Str,
    StrList,
    Object(&'static [Key]),
    /// An object whose keys are names the user picks, each value an object of these keys.
    Named(&'static [Key]),
    /// statsd tags: names to scalar values.
    Tags,
    /// rohmu's `object_storage`, whose keys `storage::StorageConfig` owns.
    Storage,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Python MyHoard reads it with `config[key]`: absent is an error, and so is null.
    Required,
    /// Read with `config[key]` but null is a meaningful value (`sentry_dsn`, `statsd.host`).
    RequiredNullable,
    /// Read with `.get(key)`: absent and null both mean the default.
    Optional,
}

#[derive(Clone, Copy)]
struct Key {
    name: &'static str,
    shape: Shape,
    presence: Presence,
}

const fn req(name: &'static str, shape: Shape) -> Key {
    Key {
        name,
        shape,
        presence: Presence::Required,
    }
}

const fn nullable(name: &'static str, shape: Shape) -> Key {
    Key {
        name,
        shape,
        presence: Presence::RequiredNullable,
    }
}

const fn opt(name: &'static str, shape: Shape) -> Key {
    Key {
        name,
        shape,
        presence: Presence::Optional,
    }
}

const INCREMENTAL: &[Key] = &[
    opt("enabled", Shape::Bool),
    opt("full_backup_week_schedule", Shape::Str),
];

const BACKUP_SETTINGS: &[Key] = &[
    req("backup_age_days_max", Shape::Number),
    req("backup_count_max", Shape::UInt),
    req("backup_count_min", Shape::UInt),
    req("backup_hour", Shape::UInt),
    req("backup_interval_minutes", Shape::UInt),
    req("backup_minute", Shape::UInt),
    req("forced_binlog_rotation_interval", Shape::Number),
    opt("upload_site", Shape::Str),
    opt("incremental", Shape::Object(INCREMENTAL)),
];

const COMPRESSION: &[Key] = &[
    opt("algorithm", Shape::Str),
    opt("level", Shape::Int),
    // Ours.
    opt("threads", Shape::UInt),
];

const ENCRYPTION_KEYS: &[Key] = &[req("private", Shape::Str), req("public", Shape::Str)];

const BACKUP_SITE: &[Key] = &[
    opt("compression", Shape::Object(COMPRESSION)),
    req("encryption_keys", Shape::Object(ENCRYPTION_KEYS)),
    req("object_storage", Shape::Storage),
    opt("recovery_only", Shape::Bool),
    opt("split_size", Shape::UInt),
];

const BINLOG_PURGE_SETTINGS: &[Key] = &[
    req("enabled", Shape::Bool),
    opt("max_bytes_per_cycle", Shape::Int),
    opt("max_files_per_cycle", Shape::Int),
    req("min_binlog_age_before_purge", Shape::Number),
    req("purge_interval", Shape::Number),
    req("purge_when_observe_no_streams", Shape::Bool),
];

const CLIENT_PARAMS: &[Key] = &[
    opt("ca_file", Shape::Str),
    req("host", Shape::Str),
    req("password", Shape::Str),
    req("port", Shape::UInt),
    opt("require_ssl", Shape::Bool),
    // Ours.
    opt("unix_socket", Shape::Str),
    req("user", Shape::Str),
];

const MYSQL: &[Key] = &[
    req("binlog_prefix", Shape::Str),
    req("client_params", Shape::Object(CLIENT_PARAMS)),
    req("config_file_name", Shape::Str),
    req("data_directory", Shape::Str),
    req("relay_log_index_file", Shape::Str),
    req("relay_log_prefix", Shape::Str),
];

const STATSD: &[Key] = &[
    nullable("host", Shape::Str),
    nullable("port", Shape::UInt),
    req("tags", Shape::Tags),
];

const XTRABACKUP: &[Key] = &[
    opt("compress_threads", Shape::UInt),
    opt("copy_threads", Shape::UInt),
    opt("encrypt_threads", Shape::UInt),
    opt("estimate_memory", Shape::Bool),
    opt("register_redo_log_consumer", Shape::Bool),
];

/// Every key of `myhoard.json`, as Python MyHoard reads it (plus ours).
const SCHEMA: &[Key] = &[
    req("backup_settings", Shape::Object(BACKUP_SETTINGS)),
    req("backup_sites", Shape::Named(BACKUP_SITE)),
    req(
        "binlog_purge_settings",
        Shape::Object(BINLOG_PURGE_SETTINGS),
    ),
    req("http_address", Shape::Str),
    req("http_port", Shape::UInt),
    req("mysql", Shape::Object(MYSQL)),
    opt("optimize_tables_before_backup", Shape::Bool),
    opt("restore_auto_mark_backups_broken", Shape::Bool),
    opt("restore_download_workers", Shape::UInt),
    opt("restore_free_memory_percentage", Shape::UInt),
    req("restore_max_binlog_bytes", Shape::UInt),
    nullable("sentry_dsn", Shape::Str),
    req("server_id", Shape::UInt),
    opt("start_command", Shape::StrList),
    req("state_directory", Shape::Str),
    req("statsd", Shape::Object(STATSD)),
    opt("systemctl_command", Shape::StrList),
    opt("systemd_env_update_command", Shape::StrList),
    opt("systemd_service", Shape::Str),
    req("temporary_directory", Shape::Str),
    opt("xtrabackup", Shape::Object(XTRABACKUP)),
];

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && !n.is_u64() => "a negative integer",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A well-typed stand-in for a value that is missing or of the wrong type, so that the second
/// pass can still run and report everything else. Problems at its path are suppressed.
fn placeholder(shape: Shape) -> Value {
    match shape {
        Shape::Bool => Value::Bool(false),
        Shape::UInt | Shape::Number => Value::from(1),
        Shape::Int => Value::from(0),
        Shape::Str => Value::from(""),
        Shape::StrList => Value::Array(Vec::new()),
        Shape::Object(keys) => Value::Object(
            keys.iter()
                .filter(|key| key.presence != Presence::Optional)
                .map(|key| {
                    let value = match key.presence {
                        Presence::RequiredNullable => Value::Null,
                        _ => placeholder(key.shape),
                    };
                    (key.name.to_owned(), value)
                })
                .collect(),
        ),
        Shape::Named(_) | Shape::Tags => Value::Object(Map::new()),
        Shape::Storage => serde_json::json!({"storage_type": "local", "directory": "/"}),
    }
}

/// The first pass: checks `map` against `keys`, recursively, reporting unknown keys, missing
/// required keys and type errors, and leaves `map` in a shape that deserializes into the `Raw*`
/// structs: unknown keys removed, nulls of optional keys removed (so serde's default applies),
/// bad values replaced by placeholders.
fn walk_object(report: &mut Report, path: &str, keys: &[Key], map: &mut Map<String, Value>) {
    let unknown: Vec<String> = map
        .keys()
        .filter(|name| !keys.iter().any(|key| key.name == *name))
        .cloned()
        .collect();
    for name in unknown {
        report.error(join(path, &name), "unknown key");
        map.remove(&name);
    }
    for key in keys {
        let key_path = join(path, key.name);
        let usable = match map.get_mut(key.name) {
            None => {
                if key.presence == Presence::Optional {
                    continue;
                }
                report.error(&key_path, "required key is missing");
                false
            }
            Some(Value::Null) => match key.presence {
                Presence::RequiredNullable => continue,
                Presence::Optional => {
                    map.remove(key.name);
                    continue;
                }
                Presence::Required => {
                    report.error(&key_path, "must not be null");
                    false
                }
            },
            Some(value) => walk_value(report, &key_path, key.shape, value),
        };
        if !usable {
            report.replace(&key_path);
            match key.presence {
                Presence::Optional => {
                    map.remove(key.name);
                }
                Presence::RequiredNullable => {
                    map.insert(key.name.to_owned(), Value::Null);
                }
                Presence::Required => {
                    map.insert(key.name.to_owned(), placeholder(key.shape));
                }
            }
        }
    }
}

/// Checks one value; `false` when it is unusable and must be replaced (the problem is reported).
fn walk_value(report: &mut Report, path: &str, shape: Shape, value: &mut Value) -> bool {
    let expected = match shape {
        Shape::Bool if value.is_boolean() => return true,
        Shape::Bool => "a boolean",
        Shape::UInt if value.is_u64() => return true,
        Shape::UInt => "a non-negative integer",
        Shape::Int if value.is_i64() => return true,
        Shape::Int => "an integer",
        Shape::Number if value.as_f64().is_some_and(|n| n >= 0.0) => return true,
        Shape::Number => "a non-negative number",
        Shape::Str if value.is_string() => return true,
        Shape::Str => "a string",
        Shape::StrList
            if value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)) =>
        {
            return true;
        }
        Shape::StrList => "a list of strings",
        Shape::Object(keys) => match value.as_object_mut() {
            Some(map) => {
                walk_object(report, path, keys, map);
                return true;
            }
            None => "an object",
        },
        Shape::Named(keys) => match value.as_object_mut() {
            Some(map) => {
                for (name, entry) in map.iter_mut() {
                    let entry_path = join(path, name);
                    if !walk_value(report, &entry_path, Shape::Object(keys), entry) {
                        report.replace(&entry_path);
                        *entry = placeholder(Shape::Object(keys));
                    }
                }
                return true;
            }
            None => "an object",
        },
        Shape::Tags => match value.as_object_mut() {
            Some(map) => {
                map.retain(|name, tag| {
                    let scalar = !(tag.is_array() || tag.is_object());
                    if !scalar {
                        report.error(join(path, name), "must be a string, number or boolean");
                    }
                    scalar
                });
                return true;
            }
            None => "an object",
        },
        Shape::Storage => match value.as_object_mut() {
            Some(map) => return walk_storage(report, path, map),
            None => "an object",
        },
    };
    report.error(
        path,
        format!("must be {expected}, not {}", type_name(value)),
    );
    false
}

/// `object_storage` keys belong to `storage::StorageConfig` (serde, `deny_unknown_fields`), so
/// the only way to learn them is to let serde try. Its messages name the offending field; an
/// unknown one is reported and removed and serde tries again, so that every unknown key is
/// listed rather than the first. The message formats are serde's documented `de::Error`
/// constructors (`unknown field`, `missing field`, `unknown variant`).
fn walk_storage(report: &mut Report, path: &str, map: &mut Map<String, Value>) -> bool {
    loop {
        let value = Value::Object(std::mem::take(map));
        let result = StorageConfig::deserialize(&value);
        if let Value::Object(inner) = value {
            *map = inner;
        }
        let Err(err) = result else {
            return true;
        };
        let message = err.to_string();
        let quoted = message.split('`').nth(1).unwrap_or_default().to_owned();
        if message.starts_with("unknown field `") && map.remove(&quoted).is_some() {
            report.error(join(path, &quoted), "unknown key");
            continue;
        }
        if message.starts_with("missing field `") {
            report.error(join(path, &quoted), "required key is missing");
        } else if message.starts_with("unknown variant `") {
            report.error(join(path, "storage_type"), message);
        } else {
            report.error(path, message);
        }
        return false;
    }
}

// ---------------------------------------------------------------------------------------------
// The raw file, for the second pass
// ---------------------------------------------------------------------------------------------

/// `myhoard.json` as written: the same keys, types and defaults as Python MyHoard. Required keys
/// are plain fields; `.get()` keys have serde defaults. Paths and numbers are not checked yet.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub backup_settings: RawBackupSettings,
    pub backup_sites: BTreeMap<String, RawBackupSite>,
    pub binlog_purge_settings: RawBinlogPurgeSettings,
    pub http_address: String,
    pub http_port: u64,
    pub mysql: RawMysql,
    #[serde(default)]
    pub optimize_tables_before_backup: bool,
    #[serde(default)]
    pub restore_auto_mark_backups_broken: bool,
    /// Absent means `max(cpus - 1, 1)`.
    #[serde(default)]
    pub restore_download_workers: Option<u64>,
    #[serde(default)]
    pub restore_free_memory_percentage: Option<u64>,
    pub restore_max_binlog_bytes: u64,
    /// Required but may be null. (serde would take an absent `Option` as `None`; the first pass
    /// is what rejects an absent key.)
    pub sentry_dsn: Option<Secret<String>>,
    pub server_id: u64,
    #[serde(default)]
    pub start_command: Option<Vec<String>>,
    pub state_directory: PathBuf,
    pub statsd: RawStatsd,
    #[serde(default)]
    pub systemctl_command: Option<Vec<String>>,
    #[serde(default)]
    pub systemd_env_update_command: Option<Vec<String>>,
    #[serde(default)]
    pub systemd_service: Option<String>,
    pub temporary_directory: PathBuf,
    #[serde(default)]
    pub xtrabackup: RawXtrabackup,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawBackupSettings {
    pub backup_age_days_max: f64,
    pub backup_count_max: u64,
    pub backup_count_min: u64,
    pub backup_hour: u64,
    pub backup_interval_minutes: u64,
    pub backup_minute: u64,
    /// Seconds.
    pub forced_binlog_rotation_interval: f64,
    #[serde(default)]
    pub upload_site: Option<String>,
    #[serde(default)]
    pub incremental: RawIncremental,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawIncremental {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub full_backup_week_schedule: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawBackupSite {
    #[serde(default)]
    pub compression: RawCompression,
    pub encryption_keys: RawEncryptionKeys,
    pub object_storage: StorageConfig,
    #[serde(default)]
    pub recovery_only: bool,
    /// Absent or 0: the storage's own limit.
    #[serde(default)]
    pub split_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    /// Absent means snappy.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Absent means 0, the algorithm's default.
    #[serde(default)]
    pub level: Option<i64>,
    /// Ours: zstd and snappy worker threads, 0 = compress on the calling thread.
    #[serde(default)]
    pub threads: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawEncryptionKeys {
    pub private: Secret<String>,
    pub public: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawBinlogPurgeSettings {
    pub enabled: bool,
    /// Null, absent or <= 0: no limit.
    #[serde(default)]
    pub max_bytes_per_cycle: Option<i64>,
    /// Null, absent or <= 0: no limit.
    #[serde(default)]
    pub max_files_per_cycle: Option<i64>,
    /// Seconds.
    pub min_binlog_age_before_purge: f64,
    /// Seconds.
    pub purge_interval: f64,
    pub purge_when_observe_no_streams: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawMysql {
    pub binlog_prefix: PathBuf,
    pub client_params: RawClientParams,
    pub config_file_name: PathBuf,
    pub data_directory: PathBuf,
    pub relay_log_index_file: PathBuf,
    pub relay_log_prefix: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawClientParams {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub host: String,
    pub password: Secret<String>,
    pub port: u64,
    #[serde(default)]
    pub require_ssl: bool,
    /// Ours.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    pub user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RawStatsd {
    pub host: Option<String>,
    pub port: Option<u64>,
    pub tags: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct RawXtrabackup {
    pub compress_threads: u64,
    pub copy_threads: u64,
    pub encrypt_threads: u64,
    pub estimate_memory: bool,
    pub register_redo_log_consumer: bool,
}

impl Default for RawXtrabackup {
    fn default() -> RawXtrabackup {
        RawXtrabackup {
            compress_threads: 1,
            copy_threads: 1,
            encrypt_threads: 1,
            estimate_memory: false,
            register_redo_log_consumer: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

/// The configuration the daemon runs with: every rule checked, units converted, keys parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub backup_settings: BackupSettings,
    /// By site name. At least one; `backup_settings.upload_site` names one of them.
    pub backup_sites: BTreeMap<String, SiteConfig>,
    pub binlog_purge_settings: BinlogPurgeSettings,
    pub http_address: String,
    pub http_port: u16,
    pub mysql: MysqlSettings,
    pub optimize_tables_before_backup: bool,
    pub restore: RestoreSettings,
    /// Where errors and panics are reported (`crate::error_reporting`).
    pub sentry_dsn: Option<Secret<String>>,
    /// MySQL's `server_id`; it is part of binlog object names and promotion markers.
    pub server_id: u32,
    /// How to restart mysqld: `start_command` or `systemd_service`.
    pub mysqld: MysqldControl,
    pub state_directory: PathBuf,
    pub temporary_directory: PathBuf,
    pub statsd: StatsdSettings,
    pub xtrabackup: XtrabackupSettings,
    /// Advice that does not stop the daemon, each `path: message`; the caller logs them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    /// `backup_age_days_max`.
    pub backup_age_max: Duration,
    pub backup_count_max: usize,
    pub backup_count_min: usize,
    /// UTC hour of the daily schedule, 0..=23.
    pub backup_hour: u8,
    /// 0..=59.
    pub backup_minute: u8,
    /// `backup_interval_minutes`: 1 day, whole days, or a whole fraction of a day.
    pub backup_interval: Duration,
    pub forced_binlog_rotation_interval: Duration,
    /// The site new backups go to: `upload_site`, or the only non-recovery site.
    pub upload_site: String,
    pub incremental: IncrementalSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncrementalSettings {
    pub enabled: bool,
    /// Days (UTC) on which a scheduled backup is a full one. Empty when disabled.
    pub full_backup_week_schedule: BTreeSet<Weekday>,
}

impl IncrementalSettings {
    /// Whether a scheduled backup taken on `day` should be incremental.
    pub fn is_incremental_day(&self, day: Weekday) -> bool {
        self.enabled && !self.full_backup_week_schedule.contains(&day)
    }
}

/// A day of the week, by the three-letter names `full_backup_week_schedule` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// The UTC weekday of a Unix timestamp (1970-01-01 was a Thursday).
    pub fn of_unix_time(seconds: i64) -> Weekday {
        let days = seconds.div_euclid(86_400);
        Weekday::ALL[(days + 3).rem_euclid(7) as usize]
    }
}

impl FromStr for Weekday {
    type Err = String;

    fn from_str(name: &str) -> Result<Weekday, String> {
        Weekday::ALL
            .into_iter()
            .find(|day| day.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown day {name:?}"))
    }
}

/// One `backup_sites` entry.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub compression: CompressionSettings,
    pub encryption_keys: EncryptionKeys,
    pub object_storage: StorageConfig,
    /// Restore from it, never back up to it, never purge it.
    pub recovery_only: bool,
    /// Basebackup split size; `None` means the storage's own maximum object size.
    pub split_size: Option<u64>,
}

/// A site's RSA key pair, parsed, with the PEM text it came from.
#[derive(Debug, Clone)]
pub struct EncryptionKeys {
    pub public: PublicKey,
    pub private: PrivateKey,
    pub public_pem: String,
    pub private_pem: Secret<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BinlogPurgeSettings {
    pub enabled: bool,
    /// `None`: no limit.
    pub max_bytes_per_cycle: Option<u64>,
    /// `None`: no limit.
    pub max_files_per_cycle: Option<u64>,
    pub min_binlog_age_before_purge: Duration,
    pub purge_interval: Duration,
    pub purge_when_observe_no_streams: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MysqlSettings {
    pub binlog_prefix: PathBuf,
    pub client_params: ClientParams,
    pub config_file_name: PathBuf,
    pub data_directory: PathBuf,
    pub relay_log_index_file: PathBuf,
    pub relay_log_prefix: PathBuf,
}

/// How to connect to the local server. MyHoard always uses database `mysql`, charset utf8mb4.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret<String>,
    pub require_ssl: bool,
    pub ca_file: Option<PathBuf>,
    /// Ours: connect over this socket instead of TCP.
    pub unix_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSettings {
    pub auto_mark_backups_broken: bool,
    /// Parallel binlog downloads; `restore_download_workers` or `max(cpus - 1, 1)`.
    pub download_workers: usize,
    /// `--use-free-memory-pct` for `xtrabackup --prepare`, when set.
    pub free_memory_percentage: Option<u8>,
    /// The most binlog bytes downloaded ahead of the one being applied.
    pub max_binlog_bytes: u64,
}

/// How mysqld is restarted during restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqldControl {
    /// `start_command`: myhoard runs mysqld itself (the upstream tests' setup).
    StartCommand(Vec<String>),
    /// `systemd_service`: options go through `systemd_env_update_command`, then
    /// `systemctl_command restart <service>`.
    Systemd {
        service: String,
        systemctl_command: Vec<String>,
        env_update_command: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdSettings {
    /// Where to send metrics; `None` turns them off.
    pub target: Option<StatsdTarget>,
    /// Global tags, values rendered as Python's `str()` would (`True`, `1`, ``).
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdTarget {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtrabackupSettings {
    pub compress_threads: u32,
    pub copy_threads: u32,
    pub encrypt_threads: u32,
    pub estimate_memory: bool,
    pub register_redo_log_consumer: bool,
}

impl Config {
    /// Reads, parses and validates a config file. Besides the rules, warns when the file can be
    /// read or written by group or others: it holds the RSA private key and the MySQL password.
    /// Problems and warnings do not repeat the file's path; callers prefix it.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigErrors::single(format!("cannot read the file: {err}")))?;
        let permission_warning = permission_warning(path);
        match Config::from_json_str(&text) {
            Ok(mut config) => {
                config.warnings.extend(permission_warning);
                Ok(config)
            }
            Err(mut errors) => {
                errors.warnings.extend(permission_warning);
                Err(errors)
            }
        }
    }

    /// Parses and validates the text of a config file.
    pub fn from_json_str(text: &str) -> Result<Config, ConfigErrors> {
        let value: Value = serde_json::from_str(text)
            .map_err(|err| ConfigErrors::single(format!("not valid JSON: {err}")))?;
        Config::from_value(value)
    }

    /// Validates parsed JSON: the key walk, then [`Config::from_raw`]'s rules, all problems
    /// reported together.
    pub fn from_value(mut value: Value) -> Result<Config, ConfigErrors> {
        let Some(map) = value.as_object_mut() else {
            return Err(ConfigErrors::single(format!(
                "the configuration must be a JSON object, not {}",
                type_name(&value)
            )));
        };
        let mut report = Report::default();
        walk_object(&mut report, "", SCHEMA, map);
        match RawConfig::deserialize(&value) {
            Ok(raw) => validate(raw, report),
            Err(err) => {
                // The walk leaves only values the `Raw*` types accept, so this means the schema
                // and those types disagree: a bug here, reported rather than panicked on.
                report.error("", format!("internal error, config schema mismatch: {err}"));
                report.finish(None)
            }
        }
    }

    /// Validates an already deserialized file: every rule between values, all problems at once.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
        validate(raw, Report::default())
    }
}

fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    // Group read is how the packaged layout lets the service user read a root-owned file
    // (root:mysql 0640); group write and anything for others is not.
    (mode & 0o037 != 0).then(|| {
        format!(
            "the file is writable by its group or readable or writable by others (mode {:04o}), \
             but it holds the RSA private key and the MySQL password: chmod 640 (owner root, \
             group of the service user) or 600 it",
            mode & 0o7777
        )
    })
}

/// Range-checks an integer into a narrower type, reporting `message` when it does not fit.
fn narrow<T: TryFrom<u64>>(
    report: &mut Report,
    path: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    message: &str,
) -> Option<T> {
    if range.contains(&value)
        && let Ok(narrowed) = T::try_from(value)
    {
        return Some(narrowed);
    }
    report.error(path, message);
    None
}

fn seconds(report: &mut Report, path: &str, seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or_else(|_| {
        report.error(
            path,
            "must be a non-negative number of seconds that fits in a duration",
        );
        Duration::ZERO
    })
}

fn absolute_path(report: &mut Report, path: &str, value: &Path) {
    if !value.is_absolute() {
        report.error(
            path,
            format!(
                "must be an absolute path, not {:?}",
                value.display().to_string()
            ),
        );
    }
}

/// A list command (`start_command`, `systemctl_command`, ...): empty counts as unset, as in
/// Python where an empty list is false.
fn command(list: Option<Vec<String>>) -> Option<Vec<String>> {
    list.filter(|list| !list.is_empty())
}

fn is_loopback(address: &str) -> bool {
    let trimmed = address.trim_start_matches('[').trim_end_matches(']');
    address == "localhost" || IpAddr::from_str(trimmed).is_ok_and(|ip| ip.is_loopback())
}

const WEEK_SCHEDULE_HELP: &str = "a comma-separated list of mon, tue, wed, thu, fri, sat, sun";

fn week_schedule(text: &str) -> Result<BTreeSet<Weekday>, String> {
    let days = text
        .split(',')
        .map(|day| day.trim().parse::<Weekday>())
        .collect::<Result<BTreeSet<Weekday>, String>>()
        .map_err(|err| format!("{err}: expected {WEEK_SCHEDULE_HELP}"))?;
    if days.is_empty() {
        return Err(format!("must not be empty: expected {WEEK_SCHEDULE_HELP}"));
    }
    Ok(days)
}

/// The second pass: every rule relating values, with units converted. `report` carries what
/// the first pass found, so that both are returned together.
fn validate(raw: RawConfig, mut report: Report) -> Result<Config, ConfigErrors> {
    let recovery_only: BTreeMap<String, bool> = raw
        .backup_sites
        .iter()
        .map(|(name, site)| (name.clone(), site.recovery_only))
        .collect();
    let upload_site = validate_upload_site(
        &mut report,
        raw.backup_settings.upload_site.clone(),
        &recovery_only,
    );
    let backup_sites = validate_sites(&mut report, raw.backup_sites);
    let backup_settings = validate_backup_settings(&mut report, raw.backup_settings, upload_site);
    let binlog_purge_settings = validate_purge(&mut report, raw.binlog_purge_settings);

    if raw.http_address.is_empty() {
        report.error("http_address", "must not be empty");
    } else if !is_loopback(&raw.http_address) {
        report.warn(
            "http_address",
            format!(
                "binding to non-loopback address {:?} exposes the unauthenticated HTTP API to \
                 the network",
                raw.http_address
            ),
        );
    }
    let http_port = narrow(
        &mut report,
        "http_port",
        raw.http_port,
        1..=65535,
        "must be from 1 to 65535",
    );

    let mysql = validate_mysql(&mut report, raw.mysql);

    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let download_workers = match raw.restore_download_workers {
        None => Some(cpus.saturating_sub(1).max(1)),
        Some(workers) => narrow(
            &mut report,
            "restore_download_workers",
            workers,
            1..=1024,
            "must be from 1 to 1024",
        ),
    };
    let free_memory_percentage = match raw.restore_free_memory_percentage {
        None => Some(None),
        Some(percent) => narrow(
            &mut report,
            "restore_free_memory_percentage",
            percent,
            0..=100,
            "must be from 0 to 100",
        )
        .map(Some),
    };
    if raw.restore_max_binlog_bytes == 0 {
        report.error("restore_max_binlog_bytes", "must be greater than 0");
    }

    let server_id = narrow(
        &mut report,
        "server_id",
        raw.server_id,
        1..=u64::from(u32::MAX),
        "must be from 1 to 4294967295, MySQL's server_id",
    );

    let mysqld = validate_mysqld_control(
        &mut report,
        command(raw.start_command),
        raw.systemd_service.filter(|service| !service.is_empty()),
        command(raw.systemctl_command),
        command(raw.systemd_env_update_command),
    );

    absolute_path(&mut report, "state_directory", &raw.state_directory);
    absolute_path(&mut report, "temporary_directory", &raw.temporary_directory);

    let statsd = validate_statsd(&mut report, raw.statsd);
    let xtrabackup = validate_xtrabackup(&mut report, raw.xtrabackup);

    let (
        Some(backup_settings),
        Some(http_port),
        Some(mysql),
        Some(download_workers),
        Some(free_memory_percentage),
        Some(server_id),
        Some(mysqld),
        Some(statsd),
        Some(xtrabackup),
    ) = (
        backup_settings,
        http_port,
        mysql,
        download_workers,
        free_memory_percentage,
        server_id,
        mysqld,
        statsd,
        xtrabackup,
    )
    else {
        return report.finish(None);
    };
    report.finish(Some(Config {
        backup_settings,
        backup_sites,
        binlog_purge_settings,
        http_address: raw.http_address,
        http_port,
        mysql,
        optimize_tables_before_backup: raw.optimize_tables_before_backup,
        restore: RestoreSettings {
            auto_mark_backups_broken: raw.restore_auto_mark_backups_broken,
            download_workers,
            free_memory_percentage,
            max_binlog_bytes: raw.restore_max_binlog_bytes,
        },
        sentry_dsn: raw.sentry_dsn,
        server_id,
        mysqld,
        state_directory: raw.state_directory,
        temporary_directory: raw.temporary_directory,
        statsd,
        xtrabackup,
        warnings: Vec::new(),
    }))
}

/// Sites that passed every check; the others are reported and left out (so the result is only
/// used when there are no problems at all).
fn validate_sites(
    report: &mut Report,
    raw_sites: BTreeMap<String, RawBackupSite>,
) -> BTreeMap<String, SiteConfig> {
    if raw_sites.is_empty() {
        report.error("backup_sites", "must name at least one site");
    }
    let mut sites = BTreeMap::new();
    for (name, raw) in raw_sites {
        let path = join("backup_sites", &name);
        // The site name is the first component of every object key of its backups.
        if name.is_empty() || name.contains('/') {
            report.error(
                &path,
                "a site name must be non-empty and must not contain \"/\"",
            );
        }
        let compression =
            validate_compression(report, &join(&path, "compression"), raw.compression);
        let encryption_keys =
            validate_keys(report, &join(&path, "encryption_keys"), raw.encryption_keys);
        let storage_path = join(&path, "object_storage");
        for (key, message) in raw.object_storage.problems() {
            report.error(join(&storage_path, &key), message);
        }
        let split_size = raw.split_size.filter(|size| *size > 0);
        if let (Some(compression), Some(encryption_keys)) = (compression, encryption_keys) {
            let site = SiteConfig {
                compression,
                encryption_keys,
                object_storage: raw.object_storage,
                recovery_only: raw.recovery_only,
                split_size,
            };
            sites.insert(name, site);
        }
    }
    sites
}

fn validate_compression(
    report: &mut Report,
    path: &str,
    raw: RawCompression,
) -> Option<CompressionSettings> {
    let algorithm_path = join(path, "algorithm");
    let level_path = join(path, "level");
    let threads_path = join(path, "threads");
    // MyHoard: `algorithm or "snappy"`, `level or 0`.
    let algorithm = match raw.algorithm.as_deref().filter(|name| !name.is_empty()) {
        None => Algorithm::Snappy,
        Some(name) => match name.parse::<Algorithm>() {
            Ok(algorithm) => algorithm,
            Err(message) => {
                report.error(&algorithm_path, message);
                return None;
            }
        },
    };
    let level = raw.level.unwrap_or(0);
    let level = match algorithm {
        // 0 is zstd's "default level" (3), as in python-zstandard.
        Algorithm::Zstd if level == 0 || (1..=22).contains(&level) => level as i32,
        Algorithm::Zstd => {
            report.error(
                &level_path,
                "must be from 1 to 22 for zstd, or 0 for its default (3)",
            );
            return None;
        }
        // An xz preset.
        Algorithm::Lzma if (0..=9).contains(&level) => level as i32,
        Algorithm::Lzma => {
            report.error(&level_path, "must be from 0 to 9 for lzma");
            return None;
        }
        // Snappy has no levels; MyHoard passes the level along and snappy ignores it.
        Algorithm::Snappy | Algorithm::None => 0,
    };
    let threads = narrow(
        report,
        &threads_path,
        raw.threads,
        0..=256,
        "must be from 0 to 256",
    )?;
    if threads > 0 && matches!(algorithm, Algorithm::Lzma | Algorithm::None) {
        report.warn(
            &threads_path,
            format!("only zstd and snappy use threads; ignored for {algorithm}"),
        );
    }
    Some(CompressionSettings {
        algorithm,
        level,
        threads,
    })
}

fn validate_keys(
    report: &mut Report,
    path: &str,
    raw: RawEncryptionKeys,
) -> Option<EncryptionKeys> {
    let public_path = join(path, "public");
    let private_path = join(path, "private");
    let public = PublicKey::from_pem(&raw.public)
        .map_err(|err| report.error(&public_path, err.to_string()))
        .ok();
    let private = PrivateKey::from_pem(raw.private.expose())
        .map_err(|err| report.error(&private_path, err.to_string()))
        .ok();
    let (public, private) = (public?, private?);
    if !private.matches(&public) {
        report.error(
            &private_path,
            "is not the private half of encryption_keys.public: backups would be unrestorable",
        );
        return None;
    }
    Some(EncryptionKeys {
        public,
        private,
        public_pem: raw.public,
        private_pem: raw.private,
    })
}

fn validate_upload_site(
    report: &mut Report,
    upload_site: Option<String>,
    recovery_only: &BTreeMap<String, bool>,
) -> Option<String> {
    const PATH: &str = "backup_settings.upload_site";
    // With no sites, or a site or flag that the first pass replaced, the flags below are not
    // the user's and any verdict would be a second, misleading problem.
    let replaced = report.is_replaced("backup_sites")
        || recovery_only
            .keys()
            .any(|name| report.is_replaced(&join(&join("backup_sites", name), "recovery_only")));
    if recovery_only.is_empty() || replaced {
        return None;
    }
    match upload_site.filter(|name| !name.is_empty()) {
        Some(name) => match recovery_only.get(&name) {
            None => {
                report.error(
                    PATH,
                    format!("names {name:?}, which is not in backup_sites"),
                );
                None
            }
            Some(true) => {
                report.error(
                    PATH,
                    format!("names {name:?}, which is recovery_only: backups cannot go there"),
                );
                None
            }
            Some(false) => Some(name),
        },
        None => {
            let writable: Vec<&str> = recovery_only
                .iter()
                .filter(|(_, recovery_only)| !**recovery_only)
                .map(|(name, _)| name.as_str())
                .collect();
            match writable.as_slice() {
                [only] => Some((*only).to_owned()),
                [] => {
                    report.error(
                        "backup_sites",
                        "every site is recovery_only: at least one must take new backups",
                    );
                    None
                }
                several => {
                    report.error(
                        PATH,
                        format!(
                            "required when several sites are not recovery_only ({})",
                            several.join(", ")
                        ),
                    );
                    None
                }
            }
        }
    }
}

fn validate_backup_settings(
    report: &mut Report,
    raw: RawBackupSettings,
    upload_site: Option<String>,
) -> Option<BackupSettings> {
    const DAY_MINUTES: u64 = 1440;
    let interval = raw.backup_interval_minutes;
    if interval == 0
        || !(interval.is_multiple_of(DAY_MINUTES) || DAY_MINUTES.is_multiple_of(interval))
    {
        report.error(
            "backup_settings.backup_interval_minutes",
            "must be 1440, a multiple of 1440 or a divisor of 1440",
        );
    }
    let backup_interval = interval.checked_mul(60).map(Duration::from_secs);
    if backup_interval.is_none() {
        report.error("backup_settings.backup_interval_minutes", "is too large");
    }
    let backup_hour = narrow(
        report,
        "backup_settings.backup_hour",
        raw.backup_hour,
        0..=23,
        "must be from 0 to 23 (UTC)",
    );
    let backup_minute = narrow(
        report,
        "backup_settings.backup_minute",
        raw.backup_minute,
        0..=59,
        "must be from 0 to 59",
    );
    let backup_age_max = seconds(
        report,
        "backup_settings.backup_age_days_max",
        raw.backup_age_days_max * 86_400.0,
    );
    let forced_binlog_rotation_interval = seconds(
        report,
        "backup_settings.forced_binlog_rotation_interval",
        raw.forced_binlog_rotation_interval,
    );
    let backup_count_max = usize::try_from(raw.backup_count_max).unwrap_or(usize::MAX);
    let backup_count_min = usize::try_from(raw.backup_count_min).unwrap_or(usize::MAX);
    if backup_count_min > backup_count_max {
        report.warn(
            "backup_settings.backup_count_min",
            "is greater than backup_count_max, so backup_count_min backups are always kept",
        );
    }

    const SCHEDULE_PATH: &str = "backup_settings.incremental.full_backup_week_schedule";
    let schedule = raw
        .incremental
        .full_backup_week_schedule
        .as_deref()
        .unwrap_or("");
    let full_backup_week_schedule = if raw.incremental.enabled {
        match week_schedule(schedule) {
            Ok(days) => Some(days),
            Err(_) if schedule.trim().is_empty() => {
                report.error(
                    SCHEDULE_PATH,
                    format!("required when enabled is true: {WEEK_SCHEDULE_HELP}"),
                );
                None
            }
            Err(message) => {
                report.error(SCHEDULE_PATH, message);
                None
            }
        }
    } else {
        if !schedule.is_empty()
            && let Err(message) = week_schedule(schedule)
        {
            report.warn(
                SCHEDULE_PATH,
                format!("{message} (ignored while enabled is false)"),
            );
        }
        Some(BTreeSet::new())
    };

    Some(BackupSettings {
        backup_age_max,
        backup_count_max,
        backup_count_min,
        backup_hour: backup_hour?,
        backup_minute: backup_minute?,
        backup_interval: backup_interval?,
        forced_binlog_rotation_interval,
        upload_site: upload_site?,
        incremental: IncrementalSettings {
            enabled: raw.incremental.enabled,
            full_backup_week_schedule: full_backup_week_schedule?,
        },
    })
}

fn validate_purge(report: &mut Report, raw: RawBinlogPurgeSettings) -> BinlogPurgeSettings {
    // MyHoard: null, absent or <= 0 means no limit.
    let limit = |value: Option<i64>| {
        value
            .and_then(|value| u64::try_from(value).ok())
            .filter(|v| *v > 0)
    };
    BinlogPurgeSettings {
        enabled: raw.enabled,
        max_bytes_per_cycle: limit(raw.max_bytes_per_cycle),
        max_files_per_cycle: limit(raw.max_files_per_cycle),
        min_binlog_age_before_purge: seconds(
            report,
            "binlog_purge_settings.min_binlog_age_before_purge",
            raw.min_binlog_age_before_purge,
        ),
        purge_interval: seconds(
            report,
            "binlog_purge_settings.purge_interval",
            raw.purge_interval,
        ),
        purge_when_observe_no_streams: raw.purge_when_observe_no_streams,
    }
}

fn validate_mysql(report: &mut Report, raw: RawMysql) -> Option<MysqlSettings> {
    for (key, path) in [
        ("binlog_prefix", &raw.binlog_prefix),
        ("config_file_name", &raw.config_file_name),
        ("data_directory", &raw.data_directory),
        ("relay_log_index_file", &raw.relay_log_index_file),
        ("relay_log_prefix", &raw.relay_log_prefix),
    ] {
        absolute_path(report, &join("mysql", key), path);
    }
    let params = raw.client_params;
    const PARAMS: &str = "mysql.client_params";
    if params.host.is_empty() {
        report.error(join(PARAMS, "host"), "must not be empty");
    }
    if params.user.is_empty() {
        report.error(join(PARAMS, "user"), "must not be empty");
    }
    let port = narrow(
        report,
        &join(PARAMS, "port"),
        params.port,
        1..=65535,
        "must be from 1 to 65535",
    );
    if let Some(ca_file) = &params.ca_file {
        absolute_path(report, &join(PARAMS, "ca_file"), ca_file);
    }
    if let Some(socket) = &params.unix_socket {
        absolute_path(report, &join(PARAMS, "unix_socket"), socket);
    }
    Some(MysqlSettings {
        binlog_prefix: raw.binlog_prefix,
        client_params: ClientParams {
            host: params.host,
            port: port?,
            user: params.user,
            password: params.password,
            require_ssl: params.require_ssl,
            ca_file: params.ca_file,
            unix_socket: params.unix_socket,
        },
        config_file_name: raw.config_file_name,
        data_directory: raw.data_directory,
        relay_log_index_file: raw.relay_log_index_file,
        relay_log_prefix: raw.relay_log_prefix,
    })
}

fn validate_mysqld_control(
    report: &mut Report,
    start_command: Option<Vec<String>>,
    systemd_service: Option<String>,
    systemctl_command: Option<Vec<String>>,
    env_update_command: Option<Vec<String>>,
) -> Option<MysqldControl> {
    // A placeholder from the first pass stands for a bad value, not for "unset": judging the
    // pair then would add a wrong "neither is set".
    if report.is_replaced("start_command") || report.is_replaced("systemd_service") {
        return None;
    }
    match (start_command, systemd_service) {
        (Some(_), Some(_)) => {
            report.error(
                "start_command",
                "set together with systemd_service: set exactly one of them",
            );
            None
        }
        (None, None) => {
            report.error(
                "start_command",
                "neither start_command nor systemd_service is set: set exactly one of them",
            );
            None
        }
        (Some(command), None) => {
            if command.first().is_some_and(|program| program.is_empty()) {
                report.error(
                    "start_command",
                    "the program (first item) must not be empty",
                );
                return None;
            }
            Some(MysqldControl::StartCommand(command))
        }
        (None, Some(service)) => {
            // MyHoard reads both with `config[...]` when it restarts mysqld, which is the middle
            // of a restore; better to refuse at start.
            if systemctl_command.is_none() {
                report.error(
                    "systemctl_command",
                    "required (a non-empty list) when systemd_service is set",
                );
            }
            if env_update_command.is_none() {
                report.error(
                    "systemd_env_update_command",
                    "required (a non-empty list) when systemd_service is set",
                );
            }
            Some(MysqldControl::Systemd {
                service,
                systemctl_command: systemctl_command?,
                env_update_command: env_update_command?,
            })
        }
    }
}

fn validate_statsd(report: &mut Report, raw: RawStatsd) -> Option<StatsdSettings> {
    let tags = raw
        .tags
        .into_iter()
        .map(|(name, value)| {
            let rendered = match value {
                Value::String(text) => text,
                Value::Bool(true) => "True".to_owned(),
                Value::Bool(false) => "False".to_owned(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (name, rendered)
        })
        .collect();
    // A replaced host or port reads as null; pairing it would add a wrong second problem.
    let replaced = report.is_replaced("statsd.host") || report.is_replaced("statsd.port");
    let target = match (raw.host.filter(|host| !host.is_empty()), raw.port) {
        _ if replaced => None,
        (None, None) => Some(None),
        (Some(host), Some(port)) => narrow(
            report,
            "statsd.port",
            port,
            1..=65535,
            "must be from 1 to 65535",
        )
        .map(|port| Some(StatsdTarget { host, port })),
        _ => {
            report.error(
                "statsd",
                "host and port must both be set (metrics on) or both be null (metrics off)",
            );
            None
        }
    };
    Some(StatsdSettings {
        target: target?,
        tags,
    })
}

fn validate_xtrabackup(report: &mut Report, raw: RawXtrabackup) -> Option<XtrabackupSettings> {
    let mut threads = |key: &str, value: u64| {
        narrow::<u32>(
            report,
            &join("xtrabackup", key),
            value,
            1..=1024,
            "must be from 1 to 1024",
        )
    };
    let compress_threads = threads("compress_threads", raw.compress_threads);
    let copy_threads = threads("copy_threads", raw.copy_threads);
    let encrypt_threads = threads("encrypt_threads", raw.encrypt_threads);
    Some(XtrabackupSettings {
        compress_threads: compress_threads?,
        copy_threads: copy_threads?,
        encrypt_threads: encrypt_threads?,
        estimate_memory: raw.estimate_memory,
        register_redo_log_consumer: raw.register_redo_log_consumer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXAMPLE: &str = include_str!("../etc/myhoard.json");

    /// A second key pair (RSA 2048, private half in PKCS#1 `RSA PRIVATE KEY` form), for the key
    /// format and key mismatch cases. Test data only.
    const OTHER_PRIVATE_PKCS1: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEAoB+qGXoTcX2WAJvKEVIR4KVfN3lvjhY6HTnKSgin+oiMIcZx
5yRY7IrXUvhq0TCHiHCdw/iS0xsi6iLlg0zaf+BhO3nkevjK4wrhZraNzOd7lmzN
ga3qq2qo+dlv7fzJED9bjGszP6SCAe02bTfu6HR6KNbjhLuvv2YLovFsSrWxQCcs
qXC1fCJY7OwRCz8O+zsstBq/SD5HVVijhg0aYSbpi/EdopJlhU9BXtC23XextpA5
1WCOZS2wnHR4Mi6nzrSpTtLX8rfbwKOY7coHok1W3tHK6+Av1RgsYaPfldJDzusf
jRsAvLI5Xd3UsLcKEdrJ9EJS0O9Ax/soYc+qRQIDAQABAoIBAAPEywWffG6q5Ilu
IULoGhid+9A78Pa4qjR+5DZ63q1EYnv3Bj5I+jjTCb9frm/vAvmgoO34X0hNtrQp
DxrYh7oDx3YVZ93HFktiuaxnto2wkxWWyP144PGY6JI83mgND5Rs0VRMP6ALWK3/
7cyDSQG6oBdu+1rn6fqIxdRXd1OIyqpOJoMEXxT4m2WWBIW8PwXa11I+PkVzidN6
1RcEaLT4w9NXWQjjWJeV3AMfk1Dz0zEiHv0Fhn+jV7l0gwQR5MF7TaQ3j9Yf3NrO
3aGgGMsvfVXvetpFCMNvvLNCD5vCEsm2WWjgVi3aCXGt+qLNhn4HY2K5DpIm9DBr
71l6aX8CgYEA3TIdIDFDn+CHNRRP7fflgM/8czDuNdKWcvtKAHTAdfGyqvx7TZNQ
NIgyes4DDG/VOHdg/lDx6nFaNO5EdhRpX+IAjv2a6e5WeeVh0L9BlH3XJMi51kPd
3Jr0Vby9kbLxv851FMKfzzzXRs7kHhynXt07AhS0MFM/AxJGRabH3ocCgYEAuVGI
yvf88DWBr7jXiMUNlXRf+KXZjWkS6ddVff/fkQmOgBlDy4oXirQt2pE0KKO3MfjY
vrA+lyVkjwx/wkoZHzN6Pmk/4x2S7RJ8ixu9vN3hPTfl3p/lRp5h4u0iPVHgggu5
UgkCR3VdGPF88EmENbGdeLCYymmFCJ8ypEJp99MCgYANtNZDMWpMVOBr9JdDWrIY
+kpdZPHN2f/Cnjmmr5VheZmlqMGHPBKjPrFKFMvxkFh5CES1XZSv/1gkoYMSgg9J
hrqcIbDgwAkRwpn+Emvg5K9ZMyr40PnFesCbM3fXuGvsg8GTiL/YWp/IXneaOhJQ
+Yp3hYro16+25AIAvOXzrwKBgHa3C5lyeZ9rt3NZRwF/sm7+iQhhPld/azVP052O
z6o65AWdqbd29BPPztwITtCF6DJkBn1JrB7pPl0BFcrh6uv47yOSCvI0HM4wHIaE
s+yMeuDbsS8HYTn29iAH5vo/PEIyvnoV+VbLkWMMOAw6HC7FZGpPPuHT7PwT974Q
KZAvAoGAfxcog8iRauJGryEpovQL68zz4O6+LcrMUWKfaqHSKofGcBXwNx9jyqA7
aFuzoJbaA0NFcJ5wWaAYoieVRHxoKYEBIjXxsFutktlLfkfqEeRcX6UIvMwPr8Sl
dU16IJmknc9dpQXeqD7C2vrg7lFQfCbeYeVBtsQH08cFE6G2uWE=
-----END RSA PRIVATE KEY-----
";
    const OTHER_PUBLIC: &str = r"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAoB+qGXoTcX2WAJvKEVIR
4KVfN3lvjhY6HTnKSgin+oiMIcZx5yRY7IrXUvhq0TCHiHCdw/iS0xsi6iLlg0za
f+BhO3nkevjK4wrhZraNzOd7lmzNga3qq2qo+dlv7fzJED9bjGszP6SCAe02bTfu
6HR6KNbjhLuvv2YLovFsSrWxQCcsqXC1fCJY7OwRCz8O+zsstBq/SD5HVVijhg0a
YSbpi/EdopJlhU9BXtC23XextpA51WCOZS2wnHR4Mi6nzrSpTtLX8rfbwKOY7coH
ok1W3tHK6+Av1RgsYaPfldJDzusfjRsAvLI5Xd3UsLcKEdrJ9EJS0O9Ax/soYc+q
RQIDAQAB
-----END PUBLIC KEY-----
";

    fn example() -> Value {
        serde_json::from_str(EXAMPLE).expect("etc/myhoard.json is JSON")
    }

    /// Sets (or with `None` removes) the value at a dotted path, creating objects on the way.
    fn edit(root: &mut Value, path: &str, new: Option<Value>) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().expect("non-empty path");
        let mut current = root;
        for part in parts {
            let map = current.as_object_mut().expect("path goes through objects");
            current = map.entry(part).or_insert_with(|| json!({}));
        }
        let map = current.as_object_mut().expect("parent is an object");
        match new {
            Some(value) => {
                map.insert(last.to_owned(), value);
            }
            None => {
                map.remove(last);
            }
        }
    }

    fn with(edits: &[(&str, Option<Value>)]) -> Value {
        let mut value = example();
        for (path, new) in edits {
            edit(&mut value, path, new.clone());
        }
        value
    }

    fn paths(errors: &ConfigErrors) -> Vec<&str> {
        errors
            .problems()
            .iter()
            .map(|problem| problem.path.as_str())
            .collect()
    }

    /// A named rule case: edits to the example, and what loading it must give.
    type Case<'a> = (&'a str, Vec<(&'a str, Option<Value>)>, Expect<'a>);

    #[derive(Debug)]
    enum Expect<'a> {
        /// Valid, without warnings.
        Valid,
        /// Valid, with a warning about this path.
        Warning(&'a str),
        /// Invalid, every problem being about this path.
        Invalid(&'a str),
    }

    fn check(name: &str, value: Value, expect: &Expect<'_>) {
        let result = Config::from_value(value);
        match (expect, result) {
            (Expect::Valid, Ok(config)) => {
                assert!(
                    config.warnings.is_empty(),
                    "{name}: unexpected warnings {:?}",
                    config.warnings
                )
            }
            (Expect::Warning(path), Ok(config)) => assert!(
                config
                    .warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{path}: "))),
                "{name}: expected a warning about {path}, got {:?}",
                config.warnings
            ),
            (Expect::Invalid(path), Err(errors)) => assert!(
                !errors.problems().is_empty() && paths(&errors).iter().all(|p| p == path),
                "{name}: expected problems at {path} only, got:\n{errors}"
            ),
            (expect, Ok(config)) => {
                panic!(
                    "{name}: expected {expect:?}, got a valid config, warnings {:?}",
                    config.warnings
                )
            }
            (expect, Err(errors)) => panic!("{name}: expected {expect:?}, got:\n{errors}"),
        }
    }

    #[test]
    fn example_file_is_valid_without_warnings() {
        let config = Config::from_json_str(EXAMPLE).unwrap_or_else(|errors| panic!("{errors}"));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(config.backup_settings.upload_site, "default");
        assert!(
            matches!(config.mysqld, MysqldControl::Systemd { ref service, .. } if service == "mysql")
        );
    }

    /// Every shipped example must load, so that none of them can rot.
    #[test]
    fn every_config_in_etc_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("etc/ exists") {
            let path = entry.expect("readable etc/ entry").path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            if !name.starts_with("myhoard") || !name.contains(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable example");
            if let Err(errors) = Config::from_json_str(&text) {
                panic!("{}:\n{errors}", path.display());
            }
            checked += 1;
        }
        assert!(checked >= 1);
    }

    /// Dotted key paths of a schema, with `default` standing for a site name.
    fn schema_paths(prefix: &str, keys: &[Key], out: &mut BTreeSet<String>) {
        for key in keys {
            let path = join(prefix, key.name);
            match key.shape {
                Shape::Object(inner) => schema_paths(&path, inner, out),
                Shape::Named(inner) => {
                    let entry = join(&path, "default");
                    schema_paths(&entry, inner, out);
                    out.insert(entry);
                }
                _ => {}
            }
            out.insert(path);
        }
    }

    /// Dotted key paths of a JSON value, not descending into storage configs or tags, whose
    /// keys are not ours to list.
    fn value_paths(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
        if let Value::Object(map) = value {
            for (name, inner) in map {
                let path = join(prefix, name);
                if !(name == "object_storage" || name == "tags") {
                    value_paths(&path, inner, out);
                }
                out.insert(path);
            }
        }
    }

    /// The schema (first pass), the `Raw*` structs (second pass) and the example must all name
    /// the same keys: a key added to one and not the others would be rejected or lost.
    #[test]
    fn schema_raw_structs_and_example_name_the_same_keys() {
        let mut from_schema = BTreeSet::new();
        schema_paths("", SCHEMA, &mut from_schema);
        let mut from_example = BTreeSet::new();
        value_paths("", &example(), &mut from_example);
        assert_eq!(from_schema, from_example, "schema vs etc/myhoard.json");

        let raw: RawConfig = serde_json::from_str(EXAMPLE).expect("example is a RawConfig");
        let mut from_raw = BTreeSet::new();
        value_paths(
            "",
            &serde_json::to_value(&raw).expect("serializable"),
            &mut from_raw,
        );
        assert_eq!(from_schema, from_raw, "schema vs Raw* structs");
    }

    /// Removes every optional key, leaving what Python MyHoard reads with `config[...]`.
    fn strip_optional(prefix: &str, keys: &[Key], value: &mut Value) {
        let Some(map) = value.as_object_mut() else {
            return;
        };
        for key in keys {
            if key.presence == Presence::Optional {
                map.remove(key.name);
                continue;
            }
            let Some(inner) = map.get_mut(key.name) else {
                continue;
            };
            match key.shape {
                Shape::Object(keys) => strip_optional(&join(prefix, key.name), keys, inner),
                Shape::Named(keys) => {
                    for entry in inner
                        .as_object_mut()
                        .into_iter()
                        .flat_map(|m| m.values_mut())
                    {
                        strip_optional("", keys, entry);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn defaults_are_myhoards() {
        let mut value = example();
        strip_optional("", SCHEMA, &mut value);
        // Exactly one of start_command and systemd_service is needed, so the optional systemd
        // keys go back in.
        for key in [
            "systemd_service",
            "systemctl_command",
            "systemd_env_update_command",
        ] {
            edit(&mut value, key, Some(example()[key].clone()));
        }
        assert!(value.get("xtrabackup").is_none() && value.get("start_command").is_none());
        let config = Config::from_value(value).unwrap_or_else(|errors| panic!("{errors}"));

        assert_eq!(
            config.backup_settings.upload_site, "default",
            "the only non-recovery site"
        );
        assert_eq!(
            config.backup_settings.incremental,
            IncrementalSettings::default()
        );
        let site = &config.backup_sites["default"];
        assert_eq!(
            site.compression,
            CompressionSettings {
                algorithm: Algorithm::Snappy,
                level: 0,
                threads: 0
            }
        );
        assert!(!site.recovery_only);
        assert_eq!(site.split_size, None);
        assert_eq!(config.binlog_purge_settings.max_bytes_per_cycle, None);
        assert_eq!(config.binlog_purge_settings.max_files_per_cycle, None);
        let params = &config.mysql.client_params;
        assert!(!params.require_ssl);
        assert_eq!((&params.ca_file, &params.unix_socket), (&None, &None));
        assert!(!config.optimize_tables_before_backup);
        assert!(!config.restore.auto_mark_backups_broken);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            config.restore.download_workers,
            cpus.saturating_sub(1).max(1)
        );
        assert_eq!(config.restore.free_memory_percentage, None);
        assert_eq!(
            config.xtrabackup,
            XtrabackupSettings {
                compress_threads: 1,
                copy_threads: 1,
                encrypt_threads: 1,
                estimate_memory: false,
                register_redo_log_consumer: false,
            }
        );
    }

    #[test]
    fn units_are_converted() {
        let config = Config::from_json_str(EXAMPLE).unwrap_or_else(|errors| panic!("{errors}"));
        let backup = &config.backup_settings;
        assert_eq!(backup.backup_interval, Duration::from_secs(86_400));
        assert_eq!(backup.backup_age_max, Duration::from_secs(14 * 86_400));
        assert_eq!(
            backup.forced_binlog_rotation_interval,
            Duration::from_secs(300)
        );
        let purge = &config.binlog_purge_settings;
        assert_eq!(purge.min_binlog_age_before_purge, Duration::from_secs(600));
        assert_eq!(purge.purge_interval, Duration::from_secs(60));
        assert_eq!(purge.max_bytes_per_cycle, Some(5 << 30));
        assert_eq!(purge.max_files_per_cycle, Some(50));
        assert_eq!(config.restore.max_binlog_bytes, 4 << 30);
        assert_eq!(config.statsd.target, None);
        assert_eq!(
            config.statsd.tags,
            BTreeMap::from([("app".to_owned(), "myhoard".to_owned())])
        );
    }

    /// Every required key, removed on its own, is reported at its path and nothing else is.
    #[test]
    fn each_missing_required_key_is_reported_alone() {
        let mut required = Vec::new();
        fn collect(prefix: &str, keys: &[Key], out: &mut Vec<String>) {
            for key in keys {
                let path = join(prefix, key.name);
                if key.presence != Presence::Optional {
                    out.push(path.clone());
                }
                match key.shape {
                    Shape::Object(inner) => collect(&path, inner, out),
                    Shape::Named(inner) => collect(&join(&path, "default"), inner, out),
                    _ => {}
                }
            }
        }
        collect("", SCHEMA, &mut required);
        assert!(required.len() > 30);
        for path in required {
            let errors = Config::from_value(with(&[(path.as_str(), None)]))
                .err()
                .unwrap_or_else(|| panic!("removing {path} was accepted"));
            assert_eq!(
                paths(&errors),
                [path.as_str()],
                "removing {path}:\n{errors}"
            );
            assert_eq!(errors.problems()[0].message, "required key is missing");
        }
    }

    /// Every key, given a value of the wrong type, is reported at its path and nothing else is.
    #[test]
    fn each_wrongly_typed_key_is_reported_alone() {
        fn visit(prefix: &str, keys: &[Key]) {
            for key in keys {
                let path = join(prefix, key.name);
                let wrong = match key.shape {
                    Shape::Object(_) | Shape::Named(_) | Shape::Tags | Shape::Storage => {
                        json!("wrong")
                    }
                    _ => json!({"wrong": true}),
                };
                check(
                    &format!("{path} = {wrong}"),
                    with(&[(path.as_str(), Some(wrong))]),
                    &Expect::Invalid(&path),
                );
                match key.shape {
                    Shape::Object(inner) => visit(&path, inner),
                    Shape::Named(inner) => visit(&join(&path, "default"), inner),
                    _ => {}
                }
            }
        }
        visit("", SCHEMA);
    }

    #[test]
    fn many_problems_are_reported_together() {
        let value = with(&[
            ("surprise", Some(json!(1))),
            ("backup_settings.incremental.extra", Some(json!(true))),
            ("backup_sites.default.colour", Some(json!("blue"))),
            (
                "backup_sites.default.object_storage.bucket",
                Some(json!("x")),
            ),
            ("mysql.client_params.database", Some(json!("mysql"))),
            ("backup_settings.backup_interval_minutes", Some(json!(1000))),
            ("start_command", Some(json!(["/usr/sbin/mysqld"]))),
            (
                "backup_sites.default.encryption_keys.public",
                Some(json!("not a pem")),
            ),
            (
                "backup_sites.default.compression.algorithm",
                Some(json!("gzip")),
            ),
            ("http_port", Some(json!("16001"))),
            ("server_id", None),
            ("state_directory", Some(json!("relative/state"))),
            ("statsd.host", Some(json!("localhost"))),
        ]);
        let errors = Config::from_value(value).expect_err("invalid");
        let expected = [
            "backup_settings.backup_interval_minutes",
            "backup_settings.incremental.extra",
            "backup_sites.default.colour",
            "backup_sites.default.compression.algorithm",
            "backup_sites.default.encryption_keys.public",
            "backup_sites.default.object_storage.bucket",
            "http_port",
            "mysql.client_params.database",
            "server_id",
            "start_command",
            "state_directory",
            "statsd",
            "surprise",
        ];
        assert_eq!(paths(&errors), expected, "\n{errors}");
        let text = errors.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected.len());
        assert_eq!(
            lines[0],
            "backup_settings.backup_interval_minutes: must be 1440, a multiple of 1440 or a divisor of 1440"
        );
        assert!(lines.contains(&"surprise: unknown key"));
        assert!(lines.contains(&"backup_sites.default.object_storage.bucket: unknown key"));
        assert!(lines.contains(&"http_port: must be a non-negative integer, not a string"));
        assert!(lines.contains(&"server_id: required key is missing"));
    }

    #[test]
    fn rules_pass_and_fail() {
        use Expect::*;
        let site = example()["backup_sites"]["default"].clone();
        let recovery_site = {
            let mut site = site.clone();
            site["recovery_only"] = json!(true);
            site
        };
        let start = json!(["/usr/sbin/mysqld", "--defaults-file=/etc/mysql/my.cnf"]);
        const SCHEDULE: &str = "backup_settings.incremental.full_backup_week_schedule";
        const ENABLED: &str = "backup_settings.incremental.enabled";
        const ALG: &str = "backup_sites.default.compression.algorithm";
        const LEVEL: &str = "backup_sites.default.compression.level";
        const THREADS: &str = "backup_sites.default.compression.threads";
        const PUBLIC: &str = "backup_sites.default.encryption_keys.public";
        const PRIVATE: &str = "backup_sites.default.encryption_keys.private";
        const UPLOAD: &str = "backup_settings.upload_site";
        let s = Some::<Value>;
        let cases: Vec<Case<'_>> = vec![
            // backup_interval_minutes
            (
                "interval 1440",
                vec![("backup_settings.backup_interval_minutes", s(json!(1440)))],
                Valid,
            ),
            (
                "interval divisor",
                vec![("backup_settings.backup_interval_minutes", s(json!(60)))],
                Valid,
            ),
            (
                "interval 1 minute",
                vec![("backup_settings.backup_interval_minutes", s(json!(1)))],
                Valid,
            ),
            (
                "interval multiple",
                vec![("backup_settings.backup_interval_minutes", s(json!(2880)))],
                Valid,
            ),
            (
                "interval 1000",
                vec![("backup_settings.backup_interval_minutes", s(json!(1000)))],
                Invalid("backup_settings.backup_interval_minutes"),
            ),
            (
                "interval 2000",
                vec![("backup_settings.backup_interval_minutes", s(json!(2000)))],
                Invalid("backup_settings.backup_interval_minutes"),
            ),
            (
                "interval 0",
                vec![("backup_settings.backup_interval_minutes", s(json!(0)))],
                Invalid("backup_settings.backup_interval_minutes"),
            ),
            // schedule time
            (
                "hour 23",
                vec![("backup_settings.backup_hour", s(json!(23)))],
                Valid,
            ),
            (
                "hour 24",
                vec![("backup_settings.backup_hour", s(json!(24)))],
                Invalid("backup_settings.backup_hour"),
            ),
            (
                "minute 60",
                vec![("backup_settings.backup_minute", s(json!(60)))],
                Invalid("backup_settings.backup_minute"),
            ),
            (
                "age in fractional days",
                vec![("backup_settings.backup_age_days_max", s(json!(0.5)))],
                Valid,
            ),
            (
                "count_min above count_max",
                vec![("backup_settings.backup_count_min", s(json!(31)))],
                Warning("backup_settings.backup_count_min"),
            ),
            // start_command xor systemd_service
            (
                "start_command only",
                vec![
                    ("start_command", s(start.clone())),
                    ("systemd_service", s(json!(null))),
                ],
                Valid,
            ),
            (
                "start_command without systemctl keys",
                vec![
                    ("start_command", s(start.clone())),
                    ("systemd_service", None),
                    ("systemctl_command", None),
                    ("systemd_env_update_command", None),
                ],
                Valid,
            ),
            (
                "both",
                vec![("start_command", s(start.clone()))],
                Invalid("start_command"),
            ),
            (
                "neither",
                vec![("systemd_service", None)],
                Invalid("start_command"),
            ),
            (
                "empty list and empty service count as unset",
                vec![
                    ("start_command", s(json!([]))),
                    ("systemd_service", s(json!(""))),
                ],
                Invalid("start_command"),
            ),
            (
                "empty program",
                vec![("start_command", s(json!([""]))), ("systemd_service", None)],
                Invalid("start_command"),
            ),
            (
                "systemd without systemctl_command",
                vec![("systemctl_command", None)],
                Invalid("systemctl_command"),
            ),
            (
                "systemd without env update command",
                vec![("systemd_env_update_command", s(json!([])))],
                Invalid("systemd_env_update_command"),
            ),
            // incremental schedule
            (
                "incremental sun,wed",
                vec![(ENABLED, s(json!(true)))],
                Valid,
            ),
            (
                "incremental spaced and capitalised",
                vec![
                    (ENABLED, s(json!(true))),
                    (SCHEDULE, s(json!(" Mon , TUE "))),
                ],
                Valid,
            ),
            (
                "incremental empty schedule",
                vec![(ENABLED, s(json!(true))), (SCHEDULE, s(json!("")))],
                Invalid(SCHEDULE),
            ),
            (
                "incremental no schedule",
                vec![(ENABLED, s(json!(true))), (SCHEDULE, None)],
                Invalid(SCHEDULE),
            ),
            (
                "incremental bad day",
                vec![
                    (ENABLED, s(json!(true))),
                    (SCHEDULE, s(json!("sun,funday"))),
                ],
                Invalid(SCHEDULE),
            ),
            (
                "incremental trailing comma",
                vec![(ENABLED, s(json!(true))), (SCHEDULE, s(json!("sun,")))],
                Invalid(SCHEDULE),
            ),
            (
                "disabled with bad schedule",
                vec![(SCHEDULE, s(json!("someday")))],
                Warning(SCHEDULE),
            ),
            // upload_site
            ("upload_site omitted, one site", vec![(UPLOAD, None)], Valid),
            (
                "upload_site unknown",
                vec![(UPLOAD, s(json!("nope")))],
                Invalid(UPLOAD),
            ),
            (
                "two sites, upload_site set",
                vec![("backup_sites.other", s(site.clone()))],
                Valid,
            ),
            (
                "two sites, upload_site omitted",
                vec![("backup_sites.other", s(site.clone())), (UPLOAD, None)],
                Invalid(UPLOAD),
            ),
            (
                "second site recovery_only, upload_site omitted",
                vec![
                    ("backup_sites.old", s(recovery_site.clone())),
                    (UPLOAD, None),
                ],
                Valid,
            ),
            (
                "upload_site names a recovery site",
                vec![
                    ("backup_sites.default.recovery_only", s(json!(true))),
                    ("backup_sites.other", s(site.clone())),
                ],
                Invalid(UPLOAD),
            ),
            (
                "every site recovery_only",
                vec![
                    ("backup_sites.default.recovery_only", s(json!(true))),
                    (UPLOAD, None),
                ],
                Invalid("backup_sites"),
            ),
            (
                "no sites",
                vec![("backup_sites", s(json!({})))],
                Invalid("backup_sites"),
            ),
            (
                "site name with a slash",
                vec![
                    ("backup_sites", s(json!({"a/b": site.clone()}))),
                    (UPLOAD, None),
                ],
                Invalid("backup_sites.a/b"),
            ),
            // compression
            (
                "compression omitted",
                vec![("backup_sites.default.compression", None)],
                Valid,
            ),
            ("algorithm null", vec![(ALG, s(json!(null)))], Valid),
            (
                "zstd 22",
                vec![(ALG, s(json!("zstd"))), (LEVEL, s(json!(22)))],
                Valid,
            ),
            (
                "zstd default",
                vec![(ALG, s(json!("zstd"))), (LEVEL, s(json!(0)))],
                Valid,
            ),
            (
                "zstd 23",
                vec![(ALG, s(json!("zstd"))), (LEVEL, s(json!(23)))],
                Invalid(LEVEL),
            ),
            (
                "zstd -1",
                vec![(ALG, s(json!("zstd"))), (LEVEL, s(json!(-1)))],
                Invalid(LEVEL),
            ),
            (
                "zstd threads",
                vec![(ALG, s(json!("zstd"))), (THREADS, s(json!(4)))],
                Valid,
            ),
            (
                "negative threads",
                vec![(THREADS, s(json!(-1)))],
                Invalid(THREADS),
            ),
            ("threads with snappy", vec![(THREADS, s(json!(2)))], Valid),
            (
                "threads with lzma",
                vec![(ALG, s(json!("lzma"))), (THREADS, s(json!(2)))],
                Warning(THREADS),
            ),
            (
                "lzma 9",
                vec![(ALG, s(json!("lzma"))), (LEVEL, s(json!(9)))],
                Valid,
            ),
            (
                "lzma 10",
                vec![(ALG, s(json!("lzma"))), (LEVEL, s(json!(10)))],
                Invalid(LEVEL),
            ),
            ("snappy ignores level", vec![(LEVEL, s(json!(99)))], Valid),
            ("none", vec![(ALG, s(json!("none")))], Valid),
            ("gzip", vec![(ALG, s(json!("gzip")))], Invalid(ALG)),
            // encryption keys
            (
                "PKCS#1 private key",
                vec![
                    (PUBLIC, s(json!(OTHER_PUBLIC))),
                    (PRIVATE, s(json!(OTHER_PRIVATE_PKCS1))),
                ],
                Valid,
            ),
            (
                "public not PEM",
                vec![(
                    PUBLIC,
                    s(json!(
                        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
                    )),
                )],
                Invalid(PUBLIC),
            ),
            (
                "private not PEM",
                vec![(PRIVATE, s(json!("not a key")))],
                Invalid(PRIVATE),
            ),
            (
                "private is a public key",
                vec![(PRIVATE, s(json!(OTHER_PUBLIC)))],
                Invalid(PRIVATE),
            ),
            (
                "keys of different pairs",
                vec![(PUBLIC, s(json!(OTHER_PUBLIC)))],
                Invalid(PRIVATE),
            ),
            // object storage
            (
                "storage unknown key",
                vec![("backup_sites.default.object_storage.bucket", s(json!("b")))],
                Invalid("backup_sites.default.object_storage.bucket"),
            ),
            (
                "storage without type",
                vec![("backup_sites.default.object_storage.storage_type", None)],
                Invalid("backup_sites.default.object_storage.storage_type"),
            ),
            (
                "storage type unknown",
                vec![(
                    "backup_sites.default.object_storage.storage_type",
                    s(json!("ftp")),
                )],
                Invalid("backup_sites.default.object_storage.storage_type"),
            ),
            (
                "storage problem",
                vec![(
                    "backup_sites.default.object_storage.directory",
                    s(json!("")),
                )],
                Invalid("backup_sites.default.object_storage.directory"),
            ),
            (
                "split_size 0",
                vec![("backup_sites.default.split_size", s(json!(0)))],
                Valid,
            ),
            (
                "split_size set",
                vec![("backup_sites.default.split_size", s(json!(1u64 << 30)))],
                Valid,
            ),
            // purge settings
            (
                "purge caps off",
                vec![
                    ("binlog_purge_settings.max_files_per_cycle", s(json!(-1))),
                    ("binlog_purge_settings.max_bytes_per_cycle", s(json!(null))),
                ],
                Valid,
            ),
            (
                "negative min age",
                vec![(
                    "binlog_purge_settings.min_binlog_age_before_purge",
                    s(json!(-5)),
                )],
                Invalid("binlog_purge_settings.min_binlog_age_before_purge"),
            ),
            (
                "fractional interval",
                vec![("binlog_purge_settings.purge_interval", s(json!(1.5)))],
                Valid,
            ),
            // HTTP
            ("port 65535", vec![("http_port", s(json!(65535)))], Valid),
            (
                "port 0",
                vec![("http_port", s(json!(0)))],
                Invalid("http_port"),
            ),
            (
                "port 70000",
                vec![("http_port", s(json!(70000)))],
                Invalid("http_port"),
            ),
            (
                "address ::1",
                vec![("http_address", s(json!("::1")))],
                Valid,
            ),
            (
                "address localhost",
                vec![("http_address", s(json!("localhost")))],
                Valid,
            ),
            (
                "address all interfaces",
                vec![("http_address", s(json!("0.0.0.0")))],
                Warning("http_address"),
            ),
            (
                "address empty",
                vec![("http_address", s(json!("")))],
                Invalid("http_address"),
            ),
            (
                "address null",
                vec![("http_address", s(json!(null)))],
                Invalid("http_address"),
            ),
            // server_id
            (
                "server_id max",
                vec![("server_id", s(json!(4294967295u64)))],
                Valid,
            ),
            (
                "server_id 0",
                vec![("server_id", s(json!(0)))],
                Invalid("server_id"),
            ),
            (
                "server_id too big",
                vec![("server_id", s(json!(4294967296u64)))],
                Invalid("server_id"),
            ),
            (
                "server_id negative",
                vec![("server_id", s(json!(-1)))],
                Invalid("server_id"),
            ),
            // restore
            (
                "max binlog bytes 0",
                vec![("restore_max_binlog_bytes", s(json!(0)))],
                Invalid("restore_max_binlog_bytes"),
            ),
            (
                "download workers 4",
                vec![("restore_download_workers", s(json!(4)))],
                Valid,
            ),
            (
                "download workers 0",
                vec![("restore_download_workers", s(json!(0)))],
                Invalid("restore_download_workers"),
            ),
            (
                "free memory 50",
                vec![("restore_free_memory_percentage", s(json!(50)))],
                Valid,
            ),
            (
                "free memory 101",
                vec![("restore_free_memory_percentage", s(json!(101)))],
                Invalid("restore_free_memory_percentage"),
            ),
            // MySQL
            (
                "unix socket",
                vec![(
                    "mysql.client_params.unix_socket",
                    s(json!("/run/mysqld/mysqld.sock")),
                )],
                Valid,
            ),
            (
                "relative unix socket",
                vec![("mysql.client_params.unix_socket", s(json!("mysqld.sock")))],
                Invalid("mysql.client_params.unix_socket"),
            ),
            (
                "ca_file",
                vec![
                    ("mysql.client_params.ca_file", s(json!("/etc/ssl/ca.pem"))),
                    ("mysql.client_params.require_ssl", s(json!(true))),
                ],
                Valid,
            ),
            (
                "relative ca_file",
                vec![("mysql.client_params.ca_file", s(json!("ca.pem")))],
                Invalid("mysql.client_params.ca_file"),
            ),
            (
                "mysql port 0",
                vec![("mysql.client_params.port", s(json!(0)))],
                Invalid("mysql.client_params.port"),
            ),
            (
                "empty user",
                vec![("mysql.client_params.user", s(json!("")))],
                Invalid("mysql.client_params.user"),
            ),
            (
                "unknown client param",
                vec![("mysql.client_params.database", s(json!("mysql")))],
                Invalid("mysql.client_params.database"),
            ),
            (
                "relative datadir",
                vec![("mysql.data_directory", s(json!("mysql")))],
                Invalid("mysql.data_directory"),
            ),
            // directories
            (
                "relative state dir",
                vec![("state_directory", s(json!("state")))],
                Invalid("state_directory"),
            ),
            (
                "relative temp dir",
                vec![("temporary_directory", s(json!("tmp")))],
                Invalid("temporary_directory"),
            ),
            // statsd
            (
                "statsd on",
                vec![
                    ("statsd.host", s(json!("127.0.0.1"))),
                    ("statsd.port", s(json!(8125))),
                ],
                Valid,
            ),
            (
                "statsd host only",
                vec![("statsd.host", s(json!("127.0.0.1")))],
                Invalid("statsd"),
            ),
            (
                "statsd port only",
                vec![("statsd.port", s(json!(8125)))],
                Invalid("statsd"),
            ),
            (
                "statsd port 0",
                vec![
                    ("statsd.host", s(json!("127.0.0.1"))),
                    ("statsd.port", s(json!(0))),
                ],
                Invalid("statsd.port"),
            ),
            (
                "statsd tag list",
                vec![("statsd.tags.a", s(json!([1])))],
                Invalid("statsd.tags.a"),
            ),
            (
                "statsd scalar tags",
                vec![("statsd.tags", s(json!({"n": 1, "b": true, "z": null})))],
                Valid,
            ),
            // xtrabackup
            ("xtrabackup omitted", vec![("xtrabackup", None)], Valid),
            (
                "copy_threads 0",
                vec![("xtrabackup.copy_threads", s(json!(0)))],
                Invalid("xtrabackup.copy_threads"),
            ),
            (
                "copy_threads 4",
                vec![("xtrabackup.copy_threads", s(json!(4)))],
                Valid,
            ),
            (
                "sentry_dsn set",
                vec![("sentry_dsn", s(json!("https://key@sentry.example/1")))],
                Valid,
            ),
            (
                "sentry_dsn omitted",
                vec![("sentry_dsn", None)],
                Invalid("sentry_dsn"),
            ),
            // unknown keys
            (
                "unknown top-level key",
                vec![("surprise", s(json!(1)))],
                Invalid("surprise"),
            ),
            (
                "unknown nested key",
                vec![("xtrabackup.parallel", s(json!(1)))],
                Invalid("xtrabackup.parallel"),
            ),
        ];
        for (name, edits, expect) in cases {
            check(name, with(&edits), &expect);
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config::from_value(with(&[(
            "backup_sites.s3",
            Some(json!({
                "encryption_keys": example()["backup_sites"]["default"]["encryption_keys"].clone(),
                "object_storage": {
                    "storage_type": "s3",
                    "region": "eu-west-1",
                    "bucket_name": "backups",
                    "aws_access_key_id": "AKIAEXAMPLE",
                    "aws_secret_access_key": "s3cr3t-access-key",
                },
                "recovery_only": true,
            })),
        )]))
        .unwrap_or_else(|errors| panic!("{errors}"));
        let raw: RawConfig = serde_json::from_value(with(&[(
            "backup_sites.default.object_storage",
            Some(json!({
                "storage_type": "s3",
                "region": "eu-west-1",
                "bucket_name": "backups",
                "aws_access_key_id": "AKIAEXAMPLE",
                "aws_secret_access_key": "s3cr3t-access-key",
            })),
        )]))
        .expect("a RawConfig");
        let debug = format!("{config:?} {raw:?}");
        let private_line = example()["backup_sites"]["default"]["encryption_keys"]["private"]
            .as_str()
            .and_then(|pem| pem.lines().nth(1))
            .expect("a PEM body line")
            .to_owned();
        for secret in ["f@keP@ssw0rd", private_line.as_str(), "s3cr3t-access-key"] {
            assert!(
                !debug.contains(secret),
                "{secret:?} leaks into Debug output"
            );
        }
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn load_warns_about_readable_files_and_reports_io_errors() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;

        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(EXAMPLE.as_bytes()).expect("write");
        for (mode, warned) in [
            (0o600, false),
            (0o640, false),
            (0o660, true),
            (0o644, true),
            (0o602, true),
        ] {
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let config = Config::load(file.path()).unwrap_or_else(|errors| panic!("{errors}"));
            let has = config.warnings.iter().any(|w| w.contains("chmod 640"));
            assert_eq!(has, warned, "mode {mode:o}: {:?}", config.warnings);
        }

        let missing = Config::load(Path::new("/nonexistent/myhoard.json")).expect_err("error");
        assert_eq!(
            missing.to_string(),
            "cannot read the file: No such file or directory (os error 2)"
        );
        let garbage = Config::from_json_str("{\"http_port\": ").expect_err("error");
        assert!(
            garbage.to_string().starts_with("not valid JSON: "),
            "{garbage}"
        );
        let array = Config::from_json_str("[]").expect_err("error");
        assert_eq!(
            array.to_string(),
            "the configuration must be a JSON object, not a list"
        );
    }

    #[test]
    fn weekdays() {
        let cases = [
            (0, Weekday::Thu),
            (86_399, Weekday::Thu),
            (-1, Weekday::Wed),
            (1_700_000_000, Weekday::Tue),
            (4 * 86_400, Weekday::Mon),
            (3 * 86_400, Weekday::Sun),
        ];
        for (time, day) in cases {
            assert_eq!(Weekday::of_unix_time(time), day, "{time}");
        }
        let incremental = IncrementalSettings {
            enabled: true,
            full_backup_week_schedule: week_schedule("sun,wed").expect("valid"),
        };
        assert!(incremental.is_incremental_day(Weekday::Mon));
        assert!(!incremental.is_incremental_day(Weekday::Sun));
        assert!(!IncrementalSettings::default().is_incremental_day(Weekday::Mon));
    }
}

//! The command lines of the snapshot tools and the option file that carries their
//! credentials: `mariabackup`/`xtrabackup --backup`, `--prepare` and `--move-back`, the stream
//! extractors, `tar`, and the temporary mysqld that reads a clone's consistent point.
//!
//! Pure: values in, argument lists out, so that every flag is unit-tested, XtraBackup's
//! included (it cannot be installed on this project's machines). Flags follow Python MyHoard's
//! `basebackup_operation.py` and `basebackup_restore_operation.py`, minus XtraBackup's own
//! `--compress` and `--encrypt`: our pipeline compresses and encrypts every snapshot itself.

use std::ffi::OsString;
use std::path::Path;

use super::Error;
use crate::config::{ClientParams, XtrabackupSettings};
use crate::db::{Flavor, SnapshotTool, Version};

/// `--name=value` with a path value, without going through UTF-8.
fn flag_path(name: &str, path: &Path) -> OsString {
    let mut flag = OsString::from(name);
    flag.push("=");
    flag.push(path);
    flag
}

/// The option file the backup tool reads instead of the server's own: the server's option
/// file as is (so the tool sees `datadir` and the InnoDB settings the server runs with), then a
/// `[client]` group with the connection settings of `mysql.client_params`, which the tool reads
/// after the file's own and so wins. Credentials never appear on a command line, where any
/// user could read them in `ps`.
pub fn defaults_file_text(
    server_options: &str,
    params: &ClientParams,
    tool: SnapshotTool,
) -> Result<String, Error> {
    let mut text = server_options.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("\n[client]\n");
    let mut line = |key: &str, value: &str| -> Result<(), Error> {
        text.push_str(key);
        text.push('=');
        text.push_str(&option_value(key, value)?);
        text.push('\n');
        Ok(())
    };
    line("user", &params.user)?;
    line("password", params.password.expose())?;
    match &params.unix_socket {
        Some(socket) => line("socket", &socket.to_string_lossy())?,
        None => {
            line("host", &params.host)?;
            line("port", &params.port.to_string())?;
        }
    }
    if let Some(ca_file) = &params.ca_file {
        line("ssl-ca", &ca_file.to_string_lossy())?;
    }
    if params.require_ssl {
        // MariaDB's client library has no `ssl-mode`; `ssl` turns TLS on and makes it required.
        match tool {
            SnapshotTool::MariaBackup => line("ssl", "ON")?,
            SnapshotTool::XtraBackup | SnapshotTool::ClonePlugin => {
                let mode = if params.ca_file.is_some() {
                    "VERIFY_CA"
                } else {
                    "REQUIRED"
                };
                line("ssl-mode", mode)?;
            }
        }
    }
    Ok(text)
}

/// A value as an option file must spell it: quoted, with `\` and line breaks escaped (a `#`
/// would otherwise start a comment, and leading or trailing spaces would be dropped). Option
/// files have no escape for a quote inside quotes of the same kind, so a value holding both
/// kinds of quote cannot be written.
fn option_value(key: &str, value: &str) -> Result<String, Error> {
    let quote = if !value.contains('"') {
        '"'
    } else if !value.contains('\'') {
        '\''
    } else {
        return Err(Error::UnwritableOption {
            key: key.to_owned(),
        });
    };
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push(quote);
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    quoted.push(quote);
    Ok(quoted)
}

/// `mariabackup`/`xtrabackup --backup --stream=xbstream` writing the stream to stdout.
/// `--defaults-file` must come first; `--stream=xbstream` must be written with `=` (PXB 8.0.35).
pub fn backup_args(
    tool: SnapshotTool,
    defaults_file: &Path,
    settings: &XtrabackupSettings,
    target_dir: &Path,
    lsn_dir: &Path,
) -> Vec<OsString> {
    let mut args = vec![
        flag_path("--defaults-file", defaults_file),
        "--backup".into(),
    ];
    if tool == SnapshotTool::XtraBackup {
        args.push("--no-version-check".into());
    }
    args.push(format!("--parallel={}", settings.copy_threads.max(1)).into());
    args.push("--stream=xbstream".into());
    args.push(flag_path("--target-dir", target_dir));
    args.push(flag_path("--extra-lsndir", lsn_dir));
    if tool == SnapshotTool::XtraBackup {
        if settings.register_redo_log_consumer {
            args.push("--register-redo-log-consumer".into());
        }
        if settings.estimate_memory {
            // Needed for `--use-free-memory-pct` to work at prepare time (MyHoard PR #238).
            args.push("--estimate-memory=ON".into());
        }
    }
    args
}

/// XtraBackup versions whose `--prepare` takes `--use-free-memory-pct`.
const XTRABACKUP_FREE_MEMORY_PCT: Version = Version::new(8, 0, 32);

/// `--prepare` of an extracted backup in `target_dir`. `defaults_file` is the server's own
/// option file (MyHoard passes it), `None` when there is none. `free_memory_percentage` is
/// `restore_free_memory_percentage`, passed only to an XtraBackup that knows the flag.
pub fn prepare_args(
    tool: SnapshotTool,
    defaults_file: Option<&Path>,
    target_dir: &Path,
    free_memory_percentage: Option<u8>,
    xtrabackup_version: Option<Version>,
) -> Vec<OsString> {
    let mut args = vec![match defaults_file {
        Some(file) => flag_path("--defaults-file", file),
        None => "--no-defaults".into(),
    }];
    if tool == SnapshotTool::XtraBackup {
        if let (Some(percentage), Some(version)) = (free_memory_percentage, xtrabackup_version)
            && version >= XTRABACKUP_FREE_MEMORY_PCT
        {
            args.push(format!("--use-free-memory-pct={percentage}").into());
        }
        args.push("--no-version-check".into());
    }
    args.push("--prepare".into());
    args.push(flag_path("--target-dir", target_dir));
    args
}

/// `--move-back` of a prepared backup into `data_dir`, which must be empty or missing. The
/// server's option file tells the tool where the redo and undo logs go when they live outside
/// the data directory; `--datadir` makes `mysql.data_directory` win over it.
pub fn move_back_args(
    tool: SnapshotTool,
    defaults_file: Option<&Path>,
    target_dir: &Path,
    data_dir: &Path,
) -> Vec<OsString> {
    let mut args = vec![match defaults_file {
        Some(file) => flag_path("--defaults-file", file),
        None => "--no-defaults".into(),
    }];
    args.push("--move-back".into());
    if tool == SnapshotTool::XtraBackup {
        args.push("--no-version-check".into());
    }
    args.push(flag_path("--target-dir", target_dir));
    args.push(flag_path("--datadir", data_dir));
    args
}

/// `mbstream -x` / `xbstream -x` reading the stream from stdin into `dir`.
pub fn extract_stream_args(dir: &Path) -> Vec<OsString> {
    vec!["-x".into(), "-C".into(), dir.into()]
}

/// GNU tar writing the contents of `dir` to stdout.
pub fn tar_create_args(dir: &Path) -> Vec<OsString> {
    vec![
        "-C".into(),
        dir.into(),
        "-cf".into(),
        "-".into(),
        ".".into(),
    ]
}

/// GNU tar reading an archive from stdin into `dir`. The files belong to whoever restores
/// (the daemon runs as the server's user), as with `mbstream`, not to the archived owner ids.
pub fn tar_extract_args(dir: &Path) -> Vec<OsString> {
    vec![
        "-x".into(),
        "--no-same-owner".into(),
        "-C".into(),
        dir.into(),
        "-f".into(),
        "-".into(),
    ]
}

/// Where the temporary server on a clone keeps its files.
pub struct TemporaryServerPaths<'a> {
    pub data_dir: &'a Path,
    /// A private directory for its socket, pid file, error log, temporary files and relay log.
    pub run_dir: &'a Path,
}

/// Options appended to the server's own start command to run a throw-away mysqld on a cloned
/// data directory, so that it records the clone's consistent point. Later options win, so
/// these override the server's option file wherever it would touch the real server's files:
///
/// - its own data directory, socket, pid file, error log and temporary directory;
/// - no TCP at all (`--skip-networking`, X Protocol off), so nothing can connect but us;
/// - no binlog (else it would write into the real server's binlog index), relay logs in the
///   private directory and replication not started (the source may be a replica), group
///   replication not started if the plugin is there;
/// - a `server_id` other than the source's, read-only, events off;
/// - a small buffer pool and the performance schema on (it serves `clone_status`).
pub fn temporary_server_args(
    flavor: Flavor,
    source_server_id: u32,
    paths: &TemporaryServerPaths<'_>,
) -> Result<Vec<OsString>, Error> {
    let run = paths.run_dir;
    let mut args: Vec<OsString> = vec![
        flag_path("--datadir", paths.data_dir),
        flag_path("--socket", &run.join("mysqld.sock")),
        flag_path("--pid-file", &run.join("mysqld.pid")),
        flag_path("--log-error", &run.join("mysqld.err")),
        flag_path("--tmpdir", run),
        flag_path("--secure-file-priv", run),
        "--skip-networking".into(),
        "--mysqlx=OFF".into(),
        "--loose-group-replication-start-on-boot=OFF".into(),
        "--innodb-buffer-pool-size=64M".into(),
        "--performance-schema=ON".into(),
    ];
    // Any id but the source's: this server never talks to another.
    let server_id = if source_server_id == u32::MAX {
        1
    } else {
        source_server_id + 1
    };
    args.extend(
        flavor
            .relay_apply_mysqld_options(
                server_id,
                source_server_id,
                &run.join("relay"),
                &run.join("relay.index"),
            )
            .map_err(Error::Flavor)?
            .into_iter()
            .map(OsString::from),
    );
    args.extend(
        flavor
            .mysqld_binlog_off_options()
            .into_iter()
            .map(OsString::from),
    );
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Secret;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter()
            .map(|arg| arg.to_str().expect("utf-8"))
            .collect()
    }

    fn params() -> ClientParams {
        ClientParams {
            host: "127.0.0.1".into(),
            port: 3306,
            user: "backup".into(),
            password: Secret::new("p#ss\\w\"rd".into()),
            require_ssl: false,
            ca_file: None,
            unix_socket: None,
        }
    }

    fn settings() -> XtrabackupSettings {
        XtrabackupSettings {
            compress_threads: 2,
            copy_threads: 3,
            encrypt_threads: 2,
            estimate_memory: false,
            register_redo_log_consumer: false,
        }
    }

    #[test]
    fn xtrabackup_backup_command_line() {
        let mut settings = settings();
        let args = backup_args(
            SnapshotTool::XtraBackup,
            Path::new("/tmp/b/backup.cnf"),
            &settings,
            Path::new("/tmp/b/target"),
            Path::new("/tmp/b/lsn"),
        );
        assert_eq!(
            strings(&args),
            [
                "--defaults-file=/tmp/b/backup.cnf",
                "--backup",
                "--no-version-check",
                "--parallel=3",
                "--stream=xbstream",
                "--target-dir=/tmp/b/target",
                "--extra-lsndir=/tmp/b/lsn",
            ]
        );
        settings.register_redo_log_consumer = true;
        settings.estimate_memory = true;
        let args = backup_args(
            SnapshotTool::XtraBackup,
            Path::new("/c"),
            &settings,
            Path::new("/t"),
            Path::new("/l"),
        );
        let args = strings(&args);
        assert_eq!(
            args[args.len() - 2..],
            ["--register-redo-log-consumer", "--estimate-memory=ON"]
        );
        // We compress and encrypt ourselves.
        assert!(
            !args
                .iter()
                .any(|arg| arg.starts_with("--compress") || arg.starts_with("--encrypt"))
        );
    }

    #[test]
    fn mariabackup_backup_command_line() {
        let mut settings = settings();
        settings.register_redo_log_consumer = true;
        settings.estimate_memory = true;
        settings.copy_threads = 0;
        let args = backup_args(
            SnapshotTool::MariaBackup,
            Path::new("/tmp/b/backup.cnf"),
            &settings,
            Path::new("/tmp/b/target"),
            Path::new("/tmp/b/lsn"),
        );
        // mariabackup knows neither --no-version-check nor the PXB-only flags.
        assert_eq!(
            strings(&args),
            [
                "--defaults-file=/tmp/b/backup.cnf",
                "--backup",
                "--parallel=1",
                "--stream=xbstream",
                "--target-dir=/tmp/b/target",
                "--extra-lsndir=/tmp/b/lsn",
            ]
        );
    }

    #[test]
    fn xtrabackup_prepare_and_move_back() {
        let cnf = Path::new("/etc/mysql/my.cnf");
        let target = Path::new("/tmp/r/target");
        let args = prepare_args(
            SnapshotTool::XtraBackup,
            Some(cnf),
            target,
            Some(40),
            Some(Version::new(8, 0, 35)),
        );
        assert_eq!(
            strings(&args),
            [
                "--defaults-file=/etc/mysql/my.cnf",
                "--use-free-memory-pct=40",
                "--no-version-check",
                "--prepare",
                "--target-dir=/tmp/r/target",
            ]
        );
        // Too old for --use-free-memory-pct, or the version is unknown: left out.
        for version in [Some(Version::new(8, 0, 31)), None] {
            let args = prepare_args(
                SnapshotTool::XtraBackup,
                Some(cnf),
                target,
                Some(40),
                version,
            );
            assert!(
                !strings(&args)
                    .iter()
                    .any(|arg| arg.starts_with("--use-free-memory-pct")),
                "{version:?}"
            );
        }
        let args = move_back_args(
            SnapshotTool::XtraBackup,
            Some(cnf),
            target,
            Path::new("/var/lib/mysql"),
        );
        assert_eq!(
            strings(&args),
            [
                "--defaults-file=/etc/mysql/my.cnf",
                "--move-back",
                "--no-version-check",
                "--target-dir=/tmp/r/target",
                "--datadir=/var/lib/mysql",
            ]
        );
    }

    #[test]
    fn mariabackup_prepare_and_move_back() {
        let target = Path::new("/tmp/r/target");
        let args = prepare_args(
            SnapshotTool::MariaBackup,
            None,
            target,
            Some(40),
            Some(Version::new(10, 11, 14)),
        );
        assert_eq!(
            strings(&args),
            ["--no-defaults", "--prepare", "--target-dir=/tmp/r/target"]
        );
        let args = move_back_args(
            SnapshotTool::MariaBackup,
            Some(Path::new("/etc/mysql/my.cnf")),
            target,
            Path::new("/data"),
        );
        assert_eq!(
            strings(&args),
            [
                "--defaults-file=/etc/mysql/my.cnf",
                "--move-back",
                "--target-dir=/tmp/r/target",
                "--datadir=/data",
            ]
        );
    }

    #[test]
    fn defaults_file_appends_client_group_with_quoted_values() {
        let text = defaults_file_text(
            "[mysqld]\ndatadir=/var/lib/mysql",
            &params(),
            SnapshotTool::XtraBackup,
        )
        .expect("writable");
        assert_eq!(
            text,
            "[mysqld]\ndatadir=/var/lib/mysql\n\n[client]\nuser=\"backup\"\n\
             password='p#ss\\\\w\"rd'\nhost=\"127.0.0.1\"\nport=\"3306\"\n"
        );
    }

    #[test]
    fn defaults_file_socket_tls_and_flavours() {
        let mut params = params();
        params.password = Secret::new("secret".into());
        params.unix_socket = Some(PathBuf::from("/run/mysqld/mysqld.sock"));
        params.require_ssl = true;
        let text = defaults_file_text("", &params, SnapshotTool::MariaBackup).expect("writable");
        assert_eq!(
            text,
            "\n[client]\nuser=\"backup\"\npassword=\"secret\"\n\
             socket=\"/run/mysqld/mysqld.sock\"\nssl=\"ON\"\n"
        );
        params.ca_file = Some(PathBuf::from("/etc/ca.pem"));
        let text = defaults_file_text("", &params, SnapshotTool::XtraBackup).expect("writable");
        assert!(
            text.ends_with("ssl-ca=\"/etc/ca.pem\"\nssl-mode=\"VERIFY_CA\"\n"),
            "{text}"
        );
    }

    #[test]
    fn option_values_that_cannot_be_written_are_refused() {
        let mut params = params();
        params.password = Secret::new("both ' and \"".into());
        let err =
            defaults_file_text("", &params, SnapshotTool::MariaBackup).expect_err("unwritable");
        assert!(matches!(err, Error::UnwritableOption { ref key } if key == "password"));
        // The message must not contain the password.
        assert!(!err.to_string().contains("both"), "{err}");
        assert_eq!(option_value("k", "a\nb\tc").expect("ok"), "\"a\\nb\\tc\"");
    }

    #[test]
    fn extract_and_tar_command_lines() {
        let dir = Path::new("/tmp/w");
        assert_eq!(strings(&extract_stream_args(dir)), ["-x", "-C", "/tmp/w"]);
        assert_eq!(
            strings(&tar_create_args(dir)),
            ["-C", "/tmp/w", "-cf", "-", "."]
        );
        assert_eq!(
            strings(&tar_extract_args(dir)),
            ["-x", "--no-same-owner", "-C", "/tmp/w", "-f", "-"]
        );
    }

    #[test]
    fn temporary_server_stays_off_the_real_servers_files() {
        let flavor = Flavor::parse("9.7.4-2").expect("flavor");
        let args = temporary_server_args(
            flavor,
            7,
            &TemporaryServerPaths {
                data_dir: Path::new("/tmp/c/data"),
                run_dir: Path::new("/tmp/c/run"),
            },
        )
        .expect("args");
        let args = strings(&args);
        for expected in [
            "--datadir=/tmp/c/data",
            "--socket=/tmp/c/run/mysqld.sock",
            "--log-error=/tmp/c/run/mysqld.err",
            "--skip-networking",
            "--disable-log-bin",
            "--skip-replica-start",
            "--relay-log=/tmp/c/run/relay",
            "--relay-log-index=/tmp/c/run/relay.index",
            "--server-id=8",
            "--read-only=ON",
            "--performance-schema=ON",
        ] {
            assert!(args.contains(&expected), "{expected} missing from {args:?}");
        }
        let args = temporary_server_args(
            flavor,
            u32::MAX,
            &TemporaryServerPaths {
                data_dir: Path::new("/d"),
                run_dir: Path::new("/r"),
            },
        )
        .expect("args");
        assert!(strings(&args).contains(&"--server-id=1"));
    }
}

//! Snapshots with MySQL's clone plugin.
//!
//! 1. `CLONE LOCAL DATA DIRECTORY` copies the server's InnoDB data into `data/` of a private
//!    directory under `temporary_directory` (the server writes it, so its user needs access).
//!    It runs on a helper thread; cancelling kills the statement with `KILL QUERY`. The
//!    server goes on with a `CLONE` whose daemon was killed: the next snapshot stops it the
//!    same way before it clears the scratch space and starts its own.
//! 2. The clone's consistent point (binlog file, position, `gtid_executed`) is not known yet:
//!    `performance_schema.clone_status` on the donor leaves it empty for a local clone, and a
//!    server fills it in only when it first starts on the cloned directory
//!    (`shared/reference/mysql.md` §3). So a throw-away mysqld is started on the copy with the
//!    server's own start command and option file, overridden so that it touches nothing of the
//!    real server (see `command::temporary_server_args`), asked for `clone_status`, and shut
//!    down cleanly. The files it generated for itself (`auto.cnf`, TLS and RSA keys) are
//!    removed, as a clone has none; the rest is a cleanly shut down data directory, which also
//!    spares the restored server a crash recovery.
//! 3. `tar` streams the directory into the splits; then it is removed, as on any failure.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::command::{self, TemporaryServerPaths};
use super::output::{Severity, SnapshotPosition};
use super::{
    ArchiveFormat, Error, SnapshotJob, SnapshotMeter, SnapshotResult, SnapshotStage, absolute,
    child, datadir, find_program, measure_data_dir, remove_scratch_dir, scratch_dir,
    stream_to_storage, unix_now,
};
use crate::config::{ClientParams, Config, MysqldControl};
use crate::db::{self, Client, ErrorKind, SnapshotTool};

/// The read timeout of the session running `CLONE`: it answers only when the copy is done.
/// Cancelling does not wait for it (the statement is killed).
const CLONE_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// How long the temporary server may take to start (crash recovery of the cloned redo) and to
/// shut down.
const TEMPORARY_SERVER_TIMEOUT: Duration = Duration::from_secs(600);
/// `ER_UDF_EXISTS`: `INSTALL PLUGIN clone` when it is already installed.
const ER_UDF_EXISTS: u16 = 1125;
const LOG_TARGET_MYSQLD: &str = "myhoard::basebackup::mysqld";
/// Names the scratch directories of clone snapshots under `temporary_directory`.
const SCRATCH_PREFIX: &str = "myhoard-clone-";
/// How long a `CLONE` left running by a killed daemon may take to end once stopped.
const INTERRUPTED_CLONE_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn take(job: &SnapshotJob<'_>) -> Result<SnapshotResult, Error> {
    let start_ts = unix_now();
    let config = job.config;
    let start_size = measure_data_dir(config);
    let meter = SnapshotMeter::new(
        job,
        SnapshotStage::Cloning,
        start_size.map_or(0, |size| size.estimate_bytes),
    );
    meter.report();

    let params = &config.mysql.client_params;
    let mut client = Client::connect_with_timeout(params, db::LONG_TIMEOUT)?;
    let tool_version = client.version_string().to_owned();
    ensure_clone_plugin(job, &mut client)?;
    // Before `scratch_dir` clears what interrupted snapshots left.
    stop_interrupted_clones(job, &mut client);
    drop(client);

    let scratch = scratch_dir(config, SCRATCH_PREFIX)?;
    let root = absolute(scratch.path())?;
    let clone_dir = root.join("data");
    let run_dir = root.join("run");
    fs::create_dir(&run_dir).map_err(|source| Error::Io {
        action: "creating",
        path: run_dir.clone(),
        source,
    })?;
    clone_into(job, &meter, &clone_dir)?;

    meter.set_stage(SnapshotStage::ReadingClonePosition);
    check_cancel(job)?;
    let position = read_consistent_point(job, &meter, &clone_dir, &run_dir)?;
    let cloned = datadir::measure(&clone_dir).map_err(|source| Error::Io {
        action: "measuring",
        path: clone_dir.clone(),
        source,
    })?;
    meter
        .estimated_total_bytes
        .store(cloned.total_bytes, Ordering::Relaxed);

    meter.set_stage(SnapshotStage::Streaming);
    check_cancel(job)?;
    let tar = find_program("tar").unwrap_or_else(|| PathBuf::from("tar"));
    let mut archive = Command::new(tar);
    archive.args(command::tar_create_args(&clone_dir));
    let uploaded = stream_to_storage(
        &meter,
        &mut archive,
        "tar",
        "myhoard::basebackup::tar",
        &|_| Severity::Info,
    )?;
    let end_ts = unix_now();
    meter.files_done.store(cloned.files, Ordering::Relaxed);
    meter.report();
    remove_scratch_dir(scratch);
    let end_size = measure_data_dir(config);

    Ok(SnapshotResult {
        tool: SnapshotTool::ClonePlugin,
        format: ArchiveFormat::Tar,
        tool_version: Some(tool_version),
        binlog_name: position.as_ref().map(|p| p.binlog_name.clone()),
        binlog_index: position.as_ref().and_then(|p| p.binlog_index),
        binlog_position: position.as_ref().map(|p| p.binlog_position),
        gtid: position.and_then(|p| p.gtid),
        lsn_info: None,
        checkpoints_file_content: None,
        number_of_splits: uploaded.number_of_splits,
        compressed_size: uploaded.stored_bytes,
        original_size: uploaded.original_bytes,
        start_size: start_size.map(|size| size.total_bytes),
        end_size: end_size.map(|size| size.total_bytes),
        number_of_files: cloned.files,
        start_ts,
        end_ts,
        compression_algorithm: job.encoding.compression.algorithm,
    })
}

/// [`Error::Cancelled`] once the job is cancelled: checked between the steps.
fn check_cancel(job: &SnapshotJob<'_>) -> Result<(), Error> {
    if job.cancel.load(Ordering::SeqCst) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Loads the clone plugin unless the server has it (installed or refused: then `CLONE` itself
/// says what is wrong). Another session may install it meanwhile, which is fine.
fn ensure_clone_plugin(job: &SnapshotJob<'_>, client: &mut Client) -> Result<(), Error> {
    let status = client.query_text(
        "SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'clone'",
    )?;
    if status.is_some() {
        return Ok(());
    }
    let statement = job
        .flavor
        .install_clone_plugin_statement()
        .map_err(Error::Flavor)?;
    match client.execute(statement) {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some(ER_UDF_EXISTS) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Stops the `CLONE` of a daemon killed mid-snapshot, which the server carries on with after
/// its client is gone, and waits for it to end. Left running, it would write into the scratch
/// directory that is about to be removed (a removal that can then fail half-way and leave
/// the directory behind) and hold the server's one clone slot, so the new `CLONE` would be
/// refused. Failing here is logged, not returned: `CLONE` then says what is wrong.
fn stop_interrupted_clones(job: &SnapshotJob<'_>, client: &mut Client) {
    let query = match job
        .flavor
        .running_local_clones_query(&format!("%/{SCRATCH_PREFIX}%"))
    {
        Ok(query) => query,
        Err(err) => {
            log::warn!("cannot look for interrupted clones: {err}");
            return;
        }
    };
    let deadline = Instant::now() + INTERRUPTED_CLONE_TIMEOUT;
    let mut killed = HashSet::new();
    loop {
        let running = match client.query_text(&query) {
            Ok(ids) => ids.unwrap_or_default(),
            Err(err) => {
                log::warn!("cannot look for interrupted clones: {err}");
                return;
            }
        };
        let ids: Vec<u64> = running
            .split(',')
            .filter_map(|id| id.trim().parse().ok())
            .collect();
        if ids.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            log::warn!(
                "the CLONE of an interrupted snapshot still runs (connections {running}) after {}s",
                INTERRUPTED_CLONE_TIMEOUT.as_secs()
            );
            return;
        }
        for id in ids {
            if killed.insert(id) {
                log::warn!("stopping the CLONE of an interrupted snapshot (connection {id})");
                if let Err(err) = client.execute(&format!("KILL QUERY {id}")) {
                    log::warn!("stopping the CLONE in connection {id}: {err}");
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `CLONE LOCAL DATA DIRECTORY` into `clone_dir` (which must not exist), reporting
/// progress meanwhile and killing the statement when the job is cancelled.
fn clone_into(
    job: &SnapshotJob<'_>,
    meter: &SnapshotMeter<'_>,
    clone_dir: &Path,
) -> Result<(), Error> {
    let statement = job
        .flavor
        .clone_local_statement(clone_dir)
        .map_err(Error::Flavor)?;
    let params = &job.config.mysql.client_params;
    let mut client = Client::connect_with_timeout(params, CLONE_TIMEOUT)?;
    let connection_id = client
        .query_text("SELECT CONNECTION_ID()")?
        .and_then(|id| id.trim().parse::<u64>().ok());
    let finished = AtomicBool::new(false);
    let result = thread::scope(|scope| {
        let cloning = thread::Builder::new()
            .name("clone".into())
            .spawn_scoped(scope, || {
                let result = client.execute(&statement);
                finished.store(true, Ordering::SeqCst);
                result
            })
            .map_err(|source| Error::Spawn {
                program: "clone thread".into(),
                source,
            })?;
        let mut killed = false;
        let mut last_report = Instant::now();
        while !finished.load(Ordering::SeqCst) {
            if job.cancel.load(Ordering::SeqCst) && !killed {
                killed = true;
                kill_query(params, connection_id);
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                meter.report();
                last_report = Instant::now();
            }
            thread::sleep(Duration::from_millis(100));
        }
        match cloning.join() {
            Ok(result) => result.map_err(Error::from),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    if job.cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    result
}

/// Stops the running `CLONE` from a second session. Failing to is logged, not returned: the
/// clone then runs to its end and the cancellation takes effect after it.
fn kill_query(params: &ClientParams, connection_id: Option<u64>) {
    let Some(connection_id) = connection_id else {
        log::warn!("cannot stop the running CLONE: its connection id is unknown");
        return;
    };
    let killed = Client::connect(params)
        .and_then(|mut client| client.execute(&format!("KILL QUERY {connection_id}")));
    if let Err(err) = killed {
        log::warn!("stopping the running CLONE (connection {connection_id}): {err}");
    }
}

/// Starts a temporary server on the cloned directory, reads the consistent point from
/// `performance_schema.clone_status` and shuts the server down; then removes what it
/// generated for itself. `None` when the source runs without a binlog.
fn read_consistent_point(
    job: &SnapshotJob<'_>,
    meter: &SnapshotMeter<'_>,
    clone_dir: &Path,
    run_dir: &Path,
) -> Result<Option<SnapshotPosition>, Error> {
    let (program, base_args) = temporary_server_command(job.config)?;
    let before = entry_names(clone_dir)?;
    let mut server = Command::new(&program);
    server.args(base_args).args(command::temporary_server_args(
        job.flavor,
        job.config.server_id,
        &TemporaryServerPaths {
            data_dir: clone_dir,
            run_dir,
        },
    )?);
    let params = ClientParams {
        unix_socket: Some(run_dir.join("mysqld.sock")),
        ..job.config.mysql.client_params.clone()
    };
    let on_tick = || meter.report();
    let supervision = child::Supervision {
        name: "mysqld",
        log_target: LOG_TARGET_MYSQLD,
        cancel: job.cancel,
        on_line: &|_| Severity::Info,
        on_tick: &on_tick,
    };
    log::info!(
        "starting a temporary server on the cloned data in {} to read its consistent point",
        clone_dir.display()
    );
    let result = child::run(
        &mut server,
        &supervision,
        child::DataPipe::None,
        |_, running| {
            let mut client = wait_until_ready(&params, running, job.cancel)?;
            let position = query_clone_status(&mut client)?;
            shut_down(client, running, job.cancel)?;
            Ok(position)
        },
    );
    // Its error log goes to a private file (the option file's would be the real server's).
    let error_log = run_dir.join("mysqld.err");
    let log_lines = fs::read_to_string(&error_log).unwrap_or_default();
    for line in log_lines.lines() {
        log::info!(target: LOG_TARGET_MYSQLD, "{line}");
    }
    let position = result.map_err(|err| match err {
        Error::Cancelled | Error::TemporaryServer { .. } => err,
        other => Error::TemporaryServer {
            message: other.to_string(),
            log_tail: tail(&log_lines, 20),
        },
    })?;
    remove_generated_files(clone_dir, &before)?;
    if let Some(position) = &position {
        log::info!(
            "the clone's consistent point: {} at {}, gtids {}",
            position.binlog_name,
            position.binlog_position,
            position.gtid.as_deref().unwrap_or("(none)")
        );
    }
    Ok(position)
}

/// The program and arguments that start the server as configured: `start_command`, or
/// `mysqld --defaults-file=<config_file_name>` when systemd runs the server.
fn temporary_server_command(config: &Config) -> Result<(PathBuf, Vec<OsString>), Error> {
    match &config.mysqld {
        MysqldControl::StartCommand(command) => match command.split_first() {
            Some((program, args)) => Ok((
                PathBuf::from(program),
                args.iter().map(OsString::from).collect(),
            )),
            None => Err(Error::ProgramNotFound {
                program: "mysqld (start_command is empty)".into(),
            }),
        },
        MysqldControl::Systemd { .. } => {
            let program = find_program("mysqld")
                .or_else(|| Some(PathBuf::from("/usr/sbin/mysqld")).filter(|path| path.is_file()))
                .ok_or_else(|| Error::ProgramNotFound {
                    program: "mysqld".into(),
                })?;
            let mut defaults = OsString::from("--defaults-file=");
            defaults.push(&config.mysql.config_file_name);
            Ok((program, vec![defaults]))
        }
    }
}

/// Connects over the temporary server's socket once it accepts connections.
fn wait_until_ready(
    params: &ClientParams,
    running: &child::Running<'_>,
    cancel: &AtomicBool,
) -> Result<Client, Error> {
    let deadline = Instant::now() + TEMPORARY_SERVER_TIMEOUT;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let attempt = Client::connect(params);
        match attempt {
            Ok(client) => return Ok(client),
            Err(err) if err.kind() == ErrorKind::AccessDenied => return Err(err.into()),
            Err(err) => {
                if running.has_exited() {
                    return Err(Error::TemporaryServer {
                        message: "it exited before accepting connections".into(),
                        log_tail: Vec::new(),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(Error::TemporaryServer {
                        message: format!(
                            "it did not accept connections within {TEMPORARY_SERVER_TIMEOUT:?}: {err}"
                        ),
                        log_tail: Vec::new(),
                    });
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The consistent point the temporary server recorded for the clone.
fn query_clone_status(client: &mut Client) -> Result<Option<SnapshotPosition>, Error> {
    const QUERY: &str = "SELECT CONCAT_WS(CHAR(9), STATE, IFNULL(BINLOG_FILE, ''), \
                         IFNULL(BINLOG_POSITION, 0), REPLACE(IFNULL(GTID_EXECUTED, ''), CHAR(10), '')) \
                         FROM performance_schema.clone_status ORDER BY ID DESC LIMIT 1";
    let row = client
        .query_text(QUERY)?
        .ok_or_else(|| Error::TemporaryServer {
            message: "performance_schema.clone_status is empty".into(),
            log_tail: Vec::new(),
        })?;
    parse_clone_status_row(&row)
}

/// `<STATE>\t<BINLOG_FILE>\t<BINLOG_POSITION>\t<GTID_EXECUTED>`.
fn parse_clone_status_row(row: &str) -> Result<Option<SnapshotPosition>, Error> {
    let unexpected = |what: &str| Error::TemporaryServer {
        message: format!("{what} in performance_schema.clone_status: {row:?}"),
        log_tail: Vec::new(),
    };
    let fields: Vec<&str> = row.split('\t').collect();
    let [state, file, position, gtid] = fields[..] else {
        return Err(unexpected("unexpected row"));
    };
    if state != "Completed" {
        return Err(unexpected("the clone is not completed"));
    }
    if file.trim().is_empty() {
        return Ok(None);
    }
    let position = position
        .trim()
        .parse()
        .map_err(|_| unexpected("unreadable BINLOG_POSITION"))?;
    Ok(Some(SnapshotPosition::new(file.trim(), position, gtid)))
}

/// `SHUTDOWN`, then waits for the process to exit.
fn shut_down(
    mut client: Client,
    running: &child::Running<'_>,
    cancel: &AtomicBool,
) -> Result<(), Error> {
    match client.execute("SHUTDOWN") {
        Ok(()) => {}
        // The server may close the session before answering.
        Err(err) if err.kind().is_connection_failure() => {}
        Err(err) => return Err(err.into()),
    }
    drop(client);
    let deadline = Instant::now() + TEMPORARY_SERVER_TIMEOUT;
    while !running.has_exited() {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(Error::TemporaryServer {
                message: format!("it did not shut down within {TEMPORARY_SERVER_TIMEOUT:?}"),
                log_tail: Vec::new(),
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The names directly inside `dir`.
fn entry_names(dir: &Path) -> Result<HashSet<OsString>, Error> {
    let io_error = |source| Error::Io {
        action: "reading",
        path: dir.to_owned(),
        source,
    };
    fs::read_dir(dir)
        .map_err(io_error)?
        .map(|entry| entry.map(|entry| entry.file_name()).map_err(io_error))
        .collect()
}

/// Removes the server identity and key files the temporary server generated (a restored server
/// must make its own), leaving everything the clone itself wrote.
fn remove_generated_files(dir: &Path, before: &HashSet<OsString>) -> Result<(), Error> {
    for name in entry_names(dir)? {
        if before.contains(&name) {
            continue;
        }
        let text = name.to_string_lossy();
        if text == "auto.cnf" || text.ends_with(".pem") {
            datadir::remove_path(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_status_rows() {
        let position = parse_clone_status_row(
            "Completed\tbinlog.000002\t478504\te76ead37-e937-11f1-b5a0-02fc00000001:1-439",
        )
        .expect("row")
        .expect("position");
        assert_eq!(position.binlog_name, "binlog.000002");
        assert_eq!(position.binlog_index, Some(2));
        assert_eq!(position.binlog_position, 478504);
        assert_eq!(
            position.gtid.as_deref(),
            Some("e76ead37-e937-11f1-b5a0-02fc00000001:1-439")
        );
        // A full path (MySQL records the donor's path) becomes the file name.
        let position = parse_clone_status_row("Completed\t/var/lib/mysql/binlog.000007\t4\t")
            .expect("row")
            .expect("position");
        assert_eq!(position.binlog_name, "binlog.000007");
        assert_eq!(position.gtid, None);
        // The source runs without a binlog.
        assert_eq!(
            parse_clone_status_row("Completed\t\t0\t").expect("row"),
            None
        );
        for bad in [
            "In Progress\tb.000001\t4\t",
            "Completed\tb.000001\tx\t",
            "Completed",
        ] {
            assert!(parse_clone_status_row(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_identity_and_keys_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("ibdata1"), b"x").expect("write");
        fs::write(dir.path().join("old.pem"), b"x").expect("write");
        let before = entry_names(dir.path()).expect("names");
        for name in ["auto.cnf", "ca.pem", "server-key.pem", "ibtmp1"] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        remove_generated_files(dir.path(), &before).expect("remove");
        let mut left: Vec<String> = entry_names(dir.path())
            .expect("names")
            .into_iter()
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["ibdata1", "ibtmp1", "old.pem"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail("a", 5), ["a"]);
        assert!(tail("", 5).is_empty());
    }
}

//! Restarting the local database server with extra options, as a restore needs it: the two ways
//! MyHoard's config offers (`start_command` or `systemd_service`).
//!
//! - `start_command` (MyHoard's test setup, and ours): the running server is found by its
//!   command line in `/proc`, stopped with SIGTERM, and started again as `start_command +
//!   options` with `MYSQLD_OPTS` set to the options. The new server is put in its own process
//!   group so that a signal to the daemon's group does not reach it, and a thread reaps it.
//! - `systemd_service`: `systemd_env_update_command -b <bool> -g <bool> [-o OPTION]...` writes
//!   the options into the unit's environment file, then `systemctl_command restart <service>`.
//!
//! Either way the call returns once the server accepts connections again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::{ClientParams, MysqldControl};
use crate::db::Client;

/// How long a server may take to stop (InnoDB flushes its buffer pool) or to come up (crash
/// recovery after a kill).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Options for one restart: `with_binlog`/`with_gtids` are MyHoard's two switches (handed to
/// the systemd env helper as `-b`/`-g`); `options` are the full extra command-line options.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerOptions {
    pub with_binlog: bool,
    pub with_gtids: bool,
    pub options: Vec<String>,
}

/// Stops the server if it runs and starts it with `options`, then waits until it answers.
pub fn restart(
    control: &MysqldControl,
    client_params: &ClientParams,
    options: &ServerOptions,
) -> anyhow::Result<()> {
    log::info!("restarting mysqld with options {:?}", options.options);
    match control {
        MysqldControl::StartCommand(command) => {
            stop_by_command_line(command)?;
            start_command(command, &options.options)?;
        }
        MysqldControl::Systemd {
            service,
            systemctl_command,
            env_update_command,
        } => {
            let mut update = env_update_command.clone();
            update.extend([
                "-b".to_owned(),
                options.with_binlog.to_string(),
                "-g".to_owned(),
                options.with_gtids.to_string(),
            ]);
            for option in &options.options {
                update.push("-o".to_owned());
                update.push(option.clone());
            }
            run(&update).context("updating the mysqld environment file")?;
            let mut restart = systemctl_command.clone();
            restart.extend(["restart".to_owned(), service.clone()]);
            run(&restart).with_context(|| format!("restarting {service}"))?;
        }
    }
    wait_until_answering(client_params, START_TIMEOUT)
}

/// Stops the server (start_command mode only knows how; under systemd the restore's first
/// restart stops it).
pub fn stop(control: &MysqldControl) -> anyhow::Result<()> {
    match control {
        MysqldControl::StartCommand(command) => stop_by_command_line(command),
        MysqldControl::Systemd {
            service,
            systemctl_command,
            ..
        } => {
            let mut stop = systemctl_command.clone();
            stop.extend(["stop".to_owned(), service.clone()]);
            run(&stop).with_context(|| format!("stopping {service}"))
        }
    }
}

fn run(command: &[String]) -> anyhow::Result<()> {
    let (program, args) = command.split_first().context("empty command")?;
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{} exited with {}: {}",
            command.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Pids of servers started by `command`: processes whose arguments include every argument of
/// `command` after the program, and one of which names a mysqld or mariadbd binary. (A wrapper
/// script in `start_command` may exec the server under another program name, such as a
/// dynamic loader, keeping the arguments.)
fn find_processes(command: &[String]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let wanted: Vec<&[u8]> = command.iter().skip(1).map(|a| a.as_bytes()).collect();
    let program = command.first().map(|p| p.as_bytes());
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == own {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let names_server = args.iter().any(|arg| {
                let name = arg.rsplit(|b| *b == b'/').next().unwrap_or(arg);
                Some(*arg) == program || name == b"mysqld" || name == b"mariadbd"
            });
            let has_all = wanted.iter().all(|want| args.contains(want));
            (names_server && has_all && is_alive(pid)).then_some(pid)
        })
        .collect()
}

fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn stop_by_command_line(command: &[String]) -> anyhow::Result<()> {
    let pids = find_processes(command);
    for pid in &pids {
        log::info!("stopping mysqld (pid {pid})");
        let Ok(raw_pid) = i32::try_from(*pid) else {
            continue;
        };
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions. The pid
        // was just read from /proc; if it has exited since, the call fails with ESRCH.
        let sent = unsafe { kill(raw_pid, SIGTERM) };
        if sent != 0 && is_alive(*pid) {
            bail!(
                "could not signal mysqld pid {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while pids.iter().any(|pid| is_alive(*pid)) {
        if Instant::now() > deadline {
            bail!("mysqld (pids {pids:?}) did not stop within {STOP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn start_command(command: &[String], options: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let (program, args) = command.split_first().context("empty start_command")?;
    let mut child = Command::new(program)
        .args(args)
        .args(options)
        .env("MYSQLD_OPTS", options.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", Path::new(program).display()))?;
    let pid = child.id();
    std::thread::Builder::new()
        .name("mysqld-reaper".into())
        .spawn(move || match child.wait() {
            Ok(status) => log::info!("mysqld (pid {pid}) exited: {status}"),
            Err(err) => log::warn!("waiting for mysqld (pid {pid}): {err}"),
        })
        .context("spawning the mysqld reaper thread")?;
    Ok(())
}

const SIGTERM: i32 = 15;

// The one libc call needed; the design card has no libc binding crate for it.
unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Polls until a connection succeeds.
pub fn wait_until_answering(params: &ClientParams, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match Client::connect_with_timeout(params, Duration::from_secs(4)) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() < deadline => {
                log::debug!("mysqld not answering yet: {err}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(err) => bail!("mysqld did not come up within {timeout:?}: {err}"),
        }
    }
}

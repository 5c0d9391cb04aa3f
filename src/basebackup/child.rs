//! Runs one child process (a backup tool, an extractor, `tar`, a temporary mysqld) under
//! supervision: its output logged line by line under the caller's log target, a cancel flag
//! watched, progress ticks sent while it runs, and its end turned into a typed error.
//!
//! The calling thread does the data work (reading the child's stdout, or feeding its stdin) in
//! a body closure; scoped helper threads drain the other pipes and watch the cancel flag, so a
//! child that stalls without output is still killed promptly when the job is cancelled. The
//! child is killed (SIGKILL) and reaped whenever the body fails, so none outlives the call.
//! Nor does one outlive the daemon: a child gets `PR_SET_PDEATHSIG`, so the kernel kills it
//! when the daemon dies without a chance to clean up (`kill -9`, OOM killer). A temporary
//! mysqld of a clone snapshot would otherwise run on, orphaned, on a deleted scratch directory.
//!
//! The call returns once the child's output pipes close. A child that leaves a process of its
//! own holding them (a shell running a pipeline) would keep it waiting; the programs run here
//! (the backup tools, the extractors, `tar`, mysqld) do not.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::Error;
use super::output::Severity;

// Not in std, and no libc binding crate is a dependency; `prctl` and `fcntl` are in every
// Linux libc.
unsafe extern "C" {
    fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    fn fcntl(fd: std::ffi::c_int, cmd: std::ffi::c_int, ...) -> std::ffi::c_int;
}
const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
const F_SETPIPE_SZ: std::ffi::c_int = 1031;
/// The data pipe's capacity. At Linux's default 64 KiB, each of our 256 KiB writes into a
/// snapshot extractor (or reads from a snapshot tool) takes several hand-offs between the
/// processes; a larger pipe lets both sides run.
const DATA_PIPE_BYTES: std::ffi::c_int = 1 << 20;

/// Enlarges a data pipe; a refusal (a lower `/proc/sys/fs/pipe-max-size`) only costs speed.
fn enlarge_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a descriptor this process owns, with an integer argument.
    let result = unsafe { fcntl(fd, F_SETPIPE_SZ, DATA_PIPE_BYTES) };
    if result == -1 {
        log::debug!(
            "enlarging a pipe to {DATA_PIPE_BYTES} bytes: {}",
            std::io::Error::last_os_error()
        );
    }
}
const SIGKILL: std::ffi::c_ulong = 9;

/// How often the watchdog looks at the cancel flag.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How often the caller's tick runs while the child does.
const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// After the body failed, how long the child gets to end by itself, so that a tool that failed
/// first is reported as the cause (its stderr says why), not the broken pipe it left behind.
const GRACE_AFTER_BODY_ERROR: Duration = Duration::from_secs(2);
/// Lines of output kept for error messages.
const TAIL_LINES: usize = 20;

/// Which of the child's standard streams carry data for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPipe {
    /// None: stdin is closed, stdout and stderr are logged.
    None,
    /// The body reads stdout; stderr is logged.
    Stdout,
    /// The body writes stdin (and must drop it when done); stdout and stderr are logged.
    Stdin,
}

/// The data stream handed to the body.
pub enum DataStream {
    None,
    Stdout(ChildStdout),
    Stdin(ChildStdin),
}

/// How to supervise one child.
pub struct Supervision<'a> {
    /// Names the program in errors: `mariabackup`, `tar`, ...
    pub name: &'a str,
    /// The log target its output lines go to, such as `myhoard::basebackup::mariabackup`.
    pub log_target: &'a str,
    pub cancel: &'a AtomicBool,
    /// Sees every output line (stdout too, unless it is data) and says how to log it.
    pub on_line: &'a (dyn Fn(&str) -> Severity + Sync),
    /// Runs about once a second while the child runs (progress reports).
    pub on_tick: &'a (dyn Fn() + Sync),
}

/// The running child, for a body that must notice when it exits (a server that fails to start).
pub struct Running<'a> {
    child: &'a Mutex<Child>,
}

impl Running<'_> {
    /// Whether the child has exited (it is reaped; `run` still sees its status).
    pub fn has_exited(&self) -> bool {
        !matches!(lock(self.child).try_wait(), Ok(None))
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawns it ends. That thread is the
/// caller of [`run`], which waits for the child, so in practice: when the daemon dies.
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let daemon_pid = std::process::id();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon died before the signal was armed: do not start an orphan.
            if std::os::unix::process::parent_id() != daemon_pid {
                const ESRCH: i32 = 3;
                return Err(std::io::Error::from_raw_os_error(ESRCH));
            }
            Ok(())
        });
    }
}

/// Spawns `command` and runs `body` with its data stream; returns the body's value once the
/// child has exited successfully.
///
/// Errors, most telling first: [`Error::Cancelled`] when the cancel flag was set at any point;
/// the child's own failure ([`Error::ToolFailed`], with its last output lines) when it exited
/// unsuccessfully by itself; otherwise the body's error.
pub fn run<T>(
    command: &mut Command,
    supervision: &Supervision<'_>,
    data: DataPipe,
    body: impl FnOnce(DataStream, &Running<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    command
        .stdin(if data == DataPipe::Stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    kill_with_parent(command);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: supervision.name.to_owned(),
        source,
    })?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    {
        use std::os::fd::AsRawFd;
        match data {
            DataPipe::Stdin => stdin.iter().for_each(|pipe| enlarge_pipe(pipe.as_raw_fd())),
            DataPipe::Stdout => stdout
                .iter()
                .for_each(|pipe| enlarge_pipe(pipe.as_raw_fd())),
            DataPipe::None => {}
        }
    }
    let child = Mutex::new(child);
    let finished = AtomicBool::new(false);
    let tail: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

    let (outcome, exit) = thread::scope(|scope| {
        let log_output = |pipe: Box<dyn Read + Send>| log_lines(pipe, supervision, &tail);
        let mut loggers = Vec::new();
        if let Some(stderr) = stderr {
            loggers.push(
                thread::Builder::new()
                    .name(format!("{}-stderr", supervision.name))
                    .spawn_scoped(scope, move || log_output(Box::new(stderr))),
            );
        }
        let data_stream = match data {
            DataPipe::None | DataPipe::Stdin => {
                if let Some(stdout) = stdout {
                    loggers.push(
                        thread::Builder::new()
                            .name(format!("{}-stdout", supervision.name))
                            .spawn_scoped(scope, move || log_output(Box::new(stdout))),
                    );
                }
                match stdin {
                    Some(stdin) if data == DataPipe::Stdin => DataStream::Stdin(stdin),
                    _ => DataStream::None,
                }
            }
            DataPipe::Stdout => match stdout {
                Some(stdout) => DataStream::Stdout(stdout),
                None => DataStream::None,
            },
        };
        let watchdog = thread::Builder::new()
            .name(format!("{}-watch", supervision.name))
            .spawn_scoped(scope, || watch(&child, &finished, supervision));

        let spawned = loggers
            .into_iter()
            .chain(std::iter::once(watchdog))
            .collect::<Result<Vec<_>, _>>();
        let outcome = match spawned {
            Ok(_) => body(data_stream, &Running { child: &child }),
            Err(source) => Err(Error::Spawn {
                program: format!("{} supervisor thread", supervision.name),
                source,
            }),
        };
        let exit = match &outcome {
            Ok(_) => wait(&child, supervision.cancel, None),
            Err(_) => wait(&child, supervision.cancel, Some(GRACE_AFTER_BODY_ERROR)),
        };
        finished.store(true, Ordering::SeqCst);
        // The scope joins the helper threads: the loggers end at EOF (the child is gone), the
        // watchdog at `finished`.
        (outcome, exit)
    });

    let stderr_tail: Vec<String> = lock(&tail).iter().cloned().collect();
    if supervision.cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    let failed_by_itself = |exit: &Exit| match exit {
        Exit::Exited(status) if !status.success() => Some(status.to_string()),
        _ => None,
    };
    match (outcome, exit) {
        (_, Err(err)) => Err(err),
        (Ok(value), Ok(Exit::Exited(status))) if status.success() => Ok(value),
        (Ok(_), Ok(exit)) => Err(Error::ToolFailed {
            program: supervision.name.to_owned(),
            status: exit.describe(),
            stderr_tail,
        }),
        (Err(err), Ok(exit)) => match failed_by_itself(&exit) {
            Some(status) if !err.outranks_tool_failure() => Err(Error::ToolFailed {
                program: supervision.name.to_owned(),
                status,
                stderr_tail,
            }),
            _ => Err(err),
        },
    }
}

/// How the child ended.
enum Exit {
    Exited(ExitStatus),
    /// We killed it (the body failed, or it was cancelled).
    Killed(ExitStatus),
}

impl Exit {
    fn describe(&self) -> String {
        match self {
            Exit::Exited(status) => status.to_string(),
            Exit::Killed(status) => format!("{status} (killed)"),
        }
    }
}

/// Waits for the child to exit. With `grace`, kills it when it has not exited by then; the
/// cancel flag kills it at once.
fn wait(child: &Mutex<Child>, cancel: &AtomicBool, grace: Option<Duration>) -> Result<Exit, Error> {
    let deadline = grace.map(|grace| Instant::now() + grace);
    loop {
        let mut guard = lock(child);
        match guard.try_wait() {
            Ok(Some(status)) => return Ok(Exit::Exited(status)),
            Ok(None) => {}
            Err(source) => {
                // Cannot tell whether it runs: make sure it does not.
                let _ = guard.kill();
                let _ = guard.wait();
                return Err(Error::Wait { source });
            }
        }
        let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if expired || cancel.load(Ordering::SeqCst) {
            // It may have exited between the two calls; `kill` then fails harmlessly.
            let _ = guard.kill();
            return match guard.wait() {
                Ok(status) => Ok(Exit::Killed(status)),
                Err(source) => Err(Error::Wait { source }),
            };
        }
        drop(guard);
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child as soon as the cancel flag is set, and runs the tick while it runs.
fn watch(child: &Mutex<Child>, finished: &AtomicBool, supervision: &Supervision<'_>) {
    let mut last_tick = Instant::now();
    while !finished.load(Ordering::SeqCst) {
        if supervision.cancel.load(Ordering::SeqCst) {
            // Killing unblocks the body: its reads see EOF, its writes a broken pipe. The
            // child is reaped by `wait`.
            let _ = lock(child).kill();
            return;
        }
        if last_tick.elapsed() >= TICK_INTERVAL {
            (supervision.on_tick)();
            last_tick = Instant::now();
        }
        thread::sleep(WATCH_INTERVAL);
    }
}

/// Logs every line of `pipe` under the target and keeps the last ones for error messages.
fn log_lines(
    pipe: Box<dyn Read + Send>,
    supervision: &Supervision<'_>,
    tail: &Mutex<VecDeque<String>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                log::warn!(target: supervision.log_target, "reading output of {}: {err}", supervision.name);
                return;
            }
        }
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        match (supervision.on_line)(line) {
            Severity::Info => log::info!(target: supervision.log_target, "{line}"),
            Severity::Error => log::error!(target: supervision.log_target, "{line}"),
        }
        let mut tail = lock(tail);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
}

/// Locks a mutex, ignoring poisoning: a panicked helper thread must not hide the child's fate.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn supervision<'a>(
        cancel: &'a AtomicBool,
        on_line: &'a (dyn Fn(&str) -> Severity + Sync),
        on_tick: &'a (dyn Fn() + Sync),
    ) -> Supervision<'a> {
        Supervision {
            name: "sh",
            log_target: "myhoard::basebackup::test",
            cancel,
            on_line,
            on_tick,
        }
    }

    #[test]
    fn reads_stdout_and_sees_stderr_lines() {
        let cancel = AtomicBool::new(false);
        let lines = Mutex::new(Vec::new());
        let on_line = |line: &str| {
            lock(&lines).push(line.to_owned());
            Severity::Info
        };
        let output = run(
            Command::new("sh").args(["-c", "echo data; echo one >&2; echo two >&2"]),
            &supervision(&cancel, &on_line, &|| {}),
            DataPipe::Stdout,
            |stream, _| {
                let DataStream::Stdout(mut stdout) = stream else {
                    panic!("no stdout");
                };
                let mut text = String::new();
                stdout
                    .read_to_string(&mut text)
                    .map_err(|source| Error::Wait { source })?;
                Ok(text)
            },
        )
        .expect("runs");
        assert_eq!(output, "data\n");
        assert_eq!(*lock(&lines), ["one", "two"]);
    }

    #[test]
    fn feeds_stdin() {
        let cancel = AtomicBool::new(false);
        let lines = Mutex::new(Vec::new());
        let on_line = |line: &str| {
            lock(&lines).push(line.to_owned());
            Severity::Info
        };
        run(
            Command::new("sh").args(["-c", "tr a-z A-Z"]),
            &supervision(&cancel, &on_line, &|| {}),
            DataPipe::Stdin,
            |stream, _| {
                let DataStream::Stdin(mut stdin) = stream else {
                    panic!("no stdin");
                };
                stdin
                    .write_all(b"hello\n")
                    .map_err(|source| Error::Wait { source })?;
                Ok(())
            },
        )
        .expect("runs");
        // The child's stdout is logged when it is not data.
        assert_eq!(*lock(&lines), ["HELLO"]);
    }

    #[test]
    fn failing_child_reports_status_and_output_tail() {
        let cancel = AtomicBool::new(false);
        let err = run(
            Command::new("sh").args(["-c", "echo 'it broke' >&2; exit 3"]),
            &supervision(&cancel, &|_| Severity::Error, &|| {}),
            DataPipe::None,
            |_, _| Ok(()),
        )
        .expect_err("fails");
        match err {
            Error::ToolFailed {
                program,
                status,
                stderr_tail,
            } => {
                assert_eq!(program, "sh");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr_tail, ["it broke"]);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn cancel_kills_a_silent_child_promptly() {
        let cancel = AtomicBool::new(false);
        let ticks = AtomicU32::new(0);
        let on_tick = || {
            if ticks.fetch_add(1, Ordering::SeqCst) == 0 {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let started = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", "exec sleep 60"]),
            &supervision(&cancel, &|_| Severity::Info, &on_tick),
            DataPipe::Stdout,
            |stream, _| {
                // Blocks until the child dies.
                let DataStream::Stdout(mut stdout) = stream else {
                    panic!("no stdout");
                };
                let mut sink = Vec::new();
                let _ = stdout.read_to_end(&mut sink);
                Ok(())
            },
        )
        .expect_err("cancelled");
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(ticks.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn body_error_kills_the_child() {
        let cancel = AtomicBool::new(false);
        let started = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", "exec sleep 60"]),
            &supervision(&cancel, &|_| Severity::Info, &|| {}),
            DataPipe::Stdout,
            |_, _| -> Result<(), Error> { Err(Error::EmptyStream) },
        )
        .expect_err("fails");
        assert!(matches!(err, Error::EmptyStream), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let cancel = AtomicBool::new(false);
        let err = run(
            &mut Command::new("/nonexistent/myhoard-test-tool"),
            &supervision(&cancel, &|_| Severity::Info, &|| {}),
            DataPipe::None,
            |_, _| Ok(()),
        )
        .expect_err("fails");
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }
}

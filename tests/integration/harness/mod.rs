//! Test harness: finds the external tools the integration tests need and runs real servers
//! (object stores today) on free loopback ports, so that no test ever leaves one running.
//!
//! Every server process is spawned through one long-lived thread with `PR_SET_PDEATHSIG`, so the
//! kernel kills it when the test process dies for whatever reason (a panic, nextest's timeout
//! kill). Servers owned by a test are also killed on `Drop`; servers shared by the tests of one
//! process are killed by an `atexit` hook. Server output goes to a log file in the server's
//! directory, never to the test's stdout or stderr: an inherited pipe would keep nextest waiting
//! for a "leaked" handle, and the log tail is printed when a server fails instead.
//!
//! Tools are looked up in `$MYHOARD_TEST_TOOLS/bin` (default `<repo>/.test-tools/bin`, filled by
//! `tests/install-test-deps.sh`), then in `PATH`.

pub mod azurite;
pub mod daemon;
pub mod db;
pub mod fake_gcs;
pub mod load;
pub mod myhoard;
pub mod seaweedfs;

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use std::{env, thread};

/// Where `tests/install-test-deps.sh` puts the tools.
pub fn tools_dir() -> PathBuf {
    match env::var_os("MYHOARD_TEST_TOOLS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-tools"),
    }
}

/// Whether missing tools must fail tests instead of skipping them.
fn in_ci() -> bool {
    env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// Finds a tool: a path (anything with a `/`) is taken as is; a bare name is looked up in
/// `<tools_dir>/bin`, then in `PATH`.
///
/// When the tool is missing, this panics under `CI` (the machine is supposed to have run
/// `tests/install-test-deps.sh`), and otherwise prints a note and returns `None` so the caller
/// can return early: a developer without the tools still gets a useful `cargo nextest run`.
pub fn require_tool(path_or_name: &str) -> Option<PathBuf> {
    let found = if path_or_name.contains('/') {
        Some(PathBuf::from(path_or_name)).filter(|path| is_executable(path))
    } else {
        let mut dirs = vec![tools_dir().join("bin")];
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        dirs.into_iter()
            .map(|dir| dir.join(path_or_name))
            .find(|path| is_executable(path))
    };
    if found.is_some() {
        return found;
    }
    let message = format!(
        "test tool {path_or_name:?} not found in {}/bin or PATH; run tests/install-test-deps.sh \
         (or set MYHOARD_TEST_TOOLS to where it installed them)",
        tools_dir().display()
    );
    if in_ci() {
        panic!("CI is set, so a missing tool is an error: {message}");
    }
    eprintln!("note: skipping this test: {message}");
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // `metadata` follows symlinks, so a dangling link in tools/bin counts as missing.
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// One free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports. All probe sockets stay bound until every port is picked, so the
/// kernel cannot hand out the same port twice. Another process may still grab one before the
/// server binds it; the server starters retry with fresh ports when that happens.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a probe socket on 127.0.0.1:0"))
        .collect();
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().expect("probe socket address").port();
    }
    ports
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`. Gives up early, with the
/// server's log tail, when the process exits.
pub fn wait_for_port(
    port: u16,
    timeout: Duration,
    process: &mut ServerProcess,
) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = process.exit_status() {
            return Err(format!(
                "{} exited with {status} before listening on port {port}",
                process.name
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen on port {port} within {timeout:?}",
                process.name
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Retries `probe` until it succeeds or `timeout` passes; for "is the service really up" checks
/// that need more than an open port.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    process: &mut ServerProcess,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let error = match probe() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if let Some(status) = process.exit_status() {
            return Err(format!(
                "{} exited with {status} while waiting for {what}: {error}",
                process.name
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} did not succeed within {timeout:?}: {error}"
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A server child process that is killed (SIGKILL, by PID) and reaped when dropped.
pub struct ServerProcess {
    child: Child,
    name: String,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl ServerProcess {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> io::Result<ServerProcess> {
        let output = File::options().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        let child = spawn_with_parent_death_signal(command)?;
        Ok(ServerProcess {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
            reaped: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// Kills the process at once (no clean shutdown, like a crash) and reaps it.
    pub fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // `Child::kill` sends SIGKILL to this child's PID; it fails only when the process is
        // already reaped, which `reaped` rules out.
        let _ = self.child.kill();
        self.reaped = self.child.wait().ok();
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file (at most 16 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(16 << 10)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

// libc is not a dependency of this crate; these two functions are in every Linux libc.
unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn atexit(callback: extern "C" fn()) -> c_int;
}

const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_int = 9;

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawns `command` so that the kernel SIGKILLs it when the test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process, and
/// libtest runs each test on a thread of its own. A server shared between tests would then die
/// with the test that happened to start it. So every spawn goes through one spawner thread that
/// lives as long as the process.
fn spawn_with_parent_death_signal(mut command: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call.
    unsafe {
        command.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for mut request in receiver {
                    // The requester may have given up (panicked) meanwhile; the child then
                    // lives until the process exits, which kills it.
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("starting the server spawner thread");
        Mutex::new(sender)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the server spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the server spawner thread dropped a request"))?
}

static EXIT_HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits normally (libtest ends with `exit`, also after failed
/// tests). Used to stop servers shared through statics, which are never dropped; the parent-death
/// signal covers abnormal exits.
pub fn at_exit(hook: fn()) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        extern "C" fn run_hooks() {
            let hooks =
                std::mem::take(&mut *EXIT_HOOKS.lock().unwrap_or_else(PoisonError::into_inner));
            for hook in hooks {
                hook();
            }
        }
        // SAFETY: registers a plain function with no captured state.
        let registered = unsafe { atexit(run_hooks) };
        assert_eq!(registered, 0, "atexit failed");
    });
    EXIT_HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(hook);
}

/// A name that is unique within this process and valid as an S3 bucket, GCS bucket and Azure
/// container name (3 to 63 characters of lowercase letters, digits and dashes).
pub fn unique_bucket_name(hint: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut cleaned: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    cleaned.truncate(50);
    let cleaned = cleaned.trim_matches('-');
    format!("t{n}-{cleaned}")
}

/// Locks a mutex, ignoring poisoning: a test that panicked while holding a shared server must not
/// make every later test fail for that reason.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes a shared server out of its slot so it is dropped (killed); for exit hooks. Skips a slot
/// another thread holds rather than deadlock the exit.
pub fn take_shared<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    match slot.try_lock() {
        Ok(mut guard) => guard.take(),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The object-storage servers behind the remote backends, driven the same way.
pub trait StorageServer: Send {
    /// The myhoard `object_storage` config for `bucket` on this server, as JSON, so tests can
    /// change fields (part sizes, credentials) before parsing it.
    fn config(&self, bucket: &str) -> serde_json::Value;
    fn create_bucket(&self, bucket: &str);
    /// Returns once the bucket would survive a crash of the server. Most servers persist it
    /// before answering; Azurite saves its metadata only every few seconds.
    fn wait_until_durable(&self, _bucket: &str) {}
    /// Kills the server at once, like a crash.
    fn kill(&mut self);
    /// Starts it again on the same ports and data directory, and waits until it answers.
    fn restart(&mut self);
}

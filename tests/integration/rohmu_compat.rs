//! Byte compatibility with the real `rohmu` package from PyPI, in both directions, through the
//! local storage layout: what rohmu stores (every algorithm, with and without encryption) myhoard
//! reads back byte for byte, and what myhoard stores rohmu reads back byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use myhoard::pipeline::{self, Algorithm, CompressionSettings, Encoding, PublicKey};
use myhoard::storage::{self, Metadata, RetryPolicy};

use crate::harness::{self, myhoard as cli};

const ALGORITHMS: [&str; 4] = ["snappy", "zstd", "lzma", "none"];

struct Rohmu {
    python: PathBuf,
    tool: PathBuf,
}

impl Rohmu {
    fn find() -> Option<Rohmu> {
        let python = harness::require_tool(
            harness::tools_dir()
                .join("venv/bin/python")
                .to_str()
                .expect("utf-8 path"),
        )?;
        Some(Rohmu {
            python,
            tool: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/rohmu_tool.py"),
        })
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new(&self.python)
            .arg(&self.tool)
            .args(args)
            .output()
            .expect("running rohmu_tool.py");
        assert!(
            output.status.success(),
            "rohmu_tool.py {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Inputs of several shapes: empty, one byte, and a few MiB of mixed text and noise that spans
/// many snappy chunks, zstd blocks and xz blocks.
fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut mixed = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for row in 0..120_000u32 {
        mixed.extend_from_slice(format!("{row}\tcustomer-{}\tpaid\t", row % 977).as_bytes());
        for _ in 0..(row % 5) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            mixed.extend_from_slice(&state.to_le_bytes());
        }
        mixed.push(b'\n');
    }
    let cases: [(&str, &[u8]); 3] = [("empty", b""), ("one-byte", b"x"), ("mixed", &mixed)];
    cases
        .iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            fs::write(&path, bytes).expect("writing input");
            (name.to_string(), path)
        })
        .collect()
}

fn assert_same_file(expected: &Path, actual: &Path, what: &str) {
    let expected = fs::read(expected).expect("reading expected");
    let actual = fs::read(actual).expect("reading actual");
    assert!(
        expected == actual,
        "{what}: {} bytes expected, {} bytes read back, contents differ",
        expected.len(),
        actual.len()
    );
}

#[test]
fn myhoard_reads_what_rohmu_writes() {
    let Some(rohmu) = Rohmu::find() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = cli::shared_key_pair();
    let (public_file, _) = cli::write_key_files(dir.path(), &keys);
    let storage_dir = dir.path().join("storage");
    fs::create_dir_all(&storage_dir).expect("storage dir");
    let config = cli::write_config(dir.path(), cli::local_site(&storage_dir, &keys, "snappy"));
    let config = config.to_str().expect("utf-8 path");
    let storage_arg = storage_dir.to_str().expect("utf-8 path");
    for (name, input) in inputs(dir.path()) {
        for algorithm in ALGORITHMS {
            for encrypted in [true, false] {
                let key = format!("site/stream/{name}-{algorithm}-{encrypted}");
                let input_arg = input.to_str().expect("utf-8 path");
                let mut args = vec![
                    "put",
                    "--dir",
                    storage_arg,
                    "--key",
                    &key,
                    "--input",
                    input_arg,
                ];
                args.extend(["--algorithm", algorithm]);
                let public_arg = public_file.to_str().expect("utf-8 path");
                if encrypted {
                    args.extend(["--public-key", public_arg]);
                }
                if algorithm == "zstd" {
                    // rohmu's multithreaded zstd writes several frames; they must all be read.
                    args.extend(["--threads", "2", "--level", "5"]);
                }
                rohmu.run(&args);
                let output = dir.path().join("out");
                let output_arg = output.to_str().expect("utf-8 path");
                cli::run_ok(&["storage", "get", "--config", config, &key, output_arg]);
                assert_same_file(&input, &output, &key);
            }
        }
    }
    // The listing shows rohmu's objects with their metadata and without rohmu's `_hash`.
    let listing = cli::run_ok(&[
        "storage",
        "ls",
        "--config",
        config,
        "--json",
        "site/stream/",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("ls --json line"))
        .collect();
    assert_eq!(lines.len(), 3 * ALGORITHMS.len() * 2);
    for line in &lines {
        let metadata = line["metadata"].as_object().expect("metadata");
        assert!(
            metadata.contains_key("json") && !metadata.contains_key("_hash"),
            "{line}"
        );
    }
}

#[test]
fn rohmu_reads_what_myhoard_writes() {
    let Some(rohmu) = Rohmu::find() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = cli::shared_key_pair();
    let (_, private_file) = cli::write_key_files(dir.path(), &keys);
    let storage_dir = dir.path().join("storage");
    let config = cli::write_config(dir.path(), cli::local_site(&storage_dir, &keys, "snappy"));
    let config = config.to_str().expect("utf-8 path");
    let storage_config: storage::StorageConfig = serde_json::from_value(
        serde_json::json!({ "storage_type": "local", "directory": storage_dir }),
    )
    .expect("storage config");
    let storage = storage::open(&storage_config, RetryPolicy::default()).expect("open storage");
    let storage_arg = storage_dir.to_str().expect("utf-8 path");
    let private_arg = private_file.to_str().expect("utf-8 path");
    for (name, input) in inputs(dir.path()) {
        for algorithm in ALGORITHMS {
            let input_arg = input.to_str().expect("utf-8 path");
            // Encrypted: through the operator command, exactly as the daemon stores objects.
            let key = format!("site/stream/{name}-{algorithm}-encrypted");
            cli::run_ok(&[
                "storage",
                "put",
                "--config",
                config,
                "--compression",
                algorithm,
                "--threads",
                "2",
                input_arg,
                &key,
            ]);
            let output = dir.path().join("out");
            let output_arg = output.to_str().expect("utf-8 path");
            rohmu.run(&[
                "get",
                "--dir",
                storage_arg,
                "--key",
                &key,
                "--output",
                output_arg,
                "--private-key",
                private_arg,
            ]);
            assert_same_file(&input, &output, &key);

            // Unencrypted: through the library pipeline (the CLI always encrypts).
            let key = format!("site/stream/{name}-{algorithm}-plain");
            let algorithm: Algorithm = algorithm.parse().expect("algorithm");
            let info = serde_json::json!({
                "compression_algorithm": algorithm.name(),
                "encrypted": false,
            });
            let mut metadata = Metadata::new();
            metadata.insert("json".into(), info.to_string());
            let mut source = fs::File::open(&input).expect("open input");
            let encoding = Encoding::<PublicKey> {
                compression: CompressionSettings {
                    algorithm,
                    level: 0,
                    threads: 0,
                },
                key: None,
            };
            pipeline::upload(storage.as_ref(), &key, &mut source, &metadata, encoding)
                .expect("upload");
            rohmu.run(&[
                "get",
                "--dir",
                storage_arg,
                "--key",
                &key,
                "--output",
                output_arg,
            ]);
            assert_same_file(&input, &output, &key);
        }
    }
}

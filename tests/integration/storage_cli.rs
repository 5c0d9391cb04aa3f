//! The operator commands through the real binary: `validate-config` and `storage ls|get|put|rm`,
//! including how `get` refuses damaged objects and leaves nothing behind.

use std::fs;
use std::path::Path;

use crate::harness::myhoard as cli;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn shipped_example_config_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/myhoard.json");
    let output = cli::run(&[
        "validate-config",
        "--config",
        example.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn validate_config_reports_every_problem_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = cli::shared_key_pair();
    let config_path = cli::write_config(dir.path(), cli::local_site(dir.path(), &keys, "gzip"));
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).expect("read")).expect("parse");
    config["backup_settings"]["backup_interval_minutes"] = 7.into();
    config["backup_sites"]["test"]["object_storage"]["colour"] = "blue".into();
    config["surprise"] = true.into();
    fs::write(&config_path, serde_json::to_vec(&config).expect("json")).expect("write");

    let output = cli::run(&[
        "validate-config",
        "--config",
        config_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    for expected in [
        "backup_settings.backup_interval_minutes",
        "backup_sites.test.compression.algorithm",
        "backup_sites.test.object_storage.colour",
        "surprise",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(expected)),
            "no line for {expected} in:\n{text}"
        );
    }
}

#[test]
fn storage_round_trip_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = cli::shared_key_pair();
    let storage_dir = dir.path().join("storage");
    let config = cli::write_config(dir.path(), cli::local_site(&storage_dir, &keys, "zstd"));
    let config = config.to_str().expect("utf-8");
    let input = dir.path().join("input");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i / 3 % 256) as u8).collect();
    fs::write(&input, &data).expect("write input");
    let input = input.to_str().expect("utf-8");

    cli::run_ok(&[
        "storage",
        "put",
        "--config",
        config,
        "--metadata",
        r#"{"note": "hi"}"#,
        input,
        "s/a/obj",
    ]);
    cli::run_ok(&["storage", "put", "--config", config, input, "s/b/obj"]);

    // Shallow listing shows the two "directories"; deep shows both objects with metadata.
    let shallow = cli::run_ok(&["storage", "ls", "--config", config, "s/"]);
    let shallow = String::from_utf8_lossy(&shallow.stdout);
    assert!(
        shallow.contains("PRE  s/a/") && shallow.contains("PRE  s/b/"),
        "{shallow}"
    );
    let deep = cli::run_ok(&[
        "storage", "ls", "--config", config, "--deep", "--json", "s/",
    ]);
    let objects: Vec<serde_json::Value> = String::from_utf8_lossy(&deep.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    assert_eq!(objects.len(), 2, "{objects:?}");
    let info: serde_json::Value = serde_json::from_str(
        objects[0]["metadata"]["json"]
            .as_str()
            .expect("json metadata"),
    )
    .expect("parse json metadata");
    assert_eq!(info["compression_algorithm"], "zstd");
    assert_eq!(info["note"], "hi");
    assert_eq!(info["file_size"], data.len());

    let output = dir.path().join("output");
    let output_arg = output.to_str().expect("utf-8");
    cli::run_ok(&["storage", "get", "--config", config, "s/a/obj", output_arg]);
    assert!(
        fs::read(&output).expect("read output") == data,
        "round trip"
    );
    fs::remove_file(&output).expect("remove output");

    // Damage the stored object in several ways; each is refused with its own message and no
    // output file appears.
    let object = storage_dir.join("s/a/obj");
    let stored = fs::read(&object).expect("read object");
    let mut flipped = stored.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("tampered", flipped, "integrity check failed"),
        ("truncated", stored[..300].to_vec(), "truncated"),
        (
            "not encrypted",
            b"plain text, not an encrypted object".to_vec(),
            "does not start with the \"pghoa1\" magic",
        ),
    ];
    for (name, bytes, message) in cases {
        fs::write(&object, &bytes).expect("damage object");
        let result = cli::run(&["storage", "get", "--config", config, "s/a/obj", output_arg]);
        assert_eq!(result.status.code(), Some(1), "{name}: {}", stderr(&result));
        assert!(
            stderr(&result).contains(message),
            "{name}: {}",
            stderr(&result)
        );
        assert!(!output.exists(), "{name}: no output may be left behind");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".myhoard-get-"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: temporary file left behind");
    }

    // The right object under another key pair: the key cannot be unwrapped.
    let other_keys = cli::generate_key_pair(dir.path(), "other");
    let other_dir = dir.path().join("other");
    fs::create_dir_all(&other_dir).expect("other dir");
    let other_config = cli::write_config(
        &other_dir,
        cli::local_site(&storage_dir, &other_keys, "zstd"),
    );
    let result = cli::run(&[
        "storage",
        "get",
        "--config",
        other_config.to_str().expect("utf-8"),
        "s/b/obj",
        output_arg,
    ]);
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("different key pair"),
        "{}",
        stderr(&result)
    );

    // rm deletes; a second rm of the same key fails and says so.
    cli::run_ok(&["storage", "rm", "--config", config, "s/b/obj"]);
    let again = cli::run(&["storage", "rm", "--config", config, "s/b/obj"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));
    let missing = cli::run(&["storage", "get", "--config", config, "s/b/obj", output_arg]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["storage"],
        vec!["storage", "get", "--bogus"],
    ] {
        let output = cli::run(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("usage:"), "{args:?}");
    }
}

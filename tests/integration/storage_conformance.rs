//! The storage conformance suite: one list of cases, run against every backend through
//! `storage::open` (so the retry layer is included), each backend on a real server:
//!
//! | backend | server                                   |
//! | ------- | ---------------------------------------- |
//! | local   | a temporary directory                    |
//! | s3      | SeaweedFS, SigV4 checked                 |
//! | google  | fake-gcs-server (no auth: emulator mode) |
//! | azure   | Azurite, SharedKey checked               |
//!
//! `conformance_tests!` writes one `#[test]` per backend and case, named
//! `storage_conformance::<backend>::<case>`. The tests of one process share one server per kind,
//! each test in a bucket of its own; the outage test runs its own server because it kills it.
//!
//! Part sizes are set small (S3 5 MiB, its minimum; GCS 256 KiB; Azure 1 MiB) so that multipart
//! paths run with modest data.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use myhoard::storage::{
    self, ErrorKind, ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage, RetryPolicy,
};
use ring::digest;
use serde_json::json;
use tempfile::TempDir;

use crate::harness::azurite::Azurite;
use crate::harness::fake_gcs::FakeGcs;
use crate::harness::seaweedfs::SeaweedFs;
use crate::harness::{self, StorageServer};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
    Google,
    Azure,
}

impl Backend {
    /// The config key for the upload part size, and the small value the suite uses.
    fn part_size(self) -> (Option<&'static str>, u64) {
        match self {
            // Local storage has no parts; the "part size" cases still run with this size.
            Backend::Local => (None, MIB),
            Backend::S3 => (Some("segment_size"), 5 * MIB),
            Backend::Google => (Some("chunk_size"), 256 << 10),
            Backend::Azure => (Some("block_size"), MIB),
        }
    }

    /// The part size for the 200 MiB case, where it differs from [`Backend::part_size`].
    /// fake-gcs-server rewrites the whole partial object for every resumable-upload chunk, so
    /// 800 chunks of 256 KiB take minutes there (real GCS appends); 8 MiB chunks, the backend's
    /// default, keep the case quick. The small chunks are still covered by the other cases.
    fn large_object_part_size(self) -> Option<u64> {
        match self {
            Backend::Google => Some(8 * MIB),
            Backend::Local | Backend::S3 | Backend::Azure => None,
        }
    }

    fn start_own_server(self) -> Option<Box<dyn StorageServer>> {
        match self {
            Backend::Local => panic!("local storage has no server"),
            Backend::S3 => SeaweedFs::start().map(|s| Box::new(s) as Box<dyn StorageServer>),
            Backend::Google => FakeGcs::start().map(|s| Box::new(s) as Box<dyn StorageServer>),
            Backend::Azure => Azurite::start().map(|s| Box::new(s) as Box<dyn StorageServer>),
        }
    }

    /// Configs that point at the same bucket as `config` but carry credentials the server must
    /// refuse, each with a label for failure messages.
    fn wrong_credentials(
        self,
        config: &serde_json::Value,
    ) -> Vec<(&'static str, serde_json::Value)> {
        let with = |changes: serde_json::Value| {
            let mut changed = config.clone();
            for (key, value) in changes.as_object().expect("changes are an object") {
                changed[key] = value.clone();
            }
            changed
        };
        match self {
            Backend::S3 => vec![
                (
                    "wrong secret key",
                    with(json!({"aws_secret_access_key": "not-the-secret"})),
                ),
                (
                    "unknown access key",
                    with(
                        json!({"aws_access_key_id": "UNKNOWNKEY", "aws_secret_access_key": "whatever"}),
                    ),
                ),
            ],
            Backend::Azure => {
                use base64::Engine as _;
                let other_key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
                vec![("wrong account key", with(json!({"account_key": other_key})))]
            }
            // fake-gcs-server does not authenticate, and local storage has no credentials.
            Backend::Local | Backend::Google => panic!("{self:?} cannot check credentials"),
        }
    }
}

/// A backend opened on a fresh bucket (or directory) of its own.
struct Fixture {
    backend: Backend,
    /// The config `storage` was opened with, as JSON.
    config: serde_json::Value,
    storage: Arc<dyn ObjectStorage>,
    part_size: u64,
    _local_dir: Option<TempDir>,
}

/// Retries for the ordinary cases: enough to ride out a hiccup on a loaded machine, short enough
/// that a real failure shows quickly.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    }
}

fn open(config: &serde_json::Value, retry: RetryPolicy) -> Arc<dyn ObjectStorage> {
    let parsed: storage::StorageConfig = serde_json::from_value(config.clone())
        .unwrap_or_else(|err| panic!("config {config} does not parse: {err}"));
    let problems = parsed.problems();
    assert!(
        problems.is_empty(),
        "config {config} has problems: {problems:?}"
    );
    storage::open(&parsed, retry)
        .unwrap_or_else(|err| panic!("opening storage with {config}: {err}"))
}

impl Fixture {
    /// `None` when the backend's server is not installed (and `CI` is unset).
    fn new(backend: Backend, case: &str) -> Option<Fixture> {
        install_crypto_provider();
        let mut local_dir = None;
        let mut config = match backend {
            Backend::Local => {
                let dir = tempfile::Builder::new()
                    .prefix("myhoard-local-storage-")
                    .tempdir()
                    .expect("creating a directory for local storage");
                let config = json!({"storage_type": "local", "directory": dir.path()});
                local_dir = Some(dir);
                config
            }
            Backend::S3 => harness::seaweedfs::shared_bucket(case)?,
            Backend::Google => harness::fake_gcs::shared_bucket(case)?,
            Backend::Azure => harness::azurite::shared_bucket(case)?,
        };
        // Keys are stored under a prefix, as in production, so prefix handling is exercised too.
        config["prefix"] = json!("conformance/");
        let (key, part_size) = backend.part_size();
        if let Some(key) = key {
            config[key] = json!(part_size);
        }
        let storage = open(&config, quick_retry());
        Some(Fixture {
            backend,
            config,
            storage,
            part_size,
            _local_dir: local_dir,
        })
    }

    /// The same bucket and prefix opened with another upload part size.
    fn with_part_size(&self, part_size: u64) -> Arc<dyn ObjectStorage> {
        let (key, _) = self.backend.part_size();
        let mut config = self.config.clone();
        if let Some(key) = key {
            config[key] = json!(part_size);
        }
        open(&config, quick_retry())
    }
}

/// rust-s3 compiles in rustls' aws-lc-rs provider next to the ring one that ureq uses; with both,
/// rustls cannot pick a default and panics on first use. The daemon installs ring in `main`; a
/// test binary has no `main` of ours, so every fixture does it (only the first call takes).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn run(backend: Backend, case: &str, body: fn(&Fixture)) {
    if let Some(fixture) = Fixture::new(backend, case) {
        body(&fixture);
    }
}

/// Generates one `#[test]` per case for a backend. Every backend gets the cases listed here;
/// `fixture:` adds cases that only make sense for some backends, and `own_server:` adds cases
/// that start (and break) a server of their own instead of using a fixture.
macro_rules! conformance_tests {
    ($module:ident, $backend:expr, fixture: [$($extra:ident),* $(,)?], own_server: [$($server_case:ident),* $(,)?] $(,)?) => {
        mod $module {
            conformance_tests!(@fixture $backend;
                empty_object,
                one_byte,
                exact_multiple_of_part_size,
                large_streamed_object,
                ranged_reads,
                listing_with_metadata,
                head,
                delete_then_not_found,
                overwrite_replaces,
                $($extra,)*
            );
            $(
                #[test]
                fn $server_case() {
                    super::install_crypto_provider();
                    super::cases::$server_case($backend);
                }
            )*
        }
    };
    (@fixture $backend:expr; $($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                super::run($backend, stringify!($case), super::cases::$case);
            }
        )*
    };
}

conformance_tests!(local, super::Backend::Local, fixture: [], own_server: []);
conformance_tests!(
    s3,
    super::Backend::S3,
    fixture: [wrong_credentials_refused_without_retry],
    own_server: [server_outage_during_upload],
);
// fake-gcs-server accepts any request, so there are no wrong credentials to test on it.
conformance_tests!(google, super::Backend::Google, fixture: [], own_server: [server_outage_during_upload]);
conformance_tests!(
    azure,
    super::Backend::Azure,
    fixture: [wrong_credentials_refused_without_retry],
    own_server: [server_outage_during_upload],
);

/// A body of pseudo-random bytes of a set length that is produced while it is read, never held
/// in memory, and hashed on the way out. Reads return at most `max_read` bytes, an odd size,
/// like a pipe would, so uploads cannot rely on reads filling their buffers.
struct Generated {
    state: u64,
    remaining: u64,
    produced: u64,
    max_read: usize,
    hash: digest::Context,
    /// Called with the byte count before each read is served; an error fails the read.
    on_read: Option<Box<dyn FnMut(u64) -> io::Result<()> + Send>>,
}

impl Generated {
    fn new(seed: u64, len: u64) -> Generated {
        Generated {
            // xorshift must not start at zero.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            remaining: len,
            produced: 0,
            max_read: 65_537,
            hash: digest::Context::new(&digest::SHA256),
            on_read: None,
        }
    }

    fn next_word(&mut self) -> u64 {
        // xorshift64*: fast and good enough to defeat any compression or deduplication.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Bytes produced so far and their SHA-256.
    fn finish(self) -> (u64, digest::Digest) {
        (self.produced, self.hash.finish())
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(on_read) = &mut self.on_read {
            on_read(self.produced)?;
        }
        let n = buf
            .len()
            .min(self.max_read)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let out = &mut buf[..n];
        let mut words = out.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let bytes = self.next_word().to_le_bytes();
            let len = tail.len();
            tail.copy_from_slice(&bytes[..len]);
        }
        self.hash.update(out);
        self.remaining -= n as u64;
        self.produced += n as u64;
        Ok(n)
    }
}

/// `len` generated bytes, for objects small enough to compare byte by byte.
fn generated_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    Generated::new(seed, len)
        .read_to_end(&mut bytes)
        .expect("generating bytes");
    bytes
}

/// Counts and hashes what is downloaded into it.
struct HashingWriter {
    len: u64,
    hash: digest::Context,
}

impl HashingWriter {
    fn new() -> HashingWriter {
        HashingWriter {
            len: 0,
            hash: digest::Context::new(&digest::SHA256),
        }
    }

    fn finish(self) -> (u64, digest::Digest) {
        (self.len, self.hash.finish())
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> digest::Digest {
    digest::digest(&digest::SHA256, bytes)
}

fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn put_bytes(storage: &dyn ObjectStorage, key: &str, bytes: &[u8], metadata: &Metadata) {
    let stored = storage
        .put(key, &mut &bytes[..], metadata)
        .unwrap_or_else(|err| panic!("put {key:?} ({} bytes): {err}", bytes.len()));
    assert_eq!(
        stored,
        bytes.len() as u64,
        "put {key:?} reported the wrong size"
    );
}

fn get_bytes(storage: &dyn ObjectStorage, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let n = storage
        .get(key, &mut out)
        .unwrap_or_else(|err| panic!("get {key:?}: {err}"));
    assert_eq!(
        n,
        out.len() as u64,
        "get {key:?} reported a size other than it wrote"
    );
    out
}

fn get_range(storage: &dyn ObjectStorage, key: &str, start: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = storage
        .get_range(key, start, end, &mut out)
        .unwrap_or_else(|err| panic!("get_range {key:?} {start}..{end}: {err}"));
    assert_eq!(
        n,
        out.len() as u64,
        "get_range {key:?} {start}..{end} reported a size other than it wrote"
    );
    out
}

fn get_from(storage: &dyn ObjectStorage, key: &str, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = storage
        .get_from(key, offset, &mut out)
        .unwrap_or_else(|err| panic!("get_from {key:?} at {offset}: {err}"));
    assert_eq!(
        n,
        out.len() as u64,
        "get_from {key:?} at {offset} reported a size other than it wrote"
    );
    out
}

fn list(storage: &dyn ObjectStorage, prefix: &str, deep: bool, with_metadata: bool) -> Listing {
    let mut listing = storage
        .list(
            prefix,
            ListOptions {
                deep,
                with_metadata,
            },
        )
        .unwrap_or_else(|err| panic!("list {prefix:?} (deep {deep}): {err}"));
    // The trait promises no order.
    listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
    listing.prefixes.sort();
    listing
}

fn keys(listing: &Listing) -> Vec<&str> {
    listing.objects.iter().map(|o| o.key.as_str()).collect()
}

/// Asserts that `result` failed with `kind`.
fn expect_error<T: std::fmt::Debug>(what: &str, result: storage::Result<T>, kind: ErrorKind) {
    match result {
        Ok(value) => panic!("{what}: expected a {kind:?} error, got Ok({value:?})"),
        Err(err) => assert_eq!(err.kind(), kind, "{what}: wrong error kind: {err}"),
    }
}

mod cases {
    use super::*;

    pub fn empty_object(f: &Fixture) {
        let meta = metadata(&[("json", r#"{"kind": "empty"}"#)]);
        let stored = f
            .storage
            .put("empty", &mut io::empty(), &meta)
            .expect("put an empty object");
        assert_eq!(stored, 0);
        let info = f.storage.head("empty").expect("head the empty object");
        assert_eq!((info.size, info.metadata), (0, Some(meta)));
        assert_eq!(get_bytes(&*f.storage, "empty"), b"");
        assert_eq!(get_from(&*f.storage, "empty", 0), b"");
        assert_eq!(get_range(&*f.storage, "empty", 0, 10), b"");
        let listing = list(&*f.storage, "", true, false);
        assert_eq!(keys(&listing), ["empty"]);
        assert_eq!(listing.objects[0].size, 0);
    }

    pub fn one_byte(f: &Fixture) {
        put_bytes(&*f.storage, "one", b"Z", &Metadata::new());
        assert_eq!(f.storage.head("one").expect("head").size, 1);
        assert_eq!(get_bytes(&*f.storage, "one"), b"Z");
        assert_eq!(get_range(&*f.storage, "one", 0, 1), b"Z");
        assert_eq!(get_range(&*f.storage, "one", 0, 100), b"Z");
        assert_eq!(get_range(&*f.storage, "one", 1, 2), b"");
        assert_eq!(get_from(&*f.storage, "one", 1), b"");
    }

    /// Sizes at part boundaries, where an upload driver may send an empty last part or lose one.
    pub fn exact_multiple_of_part_size(f: &Fixture) {
        let part = f.part_size;
        for (label, size) in [
            ("exactly one part", part),
            ("exactly three parts", 3 * part),
            ("three parts and one byte", 3 * part + 1),
        ] {
            let key = format!("parts/{size}");
            let data = generated_bytes(size, size);
            let stored = f
                .storage
                .put(&key, &mut &data[..], &Metadata::new())
                .unwrap_or_else(|err| panic!("{label}: put {size} bytes: {err}"));
            assert_eq!(stored, size, "{label}: put reported the wrong size");
            assert_eq!(
                f.storage.head(&key).expect("head").size,
                size,
                "{label}: head size"
            );
            let mut download = HashingWriter::new();
            f.storage
                .get(&key, &mut download)
                .unwrap_or_else(|err| panic!("{label}: get: {err}"));
            let (len, hash) = download.finish();
            assert_eq!(len, size, "{label}: downloaded size");
            assert_eq!(
                hash.as_ref(),
                sha256(&data).as_ref(),
                "{label}: SHA-256 of the download"
            );
            // A range across the first part boundary reads both parts' bytes in order.
            if size > part {
                let (start, end) = (part - 10, part + 10);
                assert_eq!(
                    get_range(&*f.storage, &key, start, end),
                    &data[start as usize..end as usize],
                    "{label}: range across the part boundary"
                );
            }
        }
    }

    /// 200 MiB of unknown length, generated while uploading and hashed while downloading, so
    /// neither side ever holds the object.
    pub fn large_streamed_object(f: &Fixture) {
        const SIZE: u64 = 200 * MIB;
        let meta = metadata(&[("json", r#"{"size": "large"}"#)]);
        let storage = match f.backend.large_object_part_size() {
            Some(part_size) => f.with_part_size(part_size),
            None => Arc::clone(&f.storage),
        };
        let mut body = Generated::new(42, SIZE);
        let stored = storage.put("large", &mut body, &meta).expect("put 200 MiB");
        let (produced, expected) = body.finish();
        assert_eq!(
            (stored, produced),
            (SIZE, SIZE),
            "stored and produced sizes"
        );
        let info = storage.head("large").expect("head the large object");
        assert_eq!((info.size, info.metadata), (SIZE, Some(meta)));
        let mut download = HashingWriter::new();
        let got = storage.get("large", &mut download).expect("get 200 MiB");
        let (len, hash) = download.finish();
        assert_eq!((got, len), (SIZE, SIZE), "downloaded sizes");
        assert_eq!(hash.as_ref(), expected.as_ref(), "SHA-256 of the download");
        // Servers shared within the process keep their data until exit; free the space now.
        storage.delete("large").expect("delete the large object");
    }

    pub fn ranged_reads(f: &Fixture) {
        let data = generated_bytes(7, 10_000);
        put_bytes(&*f.storage, "ranged", &data, &Metadata::new());
        let cases: [(&str, u64, u64, &[u8]); 8] = [
            ("start", 0, 100, &data[..100]),
            ("middle", 4000, 4100, &data[4000..4100]),
            ("end", 9900, 10_000, &data[9900..]),
            ("one byte in the middle", 5000, 5001, &data[5000..5001]),
            ("end clamped to the size", 9990, 20_000, &data[9990..]),
            ("starting exactly at the end", 10_000, 10_100, b""),
            ("entirely past the end", 15_000, 16_000, b""),
            ("empty range", 500, 500, b""),
        ];
        for (label, start, end, expected) in cases {
            assert!(
                get_range(&*f.storage, "ranged", start, end) == expected,
                "get_range {label} ({start}..{end}) returned the wrong bytes"
            );
        }
        let offsets: [(u64, &[u8]); 5] = [
            (0, &data),
            (1, &data[1..]),
            (1234, &data[1234..]),
            (10_000, b""),
            (20_000, b""),
        ];
        for (offset, expected) in offsets {
            assert!(
                get_from(&*f.storage, "ranged", offset) == expected,
                "get_from at {offset} returned the wrong bytes"
            );
        }
    }

    pub fn listing_with_metadata(f: &Fixture) {
        // What Python myhoard stores: a JSON document, with non-ASCII escaped (json.dumps).
        let backup_1 = metadata(&[(
            "json",
            r#"{"binlog_index": 3, "compressed-size": 1024, "gtid": "0-1-5", "name": "caf\u00e9 \"x\"", "nested": {"a": [1, 2.5, null, true]}}"#,
        )]);
        let backup_2 = metadata(&[("json", r#"{"binlog_index": 4, "gtid": "0-1-9,1-2-3"}"#)]);
        let binlog = metadata(&[("json", r#"{"remote_index": 1, "gtid_ranges": []}"#)]);
        let none = Metadata::new();
        let objects: [(&str, &[u8], &Metadata); 7] = [
            ("site/basebackup/2024-01-01_0", b"backup one", &backup_1),
            ("site/basebackup/2024-01-02_0", b"backup two!", &backup_2),
            ("site/basebackup_info", b"info", &none),
            ("site/binlogs/0/000001", b"binlog 1", &binlog),
            ("site/binlogs/0/000002", b"binlog 2", &none),
            ("site/binlogs/1/000001", b"binlog 1 of stream 1", &none),
            ("sitex/other", b"another site", &none),
        ];
        for (key, bytes, meta) in objects {
            put_bytes(&*f.storage, key, bytes, meta);
        }
        let expected_info = |key: &str| -> ObjectInfo {
            let (key, bytes, meta) = objects
                .iter()
                .find(|(k, _, _)| *k == key)
                .expect("a key of this case");
            ObjectInfo {
                key: key.to_string(),
                size: bytes.len() as u64,
                metadata: Some((*meta).clone()),
            }
        };

        // Shallow: objects directly below, and the "directories" below that.
        let shallow = list(&*f.storage, "site/", false, false);
        assert_eq!(
            keys(&shallow),
            ["site/basebackup_info"],
            "shallow listing of site/"
        );
        assert_eq!(
            shallow.prefixes,
            ["site/basebackup/", "site/binlogs/"],
            "sub-prefixes of site/"
        );
        assert_eq!(shallow.objects[0].size, 4, "size in a listing");

        // Deep: everything below, no sub-prefixes.
        let deep = list(&*f.storage, "site/", true, false);
        let all_site: Vec<&str> = objects
            .iter()
            .map(|o| o.0)
            .filter(|k| k.starts_with("site/"))
            .collect();
        assert_eq!(keys(&deep), all_site, "deep listing of site/");
        assert!(
            deep.prefixes.is_empty(),
            "a deep listing has no sub-prefixes: {:?}",
            deep.prefixes
        );
        for object in &deep.objects {
            assert_eq!(
                object.size,
                expected_info(&object.key).size,
                "size of {} in a listing",
                object.key
            );
        }

        // Metadata round trips exactly, including objects that have none.
        let with_metadata = list(&*f.storage, "site/", true, true);
        let expected: Vec<ObjectInfo> = all_site.iter().map(|k| expected_info(k)).collect();
        assert_eq!(
            with_metadata.objects, expected,
            "deep listing with metadata"
        );
        let binlogs = list(&*f.storage, "site/binlogs/0/", false, true);
        assert_eq!(
            binlogs.objects,
            [
                expected_info("site/binlogs/0/000001"),
                expected_info("site/binlogs/0/000002")
            ],
            "shallow listing with metadata"
        );

        // Prefixes that end inside a name.
        let partial = list(&*f.storage, "site/base", false, false);
        assert_eq!(
            keys(&partial),
            ["site/basebackup_info"],
            "shallow listing of site/base"
        );
        assert_eq!(
            partial.prefixes,
            ["site/basebackup/"],
            "sub-prefixes of site/base"
        );
        let partial = list(&*f.storage, "site/basebackup/2024-01-0", true, false);
        assert_eq!(
            keys(&partial),
            [
                "site/basebackup/2024-01-01_0",
                "site/basebackup/2024-01-02_0"
            ],
            "deep listing of site/basebackup/2024-01-0"
        );
        let partial = list(&*f.storage, "sit", false, false);
        assert!(
            keys(&partial).is_empty(),
            "objects directly under sit: {partial:?}"
        );
        assert_eq!(partial.prefixes, ["site/", "sitex/"], "sub-prefixes of sit");
        let partial = list(&*f.storage, "site/binlogs/1", true, false);
        assert_eq!(
            keys(&partial),
            ["site/binlogs/1/000001"],
            "deep listing of site/binlogs/1"
        );

        // The whole bucket, and a prefix with nothing under it.
        let everything = list(&*f.storage, "", true, false);
        let all: Vec<&str> = objects.iter().map(|o| o.0).collect();
        assert_eq!(keys(&everything), all, "deep listing of everything");
        assert_eq!(
            list(&*f.storage, "nothing/", true, true),
            Listing::default(),
            "listing an empty prefix"
        );
    }

    pub fn head(f: &Fixture) {
        let meta = metadata(&[("json", r#"{"compressed": true, "encryption-key-id": "k1"}"#)]);
        put_bytes(&*f.storage, "dir/object", b"head me", &meta);
        let info = f.storage.head("dir/object").expect("head dir/object");
        assert_eq!(
            info,
            ObjectInfo {
                key: "dir/object".into(),
                size: 7,
                metadata: Some(meta)
            }
        );
        // Neither a "directory" nor part of a name is an object. (`dir/` is left out: SeaweedFS
        // answers HEAD on it with an empty "directory" object, and on S3 an object of that name
        // could legitimately exist.)
        for key in ["dir", "dir/obj", "dir/object/x"] {
            expect_error(
                &format!("head {key:?}"),
                f.storage.head(key),
                ErrorKind::NotFound,
            );
        }
    }

    pub fn delete_then_not_found(f: &Fixture) {
        put_bytes(&*f.storage, "doomed", b"soon gone", &Metadata::new());
        put_bytes(&*f.storage, "doomed-sibling", b"stays", &Metadata::new());
        f.storage
            .delete("doomed")
            .expect("delete an existing object");
        for key in ["doomed", "never/was"] {
            let mut sink = Vec::new();
            expect_error(
                &format!("get {key:?}"),
                f.storage.get(key, &mut sink),
                ErrorKind::NotFound,
            );
            expect_error(
                &format!("get_from {key:?}"),
                f.storage.get_from(key, 3, &mut sink),
                ErrorKind::NotFound,
            );
            expect_error(
                &format!("get_range {key:?}"),
                f.storage.get_range(key, 0, 5, &mut sink),
                ErrorKind::NotFound,
            );
            assert!(
                sink.is_empty(),
                "a failed get of {key:?} wrote {} bytes",
                sink.len()
            );
            expect_error(
                &format!("head {key:?}"),
                f.storage.head(key),
                ErrorKind::NotFound,
            );
            expect_error(
                &format!("delete {key:?}"),
                f.storage.delete(key),
                ErrorKind::NotFound,
            );
        }
        assert_eq!(
            keys(&list(&*f.storage, "", true, false)),
            ["doomed-sibling"],
            "listing after delete"
        );
        assert_eq!(get_bytes(&*f.storage, "doomed-sibling"), b"stays");
    }

    pub fn overwrite_replaces(f: &Fixture) {
        let old = generated_bytes(3, 3000);
        put_bytes(
            &*f.storage,
            "obj",
            &old,
            &metadata(&[("json", "{\"v\": 1}"), ("extra", "old")]),
        );
        let new_meta = metadata(&[("json", "{\"v\": 2}")]);
        put_bytes(&*f.storage, "obj", b"new bytes!", &new_meta);
        assert_eq!(get_bytes(&*f.storage, "obj"), b"new bytes!");
        let info = f.storage.head("obj").expect("head after overwrite");
        // Nothing of the old object's size or metadata may survive.
        assert_eq!((info.size, info.metadata), (10, Some(new_meta)));
        assert_eq!(keys(&list(&*f.storage, "", true, false)), ["obj"]);
    }

    /// Refused credentials come back as `PermissionDenied` and are not retried.
    ///
    /// The storage under test has a retry policy whose first backoff is an hour: if any
    /// operation treated the refusal as transient, the test would hang and nextest's
    /// slow-timeout would fail it. That bounds "promptly" without a timing assertion that could
    /// flake on a loaded machine. (Uploads retry inside the backends with their own policy, which
    /// is never tighter than seconds, so a retried put would show up the same way.)
    pub fn wrong_credentials_refused_without_retry(f: &Fixture) {
        let meta = metadata(&[("json", "{}")]);
        put_bytes(&*f.storage, "guarded", b"secret", &meta);
        for (label, config) in f.backend.wrong_credentials(&f.config) {
            let intruder = open(
                &config,
                RetryPolicy {
                    attempts: 3,
                    initial_delay: Duration::from_secs(3600),
                    max_delay: Duration::from_secs(3600),
                },
            );
            let mut sink = Vec::new();
            let denied = ErrorKind::PermissionDenied;
            expect_error(
                &format!("{label}: put"),
                intruder.put("intruder", &mut &b"data"[..], &meta),
                denied,
            );
            expect_error(
                &format!("{label}: get"),
                intruder.get("guarded", &mut sink),
                denied,
            );
            expect_error(
                &format!("{label}: get_range"),
                intruder.get_range("guarded", 0, 3, &mut sink),
                denied,
            );
            expect_error(&format!("{label}: head"), intruder.head("guarded"), denied);
            expect_error(
                &format!("{label}: list"),
                intruder.list(
                    "",
                    ListOptions {
                        deep: true,
                        with_metadata: false,
                    },
                ),
                denied,
            );
            expect_error(
                &format!("{label}: delete"),
                intruder.delete("guarded"),
                denied,
            );
            assert!(sink.is_empty(), "{label}: a refused get wrote data");
        }
        // Nothing the refused requests asked for happened.
        assert_eq!(get_bytes(&*f.storage, "guarded"), b"secret");
        expect_error(
            "head intruder",
            f.storage.head("intruder"),
            ErrorKind::NotFound,
        );
    }

    /// The server is killed (SIGKILL, like a crash) in the middle of a streamed multipart upload
    /// and restarted a couple of seconds later on the same ports and data. The put may succeed
    /// (its part retries outlasted the outage) or fail with an error; either way no short object
    /// may ever be readable under the key.
    pub fn server_outage_during_upload(backend: Backend) {
        const SIZE: u64 = 100 * MIB;
        // The server dies once the upload has read this much of its body...
        const KILL_AT: u64 = 20 * MIB;
        // ...and the body stalls here until it is dead, so the kill always lands before the
        // upload can finish, however fast the machine.
        const HOLD_AT: u64 = 40 * MIB;

        let Some(mut server) = backend.start_own_server() else {
            return;
        };
        let bucket = harness::unique_bucket_name("outage");
        server.create_bucket(&bucket);
        server.wait_until_durable(&bucket);
        let mut config = server.config(&bucket);
        let (part_key, part_size) = backend.part_size();
        config[part_key.expect("remote backends have a part size")] = json!(part_size);
        // Enough tries and backoff (0.2 + 0.4 + 0.8 + 1.6 + 2 + 2 + 2 s) to cover a two-second
        // outage plus the restart.
        let storage = open(
            &config,
            RetryPolicy {
                attempts: 8,
                initial_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(2),
            },
        );

        let (reached_tx, reached_rx) = mpsc::channel::<()>();
        let (killed_tx, killed_rx) = mpsc::channel::<()>();
        let mut body = Generated::new(99, SIZE);
        let mut reached = Some(reached_tx);
        let mut held = false;
        body.on_read = Some(Box::new(move |produced| {
            if produced >= KILL_AT
                && let Some(reached) = reached.take()
            {
                // The test thread may be gone (it panicked); the upload just goes on.
                let _ = reached.send(());
            }
            if produced >= HOLD_AT && !held {
                held = true;
                // A dropped sender means the test thread panicked: fail the upload so the
                // thread ends instead of waiting forever.
                killed_rx
                    .recv()
                    .map_err(|_| io::Error::other("the test gave up during the outage"))?;
            }
            Ok(())
        }));
        let uploader = Arc::clone(&storage);
        let upload = thread::Builder::new()
            .name("outage-upload".into())
            .spawn(move || {
                let result = uploader.put("outage/object", &mut body, &Metadata::new());
                (result, body.finish())
            })
            .expect("starting the upload thread");

        reached_rx
            .recv_timeout(Duration::from_secs(300))
            .expect("the upload read 20 MiB of its body");
        server.kill();
        killed_tx.send(()).expect("the upload waits for the kill");
        thread::sleep(Duration::from_secs(2));
        server.restart();
        let (result, (produced, expected)) = upload.join().expect("the upload thread panicked");

        match result {
            Ok(stored) => {
                assert_eq!(
                    (stored, produced),
                    (SIZE, SIZE),
                    "put succeeded but with the wrong size"
                );
                let info = storage
                    .head("outage/object")
                    .expect("head after a successful put");
                assert_eq!(info.size, SIZE, "stored object size");
                let mut download = HashingWriter::new();
                storage
                    .get("outage/object", &mut download)
                    .expect("get after the outage");
                let (len, hash) = download.finish();
                assert_eq!(len, SIZE, "downloaded size");
                assert_eq!(hash.as_ref(), expected.as_ref(), "SHA-256 of the download");
                eprintln!(
                    "outcome: the upload survived the outage ({stored} bytes, content verified)"
                );
            }
            Err(err) => {
                eprintln!("outcome: the upload failed after the outage: {err}");
                assert_ne!(
                    err.kind(),
                    ErrorKind::Source,
                    "the body never failed: {err}"
                );
                expect_error(
                    "head after a failed put",
                    storage.head("outage/object"),
                    ErrorKind::NotFound,
                );
                let mut sink = Vec::new();
                expect_error(
                    "get after a failed put",
                    storage.get("outage/object", &mut sink),
                    ErrorKind::NotFound,
                );
                let listing = list(&*storage, "outage/", true, false);
                assert!(
                    listing.objects.is_empty(),
                    "a failed put left {:?}",
                    listing.objects
                );
            }
        }
    }
}

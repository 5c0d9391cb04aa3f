//! Full snapshots (`myhoard::basebackup`) against real servers, with the local storage backend
//! and encryption on: MariaDB 10.11 with mariabackup, MySQL 9.7 with the clone plugin.
//!
//! The main test per flavour takes a snapshot while a load keeps writing, restores it into a
//! fresh data directory, starts a second server on it and compares every table with the
//! source *at the snapshot's GTID position*. That reference state comes from a third server: a
//! replica of the source told to stop exactly at that position (MySQL `START REPLICA UNTIL
//! SOURCE_LOG_FILE/SOURCE_LOG_POS` at the snapshot's binlog position, MariaDB `START SLAVE
//! UNTIL master_gtid_pos`), so the writes never have to stop while the snapshot runs. Other
//! tests: a tampered split fails the restore with an integrity error and leaves the data
//! directory untouched; a non-empty data directory is refused; a cancelled snapshot kills the
//! tool and leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use myhoard::basebackup::{
    self, ArchiveFormat, Error, RestoreProgress, RestoreSnapshotJob, SnapshotJob, SnapshotProgress,
    SnapshotResult, SnapshotStage, split_key,
};
use myhoard::config::Config;
use myhoard::db::SnapshotTool;
use myhoard::gtid::GtidSet;
use myhoard::pipeline::{CompressionSettings, Encoding};
use myhoard::storage::{self, Metadata, ObjectStorage, RetryPolicy};

use crate::harness::db::{DbOptions, DbServer, Flavor, PASSWORD, USER};
use crate::harness::load::{Load, LoadOptions, Until};
use crate::harness::myhoard::{KeyPair, local_site, shared_key_pair};

macro_rules! flavour_tests {
    ($module:ident, $flavor:expr) => {
        mod $module {
            #[test]
            fn snapshot_during_writes_restores_identical_data() {
                super::snapshot_during_writes_restores_identical_data($flavor);
            }
        }
    };
}

flavour_tests!(mariadb, crate::harness::db::Flavor::MariaDb);
flavour_tests!(mysql, crate::harness::db::Flavor::MySql);

/// The backup site's name in the test configs.
const SITE: &str = "test";
/// Where the splits of the test snapshots go.
const KEY_PREFIX: &str = "test/2026-01-01T00:00:00Z";

/// Everything a test needs besides its servers: object storage in a temporary directory, the
/// shared key pair, and scratch directories.
struct Bench {
    dir: tempfile::TempDir,
    keys: KeyPair,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            dir: tempfile::Builder::new()
                .prefix("myhoard-basebackup-test-")
                .tempdir()
                .expect("tempdir"),
            keys: shared_key_pair(),
        }
    }

    fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// A complete myhoard config for `server` (its `mysql` section, its start command and
    /// server_id), the test site, and `temporary_directory` = `<bench>/<tmp_name>`. `edit`
    /// may change the JSON before it is parsed.
    fn config(
        &self,
        server: &DbServer,
        tmp_name: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Config {
        let mut config = crate::harness::daemon::example_config();
        config["mysql"] = server.myhoard_mysql_config();
        config["backup_sites"] =
            serde_json::json!({ SITE: local_site(&self.storage_dir(), &self.keys, "zstd") });
        config["backup_settings"]["upload_site"] = SITE.into();
        config["temporary_directory"] = self.dir.path().join(tmp_name).display().to_string().into();
        config["state_directory"] = self.dir.path().join("state").display().to_string().into();
        config["start_command"] = serde_json::json!(server.mysqld_command());
        config["systemd_service"] = serde_json::Value::Null;
        config["server_id"] = server.server_id().into();
        edit(&mut config);
        match Config::from_value(config) {
            Ok(config) => config,
            Err(errors) => panic!("test config is invalid:\n{errors}"),
        }
    }

    fn storage(&self, config: &Config) -> std::sync::Arc<dyn ObjectStorage> {
        storage::open(
            &config.backup_sites[SITE].object_storage,
            RetryPolicy::default(),
        )
        .expect("opening local storage")
    }
}

/// The metadata MyHoard puts on every split.
fn split_metadata() -> Metadata {
    let mut metadata = Metadata::new();
    metadata.insert(
        "json".into(),
        r#"{"backup_started_at": 1767225600.0, "uploaded_from": 1}"#.into(),
    );
    metadata
}

/// Takes a snapshot of the server `config` describes into `storage` (the bench's, or a
/// wrapper over it), collecting progress reports. `on_progress` may set the cancel flag.
fn snapshot(
    storage: &dyn ObjectStorage,
    config: &Config,
    flavor: myhoard::db::Flavor,
    split_size: Option<u64>,
    cancel: &AtomicBool,
    on_progress: &(dyn Fn(&SnapshotProgress) + Sync),
) -> (Result<SnapshotResult, Error>, Vec<SnapshotProgress>) {
    let site = &config.backup_sites[SITE];
    let reports = Mutex::new(Vec::new());
    let progress = |progress: &SnapshotProgress| {
        reports.lock().expect("lock").push(progress.clone());
        on_progress(progress);
    };
    let metadata = split_metadata();
    let job = SnapshotJob {
        flavor,
        config,
        storage,
        key_prefix: KEY_PREFIX,
        encoding: Encoding {
            compression: CompressionSettings {
                algorithm: site.compression.algorithm,
                level: 0,
                threads: 0,
            },
            key: Some(&site.encryption_keys.public),
        },
        split_size,
        metadata: &metadata,
        cancel,
        progress: &progress,
    };
    let result = basebackup::take_snapshot(&job);
    (result, reports.into_inner().expect("lock"))
}

/// Restores the bench's snapshot with the server settings of `config`.
fn restore(
    bench: &Bench,
    config: &Config,
    snapshot: &SnapshotResult,
    work_dir: &Path,
) -> (
    Result<basebackup::RestoredSnapshot, Error>,
    Vec<RestoreProgress>,
) {
    let storage = bench.storage(config);
    let site = &config.backup_sites[SITE];
    let reports = Mutex::new(Vec::new());
    let progress =
        |progress: &RestoreProgress| reports.lock().expect("lock").push(progress.clone());
    let cancel = AtomicBool::new(false);
    let job = RestoreSnapshotJob {
        tool: snapshot.tool,
        storage: storage.as_ref(),
        key_prefix: KEY_PREFIX,
        number_of_splits: snapshot.number_of_splits,
        algorithm: snapshot.compression_algorithm,
        private_key: Some(&site.encryption_keys.private),
        config,
        work_dir,
        cancel: &cancel,
        progress: &progress,
    };
    let result = basebackup::restore_snapshot(&job);
    (result, reports.into_inner().expect("lock"))
}

/// The server's flavour as the library knows it, from the version it reported.
fn db_flavor(server: &DbServer) -> myhoard::db::Flavor {
    myhoard::db::Flavor::parse(server.version()).expect("server version")
}

/// A GTID position in the server's own syntax as a set.
fn gtid_set(flavor: myhoard::db::Flavor, text: &str) -> GtidSet {
    match myhoard::db::client::parse_server_gtids(flavor, text) {
        Ok(gtids) => gtids.to_gtid_set(),
        Err(err) => panic!("cannot parse GTIDs {text:?}: {err}"),
    }
}

/// Entries left in a directory (none expected in a temporary_directory after a job).
fn leftovers(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts replicating `source` on `reference` (a fresh server from the same template) and
/// stops the applier exactly at the snapshot's position, whose GTIDs are `gtid`; returns once
/// it is there. MySQL stops at the snapshot's binlog position: its `SQL_AFTER_GTIDS` runs one
/// or two transactions past a set whose last transaction is tagged.
fn replicate_until(reference: &DbServer, source: &DbServer, snapshot: &SnapshotResult) {
    let gtid = snapshot.gtid.as_deref().expect("snapshot gtid");
    let statements = match reference.flavor() {
        Flavor::MySql => format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={}, \
             SOURCE_USER='{USER}', SOURCE_PASSWORD='{PASSWORD}', SOURCE_AUTO_POSITION=1, \
             GET_SOURCE_PUBLIC_KEY=1, SOURCE_CONNECT_RETRY=1; \
             START REPLICA UNTIL SOURCE_LOG_FILE='{}', SOURCE_LOG_POS={}",
            source.port(),
            snapshot
                .binlog_name
                .as_deref()
                .expect("snapshot binlog name"),
            snapshot.binlog_position.expect("snapshot binlog position"),
        ),
        Flavor::MariaDb => format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{USER}', \
             MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; \
             START SLAVE UNTIL master_gtid_pos='{gtid}'",
            source.port()
        ),
    };
    reference.sql(&statements);
    let wait = match reference.flavor() {
        Flavor::MySql => format!("SELECT WAIT_FOR_EXECUTED_GTID_SET('{gtid}', 1)"),
        Flavor::MariaDb => format!("SELECT MASTER_GTID_WAIT('{gtid}', 1)"),
    };
    let sql_running = match reference.flavor() {
        Flavor::MySql => "Replica_SQL_Running",
        Flavor::MariaDb => "Slave_SQL_Running",
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status = reference.replica_status();
        // Done when the applier has the position *and* has stopped at it, so that nothing
        // applied in parallel can still land after the checksums are taken.
        if reference.query_value::<i64>(&wait) == 0
            && status
                .get(sql_running)
                .is_some_and(|running| running == "No")
        {
            return;
        }
        let errno = status.get("Last_SQL_Errno").cloned().unwrap_or_default();
        assert!(
            errno.is_empty() || errno == "0",
            "the reference replica failed: {status:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the reference replica did not reach {gtid}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn snapshot_during_writes_restores_identical_data(flavor: Flavor) {
    let Some(source) = DbServer::start(flavor, source_options(flavor)) else {
        return;
    };
    let lib_flavor = db_flavor(&source);
    let bench = Bench::new();
    let config = bench.config(&source, "tmp-source", |_| {});

    // Some data first, so the snapshot has tens of MiB to stream.
    let seed = Load::run(&source, Until::Duration(Duration::from_secs(2)), 11).join();
    assert!(seed.errors.is_empty(), "seeding load failed: {seed:?}");

    // The writes go on for the whole snapshot.
    let gtids_before = source.gtid_executed();
    // One writer and no multi-MiB rows meanwhile: on two busy cores more would write redo
    // faster than mariabackup copies it.
    let mut options = LoadOptions::new(Until::Stopped, 12);
    options.large_transactions = false;
    options.threads = 1;
    let load = Load::run_with(&source, options);
    let cancel = AtomicBool::new(false);
    let split_size = 4 << 20;
    let (result, reports) = snapshot(
        bench.storage(&config).as_ref(),
        &config,
        lib_flavor,
        Some(split_size),
        &cancel,
        &|_| {},
    );
    let stats = load.stop();
    let result = result.expect("snapshot");
    assert!(stats.errors.is_empty(), "load failed: {stats:?}");
    eprintln!(
        "{} snapshot: {result:?}\nload during it: {stats:?}",
        flavor.name()
    );
    let gtids_after = source.gtid_executed();
    assert_ne!(
        gtids_before, gtids_after,
        "nothing was written during the snapshot"
    );

    // What the snapshot says about itself.
    let expected_tool = match flavor {
        Flavor::MariaDb => SnapshotTool::MariaBackup,
        Flavor::MySql => SnapshotTool::ClonePlugin,
    };
    assert_eq!(result.tool, expected_tool);
    assert_eq!(result.format, ArchiveFormat::of(expected_tool));
    assert!(
        result
            .tool_version
            .as_deref()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(result.original_size > 3 * split_size / 2, "{result:?}");
    assert!(result.compressed_size > 0);
    assert!(result.number_of_files > 10, "{result:?}");
    assert!(result.start_ts <= result.end_ts);
    assert!(result.start_size.is_some_and(|size| size > 0));
    assert_eq!(
        u64::from(result.number_of_splits),
        result.original_size.div_ceil(split_size),
        "splits of at most {split_size} bytes, none empty"
    );
    assert!(result.number_of_splits >= 3, "{result:?}");
    if flavor == Flavor::MariaDb {
        assert!(result.lsn_info.is_some(), "{result:?}");
        assert!(
            result
                .checkpoints_file_content
                .as_deref()
                .is_some_and(|text| text.contains("last_lsn")),
            "{result:?}"
        );
    }

    // Every split is stored, encrypted, with the metadata; nothing past the last.
    let storage = bench.storage(&config);
    for index in 1..=result.number_of_splits {
        let key = split_key(KEY_PREFIX, index);
        let info = storage.head(&key).expect("split exists");
        assert_eq!(info.metadata, Some(split_metadata()), "{key}");
        let bytes = fs::read(bench.storage_dir().join(&key)).expect("reading the split file");
        assert!(bytes.starts_with(b"pghoa1"), "{key} is not rohmu-encrypted");
    }
    assert!(
        storage
            .head(&split_key(KEY_PREFIX, result.number_of_splits + 1))
            .is_err()
    );

    // Progress was reported while it ran, and the last report matches the result.
    let last = reports.last().expect("progress reports");
    assert_eq!(last.original_bytes, result.original_size);
    assert_eq!(last.splits_done, result.number_of_splits);
    assert!(last.stored_bytes >= result.compressed_size);
    assert!(reports.len() >= 2, "{reports:?}");

    // The consistent point is sane: a binlog of the source, past its header, and GTIDs the
    // source has executed.
    let binlog_name = result.binlog_name.clone().expect("binlog name");
    let source_binlogs: Vec<String> = source
        .binlog_files()
        .iter()
        .map(|path| {
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        source_binlogs.contains(&binlog_name),
        "{binlog_name} not in {source_binlogs:?}"
    );
    assert_eq!(
        result.binlog_index,
        binlog_name
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse().ok())
    );
    assert!(
        result.binlog_position.is_some_and(|pos| pos > 4),
        "{result:?}"
    );
    let snapshot_gtid = result.gtid.clone().expect("snapshot gtid");
    let snapshot_set = gtid_set(lib_flavor, &snapshot_gtid);
    assert!(!snapshot_set.is_empty());
    assert!(gtid_set(lib_flavor, &gtids_after).contains(&snapshot_set));
    assert!(snapshot_set.contains(&gtid_set(lib_flavor, &gtids_before)));
    assert!(
        leftovers(&config.temporary_directory).is_empty(),
        "left in temporary_directory: {:?}",
        leftovers(&config.temporary_directory)
    );

    // The source's data at the snapshot position, from a replica stopped right there.
    // One applier thread: MySQL's parallel appliers may commit transactions past an UNTIL
    // position before they stop.
    let reference_options = DbOptions {
        extra_cnf: match flavor {
            Flavor::MySql => vec!["replica-parallel-workers=1".into()],
            Flavor::MariaDb => vec!["slave-parallel-threads=0".into()],
        },
        ..DbOptions::server_id(3)
    };
    let reference = DbServer::start(flavor, reference_options).expect("reference server");
    replicate_until(&reference, &source, &result);
    assert_eq!(
        gtid_set(lib_flavor, &reference.gtid_executed()),
        snapshot_set
    );
    let expected = reference.checksum_all_tables();
    assert!(
        expected
            .keys()
            .any(|table| table.starts_with("myhoard_load.")),
        "{expected:?}"
    );
    drop(reference);

    // Restore into a fresh data directory and start a server on it.
    let mut target = DbServer::create(flavor, DbOptions::server_id(2)).expect("target server");
    fs::remove_dir_all(target.data_dir()).expect("emptying the target's data directory");
    let target_config = bench.config(&target, "tmp-target", |_| {});
    let work_dir = target_config.temporary_directory.join("restore");
    let (restored, restore_reports) = restore(&bench, &target_config, &result, &work_dir);
    let restored = restored.expect("restore");
    assert_eq!(
        restored.position,
        result.position(),
        "restored files disagree"
    );
    assert_eq!(restored.number_of_splits, result.number_of_splits);
    assert!(restored.downloaded_bytes >= result.compressed_size);
    assert_eq!(restored.extracted_bytes, result.original_size);
    assert!(!work_dir.exists());
    assert!(leftovers(&target_config.temporary_directory).is_empty());
    assert!(!target.data_dir().join("auto.cnf").exists());
    let stages: Vec<_> = restore_reports.iter().map(|report| report.stage).collect();
    assert!(
        stages.contains(&basebackup::RestoreStage::MovingIntoPlace),
        "{stages:?}"
    );

    target.start_again();
    assert_eq!(
        target.checksum_all_tables(),
        expected,
        "restored (gtids {}) against the source at {snapshot_gtid}",
        target.gtid_executed()
    );
    if flavor == Flavor::MySql {
        // A clone persists its GTID set, and the restored server has its own identity.
        assert_eq!(gtid_set(lib_flavor, &target.gtid_executed()), snapshot_set);
        let source_uuid: String = source.query_value("SELECT @@server_uuid");
        let target_uuid: String = target.query_value("SELECT @@server_uuid");
        assert_ne!(source_uuid, target_uuid);
    }
}

/// A source server: as the harness makes them, with a redo log large enough for a backup
/// under load (mariabackup fails when the redo log wraps around before it is copied).
fn source_options(flavor: Flavor) -> DbOptions {
    let redo = match flavor {
        Flavor::MariaDb => "innodb-log-file-size=256M",
        Flavor::MySql => "innodb-redo-log-capacity=256M",
    };
    DbOptions {
        extra_cnf: vec![redo.into()],
        ..DbOptions::server_id(1)
    }
}

/// A small MariaDB source with data and a snapshot of it in at least three splits.
fn mariadb_snapshot(bench: &Bench) -> Option<(DbServer, Config, SnapshotResult)> {
    let source = DbServer::start(Flavor::MariaDb, source_options(Flavor::MariaDb))?;
    let config = bench.config(&source, "tmp-source", |_| {});
    let mut options = LoadOptions::new(Until::Duration(Duration::from_secs(3)), 21);
    options.ddl = false;
    let seed = Load::run_with(&source, options).join();
    assert!(seed.errors.is_empty(), "{seed:?}");
    let cancel = AtomicBool::new(false);
    let (result, _) = snapshot(
        bench.storage(&config).as_ref(),
        &config,
        db_flavor(&source),
        Some(2 << 20),
        &cancel,
        &|_| {},
    );
    let result = result.expect("snapshot");
    assert!(result.number_of_splits >= 3, "{result:?}");
    Some((source, config, result))
}

#[test]
fn tampered_split_fails_restore_and_leaves_data_dir_untouched() {
    let bench = Bench::new();
    let Some((source, _, result)) = mariadb_snapshot(&bench) else {
        return;
    };
    let data_dir = bench.dir.path().join("restored-data");
    let restore_config = bench.config(&source, "tmp-restore", |config| {
        config["mysql"]["data_directory"] = data_dir.display().to_string().into();
    });
    let work_dir = restore_config.temporary_directory.join("restore");

    // Flip one byte in the middle of split 2.
    let tampered_key = split_key(KEY_PREFIX, 2);
    let path = bench.storage_dir().join(&tampered_key);
    let mut bytes = fs::read(&path).expect("reading split 2");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&path, &bytes).expect("writing split 2");

    let (restored, reports) = restore(&bench, &restore_config, &result, &work_dir);
    match restored {
        Err(Error::Integrity { key, .. }) => assert_eq!(key, tampered_key),
        other => panic!("expected an integrity error on {tampered_key}, got {other:?}"),
    }
    // Split 1 went into the extractor before split 2 failed; nothing of it was kept.
    assert!(
        reports.iter().any(|report| report.splits_done >= 1),
        "{reports:?}"
    );
    assert!(!data_dir.exists(), "the data directory was created");
    assert!(!work_dir.exists(), "the scratch directory was kept");
    assert!(leftovers(&restore_config.temporary_directory).is_empty());

    // An existing data directory with something in it is refused before anything is fetched.
    fs::create_dir_all(&data_dir).expect("mkdir");
    fs::write(data_dir.join("keep-me"), b"operator's file").expect("write");
    let (restored, reports) = restore(&bench, &restore_config, &result, &work_dir);
    assert!(
        matches!(restored, Err(Error::DataDirectoryNotEmpty { .. })),
        "{restored:?}"
    );
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(leftovers(&data_dir), ["keep-me"]);
    assert!(!work_dir.exists());
}

#[test]
fn cancelled_snapshot_kills_the_tool_and_cleans_up() {
    let bench = Bench::new();
    let Some(source) = DbServer::start(Flavor::MariaDb, source_options(Flavor::MariaDb)) else {
        return;
    };
    let config = bench.config(&source, "tmp-source", |_| {});
    let seed = Load::run(&source, Until::Duration(Duration::from_secs(3)), 31).join();
    assert!(seed.errors.is_empty(), "{seed:?}");
    let cancel = AtomicBool::new(false);
    // mariabackup can finish a small data directory before the watchdog's first tick (the
    // second report, a second in): uploads wait for the cancel, so it always lands while the
    // stream is in flight and mariabackup waits on its full pipe.
    let storage = bench.storage(&config);
    let reports_seen = AtomicU32::new(0);
    let held = HeldUntilCancelled {
        inner: storage.as_ref(),
        cancel: &cancel,
    };
    let started = Instant::now();
    let (result, reports) = snapshot(&held, &config, db_flavor(&source), None, &cancel, &|_| {
        if reports_seen.fetch_add(1, Ordering::SeqCst) == 1 {
            cancel.store(true, Ordering::SeqCst);
        }
    });
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(reports.len() >= 2, "{reports:?}");
    assert!(
        leftovers(&config.temporary_directory).is_empty(),
        "{:?}",
        leftovers(&config.temporary_directory)
    );
    // The single split was cut off mid-stream, so no object is visible under its key.
    assert!(storage.head(&split_key(KEY_PREFIX, 1)).is_err());
    assert!(
        storage
            .list(
                "",
                storage::ListOptions {
                    deep: true,
                    with_metadata: false
                }
            )
            .expect("list")
            .objects
            .is_empty()
    );
}

/// Object storage whose uploads start only once `cancel` is set (at most a minute later).
struct HeldUntilCancelled<'a> {
    inner: &'a dyn ObjectStorage,
    cancel: &'a AtomicBool,
}

impl ObjectStorage for HeldUntilCancelled<'_> {
    fn put(
        &self,
        key: &str,
        body: &mut dyn std::io::Read,
        metadata: &Metadata,
    ) -> storage::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.cancel.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.inner.put(key, body, metadata)
    }

    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> storage::Result<u64> {
        self.inner.get_range(key, start, end, out)
    }

    fn head(&self, key: &str) -> storage::Result<storage::ObjectInfo> {
        self.inner.head(key)
    }

    fn list(
        &self,
        prefix: &str,
        options: storage::ListOptions,
    ) -> storage::Result<storage::Listing> {
        self.inner.list(prefix, options)
    }

    fn delete(&self, key: &str) -> storage::Result<()> {
        self.inner.delete(key)
    }
}

#[test]
fn cancelled_clone_snapshot_stops_the_temporary_server_and_cleans_up() {
    let bench = Bench::new();
    let Some(source) = DbServer::start(Flavor::MySql, source_options(Flavor::MySql)) else {
        return;
    };
    let config = bench.config(&source, "tmp-source", |_| {});
    source.sql("CREATE DATABASE db1; CREATE TABLE db1.t (id INT PRIMARY KEY, v TEXT)");
    source.sql("INSERT INTO db1.t VALUES (1, REPEAT('x', 1000)), (2, 'y')");
    let cancel = AtomicBool::new(false);
    // Cancelled at the first progress tick while the temporary server on the clone runs (the
    // first report of that stage comes before it is started; it then takes seconds to start
    // and stop).
    let position_reports = AtomicU32::new(0);
    let (result, reports) = snapshot(
        bench.storage(&config).as_ref(),
        &config,
        db_flavor(&source),
        None,
        &cancel,
        &|progress| {
            if progress.stage == SnapshotStage::ReadingClonePosition
                && position_reports.fetch_add(1, Ordering::SeqCst) == 1
            {
                cancel.store(true, Ordering::SeqCst);
            }
        },
    );
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(position_reports.load(Ordering::SeqCst), 2, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|report| report.stage != SnapshotStage::Streaming),
        "{reports:?}"
    );
    assert!(
        leftovers(&config.temporary_directory).is_empty(),
        "{:?}",
        leftovers(&config.temporary_directory)
    );
    assert!(
        bench
            .storage(&config)
            .head(&split_key(KEY_PREFIX, 1))
            .is_err(),
        "nothing was to be stored"
    );
    // The source is untouched and still serves.
    let rows: u64 = source.query_value("SELECT COUNT(*) FROM db1.t");
    assert_eq!(rows, 2);
}

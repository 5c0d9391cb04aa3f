//! A load generator for [`DbServer`]s: worker threads that commit a realistic mix of
//! transactions until told to stop, so binlogs, backups and replicas have real work in them.
//!
//! Every worker owns its own tables in the database [`LOAD_DATABASE`] (`kv_<n>`, `docs_<n>`,
//! `nopk_<n>`, and `ddl_<n>_<i>` that come and go), so workers never wait for each other's locks.
//! Its mix, drawn from a seeded random generator:
//!
//! - small transactions: 1-5 row inserts, updates and deletes by primary-key range;
//! - JSON: documents inserted and changed with `JSON_SET`;
//! - a table without a primary key (row events identify rows by all columns), with inserts,
//!   updates and deletes;
//! - mixed transactions touching three tables; a few that roll back (and so leave no GTID);
//! - large ones: a few hundred to a few thousand rows in one transaction, and single rows with a
//!   64 KiB to 3 MiB blob (random bytes, incompressible);
//! - DDL now and then: `CREATE TABLE`, `ALTER TABLE ... ADD COLUMN`, `ADD INDEX`, `DROP TABLE`;
//! - on MySQL, one transaction in ten with a tagged GTID (`SET gtid_next='AUTOMATIC:<tag>'`,
//!   tag [`GTID_TAG`]; needs the `TRANSACTION_GTID_TAG` privilege, which the harness's user has).
//!
//! Each committed transaction (an autocommitted statement or DDL counts as one) gets exactly one
//! GTID, so [`LoadStats::transactions`] is also the number of GTIDs the workers added; a
//! statement that happened to change no row is not binlogged and not counted. Before the workers
//! start, the database and the tables that do not exist yet are created, one GTID each (7 on a
//! fresh server with 2 workers, none on a second load). Interleaving
//! across threads depends on timing, so the same seed gives the same per-thread sequence of
//! operations, not byte-identical binlogs.
//!
//! ```ignore
//! let load = Load::run(&server, Until::Duration(Duration::from_secs(3)), 42);
//! let stats = load.join();
//! assert!(stats.errors.is_empty(), "{stats:?}");
//! ```

// An API for every integration test that needs a server; not all of it is used by each build.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

use super::db::{DbServer, Flavor};

/// The database the load writes to.
pub const LOAD_DATABASE: &str = "myhoard_load";
/// The tag of the load's tagged GTIDs on MySQL (`<uuid>:myhoard_load:<n>`).
pub const GTID_TAG: &str = "myhoard_load";

/// When the load stops by itself (it also stops on [`Load::stop`]).
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this much time.
    Duration(Duration),
    /// After this many transactions in all (over all threads), counting those rolled back and
    /// statements that changed nothing, so [`LoadStats::transactions`] can end up a little lower.
    Transactions(u64),
    /// Only when [`Load::stop`] is called (or the server goes away).
    Stopped,
}

/// Options for [`Load::run_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub until: Until,
    /// Seeds every worker's random generator (worker `n` uses `seed + n`).
    pub seed: u64,
    /// Worker threads, each on its own connection and tables. Default 2.
    pub threads: usize,
    /// Large transactions (thousands of rows, multi-MiB rows). Default on.
    pub large_transactions: bool,
    /// Occasional DDL. Default on.
    pub ddl: bool,
    /// Tagged GTIDs on MySQL. Default on.
    pub tagged_gtids: bool,
}

impl LoadOptions {
    pub fn new(until: Until, seed: u64) -> LoadOptions {
        LoadOptions {
            until,
            seed,
            threads: 2,
            large_transactions: true,
            ddl: true,
            tagged_gtids: true,
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Committed transactions, DDL included: each added one GTID.
    pub transactions: u64,
    /// Committed transactions with a tagged GTID (MySQL only).
    pub tagged_transactions: u64,
    /// Transactions rolled back on purpose (they add no GTID).
    pub rolled_back: u64,
    /// Committed large transactions (many rows, or a multi-MiB row).
    pub large_transactions: u64,
    /// Committed DDL statements.
    pub ddl_statements: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    /// JSON document and blob bytes sent in committed inserts.
    pub payload_bytes: u64,
    /// Errors that ended a worker (for example the server was killed), one per worker at most.
    pub errors: Vec<String>,
}

impl LoadStats {
    fn add(&mut self, other: LoadStats) {
        self.transactions += other.transactions;
        self.tagged_transactions += other.tagged_transactions;
        self.rolled_back += other.rolled_back;
        self.large_transactions += other.large_transactions;
        self.ddl_statements += other.ddl_statements;
        self.rows_inserted += other.rows_inserted;
        self.rows_updated += other.rows_updated;
        self.rows_deleted += other.rows_deleted;
        self.payload_bytes += other.payload_bytes;
        self.errors.extend(other.errors);
    }
}

/// A running load. Dropping it stops it and waits for the workers.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<LoadStats>>,
}

impl Load {
    /// Starts the default load (2 workers, the whole mix) on `server` over its socket.
    /// Panics when the load's tables cannot be created.
    pub fn run(server: &DbServer, until: Until, seed: u64) -> Load {
        Load::run_with(server, LoadOptions::new(until, seed))
    }

    /// Starts a load with explicit options.
    pub fn run_with(server: &DbServer, options: LoadOptions) -> Load {
        let threads = options.threads.max(1);
        create_missing_tables(server, threads);

        let stop = Arc::new(AtomicBool::new(false));
        let tickets = Arc::new(AtomicU64::new(0));
        let deadline = match options.until {
            Until::Duration(duration) => Some(Instant::now() + duration),
            _ => None,
        };
        let limit = match options.until {
            Until::Transactions(n) => Some(n),
            _ => None,
        };
        let tagged = options.tagged_gtids && server.flavor() == Flavor::MySql;
        let workers = (0..threads)
            .map(|index| {
                let worker = Worker {
                    index,
                    opts: server.socket_opts(),
                    rng: Rng::new(options.seed.wrapping_add(index as u64)),
                    stop: Arc::clone(&stop),
                    tickets: Arc::clone(&tickets),
                    deadline,
                    limit,
                    tagged,
                    large: options.large_transactions,
                    ddl: options.ddl,
                    stats: LoadStats::default(),
                    next_ddl_table: 0,
                    ddl_step: 0,
                    sequence: 0,
                };
                thread::Builder::new()
                    .name(format!("db-load-{index}"))
                    .spawn(move || worker.run())
                    .expect("starting a load thread")
            })
            .collect();
        Load { stop, workers }
    }

    /// Whether every worker has ended (limit reached, or an error).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Tells the workers to stop after their current transaction and waits for them.
    pub fn stop(mut self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.collect()
    }

    /// Waits until the load ends by itself ([`Until`]), then returns what it did. With
    /// [`Until::Stopped`] this waits until the workers fail.
    pub fn join(mut self) -> LoadStats {
        self.collect()
    }

    fn collect(&mut self) -> LoadStats {
        let mut total = LoadStats::default();
        for worker in self.workers.drain(..) {
            match worker.join() {
                Ok(stats) => total.add(stats),
                Err(_) => total.errors.push("a load thread panicked".to_owned()),
            }
        }
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.collect();
    }
}

/// Creates the database and the workers' tables that do not exist yet. Only what is missing, so
/// a second load on the same server adds no GTID before its first transaction.
fn create_missing_tables(server: &DbServer, threads: usize) {
    let databases: u64 = server.query_value(&format!(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{LOAD_DATABASE}'"
    ));
    if databases == 0 {
        server.sql(&format!("CREATE DATABASE {LOAD_DATABASE}"));
    }
    let existing: Vec<String> = server.query(&format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{LOAD_DATABASE}'"
    ));
    for worker in 0..threads {
        for (name, columns) in [
            (
                format!("kv_{worker}"),
                "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, k VARCHAR(64) NOT NULL, \
                 v VARCHAR(255) NOT NULL, n INT NOT NULL DEFAULT 0, \
                 amount DECIMAL(12, 2) NOT NULL DEFAULT 0, created DATETIME(6) NOT NULL, KEY k (k)",
            ),
            (
                format!("docs_{worker}"),
                "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, doc JSON NOT NULL, payload LONGBLOB NULL",
            ),
            // No primary key: row events identify rows by their whole before image.
            (
                format!("nopk_{worker}"),
                "seq BIGINT NOT NULL, tag VARCHAR(32) NOT NULL, amount DECIMAL(12, 2) NULL, note TEXT NULL",
            ),
        ] {
            if !existing.contains(&name) {
                server.sql(&format!(
                    "CREATE TABLE {LOAD_DATABASE}.{name} ({columns}) ENGINE=InnoDB"
                ));
            }
        }
    }
}

/// The kinds of transaction, with their weights in the mix.
#[derive(Debug, Clone, Copy)]
enum Kind {
    SmallInsert,
    Update,
    Delete,
    JsonInsert,
    JsonUpdate,
    NoPk,
    Mixed,
    RolledBack,
    Bulk,
    BigRow,
    Ddl,
}

const MIX: [(Kind, u32); 11] = [
    (Kind::SmallInsert, 30),
    (Kind::Update, 14),
    (Kind::Delete, 6),
    (Kind::JsonInsert, 10),
    (Kind::JsonUpdate, 6),
    (Kind::NoPk, 12),
    (Kind::Mixed, 10),
    (Kind::RolledBack, 2),
    (Kind::Bulk, 4),
    (Kind::BigRow, 3),
    (Kind::Ddl, 3),
];

/// MySQL errors a worker retries: deadlock, lock wait timeout.
const RETRYABLE: [u16; 2] = [1213, 1205];

struct Worker {
    index: usize,
    opts: Opts,
    rng: Rng,
    stop: Arc<AtomicBool>,
    tickets: Arc<AtomicU64>,
    deadline: Option<Instant>,
    limit: Option<u64>,
    tagged: bool,
    large: bool,
    ddl: bool,
    stats: LoadStats,
    next_ddl_table: u64,
    ddl_step: u32,
    sequence: u64,
}

/// What one transaction did, added to the stats only once it committed.
#[derive(Default)]
struct Effect {
    inserted: u64,
    updated: u64,
    deleted: u64,
    payload: u64,
    large: bool,
    ddl: bool,
    rolled_back: bool,
}

impl Worker {
    fn run(mut self) -> LoadStats {
        let mut conn = match Conn::new(self.opts.clone()) {
            Ok(conn) => conn,
            Err(err) => {
                self.stats
                    .errors
                    .push(format!("load worker {}: connecting: {err}", self.index));
                return self.stats;
            }
        };
        let mut max_id = match self.max_ids(&mut conn).and_then(|max_id| {
            self.skip_old_ddl_tables(&mut conn)?;
            Ok(max_id)
        }) {
            Ok(max_id) => max_id,
            Err(err) => {
                self.stats.errors.push(format!(
                    "load worker {}: reading its tables: {err}",
                    self.index
                ));
                return self.stats;
            }
        };
        loop {
            if self.stop.load(Ordering::SeqCst)
                || self
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
            {
                break;
            }
            if let Some(limit) = self.limit
                && self.tickets.fetch_add(1, Ordering::SeqCst) >= limit
            {
                break;
            }
            let kind = self.pick();
            let tagged = self.tagged && self.rng.below(10) == 0;
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.one(&mut conn, kind, tagged, &mut max_id) {
                    Ok(effect) => {
                        self.count(effect, tagged);
                        break;
                    }
                    Err(err) => {
                        let _ = conn.query_drop("ROLLBACK");
                        if tagged {
                            let _ = conn.query_drop("SET gtid_next = 'AUTOMATIC'");
                        }
                        let retry = matches!(&err, mysql::Error::MySqlError(e) if RETRYABLE.contains(&e.code));
                        if !retry || attempts >= 5 {
                            self.stats.errors.push(format!(
                                "load worker {}: {kind:?} failed: {err}",
                                self.index
                            ));
                            return self.stats;
                        }
                    }
                }
            }
        }
        self.stats
    }

    /// The highest ids in the worker's tables, from an earlier load on the same server.
    fn max_ids(&self, conn: &mut Conn) -> mysql::Result<[u64; 3]> {
        let (w, db) = (self.index, LOAD_DATABASE);
        let mut max_id = [0u64; 3];
        for (slot, query) in max_id.iter_mut().zip([
            format!("SELECT COALESCE(MAX(id), 0) FROM {db}.kv_{w}"),
            format!("SELECT COALESCE(MAX(id), 0) FROM {db}.docs_{w}"),
            format!("SELECT COALESCE(MAX(seq), 0) FROM {db}.nopk_{w}"),
        ]) {
            *slot = conn.query_first(query)?.unwrap_or(0);
        }
        Ok(max_id)
    }

    /// Continues the DDL table numbers after those an earlier load left behind.
    fn skip_old_ddl_tables(&mut self, conn: &mut Conn) -> mysql::Result<()> {
        let prefix = format!("ddl_{}_", self.index);
        let names: Vec<String> = conn.exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME LIKE ?",
            (LOAD_DATABASE, format!("{prefix}%")),
        )?;
        let highest = names
            .iter()
            .filter_map(|name| name.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max();
        if let Some(highest) = highest {
            self.next_ddl_table = highest + 1;
        }
        Ok(())
    }

    fn pick(&mut self) -> Kind {
        loop {
            let total: u32 = MIX.iter().map(|(_, weight)| weight).sum();
            let mut roll = self.rng.below(u64::from(total)) as u32;
            for (kind, weight) in MIX {
                if roll < weight {
                    let allowed = match kind {
                        Kind::Bulk | Kind::BigRow => self.large,
                        Kind::Ddl => self.ddl,
                        _ => true,
                    };
                    if allowed {
                        return kind;
                    }
                    break;
                }
                roll -= weight;
            }
        }
    }

    fn count(&mut self, effect: Effect, tagged: bool) {
        let stats = &mut self.stats;
        if effect.rolled_back {
            stats.rolled_back += 1;
            return;
        }
        if !effect.ddl && effect.inserted + effect.updated + effect.deleted == 0 {
            // A statement that changed no row is not binlogged and gets no GTID.
            return;
        }
        stats.transactions += 1;
        stats.tagged_transactions += u64::from(tagged);
        stats.large_transactions += u64::from(effect.large);
        stats.ddl_statements += u64::from(effect.ddl);
        stats.rows_inserted += effect.inserted;
        stats.rows_updated += effect.updated;
        stats.rows_deleted += effect.deleted;
        stats.payload_bytes += effect.payload;
    }

    /// Runs one transaction of `kind`. `max_id` caches the highest id per table (kv, docs,
    /// nopk seq) to aim updates and deletes at existing rows.
    fn one(
        &mut self,
        conn: &mut Conn,
        kind: Kind,
        tagged: bool,
        max_id: &mut [u64; 3],
    ) -> mysql::Result<Effect> {
        let w = self.index;
        let db = LOAD_DATABASE;
        if tagged {
            conn.query_drop(format!("SET gtid_next = 'AUTOMATIC:{GTID_TAG}'"))?;
        }
        let mut effect = Effect::default();
        match kind {
            Kind::SmallInsert => {
                let rows = 1 + self.rng.below(5);
                let values = (0..rows)
                    .map(|_| self.kv_values())
                    .collect::<Vec<_>>()
                    .join(", ");
                conn.query_drop("BEGIN")?;
                conn.query_drop(format!(
                    "INSERT INTO {db}.kv_{w} (k, v, n, amount, created) VALUES {values}"
                ))?;
                max_id[0] = conn.last_insert_id() + rows - 1;
                conn.query_drop("COMMIT")?;
                effect.inserted = rows;
            }
            Kind::Update => {
                let from = self.rng.below(max_id[0] + 1);
                let text = self.text(8, 60);
                effect.updated = affected(
                    conn,
                    format!(
                        "UPDATE {db}.kv_{w} SET v = '{text}', n = n + 1, amount = amount + 1.25 \
                         WHERE id BETWEEN {from} AND {}",
                        from + self.rng.below(4)
                    ),
                )?;
            }
            Kind::Delete => {
                let from = self.rng.below(max_id[0] + 1);
                effect.deleted = affected(
                    conn,
                    format!(
                        "DELETE FROM {db}.kv_{w} WHERE id BETWEEN {from} AND {}",
                        from + self.rng.below(3)
                    ),
                )?;
            }
            Kind::JsonInsert => {
                let doc = self.json_doc();
                effect.payload = doc.len() as u64;
                conn.exec_drop(
                    format!("INSERT INTO {db}.docs_{w} (doc) VALUES (?)"),
                    (doc,),
                )?;
                max_id[1] = conn.last_insert_id();
                effect.inserted = 1;
            }
            Kind::JsonUpdate => {
                let id = self.rng.below(max_id[1] + 1);
                let label = self.text(3, 12);
                // A counter no row has yet, so the update always changes the row.
                self.sequence += 1;
                effect.updated = affected(
                    conn,
                    format!(
                        "UPDATE {db}.docs_{w} SET doc = JSON_SET(doc, '$.counter', {}, '$.labels.extra', '{label}') \
                         WHERE id = {id}",
                        1_000_000 + self.sequence
                    ),
                )?;
            }
            Kind::NoPk => {
                conn.query_drop("BEGIN")?;
                let rows = 1 + self.rng.below(4);
                let mut values = Vec::new();
                for _ in 0..rows {
                    max_id[2] += 1;
                    values.push(format!(
                        "({}, '{}', {}.{:02}, '{}')",
                        max_id[2],
                        self.text(2, 10),
                        self.rng.below(10_000),
                        self.rng.below(100),
                        self.text(0, 200)
                    ));
                }
                conn.query_drop(format!(
                    "INSERT INTO {db}.nopk_{w} (seq, tag, amount, note) VALUES {}",
                    values.join(", ")
                ))?;
                effect.inserted = rows;
                let seq = self.rng.below(max_id[2] + 1);
                conn.query_drop(format!(
                    "UPDATE {db}.nopk_{w} SET amount = amount * 2 WHERE seq = {seq}"
                ))?;
                effect.updated = conn.affected_rows();
                // Keep the table small: every statement on it scans it, here and on replicas.
                conn.query_drop(format!(
                    "DELETE FROM {db}.nopk_{w} WHERE seq < {}",
                    max_id[2].saturating_sub(300)
                ))?;
                effect.deleted = conn.affected_rows();
                conn.query_drop("COMMIT")?;
            }
            Kind::Mixed | Kind::RolledBack => {
                conn.query_drop("BEGIN")?;
                let values = self.kv_values();
                conn.query_drop(format!(
                    "INSERT INTO {db}.kv_{w} (k, v, n, amount, created) VALUES {values}"
                ))?;
                let new_id = conn.last_insert_id();
                let doc_id = self.rng.below(max_id[1] + 1);
                conn.query_drop(format!(
                    "UPDATE {db}.docs_{w} SET doc = JSON_SET(doc, '$.touched_by', {new_id}) WHERE id = {doc_id}"
                ))?;
                effect.updated = conn.affected_rows();
                max_id[2] += 1;
                conn.query_drop(format!(
                    "INSERT INTO {db}.nopk_{w} (seq, tag, amount, note) VALUES ({}, 'mixed', NULL, NULL)",
                    max_id[2]
                ))?;
                let victim = self.rng.below(new_id + 1);
                conn.query_drop(format!("DELETE FROM {db}.kv_{w} WHERE id = {victim}"))?;
                effect.deleted = conn.affected_rows();
                effect.inserted = 2;
                if matches!(kind, Kind::RolledBack) {
                    conn.query_drop("ROLLBACK")?;
                    effect.rolled_back = true;
                } else {
                    max_id[0] = new_id;
                    conn.query_drop("COMMIT")?;
                }
            }
            Kind::Bulk => {
                let rows = 200 + self.rng.below(2800);
                conn.query_drop("BEGIN")?;
                let mut done = 0;
                while done < rows {
                    let batch = (rows - done).min(250);
                    let values = (0..batch)
                        .map(|_| self.kv_values())
                        .collect::<Vec<_>>()
                        .join(", ");
                    conn.query_drop(format!(
                        "INSERT INTO {db}.kv_{w} (k, v, n, amount, created) VALUES {values}"
                    ))?;
                    max_id[0] = conn.last_insert_id() + batch - 1;
                    done += batch;
                }
                // A large update in the same transaction, so it has before and after images.
                let from = self.rng.below(max_id[0] + 1);
                conn.query_drop(format!(
                    "UPDATE {db}.kv_{w} SET n = n + 1000 WHERE id BETWEEN {from} AND {}",
                    from + 500
                ))?;
                effect.updated = conn.affected_rows();
                conn.query_drop("COMMIT")?;
                effect.inserted = rows;
                effect.large = true;
            }
            Kind::BigRow => {
                let size = 64 * 1024 + self.rng.below(3 * 1024 * 1024 - 64 * 1024) as usize;
                let mut payload = vec![0u8; size];
                self.rng.fill(&mut payload);
                let doc = self.json_doc();
                conn.exec_drop(
                    format!("INSERT INTO {db}.docs_{w} (doc, payload) VALUES (?, ?)"),
                    (doc, payload),
                )?;
                max_id[1] = conn.last_insert_id();
                effect.inserted = 1;
                effect.payload = size as u64;
                effect.large = true;
                // Bound the disk use: big rows do not stay for long.
                let old = max_id[1].saturating_sub(20);
                self.count(effect, tagged);
                let cleared = affected(
                    conn,
                    format!(
                        "UPDATE {db}.docs_{w} SET payload = NULL WHERE id < {old} AND payload IS NOT NULL"
                    ),
                )?;
                effect = Effect {
                    updated: cleared,
                    ..Effect::default()
                };
            }
            Kind::Ddl => {
                effect.ddl = true;
                let table = format!("{db}.ddl_{w}_{}", self.next_ddl_table);
                let statement = match self.ddl_step {
                    0 => format!(
                        "CREATE TABLE {table} (id INT NOT NULL PRIMARY KEY, label VARCHAR(40) NOT NULL, \
                         doc JSON NULL) ENGINE=InnoDB"
                    ),
                    1 => format!(
                        "ALTER TABLE {table} ADD COLUMN extra VARCHAR(20) NOT NULL DEFAULT 'x'"
                    ),
                    2 => format!("ALTER TABLE {table} ADD INDEX label (label)"),
                    _ => format!("DROP TABLE {table}"),
                };
                conn.query_drop(statement)?;
                if self.ddl_step < 3 {
                    // The DDL committed on its own: counted before the next statement, so a
                    // kill leaves at most one transaction per worker uncounted.
                    self.count(effect, tagged);
                    effect = Effect {
                        inserted: 1,
                        ..Effect::default()
                    };
                    // Some rows to carry through the next ALTER (a transaction of its own).
                    let id = self.ddl_step;
                    conn.query_drop(format!(
                        "INSERT INTO {table} (id, label, doc) VALUES ({id}, '{}', '{{\"step\": {id}}}')",
                        self.text(1, 20)
                    ))?;
                }
                self.ddl_step += 1;
                if self.ddl_step == 4 {
                    self.ddl_step = 0;
                    self.next_ddl_table += 1;
                }
            }
        }
        if tagged {
            conn.query_drop("SET gtid_next = 'AUTOMATIC'")?;
        }
        Ok(effect)
    }

    fn kv_values(&mut self) -> String {
        format!(
            "('{}', '{}', {}, {}.{:02}, NOW(6))",
            self.text(4, 64),
            self.text(0, 255),
            self.rng.below(1000),
            self.rng.below(1_000_000),
            self.rng.below(100)
        )
    }

    fn json_doc(&mut self) -> String {
        let items: Vec<String> = (0..self.rng.below(6))
            .map(|i| format!("{{\"i\": {i}, \"v\": \"{}\"}}", self.text(0, 30)))
            .collect();
        format!(
            "{{\"name\": \"{}\", \"counter\": {}, \"ratio\": {}.{}, \"active\": {}, \"labels\": {{\"a\": \"{}\"}}, \"items\": [{}], \"nothing\": null}}",
            self.text(3, 20),
            self.rng.below(1000),
            self.rng.below(100),
            self.rng.below(1000),
            self.rng.below(2) == 0,
            self.text(0, 10),
            items.join(", ")
        )
    }

    /// Random text of `min..=max` characters from a set that needs no quoting in SQL or JSON.
    fn text(&mut self, min: u64, max: u64) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,";
        let len = min + self.rng.below(max - min + 1);
        (0..len)
            .map(|_| char::from(CHARS[self.rng.below(CHARS.len() as u64) as usize]))
            .collect()
    }
}

/// Runs one statement and returns how many rows it changed.
fn affected(conn: &mut Conn, statement: String) -> mysql::Result<u64> {
    conn.query_drop(statement)?;
    Ok(conn.affected_rows())
}

/// SplitMix64: small, fast, and good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

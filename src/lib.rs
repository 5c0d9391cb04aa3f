//! myhoard: a MySQL and MariaDB backup daemon, a re-implementation of Aiven's MyHoard.
//!
//! It runs beside every database server of a cluster: it takes full snapshots on a schedule,
//! uploads every binary log to object storage as soon as it closes, restores any backup to any
//! point in time on a fresh server, and keeps the backup chain correct through failovers. It is
//! a drop-in for Python MyHoard: same `myhoard.json`, same HTTP API, same object layout and
//! object format (rohmu's), same metrics.
//!
//! # Architecture
//!
//! No async runtime. Dedicated OS threads talk only over crossbeam channels:
//!
//! - `controller` owns all mutable state and the mode state machine (idle, active, observe,
//!   promote, restore) and never blocks on I/O;
//! - `binlog-watcher` notices closed binlogs and reports their GTID ranges;
//! - `uploader-N` and `downloader-N` pools run transfers and report outcomes;
//! - `http` (tiny_http) turns each request into a command carrying its own reply channel;
//! - task threads run long jobs (snapshots, prepare, mysqld restarts) and report progress.
//!
//! Jobs go out with `try_send` on bounded channels; results come back on unbounded ones, so a
//! worker never blocks on reporting. Threads stop when their channel is dropped.
//!
//! Every byte stored goes through [`pipeline`]: read → compress → encrypt → [`storage`], each
//! stage a `std::io` adapter, reading and compression each on a thread of its own so that
//! encryption and I/O run beside compression rather than in its way. Restores run the reverse and check the MAC before anything is published.
//!
//! The modules, by layer:
//!
//! - foundation: [`config`] (`myhoard.json`), [`storage`] (local, S3, GCS, Azure behind one
//!   trait, with retries), [`pipeline`] (snappy, zstd, xz and rohmu's encryption), [`state`]
//!   (crash-safe JSON and append-only state files);
//! - the database: [`db`] (the MariaDB/MySQL [`db::Flavor`] and a typed client), [`binlog`]
//!   (our own binlog parser), [`gtid`] (GTID set arithmetic for both flavours), [`mysqld`]
//!   (restarting the server with restore options);
//! - pure policy, no I/O: [`schedule`], [`retention`], [`purge`];
//! - backups: [`basebackup`] (snapshots with mariabackup, XtraBackup or the clone plugin,
//!   streamed into storage, and their restore), [`backup_stream`] (MyHoard's storage layout and
//!   the uploader pool), [`binlog_scanner`] (the binlog watcher);
//! - restore: [`restore`] (the coordinator's phases and the relay-log applier);
//! - the daemon: [`controller`] (modes, streams, the tick; observe mode following other
//!   servers' streams, promotion taking a stream over, binlog purge rounds), [`http`] (the
//!   API), [`daemon`] (wiring, signals, reload on SIGHUP), [`logging`], [`metrics`] (statsd),
//!   [`error_reporting`] (Sentry), and the operator commands in [`cli`].
//!
//! Failover: a promoted server writes `promotions/<server_id>` into each stream it takes over
//! before it uploads anything there, and every reader (restores, standbys) keeps, per binlog
//! index, only the upload of the server the promotion records give that index to; so what a
//! deposed master still uploads is never used.
//!
//! Restore chains: a restore replays the binlogs of a chain of streams, the snapshot's first.
//! A newer backup's stream joins the chain (a restore to the latest transaction following
//! backups completed meanwhile, or the asked-for backup after a fallback to an earlier
//! snapshot) only once its snapshot lies within the GTIDs planned so far, so a chain never
//! has a gap.
//!
//! Crash safety: every state change is written (atomically) before it is acted on, and every
//! object key is fixed before its upload starts, so a restart redoes at most the work in
//! flight, to the same keys.
//!
//! # Invariants
//!
//! - Nothing outside `storage` knows which cloud is in use.
//! - No object is ever held whole in memory or staged whole on local disk: transfers stream,
//!   with memory bounded by a part size and a pipe depth.
//! - A failed or interrupted upload never leaves a short object visible under its key.
//! - Decrypted bytes are published (renamed into place, handed to a server) only after the
//!   object's integrity check passed.
//! - Only transient storage failures are retried; permission and not-found errors never are.
//! - Pure policy modules (config validation, retry backoff, GTID arithmetic, schedules,
//!   retention, purge) do no I/O and are tested with tables of cases.
//! - A local binlog is purged only when every backup stream has it stored and every server in
//!   the replication state has executed it.
//! - Every difference between MariaDB and MySQL versions lives in [`db::Flavor`]; nothing else
//!   branches on a server version.
//! - Each error is logged once, where it is handled; lower layers return typed errors.

pub mod backup_stream;
pub mod basebackup;
pub mod binlog;
pub mod binlog_scanner;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod db;
pub mod error_reporting;
pub mod gtid;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod mysqld;
pub mod pipeline;
pub mod purge;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod state;
pub mod storage;

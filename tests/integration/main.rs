//! The integration test binary: everything that needs a real server or external tool.
//!
//! `harness` starts those servers on free loopback ports and makes sure none outlives the test
//! process. Tools come from `tests/install-test-deps.sh`; without them tests print a note and
//! pass, except under `CI`, where a missing tool fails the test.
//!
//! Run with `cargo nextest run --test integration` (`.config/nextest.toml` bounds the concurrency
//! of server-heavy tests and kills hung ones).

mod backup_daemon;
mod basebackup;
mod binlog_truth;
mod daemon_ops;
mod db_client;
mod db_servers;
mod failover;
mod harness;
mod metrics;
mod mode_transitions;
mod purge_daemon;
mod restore_apply;
mod restore_daemon;
mod restore_variants;
mod rohmu_compat;
mod storage_cli;
mod storage_conformance;

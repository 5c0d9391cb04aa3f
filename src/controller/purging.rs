//! Purge rounds of local binlogs: when a round is due, the pure policy ([`crate::purge`])
//! decides what may go, and `PURGE BINARY LOGS TO` runs on a task thread.
//!
//! A round is taken as it starts (`binlogs_purged_at` is set to now), so no other starts
//! within `purge_interval` while the statement runs. Its outcome sets `binlogs_purged_at` again
//! per [`PurgePlan::round_time_to_record`], drops the removed files from the controller's
//! binlog list and has the watcher rescan, which records their removal. Every failure is
//! logged and retried in the next round, as in MyHoard.
//!
//! Every round ends with MyHoard's gauges `myhoard.binlog.time_since_any_purged` and
//! `myhoard.binlog.time_since_could_have_purged`; a round that ran `PURGE` also sends
//! `myhoard.binlog.purged_per_cycle.files` and `.bytes`.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::Discriminant;
use std::sync::Arc;

use chrono::Utc;

use super::state::{Mode, StreamState};
use super::tasks::{self, Event, ServerInfo};
use super::{Context, Controller, layout};
use crate::binlog_scanner::WatcherRequest;
use crate::db::{BinaryLog, Client, LONG_TIMEOUT};
use crate::gtid::{GtidSet, Uuid};
use crate::purge::{self, Held, OwnServer, PurgeInput, PurgeMode, PurgePlan, StreamView, Uploaded};

/// `ER_BACKUP_IN_PROGRESS`: a snapshot tool holds the backup lock. MyHoard tolerates it, with
/// the connection failures, as a normal reason to try again later.
const ER_BACKUP_IN_PROGRESS: u16 = 4085;

/// One round's `PURGE`, as the task reports it back.
#[derive(Debug, Clone)]
pub struct PurgeRound {
    /// The argument of `PURGE BINARY LOGS TO`: the binlog after the last one to go.
    pub purge_to: String,
    /// How many binlogs the plan named; the server may keep some (see
    /// [`Client::purge_binary_logs_to`]).
    pub n_planned: usize,
    /// The per-round cap left purgeable binlogs: the next round is due at once.
    pub more_purgeable: bool,
}

/// What a hold logged at info level was: its kind, and the server it names.
pub(super) type HoldKey = (Discriminant<Held>, Option<String>);

impl Controller {
    /// Starts a purge round when one is due (see [`crate::purge::purge_round_due`]).
    pub(super) fn purge_binlogs_if_due(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        let settings = &ctx.config.binlog_purge_settings;
        let now = Utc::now();
        // Before the watcher's first report the binlog list is empty, not known to be empty.
        if !self.binlogs_loaded
            || !purge::purge_round_due(settings, self.state.binlogs_purged_at, now)
        {
            return;
        }
        let mode = match self.state.mode {
            Mode::Active => PurgeMode::Active,
            // Until the streams were looked at, "no streams" would be a guess, and with
            // `purge_when_observe_no_streams` a guess that deletes binlogs no backup has.
            Mode::Observe if self.observed.is_none() => return,
            Mode::Observe => PurgeMode::Observe,
            Mode::Restore => PurgeMode::Restore,
            Mode::Idle | Mode::Promote => return,
        };
        self.state.binlogs_purged_at = layout::epoch_seconds(now);
        let replication_state = match replication_state_sets(&self.state.replication_state) {
            Ok(replication_state) => replication_state,
            Err(err) => {
                // Read as empty it would let every backed-up binlog go, replicas or not.
                log::error!(
                    "the stored replication state cannot be read, no binlog is purged: {err}"
                );
                self.persist();
                self.send_purge_age_gauges();
                return;
            }
        };
        let streams: Vec<StreamView> = match mode {
            PurgeMode::Active => self
                .streams
                .values()
                .map(|stream| active_stream_view(&stream.state))
                .collect(),
            PurgeMode::Observe | PurgeMode::Restore => self.observed_stream_views(),
        };
        let plan = purge::binlogs_to_purge(&PurgeInput {
            binlogs: &self.binlogs,
            mode,
            streams: &streams,
            replication_state: &replication_state,
            own_server: self.server.as_ref().and_then(own_server),
            settings,
            now,
        });
        log_hold(plan.held.as_ref(), &mut self.last_purge_hold_logged);
        let round = match plan.purge_to_file_name() {
            Some(purge_to) => PurgeRound {
                purge_to,
                n_planned: plan.binlogs.len(),
                more_purgeable: plan.more_purgeable,
            },
            None => {
                if let Some(last) = plan.binlogs.last() {
                    log::error!(
                        "cannot purge binlogs: {:?} has no number to name the binlog after it",
                        last.file_name
                    );
                }
                if plan.nothing_overdue {
                    self.last_could_have_purged = layout::epoch_seconds(now);
                }
                self.state.binlogs_purged_at = plan.round_time_to_record(false, settings, now);
                self.persist();
                self.send_purge_age_gauges();
                return;
            }
        };
        log::debug!(
            "purging {} binlog(s) before {}",
            round.n_planned,
            round.purge_to
        );
        tasks::spawn("purge-binlogs", &self.events_tx, move || {
            let result = purge_binary_logs(&ctx, &round.purge_to);
            Event::BinlogsPurged { round, result }
        });
    }

    /// A round's `PURGE` finished: log what went, record the round, rescan.
    pub(super) fn binlogs_purged(
        &mut self,
        round: PurgeRound,
        result: Result<Vec<BinaryLog>, crate::db::Error>,
    ) {
        let metrics = &self.ctx.metrics;
        if let Ok(removed) = &result {
            let n_bytes: u64 = removed.iter().map(|log| log.size).sum();
            metrics.gauge("myhoard.binlog.purged_per_cycle.files", removed.len(), &[]);
            metrics.gauge("myhoard.binlog.purged_per_cycle.bytes", n_bytes, &[]);
        }
        let purged = match result {
            Ok(removed) => match removed.last() {
                Some(last) => {
                    let n_bytes: u64 = removed.iter().map(|log| log.size).sum();
                    log::info!(
                        "purged binlogs up to {} ({} files, {n_bytes} bytes)",
                        last.name,
                        removed.len()
                    );
                    // The watcher reports the removal on its next scan; until then a round
                    // run at once (the cap left more) would plan the same binlogs again.
                    let removed_names: BTreeSet<&str> =
                        removed.iter().map(|log| log.name.as_str()).collect();
                    self.binlogs
                        .retain(|binlog| !removed_names.contains(binlog.file_name.as_str()));
                    if removed.len() < round.n_planned {
                        log::debug!(
                            "the server kept {} of the binlogs before {}; the next round \
                             tries again",
                            round.n_planned - removed.len(),
                            round.purge_to
                        );
                    }
                    true
                }
                None => {
                    // MariaDB keeps binlogs its crash recovery may still need without saying
                    // so, until its binlog checkpoint moves on.
                    log::debug!(
                        "PURGE BINARY LOGS TO {:?} removed nothing; the next round tries again",
                        round.purge_to
                    );
                    false
                }
            },
            Err(err) if err.kind().is_transient() || err.code() == Some(ER_BACKUP_IN_PROGRESS) => {
                log::warn!("purging binlogs failed, retrying in the next round: {err}");
                false
            }
            Err(err) => {
                log::error!("purging binlogs failed, retrying in the next round: {err}");
                false
            }
        };
        // The round's time depends only on whether the cap left more; the plan's binlogs are
        // not needed for it.
        let plan = PurgePlan {
            binlogs: &[],
            more_purgeable: round.more_purgeable,
            held: None,
            nothing_overdue: true,
        };
        let now = Utc::now();
        self.state.binlogs_purged_at =
            plan.round_time_to_record(purged, &self.ctx.config.binlog_purge_settings, now);
        if purged {
            self.last_binlog_purge = layout::epoch_seconds(now);
            self.last_could_have_purged = self.last_binlog_purge;
        }
        self.persist();
        self.send_purge_age_gauges();
        if purged {
            let _ = self
                .channels
                .watcher_requests
                .try_send(WatcherRequest::ScanNow);
        }
    }

    /// MyHoard's gauges sent after every round: seconds since a round last removed binlogs,
    /// and since nothing was last overdue (binlogs purged, or none that could legitimately go).
    fn send_purge_age_gauges(&self) {
        let now = layout::epoch_seconds(Utc::now());
        let metrics = &self.ctx.metrics;
        metrics.gauge(
            "myhoard.binlog.time_since_any_purged",
            now - self.last_binlog_purge,
            &[],
        );
        metrics.gauge(
            "myhoard.binlog.time_since_could_have_purged",
            now - self.last_could_have_purged,
            &[],
        );
    }
}

/// `PUT /replication_state` as stored (MyHoard's JSON form, validated when it was put), read
/// back into GTID sets.
fn replication_state_sets(
    stored: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Result<BTreeMap<String, GtidSet>> {
    serde_json::from_value(serde_json::Value::Object(stored.clone()))
}

/// What a stream this server uploads to has stored, for the policy. Before its snapshot is
/// stored a stream has uploaded nothing (`last_processed_local_index` is 0), so only the
/// binlogs older than the stream are safe for it.
fn active_stream_view(state: &StreamState) -> StreamView {
    StreamView {
        has_basebackup_info: state.basebackup_info.is_some(),
        // 0: no binlog was complete when the stream was created.
        initial_latest_complete_binlog_index: Some(state.initial_latest_complete_binlog_index)
            .filter(|index| *index > 0),
        uploaded: Uploaded::LocalIndexes {
            last_processed_local_index: Some(state.last_processed_local_index)
                .filter(|index| *index > 0),
            remote_references: BTreeSet::new(),
        },
    }
}

/// The local server's identity for the policy; `None`, so that nothing is ignored, when a
/// MySQL server's UUID does not parse (it always does on a real server).
fn own_server(server: &ServerInfo) -> Option<OwnServer> {
    if server.flavor.is_mariadb() {
        return Some(OwnServer::Mariadb {
            server_id: server.server_id,
        });
    }
    server
        .server_uuid
        .parse::<Uuid>()
        .ok()
        .map(OwnServer::Mysql)
}

/// Logs why binlogs stay: at debug level every round, at info level when the reason changes.
/// No binlog old enough (or none at all) is the normal state between rounds: debug level only.
fn log_hold(held: Option<&Held>, last: &mut Option<HoldKey>) {
    let Some(held) = held else {
        *last = None;
        return;
    };
    log::debug!("binlog purge: {held}");
    if matches!(held, Held::TooNew { .. } | Held::NoBinlogs) {
        return;
    }
    let server = match held {
        Held::NotReplicated { server, .. } | Held::ReplicaWithoutGtids { server } => {
            Some(server.clone())
        }
        _ => None,
    };
    let key = (std::mem::discriminant(held), server);
    if last.as_ref() != Some(&key) {
        log::info!("binlogs are kept: {held}");
        *last = Some(key);
    }
}

/// `PURGE BINARY LOGS TO purge_to`; returns the binlogs that went (`SHOW BINARY LOGS` before
/// and after: the server may keep some, and reports nothing about it). Runs on a task thread.
fn purge_binary_logs(ctx: &Context, purge_to: &str) -> Result<Vec<BinaryLog>, crate::db::Error> {
    // MyHoard gives the statement 20 s: deleting many large files can take a while.
    let mut client = Client::connect_with_timeout(&ctx.config.mysql.client_params, LONG_TIMEOUT)?;
    let before = client.binary_logs()?;
    client.purge_binary_logs_to(purge_to)?;
    let after: BTreeSet<String> = client
        .binary_logs()?
        .into_iter()
        .map(|log| log.name)
        .collect();
    Ok(before
        .into_iter()
        .filter(|log| !after.contains(&log.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db::Flavor;

    fn stream_state(initial: u64, last_processed: u64) -> StreamState {
        // Through JSON, as the state file has it: fields added later take their defaults.
        serde_json::from_value(json!({
            "stream_id": "2024-01-01T00:00:00Z_1",
            "site": "default",
            "mode": "active",
            "active_details": {"phase": "basebackup"},
            "backup_reason": "scheduled",
            "normalized_backup_time": "2024-01-01T00:00:00+00:00",
            "created_at": 0.0,
            "basebackup_info": null,
            "basebackup_errors": 0,
            "completed_info": null,
            "closed_info": null,
            "next_index": 1,
            "last_processed_local_index": last_processed,
            "initial_latest_complete_binlog_index": initial,
            "valid_local_binlog_found": last_processed > 0,
            "last_binlog_upload_time": null,
            "updated_at": 0.0,
        }))
        .expect("a stream state")
    }

    #[test]
    fn active_streams_as_the_policy_sees_them() {
        let cases = [
            ("a new stream on a new server", (0, 0), (None, None)),
            ("a new stream after binlogs", (4, 0), (Some(4), None)),
            ("a stream uploading", (4, 9), (Some(4), Some(9))),
        ];
        for (name, (initial, last_processed), (expected_initial, expected_last)) in cases {
            let view = active_stream_view(&stream_state(initial, last_processed));
            assert_eq!(
                view,
                StreamView {
                    has_basebackup_info: false,
                    initial_latest_complete_binlog_index: expected_initial,
                    uploaded: Uploaded::LocalIndexes {
                        last_processed_local_index: expected_last,
                        remote_references: BTreeSet::new(),
                    },
                },
                "{name}"
            );
        }
    }

    #[test]
    fn own_server_by_flavor() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let server = |version: &str, server_uuid: &str| ServerInfo {
            flavor: Flavor::parse(version).expect("a supported version"),
            server_uuid: server_uuid.to_owned(),
            server_id: 7,
        };
        let cases = [
            (
                server("8.0.36", uuid),
                Some(OwnServer::Mysql(uuid.parse().expect("uuid"))),
            ),
            (server("8.0.36", "not a uuid"), None),
            (
                server("10.11.6-MariaDB-0+deb12u1-log", "0-7"),
                Some(OwnServer::Mariadb { server_id: 7 }),
            ),
        ];
        for (server, expected) in cases {
            assert_eq!(own_server(&server), expected, "{server:?}");
        }
    }

    #[test]
    fn stored_replication_state_reads_back() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let stored = json!({
            "db-2": {uuid: [[1, 42]]},
            "db-3": {"0-1": [[1, 5], [7, 9]], "1-2": [[1, 1]]},
        });
        let serde_json::Value::Object(stored) = stored else {
            panic!("an object");
        };
        let sets = replication_state_sets(&stored).expect("readable");
        assert_eq!(sets["db-2"].to_string(), format!("{uuid}:1-42"));
        assert_eq!(sets["db-3"], "0-1:1-5:7-9,1-2:1".parse().expect("gtid set"));

        let serde_json::Value::Object(broken) = json!({"db-2": {"nonsense": [[1, 2]]}}) else {
            panic!("an object");
        };
        assert!(replication_state_sets(&broken).is_err());
    }
}

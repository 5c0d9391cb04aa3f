//! The controller's persisted state: `myhoard_controller_state.json` and one
//! `<safe_stream_id>.json` per live backup stream, with MyHoard's names for the fields MyHoard
//! has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backup_stream::layout::{BasebackupInfo, ClosedMarker, CompletedMarker};
use crate::backup_stream::remote::BackupEntry;
use crate::gtid::GtidSet;
use crate::schedule::BackupRequest;

pub const CONTROLLER_STATE_FILE: &str = "myhoard_controller_state.json";

/// The controller's mode (MyHoard's `Controller.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Idle,
    Active,
    Observe,
    Promote,
    Restore,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Active => "active",
            Mode::Observe => "observe",
            Mode::Promote => "promote",
            Mode::Restore => "restore",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a restore was asked for; kept while the mode is `restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreOptions {
    pub site: String,
    pub stream_id: String,
    /// Epoch seconds.
    pub target_time: Option<i64>,
    pub target_time_approximate_ok: bool,
    /// Ours: restore up to and including this transaction (server syntax).
    #[serde(default)]
    pub target_gtid: Option<String>,
    #[serde(default)]
    pub rebuild_tables: bool,
}

/// `myhoard_controller_state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerState {
    pub mode: Mode,
    pub backup_request: Option<BackupRequest>,
    /// The cached backup list (`GET /backup`).
    pub backups: Vec<BackupEntry>,
    /// 0 until the first listing finished.
    pub backups_fetched_at: f64,
    pub last_binlog_rotation: f64,
    /// Streams this server created or took over and still writes to.
    pub owned_stream_ids: Vec<String>,
    /// `PUT /replication_state`, as given.
    pub replication_state: serde_json::Map<String, serde_json::Value>,
    pub restore_options: Option<RestoreOptions>,
    pub server_uuid: Option<String>,
    /// ISO 8601; scheduled backups wait until then.
    pub paused_backups_until: Option<String>,
    /// stream id → requested `preserve_until` (ISO 8601 or null).
    pub pending_preservation_requests: BTreeMap<String, Option<String>>,
    pub errors: u64,
    /// When the last binlog purge round ran (epoch seconds; 0 before the first): set when a
    /// round starts, so that no other starts within `purge_interval`, then from its outcome.
    pub binlogs_purged_at: f64,
    /// Promotion accepts the loss of stored transactions this server lacks.
    pub force_promote: bool,
    /// A forced restore goes on to promotion once it is finalized.
    pub promote_on_restore_completion: bool,
    /// Streams a failback could not take back (see [`super::promote`]): closed once a backup
    /// of this server's own is complete; forgotten when the server stops being the master.
    pub superseded_streams: Vec<SupersededStream>,
}

/// A stream another server's promotion superseded this server's record in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersededStream {
    pub site: String,
    pub stream_id: String,
}

/// A stream's active phase (MyHoard's `BackupStream.ActivePhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Basebackup,
    BinlogCatchup,
    Binlog,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveDetails {
    pub phase: Phase,
}

/// `<safe_stream_id>.json`: one backup stream this server writes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub stream_id: String,
    pub site: String,
    /// `active` (this server writes to it) or `observe`.
    pub mode: String,
    pub active_details: ActiveDetails,
    pub backup_reason: String,
    pub normalized_backup_time: String,
    pub created_at: f64,
    pub basebackup_info: Option<BasebackupInfo>,
    pub basebackup_errors: u32,
    pub completed_info: Option<CompletedMarker>,
    pub closed_info: Option<ClosedMarker>,
    /// The next remote index to upload (starts at 1).
    pub next_index: u64,
    /// The newest local binlog uploaded; 0 before the first.
    pub last_processed_local_index: u64,
    /// The newest local binlog that was complete when the stream was created.
    pub initial_latest_complete_binlog_index: u64,
    pub valid_local_binlog_found: bool,
    pub last_binlog_upload_time: Option<f64>,
    pub updated_at: f64,
    /// Upload failures in a row, for backoff.
    #[serde(default)]
    pub backup_errors: u32,
    /// Set on a stream taken over at promotion: the GTIDs the stream stored then. Local
    /// binlogs holding nothing beyond them are not uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_remote_gtids: Option<GtidSet>,
}

//! MyHoard's object storage layout: key names and the JSON each object carries.
//!
//! ```text
//! <site>/<stream_id>/basebackup.xbstream[.NNN]   the snapshot, in splits from .002 on
//! <site>/<stream_id>/basebackup.json             what the snapshot holds (body JSON)
//! <site>/<stream_id>/completed.json              the stream caught up (body + `json` metadata)
//! <site>/<stream_id>/closed.json                 no more binlogs will be added
//! <site>/<stream_id>/broken.json                 exists iff the backup is marked broken
//! <site>/<stream_id>/preserved.json              a preservation request
//! <site>/<stream_id>/promotions/<server_id>      which server owns binlog indexes from where on
//! <site>/<stream_id>/binlogs/<index / 500>/<index>_<server_id>
//! ```
//!
//! Every object's facts are in one metadata key, `json`, whose value is the JSON text of a dict
//! (rohmu's metadata values are strings). Readers rely on the metadata, except for
//! `basebackup.json`, which is read as a body. Unknown fields written by Python MyHoard are kept
//! (`extra`), so a document read and written back loses nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::gtid::{GtidRange, GtidSet};
use crate::storage::Metadata;

/// Binlog objects are grouped in "buckets" (directories) of this many indexes.
pub const BINLOG_BUCKET_SIZE: u64 = 500;
pub const BASEBACKUP_NAME: &str = "basebackup.xbstream";
pub const BASEBACKUP_INFO_NAME: &str = "basebackup.json";
pub const COMPLETED_NAME: &str = "completed.json";
pub const CLOSED_NAME: &str = "closed.json";
pub const BROKEN_NAME: &str = "broken.json";
pub const PRESERVED_NAME: &str = "preserved.json";
pub const PROMOTIONS_DIR: &str = "promotions";
pub const BINLOGS_DIR: &str = "binlogs";
/// The single metadata key MyHoard stores its JSON in.
pub const METADATA_KEY: &str = "json";

/// `<site>/<stream_id>`.
pub fn stream_prefix(site: &str, stream_id: &str) -> String {
    format!("{site}/{stream_id}")
}

/// The key of snapshot split `split` (1-based): `basebackup.xbstream`, then `.002`, `.003`...
pub fn basebackup_split_key(stream_prefix: &str, split: u32) -> String {
    if split <= 1 {
        format!("{stream_prefix}/{BASEBACKUP_NAME}")
    } else {
        format!("{stream_prefix}/{BASEBACKUP_NAME}.{split:03}")
    }
}

/// `<prefix>/binlogs/<index / 500>/<index>_<server_id>`.
pub fn binlog_key(stream_prefix: &str, remote_index: u64, server_id: u32) -> String {
    format!(
        "{stream_prefix}/{BINLOGS_DIR}/{}/{remote_index}_{server_id}",
        remote_index / BINLOG_BUCKET_SIZE
    )
}

/// The listing prefix of one binlog bucket.
pub fn binlog_bucket_prefix(stream_prefix: &str, bucket: u64) -> String {
    format!("{stream_prefix}/{BINLOGS_DIR}/{bucket}/")
}

/// Parses `<index>_<server_id>`, the last component of a binlog key.
pub fn parse_binlog_name(name: &str) -> Option<(u64, u32)> {
    let (index, server_id) = name.rsplit('/').next()?.split_once('_')?;
    Some((index.parse().ok()?, server_id.parse().ok()?))
}

/// `promotions/<server_id>`.
pub fn promotion_key(stream_prefix: &str, server_id: u32) -> String {
    format!("{stream_prefix}/{PROMOTIONS_DIR}/{server_id}")
}

/// A new stream id: the UTC creation time in ISO 8601 with `+00:00`, `_`, a random UUID. Ids
/// are opaque elsewhere (older MyHoard wrote `+00:00Z`); only their order matters.
pub fn new_stream_id(now: DateTime<Utc>) -> String {
    format!(
        "{}_{}",
        now.to_rfc3339_opts(SecondsFormat::Micros, false),
        random_uuid()
    )
}

/// A version 4 UUID from the system's secure random source.
pub fn random_uuid() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The OS random source failing is not recoverable in any useful way; fall back to the
        // clock so that ids stay unique even so.
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The state file name of a stream: `:` and `.` replaced by `_`, as MyHoard names it.
pub fn safe_stream_id(stream_id: &str) -> String {
    stream_id.replace([':', '.'], "_")
}

/// Seconds since the epoch as MyHoard's timestamps are (floats).
pub fn epoch_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_micros() as f64 / 1e6
}

/// The `json` metadata holding `value`.
pub fn json_metadata<T: Serialize>(value: &T) -> Metadata {
    let mut metadata = Metadata::new();
    let text = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    metadata.insert(METADATA_KEY.to_owned(), text);
    metadata
}

/// The parsed `json` metadata of an object, if it has any that parses as `T`.
pub fn parse_json_metadata<T: for<'de> Deserialize<'de>>(metadata: Option<&Metadata>) -> Option<T> {
    let text = metadata?.get(METADATA_KEY)?;
    serde_json::from_str(text).ok()
}

/// One binlog as the scanner found it and as its object's metadata describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinlogInfo {
    /// Base name on the source host, such as `binlog.000042`.
    pub file_name: String,
    /// Uncompressed size.
    pub file_size: u64,
    /// Absolute path on the source host.
    pub full_name: String,
    pub gtid_ranges: Vec<GtidRange>,
    pub local_index: u64,
    /// When the scanner read it (epoch seconds).
    pub processed_at: f64,
    /// Seconds the scan took.
    pub processing_time: f64,
    pub server_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_algorithm: Option<String>,
    /// The object's stored size, added by readers (the decryptor needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_file_size: Option<u64>,
    /// Fields of ours that Python MyHoard does not write, and its fields we do not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl BinlogInfo {
    /// The binlog's transactions as a GTID set.
    pub fn gtids(&self) -> GtidSet {
        GtidSet::from_ranges(&self.gtid_ranges).unwrap_or_default()
    }

    /// Commit timestamp (seconds) of the first and last transaction, by MyHoard's ranges.
    pub fn time_span(&self) -> Option<(u64, u64)> {
        let first = self.gtid_ranges.first()?;
        let last = self.gtid_ranges.last()?;
        Some((first.start_ts, last.end_ts))
    }
}

/// `basebackup.json`: what a snapshot holds and where the binlogs continue from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BasebackupInfo {
    pub backup_reason: String,
    pub binlog_index: Option<u64>,
    pub binlog_name: Option<String>,
    pub binlog_position: Option<u64>,
    #[serde(default)]
    pub checkpoints_file_content: Option<String>,
    #[serde(default)]
    pub compressed_size: u64,
    /// Python MyHoard: the hex RSA-wrapped xtrabackup key. Our snapshots are encrypted object
    /// by object in rohmu's format instead, so this is null.
    #[serde(default)]
    pub encryption_key: Option<String>,
    #[serde(default)]
    pub end_size: Option<u64>,
    pub end_ts: f64,
    /// The GTID position of the snapshot in the server's own syntax.
    pub gtid: Option<String>,
    /// The same as MyHoard's `{origin: [[start, end]]}`.
    #[serde(default)]
    pub gtid_executed: GtidSet,
    #[serde(default)]
    pub incremental: bool,
    #[serde(default)]
    pub required_streams: Option<Vec<String>>,
    pub initiated_at: f64,
    #[serde(default)]
    pub lsn_info: Option<serde_json::Value>,
    pub normalized_backup_time: String,
    #[serde(default)]
    pub number_of_files: u64,
    #[serde(default)]
    pub split_size: u64,
    #[serde(default = "one")]
    pub number_of_splits: u32,
    #[serde(default)]
    pub start_size: Option<u64>,
    pub start_ts: f64,
    #[serde(default)]
    pub tool_version: Option<String>,
    pub uploaded_from: u32,
    /// Ours: `mariabackup`, `xtrabackup` or `clone`. Absent in Python MyHoard's (xtrabackup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_tool: Option<String>,
    /// Ours: `xbstream` or `tar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_format: Option<String>,
    /// Ours: `SELECT VERSION()` of the source, so a restore knows the flavour before the
    /// restored server runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Ours: the compression of the snapshot objects (encrypted in rohmu's format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_algorithm: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// `completed.json`, `closed.json`, `broken.json`: when and by whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletedMarker {
    pub completed_at: f64,
    pub server_id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedMarker {
    pub closed_at: f64,
    pub server_id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokenMarker {
    pub broken_at: f64,
    pub server_id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreservedMarker {
    pub preserve_until: Option<String>,
    pub server_id: u32,
}

/// `promotions/<server_id>`: from `start_index` on, binlogs of this stream are valid only when
/// uploaded by `server_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub promoted_at: f64,
    pub server_id: u32,
    pub start_index: u64,
}

/// The snapshot object's metadata, the same on every split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotObjectInfo {
    pub backup_started_at: f64,
    pub uploaded_from: u32,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SequenceError {
    #[error("no promotion record starts at binlog index 1")]
    NoInitialPromotion,
    #[error("binlog sequence has a gap: index {found} follows {previous}")]
    Gap { previous: u64, found: u64 },
}

/// The binlogs of a stream that readers may use, in order: for each index, only the object
/// uploaded by the server that the promotion records give that index to. Uploads by a deposed
/// master after a promotion are dropped here (fencing). The result must be gapless from 1.
pub fn valid_binlog_sequence(
    mut binlogs: Vec<BinlogInfo>,
    promotions: &[Promotion],
) -> Result<Vec<BinlogInfo>, SequenceError> {
    // start_index → the newest promotion claiming it.
    let mut owners: BTreeMap<u64, &Promotion> = BTreeMap::new();
    for promotion in promotions {
        match owners.get(&promotion.start_index) {
            Some(existing) if existing.promoted_at >= promotion.promoted_at => {}
            _ => {
                owners.insert(promotion.start_index, promotion);
            }
        }
    }
    if binlogs.is_empty() {
        return Ok(binlogs);
    }
    if !owners.contains_key(&1) {
        return Err(SequenceError::NoInitialPromotion);
    }
    binlogs.sort_by_key(|b| (b.remote_index.unwrap_or(0), b.server_id));
    let mut valid: Vec<BinlogInfo> = Vec::with_capacity(binlogs.len());
    for binlog in binlogs {
        let index = binlog.remote_index.unwrap_or(0);
        let owner = owners
            .range(..=index)
            .next_back()
            .map(|(_, promotion)| promotion.server_id);
        if owner != Some(binlog.server_id) {
            log::debug!(
                "ignoring binlog {index} from server {}: the index belongs to server {owner:?}",
                binlog.server_id
            );
            continue;
        }
        let previous = valid.last().and_then(|b| b.remote_index).unwrap_or(0);
        if index != previous + 1 {
            return Err(SequenceError::Gap {
                previous,
                found: index,
            });
        }
        valid.push(binlog);
    }
    Ok(valid)
}

/// What a server being promoted does with its own `promotions/<server_id>` record in a stream
/// it takes over. The layout holds one record per server, so a record can only be moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnPromotion {
    /// No record of ours, or one a crashed attempt of this promotion left before anything was
    /// uploaded under it: write it at the next index (the two-look protocol).
    Write,
    /// Our record still owns the stream's last indexes (we started the stream, or uploaded
    /// under it) and nobody was promoted since: it stays as it is; moving it would leave the
    /// indexes it covers without their owner.
    Keep,
    /// Another server was promoted after our record: taking the stream back would need a
    /// second record of ours, which the layout cannot hold.
    Superseded { by: u32, start_index: u64 },
}

/// Decides [`OwnPromotion`] for `server_id` from the stream's records and its valid binlogs
/// ([`valid_binlog_sequence`] over those records).
pub fn own_promotion(
    promotions: &[Promotion],
    valid: &[BinlogInfo],
    server_id: u32,
) -> OwnPromotion {
    let Some(own) = promotions.iter().find(|p| p.server_id == server_id) else {
        return OwnPromotion::Write;
    };
    let later = promotions.iter().find(|p| {
        p.server_id != server_id
            && (p.start_index > own.start_index
                || (p.start_index == own.start_index && p.promoted_at > own.promoted_at))
    });
    if let Some(later) = later {
        return OwnPromotion::Superseded {
            by: later.server_id,
            start_index: later.start_index,
        };
    }
    let uploaded_under_it = valid.iter().any(|binlog| {
        binlog.server_id == server_id && binlog.remote_index.unwrap_or(0) >= own.start_index
    });
    if own.start_index == 1 || uploaded_under_it {
        OwnPromotion::Keep
    } else {
        OwnPromotion::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binlog(index: u64, server_id: u32) -> BinlogInfo {
        BinlogInfo {
            file_name: format!("binlog.{index:06}"),
            file_size: 100,
            full_name: format!("/b/binlog.{index:06}"),
            gtid_ranges: vec![],
            local_index: index,
            processed_at: 0.0,
            processing_time: 0.0,
            server_id,
            remote_index: Some(index),
            remote_key: None,
            compression_algorithm: None,
            remote_file_size: None,
            extra: BTreeMap::new(),
        }
    }

    fn promotion(start_index: u64, server_id: u32, promoted_at: f64) -> Promotion {
        Promotion {
            promoted_at,
            server_id,
            start_index,
        }
    }

    fn indexes(binlogs: &[BinlogInfo]) -> Vec<(u64, u32)> {
        binlogs
            .iter()
            .map(|b| (b.remote_index.unwrap_or(0), b.server_id))
            .collect()
    }

    #[test]
    fn keys_match_myhoard() {
        let prefix = stream_prefix("default", "2026-01-14T10:49:37.831286+00:00_abc");
        assert_eq!(
            basebackup_split_key(&prefix, 1),
            "default/2026-01-14T10:49:37.831286+00:00_abc/basebackup.xbstream"
        );
        assert!(basebackup_split_key(&prefix, 2).ends_with("/basebackup.xbstream.002"));
        assert!(binlog_key(&prefix, 499, 7).ends_with("/binlogs/0/499_7"));
        assert!(binlog_key(&prefix, 500, 7).ends_with("/binlogs/1/500_7"));
        assert_eq!(parse_binlog_name("a/b/binlogs/1/512_12"), Some((512, 12)));
        assert_eq!(parse_binlog_name("512"), None);
        assert_eq!(
            safe_stream_id("2026-01-14T10:49:37.831286+00:00_x"),
            "2026-01-14T10_49_37_831286+00_00_x"
        );
    }

    #[test]
    fn stream_ids_sort_by_time_and_are_unique() {
        let earlier = Utc::now();
        let later = earlier + chrono::Duration::seconds(1);
        let a = new_stream_id(earlier);
        let b = new_stream_id(later);
        assert!(a < b);
        assert!(a.contains("+00:00_"), "{a}");
        assert_ne!(new_stream_id(earlier), new_stream_id(earlier));
    }

    #[test]
    fn own_promotion_record() {
        use OwnPromotion::{Keep, Superseded, Write};
        const OURS: u32 = 7;
        // (records as (start_index, server_id, promoted_at), valid binlogs as (index, server_id),
        //  decision)
        type Case = (
            &'static [(u64, u32, f64)],
            &'static [(u64, u32)],
            OwnPromotion,
        );
        let cases: &[Case] = &[
            // A first promotion: the old master's record only.
            (&[(1, 1, 1.0)], &[(1, 1), (2, 1)], Write),
            // A crashed attempt of this promotion left our record, nothing uploaded under it.
            (&[(1, 1, 1.0), (3, OURS, 2.0)], &[(1, 1), (2, 1)], Write),
            // We started the stream (a backup writes start_index 1) and nobody was promoted.
            (&[(1, OURS, 1.0)], &[(1, OURS), (2, OURS)], Keep),
            (&[(1, OURS, 1.0)], &[], Keep),
            // We were promoted once, uploaded, and are promoted again: nobody in between.
            (
                &[(1, 1, 1.0), (3, OURS, 2.0)],
                &[(1, 1), (2, 1), (3, OURS)],
                Keep,
            ),
            // Failback: we started the stream, server 2 took it over at index 5.
            (
                &[(1, OURS, 1.0), (5, 2, 2.0)],
                &[(1, OURS), (4, OURS), (5, 2)],
                Superseded {
                    by: 2,
                    start_index: 5,
                },
            ),
            // Taken over at the very index of our record, later.
            (
                &[(1, 1, 1.0), (3, OURS, 2.0), (3, 2, 3.0)],
                &[(1, 1), (2, 1)],
                Superseded {
                    by: 2,
                    start_index: 3,
                },
            ),
            // An older record at our index lost to OURS: it does not count.
            (
                &[(1, 1, 1.0), (3, 2, 1.5), (3, OURS, 2.0)],
                &[(1, 1), (2, 1)],
                Write,
            ),
        ];
        for (records, valid, expected) in cases {
            let promotions: Vec<Promotion> = records
                .iter()
                .map(|&(start, server_id, at)| promotion(start, server_id, at))
                .collect();
            let valid: Vec<BinlogInfo> = valid
                .iter()
                .map(|&(index, server_id)| binlog(index, server_id))
                .collect();
            assert_eq!(
                &own_promotion(&promotions, &valid, OURS),
                expected,
                "{records:?} {valid:?}"
            );
        }
    }

    #[test]
    fn promotions_fence_and_detect_gaps() {
        struct Case {
            name: &'static str,
            binlogs: Vec<(u64, u32)>,
            promotions: Vec<Promotion>,
            expected: Result<Vec<(u64, u32)>, SequenceError>,
        }
        let cases = [
            Case {
                name: "single master",
                binlogs: vec![(1, 1), (2, 1), (3, 1)],
                promotions: vec![promotion(1, 1, 10.0)],
                expected: Ok(vec![(1, 1), (2, 1), (3, 1)]),
            },
            Case {
                name: "deposed master's uploads after the promotion are ignored",
                binlogs: vec![(1, 1), (2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (5, 2)],
                promotions: vec![promotion(1, 1, 10.0), promotion(3, 2, 20.0)],
                expected: Ok(vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]),
            },
            Case {
                name: "the newest promotion of one start index wins",
                binlogs: vec![(1, 1), (2, 3)],
                promotions: vec![
                    promotion(1, 1, 10.0),
                    promotion(2, 2, 20.0),
                    promotion(2, 3, 30.0),
                ],
                expected: Ok(vec![(1, 1), (2, 3)]),
            },
            Case {
                name: "gap",
                binlogs: vec![(1, 1), (3, 1)],
                promotions: vec![promotion(1, 1, 10.0)],
                expected: Err(SequenceError::Gap {
                    previous: 1,
                    found: 3,
                }),
            },
            Case {
                name: "no initial promotion",
                binlogs: vec![(1, 1)],
                promotions: vec![promotion(2, 1, 10.0)],
                expected: Err(SequenceError::NoInitialPromotion),
            },
            Case {
                name: "nothing uploaded yet",
                binlogs: vec![],
                promotions: vec![],
                expected: Ok(vec![]),
            },
        ];
        for case in cases {
            let binlogs = case.binlogs.iter().map(|&(i, s)| binlog(i, s)).collect();
            let result = valid_binlog_sequence(binlogs, &case.promotions);
            assert_eq!(result.map(|r| indexes(&r)), case.expected, "{}", case.name);
        }
    }
}

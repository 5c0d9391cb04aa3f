//! Reading and writing the storage layout: the backup list, a stream's binlogs and promotions,
//! marker objects. Blocking storage I/O: called from task threads, never from the controller.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::layout::{
    self, BASEBACKUP_INFO_NAME, BASEBACKUP_NAME, BROKEN_NAME, BasebackupInfo, BinlogInfo,
    BrokenMarker, CLOSED_NAME, COMPLETED_NAME, ClosedMarker, CompletedMarker, PRESERVED_NAME,
    PROMOTIONS_DIR, PreservedMarker, Promotion,
};
use crate::storage::{self, ErrorKind, ListOptions, ObjectStorage};

/// One backup as `GET /backup` lists it (MyHoard's `get_backup_list` fields).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BackupEntry {
    pub basebackup_info: Option<BasebackupInfo>,
    pub broken_at: Option<f64>,
    pub closed_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub preserve_until: Option<String>,
    pub recovery_site: bool,
    pub resumable: bool,
    pub site: String,
    pub stream_id: String,
}

/// Stores `value` as a small JSON object: the same JSON as body and as `json` metadata.
pub fn put_marker<T: Serialize>(
    storage: &dyn ObjectStorage,
    key: &str,
    value: &T,
) -> storage::Result<()> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    storage.put(key, &mut Cursor::new(body), &layout::json_metadata(value))?;
    Ok(())
}

/// Reads a JSON object body.
pub fn read_json_object<T: DeserializeOwned>(
    storage: &dyn ObjectStorage,
    key: &str,
) -> storage::Result<T> {
    let mut body = Vec::new();
    storage.get(key, &mut body)?;
    serde_json::from_slice(&body).map_err(|err| {
        storage::Error::new(
            ErrorKind::Other,
            "parse",
            key,
            format!("not the expected JSON: {err}"),
        )
    })
}

/// Deletes one object; one that is already gone is fine.
pub fn delete_if_present(storage: &dyn ObjectStorage, key: &str) -> storage::Result<()> {
    match storage.delete(key) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Deletes every object of a stream.
pub fn delete_stream(storage: &dyn ObjectStorage, stream_prefix: &str) -> storage::Result<usize> {
    let listing = storage.list(
        &format!("{stream_prefix}/"),
        ListOptions {
            deep: true,
            with_metadata: false,
        },
    )?;
    for object in &listing.objects {
        delete_if_present(storage, &object.key)?;
    }
    Ok(listing.objects.len())
}

/// The stream ids stored under `site`.
pub fn list_stream_ids(storage: &dyn ObjectStorage, site: &str) -> storage::Result<Vec<String>> {
    let listing = storage.list(&format!("{site}/"), ListOptions::default())?;
    Ok(listing
        .prefixes
        .iter()
        .filter_map(|prefix| {
            let id = prefix.trim_end_matches('/').rsplit('/').next()?;
            (!id.is_empty()).then(|| id.to_owned())
        })
        .collect())
}

/// The backups of one site. `basebackup.json` bodies never change once written, so they are
/// read once and kept in `info_cache` by stream id.
pub fn list_site_backups(
    storage: &dyn ObjectStorage,
    site: &str,
    recovery_site: bool,
    info_cache: &mut BTreeMap<String, BasebackupInfo>,
) -> storage::Result<Vec<BackupEntry>> {
    let mut backups = Vec::new();
    for stream_id in list_stream_ids(storage, site)? {
        let prefix = layout::stream_prefix(site, &stream_id);
        let listing = storage.list(
            &format!("{prefix}/"),
            ListOptions {
                deep: false,
                with_metadata: true,
            },
        )?;
        if listing.objects.is_empty() {
            // Nothing stored at the stream's top level: a deleted stream's leftover empty
            // "directories" (local storage), or a snapshot whose first split is not stored yet.
            // Neither is a backup to list.
            continue;
        }
        let mut names: BTreeMap<&str, &storage::ObjectInfo> = BTreeMap::new();
        for object in &listing.objects {
            if let Some(name) = object.key.rsplit('/').next() {
                names.insert(name, object);
            }
        }
        let info = match (info_cache.get(&stream_id), names.get(BASEBACKUP_INFO_NAME)) {
            (Some(info), _) => Some(info.clone()),
            (None, Some(object)) => {
                match read_json_object::<BasebackupInfo>(storage, &object.key) {
                    Ok(info) => {
                        info_cache.insert(stream_id.clone(), info.clone());
                        Some(info)
                    }
                    Err(err) if err.kind() == ErrorKind::NotFound => None,
                    Err(err) if err.kind() == ErrorKind::Other => {
                        log::warn!("{err}; listing the backup without it");
                        None
                    }
                    Err(err) => return Err(err),
                }
            }
            (None, None) => None,
        };
        let mut info = info;
        let split_sizes: u64 = names
            .iter()
            .filter(|(name, _)| name.starts_with(BASEBACKUP_NAME))
            .map(|(_, object)| object.size)
            .sum();
        let highest_split = names
            .keys()
            .filter_map(|name| name.strip_prefix(BASEBACKUP_NAME))
            .map(|suffix| {
                suffix
                    .strip_prefix('.')
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(1)
            })
            .max();
        let resumable = match &mut info {
            Some(info) => {
                if info.compressed_size == 0 {
                    info.compressed_size = split_sizes;
                }
                let splits_present = highest_split == Some(info.number_of_splits.max(1));
                info.compressed_size > 0 && splits_present
            }
            None => false,
        };
        let marker = |name: &str| names.get(name).and_then(|o| o.metadata.as_ref());
        let completed_at = resumable
            .then(|| layout::parse_json_metadata::<CompletedMarker>(marker(COMPLETED_NAME)))
            .flatten()
            .map(|m| m.completed_at);
        let closed_at = completed_at
            .and_then(|_| layout::parse_json_metadata::<ClosedMarker>(marker(CLOSED_NAME)))
            .map(|m| m.closed_at);
        let broken_at =
            layout::parse_json_metadata::<BrokenMarker>(marker(BROKEN_NAME)).map(|m| m.broken_at);
        let preserve_until = layout::parse_json_metadata::<PreservedMarker>(marker(PRESERVED_NAME))
            .and_then(|m| m.preserve_until);
        backups.push(BackupEntry {
            basebackup_info: info,
            broken_at,
            closed_at,
            completed_at,
            preserve_until,
            recovery_site,
            resumable,
            site: site.to_owned(),
            stream_id,
        });
    }
    Ok(backups)
}

/// Every binlog object of a stream with its metadata, `remote_index`, `remote_key` and
/// `remote_file_size` filled in, sorted by (index, server id). Buckets are walked while the
/// previous one was full.
pub fn list_remote_binlogs(
    storage: &dyn ObjectStorage,
    stream_prefix: &str,
) -> storage::Result<Vec<BinlogInfo>> {
    let mut binlogs = Vec::new();
    let mut bucket = 0;
    loop {
        let listing = storage.list(
            &layout::binlog_bucket_prefix(stream_prefix, bucket),
            ListOptions {
                deep: false,
                with_metadata: true,
            },
        )?;
        let mut highest = None;
        for object in listing.objects {
            let Some((index, server_id)) = layout::parse_binlog_name(&object.key) else {
                continue;
            };
            let Some(mut info) =
                layout::parse_json_metadata::<BinlogInfo>(object.metadata.as_ref())
            else {
                log::warn!("{}: binlog object without usable metadata", object.key);
                continue;
            };
            info.remote_index = Some(index);
            info.server_id = server_id;
            info.remote_key = Some(object.key.clone());
            info.remote_file_size = Some(object.size);
            highest = highest.max(Some(index));
            binlogs.push(info);
        }
        match highest {
            Some(index) if (index + 1) % layout::BINLOG_BUCKET_SIZE == 0 => bucket += 1,
            _ => break,
        }
    }
    binlogs.sort_by_key(|b| (b.remote_index, b.server_id));
    Ok(binlogs)
}

/// The promotion records of a stream.
pub fn list_promotions(
    storage: &dyn ObjectStorage,
    stream_prefix: &str,
) -> storage::Result<Vec<Promotion>> {
    let listing = storage.list(
        &format!("{stream_prefix}/{PROMOTIONS_DIR}/"),
        ListOptions {
            deep: false,
            with_metadata: true,
        },
    )?;
    Ok(listing
        .objects
        .iter()
        .filter_map(|object| layout::parse_json_metadata(object.metadata.as_ref()))
        .collect())
}

/// The stream's binlogs that readers may use: fenced by promotions and gapless.
pub fn valid_remote_binlogs(
    storage: &dyn ObjectStorage,
    stream_prefix: &str,
) -> anyhow::Result<Vec<BinlogInfo>> {
    let binlogs = list_remote_binlogs(storage, stream_prefix)?;
    let promotions = list_promotions(storage, stream_prefix)?;
    Ok(layout::valid_binlog_sequence(binlogs, &promotions)?)
}

//! Crash-safe local state: JSON files under `state_directory`, in MyHoard's file formats.
//!
//! Two kinds of file, as MyHoard has them:
//!
//! - a JSON document rewritten whole on every change ([`write_json`]): a temporary file in the
//!   same directory, fsync, rename over the old one, fsync the directory. A `kill -9` at any
//!   instant leaves either the old or the new document, never a mix;
//! - an append-only list ([`AppendOnlyList`]) for lists that grow at the tail and shrink at the
//!   head (the scanned binlogs, a stream's uploaded binlogs). Each entry is a 9-byte header
//!   (`J` or `T`, then the data length as 8 lowercase hex digits) and its data: a JSON line, or
//!   `\n` for a tombstone. Removing `n` entries from the head appends `n` tombstones; loading
//!   skips as many leading entries as there are tombstones. A partial entry at the end (a crash
//!   in the middle of an append) is dropped and truncated away on load: the append it belonged
//!   to never returned, so its caller never relied on it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not valid state JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: corrupt append-only state at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `value` as the whole content of `path`, atomically and durably.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    write_bytes(path, &bytes)
}

/// Replaces `path` with `bytes`: temporary file, fsync, rename, fsync of the directory. The
/// file is created 0600 (state can name keys and hosts); an existing file's mode is kept.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mode = fs::metadata(path)
        .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777)
        .unwrap_or(0o600);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(parent))
}

/// Reads a JSON state file; `None` when there is none yet.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(path)(err)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
}

/// Deletes a state file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error(path)(err)),
    }
}

const HEADER_LEN: usize = 9;
/// More tombstones than this and the file is rewritten with the live entries only.
const MAX_TOMBSTONES: usize = 1000;

/// A list persisted in MyHoard's append-only format; see the module doc.
#[derive(Debug)]
pub struct AppendOnlyList<T> {
    path: PathBuf,
    entries: Vec<T>,
    tombstones: usize,
    _entry: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> AppendOnlyList<T> {
    /// Loads the list at `path`, creating an empty file when there is none.
    pub fn open(path: &Path) -> Result<AppendOnlyList<T>, Error> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io_error(path))?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => write_bytes(path, b"")?,
            Err(err) => return Err(io_error(path)(err)),
        }
        let (raw_entries, tombstones, valid_len) = parse_entries(path, &bytes)?;
        if valid_len < bytes.len() {
            log::warn!(
                "{}: dropping {} bytes of an append that never finished",
                path.display(),
                bytes.len() - valid_len
            );
            write_bytes(path, &bytes[..valid_len])?;
        }
        if tombstones > raw_entries.len() {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: valid_len as u64,
                reason: format!(
                    "{tombstones} tombstones for only {} entries",
                    raw_entries.len()
                ),
            });
        }
        let mut entries = Vec::with_capacity(raw_entries.len() - tombstones);
        for (offset, data) in &raw_entries[tombstones..] {
            let entry = serde_json::from_slice(data).map_err(|err| Error::Corrupt {
                path: path.to_owned(),
                offset: *offset as u64,
                reason: err.to_string(),
            })?;
            entries.push(entry);
        }
        Ok(AppendOnlyList {
            path: path.to_owned(),
            entries,
            tombstones,
            _entry: PhantomData,
        })
    }

    pub fn entries(&self) -> &[T] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends entries durably (one write, then fsync).
    pub fn append(&mut self, new: Vec<T>) -> Result<(), Error> {
        if new.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for entry in &new {
            encode_entry(&self.path, &mut bytes, entry)?;
        }
        self.write_tail(&bytes)?;
        self.entries.extend(new);
        Ok(())
    }

    /// Removes the first `count` entries (at most all of them).
    pub fn remove_head(&mut self, count: usize) -> Result<(), Error> {
        let count = count.min(self.entries.len());
        if count == 0 {
            return Ok(());
        }
        if self.tombstones + count > MAX_TOMBSTONES {
            let mut bytes = Vec::new();
            for entry in &self.entries[count..] {
                encode_entry(&self.path, &mut bytes, entry)?;
            }
            write_bytes(&self.path, &bytes)?;
            self.tombstones = 0;
        } else {
            self.write_tail(&b"T00000001\n".repeat(count))?;
            self.tombstones += count;
        }
        self.entries.drain(..count);
        Ok(())
    }

    fn write_tail(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_error(&self.path))?;
        file.write_all(bytes).map_err(io_error(&self.path))?;
        file.sync_data().map_err(io_error(&self.path))
    }
}

fn encode_entry<T: Serialize>(path: &Path, out: &mut Vec<u8>, entry: &T) -> Result<(), Error> {
    // MyHoard writes `json.dumps(ensure_ascii=True)`; serde_json keeps non-ASCII as UTF-8, which
    // Python's json.loads reads just the same.
    let mut data = serde_json::to_vec(entry).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    data.push(b'\n');
    out.extend_from_slice(format!("J{:08x}", data.len()).as_bytes());
    out.extend_from_slice(&data);
    Ok(())
}

/// Splits the file into (offset, JSON data) entries and a tombstone count; the third value is
/// the length of the well-formed prefix.
type ParsedEntries<'a> = (Vec<(usize, &'a [u8])>, usize, usize);

fn parse_entries<'a>(path: &Path, bytes: &'a [u8]) -> Result<ParsedEntries<'a>, Error> {
    let mut entries = Vec::new();
    let mut tombstones = 0;
    let mut offset = 0;
    while offset < bytes.len() {
        if bytes.len() - offset < HEADER_LEN {
            break;
        }
        let header = &bytes[offset..offset + HEADER_LEN];
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.to_owned(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        let length = std::str::from_utf8(&header[1..])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or_else(|| corrupt("bad entry header"))?;
        let data_start = offset + HEADER_LEN;
        if bytes.len() - data_start < length {
            break;
        }
        let data = &bytes[data_start..data_start + length];
        match header[0] {
            b'J' => entries.push((offset, data)),
            b'T' => tombstones += 1,
            _ => return Err(corrupt("unknown entry type")),
        }
        offset = data_start + length;
    }
    Ok((entries, tombstones, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Entry {
        n: u32,
    }

    fn entries(list: &AppendOnlyList<Entry>) -> Vec<u32> {
        list.entries().iter().map(|e| e.n).collect()
    }

    #[test]
    fn json_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_json::<Entry>(&path).unwrap(), None);
        write_json(&path, &Entry { n: 7 }).unwrap();
        assert_eq!(read_json::<Entry>(&path).unwrap(), Some(Entry { n: 7 }));
        assert!(!dir.path().join("state.json.tmp").exists());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn append_remove_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        let mut list = AppendOnlyList::<Entry>::open(&path).unwrap();
        list.append((1..=5).map(|n| Entry { n }).collect()).unwrap();
        list.remove_head(2).unwrap();
        assert_eq!(entries(&list), [3, 4, 5]);
        let reloaded = AppendOnlyList::<Entry>::open(&path).unwrap();
        assert_eq!(entries(&reloaded), [3, 4, 5]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("J00000008{\"n\":1}\n"), "{text}");
        assert!(text.ends_with("T00000001\nT00000001\n"), "{text}");
    }

    #[test]
    fn partial_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        let mut list = AppendOnlyList::<Entry>::open(&path).unwrap();
        list.append(vec![Entry { n: 1 }]).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"J00000008{\"n\"").unwrap();
        let reloaded = AppendOnlyList::<Entry>::open(&path).unwrap();
        assert_eq!(entries(&reloaded), [1]);
        assert_eq!(fs::read_to_string(&path).unwrap(), "J00000008{\"n\":1}\n");
    }

    #[test]
    fn many_tombstones_compact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        let mut list = AppendOnlyList::<Entry>::open(&path).unwrap();
        list.append((0..1200).map(|n| Entry { n }).collect())
            .unwrap();
        for _ in 0..11 {
            list.remove_head(100).unwrap();
        }
        assert_eq!(list.len(), 100);
        let reloaded = AppendOnlyList::<Entry>::open(&path).unwrap();
        assert_eq!(entries(&reloaded), (1100..1200).collect::<Vec<_>>());
        assert!(fs::read_to_string(&path).unwrap().matches('T').count() < 1000);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        fs::write(&path, b"X00000001\n").unwrap();
        assert!(matches!(
            AppendOnlyList::<Entry>::open(&path),
            Err(Error::Corrupt { .. })
        ));
    }
}

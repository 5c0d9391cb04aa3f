//! The `local` backend: objects as files in a directory, laid out exactly as rohmu's local storage
//! lays them out, so a bucket written by Python MyHoard stays readable and the other way round.
//!
//! `<directory>/<prefix>/<key>` holds the bytes and `<key>.metadata` beside it holds the metadata
//! as a JSON object of strings plus `_hash`, the SHA-256 of the bytes. An object without its
//! metadata file is not listed, so the metadata is written last. Unlike rohmu, the bytes go to a
//! hidden temporary file first and are renamed into place, so a crash never leaves a short object
//! under the real name.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::digest;
use serde::{Deserialize, Serialize};

use super::{
    Error, ErrorKind, KeyPrefix, ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage, Result,
};

const METADATA_SUFFIX: &str = ".metadata";
const HASH_KEY: &str = "_hash";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    pub directory: PathBuf,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl LocalConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        if self.directory.as_os_str().is_empty() {
            vec![("directory".into(), "must not be empty".into())]
        } else {
            Vec::new()
        }
    }
}

pub struct LocalStorage {
    root: PathBuf,
    prefix: KeyPrefix,
}

impl LocalStorage {
    pub fn open(config: &LocalConfig) -> Result<LocalStorage> {
        fs::create_dir_all(&config.directory).map_err(|err| {
            Error::new(
                ErrorKind::InvalidConfig,
                "open",
                config.directory.display().to_string(),
                format!("cannot create storage directory: {err}"),
            )
        })?;
        Ok(LocalStorage {
            root: config.directory.clone(),
            prefix: KeyPrefix::new(config.prefix.as_deref()),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(self.prefix.full(key))
    }

    fn read_metadata(&self, key: &str, path: &Path) -> Result<Metadata> {
        let mut metadata_path = path.as_os_str().to_owned();
        metadata_path.push(METADATA_SUFFIX);
        let text = fs::read_to_string(&metadata_path)
            .map_err(|err| Error::from_io("read metadata", key, &err))?;
        let mut metadata: Metadata = serde_json::from_str(&text).map_err(|err| {
            Error::new(
                ErrorKind::Other,
                "read metadata",
                key,
                format!("bad metadata file: {err}"),
            )
        })?;
        metadata.remove(HASH_KEY);
        Ok(metadata)
    }

    fn info(&self, key: &str, path: &Path, with_metadata: bool) -> Result<ObjectInfo> {
        let size = fs::metadata(path)
            .map_err(|err| Error::from_io("stat", key, &err))?
            .len();
        // rohmu treats a file without its metadata sidecar as not there (yet).
        let metadata = self.read_metadata(key, path)?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size,
            metadata: with_metadata.then_some(metadata),
        })
    }

    fn walk(&self, prefix: &str, options: ListOptions, listing: &mut Listing) -> Result<()> {
        // A prefix may end inside a name ("site/str" matches "site/stream1/"), so list the
        // directory holding the prefix and filter by name.
        let (dir_key, name_start) = match prefix.rfind('/') {
            Some(slash) => (&prefix[..=slash], &prefix[slash + 1..]),
            None => ("", prefix),
        };
        let dir = self.path(dir_key);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(err) => return Err(Error::from_io("list", prefix, &err)),
        };
        for entry in entries {
            let entry = entry.map_err(|err| Error::from_io("list", prefix, &err))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !name.starts_with(name_start) || is_internal_name(&name) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            let file_type = entry
                .file_type()
                .map_err(|err| Error::from_io("list", &key, &err))?;
            if file_type.is_dir() {
                if options.deep {
                    self.walk(&format!("{key}/"), options, listing)?;
                } else {
                    listing.prefixes.push(format!("{key}/"));
                }
            } else {
                match self.info(&key, &entry.path(), options.with_metadata) {
                    Ok(info) => listing.objects.push(info),
                    // Removed meanwhile, or its metadata is not written yet.
                    Err(err) if err.kind == ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Files that are part of the layout's machinery rather than objects.
fn is_internal_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(METADATA_SUFFIX) || name.contains(".metadata_tmp")
}

/// Writes `path` through a hidden temporary file in the same directory, then renames it in.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<u64>,
) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    let written = write(temp.as_file_mut())?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(written)
}

/// Hashes everything read through it with SHA-256, rohmu's `_hash`.
struct Hashing<R> {
    inner: R,
    context: digest::Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ObjectStorage for LocalStorage {
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> Result<u64> {
        let path = self.path(key);
        let mut hashing = Hashing {
            inner: body,
            context: digest::Context::new(&digest::SHA256),
        };
        let mut source_failed = None;
        let written = write_atomically(&path, |file| {
            let mut buffer = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = match hashing.read(&mut buffer) {
                    Ok(0) => return Ok(total),
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        let message = err.to_string();
                        source_failed = Some(message);
                        return Err(err);
                    }
                };
                file.write_all(&buffer[..n])?;
                total += n as u64;
            }
        });
        let written = match (written, source_failed) {
            (Ok(written), _) => written,
            (Err(_), Some(message)) => {
                return Err(Error::new(ErrorKind::Source, "upload", key, message));
            }
            (Err(err), None) => return Err(Error::from_io("upload", key, &err)),
        };
        let mut stored = metadata.clone();
        stored.insert(HASH_KEY.into(), hex(hashing.context.finish().as_ref()));
        let json = serde_json::to_vec(&stored)
            .map_err(|err| Error::new(ErrorKind::Other, "upload", key, err))?;
        let mut metadata_path = path.into_os_string();
        metadata_path.push(METADATA_SUFFIX);
        write_atomically(Path::new(&metadata_path), |file| {
            file.write_all(&json)?;
            Ok(json.len() as u64)
        })
        .map_err(|err| Error::from_io("write metadata", key, &err))?;
        Ok(written)
    }

    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        let mut file =
            File::open(self.path(key)).map_err(|err| Error::from_io("download", key, &err))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|err| Error::from_io("download", key, &err))?;
        let mut limited = file.take(end.saturating_sub(start));
        super::copy_body("download", key, &mut limited, out)
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key);
        if fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::new(
                ErrorKind::NotFound,
                "head",
                key,
                "is a prefix, not an object",
            ));
        }
        self.info(key, &path, true)
    }

    fn list(&self, prefix: &str, options: ListOptions) -> Result<Listing> {
        let mut listing = Listing::default();
        self.walk(prefix.trim_start_matches('/'), options, &mut listing)?;
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        listing.prefixes.sort();
        Ok(listing)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        fs::remove_file(&path).map_err(|err| Error::from_io("delete", key, &err))?;
        let mut metadata_path = path.into_os_string();
        metadata_path.push(METADATA_SUFFIX);
        match fs::remove_file(&metadata_path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::from_io("delete metadata", key, &err)),
        }
    }
}

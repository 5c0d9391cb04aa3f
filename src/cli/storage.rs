//! `myhoard storage ls|get|put|rm`: operator access to a backup site's object storage.
//!
//! Operators use these to inspect and rescue backups by hand, so they go through exactly the
//! code the daemon uses: the same backends, the same retry layer, the same pipeline. `get`
//! decrypts and decompresses by what the object's metadata (or, failing that, its first bytes)
//! says; it writes to a temporary file beside the target and renames it into place only after
//! the integrity check passed, so a tampered object never leaves plaintext under the real name.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::config::{Config, SiteConfig};
use crate::pipeline::{self, Algorithm, CompressionSettings, Encoding, encrypt};
use crate::storage::{self, ListOptions, Metadata, ObjectStorage, RetryPolicy};

/// Metadata key holding MyHoard's JSON object.
const JSON_METADATA_KEY: &str = "json";
/// rohmu's own metadata keys, present on objects rohmu's `write_file` callers stored.
const ROHMU_COMPRESSION_KEY: &str = "compression-algorithm";
const ROHMU_ENCRYPTION_KEY: &str = "encryption-key-id";

pub struct Site {
    pub settings: SiteConfig,
    pub storage: Arc<dyn ObjectStorage>,
}

pub fn open_site(config: &Config, name: &str) -> Result<Site> {
    let settings = config
        .backup_sites
        .get(name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.backup_sites.keys().map(String::as_str).collect();
            anyhow!(
                "no backup site {name:?} in the config (sites: {})",
                known.join(", ")
            )
        })?
        .clone();
    let storage = storage::open(&settings.object_storage, RetryPolicy::default())
        .with_context(|| format!("opening the object storage of site {name:?}"))?;
    Ok(Site { settings, storage })
}

pub fn ls(site: &Site, prefix: &str, deep: bool, as_json: bool, out: &mut dyn Write) -> Result<()> {
    let listing = site
        .storage
        .list(
            prefix,
            ListOptions {
                deep,
                with_metadata: true,
            },
        )
        .with_context(|| format!("listing {prefix:?}"))?;
    for prefix in &listing.prefixes {
        if as_json {
            writeln!(out, "{}", json!({ "prefix": prefix }))?;
        } else {
            writeln!(out, "{:>14}  {prefix}", "PRE")?;
        }
    }
    for object in &listing.objects {
        if as_json {
            writeln!(
                out,
                "{}",
                json!({ "key": object.key, "size": object.size, "metadata": object.metadata })
            )?;
        } else {
            let metadata = object
                .metadata
                .as_ref()
                .filter(|m| !m.is_empty())
                .map(|m| serde_json::to_string(m).unwrap_or_default())
                .unwrap_or_default();
            writeln!(out, "{:>14}  {}  {metadata}", object.size, object.key)?;
        }
    }
    Ok(())
}

/// How an object is encoded, read from its metadata.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredEncoding {
    pub algorithm: Algorithm,
    /// `None` when the metadata does not say; then the object's first bytes decide.
    pub encrypted: Option<bool>,
}

/// Reads the encoding from MyHoard's `json` metadata (`compression_algorithm`, and our
/// `encrypted`) or from rohmu's own keys.
pub fn stored_encoding(metadata: &Metadata) -> Result<StoredEncoding> {
    let info: Option<serde_json::Value> = match metadata.get(JSON_METADATA_KEY) {
        Some(text) => {
            Some(serde_json::from_str(text).context("parsing the object's json metadata")?)
        }
        None => None,
    };
    let field = |name: &str| info.as_ref().and_then(|info| info.get(name));
    let algorithm = field("compression_algorithm")
        .and_then(|value| value.as_str())
        .or_else(|| metadata.get(ROHMU_COMPRESSION_KEY).map(String::as_str));
    let algorithm = match algorithm {
        Some(name) => name.parse().map_err(|err: String| anyhow!(err))?,
        None => Algorithm::None,
    };
    let encrypted = field("encrypted")
        .and_then(|value| value.as_bool())
        .or_else(|| metadata.contains_key(ROHMU_ENCRYPTION_KEY).then_some(true));
    Ok(StoredEncoding {
        algorithm,
        encrypted,
    })
}

pub struct GetOptions {
    /// Store the object's bytes as they are, without decrypting or decompressing.
    pub raw: bool,
    /// Overrides the compression algorithm the metadata names.
    pub algorithm: Option<Algorithm>,
}

/// Fetches `key` into `output` (a path, or stdout for `-`).
pub fn get(site: &Site, key: &str, output: &str, options: &GetOptions) -> Result<()> {
    let head = site
        .storage
        .head(key)
        .with_context(|| format!("looking up {key:?}"))?;
    let metadata = head.metadata.unwrap_or_default();
    let (algorithm, private_key) = if options.raw {
        (Algorithm::None, None)
    } else {
        let stored = stored_encoding(&metadata)?;
        let encrypted = match stored.encrypted {
            Some(encrypted) => encrypted,
            None => starts_with_magic(site.storage.as_ref(), key)?,
        };
        let key_for_object = encrypted.then_some(&site.settings.encryption_keys.private);
        (
            options.algorithm.unwrap_or(stored.algorithm),
            key_for_object,
        )
    };
    let fetch = |out: &mut (dyn Write + Send)| {
        pipeline::download(site.storage.as_ref(), key, out, algorithm, private_key)
            .with_context(|| format!("fetching {key:?}"))
    };
    if output == "-" {
        // The pipeline's output must be `Send`; a locked stdout is not, stdout itself is.
        fetch(&mut io::stdout())?;
        return Ok(());
    }
    write_then_rename(Path::new(output), |file| fetch(file).map(|_| ()))
}

fn starts_with_magic(storage: &dyn ObjectStorage, key: &str) -> Result<bool> {
    let mut first = Vec::new();
    storage
        .get_range(key, 0, encrypt::MAGIC.len() as u64, &mut first)
        .with_context(|| format!("reading the start of {key:?}"))?;
    Ok(first == encrypt::MAGIC)
}

/// Writes through a temporary file beside `path` and renames it in only on success.
fn write_then_rename(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".myhoard-get-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    write(temp.as_file_mut())?;
    // No fsync: the rename is what keeps a failed or tampered fetch from leaving a file, and
    // an operator's copy does not need to survive a power cut the way daemon state does.
    temp.persist(path)
        .with_context(|| format!("renaming the output into {}", path.display()))?;
    Ok(())
}

pub struct PutOptions {
    /// Extra fields merged into the object's `json` metadata.
    pub extra_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Overrides the site's compression settings.
    pub compression: Option<CompressionSettings>,
}

/// Stores `input` (a path, or stdin for `-`) under `key`, compressed and encrypted with the
/// site's settings, recording in the `json` metadata how to read it back.
pub fn put(
    site: &Site,
    input: &str,
    key: &str,
    options: &PutOptions,
) -> Result<pipeline::TransferStats> {
    let compression = options.compression.unwrap_or(site.settings.compression);
    let mut info = serde_json::Map::new();
    info.insert(
        "compression_algorithm".into(),
        json!(compression.algorithm.name()),
    );
    info.insert("encrypted".into(), json!(true));
    if input != "-" {
        let path = Path::new(input);
        if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
            info.insert("file_name".into(), json!(name));
        }
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        info.insert("file_size".into(), json!(size));
    }
    if let Some(extra) = &options.extra_metadata {
        for (name, value) in extra {
            info.insert(name.clone(), value.clone());
        }
    }
    let mut metadata = Metadata::new();
    metadata.insert(
        JSON_METADATA_KEY.into(),
        serde_json::Value::Object(info).to_string(),
    );
    let encoding = Encoding {
        compression,
        key: Some(&site.settings.encryption_keys.public),
    };
    let stats = if input == "-" {
        let mut stdin = io::stdin();
        pipeline::upload(site.storage.as_ref(), key, &mut stdin, &metadata, encoding)
    } else {
        let mut file = File::open(input).with_context(|| format!("opening {input}"))?;
        pipeline::upload(site.storage.as_ref(), key, &mut file, &metadata, encoding)
    };
    stats.with_context(|| format!("storing {key:?}"))
}

pub fn rm(site: &Site, keys: &[String]) -> Result<()> {
    let mut failed = 0;
    for key in keys {
        if let Err(err) = site.storage.delete(key) {
            eprintln!("myhoard: deleting {key:?}: {err}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} deletions failed", keys.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn encoding_from_metadata() {
        let cases: Vec<(Metadata, Algorithm, Option<bool>)> = vec![
            (metadata(&[]), Algorithm::None, None),
            (
                metadata(&[(
                    "json",
                    r#"{"compression_algorithm": "zstd", "remote_index": 3}"#,
                )]),
                Algorithm::Zstd,
                None,
            ),
            (
                metadata(&[(
                    "json",
                    r#"{"compression_algorithm": "lzma", "encrypted": false}"#,
                )]),
                Algorithm::Lzma,
                Some(false),
            ),
            (
                metadata(&[
                    ("compression-algorithm", "snappy"),
                    ("encryption-key-id", "k"),
                ]),
                Algorithm::Snappy,
                Some(true),
            ),
        ];
        for (metadata, algorithm, encrypted) in cases {
            let stored = stored_encoding(&metadata).expect("parse");
            assert_eq!(
                stored,
                StoredEncoding {
                    algorithm,
                    encrypted
                },
                "{metadata:?}"
            );
        }
        assert!(stored_encoding(&metadata(&[("json", "{not json")])).is_err());
        assert!(stored_encoding(&metadata(&[("compression-algorithm", "brotli")])).is_err());
    }
}

//! A snapshot stream stored as one or more objects ("splits"), and the byte counters behind
//! progress reports.
//!
//! MyHoard's names: split 1 is `<prefix>/basebackup.xbstream`, split k >= 2 is
//! `<prefix>/basebackup.xbstream.<k, three digits or more>`; the names stay even when the stream
//! is a tar archive. Each split holds at most `split_size` bytes of the raw stream and is
//! compressed and encrypted on its own, so each can be fetched and checked on its own. Unlike
//! MyHoard, a stream whose length is a multiple of the split size gets no empty last split:
//! the next split starts only once there is a byte to put in it.

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Error;
use crate::pipeline::{self, Encoding, PublicKey};
use crate::storage::{self, ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage};

/// The object name of split 1; later splits append `.002`, `.003`, ...
pub const FIRST_SPLIT_NAME: &str = "basebackup.xbstream";

/// The key of split `index` (1-based) of the snapshot under `key_prefix` (`<site>/<stream_id>`).
pub fn split_key(key_prefix: &str, index: u32) -> String {
    let prefix = key_prefix.trim_end_matches('/');
    if index <= 1 {
        format!("{prefix}/{FIRST_SPLIT_NAME}")
    } else {
        format!("{prefix}/{FIRST_SPLIT_NAME}.{index:03}")
    }
}

/// Where a split upload ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadedSplits {
    pub number_of_splits: u32,
    /// Bytes of the raw stream.
    pub original_bytes: u64,
    /// Bytes stored, over all splits.
    pub stored_bytes: u64,
}

/// Stores everything `stream` yields as splits of at most `split_size` raw bytes (`None`: one
/// object), each with `metadata`. `on_split` hears of every split stored. An empty stream is
/// an error: every snapshot tool writes something.
pub fn upload_splits(
    stream: &mut (dyn BufRead + Send),
    storage: &dyn ObjectStorage,
    key_prefix: &str,
    split_size: Option<u64>,
    metadata: &Metadata,
    encoding: &Encoding<'_, PublicKey>,
    on_split: &dyn Fn(u32),
) -> Result<UploadedSplits, Error> {
    let split_size = split_size.filter(|size| *size > 0);
    let mut uploaded = UploadedSplits::default();
    loop {
        let index = uploaded.number_of_splits + 1;
        // Peek, so that no split is ever empty.
        let more = stream
            .fill_buf()
            .map_err(|source| Error::ReadStream { source })?;
        if more.is_empty() {
            break;
        }
        let key = split_key(key_prefix, index);
        // `Encoding` is `Copy` only for `Copy` keys; this one borrows its key.
        let encoding = Encoding {
            compression: encoding.compression,
            key: encoding.key,
        };
        let stats = match split_size {
            Some(size) => {
                let mut split = (&mut *stream).take(size);
                pipeline::upload(storage, &key, &mut split, metadata, encoding)
            }
            None => {
                let mut whole: &mut (dyn BufRead + Send) = &mut *stream;
                pipeline::upload(storage, &key, &mut whole, metadata, encoding)
            }
        }
        .map_err(|source| Error::Upload { key, source })?;
        uploaded.number_of_splits = index;
        uploaded.original_bytes += stats.original_bytes;
        uploaded.stored_bytes += stats.stored_bytes;
        on_split(index);
        if split_size.is_none() {
            break;
        }
    }
    if uploaded.number_of_splits == 0 {
        return Err(Error::EmptyStream);
    }
    Ok(uploaded)
}

/// Reads through to `inner`, counting bytes, and fails once `cancel` is set, so a transfer
/// stops at its next read.
pub struct CountingReader<'a, R> {
    pub inner: R,
    pub count: &'a AtomicU64,
    pub cancel: &'a AtomicBool,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Writes through to `inner`, counting bytes, and fails once `cancel` is set.
pub struct CountingWriter<'a, W> {
    pub inner: W,
    pub count: &'a AtomicU64,
    pub cancel: &'a AtomicBool,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An [`ObjectStorage`] that counts the bytes going into and out of the storage behind it, so
/// progress can report stored bytes while a split is still being sent.
pub struct MeteredStorage<'a> {
    pub inner: &'a dyn ObjectStorage,
    pub stored: &'a AtomicU64,
    pub fetched: &'a AtomicU64,
}

impl MeteredStorage<'_> {
    fn counting_writer<'w>(
        &'w self,
        out: &'w mut (dyn Write + Send),
    ) -> CountingWriter<'w, &'w mut (dyn Write + Send)> {
        CountingWriter {
            inner: out,
            count: self.fetched,
            cancel: &NEVER,
        }
    }
}

/// A cancel flag that is never set, for counters that must not stop anything themselves.
static NEVER: AtomicBool = AtomicBool::new(false);

impl ObjectStorage for MeteredStorage<'_> {
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> storage::Result<u64> {
        let mut body = CountingReader {
            inner: body,
            count: self.stored,
            cancel: &NEVER,
        };
        self.inner.put(key, &mut body, metadata)
    }

    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn Write + Send),
    ) -> storage::Result<u64> {
        self.inner
            .get_range(key, start, end, &mut self.counting_writer(out))
    }

    fn get_from(
        &self,
        key: &str,
        offset: u64,
        out: &mut (dyn Write + Send),
    ) -> storage::Result<u64> {
        self.inner
            .get_from(key, offset, &mut self.counting_writer(out))
    }

    fn get(&self, key: &str, out: &mut (dyn Write + Send)) -> storage::Result<u64> {
        self.inner.get(key, &mut self.counting_writer(out))
    }

    fn head(&self, key: &str) -> storage::Result<ObjectInfo> {
        self.inner.head(key)
    }

    fn list(&self, prefix: &str, options: ListOptions) -> storage::Result<Listing> {
        self.inner.list(prefix, options)
    }

    fn delete(&self, key: &str) -> storage::Result<()> {
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufReader;
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::compress::{Algorithm, CompressionSettings};

    fn local_storage(dir: &std::path::Path) -> Arc<dyn ObjectStorage> {
        let config: storage::StorageConfig = serde_json::from_value(serde_json::json!({
            "storage_type": "local",
            "directory": dir,
        }))
        .expect("config");
        storage::open(&config, storage::RetryPolicy::default()).expect("open")
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn encoding() -> Encoding<'static, PublicKey> {
        Encoding {
            compression: CompressionSettings {
                algorithm: Algorithm::Zstd,
                level: 0,
                threads: 0,
            },
            key: None,
        }
    }

    /// Uploads `len` bytes with `split_size` and returns the splits' raw contents.
    fn split_round_trip(len: usize, split_size: Option<u64>) -> (UploadedSplits, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let original = data(len);
        let mut metadata = Metadata::new();
        metadata.insert("json".into(), "{\"uploaded_from\": 1}".into());
        let seen = std::sync::Mutex::new(Vec::new());
        // A small buffer, so splits cut across buffer refills.
        let mut stream = BufReader::with_capacity(1000, &original[..]);
        let uploaded = upload_splits(
            &mut stream,
            storage.as_ref(),
            "site/stream",
            split_size,
            &metadata,
            &encoding(),
            &|index| seen.lock().expect("lock").push(index),
        )
        .expect("upload");
        let expected_indexes: Vec<u32> = (1..=uploaded.number_of_splits).collect();
        assert_eq!(*seen.lock().expect("lock"), expected_indexes);
        let mut splits = Vec::new();
        for index in 1..=uploaded.number_of_splits {
            let key = split_key("site/stream", index);
            let info = storage.head(&key).expect("head");
            assert_eq!(info.metadata.as_ref(), Some(&metadata), "{key}");
            let mut back = Vec::new();
            pipeline::download(storage.as_ref(), &key, &mut back, Algorithm::Zstd, None)
                .expect("download");
            splits.push(back);
        }
        assert!(
            storage
                .head(&split_key("site/stream", uploaded.number_of_splits + 1))
                .is_err(),
            "no split past the last"
        );
        assert_eq!(splits.concat(), original);
        assert_eq!(uploaded.original_bytes, len as u64);
        (uploaded, splits)
    }

    #[test]
    fn split_keys_follow_myhoard() {
        assert_eq!(split_key("s/x", 1), "s/x/basebackup.xbstream");
        assert_eq!(split_key("s/x/", 2), "s/x/basebackup.xbstream.002");
        assert_eq!(split_key("s/x", 1000), "s/x/basebackup.xbstream.1000");
    }

    #[test]
    fn no_split_size_is_one_object() {
        let (uploaded, splits) = split_round_trip(25_000, None);
        assert_eq!(uploaded.number_of_splits, 1);
        assert_eq!(splits[0].len(), 25_000);
    }

    #[test]
    fn splits_hold_at_most_split_size() {
        let (uploaded, splits) = split_round_trip(25_000, Some(10_000));
        assert_eq!(uploaded.number_of_splits, 3);
        let sizes: Vec<usize> = splits.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_000]);
    }

    #[test]
    fn exact_multiple_leaves_no_empty_split() {
        let (uploaded, splits) = split_round_trip(30_000, Some(10_000));
        assert_eq!(uploaded.number_of_splits, 3);
        assert!(splits.iter().all(|split| split.len() == 10_000));
    }

    #[test]
    fn zero_split_size_means_one_object() {
        let (uploaded, _) = split_round_trip(5_000, Some(0));
        assert_eq!(uploaded.number_of_splits, 1);
    }

    #[test]
    fn empty_stream_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let err = upload_splits(
            &mut &b""[..],
            storage.as_ref(),
            "s/x",
            Some(10),
            &Metadata::new(),
            &encoding(),
            &|_| {},
        )
        .expect_err("empty");
        assert!(matches!(err, Error::EmptyStream), "{err}");
    }

    #[test]
    fn metered_storage_counts_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let stored = AtomicU64::new(0);
        let fetched = AtomicU64::new(0);
        let metered = MeteredStorage {
            inner: storage.as_ref(),
            stored: &stored,
            fetched: &fetched,
        };
        let size = metered
            .put("k", &mut &data(5000)[..], &Metadata::new())
            .expect("put");
        assert_eq!(stored.load(Ordering::Relaxed), size);
        let mut out = Vec::new();
        metered.get("k", &mut out).expect("get");
        assert_eq!(fetched.load(Ordering::Relaxed), size);
    }

    #[test]
    fn counting_reader_stops_when_cancelled() {
        let count = AtomicU64::new(0);
        let cancel = AtomicBool::new(false);
        let source = data(100);
        let mut reader = CountingReader {
            inner: &source[..],
            count: &count,
            cancel: &cancel,
        };
        let mut buf = [0u8; 40];
        assert_eq!(reader.read(&mut buf).expect("read"), 40);
        cancel.store(true, Ordering::Relaxed);
        assert!(reader.read(&mut buf).is_err());
        assert_eq!(count.load(Ordering::Relaxed), 40);
    }
}

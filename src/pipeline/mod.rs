//! The transfer pipeline: read → compress → encrypt → store, and fetch → decrypt → decompress →
//! write, as `std::io` adapters.
//!
//! Each direction runs on three threads joined by bounded [`pipe`]s: on upload, reading the
//! source, compression, and encryption plus the storage request; on download, the storage
//! request plus decryption, decompression, and writing the output. Compression and
//! decompression are the expensive stages, so the cipher, the MAC and the I/O at either end
//! (the kernel's copies, a child process that is slow to write or to read) run beside them
//! rather than in their way. Memory stays bounded by the pipe depths and the storage part size
//! whatever the object size.
//!
//! Runs on the calling thread (an uploader or downloader, or an operator command) plus two
//! scoped helper threads per transfer. Errors come back typed, saying which stage failed; when
//! an encrypted object fails its integrity check, that is the error reported, whatever else
//! broke downstream of the garbage.

pub mod compress;
pub mod encrypt;
mod parallel_snappy;
pub mod pipe;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::storage::{self, Metadata, ObjectStorage};
pub use compress::{Algorithm, CompressWriter, CompressionSettings, DecompressReader};
pub use encrypt::{DecryptWriter, EncryptReader, PrivateKey, PublicKey};
use pipe::CopyError;

/// Bytes per chunk moved between two threads of a transfer.
const PIPE_CHUNK: usize = 1 << 20;
/// Chunks in flight between the (de)compression and the cipher and storage.
const PIPE_DEPTH: usize = 4;
/// Chunks in flight between the source or the output and the (de)compression: reading and
/// writing are steady and quick next to compression, so a chunk ahead is enough, and memory
/// is better left to compression threads.
const EDGE_PIPE_DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the source: {0}")]
    Source(io::Error),
    #[error("writing the output: {0}")]
    Sink(io::Error),
    #[error("{0}")]
    Storage(storage::Error),
    #[error("{0}")]
    Encryption(encrypt::Error),
    #[error("{algorithm} stream: {source}")]
    Compression {
        algorithm: Algorithm,
        source: io::Error,
    },
    #[error("pipeline thread panicked")]
    Panicked,
}

/// Sizes of one transfer: `original` is the plaintext, `stored` what the object holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    pub original_bytes: u64,
    pub stored_bytes: u64,
}

/// How an object's bytes are encoded: its compression and, when encrypted, the key.
#[derive(Debug, Clone, Copy)]
pub struct Encoding<'a, K> {
    pub compression: CompressionSettings,
    pub key: Option<&'a K>,
}

/// Compresses, encrypts and stores everything `source` yields under `key`.
///
/// Three threads: reading the source, compression, and encryption plus the storage request
/// (the calling thread). Reading has a cost of its own (the kernel's copy out of a file or a
/// child's pipe, and waiting for that child), which on the compressing thread would slow the
/// expensive stage.
pub fn upload(
    storage: &dyn ObjectStorage,
    key: &str,
    source: &mut (dyn Read + Send),
    metadata: &Metadata,
    encoding: Encoding<'_, PublicKey>,
) -> Result<TransferStats, Error> {
    let (source_writer, source_reader) = pipe::pipe(PIPE_CHUNK, EDGE_PIPE_DEPTH);
    let (compressed_writer, compressed_reader) = pipe::pipe(PIPE_CHUNK, PIPE_DEPTH);
    let compression = encoding.compression;
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("read".into())
            .spawn_scoped(scope, move || read_source(source, source_writer))
            .and_then(|reader| {
                std::thread::Builder::new()
                    .name("compress".into())
                    .spawn_scoped(scope, move || {
                        compress(source_reader, &compression, compressed_writer)
                    })
                    .map(|compressor| (reader, compressor))
            });
        let (reader, compressor) = match spawned {
            Ok(handles) => handles,
            Err(err) => return Err(Error::Source(err)),
        };
        let stored = match encoding.key {
            Some(public_key) => {
                let mut body = EncryptReader::new(compressed_reader, public_key);
                storage.put(key, &mut body, metadata)
            }
            None => {
                let mut body = compressed_reader;
                storage.put(key, &mut body, metadata)
            }
        };
        let compressed = compressor.join().map_err(|_| Error::Panicked)?;
        let read = reader.join().map_err(|_| Error::Panicked)?;
        // When several failed, the stage that failed first is the cause: a source that broke
        // breaks the compression's input and then the put's, and a put that broke makes the
        // compression's writes fail and then the reading's.
        match (read, compressed, stored) {
            (Ok(original), Ok(()), Ok(stored)) => Ok(TransferStats {
                original_bytes: original,
                stored_bytes: stored,
            }),
            (Err(CopyError::Outside(err)), _, _) => Err(Error::Source(err)),
            (_, _, Err(err)) => Err(Error::Storage(err)),
            (_, Err(err), _) => Err(err),
            // The compression stopped reading only by failing: covered above.
            (Err(CopyError::Pipe(err)), Ok(()), Ok(_)) => Err(Error::Source(err)),
        }
    })
}

/// The reading thread: everything `source` yields into `pipe`; returns its size.
fn read_source(
    source: &mut (dyn Read + Send),
    mut pipe: pipe::PipeWriter,
) -> Result<u64, CopyError> {
    let total = pipe.read_all_from(source)?;
    pipe.finish().map_err(CopyError::Pipe)?;
    Ok(total)
}

/// The compression thread: compresses what `source` carries into `compressed`.
fn compress(
    mut source: pipe::PipeReader,
    settings: &CompressionSettings,
    compressed: pipe::PipeWriter,
) -> Result<(), Error> {
    let algorithm = settings.algorithm;
    let compression_error = |source| Error::Compression { algorithm, source };
    let mut writer = CompressWriter::new(compressed, settings).map_err(compression_error)?;
    source.write_all_to(&mut writer).map_err(|err| match err {
        // The reading thread failed, and it reports why.
        CopyError::Pipe(err) => Error::Source(err),
        CopyError::Outside(err) => compression_error(err),
    })?;
    writer
        .finish()
        .map_err(compression_error)?
        .finish()
        .map_err(compression_error)
}

/// Stops a download once the output has failed: no point fetching what cannot be written.
struct StopWhen<'a, W> {
    inner: W,
    stop: &'a AtomicBool,
}

impl<W: Write> Write for StopWhen<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "output failed"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fetches `key`, decrypts and decompresses it into `out`.
///
/// Three threads: the fetch and decryption, the decompression (the calling thread), and the
/// output. Writing the output has a cost of its own (the kernel's copy into a file or a child's
/// pipe, and waiting for that child), which on the decompressing thread would slow the
/// expensive stage.
///
/// On an encrypted object, `out` has received unauthenticated bytes when this fails: callers
/// write to a temporary file and publish it only on success.
pub fn download(
    storage: &dyn ObjectStorage,
    key: &str,
    out: &mut (dyn Write + Send),
    algorithm: Algorithm,
    private_key: Option<&PrivateKey>,
) -> Result<TransferStats, Error> {
    let (fetched_writer, fetched_reader) = pipe::pipe(PIPE_CHUNK, PIPE_DEPTH);
    let (plain_writer, plain_reader) = pipe::pipe(PIPE_CHUNK, EDGE_PIPE_DEPTH);
    let sink_failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sink_failed = &sink_failed;
        let spawned = std::thread::Builder::new()
            .name("fetch".into())
            .spawn_scoped(scope, move || {
                fetch(storage, key, fetched_writer, private_key, sink_failed)
            })
            .and_then(|fetcher| {
                std::thread::Builder::new()
                    .name("output".into())
                    .spawn_scoped(scope, move || write_output(plain_reader, out, sink_failed))
                    .map(|writer| (fetcher, writer))
            });
        let (fetcher, writer) = match spawned {
            Ok(handles) => handles,
            Err(err) => return Err(Error::Sink(err)),
        };
        let decompressed = decompress(fetched_reader, algorithm, plain_writer);
        let written = writer.join().map_err(|_| Error::Panicked)?;
        let fetched = fetcher.join().map_err(|_| Error::Panicked)?;
        match (fetched, decompressed, written) {
            (Ok(stored), Ok(original), Ok(())) => Ok(TransferStats {
                original_bytes: original,
                stored_bytes: stored,
            }),
            (Err(err @ Error::Encryption(_)), _, _) => Err(err),
            // The output's own failure, not the broken pipe it left the decompression with.
            (_, _, Err(CopyError::Outside(err))) => Err(Error::Sink(err)),
            (Err(Error::Storage(err)), _, _) if err.kind() != storage::ErrorKind::Source => {
                Err(Error::Storage(err))
            }
            (_, Err(err), _) => Err(err),
            (Err(err), Ok(_), _) => Err(err),
            // The output's pipe broke only because the decompression stopped: covered above.
            (Ok(_), Ok(_), Err(CopyError::Pipe(err))) => Err(Error::Sink(err)),
        }
    })
}

/// The fetch thread: the object's bytes, decrypted when `private_key` is given, into `pipe`.
fn fetch(
    storage: &dyn ObjectStorage,
    key: &str,
    pipe: pipe::PipeWriter,
    private_key: Option<&PrivateKey>,
    sink_failed: &AtomicBool,
) -> Result<u64, Error> {
    let pipe = StopWhen {
        inner: pipe,
        stop: sink_failed,
    };
    let Some(private_key) = private_key else {
        let mut pipe = pipe;
        let fetched = storage.get(key, &mut pipe).map_err(Error::Storage)?;
        pipe.inner.finish().map_err(Error::Sink)?;
        return Ok(fetched);
    };
    let mut decrypt = DecryptWriter::new(pipe, private_key);
    let fetched = storage.get(key, &mut decrypt);
    // Integrity first: tampering explains any failure it caused downstream.
    let (pipe, fetched) = match (decrypt.finish().map_err(encrypt::into_error), fetched) {
        (Err(Ok(encryption)), _) => return Err(Error::Encryption(encryption)),
        (_, Err(err)) => return Err(Error::Storage(err)),
        (Err(Err(err)), Ok(_)) => return Err(Error::Sink(err)),
        (Ok(pipe), Ok(fetched)) => (pipe, fetched),
    };
    pipe.inner.finish().map_err(Error::Sink)?;
    Ok(fetched)
}

/// The calling thread's part of a download: decompresses `fetched` into `plain`; returns the
/// decompressed size.
fn decompress(
    fetched: pipe::PipeReader,
    algorithm: Algorithm,
    mut plain: pipe::PipeWriter,
) -> Result<u64, Error> {
    let compression_error = |source| Error::Compression { algorithm, source };
    let mut reader = DecompressReader::new(fetched, algorithm).map_err(compression_error)?;
    let total = plain.read_all_from(&mut reader).map_err(|err| match err {
        CopyError::Outside(source) => compression_error(source),
        // Only the output thread stops reading, and it reports why.
        CopyError::Pipe(err) => Error::Sink(err),
    })?;
    plain.finish().map_err(Error::Sink)?;
    Ok(total)
}

/// The output thread: everything `plain` carries into `out`, then flushes it. A
/// [`CopyError::Pipe`] means the decompression stopped before the end, and it reports why.
fn write_output(
    mut plain: pipe::PipeReader,
    out: &mut (dyn Write + Send),
    sink_failed: &AtomicBool,
) -> Result<(), CopyError> {
    let result = plain
        .write_all_to(out)
        .and_then(|()| out.flush().map_err(CopyError::Outside));
    if matches!(result, Err(CopyError::Outside(_))) {
        // No point fetching what cannot be written: this stops the fetch early, and dropping
        // `plain` stops the decompression. A failed decompression does not stop the fetch: it
        // still authenticates the rest, so tampering is reported as such.
        sink_failed.store(true, Ordering::Relaxed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ErrorKind, ListOptions};

    fn local_storage(dir: &std::path::Path) -> std::sync::Arc<dyn ObjectStorage> {
        let config: storage::StorageConfig = serde_json::from_value(serde_json::json!({
            "storage_type": "local",
            "directory": dir,
        }))
        .expect("config");
        storage::open(&config, storage::RetryPolicy::default()).expect("open")
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| ((i % 253) ^ (i >> 9)) as u8)
            .collect()
    }

    #[test]
    fn round_trip_through_local_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let (public, private) = encrypt::tests::test_keys();
        let original = data();
        for algorithm in [
            Algorithm::Snappy,
            Algorithm::Zstd,
            Algorithm::Lzma,
            Algorithm::None,
        ] {
            for encrypted in [false, true] {
                let compression = CompressionSettings {
                    algorithm,
                    level: 0,
                    threads: 0,
                };
                let key = format!("site/x/{algorithm}-{encrypted}");
                let mut metadata = Metadata::new();
                metadata.insert("json".into(), "{}".into());
                let stats = upload(
                    storage.as_ref(),
                    &key,
                    &mut &original[..],
                    &metadata,
                    Encoding {
                        compression,
                        key: encrypted.then_some(&public),
                    },
                )
                .expect("upload");
                assert_eq!(stats.original_bytes, original.len() as u64);
                let mut back = Vec::new();
                let fetched = download(
                    storage.as_ref(),
                    &key,
                    &mut back,
                    algorithm,
                    encrypted.then_some(&private),
                )
                .expect("download");
                assert_eq!(fetched.stored_bytes, stats.stored_bytes, "{key}");
                assert!(back == original, "{key} round trip");
            }
        }
        let listing = storage
            .list(
                "site/x/",
                ListOptions {
                    deep: false,
                    with_metadata: true,
                },
            )
            .expect("list");
        assert_eq!(listing.objects.len(), 8);
    }

    #[test]
    fn failing_source_fails_upload_and_leaves_nothing() {
        struct Failing(u32);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk read error"));
                }
                self.0 -= 1;
                buf.fill(7);
                Ok(buf.len())
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let err = upload(
            storage.as_ref(),
            "k",
            &mut Failing(20),
            &Metadata::new(),
            Encoding::<PublicKey> {
                compression: CompressionSettings::default(),
                key: None,
            },
        )
        .expect_err("must fail");
        assert!(matches!(err, Error::Source(_)), "{err}");
        let head = storage.head("k").expect_err("no object");
        assert_eq!(head.kind(), ErrorKind::NotFound);
    }

    /// A sink that takes `room` bytes, then fails as a full disk does.
    struct FullDisk {
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn upload_zstd(
        storage: &dyn ObjectStorage,
        key: &str,
        data: &[u8],
        public: Option<&PublicKey>,
    ) {
        let compression = CompressionSettings {
            algorithm: Algorithm::Zstd,
            level: 0,
            threads: 0,
        };
        upload(
            storage,
            key,
            &mut &data[..],
            &Metadata::new(),
            Encoding {
                compression,
                key: public,
            },
        )
        .expect("upload");
    }

    #[test]
    fn a_failing_output_is_reported_as_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let (public, private) = encrypt::tests::test_keys();
        upload_zstd(storage.as_ref(), "k", &data(), Some(&public));
        // Past the first chunks, so the decompression is blocked on a full pipe when it breaks.
        let mut sink = FullDisk { room: 2_500_000 };
        let err = download(
            storage.as_ref(),
            "k",
            &mut sink,
            Algorithm::Zstd,
            Some(&private),
        )
        .expect_err("the output fails");
        match err {
            Error::Sink(err) => assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}"),
            other => panic!("expected the output's error, got {other}"),
        }
    }

    #[test]
    fn a_corrupt_stream_is_a_compression_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        upload_zstd(storage.as_ref(), "k", &data(), None);
        let path = dir.path().join("k");
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes.truncate(middle);
        std::fs::write(&path, &bytes).expect("write");
        let mut out = Vec::new();
        let err = download(storage.as_ref(), "k", &mut out, Algorithm::Zstd, None)
            .expect_err("truncated");
        assert!(
            matches!(
                err,
                Error::Compression {
                    algorithm: Algorithm::Zstd,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tampered_object_is_an_integrity_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = local_storage(dir.path());
        let (public, private) = encrypt::tests::test_keys();
        let compression = CompressionSettings {
            algorithm: Algorithm::Zstd,
            level: 0,
            threads: 0,
        };
        upload(
            storage.as_ref(),
            "k",
            &mut &data()[..],
            &Metadata::new(),
            Encoding {
                compression,
                key: Some(&public),
            },
        )
        .expect("upload");
        let path = dir.path().join("k");
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&path, &bytes).expect("write");
        let err = download(
            storage.as_ref(),
            "k",
            &mut io::sink(),
            Algorithm::Zstd,
            Some(&private),
        )
        .expect_err("tampered");
        assert!(
            matches!(err, Error::Encryption(encrypt::Error::IntegrityCheckFailed)),
            "{err}"
        );
    }
}

//! The transfer pipeline: read → compress → encrypt → store, and fetch → decrypt → decompress →
//! write, as `std::io` adapters.
//!
//! Each direction runs on two threads joined by a bounded [`pipe`]: on upload, compression on
//! one and encryption plus the storage request on the other; on download, the storage request
//! plus decryption on one and decompression plus the output on the other. Compression and
//! decompression are the expensive stages, so the cipher, the MAC and the I/O hide behind them,
//! and memory stays bounded by the pipe depth and the storage part size whatever the object size.
//!
//! Runs on the calling thread (an uploader or downloader, or an operator command) plus one
//! scoped helper thread per transfer. Errors come back typed, saying which stage failed; when
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

/// Bytes per chunk moved between the two threads of a transfer.
const PIPE_CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
const PIPE_DEPTH: usize = 4;

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

/// Copies with a large buffer, telling a failing reader from a failing writer.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(reader: &mut dyn Read, writer: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buffer = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(CopyError::Read(err)),
        };
        writer.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Compresses, encrypts and stores everything `source` yields under `key`.
pub fn upload(
    storage: &dyn ObjectStorage,
    key: &str,
    source: &mut (dyn Read + Send),
    metadata: &Metadata,
    encoding: Encoding<'_, PublicKey>,
) -> Result<TransferStats, Error> {
    let (pipe_writer, pipe_reader) = pipe::pipe(PIPE_CHUNK, PIPE_DEPTH);
    let algorithm = encoding.compression.algorithm;
    std::thread::scope(|scope| {
        let compressor = std::thread::Builder::new()
            .name("compress".into())
            .spawn_scoped(scope, move || -> Result<u64, Error> {
                let compression_error = |source| Error::Compression { algorithm, source };
                let mut writer = CompressWriter::new(pipe_writer, &encoding.compression)
                    .map_err(compression_error)?;
                let original = copy(source, &mut writer).map_err(|err| match err {
                    CopyError::Read(err) => Error::Source(err),
                    CopyError::Write(err) => compression_error(err),
                })?;
                writer
                    .finish()
                    .map_err(compression_error)?
                    .finish()
                    .map_err(compression_error)?;
                Ok(original)
            });
        let compressor = match compressor {
            Ok(handle) => handle,
            Err(err) => return Err(Error::Source(err)),
        };
        let stored = match encoding.key {
            Some(public_key) => {
                let mut body = EncryptReader::new(pipe_reader, public_key);
                storage.put(key, &mut body, metadata)
            }
            None => {
                let mut body = pipe_reader;
                storage.put(key, &mut body, metadata)
            }
        };
        // When both failed, the stage that failed first is the cause: a source that broke
        // makes the put fail, and a put that broke makes the compressor's writes fail.
        let compressed = compressor.join().map_err(|_| Error::Panicked)?;
        match (compressed, stored) {
            (Ok(original), Ok(stored)) => Ok(TransferStats {
                original_bytes: original,
                stored_bytes: stored,
            }),
            (Err(err @ Error::Source(_)), _) => Err(err),
            (_, Err(err)) => Err(Error::Storage(err)),
            (Err(err), Ok(_)) => Err(err),
        }
    })
}

/// Marks whether the final writer failed, so the fetch thread can stop early.
struct SinkWatch<'a> {
    out: &'a mut (dyn Write + Send),
    failed: &'a AtomicBool,
}

impl Write for SinkWatch<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out
            .write(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out
            .flush()
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
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
/// On an encrypted object, `out` has received unauthenticated bytes when this fails: callers
/// write to a temporary file and publish it only on success.
pub fn download(
    storage: &dyn ObjectStorage,
    key: &str,
    out: &mut (dyn Write + Send),
    algorithm: Algorithm,
    private_key: Option<&PrivateKey>,
) -> Result<TransferStats, Error> {
    let (pipe_writer, pipe_reader) = pipe::pipe(PIPE_CHUNK, PIPE_DEPTH);
    let sink_failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sink_failed = &sink_failed;
        let fetcher = std::thread::Builder::new()
            .name("fetch".into())
            .spawn_scoped(scope, move || -> Result<u64, Error> {
                let pipe_writer = StopWhen {
                    inner: pipe_writer,
                    stop: sink_failed,
                };
                let Some(private_key) = private_key else {
                    let mut pipe_writer = pipe_writer;
                    let fetched = storage.get(key, &mut pipe_writer).map_err(Error::Storage)?;
                    pipe_writer.inner.finish().map_err(Error::Sink)?;
                    return Ok(fetched);
                };
                let mut decrypt = DecryptWriter::new(pipe_writer, private_key);
                let fetched = storage.get(key, &mut decrypt);
                // Integrity first: tampering explains any failure it caused downstream.
                let (writer, fetched) =
                    match (decrypt.finish().map_err(encrypt::into_error), fetched) {
                        (Err(Ok(encryption)), _) => return Err(Error::Encryption(encryption)),
                        (_, Err(err)) => return Err(Error::Storage(err)),
                        (Err(Err(err)), Ok(_)) => return Err(Error::Sink(err)),
                        (Ok(writer), Ok(fetched)) => (writer, fetched),
                    };
                writer.inner.finish().map_err(Error::Sink)?;
                Ok(fetched)
            });
        let fetcher = match fetcher {
            Ok(handle) => handle,
            Err(err) => return Err(Error::Sink(err)),
        };
        let written = DecompressReader::new(pipe_reader, algorithm)
            .map_err(|source| Error::Compression { algorithm, source })
            .and_then(|mut reader| {
                let mut sink = SinkWatch {
                    out,
                    failed: sink_failed,
                };
                let copied = copy(&mut reader, &mut sink);
                let flushed = sink.flush();
                match (copied, flushed) {
                    (Ok(n), Ok(())) => Ok(n),
                    (Err(CopyError::Write(err)), _) | (Ok(_), Err(err)) => Err(Error::Sink(err)),
                    (Err(CopyError::Read(source)), _) => {
                        Err(Error::Compression { algorithm, source })
                    }
                }
            });
        if matches!(written, Err(Error::Sink(_))) {
            // A failed output stops the fetch early. A failed decompression does not: the fetch
            // thread still authenticates the rest, so tampering is reported as tampering.
            sink_failed.store(true, Ordering::Relaxed);
        }
        let fetched = fetcher.join().map_err(|_| Error::Panicked)?;
        match (fetched, written) {
            (Ok(stored), Ok(original)) => Ok(TransferStats {
                original_bytes: original,
                stored_bytes: stored,
            }),
            (Err(err @ Error::Encryption(_)), _) => Err(err),
            (_, Err(err @ Error::Sink(_))) => Err(err),
            (Err(Error::Storage(err)), _) if err.kind() != storage::ErrorKind::Source => {
                Err(Error::Storage(err))
            }
            (_, Err(err)) => Err(err),
            (Err(err), Ok(_)) => Err(err),
        }
    })
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

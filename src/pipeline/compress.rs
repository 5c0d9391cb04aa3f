//! Compression stages in the formats rohmu writes: snappy framing, zstd frames, xz containers.
//!
//! Uploads compress through [`CompressWriter`] (explicit `finish()` writes the trailer: zstd's
//! end of frame, xz's index and footer, snappy's last chunk). Downloads decompress through
//! [`DecompressReader`], which reads multi-frame zstd and multi-stream xz as rohmu's readers do,
//! and reports a stream that ends mid-frame as an error instead of a silently short result.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::parallel_snappy::ParallelSnappyWriter;

/// A compression algorithm by its MyHoard name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Snappy,
    Zstd,
    Lzma,
    /// Ours: store uncompressed (rohmu's "no algorithm").
    None,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Snappy => "snappy",
            Algorithm::Zstd => "zstd",
            Algorithm::Lzma => "lzma",
            Algorithm::None => "none",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(name: &str) -> Result<Algorithm, String> {
        match name {
            "snappy" => Ok(Algorithm::Snappy),
            "zstd" => Ok(Algorithm::Zstd),
            "lzma" => Ok(Algorithm::Lzma),
            "none" => Ok(Algorithm::None),
            other => Err(format!(
                "unknown compression algorithm {other:?} (expected snappy, zstd, lzma or none)"
            )),
        }
    }
}

/// How to compress: `backup_sites.<site>.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSettings {
    pub algorithm: Algorithm,
    /// 0 means the algorithm's default (zstd 3, xz preset 0), as in MyHoard.
    pub level: i32,
    /// zstd (rohmu's `compression_threads`) and snappy worker threads; 0 compresses on the
    /// calling thread.
    pub threads: u32,
}

impl Default for CompressionSettings {
    fn default() -> CompressionSettings {
        CompressionSettings {
            algorithm: Algorithm::Snappy,
            level: 0,
            threads: 0,
        }
    }
}

/// Compresses what is written to it into `W`.
pub enum CompressWriter<W: Write> {
    // Boxed: the encoder's hash table makes it far larger than the other variants.
    Snappy(Box<snap::write::FrameEncoder<W>>),
    SnappyParallel(ParallelSnappyWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lzma(xz2::write::XzEncoder<W>),
    None(W),
}

impl<W: Write> CompressWriter<W> {
    pub fn new(inner: W, settings: &CompressionSettings) -> io::Result<CompressWriter<W>> {
        Ok(match settings.algorithm {
            Algorithm::Snappy if settings.threads > 0 => CompressWriter::SnappyParallel(
                ParallelSnappyWriter::new(inner, settings.threads as usize)?,
            ),
            Algorithm::Snappy => {
                CompressWriter::Snappy(Box::new(snap::write::FrameEncoder::new(inner)))
            }
            Algorithm::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, settings.level)?;
                if settings.threads > 0 {
                    encoder.multithread(settings.threads)?;
                }
                CompressWriter::Zstd(encoder)
            }
            Algorithm::Lzma => {
                let preset = u32::try_from(settings.level).unwrap_or(0);
                CompressWriter::Lzma(xz2::write::XzEncoder::new(inner, preset))
            }
            Algorithm::None => CompressWriter::None(inner),
        })
    }

    /// Writes the format's trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            CompressWriter::Snappy(encoder) => encoder.into_inner().map_err(snap_finish_error),
            CompressWriter::SnappyParallel(encoder) => encoder.finish(),
            CompressWriter::Zstd(encoder) => encoder.finish(),
            CompressWriter::Lzma(encoder) => encoder.finish(),
            CompressWriter::None(mut inner) => {
                inner.flush()?;
                Ok(inner)
            }
        }
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CompressWriter::Snappy(w) => w.write(buf),
            CompressWriter::SnappyParallel(w) => w.write(buf),
            CompressWriter::Zstd(w) => w.write(buf),
            CompressWriter::Lzma(w) => w.write(buf),
            CompressWriter::None(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            CompressWriter::Snappy(w) => w.write_all(buf),
            CompressWriter::SnappyParallel(w) => w.write_all(buf),
            CompressWriter::Zstd(w) => w.write_all(buf),
            CompressWriter::Lzma(w) => w.write_all(buf),
            CompressWriter::None(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CompressWriter::Snappy(w) => w.flush(),
            CompressWriter::SnappyParallel(w) => w.flush(),
            CompressWriter::Zstd(w) => w.flush(),
            CompressWriter::Lzma(w) => w.flush(),
            CompressWriter::None(w) => w.flush(),
        }
    }
}

/// The error of finishing a snap `FrameEncoder` (its last chunk failed to write), as io::Error.
pub(super) fn snap_finish_error<W>(err: snap::write::IntoInnerError<W>) -> io::Error {
    io::Error::new(err.error().kind(), err.error().to_string())
}

/// Decompresses what it reads from `R`, a buffered reader so that the decoders work straight
/// from its buffer.
pub enum DecompressReader<R: BufRead> {
    Snappy(snap::read::FrameDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Lzma(xz2::bufread::XzDecoder<R>),
    None(R),
}

impl<R: BufRead> DecompressReader<R> {
    pub fn new(inner: R, algorithm: Algorithm) -> io::Result<DecompressReader<R>> {
        Ok(match algorithm {
            Algorithm::Snappy => DecompressReader::Snappy(snap::read::FrameDecoder::new(inner)),
            Algorithm::Zstd => {
                DecompressReader::Zstd(zstd::stream::read::Decoder::with_buffer(inner)?)
            }
            Algorithm::Lzma => {
                DecompressReader::Lzma(xz2::bufread::XzDecoder::new_multi_decoder(inner))
            }
            Algorithm::None => DecompressReader::None(inner),
        })
    }
}

impl<R: BufRead> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = match self {
            DecompressReader::Snappy(r) => r.read(buf),
            DecompressReader::Zstd(r) => r.read(buf),
            DecompressReader::Lzma(r) => r.read(buf),
            DecompressReader::None(r) => r.read(buf),
        };
        result.map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "compressed stream is truncated: it ends in the middle of a frame",
                )
            } else {
                err
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], settings: &CompressionSettings) -> Vec<u8> {
        let mut writer = CompressWriter::new(Vec::new(), settings).expect("create");
        for chunk in data.chunks(7000) {
            writer.write_all(chunk).expect("write");
        }
        writer.finish().expect("finish")
    }

    fn decompress(data: &[u8], algorithm: Algorithm) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        DecompressReader::new(data, algorithm)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| format!("row {i} value {}\n", i * 31 % 977).into_bytes())
            .collect()
    }

    #[test]
    fn round_trip_every_algorithm() {
        let data = sample();
        let cases = [
            (Algorithm::Snappy, 0, 0),
            (Algorithm::Zstd, 0, 0),
            (Algorithm::Zstd, 1, 2),
            (Algorithm::Zstd, 19, 0),
            (Algorithm::Lzma, 0, 0),
            (Algorithm::Lzma, 6, 0),
            (Algorithm::None, 0, 0),
        ];
        for (algorithm, level, threads) in cases {
            let settings = CompressionSettings {
                algorithm,
                level,
                threads,
            };
            let packed = compress(&data, &settings);
            if algorithm != Algorithm::None {
                assert!(packed.len() < data.len() / 2, "{settings:?} compresses");
            }
            assert_eq!(
                decompress(&packed, algorithm).expect("decompress"),
                data,
                "{settings:?}"
            );
            assert_eq!(
                decompress(&compress(b"", &settings), algorithm).expect("empty"),
                b""
            );
        }
    }

    #[test]
    fn stream_magic_matches_rohmu_formats() {
        let cases: [(Algorithm, &[u8]); 3] = [
            (Algorithm::Snappy, b"\xff\x06\x00\x00sNaPpY"),
            (Algorithm::Zstd, b"\x28\xb5\x2f\xfd"),
            (Algorithm::Lzma, b"\xfd7zXZ\x00"),
        ];
        for (algorithm, magic) in cases {
            let settings = CompressionSettings {
                algorithm,
                level: 0,
                threads: 0,
            };
            assert!(
                compress(b"abc", &settings).starts_with(magic),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn concatenated_frames_decode_whole() {
        for algorithm in [Algorithm::Zstd, Algorithm::Lzma, Algorithm::Snappy] {
            let settings = CompressionSettings {
                algorithm,
                level: 0,
                threads: 0,
            };
            let mut joined = compress(b"first,", &settings);
            joined.extend(compress(b"second", &settings));
            assert_eq!(
                decompress(&joined, algorithm).expect("decode"),
                b"first,second",
                "{algorithm}"
            );
        }
    }

    #[test]
    fn truncated_streams_fail() {
        let data = sample();
        for algorithm in [Algorithm::Zstd, Algorithm::Lzma, Algorithm::Snappy] {
            let settings = CompressionSettings {
                algorithm,
                level: 0,
                threads: 0,
            };
            let packed = compress(&data, &settings);
            let cut = &packed[..packed.len() / 2];
            assert!(
                decompress(cut, algorithm).is_err(),
                "{algorithm} must notice the cut"
            );
        }
    }

    #[test]
    fn algorithm_names() {
        for algorithm in [
            Algorithm::Snappy,
            Algorithm::Zstd,
            Algorithm::Lzma,
            Algorithm::None,
        ] {
            assert_eq!(algorithm.name().parse::<Algorithm>(), Ok(algorithm));
        }
        assert!("gzip".parse::<Algorithm>().is_err());
    }
}

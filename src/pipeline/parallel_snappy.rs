//! Snappy framing compressed on several threads, byte for byte the stream one `snap`
//! `FrameEncoder` writes.
//!
//! The framing format compresses every 64 KiB of input as a chunk of its own, and a
//! `FrameEncoder` cuts its input at 64 KiB multiples from the start of the stream. So blocks of
//! whole chunks can be compressed apart: each worker runs a `FrameEncoder` over one 1 MiB block,
//! and the writer concatenates the results in block order, dropping the stream identifier
//! that every encoder but the first starts with. A single encoder tops out at 350-400 MB/s on
//! the machines here (its raw compression alone at about 500 MB/s), while encryption runs at
//! over 1 GB/s of compressed data.
//!
//! Memory: at most `2 * threads` blocks are in flight, each 1 MiB in and at most as much out.

use std::collections::VecDeque;
use std::io::{self, Write};

use crossbeam_channel::{Receiver, Sender};

use super::compress::snap_finish_error;

/// Uncompressed bytes per chunk of the framing format.
const CHUNK: usize = 64 << 10;
/// Bytes per block handed to a worker: whole chunks, so the chunk boundaries do not move.
const BLOCK: usize = 16 * CHUNK;
/// The framing format's stream identifier chunk, which every `FrameEncoder` writes first.
const STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// One block for a worker, and where its compressed form goes.
struct Job {
    block: Vec<u8>,
    done: Sender<io::Result<Vec<u8>>>,
}

/// Compresses what is written to it into `W` on `threads` worker threads.
pub struct ParallelSnappyWriter<W: Write> {
    inner: W,
    /// Input not yet handed to a worker (less than one block).
    block: Vec<u8>,
    jobs: Sender<Job>,
    /// Blocks handed out, oldest first: they are written to `inner` in this order.
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    wrote_identifier: bool,
}

impl<W: Write> ParallelSnappyWriter<W> {
    /// Starts `threads` workers (at least one). They end when the writer is finished or dropped.
    pub fn new(inner: W, threads: usize) -> io::Result<ParallelSnappyWriter<W>> {
        let threads = threads.max(1);
        let max_in_flight = 2 * threads;
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(max_in_flight);
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("snappy-{index}"))
                .spawn(move || {
                    for job in queue {
                        // The writer may be gone (dropped after an error): nothing to report to.
                        let _ = job.done.send(compress_block(&job.block));
                    }
                })?;
        }
        Ok(ParallelSnappyWriter {
            inner,
            block: Vec::with_capacity(BLOCK),
            jobs,
            in_flight: VecDeque::with_capacity(max_in_flight),
            max_in_flight,
            wrote_identifier: false,
        })
    }

    /// Compresses what is left, writes everything in order and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.inner)
    }

    /// Hands the buffered input (if any) to a worker, first writing out the oldest block when
    /// the most allowed are in flight.
    fn dispatch_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        if self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let (done, result) = crossbeam_channel::bounded(1);
        self.jobs
            .send(Job { block, done })
            .map_err(|_| workers_gone())?;
        self.in_flight.push_back(result);
        Ok(())
    }

    /// Waits for the oldest block in flight and writes it.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let compressed = result.recv().map_err(|_| workers_gone())??;
        let body = if self.wrote_identifier {
            compressed.strip_prefix(STREAM_IDENTIFIER).ok_or_else(|| {
                io::Error::other("snappy encoder output does not start with the stream identifier")
            })?
        } else {
            &compressed[..]
        };
        self.inner.write_all(body)?;
        self.wrote_identifier = true;
        Ok(())
    }
}

impl<W: Write> Write for ParallelSnappyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..taken]);
        if self.block.len() == BLOCK {
            self.dispatch_block()?;
        }
        Ok(taken)
    }

    /// Writes out everything written so far, the partial block as a short chunk (as a
    /// `FrameEncoder` does on flush).
    fn flush(&mut self) -> io::Result<()> {
        self.dispatch_block()?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()
    }
}

fn compress_block(block: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = snap::write::FrameEncoder::new(Vec::with_capacity(
        STREAM_IDENTIFIER.len() + snap::raw::max_compress_len(block.len()),
    ));
    encoder.write_all(block)?;
    encoder.into_inner().map_err(snap_finish_error)
}

fn workers_gone() -> io::Error {
    io::Error::other("a snappy compression thread stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data with compressible and incompressible stretches, so both chunk types occur.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (i / 100_000) % 3 == 0 {
                    state as u8
                } else {
                    b"order shipped to Helsinki "[i % 26]
                }
            })
            .collect()
    }

    fn single_thread(data: &[u8]) -> Vec<u8> {
        let mut encoder = snap::write::FrameEncoder::new(Vec::new());
        encoder.write_all(data).expect("compressing");
        encoder.into_inner().expect("finishing")
    }

    fn parallel(data: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut writer = ParallelSnappyWriter::new(Vec::new(), threads).expect("starting workers");
        for piece in data.chunks(write_size.max(1)) {
            writer.write_all(piece).expect("compressing");
        }
        writer.finish().expect("finishing")
    }

    #[test]
    fn writes_the_bytes_one_frame_encoder_writes() {
        let cases = [
            // (input length, threads, write size)
            (0, 2, 1000),
            (1, 1, 1),
            (CHUNK - 1, 2, 4096),
            (CHUNK, 3, CHUNK),
            (BLOCK, 2, 100_000),
            (BLOCK + 1, 2, BLOCK),
            (7 * BLOCK + 12_345, 4, 256 << 10),
            (3 * BLOCK, 1, 3 * BLOCK),
        ];
        for (len, threads, write_size) in cases {
            let data = sample(len);
            assert!(
                parallel(&data, threads, write_size) == single_thread(&data),
                "len {len}, threads {threads}, writes of {write_size}: output differs"
            );
        }
    }

    #[test]
    fn a_flush_mid_stream_still_decodes_to_the_input() {
        let data = sample(2 * BLOCK + 777);
        let mut writer = ParallelSnappyWriter::new(Vec::new(), 2).expect("starting workers");
        writer.write_all(&data[..BLOCK / 3]).expect("compressing");
        writer.flush().expect("flushing");
        writer.write_all(&data[BLOCK / 3..]).expect("compressing");
        let compressed = writer.finish().expect("finishing");
        let mut decoded = Vec::new();
        io::copy(
            &mut snap::read::FrameDecoder::new(&compressed[..]),
            &mut decoded,
        )
        .expect("decoding");
        assert!(decoded == data, "the decoded stream differs from the input");
    }

    #[test]
    fn a_failing_output_is_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut writer = ParallelSnappyWriter::new(Broken, 2).expect("starting workers");
        let data = sample(5 * BLOCK);
        let written = writer
            .write_all(&data)
            .and_then(|()| writer.finish().map(|_| ()));
        let err = written.expect_err("the broken output went unnoticed");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}

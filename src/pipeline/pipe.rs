//! A bounded in-memory pipe between two pipeline threads: a `Write` end and a `Read` end.
//!
//! It lets one stage (compression) run on its own thread while the next (encryption and
//! upload) runs on another, with at most `depth` chunks in flight, so memory stays bounded
//! whatever the object size. The reader sees end-of-file only when the writer called
//! `finish()`; a writer dropped without it (its thread failed) makes the reader fail, so a
//! failed stage can never pass for a short but complete stream.

use std::io::{self, BufRead, Read, Write};

use crossbeam_channel::{Receiver, Sender, bounded};

enum Message {
    Data(Vec<u8>),
    End,
}

pub struct PipeWriter {
    /// The chunk being filled: always `chunk_size` long, initialized, so that a reader can
    /// read straight into it; `filled` bytes of it are data.
    buffer: Vec<u8>,
    filled: usize,
    chunk_size: usize,
    data: Sender<Message>,
    /// Emptied buffers coming back from the reader, so steady state allocates nothing.
    recycled: Receiver<Vec<u8>>,
}

pub struct PipeReader {
    current: Vec<u8>,
    position: usize,
    data: Receiver<Message>,
    recycle: Sender<Vec<u8>>,
    ended: bool,
}

/// A pipe moving `chunk_size`-byte chunks, at most `depth` of them queued.
pub fn pipe(chunk_size: usize, depth: usize) -> (PipeWriter, PipeReader) {
    let (data_tx, data_rx) = bounded(depth);
    let (recycle_tx, recycle_rx) = bounded(depth + 2);
    (
        PipeWriter {
            buffer: vec![0; chunk_size],
            filled: 0,
            chunk_size,
            data: data_tx,
            recycled: recycle_rx,
        },
        PipeReader {
            current: Vec::new(),
            position: 0,
            data: data_rx,
            recycle: recycle_tx,
            ended: false,
        },
    )
}

/// Why copying between a pipe and something outside it ([`PipeWriter::read_all_from`],
/// [`PipeReader::write_all_to`]) failed.
#[derive(Debug)]
pub enum CopyError {
    /// The source read from, or the sink written to, failed.
    Outside(io::Error),
    /// The pipe's other end is gone.
    Pipe(io::Error),
}

fn reader_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the next pipeline stage stopped reading",
    )
}

impl PipeWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        // A recycled chunk comes back as long as the data it carried, so making it whole
        // again initializes at most the part a short last chunk did not use.
        let mut next = self.recycled.try_recv().unwrap_or_default();
        next.resize(self.chunk_size, 0);
        let mut full = std::mem::replace(&mut self.buffer, next);
        full.truncate(std::mem::take(&mut self.filled));
        self.data
            .send(Message::Data(full))
            .map_err(|_| reader_gone())
    }

    /// Reads `source` to its end straight into the chunks, saving the copy that reading into
    /// a buffer of one's own and writing that would cost; returns how many bytes it read.
    pub fn read_all_from(&mut self, source: &mut dyn Read) -> Result<u64, CopyError> {
        let mut total = 0u64;
        loop {
            let n = match source.read(&mut self.buffer[self.filled..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(CopyError::Outside(err)),
            };
            total += n as u64;
            self.filled += n;
            if self.filled == self.chunk_size {
                self.send_buffer().map_err(CopyError::Pipe)?;
            }
        }
    }

    /// Sends what is buffered and marks the stream complete.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffer()?;
        self.data.send(Message::End).map_err(|_| reader_gone())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.chunk_size - self.filled).min(buf.len());
        self.buffer[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == self.chunk_size {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks go when full; flushing early would only make them smaller.
        Ok(())
    }
}

impl PipeReader {
    /// Makes sure `current` holds unread bytes, unless the stream has ended.
    fn refill(&mut self) -> io::Result<()> {
        while self.position == self.current.len() && !self.ended {
            match self.data.recv() {
                Ok(Message::Data(chunk)) => {
                    // Recycled as it is: the writer reuses its initialized bytes as they are.
                    let done = std::mem::replace(&mut self.current, chunk);
                    self.position = 0;
                    // The writer may be gone or have enough buffers; either way this one is
                    // simply dropped.
                    let _ = self.recycle.try_send(done);
                }
                Ok(Message::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the previous pipeline stage failed before finishing its output",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes everything the pipe carries into `out`, chunk by chunk without copying them.
    /// Does not flush `out`: for a compressor, a flush would end a block early.
    pub fn write_all_to(&mut self, out: &mut dyn Write) -> Result<(), CopyError> {
        loop {
            let chunk = self.fill_buf().map_err(CopyError::Pipe)?;
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            out.write_all(chunk).map_err(CopyError::Outside)?;
            self.consume(n);
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Lets decoders read straight from the chunks, without copying them into a buffer of their own.
impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.refill()?;
        Ok(&self.current[self.position..])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.current.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_everything_in_order() {
        let (mut writer, mut reader) = pipe(10, 2);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let producer = std::thread::spawn(move || {
            for chunk in sent.chunks(33) {
                writer.write_all(chunk)?;
            }
            writer.finish()
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).expect("read");
        producer.join().expect("join").expect("producer");
        assert_eq!(received, data);
    }

    /// A source that returns a few bytes per read, in varying amounts.
    struct Trickle<'a> {
        data: &'a [u8],
        reads: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = (self.reads % 7 + 1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_all_from_and_write_can_be_mixed_across_recycled_chunks() {
        // A depth of 1 recycles every chunk, short ones included: their unused tails must be
        // zeroed afresh and never carried as data.
        let (mut writer, mut reader) = pipe(10, 1);
        let data: Vec<u8> = (1..=5_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let sent = data.clone();
        let producer = std::thread::spawn(move || -> io::Result<()> {
            for (i, part) in sent.chunks(97).enumerate() {
                if i % 2 == 0 {
                    writer.write_all(part)?;
                    continue;
                }
                let mut source = Trickle {
                    data: part,
                    reads: i,
                };
                match writer.read_all_from(&mut source) {
                    Ok(n) => assert_eq!(n, part.len() as u64),
                    Err(CopyError::Outside(err) | CopyError::Pipe(err)) => return Err(err),
                }
            }
            writer.finish()
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).expect("read");
        producer.join().expect("join").expect("producer");
        assert_eq!(received, data);
    }

    #[test]
    fn read_all_from_tells_a_failing_source_from_a_gone_reader() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("bad sector"))
            }
        }
        let (mut writer, reader) = pipe(4, 1);
        match writer.read_all_from(&mut Broken) {
            Err(CopyError::Outside(err)) => assert_eq!(err.to_string(), "bad sector"),
            other => panic!("expected a source error, got {other:?}"),
        }
        drop(reader);
        let mut source: &[u8] = &[1; 64];
        let gone = writer
            .read_all_from(&mut source)
            .expect_err("the reader is gone");
        assert!(
            matches!(&gone, CopyError::Pipe(err) if err.kind() == io::ErrorKind::BrokenPipe),
            "{gone:?}"
        );
    }

    #[test]
    fn write_all_to_tells_a_failing_sink_from_a_failed_writer() {
        // Deep enough for the two chunks and the end mark, as nothing reads while they are sent.
        let (mut writer, mut reader) = pipe(4, 3);
        writer.write_all(b"abcdef").expect("write");
        writer.finish().expect("finish");
        let mut out = Vec::new();
        reader.write_all_to(&mut out).expect("copy");
        assert_eq!(out, b"abcdef");

        let (mut writer, mut reader) = pipe(4, 3);
        writer.write_all(b"abcdef").expect("write");
        drop(writer);
        let err = reader
            .write_all_to(&mut Vec::new())
            .expect_err("unfinished");
        assert!(
            matches!(&err, CopyError::Pipe(err) if err.kind() == io::ErrorKind::BrokenPipe),
            "{err:?}"
        );

        let (mut writer, mut reader) = pipe(4, 3);
        writer.write_all(b"abcdef").expect("write");
        writer.finish().expect("finish");
        let mut full: &mut [u8] = &mut [0u8; 2];
        let err = reader.write_all_to(&mut full).expect_err("sink full");
        assert!(
            matches!(&err, CopyError::Outside(err) if err.kind() == io::ErrorKind::WriteZero),
            "{err:?}"
        );
    }

    #[test]
    fn writer_dropped_without_finish_is_an_error() {
        let (mut writer, mut reader) = pipe(4, 2);
        let producer = std::thread::spawn(move || {
            writer.write_all(b"abcdefgh").expect("write");
            drop(writer);
        });
        let mut received = Vec::new();
        let err = reader.read_to_end(&mut received).expect_err("must fail");
        producer.join().expect("join");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_gone_fails_the_writer() {
        let (mut writer, reader) = pipe(4, 1);
        drop(reader);
        let err = writer.write_all(&[0u8; 64]).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}

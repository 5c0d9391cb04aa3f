//! The part-by-part upload driver shared by the S3, GCS and Azure backends.
//!
//! A body of unknown length is read one part at a time into a single reusable buffer. One byte of
//! read-ahead tells whether the part just read is the last, so a body that is an exact multiple of
//! the part size never produces an empty final part, and a body that fits in one part goes up in a
//! single request. Each part is retried on its own; a failure that outlasts the retries aborts the
//! upload, so no partial object ever becomes visible.

use std::io::Read;

use super::{Error, ErrorKind, Result, RetryPolicy};

/// The backend side of a multipart upload.
pub(crate) trait PartSink {
    /// Backend state of one upload in progress (upload id, part tags, ...).
    type Upload;

    /// Stores a body that fit in one part with a single request.
    fn put_whole(&self, data: &[u8]) -> Result<()>;

    fn begin(&self) -> Result<Self::Upload>;

    /// Stores part `number` (1-based), which starts at byte `offset` of the object. `is_last` is
    /// set on the final part, whose length may be anything from 1 to the part size.
    fn put_part(
        &self,
        upload: &mut Self::Upload,
        number: u32,
        offset: u64,
        data: &[u8],
        is_last: bool,
    ) -> Result<()>;

    /// Makes the object visible. `total` is the object size.
    fn complete(&self, upload: &Self::Upload, total: u64) -> Result<()>;

    /// Discards an unfinished upload. Best effort: failures are the backend's to swallow, the
    /// upload's own error is what the caller must see.
    fn abort(&self, upload: Self::Upload);
}

/// Reads until `buffer` is full or the body ends; returns how many bytes were read.
fn fill(key: &str, body: &mut dyn Read, buffer: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match body.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::new(ErrorKind::Source, "upload", key, err)),
        }
    }
    Ok(filled)
}

/// Uploads `body` through `sink` in parts of `part_size` bytes; returns the object size.
pub(crate) fn upload<S: PartSink>(
    sink: &S,
    key: &str,
    body: &mut dyn Read,
    part_size: usize,
    retry: &RetryPolicy,
) -> Result<u64> {
    // One extra byte holds the read-ahead that tells whether more data follows this part.
    let mut buffer = vec![0u8; part_size + 1];
    let mut len = fill(key, body, &mut buffer)?;
    if len <= part_size {
        retry.run("upload", key, || sink.put_whole(&buffer[..len]))?;
        return Ok(len as u64);
    }

    let mut upload = retry.run("upload", key, || sink.begin())?;
    let mut number = 1u32;
    let mut offset = 0u64;
    let outcome = loop {
        // `buffer[..len]` holds the next part plus, when `len > part_size`, one byte of the part
        // after it.
        let is_last = len <= part_size;
        let part_len = len.min(part_size);
        let sent = retry.run("upload part", key, || {
            sink.put_part(&mut upload, number, offset, &buffer[..part_len], is_last)
        });
        if let Err(err) = sent {
            break Err(err);
        }
        offset += part_len as u64;
        if is_last {
            break Ok(());
        }
        number += 1;
        buffer[0] = buffer[part_size];
        match fill(key, body, &mut buffer[1..]) {
            Ok(n) => len = n + 1,
            Err(err) => break Err(err),
        }
    };
    match outcome {
        Ok(()) => {
            // A retried complete either finds the upload still open or fails cleanly; it never
            // publishes a short object.
            match retry.run("complete upload", key, || sink.complete(&upload, offset)) {
                Ok(()) => Ok(offset),
                Err(err) => {
                    sink.abort(upload);
                    Err(err)
                }
            }
        }
        Err(err) => {
            sink.abort(upload);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::*;

    /// Records the calls the driver makes; fails part uploads a set number of times.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        failures_left: RefCell<u32>,
        failure_kind: Option<ErrorKind>,
    }

    impl PartSink for Recorder {
        type Upload = ();
        fn put_whole(&self, data: &[u8]) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("whole {}", data.len()));
            Ok(())
        }
        fn begin(&self) -> Result<()> {
            self.calls.borrow_mut().push("begin".into());
            Ok(())
        }
        fn put_part(
            &self,
            _: &mut (),
            number: u32,
            offset: u64,
            data: &[u8],
            last: bool,
        ) -> Result<()> {
            if *self.failures_left.borrow() > 0 {
                *self.failures_left.borrow_mut() -= 1;
                let kind = self.failure_kind.unwrap_or(ErrorKind::Transient);
                return Err(Error::new(kind, "put part", "k", "injected"));
            }
            self.calls
                .borrow_mut()
                .push(format!("part {number} @{offset} {} {last}", data.len()));
            Ok(())
        }
        fn complete(&self, _: &(), total: u64) -> Result<()> {
            self.calls.borrow_mut().push(format!("complete {total}"));
            Ok(())
        }
        fn abort(&self, _: ()) {
            self.calls.borrow_mut().push("abort".into());
        }
    }

    fn quick_retry() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn run(len: usize, part: usize) -> Vec<String> {
        let sink = Recorder::default();
        let data = vec![7u8; len];
        let size = upload(&sink, "k", &mut &data[..], part, &quick_retry()).expect("upload");
        assert_eq!(size, len as u64);
        sink.calls.into_inner()
    }

    #[test]
    fn part_boundaries() {
        let cases: [(usize, usize, &[&str]); 5] = [
            (0, 4, &["whole 0"]),
            (1, 4, &["whole 1"]),
            (4, 4, &["whole 4"]),
            (
                8,
                4,
                &[
                    "begin",
                    "part 1 @0 4 false",
                    "part 2 @4 4 true",
                    "complete 8",
                ],
            ),
            (
                9,
                4,
                &[
                    "begin",
                    "part 1 @0 4 false",
                    "part 2 @4 4 false",
                    "part 3 @8 1 true",
                    "complete 9",
                ],
            ),
        ];
        for (len, part, expected) in cases {
            assert_eq!(run(len, part), expected, "len {len} part {part}");
        }
    }

    #[test]
    fn transient_part_failures_are_retried() {
        let sink = Recorder {
            failures_left: RefCell::new(2),
            ..Recorder::default()
        };
        let data = [1u8; 10];
        upload(&sink, "k", &mut &data[..], 4, &quick_retry()).expect("upload");
        assert_eq!(
            sink.calls.borrow().last().map(String::as_str),
            Some("complete 10")
        );
    }

    #[test]
    fn permanent_failure_aborts_without_retry() {
        let sink = Recorder {
            failures_left: RefCell::new(1),
            failure_kind: Some(ErrorKind::PermissionDenied),
            ..Recorder::default()
        };
        let data = [1u8; 10];
        let err = upload(&sink, "k", &mut &data[..], 4, &quick_retry()).expect_err("must fail");
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert_eq!(*sink.calls.borrow(), ["begin", "abort"]);
    }

    #[test]
    fn failing_source_aborts() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk gone"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let sink = Recorder::default();
        let err = upload(&sink, "k", &mut Broken(9), 4, &quick_retry()).expect_err("must fail");
        assert_eq!(err.kind, ErrorKind::Source);
        assert_eq!(
            sink.calls.borrow().last().map(String::as_str),
            Some("abort")
        );
    }
}

//! Retry with capped exponential backoff, as a policy and as a decorator around any backend.
//!
//! Only [`ErrorKind::Transient`] failures are retried. Downloads that fail part way resume from
//! the byte they reached, so the caller's sink sees every byte exactly once. Uploads retry inside
//! the part driver (`multipart.rs`), because a consumed body cannot be replayed from here.

use std::io::{Read, Write};
use std::time::Duration;

use super::{ListOptions, Listing, Metadata, ObjectInfo, ObjectStorage, Result};

/// How often and how patiently to retry a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 8,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before try number `attempt + 1` (so `attempt` starts at 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// Runs `op` until it succeeds, fails permanently, or the attempts run out.
    pub fn run<T>(
        &self,
        operation: &str,
        key: &str,
        mut op: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 1;
        loop {
            match op() {
                Ok(value) => return Ok(value),
                Err(err) if err.kind.is_transient() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    log::warn!(
                        "{operation} {key:?} failed (try {attempt} of {}), retrying in {delay:?}: {err}",
                        self.attempts
                    );
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A backend wrapped so that every operation retries transient failures.
pub struct Retrying {
    inner: Box<dyn ObjectStorage>,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: Box<dyn ObjectStorage>, policy: RetryPolicy) -> Retrying {
        Retrying { inner, policy }
    }
}

/// Counts what passes through, so a resumed download knows where it stood.
struct Counted<'a> {
    out: &'a mut (dyn Write + Send),
    written: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl ObjectStorage for Retrying {
    fn put(&self, key: &str, body: &mut dyn Read, metadata: &Metadata) -> Result<u64> {
        // Backends retry part by part; the body cannot be rewound for a whole retry.
        self.inner.put(key, body, metadata)
    }

    fn get_from(&self, key: &str, offset: u64, out: &mut (dyn Write + Send)) -> Result<u64> {
        let mut counted = Counted { out, written: 0 };
        self.policy.run("download", key, || {
            let resume_at = offset + counted.written;
            self.inner
                .get_from(key, resume_at, &mut counted)
                .map(|_| ())
        })?;
        Ok(counted.written)
    }

    fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        let mut counted = Counted { out, written: 0 };
        self.policy.run("ranged download", key, || {
            let from = start + counted.written;
            if from >= end {
                return Ok(());
            }
            self.inner
                .get_range(key, from, end, &mut counted)
                .map(|_| ())
        })?;
        Ok(counted.written)
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        self.policy.run("head", key, || self.inner.head(key))
    }

    fn list(&self, prefix: &str, options: ListOptions) -> Result<Listing> {
        self.policy
            .run("list", prefix, || self.inner.list(prefix, options))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.policy.run("delete", key, || self.inner.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::storage::{Error, ErrorKind};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let delays: Vec<u64> = (1..=6)
            .map(|n| policy.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(1000));
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        }
    }

    #[test]
    fn retries_transient_until_success_or_exhaustion() {
        let cases = [
            // (failures before success, failure kind, attempts, expected tries, succeeds)
            (2, ErrorKind::Transient, 5, 3, true),
            (9, ErrorKind::Transient, 3, 3, false),
            (1, ErrorKind::PermissionDenied, 5, 1, false),
            (1, ErrorKind::NotFound, 5, 1, false),
            (0, ErrorKind::Transient, 1, 1, true),
        ];
        for (failures, kind, attempts, expected_tries, succeeds) in cases {
            let tries = Cell::new(0);
            let result = quick(attempts).run("op", "k", || {
                tries.set(tries.get() + 1);
                if tries.get() <= failures {
                    Err(Error::new(kind, "op", "k", "injected"))
                } else {
                    Ok(())
                }
            });
            assert_eq!(
                tries.get(),
                expected_tries,
                "{failures} {kind:?} {attempts}"
            );
            assert_eq!(result.is_ok(), succeeds, "{failures} {kind:?} {attempts}");
        }
    }
}

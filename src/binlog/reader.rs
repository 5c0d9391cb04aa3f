//! The streaming binlog reader: frames events, checks every checksum, and turns GTID events and
//! the events that commit them into [`Transaction`]s and a per-file [`BinlogSummary`].
//!
//! Memory is bounded by the read buffer (256 KiB by default) plus, for an event larger than the
//! buffer, the first bytes of it that decoding needs: the file is never loaded whole, and an
//! event of any size streams through the checksum.
//!
//! Every event advances the offset by its length, which must be at least the 19-byte header, so
//! a read always ends; every error names the file and the offset of the event at fault.
//!
//! Checksums are verified a buffer ahead, every complete event in the buffer in one CRC pass
//! (see the `checksum` module), but a damaged event only fails the read when the reader
//! reaches it. Verified events are then interpreted in one loop straight from the buffer:
//! those that only carry a transaction along (rows, table maps) are passed over reading their
//! type, length and time, and those that start, commit or describe something are decoded.
//! Only the first event of each buffer, and events that are not verified yet, go through the
//! per-event framing checks.
//!
//! When only the summary is wanted ([`BinlogReader::finish`], [`read_summary`]), transactions
//! are counted and folded into the GTID ranges but not built; the summary's GTID set is made
//! from those ranges at the end.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::checksum;
use super::event::{
    self, CHECKSUM_LEN, Checksum, FLAG_ARTIFICIAL, Flavor, FormatDescription, GtidEventBody,
    HEADER_LEN, Header, QueryKind,
};
use crate::gtid::{
    Gtid, GtidRange, GtidRangeBuilder, GtidSet, MariadbGtidState, Origin, OriginNumber, Uuid,
};

/// The read buffer size: large enough that reads are few and most events are decoded in place
/// without copying, small enough to stay in a core's L2 cache, where the kernel's copy leaves
/// the bytes the checksum then reads.
pub const DEFAULT_BUFFER_SIZE: usize = 256 << 10;

/// The most of an event kept for decoding when it is larger than the read buffer. A QUERY_EVENT
/// needs its post-header, up to 64 KiB of status variables and the database name before the
/// statement starts; nothing else that is decoded comes near this.
const LARGE_EVENT_PREFIX: usize = 128 << 10;

/// Offset of the low byte of the header's flags.
const FLAGS_OFFSET: usize = 17;

/// The largest format description accepted.
const MAX_FORMAT_DESCRIPTION: usize = 4096;

/// The largest control event (format description, GTID set, rotate) decoded whole.
const MAX_CONTROL_EVENT: usize = 64 << 20;

/// Why a binlog could not be read. Every variant names the file and a byte offset: the event
/// at fault, or where reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading binlog {file} at offset {offset}: {source}", file = file.display())]
    Io {
        file: PathBuf,
        offset: u64,
        source: io::Error,
    },
    /// `found` is the first bytes in hexadecimal.
    #[error("{file} is not a binlog: it starts with {found}, not fe 62 69 6e", file = file.display())]
    BadMagic { file: PathBuf, found: String },
    #[error("binlog {file} is encrypted (at offset {offset}); reading encrypted binlogs is not supported", file = file.display())]
    Encrypted { file: PathBuf, offset: u64 },
    #[error("binlog {file} is truncated at offset {offset}: {what}", file = file.display())]
    Truncated {
        file: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("binlog {file}, event at offset {offset}: length {length} is below the minimum {minimum}", file = file.display())]
    EventLength {
        file: PathBuf,
        offset: u64,
        length: u32,
        minimum: u32,
    },
    #[error("binlog {file}, event at offset {offset}: checksum mismatch (stored {stored:08x}, computed {computed:08x})", file = file.display())]
    Checksum {
        file: PathBuf,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("binlog {file}, event at offset {offset} (type {event_type}): {reason}", file = file.display())]
    Malformed {
        file: PathBuf,
        offset: u64,
        event_type: u8,
        reason: &'static str,
    },
}

impl Error {
    /// The file being read.
    pub fn file(&self) -> &Path {
        match self {
            Error::Io { file, .. }
            | Error::BadMagic { file, .. }
            | Error::Encrypted { file, .. }
            | Error::Truncated { file, .. }
            | Error::EventLength { file, .. }
            | Error::Checksum { file, .. }
            | Error::Malformed { file, .. } => file,
        }
    }

    /// The byte offset of the event at fault (0 for a bad magic number).
    pub fn offset(&self) -> u64 {
        match self {
            Error::BadMagic { .. } => 0,
            Error::Io { offset, .. }
            | Error::Encrypted { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::EventLength { offset, .. }
            | Error::Checksum { offset, .. }
            | Error::Malformed { offset, .. } => *offset,
        }
    }
}

/// What an incomplete last event means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The file may still be being written (the server's active binlog): stop at the last
    /// complete event and report the rest in [`BinlogSummary::partial_tail_bytes`].
    Tolerate,
    /// The file is closed: an incomplete event is a [`Error::Truncated`] file.
    Reject,
}

/// How to read.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub tail: Tail,
    /// Read buffer size in bytes (at least 64).
    pub buffer_size: usize,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            tail: Tail::Tolerate,
            buffer_size: DEFAULT_BUFFER_SIZE,
        }
    }
}

/// How a transaction's last event was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionEnd {
    /// An XID_EVENT: an InnoDB (XA-capable engine) commit.
    Xid,
    /// A `COMMIT` or `ROLLBACK` query: a transaction with non-transactional changes.
    Commit,
    /// A statement that is the whole transaction: DDL, `XA COMMIT`, a MariaDB standalone event.
    Statement,
    /// An XA_PREPARE_LOG_EVENT: the first half of an XA transaction.
    XaPrepare,
    /// A TRANSACTION_PAYLOAD_EVENT: a MySQL compressed transaction.
    Payload,
    /// None of the above before the next GTID event, Rotate or Stop: the transaction is taken
    /// to end where that event starts. Servers do not write this; it means an unusual file.
    Boundary,
}

/// One transaction of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its GTID; `None` for a MySQL anonymous transaction (`gtid_mode` OFF or OFF_PERMISSIVE).
    pub gtid: Option<Gtid>,
    /// Offset of its GTID event.
    pub start: u64,
    /// Offset just past the event that commits it: where the next transaction may start, and
    /// what MariaDB's `UNTIL MASTER_LOG_POS` and MySQL's `SQL_AFTER_GTIDS` stop after.
    pub end: u64,
    /// Commit time in microseconds since the epoch: MySQL's `immediate_commit_timestamp` where
    /// the GTID event has it, else the committing event's header timestamp (whole seconds).
    pub commit_time_us: u64,
    /// Header timestamp of the GTID event, in seconds: what MyHoard's `gtid_ranges` record.
    pub gtid_event_timestamp: u32,
    /// Header server id of the GTID event.
    pub server_id: u32,
    pub ended_by: TransactionEnd,
}

/// How the file ends, judged by its last complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEnd {
    /// A ROTATE_EVENT: the server moved on to `next_file`.
    Rotate { next_file: String, position: u64 },
    /// A STOP_EVENT: the server shut down cleanly.
    Stop,
    /// Neither: a file still being written, or left by a crash.
    Open,
}

/// The GTID state a file starts from: MySQL's `Previous_gtids` (every GTID logged in earlier
/// files) or MariaDB's `Gtid_list` (the last GTID per domain and server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    Mysql(GtidSet),
    Mariadb(MariadbGtidState),
}

impl GtidState {
    /// The state in the server's syntax: a MySQL GTID set, or a MariaDB `gtid_binlog_state`.
    pub fn to_server_string(&self) -> String {
        match self {
            GtidState::Mysql(set) => set.to_string(),
            GtidState::Mariadb(state) => state.to_string(),
        }
    }

    /// The transactions the state implies (for MariaDB, `1..=last` of each domain and server).
    pub fn to_gtid_set(&self) -> GtidSet {
        match self {
            GtidState::Mysql(set) => set.clone(),
            GtidState::Mariadb(state) => state.to_gtid_set(),
        }
    }
}

/// Everything learnt from one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogSummary {
    pub file: PathBuf,
    /// Bytes read: through the last complete event, plus any partial tail.
    pub size: u64,
    pub server_version: String,
    pub flavor: Flavor,
    pub checksum: Checksum,
    /// The state before the file, from its `Previous_gtids` or `Gtid_list` event.
    pub previous_gtids: Option<GtidState>,
    /// The GTIDs of the file's complete transactions.
    pub gtids: GtidSet,
    /// The same transactions as MyHoard's binlog metadata `gtid_ranges`, in file order.
    pub gtid_ranges: Vec<GtidRange>,
    /// Complete transactions, anonymous ones included.
    pub n_transactions: u64,
    /// Complete transactions without a GTID.
    pub n_anonymous: u64,
    /// Commit time of the file's first and last transactions (file order), microseconds.
    pub first_commit_us: Option<u64>,
    pub last_commit_us: Option<u64>,
    pub end: FileEnd,
    /// Bytes after the last complete event (only with [`Tail::Tolerate`]).
    pub partial_tail_bytes: u64,
    /// The format description's "in use" flag: the server had the file open when it was read,
    /// or crashed before closing it.
    pub in_use: bool,
    /// Start offset of a transaction whose commit is not in the file (yet).
    pub unfinished_transaction: Option<u64>,
    /// For MariaDB: the binlog state after the file (the previous state updated with each
    /// transaction in file order), which the next file's `Gtid_list` repeats.
    mariadb_state_after: Option<MariadbGtidState>,
}

impl BinlogSummary {
    /// Whether the file is finished: it ends with a Rotate or Stop event and nothing follows.
    pub fn is_complete(&self) -> bool {
        self.end != FileEnd::Open && self.partial_tail_bytes == 0
    }

    /// The state after the file: the previous state plus the file's transactions.
    pub fn state_after(&self) -> GtidState {
        match (&self.mariadb_state_after, &self.previous_gtids) {
            (Some(state), _) => GtidState::Mariadb(state.clone()),
            (None, Some(previous)) => GtidState::Mysql(previous.to_gtid_set().union(&self.gtids)),
            (None, None) => GtidState::Mysql(self.gtids.clone()),
        }
    }
}

/// Reads a whole file and returns its summary.
pub fn read_summary(path: &Path, options: ReadOptions) -> Result<BinlogSummary, Error> {
    BinlogReader::open(path, options)?.finish()
}

/// Reads a binlog or relay log event by event; an iterator over its transactions. After the
/// last transaction (or an error), [`BinlogReader::finish`] gives the file's summary.
pub struct BinlogReader<R> {
    input: Input<R>,
    scan: Scan,
    /// The start of a large event, copied out of the read buffer for decoding.
    scratch: Vec<u8>,
    /// A fresh CRC32 state to clone for each event.
    crc: crc32fast::Hasher,
    /// Events that end at or before this offset have had their checksums verified, in a run
    /// checked in one pass (see the `checksum` module).
    verified_to: u64,
    /// Scratch space for [`checksum::check_run`].
    run_starts: Vec<usize>,
    tail: Tail,
    done: bool,
}

impl BinlogReader<File> {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path, options: ReadOptions) -> Result<BinlogReader<File>, Error> {
        let file = File::open(path).map_err(|source| Error::Io {
            file: path.to_owned(),
            offset: 0,
            source,
        })?;
        BinlogReader::new(path, file, options)
    }
}

impl<R: Read> BinlogReader<R> {
    /// Starts reading `input`, the contents of `file` (used in errors and the summary): checks
    /// the magic number and reads the format description event.
    pub fn new(
        file: impl Into<PathBuf>,
        input: R,
        options: ReadOptions,
    ) -> Result<BinlogReader<R>, Error> {
        let file = file.into();
        let crc = crc32fast::Hasher::new();
        let mut input = Input::new(input, options.buffer_size.max(64));
        let io_error = |file: &Path, offset, source| Error::Io {
            file: file.to_owned(),
            offset,
            source,
        };
        let available = input.fill(4).map_err(|e| io_error(&file, 0, e))?;
        let magic = &input.window()[..available.min(4)];
        if magic != b"\xfebin" {
            if magic == b"\xfdbin" {
                // MySQL's binlog_encryption: a file header with the key follows instead.
                return Err(Error::Encrypted { file, offset: 0 });
            }
            if available < 4 {
                return Err(Error::Truncated {
                    file,
                    offset: 0,
                    what: "shorter than the 4-byte magic number",
                });
            }
            let found: Vec<String> = magic.iter().map(|byte| format!("{byte:02x}")).collect();
            return Err(Error::BadMagic {
                found: found.join(" "),
                file,
            });
        }
        input.consume(4);

        // The format description must come first: it says whether events carry checksums.
        // Servers write it together with the magic number, so a short one is damage even in a
        // file still being written.
        let truncated = |file: PathBuf| Error::Truncated {
            file,
            offset: 4,
            what: "the format description event is incomplete",
        };
        let available = input.fill(HEADER_LEN).map_err(|e| io_error(&file, 4, e))?;
        let Some(header) = Header::decode(&input.window()[..available]) else {
            return Err(truncated(file));
        };
        let malformed = |file, reason| Error::Malformed {
            file,
            offset: 4,
            event_type: header.event_type,
            reason,
        };
        if header.event_type != event::FORMAT_DESCRIPTION_EVENT {
            return Err(malformed(
                file,
                "the first event is not a format description",
            ));
        }
        let length = header.length as usize;
        // A format description lists one post-header length per event type: a few hundred
        // bytes at most.
        if length > MAX_FORMAT_DESCRIPTION {
            return Err(malformed(file, "format description event too large"));
        }
        // Copied out rather than decoded in place, so that it works with any buffer size.
        let mut fde_bytes = Vec::with_capacity(length);
        while fde_bytes.len() < length {
            let available = input
                .fill(length - fde_bytes.len())
                .map_err(|e| io_error(&file, 4, e))?;
            if available == 0 {
                return Err(truncated(file));
            }
            let n = available.min(length - fde_bytes.len());
            fde_bytes.extend_from_slice(&input.window()[..n]);
            input.consume(n);
        }
        let fde = match FormatDescription::decode(&fde_bytes) {
            Ok(fde) => fde,
            Err(reason) => return Err(malformed(file, reason)),
        };
        if fde.checksum == Checksum::Crc32 {
            verify_crc(&crc, &file, 4, &fde_bytes)?;
        }
        let mut scan = Scan::new(file, fde);
        scan.valid_end = input.offset();
        scan.in_use = header.flags & u16::from(event::FLAG_BINLOG_IN_USE) != 0;

        Ok(BinlogReader {
            input,
            scan,
            scratch: Vec::new(),
            crc,
            verified_to: 0,
            run_starts: Vec::new(),
            tail: options.tail,
            done: false,
        })
    }

    /// The server version, flavour and checksum algorithm, from the format description.
    pub fn format(&self) -> &FormatDescription {
        &self.scan.fde
    }

    /// The next complete transaction, or `None` at the end of the file. After an error the
    /// reader is finished and returns `None`.
    pub fn next_transaction(&mut self) -> Result<Option<Transaction>, Error> {
        while !self.done {
            match self.next_event() {
                Ok(true) => {
                    if let Some(transaction) = self.scan.completed.take() {
                        return Ok(Some(transaction));
                    }
                }
                Ok(false) => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Err(error);
                }
            }
        }
        Ok(None)
    }

    /// Reads the rest of the file and returns its summary.
    pub fn finish(mut self) -> Result<BinlogSummary, Error> {
        self.scan.hand_out = false;
        while self.next_transaction()?.is_some() {}
        Ok(self.scan.into_summary())
    }

    /// Reads and interprets one event; a transaction it completes is left in
    /// `self.scan.completed`. `Ok(false)` at the end of the file (including a partial tail that
    /// is tolerated).
    #[inline]
    fn next_event(&mut self) -> Result<bool, Error> {
        self.scan_verified()?;
        if self.scan.completed.is_some() {
            return Ok(true);
        }
        let offset = self.input.offset();
        let available = self.fill(offset, HEADER_LEN)?;
        if available == 0 {
            return Ok(false);
        }
        let Some(header) = Header::decode(&self.input.window()[..available]) else {
            return self.partial_tail(offset, available as u64);
        };
        let checksum_len = match self.scan.checksum {
            Checksum::Crc32 => CHECKSUM_LEN,
            Checksum::None => 0,
        };
        let minimum = (HEADER_LEN + checksum_len) as u32;
        if header.length < minimum {
            return Err(Error::EventLength {
                file: self.scan.file.clone(),
                offset,
                length: header.length,
                minimum,
            });
        }
        let length = header.length as usize;

        if length <= self.input.capacity() {
            // The common case: the whole event fits in the buffer and is decoded in place.
            let available = self.fill(offset, length)?;
            if available < length {
                return self.partial_tail(offset, available as u64);
            }
            if checksum_len > 0 && offset + length as u64 > self.verified_to {
                self.verify_ahead(offset, minimum as usize)?;
            }
            let event = &self.input.window()[..length];
            let body = &event[HEADER_LEN..length - checksum_len];
            self.scan.on_event(offset, &header, body, false)?;
            self.input.consume(length);
            return Ok(true);
        }

        // An event larger than the buffer streams through the checksum; only the part of it
        // that is decoded is kept.
        let keep = match header.event_type {
            event::QUERY_EVENT | event::MARIADB_QUERY_COMPRESSED_EVENT => LARGE_EVENT_PREFIX,
            event_type if Scan::decodes(self.scan.fde.flavor, event_type) => {
                if length > MAX_CONTROL_EVENT {
                    return Err(self
                        .scan
                        .malformed(offset, &header, "event too large to decode"));
                }
                length
            }
            _ => 0,
        };
        let covered = length - checksum_len;
        let mut hasher = self.crc.clone();
        let mut stored = [0u8; CHECKSUM_LEN];
        self.scratch.clear();
        let mut done = 0;
        while done < length {
            let available = self.fill(offset + done as u64, 1)?;
            if available == 0 {
                return self.partial_tail(offset, done as u64);
            }
            let chunk = available.min(length - done);
            let data = &self.input.window()[..chunk];
            let hashed = chunk.min(covered.saturating_sub(done));
            hasher.update(&data[..hashed]);
            for (i, &byte) in data[hashed..].iter().enumerate() {
                stored[done + hashed + i - covered] = byte;
            }
            let copy = chunk.min(keep.saturating_sub(self.scratch.len()));
            self.scratch.extend_from_slice(&data[..copy]);
            self.input.consume(chunk);
            done += chunk;
        }
        if checksum_len > 0 {
            let stored = u32::from_le_bytes(stored);
            let computed = hasher.finalize();
            if stored != computed {
                return Err(Error::Checksum {
                    file: self.scan.file.clone(),
                    offset,
                    stored,
                    computed,
                });
            }
        }
        let truncated = keep < covered;
        let body_end = self.scratch.len().min(covered);
        let body = self.scratch.get(HEADER_LEN..body_end).unwrap_or(&[]);
        self.scan.on_event(offset, &header, body, truncated)?;
        Ok(true)
    }

    /// Interprets the events at the start of the window whose checksums are verified, up to
    /// the first that completes a transaction to hand out. Most events of a file go through
    /// this loop: those that only carry a transaction along (rows, table maps, annotations)
    /// are passed over reading only their type, length and time, and the others need none of
    /// the checks of [`Self::next_event`], since a verified run holds only whole events of at
    /// least a header and a checksum.
    #[inline]
    fn scan_verified(&mut self) -> Result<(), Error> {
        let offset = self.input.offset();
        if self.verified_to <= offset {
            return Ok(());
        }
        let window = self.input.window();
        let verified = window.len().min((self.verified_to - offset) as usize);
        let mut position = 0;
        let mut plain_timestamp = None;
        let mut result = Ok(());
        while position < verified {
            let Some(header) = Header::decode(&window[position..verified]) else {
                break;
            };
            let length = header.length as usize;
            if !INTERPRETED[usize::from(header.event_type)] {
                plain_timestamp = Some(header.timestamp);
                position += length;
                continue;
            }
            if let Some(timestamp) = plain_timestamp.take() {
                self.scan
                    .on_plain_events(offset + position as u64, timestamp);
            }
            let body = &window[position + HEADER_LEN..position + length - CHECKSUM_LEN];
            result = self
                .scan
                .on_interpreted_event(offset + position as u64, &header, body, false);
            if result.is_err() {
                break;
            }
            position += length;
            if self.scan.completed.is_some() {
                break;
            }
        }
        if let Some(timestamp) = plain_timestamp {
            self.scan
                .on_plain_events(offset + position as u64, timestamp);
        }
        self.input.consume(position);
        result
    }

    /// Verifies the checksums of the event at `offset`, which is whole at the start of the
    /// window, and of as many complete events after it as the window holds, in one pass where
    /// they are intact. Only an error in the event at `offset` is returned: one further on is
    /// left for when the reader gets there, so that the transactions before it are handed out
    /// first, as when every event was checked on its own.
    #[inline(never)]
    fn verify_ahead(&mut self, offset: u64, minimum: usize) -> Result<(), Error> {
        let window = self.input.window_mut();
        let (run, intact) = checksum::check_run(&self.crc, window, minimum, &mut self.run_starts);
        if intact {
            self.verified_to = offset + run as u64;
            return Ok(());
        }
        // A damaged event in the run, or the event is a format description: one at a time,
        // up to the first at fault. The event at `offset` is whole, so the loop checks it.
        let mut position = 0;
        while position == 0 || position < run {
            let Some(event) = Header::decode(&window[position..])
                .map(|header| header.length as usize)
                .filter(|&length| length >= minimum)
                .and_then(|length| window.get(position..position + length))
            else {
                break;
            };
            let length = event.len();
            match verify_crc(&self.crc, &self.scan.file, offset + position as u64, event) {
                Ok(()) => position += length,
                Err(error) if position == 0 => return Err(error),
                Err(_) => break,
            }
        }
        self.verified_to = offset + position as u64;
        Ok(())
    }

    #[inline]
    fn fill(&mut self, offset: u64, wanted: usize) -> Result<usize, Error> {
        self.input.fill(wanted).map_err(|source| Error::Io {
            file: self.scan.file.clone(),
            offset,
            source,
        })
    }

    /// The file ends `bytes` into the event at `offset`.
    fn partial_tail(&mut self, offset: u64, bytes: u64) -> Result<bool, Error> {
        match self.tail {
            Tail::Tolerate => {
                self.scan.partial_tail_bytes = bytes;
                Ok(false)
            }
            Tail::Reject => Err(Error::Truncated {
                file: self.scan.file.clone(),
                offset,
                what: "the last event is incomplete",
            }),
        }
    }
}

impl<R: Read> Iterator for BinlogReader<R> {
    type Item = Result<Transaction, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_transaction().transpose()
    }
}

/// Checks the CRC32 trailer of a whole event (at least header plus trailer long). `crc` is a
/// fresh hasher, cloned rather than made per event: making one detects the CPU's features.
fn verify_crc(
    crc: &crc32fast::Hasher,
    file: &Path,
    offset: u64,
    event: &[u8],
) -> Result<(), Error> {
    let (covered, trailer) = event.split_at(event.len() - CHECKSUM_LEN);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = if covered.get(4) == Some(&event::FORMAT_DESCRIPTION_EVENT) {
        // The server sets LOG_EVENT_BINLOG_IN_USE_F in the format description while the file
        // is open and clears it on close, without recomputing the checksum: the checksum is of
        // the event with the flag clear.
        let mut hasher = crc.clone();
        hasher.update(&covered[..FLAGS_OFFSET]);
        hasher.update(&[covered[FLAGS_OFFSET] & !event::FLAG_BINLOG_IN_USE]);
        hasher.update(&covered[FLAGS_OFFSET + 1..]);
        hasher.finalize()
    } else {
        let mut hasher = crc.clone();
        hasher.update(covered);
        hasher.finalize()
    };
    if stored != computed {
        return Err(Error::Checksum {
            file: file.to_owned(),
            offset,
            stored,
            computed,
        });
    }
    Ok(())
}

/// The event types [`Scan::on_interpreted_event`] looks at; every other type is only framed.
const INTERPRETED: [bool; 256] = {
    let mut table = [false; 256];
    let types = [
        event::QUERY_EVENT,
        event::STOP_EVENT,
        event::ROTATE_EVENT,
        event::FORMAT_DESCRIPTION_EVENT,
        event::XID_EVENT,
        event::MYSQL_GTID_LOG_EVENT,
        event::MYSQL_ANONYMOUS_GTID_LOG_EVENT,
        event::MYSQL_PREVIOUS_GTIDS_LOG_EVENT,
        event::XA_PREPARE_LOG_EVENT,
        event::MYSQL_TRANSACTION_PAYLOAD_EVENT,
        event::MYSQL_GTID_TAGGED_LOG_EVENT,
        event::MARIADB_GTID_EVENT,
        event::MARIADB_GTID_LIST_EVENT,
        event::MARIADB_START_ENCRYPTION_EVENT,
        event::MARIADB_QUERY_COMPRESSED_EVENT,
    ];
    let mut i = 0;
    while i < types.len() {
        table[types[i] as usize] = true;
        i += 1;
    }
    table
};

/// A transaction whose GTID event has been seen and whose commit has not.
struct OpenTransaction {
    /// Its origin, numbered by the scan's range builder, and sequence number.
    gtid: Option<(OriginNumber, u64)>,
    start: u64,
    gtid_event_timestamp: u32,
    server_id: u32,
    immediate_commit_us: Option<u64>,
    /// A BEGIN was seen (or implied, for MariaDB), so statements do not end the transaction.
    begun: bool,
    /// Header timestamp of the latest event in the transaction.
    last_timestamp: u32,
}

/// An untagged MySQL or a MariaDB origin as its GTID event gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawOrigin {
    Mysql([u8; 16]),
    Mariadb { domain: u32, server: u32 },
}

/// The interpretation state: the current transaction and the summary so far.
struct Scan {
    file: PathBuf,
    fde: FormatDescription,
    checksum: Checksum,
    open: Option<OpenTransaction>,
    /// Whether completed transactions are kept for the reader to hand out; not when only the
    /// summary is wanted.
    hand_out: bool,
    /// The transaction the last event completed, until the reader hands it out.
    completed: Option<Transaction>,
    previous_gtids: Option<GtidState>,
    /// The file's transactions in runs of one origin and consecutive sequence numbers: what
    /// the summary's GTID set and MariaDB state after are made of, at the end, a run at a time
    /// rather than a transaction at a time.
    ranges: GtidRangeBuilder,
    /// The last origin numbered by [`Scan::number_raw`].
    last_raw_origin: Option<(RawOrigin, OriginNumber)>,
    mariadb_state_after: Option<MariadbGtidState>,
    n_transactions: u64,
    n_anonymous: u64,
    first_commit_us: Option<u64>,
    last_commit_us: Option<u64>,
    end: FileEnd,
    /// Offset just past the last complete event.
    valid_end: u64,
    partial_tail_bytes: u64,
    in_use: bool,
}

impl Scan {
    fn new(file: PathBuf, fde: FormatDescription) -> Scan {
        let mariadb_state_after = (fde.flavor == Flavor::Mariadb).then(MariadbGtidState::new);
        Scan {
            file,
            checksum: fde.checksum,
            fde,
            open: None,
            hand_out: true,
            completed: None,
            previous_gtids: None,
            ranges: GtidRangeBuilder::new(),
            last_raw_origin: None,
            mariadb_state_after,
            n_transactions: 0,
            n_anonymous: 0,
            first_commit_us: None,
            last_commit_us: None,
            end: FileEnd::Open,
            valid_end: 0,
            partial_tail_bytes: 0,
            in_use: false,
        }
    }

    /// Whether the reader decodes events of this type (as opposed to only framing them).
    fn decodes(flavor: Flavor, event_type: u8) -> bool {
        match event_type {
            event::ROTATE_EVENT | event::FORMAT_DESCRIPTION_EVENT => true,
            event::MYSQL_GTID_LOG_EVENT
            | event::MYSQL_ANONYMOUS_GTID_LOG_EVENT
            | event::MYSQL_GTID_TAGGED_LOG_EVENT
            | event::MYSQL_PREVIOUS_GTIDS_LOG_EVENT => flavor == Flavor::Mysql,
            event::MARIADB_GTID_EVENT | event::MARIADB_GTID_LIST_EVENT => flavor == Flavor::Mariadb,
            _ => false,
        }
    }

    fn malformed(&self, offset: u64, header: &Header, reason: &'static str) -> Error {
        Error::Malformed {
            file: self.file.clone(),
            offset,
            event_type: header.event_type,
            reason,
        }
    }

    /// Interprets one complete, checksum-verified event. `body` excludes the header and the
    /// checksum; when `truncated`, it is only the start of the body.
    #[inline]
    fn on_event(
        &mut self,
        offset: u64,
        header: &Header,
        body: &[u8],
        truncated: bool,
    ) -> Result<(), Error> {
        // Most events (rows, table maps, annotations) only carry a transaction along: handled
        // here without the full dispatch, which matters at a million events per second.
        if !INTERPRETED[usize::from(header.event_type)] {
            self.on_plain_events(offset + u64::from(header.length), header.timestamp);
            return Ok(());
        }
        self.on_interpreted_event(offset, header, body, truncated)
    }

    /// Takes note of events that are not interpreted, up to `end`; `last_timestamp` is the
    /// header time of the last of them.
    #[inline]
    fn on_plain_events(&mut self, end: u64, last_timestamp: u32) {
        self.end = FileEnd::Open;
        self.valid_end = end;
        if let Some(open) = &mut self.open {
            open.last_timestamp = last_timestamp;
        }
    }

    /// Interprets an event of one of the [`INTERPRETED`] types. The three events of almost
    /// every transaction (its GTID event, BEGIN and commit) take the short way here; the
    /// handful of others a file has go through [`Scan::on_rare_event`].
    ///
    /// Inlined into the scan loop, as are [`Scan::close`], [`Scan::start_transaction`] and
    /// [`Scan::on_query`]: as calls, their prologues, epilogues and arguments passed through
    /// memory came to a seventh of the instructions of a MySQL file.
    #[inline(always)]
    fn on_interpreted_event(
        &mut self,
        offset: u64,
        header: &Header,
        body: &[u8],
        truncated: bool,
    ) -> Result<(), Error> {
        let end = offset + u64::from(header.length);
        match header.event_type {
            event::XID_EVENT => self.close(end, header.timestamp, TransactionEnd::Xid),
            event::QUERY_EVENT if self.open.is_some() => {
                let kind = event::query_kind(body, self.fde.query_post_header_len)
                    .map_err(|reason| self.malformed(offset, header, reason))?;
                self.on_query(kind, end, header.timestamp);
            }
            event::MYSQL_GTID_LOG_EVENT if self.fde.flavor == Flavor::Mysql => {
                let fields = event::mysql_gtid_fields(body)
                    .and_then(|fields| Ok((fields, event::checked_gno(fields.gno)?)));
                let (fields, gno) =
                    fields.map_err(|reason| self.malformed(offset, header, reason))?;
                let origin = self.number_raw(RawOrigin::Mysql(*fields.sid));
                let gtid = Some((origin, gno));
                self.start_transaction(offset, header, gtid, fields.immediate_commit_us, false);
            }
            event::MARIADB_GTID_EVENT if self.fde.flavor == Flavor::Mariadb => {
                let fields = event::mariadb_gtid_fields(body)
                    .map_err(|reason| self.malformed(offset, header, reason))?;
                let origin = self.number_raw(RawOrigin::Mariadb {
                    domain: fields.domain,
                    server: header.server_id,
                });
                let gtid = Some((origin, fields.sequence));
                self.start_transaction(offset, header, gtid, None, fields.standalone);
            }
            _ => return self.on_rare_event(offset, header, body, truncated),
        }
        // None of these ends the file, and a transaction still open takes the event's time.
        self.on_plain_events(end, header.timestamp);
        Ok(())
    }

    /// A GTID event of a kind that does not take the short way: MySQL's anonymous and tagged
    /// ones, decoded into an [`Origin`].
    fn on_gtid_event(
        &mut self,
        offset: u64,
        header: &Header,
        decoded: Result<GtidEventBody, event::Malformed>,
    ) -> Result<(), Error> {
        let body = decoded.map_err(|reason| self.malformed(offset, header, reason))?;
        let gtid = match &body.gtid {
            Some((origin, sequence)) => {
                if !origin.numbers(*sequence) {
                    return Err(self.malformed(
                        offset,
                        header,
                        "gtid sequence number out of range",
                    ));
                }
                Some((self.ranges.number(origin), *sequence))
            }
            None => None,
        };
        self.start_transaction(
            offset,
            header,
            gtid,
            body.immediate_commit_us,
            body.standalone,
        );
        Ok(())
    }

    /// The number of an untagged MySQL or a MariaDB origin: the last one's, without building
    /// an [`Origin`], when it is the same, as for almost every transaction.
    #[inline]
    fn number_raw(&mut self, raw: RawOrigin) -> OriginNumber {
        match self.last_raw_origin {
            Some((last, number)) if last == raw => number,
            _ => self.number_other_raw(raw),
        }
    }

    #[cold]
    fn number_other_raw(&mut self, raw: RawOrigin) -> OriginNumber {
        let origin = match raw {
            RawOrigin::Mysql(sid) => Origin::mysql(Uuid::from_bytes(sid)),
            RawOrigin::Mariadb { domain, server } => Origin::mariadb(domain, server),
        };
        let number = self.ranges.number(&origin);
        self.last_raw_origin = Some((raw, number));
        number
    }

    /// A transaction's GTID event at `offset`: the transaction open before it, if any, ends
    /// here (a server does not write that, see [`TransactionEnd::Boundary`]), and this one
    /// starts. `gtid` is its origin's number and its sequence number, already checked.
    #[inline(always)]
    fn start_transaction(
        &mut self,
        offset: u64,
        header: &Header,
        gtid: Option<(OriginNumber, u64)>,
        immediate_commit_us: Option<u64>,
        standalone: bool,
    ) {
        self.close(offset, header.timestamp, TransactionEnd::Boundary);
        self.open = Some(OpenTransaction {
            gtid,
            start: offset,
            gtid_event_timestamp: header.timestamp,
            server_id: header.server_id,
            immediate_commit_us,
            // MariaDB's GTID event stands for BEGIN unless the transaction is standalone.
            begun: self.fde.flavor == Flavor::Mariadb && !standalone,
            last_timestamp: header.timestamp,
        });
    }

    /// A statement inside the open transaction, ending at `end`.
    #[inline(always)]
    fn on_query(&mut self, kind: QueryKind, end: u64, timestamp: u32) {
        let Some(open) = &mut self.open else {
            return;
        };
        match kind {
            QueryKind::Begin => open.begun = true,
            QueryKind::End => self.close(end, timestamp, TransactionEnd::Commit),
            QueryKind::Statement if !open.begun => {
                self.close(end, timestamp, TransactionEnd::Statement);
            }
            QueryKind::Statement => {}
        }
    }

    /// Interprets an event of the [`INTERPRETED`] types that [`Scan::on_interpreted_event`]
    /// does not take the short way.
    #[cold]
    #[inline(never)]
    fn on_rare_event(
        &mut self,
        offset: u64,
        header: &Header,
        body: &[u8],
        truncated: bool,
    ) -> Result<(), Error> {
        let end = offset + u64::from(header.length);
        let flavor = self.fde.flavor;
        let event_type = header.event_type;
        let mut file_end = FileEnd::Open;
        let malformed = |file: &Path, reason| Error::Malformed {
            file: file.to_owned(),
            offset,
            event_type,
            reason,
        };

        match event_type {
            event::MYSQL_GTID_LOG_EVENT
            | event::MYSQL_ANONYMOUS_GTID_LOG_EVENT
            | event::MYSQL_GTID_TAGGED_LOG_EVENT
            | event::MARIADB_GTID_EVENT
                if Scan::decodes(flavor, event_type) =>
            {
                let decoded = match event_type {
                    event::MYSQL_GTID_LOG_EVENT => event::mysql_gtid(body, false),
                    event::MYSQL_ANONYMOUS_GTID_LOG_EVENT => event::mysql_gtid(body, true),
                    event::MYSQL_GTID_TAGGED_LOG_EVENT => event::mysql_tagged_gtid(body),
                    _ => event::mariadb_gtid(body, header.server_id),
                };
                self.on_gtid_event(offset, header, decoded)?;
            }
            event::XID_EVENT => self.close(end, header.timestamp, TransactionEnd::Xid),
            event::XA_PREPARE_LOG_EVENT => {
                self.close(end, header.timestamp, TransactionEnd::XaPrepare);
            }
            event::MYSQL_TRANSACTION_PAYLOAD_EVENT if flavor == Flavor::Mysql => {
                self.close(end, header.timestamp, TransactionEnd::Payload);
            }
            event::QUERY_EVENT | event::MARIADB_QUERY_COMPRESSED_EVENT if self.open.is_some() => {
                // A compressed statement cannot be read, but BEGIN and COMMIT are far too short
                // to be compressed.
                let kind = if event_type == event::QUERY_EVENT {
                    event::query_kind(body, self.fde.query_post_header_len)
                        .map_err(|reason| malformed(&self.file, reason))?
                } else {
                    QueryKind::Statement
                };
                self.on_query(kind, end, header.timestamp);
            }
            event::MYSQL_PREVIOUS_GTIDS_LOG_EVENT if flavor == Flavor::Mysql => {
                let set = event::mysql_previous_gtids(body)
                    .map_err(|reason| malformed(&self.file, reason))?;
                if self.previous_gtids.is_none() {
                    self.previous_gtids = Some(GtidState::Mysql(set));
                }
            }
            event::MARIADB_GTID_LIST_EVENT if flavor == Flavor::Mariadb => {
                let state = event::mariadb_gtid_list(body)
                    .map_err(|reason| malformed(&self.file, reason))?;
                if self.previous_gtids.is_none() {
                    self.mariadb_state_after = Some(state.clone());
                    self.previous_gtids = Some(GtidState::Mariadb(state));
                }
            }
            event::MARIADB_START_ENCRYPTION_EVENT if flavor == Flavor::Mariadb => {
                return Err(Error::Encrypted {
                    file: self.file.clone(),
                    offset,
                });
            }
            event::ROTATE_EVENT => {
                let rotate = event::rotate(body).map_err(|reason| malformed(&self.file, reason))?;
                // A relay log starts with a made-up Rotate naming the source's binlog; only a
                // real one (the server's own) ends the file.
                if header.flags & FLAG_ARTIFICIAL == 0 {
                    self.close(offset, header.timestamp, TransactionEnd::Boundary);
                    file_end = FileEnd::Rotate {
                        next_file: rotate.next_file,
                        position: rotate.position,
                    };
                }
            }
            event::STOP_EVENT => {
                self.close(offset, header.timestamp, TransactionEnd::Boundary);
                file_end = FileEnd::Stop;
            }
            event::FORMAT_DESCRIPTION_EVENT => {
                // A relay log carries the source's format description after its own; the
                // source's events follow with the source's checksum setting.
                if truncated {
                    return Err(malformed(&self.file, "format description too large"));
                }
                let mut whole = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
                whole.extend_from_slice(&[0; HEADER_LEN]);
                whole.extend_from_slice(body);
                if self.checksum == Checksum::Crc32 {
                    whole.extend_from_slice(&[0; CHECKSUM_LEN]);
                }
                let fde = FormatDescription::decode(&whole)
                    .map_err(|reason| malformed(&self.file, reason))?;
                if fde.flavor == self.fde.flavor {
                    self.checksum = fde.checksum;
                }
            }
            _ => {}
        }
        self.end = file_end;
        self.valid_end = end;
        // Kept for the commit time of a transaction that is only ended by the next
        // transaction's GTID event (the time of its own last event). A transaction this event
        // opened has it already.
        if let Some(open) = &mut self.open {
            open.last_timestamp = header.timestamp;
        }
        Ok(())
    }

    /// Ends the open transaction, if any, at offset `end`: adds it to the summary and, when
    /// transactions are handed out, leaves it in `completed`.
    #[inline(always)]
    fn close(&mut self, end: u64, timestamp: u32, ended_by: TransactionEnd) {
        // Fields are read in place rather than the transaction moved out whole: the event
        // before (see `on_plain_events`) has just stored its time into it, and a wide load
        // over that narrow store stalls the CPU's store forwarding.
        let Some(open) = &self.open else {
            return;
        };
        let commit_time_us = open.immediate_commit_us.unwrap_or_else(|| {
            // A transaction ended by the next one's GTID event takes its own last event's
            // time, not the next one's.
            let seconds = if ended_by == TransactionEnd::Boundary {
                open.last_timestamp
            } else {
                timestamp
            };
            u64::from(seconds) * 1_000_000
        });
        self.n_transactions += 1;
        self.first_commit_us.get_or_insert(commit_time_us);
        self.last_commit_us = Some(commit_time_us);
        match open.gtid {
            Some((origin, sequence)) => self.ranges.push_numbered(
                origin,
                sequence,
                u64::from(open.gtid_event_timestamp),
                open.server_id,
            ),
            None => self.n_anonymous += 1,
        }
        if !self.hand_out {
            self.open = None;
            return;
        }
        if let Some(open) = self.open.take() {
            let gtid = open.gtid.and_then(|(origin, sequence)| {
                Gtid::checked(self.ranges.origin(origin).clone(), sequence)
            });
            self.completed = Some(Transaction {
                gtid,
                start: open.start,
                end,
                commit_time_us,
                gtid_event_timestamp: open.gtid_event_timestamp,
                server_id: open.server_id,
                ended_by,
            });
        }
    }

    fn into_summary(mut self) -> BinlogSummary {
        let gtid_ranges = self.ranges.finish();
        let mut gtids = GtidSet::new();
        for range in &gtid_ranges {
            if let Some(state) = &mut self.mariadb_state_after
                && let Origin::Mariadb { domain, server } = range.server_uuid
            {
                state.update(domain, server, range.end);
            }
            // A range holds sequence numbers of real GTIDs, so it is never empty or zero.
            if let Ok(interval) = range.interval() {
                gtids.insert_interval(range.server_uuid.clone(), interval);
            }
        }
        BinlogSummary {
            size: self.valid_end + self.partial_tail_bytes,
            file: self.file,
            server_version: self.fde.server_version,
            flavor: self.fde.flavor,
            checksum: self.fde.checksum,
            previous_gtids: self.previous_gtids,
            gtids,
            gtid_ranges,
            n_transactions: self.n_transactions,
            n_anonymous: self.n_anonymous,
            first_commit_us: self.first_commit_us,
            last_commit_us: self.last_commit_us,
            end: self.end,
            partial_tail_bytes: self.partial_tail_bytes,
            in_use: self.in_use,
            unfinished_transaction: self.open.map(|open| open.start),
            mariadb_state_after: self.mariadb_state_after,
        }
    }
}

/// A read buffer over the input, tracking the file offset of its first unconsumed byte.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn new(inner: R, capacity: usize) -> Input<R> {
        Input {
            inner,
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    /// The buffered, unconsumed bytes.
    fn window(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn window_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Makes at least `wanted` bytes (at most the capacity) available, reading as needed;
    /// returns how many are, fewer only at the end of the input.
    #[inline]
    fn fill(&mut self, wanted: usize) -> io::Result<usize> {
        if self.end - self.start >= wanted || self.eof {
            return Ok(self.end - self.start);
        }
        self.fill_slow(wanted)
    }

    #[inline(never)]
    fn fill_slow(&mut self, wanted: usize) -> io::Result<usize> {
        let wanted = wanted.min(self.buf.len());
        if self.end - self.start >= wanted {
            return Ok(self.end - self.start);
        }
        if self.start + wanted > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < wanted {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        self.offset += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

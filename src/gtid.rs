//! GTID arithmetic for both flavours: parsing and formatting what the servers print, set
//! algebra, and the `gtid_ranges` that binlog metadata carries.
//!
//! One [`GtidSet`] serves MySQL and MariaDB alike. A transaction is named by an [`Origin`] and a
//! sequence number ([`Gtid`]):
//!
//! - MySQL: the origin is a server UUID, optionally with a MySQL 8.3+ tag; the sequence number is
//!   the GNO. Text forms: `uuid:5`, `uuid:tag:5`, and sets such as
//!   `uuid:1-5:7:tag1:1-3,uuid2:3`.
//! - MariaDB: the origin is the `(domain_id, server_id)` pair, written `"<domain>-<server>"` as
//!   in design.md; the sequence number is the `seq_no`. Text form of one GTID: `0-1-5`.
//!   MariaDB itself has no set syntax: its variables hold *positions*, the last `seq_no` per
//!   domain (`@@gtid_binlog_pos`) or per domain and server (`@@gtid_binlog_state`). Those are
//!   [`MariadbGtidState`], which converts to and from a [`GtidSet`] by reading "last seq_no N"
//!   as the range `1..=N`.
//!
//! The JSON form is MyHoard's `{"<origin>": [[start, end], ...]}` with inclusive ranges, so state
//! files and `PUT /replication_state` bodies stay interchangeable with Python MyHoard. A tagged
//! MySQL origin is keyed `"uuid:tag"` there: Python MyHoard ignores tagged GTIDs altogether, so
//! there is no upstream key to match, and `uuid:tag` is how MySQL itself names that origin
//! (`uuid:tag:5` is a GTID of it).
//!
//! Pure: no I/O, no logging, nothing here blocks or panics on input; malformed text comes back as
//! an [`Error`] naming the offending fragment. Any thread may use it. Mirrors the GTID half of Python MyHoard's
//! `util.py` (`parse_gtid_range_string`, `make_gtid_range_string`,
//! `partition_sort_and_combine_gtid_ranges`, `add_gtid_ranges_to_executed_set`,
//! `truncate_gtid_executed`, `build_gtid_ranges`); its gapless containment checks
//! (`are_gtids_in_executed_set`, `first_contains_gtids_not_in_second`) are
//! [`GtidSet::has_reached`], next to the exact [`GtidSet::contains`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// The largest GNO MySQL accepts in a GTID set: it keeps GNOs in a signed 64-bit integer and
/// reserves `i64::MAX` as its end-of-range marker (`GNO_END`).
pub const MYSQL_GNO_MAX: u64 = i64::MAX as u64 - 1;

/// The longest tag MySQL accepts, in characters.
pub const MYSQL_TAG_MAX_LEN: usize = 32;

/// Why a GTID, GTID set or MariaDB position could not be parsed or converted. Every variant
/// carries the offending text (or origin), so the message alone points at the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a server UUID in the `8-4-4-4-12` hexadecimal form.
    #[error("invalid server uuid {text:?}")]
    InvalidUuid { text: String },
    /// Not a MySQL GTID tag (`[a-z_][a-z0-9_]{0,31}`, case-insensitive).
    #[error(
        "invalid gtid tag {text:?}: expected a letter or '_', then up to 31 letters, digits or '_'"
    )]
    InvalidTag { text: String },
    /// Neither a MySQL origin (`uuid`, `uuid:tag`) nor a MariaDB one (`domain-server`).
    #[error("invalid gtid origin {text:?}")]
    InvalidOrigin { text: String },
    /// A transaction number that is not a plain decimal number.
    #[error("invalid transaction number in {text:?}")]
    InvalidSequence { text: String },
    /// Transaction number 0: numbering starts at 1 in both flavours.
    #[error("transaction number 0 in {text:?}: numbering starts at 1")]
    ZeroSequence { text: String },
    /// A transaction number above what the flavour can hold ([`MYSQL_GNO_MAX`] for MySQL,
    /// `u64::MAX` for MariaDB) or a domain or server id above `u32::MAX`.
    #[error("number too large in {text:?}")]
    SequenceOverflow { text: String },
    /// An interval whose end is below its start, such as `5-3`. MySQL silently drops these; we
    /// refuse them, because such text is never printed by a server and means a bug upstream.
    #[error("reversed interval {text:?}: the end is below the start")]
    ReversedInterval { text: String },
    /// Not a GTID in either flavour's syntax (`uuid:5`, `uuid:tag:5`, `0-1-5`).
    #[error("invalid gtid {text:?}")]
    InvalidGtid { text: String },
    /// The same MariaDB `domain-server` pair listed twice in one position.
    #[error("duplicate entry {text:?} in mariadb gtid position")]
    DuplicateEntry { text: String },
    /// A MySQL origin where only MariaDB ones make sense (converting to a [`MariadbGtidState`]).
    #[error("origin {origin} is not a mariadb domain-server pair")]
    NotMariadb { origin: String },
    /// The origin already used its last possible transaction number.
    #[error("no transaction number follows the last one of origin {origin}")]
    SequenceExhausted { origin: String },
}

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

/// A MySQL server UUID. Ordered by its bytes, as MySQL orders UUIDs when printing a set; printed
/// in lowercase `8-4-4-4-12` form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// The UUID with these 16 bytes, in the order a binlog GTID event stores them.
    pub const fn from_bytes(bytes: [u8; 16]) -> Uuid {
        Uuid(bytes)
    }

    /// The 16 bytes, in the order a binlog GTID event stores them.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_char('-')?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl FromStr for Uuid {
    type Err = Error;

    /// Parses the `8-4-4-4-12` hexadecimal form, in either case. MySQL also accepts 32 bare
    /// digits or braces in some places, but never prints them and never inside a GTID set, so
    /// neither do we.
    fn from_str(text: &str) -> Result<Uuid, Error> {
        let invalid = || Error::InvalidUuid {
            text: text.to_owned(),
        };
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return Err(invalid());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(invalid());
                }
                continue;
            }
            let value = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(invalid()),
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) {
                value << 4
            } else {
                value
            };
            nibbles += 1;
        }
        Ok(Uuid(out))
    }
}

/// A MySQL 8.3+ GTID tag: a letter or `_`, then up to 31 letters, digits or `_`. MySQL treats
/// tags case-insensitively and prints them lowercase, so they are stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// The tag, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = Error;

    fn from_str(text: &str) -> Result<Tag, Error> {
        let mut chars = text.chars();
        let valid_start = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_start || !valid_rest || text.len() > MYSQL_TAG_MAX_LEN {
            return Err(Error::InvalidTag {
                text: text.to_owned(),
            });
        }
        Ok(Tag(text.to_ascii_lowercase()))
    }
}

/// Where a transaction was first committed: what a GTID names besides its sequence number.
///
/// The derived order is the order sets are printed in: MySQL origins by UUID bytes, a UUID's
/// untagged transactions before its tagged ones, tags alphabetically (exactly MySQL's order),
/// then MariaDB origins by domain and server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A MySQL server UUID, with the tag of tagged GTIDs (MySQL 8.3+).
    Mysql { uuid: Uuid, tag: Option<Tag> },
    /// A MariaDB replication domain and the server id that committed the transaction.
    Mariadb { domain: u32, server: u32 },
}

impl Origin {
    /// An untagged MySQL origin.
    pub fn mysql(uuid: Uuid) -> Origin {
        Origin::Mysql { uuid, tag: None }
    }

    /// A tagged MySQL origin, as `SET gtid_next='AUTOMATIC:tag'` produces.
    pub fn mysql_tagged(uuid: Uuid, tag: Tag) -> Origin {
        Origin::Mysql {
            uuid,
            tag: Some(tag),
        }
    }

    /// A MariaDB origin.
    pub fn mariadb(domain: u32, server: u32) -> Origin {
        Origin::Mariadb { domain, server }
    }

    /// Whether this is a MariaDB `domain-server` origin.
    pub fn is_mariadb(&self) -> bool {
        matches!(self, Origin::Mariadb { .. })
    }

    /// Whether `sequence` numbers a transaction of this origin: from 1 to the flavour's
    /// largest.
    pub fn numbers(&self, sequence: u64) -> bool {
        sequence != 0 && sequence <= self.max_sequence()
    }

    /// The largest sequence number this flavour can hold.
    fn max_sequence(&self) -> u64 {
        match self {
            Origin::Mysql { .. } => MYSQL_GNO_MAX,
            Origin::Mariadb { .. } => u64::MAX,
        }
    }
}

impl fmt::Display for Origin {
    /// `uuid`, `uuid:tag` or `domain-server`: the key of MyHoard's JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Mysql { uuid, tag: None } => write!(f, "{uuid}"),
            Origin::Mysql {
                uuid,
                tag: Some(tag),
            } => write!(f, "{uuid}:{tag}"),
            Origin::Mariadb { domain, server } => write!(f, "{domain}-{server}"),
        }
    }
}

impl FromStr for Origin {
    type Err = Error;

    /// Parses `uuid`, `uuid:tag` (either case; normalised to lowercase) or `domain-server`.
    fn from_str(text: &str) -> Result<Origin, Error> {
        if text.contains(':') || text.parse::<Uuid>().is_ok() {
            return parse_mysql_origin(text);
        }
        parse_mariadb_origin(text).map_err(|_| Error::InvalidOrigin {
            text: text.to_owned(),
        })
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Origin, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// Parses `uuid` or `uuid:tag`.
fn parse_mysql_origin(text: &str) -> Result<Origin, Error> {
    match text.split_once(':') {
        Some((uuid, tag)) => Ok(Origin::mysql_tagged(uuid.parse()?, tag.parse()?)),
        None => Ok(Origin::mysql(text.parse()?)),
    }
}

/// Parses `domain-server`, both decimal `u32`.
fn parse_mariadb_origin(text: &str) -> Result<Origin, Error> {
    let invalid = || Error::InvalidOrigin {
        text: text.to_owned(),
    };
    let (domain, server) = text.split_once('-').ok_or_else(invalid)?;
    let domain = parse_u32(domain.trim_matches(is_space)).ok_or_else(invalid)?;
    let server = parse_u32(server.trim_matches(is_space)).ok_or_else(invalid)?;
    Ok(Origin::mariadb(domain, server))
}

// ---------------------------------------------------------------------------------------------
// Single GTIDs
// ---------------------------------------------------------------------------------------------

/// One transaction: its origin and its sequence number (GNO on MySQL, `seq_no` on MariaDB),
/// which is never 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    origin: Origin,
    sequence: u64,
}

impl Gtid {
    /// The GTID `sequence` of `origin`. Fails for 0, which numbers no transaction in either
    /// flavour, and for a MySQL GNO above [`MYSQL_GNO_MAX`]; a binlog carrying either is corrupt.
    pub fn new(origin: Origin, sequence: u64) -> Result<Gtid, Error> {
        if sequence == 0 {
            return Err(Error::ZeroSequence {
                text: format!("{origin}:0"),
            });
        }
        if sequence > origin.max_sequence() {
            return Err(Error::SequenceOverflow {
                text: format!("{origin}:{sequence}"),
            });
        }
        Ok(Gtid { origin, sequence })
    }

    /// [`Gtid::new`] without the error's text, for callers that keep GTIDs as `Option<Gtid>`
    /// (a binlog reader's open transaction): the GTID goes where it is stored as it is, which
    /// converting `new`'s result would move in pieces on every transaction.
    pub fn checked(origin: Origin, sequence: u64) -> Option<Gtid> {
        origin
            .numbers(sequence)
            .then_some(Gtid { origin, sequence })
    }

    /// Where the transaction was committed first.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Its GNO (MySQL) or `seq_no` (MariaDB), at least 1.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl fmt::Display for Gtid {
    /// `uuid:5`, `uuid:tag:5` or `0-1-5`, as each server prints GTIDs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Mysql { .. } => write!(f, "{}:{}", self.origin, self.sequence),
            Origin::Mariadb { .. } => write!(f, "{}-{}", self.origin, self.sequence),
        }
    }
}

impl FromStr for Gtid {
    type Err = Error;

    /// Parses `uuid:5`, `uuid:tag:5` (MySQL; anything containing `:`) or `0-1-5` (MariaDB).
    /// Whitespace around the whole text is ignored.
    fn from_str(text: &str) -> Result<Gtid, Error> {
        let trimmed = text.trim_matches(is_space);
        if let Some((origin, sequence)) = trimmed.rsplit_once(':') {
            let origin = parse_mysql_origin(origin)?;
            let sequence = parse_sequence(sequence, origin.max_sequence(), trimmed)?;
            return Gtid::new(origin, sequence);
        }
        let (domain, server, sequence) = split_mariadb_gtid(trimmed)?;
        let sequence = parse_sequence(strip_leading_zeros(sequence), u64::MAX, trimmed)?;
        Gtid::new(Origin::mariadb(domain, server), sequence)
    }
}

/// Splits MariaDB's `domain-server-seq` into its parts, checking the two ids.
fn split_mariadb_gtid(text: &str) -> Result<(u32, u32, &str), Error> {
    let invalid = || Error::InvalidGtid {
        text: text.to_owned(),
    };
    let mut parts = text.split('-').map(|part| part.trim_matches(is_space));
    let (Some(domain), Some(server), Some(sequence), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let id = |part: &str| {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            // All digits but not a u32: too large rather than malformed.
            parse_u32(part).ok_or_else(|| Error::SequenceOverflow {
                text: text.to_owned(),
            })
        } else {
            Err(invalid())
        }
    };
    Ok((id(domain)?, id(server)?, sequence))
}

// ---------------------------------------------------------------------------------------------
// Intervals
// ---------------------------------------------------------------------------------------------

/// An inclusive, non-empty range of sequence numbers `start..=end`, with `1 <= start <= end`.
/// Serialized as MyHoard's two-element array `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    start: u64,
    end: u64,
}

impl Interval {
    /// The interval `start..=end`. Fails if `start` is 0 or `end < start`.
    pub fn new(start: u64, end: u64) -> Result<Interval, Error> {
        if start == 0 {
            return Err(Error::ZeroSequence {
                text: format!("{start}-{end}"),
            });
        }
        if end < start {
            return Err(Error::ReversedInterval {
                text: format!("{start}-{end}"),
            });
        }
        Ok(Interval { start, end })
    }

    /// The interval holding only `sequence`; fails for 0.
    pub fn single(sequence: u64) -> Result<Interval, Error> {
        Interval::new(sequence, sequence)
    }

    /// The first sequence number.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The last sequence number (inclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// How many sequence numbers it holds. Cannot overflow: `start >= 1`.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: intervals are never empty. Present because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `sequence` falls inside.
    pub fn contains(&self, sequence: u64) -> bool {
        self.start <= sequence && sequence <= self.end
    }
}

impl fmt::Display for Interval {
    /// `5` or `1-5`, as in a MySQL GTID set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.start)?;
        tuple.serialize_element(&self.end)?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Interval, D::Error> {
        let (start, end) = <(u64, u64)>::deserialize(deserializer)?;
        Interval::new(start, end).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// GTID sets
// ---------------------------------------------------------------------------------------------

/// A set of transactions of any origins, kept normalised: per origin, intervals sorted, disjoint
/// and not adjacent (`1-3` and `4-5` are stored as `1-5`), and no origin without intervals. Two
/// sets holding the same transactions are therefore equal, and print identically.
///
/// Text forms:
/// - [`GtidSet::parse_mysql`] reads what MySQL prints (`@@GLOBAL.gtid_executed`,
///   `SHOW BINARY LOG STATUS`, Previous_gtids), newlines and tags included;
/// - `Display` writes MySQL's form without the newlines MySQL puts between UUIDs;
///   [`GtidSet::to_server_string`] writes it byte for byte as MySQL does;
/// - MariaDB origins, which have no server syntax for sets, are written `domain-server:1-100`
///   in both; `FromStr` reads those back, so `Display` and `FromStr` round-trip every set.
///
/// JSON (serde) form: MyHoard's `{"<origin>": [[start, end], ...]}` (see [`Origin`]'s
/// `Display` for the keys). Reading it normalises: overlapping, unsorted or adjacent ranges are
/// merged, keys differing only in case are merged, and an origin with an empty list is dropped.
/// A range starting at 0, reversed, or past the flavour's maximum is refused.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidSet {
    origins: BTreeMap<Origin, Vec<Interval>>,
}

impl GtidSet {
    /// The empty set.
    pub fn new() -> GtidSet {
        GtidSet::default()
    }

    /// Parses a MySQL GTID set exactly as the server accepts it (MySQL's `Gtid_set::add_gtid_text`
    /// syntax), less its quirks that no server prints:
    ///
    /// - `uuid:1-5:7,uuid2:3`, any number of UUIDs, in any order, intervals in any order and
    ///   overlapping; tagged intervals follow their tag until the next tag
    ///   (`uuid:1-5:tag1:1-3:tag2:7`);
    /// - whitespace (spaces, tabs, newlines) around any token, and empty entries (`a,,b`), as the
    ///   server allows; the empty string is the empty set;
    /// - a UUID or tag without intervals adds nothing, as on the server.
    ///
    /// Rejected, with an [`Error`] naming the fragment: a bad UUID or tag; a GNO that is 0, not
    /// decimal, above [`MYSQL_GNO_MAX`], or written with a leading zero (MySQL 8.x parses GNOs
    /// with `strtoll` base 0 and reads `010` as octal 8, while MySQL 9.7 and Python MyHoard read
    /// 10: no reading is safe); a reversed interval such as `5-3` (which MySQL silently drops).
    /// MariaDB origins are rejected too: use `str::parse` for the extended form.
    pub fn parse_mysql(text: &str) -> Result<GtidSet, Error> {
        parse_set(text, false)
    }

    /// The set holding just `gtid`.
    pub fn from_gtid(gtid: &Gtid) -> GtidSet {
        let mut set = GtidSet::new();
        set.insert(gtid);
        set
    }

    /// The union of MyHoard binlog `gtid_ranges` (Python's `partition_sort_and_combine_gtid_ranges`).
    /// Fails only on an invalid range: `start` 0, `end < start`, or a MySQL GNO above
    /// [`MYSQL_GNO_MAX`].
    pub fn from_ranges<'a>(
        ranges: impl IntoIterator<Item = &'a GtidRange>,
    ) -> Result<GtidSet, Error> {
        let mut set = GtidSet::new();
        for range in ranges {
            set.insert_range(range)?;
        }
        Ok(set)
    }

    /// Adds one transaction.
    pub fn insert(&mut self, gtid: &Gtid) {
        // A Gtid's sequence is never 0, so the interval is valid.
        let interval = Interval {
            start: gtid.sequence,
            end: gtid.sequence,
        };
        self.insert_interval(gtid.origin.clone(), interval);
    }

    /// Adds the transactions `interval` of `origin`, merging with what is there. Not checked
    /// against [`MYSQL_GNO_MAX`]: a MySQL origin given GNOs above it makes a set that MySQL (and
    /// [`GtidSet::parse_mysql`]) cannot read back.
    pub fn insert_interval(&mut self, origin: Origin, interval: Interval) {
        insert_sorted(self.origins.entry(origin).or_default(), interval);
    }

    /// Adds the transactions of one MyHoard binlog range. Fails only on an invalid range
    /// (including a MySQL one above [`MYSQL_GNO_MAX`]).
    pub fn insert_range(&mut self, range: &GtidRange) -> Result<(), Error> {
        let interval = range.interval()?;
        check_fits(&range.server_uuid, interval)?;
        self.insert_interval(range.server_uuid.clone(), interval);
        Ok(())
    }

    /// Whether the set holds no transaction.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// How many transactions it holds. `u128` because the sum over several origins can exceed
    /// `u64`; on MariaDB sets built from positions this counts the implied `1..=last` ranges.
    pub fn count(&self) -> u128 {
        self.origins
            .values()
            .flatten()
            .map(|interval| u128::from(interval.len()))
            .sum()
    }

    /// The origins with at least one transaction, in printing order.
    pub fn origins(&self) -> impl Iterator<Item = &Origin> {
        self.origins.keys()
    }

    /// The intervals of `origin`: sorted, disjoint, non-adjacent; empty if it has none.
    pub fn intervals(&self, origin: &Origin) -> &[Interval] {
        self.origins.get(origin).map_or(&[], Vec::as_slice)
    }

    /// Every origin with its intervals, in printing order.
    pub fn iter(&self) -> impl Iterator<Item = (&Origin, &[Interval])> {
        self.origins
            .iter()
            .map(|(origin, intervals)| (origin, intervals.as_slice()))
    }

    /// Every transaction, one by one, in order. Meant for small sets and tests: `1-1000000` is a
    /// million items.
    pub fn gtids(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.iter().flat_map(|(origin, intervals)| {
            intervals.iter().flat_map(move |interval| {
                (interval.start..=interval.end).map(move |sequence| Gtid {
                    origin: origin.clone(),
                    sequence,
                })
            })
        })
    }

    /// Whether `gtid` is in the set.
    pub fn contains_gtid(&self, gtid: &Gtid) -> bool {
        let intervals = self.intervals(&gtid.origin);
        let i = intervals.partition_point(|interval| interval.end < gtid.sequence);
        intervals
            .get(i)
            .is_some_and(|interval| interval.start <= gtid.sequence)
    }

    /// Whether every transaction of `other` is in this set (`other ⊆ self`).
    pub fn contains(&self, other: &GtidSet) -> bool {
        other.origins.iter().all(|(origin, theirs)| {
            let ours = self.intervals(origin);
            // Our intervals are merged, so each of theirs must sit inside a single one of ours.
            theirs.iter().all(|interval| {
                let i = ours.partition_point(|our| our.end < interval.start);
                ours.get(i)
                    .is_some_and(|our| our.start <= interval.start && interval.end <= our.end)
            })
        })
    }

    /// The transactions in either set.
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut result = self.clone();
        result.union_with(other);
        result
    }

    /// Adds every transaction of `other` to this set.
    pub fn union_with(&mut self, other: &GtidSet) {
        for (origin, theirs) in &other.origins {
            match self.origins.get_mut(origin) {
                Some(ours) => *ours = union_intervals(ours, theirs),
                None => {
                    self.origins.insert(origin.clone(), theirs.clone());
                }
            }
        }
    }

    /// The transactions in this set and not in `other` (MySQL's `GTID_SUBTRACT`).
    pub fn difference(&self, other: &GtidSet) -> GtidSet {
        let origins = self
            .origins
            .iter()
            .filter_map(|(origin, ours)| {
                let remaining = match other.origins.get(origin) {
                    Some(theirs) => subtract_intervals(ours, theirs),
                    None => ours.clone(),
                };
                (!remaining.is_empty()).then(|| (origin.clone(), remaining))
            })
            .collect();
        GtidSet { origins }
    }

    /// The transactions in both sets.
    pub fn intersection(&self, other: &GtidSet) -> GtidSet {
        let origins = self
            .origins
            .iter()
            .filter_map(|(origin, ours)| {
                let theirs = other.origins.get(origin)?;
                let common = intersect_intervals(ours, theirs);
                (!common.is_empty()).then(|| (origin.clone(), common))
            })
            .collect();
        GtidSet { origins }
    }

    /// The highest sequence number of `origin` in the set, if it has any.
    pub fn last_sequence(&self, origin: &Origin) -> Option<u64> {
        self.intervals(origin).last().map(|interval| interval.end)
    }

    /// The highest transaction of `origin` in the set, if it has any.
    pub fn last_gtid(&self, origin: &Origin) -> Option<Gtid> {
        self.last_sequence(origin).map(|sequence| Gtid {
            origin: origin.clone(),
            sequence,
        })
    }

    /// The GTID following the highest one of `origin` present (gaps below it are not filled),
    /// or `origin`'s first GTID if the set has none of it. On MariaDB a domain's `seq_no`s are
    /// shared by all its servers, so for "the next seq_no of domain D" take the maximum over
    /// D's origins instead. Fails when the highest is already the flavour's maximum.
    pub fn next_gtid(&self, origin: &Origin) -> Result<Gtid, Error> {
        let next = match self.last_sequence(origin) {
            None => Some(1),
            Some(last) => last
                .checked_add(1)
                .filter(|&next| next <= origin.max_sequence()),
        };
        next.map(|sequence| Gtid {
            origin: origin.clone(),
            sequence,
        })
        .ok_or_else(|| Error::SequenceExhausted {
            origin: origin.to_string(),
        })
    }

    /// Whether the set has reached `gtid` under Python MyHoard's gapless assumption: some
    /// transaction of the same origin numbered `gtid`'s or higher is present
    /// (`are_gtids_in_executed_set`). Unlike [`GtidSet::contains_gtid`] it ignores gaps, which
    /// suits binlog ranges that list only the GTIDs a file holds.
    pub fn has_reached(&self, gtid: &Gtid) -> bool {
        self.last_sequence(&gtid.origin)
            .is_some_and(|last| last >= gtid.sequence)
    }

    /// Drops every transaction of `gtid`'s origin numbered above `gtid`, leaving other origins
    /// alone (Python's `truncate_gtid_executed`, one origin at a time).
    pub fn truncate_after(&mut self, gtid: &Gtid) {
        let Some(intervals) = self.origins.get_mut(&gtid.origin) else {
            return;
        };
        intervals.retain(|interval| interval.start <= gtid.sequence);
        if let Some(last) = intervals.last_mut() {
            last.end = last.end.min(gtid.sequence);
        }
        if intervals.is_empty() {
            self.origins.remove(&gtid.origin);
        }
    }

    /// The set exactly as MySQL prints `@@GLOBAL.gtid_executed`, `@@GLOBAL.gtid_purged` and
    /// `SHOW BINARY LOG STATUS`'s `Executed_Gtid_Set` (`Gtid_set::default_string_format`):
    /// like `Display`, but with `",\n"` between UUIDs. Tagged and untagged intervals of one UUID
    /// stay in one entry (`uuid:1-5:tag:1-3`). The empty set is the empty string.
    pub fn to_server_string(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out, ",\n");
        out
    }

    fn write_text(&self, out: &mut impl fmt::Write, separator: &str) -> fmt::Result {
        let mut previous_uuid = None;
        for (i, (origin, intervals)) in self.origins.iter().enumerate() {
            match origin {
                Origin::Mysql { uuid, tag } => {
                    // MySQL writes a UUID once and then each of its tags in turn, so the
                    // separator only comes where the UUID changes.
                    if previous_uuid != Some(uuid) {
                        if i > 0 {
                            out.write_str(separator)?;
                        }
                        write!(out, "{uuid}")?;
                        previous_uuid = Some(uuid);
                    }
                    if let Some(tag) = tag {
                        write!(out, ":{tag}")?;
                    }
                }
                Origin::Mariadb { .. } => {
                    if i > 0 {
                        out.write_str(separator)?;
                    }
                    write!(out, "{origin}")?;
                    previous_uuid = None;
                }
            }
            for interval in intervals {
                write!(out, ":{interval}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for GtidSet {
    /// MySQL's form without newlines: `uuid:1-5:7:tag:1-3,uuid2:3`, MariaDB origins as
    /// `0-1:1-100`. The empty set prints as the empty string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_text(f, ",")
    }
}

impl fmt::Debug for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GtidSet({:?})", self.to_string())
    }
}

impl FromStr for GtidSet {
    type Err = Error;

    /// [`GtidSet::parse_mysql`]'s syntax, also accepting MariaDB origins in place of UUIDs
    /// (`0-1:1-100,0-2:5`), which is how `Display` writes them. That form is ours alone: no
    /// server reads or prints it.
    fn from_str(text: &str) -> Result<GtidSet, Error> {
        parse_set(text, true)
    }
}

impl FromIterator<Gtid> for GtidSet {
    fn from_iter<I: IntoIterator<Item = Gtid>>(iter: I) -> GtidSet {
        let mut set = GtidSet::new();
        set.extend(iter);
        set
    }
}

impl Extend<Gtid> for GtidSet {
    fn extend<I: IntoIterator<Item = Gtid>>(&mut self, iter: I) {
        for gtid in iter {
            self.insert(&gtid);
        }
    }
}

impl Serialize for GtidSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.origins.len()))?;
        for (origin, intervals) in &self.origins {
            map.serialize_entry(&origin.to_string(), intervals)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for GtidSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<GtidSet, D::Error> {
        // Keys are parsed one by one, so "ABC…" and "abc…" both land on one origin and merge.
        let raw = BTreeMap::<String, Vec<Interval>>::deserialize(deserializer)?;
        let mut set = GtidSet::new();
        for (key, intervals) in raw {
            let origin: Origin = key.parse().map_err(de::Error::custom)?;
            for interval in intervals {
                check_fits(&origin, interval).map_err(de::Error::custom)?;
                set.insert_interval(origin.clone(), interval);
            }
        }
        Ok(set)
    }
}

/// Fails if `interval` goes past what `origin`'s flavour can number.
fn check_fits(origin: &Origin, interval: Interval) -> Result<(), Error> {
    if interval.end > origin.max_sequence() {
        return Err(Error::SequenceOverflow {
            text: format!("{origin}:{interval}"),
        });
    }
    Ok(())
}

/// Parses MySQL's set syntax; with `allow_mariadb`, `domain-server` may stand for a UUID.
fn parse_set(text: &str, allow_mariadb: bool) -> Result<GtidSet, Error> {
    let mut set = GtidSet::new();
    for entry in text.split(',') {
        let entry = entry.trim_matches(is_space);
        // The server skips empty entries (`a,,b`, a trailing comma), and so do we.
        if entry.is_empty() {
            continue;
        }
        let mut parts = entry.split(':').map(|part| part.trim_matches(is_space));
        let head = parts.next().unwrap_or_default();
        let (uuid, mut origin) = match head.parse::<Uuid>() {
            Ok(uuid) => (Some(uuid), Origin::mysql(uuid)),
            Err(error) => {
                if !allow_mariadb {
                    return Err(error);
                }
                (None, parse_mariadb_origin(head)?)
            }
        };
        for part in parts {
            let starts_like_tag = part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if starts_like_tag {
                let Some(uuid) = uuid else {
                    return Err(Error::InvalidTag {
                        text: part.to_owned(),
                    });
                };
                origin = Origin::mysql_tagged(uuid, part.parse()?);
            } else if part.is_empty() {
                return Err(Error::InvalidSequence {
                    text: entry.to_owned(),
                });
            } else {
                let interval = parse_interval(part, origin.max_sequence())?;
                set.insert_interval(origin.clone(), interval);
            }
        }
    }
    Ok(set)
}

/// Parses `5` or `1-5` (whitespace allowed around the `-`).
fn parse_interval(text: &str, max: u64) -> Result<Interval, Error> {
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (start.trim_matches(is_space), end.trim_matches(is_space)),
        None => (text, text),
    };
    let start = parse_sequence(start, max, text)?;
    let end = parse_sequence(end, max, text)?;
    if end < start {
        return Err(Error::ReversedInterval {
            text: text.to_owned(),
        });
    }
    Ok(Interval { start, end })
}

/// Parses a decimal sequence number in `1..=max`; errors name `context`.
fn parse_sequence(digits: &str, max: u64, context: &str) -> Result<u64, Error> {
    let context = || context.to_owned();
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    // A leading zero is refused: MySQL 8.x reads such a number as octal, 9.7 as decimal.
    if !all_digits || (digits.len() > 1 && digits.starts_with('0')) {
        return Err(Error::InvalidSequence { text: context() });
    }
    match digits.parse::<u64>() {
        Ok(0) => Err(Error::ZeroSequence { text: context() }),
        Ok(n) if n <= max => Ok(n),
        // Only digits, so the only possible failure is overflow.
        _ => Err(Error::SequenceOverflow { text: context() }),
    }
}

/// `digits` without leading zeros (but `0` stays `0`), for MariaDB, which reads numbers in
/// decimal only and so accepts `0-1-05` as `0-1-5`.
fn strip_leading_zeros(digits: &str) -> &str {
    let stripped = digits.trim_start_matches('0');
    if stripped.is_empty() && !digits.is_empty() {
        "0"
    } else {
        stripped
    }
}

/// Parses a decimal `u32`: digits only, no sign.
fn parse_u32(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The characters MySQL's parser skips between tokens (`my_isspace`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Inserts `new` into sorted, disjoint, non-adjacent `intervals`, merging what it touches.
fn insert_sorted(intervals: &mut Vec<Interval>, new: Interval) {
    // Saturating: an interval ending at u64::MAX touches everything after it, which is nothing.
    let first = intervals.partition_point(|iv| iv.end.saturating_add(1) < new.start);
    let after =
        first + intervals[first..].partition_point(|iv| iv.start <= new.end.saturating_add(1));
    if first == after {
        intervals.insert(first, new);
        return;
    }
    let merged = Interval {
        start: new.start.min(intervals[first].start),
        end: new.end.max(intervals[after - 1].end),
    };
    intervals.splice(first..after, [merged]);
}

/// The union of two normalised interval lists, normalised.
fn union_intervals(a: &[Interval], b: &[Interval]) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.start <= y.start => {
                i += 1;
                *x
            }
            (_, Some(y)) => {
                j += 1;
                *y
            }
            (Some(x), None) => {
                i += 1;
                *x
            }
            (None, None) => break,
        };
        match out.last_mut() {
            Some(last) if next.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(next.end);
            }
            _ => out.push(next),
        }
    }
    out
}

/// `a` minus `b`, both normalised; the result is normalised.
fn subtract_intervals(a: &[Interval], b: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut j = 0;
    for &interval in a {
        while j < b.len() && b[j].end < interval.start {
            j += 1;
        }
        let mut start = interval.start;
        let mut k = j;
        let mut consumed = false;
        while k < b.len() && b[k].start <= interval.end {
            let cut = b[k];
            if cut.start > start {
                // cut.start > start >= 1, so no underflow.
                out.push(Interval {
                    start,
                    end: cut.start - 1,
                });
            }
            if cut.end >= interval.end {
                consumed = true;
                break;
            }
            // cut.end < interval.end <= u64::MAX, so no overflow.
            start = start.max(cut.end + 1);
            k += 1;
        }
        if !consumed {
            out.push(Interval {
                start,
                end: interval.end,
            });
        }
    }
    out
}

/// The intersection of two normalised lists; normalised.
fn intersect_intervals(a: &[Interval], b: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let start = x.start.max(y.start);
        let end = x.end.min(y.end);
        if start <= end {
            out.push(Interval { start, end });
        }
        if x.end < y.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// MariaDB positions
// ---------------------------------------------------------------------------------------------

/// A MariaDB GTID position: the last `seq_no` per `(domain_id, server_id)`. This is what
/// `@@gtid_binlog_state` and a binlog's `Gtid_list` event hold; `@@gtid_binlog_pos`,
/// `@@gtid_slave_pos` and `@@gtid_current_pos` hold its one-per-domain subset (see
/// [`MariadbGtidState::domain_positions`]). All parse into this type.
///
/// It records where each stream got to, not which transactions exist: MariaDB has no gaps to
/// describe. [`MariadbGtidState::to_gtid_set`] reads "last seq_no N" as the range `1..=N` of
/// origin `"<domain>-<server>"`, which is design.md's JSON form
/// (`{"0-1": [[1, 100]]}`) and the gapless reading Python MyHoard applies everywhere.
/// Where a set says otherwise (a binlog's `gtid_ranges` such as `[[101, 200]]`), converting back
/// with [`MariadbGtidState::from_gtid_set`] keeps only each origin's highest number.
///
/// A `seq_no` of 0 is kept (the server accepts it, meaning "nothing yet") but adds nothing to a
/// set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MariadbGtidState {
    last: BTreeMap<(u32, u32), u64>,
}

impl MariadbGtidState {
    /// The empty position.
    pub fn new() -> MariadbGtidState {
        MariadbGtidState::default()
    }

    /// Records `sequence` as the last `seq_no` of `(domain, server)`, replacing any earlier
    /// value, as the server does for each GTID it logs.
    pub fn update(&mut self, domain: u32, server: u32, sequence: u64) {
        self.last.insert((domain, server), sequence);
    }

    /// Records `gtid` as the last of its origin. Does nothing for a MySQL GTID.
    pub fn update_gtid(&mut self, gtid: &Gtid) {
        if let Origin::Mariadb { domain, server } = gtid.origin {
            self.update(domain, server, gtid.sequence);
        }
    }

    /// The last `seq_no` of `(domain, server)`, if recorded.
    pub fn get(&self, domain: u32, server: u32) -> Option<u64> {
        self.last.get(&(domain, server)).copied()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// How many `(domain, server)` pairs are recorded.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Every `(domain, server, last seq_no)`, by domain then server.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.last
            .iter()
            .map(|(&(domain, server), &sequence)| (domain, server, sequence))
    }

    /// The most recent `(server, seq_no)` of each domain: what `@@gtid_binlog_pos` shows. A
    /// domain numbers its transactions in one sequence across servers, so the most recent is
    /// the highest `seq_no` (always so under `gtid_strict_mode`); on a tie, the higher server id.
    pub fn domain_positions(&self) -> BTreeMap<u32, (u32, u64)> {
        let mut positions = BTreeMap::new();
        for (domain, server, sequence) in self.iter() {
            positions
                .entry(domain)
                .and_modify(|best: &mut (u32, u64)| {
                    if sequence >= best.1 {
                        *best = (server, sequence);
                    }
                })
                .or_insert((server, sequence));
        }
        positions
    }

    /// [`MariadbGtidState::domain_positions`] in the server's syntax, as `@@gtid_binlog_pos`
    /// prints it (`0-1-100,1-2-29`, by domain), ready for `SET GLOBAL gtid_slave_pos`.
    pub fn to_position_string(&self) -> String {
        let mut out = String::new();
        for (i, (domain, (server, sequence))) in self.domain_positions().into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{domain}-{server}-{sequence}");
        }
        out
    }

    /// The transactions the position implies: `1..=last` for each `(domain, server)` with a
    /// last `seq_no` of at least 1, under origin `"<domain>-<server>"`. See the type's doc for
    /// why the range starts at 1.
    pub fn to_gtid_set(&self) -> GtidSet {
        let mut set = GtidSet::new();
        for (domain, server, sequence) in self.iter() {
            if sequence > 0 {
                set.insert_interval(
                    Origin::mariadb(domain, server),
                    Interval {
                        start: 1,
                        end: sequence,
                    },
                );
            }
        }
        set
    }

    /// The position a set reaches: each MariaDB origin's highest `seq_no`. Fails on a MySQL
    /// origin.
    pub fn from_gtid_set(set: &GtidSet) -> Result<MariadbGtidState, Error> {
        let mut state = MariadbGtidState::new();
        for (origin, intervals) in set.iter() {
            let Origin::Mariadb { domain, server } = *origin else {
                return Err(Error::NotMariadb {
                    origin: origin.to_string(),
                });
            };
            if let Some(last) = intervals.last() {
                state.update(domain, server, last.end);
            }
        }
        Ok(state)
    }
}

impl fmt::Display for MariadbGtidState {
    /// Every entry in the server's syntax, `0-1-100,0-2-150,1-2-29`: by domain, and within a
    /// domain by `seq_no`, so that the most recent comes last. That is the order the server
    /// writes its own state file in, and the order `SET GLOBAL gtid_binlog_state` needs: the
    /// last entry of a domain becomes its most recent GTID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(u32, u32, u64)> = self.iter().collect();
        entries.sort_by_key(|&(domain, server, sequence)| (domain, sequence, server));
        for (i, (domain, server, sequence)) in entries.into_iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{domain}-{server}-{sequence}")?;
        }
        Ok(())
    }
}

impl FromStr for MariadbGtidState {
    type Err = Error;

    /// Parses a comma list of `domain-server-seq` as `@@gtid_binlog_state`, `@@gtid_binlog_pos`,
    /// `@@gtid_slave_pos` and `@@gtid_current_pos` print it; the empty string is the empty
    /// position. As on the server, numbers are decimal and may have leading zeros (`0-1-05` is
    /// `0-1-5`). Whitespace around any token is allowed, a little more than the server takes (it
    /// refuses `0-1-5 ,1-2-7`). Refused, as by the server: empty entries, signs, ids above
    /// `u32::MAX`, `seq_no` above `u64::MAX`; and a `(domain, server)` pair listed twice, which
    /// the server refuses in positions and no server prints.
    fn from_str(text: &str) -> Result<MariadbGtidState, Error> {
        let mut state = MariadbGtidState::new();
        if text.trim_matches(is_space).is_empty() {
            return Ok(state);
        }
        for entry in text.split(',') {
            let entry = entry.trim_matches(is_space);
            let (domain, server, sequence) = split_mariadb_gtid(entry)?;
            let sequence = match parse_sequence(strip_leading_zeros(sequence), u64::MAX, entry) {
                Err(Error::ZeroSequence { .. }) => 0,
                other => other?,
            };
            if state.last.insert((domain, server), sequence).is_some() {
                return Err(Error::DuplicateEntry {
                    text: entry.to_owned(),
                });
            }
        }
        Ok(state)
    }
}

// ---------------------------------------------------------------------------------------------
// Binlog GTID ranges
// ---------------------------------------------------------------------------------------------

/// One GTID event read from a binlog, the input of [`build_gtid_ranges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidEvent {
    /// The event header's timestamp, in seconds since the epoch.
    pub timestamp: u64,
    /// The event header's server id.
    pub server_id: u32,
    /// The transaction it starts.
    pub gtid: Gtid,
}

/// A run of consecutive transactions of one origin within a binlog, as stored in binlog
/// metadata `gtid_ranges`. Field names and key order are Python MyHoard's, so the JSON is the
/// same. `server_uuid` is the [`Origin`] as a string: a UUID, `uuid:tag`, or MariaDB's
/// `domain-server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GtidRange {
    /// Last sequence number (inclusive).
    pub end: u64,
    /// Header timestamp of the last transaction's GTID event.
    pub end_ts: u64,
    /// Server id of the range's first GTID event.
    pub server_id: u32,
    /// The origin of every transaction in the range.
    pub server_uuid: Origin,
    /// First sequence number.
    pub start: u64,
    /// Header timestamp of the first transaction's GTID event.
    pub start_ts: u64,
}

impl GtidRange {
    /// `start..=end`; fails if the fields, which are public, do not make an interval.
    pub fn interval(&self) -> Result<Interval, Error> {
        Interval::new(self.start, self.end)
    }
}

/// Folds GTID events, in binlog order, into [`GtidRange`]s one at a time, for a reader that
/// streams events instead of collecting them; [`build_gtid_ranges`] is the one-call form.
///
/// Origins are numbered in the order they first appear ([`GtidRangeBuilder::number`]): a
/// binlog reader pushes a transaction at a time, and carrying and comparing a number costs
/// less than an [`Origin`] (a UUID and an optional tag) on every one of them.
#[derive(Debug, Default)]
pub struct GtidRangeBuilder {
    origins: Vec<Origin>,
    numbers: HashMap<Origin, OriginNumber>,
    /// The origin numbered last: consecutive transactions almost always share it.
    last_numbered: Option<OriginNumber>,
    done: Vec<NumberedRange>,
    current: Option<NumberedRange>,
}

/// An origin's number in a [`GtidRangeBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginNumber(u32);

/// A [`GtidRange`] whose origin is an [`OriginNumber`].
#[derive(Debug, Clone, Copy)]
struct NumberedRange {
    origin: OriginNumber,
    start: u64,
    end: u64,
    start_ts: u64,
    end_ts: u64,
    server_id: u32,
}

impl GtidRangeBuilder {
    /// A builder with no events yet.
    pub fn new() -> GtidRangeBuilder {
        GtidRangeBuilder::default()
    }

    /// The number of `origin`, numbering it if it is new.
    #[inline]
    pub fn number(&mut self, origin: &Origin) -> OriginNumber {
        match self.last_numbered {
            Some(last) if self.origin(last) == origin => last,
            _ => self.number_other(origin),
        }
    }

    #[cold]
    fn number_other(&mut self, origin: &Origin) -> OriginNumber {
        let number = match self.numbers.get(origin) {
            Some(&number) => number,
            None => {
                // A binlog names a handful of origins; 2^32 of them would take a file of
                // 2^32 GTID events, hundreds of gigabytes.
                let number = OriginNumber(u32::try_from(self.origins.len()).unwrap_or(u32::MAX));
                self.origins.push(origin.clone());
                self.numbers.insert(origin.clone(), number);
                number
            }
        };
        self.last_numbered = Some(number);
        number
    }

    /// The origin numbered `number` by this builder.
    pub fn origin(&self, number: OriginNumber) -> &Origin {
        &self.origins[number.0 as usize]
    }

    /// Adds the next event. It extends the current range if it has the same origin and the next
    /// sequence number; anything else closes that range and starts a new one. As in Python
    /// MyHoard the server id is not compared: a range keeps its first event's.
    pub fn push(&mut self, event: GtidEvent) {
        let origin = self.number(&event.gtid.origin);
        self.push_numbered(
            origin,
            event.gtid.sequence,
            event.timestamp,
            event.server_id,
        );
    }

    /// [`push`](Self::push) of an event given by its parts, its origin by its number.
    #[inline]
    pub fn push_numbered(
        &mut self,
        origin: OriginNumber,
        sequence: u64,
        timestamp: u64,
        server_id: u32,
    ) {
        if let Some(current) = &mut self.current
            && current.origin == origin
            && current.end.checked_add(1) == Some(sequence)
        {
            current.end = sequence;
            current.end_ts = timestamp;
            return;
        }
        let next = NumberedRange {
            origin,
            start: sequence,
            end: sequence,
            start_ts: timestamp,
            end_ts: timestamp,
            server_id,
        };
        if let Some(finished) = self.current.replace(next) {
            self.done.push(finished);
        }
    }

    /// The ranges, in binlog order.
    pub fn finish(mut self) -> Vec<GtidRange> {
        self.done.extend(self.current.take());
        self.done
            .iter()
            .map(|range| GtidRange {
                end: range.end,
                end_ts: range.end_ts,
                server_id: range.server_id,
                server_uuid: self.origin(range.origin).clone(),
                start: range.start,
                start_ts: range.start_ts,
            })
            .collect()
    }
}

/// Python MyHoard's `build_gtid_ranges`: folds GTID events in binlog order into ranges, merging
/// while the origin stays the same and each sequence number follows the previous one. Any break
/// (another origin, a gap, a repeat) starts a new range, so the output lists ranges in the order
/// the transactions were logged.
pub fn build_gtid_ranges(events: impl IntoIterator<Item = GtidEvent>) -> Vec<GtidRange> {
    let mut builder = GtidRangeBuilder::new();
    for event in events {
        builder.push(event);
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "8c2b3a1e-2f4d-11ef-a5b2-0242ac120002";

    #[test]
    fn range_builder_numbers_each_origin_once() {
        let u1 = Origin::mysql(U1.parse().expect("uuid"));
        let u1_tagged =
            Origin::mysql_tagged(U1.parse().expect("uuid"), "tag".parse().expect("tag"));
        let u2 = Origin::mysql(U2.parse().expect("uuid"));
        let mariadb = Origin::mariadb(0, 1);
        let mut builder = GtidRangeBuilder::new();
        // In order of appearance, with repeats after other origins: a repeat gets its first
        // number back, and every number leads back to its origin.
        let order = [&u1, &u1, &u2, &u1_tagged, &u1, &mariadb, &u2, &mariadb];
        let numbers: Vec<OriginNumber> = order.iter().map(|o| builder.number(o)).collect();
        for (i, (origin, number)) in order.iter().zip(&numbers).enumerate() {
            assert_eq!(builder.origin(*number), *origin, "#{i}");
            let first = order.iter().position(|o| o == origin).expect("present");
            assert_eq!(*number, numbers[first], "#{i} {origin}");
        }
        let distinct: std::collections::HashSet<u32> = numbers.iter().map(|n| n.0).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn checked_accepts_exactly_what_new_accepts() {
        let mysql = Origin::mysql(U1.parse().expect("uuid"));
        let mariadb = Origin::mariadb(0, 1);
        let cases = [
            (&mysql, 0, false),
            (&mysql, 1, true),
            (&mysql, MYSQL_GNO_MAX, true),
            (&mysql, MYSQL_GNO_MAX + 1, false),
            (&mariadb, 0, false),
            (&mariadb, 1, true),
            (&mariadb, u64::MAX, true),
        ];
        for (origin, sequence, valid) in cases {
            let checked = Gtid::checked(origin.clone(), sequence);
            assert_eq!(checked.is_some(), valid, "{origin}:{sequence}");
            assert_eq!(checked, Gtid::new(origin.clone(), sequence).ok());
        }
    }
    const U3: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";

    /// Replaces `U1`, `U2`, `U3` (and `UP1`, upper-case `U1`) in a test string.
    fn t(text: &str) -> String {
        text.replace("UP1", &U1.to_uppercase())
            .replace("U1", U1)
            .replace("U2", U2)
            .replace("U3", U3)
    }

    fn set(text: &str) -> GtidSet {
        match t(text).parse() {
            Ok(set) => set,
            Err(error) => panic!("test set {text:?} does not parse: {error}"),
        }
    }

    fn gtid(text: &str) -> Gtid {
        match t(text).parse() {
            Ok(gtid) => gtid,
            Err(error) => panic!("test gtid {text:?} does not parse: {error}"),
        }
    }

    fn origin(text: &str) -> Origin {
        match t(text).parse() {
            Ok(origin) => origin,
            Err(error) => panic!("test origin {text:?} does not parse: {error}"),
        }
    }

    /// Checks the representation invariant every public operation must keep.
    fn assert_normalised(set: &GtidSet) {
        for (origin, intervals) in set.iter() {
            assert!(
                !intervals.is_empty(),
                "{origin} has no intervals in {set:?}"
            );
            for interval in intervals {
                assert!(
                    interval.start >= 1 && interval.start <= interval.end,
                    "{set:?}"
                );
            }
            for pair in intervals.windows(2) {
                assert!(
                    pair[0].end.saturating_add(1) < pair[1].start,
                    "{origin} not merged in {set:?}"
                );
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // MySQL text
    // -----------------------------------------------------------------------------------------

    #[test]
    fn parses_and_formats_mysql_sets() {
        // (input, Display, to_server_string)
        let cases = [
            ("", "", ""),
            ("  \n ", "", ""),
            // @@gtid_executed of the MySQL 9.7 source in mysql.md: one UUID, no gaps.
            ("U1:1-1969", "U1:1-1969", "U1:1-1969"),
            // Tagged GTIDs as MySQL 9.7 prints them after `SET gtid_next='AUTOMATIC:mytag'`.
            ("U1:1:mytag:1", "U1:1:mytag:1", "U1:1:mytag:1"),
            // Several UUIDs: MySQL separates them with ",\n".
            ("U1:1-5:7,\nU2:3", "U1:1-5:7,U2:3", "U1:1-5:7,\nU2:3"),
            (
                "U1:1-439:mytag:1-2,\nU2:1-11:12-15:20,\nU3:1",
                "U1:1-439:mytag:1-2,U2:1-15:20,U3:1",
                "U1:1-439:mytag:1-2,\nU2:1-15:20,\nU3:1",
            ),
            (
                "U1:1-5:tag1:1-3:tag2:7",
                "U1:1-5:tag1:1-3:tag2:7",
                "U1:1-5:tag1:1-3:tag2:7",
            ),
            // A UUID with tagged transactions only.
            ("U2:t:4-5", "U2:t:4-5", "U2:t:4-5"),
            // UUIDs sorted by their bytes.
            ("U3:1,U2:2,U1:3", "U1:3,U2:2,U3:1", "U1:3,\nU2:2,\nU3:1"),
            // Upper case is accepted and printed lower case, tags included.
            ("UP1:1-3:TAG_A:5", "U1:1-3:tag_a:5", "U1:1-3:tag_a:5"),
            // Intervals sorted, overlapping and adjacent ones merged.
            ("U1:7:1-3:2-5", "U1:1-5:7", "U1:1-5:7"),
            ("U1:1-3:4-6:8", "U1:1-6:8", "U1:1-6:8"),
            ("U1:5-5", "U1:5", "U1:5"),
            // Untagged first, then tags in order; each tag holds until the next one.
            ("U1:zz:1:aa:2:3", "U1:aa:2-3:zz:1", "U1:aa:2-3:zz:1"),
            ("U1:zz:1:aa:2,U1:1", "U1:1:aa:2:zz:1", "U1:1:aa:2:zz:1"),
            ("U1:t:5,U1:1", "U1:1:t:5", "U1:1:t:5"),
            ("U1:1-2,U2:1,U1:3-4", "U1:1-4,U2:1", "U1:1-4,\nU2:1"),
            // Whitespace around every token, empty entries: the server accepts both.
            (
                " U1 : 1 - 3 : 5 ,\n\t U2:9 ",
                "U1:1-3:5,U2:9",
                "U1:1-3:5,\nU2:9",
            ),
            (",U1:1,,", "U1:1", "U1:1"),
            // A UUID or tag without intervals adds nothing, as on the server.
            ("U1", "", ""),
            ("U1:tag,U2:1", "U2:1", "U2:1"),
            // The largest GNO MySQL accepts.
            (
                "U1:9223372036854775806",
                "U1:9223372036854775806",
                "U1:9223372036854775806",
            ),
        ];
        for (input, display, server) in cases {
            let parsed = match GtidSet::parse_mysql(&t(input)) {
                Ok(parsed) => parsed,
                Err(error) => panic!("{input:?}: {error}"),
            };
            assert_normalised(&parsed);
            assert_eq!(parsed.to_string(), t(display), "Display of {input:?}");
            assert_eq!(
                parsed.to_server_string(),
                t(server),
                "server form of {input:?}"
            );
            assert_eq!(
                GtidSet::parse_mysql(&parsed.to_string()),
                Ok(parsed.clone())
            );
            assert_eq!(GtidSet::parse_mysql(&parsed.to_server_string()), Ok(parsed));
        }
    }

    #[test]
    fn reads_mysql_9_7_output_byte_for_byte() {
        // MySQL 9.7.4 after untagged transactions, `SET gtid_next='AUTOMATIC:<tag>'` with tags
        // mytag, MyTag, b_2 and _x, and injected GTIDs of two other UUIDs: @@GLOBAL.gtid_executed,
        // SHOW BINARY LOG STATUS's Executed_Gtid_Set and the next binlog's Previous_gtids all
        // printed exactly this.
        let executed = concat!(
            "00000000-0000-0000-0000-0000000000aa:5:7,\n",
            "e7229510-e923-11f1-baea-02fc00000001:1-3:_x:1:b_2:1:mytag:1-2,\n",
            "ffffffff-0000-0000-0000-000000000001:1:zz:3",
        );
        let parsed = GtidSet::parse_mysql(executed).unwrap();
        assert_eq!(parsed.to_server_string(), executed);
        assert_eq!(parsed.to_string(), executed.replace('\n', ""));
        assert_eq!(parsed.count(), 11);
        let server: Uuid = "e7229510-e923-11f1-baea-02fc00000001".parse().unwrap();
        let mytag = Origin::mysql_tagged(server, "mytag".parse().unwrap());
        assert_eq!(parsed.intervals(&mytag), &[Interval::new(1, 2).unwrap()]);
        assert_eq!(
            parsed
                .next_gtid(&Origin::mysql(server))
                .unwrap()
                .to_string(),
            format!("{server}:4")
        );
        // GTID_SUBTRACT(text, '') normalised these inputs on 9.7 as shown.
        let normalised = [
            ("U1:1-3:7 ,  U1:4-5,,U2:TAG:1", "U1:1-5:7,\nU2:tag:1"),
            ("U1:t:1:u", "U1:t:1"),
            ("U1", ""),
            ("U1:1-2:t:3:1", "U1:1-2:t:1:3"),
            (" U1 : 1 - 3 ", "U1:1-3"),
            ("UP1:1", "U1:1"),
            ("U1:1,", "U1:1"),
            ("U1:3-5:1-9", "U1:1-9"),
        ];
        for (input, expected) in normalised {
            let parsed = GtidSet::parse_mysql(&t(input)).unwrap();
            assert_eq!(parsed.to_server_string(), t(expected), "{input:?}");
        }
        // And refused these ("U1:5-3", which it read as empty, and "U1:010", which 9.7 reads
        // as 10 but 8.x as 8, we refuse as well).
        for input in ["U1:9223372036854775807", "U1:0", "U1:", "U1:1-", "U1:1x"] {
            assert!(GtidSet::parse_mysql(&t(input)).is_err(), "{input:?}");
        }
    }

    #[test]
    fn rejects_malformed_mysql_sets() {
        let uuid = |text: &str| Error::InvalidUuid { text: t(text) };
        let sequence = |text: &str| Error::InvalidSequence { text: t(text) };
        let long_tag = "a".repeat(33);
        let cases = [
            ("garbage", uuid("garbage")),
            ("U1x:1", uuid("U1x")),
            // 35 hex digits, a misplaced dash, a non-hex digit.
            (
                "3e11fa47-71ca-11e1-9e33-c80aa942956:1",
                uuid("3e11fa47-71ca-11e1-9e33-c80aa942956"),
            ),
            (
                "3e11fa4771ca-11e1-9e33-c80aa94295620:1",
                uuid("3e11fa4771ca-11e1-9e33-c80aa94295620"),
            ),
            (
                "3e11fa47-71ca-11e1-9e33-c80aa942956g:1",
                uuid("3e11fa47-71ca-11e1-9e33-c80aa942956g"),
            ),
            ("U1 U2:1", uuid("U1 U2")),
            ("U1:1,nonsense", uuid("nonsense")),
            // MariaDB origins are not MySQL syntax.
            ("0-1:1-5", uuid("0-1")),
            ("U1:0", Error::ZeroSequence { text: "0".into() }),
            ("U1:0-5", Error::ZeroSequence { text: "0-5".into() }),
            ("U1:5-3", Error::ReversedInterval { text: "5-3".into() }),
            ("U1:1-5:9-8", Error::ReversedInterval { text: "9-8".into() }),
            (
                "U1:9223372036854775807",
                Error::SequenceOverflow {
                    text: "9223372036854775807".into(),
                },
            ),
            (
                "U1:1-99999999999999999999999",
                Error::SequenceOverflow {
                    text: "1-99999999999999999999999".into(),
                },
            ),
            ("U1:", sequence("U1:")),
            ("U1:1:", sequence("U1:1:")),
            ("U1::1", sequence("U1::1")),
            ("U1:1-", sequence("1-")),
            ("U1:-5", sequence("-5")),
            ("U1:1-2-3", sequence("1-2-3")),
            ("U1:010", sequence("010")),
            ("U1:+5", sequence("+5")),
            ("U1:1x", sequence("1x")),
            ("U1:1 2", sequence("1 2")),
            ("U1:0x10", sequence("0x10")),
            (
                "U1:tag-x:1",
                Error::InvalidTag {
                    text: "tag-x".into(),
                },
            ),
            (
                "U1:ta g:1",
                Error::InvalidTag {
                    text: "ta g".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(GtidSet::parse_mysql(&t(input)), Err(expected), "{input:?}");
        }
        let input = t(&format!("U1:{long_tag}:1"));
        assert_eq!(
            GtidSet::parse_mysql(&input),
            Err(Error::InvalidTag { text: long_tag })
        );
        let tag32 = "b".repeat(32);
        assert!(GtidSet::parse_mysql(&t(&format!("U1:{tag32}:1"))).is_ok());
    }

    #[test]
    fn error_messages_name_the_offending_text() {
        let error = GtidSet::parse_mysql(&t("U1:1-5,U2:7-3")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "reversed interval \"7-3\": the end is below the start"
        );
        let error = GtidSet::parse_mysql("3e11fa47-71ca:1").unwrap_err();
        assert_eq!(error.to_string(), "invalid server uuid \"3e11fa47-71ca\"");
    }

    #[test]
    fn extended_text_form_carries_mariadb_origins() {
        let cases = [
            ("0-1:1-100,0-2:5", "0-1:1-100,0-2:5"),
            ("0-2:5,U1:3,0-1:1-100", "U1:3,0-1:1-100,0-2:5"),
            ("10-1:1,2-1:1-29", "2-1:1-29,10-1:1"),
            ("0-1:1-18446744073709551615", "0-1:1-18446744073709551615"),
        ];
        for (input, display) in cases {
            let parsed = set(input);
            assert_eq!(parsed.to_string(), t(display), "{input:?}");
            assert_eq!(parsed.to_string().parse(), Ok(parsed));
        }
        let errors = [
            ("0-1:tag:1", Error::InvalidTag { text: "tag".into() }),
            ("x-1:1", Error::InvalidOrigin { text: "x-1".into() }),
            (
                "0-1-2:1",
                Error::InvalidOrigin {
                    text: "0-1-2".into(),
                },
            ),
            (
                "4294967296-1:1",
                Error::InvalidOrigin {
                    text: "4294967296-1".into(),
                },
            ),
            (
                "0-1:18446744073709551616",
                Error::SequenceOverflow {
                    text: "18446744073709551616".into(),
                },
            ),
        ];
        for (input, expected) in errors {
            assert_eq!(input.parse::<GtidSet>(), Err(expected), "{input:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Single GTIDs and origins
    // -----------------------------------------------------------------------------------------

    #[test]
    fn parses_and_formats_gtids() {
        let u1 = || U1.parse::<Uuid>().unwrap();
        let tag = |text: &str| text.parse::<Tag>().unwrap();
        // (input, origin, sequence, Display)
        let cases = [
            ("U1:5", Origin::mysql(u1()), 5, "U1:5"),
            (
                "U1:mytag:1",
                Origin::mysql_tagged(u1(), tag("mytag")),
                1,
                "U1:mytag:1",
            ),
            (
                "UP1:MyTag:7",
                Origin::mysql_tagged(u1(), tag("mytag")),
                7,
                "U1:mytag:7",
            ),
            (
                " U1:9223372036854775806\n",
                Origin::mysql(u1()),
                MYSQL_GNO_MAX,
                "U1:9223372036854775806",
            ),
            // As MariaDB 10.11 prints them in SHOW BINLOG EVENTS ("BEGIN GTID 0-1-3").
            ("0-1-3", Origin::mariadb(0, 1), 3, "0-1-3"),
            ("10-1-1", Origin::mariadb(10, 1), 1, "10-1-1"),
            ("0-1-05", Origin::mariadb(0, 1), 5, "0-1-5"),
            (
                "4294967295-4294967295-18446744073709551615",
                Origin::mariadb(u32::MAX, u32::MAX),
                u64::MAX,
                "4294967295-4294967295-18446744073709551615",
            ),
        ];
        for (input, expected_origin, sequence, display) in cases {
            let parsed = gtid(input);
            assert_eq!(parsed.origin(), &expected_origin, "{input:?}");
            assert_eq!(parsed.sequence(), sequence, "{input:?}");
            assert_eq!(parsed.to_string(), t(display), "{input:?}");
            assert_eq!(parsed.to_string().parse(), Ok(parsed));
        }
    }

    #[test]
    fn rejects_malformed_gtids() {
        let invalid = |text: &str| Error::InvalidGtid { text: t(text) };
        let cases = [
            ("", invalid("")),
            ("U1", invalid("U1")),
            ("0-1", invalid("0-1")),
            ("0-1-2-3", invalid("0-1-2-3")),
            ("a-b-c", invalid("a-b-c")),
            ("+0-1-1", invalid("+0-1-1")),
            ("0-1:5", Error::InvalidUuid { text: "0-1".into() }),
            ("U1:0", Error::ZeroSequence { text: t("U1:0") }),
            (
                "0-1-0",
                Error::ZeroSequence {
                    text: "0-1-0".into(),
                },
            ),
            ("U1:-1", Error::InvalidSequence { text: t("U1:-1") }),
            ("U1:007", Error::InvalidSequence { text: t("U1:007") }),
            (
                "U1:9223372036854775807",
                Error::SequenceOverflow {
                    text: t("U1:9223372036854775807"),
                },
            ),
            (
                "4294967296-1-1",
                Error::SequenceOverflow {
                    text: "4294967296-1-1".into(),
                },
            ),
            (
                "0-1-18446744073709551616",
                Error::SequenceOverflow {
                    text: "0-1-18446744073709551616".into(),
                },
            ),
            (
                "U1:bad tag:1",
                Error::InvalidTag {
                    text: "bad tag".into(),
                },
            ),
            (
                "nope:1",
                Error::InvalidUuid {
                    text: "nope".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(t(input).parse::<Gtid>(), Err(expected), "{input:?}");
        }
        assert_eq!(
            Gtid::new(Origin::mariadb(0, 1), 0),
            Err(Error::ZeroSequence {
                text: "0-1:0".into()
            })
        );
        assert_eq!(
            Gtid::new(origin("U1"), MYSQL_GNO_MAX + 1),
            Err(Error::SequenceOverflow {
                text: t("U1:9223372036854775807")
            })
        );
        assert!(Gtid::new(origin("0-1"), u64::MAX).is_ok());
    }

    #[test]
    fn origins_round_trip_as_json_keys() {
        let cases = [
            ("U1", "U1"),
            ("UP1", "U1"),
            ("U1:mytag", "U1:mytag"),
            ("UP1:MYTAG", "U1:mytag"),
            ("0-1", "0-1"),
            ("4294967295-0", "4294967295-0"),
        ];
        for (input, display) in cases {
            let parsed = origin(input);
            assert_eq!(parsed.to_string(), t(display));
            assert_eq!(parsed.to_string().parse(), Ok(parsed.clone()));
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{}\"", t(display)));
            assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), parsed);
        }
        let errors = [
            (
                "",
                Error::InvalidOrigin {
                    text: String::new(),
                },
            ),
            ("0-", Error::InvalidOrigin { text: "0-".into() }),
            (
                "0-1-2",
                Error::InvalidOrigin {
                    text: "0-1-2".into(),
                },
            ),
            (
                "U1:",
                Error::InvalidTag {
                    text: String::new(),
                },
            ),
            (
                "U1:1abc",
                Error::InvalidTag {
                    text: "1abc".into(),
                },
            ),
            ("xyz:tag", Error::InvalidUuid { text: "xyz".into() }),
        ];
        for (input, expected) in errors {
            assert_eq!(t(input).parse::<Origin>(), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn origins_order_as_mysql_prints_them() {
        let mut origins = [
            origin("0-1"),
            origin("U2"),
            origin("U1:b"),
            origin("U1:_x"),
            origin("U1"),
            origin("U1:a9"),
        ];
        origins.sort();
        let printed: Vec<String> = origins.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                t("U1"),
                t("U1:_x"),
                t("U1:a9"),
                t("U1:b"),
                t("U2"),
                "0-1".into()
            ]
        );
    }

    #[test]
    fn uuid_bytes_round_trip() {
        let uuid: Uuid = U1.parse().unwrap();
        assert_eq!(uuid.as_bytes()[0], 0x3e);
        assert_eq!(uuid.as_bytes()[15], 0x62);
        assert_eq!(Uuid::from_bytes(*uuid.as_bytes()), uuid);
        assert_eq!(uuid.to_string(), U1);
    }

    // -----------------------------------------------------------------------------------------
    // Set operations
    // -----------------------------------------------------------------------------------------

    #[test]
    fn set_operations() {
        // (a, b, a ∪ b, a ∖ b, a ∩ b, a ⊇ b)
        let cases = [
            (
                "U1:1-10",
                "U1:3-5",
                "U1:1-10",
                "U1:1-2:6-10",
                "U1:3-5",
                true,
            ),
            ("U1:1-5", "U1:6-10", "U1:1-10", "U1:1-5", "", false),
            ("U1:1-5", "U2:1-5", "U1:1-5,U2:1-5", "U1:1-5", "", false),
            ("", "U1:1", "U1:1", "", "", false),
            ("U1:1", "", "U1:1", "U1:1", "", true),
            ("", "", "", "", "", true),
            (
                "U1:1-10:20-30",
                "U1:5-25",
                "U1:1-30",
                "U1:1-4:26-30",
                "U1:5-10:20-25",
                false,
            ),
            (
                "U1:5-25",
                "U1:1-10:20-30",
                "U1:1-30",
                "U1:11-19",
                "U1:5-10:20-25",
                false,
            ),
            ("U1:1-10", "U1:1-10", "U1:1-10", "", "U1:1-10", true),
            (
                "U1:1-10",
                "U1:1:3:5:10",
                "U1:1-10",
                "U1:2:4:6-9",
                "U1:1:3:5:10",
                true,
            ),
            (
                "U1:1-3:7-9:tag:1-5",
                "U1:2-8:tag:5",
                "U1:1-9:tag:1-5",
                "U1:1:9:tag:1-4",
                "U1:2-3:7-8:tag:5",
                false,
            ),
            // Tagged and untagged transactions of one UUID are different origins.
            ("U1:1-5", "U1:t:1-5", "U1:1-5:t:1-5", "U1:1-5", "", false),
            (
                "0-1:1-100,0-2:1-50",
                "0-1:50-60",
                "0-1:1-100,0-2:1-50",
                "0-1:1-49:61-100,0-2:1-50",
                "0-1:50-60",
                true,
            ),
            // The very top of the range must not overflow.
            (
                "0-1:1-18446744073709551615",
                "0-1:18446744073709551615",
                "0-1:1-18446744073709551615",
                "0-1:1-18446744073709551614",
                "0-1:18446744073709551615",
                true,
            ),
            (
                "0-1:18446744073709551614",
                "0-1:18446744073709551615",
                "0-1:18446744073709551614-18446744073709551615",
                "0-1:18446744073709551614",
                "",
                false,
            ),
            (
                "U1:9223372036854775806",
                "U1:1-9223372036854775805",
                "U1:1-9223372036854775806",
                "U1:9223372036854775806",
                "",
                false,
            ),
        ];
        for (a, b, union, difference, intersection, contains) in cases {
            let (a_set, b_set) = (set(a), set(b));
            let results = [
                ("union", a_set.union(&b_set), union),
                ("difference", a_set.difference(&b_set), difference),
                ("intersection", a_set.intersection(&b_set), intersection),
            ];
            for (name, result, expected) in results {
                assert_normalised(&result);
                assert_eq!(result.to_string(), t(expected), "{a:?} {name} {b:?}");
            }
            assert_eq!(a_set.contains(&b_set), contains, "{a:?} contains {b:?}");
            let mut in_place = a_set.clone();
            in_place.union_with(&b_set);
            assert_eq!(in_place.to_string(), t(union), "{a:?} union_with {b:?}");
        }
    }

    #[test]
    fn contains_gtid_and_count() {
        let executed = set("U1:1-5:7:tag:3,0-1:10-20");
        let cases = [
            ("U1:1", true),
            ("U1:5", true),
            ("U1:6", false),
            ("U1:7", true),
            ("U1:8", false),
            ("U1:tag:3", true),
            ("U1:tag:1", false),
            ("U1:other:3", false),
            ("U2:1", false),
            ("0-1-10", true),
            ("0-1-20", true),
            ("0-1-9", false),
            ("0-2-10", false),
            ("1-1-10", false),
        ];
        for (input, expected) in cases {
            assert_eq!(executed.contains_gtid(&gtid(input)), expected, "{input:?}");
        }
        let counts = [
            ("", 0u128),
            ("U1:1", 1),
            ("U1:1-5:7:tag:3,0-1:10-20", 18),
            (
                "0-1:1-18446744073709551615,0-2:1-18446744073709551615",
                2 * u128::from(u64::MAX),
            ),
        ];
        for (input, expected) in counts {
            assert_eq!(set(input).count(), expected, "{input:?}");
        }
    }

    #[test]
    fn last_and_next_gtids() {
        let executed = set("U1:1-5:9:tag:3,0-1:10-20");
        // (origin, last, next)
        let cases = [
            ("U1", Some("U1:9"), "U1:10"),
            ("U1:tag", Some("U1:tag:3"), "U1:tag:4"),
            ("U2", None, "U2:1"),
            ("U2:new", None, "U2:new:1"),
            ("0-1", Some("0-1-20"), "0-1-21"),
            ("0-2", None, "0-2-1"),
        ];
        for (input, last, next) in cases {
            let origin = origin(input);
            assert_eq!(
                executed.last_gtid(&origin),
                last.map(gtid),
                "last of {input:?}"
            );
            assert_eq!(
                executed.next_gtid(&origin),
                Ok(gtid(next)),
                "next of {input:?}"
            );
        }
        let full = set("U1:1-9223372036854775806,0-1:18446744073709551615");
        for input in ["U1", "0-1"] {
            assert_eq!(
                full.next_gtid(&origin(input)),
                Err(Error::SequenceExhausted { origin: t(input) })
            );
        }
    }

    #[test]
    fn gapless_reach_and_truncation() {
        let executed = set("U1:1-5:9-12,U2:1-3,0-1:1-100");
        let reached = [
            ("U1:7", true),
            ("U1:12", true),
            ("U1:13", false),
            ("U2:3", true),
            ("U2:4", false),
            ("U3:1", false),
            ("0-1-100", true),
            ("0-2-1", false),
        ];
        for (input, expected) in reached {
            assert_eq!(executed.has_reached(&gtid(input)), expected, "{input:?}");
        }
        // (truncate after, result)
        let cases = [
            ("U1:10", "U1:1-5:9-10,U2:1-3,0-1:1-100"),
            ("U1:7", "U1:1-5,U2:1-3,0-1:1-100"),
            ("U1:5", "U1:1-5,U2:1-3,0-1:1-100"),
            ("U1:100", "U1:1-5:9-12,U2:1-3,0-1:1-100"),
            ("U2:1", "U1:1-5:9-12,U2:1,0-1:1-100"),
            ("U3:1", "U1:1-5:9-12,U2:1-3,0-1:1-100"),
            ("0-1-50", "U1:1-5:9-12,U2:1-3,0-1:1-50"),
        ];
        for (after, expected) in cases {
            let mut truncated = executed.clone();
            truncated.truncate_after(&gtid(after));
            assert_normalised(&truncated);
            assert_eq!(
                truncated.to_string(),
                t(expected),
                "truncate after {after:?}"
            );
        }
        let mut truncated = set("U1:5-9,U2:1");
        truncated.truncate_after(&gtid("U1:4"));
        assert_eq!(truncated.to_string(), t("U2:1"));
        assert_eq!(truncated.intervals(&origin("U1")), &[]);
    }

    #[test]
    fn insertion_merges_in_any_order() {
        let orders: [&[u64]; 4] = [
            &[1, 2, 3, 5],
            &[5, 3, 2, 1],
            &[3, 1, 5, 2],
            &[2, 2, 5, 1, 3, 3],
        ];
        for order in orders {
            let gtids = order
                .iter()
                .map(|&sequence| Gtid::new(origin("U1"), sequence).unwrap());
            let inserted: GtidSet = gtids.collect();
            assert_normalised(&inserted);
            assert_eq!(inserted.to_string(), t("U1:1-3:5"), "{order:?}");
        }
        let mut joined = set("U1:1-3:7-9:20");
        joined.insert_interval(origin("U1"), Interval::new(4, 6).unwrap());
        assert_eq!(joined.to_string(), t("U1:1-9:20"));
        joined.insert_interval(origin("U1"), Interval::new(2, 25).unwrap());
        assert_eq!(joined.to_string(), t("U1:1-25"));
        let mut top = set("0-1:5");
        top.insert_interval(origin("0-1"), Interval::new(7, u64::MAX).unwrap());
        top.insert_interval(origin("0-1"), Interval::single(6).unwrap());
        assert_eq!(top.to_string(), "0-1:5-18446744073709551615");
        assert_eq!(GtidSet::from_gtid(&gtid("U1:4")).to_string(), t("U1:4"));
    }

    #[test]
    fn iterates_origins_intervals_and_gtids() {
        let executed = set("U2:1-2,U1:t:4,0-1:7");
        let origins: Vec<String> = executed.origins().map(ToString::to_string).collect();
        assert_eq!(origins, [t("U1:t"), t("U2"), "0-1".into()]);
        let intervals: Vec<(String, Vec<(u64, u64)>)> = executed
            .iter()
            .map(|(origin, intervals)| {
                let pairs = intervals.iter().map(|iv| (iv.start(), iv.end())).collect();
                (origin.to_string(), pairs)
            })
            .collect();
        assert_eq!(
            intervals,
            [
                (t("U1:t"), vec![(4, 4)]),
                (t("U2"), vec![(1, 2)]),
                ("0-1".into(), vec![(7, 7)])
            ]
        );
        let gtids: Vec<String> = executed.gtids().map(|g| g.to_string()).collect();
        assert_eq!(gtids, [t("U1:t:4"), t("U2:1"), t("U2:2"), "0-1-7".into()]);
    }

    #[test]
    fn intervals_validate() {
        assert_eq!(
            Interval::new(0, 3),
            Err(Error::ZeroSequence { text: "0-3".into() })
        );
        assert_eq!(
            Interval::new(4, 3),
            Err(Error::ReversedInterval { text: "4-3".into() })
        );
        assert_eq!(
            Interval::single(0),
            Err(Error::ZeroSequence { text: "0-0".into() })
        );
        let full = Interval::new(1, u64::MAX).unwrap();
        assert_eq!(full.len(), u64::MAX);
        assert!(full.contains(u64::MAX) && !full.contains(0) && !full.is_empty());
        assert_eq!(Interval::new(3, 3).unwrap().to_string(), "3");
        assert_eq!(Interval::new(3, 4).unwrap().to_string(), "3-4");
    }

    // -----------------------------------------------------------------------------------------
    // JSON
    // -----------------------------------------------------------------------------------------

    #[test]
    fn json_form_is_myhoards() {
        let cases = [
            ("", "{}"),
            ("U1:1-5:7", r#"{"U1":[[1,5],[7,7]]}"#),
            (
                "U1:1-5:mytag:1-2,U2:3",
                r#"{"U1":[[1,5]],"U1:mytag":[[1,2]],"U2":[[3,3]]}"#,
            ),
            // design.md's MariaDB example.
            ("0-1:1-100,2-1:1-29", r#"{"0-1":[[1,100]],"2-1":[[1,29]]}"#),
        ];
        for (input, json) in cases {
            let parsed = set(input);
            assert_eq!(
                serde_json::to_string(&parsed).unwrap(),
                t(json),
                "{input:?}"
            );
            assert_eq!(serde_json::from_str::<GtidSet>(&t(json)).unwrap(), parsed);
        }
    }

    #[test]
    fn json_input_is_normalised() {
        // What Python MyHoard may have written: unsorted, overlapping, upper case, empty lists.
        let cases = [
            (
                r#"{"U1": [[1, 4], [7, 12]], "U2": [[1, 100]]}"#,
                "U1:1-4:7-12,U2:1-100",
            ),
            (r#"{"UP1": [[5, 9], [1, 6]], "U2": []}"#, "U1:1-9"),
            (r#"{"UP1": [[1, 3]], "U1": [[4, 4]]}"#, "U1:1-4"),
            (r#"{"U1:TAG": [[2, 2]]}"#, "U1:tag:2"),
        ];
        for (json, expected) in cases {
            let parsed: GtidSet = serde_json::from_str(&t(json)).unwrap();
            assert_normalised(&parsed);
            assert_eq!(parsed.to_string(), t(expected), "{json}");
        }
        let errors = [
            (r#"{"U1": [[0, 5]]}"#, "transaction number 0"),
            (r#"{"U1": [[5, 3]]}"#, "reversed interval"),
            (r#"{"U1": [[1, 9223372036854775807]]}"#, "number too large"),
            (r#"{"nope": [[1, 2]]}"#, "invalid gtid origin"),
            (r#"{"U1": [[1]]}"#, "invalid length"),
            (r#"{"U1": [[1, 2, 3]]}"#, "trailing"),
            (r#"{"U1": [[-1, 2]]}"#, "invalid value"),
            (r#"["U1"]"#, "invalid type"),
        ];
        for (json, message) in errors {
            let error = serde_json::from_str::<GtidSet>(&t(json)).unwrap_err();
            assert!(error.to_string().contains(message), "{json}: {error}");
        }
    }

    #[test]
    fn json_replication_state_of_design_md() {
        let json = r#"{"server1": {"0-1": [[1, 100]], "2-1": [[1, 29]]}}"#;
        let state: BTreeMap<String, GtidSet> = serde_json::from_str(json).unwrap();
        assert_eq!(state["server1"].to_string(), "0-1:1-100,2-1:1-29");
        assert!(state["server1"].contains_gtid(&gtid("2-1-29")));
    }

    // -----------------------------------------------------------------------------------------
    // MariaDB positions
    // -----------------------------------------------------------------------------------------

    #[test]
    fn mariadb_positions_as_the_server_prints_them() {
        // One MariaDB 10.11.14 server after transactions in domains 0, 1 and 10 under server
        // ids 1, 2 and 3, read back with SELECT @@gtid_binlog_state, @@gtid_binlog_pos,
        // @@gtid_current_pos; the next binlog's Gtid_list event showed the binlog state too.
        let binlog_state = "0-1-3,0-3-4,1-1-2,1-2-3,10-1-1";
        let binlog_pos = "0-3-4,1-2-3,10-1-1";
        let current_pos = "10-1-1";

        let state: MariadbGtidState = binlog_state.parse().unwrap();
        assert_eq!(state.len(), 5);
        assert_eq!(state.get(0, 3), Some(4));
        assert_eq!(state.get(2, 3), None);
        assert_eq!(state.to_string(), binlog_state);
        assert_eq!(state.to_position_string(), binlog_pos);
        let positions: Vec<(u32, (u32, u64))> = state.domain_positions().into_iter().collect();
        assert_eq!(positions, [(0, (3, 4)), (1, (2, 3)), (10, (1, 1))]);

        let pos: MariadbGtidState = binlog_pos.parse().unwrap();
        assert_eq!(pos.to_string(), binlog_pos);
        assert_eq!(pos.to_position_string(), binlog_pos);
        let current: MariadbGtidState = current_pos.parse().unwrap();
        assert_eq!(current.to_string(), current_pos);
        // An empty @@gtid_slave_pos.
        let empty: MariadbGtidState = "".parse().unwrap();
        assert!(empty.is_empty() && empty.to_string().is_empty());
        assert!(empty.to_position_string().is_empty());

        let set = state.to_gtid_set();
        assert_eq!(set.to_string(), "0-1:1-3,0-3:1-4,1-1:1-2,1-2:1-3,10-1:1");
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            r#"{"0-1":[[1,3]],"0-3":[[1,4]],"1-1":[[1,2]],"1-2":[[1,3]],"10-1":[[1,1]]}"#
        );
        assert_eq!(MariadbGtidState::from_gtid_set(&set), Ok(state));
    }

    #[test]
    fn mariadb_state_text_rules() {
        // (input, Display)
        let cases = [
            ("0-1-100,1-2-29", "0-1-100,1-2-29"),
            ("1-2-29,0-1-100", "0-1-100,1-2-29"),
            (" 0-1-5, 1-2-7 ", "0-1-5,1-2-7"),
            ("0-1-05", "0-1-5"),
            // The server accepts 0, meaning "nothing yet".
            ("0-1-0", "0-1-0"),
            ("0-1-18446744073709551615", "0-1-18446744073709551615"),
            ("4294967295-4294967295-1", "4294967295-4294967295-1"),
            // Within a domain the most recent (highest seq_no) is written last, whatever the
            // server ids, as the server orders its own state.
            ("0-1-9,0-5-2", "0-5-2,0-1-9"),
        ];
        for (input, display) in cases {
            let state: MariadbGtidState = input.parse().unwrap();
            assert_eq!(state.to_string(), display, "{input:?}");
            assert_eq!(state.to_string().parse(), Ok(state));
        }
        let errors = [
            (
                "0-1-5,,1-2-7",
                Error::InvalidGtid {
                    text: String::new(),
                },
            ),
            (
                "0-1-5,",
                Error::InvalidGtid {
                    text: String::new(),
                },
            ),
            ("0-1", Error::InvalidGtid { text: "0-1".into() }),
            (
                "-1-1-1",
                Error::InvalidGtid {
                    text: "-1-1-1".into(),
                },
            ),
            (
                "+0-1-1",
                Error::InvalidGtid {
                    text: "+0-1-1".into(),
                },
            ),
            (
                "0-1-x",
                Error::InvalidSequence {
                    text: "0-1-x".into(),
                },
            ),
            (
                "0-1-5,0-1-7",
                Error::DuplicateEntry {
                    text: "0-1-7".into(),
                },
            ),
            (
                "4294967296-1-1",
                Error::SequenceOverflow {
                    text: "4294967296-1-1".into(),
                },
            ),
            (
                "0-1-18446744073709551616",
                Error::SequenceOverflow {
                    text: "0-1-18446744073709551616".into(),
                },
            ),
            (U1, Error::InvalidGtid { text: U1.into() }),
        ];
        for (input, expected) in errors {
            assert_eq!(
                input.parse::<MariadbGtidState>(),
                Err(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn mariadb_state_and_sets() {
        let mut state = MariadbGtidState::new();
        state.update(0, 1, 0);
        state.update_gtid(&gtid("1-2-7"));
        state.update_gtid(&gtid("U1:5"));
        assert_eq!(state.to_string(), "0-1-0,1-2-7");
        // seq_no 0 implies no transaction.
        assert_eq!(state.to_gtid_set().to_string(), "1-2:1-7");
        // A binlog's range says otherwise than 1..=last; only the last is kept.
        let ranges = set("0-1:101-200,0-2:5:9");
        assert_eq!(
            MariadbGtidState::from_gtid_set(&ranges)
                .unwrap()
                .to_string(),
            "0-2-9,0-1-200"
        );
        assert_eq!(
            MariadbGtidState::from_gtid_set(&set("0-1:1,U1:t:1")),
            Err(Error::NotMariadb { origin: t("U1:t") })
        );
        // Equal seq_nos in one domain: the higher server id counts as the most recent.
        let tie: MariadbGtidState = "0-1-5,0-2-5".parse().unwrap();
        assert_eq!(tie.to_position_string(), "0-2-5");
    }

    // -----------------------------------------------------------------------------------------
    // Binlog ranges
    // -----------------------------------------------------------------------------------------

    fn event(timestamp: u64, server_id: u32, text: &str) -> GtidEvent {
        GtidEvent {
            timestamp,
            server_id,
            gtid: gtid(text),
        }
    }

    fn range(
        start: u64,
        end: u64,
        start_ts: u64,
        end_ts: u64,
        server_id: u32,
        origin_text: &str,
    ) -> GtidRange {
        GtidRange {
            end,
            end_ts,
            server_id,
            server_uuid: origin(origin_text),
            start,
            start_ts,
        }
    }

    #[test]
    fn builds_gtid_ranges_like_myhoard() {
        let cases: Vec<(Vec<GtidEvent>, Vec<GtidRange>)> = vec![
            (vec![], vec![]),
            (
                vec![event(10, 1, "U1:5")],
                vec![range(5, 5, 10, 10, 1, "U1")],
            ),
            (
                vec![
                    event(10, 1, "U1:1"),
                    event(11, 1, "U1:2"),
                    event(12, 1, "U1:3"),
                ],
                vec![range(1, 3, 10, 12, 1, "U1")],
            ),
            // Another origin, a gap, a repeat, a step back: each starts a new range.
            (
                vec![
                    event(10, 1, "U1:1"),
                    event(11, 1, "U1:2"),
                    event(12, 2, "U2:1"),
                    event(13, 1, "U1:3"),
                    event(14, 1, "U1:5"),
                    event(15, 1, "U1:5"),
                    event(16, 1, "U1:4"),
                ],
                vec![
                    range(1, 2, 10, 11, 1, "U1"),
                    range(1, 1, 12, 12, 2, "U2"),
                    range(3, 3, 13, 13, 1, "U1"),
                    range(5, 5, 14, 14, 1, "U1"),
                    range(5, 5, 15, 15, 1, "U1"),
                    range(4, 4, 16, 16, 1, "U1"),
                ],
            ),
            // Tagged GTIDs are their own origin.
            (
                vec![
                    event(10, 1, "U1:1"),
                    event(10, 1, "U1:t:2"),
                    event(11, 1, "U1:t:3"),
                ],
                vec![range(1, 1, 10, 10, 1, "U1"), range(2, 3, 10, 11, 1, "U1:t")],
            ),
            // As in Python, the server id is not compared; a range keeps its first one.
            (
                vec![
                    event(10, 1, "0-1-7"),
                    event(11, 9, "0-1-8"),
                    event(12, 2, "0-2-9"),
                ],
                vec![range(7, 8, 10, 11, 1, "0-1"), range(9, 9, 12, 12, 2, "0-2")],
            ),
            (
                vec![
                    event(1, 1, "0-1-18446744073709551615"),
                    event(2, 1, "0-1-1"),
                ],
                vec![
                    range(u64::MAX, u64::MAX, 1, 1, 1, "0-1"),
                    range(1, 1, 2, 2, 1, "0-1"),
                ],
            ),
        ];
        for (events, expected) in cases {
            assert_eq!(build_gtid_ranges(events.clone()), expected, "{events:?}");
        }
    }

    #[test]
    fn gtid_range_json_matches_python() {
        let ranges = vec![
            range(1, 3, 1700000000, 1700000002, 1, "U1"),
            range(4, 4, 5, 5, 2, "0-2"),
        ];
        let json = serde_json::to_string(&ranges).unwrap();
        // Python's dict order: end, end_ts, server_id, server_uuid, start, start_ts.
        let expected = t(concat!(
            r#"[{"end":3,"end_ts":1700000002,"server_id":1,"server_uuid":"U1","start":1,"#,
            r#""start_ts":1700000000},{"end":4,"end_ts":5,"server_id":2,"server_uuid":"0-2","#,
            r#""start":4,"start_ts":5}]"#
        ));
        assert_eq!(json, expected);
        assert_eq!(
            serde_json::from_str::<Vec<GtidRange>>(&json).unwrap(),
            ranges
        );
        // Python MyHoard's own output for a binlog, spacing and all.
        let python = t(
            r#"[{"end": 12, "end_ts": 1592906443, "server_id": 123, "server_uuid": "U1", "start": 1, "start_ts": 1592906440}]"#,
        );
        let parsed: Vec<GtidRange> = serde_json::from_str(&python).unwrap();
        assert_eq!(parsed, [range(1, 12, 1592906440, 1592906443, 123, "U1")]);
        assert_eq!(
            GtidSet::from_ranges(&parsed).unwrap().to_string(),
            t("U1:1-12")
        );
        let broken = range(5, 4, 0, 0, 1, "U1");
        assert_eq!(
            GtidSet::from_ranges([&broken]),
            Err(Error::ReversedInterval { text: "5-4".into() })
        );
    }

    // -----------------------------------------------------------------------------------------
    // Properties
    // -----------------------------------------------------------------------------------------

    mod properties {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::*;
        use super::{U1, U2, U3, assert_normalised};

        fn any_origin(mysql_only: bool) -> BoxedStrategy<Origin> {
            let mysql = (
                0..3usize,
                prop::option::of(prop::sample::select(vec!["a", "b_1", "zz"])),
            )
                .prop_map(|(i, tag)| {
                    let uuid: Uuid = [U1, U2, U3][i].parse().unwrap();
                    match tag {
                        None => Origin::mysql(uuid),
                        Some(tag) => Origin::mysql_tagged(uuid, tag.parse().unwrap()),
                    }
                });
            if mysql_only {
                mysql.boxed()
            } else {
                prop_oneof![
                    mysql,
                    (0..3u32, 1..3u32).prop_map(|(d, s)| Origin::mariadb(d, s))
                ]
                .boxed()
            }
        }

        /// An origin with an interval: mostly small numbers, so that intervals overlap and
        /// touch, and sometimes at the top of the flavour's range, to catch overflows.
        fn any_entry(
            mysql_only: bool,
            small_only: bool,
        ) -> impl Strategy<Value = (Origin, Interval)> {
            (any_origin(mysql_only), 1..40u64, 0..8u64, any::<bool>()).prop_map(
                move |(origin, start, len, high)| {
                    let (start, end) = if high && !small_only {
                        let max = origin.max_sequence();
                        (max - start - len, max - start + 1)
                    } else {
                        (start, start + len)
                    };
                    (origin, Interval::new(start, end).unwrap())
                },
            )
        }

        fn any_set(mysql_only: bool, small_only: bool) -> impl Strategy<Value = GtidSet> {
            prop::collection::vec(any_entry(mysql_only, small_only), 0..8).prop_map(|entries| {
                let mut set = GtidSet::new();
                for (origin, interval) in entries {
                    set.insert_interval(origin, interval);
                }
                set
            })
        }

        fn model(set: &GtidSet) -> BTreeSet<(Origin, u64)> {
            set.gtids()
                .map(|g| (g.origin().clone(), g.sequence()))
                .collect()
        }

        proptest! {
            #[test]
            fn text_round_trips(s in any_set(false, false)) {
                assert_normalised(&s);
                prop_assert_eq!(s.to_string().parse::<GtidSet>(), Ok(s.clone()));
                prop_assert_eq!(s.to_server_string().parse::<GtidSet>(), Ok(s.clone()));
                let json = serde_json::to_string(&s).unwrap();
                prop_assert_eq!(serde_json::from_str::<GtidSet>(&json).unwrap(), s);
            }

            #[test]
            fn mysql_text_round_trips(s in any_set(true, false)) {
                prop_assert_eq!(GtidSet::parse_mysql(&s.to_string()), Ok(s.clone()));
                prop_assert_eq!(GtidSet::parse_mysql(&s.to_server_string()), Ok(s.clone()));
                prop_assert!(!s.to_string().contains('\n'));
            }

            /// Messy text (any entry order, one interval per entry, upper case, whitespace,
            /// ",\n") parses to the set and prints in the canonical form.
            #[test]
            fn messy_text_prints_canonically(
                entries in prop::collection::vec(
                    (any_entry(true, false), any::<bool>(), 0..4usize), 0..10),
            ) {
                let mut expected = GtidSet::new();
                let mut text = String::new();
                for (i, ((origin, interval), upper, spacing)) in entries.into_iter().enumerate() {
                    let separator = [",", ",\n", " , ", ",\t"][spacing];
                    let mut entry = format!("{origin}:{}", interval);
                    if interval.start() != interval.end() && spacing == 2 {
                        entry = format!("{origin} : {} - {}", interval.start(), interval.end());
                    }
                    if upper {
                        entry = entry.to_uppercase();
                    }
                    if i > 0 {
                        text.push_str(separator);
                    }
                    text.push_str(&entry);
                    expected.insert_interval(origin, interval);
                }
                let parsed = GtidSet::parse_mysql(&text);
                prop_assert_eq!(parsed.as_ref(), Ok(&expected), "{:?}", text);
                prop_assert_eq!(parsed.unwrap().to_string(), expected.to_string());
            }

            #[test]
            fn union_laws(a in any_set(false, false), b in any_set(false, false), c in any_set(false, false)) {
                let ab = a.union(&b);
                assert_normalised(&ab);
                prop_assert_eq!(&ab, &b.union(&a));
                prop_assert_eq!(ab.union(&c), a.union(&b.union(&c)));
                prop_assert_eq!(a.union(&a), a.clone());
                prop_assert!(ab.contains(&a) && ab.contains(&b));
                prop_assert!(a.contains(&a) && a.contains(&GtidSet::new()));
            }

            #[test]
            fn difference_and_intersection_laws(a in any_set(false, false), b in any_set(false, false)) {
                let difference = a.difference(&b);
                let intersection = a.intersection(&b);
                assert_normalised(&difference);
                assert_normalised(&intersection);
                // Difference then union restores.
                prop_assert_eq!(difference.union(&b), a.union(&b));
                prop_assert_eq!(difference.union(&intersection), a.clone());
                prop_assert!(difference.intersection(&b).is_empty());
                prop_assert_eq!(&intersection, &b.intersection(&a));
                prop_assert!(a.contains(&intersection) && b.contains(&intersection));
                prop_assert!(a.contains(&difference));
                prop_assert_eq!(a.contains(&b), b.difference(&a).is_empty());
                prop_assert_eq!(a.contains(&b) && b.contains(&a), a == b);
                prop_assert_eq!(
                    a.union(&b).count(),
                    a.count() + b.count() - intersection.count()
                );
                prop_assert_eq!(a.count(), difference.count() + intersection.count());
            }

            /// On small sets, every operation agrees with a plain set of (origin, number).
            #[test]
            fn agrees_with_a_model(a in any_set(false, true), b in any_set(false, true), probe in any_entry(false, true)) {
                let (ma, mb) = (model(&a), model(&b));
                prop_assert_eq!(model(&a.union(&b)), &ma | &mb);
                prop_assert_eq!(model(&a.difference(&b)), &ma - &mb);
                prop_assert_eq!(model(&a.intersection(&b)), &ma & &mb);
                prop_assert_eq!(a.contains(&b), mb.is_subset(&ma));
                prop_assert_eq!(a.count(), ma.len() as u128);
                let (origin, interval) = probe;
                for sequence in interval.start()..=interval.end() {
                    let gtid = Gtid::new(origin.clone(), sequence).unwrap();
                    prop_assert_eq!(a.contains_gtid(&gtid), ma.contains(&(origin.clone(), sequence)));
                }
                let last = ma.iter().filter(|(o, _)| *o == origin).map(|(_, n)| *n).max();
                prop_assert_eq!(a.last_sequence(&origin), last);
                prop_assert_eq!(a.next_gtid(&origin).unwrap().sequence(), last.unwrap_or(0) + 1);
                let mut truncated = a.clone();
                let cut = Gtid::new(origin.clone(), interval.start()).unwrap();
                truncated.truncate_after(&cut);
                assert_normalised(&truncated);
                let kept: BTreeSet<_> = ma
                    .iter()
                    .filter(|(o, n)| *o != origin || *n <= interval.start())
                    .cloned()
                    .collect();
                prop_assert_eq!(model(&truncated), kept);
            }

            #[test]
            fn ranges_replay_the_events(
                events in prop::collection::vec((any_entry(false, true), 0..3u32), 0..30),
            ) {
                let events: Vec<GtidEvent> = events
                    .into_iter()
                    .enumerate()
                    .map(|(i, ((origin, interval), server_id))| GtidEvent {
                        timestamp: i as u64,
                        server_id,
                        gtid: Gtid::new(origin, interval.start()).unwrap(),
                    })
                    .collect();
                let ranges = build_gtid_ranges(events.clone());
                // Expanding the ranges gives back the events' GTIDs, in order.
                let replayed: Vec<Gtid> = ranges
                    .iter()
                    .flat_map(|r| (r.start..=r.end).map(|n| Gtid::new(r.server_uuid.clone(), n).unwrap()))
                    .collect();
                let logged: Vec<Gtid> = events.iter().map(|e| e.gtid.clone()).collect();
                prop_assert_eq!(&replayed, &logged);
                // No two neighbouring ranges could have been merged.
                for pair in ranges.windows(2) {
                    prop_assert!(
                        pair[0].server_uuid != pair[1].server_uuid || pair[0].end + 1 != pair[1].start
                    );
                }
                prop_assert_eq!(GtidSet::from_ranges(&ranges).unwrap(), logged.into_iter().collect::<GtidSet>());
            }

            #[test]
            fn mariadb_state_round_trips(
                entries in prop::collection::vec((0..4u32, 0..4u32, 0..1000u64), 0..10),
            ) {
                let mut state = MariadbGtidState::new();
                for (domain, server, sequence) in entries {
                    state.update(domain, server, sequence);
                }
                prop_assert_eq!(state.to_string().parse::<MariadbGtidState>(), Ok(state.clone()));
                let mut without_zeros = MariadbGtidState::new();
                for (domain, server, sequence) in state.iter().filter(|e| e.2 > 0) {
                    without_zeros.update(domain, server, sequence);
                }
                prop_assert_eq!(MariadbGtidState::from_gtid_set(&state.to_gtid_set()), Ok(without_zeros));
                let positions: MariadbGtidState = state.to_position_string().parse().unwrap();
                prop_assert_eq!(positions.len(), state.domain_positions().len());
            }

            #[test]
            fn gtids_round_trip(entry in any_entry(false, false)) {
                let (origin, interval) = entry;
                let gtid = Gtid::new(origin, interval.end()).unwrap();
                prop_assert_eq!(gtid.to_string().parse::<Gtid>(), Ok(gtid));
            }
        }
    }
}

//! Binary logs: reading the GTIDs, transactions and boundaries out of MySQL and MariaDB binlog
//! and relay-log files ourselves, as Python MyHoard's `read_gtids_from_log` does, without
//! `mysqlbinlog` and without a server.
//!
//! [`BinlogReader`] streams one file: it checks the magic number and every event's CRC32,
//! reads the format description (server version, checksum algorithm), and yields each
//! [`Transaction`] with its GTID, start and end offsets and commit time; [`BinlogSummary`] holds
//! the file's GTID set, the state before it (MySQL `Previous_gtids`, MariaDB `Gtid_list`) and
//! after it, MyHoard's `gtid_ranges`, how the file ended (Rotate, Stop, or still open) and any
//! partial tail. Both flavours are handled, MySQL 8.3+ tagged GTIDs and anonymous transactions
//! included; [`event`] has the decoders of the individual event bodies.
//!
//! ```no_run
//! use myhoard::binlog::{BinlogReader, ReadOptions, Tail};
//!
//! # fn main() -> Result<(), myhoard::binlog::Error> {
//! let options = ReadOptions { tail: Tail::Reject, ..ReadOptions::default() };
//! let mut reader = BinlogReader::open("/var/lib/mysql/binlog.000042".as_ref(), options)?;
//! while let Some(transaction) = reader.next_transaction()? {
//!     println!("{:?} at {}..{}", transaction.gtid, transaction.start, transaction.end);
//! }
//! let summary = reader.finish()?;
//! println!("{} transactions: {}", summary.n_transactions, summary.gtids);
//! # Ok(())
//! # }
//! ```
//!
//! Runs on whichever thread calls it (the binlog watcher, an operator command). It only reads:
//! it never writes, seeks or locks the file, so it is safe on the binlog the server is writing,
//! whose last event may be incomplete ([`Tail::Tolerate`]). Errors are typed and name the file
//! and the byte offset of the event at fault; no input makes it panic or loop.
//!
//! [`Flavor`] here is only which server wrote a file, as its format description says; the
//! running server's flavour and version are [`crate::db::Flavor`].

mod checksum;
pub mod event;
pub mod reader;
#[cfg(test)]
mod tests;

pub use event::{Checksum, Flavor, FormatDescription};
pub use reader::{
    BinlogReader, BinlogSummary, DEFAULT_BUFFER_SIZE, Error, FileEnd, GtidState, ReadOptions, Tail,
    Transaction, TransactionEnd, read_summary,
};

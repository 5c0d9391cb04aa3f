//! The database layer: which server we talk to ([`Flavor`]) and a typed session with it
//! ([`Client`]).
//!
//! One [`Flavor`], probed from `SELECT VERSION()` when a client connects, owns every difference
//! between MariaDB 10.6+ and MySQL 8.0, 8.4 and 9.x: statement names, GTID variables, replica
//! status columns, the relay-log replay recipe, snapshot tools. Code outside this module asks
//! the flavour and never branches on the server kind itself.
//!
//! Named `db` rather than `mysql` so that it does not shadow the `mysql` crate.

pub mod client;
pub mod flavor;

pub use client::{
    BinaryLog, BinlogStatus, Client, DEFAULT_TIMEOUT, Error, ErrorKind, GtidState, LONG_TIMEOUT,
    ReplicaStatus, ServerGtids, ServerIdentity, UntilCondition,
};
pub use flavor::{ApplyUntil, Flavor, RelayLogStart, SnapshotTool, Version};

//! Restoring a backup onto a fresh server: the snapshot first, then the binlogs up to the
//! requested point in time.
//!
//! [`apply`] replays downloaded binlogs through the restored server's own replication applier
//! (Python MyHoard's relay-log trick), on MariaDB and MySQL, and decides where the replay stops.
//! The coordinator that drives a whole restore through Python MyHoard's phases
//! (`restore_coordinator.py`) will live here too.

pub mod apply;
pub mod coordinator;

//! Backup streams: one full snapshot plus every binlog uploaded after it, stored under
//! `<site>/<stream_id>/` in MyHoard's layout ([`layout`]), read and written by [`remote`].

pub mod layout;
pub mod remote;
pub mod upload;

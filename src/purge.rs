//! Which local binlogs may be deleted (`PURGE BINARY LOGS`): the binlog purge policy.
//!
//! A binlog may go only when nothing can need it any more. [`binlogs_to_purge`] walks the local
//! binlogs oldest first and stops at the first one that must stay, so what it returns is always
//! a prefix of them. A binlog must stay when:
//!
//! 1. it was closed less than `min_binlog_age_before_purge` ago (a tenth of that in restore
//!    mode, where purging is deliberately aggressive);
//! 2. a backup may still need it. In active mode every stream must have it uploaded (or have it
//!    predate the stream). Otherwise the streams that have a basebackup (that can be resumed)
//!    must all have its GTIDs stored remotely, and there must be at least one such stream; with
//!    no streams at all, observe and restore mode purge only if `purge_when_observe_no_streams`
//!    (always true in restore mode);
//! 3. a replica may still need it. `replication_state` (`PUT /replication_state`) lists every
//!    server's executed GTIDs; each must include the binlog's GTIDs. A binlog without GTIDs
//!    tells nothing: outside observe mode it is purged only together with a later binlog whose
//!    GTIDs every server has, because deleting a file past a replica's position breaks
//!    replication even when the file is empty. With no replication state at all, anything
//!    backed up may go.
//!
//! Outside active mode the local server's own transactions are ignored in the GTID checks: a
//! standby can log a few (empty transactions and the like) that no backup and no other server
//! will ever have, and they must not pin its binlogs forever. Nothing is purged when no binlog
//! is known, when active mode (or observe mode without `purge_when_observe_no_streams`) has no
//! stream, or when some server's executed set is empty (its state is unknown).
//!
//! One round purges at most `max_files_per_cycle` files and `max_bytes_per_cycle` bytes, but
//! always at least one file; when that cap cut the list short, [`PurgePlan::more_purgeable`]
//! tells the caller to run the next round at once instead of after `purge_interval`.
//!
//! GTID containment is MyHoard's gapless test: a binlog range counts as present when the server
//! has a transaction of the same origin numbered at least the range's end. One difference from
//! MyHoard: a server whose executed set has origins but no ranges (`{"uuid": []}`) is read as
//! an empty set here, so it stops all purging instead of only GTID-carrying binlogs.
//!
//! Pure: values in, a plan out, no clock, no I/O, no logging; the caller runs the `PURGE` and
//! logs [`Held`]. Runs on the controller thread. Mirrors `Controller._purge_old_binlogs`,
//! `_should_purge_binlogs` and `collect_binlogs_to_purge` in Python MyHoard's `controller.py`,
//! and `BackupStream.is_binlog_safe_to_delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::backup_stream::layout::{BinlogInfo, epoch_seconds};
use crate::config::BinlogPurgeSettings;
use crate::gtid::{GtidRange, GtidSet, Origin, Uuid};

/// The controller modes in which binlogs are purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurgeMode {
    Active,
    Observe,
    Restore,
}

/// What one backup stream knows about which binlogs are safe in storage.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamView {
    /// The stream has its `basebackup_info`, so it can be resumed. Outside active mode only such
    /// streams have a say.
    pub has_basebackup_info: bool,
    /// The newest complete local binlog when the stream was created: no older binlog can be
    /// needed by its basebackup.
    pub initial_latest_complete_binlog_index: Option<u64>,
    pub uploaded: Uploaded,
}

/// How a stream tells which binlogs are stored, by the stream's own mode.
#[derive(Debug, Clone, PartialEq)]
pub enum Uploaded {
    /// A stream this server uploads to (active). Binlogs strictly below
    /// `last_processed_local_index` are uploaded (the newest uploaded one is kept, as MyHoard
    /// does), and so are those another stream uploaded and this one references
    /// (`local_index_to_remote_key`).
    LocalIndexes {
        last_processed_local_index: Option<u64>,
        remote_references: BTreeSet<u64>,
    },
    /// A stream another server uploads to (observe): the GTIDs in its basebackup and remote
    /// binlogs (`remote_gtid_executed`). A binlog without GTIDs is of no use to it.
    RemoteGtids(GtidSet),
    /// A stream being promoted: only binlogs older than the stream are safe.
    Nothing,
}

/// The local server, whose own transactions are ignored outside active mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnServer {
    /// `@@server_uuid`: transactions of that UUID, tagged or not.
    Mysql(Uuid),
    /// `@@server_id`: transactions it committed, in any replication domain.
    Mariadb { server_id: u32 },
}

impl OwnServer {
    fn originated(&self, origin: &Origin) -> bool {
        match (self, origin) {
            (OwnServer::Mysql(own), Origin::Mysql { uuid, .. }) => own == uuid,
            (OwnServer::Mariadb { server_id }, Origin::Mariadb { server, .. }) => {
                server_id == server
            }
            _ => false,
        }
    }
}

/// Everything the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct PurgeInput<'a> {
    /// The local binlogs the scanner knows (`binlog_scanner_state.binlogs`), oldest first.
    pub binlogs: &'a [BinlogInfo],
    pub mode: PurgeMode,
    /// The current backup streams.
    pub streams: &'a [StreamView],
    /// `replication_state`: each server's executed GTIDs, by any name.
    pub replication_state: &'a BTreeMap<String, GtidSet>,
    /// `None` while the server's identity is not known yet: then nothing is ignored.
    pub own_server: Option<OwnServer>,
    pub settings: &'a BinlogPurgeSettings,
    pub now: DateTime<Utc>,
}

/// Why a binlog, and every later one, stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// No binlog is known.
    NoBinlogs,
    /// No backup stream, in active mode or in observe mode without
    /// `purge_when_observe_no_streams`.
    NoBackupStreams,
    /// A server in the replication state has no GTIDs at all.
    ReplicaWithoutGtids { server: String },
    /// The binlog was closed too recently.
    TooNew { local_index: u64 },
    /// Some stream does not have it stored (or, outside active mode, none says it has).
    NotBackedUp { local_index: u64 },
    /// A server has not executed all of its GTIDs yet.
    NotReplicated { local_index: u64, server: String },
    /// Binlogs without GTIDs from this one on, with no later binlog that every server has
    /// replicated to vouch for them.
    WithoutGtidsUnconfirmed { local_index: u64 },
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::NoBinlogs => f.write_str("no binlogs known"),
            Held::NoBackupStreams => f.write_str("no backup streams"),
            Held::ReplicaWithoutGtids { server } => {
                write!(f, "server {server:?} has no GTID info")
            }
            Held::TooNew { local_index } => {
                write!(
                    f,
                    "binlog {local_index} is newer than the minimum purge age"
                )
            }
            Held::NotBackedUp { local_index } => {
                write!(
                    f,
                    "binlog {local_index} is not safe to delete for every backup stream"
                )
            }
            Held::NotReplicated {
                local_index,
                server,
            } => write!(
                f,
                "binlog {local_index} not yet replicated to server {server:?}"
            ),
            Held::WithoutGtidsUnconfirmed { local_index } => write!(
                f,
                "binlog {local_index} and later have no GTIDs and no later replicated binlog"
            ),
        }
    }
}

/// The outcome of [`binlogs_to_purge`].
#[derive(Debug, Clone, PartialEq)]
pub struct PurgePlan<'a> {
    /// The binlogs to purge now: the oldest candidates, capped per round.
    pub binlogs: &'a [BinlogInfo],
    /// The per-round cap left purgeable binlogs for later: run the next round at once.
    pub more_purgeable: bool,
    /// Why the first binlog not purgeable stays; `None` when every candidate is purgeable.
    pub held: Option<Held>,
    /// Nothing is waiting that should have gone: either binlogs are purged now (once the
    /// `PURGE` succeeds), or nothing could legitimately be purged (no binlogs, only binlogs too
    /// new, only binlogs without GTIDs). MyHoard then bumps `last_could_have_purged`, behind the
    /// `myhoard.binlog.time_since_could_have_purged` gauge.
    pub nothing_overdue: bool,
}

impl PurgePlan<'_> {
    /// The argument of `PURGE BINARY LOGS TO`, which deletes the binlogs *before* the one
    /// named: the base name of the last binlog to purge, with its number plus one (at least six
    /// digits, as the server names them). `None` when nothing is to be purged, or the name has
    /// no numeric extension.
    pub fn purge_to_file_name(&self) -> Option<String> {
        let last = self.binlogs.last()?;
        let base_name = Path::new(&last.file_name).file_name()?.to_str()?;
        let (prefix, number) = base_name.rsplit_once('.')?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let next = number.parse::<u64>().ok()?.checked_add(1)?;
        Some(format!("{prefix}.{next:06}"))
    }

    /// The `binlogs_purged_at` to record after this round, in seconds since the epoch: `now`,
    /// or one `purge_interval` earlier when the round purged successfully and the cap left more,
    /// so the next round is due at once.
    pub fn round_time_to_record(
        &self,
        purged: bool,
        settings: &BinlogPurgeSettings,
        now: DateTime<Utc>,
    ) -> f64 {
        let now = epoch_seconds(now);
        if purged && self.more_purgeable {
            now - settings.purge_interval.as_secs_f64()
        } else {
            now
        }
    }
}

/// Whether a purge round is due: purging is enabled and `purge_interval` has passed since the
/// last round (`binlogs_purged_at`, seconds since the epoch).
pub fn purge_round_due(
    settings: &BinlogPurgeSettings,
    last_round_at: f64,
    now: DateTime<Utc>,
) -> bool {
    settings.enabled && epoch_seconds(now) - last_round_at >= settings.purge_interval.as_secs_f64()
}

/// The binlogs that may be purged now, oldest first (see the module doc for the rules).
pub fn binlogs_to_purge<'a>(input: &PurgeInput<'a>) -> PurgePlan<'a> {
    let held = |held: Held, nothing_overdue: bool| PurgePlan {
        binlogs: &[],
        more_purgeable: false,
        held: Some(held),
        nothing_overdue,
    };
    if input.binlogs.is_empty() {
        return held(Held::NoBinlogs, true);
    }
    if input.streams.is_empty()
        && (input.mode == PurgeMode::Active
            || (input.mode == PurgeMode::Observe && !input.settings.purge_when_observe_no_streams))
    {
        return held(Held::NoBackupStreams, false);
    }
    if let Some((server, _)) = input
        .replication_state
        .iter()
        .find(|(_, set)| set.is_empty())
    {
        return held(
            Held::ReplicaWithoutGtids {
                server: server.clone(),
            },
            false,
        );
    }

    let walk = Walk::new(input).run();
    let eligible = &input.binlogs[..walk.n_purgeable];
    let n_capped = n_within_cap(eligible, input.settings);
    PurgePlan {
        binlogs: &eligible[..n_capped],
        more_purgeable: n_capped < eligible.len(),
        held: walk.held,
        nothing_overdue: n_capped > 0 || walk.only_inapplicable,
    }
}

/// The walk over the binlogs, oldest first, with the bookkeeping MyHoard keeps for its gauge.
struct Walk<'i, 'a> {
    input: &'i PurgeInput<'a>,
    /// Own transactions to ignore; only outside active mode.
    exclude: Option<OwnServer>,
    min_age_seconds: f64,
    no_streams_is_safe: bool,
    /// Binlogs confirmed purgeable, from the first.
    n_purgeable: usize,
    held: Option<Held>,
    /// Python's `only_binlogs_that_are_too_new`: `None` until the first binlog is looked at.
    only_too_new: Option<bool>,
    /// Python's `only_binlogs_without_gtids`: `None` until a binlog reaches the replication test.
    only_without_gtids: Option<bool>,
    only_inapplicable: bool,
}

impl<'i, 'a> Walk<'i, 'a> {
    fn new(input: &'i PurgeInput<'a>) -> Walk<'i, 'a> {
        let mut min_age_seconds = input.settings.min_binlog_age_before_purge.as_secs_f64();
        let mut no_streams_is_safe = input.settings.purge_when_observe_no_streams;
        // Restoring: there are no streams yet, and the binlogs only need to reach the other
        // servers of the cluster (a replica may need them from us after a failover).
        if input.mode == PurgeMode::Restore {
            min_age_seconds /= 10.0;
            no_streams_is_safe = true;
        }
        Walk {
            input,
            exclude: input.own_server.filter(|_| input.mode != PurgeMode::Active),
            min_age_seconds,
            no_streams_is_safe,
            n_purgeable: 0,
            held: None,
            only_too_new: None,
            only_without_gtids: None,
            only_inapplicable: false,
        }
    }

    fn run(mut self) -> Self {
        let input = self.input;
        let now = epoch_seconds(input.now);
        for (i, binlog) in input.binlogs.iter().enumerate() {
            let local_index = binlog.local_index;
            if now - binlog.processed_at < self.min_age_seconds {
                self.only_too_new.get_or_insert(true);
                self.held = Some(Held::TooNew { local_index });
                break;
            }
            self.only_too_new = Some(false);
            if !self.backed_up(binlog) {
                self.held = Some(Held::NotBackedUp { local_index });
                break;
            }
            if input.replication_state.is_empty() {
                self.n_purgeable = i + 1;
                continue;
            }
            if binlog.gtid_ranges.is_empty() {
                self.only_without_gtids.get_or_insert(true);
                // An observer's binlogs feed no replica; elsewhere the file is held as "maybe"
                // until a later binlog proves every server is past it.
                if input.mode == PurgeMode::Observe {
                    self.n_purgeable = i + 1;
                }
                continue;
            }
            self.only_without_gtids = Some(false);
            let lagging = input
                .replication_state
                .iter()
                .find(|(_, executed)| !self.has_reached(executed, &binlog.gtid_ranges));
            if let Some((server, _)) = lagging {
                self.held = Some(Held::NotReplicated {
                    local_index,
                    server: server.clone(),
                });
                break;
            }
            self.n_purgeable = i + 1;
        }
        if self.held.is_none() && self.n_purgeable < input.binlogs.len() {
            // The walk ended with binlogs without GTIDs still waiting for confirmation.
            self.held = Some(Held::WithoutGtidsUnconfirmed {
                local_index: input.binlogs[self.n_purgeable].local_index,
            });
        }
        self.only_inapplicable =
            self.only_without_gtids == Some(true) || self.only_too_new == Some(true);
        self
    }

    /// Whether backups no longer need `binlog` (rule 2).
    fn backed_up(&self, binlog: &BinlogInfo) -> bool {
        let streams = self.input.streams;
        if self.input.mode == PurgeMode::Active {
            return streams.iter().all(|stream| self.safe_for(stream, binlog));
        }
        if streams.is_empty() && self.no_streams_is_safe {
            return true;
        }
        let mut resumable = streams
            .iter()
            .filter(|stream| stream.has_basebackup_info)
            .peekable();
        resumable.peek().is_some() && resumable.all(|stream| self.safe_for(stream, binlog))
    }

    /// MyHoard's `BackupStream.is_binlog_safe_to_delete`.
    fn safe_for(&self, stream: &StreamView, binlog: &BinlogInfo) -> bool {
        if stream
            .initial_latest_complete_binlog_index
            .is_some_and(|initial| binlog.local_index <= initial)
        {
            return true;
        }
        match &stream.uploaded {
            Uploaded::LocalIndexes {
                last_processed_local_index,
                remote_references,
            } => {
                last_processed_local_index.is_some_and(|last| binlog.local_index < last)
                    || remote_references.contains(&binlog.local_index)
            }
            Uploaded::RemoteGtids(remote) => {
                binlog.gtid_ranges.is_empty() || self.has_reached(remote, &binlog.gtid_ranges)
            }
            Uploaded::Nothing => false,
        }
    }

    /// MyHoard's `are_gtids_in_executed_set`: every range not of an ignored origin is reached
    /// by `executed`, which must not be empty.
    fn has_reached(&self, executed: &GtidSet, ranges: &[GtidRange]) -> bool {
        !executed.is_empty()
            && ranges.iter().all(|range| {
                self.exclude
                    .is_some_and(|own| own.originated(&range.server_uuid))
                    || executed
                        .last_sequence(&range.server_uuid)
                        .is_some_and(|last| last >= range.end)
            })
    }
}

/// How many of `binlogs`, from the first, fit in one round's caps (at least one).
fn n_within_cap(binlogs: &[BinlogInfo], settings: &BinlogPurgeSettings) -> usize {
    let mut n_files: u64 = 0;
    let mut n_bytes: u64 = 0;
    for binlog in binlogs {
        let files = n_files + 1;
        let bytes = n_bytes.saturating_add(binlog.file_size);
        let over = settings.max_files_per_cycle.is_some_and(|max| files > max)
            || settings.max_bytes_per_cycle.is_some_and(|max| bytes > max);
        if over && n_files > 0 {
            break;
        }
        n_files = files;
        n_bytes = bytes;
    }
    usize::try_from(n_files).unwrap_or(binlogs.len())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::schedule::iso_time;

    const U1: &str = "11111111-1111-1111-1111-111111111111";
    const U2: &str = "22222222-2222-2222-2222-222222222222";

    fn now() -> DateTime<Utc> {
        iso_time::parse("2024-03-01T12:00:00+00:00").unwrap()
    }

    /// Binlog `index`, read `age` seconds before `now()`, holding `gtids` (`origin:start-end`
    /// items, comma separated), 100 bytes.
    fn binlog(index: u64, age: f64, gtids: &str) -> BinlogInfo {
        let gtid_ranges = gtids
            .split(',')
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (origin, interval) = item.rsplit_once(':').unwrap();
                let (start, end) = interval.split_once('-').unwrap();
                GtidRange {
                    end: end.parse().unwrap(),
                    end_ts: 0,
                    server_id: 1,
                    server_uuid: origin.parse().unwrap(),
                    start: start.parse().unwrap(),
                    start_ts: 0,
                }
            })
            .collect();
        BinlogInfo {
            file_name: format!("binlog.{index:06}"),
            file_size: 100,
            full_name: format!("/var/lib/mysql/binlog.{index:06}"),
            gtid_ranges,
            local_index: index,
            processed_at: epoch_seconds(now()) - age,
            processing_time: 0.01,
            server_id: 1,
            remote_index: None,
            remote_key: None,
            compression_algorithm: None,
            remote_file_size: None,
            extra: BTreeMap::new(),
        }
    }

    /// The two binlogs of MyHoard's `test_collect_binlogs_to_purge`.
    fn two_binlogs() -> Vec<BinlogInfo> {
        vec![
            binlog(1, 20.0, &format!("{U1}:1-6")),
            binlog(2, 10.0, &format!("{U1}:7-8")),
        ]
    }

    fn set(text: &str) -> GtidSet {
        text.parse().unwrap()
    }

    /// An active stream that has uploaded every binlog below `below`.
    fn uploading(below: u64) -> StreamView {
        StreamView {
            has_basebackup_info: true,
            initial_latest_complete_binlog_index: None,
            uploaded: Uploaded::LocalIndexes {
                last_processed_local_index: Some(below),
                remote_references: BTreeSet::new(),
            },
        }
    }

    /// A stream another server uploads to, with these GTIDs stored.
    fn observing(gtids: &str) -> StreamView {
        StreamView {
            has_basebackup_info: true,
            initial_latest_complete_binlog_index: None,
            uploaded: Uploaded::RemoteGtids(set(gtids)),
        }
    }

    fn all_safe() -> StreamView {
        uploading(100)
    }

    fn none_safe() -> StreamView {
        uploading(1)
    }

    struct Case {
        name: &'static str,
        mode: PurgeMode,
        binlogs: Vec<BinlogInfo>,
        streams: Vec<StreamView>,
        replication: Vec<(&'static str, String)>,
        own_server: Option<OwnServer>,
        min_age_seconds: u64,
        when_no_streams: bool,
        max_files: Option<u64>,
        max_bytes: Option<u64>,
        /// Local indexes purged, more purgeable, held, nothing overdue.
        expected: (Vec<u64>, bool, Option<Held>, bool),
    }

    fn case(name: &'static str) -> Case {
        Case {
            name,
            mode: PurgeMode::Active,
            binlogs: two_binlogs(),
            streams: vec![all_safe(), all_safe()],
            replication: vec![],
            own_server: None,
            min_age_seconds: 5,
            when_no_streams: true,
            max_files: None,
            max_bytes: None,
            expected: (vec![], false, None, false),
        }
    }

    fn run(case: &Case) -> (Vec<u64>, bool, Option<Held>, bool) {
        let settings = BinlogPurgeSettings {
            enabled: true,
            max_bytes_per_cycle: case.max_bytes,
            max_files_per_cycle: case.max_files,
            min_binlog_age_before_purge: Duration::from_secs(case.min_age_seconds),
            purge_interval: Duration::from_secs(60),
            purge_when_observe_no_streams: case.when_no_streams,
        };
        let replication_state = case
            .replication
            .iter()
            .map(|(server, gtids)| (server.to_string(), set(gtids)))
            .collect();
        let input = PurgeInput {
            binlogs: &case.binlogs,
            mode: case.mode,
            streams: &case.streams,
            replication_state: &replication_state,
            own_server: case.own_server,
            settings: &settings,
            now: now(),
        };
        let plan = binlogs_to_purge(&input);
        let purged = plan.binlogs.iter().map(|b| b.local_index).collect();
        (purged, plan.more_purgeable, plan.held, plan.nothing_overdue)
    }

    fn not_backed_up(local_index: u64) -> Option<Held> {
        Some(Held::NotBackedUp { local_index })
    }

    fn not_replicated(local_index: u64, server: &str) -> Option<Held> {
        Some(Held::NotReplicated {
            local_index,
            server: server.to_owned(),
        })
    }

    #[test]
    fn myhoard_collect_binlogs_to_purge_cases() {
        use PurgeMode::*;
        let cases = [
            Case {
                min_age_seconds: 30,
                expected: (vec![], false, Some(Held::TooNew { local_index: 1 }), true),
                ..case("every binlog too new")
            },
            Case {
                streams: vec![none_safe(), all_safe()],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("active: one stream says unsafe")
            },
            Case {
                mode: Observe,
                streams: vec![none_safe(), all_safe()],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("observe: one resumable stream says unsafe")
            },
            Case {
                mode: Observe,
                streams: vec![],
                expected: (vec![1, 2], false, None, true),
                ..case("observe without streams or replication state: everything")
            },
            Case {
                replication: vec![("server1", format!("{U1}:1-7"))],
                expected: (vec![1], false, not_replicated(2, "server1"), true),
                ..case("the second binlog is not replicated yet")
            },
            Case {
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (vec![1, 2], false, None, true),
                ..case("both binlogs replicated")
            },
            Case {
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, "")],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (
                    vec![],
                    false,
                    Some(Held::WithoutGtidsUnconfirmed { local_index: 1 }),
                    true,
                ),
                ..case("binlogs without GTIDs wait for a later replicated one")
            },
            Case {
                binlogs: vec![
                    binlog(1, 20.0, ""),
                    binlog(2, 10.0, ""),
                    binlog(3, 10.0, &format!("{U1}:7-8")),
                ],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (vec![1, 2, 3], false, None, true),
                ..case("a replicated binlog confirms the ones without GTIDs before it")
            },
        ];
        for case in cases {
            assert_eq!(run(&case), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn purge_rules() {
        use PurgeMode::*;
        let mysql_own = OwnServer::Mysql(U2.parse().unwrap());
        let cases = [
            Case {
                binlogs: vec![],
                expected: (vec![], false, Some(Held::NoBinlogs), true),
                ..case("no binlogs")
            },
            Case {
                streams: vec![],
                expected: (vec![], false, Some(Held::NoBackupStreams), false),
                ..case("active without streams")
            },
            Case {
                mode: Observe,
                streams: vec![],
                when_no_streams: false,
                expected: (vec![], false, Some(Held::NoBackupStreams), false),
                ..case("observe without streams, not allowed")
            },
            Case {
                replication: vec![("server1", format!("{U1}:1-8")), ("server2", String::new())],
                expected: (
                    vec![],
                    false,
                    Some(Held::ReplicaWithoutGtids {
                        server: "server2".into(),
                    }),
                    false,
                ),
                ..case("a server without GTID info stops everything")
            },
            Case {
                replication: vec![
                    ("server1", format!("{U1}:1-8")),
                    ("server2", format!("{U1}:1-6")),
                ],
                expected: (vec![1], false, not_replicated(2, "server2"), true),
                ..case("every server must have the GTIDs")
            },
            Case {
                replication: vec![("server1", format!("{U1}:8"))],
                expected: (vec![1, 2], false, None, true),
                ..case("gapless assumption: a higher transaction number counts")
            },
            Case {
                replication: vec![("server1", format!("{U2}:1-100"))],
                expected: (vec![], false, not_replicated(1, "server1"), false),
                ..case("a server without the binlog's origin")
            },
            Case {
                binlogs: vec![binlog(1, 20.0, &format!("{U1}:1-6")), binlog(2, 1.0, "")],
                expected: (vec![1], false, Some(Held::TooNew { local_index: 2 }), true),
                ..case("the walk stops at the first binlog too new")
            },
            Case {
                streams: vec![uploading(2)],
                expected: (vec![1], false, not_backed_up(2), true),
                ..case("the newest uploaded binlog is kept")
            },
            Case {
                streams: vec![StreamView {
                    has_basebackup_info: true,
                    initial_latest_complete_binlog_index: None,
                    uploaded: Uploaded::LocalIndexes {
                        last_processed_local_index: Some(1),
                        remote_references: BTreeSet::from([1, 2]),
                    },
                }],
                expected: (vec![1, 2], false, None, true),
                ..case("binlogs uploaded by another stream count")
            },
            Case {
                streams: vec![StreamView {
                    has_basebackup_info: false,
                    initial_latest_complete_binlog_index: Some(1),
                    uploaded: Uploaded::LocalIndexes {
                        last_processed_local_index: None,
                        remote_references: BTreeSet::new(),
                    },
                }],
                expected: (vec![1], false, not_backed_up(2), true),
                ..case("binlogs older than the stream are safe")
            },
            Case {
                mode: Observe,
                streams: vec![StreamView {
                    has_basebackup_info: true,
                    initial_latest_complete_binlog_index: None,
                    uploaded: Uploaded::Nothing,
                }],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("a stream being promoted has nothing stored")
            },
            Case {
                mode: Observe,
                streams: vec![observing(&format!("{U1}:1-6"))],
                expected: (vec![1], false, not_backed_up(2), true),
                ..case("observe: the stream's remote GTIDs")
            },
            Case {
                mode: Observe,
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, &format!("{U1}:1-2"))],
                streams: vec![observing("")],
                expected: (vec![1], false, not_backed_up(2), true),
                ..case("observe: a binlog without GTIDs is of no use to a stream")
            },
            Case {
                mode: Observe,
                streams: vec![StreamView {
                    has_basebackup_info: false,
                    ..none_safe()
                }],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("observe: at least one resumable stream must say safe")
            },
            Case {
                mode: Observe,
                streams: vec![
                    StreamView {
                        has_basebackup_info: false,
                        ..none_safe()
                    },
                    all_safe(),
                ],
                expected: (vec![1, 2], false, None, true),
                ..case("observe: streams that cannot be resumed have no say")
            },
            Case {
                mode: Observe,
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, "")],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (vec![1, 2], false, None, true),
                ..case("observe: binlogs without GTIDs go at once")
            },
            Case {
                mode: Restore,
                streams: vec![],
                when_no_streams: false,
                min_age_seconds: 100,
                expected: (vec![1, 2], false, None, true),
                ..case("restore: no streams needed, a tenth of the minimum age")
            },
            Case {
                mode: Restore,
                streams: vec![],
                min_age_seconds: 101,
                expected: (vec![1], false, Some(Held::TooNew { local_index: 2 }), true),
                ..case("restore: still a minimum age")
            },
            Case {
                mode: Restore,
                streams: vec![],
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, "")],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (
                    vec![],
                    false,
                    Some(Held::WithoutGtidsUnconfirmed { local_index: 1 }),
                    true,
                ),
                ..case("restore: binlogs without GTIDs wait as in active mode")
            },
            Case {
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, &format!("{U1}:1-2"))],
                streams: vec![uploading(2)],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (vec![], false, not_backed_up(2), true),
                ..case("only binlogs without GTIDs reached: not overdue, as MyHoard counts it")
            },
            Case {
                binlogs: vec![binlog(1, 20.0, ""), binlog(2, 10.0, &format!("{U1}:1-9"))],
                replication: vec![("server1", format!("{U1}:1-8"))],
                expected: (vec![], false, not_replicated(2, "server1"), false),
                ..case("a binlog with GTIDs not replicated makes it overdue")
            },
            Case {
                mode: Observe,
                own_server: Some(mysql_own),
                binlogs: vec![binlog(1, 20.0, &format!("{U1}:1-6,{U2}:1-3,{U2}:t:1-2"))],
                streams: vec![observing(&format!("{U1}:1-6"))],
                replication: vec![("server1", format!("{U1}:1-6"))],
                expected: (vec![1], false, None, true),
                ..case("observe: the server's own transactions are ignored, tagged or not")
            },
            Case {
                mode: Active,
                own_server: Some(mysql_own),
                binlogs: vec![binlog(1, 20.0, &format!("{U1}:1-6,{U2}:1-3"))],
                replication: vec![("server1", format!("{U1}:1-6"))],
                expected: (vec![], false, not_replicated(1, "server1"), false),
                ..case("active: the server's own transactions count")
            },
            Case {
                mode: Active,
                own_server: Some(mysql_own),
                binlogs: vec![binlog(1, 20.0, &format!("{U1}:1-6"))],
                streams: vec![observing(&format!("{U2}:1-3"))],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("active: an old master's stream without the GTIDs")
            },
            Case {
                mode: Observe,
                own_server: Some(OwnServer::Mariadb { server_id: 2 }),
                binlogs: vec![binlog(1, 20.0, "0-1:5-10,1-2:1-3,0-2:11-11")],
                streams: vec![observing("0-1:1-10")],
                replication: vec![("replica", "0-1:1-10".into())],
                expected: (vec![1], false, None, true),
                ..case("mariadb: the server's own transactions in every domain are ignored")
            },
            Case {
                mode: Observe,
                own_server: Some(OwnServer::Mariadb { server_id: 2 }),
                binlogs: vec![binlog(1, 20.0, "0-1:5-10,0-3:1-1")],
                streams: vec![observing("0-1:1-10")],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("mariadb: another server's transactions count")
            },
            Case {
                mode: Observe,
                own_server: Some(mysql_own),
                binlogs: vec![binlog(1, 20.0, &format!("{U2}:1-3"))],
                streams: vec![observing("")],
                expected: (vec![], false, not_backed_up(1), false),
                ..case("an empty stored set holds nothing, even for own transactions")
            },
        ];
        for case in cases {
            assert_eq!(run(&case), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn per_round_caps() {
        let four = || {
            (1..=4)
                .map(|i| binlog(i, 100.0, &format!("{U1}:{i}-{i}")))
                .collect()
        };
        let cases = [
            Case {
                binlogs: four(),
                expected: (vec![1, 2, 3, 4], false, None, true),
                ..case("no caps")
            },
            Case {
                binlogs: four(),
                max_files: Some(2),
                expected: (vec![1, 2], true, None, true),
                ..case("file cap")
            },
            Case {
                binlogs: four(),
                max_bytes: Some(250),
                expected: (vec![1, 2], true, None, true),
                ..case("byte cap")
            },
            Case {
                binlogs: four(),
                max_files: Some(3),
                max_bytes: Some(250),
                expected: (vec![1, 2], true, None, true),
                ..case("the tighter cap wins")
            },
            Case {
                binlogs: four(),
                max_bytes: Some(50),
                expected: (vec![1], true, None, true),
                ..case("one binlog is purged even over the byte cap")
            },
            Case {
                binlogs: four(),
                max_files: Some(4),
                max_bytes: Some(400),
                expected: (vec![1, 2, 3, 4], false, None, true),
                ..case("everything fits exactly")
            },
            Case {
                binlogs: four(),
                streams: vec![uploading(3)],
                max_files: Some(2),
                expected: (vec![1, 2], false, not_backed_up(3), true),
                ..case("the cap takes exactly the purgeable ones")
            },
            Case {
                binlogs: four(),
                streams: vec![uploading(4)],
                max_files: Some(2),
                expected: (vec![1, 2], true, not_backed_up(4), true),
                ..case("capped before the first binlog that must stay")
            },
        ];
        for case in cases {
            assert_eq!(run(&case), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn purge_to_names_the_binlog_after_the_last() {
        let cases = [
            ("binlog.000041", Some("binlog.000042")),
            ("/var/lib/mysql/mysql-bin.000009", Some("mysql-bin.000010")),
            ("my.binlog.999999", Some("my.binlog.1000000")),
            ("binlog", None),
            ("binlog.", None),
            ("binlog.00004x", None),
            ("binlog.+00004", None),
        ];
        for (file_name, expected) in cases {
            let mut last = binlog(1, 0.0, "");
            last.file_name = file_name.to_owned();
            let binlogs = [last];
            let plan = PurgePlan {
                binlogs: &binlogs,
                more_purgeable: false,
                held: None,
                nothing_overdue: true,
            };
            assert_eq!(
                plan.purge_to_file_name().as_deref(),
                expected,
                "{file_name}"
            );
        }
        let empty = PurgePlan {
            binlogs: &[],
            more_purgeable: false,
            held: Some(Held::NoBinlogs),
            nothing_overdue: true,
        };
        assert_eq!(empty.purge_to_file_name(), None);
    }

    #[test]
    fn round_timing() {
        let settings = BinlogPurgeSettings {
            enabled: true,
            max_bytes_per_cycle: None,
            max_files_per_cycle: None,
            min_binlog_age_before_purge: Duration::from_secs(600),
            purge_interval: Duration::from_secs(60),
            purge_when_observe_no_streams: true,
        };
        let now_seconds = epoch_seconds(now());
        struct Case {
            name: &'static str,
            enabled: bool,
            last_round_at: f64,
            expected: bool,
        }
        let cases = [
            Case {
                name: "interval passed",
                enabled: true,
                last_round_at: now_seconds - 60.0,
                expected: true,
            },
            Case {
                name: "interval not passed",
                enabled: true,
                last_round_at: now_seconds - 59.5,
                expected: false,
            },
            Case {
                name: "never purged",
                enabled: true,
                last_round_at: 0.0,
                expected: true,
            },
            Case {
                name: "disabled",
                enabled: false,
                last_round_at: 0.0,
                expected: false,
            },
        ];
        for case in cases {
            let settings = BinlogPurgeSettings {
                enabled: case.enabled,
                ..settings.clone()
            };
            assert_eq!(
                purge_round_due(&settings, case.last_round_at, now()),
                case.expected,
                "{}",
                case.name
            );
        }

        // PR #240: a capped round that succeeded makes the next one due at once.
        let binlogs = [binlog(1, 700.0, "")];
        for (more_purgeable, purged, expected) in [
            (true, true, now_seconds - 60.0),
            (true, false, now_seconds),
            (false, true, now_seconds),
        ] {
            let plan = PurgePlan {
                binlogs: &binlogs,
                more_purgeable,
                held: None,
                nothing_overdue: true,
            };
            let recorded = plan.round_time_to_record(purged, &settings, now());
            assert_eq!(recorded, expected, "more {more_purgeable}, purged {purged}");
            assert_eq!(
                purge_round_due(&settings, recorded, now()),
                more_purgeable && purged
            );
        }
    }

    #[test]
    fn held_reasons_read_well() {
        let cases = [
            (Held::NoBinlogs, "no binlogs known"),
            (
                Held::NotReplicated {
                    local_index: 7,
                    server: "db-2".into(),
                },
                "binlog 7 not yet replicated to server \"db-2\"",
            ),
            (
                Held::TooNew { local_index: 3 },
                "binlog 3 is newer than the minimum purge age",
            ),
        ];
        for (held, text) in cases {
            assert_eq!(held.to_string(), text);
        }
    }
}

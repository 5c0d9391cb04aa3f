//! Which backup to delete next, if any: the retention policy over `backup_count_max`,
//! `backup_count_min`, `backup_age_days_max`, broken and preserved backups, incremental chains
//! and live streams.
//!
//! [`backup_to_purge`] looks only at the oldest completed backup on a non-recovery site, as
//! MyHoard does, and either names it for deletion or says why it stays. The caller deletes it
//! and asks again until the answer is [`Decision::Keep`]; deleting one backup per question keeps
//! every step small and makes a crash in the middle harmless. The rules, in order:
//!
//! 1. an incremental backup whose base is gone (it is the oldest) is useless: purge it;
//! 2. broken backups do not count towards the limits (a broken backup takes the incrementals
//!    directly following it down with it): with no more than `backup_count_max` good backups,
//!    keep everything (`within_max_amount`), however old;
//! 3. deleting the oldest also deletes the incrementals that depend on it (its *dependants*);
//!    never go below `backup_count_min` good backups (`min_amount_required`);
//! 4. a dependant still being written to is not closed (`non_closed_backup`);
//! 5. a dependant preserved (`PUT /backup/{id}/preserve`) until a future time stays
//!    (`preserved_backup`);
//! 6. older than `backup_age_days_max` since it was closed: purge, unless an incremental that
//!    depends on it is still within the age limit (`required_backup_within_retention`); else
//!    more than `backup_count_max` good backups: purge; else `requirements_not_met`;
//! 7. never purge a backup whose dependants include a live stream (`active_backup`).
//!
//! Backups on recovery-only sites are never considered, whatever their age. The reason strings
//! are MyHoard's, so logs and metrics read the same; `no_completed_backups` is ours.
//!
//! Pure: values in, a decision out, no clock, no I/O, no logging. Runs on the controller
//! thread. Mirrors `Controller._get_backup_to_purge` in Python MyHoard's `controller.py`.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup_stream::layout::epoch_seconds;
use crate::config::BackupSettings;

/// One backup as retention sees it: the fields of the controller's backup list it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionCandidate {
    pub stream_id: String,
    /// When `completed.json` was written, seconds since the epoch; `None` for a backup not
    /// completed yet, which retention ignores.
    pub completed_at: Option<f64>,
    /// When `closed.json` was written (no more binlogs will be added), seconds since the epoch.
    pub closed_at: Option<f64>,
    /// `broken.json` exists: restoring it failed and it was marked broken.
    pub broken: bool,
    /// From `preserved.json`: not to be deleted before this time.
    pub preserve_until: Option<DateTime<Utc>>,
    /// Its site is `recovery_only`: restore from it, never delete from it.
    pub recovery_site: bool,
    /// An incremental backup, which needs the backup completed just before it.
    pub incremental: bool,
}

/// Why nothing is purged this time. Serialized (and displayed) as MyHoard's reason strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// No more good backups than `backup_count_max`; only broken ones go over it.
    WithinMaxAmount,
    /// Purging would leave fewer than `backup_count_min` good backups.
    MinAmountRequired,
    /// The oldest backup or one of its incrementals is not closed.
    NonClosedBackup,
    /// The oldest backup or one of its incrementals is preserved until a future time.
    PreservedBackup,
    /// The oldest backup is too old, but an incremental depending on it is not.
    RequiredBackupWithinRetention,
    /// Neither too old nor too many.
    RequirementsNotMet,
    /// The backup to purge, or one depending on it, is a live stream.
    ActiveBackup,
    /// Ours: there is no completed backup on a non-recovery site at all.
    NoCompletedBackups,
}

impl KeepReason {
    /// The reason string, as MyHoard logs it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::WithinMaxAmount => "within_max_amount",
            KeepReason::MinAmountRequired => "min_amount_required",
            KeepReason::NonClosedBackup => "non_closed_backup",
            KeepReason::PreservedBackup => "preserved_backup",
            KeepReason::RequiredBackupWithinRetention => "required_backup_within_retention",
            KeepReason::RequirementsNotMet => "requirements_not_met",
            KeepReason::ActiveBackup => "active_backup",
            KeepReason::NoCompletedBackups => "no_completed_backups",
        }
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`backup_to_purge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delete this stream (the oldest backup), then ask again.
    Purge(String),
    /// Delete nothing now.
    Keep(KeepReason),
}

/// The backup to delete now, or why none is (see the module doc for the rules). `live_stream_ids`
/// are the streams the controller is running; `now` is compared with the backups' close times
/// and preservation times.
pub fn backup_to_purge(
    backups: &[RetentionCandidate],
    settings: &BackupSettings,
    live_stream_ids: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Decision {
    let mut completed: Vec<(&RetentionCandidate, f64)> = backups
        .iter()
        .filter(|backup| !backup.recovery_site)
        .filter_map(|backup| Some((backup, backup.completed_at?)))
        .collect();
    // Stable, so backups completed at the same instant keep their listing order, as Python's
    // `sorted` does.
    completed.sort_by(|(_, a), (_, b)| a.total_cmp(b));
    let completed: Vec<&RetentionCandidate> =
        completed.into_iter().map(|(backup, _)| backup).collect();

    let Some((oldest, newer)) = completed.split_first() else {
        return Decision::Keep(KeepReason::NoCompletedBackups);
    };
    let n_incrementals = newer.iter().take_while(|backup| backup.incremental).count();
    let dependants = &completed[..=n_incrementals];
    let purge_oldest = || {
        if dependants
            .iter()
            .any(|backup| live_stream_ids.contains(&backup.stream_id))
        {
            Decision::Keep(KeepReason::ActiveBackup)
        } else {
            Decision::Purge(oldest.stream_id.clone())
        }
    };

    if oldest.incremental {
        return purge_oldest();
    }

    let n_good = count_good_backups(&completed);
    if n_good <= settings.backup_count_max && settings.backup_count_max < completed.len() {
        return Decision::Keep(KeepReason::WithinMaxAmount);
    }
    if n_good.saturating_sub(count_good_backups(dependants)) < settings.backup_count_min {
        return Decision::Keep(KeepReason::MinAmountRequired);
    }
    let mut closed_at = Vec::with_capacity(dependants.len());
    for backup in dependants {
        match backup.closed_at {
            Some(at) => closed_at.push(at),
            None => return Decision::Keep(KeepReason::NonClosedBackup),
        }
    }
    if dependants
        .iter()
        .filter_map(|backup| backup.preserve_until)
        .any(|until| until > now)
    {
        return Decision::Keep(KeepReason::PreservedBackup);
    }

    let now_seconds = epoch_seconds(now);
    let age_max_seconds = settings.backup_age_max.as_secs_f64();
    let too_old = |closed_at: f64| now_seconds > closed_at + age_max_seconds;
    if too_old(closed_at[0]) {
        if closed_at[1..].iter().any(|&at| !too_old(at)) {
            return Decision::Keep(KeepReason::RequiredBackupWithinRetention);
        }
        return purge_oldest();
    }
    if n_good > settings.backup_count_max {
        return purge_oldest();
    }
    Decision::Keep(KeepReason::RequirementsNotMet)
}

/// How many of `backups` (sorted by completion) are not broken, a backup counting as broken when
/// it is marked so or is an incremental directly following a broken one.
fn count_good_backups(backups: &[&RetentionCandidate]) -> usize {
    let mut previous_broken = false;
    let mut n_good = 0;
    for backup in backups {
        let broken = backup.broken || (backup.incremental && previous_broken);
        if !broken {
            n_good += 1;
        }
        previous_broken = broken;
    }
    n_good
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::IncrementalSettings;
    use crate::schedule::iso_time;

    const DAY: f64 = 86_400.0;

    fn now() -> DateTime<Utc> {
        iso_time::parse("2023-09-20T00:00:00+00:00").unwrap()
    }

    fn days_ago(days: f64) -> f64 {
        now().timestamp() as f64 - days * DAY
    }

    /// A full backup completed `completed` days ago and closed `closed` days ago.
    fn full(id: &str, completed: f64, closed: Option<f64>) -> RetentionCandidate {
        RetentionCandidate {
            stream_id: id.to_owned(),
            completed_at: Some(days_ago(completed)),
            closed_at: closed.map(days_ago),
            broken: false,
            preserve_until: None,
            recovery_site: false,
            incremental: false,
        }
    }

    fn incremental(id: &str, completed: f64, closed: Option<f64>) -> RetentionCandidate {
        RetentionCandidate {
            incremental: true,
            ..full(id, completed, closed)
        }
    }

    fn broken(backup: RetentionCandidate) -> RetentionCandidate {
        RetentionCandidate {
            broken: true,
            ..backup
        }
    }

    fn preserved(backup: RetentionCandidate, until: &str) -> RetentionCandidate {
        RetentionCandidate {
            preserve_until: Some(iso_time::parse(until).unwrap()),
            ..backup
        }
    }

    /// At most 3, at least 1, at most 5 days old (after closing).
    fn settings() -> BackupSettings {
        BackupSettings {
            backup_age_max: Duration::from_secs(5 * 86_400),
            backup_count_max: 3,
            backup_count_min: 1,
            backup_hour: 3,
            backup_minute: 0,
            backup_interval: Duration::from_secs(86_400),
            forced_binlog_rotation_interval: Duration::from_secs(300),
            upload_site: "default".into(),
            incremental: IncrementalSettings::default(),
        }
    }

    fn purge(id: &str) -> Decision {
        Decision::Purge(id.to_owned())
    }

    fn keep(reason: KeepReason) -> Decision {
        Decision::Keep(reason)
    }

    #[test]
    fn one_decision_per_rule() {
        use KeepReason::*;
        struct Case {
            name: &'static str,
            backups: Vec<RetentionCandidate>,
            live: &'static [&'static str],
            count_min: usize,
            expected: Decision,
        }
        let cases = [
            Case {
                name: "no backups",
                backups: vec![],
                live: &[],
                count_min: 1,
                expected: keep(NoCompletedBackups),
            },
            Case {
                name: "only backups not completed yet",
                backups: vec![RetentionCandidate {
                    completed_at: None,
                    ..full("a", 10.0, None)
                }],
                live: &[],
                count_min: 0,
                expected: keep(NoCompletedBackups),
            },
            Case {
                name: "an incremental left without its base is purged, however recent",
                backups: vec![incremental("a1", 0.5, None), full("b", 0.2, None)],
                live: &[],
                count_min: 1,
                expected: purge("a1"),
            },
            Case {
                name: "an orphaned incremental that is live stays",
                backups: vec![incremental("a1", 0.5, None)],
                live: &["a1"],
                count_min: 1,
                expected: keep(ActiveBackup),
            },
            Case {
                name: "only broken backups over the maximum: keep everything",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    broken(full("b", 15.0, Some(14.0))),
                    full("c", 10.0, Some(9.0)),
                    full("d", 5.0, None),
                ],
                live: &["d"],
                count_min: 1,
                expected: keep(WithinMaxAmount),
            },
            Case {
                name: "a broken backup takes its incrementals down with it",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    broken(full("b", 15.0, Some(14.0))),
                    incremental("b1", 14.0, Some(13.0)),
                    full("c", 10.0, Some(9.0)),
                    full("d", 5.0, None),
                ],
                live: &["d"],
                count_min: 1,
                expected: keep(WithinMaxAmount),
            },
            Case {
                name: "the last good backups above the minimum",
                backups: vec![full("a", 20.0, Some(19.0)), full("b", 1.0, None)],
                live: &["b"],
                count_min: 2,
                expected: keep(MinAmountRequired),
            },
            Case {
                name: "the minimum counts the incrementals that would go too",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    incremental("a1", 19.0, Some(18.0)),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 2,
                expected: keep(MinAmountRequired),
            },
            Case {
                name: "broken backups do not count towards the minimum",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    broken(full("b", 15.0, Some(14.0))),
                    full("c", 1.0, None),
                ],
                live: &["c"],
                count_min: 2,
                expected: keep(MinAmountRequired),
            },
            Case {
                name: "the oldest is not closed",
                backups: vec![full("a", 20.0, None), full("b", 1.0, None)],
                live: &[],
                count_min: 1,
                expected: keep(NonClosedBackup),
            },
            Case {
                name: "an incremental of the oldest is not closed",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    incremental("a1", 19.0, None),
                    full("b", 1.0, None),
                ],
                live: &[],
                count_min: 1,
                expected: keep(NonClosedBackup),
            },
            Case {
                name: "preserved until a future time",
                backups: vec![
                    preserved(full("a", 20.0, Some(19.0)), "2023-09-20T00:00:01+00:00"),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 1,
                expected: keep(PreservedBackup),
            },
            Case {
                name: "an incremental of the oldest is preserved",
                backups: vec![
                    full("a", 20.0, Some(19.0)),
                    preserved(
                        incremental("a1", 19.0, Some(18.0)),
                        "2023-10-01T00:00:00+00:00",
                    ),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 1,
                expected: keep(PreservedBackup),
            },
            Case {
                name: "the preservation has expired",
                backups: vec![
                    preserved(full("a", 20.0, Some(19.0)), "2023-09-20T00:00:00+00:00"),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 1,
                expected: purge("a"),
            },
            Case {
                name: "older than the age limit",
                backups: vec![full("a", 7.0, Some(6.0)), full("b", 1.0, None)],
                live: &["b"],
                count_min: 1,
                expected: purge("a"),
            },
            Case {
                name: "exactly at the age limit: not older",
                backups: vec![full("a", 7.0, Some(5.0)), full("b", 1.0, None)],
                live: &["b"],
                count_min: 1,
                expected: keep(RequirementsNotMet),
            },
            Case {
                name: "too old, but an incremental depending on it is not",
                backups: vec![
                    full("a", 7.0, Some(6.0)),
                    incremental("a1", 6.0, Some(4.0)),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 1,
                expected: keep(RequiredBackupWithinRetention),
            },
            Case {
                name: "too old, and so are its incrementals",
                backups: vec![
                    full("a", 9.0, Some(8.0)),
                    incremental("a1", 8.0, Some(7.0)),
                    incremental("a2", 7.0, Some(6.0)),
                    full("b", 1.0, None),
                ],
                live: &["b"],
                count_min: 1,
                expected: purge("a"),
            },
            Case {
                name: "recent, but more good backups than the maximum",
                backups: vec![
                    full("a", 4.0, Some(3.0)),
                    full("b", 3.0, Some(2.0)),
                    full("c", 2.0, Some(1.0)),
                    full("d", 1.0, None),
                ],
                live: &["d"],
                count_min: 1,
                expected: purge("a"),
            },
            Case {
                name: "recent and not too many",
                backups: vec![full("a", 4.0, Some(3.0)), full("b", 1.0, None)],
                live: &["b"],
                count_min: 1,
                expected: keep(RequirementsNotMet),
            },
            Case {
                name: "too old but live",
                backups: vec![full("a", 9.0, Some(8.0)), full("b", 1.0, None)],
                live: &["a", "b"],
                count_min: 1,
                expected: keep(ActiveBackup),
            },
            Case {
                name: "too old, and an incremental depending on it is live",
                backups: vec![
                    full("a", 9.0, Some(8.0)),
                    incremental("a1", 8.0, Some(7.0)),
                    full("b", 1.0, None),
                ],
                live: &["a1"],
                count_min: 1,
                expected: keep(ActiveBackup),
            },
            Case {
                name: "recovery-site backups are never purged nor counted",
                backups: vec![
                    RetentionCandidate {
                        recovery_site: true,
                        ..full("r", 90.0, Some(89.0))
                    },
                    full("a", 1.0, None),
                ],
                live: &["a"],
                count_min: 1,
                expected: keep(MinAmountRequired),
            },
            Case {
                name: "the oldest by completion, whatever the listing order",
                backups: vec![
                    full("b", 1.0, None),
                    full("a", 9.0, Some(8.0)),
                    full("c", 0.5, None),
                ],
                live: &["c"],
                count_min: 1,
                expected: purge("a"),
            },
        ];
        for case in cases {
            let mut settings = settings();
            settings.backup_count_min = case.count_min;
            let live = case.live.iter().map(|id| id.to_string()).collect();
            let decision = backup_to_purge(&case.backups, &settings, &live, now());
            assert_eq!(decision, case.expected, "{}", case.name);
        }
    }

    /// The caller's loop: purge until told to keep. A base and its incrementals go one after
    /// the other, then retention stops.
    #[test]
    fn looping_purges_a_chain_then_stops() {
        let mut backups = vec![
            full("a", 12.0, Some(11.0)),
            incremental("a1", 11.0, Some(10.0)),
            incremental("a2", 10.0, Some(9.0)),
            full("b", 2.0, Some(1.0)),
            full("c", 1.0, None),
        ];
        let live = BTreeSet::from(["c".to_owned()]);
        let mut purged = Vec::new();
        let reason = loop {
            match backup_to_purge(&backups, &settings(), &live, now()) {
                Decision::Purge(id) => {
                    backups.retain(|backup| backup.stream_id != id);
                    purged.push(id);
                }
                Decision::Keep(reason) => break reason,
            }
            assert!(purged.len() <= 5, "runaway loop: {purged:?}");
        };
        assert_eq!(purged, ["a", "a1", "a2"]);
        assert_eq!(reason, KeepReason::RequirementsNotMet);
    }

    #[test]
    fn reasons_read_as_in_myhoard() {
        let reasons = [
            (KeepReason::WithinMaxAmount, "within_max_amount"),
            (KeepReason::MinAmountRequired, "min_amount_required"),
            (KeepReason::NonClosedBackup, "non_closed_backup"),
            (KeepReason::PreservedBackup, "preserved_backup"),
            (
                KeepReason::RequiredBackupWithinRetention,
                "required_backup_within_retention",
            ),
            (KeepReason::RequirementsNotMet, "requirements_not_met"),
            (KeepReason::ActiveBackup, "active_backup"),
            (KeepReason::NoCompletedBackups, "no_completed_backups"),
        ];
        for (reason, text) in reasons {
            assert_eq!(reason.to_string(), text);
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{text}\"")
            );
        }
    }
}

//! When a scheduled full (or incremental) backup is due, and how backup requests coalesce.
//!
//! The schedule is anchored on a *normalized backup time*: the latest slot of the configured
//! series `backup_hour:backup_minute` + k × `backup_interval_minutes` that is not in the future.
//! Every backup stream remembers the slot it was taken for, and a new scheduled backup is asked
//! for when the current slot differs from the newest stream's. Three rules from MyHoard shape it:
//!
//! - the series continues from the newest stream's slot, so intervals longer than a day (2880
//!   minutes: every other day) keep their phase across restarts; when the interval is a whole
//!   number of days the hour and minute are re-read from the settings, so a changed
//!   `backup_hour` takes effect at the next slot;
//! - a scheduled backup is not started within half an interval of the previous scheduled one,
//!   so moving the backup hour makes the schedule drift towards the new time instead of taking
//!   two backups in a row;
//! - at most one request is pending; [`merge_backup_request`] decides which of two survives.
//!
//! Pure: values in, values out, no clock (the caller passes `now`), no I/O, no logging. Runs on
//! the controller thread. Mirrors `Controller._current_normalized_backup_timestamp`,
//! `_previous_normalized_backup_timestamp`, `_mark_periodic_backup_requested_if_interval_exceeded`
//! and `mark_backup_requested` in Python MyHoard's `controller.py`.
//!
//! [`iso_time`] writes times as Python's `datetime.isoformat()` does (`+00:00`, microseconds
//! only when non-zero), because `normalized_backup_time` strings are compared across the
//! state files, `basebackup.json` and Python MyHoard itself.

use chrono::{DateTime, NaiveTime, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::backup_stream::layout::epoch_seconds;
use crate::config::{BackupSettings, Weekday};

const DAY_SECONDS: i64 = 86_400;

/// Why a backup was taken: MyHoard's `BackupStream.BackupReason`, `"requested"` or
/// `"scheduled"` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupReason {
    /// Asked for through `POST /backup`.
    Requested,
    /// Due by the schedule.
    Scheduled,
}

/// A backup waiting to be started: the controller state's `backup_request`, with MyHoard's
/// JSON keys (`{"backup_reason": "scheduled", "normalized_backup_time":
/// "2023-01-03T03:00:00+00:00", "incremental_requested": false}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    #[serde(rename = "backup_reason")]
    pub reason: BackupReason,
    /// The schedule slot the backup is for.
    #[serde(with = "iso_time")]
    pub normalized_backup_time: DateTime<Utc>,
    /// Whether an incremental backup is wanted; MyHoard falls back to a full one when the chain
    /// does not allow it. Absent in requests written before incremental backups existed.
    #[serde(rename = "incremental_requested", default)]
    pub incremental: bool,
}

/// What the schedule needs to know about one of the current backup streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSchedule {
    /// The slot the stream was taken for; `None` while an observed stream's `basebackup.json`
    /// has not been read yet.
    pub normalized_backup_time: Option<DateTime<Utc>>,
    /// `None` in the same case.
    pub reason: Option<BackupReason>,
    /// The stream state's `created_at`, seconds since the epoch.
    pub created_at: f64,
}

/// The controller state the scheduling decision reads.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleState<'a> {
    /// The current backup streams (at most two in active mode).
    pub streams: &'a [StreamSchedule],
    /// `backup_request`: the request not yet turned into a stream, if any.
    pub pending_request: Option<&'a BackupRequest>,
    /// `paused_backups_until` (`PATCH /backup/settings`): no scheduled backup before it.
    pub paused_until: Option<DateTime<Utc>>,
}

/// The slot of the newest stream: the latest `normalized_backup_time` among `streams`.
pub fn previous_normalized_backup_time(streams: &[StreamSchedule]) -> Option<DateTime<Utc>> {
    streams
        .iter()
        .filter_map(|stream| stream.normalized_backup_time)
        .max()
}

/// The current schedule slot: the latest time of the series that is not after `now` (MyHoard's
/// `_current_normalized_backup_timestamp`).
///
/// Start from `previous`, with `backup_hour:backup_minute` substituted when the interval is a
/// whole number of days; without `previous`, from today at `backup_hour:backup_minute:00`. If
/// that is after `now`, step back one day. Then step forward whole intervals while the next
/// slot is still not after `now`.
///
/// As in MyHoard, a `previous` more than a day in the future (the clock went back) is returned
/// less one day, still in the future: the schedule then waits for the clock to catch up.
pub fn normalized_backup_time(
    settings: &BackupSettings,
    previous: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let interval_seconds = i64::try_from(settings.backup_interval.as_secs()).unwrap_or(i64::MAX);
    let hour = u32::from(settings.backup_hour);
    let minute = u32::from(settings.backup_minute);
    let mut normalized = match previous {
        // Python's `replace(hour=, minute=)` keeps the seconds and microseconds.
        Some(previous) if interval_seconds % DAY_SECONDS == 0 => {
            let within_minute = TimeDelta::seconds(i64::from(previous.second()))
                + TimeDelta::nanoseconds(i64::from(previous.nanosecond()));
            at_time_of_day(previous, hour, minute, within_minute)
        }
        Some(previous) => previous,
        None => at_time_of_day(now, hour, minute, TimeDelta::zero()),
    };
    if normalized > now {
        normalized = normalized
            .checked_sub_signed(TimeDelta::days(1))
            .unwrap_or(normalized);
    }
    // MyHoard loops `while normalized + interval <= now`; dividing gives the same count without
    // a million iterations when the previous slot is old and the interval short. The interval
    // is a whole number of seconds, so whole seconds of the difference decide.
    if interval_seconds > 0 && normalized <= now {
        let steps = (now - normalized).num_seconds() / interval_seconds;
        // Cannot fail: the step is at most `now - normalized`.
        normalized = TimeDelta::try_seconds(steps * interval_seconds)
            .and_then(|step| normalized.checked_add_signed(step))
            .unwrap_or(normalized);
    }
    normalized
}

/// `time`'s date at `hour:minute`, plus `within_minute`.
fn at_time_of_day(
    time: DateTime<Utc>,
    hour: u32,
    minute: u32,
    within_minute: TimeDelta,
) -> DateTime<Utc> {
    let midnight = time.date_naive().and_time(NaiveTime::MIN).and_utc();
    midnight
        + TimeDelta::hours(i64::from(hour))
        + TimeDelta::minutes(i64::from(minute))
        + within_minute
}

/// Whether a scheduled backup taken at `now` should be incremental: incremental backups are
/// enabled and today (UTC) is not a full-backup day.
pub fn incremental_due(settings: &BackupSettings, now: DateTime<Utc>) -> bool {
    settings
        .incremental
        .is_incremental_day(Weekday::of_unix_time(now.timestamp()))
}

/// The scheduled backup to request now, if one is due (MyHoard's
/// `_mark_periodic_backup_requested_if_interval_exceeded`). The caller stores
/// [`merge_backup_request`] of the pending request and this one.
///
/// Due when backups are not paused, the current slot differs from the newest stream's, no
/// request is pending for the current slot, and the newest *scheduled* stream was created at
/// least half an interval ago (manual backups do not delay the schedule).
pub fn scheduled_backup_due(
    settings: &BackupSettings,
    state: &ScheduleState<'_>,
    now: DateTime<Utc>,
) -> Option<BackupRequest> {
    if state.paused_until.is_some_and(|until| until > now) {
        return None;
    }
    let previous = previous_normalized_backup_time(state.streams);
    let normalized = normalized_backup_time(settings, previous, now);
    if previous == Some(normalized) {
        return None;
    }
    if state
        .pending_request
        .is_some_and(|pending| pending.normalized_backup_time == normalized)
    {
        return None;
    }
    let newest_scheduled = state
        .streams
        .iter()
        .filter(|stream| stream.reason == Some(BackupReason::Scheduled))
        .map(|stream| stream.created_at)
        .max_by(f64::total_cmp);
    let half_interval_seconds = settings.backup_interval.as_secs_f64() / 2.0;
    if newest_scheduled
        .is_some_and(|created_at| epoch_seconds(now) - created_at < half_interval_seconds)
    {
        return None;
    }
    Some(BackupRequest {
        reason: BackupReason::Scheduled,
        normalized_backup_time: normalized,
        incremental: incremental_due(settings, now),
    })
}

/// The request for a manual backup (`POST /backup {"backup_type": "basebackup"}`): reason
/// `requested`, for the current slot.
pub fn requested_backup(
    settings: &BackupSettings,
    streams: &[StreamSchedule],
    incremental: bool,
    now: DateTime<Utc>,
) -> BackupRequest {
    BackupRequest {
        reason: BackupReason::Requested,
        normalized_backup_time: normalized_backup_time(
            settings,
            previous_normalized_backup_time(streams),
            now,
        ),
        incremental,
    }
}

/// Which request stays pending when `new` arrives (MyHoard's `mark_backup_requested`): the
/// existing one if it equals `new`, if it is for a later slot, or if it is a scheduled request
/// for the same slot (keeping "scheduled" stops a manual backup from nudging the schedule);
/// otherwise `new`.
pub fn merge_backup_request(existing: Option<&BackupRequest>, new: BackupRequest) -> BackupRequest {
    match existing {
        Some(existing)
            if *existing == new
                || new.normalized_backup_time < existing.normalized_backup_time
                || (new.normalized_backup_time == existing.normalized_backup_time
                    && existing.reason == BackupReason::Scheduled) =>
        {
            existing.clone()
        }
        _ => new,
    }
}

/// UTC times as Python's `datetime.isoformat()` writes them: `2023-01-03T03:00:00+00:00`, with
/// `.ffffff` only when the microseconds are not zero. Reading accepts any RFC 3339 time (`Z` or
/// any offset, converted to UTC); a time without an offset is refused. Use as
/// `#[serde(with = "crate::schedule::iso_time")]`, or `iso_time::option` for `Option`s.
pub mod iso_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// The Python `isoformat()` text of `time`, truncated to microseconds as Python keeps them.
    pub fn format(time: &DateTime<Utc>) -> String {
        let precision = if time.timestamp_subsec_micros() == 0 {
            SecondsFormat::Secs
        } else {
            SecondsFormat::Micros
        };
        time.to_rfc3339_opts(precision, false)
    }

    /// Parses an RFC 3339 time with an offset.
    pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc))
    }

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(|err| {
            serde::de::Error::custom(format_args!("invalid ISO 8601 time {text:?}: {err}"))
        })
    }

    /// The same for `Option<DateTime<Utc>>`, `null` being `None`.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                Some(text) => super::parse(&text).map(Some).map_err(|err| {
                    serde::de::Error::custom(format_args!("invalid ISO 8601 time {text:?}: {err}"))
                }),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::config::IncrementalSettings;

    fn t(text: &str) -> DateTime<Utc> {
        iso_time::parse(text).unwrap()
    }

    fn settings(hour: u8, minute: u8, interval_minutes: u64) -> BackupSettings {
        BackupSettings {
            backup_age_max: Duration::from_secs(14 * 86_400),
            backup_count_max: 30,
            backup_count_min: 14,
            backup_hour: hour,
            backup_minute: minute,
            backup_interval: Duration::from_secs(interval_minutes * 60),
            forced_binlog_rotation_interval: Duration::from_secs(300),
            upload_site: "default".into(),
            incremental: IncrementalSettings::default(),
        }
    }

    fn stream(normalized: &str, reason: BackupReason, created_at: &str) -> StreamSchedule {
        StreamSchedule {
            normalized_backup_time: Some(t(normalized)),
            reason: Some(reason),
            created_at: epoch_seconds(t(created_at)),
        }
    }

    fn request(reason: BackupReason, normalized: &str, incremental: bool) -> BackupRequest {
        BackupRequest {
            reason,
            normalized_backup_time: t(normalized),
            incremental,
        }
    }

    #[test]
    fn normalized_backup_time_follows_the_series() {
        struct Case {
            name: &'static str,
            hour: u8,
            minute: u8,
            interval_minutes: u64,
            previous: Option<&'static str>,
            now: &'static str,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "first backup, later the same day",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: None,
                now: "2023-01-02T18:00:00+00:00",
                expected: "2023-01-02T03:00:00+00:00",
            },
            Case {
                name: "first backup, before today's time: yesterday's slot",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: None,
                now: "2023-01-02T02:59:59+00:00",
                expected: "2023-01-01T03:00:00+00:00",
            },
            Case {
                name: "exactly at the slot: the slot itself",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: None,
                now: "2023-01-02T03:00:00+00:00",
                expected: "2023-01-02T03:00:00+00:00",
            },
            Case {
                name: "MyHoard's docstring: hourly from 13:50, at 15:40",
                hour: 13,
                minute: 50,
                interval_minutes: 60,
                previous: None,
                now: "2023-05-10T15:40:00+00:00",
                expected: "2023-05-10T14:50:00+00:00",
            },
            Case {
                name: "MyHoard's docstring: daily at 13:50, at 13:45",
                hour: 13,
                minute: 50,
                interval_minutes: 1440,
                previous: None,
                now: "2023-05-10T13:45:00+00:00",
                expected: "2023-05-09T13:50:00+00:00",
            },
            Case {
                name: "hourly at :30 just after midnight: the series runs over from yesterday",
                hour: 3,
                minute: 30,
                interval_minutes: 60,
                previous: None,
                now: "2023-01-02T01:10:00+00:00",
                expected: "2023-01-02T00:30:00+00:00",
            },
            Case {
                name: "daily with a previous slot: the next day's slot",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-02T03:00:00+00:00"),
                now: "2023-01-03T03:00:00+00:00",
                expected: "2023-01-03T03:00:00+00:00",
            },
            Case {
                name: "2880 minutes: a day after the previous slot, still the previous slot",
                hour: 3,
                minute: 0,
                interval_minutes: 2880,
                previous: Some("2023-01-03T03:00:00+00:00"),
                now: "2023-01-04T06:00:00+00:00",
                expected: "2023-01-03T03:00:00+00:00",
            },
            Case {
                name: "2880 minutes: two days after the previous slot",
                hour: 3,
                minute: 0,
                interval_minutes: 2880,
                previous: Some("2023-01-03T03:00:00+00:00"),
                now: "2023-01-05T03:00:00+00:00",
                expected: "2023-01-05T03:00:00+00:00",
            },
            Case {
                name: "2880 minutes keep their phase from the previous slot, not from today",
                hour: 3,
                minute: 0,
                interval_minutes: 2880,
                previous: Some("2023-01-03T03:00:00+00:00"),
                now: "2023-01-10T12:00:00+00:00",
                expected: "2023-01-09T03:00:00+00:00",
            },
            Case {
                name: "daily, backup hour moved later: today at the new hour",
                hour: 18,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-03T03:00:00+00:00"),
                now: "2023-01-04T18:00:00+00:00",
                expected: "2023-01-04T18:00:00+00:00",
            },
            Case {
                name: "daily, backup hour moved later, not reached yet: the previous day's",
                hour: 18,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-03T03:00:00+00:00"),
                now: "2023-01-04T17:59:00+00:00",
                expected: "2023-01-03T18:00:00+00:00",
            },
            Case {
                name: "daily, backup hour moved earlier",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-03T18:00:00+00:00"),
                now: "2023-01-04T02:00:00+00:00",
                expected: "2023-01-03T03:00:00+00:00",
            },
            Case {
                name: "daily keeps the previous slot's seconds, as Python's replace() does",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-02T03:00:30.250+00:00"),
                now: "2023-01-03T04:00:00+00:00",
                expected: "2023-01-03T03:00:30.250+00:00",
            },
            Case {
                name: "360 minutes: the hour is not substituted, the series continues",
                hour: 3,
                minute: 0,
                interval_minutes: 360,
                previous: Some("2023-01-02T09:00:00+00:00"),
                now: "2023-01-02T20:59:00+00:00",
                expected: "2023-01-02T15:00:00+00:00",
            },
            Case {
                name: "hourly, a year after the previous slot",
                hour: 3,
                minute: 0,
                interval_minutes: 60,
                previous: Some("2022-01-01T03:00:00+00:00"),
                now: "2023-01-01T03:30:00+00:00",
                expected: "2023-01-01T03:00:00+00:00",
            },
            Case {
                name: "previous slot in the future (clock went back): one day earlier only",
                hour: 3,
                minute: 0,
                interval_minutes: 1440,
                previous: Some("2023-01-05T03:00:00+00:00"),
                now: "2023-01-03T12:00:00+00:00",
                expected: "2023-01-04T03:00:00+00:00",
            },
        ];
        for case in cases {
            let settings = settings(case.hour, case.minute, case.interval_minutes);
            let normalized = normalized_backup_time(&settings, case.previous.map(t), t(case.now));
            assert_eq!(normalized, t(case.expected), "{}", case.name);
        }
    }

    #[test]
    fn scheduled_backup_due_rules() {
        use BackupReason::{Requested, Scheduled};
        struct Case {
            name: &'static str,
            streams: Vec<StreamSchedule>,
            pending: Option<BackupRequest>,
            paused_until: Option<&'static str>,
            now: &'static str,
            expected: Option<BackupRequest>,
        }
        let first = || {
            stream(
                "2023-01-02T03:00:00+00:00",
                Scheduled,
                "2023-01-02T18:00:00+00:00",
            )
        };
        let cases = [
            Case {
                name: "no stream yet: the current slot",
                streams: vec![],
                pending: None,
                paused_until: None,
                now: "2023-01-02T18:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-02T03:00:00+00:00", false)),
            },
            Case {
                name: "the newest stream is for the current slot",
                streams: vec![first()],
                pending: None,
                paused_until: None,
                now: "2023-01-03T02:00:00+00:00",
                expected: None,
            },
            Case {
                name: "new slot, but the last scheduled backup started 9 hours ago",
                streams: vec![first()],
                pending: None,
                paused_until: None,
                now: "2023-01-03T03:00:00+00:00",
                expected: None,
            },
            Case {
                name: "new slot, half an interval after the last scheduled backup",
                streams: vec![first()],
                pending: None,
                paused_until: None,
                now: "2023-01-03T06:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-03T03:00:00+00:00", false)),
            },
            Case {
                name: "a recent manual backup does not delay the schedule",
                streams: vec![stream(
                    "2023-01-02T03:00:00+00:00",
                    Requested,
                    "2023-01-03T02:00:00+00:00",
                )],
                pending: None,
                paused_until: None,
                now: "2023-01-03T03:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-03T03:00:00+00:00", false)),
            },
            Case {
                name: "the newest scheduled stream counts, not the oldest",
                streams: vec![
                    stream(
                        "2023-01-01T03:00:00+00:00",
                        Scheduled,
                        "2023-01-01T03:00:00+00:00",
                    ),
                    stream(
                        "2023-01-02T03:00:00+00:00",
                        Scheduled,
                        "2023-01-02T20:00:00+00:00",
                    ),
                ],
                pending: None,
                paused_until: None,
                now: "2023-01-03T04:00:00+00:00",
                expected: None,
            },
            Case {
                name: "the newest slot among the streams is the previous one",
                streams: vec![
                    stream(
                        "2023-01-03T03:00:00+00:00",
                        Scheduled,
                        "2023-01-03T03:00:00+00:00",
                    ),
                    stream(
                        "2023-01-02T03:00:00+00:00",
                        Scheduled,
                        "2023-01-02T03:00:00+00:00",
                    ),
                ],
                pending: None,
                paused_until: None,
                now: "2023-01-03T18:00:00+00:00",
                expected: None,
            },
            Case {
                name: "streams without a known slot are ignored",
                streams: vec![StreamSchedule {
                    normalized_backup_time: None,
                    reason: None,
                    created_at: epoch_seconds(t("2023-01-03T10:00:00+00:00")),
                }],
                pending: None,
                paused_until: None,
                now: "2023-01-03T12:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-03T03:00:00+00:00", false)),
            },
            Case {
                name: "a request for the current slot is already pending",
                streams: vec![first()],
                pending: Some(request(Requested, "2023-01-03T03:00:00+00:00", false)),
                paused_until: None,
                now: "2023-01-03T06:00:00+00:00",
                expected: None,
            },
            Case {
                name: "a request for an older slot is pending",
                streams: vec![first()],
                pending: Some(request(Requested, "2023-01-02T03:00:00+00:00", false)),
                paused_until: None,
                now: "2023-01-03T06:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-03T03:00:00+00:00", false)),
            },
            Case {
                name: "paused",
                streams: vec![first()],
                pending: None,
                paused_until: Some("2023-01-03T06:00:01+00:00"),
                now: "2023-01-03T06:00:00+00:00",
                expected: None,
            },
            Case {
                name: "the pause is over",
                streams: vec![first()],
                pending: None,
                paused_until: Some("2023-01-03T06:00:00+00:00"),
                now: "2023-01-03T06:00:00+00:00",
                expected: Some(request(Scheduled, "2023-01-03T03:00:00+00:00", false)),
            },
        ];
        for case in cases {
            let state = ScheduleState {
                streams: &case.streams,
                pending_request: case.pending.as_ref(),
                paused_until: case.paused_until.map(t),
            };
            let due = scheduled_backup_due(&settings(3, 0, 1440), &state, t(case.now));
            assert_eq!(due, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn incremental_on_days_without_a_full_backup() {
        struct Case {
            name: &'static str,
            enabled: bool,
            full_days: &'static [Weekday],
            now: &'static str,
            expected: bool,
        }
        let cases = [
            Case {
                name: "disabled",
                enabled: false,
                full_days: &[],
                now: "2023-01-02T03:00:00+00:00",
                expected: false,
            },
            Case {
                name: "Monday, full backups on Sundays",
                enabled: true,
                full_days: &[Weekday::Sun],
                now: "2023-01-02T03:00:00+00:00",
                expected: true,
            },
            Case {
                name: "Sunday, full backups on Sundays",
                enabled: true,
                full_days: &[Weekday::Sun],
                now: "2023-01-01T23:59:59+00:00",
                expected: false,
            },
            Case {
                name: "the UTC day counts, not the local one",
                enabled: true,
                full_days: &[Weekday::Mon],
                now: "2023-01-01T23:30:00-01:00",
                expected: false,
            },
        ];
        for case in cases {
            let mut settings = settings(3, 0, 1440);
            settings.incremental = IncrementalSettings {
                enabled: case.enabled,
                full_backup_week_schedule: case.full_days.iter().copied().collect::<BTreeSet<_>>(),
            };
            assert_eq!(
                incremental_due(&settings, t(case.now)),
                case.expected,
                "{}",
                case.name
            );
            let state = ScheduleState {
                streams: &[],
                pending_request: None,
                paused_until: None,
            };
            let due = scheduled_backup_due(&settings, &state, t(case.now));
            assert_eq!(
                due.map(|r| r.incremental),
                Some(case.expected),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn requested_backup_is_for_the_current_slot() {
        let streams = [stream(
            "2023-01-03T03:00:00+00:00",
            BackupReason::Scheduled,
            "2023-01-03T03:00:00+00:00",
        )];
        let manual = requested_backup(
            &settings(3, 0, 2880),
            &streams,
            true,
            t("2023-01-04T10:00:00+00:00"),
        );
        assert_eq!(
            manual,
            request(BackupReason::Requested, "2023-01-03T03:00:00+00:00", true)
        );
    }

    #[test]
    fn merge_keeps_one_request() {
        use BackupReason::{Requested, Scheduled};
        struct Case {
            name: &'static str,
            existing: Option<BackupRequest>,
            new: BackupRequest,
            expected: BackupRequest,
        }
        let day2 = "2023-01-02T03:00:00+00:00";
        let day3 = "2023-01-03T03:00:00+00:00";
        let cases = [
            Case {
                name: "nothing pending",
                existing: None,
                new: request(Requested, day3, false),
                expected: request(Requested, day3, false),
            },
            Case {
                name: "identical",
                existing: Some(request(Scheduled, day3, true)),
                new: request(Scheduled, day3, true),
                expected: request(Scheduled, day3, true),
            },
            Case {
                name: "the pending one is for a later slot",
                existing: Some(request(Requested, day3, false)),
                new: request(Scheduled, day2, false),
                expected: request(Requested, day3, false),
            },
            Case {
                name: "same slot: a pending scheduled request wins over a manual one",
                existing: Some(request(Scheduled, day3, false)),
                new: request(Requested, day3, true),
                expected: request(Scheduled, day3, false),
            },
            Case {
                name: "same slot: a scheduled request replaces a manual one",
                existing: Some(request(Requested, day3, false)),
                new: request(Scheduled, day3, false),
                expected: request(Scheduled, day3, false),
            },
            Case {
                name: "same slot, both manual, different kind: the newer",
                existing: Some(request(Requested, day3, false)),
                new: request(Requested, day3, true),
                expected: request(Requested, day3, true),
            },
            Case {
                name: "a later slot replaces the pending one",
                existing: Some(request(Scheduled, day2, false)),
                new: request(Requested, day3, false),
                expected: request(Requested, day3, false),
            },
        ];
        for case in cases {
            let merged = merge_backup_request(case.existing.as_ref(), case.new);
            assert_eq!(merged, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn iso_time_matches_python_isoformat() {
        struct Case {
            input: &'static str,
            expected: Result<&'static str, ()>,
        }
        let cases = [
            Case {
                input: "2023-01-03T03:00:00+00:00",
                expected: Ok("2023-01-03T03:00:00+00:00"),
            },
            Case {
                input: "2023-01-03T03:00:00Z",
                expected: Ok("2023-01-03T03:00:00+00:00"),
            },
            Case {
                input: "2023-01-03T05:00:00.25+02:00",
                expected: Ok("2023-01-03T03:00:00.250000+00:00"),
            },
            // Python keeps microseconds; anything finer is dropped when written.
            Case {
                input: "2023-01-03T03:00:00.123456789+00:00",
                expected: Ok("2023-01-03T03:00:00.123456+00:00"),
            },
            Case {
                input: "2023-01-03T03:00:00.000000400+00:00",
                expected: Ok("2023-01-03T03:00:00+00:00"),
            },
            Case {
                input: "2023-01-03T03:00:00",
                expected: Err(()),
            },
            Case {
                input: "yesterday",
                expected: Err(()),
            },
        ];
        for case in cases {
            let formatted = iso_time::parse(case.input)
                .map(|time| iso_time::format(&time))
                .map_err(|_| ());
            assert_eq!(
                formatted.as_deref(),
                case.expected.as_deref(),
                "{}",
                case.input
            );
        }
    }

    #[test]
    fn backup_request_json_matches_myhoard_state() {
        let pending = request(BackupReason::Scheduled, "2023-01-03T03:00:00+00:00", true);
        assert_eq!(
            serde_json::to_string(&pending).unwrap(),
            r#"{"backup_reason":"scheduled","normalized_backup_time":"2023-01-03T03:00:00+00:00","incremental_requested":true}"#
        );
        // As Python's json.dumps writes it, and without the key older MyHoard did not have.
        let python = r#"{"backup_reason": "requested", "normalized_backup_time": "2023-01-02T03:00:00+00:00"}"#;
        assert_eq!(
            serde_json::from_str::<BackupRequest>(python).unwrap(),
            request(BackupReason::Requested, "2023-01-02T03:00:00+00:00", false)
        );
        let bad_reason =
            r#"{"backup_reason": "whim", "normalized_backup_time": "2023-01-02T03:00:00+00:00"}"#;
        assert!(serde_json::from_str::<BackupRequest>(bad_reason).is_err());
        let bad_time = r#"{"backup_reason": "requested", "normalized_backup_time": "2023-01-02"}"#;
        let err = serde_json::from_str::<BackupRequest>(bad_time).unwrap_err();
        assert!(err.to_string().contains("invalid ISO 8601 time"), "{err}");

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Paused {
            #[serde(with = "iso_time::option")]
            until: Option<DateTime<Utc>>,
        }
        for (value, json) in [
            (Paused { until: None }, r#"{"until":null}"#),
            (
                Paused {
                    until: Some(t("2023-01-02T03:00:00+00:00")),
                },
                r#"{"until":"2023-01-02T03:00:00+00:00"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
            assert_eq!(serde_json::from_str::<Paused>(json).unwrap(), value);
        }
    }
}

//! When a schedule fires: a `temporal.api.schedule.v1.ScheduleSpec` compiled into something
//! that answers "the first action time after t" (UTC, millisecond epoch times).
//!
//! Supported: intervals with a phase (fire at every `phase + k * interval` since the epoch),
//! calendar specs (range strings), structured calendars, cron strings (5, 6 or 7 fields and the
//! `@yearly`/`@monthly`/`@weekly`/`@daily`/`@hourly` shorthands), exclusions, start and end
//! times, and jitter (applied by the caller). All fields of a calendar must match (day of month
//! and day of week are ANDed, as Temporal does). Time zones other than UTC, `@every` cron
//! strings and `L`/`#` cron extensions are refused with an error.

use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use temporalio_protos::temporal::api::schedule::v1 as proto;

/// The most candidate steps one search takes before giving up (a calendar that never
/// matches, such as February 30th).
const SEARCH_STEPS: usize = 200_000;

/// One calendar: the allowed values of each field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Calendar {
    second: u64,
    minute: u64,
    hour: u64,
    day_of_month: u64,
    month: u64,
    day_of_week: u64,
    /// Year ranges (inclusive, step); empty = every year.
    years: Vec<(i32, i32, i32)>,
}

/// A compiled spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct CompiledSpec {
    /// (interval, phase) in ms.
    intervals: Vec<(i64, i64)>,
    calendars: Vec<Calendar>,
    excludes: Vec<Calendar>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    /// Largest random delay added to each scheduled action, ms.
    pub(crate) jitter_ms: i64,
}

fn duration_ms(d: &prost_types::Duration) -> i64 {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos) / 1_000_000)
}

fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

impl CompiledSpec {
    /// Compiles a spec, or says what is wrong or unsupported.
    // `exclude_calendar` is deprecated in the proto in favour of the structured form; Temporal's
    // SDK still sends it.
    #[allow(deprecated)]
    pub(crate) fn compile(spec: &proto::ScheduleSpec) -> Result<Self, String> {
        match spec.timezone_name.as_str() {
            "" | "UTC" | "Etc/UTC" => {}
            other => {
                return Err(format!(
                    "schedule time zone `{other}` is not supported by DBOSify: only UTC \
                     (leave timezone_name empty); express the times in UTC"
                ));
            }
        }
        if !spec.timezone_data.is_empty() {
            return Err("schedule timezone_data is not supported by DBOSify (UTC only)".into());
        }
        let mut out = CompiledSpec::default();
        for i in &spec.interval {
            let every = i.interval.as_ref().map(duration_ms).unwrap_or(0);
            if every < 1000 {
                return Err(format!(
                    "schedule interval must be at least 1 second (got {every} ms)"
                ));
            }
            let phase = i.phase.as_ref().map(duration_ms).unwrap_or(0);
            if phase < 0 {
                return Err("schedule interval offset must not be negative".into());
            }
            out.intervals.push((every, phase.rem_euclid(every)));
        }
        for c in &spec.calendar {
            out.calendars.push(Calendar::from_strings(c)?);
        }
        for c in &spec.structured_calendar {
            out.calendars.push(Calendar::from_structured(c)?);
        }
        for c in &spec.cron_string {
            out.calendars.push(Calendar::from_cron(c)?);
        }
        for c in &spec.exclude_calendar {
            out.excludes.push(Calendar::from_strings(c)?);
        }
        for c in &spec.exclude_structured_calendar {
            out.excludes.push(Calendar::from_structured(c)?);
        }
        out.start_ms = spec.start_time.as_ref().map(timestamp_ms);
        out.end_ms = spec.end_time.as_ref().map(timestamp_ms);
        if let (Some(s), Some(e)) = (out.start_ms, out.end_ms)
            && e < s
        {
            return Err("schedule end_time is before its start_time".into());
        }
        out.jitter_ms = spec.jitter.as_ref().map(duration_ms).unwrap_or(0).max(0);
        Ok(out)
    }

    /// The first action time strictly after `after_ms`, or `None`.
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut after = after_ms;
        if let Some(s) = self.start_ms {
            after = after.max(s - 1);
        }
        for _ in 0..10_000 {
            let interval = self
                .intervals
                .iter()
                .filter_map(|&(every, phase)| {
                    let k = (after - phase).div_euclid(every).checked_add(1)?;
                    k.checked_mul(every)?.checked_add(phase)
                })
                .min();
            let calendar = self
                .calendars
                .iter()
                .filter_map(|c| c.next_after_ms(after))
                .min();
            let candidate = match (interval, calendar) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            if self.end_ms.is_some_and(|e| candidate > e) {
                return None;
            }
            if self.excludes.iter().any(|c| c.matches_ms(candidate)) {
                after = candidate;
                continue;
            }
            return Some(candidate);
        }
        None
    }

    /// Action times in `[from_ms, to_ms]`, at most `limit` of them.
    pub(crate) fn times_between(&self, from_ms: i64, to_ms: i64, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = from_ms - 1;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= to_ms => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// Field bounds: (name, min, max, default).
const SECOND: (&str, i32, i32, &str) = ("second", 0, 59, "0");
const MINUTE: (&str, i32, i32, &str) = ("minute", 0, 59, "0");
const HOUR: (&str, i32, i32, &str) = ("hour", 0, 23, "0");
const DAY_OF_MONTH: (&str, i32, i32, &str) = ("day_of_month", 1, 31, "*");
const MONTH: (&str, i32, i32, &str) = ("month", 1, 12, "*");
const DAY_OF_WEEK: (&str, i32, i32, &str) = ("day_of_week", 0, 7, "*");

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn named_value(field: &str, s: &str) -> Option<i32> {
    let lower = s.to_ascii_lowercase();
    if lower.len() < 3 {
        return None;
    }
    let names: &[&str] = match field {
        "month" => &MONTHS,
        "day_of_week" => &DAYS,
        _ => return None,
    };
    let pos = names.iter().position(|n| lower.starts_with(n))?;
    let base = if field == "month" { 1 } else { 0 };
    i32::try_from(pos).ok().map(|p| p + base)
}

fn parse_value(field: &str, s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .ok()
        .or_else(|| named_value(field, s))
        .ok_or_else(|| format!("invalid {field} value `{s}` in schedule calendar"))
}

/// Parses one range string into (start, end, step) triples.
fn parse_ranges(
    (field, min, max, default): (&str, i32, i32, &str),
    text: &str,
) -> Result<Vec<(i32, i32, i32)>, String> {
    let text = if text.trim().is_empty() {
        default
    } else {
        text.trim()
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        // Month and day names may contain these letters (`JUL`, `WED`): an item is an
        // extension only when it does not parse otherwise.
        let extension = |e: String| {
            if item.contains(['L', 'l', 'W', 'w', '#']) {
                format!(
                    "{field} `{item}`: the cron extensions L, W and # are not supported by DBOSify"
                )
            } else {
                e
            }
        };
        out.push(parse_range_item((field, min, max), item).map_err(extension)?);
    }
    Ok(out)
}

/// Parses one item of a range list (`*`, `a`, `a-b`, with an optional `/step`).
fn parse_range_item(
    (field, min, max): (&str, i32, i32),
    item: &str,
) -> Result<(i32, i32, i32), String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (
            r,
            s.parse::<i32>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("invalid {field} step `{s}` in schedule calendar"))?,
        ),
        None => (item, 1),
    };
    let (start, end) = if range == "*" || range == "?" {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        (parse_value(field, a)?, parse_value(field, b)?)
    } else {
        let v = parse_value(field, range)?;
        // `a/step` runs from a to the maximum.
        (v, if item.contains('/') { max } else { v })
    };
    if start < min || end > max || end < start {
        return Err(format!(
            "{field} range `{item}` is outside {min}-{max} in schedule calendar"
        ));
    }
    Ok((start, end, step))
}

fn mask(ranges: &[(i32, i32, i32)]) -> u64 {
    let mut m = 0u64;
    for &(start, end, step) in ranges {
        let mut v = start;
        while v <= end {
            if (0..64).contains(&v) {
                m |= 1 << v;
            }
            v += step.max(1);
        }
    }
    m
}

fn structured(
    field: (&str, i32, i32, &str),
    ranges: &[proto::Range],
) -> Result<Vec<(i32, i32, i32)>, String> {
    if ranges.is_empty() {
        return parse_ranges(field, "");
    }
    let (name, min, max, _) = field;
    ranges
        .iter()
        .map(|r| {
            let end = if r.end < r.start { r.start } else { r.end };
            let step = if r.step <= 0 { 1 } else { r.step };
            if r.start < min || end > max {
                return Err(format!(
                    "{name} range {}-{end} is outside {min}-{max} in schedule calendar",
                    r.start
                ));
            }
            Ok((r.start, end, step))
        })
        .collect()
}

impl Calendar {
    fn build(
        second: Vec<(i32, i32, i32)>,
        minute: Vec<(i32, i32, i32)>,
        hour: Vec<(i32, i32, i32)>,
        day_of_month: Vec<(i32, i32, i32)>,
        month: Vec<(i32, i32, i32)>,
        day_of_week: Vec<(i32, i32, i32)>,
        years: Vec<(i32, i32, i32)>,
    ) -> Self {
        let mut dow = mask(&day_of_week);
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Self {
            second: mask(&second),
            minute: mask(&minute),
            hour: mask(&hour),
            day_of_month: mask(&day_of_month),
            month: mask(&month),
            day_of_week: dow,
            years,
        }
    }

    fn years(text: &str) -> Result<Vec<(i32, i32, i32)>, String> {
        let t = text.trim();
        if t.is_empty() || t == "*" {
            return Ok(Vec::new());
        }
        parse_ranges(("year", 1970, 9999, "*"), t)
    }

    pub(crate) fn from_strings(c: &proto::CalendarSpec) -> Result<Self, String> {
        Ok(Self::build(
            parse_ranges(SECOND, &c.second)?,
            parse_ranges(MINUTE, &c.minute)?,
            parse_ranges(HOUR, &c.hour)?,
            parse_ranges(DAY_OF_MONTH, &c.day_of_month)?,
            parse_ranges(MONTH, &c.month)?,
            parse_ranges(DAY_OF_WEEK, &c.day_of_week)?,
            Self::years(&c.year)?,
        ))
    }

    fn from_structured(c: &proto::StructuredCalendarSpec) -> Result<Self, String> {
        let years = c
            .year
            .iter()
            .map(|r| {
                let end = if r.end < r.start { r.start } else { r.end };
                (r.start, end, r.step.max(1))
            })
            .collect();
        Ok(Self::build(
            structured(SECOND, &c.second)?,
            structured(MINUTE, &c.minute)?,
            structured(HOUR, &c.hour)?,
            structured(DAY_OF_MONTH, &c.day_of_month)?,
            structured(MONTH, &c.month)?,
            structured(DAY_OF_WEEK, &c.day_of_week)?,
            years,
        ))
    }

    /// Parses a cron string the way Temporal reads it (see the module documentation).
    pub(crate) fn from_cron(cron: &str) -> Result<Self, String> {
        let text = cron.split('#').next().unwrap_or("").trim();
        let mut text = text.to_string();
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (tz, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                if !matches!(tz, "UTC" | "Etc/UTC") {
                    return Err(format!(
                        "cron string `{cron}`: time zone `{tz}` is not supported by DBOSify (UTC only)"
                    ));
                }
                text = rest.trim().to_string();
            }
        }
        let expanded = match crate::policies::cron_descriptor(&text) {
            Some(pattern) => pattern,
            None if text.starts_with('@') => {
                return Err(format!(
                    "cron string `{cron}` is not supported by DBOSify; use an interval spec \
                     (ScheduleSpec::from_interval) instead of `@every`"
                ));
            }
            None => text.as_str(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 | 6 => ("0", &fields[..]),
            7 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "cron string `{cron}` has {n} fields; expected 5, 6 or 7"
                ));
            }
        };
        let year = rest.get(5).copied().unwrap_or("*");
        let err = |e: String| format!("cron string `{cron}`: {e}");
        Ok(Self::build(
            parse_ranges(SECOND, second).map_err(err)?,
            parse_ranges(MINUTE, rest[0]).map_err(err)?,
            parse_ranges(HOUR, rest[1]).map_err(err)?,
            parse_ranges(DAY_OF_MONTH, rest[2]).map_err(err)?,
            parse_ranges(MONTH, rest[3]).map_err(err)?,
            parse_ranges(DAY_OF_WEEK, rest[4]).map_err(err)?,
            Self::years(year).map_err(err)?,
        ))
    }

    fn year_ok(&self, y: i32) -> bool {
        self.years.is_empty()
            || self
                .years
                .iter()
                .any(|&(s, e, step)| y >= s && y <= e && (y - s) % step.max(1) == 0)
    }

    fn bit(mask: u64, v: u32) -> bool {
        v < 64 && mask & (1 << v) != 0
    }

    fn matches_secs(&self, t: i64) -> bool {
        let Some(dt) = DateTime::from_timestamp(t, 0) else {
            return false;
        };
        self.year_ok(dt.year())
            && Self::bit(self.month, dt.month())
            && Self::bit(self.day_of_month, dt.day())
            && Self::bit(self.day_of_week, dt.weekday().num_days_from_sunday())
            && Self::bit(self.hour, dt.hour())
            && Self::bit(self.minute, dt.minute())
            && Self::bit(self.second, dt.second())
    }

    fn matches_ms(&self, t: i64) -> bool {
        t.rem_euclid(1000) == 0 && self.matches_secs(t.div_euclid(1000))
    }

    /// The first matching time strictly after `after_ms`, in ms.
    fn next_after_ms(&self, after_ms: i64) -> Option<i64> {
        let mut t = after_ms.div_euclid(1000) + 1;
        for _ in 0..SEARCH_STEPS {
            let dt = DateTime::from_timestamp(t, 0)?;
            let y = dt.year();
            if y > 9999 || self.years.iter().all(|r| r.1 < y) && !self.years.is_empty() {
                return None;
            }
            let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|n| n.and_utc().timestamp());
            if !self.year_ok(y) {
                t = midnight(NaiveDate::from_ymd_opt(y + 1, 1, 1)?)?;
                continue;
            }
            if !Self::bit(self.month, dt.month()) {
                let (ny, nm) = if dt.month() == 12 {
                    (y + 1, 1)
                } else {
                    (y, dt.month() + 1)
                };
                t = midnight(NaiveDate::from_ymd_opt(ny, nm, 1)?)?;
                continue;
            }
            if !Self::bit(self.day_of_month, dt.day())
                || !Self::bit(self.day_of_week, dt.weekday().num_days_from_sunday())
            {
                t = midnight(dt.date_naive().succ_opt()?)?;
                continue;
            }
            let into_hour = i64::from(dt.minute() * 60 + dt.second());
            if !Self::bit(self.hour, dt.hour()) {
                t = t - into_hour + 3600;
                continue;
            }
            if !Self::bit(self.minute, dt.minute()) {
                t = t - i64::from(dt.second()) + 60;
                continue;
            }
            if !Self::bit(self.second, dt.second()) {
                t += 1;
                continue;
            }
            return t.checked_mul(1000);
        }
        None
    }
}

/// `2026-11-21T10:00:00Z` for an epoch-ms time (seconds precision, as Temporal names runs).
pub(crate) fn format_rfc3339_seconds(ms: i64) -> String {
    DateTime::from_timestamp(ms.div_euclid(1000), 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn interval(secs: i64, phase: i64) -> proto::ScheduleSpec {
        proto::ScheduleSpec {
            interval: vec![proto::IntervalSpec {
                interval: Some(prost_types::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
                phase: Some(prost_types::Duration {
                    seconds: phase,
                    nanos: 0,
                }),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn intervals_align_to_the_epoch_plus_phase() {
        let s = CompiledSpec::compile(&interval(10, 0)).unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:03Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:20Z"))
        );
        let s = CompiledSpec::compile(&interval(3600, 15 * 60)).unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:20:00Z")),
            Some(ms("2026-01-01T01:15:00Z"))
        );
        assert!(CompiledSpec::compile(&interval(0, 0)).is_err());
    }

    #[test]
    fn calendars_and_crons() {
        let cal = proto::CalendarSpec {
            hour: "9-17/4".into(),
            day_of_week: "mon-fri".into(),
            ..Default::default()
        };
        let s = CompiledSpec::compile(&proto::ScheduleSpec {
            calendar: vec![cal],
            ..Default::default()
        })
        .unwrap();
        // 2026-01-02 is a Friday; 9, 13, 17 h.
        let t = s.times_between(ms("2026-01-02T00:00:00Z"), ms("2026-01-05T23:59:59Z"), 10);
        assert_eq!(
            t,
            vec![
                ms("2026-01-02T09:00:00Z"),
                ms("2026-01-02T13:00:00Z"),
                ms("2026-01-02T17:00:00Z"),
                ms("2026-01-05T09:00:00Z"),
                ms("2026-01-05T13:00:00Z"),
                ms("2026-01-05T17:00:00Z"),
            ]
        );
        let s = CompiledSpec::compile(&proto::ScheduleSpec {
            cron_string: vec!["30 12 * * MON-FRI # lunch".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-03T00:00:00Z")),
            Some(ms("2026-01-05T12:30:00Z"))
        );
        let s = CompiledSpec::compile(&proto::ScheduleSpec {
            cron_string: vec!["@monthly".into(), "*/20 * * * * * 2026".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.next_after(ms("2026-12-31T23:59:41Z")),
            Some(ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-05-05T10:00:00Z")),
            Some(ms("2026-05-05T10:00:20Z"))
        );
        // February 30th never comes.
        let s = CompiledSpec::compile(&proto::ScheduleSpec {
            cron_string: vec!["0 0 30 2 *".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.next_after(ms("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    #[allow(deprecated)]
    fn bounds_exclusions_and_refusals() {
        let mut spec = interval(3600, 0);
        spec.start_time = Some(prost_types::Timestamp {
            seconds: ms("2026-01-01T05:30:00Z") / 1000,
            nanos: 0,
        });
        spec.end_time = Some(prost_types::Timestamp {
            seconds: ms("2026-01-01T08:00:00Z") / 1000,
            nanos: 0,
        });
        spec.exclude_calendar = vec![proto::CalendarSpec {
            hour: "7".into(),
            ..Default::default()
        }];
        let s = CompiledSpec::compile(&spec).unwrap();
        assert_eq!(
            s.times_between(0, i64::MAX, 10),
            vec![ms("2026-01-01T06:00:00Z"), ms("2026-01-01T08:00:00Z")]
        );
        for (bad, what) in [
            ("@every 5m", "@every"),
            ("0 0 L * *", "L, W and #"),
            ("0 0 15W * *", "L, W and #"),
            ("0 0 * * 5L", "L, W and #"),
            ("CRON_TZ=Europe/Paris 0 0 * * *", "time zone"),
            ("0 0 * *", "fields"),
            ("0 25 * * *", "outside"),
        ] {
            let e = CompiledSpec::compile(&proto::ScheduleSpec {
                cron_string: vec![bad.into()],
                ..Default::default()
            })
            .unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
        // Names that contain the extension letters are names, not extensions.
        let named = CompiledSpec::compile(&proto::ScheduleSpec {
            cron_string: vec!["0 9 1 JUL,APR WED".into()],
            ..Default::default()
        });
        assert!(named.is_ok(), "{named:?}");
        let e = CompiledSpec::compile(&proto::ScheduleSpec {
            timezone_name: "US/Eastern".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("not supported by DBOSify"), "{e}");
        assert_eq!(
            format_rfc3339_seconds(ms("2026-11-21T10:00:00Z") + 999),
            "2026-11-21T10:00:00Z"
        );
    }
}

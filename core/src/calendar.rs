//! Calendar expressions (beyond Windows): the systemd `OnCalendar=` syntax of systemd.time(7),
//! `[WEEKDAYS] [YEAR-]MONTH-DAY [HOUR:MINUTE[:SECOND]] [UTC]`, each field `*`, a value, a range
//! `a..b`, a repetition `a/step` or `a..b/step`, or a comma list of those; plus the shorthands
//! `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`, `semiannually`, `yearly`,
//! `annually`. Parsing happens at registration; an expression btb cannot honour is an error naming
//! the offending part, never a silently different schedule.

use crate::error::{Error, Result};
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A parsed calendar expression: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarSpec {
    /// Bit `n` set = weekday `n` allowed (0 = Monday … 6 = Sunday).
    pub weekdays: u8,
    /// Allowed years; `None` = any.
    pub years: Option<Vec<u32>>,
    pub months: Vec<u32>,
    pub days: Vec<u32>,
    pub hours: Vec<u32>,
    pub minutes: Vec<u32>,
    pub seconds: Vec<u32>,
    /// `true` when the expression ends in `UTC`; otherwise the local time zone.
    pub utc: bool,
}

/// The last year a calendar expression can name (as systemd's `MAX_YEAR`); the search for the next
/// elapse gives up after it.
const MAX_YEAR: i32 = 2199;

/// The system's time zone (`TZ`, else `/etc/localtime` on Unix, the Windows zone on Windows), or UTC
/// when it cannot be determined. Calendar triggers without `UTC` follow this zone.
pub fn system_time_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// The local time zone as read from `localtime` (a link into a zoneinfo tree, or a TZif file):
/// `TZ` when set, as everywhere; else the zone of that file; else UTC. Read afresh on each call
/// (jiff's system zone is cached), so that a changed zone is seen at once.
pub fn local_time_zone(localtime: &std::path::Path) -> TimeZone {
    if std::env::var_os("TZ").is_some() {
        return system_time_zone();
    }
    let Ok(data) = crate::platform::read_regular(localtime) else {
        return TimeZone::UTC;
    };
    // The IANA name, when the link points into a zoneinfo tree (".../zoneinfo/Europe/Berlin").
    let name = std::fs::read_link(localtime).ok().and_then(|target| {
        let target = target.to_string_lossy().into_owned();
        target
            .rsplit_once("zoneinfo/")
            .map(|(_, name)| name.to_owned())
    });
    TimeZone::tzif(name.as_deref().unwrap_or("localtime"), &data).unwrap_or(TimeZone::UTC)
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn bad(expr: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("bad calendar expression {expr:?}: {why}"))
}

impl CalendarSpec {
    pub fn parse(expr: &str) -> Result<CalendarSpec> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(bad(expr, "it is empty"));
        }
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "minutely" => "*-*-* *:*:00",
            "hourly" => "*-*-* *:00:00",
            "daily" => "*-*-* 00:00:00",
            "weekly" => "Mon *-*-* 00:00:00",
            "monthly" => "*-*-01 00:00:00",
            "quarterly" => "*-01,04,07,10-01 00:00:00",
            "semiannually" => "*-01,07-01 00:00:00",
            "yearly" | "annually" => "*-01-01 00:00:00",
            _ => trimmed,
        };
        let mut parts: Vec<&str> = expanded.split_whitespace().collect();
        let mut spec = CalendarSpec {
            weekdays: 0x7f,
            years: None,
            months: (1..=12).collect(),
            days: (1..=31).collect(),
            hours: vec![0],
            minutes: vec![0],
            seconds: vec![0],
            utc: false,
        };
        if parts.last().is_some_and(|p| p.eq_ignore_ascii_case("utc")) {
            spec.utc = true;
            parts.pop();
        }
        let mut i = 0;
        if let Some(first) = parts.first()
            && first
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
        {
            spec.weekdays = parse_weekdays(expr, first)?;
            i = 1;
        }
        let mut have_date = false;
        let mut have_time = false;
        for part in &parts[i..] {
            if part.contains(':') && !have_time {
                parse_time(expr, part, &mut spec)?;
                have_time = true;
            } else if part.contains('-') && !have_date && !have_time {
                parse_date(expr, part, &mut spec)?;
                have_date = true;
            } else {
                return Err(bad(
                    expr,
                    format!(
                        "unexpected {part:?} (expected [WEEKDAYS] [YEAR-]MONTH-DAY [HH:MM[:SS]] [UTC]; \
                         time zones other than UTC are not supported)"
                    ),
                ));
            }
        }
        if i == parts.len() && i == 0 {
            return Err(bad(expr, "it names no date, time or weekday"));
        }
        Ok(spec)
    }

    /// The first instant strictly after `after_ms` (milliseconds since the Unix epoch, UTC) whose
    /// civil time in `tz` (or UTC when `self.utc`) matches every field. `None` when nothing matches
    /// before the end of the year range (2199) — e.g. `2030-02-30`.
    ///
    /// Results are whole seconds. Like systemd (`find_next()` in `src/shared/calendarspec.c`) the
    /// search walks civil time: the weekday and the day of month must both match, days a month does
    /// not have (Feb 30) are skipped, and a civil time that does not exist because the clock jumps
    /// forward (DST gap) is skipped — the next matching civil time after the gap is used instead.
    /// A civil time that occurs twice because the clock goes back (DST fold) elapses once, at the
    /// earlier instant; every expression thus names a fixed set of instants, and this returns the
    /// first of them after `after_ms`.
    pub fn next_after(&self, after_ms: i64, tz: &TimeZone) -> Option<i64> {
        let utc = TimeZone::UTC;
        let tz = if self.utc { &utc } else { tz };
        // Second resolution: the earliest possible result is the first whole second after `after_ms`.
        let first = after_ms.div_euclid(1000) + 1;
        let first = Timestamp::from_second(
            first.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second()),
        )
        .ok()?;
        let mut cursor = tz.to_datetime(first);
        loop {
            let civil = self.next_civil(cursor)?;
            let next_second = civil.checked_add(SignedDuration::from_secs(1)).ok()?;
            cursor = match tz.to_ambiguous_timestamp(civil).offset() {
                AmbiguousOffset::Unambiguous { offset } => {
                    let at = offset.to_timestamp(civil).ok()?;
                    if at >= first {
                        return Some(at.as_millisecond());
                    }
                    next_second
                }
                AmbiguousOffset::Gap { after, .. } => {
                    // The clock jumps over `civil`: resume at the end of the gap, the civil time of
                    // the transition in the new offset (every civil time before it is missing too).
                    let before_gap = after.to_timestamp(civil).ok()?;
                    match tz.following(before_gap).next() {
                        Some(t) => after.to_datetime(t.timestamp()).max(next_second),
                        None => next_second,
                    }
                }
                AmbiguousOffset::Fold { before, .. } => {
                    let earlier = before.to_timestamp(civil).ok()?;
                    if earlier >= first {
                        return Some(earlier.as_millisecond());
                    }
                    // `first` lies in the repeated stretch and `civil` already elapsed in its first
                    // pass, as did every civil time up to the end of the repetition — the civil
                    // time of the transition in the old offset.
                    match tz.following(earlier).next() {
                        Some(t) => before.to_datetime(t.timestamp()).max(next_second),
                        None => next_second,
                    }
                }
            };
        }
    }

    /// The first civil date-time at or after `from` (whole seconds; a fraction rounds up) that
    /// matches every field, ignoring time zones; `None` past [`MAX_YEAR`].
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let from_date = (
            i32::from(from.year()),
            from.month() as u32,
            from.day() as u32,
        );
        let from_time = (
            from.hour() as u32,
            from.minute() as u32,
            from.second() as u32 + u32::from(from.subsec_nanosecond() > 0),
        );
        let mut year = from_date.0;
        loop {
            if let Some(years) = &self.years {
                let at_least = u32::try_from(year).unwrap_or(0);
                year = i32::try_from(first_at_least(years, at_least)?).ok()?;
            }
            if year > MAX_YEAR {
                return None;
            }
            let month_from = if year == from_date.0 { from_date.1 } else { 1 };
            for &month in self.months.iter().filter(|&&m| m >= month_from) {
                let first_of_month = Date::new(year as i16, month as i8, 1).ok()?;
                let day_from = if (year, month) == (from_date.0, from_date.1) {
                    from_date.2
                } else {
                    1
                };
                let last_day = first_of_month.days_in_month() as u32;
                for &day in self
                    .days
                    .iter()
                    .filter(|&&d| d >= day_from && d <= last_day)
                {
                    let date = first_of_month.with().day(day as i8).build().ok()?;
                    if self.weekdays & 0x7f != 0x7f
                        && self.weekdays & (1 << date.weekday().to_monday_zero_offset()) == 0
                    {
                        continue;
                    }
                    let time_from = if (year, month, day) == from_date {
                        from_time
                    } else {
                        (0, 0, 0)
                    };
                    if let Some((h, m, s)) = self.first_time_at_least(time_from) {
                        return Some(date.at(h as i8, m as i8, s as i8, 0));
                    }
                }
            }
            year += 1;
        }
    }

    /// The earliest allowed time of day at or after `(hour, minute, second)`.
    fn first_time_at_least(
        &self,
        (hour, minute, second): (u32, u32, u32),
    ) -> Option<(u32, u32, u32)> {
        for &h in self.hours.iter().filter(|&&h| h >= hour) {
            let minute_from = if h == hour { minute } else { 0 };
            for &m in self.minutes.iter().filter(|&&m| m >= minute_from) {
                let second_from = if (h, m) == (hour, minute) { second } else { 0 };
                if let Some(s) = first_at_least(&self.seconds, second_from) {
                    return Some((h, m, s));
                }
            }
        }
        None
    }
}

/// The smallest value of the sorted `list` that is `>= at_least`.
fn first_at_least(list: &[u32], at_least: u32) -> Option<u32> {
    list.get(list.partition_point(|&v| v < at_least)).copied()
}

fn parse_weekdays(expr: &str, text: &str) -> Result<u8> {
    let day = |name: &str| -> Result<u32> {
        let lower = name.to_ascii_lowercase();
        WEEKDAYS
            .iter()
            // `is_day_name` first: it admits only 3-byte names and ASCII full names, so `[..3]`
            // cannot split a character ("Moé" would panic).
            .position(|d| is_day_name(&lower) && d.starts_with(&lower[..3]))
            .map(|p| p as u32)
            .ok_or_else(|| bad(expr, format!("unknown weekday {name:?}")))
    };
    let mut mask = 0u8;
    for item in text.split(',') {
        if let Some((a, b)) = item.split_once("..") {
            let (a, b) = (day(a)?, day(b)?);
            if a > b {
                return Err(bad(expr, format!("weekday range {item:?} runs backwards")));
            }
            for d in a..=b {
                mask |= 1 << d;
            }
        } else {
            mask |= 1 << day(item)?;
        }
    }
    Ok(mask)
}

fn is_day_name(lower: &str) -> bool {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    lower.len() == 3 || FULL.contains(&lower)
}

fn parse_date(expr: &str, text: &str, spec: &mut CalendarSpec) -> Result<()> {
    let fields: Vec<&str> = text.split('-').collect();
    let (year, month, day) = match fields.as_slice() {
        [m, d] => (None, *m, *d),
        [y, m, d] => (Some(*y), *m, *d),
        _ => return Err(bad(expr, format!("date {text:?} is not [YEAR-]MONTH-DAY"))),
    };
    if let Some(y) = year
        && y != "*"
    {
        spec.years = Some(parse_field(expr, "year", y, 1970, 2199)?);
    }
    spec.months = parse_field(expr, "month", month, 1, 12)?;
    spec.days = parse_field(expr, "day", day, 1, 31)?;
    Ok(())
}

fn parse_time(expr: &str, text: &str, spec: &mut CalendarSpec) -> Result<()> {
    let fields: Vec<&str> = text.split(':').collect();
    let (h, m, s) = match fields.as_slice() {
        [h, m] => (*h, *m, "00"),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(bad(expr, format!("time {text:?} is not HH:MM[:SS]"))),
    };
    spec.hours = parse_field(expr, "hour", h, 0, 23)?;
    spec.minutes = parse_field(expr, "minute", m, 0, 59)?;
    spec.seconds = parse_field(expr, "second", s, 0, 59)?;
    Ok(())
}

/// One field: `*`, `n`, `a..b`, `x/step` (x = `*`, `n` or `a..b`), comma lists of those.
fn parse_field(expr: &str, what: &str, text: &str, min: u32, max: u32) -> Result<Vec<u32>> {
    let number = |s: &str| -> Result<u32> {
        let v: u32 = s
            .parse()
            .map_err(|_| bad(expr, format!("{what} {s:?} is not a number")))?;
        if v < min || v > max {
            return Err(bad(
                expr,
                format!("{what} {v} is out of range {min}..{max}"),
            ));
        }
        Ok(v)
    };
    let mut values = Vec::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                    bad(
                        expr,
                        format!("{what} repetition {s:?} is not a positive number"),
                    )
                })?;
                (r, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once("..") {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad(expr, format!("{what} range {range:?} runs backwards")));
            }
            (a, b)
        } else {
            let a = number(range)?;
            (a, if step.is_some() { max } else { a })
        };
        values.extend((start..=end).step_by(step.unwrap_or(1) as usize));
    }
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_and_full_forms() {
        let daily = CalendarSpec::parse("daily").unwrap();
        assert_eq!(daily.hours, vec![0]);
        assert_eq!(daily.days.len(), 31);
        let s = CalendarSpec::parse("Mon..Fri *-*-* 09:30").unwrap();
        assert_eq!(s.weekdays, 0b0011111);
        assert_eq!(
            (s.hours.clone(), s.minutes.clone(), s.seconds.clone()),
            (vec![9], vec![30], vec![0])
        );
        let s = CalendarSpec::parse("Sat,Sun 2030-01,07-01 12:00:00 UTC").unwrap();
        assert_eq!(s.weekdays, 0b1100000);
        assert_eq!(s.years, Some(vec![2030]));
        assert_eq!(s.months, vec![1, 7]);
        assert!(s.utc);
        let s = CalendarSpec::parse("*:0/15").unwrap();
        assert_eq!(s.minutes, vec![0, 15, 30, 45]);
        assert_eq!(s.hours.len(), 24);
        let s = CalendarSpec::parse("quarterly").unwrap();
        assert_eq!(s.months, vec![1, 4, 7, 10]);
        let s = CalendarSpec::parse("Wednesday 03-15").unwrap();
        assert_eq!(s.weekdays, 0b100);
    }

    #[test]
    fn errors_name_the_offending_part() {
        for (expr, needle) in [
            ("", "empty"),
            ("Funday", "unknown weekday \"Funday\""),
            ("*-13-01", "month 13 is out of range"),
            ("*-*-* 25:00", "hour 25 is out of range"),
            ("*-*-* 10:61", "minute 61"),
            ("*:*/0", "repetition"),
            ("*-*-* 10:00 Europe/Berlin", "unexpected \"Europe/Berlin\""),
            ("Fri..Mon", "runs backwards"),
            ("1..x-01", "\"x\" is not a number"),
        ] {
            let err = CalendarSpec::parse(expr).unwrap_err();
            assert!(
                err.message().contains(needle),
                "{expr:?}: {}",
                err.message()
            );
            assert!(err.message().contains("bad calendar expression"));
        }
    }

    #[test]
    fn non_ascii_weekday_is_an_error_not_a_panic() {
        // Found by fuzzing (fuzz/ target `calendar`): a name whose third byte is inside a
        // multi-byte character panicked slicing `[..3]`.
        for expr in [
            "Moé",
            "m\u{8}\u{5bb}",
            "Mo\u{1F600}..Fri",
            "Mon,Tuä 10:00",
            "Mé",
        ] {
            let err = CalendarSpec::parse(expr).unwrap_err();
            assert!(
                err.message().contains("unknown weekday"),
                "{expr:?}: {}",
                err.message()
            );
        }
        // Three-byte names with a multi-byte character are rejected too, not sliced.
        assert!(CalendarSpec::parse("aé").is_err());
    }

    /// `next_after` for `expr` from the RFC 3339 instant `after`, as an RFC 3339 UTC instant.
    fn next(expr: &str, after: &str, tz: &TimeZone) -> Option<String> {
        let spec = CalendarSpec::parse(expr).unwrap();
        let after: Timestamp = after.parse().unwrap();
        spec.next_after(after.as_millisecond(), tz)
            .map(|ms| Timestamp::from_millisecond(ms).unwrap().to_string())
    }

    /// The successive elapses of `expr` after `after`.
    fn run(expr: &str, after: &str, tz: &TimeZone, n: usize) -> Vec<String> {
        let spec = CalendarSpec::parse(expr).unwrap();
        let mut at = after.parse::<Timestamp>().unwrap().as_millisecond();
        (0..n)
            .map(|_| {
                at = spec.next_after(at, tz).unwrap();
                Timestamp::from_millisecond(at).unwrap().to_string()
            })
            .collect()
    }

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("tzdata (/usr/share/zoneinfo) is installed")
    }

    const UTC: TimeZone = TimeZone::UTC;

    #[test]
    fn daily_and_hourly() {
        assert_eq!(
            next("daily", "2024-05-10T13:45:12.345Z", &UTC).as_deref(),
            Some("2024-05-11T00:00:00Z")
        );
        assert_eq!(
            next("daily", "2024-12-31T23:59:59Z", &UTC).as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        assert_eq!(
            run("hourly", "2024-02-29T22:10:00Z", &UTC, 3),
            [
                "2024-02-29T23:00:00Z",
                "2024-03-01T00:00:00Z",
                "2024-03-01T01:00:00Z"
            ]
        );
        assert_eq!(
            run("minutely", "2024-01-01T00:00:30Z", &UTC, 2),
            ["2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z"]
        );
        assert_eq!(
            run("monthly", "2024-01-31T12:00:00Z", &UTC, 2),
            ["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"]
        );
        // weekly = Mon 00:00; 2024-05-10 is a Friday.
        assert_eq!(
            next("weekly", "2024-05-10T08:00:00Z", &UTC).as_deref(),
            Some("2024-05-13T00:00:00Z")
        );
    }

    #[test]
    fn second_steps() {
        assert_eq!(
            run("*:*:0/15", "2024-05-10T10:00:00Z", &UTC, 5),
            [
                "2024-05-10T10:00:15Z",
                "2024-05-10T10:00:30Z",
                "2024-05-10T10:00:45Z",
                "2024-05-10T10:01:00Z",
                "2024-05-10T10:01:15Z",
            ]
        );
        assert_eq!(
            next("*:*:0/15", "2024-05-10T23:59:50Z", &UTC).as_deref(),
            Some("2024-05-11T00:00:00Z")
        );
        assert_eq!(
            run("*-*-* 08..09:0/20:0,30", "2024-05-10T09:40:00Z", &UTC, 3),
            [
                "2024-05-10T09:40:30Z",
                "2024-05-11T08:00:00Z",
                "2024-05-11T08:00:30Z"
            ]
        );
    }

    #[test]
    fn weekdays_and_day_of_month_both_match() {
        // 2024-05-10 is a Friday: the next weekday run after Friday's is Monday's.
        assert_eq!(
            run("Mon..Fri 09:30", "2024-05-10T09:30:00Z", &UTC, 2),
            ["2024-05-13T09:30:00Z", "2024-05-14T09:30:00Z"]
        );
        assert_eq!(
            next("Mon..Fri 09:30", "2024-05-11T07:00:00Z", &UTC).as_deref(),
            Some("2024-05-13T09:30:00Z")
        );
        // Friday the 13th: both the weekday and the day must match (as systemd), not either.
        assert_eq!(
            run("Fri *-*-13 00:00", "2024-01-01T00:00:00Z", &UTC, 2),
            ["2024-09-13T00:00:00Z", "2024-12-13T00:00:00Z"]
        );
    }

    #[test]
    fn leap_days_and_impossible_dates() {
        assert_eq!(
            run("*-02-29", "2024-03-01T00:00:00Z", &UTC, 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("*-02-29", "2096-03-01T00:00:00Z", &UTC).as_deref(),
            Some("2104-02-29T00:00:00Z")
        );
        // Days a month lacks are skipped, not rolled over into the next month.
        assert_eq!(
            run("*-*-31 12:00", "2024-04-01T00:00:00Z", &UTC, 2),
            ["2024-05-31T12:00:00Z", "2024-07-31T12:00:00Z"]
        );
        for expr in ["2030-02-30", "*-02-30", "*-04-31 10:00", "Mon 2030-01-01"] {
            assert_eq!(next(expr, "2024-01-01T00:00:00Z", &UTC), None, "{expr}");
        }
        // Nothing after the year range.
        assert_eq!(next("yearly", "2199-06-01T00:00:00Z", &UTC), None);
        assert_eq!(
            next("yearly", "2198-06-01T00:00:00Z", &UTC).as_deref(),
            Some("2199-01-01T00:00:00Z")
        );
        let spec = CalendarSpec::parse("minutely").unwrap();
        assert_eq!(spec.next_after(i64::MAX, &UTC), None);
        // Far before the epoch: clamped to the earliest instant jiff handles.
        let earliest = spec.next_after(i64::MIN, &UTC).unwrap();
        assert_eq!(
            Timestamp::from_millisecond(earliest).unwrap().to_string(),
            "-009999-01-02T02:00:00Z"
        );
    }

    #[test]
    fn years_list() {
        assert_eq!(
            run(
                "2025,2027..2028-06-01 12:00",
                "2020-01-01T00:00:00Z",
                &UTC,
                3
            ),
            [
                "2025-06-01T12:00:00Z",
                "2027-06-01T12:00:00Z",
                "2028-06-01T12:00:00Z"
            ]
        );
        assert_eq!(
            next("2025,2027..2028-06-01 12:00", "2028-06-01T12:00:00Z", &UTC),
            None
        );
        assert_eq!(
            next("2030-01-01", "2029-12-31T23:00:00Z", &UTC).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
    }

    #[test]
    fn utc_versus_local_zones() {
        let berlin = berlin();
        // Local expressions follow the zone's offset (CEST +2 in summer, CET +1 in winter)…
        assert_eq!(
            next("*-*-* 12:00", "2024-07-01T00:00:00Z", &berlin).as_deref(),
            Some("2024-07-01T10:00:00Z")
        );
        assert_eq!(
            next("*-*-* 12:00", "2024-01-01T00:00:00Z", &berlin).as_deref(),
            Some("2024-01-01T11:00:00Z")
        );
        let fixed = TimeZone::fixed(jiff::tz::offset(-5));
        assert_eq!(
            next("*-*-* 12:00", "2024-01-01T00:00:00Z", &fixed).as_deref(),
            Some("2024-01-01T17:00:00Z")
        );
        // …and the date is the local one: 00:30 Berlin on the 2nd is 23:30 UTC on the 1st.
        assert_eq!(
            next("*-*-02 00:30", "2024-01-01T00:00:00Z", &berlin).as_deref(),
            Some("2024-01-01T23:30:00Z")
        );
        // …as is the weekday: Monday 00:30 Berlin is Sunday 23:30 UTC.
        assert_eq!(
            next("Mon 00:30", "2024-05-10T00:00:00Z", &berlin).as_deref(),
            Some("2024-05-12T22:30:00Z")
        );
        // `UTC` expressions ignore the zone given.
        for tz in [&berlin, &fixed, &UTC] {
            assert_eq!(
                next("*-*-* 12:00 UTC", "2024-07-01T00:00:00Z", tz).as_deref(),
                Some("2024-07-01T12:00:00Z")
            );
        }
    }

    #[test]
    fn dst_spring_forward_gap_is_skipped() {
        // Berlin 2024-03-31: 02:00 CET (01:00Z) jumps to 03:00 CEST; 02:xx does not exist.
        let berlin = berlin();
        // A daily 02:30 does not run that day (systemd: the normalised hour 3 no longer matches).
        // The start is exactly the 30th's run (02:30 CET), which is not repeated.
        assert_eq!(
            run("*-*-* 02:30", "2024-03-30T01:30:00Z", &berlin, 2),
            ["2024-04-01T00:30:00Z", "2024-04-02T00:30:00Z"]
        );
        // Times after the gap still run on the day.
        assert_eq!(
            run("*-*-* 02,03:30", "2024-03-31T00:00:00Z", &berlin, 2),
            ["2024-03-31T01:30:00Z", "2024-04-01T00:30:00Z"]
        );
        assert_eq!(
            run("*:0/30", "2024-03-31T00:15:00Z", &berlin, 3),
            [
                "2024-03-31T00:30:00Z",
                "2024-03-31T01:00:00Z",
                "2024-03-31T01:30:00Z"
            ]
        );
        // Every second: 01:59:59 CET is followed directly by 03:00:00 CEST.
        assert_eq!(
            run("*:*:*", "2024-03-31T00:59:58Z", &berlin, 2),
            ["2024-03-31T00:59:59Z", "2024-03-31T01:00:00Z"]
        );
    }

    #[test]
    fn dst_fall_back_fold_runs_once_at_the_earlier_instant() {
        // Berlin 2024-10-27: 03:00 CEST (01:00Z) goes back to 02:00 CET; 02:xx happens twice.
        let berlin = berlin();
        assert_eq!(
            run("*-*-* 02:30", "2024-10-26T12:00:00Z", &berlin, 3),
            [
                "2024-10-27T00:30:00Z",
                "2024-10-28T01:30:00Z",
                "2024-10-29T01:30:00Z"
            ]
        );
        // Hourly: 02:00 CEST, then 03:00 CET — not 02:00 CET again.
        assert_eq!(
            run("hourly", "2024-10-26T23:30:00Z", &berlin, 2),
            ["2024-10-27T00:00:00Z", "2024-10-27T02:00:00Z"]
        );
        // Starting inside the repetition (02:10 CET): 02:30 already elapsed at 02:30 CEST.
        assert_eq!(
            next("*:30", "2024-10-27T01:10:00Z", &berlin).as_deref(),
            Some("2024-10-27T02:30:00Z")
        );
        assert_eq!(
            next("*:*:*", "2024-10-27T01:10:00Z", &berlin).as_deref(),
            Some("2024-10-27T02:00:00Z")
        );
        // Starting in the first pass: the rest of it still runs.
        assert_eq!(
            next("*:*:*", "2024-10-27T00:59:58Z", &berlin).as_deref(),
            Some("2024-10-27T00:59:59Z")
        );
        assert_eq!(
            next("*:*:*", "2024-10-27T00:59:59Z", &berlin).as_deref(),
            Some("2024-10-27T02:00:00Z")
        );
    }

    #[test]
    fn strictly_after_with_sub_second_instants() {
        let spec = CalendarSpec::parse("*-*-* 12:00:00 UTC").unwrap();
        let noon: Timestamp = "2024-05-10T12:00:00Z".parse().unwrap();
        let noon = noon.as_millisecond();
        let day = 86_400_000;
        assert_eq!(spec.next_after(noon, &UTC), Some(noon + day));
        assert_eq!(spec.next_after(noon - 1, &UTC), Some(noon));
        assert_eq!(spec.next_after(noon - 999, &UTC), Some(noon));
        assert_eq!(spec.next_after(noon + 1, &UTC), Some(noon + day));
        assert_eq!(spec.next_after(noon + 999, &UTC), Some(noon + day));
        let every = CalendarSpec::parse("*:*:*").unwrap();
        assert_eq!(every.next_after(noon + 999, &UTC), Some(noon + 1000));
        assert_eq!(every.next_after(noon, &UTC), Some(noon + 1000));
        // Before the epoch: -1 ms is 1969-12-31T23:59:59.999Z.
        let daily = CalendarSpec::parse("daily").unwrap();
        assert_eq!(daily.next_after(-1, &UTC), Some(0));
        assert_eq!(daily.next_after(-1001, &UTC), Some(0));
        assert_eq!(daily.next_after(0, &UTC), Some(day));
    }

    #[test]
    fn the_local_zone_follows_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("localtime");
        assert_eq!(local_time_zone(&link), TimeZone::UTC, "no link: UTC");
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Asia/Tokyo", &link).unwrap();
        if std::env::var_os("TZ").is_none() {
            let tz = local_time_zone(&link);
            assert_eq!(tz.iana_name(), Some("Asia/Tokyo"));
            assert_eq!(
                tz.to_offset(jiff::Timestamp::UNIX_EPOCH),
                jiff::tz::offset(9)
            );
        }
    }

    #[test]
    fn system_time_zone_resolves() {
        let tz = system_time_zone();
        let spec = CalendarSpec::parse("daily").unwrap();
        let next = spec.next_after(0, &tz).unwrap();
        assert!(next > 0 && next <= 2 * 86_400_000);
    }

    #[test]
    fn agrees_with_a_second_by_second_scan_around_dst_changes() {
        fn matches(spec: &CalendarSpec, c: DateTime) -> bool {
            let has = |list: &[u32], v: i8| list.contains(&(v as u32));
            spec.years
                .as_ref()
                .is_none_or(|y| y.contains(&(c.year() as u32)))
                && has(&spec.months, c.month())
                && has(&spec.days, c.day())
                && spec.weekdays & (1 << c.weekday().to_monday_zero_offset()) != 0
                && has(&spec.hours, c.hour())
                && has(&spec.minutes, c.minute())
                && has(&spec.seconds, c.second())
        }
        let zones = [
            (
                "Europe/Berlin",
                ["2024-03-30T22:00:00Z", "2024-10-26T22:00:00Z"],
            ),
            // Half-hour DST shifts.
            (
                "Australia/Lord_Howe",
                ["2024-04-06T13:00:00Z", "2024-10-05T13:00:00Z"],
            ),
        ];
        for (zone, starts) in zones {
            let tz = TimeZone::get(zone).unwrap();
            for start in starts {
                let start = start.parse::<Timestamp>().unwrap().as_second();
                let end = start + 6 * 3600;
                // Every second of the window with its civil time, if it is that civil time's
                // earliest instant (the one a fold runs at).
                let seconds: Vec<(i64, DateTime)> = (start + 1..=end)
                    .filter_map(|t| {
                        let c = tz.to_datetime(Timestamp::from_second(t).unwrap());
                        let earliest = tz.to_ambiguous_timestamp(c).earlier().unwrap();
                        (earliest.as_second() == t).then_some((t, c))
                    })
                    .collect();
                for expr in [
                    "*:*:0/20",
                    "*:0/7",
                    "*-*-* 01..03:00..59/20:30",
                    "*-*-* 02:30",
                    "*-*-* 01:45,59",
                    "hourly",
                    "Sat,Sun *:0/10",
                ] {
                    let spec = CalendarSpec::parse(expr).unwrap();
                    let expected: Vec<i64> = seconds
                        .iter()
                        .filter(|&&(_, c)| matches(&spec, c))
                        .map(|&(t, _)| t * 1000)
                        .collect();
                    let mut got = Vec::new();
                    let mut at = start * 1000;
                    while let Some(next) = spec.next_after(at, &tz).filter(|&n| n <= end * 1000) {
                        got.push(next);
                        at = next;
                    }
                    assert_eq!(got, expected, "{expr} in {zone} from {start}");
                }
            }
        }
    }
}

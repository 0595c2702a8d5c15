//! Calendar expressions (beyond Windows): the systemd `OnCalendar=` syntax of systemd.time(7),
//! `[WEEKDAYS] [YEAR-]MONTH-DAY [HOUR:MINUTE[:SECOND]] [UTC]`, each field `*`, a value, a range
//! `a..b`, a repetition `a/step` or `a..b/step`, or a comma list of those; plus the shorthands
//! `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`, `semiannually`, `yearly`,
//! `annually`. Parsing happens at registration; an expression btb cannot honour is an error naming
//! the offending part, never a silently different schedule.

use crate::error::{Error, Result};

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
}

fn parse_weekdays(expr: &str, text: &str) -> Result<u8> {
    let day = |name: &str| -> Result<u32> {
        let lower = name.to_ascii_lowercase();
        WEEKDAYS
            .iter()
            .position(|d| lower.len() >= 3 && d.starts_with(&lower[..3]) && is_day_name(&lower))
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
}

//! Calendar expressions (beyond Windows): the `OnCalendar=` syntax of systemd.time(7), "Calendar
//! Events", as systemd 252 parses, normalizes and evaluates it (`src/shared/calendarspec.c`):
//!
//! `[WEEKDAYS] [[YEAR-]MONTH(-|~)DAY] [HOUR:MINUTE[:SECOND]] [UTC|ZONE]`, or `@EPOCH-SECONDS`, or
//! one of the shorthands `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`,
//! `semiannually` (also `semi-annually`, `biannually`, `bi-annually`), `yearly`, `annually`.
//!
//! - Weekdays: English names, abbreviated or not, any case; lists with `,`, ranges with `..` or `-`;
//!   a trailing comma is allowed (`Wed, 17:48`).
//! - Each date and time field is `*` or a comma list of `value`, `start..stop`, `value/repeat` or
//!   `start..stop/repeat`. Years of two digits are 19xx (70–99) or 20xx (00–69). `~` before the day
//!   counts days from the end of the month (`*-02~01` is the last day of February, `~07/1` the last
//!   seven days).
//! - Seconds may have decimal fractions, in values and repetitions, rounded to microseconds.
//! - The zone is `UTC` (any case), a tz database name (`Europe/Berlin`, exact case), or absent for
//!   the local zone.
//!
//! Parsing happens at registration; an expression systemd refuses is an error naming the offending
//! part, never a silently different schedule. The one form of systemd.time(7) btb refuses on
//! purpose is a trailing abbreviation of the *local* zone's standard or daylight-saving name
//! (`12:00 CEST` on a Berlin machine): it pins the DST state of a zone that can change under a
//! running broker. An abbreviation that is itself a tz database name (`CET`, `EET`, `EST`) names
//! that zone.
//!
//! The next elapse follows systemd's search (`find_next()`) step by step, so that the instants, DST
//! gaps and folds included, are the ones `systemd-analyze calendar` prints: a civil time in a gap is
//! moved forward by the gap's length and the search resumes from there; a civil time in a fold
//! takes the offset in use where the search was (glibc `mktime()` with `tm_isdst = -1`): the earlier
//! instant, unless the search started inside the repeated stretch.

use crate::error::{Error, Result};
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp};

/// The first and last year a calendar expression can name (systemd's `MIN_YEAR`, `MAX_YEAR`); the
/// search for the next elapse gives up after the last.
const MIN_YEAR: i32 = 1970;
const MAX_YEAR: i32 = 2199;
const USEC_PER_SEC: i32 = 1_000_000;
/// systemd's `CALENDARSPEC_COMPONENTS_MAX`: the longest comma list of one field.
const COMPONENTS_MAX: usize = 240;
/// systemd's `MAX_CALENDAR_ITERATIONS`: a search that has not settled after this many steps gives
/// up (systemd then reports an error; btb: no next elapse).
const MAX_ITERATIONS: u32 = 1000;
/// systemd's `USEC_TIMESTAMP_FORMATTABLE_MAX` (9999-12-30T23:59:59Z): no search starts after it.
const USEC_FORMATTABLE_MAX: i64 = 253_402_214_399_999_999;

/// One element of a field's comma list: `start`, `start..stop`, `start/repeat`,
/// `start..stop/repeat`. `stop` is -1 without a range; a range without `/` repeats by 1 (1 s for
/// seconds). Seconds are in microseconds. Ordered as systemd sorts them (start, stop, repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Component {
    start: i32,
    stop: i32,
    repeat: i32,
}

/// A field: `None` = `*` (any value).
type Chain = Option<Vec<Component>>;

/// Where an expression's civil times are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalendarZone {
    /// The broker's local zone (as it is at each computation).
    Local,
    /// `UTC`.
    Utc,
    /// A tz database zone named in the expression.
    Named { name: String, tz: TimeZone },
}

/// A parsed, normalized calendar expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarSpec {
    /// Bit `n` set = weekday `n` allowed (0 = Monday … 6 = Sunday); `None` = every day.
    weekdays: Option<u8>,
    /// `~`: days count from the end of the month.
    end_of_month: bool,
    year: Chain,
    month: Chain,
    day: Chain,
    hour: Chain,
    minute: Chain,
    /// Seconds, in microseconds (`*` is `0/1` s: whole seconds).
    microsecond: Chain,
    zone: CalendarZone,
}

/// The system's time zone (`TZ`, else `/etc/localtime` on Unix, the Windows zone on Windows), or UTC
/// when it cannot be determined. Calendar triggers without a zone follow this zone.
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
    let Ok(data) = crate::files::read_regular(localtime) else {
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

fn bad(expr: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("bad calendar expression {expr:?}: {why}"))
}

/// Weekday names in systemd's matching order (full names before their abbreviations).
const DAY_NAMES: [(&str, u8); 14] = [
    ("monday", 0),
    ("mon", 0),
    ("tuesday", 1),
    ("tue", 1),
    ("wednesday", 2),
    ("wed", 2),
    ("thursday", 3),
    ("thu", 3),
    ("friday", 4),
    ("fri", 4),
    ("saturday", 5),
    ("sat", 5),
    ("sunday", 6),
    ("sun", 6),
];
const DAY_ABBREVIATIONS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The shorthands and their expansions (systemd builds the same chains).
const SHORTHANDS: [(&[&str], &str); 8] = [
    (&["minutely"], "*-*-* *:*:00"),
    (&["hourly"], "*-*-* *:00:00"),
    (&["daily"], "*-*-* 00:00:00"),
    (&["monthly"], "*-*-01 00:00:00"),
    (&["annually", "yearly", "anually"], "*-01-01 00:00:00"),
    (&["weekly"], "Mon *-*-* 00:00:00"),
    (&["quarterly"], "*-01,04,07,10-01 00:00:00"),
    (
        &["biannually", "bi-annually", "semiannually", "semi-annually"],
        "*-01,07-01 00:00:00",
    ),
];

/// The parser's cursor over the expression (ASCII; anything else is an error where it stands).
struct Parser<'a> {
    /// The whole expression, for messages.
    expr: &'a str,
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> u8 {
        self.text.get(self.at).copied().unwrap_or(0)
    }

    fn peek_at(&self, n: usize) -> u8 {
        self.text.get(self.at + n).copied().unwrap_or(0)
    }

    fn skip_spaces(&mut self) {
        while self.peek() == b' ' {
            self.at += 1;
        }
    }

    /// The text from `from` to the next space: the part an error names.
    fn word(&self, from: usize) -> &'a str {
        let rest = &self.text[from.min(self.text.len())..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("?")
    }

    /// An error at the cursor's part of the expression.
    fn error(&self, from: usize, why: &str) -> Error {
        let word = self.word(from);
        if word.is_empty() {
            bad(self.expr, format!("{why} at its end"))
        } else {
            bad(self.expr, format!("{why} in {word:?}"))
        }
    }

    /// `[WEEKDAYS] [DATE] [TIME]`, the whole text.
    fn fields(&mut self, spec: &mut CalendarSpec) -> Result<()> {
        let bits = self.weekdays()?;
        if bits != 0 && bits != 0x7f {
            spec.weekdays = Some(bits);
        }
        if !self.date(spec)? {
            self.time(spec)?;
        }
        if self.peek() != 0 {
            return Err(self.error(self.at, "unexpected text"));
        }
        Ok(())
    }

    /// `[WEEKDAY[(,|..|-)WEEKDAY]…[,]] ` → the weekday bits (0 when there is no weekday).
    fn weekdays(&mut self) -> Result<u8> {
        let start = self.at;
        let mut bits = 0u8;
        let mut range_from: Option<u8> = None;
        let mut first = true;
        loop {
            let rest = &self.text[self.at..];
            let found = DAY_NAMES.iter().find(|(name, _)| {
                rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            });
            let Some(&(name, day)) = found else {
                if first {
                    return Ok(0);
                }
                let word = self.word(self.at);
                return Err(bad(
                    self.expr,
                    format!("unknown weekday {word:?} in {:?}", self.word(start)),
                ));
            };
            if !matches!(self.peek_at(name.len()), 0 | b'-' | b'.' | b',' | b' ') {
                return Err(bad(
                    self.expr,
                    format!("unknown weekday {:?}", self.word(self.at)),
                ));
            }
            bits |= 1 << day;
            if let Some(from) = range_from {
                if from > day {
                    return Err(bad(
                        self.expr,
                        format!("weekday range {:?} runs backwards", self.word(start)),
                    ));
                }
                for d in from..day {
                    bits |= 1 << d;
                }
            }
            self.at += name.len();
            match self.peek() {
                0 => return Ok(bits),
                b' ' => {
                    self.skip_spaces();
                    return Ok(bits);
                }
                b'.' => {
                    if range_from.is_some() || self.peek_at(1) != b'.' {
                        return Err(self.error(start, "bad weekday range"));
                    }
                    range_from = Some(day);
                    self.at += 2;
                }
                // `-` for ranges too, as systemd accepts for backwards compatibility.
                b'-' => {
                    if range_from.is_some() {
                        return Err(self.error(start, "bad weekday range"));
                    }
                    range_from = Some(day);
                    self.at += 1;
                }
                _ => {
                    // ','
                    range_from = None;
                    self.at += 1;
                }
            }
            // A trailing comma is allowed, an open range is not.
            if matches!(self.peek(), 0 | b' ') {
                self.skip_spaces();
                if range_from.is_some() {
                    return Err(self.error(start, "weekday range without an end"));
                }
                return Ok(bits);
            }
            first = false;
        }
    }

    /// A decimal number; for seconds (`usec`) with an optional fraction, in microseconds.
    fn decimal(&mut self, usec: bool, what: &str) -> Result<i32> {
        let from = self.at;
        if !self.peek().is_ascii_digit() {
            let why = match self.peek() {
                c if c.is_ascii_alphabetic() && from == 0 => {
                    return Err(bad(
                        self.expr,
                        format!("unknown weekday {:?}", self.word(from)),
                    ));
                }
                0 | b' ' => format!("{what} is missing"),
                _ => format!("{what} is not a number"),
            };
            return Err(self.error(from, &why));
        }
        let mut value: u64 = 0;
        while self.peek().is_ascii_digit() {
            value = value
                .saturating_mul(10)
                .saturating_add(u64::from(self.peek() - b'0'));
            self.at += 1;
        }
        if usec {
            value = value.saturating_mul(USEC_PER_SEC as u64);
            // One "." is a decimal point, ".." a range.
            if self.peek() == b'.' && self.peek_at(1) != b'.' {
                self.at += 1;
                if !self.peek().is_ascii_digit() {
                    return Err(self.error(from, "a decimal point without digits"));
                }
                // Six digits, rounded by the seventh; further digits are ignored.
                let mut fraction = 0u64;
                for _ in 0..6 {
                    fraction *= 10;
                    if self.peek().is_ascii_digit() {
                        fraction += u64::from(self.peek() - b'0');
                        self.at += 1;
                    }
                }
                if (b'5'..=b'9').contains(&self.peek()) {
                    fraction += 1;
                }
                while self.peek().is_ascii_digit() {
                    self.at += 1;
                }
                value = value.saturating_add(fraction);
            }
        }
        i32::try_from(value).map_err(|_| self.error(from, &format!("{what} is too large")))
    }

    /// One field: `*` or a comma list of components.
    fn chain(&mut self, usec: bool, what: &str) -> Result<Chain> {
        if self.peek() == b'*' {
            self.at += 1;
            return Ok(usec.then(|| {
                vec![Component {
                    start: 0,
                    stop: -1,
                    repeat: USEC_PER_SEC,
                }]
            }));
        }
        let mut chain = Vec::new();
        loop {
            let from = self.at;
            if chain.len() >= COMPONENTS_MAX {
                return Err(self.error(from, &format!("{what} lists too many values")));
            }
            let start = self.decimal(usec, what)?;
            let mut stop = -1;
            let mut repeat = 0;
            if self.peek() == b'.' && self.peek_at(1) == b'.' {
                self.at += 2;
                stop = self.decimal(usec, what)?;
                repeat = if usec { USEC_PER_SEC } else { 1 };
            }
            if self.peek() == b'/' {
                self.at += 1;
                repeat = self.decimal(usec, &format!("{what} repetition"))?;
                if repeat == 0 {
                    return Err(self.error(from, &format!("{what} repetition is zero")));
                }
            } else if usec && stop >= 0 && start.saturating_add(repeat) > stop {
                // A seconds range shorter than its default step of 1 s never repeats.
                return Err(self.error(from, "seconds range shorter than 1 s without a repetition"));
            }
            if !matches!(self.peek(), 0 | b' ' | b',' | b'-' | b'~' | b':') {
                return Err(self.error(from, &format!("unexpected character in {what}")));
            }
            chain.push(Component {
                start,
                stop,
                repeat,
            });
            if self.peek() != b',' {
                return Ok(Some(chain));
            }
            self.at += 1;
        }
    }

    /// `[[YEAR-]MONTH(-|~)DAY]` or `@EPOCH`. `Ok(true)`: `@EPOCH`, which takes no time after it.
    fn date(&mut self, spec: &mut CalendarSpec) -> Result<bool> {
        let start = self.at;
        if self.peek() == 0 {
            return Ok(false);
        }
        if self.peek() == b'@' {
            self.at += 1;
            let from = self.at;
            let mut seconds: i64 = 0;
            if !self.peek().is_ascii_digit() {
                return Err(self.error(start, "@ without seconds since the epoch"));
            }
            while self.peek().is_ascii_digit() {
                seconds = seconds
                    .saturating_mul(10)
                    .saturating_add(i64::from(self.peek() - b'0'));
                self.at += 1;
            }
            let at = Timestamp::from_second(seconds)
                .map_err(|_| self.error(from, "seconds since the epoch out of range"))?;
            let c = TimeZone::UTC.to_datetime(at);
            let one = |v: i32| {
                Some(vec![Component {
                    start: v,
                    stop: -1,
                    repeat: 0,
                }])
            };
            spec.year = one(i32::from(c.year()));
            spec.month = one(i32::from(c.month()));
            spec.day = one(i32::from(c.day()));
            spec.hour = one(i32::from(c.hour()));
            spec.minute = one(i32::from(c.minute()));
            spec.microsecond = one(i32::from(c.second()) * USEC_PER_SEC);
            spec.zone = CalendarZone::Utc;
            return Ok(true);
        }
        let first = self.chain(false, "date")?;
        // The end, or a ':': that was a time, not a date.
        if matches!(self.peek(), 0 | b':') {
            self.at = start;
            return Ok(false);
        }
        let separator = |p: &mut Parser, spec: &mut CalendarSpec| -> Result<()> {
            match p.peek() {
                b'~' => spec.end_of_month = true,
                b'-' => {}
                _ => return Err(p.error(start, "date is not [YEAR-]MONTH-DAY")),
            }
            p.at += 1;
            Ok(())
        };
        separator(self, spec)?;
        let second = self.chain(false, "date")?;
        if matches!(self.peek(), 0 | b' ') {
            self.skip_spaces();
            spec.month = first;
            spec.day = second;
            return Ok(false);
        }
        if spec.end_of_month {
            return Err(self.error(start, "'~' may only come before the day"));
        }
        separator(self, spec)?;
        let third = self.chain(false, "day")?;
        if !matches!(self.peek(), 0 | b' ') {
            return Err(self.error(start, "date is not [YEAR-]MONTH-DAY"));
        }
        self.skip_spaces();
        spec.year = first;
        spec.month = second;
        spec.day = third;
        Ok(false)
    }

    /// `HOUR:MINUTE[:SECOND]`, or nothing (00:00:00).
    fn time(&mut self, spec: &mut CalendarSpec) -> Result<()> {
        let zero = || {
            Some(vec![Component {
                start: 0,
                stop: -1,
                repeat: 0,
            }])
        };
        let start = self.at;
        if self.peek() == 0 {
            (spec.hour, spec.minute, spec.microsecond) = (zero(), zero(), zero());
            return Ok(());
        }
        spec.hour = self.chain(false, "hour")?;
        if self.peek() != b':' {
            return Err(self.error(start, "time is not HOUR:MINUTE[:SECOND]"));
        }
        self.at += 1;
        spec.minute = self.chain(false, "minute")?;
        if self.peek() == 0 {
            spec.microsecond = zero();
            return Ok(());
        }
        if self.peek() != b':' {
            return Err(self.error(start, "time is not HOUR:MINUTE[:SECOND]"));
        }
        self.at += 1;
        spec.microsecond = self.chain(true, "second")?;
        if self.peek() != 0 {
            return Err(self.error(start, "time is not HOUR:MINUTE[:SECOND]"));
        }
        Ok(())
    }
}

/// systemd's `normalize_chain()`: each range's stop lowered to its last repetition, a range that
/// cannot repeat becomes its start, then sorted and deduplicated.
fn normalize_chain(chain: &mut Chain) {
    let Some(list) = chain else { return };
    for c in list.iter_mut() {
        if c.stop > c.start && c.repeat > 0 {
            c.stop -= (c.stop - c.start) % c.repeat;
        }
        if (c.stop > c.start && c.start + c.repeat > c.stop) || c.start == c.stop {
            c.repeat = 0;
            c.stop = -1;
        }
    }
    list.sort_unstable();
    list.dedup();
}

/// systemd's `chain_valid()`, with a message naming the offending component.
fn check_chain(
    expr: &str,
    chain: &Chain,
    what: &str,
    from: i32,
    to: i32,
    end_of_month: bool,
) -> Result<()> {
    let Some(list) = chain else { return Ok(()) };
    // `~` counts at most 28 days back: every month has them.
    let to = if end_of_month { to - 3 } else { to };
    let usec = what == "second";
    let show = |v: i32| {
        if usec {
            format_value(v, 2, true)
        } else {
            v.to_string()
        }
    };
    let (low, high) = (show(from), if usec { "59.999999".into() } else { show(to) });
    for c in list {
        let item = format_component(c, 0, usec);
        let item = if end_of_month {
            format!("~{item}")
        } else {
            item
        };
        if c.start < from || c.start > to || (c.stop >= 0 && (c.stop < from || c.stop > to)) {
            return Err(bad(
                expr,
                format!("{what} {item} is out of range {low}..{high}"),
            ));
        }
        let fits = if c.stop >= 0 {
            c.start.checked_add(c.repeat).is_some_and(|e| e <= c.stop)
        } else if end_of_month {
            c.start - c.repeat >= from
        } else {
            c.start.checked_add(c.repeat).is_some_and(|e| e <= to)
        };
        if c.stop >= 0 && c.stop < c.start {
            return Err(bad(expr, format!("{what} range {item} runs backwards")));
        }
        if c.repeat > to - from || !fits {
            return Err(bad(
                expr,
                format!("{what} repetition in {item} never repeats within {low}..{high}"),
            ));
        }
    }
    Ok(())
}

impl CalendarSpec {
    pub fn parse(expr: &str) -> Result<CalendarSpec> {
        // Unit files hand systemd the value without surrounding blanks; so does btb.
        let mut text = expr.trim();
        let mut spec = CalendarSpec {
            weekdays: None,
            end_of_month: false,
            year: None,
            month: None,
            day: None,
            hour: None,
            minute: None,
            microsecond: None,
            zone: CalendarZone::Local,
        };
        if text.len() > 4 && text.as_bytes()[text.len() - 4..].eq_ignore_ascii_case(b" utc") {
            spec.zone = CalendarZone::Utc;
            text = &text[..text.len() - 4];
        } else if let Some((rest, name)) = text.rsplit_once(' ')
            && let Some(tz) = zone_named(name)
        {
            spec.zone = if name == "UTC" {
                CalendarZone::Utc
            } else {
                CalendarZone::Named {
                    name: name.to_owned(),
                    tz,
                }
            };
            text = rest;
        }
        if text.is_empty() {
            return Err(bad(expr, "it names no date, time or weekday"));
        }
        let shorthand = SHORTHANDS
            .iter()
            .find(|(names, _)| names.iter().any(|n| text.eq_ignore_ascii_case(n)));
        let mut p = Parser {
            expr,
            text: shorthand.map_or(text, |(_, full)| full).as_bytes(),
            at: 0,
        };
        p.fields(&mut spec).map_err(|e| {
            // A last word that could be a zone name, and the rest failed: most likely a zone
            // systemd would not know either.
            match text.rsplit_once(' ') {
                Some((_, last))
                    if last.starts_with(|c: char| c.is_ascii_alphabetic())
                        && !last.contains([':', ',', '.', '*', '~']) =>
                {
                    bad(
                        expr,
                        format!("unknown time zone {last:?} (not UTC nor a time zone of the tz database)"),
                    )
                }
                _ => e,
            }
        })?;
        spec.normalize();
        spec.check(expr)?;
        Ok(spec)
    }

    /// systemd's `calendar_spec_normalize()`.
    fn normalize(&mut self) {
        if self.end_of_month && self.day.is_none() {
            self.end_of_month = false;
        }
        // Two-digit years: 12 → 2012, 89 → 1989.
        if let Some(years) = &mut self.year {
            let fix = |y: &mut i32| match *y {
                0..=69 => *y += 2000,
                70..=99 => *y += 1900,
                _ => {}
            };
            for c in years {
                fix(&mut c.start);
                fix(&mut c.stop);
            }
        }
        for chain in [
            &mut self.year,
            &mut self.month,
            &mut self.day,
            &mut self.hour,
            &mut self.minute,
            &mut self.microsecond,
        ] {
            normalize_chain(chain);
        }
    }

    /// systemd's `calendar_spec_valid()`.
    fn check(&self, expr: &str) -> Result<()> {
        check_chain(expr, &self.year, "year", MIN_YEAR, MAX_YEAR, false)?;
        check_chain(expr, &self.month, "month", 1, 12, false)?;
        check_chain(expr, &self.day, "day", 1, 31, self.end_of_month)?;
        check_chain(expr, &self.hour, "hour", 0, 23, false)?;
        check_chain(expr, &self.minute, "minute", 0, 59, false)?;
        check_chain(
            expr,
            &self.microsecond,
            "second",
            0,
            60 * USEC_PER_SEC - 1,
            false,
        )
    }

    /// The zone the expression names, if any.
    pub fn zone(&self) -> &CalendarZone {
        &self.zone
    }

    /// The normalized form, as `systemd-analyze calendar` prints it ("Normalized form:").
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        if let Some(bits) = self.weekdays {
            format_weekdays(&mut out, bits);
            out.push(' ');
        }
        format_chain(&mut out, &self.year, 4, false);
        out.push('-');
        format_chain(&mut out, &self.month, 2, false);
        out.push(if self.end_of_month { '~' } else { '-' });
        format_chain(&mut out, &self.day, 2, false);
        out.push(' ');
        format_chain(&mut out, &self.hour, 2, false);
        out.push(':');
        format_chain(&mut out, &self.minute, 2, false);
        out.push(':');
        format_chain(&mut out, &self.microsecond, 2, true);
        match &self.zone {
            CalendarZone::Local => {}
            CalendarZone::Utc => out.push_str(" UTC"),
            CalendarZone::Named { name, .. } => {
                out.push(' ');
                out.push_str(name);
            }
        }
        out
    }

    /// The first instant strictly after `after_ms` (milliseconds since the Unix epoch) at which the
    /// expression elapses, read in its own zone or else in `local`; rounded up to the millisecond
    /// (elapses within one millisecond coalesce). `None` when it never elapses again (the years
    /// end at 2199; `2030-02-30` never exists).
    pub fn next_after(&self, after_ms: i64, local: &TimeZone) -> Option<i64> {
        let after_us =
            after_ms
                .checked_mul(1000)
                .unwrap_or(if after_ms < 0 { i64::MIN } else { i64::MAX });
        let next = self.next_elapse_us(after_us, local)?;
        Some(next.div_euclid(1000) + i64::from(next.rem_euclid(1000) > 0))
    }

    /// The first instant strictly after `after_us` (microseconds since the Unix epoch) at which the
    /// expression elapses, as systemd's `calendar_spec_next_usec()` computes it. Instants before
    /// the epoch (where systemd's clock cannot be) search from the epoch.
    pub fn next_elapse_us(&self, after_us: i64, local: &TimeZone) -> Option<i64> {
        if after_us > USEC_FORMATTABLE_MAX {
            return None;
        }
        let tz = match &self.zone {
            CalendarZone::Local => local,
            CalendarZone::Utc => &TimeZone::UTC,
            CalendarZone::Named { tz, .. } => tz,
        };
        let first = after_us.max(-1) + 1;
        let at = Timestamp::from_second(first / 1_000_000).ok()?;
        let mut clock = Clock {
            tz,
            last: tz.to_offset(at),
        };
        let mut tm = Tm::from(tz.to_datetime(at));
        let usec = (first % 1_000_000) as i32;
        let usec = self.find_next(&mut clock, &mut tm, usec)?;
        let seconds = clock.mktime(&mut tm)?;
        Some(seconds * 1_000_000 + i64::from(usec))
    }

    /// Whether the civil time `c` (with its fraction) matches every field — the weekday, `~` days
    /// counted in `c`'s month. (Which instant a civil time elapses at is `next_elapse_us`'s
    /// business.)
    pub fn matches(&self, c: DateTime) -> bool {
        let day = if self.end_of_month {
            // The n-th last day is day `days_in_month + 1 - n`.
            i32::from(c.date().days_in_month()) + 1 - i32::from(c.day())
        } else {
            i32::from(c.day())
        };
        let usec = i32::from(c.second()) * USEC_PER_SEC + c.subsec_nanosecond() / 1000;
        self.weekdays
            .is_none_or(|w| w & (1 << c.weekday().to_monday_zero_offset()) != 0)
            && chain_matches(&self.year, i32::from(c.year()))
            && chain_matches(&self.month, i32::from(c.month()))
            && chain_matches(&self.day, day)
            && chain_matches(&self.hour, i32::from(c.hour()))
            && chain_matches(&self.minute, i32::from(c.minute()))
            && chain_matches(&self.microsecond, usec)
    }

    /// systemd's `find_next()`: advances `tm` (and returns the microseconds) to the first civil time
    /// at or after it that matches, field by field from the year down, normalizing through the zone
    /// at each step (a day the month lacks rolls over and is skipped; a time in a DST gap moves
    /// forward by the gap).
    fn find_next(&self, clock: &mut Clock, tm: &mut Tm, usec: i32) -> Option<i32> {
        let mut c = *tm;
        let mut usec = usec;
        for _ in 0..MAX_ITERATIONS {
            // Normalize the current date.
            clock.mktime(&mut c);

            let (year, changed) = self.matching(clock, &self.year, &c, c.year, false)?;
            c.year = year;
            if changed {
                (c.mon, c.mday, c.hour, c.min, c.sec, usec) = (0, 1, 0, 0, 0, 0);
            }
            if clock.within_bounds(&mut c) != Bounds::Good {
                return None;
            }

            let r = self.matching(clock, &self.month, &c, c.mon + 1, false);
            if let Some((month, _)) = r {
                c.mon = month - 1;
            }
            if r.is_some_and(|(_, changed)| changed) {
                (c.mday, c.hour, c.min, c.sec, usec) = (1, 0, 0, 0, 0);
            }
            match r.map(|_| clock.within_bounds(&mut c)) {
                None | Some(Bounds::Bad) => {
                    c.year += 1;
                    (c.mon, c.mday, c.hour, c.min, c.sec, usec) = (0, 1, 0, 0, 0, 0);
                    continue;
                }
                Some(Bounds::Moved) => continue,
                Some(Bounds::Good) => {}
            }

            let r = self.matching(clock, &self.day, &c, c.mday, self.end_of_month);
            if let Some((day, _)) = r {
                c.mday = day;
            }
            if r.is_some_and(|(_, changed)| changed) {
                (c.hour, c.min, c.sec, usec) = (0, 0, 0, 0);
            }
            match r.map(|_| clock.within_bounds(&mut c)) {
                None | Some(Bounds::Bad) => {
                    c.mon += 1;
                    (c.mday, c.hour, c.min, c.sec, usec) = (1, 0, 0, 0, 0);
                    continue;
                }
                Some(Bounds::Moved) => continue,
                Some(Bounds::Good) => {}
            }

            if !self.weekday_matches(clock, &c) {
                c.mday += 1;
                (c.hour, c.min, c.sec, usec) = (0, 0, 0, 0);
                continue;
            }

            let r = self.matching(clock, &self.hour, &c, c.hour, false);
            if let Some((hour, _)) = r {
                c.hour = hour;
            }
            if r.is_some_and(|(_, changed)| changed) {
                (c.min, c.sec, usec) = (0, 0, 0);
            }
            match r.map(|_| clock.within_bounds(&mut c)) {
                None | Some(Bounds::Bad) => {
                    c.mday += 1;
                    (c.hour, c.min, c.sec, usec) = (0, 0, 0, 0);
                    continue;
                }
                // The hour set may be missing (a DST gap): go on from the normalized time.
                Some(Bounds::Moved) => continue,
                Some(Bounds::Good) => {}
            }

            let r = self.matching(clock, &self.minute, &c, c.min, false);
            if let Some((minute, _)) = r {
                c.min = minute;
            }
            if r.is_some_and(|(_, changed)| changed) {
                (c.sec, usec) = (0, 0);
            }
            match r.map(|_| clock.within_bounds(&mut c)) {
                None | Some(Bounds::Bad) => {
                    c.hour += 1;
                    (c.min, c.sec, usec) = (0, 0, 0);
                    continue;
                }
                Some(Bounds::Moved) => continue,
                Some(Bounds::Good) => {}
            }

            let micro = c.sec * USEC_PER_SEC + usec;
            let r = self.matching(clock, &self.microsecond, &c, micro, false);
            let micro = r.map_or(micro, |(m, _)| m);
            usec = micro % USEC_PER_SEC;
            c.sec = micro / USEC_PER_SEC;
            match r.map(|_| clock.within_bounds(&mut c)) {
                None | Some(Bounds::Bad) => {
                    c.min += 1;
                    (c.sec, usec) = (0, 0);
                    continue;
                }
                Some(Bounds::Moved) => continue,
                Some(Bounds::Good) => {}
            }

            *tm = c;
            return Some(usec);
        }
        None
    }

    /// systemd's `find_matching_component()`: the earliest value of `chain` at or after `val`, and
    /// whether it differs from `val`; `None` when no value is left. (`tm` places `~` days.)
    fn matching(
        &self,
        clock: &mut Clock,
        chain: &Chain,
        tm: &Tm,
        val: i32,
        end_of_month: bool,
    ) -> Option<(i32, bool)> {
        let Some(list) = chain else {
            return Some((val, false));
        };
        let mut best: Option<i64> = None;
        let v = i64::from(val);
        for c in list {
            let (mut start, mut stop) = (i64::from(c.start), i64::from(c.stop));
            if end_of_month {
                start = i64::from(clock.end_of_month(tm, c.start));
                stop = i64::from(clock.end_of_month(tm, c.stop));
                if stop > 0 {
                    std::mem::swap(&mut start, &mut stop);
                }
            }
            let repeat = i64::from(c.repeat);
            if start >= v {
                best = Some(best.map_or(start, |b| b.min(start)));
            } else if repeat > 0 {
                let k = start + repeat * (v - start + repeat - 1).div_euclid(repeat);
                if best.is_none_or(|b| k < b) && (stop < 0 || k <= stop) {
                    best = Some(k);
                }
            }
        }
        let best = i32::try_from(best?).ok()?;
        Some((best, best != val))
    }

    fn weekday_matches(&self, clock: &mut Clock, tm: &Tm) -> bool {
        let Some(bits) = self.weekdays else {
            return true;
        };
        let mut t = *tm;
        if clock.mktime(&mut t).is_none() {
            return false;
        }
        t.weekday
            .is_some_and(|w| bits & (1 << w.to_monday_zero_offset()) != 0)
    }
}

impl std::fmt::Display for CalendarSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized())
    }
}

fn chain_matches(chain: &Chain, v: i32) -> bool {
    let Some(list) = chain else { return true };
    list.iter().any(|c| {
        if c.repeat == 0 || v < c.start {
            return v == c.start;
        }
        (v - c.start) % c.repeat == 0 && (c.stop < 0 || v <= c.stop)
    })
}

/// A tz database zone for the exact `name` (systemd looks the file up, case-sensitively).
fn zone_named(name: &str) -> Option<TimeZone> {
    // Only names the tz database could hold; jiff's lookup ignores case, systemd's does not.
    if name.is_empty()
        || name.starts_with('/')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
        || name.bytes().all(|b| b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    let tz = TimeZone::get(name).ok()?;
    (tz.iana_name() == Some(name)).then_some(tz)
}

fn format_weekdays(out: &mut String, bits: u8) {
    let mut run_start: Option<usize> = None;
    let mut need_comma = false;
    for x in 0..=7 {
        let set = x < 7 && bits & (1 << x) != 0;
        if set {
            if run_start.is_none() {
                if need_comma {
                    out.push(',');
                }
                need_comma = true;
                out.push_str(DAY_ABBREVIATIONS[x]);
                run_start = Some(x);
            }
        } else if let Some(l) = run_start.take()
            && x > l + 1
        {
            out.push_str(if x > l + 2 { ".." } else { "," });
            out.push_str(DAY_ABBREVIATIONS[x - 1]);
        }
    }
}

/// `value` zero-padded to `width`; for seconds (`usec`), microseconds shown as `.ffffff` when
/// there are any.
fn format_value(value: i32, width: usize, usec: bool) -> String {
    if usec {
        let (s, us) = (value / USEC_PER_SEC, value % USEC_PER_SEC);
        if us > 0 {
            format!("{s:0width$}.{us:06}")
        } else {
            format!("{s:0width$}")
        }
    } else {
        format!("{value:0width$}")
    }
}

/// systemd's `format_chain()` for one component.
fn format_component(c: &Component, width: usize, usec: bool) -> String {
    let unit = if usec { USEC_PER_SEC } else { 1 };
    let mut out = format_value(c.start, width, usec);
    if c.stop > 0 {
        out.push_str("..");
        out.push_str(&format_value(c.stop, width, usec));
    }
    if c.repeat > 0 && !(c.stop > 0 && c.repeat == unit) {
        out.push('/');
        out.push_str(&format_value(c.repeat, 0, usec));
    }
    out
}

fn format_chain(out: &mut String, chain: &Chain, width: usize, usec: bool) {
    let Some(list) = chain else {
        out.push('*');
        return;
    };
    if usec
        && list
            == &[Component {
                start: 0,
                stop: -1,
                repeat: USEC_PER_SEC,
            }]
    {
        out.push('*');
        return;
    }
    let items: Vec<String> = list
        .iter()
        .map(|c| format_component(c, width, usec))
        .collect();
    out.push_str(&items.join(","));
}

/// A `struct tm`: civil fields that may be out of range until normalized (day 32, hour 24).
/// `mon` counts from 0, as in C; `year` is the full year.
#[derive(Debug, Clone, Copy)]
struct Tm {
    year: i32,
    mon: i32,
    mday: i32,
    hour: i32,
    min: i32,
    sec: i32,
    /// Set by normalization.
    weekday: Option<jiff::civil::Weekday>,
}

impl From<DateTime> for Tm {
    fn from(c: DateTime) -> Tm {
        Tm {
            year: i32::from(c.year()),
            mon: i32::from(c.month()) - 1,
            mday: i32::from(c.day()),
            hour: i32::from(c.hour()),
            min: i32::from(c.minute()),
            sec: i32::from(c.second()),
            weekday: Some(c.weekday()),
        }
    }
}

impl Tm {
    /// The civil time these fields denote, overflowing ones carried (C's `mktime()` rules: the
    /// month first, then days from the 1st, then the time of day).
    fn civil(&self) -> Option<DateTime> {
        let months = i64::from(self.year) * 12 + i64::from(self.mon);
        let year = i16::try_from(months.div_euclid(12)).ok()?;
        let month = months.rem_euclid(12) as i8 + 1;
        let date = Date::new(year, month, 1)
            .ok()?
            .checked_add(Span::new().try_days(i64::from(self.mday) - 1).ok()?)
            .ok()?;
        let seconds = i64::from(self.hour) * 3600 + i64::from(self.min) * 60 + i64::from(self.sec);
        date.to_datetime(Time::midnight())
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Bounds {
    /// The fields were a real civil time.
    Good,
    /// Normalization moved them forward (now set to the normalized time).
    Moved,
    /// Past the last year, out of range, or normalization would go backwards.
    Bad,
}

/// `mktime()` in one zone, with glibc's memory of the offset last used: an ambiguous civil time
/// (a DST fold) takes that offset when it is one of the two, else the earlier instant; a civil
/// time in a gap is read with the offset before the gap (it lands after the gap).
struct Clock<'a> {
    tz: &'a TimeZone,
    last: Offset,
}

impl Clock<'_> {
    /// Normalizes `tm` in place; the instant in whole seconds.
    fn mktime(&mut self, tm: &mut Tm) -> Option<i64> {
        let civil = tm.civil()?;
        let offset = match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset,
            AmbiguousOffset::Gap { before, .. } => before,
            AmbiguousOffset::Fold { before, after } => {
                if self.last == after {
                    after
                } else {
                    before
                }
            }
        };
        let at = offset.to_timestamp(civil).ok()?;
        self.last = self.tz.to_offset(at);
        *tm = Tm::from(self.tz.to_datetime(at));
        Some(at.as_second())
    }

    /// systemd's `tm_within_bounds()`.
    fn within_bounds(&mut self, tm: &mut Tm) -> Bounds {
        if tm.year > MAX_YEAR {
            return Bounds::Bad;
        }
        let mut t = *tm;
        if self.mktime(&mut t).is_none() {
            return Bounds::Bad;
        }
        // Normalization may skip a value of a lower field (3-33 → 4-02 skips 4-01): reset the
        // field below the first that changed.
        use std::cmp::Ordering;
        let cmp = if t.year != tm.year {
            t.mon = 0;
            t.year.cmp(&tm.year)
        } else if t.mon != tm.mon {
            t.mday = 1;
            t.mon.cmp(&tm.mon)
        } else if t.mday != tm.mday {
            t.hour = 0;
            t.mday.cmp(&tm.mday)
        } else if t.hour != tm.hour {
            t.min = 0;
            t.hour.cmp(&tm.hour)
        } else if t.min != tm.min {
            t.sec = 0;
            t.min.cmp(&tm.min)
        } else {
            t.sec.cmp(&tm.sec)
        };
        match cmp {
            Ordering::Less => Bounds::Bad,
            Ordering::Equal => Bounds::Good,
            Ordering::Greater => {
                *tm = t;
                Bounds::Moved
            }
        }
    }

    /// systemd's `find_end_of_month()`: the day of `tm`'s month that is the `day`-th from its
    /// end, or -1 when the month has no such day (or `day` is -1).
    fn end_of_month(&mut self, tm: &Tm, day: i32) -> i32 {
        let mut t = *tm;
        t.mon += 1;
        t.mday = 1 - day;
        if self.mktime(&mut t).is_none() || t.mon != tm.mon {
            return -1;
        }
        t.mday
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(expr: &str) -> String {
        CalendarSpec::parse(expr)
            .unwrap_or_else(|e| panic!("{expr:?}: {}", e.message()))
            .normalized()
    }

    #[test]
    fn shorthands_and_full_forms() {
        for (expr, normal) in [
            ("minutely", "*-*-* *:*:00"),
            ("hourly", "*-*-* *:00:00"),
            ("daily", "*-*-* 00:00:00"),
            ("weekly", "Mon *-*-* 00:00:00"),
            ("monthly", "*-*-01 00:00:00"),
            ("quarterly", "*-01,04,07,10-01 00:00:00"),
            ("semiannually", "*-01,07-01 00:00:00"),
            ("Semi-Annually", "*-01,07-01 00:00:00"),
            ("yearly", "*-01-01 00:00:00"),
            ("annually", "*-01-01 00:00:00"),
            ("Mon..Fri *-*-* 09:30", "Mon..Fri *-*-* 09:30:00"),
            (
                "Sat,Sun 2030-01,07-01 12:00:00 UTC",
                "Sat,Sun 2030-01,07-01 12:00:00 UTC",
            ),
            ("*:0/15", "*-*-* *:00/15:00"),
            ("Wednesday 03-15", "Wed *-03-15 00:00:00"),
            ("Mon..Sun 12:00", "*-*-* 12:00:00"),
            // Surrounding blanks go, as from a unit file.
            ("  daily ", "*-*-* 00:00:00"),
        ] {
            assert_eq!(normalized(expr), normal, "{expr:?}");
            // The normal form is a fixed point.
            assert_eq!(normalized(normal), normal, "{normal:?}");
        }
    }

    /// The forms issue 20 reported refused or misread.
    #[test]
    fn the_forms_of_issue_20() {
        for (expr, normal) in [
            ("Mon-Wed", "Mon..Wed *-*-* 00:00:00"),
            ("12-10-15", "2012-10-15 00:00:00"),
            ("Wed, 17:48", "Wed *-*-* 17:48:00"),
            ("semi-annually", "*-01,07-01 00:00:00"),
            ("09:11:23.42", "*-*-* 09:11:23.420000"),
            ("03:17:00/0.42", "*-*-* 03:17:00/0.420000"),
            ("00:00:1.125..2.125", "*-*-* 00:00:01.125000..02.125000"),
            ("*-*~1", "*-*~01 00:00:00"),
            ("*-*~05,3", "*-*~03,05 00:00:00"),
            ("2016-02~01", "2016-02~01 00:00:00"),
            ("Mon 2017-05~01..07", "Mon 2017-05~01..07 00:00:00"),
            ("Mon 2017-05~07/1", "Mon 2017-05~07/1 00:00:00"),
            ("12:00 Europe/Berlin", "*-*-* 12:00:00 Europe/Berlin"),
            (
                "05:40:23.4200004/3.1700005",
                "*-*-* 05:40:23.420000/3.170001",
            ),
            ("@1700000000", "2023-11-14 22:13:20 UTC"),
        ] {
            assert_eq!(normalized(expr), normal, "{expr:?}");
        }
        // A time zone abbreviation that is a tz database name names that zone.
        let cet = CalendarSpec::parse("12:00 CET").unwrap();
        assert!(matches!(cet.zone(), CalendarZone::Named { name, .. } if name == "CET"));
    }

    #[test]
    fn errors_name_the_offending_part() {
        for (expr, needle) in [
            ("", "names no date"),
            ("Funday", "unknown weekday \"Funday\""),
            ("monx", "unknown weekday \"monx\""),
            ("*-13-01", "month 13 is out of range 1..12"),
            ("*-*-* 25:00", "hour 25 is out of range 0..23"),
            ("*-*-* 10:61", "minute 61 is out of range"),
            ("*:*:61.5", "second 61.500000 is out of range 00..59.999999"),
            ("*:0/0", "minute repetition is zero in \"0/0\""),
            ("*-*~29", "day ~29 is out of range 1..28"),
            ("*-*~5/5", "day repetition in ~5/5 never repeats"),
            ("*-*-1/31", "day repetition in 1/31 never repeats"),
            ("*-*-5..3", "day range 5..3 runs backwards"),
            (
                "*-*-* 10:00 Mars/Olympus",
                "unknown time zone \"Mars/Olympus\"",
            ),
            (
                "*-*-* 10:00 europe/berlin",
                "unknown time zone \"europe/berlin\"",
            ),
            ("Fri..Mon", "weekday range \"Fri..Mon\" runs backwards"),
            ("Mon..", "weekday range without an end"),
            ("1..x-01", "date is not a number in \"x-01\""),
            ("1:2:3.", "a decimal point without digits"),
            ("00:00:01..01", "seconds range shorter than 1 s"),
            ("100-01-01", "year 100 is out of range 1970..2199"),
            ("2016~11-22", "'~' may only come before the day"),
            (
                "12:00:00 12:00",
                "time is not HOUR:MINUTE[:SECOND] in \"12:00:00\"",
            ),
            ("Mon 2024", "time is not HOUR:MINUTE[:SECOND] in \"2024\""),
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
        // Before the epoch (where systemd's clock cannot be): searched from the epoch.
        assert_eq!(spec.next_after(i64::MIN, &UTC), Some(0));
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
        // Starting inside the repetition (02:10 CET), systemd goes on in it: the search keeps the
        // offset it started with (02:30 CET, not 03:30).
        assert_eq!(
            next("*:30", "2024-10-27T01:10:00Z", &berlin).as_deref(),
            Some("2024-10-27T01:30:00Z")
        );
        assert_eq!(
            next("*:*:*", "2024-10-27T01:10:00Z", &berlin).as_deref(),
            Some("2024-10-27T01:10:01Z")
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
            spec.matches(c)
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

    /// The exact instants of systemd's `test-calendarspec.c` (`test_next`), in microseconds.
    #[test]
    fn microsecond_elapses_as_systemd_tests_them() {
        let eet = TimeZone::get("EET").unwrap();
        let cet = TimeZone::get("CET").unwrap();
        for (expr, tz, after, expect) in [
            ("2016-03-27 03:17:00", &UTC, 12345, Some(1459048620000000)),
            ("2016-03-27 03:17:00", &cet, 12345, Some(1459041420000000)),
            // 03:17 does not exist in EET that day (03:00 → 04:00).
            ("2016-03-27 03:17:00", &eet, 12345, None),
            (
                "2016-03-27 03:17:00 UTC",
                &eet,
                12345,
                Some(1459048620000000),
            ),
            (
                "2016-03-27 03:17:00.420000001 UTC",
                &eet,
                12345,
                Some(1459048620420000),
            ),
            (
                "2016-03-27 03:17:00.4200005 UTC",
                &eet,
                12345,
                Some(1459048620420001),
            ),
            (
                "2015-11-13 09:11:23.42",
                &eet,
                12345,
                Some(1447398683420000),
            ),
            (
                "2015-11-13 09:11:23.42/1.77",
                &eet,
                1447398683420000,
                Some(1447398685190000),
            ),
            (
                "2015-11-13 09:11:23.42/1.77",
                &eet,
                1447398683419999,
                Some(1447398683420000),
            ),
            (
                "Sun 16:00:00",
                &cet,
                1456041600123456,
                Some(1456066800000000),
            ),
            ("*-04-31", &UTC, 12345, None),
            ("2016-02~01 UTC", &UTC, 12345, Some(1456704000000000)),
            (
                "Mon 2017-05~01..07 UTC",
                &UTC,
                12345,
                Some(1496016000000000),
            ),
            ("Mon 2017-05~07/1 UTC", &UTC, 12345, Some(1496016000000000)),
            ("00:00:1.125..2.125 UTC", &UTC, 0, Some(1_125_000)),
            ("00:00:1.125..2.125 UTC", &UTC, 1_125_000, Some(2_125_000)),
            (
                "00:00:1.125..2.125 UTC",
                &UTC,
                2_125_000,
                Some(86_401_125_000),
            ),
        ] {
            let spec = CalendarSpec::parse(expr).unwrap();
            assert_eq!(
                spec.next_elapse_us(after, tz),
                expect,
                "{expr:?} after {after}"
            );
        }
    }

    /// systemd 252 skips a repetition's first value when the step carries over midnight: the
    /// minute after 23:56 in `*:0/7` is "23:63", normalized to 00:03 of the next day, and only the
    /// hour is reset. btb computes what systemd does (checked against systemd-analyze).
    #[test]
    fn carrying_over_midnight_is_systemds() {
        assert_eq!(
            run("*:0/7", "2024-03-30T23:50:00Z", &UTC, 3),
            [
                "2024-03-30T23:56:00Z",
                "2024-03-31T00:07:00Z",
                "2024-03-31T00:14:00Z"
            ]
        );
        // Within a day the next hour starts at its first value.
        assert_eq!(
            run("*:0/7", "2024-03-30T22:50:00Z", &UTC, 2),
            ["2024-03-30T22:56:00Z", "2024-03-30T23:00:00Z"]
        );
    }

    #[test]
    fn milliseconds_round_up_and_stay_strictly_after() {
        // Every 0.25 s, and one elapse at .4200005 s (rounded to .420001).
        let quarter = CalendarSpec::parse("*:*:0/0.25 UTC").unwrap();
        assert_eq!(quarter.next_after(0, &UTC), Some(250));
        assert_eq!(quarter.next_after(250, &UTC), Some(500));
        assert_eq!(quarter.next_after(999, &UTC), Some(1000));
        let odd = CalendarSpec::parse("00:00:00.4200005 UTC").unwrap();
        assert_eq!(odd.next_elapse_us(0, &UTC), Some(420_001));
        // 420.001 ms rounds up to 421; from there the next is a day later.
        assert_eq!(odd.next_after(0, &UTC), Some(421));
        assert_eq!(odd.next_after(420, &UTC), Some(421));
        assert_eq!(odd.next_after(421, &UTC), Some(86_400_421));
    }

    #[test]
    fn last_days_of_the_month() {
        // The last and third-last day of each month.
        assert_eq!(
            run("*-*~01,03 UTC", "2024-01-30T00:00:00Z", &UTC, 4),
            [
                "2024-01-31T00:00:00Z",
                "2024-02-27T00:00:00Z",
                "2024-02-29T00:00:00Z",
                "2024-03-29T00:00:00Z"
            ]
        );
        // The last Friday of each month.
        assert_eq!(
            run("Fri *-*~07/1 18:00 UTC", "2024-01-01T00:00:00Z", &UTC, 3),
            [
                "2024-01-26T18:00:00Z",
                "2024-02-23T18:00:00Z",
                "2024-03-29T18:00:00Z"
            ]
        );
    }

    #[test]
    fn a_named_zone_overrides_the_local_one() {
        let kolkata = CalendarSpec::parse("12:00 Asia/Kolkata").unwrap();
        for tz in [berlin(), UTC] {
            assert_eq!(
                next("12:00 Asia/Kolkata", "2024-01-01T00:00:00Z", &tz).as_deref(),
                Some("2024-01-01T06:30:00Z")
            );
        }
        assert_eq!(kolkata.normalized(), "*-*-* 12:00:00 Asia/Kolkata");
    }
}

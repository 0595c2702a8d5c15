//! The calendar expression parser: `CalendarSpec::parse` on arbitrary text and, when it parses,
//! `next_after` from a few instants (including i64::MIN, 0 and i64::MAX) in UTC and in
//! America/New_York (DST gaps and folds). Every result is checked against the spec: strictly after
//! the start, whole seconds, a civil time (in the zone used) matching every field, the earliest
//! instant of that civil time, and no matching second in between (checked for short gaps).
#![no_main]

use std::sync::OnceLock;

use btb_core::ErrorKind;
use btb_core::calendar::CalendarSpec;
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;

/// Start instants (ms since the epoch).
const STARTS: &[i64] = &[
    i64::MIN,
    -62_135_596_800_001, // just before 0001-01-01T00:00:00Z
    -1,
    0,
    1_710_053_999_500, // 2024-03-10T06:59:59.5Z: New York springs forward at 07:00Z
    1_730_608_200_000, // 2024-11-03T04:30:00Z: New York falls back at 06:00Z (01:xx twice)
    1_730_611_800_000, // 2024-11-03T05:30:00Z: inside the first pass of the repeated hour
    1_730_615_400_000, // 2024-11-03T06:30:00Z: inside the second pass
    7_258_118_399_999, // 2199-12-31T23:59:59.999Z: the end of the year range
    i64::MAX,
];

/// How far (seconds) a result may lie after its start for the brute-force "first" check.
const SCAN: i64 = 90;

fn zones() -> &'static [TimeZone] {
    static ZONES: OnceLock<Vec<TimeZone>> = OnceLock::new();
    ZONES.get_or_init(|| {
        let mut z = vec![TimeZone::UTC];
        if let Ok(ny) = TimeZone::get("America/New_York") {
            z.push(ny);
        }
        z
    })
}

fn matches(spec: &CalendarSpec, c: DateTime) -> bool {
    let has = |list: &[u32], v: i8| v >= 0 && list.contains(&(v as u32));
    spec.years
        .as_ref()
        .is_none_or(|y| c.year() >= 0 && y.contains(&(c.year() as u32)))
        && has(&spec.months, c.month())
        && has(&spec.days, c.day())
        && spec.weekdays & (1 << c.weekday().to_monday_zero_offset()) != 0
        && has(&spec.hours, c.hour())
        && has(&spec.minutes, c.minute())
        && has(&spec.seconds, c.second())
}

/// Whether the whole second `t` is an elapse of `spec` in `tz`: its civil time matches and `t` is
/// that civil time's earliest instant (a fold elapses once, at the earlier instant).
fn elapses_at(spec: &CalendarSpec, tz: &TimeZone, t: i64) -> bool {
    let Ok(ts) = Timestamp::from_second(t) else {
        return false;
    };
    let c = tz.to_datetime(ts);
    matches(spec, c) && tz.to_ambiguous_timestamp(c).earlier().ok() == Some(ts)
}

fuzz_target!(|data: &[u8]| {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match CalendarSpec::parse(expr) {
        Ok(spec) => spec,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(
                e.message().contains("bad calendar expression"),
                "{}",
                e.message()
            );
            return;
        }
    };
    // The field lists are sorted, deduplicated, non-empty and in range.
    let ok = |list: &[u32], lo: u32, hi: u32| {
        !list.is_empty()
            && list.windows(2).all(|w| w[0] < w[1])
            && list[0] >= lo
            && list[list.len() - 1] <= hi
    };
    assert!(
        spec.years.as_deref().is_none_or(|y| ok(y, 1970, 2199)),
        "{spec:?}"
    );
    assert!(ok(&spec.months, 1, 12) && ok(&spec.days, 1, 31), "{spec:?}");
    assert!(
        ok(&spec.hours, 0, 23) && ok(&spec.minutes, 0, 59) && ok(&spec.seconds, 0, 59),
        "{spec:?}"
    );
    assert!(spec.weekdays != 0 && spec.weekdays <= 0x7f, "{spec:?}");

    for tz in zones() {
        let used = if spec.utc { &TimeZone::UTC } else { tz };
        for &start in STARTS {
            let Some(next) = spec.next_after(start, tz) else {
                continue;
            };
            assert!(next > start, "{expr:?} after {start}: {next}");
            assert_eq!(next.rem_euclid(1000), 0, "{expr:?} after {start}: {next}");
            let next_s = next / 1000;
            assert!(
                elapses_at(&spec, used, next_s),
                "{expr:?} after {start} in {tz:?}: {next} does not match"
            );
            let first = start.div_euclid(1000) + 1;
            if next_s - first <= SCAN {
                for t in first..next_s {
                    assert!(
                        !elapses_at(&spec, used, t),
                        "{expr:?} after {start} in {tz:?}: {next}, but {t} s matches first"
                    );
                }
            }
            // The following elapse is strictly later.
            if let Some(after) = spec.next_after(next, tz) {
                assert!(after > next, "{expr:?}: {after} after {next}");
            }
        }
    }
});

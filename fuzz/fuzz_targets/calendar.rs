//! The calendar expression parser: `CalendarSpec::parse` on arbitrary text and, when it parses,
//! its normalized form (which parses to itself) and `next_elapse_us`/`next_after` from a few
//! instants (including i64::MIN, 0 and i64::MAX) in UTC and in America/New_York (DST gaps and
//! folds). Every result is strictly after its start; in UTC (no gaps or folds, where systemd's
//! search is exact) its civil time matches every field and no whole second in between does
//! (checked for short gaps).
#![no_main]

use std::sync::OnceLock;

use btb_core::ErrorKind;
use btb_core::calendar::{CalendarSpec, CalendarZone};
use jiff::Timestamp;
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

/// Whether the whole second `t` is, in UTC, a civil time matching `spec`.
fn elapses_at(spec: &CalendarSpec, t: i64) -> bool {
    Timestamp::from_second(t).is_ok_and(|ts| spec.matches(TimeZone::UTC.to_datetime(ts)))
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
    // The normalized form is a fixed point.
    let normal = spec.normalized();
    let again = CalendarSpec::parse(&normal)
        .unwrap_or_else(|e| panic!("{expr:?} → {normal:?}: {}", e.message()));
    assert_eq!(again.normalized(), normal, "{expr:?}");

    for tz in zones() {
        let utc = *tz == TimeZone::UTC && !matches!(spec.zone(), CalendarZone::Named { .. });
        for &start in STARTS {
            let Some(next_us) = spec.next_elapse_us(start.saturating_mul(1000), tz) else {
                continue;
            };
            assert!(
                next_us > start.saturating_mul(1000),
                "{expr:?} after {start} ms: {next_us} µs"
            );
            let next = spec.next_after(start, tz).unwrap();
            assert!(next > start, "{expr:?} after {start}: {next}");
            assert_eq!(next, next_us.div_euclid(1000) + i64::from(next_us % 1000 != 0));
            if utc && next_us % 1_000_000 == 0 {
                let next_s = next_us / 1_000_000;
                assert!(elapses_at(&spec, next_s), "{expr:?} after {start}: {next_s} does not match");
                let first = start.div_euclid(1000) + 1;
                // Within one day: systemd's search (and btb's, which follows it) skips a step's
                // first value when the step carries over midnight (`*:*:0/7` after 23:59:56 is
                // 00:00:07).
                if next_s - first <= SCAN && first.div_euclid(86_400) == next_s.div_euclid(86_400) {
                    for t in first..next_s {
                        assert!(
                            !elapses_at(&spec, t),
                            "{expr:?} after {start}: {next_s}, but {t} s matches first"
                        );
                    }
                }
            }
            // The following elapse is strictly later.
            if let Some(after) = spec.next_elapse_us(next_us, tz) {
                assert!(after > next_us, "{expr:?}: {after} after {next_us}");
            }
        }
    }
});

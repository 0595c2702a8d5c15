//! Calendar expressions against systemd: the table `data/calendar_systemd252.tsv` holds, for every
//! expression of [`EXPRESSIONS`] (the "Calendar Events" section of systemd.time(7), the table of
//! systemd's `test-calendarspec.c`, the forms issue 20 reported, DST cases), what
//! `systemd-analyze calendar` of systemd 252 printed in each zone of [`ZONES`] from each base of
//! [`BASES`]: the normalized form (or that it refused the expression) and the next elapses.
//!
//! `table` checks btb against the file on every machine. `same_as_systemd_analyze` runs
//! `systemd-analyze` itself where it is installed and compares btb with what it prints now;
//! `BTB_BLESS=1` rewrites the file from it.
//!
//! systemd-analyze prints elapses in whole seconds: fractional elapses compare by their second (the
//! unit tests in `calendar.rs` check the microseconds).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use btb_core::calendar::CalendarSpec;
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

const EXPRESSIONS: &[&str] = &[
    // systemd.time(7), "Calendar Events".
    "Thu,Fri 2012-*-1,5 11:12:13",
    "Sat,Thu,Mon..Wed,Sat..Sun",
    "Mon,Sun 12-*-* 2,1:23",
    "Wed *-1",
    "Wed..Wed,Wed *-1",
    "Wed, 17:48",
    "Wed..Sat,Tue 12-10-15 1:2:3",
    "*-*-7 0:0:0",
    "10-15",
    "monday *-12-* 17:00",
    "Mon,Fri *-*-3,1,2 *:30:45",
    "12,14,13,12:20,10,30",
    "12..14:10,20,30",
    "mon,fri *-1/2-1,3 *:30:45",
    "03-05 08:05:40",
    "08:05:40",
    "05:40",
    "Sat,Sun 12-05 08:05:40",
    "Sat,Sun 08:05:40",
    "2003-03-05 05:40",
    "05:40:23.4200004/3.1700005",
    "2003-02..04-05",
    "2003-03-05 05:40 UTC",
    "2003-03-05",
    "03-05",
    "hourly",
    "daily",
    "daily UTC",
    "monthly",
    "weekly",
    "weekly Pacific/Auckland",
    "yearly",
    "annually",
    "*:2/3",
    "minutely",
    "quarterly",
    "semiannually",
    "*-02~03",
    "Mon *-05~07/1",
    // systemd's test-calendarspec.c.
    "Sat,Thu,Mon-Wed,Sat-Sun",
    "Wed-Wed,Wed *-1",
    "Wed-Sat,Tue 12-10-15 1:2:3",
    "semi-annually",
    "bi-annually",
    "biannually",
    "anually",
    "2015-10-25 01:00:00 uTc",
    "2016-03-27 03:17:00.4200005",
    "2016-03-27 03:17:00/0.42",
    "9..11,13:00,30",
    "1..3-1..3 1..3:1..3",
    "00:00:1.125..2.125",
    "00:00:1.0..3.8",
    "*-*~1 Utc",
    "*-*~05,3",
    "*-*~* 00:00:00",
    "Monday",
    "Monday *-*-*",
    "*-*-*",
    "2016-03-27 03:17:00",
    "2016-03-27 03:17:00 UTC",
    "2016-03-27 03:17:00.420000001 UTC",
    "2015-11-13 09:11:23.42",
    "2015-11-13 09:11:23.42/1.77",
    "Sun 16:00:00",
    "*-04-31",
    "2016-02~01 UTC",
    "Mon 2017-05~01..07 UTC",
    "Mon 2017-05~07/1 UTC",
    "Mon 2017-05~01..07",
    "Mon 2017-05~07/1",
    "*-*-1..1",
    "*-*-1..2/5",
    "*-*-1..3/2",
    "*-*-1/30",
    "*-*~1..3",
    "*-*~28",
    "*-*~5/2",
    "*-*~5/4",
    "*-*~01..07/2 12:00",
    "Fri *-*~07/1 18:00",
    "*-02~01 UTC",
    "@0",
    "@1700000000",
    "70-01-01",
    "69-01-01",
    "2024-*-*",
    "*-*",
    "mon..wed,",
    "Mon,  12:00",
    "03:17:00/0.42",
    "*:*:0/0.25",
    "*:*:*",
    "*:*:0/15",
    "*:0/7",
    "Mon..Fri 09:30",
    "Fri *-*-13 00:00",
    "*-02-29",
    "*-*-31 12:00",
    "2030-02-30",
    "2025,2027..2028-06-01 12:00",
    // Zones.
    "12:00 Europe/Berlin",
    "12:00 Asia/Kolkata",
    "*-*-* 02:30 Europe/Berlin",
    "12:00 Etc/UTC",
    "daily utc",
    // DST gaps and folds (Berlin 02:00–03:00, Helsinki 03:00–04:00, New York 02:00–03:00,
    // Adelaide 02:00–03:00, Lord Howe 02:00–02:30).
    "*-*-* 02:30",
    "*-*-* 02,03:10,30",
    "*-*-* 02:30,03:10",
    "*-*-* 03:30",
    "*-*-* 01..03:00..59/20:30",
    "*-*-* 01:45,59",
    "*:30",
    "*:0/30",
    "*:0/20:10",
    "*:15,45",
    "Sat,Sun *:0/10",
    "Sun *-*~07/1 02:30",
    // Refused by systemd.
    "",
    "test",
    " utc",
    "    ",
    "7",
    "121212:1:2",
    "2000-03-05.23 00:00:00",
    "2000-03-05 00:00.1:00",
    "00:00:00/0.00000001",
    "00:00:00.0..00.9",
    "2016~11-22",
    "*-*~5/5",
    "*-*~29",
    "*-*~3..1",
    "*-*-5..3",
    "*-*-1/31",
    "00:00:01..01",
    "Mon ,12:00",
    "Mon..",
    "monx",
    "1:2:3.",
    "1:2:3.x",
    "2..1:00",
    "*:*:59.9999995",
    "*:*:2147",
    "100-01-01",
    "1969-1-1",
    "12:00 europe/berlin",
    "12:00 Mars/Olympus",
    "UTC",
    "*/2:00",
    "Mon 2024",
    "12:00:00 12:00",
    "*~1-1",
    "*-13-01",
    "*-*-* 25:00",
    "*-*-* 10:61",
    "*:*/0",
    "Fri..Mon",
    "1..x-01",
    "Funday",
];

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Europe/Helsinki",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "America/New_York",
    "Australia/Lord_Howe",
];

/// Base instants (seconds since the epoch).
const BASES: &[i64] = &[
    1_704_067_200, // 2024-01-01T00:00:00Z
    1_711_828_800, // 2024-03-30T20:00:00Z: Berlin and Helsinki spring forward next night
    1_710_036_000, // 2024-03-10T02:00:00Z: New York springs forward at 07:00Z
    1_712_404_800, // 2024-04-06T12:00:00Z: Adelaide and Lord Howe fall back next night
    1_728_129_600, // 2024-10-05T12:00:00Z: Adelaide and Lord Howe spring forward next night
    1_729_972_800, // 2024-10-26T20:00:00Z: Berlin and Helsinki fall back next night
    1_729_991_400, // 2024-10-27T01:10:00Z: inside Berlin's repeated hour (02:10 CET)
    1_730_611_800, // 2024-11-03T05:30:00Z: inside New York's first pass of 01:xx
];

const ITERATIONS: usize = 3;

/// What systemd (or btb) makes of one expression in one zone from one base.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// The normalized form; `None`: refused.
    normalized: Option<String>,
    /// The next elapses, whole seconds since the epoch.
    elapses: Vec<i64>,
}

fn table_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/calendar_systemd252.tsv")
}

/// btb's outcome.
fn btb(expr: &str, zone: &str, base: i64) -> Outcome {
    let Ok(spec) = CalendarSpec::parse(expr) else {
        return Outcome {
            normalized: None,
            elapses: Vec::new(),
        };
    };
    let tz = TimeZone::get(zone).unwrap();
    let mut at = base * 1_000_000;
    let mut elapses = Vec::new();
    while elapses.len() < ITERATIONS {
        let Some(next) = spec.next_elapse_us(at, &tz) else {
            break;
        };
        assert!(next > at, "{expr:?} in {zone}: {next} after {at}");
        elapses.push(next.div_euclid(1_000_000));
        at = next;
    }
    Outcome {
        normalized: Some(spec.normalized()),
        elapses,
    }
}

/// One line of the table: zone, base, expression, normalized form or `-`, elapses or `-`.
fn line(zone: &str, base: i64, expr: &str, o: &Outcome) -> String {
    let elapses: Vec<String> = o.elapses.iter().map(|e| e.to_string()).collect();
    format!(
        "{zone}\t{base}\t{}\t{}\t{}",
        expr.replace('\t', "\\t"),
        o.normalized.as_deref().unwrap_or("-"),
        if elapses.is_empty() {
            "-".to_owned()
        } else {
            elapses.join(",")
        }
    )
}

#[test]
fn table() {
    let text = std::fs::read_to_string(table_path()).unwrap();
    let mut seen = BTreeMap::new();
    let mut compared = 0;
    for row in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = row.split('\t').collect();
        let [zone, base, expr, normalized, elapses] = fields[..] else {
            panic!("bad table row {row:?}");
        };
        let base: i64 = base.parse().unwrap();
        let expected = Outcome {
            normalized: (normalized != "-").then(|| normalized.to_owned()),
            elapses: if elapses == "-" {
                Vec::new()
            } else {
                elapses.split(',').map(|e| e.parse().unwrap()).collect()
            },
        };
        assert_eq!(
            btb(expr, zone, base),
            expected,
            "{expr:?} in {zone} from {base}"
        );
        *seen.entry(expr.to_owned()).or_insert(0) += 1;
        compared += 1;
    }
    for expr in EXPRESSIONS {
        assert_eq!(
            seen.get(*expr),
            Some(&(ZONES.len() * BASES.len())),
            "{expr:?} is not in the table in every zone from every base (BTB_BLESS=1)"
        );
    }
    println!(
        "{} expressions, {compared} (expression, zone, base) cases",
        seen.len()
    );
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// What `systemd-analyze calendar` prints for each expression in `zone` from `base`.
fn systemd(analyze: &PathBuf, zone: &str, base: i64) -> BTreeMap<String, Outcome> {
    let out = Command::new(analyze)
        .env("TZ", zone)
        .env("SYSTEMD_COLORS", "0")
        .arg("calendar")
        .arg(format!("--base-time=@{base}"))
        .arg(format!("--iterations={ITERATIONS}"))
        .arg("--")
        .args(EXPRESSIONS)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // Refused expressions are named on stderr; the others have a block each on stdout, in order,
    // which starts "  Original form: " unless that is the normalized form too.
    let refused = |expr: &str| stderr.contains(&format!("calendar specification '{expr}':"));
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut after_original = false;
    for l in stdout.lines() {
        if l.starts_with("  Original form: ")
            || (l.starts_with("Normalized form: ") && !after_original)
        {
            blocks.push(Vec::new());
        }
        after_original = l.starts_with("  Original form: ");
        if let Some(block) = blocks.last_mut() {
            block.push(l);
        }
    }
    let accepted: Vec<&str> = EXPRESSIONS
        .iter()
        .copied()
        .filter(|e| !refused(e))
        .collect();
    assert_eq!(blocks.len(), accepted.len(), "{stdout}\n{stderr}");
    let mut outcomes = BTreeMap::new();
    for (expr, lines) in accepted.into_iter().zip(blocks) {
        if let Some(original) = lines[0].strip_prefix("  Original form: ") {
            assert_eq!(original, expr);
        }
        let normalized = lines
            .iter()
            .find_map(|l| l.strip_prefix("Normalized form: "))
            .unwrap()
            .to_owned();
        let mut elapses = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let l = l.trim();
            if !(l.starts_with("Next elapse: ") || l.starts_with("Iter. #")) || l.ends_with("never")
            {
                continue;
            }
            // The instant in UTC: the next line when the zone is not UTC.
            let utc = match lines.get(i + 1).map(|n| n.trim()) {
                Some(n) if n.starts_with("(in UTC): ") => n,
                _ => l,
            };
            // "... Wed 2023-11-15 18:30:00 UTC"
            let words: Vec<&str> = utc.split_whitespace().collect();
            let [.., date, time, "UTC"] = words[..] else {
                panic!("unexpected line {utc:?}");
            };
            let civil: DateTime = format!("{date}T{time}").parse().unwrap();
            elapses.push(TimeZone::UTC.to_timestamp(civil).unwrap().as_second());
        }
        outcomes.insert(
            expr.to_owned(),
            Outcome {
                normalized: Some(normalized),
                elapses,
            },
        );
    }
    for expr in EXPRESSIONS.iter().filter(|e| refused(e)) {
        outcomes.insert(
            (*expr).to_owned(),
            Outcome {
                normalized: None,
                elapses: Vec::new(),
            },
        );
    }
    outcomes
}

#[test]
fn same_as_systemd_analyze() {
    let Some(analyze) = systemd_analyze() else {
        println!("skipped: systemd-analyze is not installed; only the recorded table was checked");
        return;
    };
    let bless = std::env::var_os("BTB_BLESS").is_some();
    let mut rows = vec![
        "# zone\tbase (s)\texpression\tnormalized form (- refused)\tnext elapses (s; - never)"
            .to_owned(),
    ];
    let mut differences = Vec::new();
    let mut compared = 0;
    for zone in ZONES {
        for &base in BASES {
            let systemd = systemd(&analyze, zone, base);
            for expr in EXPRESSIONS {
                let expected = &systemd[*expr];
                rows.push(line(zone, base, expr, expected));
                let got = btb(expr, zone, base);
                compared += 1;
                if &got != expected {
                    differences.push(format!(
                        "{expr:?} in {zone} from {} ({base}):\n  systemd {expected:?}\n  btb     {got:?}",
                        Timestamp::from_second(base).unwrap()
                    ));
                }
            }
        }
    }
    if bless {
        std::fs::create_dir_all(table_path().parent().unwrap()).unwrap();
        std::fs::write(table_path(), rows.join("\n") + "\n").unwrap();
    }
    println!(
        "{} expressions in {} zones from {} bases: {compared} cases compared with {}",
        EXPRESSIONS.len(),
        ZONES.len(),
        BASES.len(),
        analyze.display()
    );
    assert!(
        differences.is_empty(),
        "{} of {compared} differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

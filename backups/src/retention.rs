//! Which backups retention deletes: keep the last N successful ones plus the newest of each of
//! the last D days, W ISO weeks and M months (grandfather-father-son), and never the newest
//! verified backup nor one younger than the minimum age. Failed runs are removed once older
//! than the minimum age, except the newest one, which stays as the record of the last failure.

use std::collections::HashSet;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// One finished backup, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The Backup's name.
    pub name: String,
    /// When it finished (or was created, for a failed run without an end time).
    pub completed_at: Timestamp,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Whether a restore drill verified it.
    pub verified: bool,
}

/// The policy's retention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Most recent successful backups kept.
    pub keep_last: usize,
    /// Days for which the newest backup is kept.
    pub daily: usize,
    /// ISO weeks for which the newest backup is kept.
    pub weekly: usize,
    /// Months for which the newest backup is kept.
    pub monthly: usize,
    /// Nothing younger is deleted.
    pub min_age: SignedDuration,
}

/// The calendar bucket (day, ISO week or month) a time falls in.
type BucketOf = fn(&jiff::Zoned) -> (i16, i16, i16);

/// Names of the backups to delete, oldest first.
pub fn to_delete(
    candidates: &[Candidate],
    rules: &Rules,
    now: Timestamp,
    tz: &TimeZone,
) -> Vec<String> {
    let mut succeeded: Vec<&Candidate> = candidates.iter().filter(|c| c.succeeded).collect();
    succeeded.sort_by(|a, b| {
        b.completed_at
            .cmp(&a.completed_at)
            .then(b.name.cmp(&a.name))
    });
    let mut keep: HashSet<&str> = HashSet::new();
    keep.extend(
        succeeded
            .iter()
            .take(rules.keep_last)
            .map(|c| c.name.as_str()),
    );
    let buckets: [(usize, BucketOf); 3] = [
        (rules.daily, |z| {
            (z.year(), z.month().into(), z.day().into())
        }),
        (rules.weekly, |z| {
            let w = z.date().iso_week_date();
            (w.year(), w.week().into(), 0)
        }),
        (rules.monthly, |z| (z.year(), z.month().into(), 0)),
    ];
    for (count, bucket_of) in buckets {
        let mut seen = HashSet::new();
        for c in &succeeded {
            if seen.len() >= count {
                break;
            }
            if seen.insert(bucket_of(&c.completed_at.to_zoned(tz.clone()))) {
                keep.insert(c.name.as_str());
            }
        }
    }
    if let Some(newest_verified) = succeeded.iter().find(|c| c.verified) {
        keep.insert(newest_verified.name.as_str());
    }
    let mut failed: Vec<&Candidate> = candidates.iter().filter(|c| !c.succeeded).collect();
    failed.sort_by(|a, b| {
        b.completed_at
            .cmp(&a.completed_at)
            .then(b.name.cmp(&a.name))
    });
    if let Some(newest_failed) = failed.first() {
        keep.insert(newest_failed.name.as_str());
    }
    let mut doomed: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !keep.contains(c.name.as_str()))
        .filter(|c| now.duration_since(c.completed_at) >= rules.min_age)
        .collect();
    doomed.sort_by(|a, b| {
        a.completed_at
            .cmp(&b.completed_at)
            .then(a.name.cmp(&b.name))
    });
    doomed.into_iter().map(|c| c.name.clone()).collect()
}

/// Parses a minimum age as the CRD accepts it: `24h`, `90m`, `1h30m`, `0.5h`, `30s`, `500ms`.
pub fn parse_min_age(text: &str) -> Result<SignedDuration, String> {
    let bad = || format!("{text:?} is not a duration such as 24h, 90m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let (unit, after) = if let Some(after) = tail.strip_prefix("ms") {
            (0.001, after)
        } else if let Some(after) = tail.strip_prefix('s') {
            (1.0, after)
        } else if let Some(after) = tail.strip_prefix('m') {
            (60.0, after)
        } else if let Some(after) = tail.strip_prefix('h') {
            (3600.0, after)
        } else {
            return Err(bad());
        };
        total += n * unit;
        rest = after;
    }
    SignedDuration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64, hour: i64) -> Timestamp {
        // 2026-01-01T00:00Z is a Thursday.
        Timestamp::from_second(1_767_225_600 + day * 86400 + hour * 3600).unwrap()
    }

    fn ok(name: &str, t: Timestamp) -> Candidate {
        Candidate {
            name: name.into(),
            completed_at: t,
            succeeded: true,
            verified: false,
        }
    }

    fn rules(keep_last: usize, daily: usize, weekly: usize, monthly: usize) -> Rules {
        Rules {
            keep_last,
            daily,
            weekly,
            monthly,
            min_age: SignedDuration::from_hours(24),
        }
    }

    #[test]
    fn keeps_the_last_n_and_deletes_older_ones_oldest_first() {
        let c: Vec<_> = (0..5).map(|d| ok(&format!("b{d}"), at(d, 3))).collect();
        let gone = to_delete(&c, &rules(2, 0, 0, 0), at(10, 0), &TimeZone::UTC);
        assert_eq!(gone, ["b0", "b1", "b2"]);
    }

    #[test]
    fn gfs_keeps_the_newest_of_each_day_week_and_month() {
        // Two backups a day for 70 days.
        let mut c = Vec::new();
        for d in 0..70 {
            c.push(ok(&format!("d{d:02}a"), at(d, 1)));
            c.push(ok(&format!("d{d:02}b"), at(d, 13)));
        }
        let gone = to_delete(&c, &rules(1, 3, 2, 3), at(71, 0), &TimeZone::UTC);
        let kept: Vec<_> = c
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| !gone.iter().any(|g| g == n))
            .collect();
        // last 1; days 69, 68, 67; weeks: newest of this ISO week (69) and the previous one
        // (d66 is Sunday 2026-03-08, ending ISO week 10); months: March (69), February (d58 =
        // 2026-02-28), January (d30 = 2026-01-31).
        assert_eq!(kept, ["d30b", "d58b", "d66b", "d67b", "d68b", "d69b"]);
    }

    #[test]
    fn never_deletes_the_newest_verified_nor_anything_young() {
        let mut c: Vec<_> = (0..5).map(|d| ok(&format!("b{d}"), at(d, 3))).collect();
        c[1].verified = true;
        c[0].verified = true;
        // b4 is the last, b1 the newest verified (b0 is verified but older).
        let gone = to_delete(&c, &rules(1, 0, 0, 0), at(4, 12), &TimeZone::UTC);
        assert_eq!(gone, ["b0", "b2", "b3"]);
        // With a two-day minimum age, b3 (33 h old) stays too.
        let mut r = rules(1, 0, 0, 0);
        r.min_age = SignedDuration::from_hours(48);
        assert_eq!(to_delete(&c, &r, at(4, 12), &TimeZone::UTC), ["b0", "b2"]);
    }

    #[test]
    fn failed_runs_go_after_the_minimum_age_but_the_newest_failure_stays() {
        let mut c: Vec<_> = (0..3).map(|d| ok(&format!("ok{d}"), at(d, 3))).collect();
        for d in 0..3 {
            c.push(Candidate {
                name: format!("bad{d}"),
                completed_at: at(d, 4),
                succeeded: false,
                verified: false,
            });
        }
        let gone = to_delete(&c, &rules(5, 0, 0, 0), at(10, 0), &TimeZone::UTC);
        assert_eq!(gone, ["bad0", "bad1"]);
    }

    #[test]
    fn time_zone_decides_the_day() {
        // 23:30 and 00:30 UTC are the same day in New York.
        let c = vec![
            ok("late", at(1, 0) - SignedDuration::from_mins(30)),
            ok("early", at(1, 0) + SignedDuration::from_mins(30)),
        ];
        let ny = TimeZone::get("America/New_York").unwrap();
        let r = rules(1, 2, 0, 0);
        assert_eq!(
            to_delete(&c, &r, at(9, 0), &TimeZone::UTC),
            Vec::<String>::new()
        );
        assert_eq!(to_delete(&c, &r, at(9, 0), &ny), ["late"]);
    }

    #[test]
    fn parses_minimum_ages() {
        assert_eq!(parse_min_age("24h"), Ok(SignedDuration::from_hours(24)));
        assert_eq!(parse_min_age("90m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_min_age("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_min_age("0s"), Ok(SignedDuration::ZERO));
        assert_eq!(parse_min_age("500ms"), Ok(SignedDuration::from_millis(500)));
        assert!(parse_min_age("soon").is_err());
        assert!(parse_min_age("7d").is_err());
    }
}

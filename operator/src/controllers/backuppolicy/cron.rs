//! Schedules of the BackupPolicy controller: a cron expression read in its time zone, which
//! scheduled run is due now (missed runs collapse into one, like a CronJob that was down), and
//! the name of a scheduled Backup. Depends on nothing else of the operator (the `cron` fuzz
//! target compiles it on its own).

use croner::Cron;
use croner::parser::CronParser;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses a five-field cron expression or macro, read in the IANA zone `time_zone`.
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, String> {
        let tz = TimeZone::get(time_zone).map_err(|_| {
            format!("time zone {time_zone:?} is not an IANA zone such as Europe/Berlin or UTC")
        })?;
        // croner accepts an empty item (`,5`) as a field that matches nothing; looking for the
        // next run of such a schedule then walks minute by minute to the year 5000.
        if expression
            .split_whitespace()
            .any(|field| field.split(',').any(str::is_empty))
        {
            return Err(format!(
                "schedule {expression:?} has an empty item in a list (a comma with nothing on one side)"
            ));
        }
        let cron = CronParser::builder()
            .build()
            .parse(expression)
            .map_err(|e| format!("schedule {expression:?} is not a valid cron expression: {e}"))?;
        Ok(Self { cron, tz })
    }

    /// The time zone.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// The first time after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The run due at `now`: the latest scheduled time in `(since, now]`, if any.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let latest = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
            .ok()?
            .timestamp();
        (latest > since).then_some(latest)
    }
}

/// The name of the Backup a schedule makes for `at`: `<policy>-<yyyymmddhhmm>` in UTC, so a
/// second attempt for the same time finds the first instead of making a duplicate.
pub fn scheduled_name(policy: &str, at: Timestamp) -> String {
    let stamp = at.strftime("%Y%m%d%H%M").to_string();
    let keep = 253 - stamp.len() - 1;
    let base: String = policy.chars().take(keep).collect();
    format!("{base}-{stamp}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn reads_the_schedule_in_its_time_zone() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        // 03:00 in Berlin in November is 02:00 UTC.
        assert_eq!(
            s.next_after(t("2026-11-24T07:05:00Z")),
            Some(t("2026-11-25T02:00:00Z"))
        );
        let daily = Schedule::parse("@daily", "UTC").unwrap();
        assert_eq!(
            daily.next_after(t("2026-11-24T07:05:00Z")),
            Some(t("2026-11-25T00:00:00Z"))
        );
    }

    #[test]
    fn missed_runs_collapse_into_the_latest() {
        let s = Schedule::parse("0 * * * *", "UTC").unwrap();
        let since = t("2026-11-24T01:00:00Z");
        assert_eq!(
            s.due(since, t("2026-11-24T07:05:00Z")),
            Some(t("2026-11-24T07:00:00Z"))
        );
        assert_eq!(
            s.due(t("2026-11-24T07:00:00Z"), t("2026-11-24T07:59:59Z")),
            None
        );
        assert_eq!(
            s.due(since, t("2026-11-24T01:00:00Z")),
            None,
            "the run at `since` was made"
        );
    }

    #[test]
    fn bad_schedules_and_zones_say_what_is_wrong() {
        let e = Schedule::parse("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("not an IANA zone"), "{e}");
        let e = Schedule::parse("61 3 * * *", "UTC").unwrap_err();
        assert!(e.contains("not a valid cron expression"), "{e}");
    }

    /// Found by the `cron` fuzz target: an empty item in a list (`, 03 * * * *`) was accepted,
    /// and looking for its next run then took longer than the fuzzer's 10 s limit — a reconcile
    /// that never ends. Schedules that never occur (31 February) must answer at once too.
    #[test]
    fn a_schedule_that_never_occurs_is_refused_or_answered_at_once() {
        for expression in [", 03 * *  *  *", "0 3,, * * *", "0 3 * * 1,", "0 ,3 * * *"] {
            let e = Schedule::parse(expression, "UTC").unwrap_err();
            assert!(e.contains("empty item"), "{expression}: {e}");
        }
        let feb31 = Schedule::parse("0 0 31 2 *", "UTC").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(feb31.next_after(t("2026-11-24T07:05:00Z")), None);
        assert_eq!(
            feb31.due(Timestamp::UNIX_EPOCH, t("2026-11-24T07:05:00Z")),
            None
        );
        eprintln!("31 February looked for in {:?}", started.elapsed());
    }

    #[test]
    fn scheduled_names_are_stable_and_short_enough() {
        assert_eq!(
            scheduled_name("postgres", t("2026-11-24T03:00:00Z")),
            "postgres-202611240300"
        );
        assert_eq!(
            scheduled_name(&"p".repeat(300), t("2026-11-24T03:00:00Z")).len(),
            253
        );
    }
}

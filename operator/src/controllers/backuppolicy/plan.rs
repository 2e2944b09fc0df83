//! Pure decisions of the BackupPolicy controller: a policy validated into its schedules (read
//! in their time zone by [`super::cron`]) and its retention rules.

use homeplane_backups::retention::{self, Rules};
use homeplane_crds::backup::BackupPolicy;

pub use super::cron::{Schedule, scheduled_name};
use crate::controllers::backup::resolve::{self, Invalid};

/// The validated, pure part of a policy.
pub struct Checked {
    /// When backups run.
    pub schedule: Schedule,
    /// When restore drills run, if they do.
    pub verify: Option<Schedule>,
    /// What retention keeps.
    pub rules: Rules,
}

/// Validates a policy: its bucket settings, schedules, drill and retention; the error says
/// what to fix.
pub fn check(p: &BackupPolicy) -> Result<Checked, Invalid> {
    let invalid = |reason: &'static str, message: String| Invalid { reason, message };
    resolve::validate(p)?;
    let schedule = Schedule::parse(&p.spec.schedule, &p.spec.time_zone)
        .map_err(|m| invalid("InvalidSchedule", format!("spec: {m}")))?;
    let verify = match &p.spec.verify {
        Some(v) => {
            if p.spec.source.database.is_some() && v.scratch_database.is_none() {
                return Err(invalid(
                    "InvalidVerification",
                    "spec.verify.scratchDatabase is required for a database source: the restore drill restores into it".into(),
                ));
            }
            if v.scratch_database.is_some()
                && p.spec.source.database.as_ref().map(|d| &d.name) == v.scratch_database.as_ref()
            {
                return Err(invalid(
                    "InvalidVerification",
                    "spec.verify.scratchDatabase names the source database; a drill replaces the scratch database's contents, so name another Database".into(),
                ));
            }
            Some(
                Schedule::parse(&v.schedule, &p.spec.time_zone)
                    .map_err(|m| invalid("InvalidSchedule", format!("spec.verify: {m}")))?,
            )
        }
        None => None,
    };
    let r = &p.spec.retention;
    let min_age = retention::parse_min_age(&r.min_age)
        .map_err(|m| invalid("InvalidRetention", format!("spec.retention.minAge: {m}")))?;
    let count = |n: i32| usize::try_from(n).unwrap_or(0);
    Ok(Checked {
        schedule,
        verify,
        rules: Rules {
            keep_last: count(r.keep_last).max(1),
            daily: count(r.daily),
            weekly: count(r.weekly),
            monthly: count(r.monthly),
            min_age,
        },
    })
}

//! BackupPolicy schedules: a cron expression and a time zone, then the next and the due run.
#![no_main]
use homeplane_fuzz::schedule::Schedule;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = homeplane_fuzz::parts(data, 2);
    if let Ok(schedule) = Schedule::parse(&parts[0], &parts[1]) {
        let now = Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH);
        let _ = schedule.next_after(now);
        let _ = schedule.due(Timestamp::UNIX_EPOCH, now);
    }
});

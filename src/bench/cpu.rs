//! The CPU time of the instance under test, from `/proc/<pid>/stat` (Linux): read right before
//! and right after the measured phase, so that a warm pass, the callers' loading and the reading
//! of the cache counters are left out.

use std::time::Duration;

/// The CPU time a process has used so far (user and system, all its threads), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks(pub u64);

/// `utime + stime` (fields 14 and 15) of the text of a `/proc/<pid>/stat`. The second field, the
/// process's name in parentheses, may itself hold spaces and parentheses: the fields after it
/// are counted from its last `)`.
pub fn parse_stat(stat: &str) -> Option<CpuTicks> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime).map(CpuTicks)
}

/// The CPU time process `pid` has used so far; `Err` says why it could not be read (no `/proc`
/// on this system, no such process).
pub fn read(pid: u32) -> Result<CpuTicks, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_stat(&text).ok_or_else(|| format!("cannot parse {path}"))
}

/// How many clock ticks make a second in `/proc/<pid>/stat` (`getconf CLK_TCK`). Without
/// `getconf`, 100: Linux reports these times in USER_HZ, which is 100.
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| {
            eprintln!("bench: `getconf CLK_TCK` gave no answer; taking 100 clock ticks a second");
            100
        })
}

/// A measurement of process `pid`'s CPU time under way: `start` before the phase, `stop` after.
#[derive(Debug)]
pub struct Meter {
    ticks_per_second: u64,
    before: Result<CpuTicks, String>,
    pid: u32,
}

impl Meter {
    pub fn start(pid: u32) -> Meter {
        let ticks_per_second = ticks_per_second();
        Meter {
            ticks_per_second,
            before: read(pid),
            pid,
        }
    }

    /// The CPU time the process used since `start`; `Err` says why it could not be measured.
    pub fn stop(self) -> Result<Duration, String> {
        let after = read(self.pid);
        Ok(elapsed(self.before?, after?, self.ticks_per_second))
    }
}

/// The CPU time between two readings.
pub fn elapsed(before: CpuTicks, after: CpuTicks, ticks_per_second: u64) -> Duration {
    let ticks = after.0.saturating_sub(before.0);
    Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line's shape: pid, name, state, then fields 4 to 52.
    fn stat_line(name: &str, utime: u64, stime: u64) -> String {
        format!(
            "1234 ({name}) S 1 1234 1234 0 -1 4194560 1021 0 0 0 {utime} {stime} 7 3 20 0 9 0 \
             5210 1094713344 3071 18446744073709551615 1 1 0 0 0 0 0 4096 17642 0 0 0 17 0 0 0 \
             0 0 0 0 0 0 0 0 0 0 0"
        )
    }

    #[test]
    fn utime_and_stime_are_added() {
        assert_eq!(
            parse_stat(&stat_line("hotline", 250, 40)),
            Some(CpuTicks(290))
        );
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        assert_eq!(
            parse_stat(&stat_line("my (odd) name", 12, 3)),
            Some(CpuTicks(15))
        );
        assert_eq!(
            parse_stat(&stat_line(") ) S 9 9", 5, 6)),
            Some(CpuTicks(11))
        );
        assert_eq!(parse_stat(&stat_line("", 1, 2)), Some(CpuTicks(3)));
    }

    #[test]
    fn a_truncated_or_garbled_line_gives_nothing() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1234 (hotline) S 1 1234"), None);
        assert_eq!(
            parse_stat("1234 hotline S 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            None
        );
        assert_eq!(
            parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 ten 4 0 0"),
            None,
            "a field that is no number"
        );
    }

    #[test]
    fn this_process_can_be_read_on_linux() {
        if cfg!(target_os = "linux") {
            let before = read(std::process::id()).expect("our own /proc/<pid>/stat");
            let after = read(std::process::id()).unwrap();
            assert!(after.0 >= before.0);
        }
        assert!(read(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn ticks_become_seconds() {
        let d = elapsed(CpuTicks(100), CpuTicks(350), 100);
        assert_eq!(d, Duration::from_millis(2500));
        assert_eq!(elapsed(CpuTicks(5), CpuTicks(3), 100), Duration::ZERO);
    }
}

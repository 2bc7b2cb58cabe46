//! What the load generator reads about processes from `/proc`, and its own file limit.

use std::time::Instant;

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Clock ticks per second, for [`cpu_ticks`].
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU use of a process over a window: started by [`CpuMeter::start`], read by
/// [`CpuMeter::percent`]. 100 means one core busy the whole time.
pub struct CpuMeter {
    /// The process measured; `None` when the target's pid is unknown.
    pid: Option<u32>,
    /// Its CPU ticks at the start of the window.
    start_ticks: u64,
    /// When the window began.
    start: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (nothing, when `None`).
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start_ticks: pid.and_then(cpu_ticks).unwrap_or(0),
            start: Instant::now(),
        }
    }

    /// Percent of one core used since the start.
    pub fn percent(&self) -> Option<f64> {
        let ticks = cpu_ticks(self.pid?)?;
        let wall = self.start.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        Some((ticks.saturating_sub(self.start_ticks)) as f64 / ticks_per_second() / wall * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id();
        assert!(rss_bytes(me).is_some_and(|rss| rss > 0));
        assert!(cpu_ticks(me).is_some());
        assert!(fd_count(me).is_some_and(|fds| fds > 0));
    }
}

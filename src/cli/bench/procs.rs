//! Processes under test: memory and CPU read from /proc.

use super::*;

/// A `kB` field of `/proc/PID/status` (VmHWM, VmRSS), in MB.
pub(super) fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU seconds of a process so far.
pub(super) fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

pub(super) struct Watched {
    name: String,
    pid: u32,
    cpu_at_start: f64,
    idle_rss_mb: Option<f64>,
}

impl Watched {
    pub(super) fn start(name: &str, pid: Option<u32>, idle_rss_mb: Option<f64>) -> Option<Watched> {
        let pid = pid?;
        Some(Watched {
            name: name.to_string(),
            pid,
            cpu_at_start: proc_cpu_seconds(pid).unwrap_or(0.0),
            idle_rss_mb,
        })
    }

    pub(super) fn finish(self, seconds: f64) -> ServerUsage {
        let cpu = proc_cpu_seconds(self.pid).unwrap_or(0.0) - self.cpu_at_start;
        ServerUsage {
            name: self.name,
            pid: self.pid,
            idle_rss_mb: self.idle_rss_mb,
            peak_rss_mb: proc_status_mb(self.pid, "VmHWM:").unwrap_or(0.0),
            rss_mb: proc_status_mb(self.pid, "VmRSS:").unwrap_or(0.0),
            cpu_seconds: cpu,
            cores_busy: cpu / seconds.max(f64::MIN_POSITIVE),
        }
    }
}

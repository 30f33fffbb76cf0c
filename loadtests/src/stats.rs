//! Clocks, histograms and /proc readers.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Unix time in µs: the shared epoch of every worker process.
#[inline]
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// 1 µs to 1 hour at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut v = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut v)
        .expect("histograms serialize");
    base64::engine::general_purpose::STANDARD.encode(v)
}

pub fn hist_from_b64(s: &str) -> Result<Histogram<u64>> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, seconds (all its threads).
pub fn proc_cpu_s(pid: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ut: f64 = f.get(11).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    let stt: f64 = f.get(12).ok_or_else(|| anyhow!("bad stat"))?.parse()?;
    Ok((ut + stt) / clk_tck())
}

/// This process's CPU time, seconds: to the nanosecond (a short connect phase is a few clock
/// ticks of /proc/self/stat), falling back to /proc.
pub fn self_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
        return ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    }
    proc_cpu_s("self").unwrap_or(0.0)
}

/// CPU seconds of every live process whose command name is `comm` (e.g. `postgres`).
pub fn comm_cpu_s(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str() else { continue };
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if c.trim_end() == comm {
            total += proc_cpu_s(pid).unwrap_or(0.0);
        }
    }
    total
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&s, field)
}

/// `Pss` (proportional set size) from /proc/<pid>/smaps_rollup, in KiB.
pub fn proc_pss_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&s, "Pss")
}

fn kib_field(s: &str, field: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU seconds the whole machine spent busy (user, nice, system, irq, softirq) and stolen by
/// the hypervisor, summed over all CPUs, from /proc/stat.
pub fn machine_cpu_s() -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    (busy / clk_tck(), get(7) / clk_tck())
}

/// How many CPUs this process may run on.
pub fn allowed_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_base64() {
        let mut h = new_hist();
        for v in [1u64, 10, 100, 1000, 1_000_000] {
            h.record(v).unwrap();
        }
        let back = hist_from_b64(&hist_to_b64(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn proc_readers_work_on_ourselves() {
        assert!(proc_status_kib("self", "VmRSS").unwrap() > 0);
        assert!(proc_cpu_s("self").is_ok());
        // The precise clock and /proc agree to within a few ticks.
        let (a, b) = (self_cpu_s(), proc_cpu_s("self").unwrap());
        assert!(a > 0.0 && (a - b).abs() < 0.1, "{a} vs {b}");
    }
}

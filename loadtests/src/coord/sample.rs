//! The server as the coordinator sees it from /proc: CPU, RSS, PSS of the --server-pid
//! processes, the --extra-cpu-comm CPU and the machine's load at one instant, and the memory
//! per connection derived from samples before and after connecting. Kept apart because it
//! measures the server, not the generator.

use super::args::RunArgs;
use crate::report::{self, ServerSample};
use crate::stats::{self, now_us};

pub(super) fn sample(a: &RunArgs) -> ServerSample {
    let mut s = ServerSample {
        t_us: now_us(),
        ..Default::default()
    };
    for pid in &a.server_pids {
        let p = pid.to_string();
        s.cpu_s += stats::proc_cpu_s(&p).unwrap_or(0.0);
        s.rss_kib += stats::proc_status_kib(&p, "VmRSS").unwrap_or(0);
        s.hwm_kib += stats::proc_status_kib(&p, "VmHWM").unwrap_or(0);
        s.pss_kib += stats::proc_pss_kib(&p).unwrap_or(0);
    }
    if let Some(c) = &a.extra_cpu_comm {
        s.extra_cpu_s = stats::comm_cpu_s(c);
    }
    (s.machine_busy_s, s.machine_steal_s) = stats::machine_cpu_s();
    s.loadavg = stats::loadavg();
    s
}

pub(super) fn memory_per_conn(
    before: &ServerSample,
    after: &ServerSample,
    held: Option<&ServerSample>,
    conns: usize,
) -> Option<report::MemoryPerConn> {
    if before.rss_kib == 0 || conns == 0 {
        return None;
    }
    let last = held.unwrap_or(after);
    let per = |a: u64, b: u64| (a as f64 - b as f64) / conns as f64;
    Some(report::MemoryPerConn {
        conns,
        rss_before_kib: before.rss_kib,
        rss_after_connect_kib: after.rss_kib,
        rss_after_hold_kib: held.map(|h| h.rss_kib),
        rss_per_conn_kib: per(last.rss_kib, before.rss_kib),
        pss_before_kib: before.pss_kib,
        pss_after_kib: last.pss_kib,
        pss_per_conn_kib: per(last.pss_kib, before.pss_kib),
    })
}

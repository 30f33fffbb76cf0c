//! The result types: what `run --out` writes and `report` reads back (the JSON schema of a
//! result file), and the date stamp they carry. Kept apart so that the file format is in one
//! place, separate from how the numbers are computed, judged or shown.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::plan::Layout;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerSample {
    pub t_us: u64,
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub pss_kib: u64,
    /// CPU of the processes named by --extra-cpu-comm (e.g. PostgreSQL).
    pub extra_cpu_s: f64,
    /// Busy CPU seconds of the whole machine, and time stolen by the hypervisor.
    pub machine_busy_s: f64,
    pub machine_steal_s: f64,
    pub loadavg: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// Failures by reason, most frequent first.
    pub error_counts: Vec<(String, u64)>,
    /// From the start signal to the last join.
    pub elapsed_s: f64,
    pub joins_per_s: f64,
    /// Per connection: TCP connect + upgrade + join reply.
    pub latency: Percentiles,
    /// Generator CPU from the start signal to the last join.
    pub generator_cpu_s: f64,
    pub generator_cpu_pct_total: f64,
    pub generator_cpu_pct_max_worker: f64,
    /// Why the connect phase does not count (refused or failed connections; for `storm`,
    /// whose result is the connect phase, also a saturated generator).
    pub invalid_reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryPerConn {
    pub conns: usize,
    pub rss_before_kib: u64,
    pub rss_after_connect_kib: u64,
    pub rss_after_hold_kib: Option<u64>,
    pub rss_per_conn_kib: f64,
    pub pss_before_kib: u64,
    pub pss_after_kib: u64,
    pub pss_per_conn_kib: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub index: usize,
    pub rate_msgs_per_s: f64,
    pub slow_stop: bool,
    pub window_s: f64,
    pub offered_deliveries_per_s: f64,
    pub achieved_deliveries_per_s: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_ratio: f64,
    pub sent: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Connections closed since the connect phase (cumulative over the steps).
    pub closed: u64,
    pub close_codes: Vec<(u16, u64)>,
    /// Of those, the closes the scenario did not plan for (all but stopped slow consumers').
    #[serde(default)]
    pub unexpected_closed: u64,
    #[serde(default)]
    pub unexpected_close_codes: Vec<(u16, u64)>,
    pub latency: Percentiles,
    pub acks_expected: u64,
    pub acks_total: u64,
    pub achieved_acks_per_s: f64,
    pub ack_ratio: f64,
    pub ack_latency: Option<Percentiles>,
    pub server_cpu_s: f64,
    pub server_cpu_pct: f64,
    pub server_cpu_s_per_million: f64,
    pub extra_cpu_s: f64,
    pub extra_cpu_s_per_million: f64,
    pub server_rss_kib: u64,
    pub generator_cpu_s: f64,
    pub generator_cpu_pct_total: f64,
    pub generator_cpu_pct_max_worker: f64,
    pub max_send_lag_ms: f64,
    /// Cores kept busy during the window by everything except the server, --extra-cpu-comm
    /// and the generator: other people's work on a shared machine (noise).
    pub other_cores_busy: f64,
    pub steal_cores: f64,
    pub loadavg_end: String,
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DurableCheck {
    pub acked: u64,
    pub committed: u64,
    pub rooms: u64,
    pub rooms_with_gaps: u64,
    /// committed >= acked and every room's seqs are 1..=n.
    pub ok: bool,
    pub copy_rows: Option<u64>,
    pub copy_s: Option<f64>,
    pub copy_rows_per_s: Option<f64>,
    /// Best achieved acks/s over the raw COPY rate.
    pub acks_vs_copy: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub tool: String,
    pub date: String,
    pub run_id: String,
    pub label: String,
    pub scenario: String,
    pub target: String,
    pub urls: Vec<String>,
    pub workers: usize,
    pub generator_cpus: usize,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub note: String,
    pub args: serde_json::Value,
    pub layout: Layout,
    pub connect: ConnectResult,
    pub server_before_connect: ServerSample,
    pub server_after_connect: ServerSample,
    pub server_after_hold: Option<ServerSample>,
    pub memory: Option<MemoryPerConn>,
    pub steps: Vec<StepResult>,
    pub durable: Option<DurableCheck>,
    pub metrics: Option<BTreeMap<String, f64>>,
    /// False when the connect phase or any step is INVALID (see `invalid_reasons`).
    #[serde(default = "yes")]
    pub valid: bool,
    #[serde(default)]
    pub invalid_reasons: Vec<String>,
}

fn yes() -> bool {
    true
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date library.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format() {
        let d = utc_now();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20"));
    }
}

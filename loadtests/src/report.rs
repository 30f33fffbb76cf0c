//! Results: merging the workers' reports, the JSON result, the table, the chart, Prometheus
//! counter diffs, the commit check and the COPY comparison, and `report` (combine runs).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::plan::{ConnectReport, Layout, Step, StepReport};
use crate::stats::{hist_from_b64, new_hist};

/// A generator process above this share of its core is saturated: its numbers measure itself.
pub const GENERATOR_SATURATED: f64 = 0.90;
/// Other processes keeping more than this many cores busy during a window: the step is noisy.
pub const NOISY_CORES: f64 = 0.5;
/// Listed with a step's reasons but does not make it INVALID.
const NO_SERVER_NOTE: &str = "no --server-pid: server CPU and memory not measured";

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

fn codes_text(codes: &[(u16, u64)]) -> String {
    codes
        .iter()
        .map(|(c, n)| format!("{c} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// INVALID when fewer than the `planned` connections connected and joined: the server did
/// not carry the load the scenario describes (e.g. HTTP 429 from an admission cap).
pub fn connect_failure(c: &ConnectResult, planned: usize) -> Option<String> {
    let missing = planned.saturating_sub(c.connected);
    if missing == 0 {
        return None;
    }
    let why: Vec<String> = c
        .error_counts
        .iter()
        .take(3)
        .map(|(e, n)| format!("{n} x \"{e}\""))
        .collect();
    Some(format!(
        "{missing} of {planned} planned connections refused or failed to connect/join{}",
        if why.is_empty() {
            String::new()
        } else {
            format!(": {}", why.join("; "))
        }
    ))
}

/// INVALID when the server closed connections the scenario did not plan to lose: from then on
/// fewer members than planned receive (cumulative, so every later step is flagged too).
pub fn closes_failure(unexpected: u64, codes: &[(u16, u64)], planned: usize) -> Option<String> {
    (unexpected > 0).then(|| {
        format!(
            "{unexpected} of {planned} connections closed by the server during the run, \
             unplanned (close codes {})",
            codes_text(codes)
        )
    })
}

/// INVALID when the generator measured itself: a worker above `GENERATOR_SATURATED` of its
/// core, or all of them above that share of the cores they may use.
pub fn saturation(max_worker_pct: f64, total_pct: f64, cpus: f64) -> Vec<String> {
    let mut v = Vec::new();
    if max_worker_pct > GENERATOR_SATURATED * 100.0 {
        v.push(format!(
            "a generator worker used {max_worker_pct:.0}% of its core"
        ));
    }
    if total_pct > GENERATOR_SATURATED * 100.0 * cpus {
        v.push(format!(
            "the generator used {total_pct:.0}% of its {cpus} core(s)"
        ));
    }
    v
}

/// The run's verdict: the connect phase's reasons, `extra` ones (closes during idle's hold or
/// after storm's joins), then every INVALID step's own reasons not already listed.
pub fn run_invalid_reasons(
    connect: &ConnectResult,
    extra: &[String],
    steps: &[StepResult],
) -> Vec<String> {
    let mut v: Vec<String> = connect.invalid_reasons.clone();
    v.extend(extra.iter().cloned());
    for s in steps.iter().filter(|s| !s.valid) {
        let own: Vec<&str> = s
            .invalid_reasons
            .iter()
            .filter(|r| !v.contains(r) && r.as_str() != NO_SERVER_NOTE)
            .map(String::as_str)
            .collect();
        if !own.is_empty() {
            v.push(format!(
                "step {} ({} msg/s{}): {}",
                s.index,
                f0(s.rate_msgs_per_s),
                if s.slow_stop { ", slow stopped" } else { "" },
                own.join("; ")
            ));
        }
    }
    v
}

pub fn merge_connect(reps: &[ConnectReport]) -> Result<ConnectResult> {
    let mut h = new_hist();
    let mut r = ConnectResult::default();
    let mut elapsed_us = 0;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for x in reps {
        h.add(hist_from_b64(&x.hist)?)
            .map_err(|e| anyhow!("{e:?}"))?;
        r.attempted += x.attempted;
        r.connected += x.connected;
        r.failed += x.failed;
        r.errors.extend(x.errors.iter().cloned());
        for (e, n) in &x.error_counts {
            *kinds.entry(e).or_default() += n;
        }
        elapsed_us = elapsed_us.max(x.elapsed_us);
        r.generator_cpu_s += x.cpu_s;
        if x.elapsed_us > 0 {
            let pct = x.cpu_s / (x.elapsed_us as f64 / 1e6) * 100.0;
            r.generator_cpu_pct_max_worker = r.generator_cpu_pct_max_worker.max(pct);
        }
    }
    r.errors.truncate(8);
    r.error_counts = kinds.into_iter().map(|(e, n)| (e.to_string(), n)).collect();
    r.error_counts
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    r.elapsed_s = elapsed_us as f64 / 1e6;
    if r.elapsed_s > 0.0 {
        r.generator_cpu_pct_total = r.generator_cpu_s / r.elapsed_s * 100.0;
    }
    r.joins_per_s = if r.elapsed_s > 0.0 {
        r.connected as f64 / r.elapsed_s
    } else {
        0.0
    };
    r.latency = Percentiles::of(&h);
    Ok(r)
}

pub fn step_result(
    step: &Step,
    layout: &Layout,
    connect: &ConnectResult,
    reps: &[StepReport],
    s0: ServerSample,
    s1: ServerSample,
    no_server: bool,
) -> Result<StepResult> {
    let window_s = (step.window_end_us - step.window_start_us) as f64 / 1e6;
    let mut h = new_hist();
    let mut ah = new_hist();
    let mut r = StepResult {
        index: step.index,
        rate_msgs_per_s: step.rate,
        slow_stop: step.slow_stop,
        window_s,
        ..Default::default()
    };
    let mut received_in_window = 0;
    let mut acks_in_window = 0;
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut unexpected_codes: BTreeMap<u16, u64> = BTreeMap::new();
    for x in reps {
        h.add(hist_from_b64(&x.hist)?)
            .map_err(|e| anyhow!("{e:?}"))?;
        ah.add(hist_from_b64(&x.ack_hist)?)
            .map_err(|e| anyhow!("{e:?}"))?;
        r.expected += x.expected;
        r.delivered += x.delivered;
        r.sent += x.sent;
        r.duplicates += x.duplicates;
        r.out_of_order += x.out_of_order;
        r.errors += x.errors;
        r.error_samples.extend(x.error_samples.iter().cloned());
        r.closed += x.closed;
        for (c, n) in &x.close_codes {
            *codes.entry(*c).or_default() += n;
        }
        r.unexpected_closed += x.unexpected_closed;
        for (c, n) in &x.unexpected_close_codes {
            *unexpected_codes.entry(*c).or_default() += n;
        }
        r.acks_expected += x.expected_acks;
        r.acks_total += x.acks;
        received_in_window += x.received_in_window;
        acks_in_window += x.acks_in_window;
        r.generator_cpu_s += x.cpu_s;
        let pct = x.cpu_s / window_s * 100.0;
        r.generator_cpu_pct_max_worker = r.generator_cpu_pct_max_worker.max(pct);
        r.max_send_lag_ms = r.max_send_lag_ms.max(x.max_send_lag_us as f64 / 1000.0);
    }
    r.error_samples.truncate(5);
    r.close_codes = codes.into_iter().collect();
    r.unexpected_close_codes = unexpected_codes.into_iter().collect();
    r.offered_deliveries_per_s = r.expected as f64 / window_s;
    r.achieved_deliveries_per_s = received_in_window as f64 / window_s;
    r.delivered_ratio = if r.expected > 0 {
        r.delivered as f64 / r.expected as f64
    } else {
        1.0
    };
    r.latency = Percentiles::of(&h);
    if r.acks_expected > 0 {
        r.achieved_acks_per_s = acks_in_window as f64 / window_s;
        r.ack_ratio = ah.len() as f64 / r.acks_expected as f64;
        r.ack_latency = Some(Percentiles::of(&ah));
    }
    r.server_cpu_s = s1.cpu_s - s0.cpu_s;
    r.server_cpu_pct = r.server_cpu_s / window_s * 100.0;
    r.extra_cpu_s = s1.extra_cpu_s - s0.extra_cpu_s;
    let millions = received_in_window as f64 / 1e6;
    if millions > 0.0 {
        r.server_cpu_s_per_million = r.server_cpu_s / millions;
        r.extra_cpu_s_per_million = r.extra_cpu_s / millions;
    }
    r.server_rss_kib = s1.rss_kib;
    r.other_cores_busy = ((s1.machine_busy_s - s0.machine_busy_s)
        - r.server_cpu_s
        - r.extra_cpu_s
        - r.generator_cpu_s)
        .max(0.0)
        / window_s;
    r.steal_cores = (s1.machine_steal_s - s0.machine_steal_s) / window_s;
    r.loadavg_end = s1.loadavg.clone();
    let cpus = crate::stats::allowed_cpus() as f64;
    r.generator_cpu_pct_total = r.generator_cpu_s / window_s * 100.0;
    judge_step(&mut r, layout.conns, connect, cpus, no_server);
    Ok(r)
}

/// A step is INVALID when it did not measure the planned load on the server: some planned
/// connections were refused or failed, the server closed connections the scenario did not
/// plan to lose, or the generator saturated its core(s). A missing --server-pid is noted but
/// does not invalidate the step.
fn judge_step(
    r: &mut StepResult,
    planned: usize,
    connect: &ConnectResult,
    cpus: f64,
    no_server: bool,
) {
    r.invalid_reasons.extend(connect_failure(connect, planned));
    r.invalid_reasons.extend(closes_failure(
        r.unexpected_closed,
        &r.unexpected_close_codes,
        planned,
    ));
    r.invalid_reasons.extend(saturation(
        r.generator_cpu_pct_max_worker,
        r.generator_cpu_pct_total,
        cpus,
    ));
    r.valid = r.invalid_reasons.is_empty();
    if no_server {
        r.invalid_reasons.push(NO_SERVER_NOTE.into());
    }
}

pub fn step_line(s: &StepResult) -> String {
    let mut l = format!(
        "  => offered {:.0} dlv/s, achieved {:.0} dlv/s, delivered {:.4}, dup {}, ooo {}, \
         p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, server {:.0}% CPU ({:.2} s/M), \
         generator {:.0}% (max worker {:.0}%), other load {:.2} cores",
        s.offered_deliveries_per_s,
        s.achieved_deliveries_per_s,
        s.delivered_ratio,
        s.duplicates,
        s.out_of_order,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency.p999_ms,
        s.latency.max_ms,
        s.server_cpu_pct,
        s.server_cpu_s_per_million,
        s.generator_cpu_pct_total,
        s.generator_cpu_pct_max_worker,
        s.other_cores_busy
    );
    if let Some(a) = &s.ack_latency {
        l.push_str(&format!(
            ", acks {:.0}/s (ratio {:.4}) ack p50 {:.2} p99 {:.2} ms",
            s.achieved_acks_per_s, s.ack_ratio, a.p50_ms, a.p99_ms
        ));
    }
    if s.errors > 0 {
        l.push_str(&format!(
            ", {} errors e.g. {:?}",
            s.errors,
            s.error_samples.first()
        ));
    }
    if !s.valid {
        l.push_str(&format!("  INVALID: {}", s.invalid_reasons.join("; ")));
    }
    l
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}
fn f2(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A Markdown table of every step of every run, plus connect/memory lines.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let any_steps = results.iter().any(|r| !r.steps.is_empty());
    if any_steps {
        out.push_str(
            "| run | scenario | msg/s | offered dlv/s | achieved dlv/s | delivered | dup | ooo | \
             p50 ms | p99 ms | p99.9 ms | max ms | acks/s | ack p99 ms | server CPU % | \
             server CPU s / M dlv | server RSS MiB | generator CPU % | other load (cores) | valid |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in results {
            for s in &r.steps {
                out.push_str(&format!(
                    "| {} | {}{} | {} | {} | {} | {:.4} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} (max worker {:.0}) | {:.2} | {} |\n",
                    r.label,
                    r.scenario,
                    if s.slow_stop { " (1% stopped)" } else { "" },
                    f0(s.rate_msgs_per_s),
                    f0(s.offered_deliveries_per_s),
                    f0(s.achieved_deliveries_per_s),
                    s.delivered_ratio,
                    s.duplicates,
                    s.out_of_order,
                    f2(s.latency.p50_ms),
                    f2(s.latency.p99_ms),
                    f2(s.latency.p999_ms),
                    f2(s.latency.max_ms),
                    if s.ack_latency.is_some() { f0(s.achieved_acks_per_s) } else { "-".into() },
                    s.ack_latency.as_ref().map(|a| f2(a.p99_ms)).unwrap_or_else(|| "-".into()),
                    f0(s.server_cpu_pct),
                    f2(s.server_cpu_s_per_million),
                    s.server_rss_kib / 1024,
                    s.generator_cpu_pct_total,
                    s.generator_cpu_pct_max_worker,
                    s.other_cores_busy,
                    match (s.valid, s.other_cores_busy > NOISY_CORES) {
                        (true, false) => "yes".to_string(),
                        (true, true) => "yes (noisy)".to_string(),
                        (false, _) => format!("INVALID: {}", s.invalid_reasons.join("; ")),
                    },
                ));
            }
        }
    }
    for r in results {
        let c = &r.connect;
        out.push_str(&format!(
            "\n{} {}: connected {}/{} in {:.3} s ({:.0} joins/s), connect+join p50 {} ms, p99 {} ms, max {} ms, generator {:.0}% (max worker {:.0}%){}",
            r.label,
            r.scenario,
            c.connected,
            r.layout.conns.max(c.attempted),
            c.elapsed_s,
            c.joins_per_s,
            f2(c.latency.p50_ms),
            f2(c.latency.p99_ms),
            f2(c.latency.max_ms),
            c.generator_cpu_pct_total,
            c.generator_cpu_pct_max_worker,
            if c.failed > 0 {
                format!(", {} failed (e.g. {})", c.failed, c.errors.first().cloned().unwrap_or_default())
            } else {
                String::new()
            }
        ));
        if let Some(m) = &r.memory {
            out.push_str(&format!(
                "\n{} {}: server RSS {:.1} MiB before connecting, {:.1} MiB with {} connections{} \
                 => {:.2} KiB RSS per connection (PSS {:.2} KiB)",
                r.label,
                r.scenario,
                m.rss_before_kib as f64 / 1024.0,
                m.rss_after_hold_kib.unwrap_or(m.rss_after_connect_kib) as f64 / 1024.0,
                m.conns,
                if m.rss_after_hold_kib.is_some() {
                    " (after the hold)"
                } else {
                    ""
                },
                m.rss_per_conn_kib,
                m.pss_per_conn_kib
            ));
        }
        if let Some(d) = &r.durable {
            out.push_str(&format!(
                "\n{} {}: acked {} / committed {} in {} rooms, {} rooms with gaps => {}",
                r.label,
                r.scenario,
                d.acked,
                d.committed,
                d.rooms,
                d.rooms_with_gaps,
                if d.ok {
                    "every acked message committed"
                } else {
                    "COMMIT CHECK FAILED"
                }
            ));
            if let (Some(rows), Some(rate), Some(ratio)) =
                (d.copy_rows, d.copy_rows_per_s, d.acks_vs_copy)
            {
                out.push_str(&format!(
                    "\n{} {}: raw COPY of {rows} rows: {:.0} rows/s; best acked rate is {:.0}% of it",
                    r.label,
                    r.scenario,
                    rate,
                    ratio * 100.0
                ));
            }
        }
    }
    for r in results.iter().filter(|r| !r.valid) {
        out.push_str(&format!(
            "\n{} {}: INVALID (not a result): {}",
            r.label,
            r.scenario,
            r.invalid_reasons.join("; ")
        ));
    }
    out.push('\n');
    out
}

/// Latency percentiles (log scale) against offered deliveries/s: one colour per run.
pub fn chart(results: &[RunResult], path: &str, title: &str) -> Result<()> {
    // A step that delivered nothing of its window has no latency to show (see the table).
    let pts: Vec<&StepResult> = results
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.latency.count > 0)
        .collect();
    if pts.is_empty() {
        bail!("nothing to chart");
    }
    let xmax = pts
        .iter()
        .map(|s| s.offered_deliveries_per_s)
        .fold(1.0, f64::max)
        * 1.08;
    let ymin = pts
        .iter()
        .map(|s| s.latency.p50_ms)
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 2.0;
    let ymax = pts.iter().map(|s| s.latency.p999_ms).fold(1.0, f64::max) * 2.0;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries / s")
        .y_desc("latency from scheduled send (ms, log)")
        .y_labels(14)
        .x_label_formatter(&|x| {
            if *x >= 10_000.0 {
                format!("{:.0}k", x / 1000.0)
            } else if *x >= 1000.0 {
                format!("{:.1}k", x / 1000.0)
            } else {
                format!("{x:.0}")
            }
        })
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    type Pick = fn(&Percentiles) -> f64;
    let percentiles: Vec<(&str, Pick, u32)> = if results.len() == 1 {
        vec![
            ("p50", |p| p.p50_ms, 1),
            ("p99", |p| p.p99_ms, 3),
            ("p99.9", |p| p.p999_ms, 1),
        ]
    } else {
        vec![("p50", |p| p.p50_ms, 1), ("p99", |p| p.p99_ms, 3)]
    };
    for (ri, r) in results.iter().enumerate() {
        for (pi, (name, pick, width)) in percentiles.iter().enumerate() {
            let color = if results.len() == 1 {
                Palette99::pick(pi).to_rgba()
            } else {
                Palette99::pick(ri).to_rgba()
            };
            let shown: Vec<&StepResult> = r.steps.iter().filter(|s| s.latency.count > 0).collect();
            let data: Vec<(f64, f64)> = shown
                .iter()
                .map(|s| (s.offered_deliveries_per_s, pick(&s.latency).max(ymin)))
                .collect();
            let style = color.stroke_width(*width);
            chart
                .draw_series(LineSeries::new(data.clone(), style))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(format!("{} {name}", r.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            let valid: Vec<bool> = shown.iter().map(|s| s.valid).collect();
            chart
                .draw_series(data.iter().zip(valid).map(|(p, ok)| {
                    if ok {
                        Circle::new(*p, 3, color.filled()).into_dyn()
                    } else {
                        Cross::new(*p, 5, color.stroke_width(2)).into_dyn()
                    }
                }))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Fetch a Prometheus text endpoint (plain HTTP/1.0, no client library).
pub fn scrape(url: &str) -> Result<BTreeMap<String, f64>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("metrics url must be http://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut s = std::net::TcpStream::connect(hostport).context("metrics endpoint")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let body = body.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let mut m = BTreeMap::new();
    for l in body.lines() {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), v);
            }
        }
    }
    Ok(m)
}

/// Counters (and histogram counts/sums) that moved during the run; gauges as they ended.
pub fn diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut d = BTreeMap::new();
    for (k, v) in after {
        let name = k.split('{').next().unwrap_or(k);
        if name.ends_with("_bucket") {
            continue;
        }
        let counter =
            name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum");
        let x = if counter {
            v - before.get(k).copied().unwrap_or(0.0)
        } else {
            *v
        };
        if x != 0.0 {
            d.insert(k.clone(), x);
        }
    }
    d
}

fn psql(db: &str, sql: &str) -> Result<String> {
    let out = std::process::Command::new("psql")
        .arg(db)
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every acked message of this run is in `messages`, and every room's seqs are exactly 1..=n.
/// Optionally time a raw COPY of as many rows into a scratch copy of the table.
pub fn verify_db(
    db: &str,
    run_id: &str,
    acked: u64,
    copy: bool,
    body_bytes: usize,
    best_acks_per_s: f64,
) -> Result<DurableCheck> {
    let like = format!("lt{run_id}-%");
    let counts = psql(
        db,
        &format!(
            "select count(*), count(distinct room_id) from messages where room_id like '{like}'"
        ),
    )?;
    let mut it = counts.split('|');
    let committed: u64 = it.next().unwrap_or("0").parse()?;
    let rooms: u64 = it.next().unwrap_or("0").parse()?;
    let gaps: u64 = psql(
        db,
        &format!(
            "select count(*) from (select room_id, count(*) c, min(seq) lo, max(seq) hi from messages \
             where room_id like '{like}' group by room_id) x where c <> hi or lo <> 1"
        ),
    )?
    .parse()?;
    let mut d = DurableCheck {
        acked,
        committed,
        rooms,
        rooms_with_gaps: gaps,
        ok: committed >= acked && gaps == 0,
        ..Default::default()
    };
    if copy {
        let rows = acked.max(10_000);
        let table = format!("lt_copy_{run_id}");
        psql(
            db,
            &format!(
                "drop table if exists {table}; create table {table} (like messages including defaults including constraints including indexes)"
            ),
        )?;
        let mut data = Vec::with_capacity(rows as usize * (body_bytes + 64));
        let body = "x".repeat(body_bytes);
        let ts = crate::stats::now_us() / 1000;
        for i in 0..rows {
            let room = i % 100;
            writeln!(
                data,
                "lt{run_id}-copy-{room}\t{}\tu{room}\tu{room}\tc{i}\t{body}\t{ts}",
                i / 100 + 1
            )?;
        }
        let t0 = Instant::now();
        let mut child = std::process::Command::new("psql")
            .arg(db)
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy {table} from pstdin"))
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(&data)?;
        let st = child.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        let _ = psql(db, &format!("drop table if exists {table}"));
        if !st.success() {
            bail!("COPY failed");
        }
        d.copy_rows = Some(rows);
        d.copy_s = Some(secs);
        d.copy_rows_per_s = Some(rows as f64 / secs);
        d.acks_vs_copy = Some(best_acks_per_s / (rows as f64 / secs));
    }
    Ok(d)
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

/// The best valid rate whose p99 stays within `limit_ms` with (almost) nothing lost.
pub fn best_rate(r: &RunResult, limit_ms: f64) -> Option<&StepResult> {
    r.steps
        .iter()
        .filter(|s| {
            s.valid && !s.slow_stop && s.latency.p99_ms <= limit_ms && s.delivered_ratio >= 0.999
        })
        .max_by(|a, b| {
            a.achieved_deliveries_per_s
                .total_cmp(&b.achieved_deliveries_per_s)
        })
}

#[derive(Serialize)]
struct Combined<'a> {
    date: String,
    p99_limits_ms: Vec<f64>,
    summary: Vec<serde_json::Value>,
    results: &'a [RunResult],
}

/// `report`: combine result files into one JSON, a Markdown table and a chart.
pub fn combine(
    inputs: &[String],
    json: Option<&str>,
    md: Option<&str>,
    svg: Option<&str>,
    limits_ms: &[f64],
    title: &str,
) -> Result<()> {
    let mut results = Vec::new();
    for p in inputs {
        let s = std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?;
        results
            .push(serde_json::from_str::<RunResult>(&s).with_context(|| format!("parsing {p}"))?);
    }
    let first = results
        .first()
        .map(|r| r.label.clone())
        .unwrap_or_else(|| "first".into());
    let mut summary = Vec::new();
    let mut text = table(&results);
    for &limit_ms in limits_ms {
        let base = results
            .first()
            .and_then(|r| best_rate(r, limit_ms))
            .map(|s| s.achieved_deliveries_per_s);
        text.push_str(&format!(
            "\n| run | best achieved deliveries/s with p99 <= {limit_ms} ms (valid, >= 99.9% delivered) | p99 there (ms) | server CPU s / M deliveries there | {first} / this |\n|---|---:|---:|---:|---:|\n"
        ));
        for r in &results {
            let b = best_rate(r, limit_ms);
            let ratio = match (base, b) {
                (Some(x), Some(y)) if y.achieved_deliveries_per_s > 0.0 => {
                    Some(x / y.achieved_deliveries_per_s)
                }
                _ => None,
            };
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.label,
                b.map(|s| f0(s.achieved_deliveries_per_s))
                    .unwrap_or_else(|| "none".into()),
                b.map(|s| f2(s.latency.p99_ms))
                    .unwrap_or_else(|| "-".into()),
                b.map(|s| f2(s.server_cpu_s_per_million))
                    .unwrap_or_else(|| "-".into()),
                ratio
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            ));
            summary.push(serde_json::json!({
                "label": r.label,
                "p99_limit_ms": limit_ms,
                "best_deliveries_per_s": b.map(|s| s.achieved_deliveries_per_s),
                "p99_ms": b.map(|s| s.latency.p99_ms),
                "server_cpu_s_per_million": b.map(|s| s.server_cpu_s_per_million),
                "first_over_this": ratio,
            }));
        }
    }
    println!("{text}");
    if let Some(p) = md {
        std::fs::write(p, &text)?;
    }
    if let Some(p) = json {
        let c = Combined {
            date: utc_now(),
            p99_limits_ms: limits_ms.to_vec(),
            summary,
            results: &results,
        };
        std::fs::write(p, serde_json::to_string_pretty(&c)?)?;
    }
    if let Some(p) = svg {
        chart(&results, p, title)?;
    }
    Ok(())
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

    fn layout(conns: usize) -> Layout {
        Layout {
            conns,
            groups: vec![crate::plan::Group {
                name: "rooms".into(),
                first_conn: 0,
                rooms: conns / 5,
                room_size: 5,
                senders: 5,
                share: 1.0,
                slow_every: 0,
            }],
        }
    }

    fn step() -> Step {
        Step {
            index: 0,
            rate: 1000.0,
            start_us: 0,
            window_start_us: 1_000_000,
            window_end_us: 11_000_000,
            drain_us: 0,
            slow_stop: false,
        }
    }

    fn worker_step(cpu_s: f64, unexpected: u64) -> StepReport {
        let empty = crate::stats::hist_to_b64(&new_hist());
        StepReport {
            expected: 50_000,
            delivered: 50_000,
            received_in_window: 50_000,
            cpu_s,
            closed: unexpected,
            close_codes: if unexpected > 0 {
                vec![(4000, unexpected)]
            } else {
                vec![]
            },
            unexpected_closed: unexpected,
            unexpected_close_codes: if unexpected > 0 {
                vec![(4000, unexpected)]
            } else {
                vec![]
            },
            hist: empty.clone(),
            ack_hist: empty,
            ..Default::default()
        }
    }

    /// What merge_connect makes of 10,000 planned connections of which 8,000 got HTTP 429.
    fn refused_connect() -> ConnectResult {
        let empty = crate::stats::hist_to_b64(&new_hist());
        let e = "upgrade refused: 429 Too Many Requests too many connections from this address";
        let reps = vec![
            ConnectReport {
                attempted: 5000,
                connected: 1000,
                failed: 4000,
                errors: vec![e.into()],
                error_counts: vec![(e.into(), 4000)],
                elapsed_us: 2_000_000,
                hist: empty.clone(),
                cpu_s: 0.5,
            },
            ConnectReport {
                attempted: 5000,
                connected: 1000,
                failed: 4000,
                errors: vec![e.into()],
                error_counts: vec![(e.into(), 3999), ("connect+join timed out".into(), 1)],
                elapsed_us: 1_000_000,
                hist: empty,
                cpu_s: 0.9,
            },
        ];
        merge_connect(&reps).unwrap()
    }

    #[test]
    fn refused_connections_make_every_step_invalid() {
        let c = refused_connect();
        assert_eq!((c.attempted, c.connected, c.failed), (10_000, 2000, 8000));
        assert_eq!(c.error_counts[0].1, 7999);
        assert_eq!(c.error_counts[1].1, 1);
        // The second worker used 90% of its core over its 1 s: not above the limit.
        assert!((c.generator_cpu_pct_max_worker - 90.0).abs() < 1e-9);
        let why = connect_failure(&c, 10_000).expect("refused connections are a failure");
        assert!(
            why.starts_with("8000 of 10000 planned connections refused"),
            "{why}"
        );
        assert!(why.contains("429"), "{why}");

        let r = step_result(
            &step(),
            &layout(10_000),
            &c,
            &[worker_step(1.0, 0)],
            ServerSample::default(),
            ServerSample::default(),
            false,
        )
        .unwrap();
        assert!(!r.valid);
        assert_eq!(r.invalid_reasons, vec![why.clone()]);
        assert!(table_for(r.clone()).contains("| INVALID: 8000 of 10000"));

        // Without --server-pid the note joins the step's reasons, not the run's verdict; the
        // step's copy of the connect reason is not repeated either.
        let quiet = step_result(
            &step(),
            &layout(10_000),
            &c,
            &[worker_step(1.0, 0)],
            ServerSample::default(),
            ServerSample::default(),
            true,
        )
        .unwrap();
        assert!(!quiet.valid);
        let c = ConnectResult {
            invalid_reasons: vec![why.clone()],
            ..c
        };
        assert_eq!(run_invalid_reasons(&c, &[], &[r, quiet]), vec![why]);
    }

    #[test]
    fn full_connect_quiet_generator_is_valid() {
        let c = ConnectResult {
            attempted: 10_000,
            connected: 10_000,
            ..Default::default()
        };
        assert!(connect_failure(&c, 10_000).is_none());
        // Fewer attempted than planned (a worker gave up) still counts as missing.
        assert!(connect_failure(&c, 10_005)
            .unwrap()
            .starts_with("5 of 10005"));
        let r = step_result(
            &step(),
            &layout(10_000),
            &c,
            &[worker_step(1.0, 0)],
            ServerSample::default(),
            ServerSample::default(),
            true,
        )
        .unwrap();
        // Without --server-pid the step is noted, not invalid (as before).
        assert!(r.valid, "{:?}", r.invalid_reasons);
        assert!(table_for(r).contains("| yes |"));
    }

    #[test]
    fn unplanned_closes_and_saturation_are_invalid() {
        let c = ConnectResult {
            attempted: 10_000,
            connected: 10_000,
            ..Default::default()
        };
        let r = step_result(
            &step(),
            &layout(10_000),
            &c,
            &[worker_step(1.0, 12)],
            ServerSample::default(),
            ServerSample::default(),
            false,
        )
        .unwrap();
        assert!(!r.valid);
        assert_eq!(
            r.invalid_reasons,
            vec!["12 of 10000 connections closed by the server during the run, unplanned (close codes 4000 x12)"]
        );
        // 9.5 s of CPU in a 10 s window: the worker measured itself.
        let r = step_result(
            &step(),
            &layout(10_000),
            &c,
            &[worker_step(9.5, 0)],
            ServerSample::default(),
            ServerSample::default(),
            false,
        )
        .unwrap();
        assert!(!r.valid);
        assert_eq!(
            r.invalid_reasons[0],
            "a generator worker used 95% of its core"
        );
        assert!(saturation(50.0, 50.0, 1.0).is_empty());
        assert_eq!(saturation(50.0, 185.0, 2.0).len(), 1);
    }

    fn table_for(s: StepResult) -> String {
        let r = RunResult {
            tool: String::new(),
            date: String::new(),
            run_id: String::new(),
            label: "chatty".into(),
            scenario: "many-rooms".into(),
            target: "chatty".into(),
            urls: vec![],
            workers: 1,
            generator_cpus: 1,
            loadavg_before: String::new(),
            loadavg_after: String::new(),
            note: String::new(),
            args: serde_json::Value::Null,
            layout: layout(10_000),
            connect: ConnectResult::default(),
            server_before_connect: ServerSample::default(),
            server_after_connect: ServerSample::default(),
            server_after_hold: None,
            memory: None,
            valid: s.valid,
            invalid_reasons: s.invalid_reasons.clone(),
            steps: vec![s],
            durable: None,
            metrics: None,
        };
        let t = table(std::slice::from_ref(&r));
        // The JSON carries the verdict too, and older files without it still parse.
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["valid"], serde_json::Value::Bool(r.valid));
        assert_eq!(j["steps"][0]["valid"], serde_json::Value::Bool(r.valid));
        let mut old = j.clone();
        old.as_object_mut().unwrap().remove("valid");
        old.as_object_mut().unwrap().remove("invalid_reasons");
        let back: RunResult = serde_json::from_value(old).unwrap();
        assert!(back.valid);
        t
    }

    #[test]
    fn counters_diff_and_gauges_pass() {
        let mut a = BTreeMap::new();
        a.insert("x_total".to_string(), 5.0);
        a.insert("g".to_string(), 1.0);
        let mut b = a.clone();
        b.insert("x_total".to_string(), 7.0);
        let d = diff(&a, &b);
        assert_eq!(d["x_total"], 2.0);
        assert_eq!(d["g"], 1.0);
    }
}

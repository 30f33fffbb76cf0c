//! Merging: the workers' connect and step reports (histograms as base64, counts, CPU) become
//! one `ConnectResult` and one `StepResult` per step, with the server's samples around the
//! window. Kept apart from the verdict and the rendering: this is the arithmetic.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use super::model::{ConnectResult, Percentiles, ServerSample, StepResult};
use super::verdict::judge_step;
use crate::plan::{ConnectReport, Layout, Step, StepReport};
use crate::stats::{hist_from_b64, new_hist};

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

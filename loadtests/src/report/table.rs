//! The text a person reads: the Markdown table of every step of every run (with the connect,
//! memory, commit-check and INVALID lines after it) and the one-line summary printed after
//! each step. Kept apart so the report's wording and number formats live in one place.

use super::model::{RunResult, StepResult};
use super::verdict::NOISY_CORES;

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

pub(super) fn f0(x: f64) -> String {
    format!("{x:.0}")
}
pub(super) fn f2(x: f64) -> String {
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

//! The `report` subcommand: read several result files, print one table with a "best rate"
//! comparison per latency goal (the first file is the reference), and write the combined
//! JSON, Markdown and chart. Kept apart because only `report` uses it, not `run`.

use anyhow::{Context, Result};
use serde::Serialize;

use super::chart::chart;
use super::model::{utc_now, RunResult, StepResult};
use super::table::{f0, f2, table};

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

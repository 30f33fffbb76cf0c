//! The coordinator: turns a scenario into a layout, re-executes this binary as worker
//! processes (each holds at most ~19k sockets: one process may open 20,000 files here), drives
//! the steps, samples the server's CPU and memory from /proc, merges the workers' histograms
//! and writes the JSON result, the table and the chart.
//!
//! This file is the run itself, phase by phase; the rest lives beside it, one file per job:
//! `args` (the `run` command line), `scenario` (each scenario's connection layout), `workers`
//! (the worker processes and the event pump), `sample` (the server's CPU and memory).

mod args;
mod sample;
mod scenario;
mod workers;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::plan::{CloseReport, Command, ConnectReport, Event, Step, StepReport};
use crate::report::{self, RunResult};
use crate::stats::{self, now_us};
use crate::target::Target;

pub use args::{RunArgs, EXIT_INVALID};
use sample::{memory_per_conn, sample};
use scenario::{build_layout, Scenario};
use workers::{send, start_workers};

/// Runs one scenario; `Ok(false)` when the run is INVALID (its results are still written).
pub fn run(a: RunArgs) -> Result<bool> {
    if a.body_bytes > 4000 {
        bail!("--body-bytes must stay under Chatty's 4096-byte body limit");
    }
    let layout = build_layout(&a)?;
    let workers = a.workers.max(layout.conns.div_ceil(19_000)).max(1);
    let run_id = format!("{:x}", now_us() / 1000 % 0xff_ffff_ffff);
    let label = a.label.clone().unwrap_or_else(|| a.target.name().into());
    eprintln!(
        "chatty-loadtest: {} against {} ({}), {} connections in {} worker(s), run {run_id}",
        a.scenario.name(),
        label,
        a.url.join(","),
        layout.conns,
        workers
    );
    let load_before = stats::loadavg();
    let metrics_before = a.metrics_url.as_deref().map(report::scrape);

    if a.private_rooms {
        let db = a
            .db_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--private-rooms needs --db-url"))?;
        report::make_private(db, &run_id, &layout.groups)?;
    }

    // Start the workers.
    let (mut ws, mut pump) = start_workers(&a, &layout, workers, &run_id)?;

    // Connect phase.
    let before_connect = sample(&a);
    let start_us = now_us() + 500_000;
    for w in ws.iter_mut() {
        send(w, &Command::Connect { start_us })?;
    }
    let reps: Vec<ConnectReport> = pump.wait(
        Duration::from_secs(600),
        |_, ev| match ev {
            Event::Connected(r) => Some(r),
            _ => None,
        },
        vec![],
    )?;
    let mut connect = report::merge_connect(&reps)?;
    connect
        .invalid_reasons
        .extend(report::connect_failure(&connect, layout.conns));
    if a.scenario == Scenario::Storm {
        // Storm's result is the connect phase itself: a saturated generator timed itself.
        connect.invalid_reasons.extend(report::saturation(
            connect.generator_cpu_pct_max_worker,
            connect.generator_cpu_pct_total,
            stats::allowed_cpus() as f64,
        ));
    }
    eprintln!(
        "  connected {}/{} in {:.3} s ({} failed), generator {:.0}% (max worker {:.0}%){}{}",
        connect.connected,
        layout.conns,
        connect.elapsed_s,
        connect.failed,
        connect.generator_cpu_pct_total,
        connect.generator_cpu_pct_max_worker,
        if connect.errors.is_empty() {
            String::new()
        } else {
            format!("; e.g. {}", connect.errors[0])
        },
        if connect.invalid_reasons.is_empty() {
            String::new()
        } else {
            format!("  INVALID: {}", connect.invalid_reasons.join("; "))
        }
    );
    // Let the server settle (presence coalescing, allocator) before reading its memory.
    std::thread::sleep(Duration::from_secs(2));
    let after_connect = sample(&a);
    let mut held = None;
    if matches!(a.scenario, Scenario::Idle) {
        std::thread::sleep(Duration::from_secs_f64(a.hold));
        held = Some(sample(&a));
    }
    // Idle and storm have no steps to carry the closes: ask the workers now. A connection
    // dropped before the memory sample or after its join makes those figures wrong.
    let mut run_reasons = Vec::new();
    if matches!(a.scenario, Scenario::Idle | Scenario::Storm) {
        for w in ws.iter_mut() {
            send(w, &Command::Closes)?;
        }
        let closes: Vec<CloseReport> = pump.wait(
            Duration::from_secs(60),
            |_, ev| match ev {
                Event::Closes(r) => Some(r),
                _ => None,
            },
            vec![],
        )?;
        let unexpected: u64 = closes.iter().map(|c| c.unexpected).sum();
        let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
        for (c, n) in closes.iter().flat_map(|c| c.unexpected_codes.iter()) {
            *codes.entry(*c).or_default() += n;
        }
        let codes: Vec<(u16, u64)> = codes.into_iter().collect();
        run_reasons.extend(report::closes_failure(unexpected, &codes, layout.conns));
    }

    // Steps.
    let mut steps = Vec::new();
    if !matches!(a.scenario, Scenario::Idle | Scenario::Storm) {
        let mut index = 0;
        for &rate in &a.rates {
            let phases: &[bool] = if a.scenario == Scenario::SlowConsumers {
                &[false, true]
            } else {
                &[false]
            };
            for &slow_stop in phases {
                let start = now_us() + 300_000;
                let ws_us = start + (a.warmup * 1e6) as u64;
                let step = Step {
                    index,
                    rate,
                    start_us: start,
                    window_start_us: ws_us,
                    window_end_us: ws_us + (a.duration * 1e6) as u64,
                    drain_us: (a.drain * 1e6) as u64,
                    slow_stop,
                };
                eprintln!(
                    "step {index}: {rate} msg/s{}",
                    if slow_stop {
                        " (slow members stop reading)"
                    } else {
                        ""
                    }
                );
                for w in ws.iter_mut() {
                    send(w, &Command::Step(step.clone()))?;
                }
                let mut s0 = None;
                let mut s1 = None;
                let (mut f0, mut f1) = (|| s0 = Some(sample(&a)), || s1 = Some(sample(&a)));
                let timeout = Duration::from_secs_f64(a.warmup + a.duration + a.drain + 60.0);
                let reps: Vec<StepReport> = pump.wait(
                    timeout,
                    |_, ev| match ev {
                        Event::StepDone(r) => Some(r),
                        _ => None,
                    },
                    vec![
                        (step.window_start_us, &mut f0),
                        (step.window_end_us, &mut f1),
                    ],
                )?;
                let r = report::step_result(
                    &step,
                    &layout,
                    &connect,
                    &reps,
                    s0.unwrap_or_default(),
                    s1.unwrap_or_default(),
                    a.server_pids.is_empty(),
                )?;
                eprintln!("{}", report::step_line(&r));
                steps.push(r);
                index += 1;
            }
        }
    }
    // Counters before the connections go away.
    let metrics = match (&metrics_before, a.metrics_url.as_deref()) {
        (Some(Ok(b)), Some(u)) => report::scrape(u).ok().map(|after| report::diff(b, &after)),
        _ => None,
    };
    for w in ws.iter_mut() {
        let _ = send(w, &Command::Quit);
    }
    for mut w in ws {
        let _ = w.child.wait();
    }

    let mut durable = None;
    if let Some(db) = &a.db_url {
        if a.target == Target::Chatty {
            let acked: u64 = steps.iter().map(|s| s.acks_total).sum();
            let best = steps
                .iter()
                .map(|s| s.achieved_acks_per_s)
                .fold(0.0, f64::max);
            durable = Some(report::verify_db(
                db,
                &run_id,
                acked,
                a.copy_compare,
                a.body_bytes,
                best,
            )?);
        }
    }

    let invalid_reasons = report::run_invalid_reasons(&connect, &run_reasons, &steps);
    let memory = memory_per_conn(
        &before_connect,
        &after_connect,
        held.as_ref(),
        connect.connected,
    );
    let result = RunResult {
        tool: format!("chatty-loadtest {}", env!("CARGO_PKG_VERSION")),
        date: report::utc_now(),
        run_id,
        label,
        scenario: a.scenario.name().into(),
        target: a.target.name().into(),
        urls: a.url.clone(),
        workers,
        generator_cpus: stats::allowed_cpus(),
        loadavg_before: load_before,
        loadavg_after: stats::loadavg(),
        note: a.note.clone(),
        args: serde_json::to_value(&a)?,
        layout: layout.clone(),
        connect,
        server_before_connect: before_connect.clone(),
        server_after_connect: after_connect.clone(),
        server_after_hold: held.clone(),
        memory,
        steps,
        durable,
        metrics,
        valid: invalid_reasons.is_empty(),
        invalid_reasons,
    };
    println!("{}", report::table(std::slice::from_ref(&result)));
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&result)?)?;
        eprintln!("wrote {p}");
    }
    if let Some(p) = &a.svg {
        if !result.steps.is_empty() {
            report::chart(
                std::slice::from_ref(&result),
                p,
                &format!("{} — {}", result.scenario, result.label),
            )?;
            eprintln!("wrote {p}");
        }
    }
    if !result.valid {
        eprintln!(
            "chatty-loadtest: {} against {} is INVALID, not a result: {}",
            result.scenario,
            result.label,
            result.invalid_reasons.join("; ")
        );
    }
    Ok(result.valid)
}

//! The verdict: when a step or a whole run is INVALID (refused connections, unplanned closes,
//! a saturated generator), the thresholds behind it, and the reasons written with it. Kept
//! apart because it decides what counts as a result; the merging and rendering only carry it.

use super::model::{ConnectResult, StepResult};
use super::table::f0;

/// A generator process above this share of its core is saturated: its numbers measure itself.
pub const GENERATOR_SATURATED: f64 = 0.90;
/// Other processes keeping more than this many cores busy during a window: the step is noisy.
pub const NOISY_CORES: f64 = 0.5;
/// Listed with a step's reasons but does not make it INVALID.
const NO_SERVER_NOTE: &str = "no --server-pid: server CPU and memory not measured";

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

/// A step is INVALID when it did not measure the planned load on the server: some planned
/// connections were refused or failed, the server closed connections the scenario did not
/// plan to lose, or the generator saturated its core(s). A missing --server-pid is noted but
/// does not invalidate the step.
pub(super) fn judge_step(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ConnectReport, Layout, Step, StepReport};
    use crate::report::merge::{merge_connect, step_result};
    use crate::report::model::{RunResult, ServerSample};
    use crate::report::table::table;
    use crate::stats::new_hist;

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
}

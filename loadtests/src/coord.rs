//! The coordinator: turns a scenario into a layout, re-executes this binary as worker
//! processes (each holds at most ~19k sockets: one process may open 20,000 files here), drives
//! the steps, samples the server's CPU and memory from /proc, merges the workers' histograms
//! and writes the JSON result, the table and the chart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::plan::{
    CloseReport, Command, ConnectReport, Event, Group, Layout, Step, StepReport, WorkerSpec,
};
use crate::report::{self, RunResult, ServerSample};
use crate::stats::{self, now_us};
use crate::target::Target;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N connections, each joined to a room of --room-size, held for --hold seconds; server
    /// memory per connection from its RSS before and after.
    Idle,
    /// One room, N members, --senders of them sending; rates are messages/s into the room.
    HotRoom,
    /// Rooms of --room-size (5), every member sends in turn; rates are total messages/s.
    ManyRooms,
    /// N connect+join as fast as --connect-concurrency allows; time to the last join.
    Storm,
    /// N senders, each alone in its room; acks/s and send→ack latency; commit check with --db-url.
    Durable,
    /// A hot room where --slow-fraction of the members stop reading in every second step.
    SlowConsumers,
    /// A hot room whose members are spread over every --url (one per node).
    Cluster,
    /// A hot room of --hot-members taking --hot-share of the messages, the rest in rooms of 5.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::HotRoom => "hot-room",
            Scenario::ManyRooms => "many-rooms",
            Scenario::Storm => "storm",
            Scenario::Durable => "durable",
            Scenario::SlowConsumers => "slow-consumers",
            Scenario::Cluster => "cluster",
            Scenario::Mixed => "mixed",
        }
    }
}

#[derive(Args, Clone, Debug, Serialize)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "chatty")]
    pub target: Target,
    /// Server WebSocket URL; repeat or comma-separate for several nodes (connections are spread
    /// round-robin). Chatty: ws://127.0.0.1:8080/ws.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// Connections (members) in total.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Offered message rates (messages/s, all rooms together), one step each.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rates: Vec<f64>,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Seconds of sending before the measurement window of each step.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds after a step to wait for late deliveries (counted as lost after that).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Sending members per room (hot room, slow consumers, cluster, mixed's hot room).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Members per room (idle, storm, many rooms, mixed).
    #[arg(long, default_value_t = 5)]
    pub room_size: usize,
    /// Body size in bytes (at least the ~40-byte timing header).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Slow consumers: fraction of the room that stops reading.
    #[arg(long, default_value_t = 0.01)]
    pub slow_fraction: f64,
    /// Slow consumers: their SO_RCVBUF in bytes (small, so the server feels them quickly).
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: usize,
    /// Mixed: members of the hot room.
    #[arg(long, default_value_t = 1000)]
    pub hot_members: usize,
    /// Mixed: share of the messages that go to the hot room.
    #[arg(long, default_value_t = 0.1)]
    pub hot_share: f64,
    /// Idle: seconds to hold the connections after they are all joined.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Worker processes (0: one per 19,000 connections).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Server processes to sample (/proc/<pid>/stat and status); repeatable.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Also sum the CPU of every process with this command name (e.g. `postgres`).
    #[arg(long)]
    pub extra_cpu_comm: Option<String>,
    /// Chatty's Prometheus endpoint; counters are diffed over the run.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// PostgreSQL URL (for psql) to check that every acked message is committed, gap-free.
    #[arg(long)]
    pub db_url: Option<String>,
    /// Durable: also time a raw COPY of as many rows into a scratch copy of `messages`.
    #[arg(long)]
    pub copy_compare: bool,
    #[arg(
        long,
        env = "CHATTY_LOADTEST_JWT_SECRET",
        default_value = "local-development-secret-change-me",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub jwt_secret: String,
    /// A name for this run in tables and charts (default: the target).
    #[arg(long)]
    pub label: Option<String>,
    /// Free text recorded in the result (settings, pinning, load seen).
    #[arg(long, default_value = "")]
    pub note: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<String>,
    /// Write an SVG chart (latency percentiles against offered load) here.
    #[arg(long)]
    pub svg: Option<String>,
    /// Exit 0 even when a step (or the connect phase) is INVALID; without it such a run exits
    /// with status 3 after writing its table, JSON and chart.
    #[arg(long)]
    pub allow_invalid: bool,
}

/// Exit status of `run` when the run is INVALID (and --allow-invalid is not given).
pub const EXIT_INVALID: i32 = 3;

fn build_layout(a: &RunArgs) -> Result<Layout> {
    let n = a.conns;
    let hot = |name: &str, first: usize, members: usize, share: f64, slow_every: usize| Group {
        name: name.into(),
        first_conn: first,
        rooms: 1,
        room_size: members,
        senders: a.senders.min(members).max(1),
        share,
        slow_every,
    };
    let rooms = |name: &str, first: usize, conns: usize, share: f64, senders: usize| {
        let size = a.room_size.max(1);
        Group {
            name: name.into(),
            first_conn: first,
            rooms: (conns / size).max(1),
            room_size: size.min(conns.max(1)),
            senders,
            share,
            slow_every: 0,
        }
    };
    let groups = match a.scenario {
        Scenario::HotRoom | Scenario::Cluster => vec![hot("hot", 0, n, 1.0, 0)],
        Scenario::SlowConsumers => {
            let every = if a.slow_fraction > 0.0 {
                (1.0 / a.slow_fraction).round().max(2.0) as usize
            } else {
                0
            };
            vec![hot("hot", 0, n, 1.0, every)]
        }
        Scenario::ManyRooms => vec![rooms("rooms", 0, n, 1.0, a.room_size.max(1))],
        Scenario::Idle | Scenario::Storm => vec![rooms("idle", 0, n, 0.0, 0)],
        Scenario::Durable => vec![Group {
            name: "durable".into(),
            first_conn: 0,
            rooms: n.max(1),
            room_size: 1,
            senders: 1,
            share: 1.0,
            slow_every: 0,
        }],
        Scenario::Mixed => {
            let h = a.hot_members.min(n);
            let mut g = vec![hot("hot", 0, h, a.hot_share, 0)];
            if n - h >= a.room_size {
                g.push(rooms(
                    "rooms",
                    h,
                    n - h,
                    1.0 - a.hot_share,
                    a.room_size.max(1),
                ));
            }
            g
        }
    };
    let conns = groups
        .iter()
        .map(|g| g.first_conn + g.conns())
        .max()
        .unwrap_or(0);
    Ok(Layout { conns, groups })
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

fn send(w: &mut Worker, cmd: &Command) -> Result<()> {
    let line = serde_json::to_string(cmd)?;
    writeln!(w.stdin, "{line}")?;
    w.stdin.flush()?;
    Ok(())
}

fn sample(a: &RunArgs) -> ServerSample {
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

/// Wait for one event from each worker matching `pick`, printing progress meanwhile; runs
/// `at` callbacks when their time comes.
struct Pump {
    rx: mpsc::Receiver<(usize, Event)>,
    workers: usize,
    progress: BTreeMap<(usize, u64), Vec<Option<Event>>>,
}

impl Pump {
    fn wait<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(usize, Event) -> Option<T>,
        mut timers: Vec<(u64, &mut dyn FnMut())>,
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.workers).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let now = now_us();
            timers.retain_mut(|(t, f)| {
                if *t <= now {
                    f();
                    false
                } else {
                    true
                }
            });
            let mut wait = Duration::from_millis(100);
            if let Some(t) = timers.iter().map(|(t, _)| *t).min() {
                wait = wait.min(Duration::from_micros(t.saturating_sub(now)));
            }
            if Instant::now() > deadline {
                bail!("workers did not answer in {timeout:?}");
            }
            match self.rx.recv_timeout(wait) {
                Ok((w, ev)) => {
                    if let Event::Progress { step, second, .. } = &ev {
                        let slot = self
                            .progress
                            .entry((*step, *second))
                            .or_insert_with(|| vec![None; self.workers]);
                        slot[w] = Some(ev.clone());
                        if slot.iter().all(Option::is_some) {
                            let evs: Vec<Event> = self
                                .progress
                                .remove(&(*step, *second))
                                .unwrap()
                                .into_iter()
                                .flatten()
                                .collect();
                            print_progress(&evs);
                        }
                        continue;
                    }
                    if let Some(t) = pick(w, ev) {
                        got[w] = Some(t);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("a worker exited"),
            }
        }
        for (_, f) in timers.iter_mut() {
            f();
        }
        Ok(got.into_iter().flatten().collect())
    }
}

fn print_progress(evs: &[Event]) {
    let (mut sent, mut recv, mut acks, mut p50, mut p99, mut max, mut closed) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut step = 0;
    let mut second = 0;
    for e in evs {
        if let Event::Progress {
            step: s,
            second: sec,
            sent: a,
            received: b,
            acks: c,
            p50_us,
            p99_us,
            max_us,
            closed: cl,
        } = e
        {
            step = *s;
            second = *sec;
            sent += a;
            recv += b;
            acks += c;
            p50 = p50.max(*p50_us);
            p99 = p99.max(*p99_us);
            max = max.max(*max_us);
            closed += cl;
        }
    }
    eprintln!(
        "  step {step} t={second:>3}s  sent {sent:>9}  deliveries/s {recv:>8}  acks/s {acks:>7}  \
         p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  closed {closed}",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        max as f64 / 1000.0
    );
}

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

    // Start the workers.
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel();
    let mut ws = Vec::new();
    for index in 0..workers {
        let mut child = std::process::Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        if tx.send((index, ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("worker {index}: {e}: {line}"),
                }
            }
        });
        let stdin = child.stdin.take().expect("piped");
        let mut w = Worker { child, stdin };
        let spec = WorkerSpec {
            index,
            workers,
            target: a.target,
            urls: a.url.clone(),
            layout: layout.clone(),
            run_id: run_id.clone(),
            jwt_secret: a.jwt_secret.clone(),
            body_bytes: a.body_bytes,
            connect_concurrency: a.connect_concurrency,
            connect_timeout_ms: a.connect_timeout_ms,
            slow_rcvbuf: a.slow_rcvbuf,
        };
        let line = serde_json::to_string(&spec)?;
        writeln!(w.stdin, "{line}")?;
        w.stdin.flush()?;
        ws.push(w);
    }
    drop(tx);
    let mut pump = Pump {
        rx,
        workers,
        progress: BTreeMap::new(),
    };

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

fn memory_per_conn(
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

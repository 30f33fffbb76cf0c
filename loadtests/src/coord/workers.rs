//! The worker processes seen from the coordinator: start them (this binary re-executed as
//! `worker`, one reader thread per worker turning its stdout into events), send them
//! commands, and wait for their answers while printing their per-second progress. Kept apart
//! because it is the coordinator's only inter-process plumbing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::args::RunArgs;
use crate::plan::{Command, Event, Layout, WorkerSpec};
use crate::stats::now_us;

pub(super) struct Worker {
    pub(super) child: Child,
    stdin: ChildStdin,
}

pub(super) fn send(w: &mut Worker, cmd: &Command) -> Result<()> {
    let line = serde_json::to_string(cmd)?;
    writeln!(w.stdin, "{line}")?;
    w.stdin.flush()?;
    Ok(())
}

/// Start `workers` worker processes and send each its spec; their events arrive through the
/// returned pump.
pub(super) fn start_workers(
    a: &RunArgs,
    layout: &Layout,
    workers: usize,
    run_id: &str,
) -> Result<(Vec<Worker>, Pump)> {
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
            run_id: run_id.to_string(),
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
    Ok((
        ws,
        Pump {
            rx,
            workers,
            progress: BTreeMap::new(),
        },
    ))
}

/// Wait for one event from each worker matching `pick`, printing progress meanwhile; runs
/// `at` callbacks when their time comes.
pub(super) struct Pump {
    rx: mpsc::Receiver<(usize, Event)>,
    workers: usize,
    progress: BTreeMap<(usize, u64), Vec<Option<Event>>>,
}

impl Pump {
    pub(super) fn wait<T>(
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

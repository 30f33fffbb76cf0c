//! A worker process: holds its share of the connections (connection `c` belongs to worker
//! `c % workers`), sends its share of the schedule, and measures what its sockets receive.
//!
//! One thread, one current-thread runtime: the receive path is a readiness wait, one `read`
//! into a shared scratch buffer, in-place frame parsing and a byte scan for the body. Commands
//! arrive as JSON lines on stdin; events leave as JSON lines on stdout.
//!
//! This file holds the worker's shared state (its counters, the connections' senders, the
//! room names) and its command loop; what is done with that state lives beside it, one file
//! per job: `connect` (dial, upgrade, join), `recv` (the per-connection read loop and the
//! measurement of every delivery), `step` (one step: the open-loop sender and the progress
//! ticker).

mod connect;
mod recv;
mod step;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::plan::{CloseReport, Command, Event, WorkerSpec};
use crate::stats::{new_hist, now_us};
use crate::target::Target;

use connect::connect_all;
pub use connect::mint_token;
use step::run_step;

fn emit(ev: &Event) {
    let line = serde_json::to_string(ev).expect("events serialize");
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A tokio instant for a unix-µs time.
fn instant_at(us: u64) -> Instant {
    let now = now_us();
    let base = Instant::now();
    if us > now {
        base + Duration::from_micros(us - now)
    } else {
        base
    }
}

#[derive(Default)]
struct Stats {
    hist: Option<Histogram<u64>>,
    ack_hist: Option<Histogram<u64>>,
    iv_hist: Option<Histogram<u64>>,
    delivered: u64,
    received_in_window: u64,
    acks: u64,
    acks_in_window: u64,
    acks_window_sched: u64,
    duplicates: u64,
    out_of_order: u64,
    errors: u64,
    error_samples: Vec<String>,
    closed: u64,
    close_codes: HashMap<u16, u64>,
    /// Closes the scenario did not plan for (see `read_loop`).
    unexpected_closed: u64,
    unexpected_close_codes: HashMap<u16, u64>,
    sent: u64,
    sent_total: u64,
    max_lag: u64,
    iv_received: u64,
    iv_acks: u64,
}

impl Stats {
    fn reset(&mut self) {
        let closed = self.closed;
        let close_codes = std::mem::take(&mut self.close_codes);
        let unexpected_closed = self.unexpected_closed;
        let unexpected_close_codes = std::mem::take(&mut self.unexpected_close_codes);
        let sent_total = self.sent_total;
        *self = Stats {
            hist: Some(new_hist()),
            ack_hist: Some(new_hist()),
            iv_hist: Some(new_hist()),
            closed,
            close_codes,
            unexpected_closed,
            unexpected_close_codes,
            sent_total,
            ..Default::default()
        };
    }

    fn close_report(&self) -> CloseReport {
        CloseReport {
            closed: self.closed,
            close_codes: sorted_codes(&self.close_codes),
            unexpected: self.unexpected_closed,
            unexpected_codes: sorted_codes(&self.unexpected_close_codes),
        }
    }

    fn error(&mut self, what: &[u8]) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            let s = String::from_utf8_lossy(&what[..what.len().min(200)]).into_owned();
            self.error_samples.push(s);
        }
    }
}

fn sorted_codes(m: &HashMap<u16, u64>) -> Vec<(u16, u64)> {
    let mut v: Vec<(u16, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort();
    v
}

struct Shared {
    spec: WorkerSpec,
    target: Target,
    st: RefCell<Stats>,
    /// Measurement window, unix µs.
    window: Cell<(u64, u64)>,
    slow_stop: Cell<bool>,
    senders: RefCell<HashMap<usize, mpsc::UnboundedSender<Vec<u8>>>>,
    /// Per group, per room: how many of its counted (not slow) members this worker holds.
    local_members: Vec<Vec<u32>>,
    room_names: Vec<Vec<String>>,
    finders: Finders,
}

struct Finders {
    body: Finder<'static>,
    crlf: Finder<'static>,
}

pub fn main() -> Result<()> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let spec: WorkerSpec = serde_json::from_str(&line).context("worker spec")?;
    let (tx, rx) = mpsc::unbounded_channel::<Command>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(c) => {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("worker: bad command: {e}"),
            }
        }
        let _ = tx.send(Command::Quit);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(spec, rx))?;
    // Sockets close with the process; do not wait for every task to wind down.
    std::process::exit(0);
}

async fn run(spec: WorkerSpec, mut rx: mpsc::UnboundedReceiver<Command>) -> Result<()> {
    let layout = &spec.layout;
    let mut local_members = Vec::new();
    let mut room_names = Vec::new();
    for g in &layout.groups {
        let mut counts = vec![0u32; g.rooms];
        let mut names = Vec::with_capacity(g.rooms);
        for (room, count) in counts.iter_mut().enumerate() {
            for m in 0..g.room_size {
                let c = g.first_conn + room * g.room_size + m;
                if c % spec.workers == spec.index && !g.is_slow(m) {
                    *count += 1;
                }
            }
            names.push(spec.room_name(g, room));
        }
        local_members.push(counts);
        room_names.push(names);
    }
    let sh = Rc::new(Shared {
        target: spec.target,
        spec,
        st: RefCell::new(Stats::default()),
        window: Cell::new((u64::MAX, u64::MAX)),
        slow_stop: Cell::new(false),
        senders: RefCell::new(HashMap::new()),
        local_members,
        room_names,
        finders: Finders {
            body: Finder::new(br#""body":""#),
            crlf: Finder::new(b"\r\n"),
        },
    });
    sh.st.borrow_mut().reset();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Connect { start_us } => {
                let r = connect_all(&sh, start_us).await?;
                emit(&Event::Connected(r));
            }
            Command::Step(step) => {
                let r = run_step(&sh, step).await;
                emit(&Event::StepDone(r));
            }
            Command::Closes => {
                let r = sh.st.borrow().close_report();
                emit(&Event::Closes(r));
            }
            Command::Quit => break,
        }
    }
    Ok(())
}

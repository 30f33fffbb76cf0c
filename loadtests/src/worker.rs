//! A worker process: holds its share of the connections (connection `c` belongs to worker
//! `c % workers`), sends its share of the schedule, and measures what its sockets receive.
//!
//! One thread, one current-thread runtime: the receive path is a readiness wait, one `read`
//! into a shared scratch buffer, in-place frame parsing and a byte scan for the body. Commands
//! arrive as JSON lines on stdin; events leave as JSON lines on stdout.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::plan::{CloseReport, Command, ConnectReport, Event, Step, StepReport, WorkerSpec};
use crate::stats::{self, hist_to_b64, new_hist, now_us};
use crate::target::{make_body, parse_body, parse_u64, Target};
use crate::ws::{self, WsUrl, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

const SCRATCH: usize = 256 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; SCRATCH]);
}

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

struct ConnState {
    /// Last counter seen per sender.
    last: Vec<(u32, u64)>,
    /// NATS is a byte stream over WebSocket frames.
    nats: Vec<u8>,
    /// Replies to queue (pongs).
    out: Vec<u8>,
    record: bool,
    close_code: Option<u16>,
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

fn mint(secret: &str, user: &str) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        name: &'a str,
        exp: u64,
    }
    let exp = now_us() / 1_000_000 + 6 * 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            name: user,
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| anyhow!("minting a token: {e}"))
}

pub fn mint_token(secret: &str, user: &str) -> Result<String> {
    mint(secret, user)
}

struct Dial {
    url: WsUrl,
    addr: SocketAddr,
}

async fn connect_all(sh: &Rc<Shared>, start_us: u64) -> Result<ConnectReport> {
    let spec = &sh.spec;
    let mut dials = Vec::new();
    for u in &spec.urls {
        let url = sh.target.url(&WsUrl::parse(u)?);
        let addr = tokio::net::lookup_host(url.addr())
            .await?
            .next()
            .ok_or_else(|| anyhow!("cannot resolve {}", url.addr()))?;
        dials.push(Rc::new(Dial { url, addr }));
    }
    let mine: Vec<usize> = (0..spec.layout.conns)
        .filter(|c| c % spec.workers == spec.index)
        .collect();
    let mut tokens = Vec::with_capacity(mine.len());
    for &c in &mine {
        tokens.push(if sh.target == Target::Chatty {
            Some(mint(&spec.jwt_secret, &format!("lt{}-u{c}", spec.run_id))?)
        } else {
            None
        });
    }
    tokio::time::sleep_until(instant_at(start_us)).await;
    let cpu0 = stats::self_cpu_s();
    let sem = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<u64, String>>();
    for (c, token) in mine.iter().copied().zip(tokens) {
        let g = spec.layout.group_of(c);
        let gi = spec
            .layout
            .groups
            .iter()
            .position(|x| x.name == g.name)
            .unwrap_or(0);
        let member = g.member_of(c);
        let room = sh.room_names[gi][g.room_of(c)].clone();
        let slow = g.is_slow(member);
        let sender = member < g.senders && g.share > 0.0;
        let dial = dials[c % dials.len()].clone();
        let sh = sh.clone();
        let sem = sem.clone();
        let done_tx = done_tx.clone();
        tokio::task::spawn_local(async move {
            let permit = sem.acquire().await;
            let t0 = Instant::now();
            let timeout = Duration::from_millis(sh.spec.connect_timeout_ms);
            let r = tokio::time::timeout(
                timeout,
                connect_one(&sh, &dial, token.as_deref(), &room, slow, timeout),
            )
            .await;
            drop(permit);
            let (stream, carry) = match r {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    let _ = done_tx.send(Err(format!("{e:#}")));
                    return;
                }
                Err(_) => {
                    let _ = done_tx.send(Err("connect+join timed out".into()));
                    return;
                }
            };
            let rx = if sender {
                let (tx, rx) = mpsc::unbounded_channel();
                sh.senders.borrow_mut().insert(c, tx);
                Some(rx)
            } else {
                None
            };
            let _ = done_tx.send(Ok(t0.elapsed().as_micros() as u64));
            drop(done_tx);
            read_loop(sh, stream, carry, rx, slow).await;
        });
    }
    drop(done_tx);
    let mut rep = ConnectReport {
        attempted: mine.len(),
        ..Default::default()
    };
    let mut hist = new_hist();
    let mut kinds: Vec<(String, u64)> = Vec::new();
    for _ in 0..mine.len() {
        match done_rx.recv().await {
            Some(Ok(us)) => {
                rep.connected += 1;
                hist.saturating_record(us.max(1));
            }
            Some(Err(e)) => {
                rep.failed += 1;
                count_error(&mut kinds, &e);
                if rep.errors.len() < 8 {
                    rep.errors.push(e);
                }
            }
            None => break,
        }
    }
    rep.elapsed_us = now_us().saturating_sub(start_us);
    rep.cpu_s = stats::self_cpu_s() - cpu0;
    rep.hist = hist_to_b64(&hist);
    rep.error_counts = kinds;
    Ok(rep)
}

/// Distinct failure reasons kept with a count each.
const ERROR_KINDS: usize = 16;

fn count_error(kinds: &mut Vec<(String, u64)>, e: &str) {
    let e = if e.len() > 160 {
        // Keep a char boundary.
        let mut end = 160;
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        &e[..end]
    } else {
        e
    };
    if let Some(k) = kinds.iter_mut().find(|(k, _)| k == e) {
        k.1 += 1;
    } else if kinds.len() < ERROR_KINDS {
        kinds.push((e.to_string(), 1));
    } else if let Some(k) = kinds.iter_mut().find(|(k, _)| k == "other") {
        k.1 += 1;
    } else {
        kinds.push(("other".into(), 1));
    }
}

async fn connect_one(
    sh: &Shared,
    dial: &Dial,
    token: Option<&str>,
    room: &str,
    slow: bool,
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>)> {
    let sock = if dial.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if slow && sh.spec.slow_rcvbuf > 0 {
        sock.set_recv_buffer_size(sh.spec.slow_rcvbuf as u32)?;
    }
    let mut s = sock.connect(dial.addr).await?;
    s.set_nodelay(true)?;
    let auth;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = token {
        auth = format!("Bearer {t}");
        headers.push(("Authorization", &auth));
        headers.push(("Sec-WebSocket-Protocol", "chatty.v1.json"));
    }
    let (mut carry, _) = ws::handshake(&mut s, &dial.url, &headers).await?;
    sh.target.join(&mut s, &mut carry, room, timeout).await?;
    Ok((s, carry))
}

enum Wake {
    Write(Vec<u8>),
    SendersGone,
    Readable(std::io::Result<()>),
}

async fn read_loop(
    sh: Rc<Shared>,
    mut s: TcpStream,
    carry: Vec<u8>,
    mut rx: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    slow: bool,
) {
    let mut cs = ConnState {
        last: Vec::new(),
        nats: Vec::new(),
        out: Vec::new(),
        record: !slow,
        close_code: None,
    };
    let mut carry = carry;
    let mut wbuf: Vec<u8> = Vec::new();
    // Frames that arrived with the join reply.
    let ok = carry.is_empty() || process(&sh, &mut cs, &mut carry, None).is_ok();
    while ok && cs.close_code.is_none() {
        if slow && sh.slow_stop.get() {
            // A slow consumer: stop reading for good; the kernel buffers fill up.
            std::future::pending::<()>().await;
        }
        let wake = match rx.as_mut() {
            Some(r) => tokio::select! {
                biased;
                m = r.recv() => match m { Some(f) => Wake::Write(f), None => Wake::SendersGone },
                x = s.readable() => Wake::Readable(x),
            },
            None => Wake::Readable(s.readable().await),
        };
        match wake {
            Wake::Write(f) => {
                wbuf.clear();
                wbuf.extend_from_slice(&f);
                if let Some(r) = rx.as_mut() {
                    while let Ok(f) = r.try_recv() {
                        wbuf.extend_from_slice(&f);
                        if wbuf.len() > 256 * 1024 {
                            break;
                        }
                    }
                }
                if s.write_all(&wbuf).await.is_err() {
                    break;
                }
                continue;
            }
            Wake::SendersGone => {
                rx = None;
                continue;
            }
            Wake::Readable(Err(_)) => break,
            Wake::Readable(Ok(())) => {}
        }
        match process(&sh, &mut cs, &mut carry, Some(&s)) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        if !cs.out.is_empty() {
            let out = std::mem::take(&mut cs.out);
            if s.write_all(&out).await.is_err() {
                break;
            }
        }
        if cs.close_code.is_some() {
            break;
        }
    }
    // Only the server (or the network) ends a connection while the worker runs: the worker
    // never closes one itself. A slow consumer that has stopped reading may be dropped (4000
    // from Chatty), which is what that scenario provokes; any other close is unplanned.
    let code = cs.close_code.unwrap_or(1006);
    let planned = slow && sh.slow_stop.get();
    let mut st = sh.st.borrow_mut();
    st.closed += 1;
    *st.close_codes.entry(code).or_default() += 1;
    if !planned {
        st.unexpected_closed += 1;
        *st.unexpected_close_codes.entry(code).or_default() += 1;
    }
}

/// Read what is there (when `s` is given) and handle every complete frame. `Ok(false)`: EOF.
fn process(
    sh: &Shared,
    cs: &mut ConnState,
    carry: &mut Vec<u8>,
    s: Option<&TcpStream>,
) -> Result<bool> {
    SCRATCH_BUF.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let k = carry.len();
        if k > buf.len() / 2 {
            let n = (k * 2).max(SCRATCH);
            buf.resize(n, 0);
        }
        buf[..k].copy_from_slice(carry);
        let mut len = k;
        let mut eof = false;
        if let Some(s) = s {
            match s.try_read(&mut buf[k..]) {
                Ok(0) => eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let now = now_us();
        let mut st = sh.st.borrow_mut();
        let mut off = 0;
        while let Some((fr, total)) = ws::parse_frame(&buf[off..len])? {
            let payload = &buf[off + fr.start..off + fr.end];
            match fr.opcode {
                OP_TEXT | OP_BINARY | OP_CONT => on_payload(sh, cs, &mut st, payload, now),
                OP_PING => ws::put_frame(&mut cs.out, OP_PONG, payload),
                OP_CLOSE => {
                    cs.close_code = Some(if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    });
                }
                _ => {}
            }
            off += total;
        }
        carry.clear();
        carry.extend_from_slice(&buf[off..len]);
        if carry.capacity() > 64 * 1024 && carry.len() < 1024 {
            carry.shrink_to(4096);
        }
        Ok(!eof)
    })
}

#[inline]
fn on_payload(sh: &Shared, cs: &mut ConnState, st: &mut Stats, p: &[u8], now: u64) {
    match sh.target {
        Target::Chatty | Target::Bare => {
            if p.starts_with(br#"{"type":"message""#) {
                if let Some(i) = sh.finders.body.find(p) {
                    delivery(sh, cs, st, &p[i + 8..], now);
                }
            } else if let Some(r) = p.strip_prefix(br#"{"type":"ack","ref":""#) {
                if !cs.record {
                    return;
                }
                let (ws, we) = sh.window.get();
                st.acks += 1;
                st.iv_acks += 1;
                if now >= ws && now < we {
                    st.acks_in_window += 1;
                }
                if let Some(sched) = parse_u64(r) {
                    if sched >= ws && sched < we {
                        st.acks_window_sched += 1;
                        if let Some(h) = st.ack_hist.as_mut() {
                            h.saturating_record(now.saturating_sub(sched).max(1));
                        }
                    }
                }
            } else if p.starts_with(br#"{"type":"error""#) {
                st.error(p);
            }
        }
        Target::Socketio => {
            if let Some(b) = p.strip_prefix(br#"42["msg",""#) {
                delivery(sh, cs, st, b, now);
            } else if p == b"2" {
                ws::put_frame(&mut cs.out, OP_TEXT, b"3");
            }
        }
        Target::Nats => {
            cs.nats.extend_from_slice(p);
            let mut off = 0;
            loop {
                let rest = &cs.nats[off..];
                let Some(eol) = sh.finders.crlf.find(rest) else {
                    break;
                };
                let line = &rest[..eol];
                if line.starts_with(b"MSG ") {
                    // MSG <subject> <sid> [reply-to] <#bytes>
                    let n = line
                        .rsplit(|b| *b == b' ')
                        .next()
                        .and_then(parse_u64)
                        .unwrap_or(0) as usize;
                    if rest.len() < eol + 2 + n + 2 {
                        break;
                    }
                    let body = &rest[eol + 2..eol + 2 + n];
                    // Borrow juggling: copy the small body out of cs.nats.
                    let body = body.to_vec();
                    delivery(sh, cs, st, &body, now);
                    off += eol + 2 + n + 2;
                    continue;
                } else if line == b"PING" {
                    ws::put_frame(&mut cs.out, OP_TEXT, b"PONG\r\n");
                } else if line.starts_with(b"-ERR") {
                    let l = line.to_vec();
                    st.error(&l);
                }
                off += eol + 2;
            }
            cs.nats.drain(..off);
        }
    }
}

#[inline]
fn delivery(sh: &Shared, cs: &mut ConnState, st: &mut Stats, body: &[u8], now: u64) {
    if !cs.record {
        return;
    }
    let Some((sched, sender, counter)) = parse_body(body) else {
        st.error(body);
        return;
    };
    let lat = now.saturating_sub(sched).max(1);
    st.iv_received += 1;
    if let Some(h) = st.iv_hist.as_mut() {
        h.saturating_record(lat);
    }
    let (ws, we) = sh.window.get();
    if now >= ws && now < we {
        st.received_in_window += 1;
    }
    if sched >= ws && sched < we {
        st.delivered += 1;
        if let Some(h) = st.hist.as_mut() {
            h.saturating_record(lat);
        }
    }
    match cs.last.iter_mut().find(|(s, _)| *s == sender) {
        Some((_, last)) => {
            if counter == *last {
                st.duplicates += 1;
            } else if counter < *last {
                st.out_of_order += 1;
            } else {
                *last = counter;
            }
        }
        None => cs.last.push((sender, counter)),
    }
}

async fn run_step(sh: &Rc<Shared>, step: Step) -> StepReport {
    let spec = &sh.spec;
    sh.st.borrow_mut().reset();
    sh.window.set((step.window_start_us, step.window_end_us));
    if step.slow_stop {
        sh.slow_stop.set(true);
    }
    // What the schedule promises this worker's readers.
    let (mut expected, mut expected_acks) = (0u64, 0u64);
    for (gi, g) in spec.layout.groups.iter().enumerate() {
        let rate = step.rate * g.share;
        if rate <= 0.0 || g.senders == 0 {
            continue;
        }
        let mut i = 0u64;
        loop {
            let t = step.sched(rate, i);
            if t >= step.window_end_us {
                break;
            }
            if t >= step.window_start_us {
                let (room, c) = g.message(i);
                expected += sh.local_members[gi][room] as u64;
                if sh.target.acks() && c % spec.workers == spec.index {
                    expected_acks += 1;
                }
            }
            i += 1;
        }
    }
    let mut tasks = Vec::new();
    for (gi, g) in spec.layout.groups.iter().enumerate() {
        let rate = step.rate * g.share;
        if rate > 0.0 && g.senders > 0 {
            tasks.push(tokio::task::spawn_local(schedule(
                sh.clone(),
                gi,
                rate,
                step.clone(),
            )));
        }
    }
    let ticker = tokio::task::spawn_local(progress(sh.clone(), step.index, step.start_us));
    tokio::time::sleep_until(instant_at(step.window_start_us)).await;
    let cpu0 = stats::self_cpu_s();
    tokio::time::sleep_until(instant_at(step.window_end_us)).await;
    let cpu1 = stats::self_cpu_s();
    let deadline = step.window_end_us + step.drain_us;
    loop {
        {
            let st = sh.st.borrow();
            if st.delivered >= expected && st.acks_window_sched >= expected_acks {
                break;
            }
        }
        if now_us() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    ticker.abort();
    let mut st = sh.st.borrow_mut();
    let closes = st.close_report();
    StepReport {
        index: step.index,
        sent: st.sent,
        expected,
        expected_acks,
        delivered: st.delivered,
        received_in_window: st.received_in_window,
        acks: st.acks,
        acks_in_window: st.acks_in_window,
        duplicates: st.duplicates,
        out_of_order: st.out_of_order,
        errors: st.errors,
        error_samples: std::mem::take(&mut st.error_samples),
        closed: closes.closed,
        close_codes: closes.close_codes,
        unexpected_closed: closes.unexpected,
        unexpected_close_codes: closes.unexpected_codes,
        cpu_s: cpu1 - cpu0,
        max_send_lag_us: st.max_lag,
        hist: st.hist.as_ref().map(hist_to_b64).unwrap_or_default(),
        ack_hist: st.ack_hist.as_ref().map(hist_to_b64).unwrap_or_default(),
    }
}

/// Open loop: message `i` is due at `start + i / rate`, whatever happened to message `i - 1`.
async fn schedule(sh: Rc<Shared>, gi: usize, rate: f64, step: Step) {
    let spec = &sh.spec;
    let g = &spec.layout.groups[gi];
    let mut buf = Vec::with_capacity(512);
    let mut i = 0u64;
    let mut burst = 0u32;
    loop {
        let t = step.sched(rate, i);
        if t >= step.window_end_us {
            break;
        }
        let (room, c) = g.message(i);
        i += 1;
        if c % spec.workers != spec.index {
            continue;
        }
        let now = now_us();
        if t > now + 100 {
            burst = 0;
            tokio::time::sleep_until(instant_at(t)).await;
        } else {
            burst += 1;
            if burst >= 64 {
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        let lag = now_us().saturating_sub(t);
        let counter = ((step.index as u64) << 40) | g.counter(i - 1);
        let body = make_body(t, c, counter, spec.body_bytes);
        let cid = format!("{}-{c}-{counter}", spec.run_id);
        buf.clear();
        sh.target
            .encode_send(&mut buf, &sh.room_names[gi][room], &cid, t, &body);
        let ok = sh
            .senders
            .borrow()
            .get(&c)
            .map(|tx| tx.send(buf.clone()).is_ok())
            .unwrap_or(false);
        let mut st = sh.st.borrow_mut();
        st.max_lag = st.max_lag.max(lag);
        if ok {
            st.sent_total += 1;
            if t >= step.window_start_us {
                st.sent += 1;
            }
        }
    }
}

async fn progress(sh: Rc<Shared>, step: usize, start_us: u64) {
    let mut second = 0u64;
    loop {
        second += 1;
        tokio::time::sleep_until(instant_at(start_us + second * 1_000_000)).await;
        let ev = {
            let mut st = sh.st.borrow_mut();
            let h = st.iv_hist.replace(new_hist()).unwrap_or_else(new_hist);
            let ev = Event::Progress {
                step,
                second,
                sent: st.sent_total,
                received: st.iv_received,
                acks: st.iv_acks,
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
                closed: st.closed,
            };
            st.iv_received = 0;
            st.iv_acks = 0;
            ev
        };
        emit(&ev);
    }
}

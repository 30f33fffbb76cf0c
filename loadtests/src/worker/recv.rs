//! The receive path, the hot loop: one task per connection waits for readiness (or a frame
//! to send), reads into a shared scratch buffer, parses frames in place and scans each
//! payload for the timing body to count deliveries, duplicates, reordering, acks and closes.
//! Kept apart because it is what must stay cheap; the rest of the worker is bookkeeping.

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::Result;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Shared, Stats};
use crate::stats::now_us;
use crate::target::{parse_body, parse_u64, Target};
use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

const SCRATCH: usize = 256 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; SCRATCH]);
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

enum Wake {
    Write(Vec<u8>),
    SendersGone,
    Readable(std::io::Result<()>),
}

pub(super) async fn read_loop(
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

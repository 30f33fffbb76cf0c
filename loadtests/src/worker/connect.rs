//! The connect phase: mint tokens, dial this worker's connections (bounded concurrency, a
//! timeout each), upgrade, join, and hand each socket to its read loop; report how long each
//! took and why the failures failed. Kept apart from the steady-state receive path.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::recv::read_loop;
use super::{instant_at, Shared};
use crate::plan::ConnectReport;
use crate::stats::{self, hist_to_b64, new_hist, now_us};
use crate::target::Target;
use crate::ws::{self, WsUrl};

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

pub(super) async fn connect_all(sh: &Rc<Shared>, start_us: u64) -> Result<ConnectReport> {
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

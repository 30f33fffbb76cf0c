//! Hostile clients (issue "Hardening"): forged and malformed tokens, odd subprotocol offers,
//! WebSocket frames that break RFC 6455 or our limits, frames that are valid WebSocket but
//! hostile protocol, and plain abuse. Every case asserts the documented status or close code
//! within a bounded time, that a bystander in another conversation is unaffected, and, where
//! something could be stored, that nothing was.
//!
//! Frames that a well-behaved client library refuses to produce are written as raw bytes on a
//! hand-upgraded TCP stream (`RawWs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Harness for this file
// ---------------------------------------------------------------------------------------------

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// base64url without padding (RFC 7515 §2), for hand-made JWTs.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Percent-encode everything but RFC 3986 unreserved characters (for `access_token=`).
fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sign arbitrary JSON claims (any shape: strings for numbers, missing claims, …).
fn sign(secret: &str, alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token built by hand (header and claims as given) and signed with HS256 over exactly those
/// bytes.
fn handmade(secret: &str, header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

/// An unsigned token (`alg: none`), header and claims as given, empty signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// Sum of every sample of `name` whose labels include all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")))
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Resident set size of this process (the app runs in-process), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The answer to a hand-written upgrade request.
struct Upgrade {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    stream: TcpStream,
    /// Bytes read past the response head (the first frames after a 101).
    rest: Vec<u8>,
}

impl Upgrade {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// `GET target` with the WebSocket upgrade headers plus `headers` (raw bytes, repeats kept).
async fn upgrade_request(port: u16, target: &str, headers: &[(&str, &[u8])]) -> Upgrade {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    stream.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(i) = find(&got, b"\r\n\r\n") {
                return i + 4;
            }
            let n = stream.read(&mut buf).await.expect("read the response");
            assert!(n > 0, "connection closed before any response to {target}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response to the upgrade request within WAIT");
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    // Header values re-read as bytes from the raw head (they may not be UTF-8).
    let headers = got[..end]
        .split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let i = l.iter().position(|b| *b == b':')?;
            let v = l[i + 1..].trim_ascii().to_vec();
            Some((String::from_utf8_lossy(&l[..i]).to_string(), v))
        })
        .collect();
    Upgrade {
        status,
        headers,
        stream,
        rest: got[end..].to_vec(),
    }
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame; `mask: None` writes it unmasked (an RFC 6455 violation for a client).
fn frame_with(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        f.push(m | n as u8);
    } else if n <= usize::from(u16::MAX) {
        f.push(m | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, opcode, payload, Some(MASK))
}

/// A masked close frame with exactly this payload.
fn close_frame(payload: &[u8]) -> Vec<u8> {
    frame(true, 0x8, payload)
}

/// A WebSocket spoken by hand over TCP.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn open(app: &TestApp, user: &str, protocol: Option<&str>) -> RawWs {
        Self::open_port(app.port, &app.token(user), protocol).await
    }

    async fn open_port(port: u16, token: &str, protocol: Option<&str>) -> RawWs {
        let auth = format!("Bearer {token}");
        let mut h: Vec<(&str, &[u8])> = vec![("Authorization", auth.as_bytes())];
        if let Some(p) = protocol {
            h.push(("Sec-WebSocket-Protocol", p.as_bytes()));
        }
        let up = upgrade_request(port, "/ws", &h).await;
        assert_eq!(up.status, 101, "upgrade refused");
        RawWs::from(up)
    }

    /// Write bytes; the server may already have closed (or stopped reading), which the reads
    /// will show.
    async fn write(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.s.write_all(bytes)).await;
    }

    async fn send_json(&mut self, v: &Value) {
        self.write(&frame(true, 0x1, v.to_string().as_bytes()))
            .await;
    }

    async fn send_msgpack(&mut self, v: &Value) {
        self.write(&frame(true, 0x2, &rmp_serde::to_vec_named(v).unwrap()))
            .await;
    }

    /// The next server frame (opcode, payload), `None` once the connection ended.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        read_frame(&mut self.s, &mut self.buf).await
    }

    /// Read until the close frame: its code (1005 without one), 1006 if the TCP connection
    /// ended without a close frame, 0 if neither happened within WAIT. Data frames read on the
    /// way are returned for diagnostics.
    async fn close_code(&mut self) -> (u16, Vec<String>) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(f) = read_frame_within(&mut self.s, &mut self.buf, left).await else {
                return (0, seen);
            };
            match f {
                None => return (1006, seen),
                Some((0x8, p)) if p.len() >= 2 => return (u16::from_be_bytes([p[0], p[1]]), seen),
                Some((0x8, _)) => return (1005, seen),
                Some((0x9 | 0xA, _)) => {}
                Some((op, p)) => seen.push(describe(op, &p)),
            }
        }
    }

    /// After the close frame, the server ends the TCP connection (within WAIT).
    async fn ends(&mut self) -> bool {
        loop {
            match self.frame().await {
                None => return true,
                Some((0x8, _)) => return false, // a second close frame
                Some(_) => {}
            }
        }
    }

    /// The next protocol frame, decoded (text as JSON, binary as MessagePack).
    async fn next(&mut self) -> Value {
        loop {
            match self.frame().await {
                Some((0x1, p)) => return serde_json::from_slice(&p).expect("json frame"),
                Some((0x2, p)) => return rmp_serde::from_slice(&p).expect("msgpack frame"),
                Some((0x8, p)) => panic!("socket closed: {}", describe(0x8, &p)),
                None => panic!("connection ended"),
                Some(_) => {}
            }
        }
    }

    /// The next reply to a request: the next frame that is not a broadcast (`message`,
    /// `presence`, `typing`).
    async fn reply_or_next(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if !matches!(v["type"].as_str(), Some("message" | "presence" | "typing")) {
                return v;
            }
        }
    }

    /// The next protocol frame with this `ref`.
    async fn reply(&mut self, r: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["ref"] == r {
                return v;
            }
        }
    }
}

impl From<Upgrade> for RawWs {
    fn from(up: Upgrade) -> Self {
        RawWs {
            s: up.stream,
            buf: up.rest,
        }
    }
}

fn describe(op: u8, p: &[u8]) -> String {
    match op {
        0x1 => format!("text {}", String::from_utf8_lossy(p)),
        0x2 => format!(
            "binary {}",
            rmp_serde::from_slice::<Value>(p)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| format!("{p:?}"))
        ),
        0x8 if p.len() >= 2 => format!(
            "close {} {}",
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8_lossy(&p[2..])
        ),
        _ => format!("opcode {op:#x} ({} bytes)", p.len()),
    }
}

/// The next server frame from `s` (bytes already read are in `buf`), `None` once the
/// connection ended; panics after WAIT without one.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
) -> Option<(u8, Vec<u8>)> {
    read_frame_within(s, buf, WAIT)
        .await
        .expect("timed out waiting for a frame from the server")
}

/// Like `read_frame`, `Err` when nothing complete arrived within `d`.
async fn read_frame_within<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    d: Duration,
) -> Result<Option<(u8, Vec<u8>)>, tokio::time::error::Elapsed> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if let Some((op, payload, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return Ok(Some((op, payload)));
        }
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await? {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// One complete server frame at the start of `b`: (opcode, payload, bytes used).
fn parse_server_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let mask = if masked {
        let k: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let payload = b.get(at..at + len)?;
    let payload = match mask {
        Some(k) => payload
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ k[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Some((op, payload, at + len))
}

/// Two users talking in their own room: whatever a hostile client does elsewhere, a message
/// from one must still be acknowledged and reach the other, in order.
struct Bystanders {
    a: Client,
    b: Client,
    sent: u64,
}

const CALM: &str = "calm";

impl Bystanders {
    async fn new(app: &TestApp) -> Self {
        let mut a = app.connect("bystander-a").await;
        let mut b = app.connect("bystander-b").await;
        a.join(CALM).await;
        b.join(CALM).await;
        Bystanders { a, b, sent: 0 }
    }

    /// One message from a to b, acknowledged and delivered with the next seq.
    async fn still_talk(&mut self) -> Duration {
        let t = Instant::now();
        self.sent += 1;
        let cid = format!("calm-{}", self.sent);
        let ack = self.a.send_msg(CALM, &cid, "still here").await;
        assert_eq!(ack["type"], "ack", "bystander's send: {ack}");
        let got = self.b.messages(CALM, 1).await;
        assert_eq!(got[0]["cid"], cid.as_str(), "bystander got {}", got[0]);
        assert_eq!(got[0]["seq"], self.sent, "bystander got {}", got[0]);
        t.elapsed()
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A JSON client whose reads never stop: a task drains the socket into a channel, so a test
/// can write thousands of frames without becoming a slow consumer itself.
struct Duplex {
    tx: futures_util::stream::SplitSink<Ws, Message>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    reader: tokio::task::JoinHandle<u16>,
}

impl Duplex {
    async fn connect(app: &TestApp, user: &str) -> Duplex {
        let mut req = app.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", app.token(user))).unwrap(),
        );
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chatty.v1.json"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        let (tx, mut stream) = ws.split();
        let (vtx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let _ = vtx.send(serde_json::from_str::<Value>(&t).expect("json"));
                    }
                    Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)).unwrap_or(1005),
                    Ok(_) => {}
                    Err(_) => return 1006,
                }
            }
            1006
        });
        Duplex {
            tx,
            rx,
            backlog: VecDeque::new(),
            reader,
        }
    }

    /// Queue a frame without flushing.
    async fn feed(&mut self, v: &Value) {
        self.tx
            .feed(Message::Text(v.to_string().into()))
            .await
            .expect("ws feed");
    }

    async fn flush(&mut self) {
        self.tx.flush().await.expect("ws flush");
    }

    async fn send(&mut self, v: &Value) {
        self.feed(v).await;
        self.flush().await;
    }

    /// The next frame from the socket (backlog first).
    async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        self.recv_fresh().await
    }

    async fn recv_fresh(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a frame")
        {
            Some(v) => v,
            None => {
                let code = (&mut self.reader).await.unwrap();
                panic!("socket closed with {code}")
            }
        }
    }

    /// The next frame matching `pred`, keeping the others.
    async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self.recv_fresh().await;
            if pred(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    async fn reply(&mut self, r: &str) -> Value {
        self.next_where(|v| v["ref"] == r).await
    }

    fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }
}

async fn room_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from rooms")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn message_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Hostile handshakes
// ---------------------------------------------------------------------------------------------

const AUD: &str = "chatty-clients";
const ISS: &str = "https://issuer.example";

async fn app_with_aud_and_iss() -> TestApp {
    let (mut s, _) = test_settings().await;
    s.auth.jwt_audience = AUD.into();
    s.auth.jwt_issuer = ISS.into();
    spawn_with(s).await
}

/// Attempt an upgrade with `token` in the Authorization header and, separately, in the query;
/// the statuses.
async fn statuses_for(app: &TestApp, token: &[u8]) -> (u16, u16) {
    let mut auth = b"Bearer ".to_vec();
    auth.extend_from_slice(token);
    let header = upgrade_request(app.port, "/ws", &[("Authorization", &auth)]).await;
    let query = upgrade_request(
        app.port,
        &format!("/ws?access_token={}", percent(token)),
        &[],
    )
    .await;
    for up in [&header, &query] {
        if up.status != 101 {
            assert!(
                up.values("upgrade").is_empty() && up.values("sec-websocket-accept").is_empty(),
                "a refused upgrade must not carry upgrade headers"
            );
        }
    }
    (header.status, query.status)
}

#[tokio::test]
async fn forged_malformed_expired_and_oversized_tokens_get_401_in_the_header_and_in_the_query() {
    let app = app_with_aud_and_iss().await;
    let mut calm = Bystanders::new(&app).await;
    let secret = app.settings.auth.jwt_secret.expose().to_string();
    let now = now_secs();
    let good_claims = json!({"sub": "mallory", "exp": now + 3600, "aud": AUD, "iss": ISS});
    let with = |patch: Value| {
        let mut c = good_claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hs256 = |c: &Value| sign(&secret, jsonwebtoken::Algorithm::HS256, c);

    // The positive controls: the same claims, correctly signed, are accepted both ways; so
    // is a token encoded by hand like the `alg: none` ones below, so those are refused for
    // their algorithm and not for a slip in the encoding.
    let good = hs256(&good_claims);
    assert_eq!(
        statuses_for(&app, good.as_bytes()).await,
        (101, 101),
        "a good token must be accepted, or this test proves nothing"
    );
    let by_hand = handmade(
        &secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &good_claims,
    );
    assert_eq!(statuses_for(&app, by_hand.as_bytes()).await, (101, 101));

    let big_payload = "A".repeat(16 * 1024);
    // One character in the middle of the signature (not its last, which carries padding bits).
    let mut flipped = good.clone().into_bytes();
    let at = flipped.len() - 10;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let (good_head, good_rest) = good.split_once('.').unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "alg none, no signature",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &good_claims).into_bytes(),
        ),
        (
            "alg None, no signature",
            unsigned(&json!({"alg": "None"}), &good_claims).into_bytes(),
        ),
        (
            "alg none, signed by hand with the right key anyway",
            handmade(&secret, &json!({"alg": "none"}), &good_claims).into_bytes(),
        ),
        (
            "alg none with the good token's signature",
            format!(
                "{}.{}",
                b64url(json!({"alg": "none"}).to_string().as_bytes()),
                good_rest
            )
            .into_bytes(),
        ),
        (
            "HS256 signed with another key",
            sign(
                "another-secret-of-enough-length",
                jsonwebtoken::Algorithm::HS256,
                &good_claims,
            )
            .into_bytes(),
        ),
        (
            "HS384 with the right key",
            sign(&secret, jsonwebtoken::Algorithm::HS384, &good_claims).into_bytes(),
        ),
        (
            "exp as a string",
            hs256(&with(json!({"exp": (now + 3600).to_string()}))).into_bytes(),
        ),
        (
            "nbf as a string",
            hs256(&with(json!({"nbf": now.to_string()}))).into_bytes(),
        ),
        (
            "nbf in the future",
            hs256(&with(json!({"nbf": now + 3600}))).into_bytes(),
        ),
        (
            "missing exp",
            hs256(&with(json!({"exp": null}))).into_bytes(),
        ),
        (
            "missing sub",
            hs256(&with(json!({"sub": null}))).into_bytes(),
        ),
        ("empty sub", hs256(&with(json!({"sub": ""}))).into_bytes()),
        ("numeric sub", hs256(&with(json!({"sub": 42}))).into_bytes()),
        (
            "sub with a control character",
            hs256(&with(json!({"sub": "eve\nadmin"}))).into_bytes(),
        ),
        (
            "sub of 129 bytes",
            hs256(&with(json!({"sub": "u".repeat(129)}))).into_bytes(),
        ),
        (
            "wrong aud",
            hs256(&with(json!({"aud": "another-service"}))).into_bytes(),
        ),
        (
            "wrong iss",
            hs256(&with(json!({"iss": "https://evil.example"}))).into_bytes(),
        ),
        (
            "expired an hour ago",
            hs256(&with(json!({"exp": now - 3600}))).into_bytes(),
        ),
        ("exp 0", hs256(&with(json!({"exp": 0}))).into_bytes()),
        (
            "negative exp",
            hs256(&with(json!({"exp": -1}))).into_bytes(),
        ),
        (
            "16 KiB token",
            hs256(&with(json!({"pad": big_payload}))).into_bytes(),
        ),
        ("16 KiB of garbage", "x".repeat(16 * 1024).into_bytes()),
        ("signature flipped", flipped),
        (
            "signature removed",
            format!("{}.", good.rsplit_once('.').unwrap().0).into_bytes(),
        ),
        (
            "two segments",
            good.rsplit_once('.').unwrap().0.as_bytes().to_vec(),
        ),
        ("four segments", format!("{good}.{good_head}").into_bytes()),
        ("trailing junk", format!("{good} junk").into_bytes()),
        ("not a jwt", b"not-a-jwt".to_vec()),
        ("three dots", b"...".to_vec()),
        ("a.b.c", b"a.b.c".to_vec()),
        (
            "header is not JSON",
            format!("{}.{}", b64url(b"{\"alg\":"), good_rest).into_bytes(),
        ),
        (
            "claims are not JSON",
            format!("{good_head}.{}.{}", b64url(b"hello"), b64url(b"sig")).into_bytes(),
        ),
        (
            "claims are an array",
            hs256(&json!([{"sub": "mallory"}])).into_bytes(),
        ),
        ("non-ASCII bytes", vec![0xff, 0xfe, b'.', 0xc3, 0x28]),
    ];

    // The control's sockets (and the bystanders') are counted as opened before the baseline.
    eventually("the control sockets are counted", || async {
        app.metric("chatty_connections_opened_total").await >= 6.0
    })
    .await;
    let before = app.metrics().await;
    let rejected_before = metric_sum(&before, "chatty_handshake_rejections_total", &[]);
    let opened_before = metric_sum(&before, "chatty_connections_opened_total", &[]);
    let mut wrong = Vec::new();
    for (what, token) in &cases {
        let got = statuses_for(&app, token).await;
        if got != (401, 401) {
            wrong.push(format!("{what}: header {}, query {}", got.0, got.1));
        }
    }
    // Malformed Authorization headers (no usable bearer token at all).
    for raw in [
        &b"Basic bWFsbG9yeTpwYXNz"[..],
        b"Bearer",
        b"Bearer ",
        b"Bearer\tx.y.z",
        b"Token x.y.z",
    ] {
        let up = upgrade_request(app.port, "/ws", &[("Authorization", raw)]).await;
        if up.status != 401 {
            wrong.push(format!(
                "Authorization {:?}: {}",
                String::from_utf8_lossy(raw),
                up.status
            ));
        }
    }
    // NUL and control bytes, percent-encoded in the query (in a header they would make the
    // request itself malformed HTTP, which hyper answers with 400 before any routing).
    for raw in [&b"a\0b.c\0d.e"[..], b"\x01\x02.\x7f", b"%00"] {
        let up =
            upgrade_request(app.port, &format!("/ws?access_token={}", percent(raw)), &[]).await;
        if up.status != 401 {
            wrong.push(format!(
                "query {:?}: {}",
                String::from_utf8_lossy(raw),
                up.status
            ));
        }
    }
    assert!(wrong.is_empty(), "not refused with 401: {wrong:#?}");

    let after = app.metrics().await;
    let attempts = (2 * cases.len() + 5 + 3) as f64;
    assert_eq!(
        metric_sum(&after, "chatty_handshake_rejections_total", &[]) - rejected_before,
        attempts,
        "every refusal is counted once"
    );
    assert_eq!(
        metric_sum(&after, "chatty_connections_opened_total", &[]),
        opened_before,
        "no refused attempt opened a socket"
    );
    calm.still_talk().await;
}

/// `aud` and `iss` are "checked when configured": a token that does not carry them was not
/// issued for this service by this issuer and must not be accepted.
#[tokio::test]
async fn a_token_without_aud_or_iss_is_refused_when_the_server_is_configured_with_them() {
    let app = app_with_aud_and_iss().await;
    let secret = app.settings.auth.jwt_secret.expose().to_string();
    let exp = now_secs() + 3600;
    let hs256 = |c: Value| sign(&secret, jsonwebtoken::Algorithm::HS256, &c);
    assert_eq!(
        statuses_for(
            &app,
            hs256(json!({"sub": "u", "exp": exp, "aud": AUD, "iss": ISS})).as_bytes()
        )
        .await,
        (101, 101),
        "control"
    );
    let no_aud = hs256(json!({"sub": "u", "exp": exp, "iss": ISS}));
    let no_iss = hs256(json!({"sub": "u", "exp": exp, "aud": AUD}));
    let neither = hs256(json!({"sub": "u", "exp": exp}));
    let got = [
        ("missing aud", statuses_for(&app, no_aud.as_bytes()).await),
        ("missing iss", statuses_for(&app, no_iss.as_bytes()).await),
        ("missing both", statuses_for(&app, neither.as_bytes()).await),
    ];
    let wrong: Vec<_> = got.iter().filter(|(_, s)| *s != (401, 401)).collect();
    assert!(
        wrong.is_empty(),
        "accepted without the configured claims (header, query): {wrong:?}"
    );
}

#[tokio::test]
async fn no_log_line_of_the_binary_contains_a_token_good_or_bad() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir =
        std::env::temp_dir().join(format!("chatty-hostile-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("db");
    let secret = format!("log-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatty"))
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("CHATTY__LOG__FORMAT", "json")
        .env("CHATTY__LOG__LEVEL", "debug")
        .env("CHATTY__SERVER__PORT", "0")
        .env("CHATTY__SERVER__METRICS_PORT", "0")
        .env("CHATTY__DATABASE__URL", "")
        .env("CHATTY__REDIS__URL", "")
        .env("CHATTY__DATABASE__SQLITE_PATH", db.to_str().unwrap())
        .env("CHATTY__AUTH__JWT_SECRET", &secret)
        .env("CHATTY__AUTH__ALLOWED_ORIGINS", "https://chat.example.com")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatty");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let port = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|v| v["message"] == "listening")
                .and_then(|v| v["port"].as_u64());
            log.push(line);
            if let Some(p) = port {
                return p as u16;
            }
        }
        panic!("chatty exited before listening: {log:#?}");
    })
    .await
    .expect("chatty did not start listening");
    let collector = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push(line);
        }
        log
    });

    let hs = |user: &str, exp: u64, key: &str| {
        sign(
            key,
            jsonwebtoken::Algorithm::HS256,
            &json!({"sub": user, "exp": exp, "name": "Log Test"}),
        )
    };
    let now = now_secs();
    let good_header = hs("logged-header", now + 3600, &secret);
    let good_query = hs("logged-query", now + 3600, &secret);
    let good_refused = hs("logged-refused", now + 3600, &secret);
    let bad: Vec<String> = vec![
        hs("expired", now - 3600, &secret),
        hs("forged", now + 3600, "some-other-secret-key-here"),
        unsigned(
            &json!({"alg": "none"}),
            &json!({"sub": "none", "exp": now + 3600}),
        ),
        format!("garbage-token-{}", uuid::Uuid::new_v4().simple()),
        format!("long-{}", "z".repeat(5000)),
    ];

    // Good tokens: full sessions, in the header and in the query.
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Client::connect(&url, &good_header, Some("chatty.v1.json")).await;
    c.join("logged").await;
    assert_eq!(c.send_msg("logged", "l1", "hello").await["type"], "ack");
    c.close().await;
    let up = upgrade_request(port, &format!("/ws?access_token={good_query}"), &[]).await;
    assert_eq!(up.status, 101);
    let mut q = RawWs::from(up);
    q.write(&frame(true, 0x1, br#"{"type":"ping","ref":"q"}"#))
        .await;
    assert_eq!(q.reply("q").await["type"], "pong");
    q.write(&close_frame(&1000u16.to_be_bytes())).await;
    assert_eq!(q.close_code().await.0, 1000);
    // A good token on requests refused for other reasons (origin, subprotocol).
    let auth = format!("Bearer {good_refused}");
    let origin = upgrade_request(
        port,
        "/ws",
        &[
            ("Authorization", auth.as_bytes()),
            ("Origin", b"https://evil.example"),
        ],
    )
    .await;
    assert_eq!(origin.status, 403);
    let proto = upgrade_request(
        port,
        &format!("/ws?access_token={good_refused}"),
        &[("Sec-WebSocket-Protocol", b"mqtt")],
    )
    .await;
    assert_eq!(proto.status, 400);
    // Bad tokens, both ways.
    for t in &bad {
        let auth = format!("Bearer {t}");
        let h = upgrade_request(port, "/ws", &[("Authorization", auth.as_bytes())]).await;
        assert_eq!(h.status, 401);
        let q = upgrade_request(
            port,
            &format!("/ws?access_token={}", percent(t.as_bytes())),
            &[],
        )
        .await;
        assert_eq!(q.status, 401);
    }

    assert_eq!(terminate(&mut child).await, Some(0));
    let log = tokio::time::timeout(WAIT, collector)
        .await
        .expect("log pipe closed after exit")
        .unwrap();
    assert!(
        log.len() > 3 && log.iter().any(|l| l.contains("\"DEBUG\"")),
        "the debug log was captured: {log:#?}"
    );
    let mut secrets: Vec<&str> = vec![
        good_header.as_str(),
        good_query.as_str(),
        good_refused.as_str(),
        secret.as_str(),
    ];
    secrets.extend(bad.iter().map(String::as_str));
    let mut leaks = Vec::new();
    for line in &log {
        for s in &secrets {
            // The whole token, or its signature or claims segment alone.
            let parts: Vec<&str> = s.split('.').filter(|p| p.len() >= 16).collect();
            if line.contains(s) || parts.iter().any(|p| line.contains(p)) {
                leaks.push(line.clone());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(leaks.is_empty(), "log lines containing a token: {leaks:#?}");
}

/// Header values offered, the expected status, the expected echo (`None`: no header).
type Offer = (Vec<&'static [u8]>, u16, Option<&'static str>);

#[tokio::test]
async fn subprotocol_offers_are_matched_as_exact_case_sensitive_tokens() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.token("proto"));
    let attempt = |offers: Vec<&'static [u8]>| {
        let auth = auth.clone();
        let port = app.port;
        async move {
            let mut h: Vec<(&str, &[u8])> = vec![("Authorization", auth.as_bytes())];
            for o in &offers {
                h.push(("Sec-WebSocket-Protocol", o));
            }
            upgrade_request(port, "/ws", &h).await
        }
    };
    // (offers, expected status, expected echo; None = no Sec-WebSocket-Protocol in the answer)
    let cases: Vec<Offer> = vec![
        // An empty offer offers nothing: JSON, nothing echoed.
        (vec![b""], 101, None),
        (vec![b" , ,"], 101, None),
        // Duplicates: one echo, of the first supported one.
        (
            vec![b"chatty.v1.json, chatty.v1.json"],
            101,
            Some("chatty.v1.json"),
        ),
        (
            vec![b"chatty.v1.msgpack", b"chatty.v1.msgpack"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        (
            vec![b"mqtt", b"chatty.v1.msgpack", b"chatty.v1.json"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        // Optional whitespace around list elements is not part of the token.
        (vec![b"   chatty.v1.json   "], 101, Some("chatty.v1.json")),
        (
            vec![b"\tchatty.v1.msgpack ,\tchatty.v1.json"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        (vec![b", ,chatty.v1.json,,"], 101, Some("chatty.v1.json")),
        // Tokens are case-sensitive (RFC 6455 §4.1, §11.5): these are unsupported protocols.
        (vec![b"CHATTY.V1.JSON"], 400, None),
        (vec![b"Chatty.v1.Json"], 400, None),
        (vec![b"chatty.v1.MSGPACK, mqtt"], 400, None),
        // Whitespace inside a token makes another (unsupported) token.
        (vec![b"chatty.v1. json"], 400, None),
        (vec![b"chatty .v1.json"], 400, None),
        (vec![b"chatty.v1.json;q=1"], 400, None),
        (vec![b"chatty.v1.json\xff"], 400, None),
    ];
    let mut wrong = Vec::new();
    for (offers, status, echo) in cases {
        let shown: Vec<_> = offers.iter().map(|o| String::from_utf8_lossy(o)).collect();
        let up = attempt(offers.clone()).await;
        let echoed: Vec<String> = up
            .values("sec-websocket-protocol")
            .iter()
            .map(|v| String::from_utf8_lossy(v).to_string())
            .collect();
        let expected: Vec<String> = echo.iter().map(|e| e.to_string()).collect();
        if up.status != status || (status == 101 && echoed != expected) {
            wrong.push(format!(
                "{shown:?}: got {} echo {echoed:?}, expected {status} echo {expected:?}",
                up.status
            ));
            continue;
        }
        if status == 101 {
            // The socket speaks what was echoed (JSON when nothing was).
            let mut ws = RawWs::from(up);
            let msgpack = echo == Some("chatty.v1.msgpack");
            if msgpack {
                let ping = rmp_serde::to_vec_named(&json!({"type": "ping", "ref": "p"})).unwrap();
                ws.write(&frame(true, 0x2, &ping)).await;
            } else {
                ws.write(&frame(true, 0x1, br#"{"type":"ping","ref":"p"}"#))
                    .await;
            }
            let (op, p) = ws.frame().await.expect("a reply");
            let ok = if msgpack { op == 0x2 } else { op == 0x1 };
            if !ok {
                wrong.push(format!("{shown:?}: answered with {}", describe(op, &p)));
            }
        } else if !up.values("sec-websocket-accept").is_empty() {
            wrong.push(format!("{shown:?}: a refusal carries Sec-WebSocket-Accept"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Hostile frames on an authenticated socket
// ---------------------------------------------------------------------------------------------

/// A text message split into `parts` fragments: the JSON in the first, then empty ones.
fn fragments(json: &[u8], parts: usize) -> Vec<u8> {
    let mut out = frame(parts == 1, 0x1, json);
    for i in 1..parts {
        out.extend(frame(i == parts - 1, 0x0, b""));
    }
    out
}

/// `{"type":"ping","ref":r,"pad":"xx…"}` of exactly `total` bytes, in fragments of `each`.
fn padded_ping(r: &str, total: usize, each: usize) -> Vec<u8> {
    let head = format!(r#"{{"type":"ping","ref":"{r}","pad":""#);
    let mut msg = head.into_bytes();
    msg.resize(total - 2, b'x');
    msg.extend_from_slice(b"\"}");
    let chunks: Vec<&[u8]> = msg.chunks(each).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { 0x1 } else { 0x0 };
        out.extend(frame(i == chunks.len() - 1, op, c));
    }
    out
}

#[tokio::test]
async fn a_fragment_bomb_is_closed_with_1009_past_128_fragments_or_64_kib_and_the_limits_themselves_pass(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ping = br#"{"type":"ping","ref":"frag"}"#;
    let max = app.settings.limits.max_message_bytes;
    assert_eq!(max, 64 * 1024);

    // Exactly at the limits: accepted.
    let mut ws = RawWs::open(&app, "frag-ok", None).await;
    ws.write(&fragments(ping, 128)).await;
    assert_eq!(ws.reply("frag").await["type"], "pong", "128 fragments");
    ws.write(&padded_ping("full", max, 16 * 1024)).await;
    assert_eq!(
        ws.reply("full").await["type"],
        "pong",
        "64 KiB in 4 fragments"
    );

    // One fragment more, one byte more, or many small ones adding up: 1009.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("129 fragments", fragments(ping, 129)),
        ("1000 fragments", fragments(ping, 1000)),
        (
            "64 KiB + 1 in 5 fragments",
            padded_ping("over", max + 1, 16 * 1024),
        ),
        (
            "70 fragments of 1000 bytes",
            padded_ping("many", 70 * 1000, 1000),
        ),
        (
            "5 fragments of 60 KiB",
            padded_ping("huge", 5 * 60 * 1024, 60 * 1024),
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("bomber{i}"), None).await;
        let t = Instant::now();
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if code != 1009 || !ws.ends().await {
            wrong.push(format!("{what}: close {code} after {seen:?}"));
        }
        assert!(t.elapsed() < WAIT);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The socket at the limits is still fine, and so are the bystanders.
    ws.write(&frame(true, 0x1, br#"{"type":"ping","ref":"again"}"#))
        .await;
    assert_eq!(ws.reply("again").await["type"], "pong");
    calm.still_talk().await;
}

#[tokio::test]
async fn two_hundred_sockets_declaring_2_pow_62_byte_frames_are_closed_with_1009_without_allocating(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    const N: usize = 200;
    let names: Vec<String> = (0..N).map(|i| format!("giant{i}")).collect();
    let sockets =
        futures_util::future::join_all(names.iter().map(|u| RawWs::open(&app, u, None))).await;
    // Text, FIN, masked, 64-bit length 2^62, then the mask and no payload at all.
    let mut decl = vec![0x81, 0x80 | 127];
    decl.extend_from_slice(&(1u64 << 62).to_be_bytes());
    decl.extend_from_slice(&MASK);
    let rss_before = rss_bytes();
    let t = Instant::now();
    let codes = futures_util::future::join_all(sockets.into_iter().map(|mut ws| {
        let decl = decl.clone();
        async move {
            ws.write(&decl).await;
            ws.close_code().await.0
        }
    }))
    .await;
    let took = t.elapsed();
    let grown = rss_bytes().saturating_sub(rss_before);
    let wrong: Vec<_> = codes.iter().filter(|c| **c != 1009).collect();
    assert!(wrong.is_empty(), "close codes other than 1009: {wrong:?}");
    assert!(took < WAIT, "all {N} closed in {took:?}");
    assert!(
        grown < 150 << 20,
        "RSS grew by {} MiB for {N} declared 2^62-byte frames",
        grown >> 20
    );
    eprintln!(
        "{N} sockets closed with 1009 in {took:?}; RSS grew {} KiB",
        grown >> 10
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn endless_empty_continuations_are_cut_off_at_the_fragment_cap_with_1009() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ws = RawWs::open(&app, "endless", None).await;
    let (mut r, mut w) = ws.s.into_split();
    let mut buf = ws.buf;
    // Keep writing empty continuations (up to 10 million) until the server stops taking them.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&frame(false, 0x1, b"{")).await;
        let chunk: Vec<u8> = (0..1000).flat_map(|_| frame(false, 0x0, b"")).collect();
        let mut sent = 0u64;
        for _ in 0..10_000 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 1000;
        }
        (w, sent)
    });
    let t = Instant::now();
    let code = loop {
        match read_frame(&mut r, &mut buf).await {
            None => break 1006,
            Some((0x8, p)) if p.len() >= 2 => break u16::from_be_bytes([p[0], p[1]]),
            Some(_) => {}
        }
    };
    let took = t.elapsed();
    assert_eq!(code, 1009, "endless empty continuations");
    // Once closed, the server takes no more bytes: the writer's next writes fail.
    let (w, sent) = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the server kept taking continuations after its close")
        .unwrap();
    let mut ws = RawWs {
        s: r.reunite(w).unwrap(),
        buf,
    };
    assert!(ws.ends().await, "the connection ends after the close");
    eprintln!("endless continuations: 1009 after {took:?}, {sent} frames written in all");
    calm.still_talk().await;
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ping = br#"{"type":"ping","ref":"x"}"#;
    let mut cases: Vec<(String, Vec<u8>, &[u16])> = vec![
        (
            "a continuation without a start".into(),
            frame(true, 0x0, ping),
            &[1002],
        ),
        (
            "a new text frame inside a fragmented one".into(),
            [frame(false, 0x1, b"{"), frame(true, 0x1, ping)].concat(),
            &[1002],
        ),
        (
            "a ping of 126 bytes".into(),
            frame(true, 0x9, &[b'p'; 126]),
            &[1002],
        ),
        ("a fragmented ping".into(), frame(false, 0x9, b"p"), &[1002]),
        (
            "a fragmented close".into(),
            frame(false, 0x8, &1000u16.to_be_bytes()),
            &[1002],
        ),
        ("a fragmented pong".into(), frame(false, 0xA, b""), &[1002]),
        (
            "a close with a 1-byte payload".into(),
            close_frame(&[0x03]),
            &[1002],
        ),
        (
            // RFC 6455 §5.5.1: the reason must be UTF-8; 1007 (invalid data) is also fair.
            "a close whose reason is not UTF-8".into(),
            close_frame(&[0x03, 0xe8, 0xff, 0xfe]),
            &[1002, 1007],
        ),
    ];
    for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push((
            format!("reserved opcode {op:#x}"),
            frame(true, op, b""),
            &[1002],
        ));
    }
    cases.push((
        "reserved opcode 0x3 with a payload".into(),
        frame(true, 0x3, ping),
        &[1002],
    ));
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((
            format!("a close with code {code}"),
            close_frame(&code.to_be_bytes()),
            &[1002],
        ));
    }
    let mut wrong = Vec::new();
    for (i, (what, bytes, expected)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("violator{i}"), None).await;
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if !expected.contains(&code) {
            wrong.push(format!("{what}: close {code}, saw {seen:?}"));
        } else if !ws.ends().await {
            wrong.push(format!("{what}: connection not ended after the close"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    calm.still_talk().await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007_but_a_character_split_across_them_is_fine(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let head = br#"{"type":"ping","ref":""#;
    let msg = |parts: &[&[u8]]| -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            out.extend(frame(i == parts.len() - 1, op, p));
        }
        out
    };
    // "€" is e2 82 ac: split over three fragments it is still valid.
    let mut ws = RawWs::open(&app, "utf8-ok", None).await;
    ws.write(&msg(&[&[&head[..], &[0xe2]].concat(), &[0x82], b"\xac\"}"]))
        .await;
    assert_eq!(ws.reply("€").await["type"], "pong");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a truncated sequence completed by an ASCII byte",
            msg(&[&[&head[..], &[0xe2, 0x82]].concat(), b"(\"}"]),
        ),
        (
            "an invalid byte in the first fragment",
            msg(&[&[&head[..], &[0xff]].concat(), b"\"}"]),
        ),
        (
            "an overlong encoding split across fragments",
            msg(&[&[&head[..], &[0xc0]].concat(), b"\xaf\"}"]),
        ),
        (
            "a UTF-16 surrogate split across fragments",
            msg(&[&[&head[..], &[0xed, 0xa0]].concat(), b"\x80\"}"]),
        ),
        (
            "a sequence left unfinished by the final fragment",
            msg(&[&head[..], b"\"}", &[0xf0, 0x9f]]),
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("utf8-{i}"), None).await;
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if code != 1007 {
            wrong.push(format!("{what}: close {code}, saw {seen:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    calm.still_talk().await;
}

/// RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame that is not
/// masked", with 1002 (protocol error).
#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut ws = RawWs::open(&app, "unmasked", None).await;
    ws.write(&frame_with(
        true,
        0x1,
        br#"{"type":"ping","ref":"naked"}"#,
        None,
    ))
    .await;
    let (code, seen) = ws.close_code().await;
    assert_eq!(
        code, 1002,
        "an unmasked client frame must close the connection with 1002 (0 = no close within \
         {WAIT:?}); the server answered {seen:?}"
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn deeply_nested_json_and_msgpack_get_bad_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = RawWs::open(&app, "nested-json", Some("chatty.v1.json")).await;
    for (r, text) in deep_json_frames() {
        j.write(&frame(true, 0x1, text.as_bytes())).await;
        let e = j.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{r}: {e}"
        );
    }
    let mut m = RawWs::open(&app, "nested-mp", Some("chatty.v1.msgpack")).await;
    for (r, bytes) in deep_msgpack_frames() {
        m.write(&frame(true, 0x2, &bytes)).await;
        let e = m.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{r}: {e}"
        );
    }
    // Both sockets still work: ping, join, send.
    j.send_json(&json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(j.reply("alive").await["type"], "pong");
    m.send_msgpack(&json!({"type": "ping", "ref": "alive"}))
        .await;
    assert_eq!(m.reply("alive").await["type"], "pong");
    for (ws, cid, mp) in [(&mut j, "n1", false), (&mut m, "n2", true)] {
        let join = json!({"type":"join","ref":"j","room":"nest"});
        let send = json!({"type":"send","ref":cid,"room":"nest","cid":cid,"body":"fine"});
        for f in [&join, &send] {
            if mp {
                ws.send_msgpack(f).await;
            } else {
                ws.send_json(f).await;
            }
        }
        assert_eq!(ws.reply("j").await["type"], "joined");
        assert_eq!(ws.reply(cid).await["type"], "ack");
    }
    assert_eq!(app.rows("nest").await.len(), 2);
    calm.still_talk().await;
}

/// JSON frames under the 64 KiB cap nesting 32,000 levels deep in a known field, the `ref`
/// readable before the deep part: (ref, text).
fn deep_json_frames() -> Vec<(&'static str, String)> {
    let depth = 32_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(depth / 5), "}".repeat(depth / 5));
    let frames = vec![
        (
            "dj1",
            format!(r#"{{"type":"join","ref":"dj1","room":{deep}}}"#),
        ),
        (
            "dj2",
            format!(r#"{{"type":"send","ref":"dj2","room":"calm","cid":"c","body":{deep_obj}}}"#),
        ),
        (
            "dj3",
            format!(r#"{{"type":"history","ref":"dj3","room":"calm","limit":{deep}}}"#),
        ),
        ("dj4", format!(r#"{{"ref":"dj4","type":{deep}}}"#)),
    ];
    assert!(frames.iter().all(|(_, t)| t.len() < 65_536));
    frames
}

/// MessagePack maps nesting 20,000-60,000 levels deep in a known field (one-element arrays,
/// one-entry maps), the `ref` readable before the deep part: (ref, bytes).
fn deep_msgpack_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mp_frame = |r: &str, field: &str, nest: &[u8]| {
        let mut b = vec![0x83];
        for s in ["type", "join", "ref", r, field] {
            b.push(0xa0 | s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
        b.extend(std::iter::repeat_n(nest, 60_000 / nest.len()).flatten());
        b.push(0xc0);
        b
    };
    let frames = vec![
        ("dm1", mp_frame("dm1", "room", &[0x91])),
        ("dm2", mp_frame("dm2", "since", &[0x81, 0xa1, b'a'])),
    ];
    assert!(frames.iter().all(|(_, b)| b.len() < 65_536));
    frames
}

/// PROTOCOL.md: an `error` carries the `ref` "whenever the offending frame carried one, even if
/// the frame is otherwise invalid"; in these frames it is a plain string read before the deep
/// part.
#[tokio::test]
async fn the_error_for_a_deeply_nested_frame_carries_its_readable_ref() {
    let app = spawn_app().await;
    let mut j = RawWs::open(&app, "nested-json", Some("chatty.v1.json")).await;
    let mut m = RawWs::open(&app, "nested-mp", Some("chatty.v1.msgpack")).await;
    let mut wrong = Vec::new();
    for (r, text) in deep_json_frames() {
        j.write(&frame(true, 0x1, text.as_bytes())).await;
        let e = j.next().await;
        if e["ref"] != r {
            wrong.push(format!("json {r}: {e}"));
        }
    }
    for (r, bytes) in deep_msgpack_frames() {
        m.write(&frame(true, 0x2, &bytes)).await;
        let e = m.next().await;
        if e["ref"] != r {
            wrong.push(format!("msgpack {r}: {e}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "errors without the frame's ref: {wrong:#?}"
    );
}

#[tokio::test]
async fn msgpack_length_lies_get_bad_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut m = app.connect_msgpack("liar").await;
    let mut r = app.connect("liar-watch").await;
    m.join("lies").await;
    r.join("lies").await;
    let kv = |k: &str, v: &str| {
        let mut b = vec![0xa0 | k.len() as u8];
        b.extend_from_slice(k.as_bytes());
        b.push(0xa0 | v.len() as u8);
        b.extend_from_slice(v.as_bytes());
        b
    };
    let key = |k: &str| {
        let mut b = vec![0xa0 | k.len() as u8];
        b.extend_from_slice(k.as_bytes());
        b
    };
    let send_head = [
        vec![0x85],
        kv("type", "send"),
        kv("ref", "s"),
        kv("room", "lies"),
        kv("cid", "lie"),
        key("body"),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "map16 of 65535 entries, none present",
            vec![0xde, 0xff, 0xff],
        ),
        (
            "map32 of 2^32-1 entries",
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "array32 of 2^32-1 elements",
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "fixmap of 15 entries with 1 present",
            [vec![0x8f], kv("type", "ping")].concat(),
        ),
        (
            "str32 of 4 GiB as the type",
            [vec![0x81], key("type"), vec![0xdb, 0xff, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "str32 of 4 GiB as the body",
            [send_head.clone(), vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'x']].concat(),
        ),
        (
            "bin32 of 4 GiB as the body",
            [send_head.clone(), vec![0xc6, 0xff, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "str16 body longer than the frame",
            [send_head.clone(), vec![0xda, 0xff, 0xff, b'x', b'y']].concat(),
        ),
        (
            "array32 of 2^32-1 in an unknown field",
            [
                vec![0x83],
                kv("type", "ping"),
                kv("ref", "p"),
                key("x"),
                vec![0xdd, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "ext32 of 4 GiB in an unknown field",
            [
                vec![0x83],
                kv("type", "ping"),
                kv("ref", "p"),
                key("x"),
                vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
            ]
            .concat(),
        ),
        ("a lone map16 marker", vec![0xde]),
        ("a reserved marker byte", vec![0xc1]),
    ];
    let rss_before = rss_bytes();
    for (what, bytes) in &cases {
        m.send_raw(Message::Binary(bytes.clone().into())).await;
        let e = m.next_of("error").await;
        assert_eq!(e["code"], "bad_request", "{what}: {e}");
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 150 << 20, "RSS grew by {} MiB", grown >> 20);
    assert!(app.rows("lies").await.is_empty(), "nothing stored");
    m.send(json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(m.next_of("pong").await["ref"], "alive");
    assert_eq!(m.send_msg("lies", "truth", "ok").await["seq"], 1);
    let got = r.messages("lies", 1).await;
    assert_eq!(got[0]["cid"], "truth", "the first message the room saw");
    calm.still_talk().await;
}

#[tokio::test]
async fn a_frame_in_the_wrong_encoding_gets_bad_request_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = app.connect("json-socket").await;
    let mut m = app.connect_msgpack("msgpack-socket").await;
    let mut watch = app.connect("watcher").await;
    for c in [&mut j, &mut m, &mut watch] {
        c.join("enc").await;
    }
    let send = |cid: &str| json!({"type":"send","ref":cid,"room":"enc","cid":cid,"body":"sneaky"});
    // A well-formed MessagePack send, in a binary frame, on the JSON socket.
    j.send_raw(Message::Binary(
        rmp_serde::to_vec_named(&send("bin-on-json"))
            .unwrap()
            .into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    // A well-formed JSON send, in a text frame, on the MessagePack socket.
    m.send_raw(Message::Text(send("text-on-mp").to_string().into()))
        .await;
    assert_eq!(m.next_of("error").await["code"], "bad_request");
    // JSON bytes in a binary frame on the JSON socket, MessagePack bytes in a binary frame on the
    // MessagePack socket that is really JSON: the kind of frame decides, not its content.
    j.send_raw(Message::Binary(
        send("json-bytes-binary").to_string().into_bytes().into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    // Nothing was stored or broadcast: the first message the watcher sees is the marker, seq 1.
    assert_eq!(j.send_msg("enc", "marker", "after").await["seq"], 1);
    let got = watch.messages("enc", 1).await;
    assert_eq!(got[0]["cid"], "marker");
    assert_eq!(app.rows("enc").await.len(), 1);
    // Both sockets still work in their own encoding.
    assert_eq!(m.send_msg("enc", "mp-ok", "fine").await["seq"], 2);
    calm.still_talk().await;
}

/// "every frame is a text frame holding one JSON **object**" / "one MessagePack **map**":
/// serde would happily read a struct from a positional array, which is not the protocol.
#[tokio::test]
async fn positional_arrays_instead_of_objects_get_bad_request_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut j = RawWs::open(&app, "array-json", Some("chatty.v1.json")).await;
    let mut m = RawWs::open(&app, "array-mp", Some("chatty.v1.msgpack")).await;
    j.send_json(&json!({"type":"join","ref":"j","room":"arr"}))
        .await;
    assert_eq!(j.reply("j").await["type"], "joined");
    m.send_msgpack(&json!({"type":"join","ref":"j","room":"arr"}))
        .await;
    assert_eq!(m.reply("j").await["type"], "joined");
    // Every member of the server's frame struct, in its declaration order:
    // type, ref, room, since, cid, body, before, limit, seq.
    let send =
        |r: &str, cid: &str| json!(["send", r, "arr", null, cid, "positional", null, null, null]);
    let mut wrong = Vec::new();
    j.send_json(&send("a1", "arr-json")).await;
    let e = j.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("JSON array send: {e}"));
    }
    m.write(&frame(
        true,
        0x2,
        &rmp_serde::to_vec(&send("a2", "arr-mp")).unwrap(),
    ))
    .await;
    let e = m.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("MessagePack array send: {e}"));
    }
    j.send_json(&json!([
        "ping", "p1", null, null, null, null, null, null, null
    ]))
    .await;
    let e = j.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("JSON array ping: {e}"));
    }
    let rows = app.rows("arr").await;
    assert!(
        wrong.is_empty() && rows.is_empty(),
        "{wrong:#?}; stored from arrays: {rows:?}"
    );
}

#[tokio::test]
async fn hostile_room_ids_get_bad_request_with_their_ref_and_create_nothing() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut c = RawWs::open(&app, "roomer", Some("chatty.v1.json")).await;
    let rooms_before = room_count(&app).await;
    let ids: Vec<Value> = vec![
        json!("x".repeat(65)),
        json!("x".repeat(60_000)),
        json!("ünïcödé"),
        json!("💬"),
        json!("../x"),
        json!("..\\x"),
        json!("/etc/passwd"),
        json!("%2e%2e%2fx"),
        json!(""),
        json!("a\u{0}b"),
        json!("\u{0}"),
        json!("a b"),
        json!("room\n"),
        json!("ro\u{202e}om"),
        json!("calm;drop table rooms"),
        json!("calm'--"),
        json!(42),
        json!(null),
        json!(["calm"]),
        json!({"id": "calm"}),
        json!(true),
    ];
    let mut wrong = Vec::new();
    let mut n = 0;
    for id in &ids {
        let shown: String = id.to_string().chars().take(40).collect();
        for ty in ["join", "leave", "send", "history", "read"] {
            n += 1;
            let r = format!("r{n}");
            let mut f =
                json!({"type": ty, "ref": r, "room": id, "cid": "c", "body": "b", "seq": 1});
            if id.is_null() {
                f.as_object_mut().unwrap().remove("room");
            }
            c.send_json(&f).await;
            let e = c.reply(&r).await;
            if e["type"] != "error" || e["code"] != "bad_request" {
                wrong.push(format!("{ty} {shown}: {e}"));
            }
        }
        // `typing` has no ref: exactly one error comes before the pong that follows it.
        n += 1;
        let r = format!("r{n}");
        c.send_json(&json!({"type": "typing", "room": id})).await;
        c.send_json(&json!({"type": "ping", "ref": r})).await;
        let mut before_pong = Vec::new();
        loop {
            let v = c.next().await;
            if v["ref"] == r.as_str() {
                break;
            }
            before_pong.push(v);
        }
        if before_pong.len() != 1 || before_pong[0]["code"] != "bad_request" {
            wrong.push(format!("typing {shown}: {before_pong:?}"));
        }
    }
    // A lone surrogate is not a string at all.
    c.write(&frame(
        true,
        0x1,
        br#"{"type":"join","ref":"sur","room":"\ud800"}"#,
    ))
    .await;
    let e = c.reply("sur").await;
    if e["code"] != "bad_request" {
        wrong.push(format!("lone surrogate: {e}"));
    }
    // MessagePack: rooms that are not valid UTF-8 strings.
    let mut m = RawWs::open(&app, "roomer-mp", Some("chatty.v1.msgpack")).await;
    for (what, room) in [
        ("invalid UTF-8 str", vec![0xa2, 0xff, 0xfe]),
        ("overlong UTF-8 str", vec![0xa2, 0xc0, 0xaf]),
        ("bin8 not UTF-8", vec![0xc4, 0x02, 0xff, 0xfe]),
    ] {
        let mut b = vec![0x83, 0xa4];
        b.extend_from_slice(b"type");
        b.push(0xa4);
        b.extend_from_slice(b"join");
        b.push(0xa3);
        b.extend_from_slice(b"ref");
        b.push(0xa2);
        b.extend_from_slice(b"mp");
        b.push(0xa4);
        b.extend_from_slice(b"room");
        b.extend_from_slice(&room);
        m.write(&frame(true, 0x2, &b)).await;
        let e = m.next().await;
        if e["code"] != "bad_request" {
            wrong.push(format!("msgpack {what}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(room_count(&app).await, rooms_before, "no room row created");
    assert_eq!(message_count(&app).await, 0, "nothing stored");
    // The socket is still usable.
    c.send_json(&json!({"type":"join","ref":"ok","room":"fine.room-1_x"}))
        .await;
    assert_eq!(c.reply("ok").await["type"], "joined");
    calm.still_talk().await;
}

#[tokio::test]
async fn nul_bytes_in_a_body_are_bad_request_and_nothing_is_stored_or_broadcast() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = app.connect("nul-json").await;
    let mut m = app.connect_msgpack("nul-mp").await;
    let mut watch = app.connect("nul-watch").await;
    for c in [&mut j, &mut m, &mut watch] {
        c.join("nul").await;
    }
    let long = "x\0".repeat(2000);
    let bodies = ["\0", "\0start", "end\0", "mid\0dle", long.as_str()];
    for (i, body) in bodies.iter().enumerate() {
        for (who, c) in [("json", &mut j), ("msgpack", &mut m)] {
            let r = format!("{who}{i}");
            c.send(json!({"type":"send","ref":r,"room":"nul","cid":r,"body":body}))
                .await;
            let e = c.next_of("error").await;
            assert_eq!(
                (e["code"].as_str(), e["ref"].as_str()),
                (Some("bad_request"), Some(r.as_str())),
                "{who} body {i}: {e}"
            );
        }
    }
    // NUL written as a raw escape inside JSON text (not through serde_json).
    j.send_raw(Message::Text(
        r#"{"type":"send","ref":"esc","room":"nul","cid":"esc","body":"a\u0000b"}"#.into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    assert_eq!(j.send_msg("nul", "marker", "clean").await["seq"], 1);
    let got = watch.messages("nul", 1).await;
    assert_eq!(got[0]["cid"], "marker", "nothing was broadcast before it");
    assert_eq!(
        app.rows("nul").await.len(),
        1,
        "nothing stored but the marker"
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn absurd_history_limits_and_sequence_numbers_are_refused_or_clamped() {
    let (mut s, _) = test_settings().await;
    s.limits.history_max = 5;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let mut c = app.connect("historian").await;
    c.join("hist").await;
    for i in 1..=8 {
        assert_eq!(c.send_msg("hist", &format!("h{i}"), "x").await["seq"], i);
    }
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    // limit 0, negative, past u64, fractional, a string: bad_request with the ref.
    for (r, extra) in [
        ("l0", r#","limit":0"#),
        ("lneg", r#","limit":-1"#),
        ("lbig", r#","limit":18446744073709551616"#),
        ("lhuge", r#","limit":1e400"#),
        ("lstr", r#","limit":"10""#),
        ("bneg", r#","before":-1"#),
    ] {
        let v = ask_history(&mut c, r, extra).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{extra}: {v}"
        );
    }
    // u64::MAX: the newest page, clamped to history_max.
    let v = ask_history(&mut c, "lmax", r#","limit":18446744073709551615"#).await;
    assert_eq!(v["type"], "history", "{v}");
    assert_eq!(seqs(&v), vec![4, 5, 6, 7, 8]);
    assert_eq!(v["more"], true);
    // before = u64::MAX is "before everything": the newest page too.
    let v = ask_history(
        &mut c,
        "bmax",
        r#","before":18446744073709551615,"limit":2"#,
    )
    .await;
    assert_eq!(seqs(&v), vec![7, 8], "{v}");
    assert_eq!(v["more"], true);
    let v = ask_history(&mut c, "b0", r#","before":0"#).await;
    assert_eq!(seqs(&v), Vec::<u64>::new(), "{v}");
    assert_eq!(v["more"], false);
    // A read marker far past the head is stored as the head.
    c.send(json!({"type":"read","ref":"rmax","room":"hist","seq":u64::MAX}))
        .await;
    let v = c.next_of("read").await;
    assert_eq!(
        (v["ref"].as_str(), v["seq"].as_u64()),
        (Some("rmax"), Some(8))
    );
    calm.still_talk().await;
}

/// A `since` beyond the room's head cannot be "the last seq you saw": nothing past the head
/// exists. `joined` reports the head; the live messages that follow it must then arrive (the
/// contract: "the messages after `since`, **then live ones**"). Otherwise a client holding a
/// stale or corrupt `since` (a restored database, a bug, a hostile value) is silently muted
/// in that room for as long as the socket lives.
#[tokio::test]
async fn a_join_with_since_past_the_head_still_receives_the_live_messages_that_follow() {
    let app = spawn_app().await;
    let mut c = app.connect("speaker").await;
    c.join("ahead").await;
    for i in 1..=3 {
        c.send_msg("ahead", &format!("a{i}"), "x").await;
    }
    c.messages("ahead", 3).await;
    let mut wrong = Vec::new();
    // since = the head is the control: the live message must arrive there.
    for (i, ahead) in [0u64, 1, 1000, u64::MAX].into_iter().enumerate() {
        let head = 3 + i as u64;
        let since = head.saturating_add(ahead);
        let mut late = app.connect(&format!("late{i}")).await;
        let joined = late.join_since("ahead", since).await;
        assert_eq!(joined["seq"], head, "joined reports the head");
        let cid = format!("live{i}");
        let seq = c.send_msg("ahead", &cid, "live").await["seq"]
            .as_u64()
            .unwrap();
        // The speaker's own copy shows the room has delivered it; a ping then queues behind
        // whatever the room gave `late`.
        let own = c.messages("ahead", 1).await;
        assert_eq!(own[0]["cid"], cid.as_str());
        late.send(json!({"type":"ping","ref":"sync"})).await;
        let mut got = Vec::new();
        loop {
            let v = late.next().await.expect("socket open");
            if v["ref"] == "sync" {
                break;
            }
            if v["type"] == "message" {
                got.push(v["seq"].as_u64().unwrap());
            }
        }
        if got != [seq] {
            wrong.push(format!(
                "head {head}, since {since}: live seq {seq} delivered as {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A raw `history` request for room `hist` with `extra` JSON members; the reply with its ref.
async fn ask_history(c: &mut Client, r: &str, extra: &str) -> Value {
    let text = format!(r#"{{"type":"history","ref":"{r}","room":"hist"{extra}}}"#);
    c.send_raw(Message::Text(text.into())).await;
    loop {
        let v = c.next().await.expect("socket open");
        if v["ref"] == r {
            return v;
        }
    }
}

#[tokio::test]
async fn fifty_copies_of_one_cid_in_one_burst_all_ack_the_same_seq_and_store_one_row() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut a = Duplex::connect(&app, "dup-a").await;
    let mut b = Duplex::connect(&app, "dup-b").await;
    let mut watch = app.connect("dup-watch").await;
    watch.join("dup").await;
    for d in [&mut a, &mut b] {
        d.send(&json!({"type":"join","ref":"j","room":"dup"})).await;
        assert_eq!(d.reply("j").await["type"], "joined");
    }
    // Both users burst the same cid 50 times without waiting, bodies differing.
    for i in 0..50 {
        for d in [&mut a, &mut b] {
            d.feed(&json!({"type":"send","ref":format!("d{i}"),"room":"dup","cid":"same","body":format!("copy {i}")}))
                .await;
        }
    }
    a.flush().await;
    b.flush().await;
    let mut seqs = Vec::new();
    for (who, d) in [("a", &mut a), ("b", &mut b)] {
        let mut acks = Vec::new();
        for i in 0..50 {
            let v = d.reply(&format!("d{i}")).await;
            assert_eq!(v["type"], "ack", "{who} d{i}: {v}");
            acks.push((v["seq"].as_u64().unwrap(), v["ts"].as_u64().unwrap()));
        }
        assert!(
            acks.iter().all(|x| *x == acks[0]),
            "{who}: every ack carries the original seq and ts: {acks:?}"
        );
        seqs.push(acks[0].0);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2], "one seq per user");
    // Exactly two broadcasts, then the marker.
    assert_eq!(a.send_msg_marker("dup").await, 3);
    let got = watch.messages("dup", 3).await;
    let cids: Vec<_> = got.iter().map(|m| m["cid"].as_str().unwrap()).collect();
    assert_eq!(cids, vec!["same", "same", "marker"]);
    let rows = app.rows("dup").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for m in &got[..2] {
        let row = rows
            .iter()
            .find(|r| r.0 == m["seq"].as_i64().unwrap())
            .unwrap();
        assert_eq!(
            row.3,
            m["body"].as_str().unwrap(),
            "stored body is the one broadcast"
        );
    }
    calm.still_talk().await;
}

impl Duplex {
    /// Send a `marker` message and return its seq.
    async fn send_msg_marker(&mut self, room: &str) -> u64 {
        self.send(&json!({"type":"send","ref":"marker","room":room,"cid":"marker","body":"m"}))
            .await;
        let v = self.reply("marker").await;
        assert_eq!(v["type"], "ack", "{v}");
        v["seq"].as_u64().unwrap()
    }
}

/// 11,000 sends in one burst from 10 sockets over 4 rooms: more rows than one statement could
/// bind at six parameters per row (65,535 / 6 = 10,922). Settings: `writer.batch_max` is
/// raised to 16,384 (above the 8,192 that settings validation allows, so one flush can really
/// take them all) and `writer.lanes` set to 1 (so the four rooms pile up behind one lane, and
/// its whole queue share is the default 20,000); the `messages` table is locked for a moment so the sends pile up
/// behind one blocked flush; `limits.outbound_queue` is raised to 65,536 so the test's own
/// readers cannot become slow consumers; the rate limit is the harness's 100,000/s and
/// `limits.writer_queue` stays at its default 20,000.
#[tokio::test]
async fn eleven_thousand_sends_in_one_burst_are_all_acked_and_stored_exactly_once() {
    const SENDERS: usize = 10;
    const EACH: usize = 1100;
    const ROOMS: usize = 4;
    let (mut s, _) = test_settings().await;
    s.writer.batch_max = 16_384;
    s.writer.lanes = 1;
    s.writer.retry_max_ms = 60_000;
    s.limits.outbound_queue = 65_536;
    s.limits.writer_queue = 20_000;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let room = |i: usize| format!("burst-{}", i % ROOMS);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut d = Duplex::connect(&app, &format!("burst{i}")).await;
        d.send(&json!({"type":"join","ref":"j","room":room(i)}))
            .await;
        assert_eq!(d.reply("j").await["type"], "joined");
        senders.push(d);
    }
    let mut watchers = Vec::new();
    for r in 0..ROOMS {
        let mut d = Duplex::connect(&app, &format!("burst-watch{r}")).await;
        d.send(&json!({"type":"join","ref":"j","room":room(r)}))
            .await;
        assert_eq!(d.reply("j").await["type"], "joined");
        watchers.push(d);
    }

    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("lock table messages in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let t = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            let room = room(i);
            tokio::spawn(async move {
                for k in 0..EACH {
                    let cid = format!("b{i}-{k}");
                    d.feed(&json!({"type":"send","ref":cid,"room":room,"cid":cid,"body":format!("burst {i} {k}")}))
                        .await;
                }
                d.flush().await;
                let mut acks = 0;
                while acks < EACH {
                    let v = d.recv().await;
                    match v["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("error") => panic!("sender {i}: {v}"),
                        _ => {}
                    }
                }
                acks
            })
        })
        .collect();
    // Hold the lock until every send has been read by the server (at most 4 s, well inside
    // the store's 5 s call timeout), so they queue behind one blocked flush.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(4) {
        let m = app.metrics().await;
        if metric_sum(&m, "chatty_frames_in_total", &[("type", "send")]) >= (SENDERS * EACH) as f64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.rollback().await.unwrap();
    for (i, task) in tasks.into_iter().enumerate() {
        let acks = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap_or_else(|_| panic!("sender {i} not fully acked within 60 s"))
            .unwrap();
        assert_eq!(acks, EACH);
    }
    let took = t.elapsed();
    for (r, w) in watchers.iter_mut().enumerate() {
        let n = (0..SENDERS).filter(|i| i % ROOMS == r).count() * EACH;
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let v = w.recv().await;
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(
            seqs,
            (1..=n as u64).collect::<Vec<_>>(),
            "room {r}: one gap-free order"
        );
    }
    assert_eq!(message_count(&app).await, (SENDERS * EACH) as i64);
    let per_room: Vec<(String, i64, i64)> = sqlx::query_as(
        "select room_id, count(*), max(seq) from messages where room_id like 'burst-%' group by room_id order by room_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (room, count, max) in &per_room {
        assert_eq!(count, max, "{room}: seqs are 1..=count");
    }
    let m = app.metrics().await;
    let batches = metric_sum(&m, "chatty_writer_batch_size_count", &[]);
    let small = metric_sum(&m, "chatty_writer_batch_size_bucket", &[("le", "4096")]);
    eprintln!(
        "{} sends acked in {took:?}; {batches} flushes, {} above 4096 rows",
        SENDERS * EACH,
        batches - small
    );
    assert!(
        batches - small >= 1.0,
        "no flush above 4096 rows: the burst never formed one big batch"
    );
    calm.still_talk().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Abuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_ping_flood_is_rate_limited_and_a_bystander_still_gets_its_messages() {
    let (mut s, _) = test_settings().await;
    s.limits.messages_per_second = 50.0;
    s.limits.message_burst = 100;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let mut flood = Duplex::connect(&app, "flooder").await;
    const N: usize = 3000;
    let t = Instant::now();
    let sender = {
        let mut tx = flood.tx;
        tokio::spawn(async move {
            for i in 0..N {
                tx.feed(Message::Text(
                    json!({"type":"ping","ref":format!("p{i}")})
                        .to_string()
                        .into(),
                ))
                .await
                .expect("feed");
            }
            tx.flush().await.expect("flush");
            tx
        })
    };
    // While the flood is on, the bystanders keep talking; each message arrives within WAIT.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        slowest = slowest.max(calm.still_talk().await);
    }
    flood.tx = sender.await.unwrap();
    let (mut pongs, mut limited) = (0usize, 0usize);
    for i in 0..N {
        let r = format!("p{i}");
        let v = flood.reply(&r).await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("{r}: {v}"),
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    eprintln!(
        "{N} pings in {elapsed:.2}s: {pongs} pongs, {limited} rate_limited; slowest bystander round trip {slowest:?}"
    );
    assert_eq!(pongs + limited, N, "every ping answered once");
    assert!(pongs >= 100, "the burst is honoured: {pongs}");
    assert!(
        (pongs as f64) <= 100.0 + 50.0 * elapsed + 5.0,
        "{pongs} pongs in {elapsed:.2}s exceed burst + rate"
    );
    assert!(limited > 0);
    assert!(
        app.metric("chatty_rate_limited_total").await >= limited as f64,
        "rate limiting is counted"
    );
    // The flooder is throttled, not disconnected: once its bucket refills it is served again.
    assert!(flood.is_open(), "the flooder's socket stays open");
    let deadline = Instant::now() + WAIT;
    let mut k = 0;
    loop {
        k += 1;
        let r = format!("again{k}");
        flood.send(&json!({"type":"ping","ref":r})).await;
        if flood.reply(&r).await["type"] == "pong" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flooder was never served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    calm.still_talk().await;
}

#[tokio::test]
async fn ten_thousand_joins_on_one_connection_stop_at_room_limit_and_everything_keeps_working() {
    let app = spawn_app().await;
    let cap = app.settings.limits.rooms_per_connection;
    let mut calm = Bystanders::new(&app).await;
    let mut watch = app.connect("joins-watch").await;
    watch.join("j0").await;
    let mut c = Duplex::connect(&app, "joiner").await;
    const N: usize = 10_000;
    for i in 0..N {
        c.feed(&json!({"type":"join","ref":format!("j{i}"),"room":format!("j{i}")}))
            .await;
    }
    c.flush().await;
    let (mut joined, mut limited) = (0, 0);
    for i in 0..N {
        let v = c.reply(&format!("j{i}")).await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("joined"), _) if i < cap => joined += 1,
            (Some("error"), Some("room_limit")) if i >= cap => limited += 1,
            _ => panic!("join {i} (cap {cap}): {v}"),
        }
    }
    assert_eq!((joined, limited), (cap, N - cap));
    // The connection still works in its rooms; a freed slot can be used again, once.
    assert_eq!(c.send_msg_marker("j0").await, 1);
    assert_eq!(watch.messages("j0", 1).await[0]["cid"], "marker");
    c.send(&json!({"type":"leave","ref":"l","room":"j1"})).await;
    assert_eq!(c.reply("l").await["type"], "left");
    c.send(&json!({"type":"join","ref":"x1","room":"extra"}))
        .await;
    assert_eq!(c.reply("x1").await["type"], "joined");
    c.send(&json!({"type":"join","ref":"x2","room":"extra2"}))
        .await;
    assert_eq!(c.reply("x2").await["code"], "room_limit");
    // Refused joins left no room actor behind (cap + "extra" + the bystanders' room).
    let rooms = app.metric("chatty_actors_alive{kind=\"room\"}").await;
    assert!(rooms <= (cap + 2) as f64, "{rooms} room actors alive");
    calm.still_talk().await;
}

#[tokio::test]
async fn joining_and_leaving_one_room_over_and_over_leaves_one_membership_and_clean_presence() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut watch = app.connect("flap-watch").await;
    watch.join("flap").await;
    let mut f = Duplex::connect(&app, "flapper").await;
    const N: usize = 500;
    for i in 0..N {
        f.feed(&json!({"type":"join","ref":format!("j{i}"),"room":"flap"}))
            .await;
        f.feed(&json!({"type":"leave","ref":format!("l{i}"),"room":"flap"}))
            .await;
    }
    f.feed(&json!({"type":"join","ref":"final","room":"flap"}))
        .await;
    f.flush().await;
    for i in 0..N {
        let v = f.reply(&format!("j{i}")).await;
        assert_eq!(v["type"], "joined", "j{i}: {v}");
        let v = f.reply(&format!("l{i}")).await;
        assert_eq!(v["type"], "left", "l{i}: {v}");
    }
    assert_eq!(f.reply("final").await["type"], "joined");
    // One membership: each message arrives once, in order.
    for k in 1..=3u64 {
        assert_eq!(
            watch.send_msg("flap", &format!("w{k}"), "x").await["seq"],
            k
        );
    }
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let v = f.next_where(|v| v["type"] == "message").await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3], "no duplicate delivery");
    // Presence settles to exactly the two users, then to the watcher alone after a leave.
    let http = reqwest::Client::new();
    let presence = || {
        let req = http
            .get(app.http("/api/v1/rooms/flap/presence"))
            .bearer_auth(app.api_key());
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            let mut users: Vec<String> = v["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["user"].as_str().unwrap().to_string())
                .collect();
            users.sort();
            users
        }
    };
    eventually("presence is the two users", || async {
        presence().await == ["flap-watch", "flapper"]
    })
    .await;
    f.send(&json!({"type":"leave","ref":"bye","room":"flap"}))
        .await;
    assert_eq!(f.reply("bye").await["type"], "left");
    eventually("the flapper left presence", || async {
        presence().await == ["flap-watch"]
    })
    .await;
    f.send(&json!({"type":"send","ref":"s","room":"flap","cid":"s","body":"x"}))
        .await;
    assert_eq!(f.reply("s").await["code"], "not_joined");
    assert!(
        app.metric("chatty_actors_alive{kind=\"room\"}").await <= 2.0,
        "one actor for the room, one for the bystanders'"
    );
    assert_eq!(app.rows("flap").await.len(), 3);
    calm.still_talk().await;
}

//! `RawWs`: the one WebSocket spoken by hand over TCP, for frames that a well-behaved client
//! library refuses to produce (unmasked, reserved bits or opcodes, lying lengths, fragment
//! bombs, invalid UTF-8, …).
//!
//! Client frames are written byte for byte (`frame`, `frame_with`, `close_frame`); server
//! frames are read by parsing their header (FIN/opcode, 7-, 16- or 64-bit length, optional
//! mask, payload), so a close frame and its code are found by parsing, never by scanning.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestApp, WAIT};

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The masking key of every masked client frame.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The answer to a hand-written upgrade request.
pub struct Upgrade {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub stream: TcpStream,
    /// Bytes read past the response head (the first frames after a 101).
    pub rest: Vec<u8>,
}

impl Upgrade {
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// `GET target` with the WebSocket upgrade headers plus `headers` (raw bytes, repeats kept).
pub async fn upgrade_request(port: u16, target: &str, headers: &[(&str, &[u8])]) -> Upgrade {
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

/// One client frame; `mask: None` writes it unmasked (an RFC 6455 violation for a client).
pub fn frame_with(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, opcode, payload, Some(MASK))
}

/// A masked close frame with exactly this payload.
pub fn close_frame(payload: &[u8]) -> Vec<u8> {
    frame(true, 0x8, payload)
}

/// A WebSocket spoken by hand over TCP.
pub struct RawWs {
    pub s: TcpStream,
    /// Bytes read but not yet parsed into a frame.
    pub buf: Vec<u8>,
}

impl RawWs {
    pub async fn open(app: &TestApp, user: &str, protocol: Option<&str>) -> RawWs {
        Self::open_port(app.port, &app.token(user), protocol).await
    }

    pub async fn open_port(port: u16, token: &str, protocol: Option<&str>) -> RawWs {
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
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.s.write_all(bytes)).await;
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.write(&frame(true, 0x1, v.to_string().as_bytes()))
            .await;
    }

    pub async fn send_msgpack(&mut self, v: &Value) {
        self.write(&frame(true, 0x2, &rmp_serde::to_vec_named(v).unwrap()))
            .await;
    }

    /// The next server frame (opcode, payload), `None` once the connection ended.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        read_frame(&mut self.s, &mut self.buf).await
    }

    /// Read until the close frame: its code (1005 without one), 1006 if the TCP connection
    /// ended without a close frame, 0 if neither happened within WAIT; and every frame read on
    /// the way (opcode, payload), control frames included.
    pub async fn frames_until_close(&mut self) -> (u16, Vec<(u8, Vec<u8>)>) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(f) = read_frame_within(&mut self.s, &mut self.buf, left).await else {
                return (0, seen);
            };
            match f {
                None => return (1006, seen),
                Some((0x8, p)) => return (close_code_of(&p), seen),
                Some(f) => seen.push(f),
            }
        }
    }

    /// Read until the close frame: its code (1005 without one), 1006 if the TCP connection
    /// ended without a close frame, 0 if neither happened within WAIT. Data frames read on the
    /// way are returned for diagnostics.
    pub async fn close_code(&mut self) -> (u16, Vec<String>) {
        let (code, frames) = self.frames_until_close().await;
        let seen = frames
            .iter()
            .filter(|(op, _)| !matches!(op, 0x9 | 0xA))
            .map(|(op, p)| describe(*op, p))
            .collect();
        (code, seen)
    }

    /// After the close frame, the server ends the TCP connection (within WAIT).
    pub async fn ends(&mut self) -> bool {
        loop {
            match self.frame().await {
                None => return true,
                Some((0x8, _)) => return false, // a second close frame
                Some(_) => {}
            }
        }
    }

    /// The next protocol frame, decoded (text as JSON, binary as MessagePack).
    pub async fn next(&mut self) -> Value {
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
    pub async fn reply_or_next(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if !matches!(v["type"].as_str(), Some("message" | "presence" | "typing")) {
                return v;
            }
        }
    }

    /// The next protocol frame with this `ref`.
    pub async fn reply(&mut self, r: &str) -> Value {
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

/// The code of a close frame's payload: its first two bytes, 1005 (no status) without them.
pub fn close_code_of(payload: &[u8]) -> u16 {
    match payload {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => 1005,
    }
}

/// A server frame, for diagnostics.
pub fn describe(op: u8, p: &[u8]) -> String {
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
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
) -> Option<(u8, Vec<u8>)> {
    read_frame_within(s, buf, WAIT)
        .await
        .expect("timed out waiting for a frame from the server")
}

/// Like `read_frame`, `Err` when nothing complete arrived within `d`.
pub async fn read_frame_within<R: tokio::io::AsyncRead + Unpin>(
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

/// One complete server frame at the start of `b`: (opcode, payload, bytes used); `None` until
/// all of it has arrived.
pub fn parse_server_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => (
            usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?,
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
    let end = at.checked_add(len)?;
    let payload = b.get(at..end)?;
    let payload = match mask {
        Some(k) => payload
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ k[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Some((op, payload, end))
}

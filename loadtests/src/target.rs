//! Protocol adapters: how each server under test is joined, sent to and read from.
//!
//! * `chatty`: Chatty protocol v1, JSON encoding, JWT in `Authorization`.
//! * `bare`: the bare broadcast ceiling (`chatty-loadtest bare-server`), which speaks the
//!   join/send/message subset of the same JSON frames, with no auth, acks or persistence.
//! * `nats`: the NATS text protocol over nats-server's WebSocket listener (subject = room).
//! * `socketio`: Engine.IO v4 / Socket.IO over a raw WebSocket to `peers/socketio/server.js`.
//!
//! Every message body is `<scheduled unix µs>.<sender conn>.<sender counter>.` padded with `x`
//! to the configured size, so any receiver can compute the delivery latency and check order.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::ws::{self, WsUrl, OP_TEXT};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Chatty,
    Bare,
    Nats,
    Socketio,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Chatty => "chatty",
            Target::Bare => "bare",
            Target::Nats => "nats",
            Target::Socketio => "socketio",
        }
    }

    /// The URL to upgrade on.
    pub fn url(self, base: &WsUrl) -> WsUrl {
        match self {
            Target::Socketio => base.with_path("/socket.io/?EIO=4&transport=websocket"),
            _ => base.clone(),
        }
    }

    pub fn acks(self) -> bool {
        self == Target::Chatty
    }

    /// Connect handshake + room join on an upgraded socket. `buf` holds bytes already read and
    /// keeps whatever follows the join's reply.
    pub async fn join<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        s: &mut S,
        buf: &mut Vec<u8>,
        room: &str,
        timeout: Duration,
    ) -> Result<()> {
        match self {
            Target::Chatty | Target::Bare => {
                let j = format!(r#"{{"type":"join","ref":"j","room":"{room}"}}"#);
                s.write_all(&ws::frame(OP_TEXT, j.as_bytes())).await?;
                ws::read_until(s, buf, timeout, |_, p| {
                    if p.starts_with(br#"{"type":"joined""#) {
                        Ok(Some(()))
                    } else if p.starts_with(br#"{"type":"error""#) {
                        bail!("join refused: {}", String::from_utf8_lossy(p))
                    } else {
                        Ok(None)
                    }
                })
                .await
            }
            Target::Nats => {
                // INFO first, then CONNECT + SUB + PING; the PONG proves the SUB was processed.
                let mut stream = Vec::new();
                ws::read_until(s, buf, timeout, |_, p| {
                    stream.extend_from_slice(p);
                    Ok(memchr::memmem::find(&stream, b"\r\n").map(|_| ()))
                })
                .await?;
                let c = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {room} 1\r\nPING\r\n"
                );
                s.write_all(&ws::frame(OP_TEXT, c.as_bytes())).await?;
                let mut stream = Vec::new();
                ws::read_until(s, buf, timeout, |_, p| {
                    stream.extend_from_slice(p);
                    if memchr::memmem::find(&stream, b"-ERR").is_some() {
                        bail!("nats refused: {}", String::from_utf8_lossy(&stream));
                    }
                    Ok(memchr::memmem::find(&stream, b"PONG\r\n").map(|_| ()))
                })
                .await
            }
            Target::Socketio => {
                ws::read_until(s, buf, timeout, |_, p| {
                    Ok(if p.first() == Some(&b'0') {
                        Some(())
                    } else {
                        None
                    })
                })
                .await?;
                s.write_all(&ws::frame(OP_TEXT, b"40")).await?;
                ws::read_until(s, buf, timeout, |_, p| {
                    Ok(if p.starts_with(b"40") { Some(()) } else { None })
                })
                .await?;
                let j = format!(r#"42["join","{room}"]"#);
                s.write_all(&ws::frame(OP_TEXT, j.as_bytes())).await?;
                ws::read_until(s, buf, timeout, |_, p| {
                    Ok(if p.starts_with(br#"42["joined""#) {
                        Some(())
                    } else {
                        None
                    })
                })
                .await
            }
        }
    }

    /// Append the frame that sends `body` to `room`.
    pub fn encode_send(self, out: &mut Vec<u8>, room: &str, cid: &str, sched_us: u64, body: &[u8]) {
        let mut p = Vec::with_capacity(body.len() + 96);
        match self {
            Target::Chatty | Target::Bare => {
                p.extend_from_slice(br#"{"type":"send","ref":""#);
                p.extend_from_slice(sched_us.to_string().as_bytes());
                p.extend_from_slice(br#"","room":""#);
                p.extend_from_slice(room.as_bytes());
                p.extend_from_slice(br#"","cid":""#);
                p.extend_from_slice(cid.as_bytes());
                p.extend_from_slice(br#"","body":""#);
                p.extend_from_slice(body);
                p.extend_from_slice(br#""}"#);
            }
            Target::Nats => {
                p.extend_from_slice(format!("PUB {room} {}\r\n", body.len()).as_bytes());
                p.extend_from_slice(body);
                p.extend_from_slice(b"\r\n");
            }
            Target::Socketio => {
                p.extend_from_slice(br#"42["msg",""#);
                p.extend_from_slice(room.as_bytes());
                p.extend_from_slice(br#"",""#);
                p.extend_from_slice(body);
                p.extend_from_slice(br#""]"#);
            }
        }
        ws::put_frame(out, OP_TEXT, &p);
    }
}

/// `<sched>.<sender>.<counter>.` padded with `x` to `size` bytes.
pub fn make_body(sched_us: u64, sender: usize, counter: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{sched_us}.{sender}.{counter}.").into_bytes();
    if b.len() < size {
        b.resize(size, b'x');
    }
    b
}

/// Parse a leading unsigned decimal; returns it and the rest after one separator byte.
#[inline]
fn num(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add((b[i] - b'0') as u64);
        i += 1;
    }
    if i == 0 {
        return None;
    }
    Some((v, b.get(i + 1..).unwrap_or(&[])))
}

/// (scheduled µs, sender, counter) from the start of a body.
#[inline]
pub fn parse_body(b: &[u8]) -> Option<(u64, u32, u64)> {
    let (sched, r) = num(b)?;
    let (sender, r) = num(r)?;
    let (counter, _) = num(r)?;
    Some((sched, sender as u32, counter))
}

#[inline]
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    num(b).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let b = make_body(1_700_000_000_123_456, 42, 7, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(parse_body(&b), Some((1_700_000_000_123_456, 42, 7)));
        let b = make_body(1, 2, 3, 0);
        assert_eq!(parse_body(&b), Some((1, 2, 3)));
        assert_eq!(parse_body(b"abc"), None);
    }
}

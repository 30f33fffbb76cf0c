//! A minimal WebSocket client: just enough RFC 6455 for a load generator whose receive path
//! must stay cheap. The handshake is written by hand, server frames are parsed in place from a
//! read buffer (no copies, no per-frame allocation), client frames are masked as the RFC demands.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl WsUrl {
    pub fn parse(s: &str) -> Result<Self> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            bail!("url must start with ws:// or wss://: {s}");
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse().context("bad port")?)
            }
            _ => (hostport.to_string(), if tls { 443 } else { 80 }),
        };
        Ok(Self {
            tls,
            host,
            port,
            path: path.to_string(),
        })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> Self {
        let mut u = self.clone();
        u.path = path.to_string();
        u
    }
}

/// Build the upgrade request.
pub fn request(url: &WsUrl, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        url.path, url.host, url.port
    );
    for (k, v) in extra_headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Send the upgrade request and read the response head. Returns the bytes read past the head
/// (the start of the first frames) and the response head itself.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    url: &WsUrl,
    extra_headers: &[(&str, &str)],
) -> Result<(Vec<u8>, String)> {
    s.write_all(&request(url, extra_headers)).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            let status = head.lines().next().unwrap_or("");
            if !status.contains(" 101") {
                let body = String::from_utf8_lossy(&buf[i + 4..]).into_owned();
                bail!("upgrade refused: {status} {}", body.trim());
            }
            return Ok((buf[i + 4..].to_vec(), head));
        }
        if buf.len() > 16 * 1024 {
            bail!("response head too large");
        }
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Append one masked client frame.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= MASK[i & 3];
    }
}

pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    put_frame(&mut v, opcode, payload);
    v
}

/// One server frame found in a buffer.
pub struct RawFrame {
    pub opcode: u8,
    pub start: usize,
    pub end: usize,
}

/// Parse the frame at the start of `buf`, if complete. Returns it and its total length.
#[inline]
pub fn parse_frame(buf: &[u8]) -> Result<Option<(RawFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let (len, mut off) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if len > 64 * 1024 * 1024 {
        return Err(anyhow!("frame of {len} bytes"));
    }
    if masked {
        off += 4; // servers do not mask; tolerate it anyway (payload is left masked)
    }
    if buf.len() < off + len {
        return Ok(None);
    }
    Ok(Some((
        RawFrame {
            opcode: b0 & 0x0f,
            start: off,
            end: off + len,
        },
        off + len,
    )))
}

/// Read frames from a generic stream until `f` returns `Some` (used on slow paths: joins,
/// smoke tests). `buf` holds bytes already read; consumed frames are removed from it.
pub async fn read_until<S, T, F>(
    s: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
    mut f: F,
) -> Result<T>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(u8, &[u8]) -> Result<Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some((fr, total)) = parse_frame(buf)? {
            let payload = buf[fr.start..fr.end].to_vec();
            buf.drain(..total);
            match fr.opcode {
                OP_PING => {
                    s.write_all(&frame(OP_PONG, &payload)).await?;
                }
                OP_CLOSE => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    bail!(
                        "server closed the socket: {code} {}",
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                    );
                }
                OP_PONG => {}
                op => {
                    if let Some(t) = f(op, &payload)? {
                        return Ok(t);
                    }
                }
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))??;
        if n == 0 {
            bail!("connection closed by the server");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = WsUrl::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/ws"));
        let u = WsUrl::parse("wss://chat.example.com/ws?x=1").unwrap();
        assert_eq!(
            (u.tls, u.port, u.host.as_str()),
            (true, 443, "chat.example.com")
        );
        let u = WsUrl::parse("ws://localhost:9").unwrap();
        assert_eq!(u.path, "/");
    }

    #[test]
    fn frames_round_trip_through_the_parser_once_unmasked() {
        let mut f = frame(OP_TEXT, b"hello");
        // unmask by hand to look like a server frame
        f[1] &= 0x7f;
        let payload: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i & 3])
            .collect();
        let mut server = vec![f[0], f[1]];
        server.extend_from_slice(&payload);
        let (fr, n) = parse_frame(&server).unwrap().unwrap();
        assert_eq!(n, server.len());
        assert_eq!(&server[fr.start..fr.end], b"hello");
        assert!(parse_frame(&server[..3]).unwrap().is_none());
        let mut big = vec![0x82, 126, 1, 0];
        big.extend(std::iter::repeat_n(7u8, 256));
        let (fr, n) = parse_frame(&big).unwrap().unwrap();
        assert_eq!((fr.end - fr.start, n), (256, 260));
    }
}

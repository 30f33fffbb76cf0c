//! The bare broadcast ceiling: what a WebSocket fan-out costs on this machine with nothing
//! else to do. Rooms live in memory, there is no auth and no persistence; each socket has a
//! bounded queue of pre-framed messages and a writer that drains everything queued into one
//! `write` (the same coalescing a serious server needs). Frames are read with fastwebsockets.
//!
//! It speaks the join/send/message subset of Chatty's JSON frames, so the generator treats it
//! like Chatty minus acks: `{"type":"join","room":..}` → `{"type":"joined",..}`,
//! `{"type":"send","room":..,"body":..}` → `{"type":"message","room":..,"seq":..,"body":..}`
//! to every member, the sender included.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{OpCode, Role};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Bytes>)>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

pub fn main(host: &str, port: u16, threads: usize, queue: usize) -> Result<()> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    let rt = b.enable_all().build()?;
    rt.block_on(serve(host.to_string(), port, queue))
}

async fn serve(host: String, port: u16, queue: usize) -> Result<()> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    // A deep accept queue: connection storms must not lose SYNs to a short backlog.
    let l: TcpListener = sock.listen(4096)?;
    eprintln!("bare-server listening on {host}:{port}");
    let rooms: Rooms = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = conn(s, rooms, id, queue).await;
        });
    }
}

async fn handshake(s: &mut TcpStream) -> Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("eof in handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..i]).into_owned();
        }
        if buf.len() > 8192 {
            bail!("request head too large");
        }
    };
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if key.is_empty() {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await?;
        bail!("not a websocket upgrade");
    }
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(h.digest().bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).await?;
    Ok(())
}

fn framed(opcode: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        b.put_u8(n as u8);
    } else if n <= 0xffff {
        b.put_u8(126);
        b.put_u16(n as u16);
    } else {
        b.put_u8(127);
        b.put_u64(n as u64);
    }
    b.extend_from_slice(payload);
    b.freeze()
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    room: Option<&'a str>,
    body: Option<&'a str>,
}

async fn conn(mut s: TcpStream, rooms: Rooms, id: u64, queue: usize) -> Result<()> {
    handshake(&mut s).await?;
    let (r, w) = s.into_split();
    let (mut reader, _unused) =
        fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    let (tx, rx) = mpsc::channel::<Bytes>(queue);
    let writer = tokio::spawn(write_loop(w, rx));
    let mut joined: Vec<String> = Vec::new();
    let mut noop =
        |_: fastwebsockets::Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    loop {
        let f = match reader.read_frame(&mut noop).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match f.opcode {
            OpCode::Close => {
                let _ = tx.try_send(framed(0x8, &[0x03, 0xe8]));
                break;
            }
            OpCode::Ping => {
                let _ = tx.try_send(framed(0xA, &f.payload));
            }
            OpCode::Text | OpCode::Binary => {
                let Ok(m) = serde_json::from_slice::<In>(&f.payload) else {
                    continue;
                };
                let Some(room) = m.room else { continue };
                match m.ty {
                    "join" => {
                        rooms
                            .lock()
                            .expect("rooms lock")
                            .entry(room.to_string())
                            .or_insert_with(|| Room {
                                seq: 0,
                                members: Vec::new(),
                            })
                            .members
                            .push((id, tx.clone()));
                        joined.push(room.to_string());
                        let reply = format!(r#"{{"type":"joined","ref":"j","room":"{room}"}}"#);
                        let _ = tx.try_send(framed(0x1, reply.as_bytes()));
                    }
                    "send" => {
                        let body = m.body.unwrap_or("");
                        let mut g = rooms.lock().expect("rooms lock");
                        let Some(rm) = g.get_mut(room) else { continue };
                        rm.seq += 1;
                        let payload = format!(
                            r#"{{"type":"message","room":"{room}","seq":{},"body":"{body}"}}"#,
                            rm.seq
                        );
                        let frame = framed(0x1, payload.as_bytes());
                        // Bounded: a member whose queue is full is dropped from the room.
                        rm.members
                            .retain(|(_, m)| m.try_send(frame.clone()).is_ok());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    {
        let mut g = rooms.lock().expect("rooms lock");
        for r in &joined {
            if let Some(rm) = g.get_mut(r) {
                rm.members.retain(|(i, _)| *i != id);
                if rm.members.is_empty() {
                    g.remove(r);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Drain everything queued, one `write` per batch.
async fn write_loop(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(b) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&b);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(b) => buf.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        if buf.capacity() > 64 * 1024 {
            buf = BytesMut::with_capacity(4096);
        }
    }
    let _ = w.shutdown().await;
}

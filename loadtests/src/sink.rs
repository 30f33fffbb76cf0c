//! `otlp-sink`: a stand-in OpenTelemetry collector for the tracing benchmarks. It reads each
//! OTLP/HTTP export whole, answers `200` with an empty body (an empty
//! `ExportTraceServiceResponse`: all accepted), and every second writes how many requests and
//! bytes it took, so a run shows that spans really flowed and did not fail or queue up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request head longer than this is not an exporter's: drop the connection.
const MAX_HEAD: usize = 16 * 1024;
/// Nor is a body larger than this (the SDK's batches are far smaller).
const MAX_BODY: usize = 64 << 20;

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    bytes: AtomicU64,
}

pub fn main(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let totals = Arc::new(Totals::default());
        let t = totals.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                println!(
                    "otlp-sink: {} requests, {} bytes",
                    t.requests.load(Ordering::Relaxed),
                    t.bytes.load(Ordering::Relaxed)
                );
            }
        });
        loop {
            let (sock, _) = listener.accept().await?;
            tokio::spawn(serve(sock, totals.clone()));
        }
    })
}

/// One keep-alive connection: head, `Content-Length` body, answer; again.
async fn serve(mut sock: TcpStream, totals: Arc<Totals>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD || !read_more(&mut sock, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return;
        }
        while buf.len() < head_end + len {
            if !read_more(&mut sock, &mut buf).await {
                return;
            }
        }
        buf.drain(..head_end + len);
        totals.requests.fetch_add(1, Ordering::Relaxed);
        totals.bytes.fetch_add(len as u64, Ordering::Relaxed);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if sock.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

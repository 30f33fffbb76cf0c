//! `smoke --url`: the post-deploy check. Two users connect (TLS for wss://), join one fresh
//! room, see each other in presence, one sends a message: it must be acked and delivered to
//! both, and a ping must get its pong. Any failure is an error (exit status 1).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::stats::now_us;
use crate::worker::mint_token;
use crate::ws::{self, WsUrl, OP_CLOSE, OP_TEXT};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    name: &'static str,
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// Frames read while waiting for something else.
    backlog: Vec<Value>,
    timeout: Duration,
}

async fn dial(url: &WsUrl) -> Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(url.addr())
        .await
        .with_context(|| format!("connecting to {}", url.addr()))?;
    tcp.set_nodelay(true)?;
    if !url.tls {
        return Ok(Box::new(tcp));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| anyhow!("bad host name {}: {e}", url.host))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    Ok(Box::new(tls))
}

impl Client {
    async fn connect(
        name: &'static str,
        url: &WsUrl,
        token: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let mut io = tokio::time::timeout(timeout, dial(url))
            .await
            .map_err(|_| anyhow!("{name}: connect timed out"))??;
        let auth = format!("Bearer {token}");
        let (buf, head) = tokio::time::timeout(
            timeout,
            ws::handshake(
                &mut io,
                url,
                &[
                    ("Authorization", &auth),
                    ("Sec-WebSocket-Protocol", "chatty.v1.json"),
                ],
            ),
        )
        .await
        .map_err(|_| anyhow!("{name}: upgrade timed out"))?
        .with_context(|| format!("{name}: upgrade"))?;
        if !head
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: chatty.v1.json")
        {
            bail!("{name}: the server did not echo chatty.v1.json");
        }
        Ok(Self {
            name,
            io,
            buf,
            backlog: Vec::new(),
            timeout,
        })
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        self.io
            .write_all(&ws::frame(OP_TEXT, v.to_string().as_bytes()))
            .await?;
        Ok(())
    }

    /// The first frame (backlog first) for which `f` is true; errors fail the check.
    async fn wait(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(i) = self.backlog.iter().position(&f) {
            return Ok(self.backlog.remove(i));
        }
        let name = self.name;
        let mut seen = Vec::new();
        let r = ws::read_until(&mut self.io, &mut self.buf, self.timeout, |_, p| {
            let v: Value = serde_json::from_slice(p)
                .map_err(|e| anyhow!("{name}: a frame is not JSON ({e})"))?;
            if v["type"] == "error" {
                bail!("{name}: server error while waiting for {what}: {v}");
            }
            if f(&v) {
                Ok(Some(v))
            } else {
                seen.push(v);
                Ok(None)
            }
        })
        .await;
        self.backlog.extend(seen);
        r.with_context(|| format!("{name}: waiting for {what}"))
    }

    async fn close(mut self) {
        let _ = self
            .io
            .write_all(&ws::frame(OP_CLOSE, &1000u16.to_be_bytes()))
            .await;
        let _ = self.io.shutdown().await;
    }
}

fn users(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["user"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(url: &str, secret: &str, timeout_s: u64) -> Result<()> {
    let url = WsUrl::parse(url)?;
    let timeout = Duration::from_secs(timeout_s);
    let tag = format!("{:x}", now_us());
    let room = format!("smoke-{tag}");
    let (ua, ub) = (format!("smoke-a-{tag}"), format!("smoke-b-{tag}"));
    let t0 = std::time::Instant::now();

    let mut a = Client::connect("client A", &url, &mint_token(secret, &ua)?, timeout).await?;
    a.send(json!({"type":"join","ref":"ja","room":room}))
        .await?;
    let ja = a
        .wait("joined", |v| v["type"] == "joined" && v["ref"] == "ja")
        .await?;
    if !users(&ja, "presence").contains(&ua) {
        bail!("client A: joined.presence lacks A itself: {ja}");
    }

    let mut b = Client::connect("client B", &url, &mint_token(secret, &ub)?, timeout).await?;
    b.send(json!({"type":"join","ref":"jb","room":room}))
        .await?;
    let jb = b
        .wait("joined", |v| v["type"] == "joined" && v["ref"] == "jb")
        .await?;
    let present = users(&jb, "presence");
    if !present.contains(&ua) || !present.contains(&ub) {
        bail!("client B: joined.presence should list A and B: {jb}");
    }
    let ub2 = ub.clone();
    a.wait("a presence diff announcing B", move |v| {
        v["type"] == "presence" && users(v, "joins").contains(&ub2)
    })
    .await?;

    let body = format!("smoke {tag}");
    a.send(json!({"type":"send","ref":"s1","room":room,"cid":"smoke-1","body":body}))
        .await?;
    let ack = a
        .wait("ack", |v| v["type"] == "ack" && v["ref"] == "s1")
        .await?;
    let seq = ack["seq"]
        .as_u64()
        .ok_or_else(|| anyhow!("ack without seq: {ack}"))?;
    let is_msg = |v: &Value| v["type"] == "message" && v["cid"] == "smoke-1";
    let mb = b.wait("the message", is_msg).await?;
    let ma = a.wait("its own message", is_msg).await?;
    for (who, m) in [("B", &mb), ("A", &ma)] {
        if m["body"] != body.as_str() || m["seq"].as_u64() != Some(seq) || m["from"] != ua.as_str()
        {
            bail!("client {who}: wrong message {m} (ack {ack})");
        }
    }
    b.send(json!({"type":"ping","ref":"p1"})).await?;
    b.wait("pong", |v| v["type"] == "pong" && v["ref"] == "p1")
        .await?;
    a.close().await;
    b.close().await;
    println!(
        "smoke OK: {} — two clients joined {room}, saw each other's presence, message seq {seq} acked and delivered to both, ping answered ({} ms)",
        url.addr(),
        t0.elapsed().as_millis()
    );
    Ok(())
}

//! The WebSocket edge: the upgrade handler (authenticate, check the origin, pick the encoding,
//! take a connection slot, hand the socket to a ConnectionActor) and the two plain tasks that
//! own the socket: the reader (fastwebsockets frames → bounded reassembly → decode → actor) and
//! the writer (drain the outbox, frame everything queued, one `write` per batch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use chatty_actors::{
    close, ConnMsg, ConnShared, Connection, Encoding, ErrorCode, Metrics, Out, ServerFrame,
    STOP_READING,
};
use fastwebsockets::upgrade::IncomingUpgrade;
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::admission;
use crate::frames::{put_close, put_frame, Message, MessageReader};
use crate::startup::AppState;
use crate::wire;

pub const PROTOCOL_JSON: &str = "chatty.v1.json";
pub const PROTOCOL_MSGPACK: &str = "chatty.v1.msgpack";

/// Stop adding frames to one write past this many bytes.
const MAX_WRITE_BATCH: usize = 256 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// The client offered subprotocols and none of them is ours.
#[derive(Debug)]
pub struct NoSupportedProtocol;

/// Pick the encoding: the first protocol the client offered that we support. `Err` when it
/// offered some and none is supported; `Ok(None)` when it offered none (JSON, no echo).
pub fn negotiate(
    headers: &HeaderMap,
) -> Result<Option<(Encoding, &'static str)>, NoSupportedProtocol> {
    let mut offered = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(v) = value.to_str() else {
            offered = true;
            continue;
        };
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            match p {
                PROTOCOL_JSON => return Ok(Some((Encoding::Json, PROTOCOL_JSON))),
                PROTOCOL_MSGPACK => return Ok(Some((Encoding::MsgPack, PROTOCOL_MSGPACK))),
                _ => {}
            }
        }
    }
    if offered {
        Err(NoSupportedProtocol)
    } else {
        Ok(None)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
}

fn reject(
    state: &AppState,
    status: StatusCode,
    reason: &'static str,
    body: &'static str,
) -> Response {
    state
        .edge_metrics
        .handshake_rejections
        .with_label_values(&[reason])
        .inc();
    (status, body).into_response()
}

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    if state.is_draining() {
        return reject(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "draining\n",
        );
    }
    let Ok(ws) = ws else {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade\n",
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .map(|o| state.settings.auth.allowed_origins.iter().any(|a| a == o))
            .unwrap_or(false);
        if !ok {
            return reject(
                &state,
                StatusCode::FORBIDDEN,
                "origin",
                "origin not allowed\n",
            );
        }
    }
    let Ok(protocol) = negotiate(&headers) else {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "subprotocol",
            "no supported subprotocol; supported: chatty.v1.json, chatty.v1.msgpack\n",
        );
    };
    let token = bearer(&headers)
        .or(query.as_ref().ok().and_then(|q| q.access_token.as_deref()))
        .unwrap_or("");
    let identity = match state.auth.verify(token) {
        Ok(id) => id,
        Err(e) => {
            return reject(
                &state,
                StatusCode::UNAUTHORIZED,
                e.label(),
                "invalid or missing token\n",
            );
        }
    };
    if state.node.connection_count() >= state.settings.limits.max_connections {
        return reject(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity",
            "server full, try again later\n",
        );
    }
    let ip = admission::client_ip(peer, &headers, &state.trusted_proxies);
    let slot = match state.admission.admit(ip, identity.user.as_str()) {
        Ok(slot) => slot,
        Err(admission::Refused::Ip) => {
            return reject(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "capacity_ip",
                "too many connections from this address\n",
            );
        }
        Err(admission::Refused::User) => {
            return reject(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "capacity_user",
                "too many connections for this user\n",
            );
        }
    };
    let (encoding, echo) = protocol.map_or((Encoding::Json, None), |(e, p)| (e, Some(p)));
    let Ok((mut response, fut)) = ws.upgrade() else {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "bad upgrade\n",
        );
    };
    if let Some(p) = echo {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let conn = match state.node.open_connection(identity, encoding).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not start a connection actor");
            return reject(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later\n",
            );
        }
    };
    let span = tracing::info_span!("connection", conn = %conn.shared.id);
    tokio::spawn(
        async move {
            let _slot = slot; // released when the socket is gone
            match fut.await {
                Ok(socket) => run(state, conn, encoding, socket.into_inner()).await,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    conn.actor.stop(None);
                }
            }
        }
        .instrument(span),
    );
    response.map(axum::body::Body::new).into_response()
}

/// Own one upgraded socket until it closes.
async fn run<S>(state: AppState, conn: Connection, encoding: Encoding, stream: S)
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let metrics = state.node.metrics.clone();
    metrics.connections_opened.inc();
    metrics.connections_active.inc();
    let (r, w) = tokio::io::split(stream);
    // fastwebsockets reads; our writer task frames and writes (so it can coalesce).
    let s = &state.settings;
    let mut reader = MessageReader::new(r, s.limits.max_frame_bytes, s.limits.max_message_bytes);

    let timing = Timing {
        ping_interval: Duration::from_millis(s.server.ping_interval_ms),
        pong_timeout: Duration::from_millis(s.server.pong_timeout_ms),
        first_frame: Duration::from_millis(s.server.first_frame_timeout_ms),
    };
    let Connection {
        actor,
        shared,
        outbox,
        outbound,
    } = conn;
    let conn = ConnParts {
        actor,
        shared,
        outbox,
    };
    let writer = tokio::spawn(write_loop(
        w,
        outbound,
        conn.shared.clone(),
        encoding,
        timing,
        metrics.clone(),
    ));

    let code = read_loop(
        &mut reader,
        &conn,
        encoding,
        s.limits.max_body_bytes,
        &state.auth,
        &metrics,
    )
    .await;
    if code != 0 {
        conn.shared.request_close(code);
    }
    // Wait for the writer to send the close frame (or give up on a dead peer).
    let mut close_rx = conn.shared.close_watch();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        close_rx.wait_for(|c| *c != 0 && *c != STOP_READING),
    )
    .await;
    let final_code = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(c)) => c,
        _ => conn.shared.close_code(),
    };
    // Linger: read (and drop) what the client still sends until it closes too, briefly.
    // Closing a socket with unread data makes the kernel send a reset, and a reset can make
    // the client lose our close frame (and its code) before reading it.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while reader.next(|_| {}, || {}).await.is_ok() {}
    })
    .await;
    conn.actor.stop(None);
    metrics.connections_active.dec();
    metrics
        .connections_closed
        .with_label_values(&[&final_code.to_string()])
        .inc();
}

/// A connection's handles, once its outbound queue went to the writer task.
struct ConnParts {
    actor: ractor::ActorRef<ConnMsg>,
    shared: Arc<ConnShared>,
    outbox: chatty_actors::Outbox,
}

/// Read until the socket ends or a close is requested. Returns the close code to send (0 if a
/// close was already requested elsewhere).
async fn read_loop<R>(
    reader: &mut MessageReader<R>,
    conn: &ConnParts,
    encoding: Encoding,
    max_body: usize,
    auth: &crate::auth::Authenticator,
    metrics: &Metrics,
) -> u16
where
    R: tokio::io::AsyncRead + Unpin,
{
    let (outbox, shared) = (&conn.outbox, &conn.shared);
    let mut close_rx = shared.close_watch();
    loop {
        if *close_rx.borrow() != 0 {
            return 0;
        }
        // Pings are answered through the outbox so the writer task stays the only writer.
        let next = reader.next(
            |ping| {
                outbox.push_out(Out::Pong(Bytes::copy_from_slice(ping)));
            },
            || shared.touch(),
        );
        let message = tokio::select! {
            biased;
            _ = close_rx.changed() => return 0,
            m = next => m,
        };
        let payload = match (message, encoding) {
            (Err(code), _) => return code,
            (Ok(Message::Text(p)), Encoding::Json)
            | (Ok(Message::Binary(p)), Encoding::MsgPack) => p,
            (Ok(_), _) => {
                outbox.push(
                    ServerFrame::error(
                        None,
                        ErrorCode::BadRequest,
                        "wrong frame type for the negotiated subprotocol",
                    )
                    .encode(encoding),
                );
                continue;
            }
        };
        match wire::decode(&payload, encoding, max_body, &|t| auth.verify(t).ok()) {
            Ok(cmd) => {
                metrics
                    .frames_in
                    .with_label_values(&[cmd.kind(), encoding.label()])
                    .inc();
                // Wait for room in this connection's inbound queue: a client that sends faster
                // than it is served is slowed down by TCP, not buffered.
                let permit = tokio::select! {
                    biased;
                    _ = close_rx.changed() => return 0,
                    p = shared.inbound.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return close::INTERNAL,
                    },
                };
                if conn.actor.cast(ConnMsg::Command(cmd, permit)).is_err() {
                    return close::INTERNAL;
                }
            }
            Err(e) => {
                metrics
                    .frames_in
                    .with_label_values(&["invalid", encoding.label()])
                    .inc();
                metrics
                    .errors_sent
                    .with_label_values(&[e.code.as_str()])
                    .inc();
                outbox.push(
                    ServerFrame::error(e.r#ref.as_deref(), e.code, e.message).encode(encoding),
                );
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Timing {
    ping_interval: Duration,
    pong_timeout: Duration,
    first_frame: Duration,
}

/// Write a buffer unless a close that cannot wait (anything but a graceful one) is requested.
async fn write_or_abort<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    close_rx: &mut watch::Receiver<u16>,
) -> Result<(), ()> {
    tokio::select! {
        biased;
        r = w.write_all(buf) => r.map_err(|_| ()),
        _ = close_rx.wait_for(|c| *c != 0 && *c != STOP_READING && *c != close::GOING_AWAY && *c != close::NORMAL) => Err(()),
    }
}

/// The connection's writer task. Returns the close code it sent.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: tokio::sync::mpsc::Receiver<Out>,
    shared: Arc<ConnShared>,
    encoding: Encoding,
    t: Timing,
    metrics: Metrics,
) -> u16 {
    let opcode = match encoding {
        Encoding::Json => 0x1,
        Encoding::MsgPack => 0x2,
    };
    let frames_out = metrics.frames_out.with_label_values(&[encoding.label()]);
    let mut close_rx = shared.close_watch();
    let mut buf = BytesMut::new();
    let started = Instant::now();
    let mut last_ping = Instant::now();
    // The next moment something may be due: a ping, a pong deadline, the first frame. Client
    // activity only moves these later, so one timer armed for the earliest of them and
    // re-armed when it fires is enough: it is not touched per frame (a timer entry made and
    // dropped for every write cost ~3% of the server's CPU in the many-rooms profile).
    let next_due = |last_ping: Instant| {
        match shared.silent_for() {
            None => t.first_frame.saturating_sub(started.elapsed()),
            Some(s) => (t.ping_interval + t.pong_timeout).saturating_sub(s),
        }
        .min(t.ping_interval.saturating_sub(last_ping.elapsed()))
    };
    let timer = tokio::time::sleep(next_due(last_ping));
    tokio::pin!(timer);
    let code = loop {
        tokio::select! {
            biased;
            r = close_rx.changed() => {
                let c = *close_rx.borrow();
                if r.is_err() { break close::INTERNAL; }
                if c != STOP_READING { break c; }
            }
            item = rx.recv() => {
                let Some(item) = item else {
                    // The queue can end before the close request is seen: use the code the
                    // connection is being closed with, not a blanket 1000.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200),
                        close_rx.wait_for(|c| *c != 0 && *c != STOP_READING),
                    )
                    .await;
                    let c = shared.close_code();
                    break if c == 0 || c == STOP_READING { close::NORMAL } else { c };
                };
                buf.clear();
                let mut n = 0u64;
                let mut next = Some(item);
                while let Some(item) = next.take() {
                    match item {
                        Out::Frame(b) => { put_frame(&mut buf, opcode, &b); n += 1; }
                        Out::Pong(p) => put_frame(&mut buf, 0xA, &p),
                    }
                    if buf.len() < MAX_WRITE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if write_or_abort(&mut w, &buf, &mut close_rx).await.is_err() {
                    let _ = w.shutdown().await;
                    return shared.close_code().max(close::NORMAL);
                }
                frames_out.inc_by(n);
                if buf.capacity() > 64 * 1024 {
                    buf = BytesMut::new(); // an idle connection should not keep a big buffer
                }
            }
            _ = &mut timer => {
                match shared.silent_for() {
                    None if started.elapsed() >= t.first_frame => break close::IDLE,
                    Some(s) if s >= t.ping_interval + t.pong_timeout => break close::IDLE,
                    _ => {}
                }
                if last_ping.elapsed() >= t.ping_interval {
                    buf.clear();
                    put_frame(&mut buf, 0x9, b"");
                    if write_or_abort(&mut w, &buf, &mut close_rx).await.is_err() {
                        break close::NORMAL;
                    }
                    last_ping = Instant::now();
                }
                timer.as_mut().reset(tokio::time::Instant::now() + next_due(last_ping));
            }
        }
    };
    shared.request_close(code);
    buf.clear();
    if code == close::GOING_AWAY || code == close::NORMAL {
        // Graceful: what was queued (acks above all) goes out before the close frame.
        rx.close();
        while let Ok(item) = rx.try_recv() {
            match item {
                Out::Frame(b) => put_frame(&mut buf, opcode, &b),
                Out::Pong(p) => put_frame(&mut buf, 0xA, &p),
            }
        }
    }
    put_close(&mut buf, code);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = w.write_all(&buf).await;
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    })
    .await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("x, chatty.v1.msgpack, chatty.v1.json"),
        );
        assert_eq!(negotiate(&h).unwrap().unwrap().0, Encoding::MsgPack);
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("foo"),
        );
        assert!(negotiate(&h).is_err());
        assert!(negotiate(&HeaderMap::new()).unwrap().is_none());
    }
}

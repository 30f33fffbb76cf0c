//! One accepted socket: the reader (frames → bounded reassembly → decode → the connection)
//! and the writer (the outbox → frames → one `write` per batch), until the close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chatty_actors::{
    close, CloseState, CloseWatch, Command, ConnHandle, ConnShared, Connection, Encoding,
    ErrorCode, Out, ServerFrame, SubmitError,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::EdgeMetrics;
use crate::state::AppState;
use crate::ws::frames::{put_close, put_frame, Message, MessageReader, Opcode};
use crate::ws::wire;

/// Stop adding frames to one write past this many bytes.
const MAX_WRITE_BATCH: usize = 256 * 1024;

/// Own one upgraded socket until it closes.
pub(super) async fn run<S>(state: AppState, conn: Connection, encoding: Encoding, stream: S)
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let metrics = &state.edge_metrics;
    metrics.connections_opened.inc();
    metrics.connections_active.inc();
    let (r, w) = tokio::io::split(stream);
    // Our parser reads (no buffer while idle); the writer task frames and writes (so it can
    // coalesce).
    let s = &state.settings;
    let mut reader = MessageReader::new(r, s.limits.max_frame_bytes, s.limits.max_message_bytes);

    let timing = Timing {
        ping_interval: Duration::from_millis(s.server.ping_interval_ms),
        pong_timeout: Duration::from_millis(s.server.pong_timeout_ms),
        first_frame: Duration::from_millis(s.server.first_frame_timeout_ms),
    };
    let Connection {
        handle: conn,
        outbound,
    } = conn;
    let frames_out = metrics.frames_out.with_label_values(&[encoding.label()]);
    let writer = tokio::spawn(write_loop(
        w,
        outbound,
        conn.shared.clone(),
        encoding,
        timing,
        frames_out,
    ));

    let ended = read_loop(
        &mut reader,
        &conn,
        encoding,
        wire::Bounds {
            body: s.limits.max_body_bytes,
            meta: s.limits.max_meta_bytes,
        },
        &state.auth,
        metrics,
        &state.node.metrics,
    )
    .await;
    if let Some(code) = ended {
        conn.shared.request_close(code);
    }
    // Wait for the writer to send the close frame (or give up on a dead peer).
    let mut close = conn.shared.close_watch();
    let _ = tokio::time::timeout(Duration::from_secs(30), close.closing()).await;
    let final_code = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(c)) => c,
        _ => conn.shared.close_state().code().unwrap_or(close::NORMAL),
    };
    // Linger: read (and drop) what the client still sends until it closes too, briefly.
    // Closing a socket with unread data makes the kernel send a reset, and a reset can make
    // the client lose our close frame (and its code) before reading it.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while reader.next(|_| {}, || {}).await.is_ok() {}
    })
    .await;
    conn.stop();
    metrics.connections_active.dec();
    metrics
        .connections_closed
        .with_label_values(&[&final_code.to_string()])
        .inc();
}

/// Read until the socket ends or the connection starts closing. Returns the close code to
/// send when the read side ended it (`None` when a close was requested elsewhere).
async fn read_loop<R>(
    reader: &mut MessageReader<R>,
    conn: &ConnHandle,
    encoding: Encoding,
    bounds: wire::Bounds,
    auth: &crate::auth::Authenticator,
    metrics: &EdgeMetrics,
    actor_metrics: &chatty_actors::Metrics,
) -> Option<u16>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let (outbox, shared) = (&conn.outbox, &conn.shared);
    let mut close = shared.close_watch();
    loop {
        if close.state() != CloseState::Open {
            return None;
        }
        // Pings are answered through the outbox so the writer task stays the only writer.
        let next = reader.next(
            |ping| {
                outbox.push_out(Out::Pong(Bytes::copy_from_slice(ping)));
            },
            || shared.touch(),
        );
        // `next` is cancel-safe: a close that wins the race loses no half-read frame.
        let message = tokio::select! {
            biased;
            _ = close.changed() => return None,
            m = next => m,
        };
        let payload = match (message, encoding) {
            (Err(code), _) => return Some(code),
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
        // Timed only while tracing is on, for a sampled send's span.
        let decoding = chatty_actors::trace::enabled().then(Instant::now);
        match wire::decode(&payload, encoding, bounds, &|t| auth.verify(t).ok()) {
            Ok(mut cmd) => {
                metrics
                    .frames_in
                    .with_label_values(&[cmd.kind(), encoding.label()])
                    .inc();
                // The one sampling decision for this message: a sampled send carries its
                // span's context from here to every node's delivery.
                let _span = match &mut cmd {
                    Command::Send {
                        room, cid, trace, ..
                    } => {
                        crate::telemetry::receive_span("socket", None, room, cid, Some(&shared.id))
                            .map(|(span, tp)| {
                                if let Some(t) = decoding {
                                    span.record("decode_us", t.elapsed().as_micros() as u64);
                                }
                                *trace = Some(tp);
                                span.in_scope(|| tracing::debug!("send received"));
                                span
                            })
                    }
                    _ => None,
                };
                // Waits while the connection's inbound queue is full: a client that sends
                // faster than it is served is slowed down by TCP, not buffered.
                match conn.submit(cmd).await {
                    Ok(()) => {}
                    Err(SubmitError::Closing) => return None,
                    Err(SubmitError::Gone) => return Some(close::INTERNAL),
                }
            }
            Err(e) => {
                metrics
                    .frames_in
                    .with_label_values(&["invalid", encoding.label()])
                    .inc();
                actor_metrics
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
    close: &mut CloseWatch,
) -> Result<(), ()> {
    tokio::select! {
        biased;
        r = w.write_all(buf) => r.map_err(|_| ()),
        _ = close.urgent() => Err(()),
    }
}

/// The connection's writer task. Returns the close code it sent.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: tokio::sync::mpsc::Receiver<Out>,
    shared: Arc<ConnShared>,
    encoding: Encoding,
    t: Timing,
    frames_out: prometheus::IntCounter,
) -> u16 {
    let opcode = match encoding {
        Encoding::Json => Opcode::Text,
        Encoding::MsgPack => Opcode::Binary,
    };
    let mut close = shared.close_watch();
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
            r = close.changed() => match r {
                None => break close::INTERNAL,
                Some(CloseState::Closing(c)) => break c,
                Some(_) => {}
            },
            item = rx.recv() => {
                let Some(item) = item else {
                    // The queue can end before the close request is seen: use the code the
                    // connection is being closed with, not a blanket 1000.
                    let _ = tokio::time::timeout(Duration::from_millis(200), close.closing()).await;
                    break shared.close_state().code().unwrap_or(close::NORMAL);
                };
                buf.clear();
                let mut n = 0u64;
                let mut next = Some(item);
                while let Some(item) = next.take() {
                    match item {
                        Out::Frame(b) => { put_frame(&mut buf, opcode, &b); n += 1; }
                        Out::Pong(p) => put_frame(&mut buf, Opcode::Pong, &p),
                    }
                    if buf.len() < MAX_WRITE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if write_or_abort(&mut w, &buf, &mut close).await.is_err() {
                    let _ = w.shutdown().await;
                    return shared.close_state().code().unwrap_or(close::NORMAL);
                }
                frames_out.inc_by(n);
                if rx.is_empty() || buf.capacity() > 64 * 1024 {
                    // Nothing more queued: a socket that goes idle now keeps no buffer (one
                    // allocation per burst, not per batch, under load).
                    buf = BytesMut::new();
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
                    put_frame(&mut buf, Opcode::Ping, b"");
                    if write_or_abort(&mut w, &buf, &mut close).await.is_err() {
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
                Out::Pong(p) => put_frame(&mut buf, Opcode::Pong, &p),
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

//! A test-only echo endpoint (`GET /debug/echo`, when `debug.echo_endpoint` is on) for protocol
//! conformance suites such as Autobahn|Testsuite: it reads through the same `MessageReader`,
//! with the same limits, as `/ws`, and echoes every message back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use fastwebsockets::upgrade::IncomingUpgrade;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::state::AppState;
use crate::ws::frames::{put_close, put_frame, Message, MessageReader, Opcode};

pub async fn upgrade(
    State(state): State<AppState>,
    ws: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    let Ok(Ok((response, fut))) = ws.map(|w| w.upgrade()) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n").into_response();
    };
    let (max_frame, max_message) = (
        state.settings.limits.max_frame_bytes,
        state.settings.limits.max_message_bytes,
    );
    tokio::spawn(async move {
        let Ok(socket) = fut.await else { return };
        let (r, mut w) = tokio::io::split(socket.into_inner());
        let mut reader = MessageReader::new(r, max_frame, max_message);
        // (opcode, payload); a close ends the writer.
        let (tx, mut rx) = mpsc::channel::<(Opcode, Vec<u8>)>(64);
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some((op, payload)) = rx.recv().await {
                buf.clear();
                if op == Opcode::Close {
                    put_close(&mut buf, u16::from_be_bytes([payload[0], payload[1]]));
                } else {
                    put_frame(&mut buf, op, &payload);
                }
                if w.write_all(&buf).await.is_err() || op == Opcode::Close {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
        loop {
            let pong_tx = tx.clone();
            let m = reader
                .next(
                    move |p| {
                        let _ = pong_tx.try_send((Opcode::Pong, p.to_vec()));
                    },
                    || {},
                )
                .await;
            let out = match m {
                Ok(Message::Text(p)) => (Opcode::Text, p),
                Ok(Message::Binary(p)) => (Opcode::Binary, p),
                Err(code) => {
                    let _ = tx.send((Opcode::Close, code.to_be_bytes().to_vec())).await;
                    break;
                }
            };
            if tx.send(out).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    });
    response.map(axum::body::Body::new).into_response()
}

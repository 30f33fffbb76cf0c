//! `Client`: a real WebSocket client (tungstenite) with typed helpers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    msgpack: bool,
    /// Frames read while looking for another one, served first.
    backlog: std::collections::VecDeque<Value>,
    pub closed: Option<u16>,
}

impl Client {
    pub async fn connect(url: &str, token: &str, protocol: Option<&str>) -> Client {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        let msgpack = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v == "chatty.v1.msgpack")
            .unwrap_or(false);
        Client {
            ws,
            msgpack,
            backlog: Default::default(),
            closed: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&v).unwrap().into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.ws.send(msg).await.expect("ws send");
    }

    /// Send, reporting failure instead of panicking (the server may be closing).
    pub async fn try_send(&mut self, v: Value) -> bool {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .is_ok()
    }

    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
    }

    /// The next protocol frame, or `None` when the socket closed (code in `closed`).
    pub async fn next(&mut self) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        self.next_raw().await
    }

    async fn next_raw(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(Message::Text(t))) => {
                    assert!(!self.msgpack, "text frame on a msgpack socket");
                    return Some(serde_json::from_str(&t).expect("json frame"));
                }
                Some(Ok(Message::Binary(b))) => {
                    assert!(self.msgpack, "binary frame on a json socket");
                    return Some(rmp_serde::from_slice(&b).expect("msgpack frame"));
                }
                Some(Ok(Message::Close(f))) => {
                    self.closed = Some(f.map(|f: CloseFrame| u16::from(f.code)).unwrap_or(1005));
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed.get_or_insert(1006);
                    return None;
                }
            }
        }
    }

    /// The next frame of type `ty`, keeping the others for later `next` calls.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self
                .next_raw()
                .await
                .unwrap_or_else(|| panic!("socket closed ({:?}) waiting for {ty}", self.closed));
            if v["type"] == ty {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "ref": "j", "room": room}))
            .await;
        self.next_of("joined").await
    }

    pub async fn join_since(&mut self, room: &str, since: u64) -> Value {
        self.send(json!({"type": "join", "ref": "j", "room": room, "since": since}))
            .await;
        self.next_of("joined").await
    }

    /// Send and wait for the ack (or error) with this cid's ref.
    pub async fn send_msg(&mut self, room: &str, cid: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "ref": cid, "room": room, "cid": cid, "body": body}))
            .await;
        loop {
            let v = self.skip_to_ref(cid).await;
            if v["type"] == "ack" || v["type"] == "error" {
                return v;
            }
        }
    }

    /// Send a request and wait for the reply carrying its `ref`, keeping other frames.
    pub async fn call(&mut self, v: Value) -> Value {
        let r = v["ref"].as_str().expect("a call needs a ref").to_string();
        self.send(v).await;
        self.skip_to_ref(&r).await
    }

    /// Wait for the ack (or error) carrying ref `r`, keeping other frames.
    pub async fn send_msg_wait_ack(&mut self, r: &str) -> Value {
        loop {
            let v = self.skip_to_ref(r).await;
            if v["type"] == "ack" || v["type"] == "error" {
                return v;
            }
        }
    }

    pub async fn skip_to_ref(&mut self, r: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["ref"] == r) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self
                .next_raw()
                .await
                .unwrap_or_else(|| panic!("socket closed ({:?}) waiting for ref {r}", self.closed));
            if v["ref"] == r {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// Collect `message` frames of `room` until `n` have arrived.
    pub async fn messages(&mut self, room: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut keep = std::collections::VecDeque::new();
        while let Some(v) = self.backlog.pop_front() {
            if v["type"] == "message" && v["room"] == room && out.len() < n {
                out.push(v);
            } else {
                keep.push_back(v);
            }
        }
        self.backlog = keep;
        while out.len() < n {
            let v = self.next_raw().await.unwrap_or_else(|| {
                panic!(
                    "socket closed ({:?}) after {} of {n} messages",
                    self.closed,
                    out.len()
                )
            });
            if v["type"] == "message" && v["room"] == room {
                out.push(v);
            } else {
                self.backlog.push_back(v);
            }
        }
        out
    }

    /// Nothing arrives within `d` (frames of the ignored types excepted).
    pub async fn assert_quiet(&mut self, d: Duration, ignore: &[&str]) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let ty = v["type"].as_str().unwrap_or("");
                    assert!(ignore.contains(&ty), "unexpected frame {v}");
                }
                Ok(Some(Ok(Message::Binary(b)))) => {
                    let v: Value = rmp_serde::from_slice(&b).unwrap();
                    let ty = v["type"].as_str().unwrap_or("");
                    assert!(ignore.contains(&ty), "unexpected frame {v}");
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => panic!("socket closed"),
            }
        }
    }

    /// Drain until the socket closes; the close code.
    pub async fn next_of_close(&mut self) -> Option<u16> {
        while self.next_raw().await.is_some() {}
        self.closed
    }

    /// Drain until the socket closes; true once it has.
    pub async fn skip_closed(&mut self) -> bool {
        while self.next_raw().await.is_some() {}
        true
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A raw upgrade attempt; returns the HTTP status.
pub async fn handshake_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

//! `Duplex`: a JSON client whose reads never stop, for tests that write thousands of frames.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::{TestApp, WAIT};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A JSON client whose reads never stop: a task drains the socket into a channel, so a test
/// can write thousands of frames without becoming a slow consumer itself.
pub struct Duplex {
    pub tx: futures_util::stream::SplitSink<Ws, Message>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    reader: tokio::task::JoinHandle<u16>,
}

impl Duplex {
    pub async fn connect(app: &TestApp, user: &str) -> Duplex {
        let mut req = app.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", app.token(user))).unwrap(),
        );
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chatty.v1.json"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        let (tx, mut stream) = ws.split();
        let (vtx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let _ = vtx.send(serde_json::from_str::<Value>(&t).expect("json"));
                    }
                    Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)).unwrap_or(1005),
                    Ok(_) => {}
                    Err(_) => return 1006,
                }
            }
            1006
        });
        Duplex {
            tx,
            rx,
            backlog: VecDeque::new(),
            reader,
        }
    }

    /// Queue a frame without flushing.
    pub async fn feed(&mut self, v: &Value) {
        self.tx
            .feed(Message::Text(v.to_string().into()))
            .await
            .expect("ws feed");
    }

    pub async fn flush(&mut self) {
        self.tx.flush().await.expect("ws flush");
    }

    pub async fn send(&mut self, v: &Value) {
        self.feed(v).await;
        self.flush().await;
    }

    /// The next frame from the socket (backlog first).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        self.recv_fresh().await
    }

    async fn recv_fresh(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a frame")
        {
            Some(v) => v,
            None => {
                let code = (&mut self.reader).await.unwrap();
                panic!("socket closed with {code}")
            }
        }
    }

    /// The next frame matching `pred`, keeping the others.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self.recv_fresh().await;
            if pred(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    pub async fn reply(&mut self, r: &str) -> Value {
        self.next_where(|v| v["ref"] == r).await
    }

    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Send a `marker` message and return its seq.
    pub async fn send_msg_marker(&mut self, room: &str) -> u64 {
        self.send(&json!({"type":"send","ref":"marker","room":room,"cid":"marker","body":"m"}))
            .await;
        let v = self.reply("marker").await;
        assert_eq!(v["type"], "ack", "{v}");
        v["seq"].as_u64().unwrap()
    }
}

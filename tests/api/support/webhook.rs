//! A real HTTP webhook receiver in the test process: it records every request (headers and raw
//! body) and answers as its `Mode` says, per attempt of each event id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 500 to the first `n` attempts of each event id, then 204.
    FailFirst(u32),
    /// 503 to everything.
    Down,
    /// Never answer (the sender's timeout decides).
    Hang,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Hit {
    pub body: Bytes,
    pub json: Value,
    pub signature: String,
    pub event_id: String,
    /// What the receiver answered (0: it never did).
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    hits: Vec<Hit>,
    attempts: HashMap<String, u32>,
}

pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    mode: Arc<Mutex<Mode>>,
}

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = json["id"].as_str().unwrap_or_default().to_owned();
    let mode = *s.mode.lock();
    let status = {
        let mut inner = s.inner.lock();
        let n = inner.attempts.entry(id.clone()).or_default();
        *n += 1;
        let status = match mode {
            Mode::FailFirst(k) if *n <= k => 500,
            Mode::FailFirst(_) => 204,
            Mode::Down => 503,
            Mode::Hang => 0,
        };
        inner.hits.push(Hit {
            body: body.clone(),
            json,
            signature: header("chatty-signature"),
            event_id: header("chatty-event-id"),
            status,
        });
        status
    };
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        Self::start_on(0, mode).await
    }

    /// On a given port (0: any), so a receiver can come back where the nodes expect it.
    pub async fn start_on(port: u16, mode: Mode) -> Receiver {
        let shared = Shared {
            inner: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            inner: shared.inner,
            mode: shared.mode,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().hits.clone()
    }

    /// The events answered 2xx, deduplicated by id, in the order first accepted.
    pub fn accepted(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.status))
            .filter(|h| seen.insert(h.json["id"].as_str().unwrap_or_default().to_owned()))
            .map(|h| h.json)
            .collect()
    }
}

impl Receiver {
    /// The accepted `message.offline` events, in the order accepted.
    pub fn accepted_messages(&self) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .filter(|e| e["type"] == "message.offline")
            .collect()
    }

    /// The `seq` of each accepted `message.offline` event, in the order accepted.
    pub fn accepted_seqs(&self) -> Vec<u64> {
        self.accepted_messages()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap_or_default())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Check a `Chatty-Signature` header the way docs/webhooks.md tells receivers to, written
/// here independently of the server's code: HMAC-SHA256 of "<t>.<raw body>".
pub fn verify_signature(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Every attempt of a room's events came after the previous event of the room was accepted:
/// seen in arrival order, a seq never appears while an earlier one is still unaccepted (an
/// accepted one may come again: delivery is at least once).
pub fn assert_commit_order_per_room(hits: &[Hit]) {
    let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.json["type"] == "message.offline") {
        let room = h.json["room"].as_str().unwrap().to_owned();
        let seq = h.json["seq"].as_u64().unwrap();
        let done = accepted.get(&room).copied().unwrap_or(0);
        assert!(
            seq <= done + 1,
            "{room}: an attempt at seq {seq} while seq {} was not yet accepted",
            done + 1
        );
        if (200..300).contains(&h.status) {
            accepted.insert(room, seq.max(done));
        }
    }
}

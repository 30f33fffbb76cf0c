//! Test harness: `spawn_app()` starts the real application on port 0 against a fresh
//! PostgreSQL database, and `Client` drives a real WebSocket client with typed helpers.

use std::sync::OnceLock;
use std::time::Duration;

use chatty::auth::Authenticator;
use chatty::{Application, Settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// The PostgreSQL server the tests use: `CHATTY_TEST_DATABASE_URL`, else the local one.
pub fn pg_base() -> String {
    std::env::var("CHATTY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Settings as the binary would load them, then pointed at a fresh database and port 0.
pub async fn test_settings() -> (Settings, String) {
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        chatty::telemetry::init_for_tests();
    });
    let mut s = Settings::load(std::path::Path::new("config")).expect("settings load");
    let db = format!("chatty_test_{}", uuid::Uuid::new_v4().simple());
    let base = pg_base();
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect(
            "PostgreSQL must be reachable for the integration tests (set CHATTY_TEST_DATABASE_URL)",
        );
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let url = format!("{base}/{db}");
    s.database.url = chatty::settings::Secret::new(url.clone());
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.metrics_port = 0;
    s.debug.fault_injection = true;
    s.presence.grace_ms = 300;
    s.presence.coalesce_ms = 10;
    s.limits.messages_per_second = 100_000.0;
    s.limits.message_burst = 100_000;
    (s, url)
}

pub struct TestApp {
    pub port: u16,
    pub metrics_port: u16,
    pub pool: PgPool,
    pub settings: Settings,
    auth: Authenticator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<anyhow::Result<bool>>>,
}

pub async fn spawn_app() -> TestApp {
    let (s, _) = test_settings().await;
    spawn_with(s).await
}

pub async fn spawn_with(s: Settings) -> TestApp {
    let app = Application::build(s.clone())
        .await
        .expect("application builds");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let port = app.port();
    let metrics_port = app.metrics_port();
    let done = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(s.database.url.expose())
        .await
        .expect("test pool");
    TestApp {
        port,
        metrics_port,
        pool,
        auth: Authenticator::new(&s.auth),
        settings: s,
        shutdown: Some(tx),
        done: Some(done),
    }
}

impl TestApp {
    pub fn token(&self, user: &str) -> String {
        self.auth
            .mint(
                user,
                Some(&format!("{user} name")),
                Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// A token with global `roles`, expiring in `ttl`.
    pub fn token_with(&self, user: &str, name: &str, roles: &[&str], ttl: Duration) -> String {
        self.auth
            .mint_with_roles(user, Some(name), roles, ttl)
            .unwrap()
    }

    pub async fn connect_token(&self, token: &str, protocol: &str) -> Client {
        Client::connect(&self.ws_url(), token, Some(protocol)).await
    }

    /// An API call with the key; the status and the JSON body (Null when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        api_call(self.port, &self.api_key(), method, path, body).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn api_key(&self) -> String {
        self.settings.auth.api_key.expose().to_string()
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(), &self.token(user), Some("chatty.v1.json")).await
    }

    pub async fn connect_msgpack(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(), &self.token(user), Some("chatty.v1.msgpack")).await
    }

    /// Rows of a room, (seq, user, cid, body) ascending.
    pub async fn rows(&self, room: &str) -> Vec<(i64, String, String, String)> {
        sqlx::query_as(
            "select seq, user_id, cid, body from messages where room_id = $1 order by seq",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line (`name{labels}` as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Run the shutdown sequence and wait for it.
    pub async fn stop(&mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.done.take() {
            Some(h) => h.await.unwrap().unwrap(),
            None => true,
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

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

    async fn skip_to_ref(&mut self, r: &str) -> Value {
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

/// An HTTP API call on `port` with the API `key`; the status and the JSON body (Null if none).
pub async fn api_call(
    port: u16,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut req = match method {
        "PUT" => c.put(url),
        "POST" => c.post(url),
        "DELETE" => c.delete(url),
        _ => c.get(url),
    }
    .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("api call");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Poll `f` until it returns true or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
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

/// Start the real binary on port 0 with extra environment and read its port from its JSON log.
pub async fn start_binary(env: &[(&str, &str)]) -> (tokio::process::Child, u16) {
    let (child, port, _) = start_binary_with_metrics(env).await;
    (child, port)
}

/// `start_binary`, also returning the metrics port.
pub async fn start_binary_with_metrics(env: &[(&str, &str)]) -> (tokio::process::Child, u16, u16) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatty"));
    cmd.arg("serve")
        .env("CHATTY__SERVER__PORT", "0")
        .env("CHATTY__SERVER__METRICS_PORT", "0")
        .env("CHATTY__LOG__FORMAT", "json")
        .env("CHATTY__LIMITS__MESSAGES_PER_SECOND", "100000")
        .env("CHATTY__LIMITS__MESSAGE_BURST", "100000")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn chatty");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (port, metrics_port) = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "listening" {
                return (
                    v["port"].as_u64().unwrap() as u16,
                    v["metrics_port"].as_u64().unwrap() as u16,
                );
            }
        }
        panic!("chatty exited before listening");
    })
    .await
    .expect("chatty did not start listening");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port, metrics_port)
}

/// Send SIGTERM and wait for a clean exit.
pub async fn terminate(child: &mut tokio::process::Child) -> Option<i32> {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("exited within 25 s")
        .unwrap()
        .code()
}

//! The application under test: in process on port 0 against a fresh PostgreSQL database
//! (`spawn_app`, `spawn_with`), or as the real binary (`start_binary*`); HTTP API calls.

use std::sync::OnceLock;
use std::time::Duration;

use chatty::auth::Authenticator;
use chatty::{Application, Settings};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use super::{metric_value, Client, WAIT};

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

    /// Make `room` private with `members` (plain members) through the API.
    pub async fn private_room(&self, room: &str, members: &[&str]) {
        let private = Some(serde_json::json!({"private": true}));
        let (st, _) = self
            .api("PUT", &format!("/api/v1/rooms/{room}"), private)
            .await;
        assert_eq!(st, 204);
        for u in members {
            let path = format!("/api/v1/rooms/{room}/members/{u}");
            assert_eq!(self.api("PUT", &path, None).await.0, 204);
        }
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

    /// The value of one series, written `name{label="value",…}` as printed (the labels in any
    /// order), 0 if absent.
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
        "PATCH" => c.patch(url),
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

/// Start the real binary on port 0 with extra environment and read its port from its JSON log.
pub async fn start_binary(env: &[(&str, &str)]) -> (tokio::process::Child, u16) {
    let (child, port, _) = start_binary_with_metrics(env).await;
    (child, port)
}

/// `start_binary`, also returning the metrics port.
pub async fn start_binary_with_metrics(env: &[(&str, &str)]) -> (tokio::process::Child, u16, u16) {
    let (child, port, metrics_port, _) = start_binary_logged(env).await;
    (child, port, metrics_port)
}

/// A node's log lines, kept while someone holds this.
pub type Logs = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

/// `start_binary_with_metrics`, also keeping its log lines (JSON) from the start on.
pub async fn start_binary_logged(env: &[(&str, &str)]) -> (tokio::process::Child, u16, u16, Logs) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let logs = Logs::default();
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
            logs.lock().push(line.clone());
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
    // Keep draining its log so it never blocks on a full pipe; kept only while wanted.
    let keep = std::sync::Arc::downgrade(&logs);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(logs) = keep.upgrade() {
                logs.lock().push(line);
            }
        }
    });
    (child, port, metrics_port, logs)
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

//! Webhooks (protocol v1.1): `message.offline` and `user.offline`, POSTed signed to
//! `webhooks.url` from an outbox table (see docs/webhooks.md).
//!
//! - `outbox.rs`: the table as the dispatcher sees it, and who leads;
//! - `online.rs`: who has a socket anywhere (and the `user.offline` it records);
//! - `dispatch.rs`: the leading node's delivery loop.
//!
//! `message.offline` rows are written by the store's append itself (the same statement as the
//! message), which `Database::store_with_webhooks` switches on.

mod dispatch;
mod online;
mod outbox;

use std::sync::Arc;
use std::time::Duration;

use chatty_actors::SocketWatch;
use hmac::{Hmac, Mac};
use prometheus::{CounterVec, Gauge, IntCounter, IntGauge, Opts, Registry};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::settings::Settings;
use crate::store::{now_ms, Database};
use dispatch::Dispatcher;
pub use online::Online;
use outbox::{Outbox, PgOutbox, SqliteOutbox};

/// The `Chatty-Signature` header: `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The dispatcher's metrics. Registered whether webhooks are on or not, so dashboards and
/// alerts find their series (at 0) on every node.
#[derive(Clone)]
pub struct WebhookMetrics {
    backlog: IntGauge,
    oldest: Gauge,
    in_flight: IntGauge,
    dispatcher: IntGauge,
    deliveries: CounterVec,
}

impl WebhookMetrics {
    pub fn new(r: &Registry) -> anyhow::Result<Self> {
        let m = Self {
            backlog: IntGauge::new(
                "chatty_webhook_backlog",
                "Webhook events pending (on the dispatching node).",
            )?,
            oldest: Gauge::new(
                "chatty_webhook_oldest_pending_seconds",
                "Age of the oldest pending webhook event (on the dispatching node).",
            )?,
            in_flight: IntGauge::new("chatty_webhook_in_flight", "Webhook requests outstanding.")?,
            dispatcher: IntGauge::new(
                "chatty_webhook_dispatcher",
                "1 on the node that dispatches webhook events.",
            )?,
            deliveries: CounterVec::new(
                Opts::new(
                    "chatty_webhook_deliveries_total",
                    "Webhook attempts by result: ok, failed (retried), dead (dead-lettered), \
                     skipped (every member was online: nothing to send).",
                ),
                &["result"],
            )?,
        };
        r.register(Box::new(m.backlog.clone()))?;
        r.register(Box::new(m.oldest.clone()))?;
        r.register(Box::new(m.in_flight.clone()))?;
        r.register(Box::new(m.dispatcher.clone()))?;
        r.register(Box::new(m.deliveries.clone()))?;
        for result in ["ok", "failed", "dead", "skipped"] {
            m.deliveries.with_label_values(&[result]);
        }
        Ok(m)
    }

    fn result(&self, r: &str) {
        self.deliveries.with_label_values(&[r]).inc();
    }
}

/// Running webhooks: the online view the node reports sockets to, and the dispatcher.
pub struct Webhooks {
    online: Arc<Online>,
    outbox: Arc<dyn Outbox>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    dispatcher: std::sync::Mutex<Option<Arc<Dispatcher>>>,
}

impl Webhooks {
    /// Set up webhooks when `webhooks.url` is set; `None` otherwise. The dispatcher starts
    /// with `run`, once the node (whose store it reads members from) exists.
    pub fn build(
        settings: &Settings,
        db: &Database,
        metrics: WebhookMetrics,
        redis_errors: IntCounter,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let w = &settings.webhooks;
        if !w.enabled() {
            return Ok(None);
        }
        let outbox: Arc<dyn Outbox> = match db {
            Database::Postgres { pool, .. } => PgOutbox::new(pool.clone()),
            Database::Sqlite(p) => SqliteOutbox::new(p.clone()),
        };
        let wake = Arc::new(Notify::new());
        let redis_url = settings.redis.url.expose();
        // The online sets' namespace: the database's name, shared by every node of a deployment.
        let namespace = match db {
            Database::Postgres { pool, .. } => pool
                .connect_options()
                .get_database()
                .unwrap_or("postgres")
                .to_owned(),
            Database::Sqlite(_) => "sqlite".to_owned(),
        };
        let redis = (!redis_url.is_empty()).then(|| {
            (
                redis_url,
                Arc::<str>::from(settings.node.id.as_str()),
                namespace.as_str(),
            )
        });
        let online = Online::start(
            redis,
            Duration::from_millis(settings.presence.grace_ms),
            // Renewing the set and looking for dead nodes' sets follows presence's own beat, and
            // a node counts as dead once its presence entries would have lapsed twice over.
            Duration::from_millis(settings.presence.heartbeat_ms * 4),
            Duration::from_millis(settings.presence.ttl_ms),
            outbox.clone(),
            redis_errors,
            wake.clone(),
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(w.timeout_ms))
            .connect_timeout(Duration::from_millis(w.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chatty-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let dispatcher = Arc::new(Dispatcher {
            outbox: outbox.clone(),
            store: db.store(),
            online: online.clone(),
            http,
            settings: w.clone(),
            metrics,
            wake,
        });
        Ok(Some(Arc::new(Self {
            online,
            outbox,
            task: std::sync::Mutex::new(None),
            dispatcher: std::sync::Mutex::new(Some(dispatcher)),
        })))
    }

    /// What the node tells about its users' sockets.
    pub fn socket_watch(&self) -> Arc<dyn SocketWatch> {
        self.online.clone()
    }

    /// Start dispatching (on the node that wins the lead).
    pub fn run(&self) {
        if let Some(d) = self.dispatcher.lock().ok().and_then(|mut d| d.take()) {
            let task = tokio::spawn(d.run());
            if let Ok(mut t) = self.task.lock() {
                *t = Some(task);
            }
        }
    }

    /// Stop dispatching and give the lead up. A request in flight is abandoned: its event
    /// stays pending and is sent again by the next leader (at least once).
    pub async fn stop(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        self.outbox.resign().await;
    }
}

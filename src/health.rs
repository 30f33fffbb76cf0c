//! `GET /health`: how this node's dependencies answer, for operators and monitors.
//!
//! `/readyz` keeps its meaning (this node takes sockets) and ignores the dependencies on
//! purpose: a database outage must not pull every node out of the load balancer at once. This
//! endpoint reports them instead: each configured dependency (the database, Redis in cluster
//! mode) gets a cheap round trip bounded by `CHECK_TIMEOUT`. Results are cached for `CACHE_FOR`
//! and concurrent callers share one run, so however often it is called the database sees at
//! most one `select 1` per second from it. A background refresh every `REFRESH_EVERY` keeps the
//! `chatty_dependency_up` gauge current for Prometheus even when nobody calls it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::store::Database;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const CACHE_FOR: Duration = Duration::from_secs(1);
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// One dependency's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report, as served.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `ok` when every check passed, else `degraded`.
    pub status: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.status == "ok"
    }
}

struct Metrics {
    up: IntGaugeVec,
    seconds: GaugeVec,
    checks: IntCounterVec,
}

pub struct Health {
    db: Database,
    redis: Option<redis::Client>,
    /// The Redis connection the checks reuse (dropped after a failure).
    redis_conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// The last report; the lock also makes concurrent callers wait for one run.
    last: Mutex<Option<(Instant, Report)>>,
    metrics: Metrics,
}

impl Health {
    pub fn new(db: Database, redis_url: &str, registry: &Registry) -> anyhow::Result<Arc<Self>> {
        let redis = if redis_url.is_empty() {
            None
        } else {
            Some(redis::Client::open(redis_url)?)
        };
        let metrics = Metrics {
            up: IntGaugeVec::new(
                Opts::new(
                    "chatty_dependency_up",
                    "1 when the dependency answered its last health check, 0 when not.",
                ),
                &["dependency"],
            )?,
            seconds: GaugeVec::new(
                Opts::new(
                    "chatty_dependency_check_seconds",
                    "How long the dependency's last health check took.",
                ),
                &["dependency"],
            )?,
            checks: IntCounterVec::new(
                Opts::new(
                    "chatty_health_checks_total",
                    "Dependency health checks run, by dependency and result (ok, failed).",
                ),
                &["dependency", "result"],
            )?,
        };
        registry.register(Box::new(metrics.up.clone()))?;
        registry.register(Box::new(metrics.seconds.clone()))?;
        registry.register(Box::new(metrics.checks.clone()))?;
        let me = Arc::new(Self {
            db,
            redis,
            redis_conn: Mutex::new(None),
            last: Mutex::new(None),
            metrics,
        });
        for dep in me.dependencies() {
            for result in ["ok", "failed"] {
                me.metrics.checks.with_label_values(&[dep, result]);
            }
        }
        Ok(me)
    }

    fn dependencies(&self) -> Vec<&'static str> {
        let mut d = vec![self.db.kind()];
        if self.redis.is_some() {
            d.push("redis");
        }
        d
    }

    /// The current report: the cached one if it is fresh, else a new run.
    pub async fn report(&self) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return r.clone();
            }
        }
        let r = self.run().await;
        *last = Some((Instant::now(), r.clone()));
        r
    }

    async fn run(&self) -> Report {
        let db = self.timed(self.db.kind(), self.db.ping());
        let redis = async {
            match &self.redis {
                Some(client) => Some(self.timed("redis", self.ping_redis(client)).await),
                None => None,
            }
        };
        let (db, redis) = tokio::join!(db, redis);
        let mut checks = std::collections::BTreeMap::new();
        checks.insert(self.db.kind(), db);
        if let Some(r) = redis {
            checks.insert("redis", r);
        }
        let status = if checks.values().all(|c| c.ok) {
            "ok"
        } else {
            "degraded"
        };
        Report { status, checks }
    }

    async fn timed<F>(&self, dep: &'static str, f: F) -> Check
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        };
        let elapsed = started.elapsed();
        let m = &self.metrics;
        m.up.with_label_values(&[dep])
            .set(i64::from(result.is_ok()));
        m.seconds
            .with_label_values(&[dep])
            .set(elapsed.as_secs_f64());
        m.checks
            .with_label_values(&[dep, if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        Check {
            ok: result.is_ok(),
            latency_ms: (elapsed.as_secs_f64() * 1e5).round() / 100.0,
            error: result.err(),
        }
    }

    async fn ping_redis(&self, client: &redis::Client) -> Result<(), String> {
        let mut slot = self.redis_conn.lock().await;
        if slot.is_none() {
            *slot = Some(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let conn = slot.as_mut().expect("just set");
        let r: Result<String, _> = redis::cmd("PING").query_async(conn).await;
        if r.is_err() {
            *slot = None; // a fresh connection next time
        }
        r.map(drop).map_err(|e| e.to_string())
    }

    /// Refresh the report (and so the gauges) every `REFRESH_EVERY`; aborted at shutdown.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.report().await;
            }
        })
    }
}

//! `Application`: builds the node from settings, binds the listeners (port 0 in tests) and
//! serves until a shutdown future resolves, then drains in the order DESIGN.md gives.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use chatty_actors::{ClusterBus, LocalBus, Metrics, Node, NodeArgs, PresenceStore};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::admission::{Admission, Cidr};
use crate::auth::Authenticator;
pub use crate::metrics::EdgeMetrics;
use crate::redis::{RedisBus, RedisPresence};
use crate::settings::Settings;
pub use crate::state::{AppState, AppStateInner};
use crate::store::Database;

pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Connect, migrate, start the tree and bind the listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Database::open(&settings, settings.database.migrate_on_start).await?;
        tracing::info!(store = db.kind(), "database ready");
        let registry = Registry::new();
        let metrics = Metrics::new(&registry);
        let edge_metrics = EdgeMetrics::new(&registry)?;
        let redis_url = settings.redis.url.expose();
        let node_id: Arc<str> = Arc::from(settings.node.id.as_str());
        let (bus, presence_store): (Arc<dyn ClusterBus>, Option<Arc<dyn PresenceStore>>) =
            if redis_url.is_empty() {
                (LocalBus::new(), None)
            } else {
                tracing::info!(node = %node_id, "cluster mode: bus and presence through Redis");
                let bus = RedisBus::start(
                    redis_url,
                    node_id.clone(),
                    metrics.clone(),
                    crate::redis::BusCounters {
                        redis_errors: edge_metrics.redis_errors.clone(),
                        reconnects: edge_metrics.bus_reconnects.clone(),
                        published: edge_metrics.bus_published.clone(),
                    },
                )
                .context("redis.url")?;
                let presence = RedisPresence::connect(
                    redis_url,
                    node_id.clone(),
                    Duration::from_millis(settings.presence.ttl_ms),
                    edge_metrics.redis_errors.clone(),
                )
                .await
                .context("redis.url")?;
                (bus, Some(presence))
            };
        let mut config = settings.node_config();
        config.writer_lanes = db.writer_lanes(config.writer_lanes);
        let webhooks = crate::webhooks::Webhooks::build(
            &settings,
            &db,
            crate::webhooks::WebhookMetrics::new(&registry)?,
            edge_metrics.redis_errors.clone(),
        )
        .context("webhooks")?;
        let node = Node::start(NodeArgs {
            store: db.store_with_webhooks(webhooks.is_some()),
            bus,
            presence_store,
            config,
            metrics,
            socket_watch: webhooks.as_ref().map(|w| w.socket_watch()),
        })
        .await?;
        if let Some(w) = &webhooks {
            w.run();
        }
        let listener = bind(&settings.server.host, settings.server.port)
            .await
            .with_context(|| {
                format!(
                    "server.port: cannot bind {}:{}",
                    settings.server.host, settings.server.port
                )
            })?;
        let metrics_listener =
            TcpListener::bind((settings.server.host.as_str(), settings.server.metrics_port))
                .await
                .with_context(|| {
                    format!(
                        "server.metrics_port: cannot bind {}:{}",
                        settings.server.host, settings.server.metrics_port
                    )
                })?;
        let auth = Authenticator::new(&settings.auth);
        let admission = Admission::new(
            settings.limits.max_connections_per_ip,
            settings.limits.max_connections_per_user,
        );
        let trusted_proxies = settings
            .server
            .trusted_proxies
            .iter()
            .filter_map(|p| Cidr::parse(p))
            .collect();
        let health = crate::health::Health::new(db.clone(), redis_url, &registry)
            .context("health checks")?;
        let state = AppState(Arc::new(AppStateInner {
            admission,
            trusted_proxies,
            health,
            settings,
            auth,
            node,
            draining: AtomicBool::new(false),
            edge_metrics,
            registry,
            db,
            webhooks,
        }));
        Ok(Self {
            listener,
            metrics_listener,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn node(&self) -> Arc<Node> {
        self.state.node.clone()
    }

    /// Serve until `shutdown` resolves, then drain: readiness 503 and upgrades refused, every
    /// socket told to stop sending, the Writer commits and acks, every socket closed with 1001,
    /// the tree stopped, the pool closed. Returns whether the drain finished in time.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<bool> {
        let state = self.state.clone();
        let router = crate::http::public(state.clone());
        let header_timeout = Duration::from_millis(state.settings.server.header_read_timeout_ms);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            self.listener,
            router,
            header_timeout,
            stop_rx.clone(),
        ));
        let metrics_app = crate::http::metrics_port(state.clone());
        let mut metrics_stop = stop_rx.clone();
        let metrics_srv = tokio::spawn(async move {
            let _ = axum::serve(self.metrics_listener, metrics_app)
                .with_graceful_shutdown(async move {
                    let _ = metrics_stop.wait_for(|s| *s).await;
                })
                .await;
        });

        let health_refresher = state.health.spawn_refresher();
        shutdown.await;
        health_refresher.abort();
        let started = Instant::now();
        tracing::info!("shutdown: draining");
        state.draining.store(true, Ordering::Release);
        state.edge_metrics.draining.set(1);
        let deadline = started + Duration::from_millis(state.settings.server.shutdown_timeout_ms);
        // Leave a margin for closing the pool and the listeners.
        let clean = state
            .node
            .shutdown(
                deadline
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or(deadline),
            )
            .await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), accept).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics_srv).await;
        if let Some(w) = &state.webhooks {
            w.stop().await;
        }
        state.db.close().await;
        tracing::info!(
            clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown: done"
        );
        Ok(clean)
    }
}

/// Bind the public listener with a deep accept backlog: a reconnect storm (every client of a
/// restarted node at once) overflows the default 128 and the kernel starts SYN cookies.
async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `chatty migrate`: create the database if needed and apply migrations. With
/// `database.migration_url`, as that (owner) role, and then keep the application role of
/// `database.url` with row access only.
pub async fn migrate_only(settings: &Settings) -> anyhow::Result<()> {
    if settings.database.migration_url.expose().is_empty() {
        let db = Database::open(settings, true).await?;
        db.close().await;
        return Ok(());
    }
    let app = crate::store::AppRole::from_url(settings.database.url.expose())?;
    let mut owner = settings.clone();
    owner.database.url = settings.database.migration_url.clone();
    let db = Database::open(&owner, true).await?;
    let granted = db.grant_app_role(&app).await;
    db.close().await;
    granted?;
    tracing::info!(role = %app.name, "migrations applied; application role granted row access");
    Ok(())
}

/// Accept sockets until told to stop. Each connection is served by hyper directly (not
/// `axum::serve`) so the header-read timeout applies: a client that never finishes its
/// request line is dropped instead of holding a socket forever.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, addr)) => {
                tokio::spawn(serve_conn(tcp, addr, router.clone(), header_timeout));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_conn(tcp: TcpStream, addr: SocketAddr, router: Router, header_timeout: Duration) {
    let _ = tcp.set_nodelay(true);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

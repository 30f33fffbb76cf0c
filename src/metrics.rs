//! Metrics of the edge: sockets and frames, handshakes, HTTP, the database pool, Redis, the
//! process. The actors' own are `chatty_actors::Metrics`; both register into the one registry
//! the metrics port serves.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Metrics of the edge (HTTP, handshakes, pool) beside the actors' own.
pub struct EdgeMetrics {
    pub connections_active: IntGauge,
    pub connections_opened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    pub handshake_rejections: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub db_pool: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub draining: IntGauge,
    pub redis_errors: IntCounter,
    pub bus_reconnects: IntCounter,
    pub bus_published: IntCounter,
}

impl EdgeMetrics {
    pub fn new(r: &Registry) -> anyhow::Result<Self> {
        let m = EdgeMetrics {
            connections_active: IntGauge::new(
                "chatty_connections_active",
                "Open WebSocket connections.",
            )?,
            connections_opened: IntCounter::new(
                "chatty_connections_opened_total",
                "WebSocket connections accepted.",
            )?,
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "chatty_connections_closed_total",
                    "WebSocket connections closed, by close code.",
                ),
                &["code"],
            )?,
            frames_in: IntCounterVec::new(
                Opts::new(
                    "chatty_frames_in_total",
                    "Client frames received, by type and encoding.",
                ),
                &["type", "encoding"],
            )?,
            frames_out: IntCounterVec::new(
                Opts::new(
                    "chatty_frames_out_total",
                    "Frames written to sockets, by encoding.",
                ),
                &["encoding"],
            )?,
            handshake_rejections: IntCounterVec::new(
                Opts::new(
                    "chatty_handshake_rejections_total",
                    "WebSocket handshakes refused, by reason.",
                ),
                &["reason"],
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "chatty_http_requests_total",
                    "HTTP requests, by matched route and status.",
                ),
                &["route", "status"],
            )?,
            http_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "chatty_http_request_duration_seconds",
                    "HTTP request duration, by matched route.",
                )
                .buckets(chatty_actors::LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            db_pool: IntGaugeVec::new(
                Opts::new(
                    "chatty_db_pool_connections",
                    "Database pool connections, by state.",
                ),
                &["state"],
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("chatty_build_info", "Build information; always 1."),
                &["version"],
            )?,
            draining: IntGauge::new("chatty_draining", "1 while the node drains for shutdown.")?,
            redis_errors: IntCounter::new(
                "chatty_redis_errors_total",
                "Errors talking to Redis (bus and presence).",
            )?,
            bus_reconnects: IntCounter::new(
                "chatty_bus_reconnects_total",
                "Times the Redis subscriber connected again after losing its connection.",
            )?,
            bus_published: IntCounter::new(
                "chatty_bus_published_total",
                "Events published on the cluster bus.",
            )?,
        };
        r.register(Box::new(m.connections_active.clone()))?;
        r.register(Box::new(m.connections_opened.clone()))?;
        r.register(Box::new(m.connections_closed.clone()))?;
        r.register(Box::new(m.frames_in.clone()))?;
        r.register(Box::new(m.frames_out.clone()))?;
        r.register(Box::new(m.bus_published.clone()))?;
        r.register(Box::new(m.handshake_rejections.clone()))?;
        r.register(Box::new(m.http_requests.clone()))?;
        r.register(Box::new(m.http_seconds.clone()))?;
        r.register(Box::new(m.db_pool.clone()))?;
        r.register(Box::new(m.build_info.clone()))?;
        r.register(Box::new(m.draining.clone()))?;
        r.register(Box::new(m.redis_errors.clone()))?;
        r.register(Box::new(m.bus_reconnects.clone()))?;
        r.register(Box::new(crate::telemetry::SPANS_EXPORTED.clone()))?;
        // Both series exist from the start (at 0), tracing on or off.
        for result in ["ok", "failed"] {
            crate::telemetry::SPANS_EXPORTED.with_label_values(&[result]);
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …: what
        // an operator checks first, and what the memory and fd alerts are written against.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in [
            "origin",
            "subprotocol",
            "token_missing",
            "token_invalid",
            "token_too_long",
            "capacity",
            "draining",
            "not_websocket",
            "unavailable",
            "capacity_ip",
            "capacity_user",
        ] {
            m.handshake_rejections.with_label_values(&[reason]);
        }
        // Every series a dashboard plots exists from the start, at zero.
        for enc in ["json", "msgpack"] {
            m.frames_out.with_label_values(&[enc]);
            for ty in [
                "join", "leave", "send", "history", "read", "typing", "ping", "kick", "unban",
                "set_role", "refresh", "presence", "edit", "delete", "react", "rooms", "invalid",
            ] {
                m.frames_in.with_label_values(&[ty, enc]);
            }
        }
        for code in [
            "1000", "1001", "1002", "1007", "1008", "1009", "1011", "1013", "4000", "4001", "4003",
        ] {
            m.connections_closed.with_label_values(&[code]);
        }
        Ok(m)
    }
}

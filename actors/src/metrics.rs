//! Prometheus metrics of the actor tree. One `Metrics` per node, registered into the registry
//! the edge serves on the metrics port. Label values are fixed sets (kinds, codes, encodings),
//! never room or user ids, so cardinality stays bounded.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets from 50 µs to 10 s: fine enough for sub-millisecond hops, wide enough for stalls.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.015,
    0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The kinds of actor in the tree, as label values.
pub const ACTOR_KINDS: &[&str] = &[
    "node",
    "writer",
    "presence",
    "bus_listener",
    "room_supervisor",
    "room",
    "connection_supervisor",
    "connection",
];

#[derive(Clone)]
pub struct Metrics {
    pub connections_active: IntGauge,
    pub connections_opened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    pub deliveries: IntCounter,
    pub messages_persisted: IntCounter,
    pub messages_duplicate: IntCounter,
    pub actors_alive: IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub writer_batch_size: Histogram,
    pub writer_flush_seconds: Histogram,
    pub writer_flush_errors: IntCounter,
    pub writer_unavailable: IntCounter,
    pub send_ack_seconds: Histogram,
    pub commit_delivery_seconds: HistogramVec,
    pub join_replay_seconds: Histogram,
    pub presence_entries: IntGauge,
    pub bus_published: IntCounter,
    pub bus_received: IntCounter,
    pub bus_errors: IntCounter,
    pub gap_fills: IntCounter,
    pub slow_consumer_closes: IntCounter,
    pub rate_limited: IntCounter,
    pub errors_sent: IntCounterVec,
    pub moderation: IntCounterVec,
    pub removals: IntCounter,
    pub head_checks: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registering the same name twice is a programming error caught by the tests; ignore it
    // at run time rather than crash a node over a metric.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static histogram options are valid");
    reg(r, h)
}

impl Metrics {
    pub fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            reg(
                r,
                IntCounter::new(name, help).expect("static counter options are valid"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels)
                    .expect("static counter options are valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                r,
                IntGauge::new(name, help).expect("static gauge options are valid"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels)
                    .expect("static gauge options are valid"),
            )
        };
        let m = Metrics {
            connections_active: gauge("chatty_connections_active", "Open WebSocket connections."),
            connections_opened: counter(
                "chatty_connections_opened_total",
                "WebSocket connections accepted.",
            ),
            connections_closed: counter_vec(
                "chatty_connections_closed_total",
                "WebSocket connections closed, by close code.",
                &["code"],
            ),
            frames_in: counter_vec(
                "chatty_frames_in_total",
                "Client frames received, by type and encoding.",
                &["type", "encoding"],
            ),
            frames_out: counter_vec(
                "chatty_frames_out_total",
                "Frames written to sockets, by encoding.",
                &["encoding"],
            ),
            deliveries: counter(
                "chatty_deliveries_total",
                "Message frames queued to room members.",
            ),
            messages_persisted: counter(
                "chatty_messages_persisted_total",
                "Messages committed to the store.",
            ),
            messages_duplicate: counter(
                "chatty_messages_duplicate_total",
                "Sends answered with the original seq of an already stored cid.",
            ),
            actors_alive: gauge_vec("chatty_actors_alive", "Live actors, by kind.", &["kind"]),
            actor_restarts: counter_vec(
                "chatty_actor_restarts_total",
                "Actors restarted by their supervisor, by kind.",
                &["kind"],
            ),
            queue_depth: gauge_vec(
                "chatty_queue_depth",
                "Messages waiting in the bounded queues in front of actors, by kind.",
                &["kind"],
            ),
            writer_batch_size: histogram(
                r,
                "chatty_writer_batch_size",
                "Messages per writer flush.",
                BATCH_BUCKETS,
            ),
            writer_flush_seconds: histogram(
                r,
                "chatty_writer_flush_duration_seconds",
                "Time to commit one writer batch.",
                LATENCY_BUCKETS,
            ),
            writer_flush_errors: counter(
                "chatty_writer_flush_errors_total",
                "Writer flushes that failed and were retried.",
            ),
            writer_unavailable: counter(
                "chatty_writer_unavailable_total",
                "Sends answered `unavailable` by the writer.",
            ),
            send_ack_seconds: histogram(
                r,
                "chatty_send_ack_seconds",
                "From a send entering the writer queue to its ack.",
                LATENCY_BUCKETS,
            ),
            commit_delivery_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "chatty_commit_delivery_seconds",
                        "From commit to the message reaching its room on this node (local) or arriving from the bus on another node (remote).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["scope"],
                )
                .expect("static histogram options are valid"),
            ),
            join_replay_seconds: histogram(
                r,
                "chatty_join_replay_seconds",
                "Time to replay missed messages on a join with `since`.",
                LATENCY_BUCKETS,
            ),
            presence_entries: gauge(
                "chatty_presence_entries",
                "Users present in rooms on this node.",
            ),
            bus_published: counter(
                "chatty_bus_published_total",
                "Events published on the cluster bus.",
            ),
            bus_received: counter(
                "chatty_bus_received_total",
                "Events received from the cluster bus.",
            ),
            bus_errors: counter("chatty_bus_errors_total", "Cluster bus errors."),
            gap_fills: counter(
                "chatty_gap_fills_total",
                "Sequence gaps a room filled by reading the store.",
            ),
            slow_consumer_closes: counter(
                "chatty_slow_consumer_closes_total",
                "Connections closed with 4000 because their outbound queue overflowed.",
            ),
            rate_limited: counter(
                "chatty_rate_limited_total",
                "Client frames refused by the per-connection rate limit.",
            ),
            errors_sent: counter_vec(
                "chatty_errors_sent_total",
                "`error` frames sent to clients, by code.",
                &["code"],
            ),
            moderation: counter_vec(
                "chatty_moderation_total",
                "Moderation actions taken, by action (kick, ban, unban, set_role, remove_member, disconnect) and by whom (socket, backend).",
                &["action", "by"],
            ),
            removals: counter(
                "chatty_room_removals_total",
                "Sockets taken out of a room on this node (removed, kicked or banned).",
            ),
            head_checks: counter(
                "chatty_room_head_checks_total",
                "Times a room read its head from the store to find what it missed (after a bus reconnect, a restart or a batch in doubt).",
            ),
        };
        // Touch every labelled series once so dashboards and scrapes see them from the start.
        for kind in ACTOR_KINDS {
            m.actors_alive.with_label_values(&[kind]);
            m.actor_restarts.with_label_values(&[kind]);
        }
        for kind in ["writer", "room", "outbound", "inbound"] {
            m.queue_depth.with_label_values(&[kind]);
        }
        for scope in ["local", "remote"] {
            m.commit_delivery_seconds.with_label_values(&[scope]);
        }
        for enc in ["json", "msgpack"] {
            m.frames_out.with_label_values(&[enc]);
            for ty in [
                "join", "leave", "send", "history", "read", "typing", "ping", "kick", "unban",
                "set_role", "refresh", "invalid",
            ] {
                m.frames_in.with_label_values(&[ty, enc]);
            }
        }
        for code in [
            "1000", "1001", "1002", "1007", "1008", "1009", "1011", "1013", "4000", "4001", "4003",
        ] {
            m.connections_closed.with_label_values(&[code]);
        }
        for code in [
            "bad_request",
            "unknown_type",
            "too_large",
            "not_joined",
            "forbidden",
            "room_limit",
            "rate_limited",
            "unavailable",
            "internal",
        ] {
            m.errors_sent.with_label_values(&[code]);
        }
        for action in [
            "kick",
            "ban",
            "unban",
            "set_role",
            "remove_member",
            "disconnect",
        ] {
            for by in ["socket", "backend"] {
                m.moderation.with_label_values(&[action, by]);
            }
        }
        m
    }

    /// A private registry's metrics, for unit tests of single actors.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }
}

//! Prometheus metrics of the actor tree. One `Metrics` per node, registered into the registry
//! the edge serves on the metrics port. The edge's own (sockets, frames, HTTP, Redis) live in
//! the `chatty` crate beside the code that counts them. Label values are fixed sets (kinds, codes, encodings),
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

/// The actor tree's Prometheus series. Cheap to clone: every field is a handle to a series
/// shared with the registry.
#[derive(Clone)]
pub struct Metrics {
    /// `chatty_deliveries_total`: message frames queued to room members (one per member per
    /// message).
    pub deliveries: IntCounter,
    /// `chatty_messages_persisted_total`: new messages committed to the store (repeated cids
    /// not counted).
    pub messages_persisted: IntCounter,
    /// `chatty_changes_committed_total{change}`: edits, deletes and reactions committed (v1.1;
    /// changes that changed nothing are not counted).
    pub changes_committed: IntCounterVec,
    /// `chatty_user_events_delivered_total`: personal-channel events queued to this node's
    /// sockets (one per socket; v1.1).
    pub user_events_delivered: IntCounter,
    /// `chatty_inbox_frames_total`: `inbox` frames queued to this node's sockets (v1.1).
    pub inbox_frames: IntCounter,
    /// `chatty_inbox_dropped_total`: private rooms' messages whose `inbox` frames were not
    /// sent (the inbox queue was full, or the members could not be read).
    pub inbox_dropped: IntCounter,
    /// `chatty_messages_duplicate_total`: sends answered with the original seq of an already
    /// stored cid.
    pub messages_duplicate: IntCounter,
    /// `chatty_actors_alive{kind}`: live actors, by kind (`ACTOR_KINDS`); kept by `Alive`.
    pub actors_alive: IntGaugeVec,
    /// `chatty_actor_restarts_total{kind}`: actors restarted by their supervisor (a failed
    /// connection is closed with 1011 instead, and counted here too).
    pub actor_restarts: IntCounterVec,
    /// `chatty_queue_depth{kind}`: items waiting in the bounded queues (`writer`, `room`,
    /// `inbound`, `outbound`); a gauge set at scrape time by `Node::sample_gauges`.
    pub queue_depth: IntGaugeVec,
    /// `chatty_writer_batch_size`: distinct messages per committed writer batch.
    pub writer_batch_size: Histogram,
    /// `chatty_writer_flush_duration_seconds`: time to commit one writer batch (successful
    /// attempts only).
    pub writer_flush_seconds: Histogram,
    /// `chatty_writer_flush_errors_total`: failed flush attempts; every retry counts.
    pub writer_flush_errors: IntCounter,
    /// `chatty_writer_unavailable_total`: sends answered `unavailable` by the writer (its queue
    /// was full, or it gave up on a batch after `writer_retry_max`).
    pub writer_unavailable: IntCounter,
    /// `chatty_send_ack_seconds`: from a send entering the writer queue to its ack.
    pub send_ack_seconds: Histogram,
    /// `chatty_commit_delivery_seconds{scope}`: from commit to the message reaching its room on
    /// this node (`local`) or arriving from the bus on another node (`remote`).
    pub commit_delivery_seconds: HistogramVec,
    /// `chatty_join_replay_seconds`: time to replay missed messages on a join with `since`.
    pub join_replay_seconds: Histogram,
    /// `chatty_presence_entries`: users present in rooms on this node, summed over rooms (a
    /// user in two rooms counts twice).
    pub presence_entries: IntGauge,
    /// `chatty_presence_reads_total`: reads of a room's cluster-wide presence (cluster mode).
    /// They follow change (joins, leaves, dead nodes, a reconcile after a change), so an idle
    /// cluster makes none.
    pub presence_reads: IntCounter,
    /// `chatty_presence_purged_total`: rooms whose entries of a dead node this node purged.
    pub presence_purged: IntCounter,
    /// `chatty_bus_received_total`: events received from other nodes over the cluster bus.
    pub bus_received: IntCounter,
    /// `chatty_bus_errors_total`: cluster bus trouble: dropped publishes, undecodable or
    /// dropped incoming events, failed presence heartbeats.
    pub bus_errors: IntCounter,
    /// `chatty_gap_fills_total`: seq gaps a room filled by reading the store, because the
    /// missing message did not arrive within `gap_wait`.
    pub gap_fills: IntCounter,
    /// `chatty_slow_consumer_closes_total`: connections closed with 4000 because their
    /// outbound queue overflowed.
    pub slow_consumer_closes: IntCounter,
    /// `chatty_rate_limited_total`: client frames refused with `rate_limited`.
    pub rate_limited: IntCounter,
    /// `chatty_errors_sent_total{code}`: `error` frames sent to clients, by error code.
    pub errors_sent: IntCounterVec,
    /// `chatty_moderation_total{action, by}`: moderation actions taken; `action` is kick, ban,
    /// unban, set_role, remove_member or disconnect, `by` is socket or backend.
    pub moderation: IntCounterVec,
    /// `chatty_room_removals_total`: sockets taken out of a room on this node (removed, kicked
    /// or banned).
    pub removals: IntCounter,
    /// `chatty_room_head_checks_total`: times a room read its head from the store to find what
    /// it missed (after a bus reconnect, a restart or a batch in doubt).
    pub head_checks: IntCounter,
}

/// One live actor in `chatty_actors_alive{kind}`: counted when made, uncounted when dropped.
/// Every actor keeps one in its state, because ractor drops the state however the actor ends
/// (stopped, killed or failed) while it skips `post_stop` for an actor that failed or was
/// killed: a gauge decremented there would drift up by one per restart.
pub(crate) struct Alive(IntGauge);

impl Alive {
    pub(crate) fn new(metrics: &Metrics, kind: &'static str) -> Self {
        let g = metrics.actors_alive.with_label_values(&[kind]);
        g.inc();
        Self(g)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.dec();
    }
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
    /// Create every series, register it in `r`, and touch every labelled one so that scrapes
    /// show them (at zero) from the start.
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
            deliveries: counter(
                "chatty_deliveries_total",
                "Message frames queued to room members.",
            ),
            messages_persisted: counter(
                "chatty_messages_persisted_total",
                "Messages committed to the store.",
            ),
            changes_committed: counter_vec(
                "chatty_changes_committed_total",
                "Message changes committed, by kind (edit, delete, react).",
                &["change"],
            ),
            user_events_delivered: counter(
                "chatty_user_events_delivered_total",
                "Personal-channel events queued to this node's sockets, one per socket.",
            ),
            inbox_frames: counter(
                "chatty_inbox_frames_total",
                "Inbox frames queued to this node's sockets, one per socket and message.",
            ),
            inbox_dropped: counter(
                "chatty_inbox_dropped_total",
                "Private rooms' messages whose inbox frames were not sent (queue full or members unreadable).",
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
            presence_reads: counter(
                "chatty_presence_reads_total",
                "Reads of a room's cluster-wide presence.",
            ),
            presence_purged: counter(
                "chatty_presence_purged_total",
                "Rooms whose entries of a dead node this node purged.",
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
            "not_found",
        ] {
            m.errors_sent.with_label_values(&[code]);
        }
        for change in ["edit", "delete", "react"] {
            m.changes_committed.with_label_values(&[change]);
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

//! The `run` command line: every option of a run (also recorded, minus the secret, in the
//! result's `args`) and the exit status of an INVALID run. Kept apart because it is the
//! interface, long and declarative, while the rest of the coordinator is behaviour.

use clap::Args;
use serde::Serialize;

use super::scenario::Scenario;
use crate::target::Target;

#[derive(Args, Clone, Debug, Serialize)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "chatty")]
    pub target: Target,
    /// Server WebSocket URL; repeat or comma-separate for several nodes (connections are spread
    /// round-robin). Chatty: ws://127.0.0.1:8080/ws.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// Connections (members) in total.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Offered message rates (messages/s, all rooms together), one step each.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rates: Vec<f64>,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Seconds of sending before the measurement window of each step.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds after a step to wait for late deliveries (counted as lost after that).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Sending members per room (hot room, slow consumers, cluster, mixed's hot room).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Members per room (idle, storm, many rooms, mixed).
    #[arg(long, default_value_t = 5)]
    pub room_size: usize,
    /// Body size in bytes (at least the ~40-byte timing header).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Slow consumers: fraction of the room that stops reading.
    #[arg(long, default_value_t = 0.01)]
    pub slow_fraction: f64,
    /// Slow consumers: their SO_RCVBUF in bytes (small, so the server feels them quickly).
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: usize,
    /// Mixed: members of the hot room.
    #[arg(long, default_value_t = 1000)]
    pub hot_members: usize,
    /// Mixed: share of the messages that go to the hot room.
    #[arg(long, default_value_t = 0.1)]
    pub hot_share: f64,
    /// Idle: seconds to hold the connections after they are all joined.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Worker processes (0: one per 19,000 connections).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Server processes to sample (/proc/<pid>/stat and status); repeatable.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Also sum the CPU of every process with this command name (e.g. `postgres`).
    #[arg(long)]
    pub extra_cpu_comm: Option<String>,
    /// Chatty's Prometheus endpoint; counters are diffed over the run.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// PostgreSQL URL (for psql) to check that every acked message is committed, gap-free.
    #[arg(long)]
    pub db_url: Option<String>,
    /// Make every room private (through --db-url) with one member who never connects, so
    /// every message is one the inbox and webhooks are about.
    #[arg(long)]
    pub private_rooms: bool,
    /// Durable: also time a raw COPY of as many rows into a scratch copy of `messages`.
    #[arg(long)]
    pub copy_compare: bool,
    #[arg(
        long,
        env = "CHATTY_LOADTEST_JWT_SECRET",
        default_value = "local-development-secret-change-me",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub jwt_secret: String,
    /// A name for this run in tables and charts (default: the target).
    #[arg(long)]
    pub label: Option<String>,
    /// Free text recorded in the result (settings, pinning, load seen).
    #[arg(long, default_value = "")]
    pub note: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<String>,
    /// Write an SVG chart (latency percentiles against offered load) here.
    #[arg(long)]
    pub svg: Option<String>,
    /// Exit 0 even when a step (or the connect phase) is INVALID; without it such a run exits
    /// with status 3 after writing its table, JSON and chart.
    #[arg(long)]
    pub allow_invalid: bool,
}

/// Exit status of `run` when the run is INVALID (and --allow-invalid is not given).
pub const EXIT_INVALID: i32 = 3;

//! Settings, loaded in layers by the `config` crate: built-in defaults → `config/base.toml` →
//! `config/{CHATTY_ENVIRONMENT}.toml` (`local` by default) → `CHATTY__SECTION__KEY` variables.
//! Invalid settings stop startup with a message naming the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chatty_actors::NodeConfig;
use serde::Deserialize;

mod defaults;
mod validate;
use defaults::DEFAULTS;

/// A secret string: never printed, never logged.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Local,
    Production,
}

impl Environment {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("CHATTY_ENVIRONMENT").as_deref() {
            Err(_) | Ok("") | Ok("local") => Ok(Environment::Local),
            Ok("production") => Ok(Environment::Production),
            Ok(other) => Err(format!(
                "CHATTY_ENVIRONMENT: `{other}` is not `local` or `production`"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Production => "production",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub node: NodeSettings,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub writer: WriterSettings,
    pub presence: PresenceSettings,
    pub webhooks: WebhookSettings,
    pub telemetry: TelemetrySettings,
    pub log: LogSettings,
    pub debug: DebugSettings,
    #[serde(skip, default = "default_env")]
    pub environment: Environment,
}

fn default_env() -> Environment {
    Environment::Local
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub metrics_port: u16,
    /// Time allowed to send a request's headers (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Upgraded sockets must send their first frame within this time.
    pub first_frame_timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    /// Hard limit for the whole shutdown sequence.
    pub shutdown_timeout_ms: u64,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed: only the entry they append.
    pub trusted_proxies: Vec<String>,
    /// On ECS (`ECS_CONTAINER_METADATA_URI_V4` set): how often to ask whether this task is
    /// being stopped, to drain before the load balancer ends the sockets (see `ecs.rs`).
    /// 0 turns the watch off.
    pub ecs_stop_poll_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://…`; empty selects the embedded SQLite store.
    pub url: Secret,
    /// `chatty migrate` only: the schema owner's URL. When set, migrations run as it and the
    /// user of `url` becomes a row-access-only application role (see `store/roles.rs`).
    pub migration_url: Secret,
    /// Where the embedded SQLite store lives when `url` is empty.
    pub sqlite_path: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub connect_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RedisSettings {
    /// Empty: single node.
    pub url: Secret,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeSettings {
    /// Stable id of this node; generated when empty.
    pub id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
    pub jwt_audience: String,
    pub jwt_issuer: String,
    pub api_key: Secret,
    /// Exact origins (scheme://host[:port]) allowed to open sockets. A request without an
    /// `Origin` (not a browser) is always allowed; one with an origin not listed never is.
    pub allowed_origins: Vec<String>,
    /// Serve `POST /dev/token` (tokens for anyone, by name): local use only.
    pub dev_tokens: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_body_bytes: usize,
    /// v1.1: largest `meta` of a send or edit, JSON-encoded.
    pub max_meta_bytes: usize,
    /// v1.1: most reaction keys one user may have on one message.
    pub max_reaction_keys: u32,
    pub rooms_per_connection: usize,
    pub messages_per_second: f64,
    pub message_burst: u32,
    pub outbound_queue: usize,
    pub inbound_queue: usize,
    pub room_queue: usize,
    pub writer_queue: usize,
    pub replay_max: u32,
    pub history_max: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    pub max_connections_per_user: u32,
    /// Most users `joined.presence` lists and a `presence_page` holds.
    pub presence_list_max: usize,
}

/// Most writer lanes (each holds a database connection while it commits).
pub const MAX_WRITER_LANES: usize = 16;

#[derive(Clone, Debug, Deserialize)]
pub struct WriterSettings {
    pub batch_max: usize,
    /// Lanes committing in parallel, each with its own database connection; a room always
    /// uses the same lane, so its order (and each sender's within it) is kept. The embedded
    /// SQLite store has one writer by nature and always uses one lane.
    pub lanes: usize,
    pub retry_max_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PresenceSettings {
    pub grace_ms: u64,
    /// Cluster mode: a node's presence entries are dropped this long after its last heartbeat.
    pub ttl_ms: u64,
    /// Cluster mode: how often a node renews its registration (one Redis call per beat).
    pub heartbeat_ms: u64,
    /// Cluster mode: the least time between two reconciles of every local room's view, done
    /// only when the cluster's presence changed (covers bus events lost in an outage).
    pub reconcile_ms: u64,
    pub coalesce_ms: u64,
    pub gap_wait_ms: u64,
}

/// v1.1: signed HTTP events for a product's backend (see docs/webhooks.md).
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookSettings {
    /// Where events are POSTed; empty turns webhooks off (nothing is written to the outbox).
    pub url: String,
    /// The HMAC-SHA256 key of `Chatty-Signature`.
    pub secret: Secret,
    /// A request not answered 2xx within this is a failure.
    pub timeout_ms: u64,
    /// Requests outstanding at once (at most one per room or user).
    pub max_in_flight: usize,
    /// The wait after the first failure; it doubles per failure up to `retry_max_ms`, with
    /// jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// An event still failing at this age is dead-lettered (kept, no longer retried).
    pub dead_after_s: u64,
    /// How often the dispatching node looks for due events when none were signalled.
    pub poll_ms: u64,
}

impl WebhookSettings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// OpenTelemetry traces (see docs/operations.md, "Tracing one message").
#[derive(Clone, Debug, Deserialize)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP URL (`http://collector:4318`; traces go to `/v1/traces`
    /// unless the URL has a path of its own). Empty turns tracing off: no exporter is built.
    pub otlp_endpoint: String,
    /// The share of messages traced, decided once at the edge (a socket's `send`, an HTTP
    /// publish without a `traceparent`). A caller's sampled `traceparent` is always followed.
    pub sample_ratio: f64,
    /// `service.name` of the spans; `service.instance.id` is the node id.
    pub service_name: String,
    /// One export request may take this long.
    pub export_timeout_ms: u64,
    /// Finished spans waiting for export; past it new spans are dropped (counted), never
    /// buffered without bound.
    pub max_queue: usize,
}

impl TelemetrySettings {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info,chatty=debug`.
    pub level: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DebugSettings {
    /// Test-only hooks that make actors panic. Refused in production.
    pub fault_injection: bool,
    /// Test-only `/debug/echo` WebSocket endpoint for conformance suites. Refused in production.
    pub echo_endpoint: bool,
}

impl Settings {
    /// Load from `config_dir` and the process environment.
    pub fn load(config_dir: &Path) -> Result<Settings, String> {
        let env = Environment::from_env()?;
        let mut b = config::Config::builder();
        for (k, v) in DEFAULTS {
            b = b.set_default(*k, *v).map_err(|e| e.to_string())?;
        }
        b = b
            .set_default("server.trusted_proxies", Vec::<String>::new())
            .map_err(|e| e.to_string())?
            .set_default("auth.allowed_origins", Vec::<String>::new())
            .map_err(|e| e.to_string())?;
        let settings: Settings = b
            .add_source(config::File::from(config_dir.join("base.toml")).required(false))
            .add_source(
                config::File::from(config_dir.join(format!("{}.toml", env.as_str())))
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix("CHATTY")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("auth.allowed_origins")
                    .with_list_parse_key("server.trusted_proxies")
                    .try_parsing(true),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| format!("invalid settings: {e}"))?;
        let mut settings = Settings {
            environment: env,
            ..settings
        };
        if settings.node.id.is_empty() {
            settings.node.id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The default config directory: `$CHATTY_CONFIG_DIR`, else `./config`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("CHATTY_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"))
    }

    /// The actors' view of the settings.
    pub fn node_config(&self) -> NodeConfig {
        let l = &self.limits;
        NodeConfig {
            presence_list_max: l.presence_list_max,
            rooms_per_connection: l.rooms_per_connection,
            messages_per_second: l.messages_per_second,
            message_burst: l.message_burst,
            outbound_queue: l.outbound_queue,
            inbound_queue: l.inbound_queue,
            writer_queue: l.writer_queue,
            writer_batch_max: self.writer.batch_max,
            writer_lanes: self.writer.lanes,
            writer_retry_max: Duration::from_millis(self.writer.retry_max_ms),
            room_queue: l.room_queue,
            replay_max: l.replay_max,
            max_reaction_keys: l.max_reaction_keys,
            history_max: l.history_max,
            presence_grace: Duration::from_millis(self.presence.grace_ms),
            presence_heartbeat: Duration::from_millis(self.presence.heartbeat_ms),
            presence_reconcile: Duration::from_millis(self.presence.reconcile_ms),
            presence_coalesce: Duration::from_millis(self.presence.coalesce_ms),
            gap_wait: Duration::from_millis(self.presence.gap_wait_ms),
            fault_injection: self.debug.fault_injection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "\"[redacted]\"");
        assert!(!format!(
            "{:?}",
            AuthSettings {
                jwt_secret: s.clone(),
                jwt_audience: String::new(),
                jwt_issuer: String::new(),
                api_key: s,
                allowed_origins: vec![],
                dev_tokens: false,
            }
        )
        .contains("hunter2"));
    }
}

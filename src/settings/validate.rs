//! The checks the types cannot make: ranges, relations between keys, and what production
//! refuses. Every error names its key.

use super::{Environment, Settings, MAX_WRITER_LANES};

impl Settings {
    /// Check what the types cannot: every error names its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        let mut need = |ok: bool, key: &str, why: &str| {
            if !ok {
                errs.push(format!("{key}: {why}"));
            }
        };
        let l = &self.limits;
        need(
            self.auth.jwt_secret.expose().len() >= 16,
            "auth.jwt_secret",
            "must be set, at least 16 bytes",
        );
        need(
            !self.auth.api_key.expose().is_empty(),
            "auth.api_key",
            "must be set",
        );
        need(
            (64..=16 << 20).contains(&l.max_frame_bytes),
            "limits.max_frame_bytes",
            "must be 64 B..16 MiB",
        );
        need(
            l.max_message_bytes >= l.max_frame_bytes && l.max_message_bytes <= 64 << 20,
            "limits.max_message_bytes",
            "must be >= limits.max_frame_bytes and <= 64 MiB",
        );
        need(
            l.max_body_bytes >= 1 && l.max_body_bytes + 512 <= l.max_message_bytes,
            "limits.max_body_bytes",
            "must be >= 1 and leave 512 B of room under limits.max_message_bytes",
        );
        need(
            (2..=65536).contains(&l.max_meta_bytes)
                && l.max_body_bytes + l.max_meta_bytes + 512 <= l.max_message_bytes,
            "limits.max_meta_bytes",
            "must be 2..=65536 and, with limits.max_body_bytes, leave 512 B of room under \
             limits.max_message_bytes",
        );
        need(
            (1..=1000).contains(&l.max_reaction_keys),
            "limits.max_reaction_keys",
            "must be 1..=1000",
        );
        need(
            l.rooms_per_connection >= 1,
            "limits.rooms_per_connection",
            "must be >= 1",
        );
        need(
            l.messages_per_second > 0.0,
            "limits.messages_per_second",
            "must be > 0",
        );
        need(
            l.outbound_queue >= 8,
            "limits.outbound_queue",
            "must be >= 8",
        );
        need(l.inbound_queue >= 1, "limits.inbound_queue", "must be >= 1");
        need(l.room_queue >= 1, "limits.room_queue", "must be >= 1");
        need(l.writer_queue >= 1, "limits.writer_queue", "must be >= 1");
        need(
            (1..=10_000).contains(&l.history_max),
            "limits.history_max",
            "must be 1..10000",
        );
        need(l.replay_max >= 1, "limits.replay_max", "must be >= 1");
        need(
            (1..=10_000).contains(&l.presence_list_max),
            "limits.presence_list_max",
            "must be 1..10000",
        );
        need(
            l.max_connections >= 1,
            "limits.max_connections",
            "must be >= 1",
        );
        need(
            self.writer.batch_max >= 1 && self.writer.batch_max <= 8192,
            "writer.batch_max",
            "must be 1..8192",
        );
        need(
            (1..=MAX_WRITER_LANES).contains(&self.writer.lanes),
            "writer.lanes",
            "must be 1..16",
        );
        need(
            self.server.ping_interval_ms >= 100,
            "server.ping_interval_ms",
            "must be >= 100",
        );
        need(
            self.server.pong_timeout_ms >= 100,
            "server.pong_timeout_ms",
            "must be >= 100",
        );
        need(
            self.server.header_read_timeout_ms >= 100,
            "server.header_read_timeout_ms",
            "must be >= 100",
        );
        need(
            self.server.first_frame_timeout_ms >= 100,
            "server.first_frame_timeout_ms",
            "must be >= 100",
        );
        need(
            matches!(self.log.format.as_str(), "pretty" | "json"),
            "log.format",
            "must be `pretty` or `json`",
        );
        need(
            !(self.debug.fault_injection && self.environment == Environment::Production),
            "debug.fault_injection",
            "is refused in production",
        );
        let url = self.database.url.expose();
        need(
            url.is_empty() || url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "database.url",
            "must be a postgres:// URL (or empty for the embedded store)",
        );
        let migration_url = self.database.migration_url.expose();
        need(
            migration_url.is_empty()
                || (!url.is_empty()
                    && (migration_url.starts_with("postgres://")
                        || migration_url.starts_with("postgresql://"))),
            "database.migration_url",
            "must be a postgres:// URL, and database.url must be set too",
        );
        need(
            !url.is_empty() || self.redis.url.expose().is_empty(),
            "redis.url",
            "cluster mode needs PostgreSQL (set database.url): the embedded SQLite store is single-node only",
        );
        need(
            !url.is_empty() || !self.database.sqlite_path.is_empty(),
            "database.sqlite_path",
            "must be set when database.url is empty",
        );
        need(
            !(self.debug.echo_endpoint && self.environment == Environment::Production),
            "debug.echo_endpoint",
            "is refused in production",
        );
        need(
            !(self.auth.dev_tokens && self.environment == Environment::Production),
            "auth.dev_tokens",
            "is refused in production",
        );
        need(
            self.presence.heartbeat_ms >= 50
                && self.presence.heartbeat_ms * 2 <= self.presence.ttl_ms,
            "presence.heartbeat_ms",
            "must be >= 50 and at most half of presence.ttl_ms",
        );
        need(
            self.presence.grace_ms <= 3_600_000,
            "presence.grace_ms",
            "must be at most 3600000 (an hour)",
        );
        let t = &self.telemetry;
        need(
            t.otlp_endpoint.is_empty()
                || t.otlp_endpoint.starts_with("http://")
                || t.otlp_endpoint.starts_with("https://"),
            "telemetry.otlp_endpoint",
            "must be an http:// or https:// URL (or empty: tracing off)",
        );
        need(
            (0.0..=1.0).contains(&t.sample_ratio),
            "telemetry.sample_ratio",
            "must be between 0.0 and 1.0",
        );
        need(
            !t.service_name.is_empty(),
            "telemetry.service_name",
            "must not be empty",
        );
        need(
            t.export_timeout_ms >= 1,
            "telemetry.export_timeout_ms",
            "must be >= 1",
        );
        need(
            (64..=1_000_000).contains(&t.max_queue),
            "telemetry.max_queue",
            "must be between 64 and 1000000",
        );
        let w = &self.webhooks;
        if w.enabled() {
            need(
                url::Url::parse(&w.url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()),
                "webhooks.url",
                "must be an http:// or https:// URL (or empty: webhooks off)",
            );
            need(
                w.secret.expose().len() >= 16,
                "webhooks.secret",
                "must be set, at least 16 bytes, when webhooks.url is",
            );
        }
        need(
            (100..=60_000).contains(&w.timeout_ms),
            "webhooks.timeout_ms",
            "must be 100..=60000",
        );
        need(
            (1..=1024).contains(&w.max_in_flight),
            "webhooks.max_in_flight",
            "must be 1..=1024",
        );
        need(
            w.retry_base_ms >= 1 && w.retry_base_ms <= w.retry_max_ms,
            "webhooks.retry_base_ms",
            "must be >= 1 and at most webhooks.retry_max_ms",
        );
        need(w.dead_after_s >= 1, "webhooks.dead_after_s", "must be >= 1");
        need(
            (10..=60_000).contains(&w.poll_ms),
            "webhooks.poll_ms",
            "must be 10..=60000",
        );
        need(
            self.presence.reconcile_ms >= self.presence.heartbeat_ms,
            "presence.reconcile_ms",
            "must be at least presence.heartbeat_ms",
        );
        need(
            self.node.id.len() <= 64
                && self
                    .node
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
            "node.id",
            "must match ^[A-Za-z0-9._-]{1,64}$",
        );
        for p in &self.server.trusted_proxies {
            need(
                crate::admission::Cidr::parse(p).is_some(),
                "server.trusted_proxies",
                "entries must be IP addresses or CIDRs",
            );
        }
        need(
            l.max_connections_per_ip >= 1,
            "limits.max_connections_per_ip",
            "must be >= 1",
        );
        need(
            l.max_connections_per_user >= 1,
            "limits.max_connections_per_user",
            "must be >= 1",
        );
        for o in &self.auth.allowed_origins {
            need(
                o.starts_with("http://") || o.starts_with("https://"),
                "auth.allowed_origins",
                "entries must be scheme://host[:port]",
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::{Secret, Settings};

    fn local() -> Settings {
        Settings::load(std::path::Path::new("config")).expect("the local settings load")
    }

    #[test]
    fn tracing_is_off_by_default_and_its_settings_are_checked() {
        let s = local();
        assert!(!s.telemetry.enabled());
        let err = |f: &dyn Fn(&mut Settings)| {
            let mut s = local();
            f(&mut s);
            s.validate().err().unwrap_or_default()
        };
        assert!(
            err(&|s| s.telemetry.otlp_endpoint = "collector:4318".into())
                .contains("telemetry.otlp_endpoint")
        );
        assert!(err(&|s| s.telemetry.sample_ratio = 1.5).contains("telemetry.sample_ratio"));
        assert!(err(&|s| s.telemetry.sample_ratio = -0.1).contains("telemetry.sample_ratio"));
        assert!(err(&|s| s.telemetry.max_queue = 0).contains("telemetry.max_queue"));
        assert!(err(&|s| {
            s.telemetry.otlp_endpoint = "http://collector:4318".into();
            s.telemetry.sample_ratio = 1.0;
        })
        .is_empty());
    }

    #[test]
    fn webhooks_need_an_http_url_and_a_long_secret_and_are_off_by_default() {
        let s = local();
        assert!(!s.webhooks.enabled());
        let err = |f: &dyn Fn(&mut Settings)| {
            let mut s = local();
            f(&mut s);
            s.validate().err().unwrap_or_default()
        };
        assert!(
            err(&|s| s.webhooks.url = "http://hooks.example/chatty".into())
                .contains("webhooks.secret")
        );
        assert!(err(&|s| {
            s.webhooks.url = "ftp://hooks.example/".into();
            s.webhooks.secret = Secret::new("0123456789abcdef");
        })
        .contains("webhooks.url"));
        assert!(
            err(&|s| s.webhooks.retry_base_ms = s.webhooks.retry_max_ms + 1)
                .contains("webhooks.retry_base_ms")
        );
        assert!(err(&|s| s.webhooks.max_in_flight = 0).contains("webhooks.max_in_flight"));
        assert_eq!(
            err(&|s| {
                s.webhooks.url = "https://hooks.example/chatty".into();
                s.webhooks.secret = Secret::new("0123456789abcdef");
            }),
            ""
        );
    }
}

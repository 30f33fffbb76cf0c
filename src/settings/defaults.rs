//! The built-in defaults: the one place a default is written. `config/*.toml` only holds what
//! differs per environment, and the README's table states these (a test below keeps it so).

/// The built-in defaults, the first layer.
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    ("server.host", "127.0.0.1"),
    ("server.port", "8080"),
    ("server.metrics_port", "9090"),
    ("server.header_read_timeout_ms", "10000"),
    ("server.first_frame_timeout_ms", "30000"),
    ("server.ping_interval_ms", "25000"),
    ("server.pong_timeout_ms", "10000"),
    ("server.shutdown_timeout_ms", "25000"),
    ("server.ecs_stop_poll_ms", "2000"),
    ("database.url", ""),
    ("database.migration_url", ""),
    ("database.sqlite_path", "data/chatty.db"),
    ("database.max_connections", "10"),
    ("database.migrate_on_start", "true"),
    ("database.connect_timeout_ms", "5000"),
    ("redis.url", ""),
    ("node.id", ""),
    ("auth.jwt_secret", ""),
    ("auth.jwt_audience", ""),
    ("auth.jwt_issuer", ""),
    ("auth.api_key", ""),
    ("auth.dev_tokens", "false"),
    ("limits.max_frame_bytes", "65536"),
    ("limits.max_message_bytes", "65536"),
    ("limits.max_body_bytes", "4096"),
    ("limits.max_meta_bytes", "2048"),
    ("limits.max_reaction_keys", "20"),
    ("limits.rooms_per_connection", "100"),
    ("limits.messages_per_second", "50"),
    ("limits.message_burst", "100"),
    ("limits.outbound_queue", "1024"),
    ("limits.inbound_queue", "32"),
    ("limits.room_queue", "10000"),
    ("limits.writer_queue", "20000"),
    ("limits.replay_max", "1000"),
    ("limits.history_max", "200"),
    ("limits.presence_list_max", "1000"),
    ("limits.max_connections", "19000"),
    ("limits.max_connections_per_ip", "2000"),
    ("limits.max_connections_per_user", "50"),
    ("writer.batch_max", "1024"),
    ("writer.lanes", "2"),
    ("writer.retry_max_ms", "10000"),
    ("presence.grace_ms", "3000"),
    ("presence.ttl_ms", "15000"),
    ("presence.heartbeat_ms", "5000"),
    ("presence.reconcile_ms", "300000"),
    ("presence.coalesce_ms", "50"),
    ("presence.gap_wait_ms", "30"),
    ("webhooks.url", ""),
    ("webhooks.secret", ""),
    ("webhooks.timeout_ms", "5000"),
    ("webhooks.max_in_flight", "16"),
    ("webhooks.retry_base_ms", "500"),
    ("webhooks.retry_max_ms", "60000"),
    ("webhooks.dead_after_s", "86400"),
    ("webhooks.poll_ms", "500"),
    ("telemetry.otlp_endpoint", ""),
    ("telemetry.sample_ratio", "0.01"),
    ("telemetry.service_name", "chatty"),
    ("telemetry.export_timeout_ms", "10000"),
    ("telemetry.max_queue", "4096"),
    ("log.format", "pretty"),
    ("log.level", "info"),
    ("debug.fault_injection", "false"),
    ("debug.echo_endpoint", "false"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `DEFAULTS` is the one place defaults live; the README's table documents them and
    /// must say the same (a key missing or a value differing fails here).
    #[test]
    fn the_readme_table_states_every_default_as_the_code_has_it() {
        let readme = include_str!("../../README.md");
        let mut table = std::collections::HashMap::new();
        for line in readme.lines().filter(|l| l.starts_with("| `")) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cols[1].trim_matches('`');
            table.insert(key.to_string(), cols[2].to_string());
        }
        for (key, value) in DEFAULTS {
            let doc = table
                .get(*key)
                .unwrap_or_else(|| panic!("README's configuration table lacks {key}"));
            let stated = if value.is_empty() {
                // Empty defaults read "empty", or say what stands in (generated, per env).
                doc == "empty" || !doc.starts_with('`')
            } else {
                doc.starts_with(&format!("`{value}`")) || doc.contains(&format!("else `{value}`"))
            };
            assert!(
                stated,
                "{key}: README says {doc}, the code's default is {value:?}"
            );
        }
    }
}

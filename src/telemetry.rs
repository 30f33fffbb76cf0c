//! The tracing subscriber: JSON in production, pretty locally, silent in tests unless
//! `TEST_LOG` is set.

use tracing_subscriber::{fmt, EnvFilter};

/// Install the global subscriber once. `format` is `json` or `pretty`.
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// For tests: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("pretty", "info,chatty=debug,chatty_actors=debug");
    }
}

//! Observability: the metrics move by exactly what happened, and every Grafana dashboard in
//! `grafana/dashboards` only queries series a running node really exports.
//!
//! One module per section: `counters` (counters follow real traffic) and `dashboards` (the
//! dashboards match the code). The Prometheus text parser is `crate::support::Scrape`.

use crate::support::*;

mod counters;
mod dashboards;

async fn scrape(app: &TestApp) -> Scrape {
    Scrape::parse(&app.metrics().await)
}

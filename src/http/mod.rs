//! The HTTP side of the public port and the metrics port: the routers, the request metrics,
//! and the handlers (`api`: the backend API and health; `web`: the chat page and dev tokens).

pub mod api;
pub mod web;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use prometheus::Encoder;

use crate::state::AppState;

/// The public port: the chat page, sockets, the HTTP API, health.
pub fn public(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/", get(web::index))
        .route("/static/{file}", get(web::static_file))
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/health", get(api::health))
        .route("/api/v1/openapi.json", get(api::openapi))
        .merge(keyed(&state));
    if state.settings.debug.echo_endpoint {
        r = r.route("/debug/echo", get(crate::ws::echo::upgrade));
    }
    if state.settings.auth.dev_tokens {
        r = r.route("/dev/token", post(web::dev_token));
    }
    r.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        track_http,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(api::MAX_REQUEST_BYTES))
    .with_state(state)
}

/// Every route that needs the API key, behind [`api::require_key`]: the key is checked before
/// a handler's extractors read the path, the query or the body, so a call without it is 401
/// whatever else is wrong with it. A keyed route must be added here, and nowhere else.
fn keyed(state: &AppState) -> Router<AppState> {
    let mut r = Router::new()
        .route(
            "/api/v1/rooms/{room}/messages",
            post(api::publish).get(api::history),
        )
        .route(
            "/api/v1/rooms/{room}/messages/{seq}",
            axum::routing::delete(api::delete_message).patch(api::edit_message),
        )
        .route("/api/v1/rooms/{room}/presence", get(api::presence))
        .route("/api/v1/rooms/{room}", put(api::put_room))
        .route(
            "/api/v1/rooms/{room}/members/{user}",
            put(api::put_member).delete(api::delete_member),
        )
        .route("/api/v1/rooms/{room}/kick", post(api::kick))
        .route(
            "/api/v1/rooms/{room}/bans/{user}",
            axum::routing::delete(api::unban),
        )
        .route("/api/v1/users/{user}/disconnect", post(api::disconnect))
        .route("/api/v1/users/{user}/events", post(api::user_event))
        .route("/api/v1/users/{user}/rooms", get(api::user_rooms));
    if state.settings.debug.fault_injection {
        r = r
            .route("/debug/rooms/{room}/panic", post(api::inject_room_panic))
            .route("/debug/writer/panic", post(api::inject_writer_panic));
    }
    r.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        api::require_key,
    ))
}

/// The metrics port: `/metrics` and health, never on the public port.
pub fn metrics_port(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(api::healthz))
        .route("/health", get(api::health))
        .with_state(state)
}

/// Count and time every request by its matched route (bounded labels: the route template,
/// never the raw path).
async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.edge_metrics;
    m.http_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.edge_metrics;
    let (size, idle) = state.db.pool_stats();
    let (size, idle) = (i64::from(size), idle as i64);
    m.db_pool.with_label_values(&["open"]).set(size);
    m.db_pool.with_label_values(&["idle"]).set(idle);
    m.db_pool.with_label_values(&["in_use"]).set(size - idle);
    m.db_pool
        .with_label_values(&["max"])
        .set(i64::from(state.settings.database.max_connections));
    state.node.sample_gauges();
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&state.registry.gather(), &mut buf);
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
        .body(axum::body::Body::from(buf))
        .unwrap_or_default()
}

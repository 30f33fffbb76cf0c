//! The chat page, served by the binary itself (assets embedded at compile time), and
//! `POST /dev/token`, which mints tokens for it when `auth.dev_tokens` is on.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::http::api::ApiError;
use crate::state::AppState;

/// Every embedded asset: (path under `/static/`, content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "chatty.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/chatty.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

const INDEX: &str = include_str!("../../web/index.html");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /static/{file}`
pub async fn static_file(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ct, body)) => asset(ct, body),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[derive(Deserialize)]
pub struct DevTokenRequest {
    name: String,
    /// The global `admin` role, to try moderation on the page.
    #[serde(default)]
    admin: bool,
    /// Lifetime in seconds (5 s to 24 h; default 24 h), to watch the page refresh its token.
    ttl_s: Option<u64>,
}

/// `POST /dev/token {name, admin?, ttl_s?}` → `{token, user}`: the user id is the name as
/// given. Only routed when `auth.dev_tokens` is on (refused at startup in production).
pub async fn dev_token(
    State(state): State<AppState>,
    Json(req): Json<DevTokenRequest>,
) -> Result<Response, ApiError> {
    let name = req.name.trim();
    let ttl = req.ttl_s.unwrap_or(24 * 3600).clamp(5, 24 * 3600);
    let roles: &[&str] = if req.admin { &["admin"] } else { &[] };
    let token = state
        .auth
        .mint_with_roles(name, Some(name), roles, Duration::from_secs(ttl))
        .map_err(ApiError::BadRequest)?;
    Ok(Json(json!({ "token": token, "user": name })).into_response())
}

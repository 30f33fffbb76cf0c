//! The server HTTP API for backends (behind the API key) and the health endpoints. Handlers
//! only translate between HTTP and the node; every rule lives in the actors and the store.
//!
//! The contract every keyed route keeps: the key is checked first ([`require_key`], a layer
//! on those routes, before any extractor reads the path, the query or the body), and every
//! error is `{error, message}` with one of [`ApiError`]'s codes. Handlers therefore take their
//! input through [`ApiPath`], [`ApiQuery`], [`ApiJson`] and [`OptionalJson`], never through
//! axum's own extractors, whose rejections are plain text with other statuses (415, 422).

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chatty_actors::trace::TraceParent;
use chatty_actors::{
    Body, BodyError, ChangeOp, ChangeOutcome, Cid, DisplayName, HistoryItem, Meta, MetaError,
    ModError, NewChange, NewMessage, NodeError, PresenceEntry, RoomId, RoomRole, UserId,
    WriteError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::state::AppState;

/// Every way an API call can fail. 500s are opaque to the client and logged whole.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong API key")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such message")]
    NotFound,
    #[error("try again later")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "api internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(chatty_actors::StoreError::Other(m)) => {
                ApiError::Internal(m.to_string())
            }
            NodeError::Start(m) => ApiError::Internal(m),
            _ => ApiError::Unavailable,
        }
    }
}

impl From<ModError> for ApiError {
    fn from(e: ModError) -> Self {
        match e {
            ModError::Forbidden(why) => ApiError::Forbidden(why),
            ModError::BadRequest(why) => ApiError::BadRequest(why.into()),
            ModError::Unavailable => ApiError::Unavailable,
            ModError::Store(m) => ApiError::Internal(m),
        }
    }
}

impl From<chatty_actors::StoreError> for ApiError {
    fn from(e: chatty_actors::StoreError) -> Self {
        NodeError::Store(e).into()
    }
}

/// The most a request body may have on the public port (`DefaultBodyLimit`); more is 413.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An extractor's rejection as the API's error: a body above [`MAX_REQUEST_BYTES`] is
/// `too_large`, a server-side failure (a route whose extractors do not fit it) `internal`,
/// anything else the caller's `bad_request`, with axum's short reason as the message.
fn rejected(status: StatusCode, reason: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request body larger than {} KiB",
            MAX_REQUEST_BYTES / 1024
        ))
    } else if status.is_server_error() {
        ApiError::Internal(reason)
    } else {
        ApiError::BadRequest(reason)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        rejected(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        rejected(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejected(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        rejected(r.status(), r.body_text())
    }
}

/// `axum::Json` with the API's errors: a missing or wrong content type, malformed JSON, a
/// missing, mistyped or unknown field are 400, a body above the limit 413.
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Path` with the API's errors: a segment that is not UTF-8 or does not parse
/// (a seq that is not a number) is 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with the API's errors: a parameter that does not parse, or one the
/// route does not know (every query type refuses unknown fields), is 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// An optional JSON body, whatever its content type: none (or only whitespace) is `None`;
/// anything else must parse (unknown fields refused by the body types), else 400.
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&body)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The layer on every keyed route (see `http::keyed`): the key before anything else, so a
/// caller without it learns nothing about its input but 401.
pub async fn require_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_key(&state, req.headers())?;
    Ok(next.run(req).await)
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = crate::auth::bearer(headers).ok_or(ApiError::Unauthorized)?;
    if same(
        given.as_bytes(),
        state.settings.auth.api_key.expose().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn room_id(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn user_id(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Both ids of a call about one user in one room, parsed.
fn room_user((room, user): &(String, String)) -> Result<(RoomId, UserId), ApiError> {
    Ok((room_id(room)?, user_id(user)?))
}

/// Unknown fields are ignored, as they always were here (v1 callers may send more).
#[derive(Deserialize)]
pub struct PublishBody {
    from: String,
    name: Option<String>,
    cid: String,
    body: String,
    /// v1.1: metadata, as on a socket's `send`.
    meta: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Published {
    seq: u64,
    ts: i64,
    /// Extension: true when the cid was already stored (seq/ts are the original ones).
    duplicate: bool,
}

/// `POST /api/v1/rooms/{room}/messages`
pub async fn publish(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PublishBody>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let from = UserId::parse(&b.from).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let cid = Cid::parse(&b.cid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let body = body(&state, &b.body)?;
    let meta = meta(&state, b.meta)?;
    let name = DisplayName::sanitize(b.name.as_deref().unwrap_or(from.as_str()));
    // The caller's W3C trace context, if any, decides the sampling; else the ratio does.
    let caller = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let traced = crate::telemetry::receive_span("http", caller, &room, &cid, None);
    let msg = NewMessage {
        trace: traced.as_ref().map(|(_, tp)| *tp),
        room,
        from,
        name,
        cid,
        body,
        meta,
    };
    let publish = state.node.publish(msg);
    let outcome = match traced {
        Some((span, _)) => {
            span.in_scope(|| tracing::debug!("publish received"));
            publish.instrument(span).await
        }
        None => publish.await,
    };
    match outcome {
        Ok(a) => Ok((
            StatusCode::CREATED,
            Json(Published {
                seq: a.seq,
                ts: a.ts,
                duplicate: a.duplicate,
            }),
        )
            .into_response()),
        Err(WriteError::Unavailable) => Err(ApiError::Unavailable),
    }
}

/// A body, checked as a socket's is.
fn body(state: &AppState, b: &str) -> Result<Body, ApiError> {
    Body::parse(b, state.settings.limits.max_body_bytes).map_err(|e| match e {
        BodyError::TooLarge => ApiError::TooLarge("body larger than max_body_bytes".into()),
        BodyError::Empty => ApiError::BadRequest("body must not be empty".into()),
        BodyError::Nul => ApiError::BadRequest("body must not contain NUL".into()),
    })
}

/// Metadata, checked as a socket's is.
fn meta(state: &AppState, m: Option<serde_json::Value>) -> Result<Option<Meta>, ApiError> {
    let Some(m) = m else { return Ok(None) };
    Meta::parse(m, state.settings.limits.max_meta_bytes)
        .map(Some)
        .map_err(|e| match e {
            MetaError::TooLarge => ApiError::TooLarge("meta larger than max_meta_bytes".into()),
            e => ApiError::BadRequest(e.message().into()),
        })
}

/// Commit a change made through the API and answer `{rev}`.
async fn change(state: &AppState, change: NewChange) -> Result<Response, ApiError> {
    match state.node.change(change).await {
        Ok(ChangeOutcome::Changed(u)) => Ok(Json(json!({ "rev": u.rev() })).into_response()),
        Ok(ChangeOutcome::Unchanged(rev)) => Ok(Json(json!({ "rev": rev })).into_response()),
        Ok(ChangeOutcome::NotFound) => Err(ApiError::NotFound),
        Ok(ChangeOutcome::Forbidden) => Err(ApiError::Forbidden(
            "not the author's message, or it is deleted",
        )),
        Ok(ChangeOutcome::TooManyReactions) => {
            Err(ApiError::BadRequest("too many reaction keys".into()))
        }
        Err(WriteError::Unavailable) => Err(ApiError::Unavailable),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Who deletes, as `update.by` shows it; `backend` when not given.
    by: Option<String>,
}

/// `DELETE /api/v1/rooms/{room}/messages/{seq}`: a moderation delete (any message).
pub async fn delete_message(
    State(state): State<AppState>,
    ApiPath((room, seq)): ApiPath<(String, u64)>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let by = UserId::parse(q.by.as_deref().unwrap_or("backend"))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let c = NewChange {
        room,
        seq,
        by,
        moderator: true,
        op: ChangeOp::Delete,
    };
    change(&state, c).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    from: String,
    body: String,
    meta: Option<serde_json::Value>,
}

/// `PATCH /api/v1/rooms/{room}/messages/{seq}`: an edit on behalf of the author (`from`).
pub async fn edit_message(
    State(state): State<AppState>,
    ApiPath((room, seq)): ApiPath<(String, u64)>,
    ApiJson(b): ApiJson<EditBody>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let by = UserId::parse(&b.from).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let c = NewChange {
        room,
        seq,
        by,
        moderator: false,
        op: ChangeOp::Edit {
            body: body(&state, &b.body)?,
            meta: meta(&state, b.meta)?,
        },
    };
    change(&state, c).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    data: serde_json::Value,
}

/// `POST /api/v1/users/{user}/events` (v1.1): `event {data}` to every socket of the user on
/// every node; 202 with how many sockets it was handed to (0 for a user with none).
pub async fn user_event(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
    OptionalJson(b): OptionalJson<EventBody>,
) -> Result<Response, ApiError> {
    let user = UserId::parse(&user).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let b = b.ok_or_else(|| ApiError::BadRequest("a body {data} is required".into()))?;
    let data = Meta::object(b.data, crate::redis::MAX_EVENT_BYTES).map_err(|e| match e {
        MetaError::TooLarge => ApiError::TooLarge(format!(
            "data larger than {} bytes",
            crate::redis::MAX_EVENT_BYTES
        )),
        _ => ApiError::BadRequest("data must be a JSON object".into()),
    })?;
    let connections = state.node.user_event(user, data).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "connections": connections })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/users/{user}/rooms?limit=` (v1.1): the user's conversation list.
pub async fn user_rooms(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<RoomsQuery>,
) -> Result<Response, ApiError> {
    let user = UserId::parse(&user).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = q.limit.unwrap_or(chatty_actors::ROOMS_LIST_MAX);
    if limit == 0 {
        return Err(ApiError::BadRequest("limit must be >= 1".into()));
    }
    let rooms = state.node.rooms_of(&user, limit).await?;
    Ok(Json(json!({ "rooms": rooms })).into_response())
}

/// Unknown fields are ignored, as they always were here (v1 callers may send more).
#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/rooms/{room}/messages?before=&limit=`
pub async fn history(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 {
        return Err(ApiError::BadRequest("limit must be >= 1".into()));
    }
    let (msgs, more) = state.node.history(&room, q.before, limit).await?;
    let messages: Vec<HistoryItem<'_>> = msgs.iter().map(HistoryItem::from).collect();
    Ok(Json(json!({ "messages": messages, "more": more })).into_response())
}

/// `GET /api/v1/rooms/{room}/presence`
pub async fn presence(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = room_id(&room)?;
    let users: Vec<PresenceEntry> = state.node.presence(&room).await?;
    Ok(Json(json!({ "users": users })))
}

/// Unknown fields are ignored, as they always were here (v1 callers may send more).
#[derive(Deserialize)]
pub struct RoomBody {
    private: bool,
}

/// `PUT /api/v1/rooms/{room}`
pub async fn put_room(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
    ApiJson(b): ApiJson<RoomBody>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    state.node.store().set_private(&room, b.private).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    role: String,
}

/// `PUT /api/v1/rooms/{room}/members/{user}` with an optional `{"role": ...}`: without one,
/// the user becomes a member and keeps any role they had.
pub async fn put_member(
    State(state): State<AppState>,
    ApiPath(ids): ApiPath<(String, String)>,
    OptionalJson(b): OptionalJson<MemberBody>,
) -> Result<StatusCode, ApiError> {
    let (room, user) = room_user(&ids)?;
    let role = match b {
        None => None,
        Some(b) => Some(RoomRole::parse(&b.role).ok_or_else(|| {
            ApiError::BadRequest("role must be member, moderator or owner".into())
        })?),
    };
    state.node.set_member(&room, &user, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/rooms/{room}/members/{user}`: in a private room the user's sockets are
/// taken out of it on every node (`removed`, reason `removed`).
pub async fn delete_member(
    State(state): State<AppState>,
    ApiPath(ids): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (room, user) = room_user(&ids)?;
    state.node.remove_member(&room, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    user: String,
    #[serde(default)]
    ban: bool,
}

/// `POST /api/v1/rooms/{room}/kick {user, ban?}`
pub async fn kick(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
    ApiJson(b): ApiJson<KickBody>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    let user = user_id(&b.user)?;
    state.node.kick(&room, &user, b.ban).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/rooms/{room}/bans/{user}`
pub async fn unban(
    State(state): State<AppState>,
    ApiPath(ids): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (room, user) = room_user(&ids)?;
    state.node.unban(&room, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    reason: Option<String>,
}

/// `POST /api/v1/users/{user}/disconnect {reason?}`: every socket of the user in the cluster
/// is closed with 4003. The reason goes to this node's log, not to the client.
pub async fn disconnect(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
    OptionalJson(b): OptionalJson<DisconnectBody>,
) -> Result<StatusCode, ApiError> {
    let user = user_id(&user)?;
    let reason = b.and_then(|b| b.reason);
    if reason.as_ref().is_some_and(|r| r.len() > 256) {
        return Err(ApiError::BadRequest("reason longer than 256 bytes".into()));
    }
    let here = state.node.disconnect_user(&user);
    tracing::info!(user = %user, sockets_here = here, reason = reason.as_deref().unwrap_or(""), "disconnecting a user");
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI 3.1 description of the API and health routes, embedded at build time;
/// `tests/api/openapi.rs` checks it against the running server.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`: the description, without the key (it holds no data).
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
        .into_response()
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: accepting new sockets (503 while draining). A broken database or Redis does
/// not flip it: that shows in metrics and logs, and must not take the whole fleet out of the
/// load balancer at once.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// `GET /health`: each configured dependency's answer (see `health.rs`); 200 when all pass,
/// 503 when one does not. Unauthenticated like `/readyz`: it shows no data, only whether
/// PostgreSQL and Redis answer, and runs at most one check per second however it is called.
pub async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.report().await;
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Fault injection (`debug.fault_injection` only): `POST /debug/rooms/{room}/panic`.
pub async fn inject_room_panic(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    if state.node.inject_room_panic(&room) {
        Ok(StatusCode::ACCEPTED)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

/// Fault injection (`debug.fault_injection` only): `POST /debug/writer/panic`.
pub async fn inject_writer_panic(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    if state.node.inject_writer_panic() {
        Ok(StatusCode::ACCEPTED)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_comparison_needs_equal_bytes() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}

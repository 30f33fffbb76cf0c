//! `GET /ws`: decide whether a socket may open, and if so hand it to a connection.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatty_actors::Encoding;
use fastwebsockets::upgrade::IncomingUpgrade;
use serde::Deserialize;
use tracing::Instrument;

use crate::admission;
use crate::state::AppState;

pub const PROTOCOL_JSON: &str = "chatty.v1.json";
pub const PROTOCOL_MSGPACK: &str = "chatty.v1.msgpack";

#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// The client offered subprotocols and none of them is ours.
#[derive(Debug)]
pub struct NoSupportedProtocol;

/// Why a handshake was refused: the HTTP status and body the client gets, and the label the
/// refusal is counted under (`chatty_handshake_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Draining,
    NotWebSocket,
    Origin,
    Subprotocol,
    /// The token was missing or invalid; the label says which.
    Token(&'static str),
    Capacity,
    CapacityIp,
    CapacityUser,
    Unavailable,
}

impl Rejection {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        use Rejection::*;
        match self {
            Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining", "draining\n"),
            NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "not_websocket",
                "expected a WebSocket upgrade\n",
            ),
            Origin => (StatusCode::FORBIDDEN, "origin", "origin not allowed\n"),
            Subprotocol => (
                StatusCode::BAD_REQUEST,
                "subprotocol",
                "no supported subprotocol; supported: chatty.v1.json, chatty.v1.msgpack\n",
            ),
            Token(label) => (
                StatusCode::UNAUTHORIZED,
                label,
                "invalid or missing token\n",
            ),
            Capacity => (
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity",
                "server full, try again later\n",
            ),
            CapacityIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "capacity_ip",
                "too many connections from this address\n",
            ),
            CapacityUser => (
                StatusCode::TOO_MANY_REQUESTS,
                "capacity_user",
                "too many connections for this user\n",
            ),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later\n",
            ),
        }
    }

    /// Count it and answer it.
    fn respond(self, state: &AppState) -> Response {
        let (status, label, body) = self.parts();
        state
            .edge_metrics
            .handshake_rejections
            .with_label_values(&[label])
            .inc();
        (status, body).into_response()
    }
}

/// Pick the encoding: the first protocol the client offered that we support. `Err` when it
/// offered some and none is supported; `Ok(None)` when it offered none (JSON, no echo).
pub fn negotiate(
    headers: &HeaderMap,
) -> Result<Option<(Encoding, &'static str)>, NoSupportedProtocol> {
    let mut offered = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(v) = value.to_str() else {
            offered = true;
            continue;
        };
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            match p {
                PROTOCOL_JSON => return Ok(Some((Encoding::Json, PROTOCOL_JSON))),
                PROTOCOL_MSGPACK => return Ok(Some((Encoding::MsgPack, PROTOCOL_MSGPACK))),
                _ => {}
            }
        }
    }
    if offered {
        Err(NoSupportedProtocol)
    } else {
        Ok(None)
    }
}

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    match accept(&state, peer, &headers, query, ws).await {
        Ok(response) => response,
        Err(rejection) => rejection.respond(&state),
    }
}

async fn accept(
    state: &AppState,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<IncomingUpgrade, StatusCode>,
) -> Result<Response, Rejection> {
    if state.is_draining() {
        return Err(Rejection::Draining);
    }
    let ws = ws.map_err(|_| Rejection::NotWebSocket)?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = &state.settings.auth.allowed_origins;
        let ok = origin
            .to_str()
            .map(|o| allowed.iter().any(|a| a == o))
            .unwrap_or(false);
        if !ok {
            return Err(Rejection::Origin);
        }
    }
    let protocol = negotiate(headers).map_err(|_| Rejection::Subprotocol)?;
    let token = crate::auth::bearer(headers)
        .or(query.as_ref().ok().and_then(|q| q.access_token.as_deref()))
        .unwrap_or("");
    let identity = state
        .auth
        .verify(token)
        .map_err(|e| Rejection::Token(e.label()))?;
    if state.node.connection_count() >= state.settings.limits.max_connections {
        return Err(Rejection::Capacity);
    }
    let ip = admission::client_ip(peer, headers, &state.trusted_proxies);
    let slot =
        state
            .admission
            .admit(ip, identity.user.as_str())
            .map_err(|refused| match refused {
                admission::Refused::Ip => Rejection::CapacityIp,
                admission::Refused::User => Rejection::CapacityUser,
            })?;
    let (encoding, echo) = protocol.map_or((Encoding::Json, None), |(e, p)| (e, Some(p)));
    let (mut response, fut) = ws.upgrade().map_err(|_| Rejection::NotWebSocket)?;
    if let Some(p) = echo {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let conn = state
        .node
        .open_connection(identity, encoding)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not start a connection actor");
            Rejection::Unavailable
        })?;
    let span = tracing::info_span!("connection", conn = %conn.handle.shared.id);
    let state = state.clone();
    tokio::spawn(
        async move {
            let _slot = slot; // released when the socket is gone
            match fut.await {
                Ok(socket) => super::session::run(state, conn, encoding, socket.into_inner()).await,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    conn.handle.stop();
                }
            }
        }
        .instrument(span),
    );
    Ok(response.map(axum::body::Body::new).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("x, chatty.v1.msgpack, chatty.v1.json"),
        );
        assert_eq!(negotiate(&h).unwrap().unwrap().0, Encoding::MsgPack);
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("foo"),
        );
        assert!(negotiate(&h).is_err());
        assert!(negotiate(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn each_rejection_has_its_status_and_label() {
        assert_eq!(
            Rejection::Draining.parts().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Rejection::Origin.parts().0, StatusCode::FORBIDDEN);
        assert_eq!(Rejection::Token("token_missing").parts().1, "token_missing");
        assert_eq!(
            Rejection::CapacityIp.parts().0,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(Rejection::Subprotocol.parts().0, StatusCode::BAD_REQUEST);
    }
}

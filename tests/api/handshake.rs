use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn missing_expired_or_badly_signed_tokens_get_401() {
    let app = spawn_app().await;
    let url = app.ws_url();
    assert_eq!(handshake_status(&url, &[]).await, 401);
    assert_eq!(
        handshake_status(&url, &[("authorization", "Bearer not.a.jwt")]).await,
        401
    );
    // Signed with another secret.
    let mut other = app.settings.auth.clone();
    other.jwt_secret = chatty::settings::Secret::new("a-completely-different-secret");
    let forged = chatty::auth::Authenticator::new(&other)
        .mint("mallory", None, Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        handshake_status(&url, &[("authorization", &format!("Bearer {forged}"))]).await,
        401
    );
    // Expired (well past the leeway).
    let expired = expired_token(&app);
    assert_eq!(
        handshake_status(&url, &[("authorization", &format!("Bearer {expired}"))]).await,
        401
    );
    // A good token in the query string works (browsers cannot set headers).
    let ok = format!("{url}?access_token={}", app.token("alice"));
    assert_eq!(handshake_status(&ok, &[]).await, 101);
}

fn expired_token(app: &TestApp) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let claims = serde_json::json!({"sub": "old", "exp": 1_000_000_000u64});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(app.settings.auth.jwt_secret.expose().as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn an_origin_outside_the_allowlist_gets_403() {
    let (mut s, _) = test_settings().await;
    s.auth.allowed_origins = vec!["https://chat.example.com".into()];
    let app = spawn_with(s).await;
    let auth = format!("Bearer {}", app.token("alice"));
    let url = app.ws_url();
    for bad in [
        "https://chat.example.com.evil.io",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "null",
    ] {
        assert_eq!(
            handshake_status(&url, &[("authorization", &auth), ("origin", bad)]).await,
            403,
            "{bad}"
        );
    }
    assert_eq!(
        handshake_status(
            &url,
            &[
                ("authorization", &auth),
                ("origin", "https://chat.example.com")
            ]
        )
        .await,
        101
    );
}

#[tokio::test]
async fn only_unsupported_subprotocols_get_400() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.token("alice"));
    let url = app.ws_url();
    assert_eq!(
        handshake_status(
            &url,
            &[
                ("authorization", &auth),
                ("sec-websocket-protocol", "mqtt, chatty.v2")
            ]
        )
        .await,
        400
    );
    // The body names the supported protocols.
    let resp = reqwest::Client::new()
        .get(app.http("/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "mqtt")
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("chatty.v1.json"));
}

#[tokio::test]
async fn a_request_line_that_never_finishes_is_dropped() {
    let (mut s, _) = test_settings().await;
    s.server.header_read_timeout_ms = 300;
    let app = spawn_with(s).await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    sock.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // The server answers (408) or closes; either way the read ends well before our timeout.
    let r = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
    assert!(r.is_ok(), "slowloris socket was kept open");
}

#[tokio::test]
async fn a_socket_that_never_sends_a_frame_is_closed_as_idle() {
    let (mut s, _) = test_settings().await;
    s.server.first_frame_timeout_ms = 300;
    let app = spawn_with(s).await;
    let mut c = app.connect("quiet").await;
    assert!(c.next().await.is_none());
    assert_eq!(c.closed, Some(4001));
}

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

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
    let claims = serde_json::json!({"sub": "old", "exp": 1_000_000_000u64});
    sign(
        app.settings.auth.jwt_secret.expose(),
        jsonwebtoken::Algorithm::HS256,
        &claims,
    )
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

#[tokio::test]
async fn per_user_and_per_ip_caps_answer_429_and_free_their_slot_on_close() {
    let (mut s, _) = test_settings().await;
    s.limits.max_connections_per_user = 2;
    s.limits.max_connections_per_ip = 3;
    // The test client is its own trusted proxy, so X-Forwarded-For decides the address.
    s.server.trusted_proxies = vec!["127.0.0.1".into()];
    let app = spawn_with(s).await;
    let url = app.ws_url();
    let hdr = |user: &str, ip: &str| {
        vec![
            (
                "authorization".to_string(),
                format!("Bearer {}", app.token(user)),
            ),
            ("x-forwarded-for".to_string(), format!("203.0.113.50, {ip}")),
        ]
    };
    let status = |h: Vec<(String, String)>| {
        let url = url.clone();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            handshake_status(&url, &h).await
        }
    };
    // Keep sockets open while counting: connect for real.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(connect_with(&url, &hdr("ann", "198.51.100.1")).await);
    }
    assert_eq!(
        status(hdr("ann", "198.51.100.9")).await,
        429,
        "third socket of one user"
    );
    open.push(connect_with(&url, &hdr("bob", "198.51.100.1")).await);
    assert_eq!(
        status(hdr("cat", "198.51.100.1")).await,
        429,
        "fourth socket of one address"
    );
    // The spoofed first entry is never believed: another real address is fine.
    assert_eq!(status(hdr("cat", "198.51.100.2")).await, 101);
    drop(open.pop());
    eventually("slot freed", || async {
        status(hdr("cat", "198.51.100.1")).await == 101
    })
    .await;
}

async fn connect_with(
    url: &str,
    headers: &[(String, String)],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("connect")
        .0
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_default_per_ip_cap_counts_clients_not_the_proxy() {
    // The defaults of config/ (2,000 sockets per address), with the test as the trusted proxy.
    let (mut s, _) = test_settings().await;
    let cap = s.limits.max_connections_per_ip as usize;
    assert_eq!(cap, 2000, "the default this test is about");
    s.server.trusted_proxies = vec!["127.0.0.1".into()];
    let app = spawn_with(s).await;
    let url = app.ws_url();
    let hdr = |user: &str, ip: &str| {
        vec![
            (
                "authorization".to_string(),
                format!("Bearer {}", app.token(user)),
            ),
            ("x-forwarded-for".to_string(), ip.to_string()),
        ]
    };
    // cap + 1 sockets through the one proxy address, each from its own client address: all in.
    let mut open = Vec::new();
    for i in 0..=cap {
        let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        open.push(connect_with(&url, &hdr(&format!("u{i}"), &ip)).await);
    }
    assert_eq!(open.len(), cap + 1);
    drop(open);
    // From one client address the cap holds: cap sockets, then 429.
    let mut open = Vec::new();
    for i in 0..cap {
        open.push(connect_with(&url, &hdr(&format!("v{i}"), "192.0.2.7")).await);
    }
    let h = hdr("one-more", "192.0.2.7");
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(handshake_status(&url, &h).await, 429);
}

//! Hostile handshakes (section 1): forged, malformed, expired and oversized tokens, missing
//! `aud` and `iss`, tokens in the log, odd subprotocol offers.

use serde_json::{json, Value};

use crate::support::*;

const AUD: &str = "chatty-clients";
const ISS: &str = "https://issuer.example";

async fn app_with_aud_and_iss() -> TestApp {
    let (mut s, _) = test_settings().await;
    s.auth.jwt_audience = AUD.into();
    s.auth.jwt_issuer = ISS.into();
    spawn_with(s).await
}

/// Attempt an upgrade with `token` in the Authorization header and, separately, in the query;
/// the statuses.
async fn statuses_for(app: &TestApp, token: &[u8]) -> (u16, u16) {
    let mut auth = b"Bearer ".to_vec();
    auth.extend_from_slice(token);
    let header = upgrade_request(app.port, "/ws", &[("Authorization", &auth)]).await;
    let query = upgrade_request(
        app.port,
        &format!("/ws?access_token={}", percent(token)),
        &[],
    )
    .await;
    for up in [&header, &query] {
        if up.status != 101 {
            assert!(
                up.values("upgrade").is_empty() && up.values("sec-websocket-accept").is_empty(),
                "a refused upgrade must not carry upgrade headers"
            );
        }
    }
    (header.status, query.status)
}

#[tokio::test]
async fn forged_malformed_expired_and_oversized_tokens_get_401_in_the_header_and_in_the_query() {
    let app = app_with_aud_and_iss().await;
    let mut calm = Bystanders::new(&app).await;
    let secret = app.settings.auth.jwt_secret.expose().to_string();
    let now = now_secs();
    let good_claims = json!({"sub": "mallory", "exp": now + 3600, "aud": AUD, "iss": ISS});
    let with = |patch: Value| {
        let mut c = good_claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hs256 = |c: &Value| sign(&secret, jsonwebtoken::Algorithm::HS256, c);

    // The positive controls: the same claims, correctly signed, are accepted both ways; so
    // is a token encoded by hand like the `alg: none` ones below, so those are refused for
    // their algorithm and not for a slip in the encoding.
    let good = hs256(&good_claims);
    assert_eq!(
        statuses_for(&app, good.as_bytes()).await,
        (101, 101),
        "a good token must be accepted, or this test proves nothing"
    );
    let by_hand = handmade(
        &secret,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &good_claims,
    );
    assert_eq!(statuses_for(&app, by_hand.as_bytes()).await, (101, 101));

    let big_payload = "A".repeat(16 * 1024);
    // One character in the middle of the signature (not its last, which carries padding bits).
    let mut flipped = good.clone().into_bytes();
    let at = flipped.len() - 10;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let (good_head, good_rest) = good.split_once('.').unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "alg none, no signature",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &good_claims).into_bytes(),
        ),
        (
            "alg None, no signature",
            unsigned(&json!({"alg": "None"}), &good_claims).into_bytes(),
        ),
        (
            "alg none, signed by hand with the right key anyway",
            handmade(&secret, &json!({"alg": "none"}), &good_claims).into_bytes(),
        ),
        (
            "alg none with the good token's signature",
            format!(
                "{}.{}",
                b64url(json!({"alg": "none"}).to_string().as_bytes()),
                good_rest
            )
            .into_bytes(),
        ),
        (
            "HS256 signed with another key",
            sign(
                "another-secret-of-enough-length",
                jsonwebtoken::Algorithm::HS256,
                &good_claims,
            )
            .into_bytes(),
        ),
        (
            "HS384 with the right key",
            sign(&secret, jsonwebtoken::Algorithm::HS384, &good_claims).into_bytes(),
        ),
        (
            "exp as a string",
            hs256(&with(json!({"exp": (now + 3600).to_string()}))).into_bytes(),
        ),
        (
            "nbf as a string",
            hs256(&with(json!({"nbf": now.to_string()}))).into_bytes(),
        ),
        (
            "nbf in the future",
            hs256(&with(json!({"nbf": now + 3600}))).into_bytes(),
        ),
        (
            "missing exp",
            hs256(&with(json!({"exp": null}))).into_bytes(),
        ),
        (
            "missing sub",
            hs256(&with(json!({"sub": null}))).into_bytes(),
        ),
        ("empty sub", hs256(&with(json!({"sub": ""}))).into_bytes()),
        ("numeric sub", hs256(&with(json!({"sub": 42}))).into_bytes()),
        (
            "sub with a control character",
            hs256(&with(json!({"sub": "eve\nadmin"}))).into_bytes(),
        ),
        (
            "sub of 129 bytes",
            hs256(&with(json!({"sub": "u".repeat(129)}))).into_bytes(),
        ),
        (
            "wrong aud",
            hs256(&with(json!({"aud": "another-service"}))).into_bytes(),
        ),
        (
            "wrong iss",
            hs256(&with(json!({"iss": "https://evil.example"}))).into_bytes(),
        ),
        (
            "expired an hour ago",
            hs256(&with(json!({"exp": now - 3600}))).into_bytes(),
        ),
        ("exp 0", hs256(&with(json!({"exp": 0}))).into_bytes()),
        (
            "negative exp",
            hs256(&with(json!({"exp": -1}))).into_bytes(),
        ),
        (
            "16 KiB token",
            hs256(&with(json!({"pad": big_payload}))).into_bytes(),
        ),
        ("16 KiB of garbage", "x".repeat(16 * 1024).into_bytes()),
        ("signature flipped", flipped),
        (
            "signature removed",
            format!("{}.", good.rsplit_once('.').unwrap().0).into_bytes(),
        ),
        (
            "two segments",
            good.rsplit_once('.').unwrap().0.as_bytes().to_vec(),
        ),
        ("four segments", format!("{good}.{good_head}").into_bytes()),
        ("trailing junk", format!("{good} junk").into_bytes()),
        ("not a jwt", b"not-a-jwt".to_vec()),
        ("three dots", b"...".to_vec()),
        ("a.b.c", b"a.b.c".to_vec()),
        (
            "header is not JSON",
            format!("{}.{}", b64url(b"{\"alg\":"), good_rest).into_bytes(),
        ),
        (
            "claims are not JSON",
            format!("{good_head}.{}.{}", b64url(b"hello"), b64url(b"sig")).into_bytes(),
        ),
        (
            "claims are an array",
            hs256(&json!([{"sub": "mallory"}])).into_bytes(),
        ),
        ("non-ASCII bytes", vec![0xff, 0xfe, b'.', 0xc3, 0x28]),
    ];

    // The control's sockets (and the bystanders') are counted as opened before the baseline.
    eventually("the control sockets are counted", || async {
        app.metric("chatty_connections_opened_total").await >= 6.0
    })
    .await;
    let before = app.metrics().await;
    let rejected_before = metric_sum(&before, "chatty_handshake_rejections_total", &[]);
    let opened_before = metric_sum(&before, "chatty_connections_opened_total", &[]);
    let mut wrong = Vec::new();
    for (what, token) in &cases {
        let got = statuses_for(&app, token).await;
        if got != (401, 401) {
            wrong.push(format!("{what}: header {}, query {}", got.0, got.1));
        }
    }
    // Malformed Authorization headers (no usable bearer token at all).
    for raw in [
        &b"Basic bWFsbG9yeTpwYXNz"[..],
        b"Bearer",
        b"Bearer ",
        b"Bearer\tx.y.z",
        b"Token x.y.z",
    ] {
        let up = upgrade_request(app.port, "/ws", &[("Authorization", raw)]).await;
        if up.status != 401 {
            wrong.push(format!(
                "Authorization {:?}: {}",
                String::from_utf8_lossy(raw),
                up.status
            ));
        }
    }
    // NUL and control bytes, percent-encoded in the query (in a header they would make the
    // request itself malformed HTTP, which hyper answers with 400 before any routing).
    for raw in [&b"a\0b.c\0d.e"[..], b"\x01\x02.\x7f", b"%00"] {
        let up =
            upgrade_request(app.port, &format!("/ws?access_token={}", percent(raw)), &[]).await;
        if up.status != 401 {
            wrong.push(format!(
                "query {:?}: {}",
                String::from_utf8_lossy(raw),
                up.status
            ));
        }
    }
    assert!(wrong.is_empty(), "not refused with 401: {wrong:#?}");

    let after = app.metrics().await;
    let attempts = (2 * cases.len() + 5 + 3) as f64;
    assert_eq!(
        metric_sum(&after, "chatty_handshake_rejections_total", &[]) - rejected_before,
        attempts,
        "every refusal is counted once"
    );
    assert_eq!(
        metric_sum(&after, "chatty_connections_opened_total", &[]),
        opened_before,
        "no refused attempt opened a socket"
    );
    calm.still_talk().await;
}

/// `aud` and `iss` are "checked when configured": a token that does not carry them was not
/// issued for this service by this issuer and must not be accepted.
#[tokio::test]
async fn a_token_without_aud_or_iss_is_refused_when_the_server_is_configured_with_them() {
    let app = app_with_aud_and_iss().await;
    let secret = app.settings.auth.jwt_secret.expose().to_string();
    let exp = now_secs() + 3600;
    let hs256 = |c: Value| sign(&secret, jsonwebtoken::Algorithm::HS256, &c);
    assert_eq!(
        statuses_for(
            &app,
            hs256(json!({"sub": "u", "exp": exp, "aud": AUD, "iss": ISS})).as_bytes()
        )
        .await,
        (101, 101),
        "control"
    );
    let no_aud = hs256(json!({"sub": "u", "exp": exp, "iss": ISS}));
    let no_iss = hs256(json!({"sub": "u", "exp": exp, "aud": AUD}));
    let neither = hs256(json!({"sub": "u", "exp": exp}));
    let got = [
        ("missing aud", statuses_for(&app, no_aud.as_bytes()).await),
        ("missing iss", statuses_for(&app, no_iss.as_bytes()).await),
        ("missing both", statuses_for(&app, neither.as_bytes()).await),
    ];
    let wrong: Vec<_> = got.iter().filter(|(_, s)| *s != (401, 401)).collect();
    assert!(
        wrong.is_empty(),
        "accepted without the configured claims (header, query): {wrong:?}"
    );
}

#[tokio::test]
async fn no_log_line_of_the_binary_contains_a_token_good_or_bad() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir =
        std::env::temp_dir().join(format!("chatty-hostile-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("db");
    let secret = format!("log-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatty"))
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("CHATTY__LOG__FORMAT", "json")
        .env("CHATTY__LOG__LEVEL", "debug")
        .env("CHATTY__SERVER__PORT", "0")
        .env("CHATTY__SERVER__METRICS_PORT", "0")
        .env("CHATTY__DATABASE__URL", "")
        .env("CHATTY__REDIS__URL", "")
        .env("CHATTY__DATABASE__SQLITE_PATH", db.to_str().unwrap())
        .env("CHATTY__AUTH__JWT_SECRET", &secret)
        .env("CHATTY__AUTH__ALLOWED_ORIGINS", "https://chat.example.com")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatty");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let port = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|v| v["message"] == "listening")
                .and_then(|v| v["port"].as_u64());
            log.push(line);
            if let Some(p) = port {
                return p as u16;
            }
        }
        panic!("chatty exited before listening: {log:#?}");
    })
    .await
    .expect("chatty did not start listening");
    let collector = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push(line);
        }
        log
    });

    let hs = |user: &str, exp: u64, key: &str| {
        sign(
            key,
            jsonwebtoken::Algorithm::HS256,
            &json!({"sub": user, "exp": exp, "name": "Log Test"}),
        )
    };
    let now = now_secs();
    let good_header = hs("logged-header", now + 3600, &secret);
    let good_query = hs("logged-query", now + 3600, &secret);
    let good_refused = hs("logged-refused", now + 3600, &secret);
    let bad: Vec<String> = vec![
        hs("expired", now - 3600, &secret),
        hs("forged", now + 3600, "some-other-secret-key-here"),
        unsigned(
            &json!({"alg": "none"}),
            &json!({"sub": "none", "exp": now + 3600}),
        ),
        format!("garbage-token-{}", uuid::Uuid::new_v4().simple()),
        format!("long-{}", "z".repeat(5000)),
    ];

    // Good tokens: full sessions, in the header and in the query.
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Client::connect(&url, &good_header, Some("chatty.v1.json")).await;
    c.join("logged").await;
    assert_eq!(c.send_msg("logged", "l1", "hello").await["type"], "ack");
    c.close().await;
    let up = upgrade_request(port, &format!("/ws?access_token={good_query}"), &[]).await;
    assert_eq!(up.status, 101);
    let mut q = RawWs::from(up);
    q.write(&frame(true, 0x1, br#"{"type":"ping","ref":"q"}"#))
        .await;
    assert_eq!(q.reply("q").await["type"], "pong");
    q.write(&close_frame(&1000u16.to_be_bytes())).await;
    assert_eq!(q.close_code().await.0, 1000);
    // A good token on requests refused for other reasons (origin, subprotocol).
    let auth = format!("Bearer {good_refused}");
    let origin = upgrade_request(
        port,
        "/ws",
        &[
            ("Authorization", auth.as_bytes()),
            ("Origin", b"https://evil.example"),
        ],
    )
    .await;
    assert_eq!(origin.status, 403);
    let proto = upgrade_request(
        port,
        &format!("/ws?access_token={good_refused}"),
        &[("Sec-WebSocket-Protocol", b"mqtt")],
    )
    .await;
    assert_eq!(proto.status, 400);
    // Bad tokens, both ways.
    for t in &bad {
        let auth = format!("Bearer {t}");
        let h = upgrade_request(port, "/ws", &[("Authorization", auth.as_bytes())]).await;
        assert_eq!(h.status, 401);
        let q = upgrade_request(
            port,
            &format!("/ws?access_token={}", percent(t.as_bytes())),
            &[],
        )
        .await;
        assert_eq!(q.status, 401);
    }

    assert_eq!(terminate(&mut child).await, Some(0));
    let log = tokio::time::timeout(WAIT, collector)
        .await
        .expect("log pipe closed after exit")
        .unwrap();
    assert!(
        log.len() > 3 && log.iter().any(|l| l.contains("\"DEBUG\"")),
        "the debug log was captured: {log:#?}"
    );
    let mut secrets: Vec<&str> = vec![
        good_header.as_str(),
        good_query.as_str(),
        good_refused.as_str(),
        secret.as_str(),
    ];
    secrets.extend(bad.iter().map(String::as_str));
    let mut leaks = Vec::new();
    for line in &log {
        for s in &secrets {
            // The whole token, or its signature or claims segment alone.
            let parts: Vec<&str> = s.split('.').filter(|p| p.len() >= 16).collect();
            if line.contains(s) || parts.iter().any(|p| line.contains(p)) {
                leaks.push(line.clone());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(leaks.is_empty(), "log lines containing a token: {leaks:#?}");
}

/// Header values offered, the expected status, the expected echo (`None`: no header).
type Offer = (Vec<&'static [u8]>, u16, Option<&'static str>);

#[tokio::test]
async fn subprotocol_offers_are_matched_as_exact_case_sensitive_tokens() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.token("proto"));
    let attempt = |offers: Vec<&'static [u8]>| {
        let auth = auth.clone();
        let port = app.port;
        async move {
            let mut h: Vec<(&str, &[u8])> = vec![("Authorization", auth.as_bytes())];
            for o in &offers {
                h.push(("Sec-WebSocket-Protocol", o));
            }
            upgrade_request(port, "/ws", &h).await
        }
    };
    // (offers, expected status, expected echo; None = no Sec-WebSocket-Protocol in the answer)
    let cases: Vec<Offer> = vec![
        // An empty offer offers nothing: JSON, nothing echoed.
        (vec![b""], 101, None),
        (vec![b" , ,"], 101, None),
        // Duplicates: one echo, of the first supported one.
        (
            vec![b"chatty.v1.json, chatty.v1.json"],
            101,
            Some("chatty.v1.json"),
        ),
        (
            vec![b"chatty.v1.msgpack", b"chatty.v1.msgpack"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        (
            vec![b"mqtt", b"chatty.v1.msgpack", b"chatty.v1.json"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        // Optional whitespace around list elements is not part of the token.
        (vec![b"   chatty.v1.json   "], 101, Some("chatty.v1.json")),
        (
            vec![b"\tchatty.v1.msgpack ,\tchatty.v1.json"],
            101,
            Some("chatty.v1.msgpack"),
        ),
        (vec![b", ,chatty.v1.json,,"], 101, Some("chatty.v1.json")),
        // Tokens are case-sensitive (RFC 6455 §4.1, §11.5): these are unsupported protocols.
        (vec![b"CHATTY.V1.JSON"], 400, None),
        (vec![b"Chatty.v1.Json"], 400, None),
        (vec![b"chatty.v1.MSGPACK, mqtt"], 400, None),
        // Whitespace inside a token makes another (unsupported) token.
        (vec![b"chatty.v1. json"], 400, None),
        (vec![b"chatty .v1.json"], 400, None),
        (vec![b"chatty.v1.json;q=1"], 400, None),
        (vec![b"chatty.v1.json\xff"], 400, None),
    ];
    let mut wrong = Vec::new();
    for (offers, status, echo) in cases {
        let shown: Vec<_> = offers.iter().map(|o| String::from_utf8_lossy(o)).collect();
        let up = attempt(offers.clone()).await;
        let echoed: Vec<String> = up
            .values("sec-websocket-protocol")
            .iter()
            .map(|v| String::from_utf8_lossy(v).to_string())
            .collect();
        let expected: Vec<String> = echo.iter().map(|e| e.to_string()).collect();
        if up.status != status || (status == 101 && echoed != expected) {
            wrong.push(format!(
                "{shown:?}: got {} echo {echoed:?}, expected {status} echo {expected:?}",
                up.status
            ));
            continue;
        }
        if status == 101 {
            // The socket speaks what was echoed (JSON when nothing was).
            let mut ws = RawWs::from(up);
            let msgpack = echo == Some("chatty.v1.msgpack");
            if msgpack {
                let ping = rmp_serde::to_vec_named(&json!({"type": "ping", "ref": "p"})).unwrap();
                ws.write(&frame(true, 0x2, &ping)).await;
            } else {
                ws.write(&frame(true, 0x1, br#"{"type":"ping","ref":"p"}"#))
                    .await;
            }
            let (op, p) = ws.frame().await.expect("a reply");
            let ok = if msgpack { op == 0x2 } else { op == 0x1 };
            if !ok {
                wrong.push(format!("{shown:?}: answered with {}", describe(op, &p)));
            }
        } else if !up.values("sec-websocket-accept").is_empty() {
            wrong.push(format!("{shown:?}: a refusal carries Sec-WebSocket-Accept"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn published_messages_are_committed_broadcast_and_idempotent() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    a.join("news").await;
    let http = reqwest::Client::new();
    let url = app.http("/api/v1/rooms/news/messages");
    let r = http
        .post(&url)
        .bearer_auth(app.api_key())
        .json(&json!({"from":"bot","name":"Bot","cid":"b1","body":"extra!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["seq"], 1);
    let m = a.messages("news", 1).await;
    assert_eq!(m[0]["from"], "bot");
    assert_eq!(m[0]["name"], "Bot");
    let again: Value = http
        .post(&url)
        .bearer_auth(app.api_key())
        .json(&json!({"from":"bot","cid":"b1","body":"extra!"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["seq"], 1);
    assert_eq!(app.rows("news").await.len(), 1);

    let page: Value = http
        .get(format!("{url}?limit=10"))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["body"], "extra!");
    assert_eq!(page["more"], false);
}

#[tokio::test]
async fn the_api_requires_the_key_and_validates_input() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let url = app.http("/api/v1/rooms/news/messages");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(app.http("/api/v1/rooms/bad%20room/messages"))
        .bearer_auth(app.api_key())
        .json(&json!({"from":"bot","cid":"c","body":"x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&url)
        .bearer_auth(app.api_key())
        .json(&json!({"from":"bot","cid":"c","body":"a\u{0}b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&url)
        .bearer_auth(app.api_key())
        .json(&json!({"from":"bot","cid":"c","body":"x".repeat(5000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(app.rows("news").await.is_empty());
}

/// Send `req` and read its answer, which must be JSON: (status, `error`, `message`).
async fn json_error(req: reqwest::RequestBuilder) -> (u16, String, String) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let media = r.headers().get("content-type").cloned();
    let text = r.text().await.unwrap();
    assert_eq!(
        media.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status}: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no {k}: {text}"))
            .to_string()
    };
    (status, field("error"), field("message"))
}

#[tokio::test]
async fn the_key_comes_first_and_every_rejection_is_a_json_error() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let key = app.api_key();
    let messages = app.http("/api/v1/rooms/news/messages");
    let ok = json!({"from": "bot", "cid": "c1", "body": "x"});

    // Without the key (or with another) nothing else about the call is looked at.
    let keyless = [
        http.post(&messages)
            .header("content-type", "application/json")
            .body("{"),
        http.post(&messages).body(ok.to_string()),
        http.post(&messages).json(&json!({"from": "bot", "x": 1})),
        http.patch(app.http("/api/v1/rooms/news/messages/abc"))
            .json(&json!({})),
        http.get(format!("{messages}?limit=abc&x=1")),
        http.put(app.http("/api/v1/rooms/%FF"))
            .bearer_auth("wrong")
            .json(&json!({"private": "yes"})),
    ];
    for req in keyless {
        let (status, error, _) = json_error(req).await;
        assert_eq!((status, error.as_str()), (401, "unauthorized"));
    }

    // With it, every refusal is 400 `bad_request` with a short reason.
    let refused = [
        (
            http.post(app.http("/api/v1/rooms/news/kick"))
                .json(&json!({"user": "bob", "x": 1})),
            "unknown field `x`",
        ),
        (
            http.delete(app.http("/api/v1/rooms/news/messages/abc")),
            "abc",
        ),
        (
            http.patch(app.http("/api/v1/rooms/news/messages/-1"))
                .json(&json!({"from": "bot", "body": "x"})),
            "-1",
        ),
        (
            http.post(&messages)
                .header("content-type", "text/plain")
                .body(ok.to_string()),
            "Content-Type: application/json",
        ),
        (http.post(&messages).body(ok.to_string()), "Content-Type"),
        (
            http.post(&messages)
                .header("content-type", "application/json")
                .body("{"),
            "JSON",
        ),
        (
            http.post(&messages)
                .json(&json!({"from": "bot", "body": "x"})),
            "missing field `cid`",
        ),
        (
            http.put(app.http("/api/v1/rooms/news"))
                .json(&json!({"private": "yes"})),
            "invalid type",
        ),
        (http.get(format!("{messages}?limit=abc")), "query string"),
        (
            http.get(app.http("/api/v1/users/bot/rooms?x=1")),
            "unknown field `x`",
        ),
    ];
    for (req, why) in refused {
        let (status, error, message) = json_error(req.bearer_auth(&key)).await;
        assert_eq!((status, error.as_str()), (400, "bad_request"), "{message}");
        assert!(message.contains(why), "{message:?} should say {why:?}");
    }

    // A body above the 64 KiB the router takes: 413 `too_large`.
    let big = format!(
        r#"{{"from":"bot","cid":"c2","body":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, error, _) = json_error(
        http.post(&messages)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!((status, error.as_str()), (413, "too_large"));
    assert!(app.rows("news").await.is_empty());

    // And the same calls, well formed, pass.
    let r = http
        .post(&messages)
        .bearer_auth(&key)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .put(app.http("/api/v1/rooms/news"))
        .bearer_auth(&key)
        .json(&json!({"private": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn private_rooms_admit_only_their_members() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let put = |path: &str| http.put(app.http(path)).bearer_auth(app.api_key());
    assert_eq!(
        put("/api/v1/rooms/vip")
            .json(&json!({"private": true}))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        put("/api/v1/rooms/vip/members/alice")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let mut a = app.connect("alice").await;
    let mut m = app.connect("mallory").await;
    assert_eq!(a.join("vip").await["type"], "joined");
    m.send(json!({"type":"join","ref":"j","room":"vip"})).await;
    let e = m.next_of("error").await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(e["ref"], "j");
    m.send(json!({"type":"history","ref":"h","room":"vip"}))
        .await;
    assert_eq!(m.next_of("error").await["code"], "forbidden");
    let r = http
        .delete(app.http("/api/v1/rooms/vip/members/alice"))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut a2 = app.connect("alice").await;
    a2.send(json!({"type":"join","ref":"j","room":"vip"})).await;
    assert_eq!(a2.next_of("error").await["code"], "forbidden");
}

#[tokio::test]
async fn health_and_readiness_answer_and_metrics_stay_off_the_public_port() {
    let app = spawn_app().await;
    assert_eq!(
        reqwest::get(app.http("/healthz")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(app.http("/readyz")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(app.http("/metrics")).await.unwrap().status(),
        404
    );
    assert!(app.metrics().await.contains("chatty_build_info"));
}

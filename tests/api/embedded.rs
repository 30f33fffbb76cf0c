use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn with_no_database_configured_the_binary_serves_the_page_and_a_chat_and_keeps_messages_across_a_restart(
) {
    let dir =
        std::env::temp_dir().join(format!("chatty-embedded-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("chatty.db");
    let path = path.to_str().unwrap();
    // No database URL and no Redis URL: the embedded default.
    let env = [
        ("CHATTY__DATABASE__URL", ""),
        ("CHATTY__REDIS__URL", ""),
        ("CHATTY__DATABASE__SQLITE_PATH", path),
    ];
    let (mut child, port) = start_binary(&env).await;
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    // A token from the local-only endpoint, then a full session over /ws.
    let http = reqwest::Client::new();
    let tok: Value = http
        .post(format!("http://127.0.0.1:{port}/dev/token"))
        .json(&json!({"name": "ada"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tok["user"], "ada");
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut a = Client::connect(&url, tok["token"].as_str().unwrap(), Some("chatty.v1.json")).await;
    let token_b: Value = http
        .post(format!("http://127.0.0.1:{port}/dev/token"))
        .json(&json!({"name": "bea"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut b = Client::connect(
        &url,
        token_b["token"].as_str().unwrap(),
        Some("chatty.v1.msgpack"),
    )
    .await;
    a.join("home").await;
    b.join("home").await;
    assert_eq!(a.send_msg("home", "a1", "kept?").await["seq"], 1);
    assert_eq!(b.send_msg("home", "b1", "kept!").await["seq"], 2);
    assert_eq!(b.messages("home", 2).await[0]["body"], "kept?");
    // The message lifecycle on the embedded store too.
    let r = a
        .call(
            json!({"type": "edit", "ref": "e", "room": "home", "seq": 1, "body": "kept, edited",
            "meta": {"reply_to": 2}}),
        )
        .await;
    assert_eq!(r["rev"], 1, "{r}");
    let r = b
        .call(
            json!({"type": "react", "ref": "r", "room": "home", "seq": 2, "key": "👍", "on": true}),
        )
        .await;
    assert_eq!(r["rev"], 2, "{r}");
    assert_eq!(terminate(&mut child).await, Some(0));
    assert!(a.next_of_close().await == Some(1001));

    // Restart on the same file: history is there, seq continues, idempotency holds.
    let (mut child, port) = start_binary(&env).await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut a = Client::connect(&url, tok["token"].as_str().unwrap(), Some("chatty.v1.json")).await;
    let joined = a.join_since("home", 0).await;
    assert_eq!(
        (joined["seq"].as_u64(), joined["rev"].as_u64()),
        (Some(2), Some(2))
    );
    let replay = a.messages("home", 2).await;
    assert_eq!(replay[1]["body"], "kept!");
    // Replayed in their current state.
    assert_eq!(
        (replay[0]["body"].as_str(), replay[0]["rev"].as_u64()),
        (Some("kept, edited"), Some(1))
    );
    assert_eq!(replay[0]["meta"], json!({"reply_to": 2}));
    assert_eq!(replay[1]["reactions"], json!([{"key": "👍", "count": 1}]));
    let r = a
        .call(json!({"type": "delete", "ref": "d", "room": "home", "seq": 2}))
        .await;
    assert_eq!(r["code"], "forbidden", "not hers, and no role: {r}");
    assert_eq!(
        a.send_msg("home", "a1", "again").await["seq"],
        1,
        "cid remembered across restarts"
    );
    assert_eq!(a.send_msg("home", "a2", "new").await["seq"], 3);
    assert_eq!(terminate(&mut child).await, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cluster_settings_with_the_embedded_store_are_refused_at_startup() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatty"))
        .arg("serve")
        .env("CHATTY__DATABASE__URL", "")
        .env("CHATTY__REDIS__URL", "redis://127.0.0.1:6379")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redis.url") && err.contains("PostgreSQL"),
        "{err}"
    );
}

#[tokio::test]
async fn the_embedded_store_dispatches_webhooks_from_its_one_process() {
    let rx = Receiver::start(Mode::FailFirst(1)).await;
    let dir = std::env::temp_dir().join(format!("chatty-hooks-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("chatty.db");
    let env = [
        ("CHATTY__DATABASE__URL", ""),
        ("CHATTY__REDIS__URL", ""),
        ("CHATTY__DATABASE__SQLITE_PATH", path.to_str().unwrap()),
        ("CHATTY__WEBHOOKS__URL", rx.url.as_str()),
        ("CHATTY__WEBHOOKS__SECRET", "whsec-embedded-0123456789"),
        ("CHATTY__WEBHOOKS__RETRY_BASE_MS", "20"),
        ("CHATTY__WEBHOOKS__RETRY_MAX_MS", "100"),
        ("CHATTY__WEBHOOKS__POLL_MS", "20"),
        ("CHATTY__PRESENCE__GRACE_MS", "200"),
    ];
    let (mut child, port) = start_binary(&env).await;
    let key = "local-api-key";
    let (st, _) = api_call(
        port,
        key,
        "PUT",
        "/api/v1/rooms/dm",
        Some(json!({"private": true})),
    )
    .await;
    assert_eq!(st, 204);
    for u in ["ann", "bea"] {
        let (st, _) = api_call(
            port,
            key,
            "PUT",
            &format!("/api/v1/rooms/dm/members/{u}"),
            None,
        )
        .await;
        assert_eq!(st, 204);
    }
    for i in 1..=3 {
        let (st, v) = api_call(
            port,
            key,
            "POST",
            "/api/v1/rooms/dm/messages",
            Some(json!({"from": "ann", "cid": format!("c{i}"), "body": "hi"})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
    }
    eventually("three message.offline events", || async {
        rx.accepted().len() == 3
    })
    .await;
    let got: Vec<(u64, Value)> = rx
        .accepted()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["users"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (1, json!(["bea"])),
            (2, json!(["bea"])),
            (3, json!(["bea"]))
        ]
    );
    assert_commit_order_per_room(&rx.hits());
    assert_eq!(terminate(&mut child).await, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

//! The message lifecycle (v1.1): metadata, edits, deletes and reactions, over real sockets of
//! both encodings against the real application and PostgreSQL.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Send with metadata and wait for the ack.
async fn send_meta(c: &mut Client, room: &str, cid: &str, body: &str, meta: Value) -> Value {
    c.call(
        json!({"type": "send", "ref": cid, "room": room, "cid": cid, "body": body, "meta": meta}),
    )
    .await
}

/// The stored state of one message: (body, meta as text, rev, deleted).
async fn row(app: &TestApp, room: &str, seq: i64) -> (String, Option<String>, i64, bool) {
    sqlx::query_as(
        "select body, meta::text, rev, deleted from messages where room_id = $1 and seq = $2",
    )
    .bind(room)
    .bind(seq)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn meta_travels_with_a_message_live_in_history_and_over_http_in_both_encodings() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect_msgpack("bob").await;
    a.join("m").await;
    b.join("m").await;
    let meta = json!({"reply_to": 7, "files": [{"url": "https://x.test/a.png", "w": 10}]});
    let ack = send_meta(&mut a, "m", "c1", "look", meta.clone()).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for c in [&mut a, &mut b] {
        let m = c.next_of("message").await;
        assert_eq!(m["meta"], meta, "{m}");
        // A fresh message carries none of the state fields: it is encoded as in v1.
        for f in ["rev", "edited_ts", "deleted", "reactions"] {
            assert!(m.get(f).is_none(), "{f} on a fresh message: {m}");
        }
    }
    let h = b
        .call(json!({"type": "history", "ref": "h", "room": "m"}))
        .await;
    assert_eq!(h["messages"][0]["meta"], meta);
    let (status, _) = app
        .api(
            "POST",
            "/api/v1/rooms/m/messages",
            Some(json!({"from": "svc", "cid": "s1", "body": "from the backend", "meta": {"k": 1}})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, page) = app.api("GET", "/api/v1/rooms/m/messages", None).await;
    assert_eq!(page["messages"][0]["meta"], meta);
    assert_eq!(page["messages"][1]["meta"], json!({"k": 1}));
    let (status, _) = app
        .api(
            "POST",
            "/api/v1/rooms/m/messages",
            Some(json!({"from": "svc", "cid": "s2", "body": "x", "meta": [1]})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn edits_deletes_and_reactions_reach_every_member_in_rev_order_and_history_shows_the_end() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect_msgpack("bob").await;
    a.join("lc").await;
    b.join("lc").await;
    let ack = send_meta(&mut a, "lc", "c1", "helo", json!({"reply_to": 1})).await;
    let seq = ack["seq"].as_u64().unwrap();
    let edit = a
        .call(json!({"type": "edit", "ref": "e", "room": "lc", "seq": seq, "body": "hello"}))
        .await;
    assert_eq!(
        (edit["type"].as_str(), edit["rev"].as_u64()),
        (Some("updated"), Some(1))
    );
    let react = b
        .call(
            json!({"type": "react", "ref": "r", "room": "lc", "seq": seq, "key": "👍", "on": true}),
        )
        .await;
    assert_eq!(react["rev"], 2, "{react}");
    let del = a
        .call(json!({"type": "delete", "ref": "d", "room": "lc", "seq": seq}))
        .await;
    assert_eq!(del["rev"], 3, "{del}");
    for c in [&mut a, &mut b] {
        let u1 = c.next_of("update").await;
        assert_eq!(
            (u1["rev"].as_u64(), u1["change"].as_str()),
            (Some(1), Some("edit"))
        );
        assert_eq!(
            (u1["body"].as_str(), u1["by"].as_str()),
            (Some("hello"), Some("alice"))
        );
        assert_eq!(
            u1["meta"],
            json!({"reply_to": 1}),
            "an edit without meta keeps it"
        );
        assert!(u1["edited_ts"].as_i64().unwrap() > 0);
        let u2 = c.next_of("update").await;
        assert_eq!(
            (u2["rev"].as_u64(), u2["change"].as_str()),
            (Some(2), Some("react"))
        );
        assert_eq!(u2["reactions"], json!([{"key": "👍", "count": 1}]));
        let u3 = c.next_of("update").await;
        assert_eq!(
            (u3["rev"].as_u64(), u3["change"].as_str()),
            (Some(3), Some("delete"))
        );
        assert_eq!(u3["deleted"], true);
        assert!(u3.get("body").is_none() && u3.get("meta").is_none(), "{u3}");
        assert_eq!(u3["reactions"], json!([]));
    }
    // History and a new joiner see the final state; the table keeps no body or meta.
    let h = b
        .call(json!({"type": "history", "ref": "h", "room": "lc"}))
        .await;
    let m = &h["messages"][0];
    assert_eq!(
        (m["deleted"].as_bool(), m["rev"].as_u64()),
        (Some(true), Some(3))
    );
    assert_eq!(m["body"], "");
    assert!(m.get("meta").is_none());
    assert_eq!(
        row(&app, "lc", seq as i64).await,
        (String::new(), None, 3, true)
    );
    let mut c = app.connect("carol").await;
    assert_eq!(c.join("lc").await["rev"], 3);
}

#[tokio::test]
async fn the_same_edit_twice_and_a_reaction_on_twice_make_one_rev_and_one_broadcast() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut w = app.connect("wendy").await;
    a.join("idem").await;
    w.join("idem").await;
    let seq = a.send_msg("idem", "c1", "one").await["seq"]
        .as_u64()
        .unwrap();
    let edit = json!({"type": "edit", "ref": "e", "room": "idem", "seq": seq, "body": "two"});
    let first = a.call(edit.clone()).await;
    let again = a.call(edit).await;
    assert_eq!(
        (first["rev"].as_u64(), again["rev"].as_u64()),
        (Some(1), Some(1))
    );
    let on =
        json!({"type": "react", "ref": "r", "room": "idem", "seq": seq, "key": "x", "on": true});
    let first = w.call(on.clone()).await;
    let again = w.call(on).await;
    assert_eq!(
        (first["rev"].as_u64(), again["rev"].as_u64()),
        (Some(2), Some(2))
    );
    let off =
        json!({"type": "react", "ref": "o", "room": "idem", "seq": seq, "key": "y", "on": false});
    assert_eq!(
        w.call(off).await["rev"],
        2,
        "removing a reaction never added is a no-op"
    );
    assert_eq!(w.next_of("update").await["rev"], 1);
    assert_eq!(w.next_of("update").await["rev"], 2);
    w.assert_quiet(Duration::from_millis(300), &["message", "presence"])
        .await;
    let heads: (i64,) = sqlx::query_as("select last_rev from rooms where id = 'idem'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(heads.0, 2);
}

#[tokio::test]
async fn changes_without_the_right_are_refused_and_hostile_ones_store_nothing() {
    let (mut s, _) = test_settings().await;
    s.limits.max_reaction_keys = 2;
    let app = spawn_with(s).await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect_msgpack("bob").await;
    a.join("p").await;
    b.join("p").await;
    let seq = a.send_msg("p", "c1", "mine").await["seq"].as_u64().unwrap();
    let code = |v: &Value| v["code"].as_str().unwrap_or("").to_string();
    let cases = [
        (
            json!({"type": "edit", "ref": "1", "room": "p", "seq": seq, "body": "bob's"}),
            "forbidden",
        ),
        (
            json!({"type": "delete", "ref": "2", "room": "p", "seq": seq}),
            "forbidden",
        ),
        (
            json!({"type": "edit", "ref": "3", "room": "p", "seq": 999, "body": "x"}),
            "not_found",
        ),
        (
            json!({"type": "react", "ref": "4", "room": "p", "seq": 999, "key": "x", "on": true}),
            "not_found",
        ),
        (
            json!({"type": "edit", "ref": "5", "room": "elsewhere", "seq": seq, "body": "x"}),
            "not_joined",
        ),
        (
            json!({"type": "react", "ref": "6", "room": "p", "seq": seq, "key": "k".repeat(33), "on": true}),
            "bad_request",
        ),
        (
            json!({"type": "react", "ref": "7", "room": "p", "seq": seq, "key": "x"}),
            "bad_request",
        ),
    ];
    for (frame, want) in cases {
        let r = b.call(frame.clone()).await;
        assert_eq!(code(&r), want, "{frame} -> {r}");
    }
    let hostile_meta = [
        (json!({"a": "x".repeat(3000)}), "too_large"),
        (json!({"a": {"b": {"c": {"d": {}}}}}), "bad_request"),
        (json!("not an object"), "bad_request"),
        (json!({"a": "nul\u{0}"}), "bad_request"),
    ];
    for (i, (meta, want)) in hostile_meta.into_iter().enumerate() {
        let r = send_meta(&mut a, "p", &format!("h{i}"), "x", meta.clone()).await;
        assert_eq!(code(&r), want, "send meta {meta} -> {r}");
        let edit = json!({"type": "edit", "ref": format!("he{i}"), "room": "p", "seq": seq, "body": "x", "meta": meta});
        assert_eq!(code(&a.call(edit).await), want);
    }
    // Two keys per user here: the third is refused, the first two stand.
    for (i, k) in ["a", "b"].iter().enumerate() {
        let r = b
            .call(json!({"type": "react", "ref": format!("k{i}"), "room": "p", "seq": seq, "key": k, "on": true}))
            .await;
        assert_eq!(r["type"], "updated", "{r}");
    }
    let r = b
        .call(
            json!({"type": "react", "ref": "k3", "room": "p", "seq": seq, "key": "c", "on": true}),
        )
        .await;
    assert_eq!(code(&r), "too_large");
    // Nothing of the refused changes reached the table: only the two reactions moved rev.
    assert_eq!(
        row(&app, "p", seq as i64).await,
        ("mine".into(), None, 2, false)
    );
    assert_eq!(app.rows("p").await.len(), 1, "no refused send was stored");
    // A moderator may delete another's message; the role is read when the delete is asked.
    let (st, _) = app
        .api(
            "PUT",
            "/api/v1/rooms/p/members/bob",
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(st, 204);
    let r = b
        .call(json!({"type": "delete", "ref": "m", "room": "p", "seq": seq}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["rev"].as_u64()),
        (Some("updated"), Some(3)),
        "{r}"
    );
    let r = a
        .call(json!({"type": "edit", "ref": "after", "room": "p", "seq": seq, "body": "back"}))
        .await;
    assert_eq!(code(&r), "forbidden", "a deleted message cannot be edited");
}

#[tokio::test]
async fn the_backend_deletes_any_message_and_edits_on_behalf_of_its_author() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    a.join("api").await;
    let one = a.send_msg("api", "c1", "one").await["seq"]
        .as_u64()
        .unwrap();
    let two = a.send_msg("api", "c2", "two").await["seq"]
        .as_u64()
        .unwrap();
    let (st, v) = app
        .api(
            "PATCH",
            &format!("/api/v1/rooms/api/messages/{one}"),
            Some(json!({"from": "alice", "body": "one, fixed", "meta": {"by": "support"}})),
        )
        .await;
    assert_eq!((st, v["rev"].as_u64()), (200, Some(1)), "{v}");
    let (st, _) = app
        .api(
            "PATCH",
            &format!("/api/v1/rooms/api/messages/{one}"),
            Some(json!({"from": "mallory", "body": "hijack"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = app
        .api("DELETE", &format!("/api/v1/rooms/api/messages/{two}"), None)
        .await;
    assert_eq!((st, v["rev"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = app
        .api("DELETE", &format!("/api/v1/rooms/api/messages/{two}"), None)
        .await;
    assert_eq!(
        (st, v["rev"].as_u64()),
        (200, Some(2)),
        "a repeated delete is a no-op"
    );
    let (st, _) = app
        .api("DELETE", "/api/v1/rooms/api/messages/99", None)
        .await;
    assert_eq!(st, 404);
    let u = a.next_of("update").await;
    assert_eq!(
        (u["body"].as_str(), u["meta"]["by"].as_str()),
        (Some("one, fixed"), Some("support"))
    );
    let u = a.next_of("update").await;
    assert_eq!(
        (u["by"].as_str(), u["deleted"].as_bool()),
        (Some("backend"), Some(true))
    );
    let (st, _) = api_call(
        app.port,
        "wrong-key",
        "DELETE",
        "/api/v1/rooms/api/messages/1",
        None,
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn history_shows_each_users_own_reactions() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("mine").await;
    b.join("mine").await;
    let seq = a.send_msg("mine", "c1", "react to me").await["seq"]
        .as_u64()
        .unwrap();
    for (who, key) in [(0, "👍"), (1, "👍"), (1, "🎉")] {
        let c = if who == 0 { &mut a } else { &mut b };
        let r = c
            .call(json!({"type": "react", "ref": key, "room": "mine", "seq": seq, "key": key, "on": true}))
            .await;
        assert_eq!(r["type"], "updated", "{r}");
    }
    let h = a
        .call(json!({"type": "history", "ref": "h", "room": "mine"}))
        .await;
    assert_eq!(h["messages"][0]["mine"], json!(["👍"]));
    assert_eq!(
        h["messages"][0]["reactions"],
        json!([{"key": "👍", "count": 2}, {"key": "🎉", "count": 1}])
    );
    let h = b
        .call(json!({"type": "history", "ref": "h", "room": "mine"}))
        .await;
    let mut mine: Vec<String> = serde_json::from_value(h["messages"][0]["mine"].clone()).unwrap();
    mine.sort();
    let mut want = vec!["👍".to_string(), "🎉".to_string()];
    want.sort();
    assert_eq!(mine, want);
}

//! Reaching users outside a room (v1.1): the personal channel.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_backend_event_reaches_every_socket_of_the_user_and_no_one_else() {
    let app = spawn_app().await;
    // No room is joined: the personal channel is the user's, not a room's.
    let mut a1 = app.connect("ann").await;
    let mut a2 = app.connect_msgpack("ann").await;
    let mut b = app.connect("bob").await;
    let data = json!({"kind": "dm", "from": "bob", "deep": {"a": {"b": {"c": {"d": [1, "x"]}}}}});
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/users/ann/events",
            Some(json!({ "data": data })),
        )
        .await;
    assert_eq!((st, v["connections"].as_u64()), (202, Some(2)), "{v}");
    for c in [&mut a1, &mut a2] {
        let e = c.next_of("event").await;
        assert_eq!(e["data"], data);
    }
    b.assert_quiet(Duration::from_millis(300), &[]).await;
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/users/nobody/events",
            Some(json!({"data": {}})),
        )
        .await;
    assert_eq!((st, v["connections"].as_u64()), (202, Some(0)), "{v}");
    // A closed socket is not counted any more.
    a2.close().await;
    eventually("ann's closed socket leaves the count", || async {
        let (_, v) = app
            .api(
                "POST",
                "/api/v1/users/ann/events",
                Some(json!({"data": {"n": 2}})),
            )
            .await;
        v["connections"] == 1
    })
    .await;
}

#[tokio::test]
async fn events_that_are_not_objects_or_too_large_are_refused_and_reach_nobody() {
    let app = spawn_app().await;
    let mut a = app.connect("ann").await;
    for (body, want) in [
        (json!({"data": [1, 2]}), 400),
        (json!({"data": "text"}), 400),
        (json!({"data": {"x": "y".repeat(4100)}}), 413),
        (json!({"data": {}, "extra": 1}), 400),
        (json!({}), 400),
    ] {
        let (st, _) = app
            .api("POST", "/api/v1/users/ann/events", Some(body.clone()))
            .await;
        assert_eq!(st, want, "{body}");
    }
    let (st, _) = app
        .api(
            "POST",
            "/api/v1/users/a%0Ab/events",
            Some(json!({"data": {}})),
        )
        .await;
    assert_eq!(st, 400, "a user id with a control character");
    let (st, _) = api_call(
        app.port,
        "wrong",
        "POST",
        "/api/v1/users/ann/events",
        Some(json!({"data": {}})),
    )
    .await;
    assert_eq!(st, 401);
    a.assert_quiet(Duration::from_millis(300), &[]).await;
}

#[tokio::test]
async fn the_conversation_list_counts_unread_from_read_markers_over_the_socket_and_the_api() {
    let app = spawn_app().await;
    let mut ann = app.connect("ann").await;
    let mut bob = app.connect_msgpack("bob").await;
    for r in ["r1", "r2"] {
        ann.join(r).await;
        bob.join(r).await;
    }
    bob.send_msg("r1", "b1", "one").await;
    bob.send_msg("r1", "b2", "two").await;
    let read = ann
        .call(json!({"type": "read", "ref": "rd1", "room": "r1", "seq": 1}))
        .await;
    assert_eq!(read["seq"], 1);
    let read = ann
        .call(json!({"type": "read", "ref": "rd2", "room": "r2", "seq": 0}))
        .await;
    assert_eq!(read["seq"], 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    bob.send_msg("r2", "b3", "three").await;
    let (st, _) = app.api("PUT", "/api/v1/rooms/dm/members/ann", None).await;
    assert_eq!(st, 204);
    let list = ann.call(json!({"type": "rooms", "ref": "l"})).await;
    assert_eq!(list["type"], "rooms", "{list}");
    let rows: Vec<(String, u64, u64, u64)> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["room"].as_str().unwrap().to_string(),
                n("seq"),
                n("read"),
                n("unread"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("r2".to_string(), 1, 0, 1),
            ("r1".to_string(), 2, 1, 1),
            ("dm".to_string(), 0, 0, 0),
        ]
    );
    assert!(list["rooms"][0]["ts"].as_i64().unwrap() > 0);
    assert!(list["rooms"][2].get("ts").is_none(), "no activity yet");
    let (st, v) = app.api("GET", "/api/v1/users/ann/rooms", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["rooms"], list["rooms"]);
    let (_, v) = app
        .api("GET", "/api/v1/users/ann/rooms?limit=1", None)
        .await;
    assert_eq!(v["rooms"].as_array().unwrap().len(), 1);
    let (st, _) = app
        .api("GET", "/api/v1/users/ann/rooms?limit=0", None)
        .await;
    assert_eq!(st, 400);
    // Bob reads nothing and is a member of nothing: his list is empty.
    let list = bob.call(json!({"type": "rooms", "ref": "l"})).await;
    assert_eq!(list["rooms"], json!([]));
}

#[tokio::test]
async fn a_member_added_or_removed_gets_or_stops_getting_inbox_from_the_next_message() {
    let app = spawn_app().await;
    let room = "reach-members";
    app.private_room(room, &["ann", "bob"]).await;
    let member = |m: &'static str| format!("/api/v1/rooms/{room}/members/{m}");
    let mut ann = app.connect("ann").await;
    ann.join(room).await;
    let mut bob = app.connect("bob").await;
    let mut cal = app.connect("cal").await;
    // The first message reads (and keeps) the members: Bob hears of it, Cal is no member.
    ann.send_msg(room, "m1", "one").await;
    assert_eq!(bob.next_of("inbox").await["seq"], 1);
    cal.assert_quiet(Duration::from_millis(300), &[]).await;
    // Cal becomes a member: the very next message tells Cal, well before the members kept
    // from the first message would expire.
    assert_eq!(app.api("PUT", &member("cal"), None).await.0, 204);
    ann.send_msg(room, "m2", "two").await;
    let f = tokio::time::timeout(Duration::from_secs(2), cal.next_of("inbox"))
        .await
        .expect("the new member's inbox arrives with the next message");
    assert_eq!(f["seq"], 2);
    // Bob is removed: the next message no longer tells Bob.
    assert_eq!(bob.next_of("inbox").await["seq"], 2);
    assert_eq!(app.api("DELETE", &member("bob"), None).await.0, 204);
    ann.send_msg(room, "m3", "three").await;
    assert_eq!(cal.next_of("inbox").await["seq"], 3);
    bob.assert_quiet(Duration::from_millis(500), &[]).await;
}

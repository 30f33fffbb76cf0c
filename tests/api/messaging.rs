use std::collections::HashMap;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn json_and_msgpack_clients_share_a_room_each_in_its_own_encoding() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect_msgpack("bob").await;
    a.join("lobby").await;
    b.join("lobby").await;

    let ack = a.send_msg("lobby", "a1", "hello from json").await;
    assert_eq!(ack["type"], "ack");
    let ack = b.send_msg("lobby", "b1", "hello from msgpack").await;
    assert_eq!(ack["type"], "ack");

    // Each client's helper asserts the frame kind matches its protocol (text vs binary).
    let seen_a = a.messages("lobby", 2).await;
    let seen_b = b.messages("lobby", 2).await;
    for seen in [&seen_a, &seen_b] {
        assert_eq!(seen[0]["body"], "hello from json");
        assert_eq!(seen[0]["from"], "alice");
        assert_eq!(seen[1]["body"], "hello from msgpack");
        assert_eq!(seen[1]["seq"], 2);
        assert_eq!(seen[1]["name"], "bob name");
    }
}

#[tokio::test]
async fn an_ack_arrives_only_when_the_row_is_committed() {
    let app = spawn_app().await;
    let mut c = app.connect("alice").await;
    c.join("r").await;
    for i in 0..20 {
        let cid = format!("c{i}");
        let ack = c.send_msg("r", &cid, "durable").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        // Read through another connection: the row must already be visible to it.
        let rows: Vec<(i64,)> =
            sqlx::query_as("select seq from messages where room_id = 'r' and cid = $1")
                .bind(&cid)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(rows, vec![(ack["seq"].as_i64().unwrap(),)]);
    }
}

#[tokio::test]
async fn resending_a_cid_returns_the_original_seq_without_a_second_row_or_broadcast() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut watcher = app.connect("wendy").await;
    a.join("r").await;
    watcher.join("r").await;
    let first = a.send_msg("r", "same", "once").await;
    let again = a.send_msg("r", "same", "twice?").await;
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(first["ts"], again["ts"]);
    // Same cid from another user is a different message.
    let mut b = app.connect("bob").await;
    b.join("r").await;
    let other = b.send_msg("r", "same", "mine").await;
    assert_eq!(other["seq"], 2);

    let rows = app.rows("r").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].3, "once");
    let got = watcher.messages("r", 2).await;
    assert_eq!(got[0]["body"], "once");
    assert_eq!(got[1]["body"], "mine");
    watcher
        .assert_quiet(std::time::Duration::from_millis(300), &["presence"])
        .await;
}

#[tokio::test]
async fn fifty_concurrent_senders_over_five_rooms_give_every_receiver_one_gap_free_order() {
    let app = spawn_app().await;
    const ROOMS: usize = 5;
    const SENDERS: usize = 50;
    const PER_SENDER: usize = 20;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("room{i}")).collect();

    // Two receivers per room.
    let mut receivers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for k in 0..2 {
            let mut c = app.connect(&format!("recv{i}_{k}")).await;
            c.join(room).await;
            receivers.push((room.clone(), c));
        }
    }
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let room = rooms[s % ROOMS].clone();
        let mut c = app.connect(&format!("sender{s}")).await;
        c.join(&room).await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for m in 0..PER_SENDER {
                let cid = format!("s{s}m{m}");
                c.send(json!({"type":"send","ref":cid,"room":room,"cid":cid,"body":format!("{s}/{m}")}))
                    .await;
            }
            // Acks may interleave with message frames: collect them by ref.
            for m in 0..PER_SENDER {
                let ack = c.send_msg_wait_ack(&format!("s{s}m{m}")).await;
                assert_eq!(ack["type"], "ack", "{ack}");
                acked.push((room.clone(), ack["seq"].as_u64().unwrap()));
            }
            acked
        }));
    }
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        for (room, seq) in t.await.unwrap() {
            acked.entry(room).or_default().push(seq);
        }
    }
    let per_room = SENDERS / ROOMS * PER_SENDER;
    for (room, mut c) in receivers {
        let got = c.messages(&room, per_room).await;
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        let expected: Vec<u64> = (1..=per_room as u64).collect();
        assert_eq!(
            seqs, expected,
            "room {room}: receiver saw a gap, duplicate or reorder"
        );
        let rows = app.rows(&room).await;
        assert_eq!(rows.len(), per_room);
        for (m, row) in got.iter().zip(&rows) {
            assert_eq!(m["cid"], row.2.as_str());
            assert_eq!(m["body"], row.3.as_str());
        }
        let mut a = acked[&room].clone();
        a.sort_unstable();
        assert_eq!(a, expected, "room {room}: acked seqs differ from the table");
    }
}

#[tokio::test]
async fn reconnecting_with_since_replays_exactly_the_missed_messages_then_live() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    for i in 1..=3 {
        a.send_msg("r", &format!("m{i}"), &format!("before {i}"))
            .await;
    }
    let seen = b.messages("r", 3).await;
    let last = seen[2]["seq"].as_u64().unwrap();
    b.close().await;
    for i in 4..=8 {
        a.send_msg("r", &format!("m{i}"), &format!("missed {i}"))
            .await;
    }
    let mut b = app.connect("bob").await;
    let joined = b.join_since("r", last).await;
    assert_eq!(joined["seq"], 8);
    assert!(joined.get("replay_truncated").is_none());
    a.send_msg("r", "m9", "live 9").await;
    let got = b.messages("r", 6).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8, 9]);
    assert_eq!(got[5]["body"], "live 9");
    b.assert_quiet(std::time::Duration::from_millis(200), &["presence"])
        .await;
}

#[tokio::test]
async fn replay_past_the_cap_is_truncated_to_the_newest_and_flagged() {
    let (mut s, _) = test_settings().await;
    s.limits.replay_max = 5;
    let app = spawn_with(s).await;
    let mut a = app.connect("alice").await;
    a.join("r").await;
    for i in 1..=12 {
        a.send_msg("r", &format!("m{i}"), "x").await;
    }
    let mut b = app.connect("bob").await;
    let joined = b.join_since("r", 2).await;
    assert_eq!(joined["replay_truncated"], true);
    let got = b.messages("r", 5).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![8, 9, 10, 11, 12]);
}

#[tokio::test]
async fn history_pages_backwards_oldest_first_within_a_page() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    a.join("r").await;
    for i in 1..=7 {
        a.send_msg("r", &format!("m{i}"), &format!("body {i}"))
            .await;
    }
    a.send(json!({"type":"history","ref":"h1","room":"r","limit":3}))
        .await;
    let h = a.next_of("history").await;
    assert_eq!(h["ref"], "h1");
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5, 6, 7]);
    assert_eq!(h["more"], true);
    assert!(h["messages"][0].get("type").is_none());
    a.send(json!({"type":"history","ref":"h2","room":"r","before":5,"limit":10}))
        .await;
    let h = a.next_of("history").await;
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(h["more"], false);
    // An absurd limit is clamped to the server maximum, not an error.
    a.send(json!({"type":"history","ref":"h3","room":"r","limit":4_000_000_000u64}))
        .await;
    let h = a.next_of("history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn read_markers_reach_the_users_other_connection_and_come_back_on_join() {
    let app = spawn_app().await;
    let mut a1 = app.connect("alice").await;
    let mut a2 = app.connect("alice").await;
    a1.join("r").await;
    a2.join("r").await;
    for i in 1..=3 {
        a1.send_msg("r", &format!("m{i}"), "x").await;
    }
    a1.send(json!({"type":"read","ref":"rd","room":"r","seq":2}))
        .await;
    let r = a1.next_of("read").await;
    assert_eq!(r["ref"], "rd");
    assert_eq!(r["seq"], 2);
    let pushed = a2.next_of("read").await;
    assert_eq!(pushed["seq"], 2);
    assert!(pushed.get("ref").is_none());
    // Markers never move back and never pass the head.
    a1.send(json!({"type":"read","ref":"rd2","room":"r","seq":1}))
        .await;
    assert_eq!(a1.next_of("read").await["seq"], 2);
    a1.send(json!({"type":"read","ref":"rd3","room":"r","seq":99}))
        .await;
    assert_eq!(a1.next_of("read").await["seq"], 3);
    let mut a3 = app.connect("alice").await;
    assert_eq!(a3.join("r").await["read"], 3);
}

#[tokio::test]
async fn typing_reaches_others_and_is_never_stored() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    a.send(json!({"type":"typing","room":"r"})).await;
    let t = b.next_of("typing").await;
    assert_eq!(t["user"], "alice");
    assert_eq!(t["room"], "r");
    a.assert_quiet(std::time::Duration::from_millis(200), &["presence"])
        .await;
    assert!(app.rows("r").await.is_empty());
}

#[tokio::test]
async fn commands_in_a_room_not_joined_are_refused_with_not_joined() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let e = a.send_msg("nowhere", "c1", "x").await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_joined");
    a.send(json!({"type":"ping","ref":"p"})).await;
    assert_eq!(a.next_of("pong").await["ref"], "p");
    a.send(json!({"type":"leave","ref":"l","room":"nowhere"}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "not_joined");
    a.join("r").await;
    a.send(json!({"type":"leave","ref":"l2","room":"r"})).await;
    let left = a.next_of("left").await;
    assert_eq!(left["ref"], "l2");
}

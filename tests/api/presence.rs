use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn users(list: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn joins_and_leaves_arrive_as_presence_diffs() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let joined = a.join("r").await;
    assert_eq!(users(&joined["presence"]), vec!["alice"]);
    let mut b = app.connect("bob").await;
    let joined = b.join("r").await;
    assert_eq!(users(&joined["presence"]), vec!["alice", "bob"]);
    let diff = loop {
        let d = a.next_of("presence").await;
        if users(&d["joins"]).contains(&"bob".to_string()) {
            break d;
        }
    };
    // Diffs are set operations and may repeat what `joined` already said: find bob's entry.
    let bob = diff["joins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user"] == "bob")
        .unwrap();
    assert_eq!(bob["name"], "bob name");
    b.send(json!({"type":"leave","ref":"l","room":"r"})).await;
    b.next_of("left").await;
    // After the grace period, alice sees bob leave.
    let diff = loop {
        let d = a.next_of("presence").await;
        if !d["leaves"].as_array().unwrap().is_empty() {
            break d;
        }
    };
    assert_eq!(users(&diff["leaves"]), vec!["bob"]);
}

#[tokio::test]
async fn two_connections_of_one_user_count_once_and_the_grace_period_hides_flaps() {
    let (mut s, _) = test_settings().await;
    s.presence.grace_ms = 1500;
    let app = spawn_with(s).await;
    let mut watcher = app.connect("wendy").await;
    watcher.join("r").await;
    let mut c1 = app.connect("carol").await;
    let mut c2 = app.connect("carol").await;
    c1.join("r").await;
    let j2 = c2.join("r").await;
    assert_eq!(users(&j2["presence"]), vec!["carol", "wendy"]);
    // The watcher hears carol join once.
    loop {
        let d = watcher.next_of("presence").await;
        if users(&d["joins"]).contains(&"carol".to_string()) {
            break;
        }
    }
    // One of carol's two sockets leaving changes nothing.
    c1.close().await;
    // A flap: the second socket drops and a new one comes back within the grace period.
    c2.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c3 = app.connect("carol").await;
    c3.join("r").await;
    watcher.assert_quiet(Duration::from_millis(2000), &[]).await;
    // The HTTP presence API agrees.
    let body: serde_json::Value = reqwest::Client::new()
        .get(app.http("/api/v1/rooms/r/presence"))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users(&body["users"]), vec!["carol", "wendy"]);
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_big_room_lists_only_the_joiner_and_pages_the_rest_in_both_encodings() {
    let (mut s, _) = test_settings().await;
    s.limits.presence_list_max = 3;
    let app = spawn_with(s).await;
    let mut clients = Vec::new();
    for i in 1..=3 {
        let mut c = app.connect(&format!("u{i}")).await;
        let joined = c.join("big").await;
        assert_eq!(joined["presence_count"], i, "{joined}");
        assert_eq!(
            users(&joined["presence"]).len(),
            i,
            "up to the cap, everyone is listed"
        );
        assert!(joined.get("presence_truncated").is_none(), "{joined}");
        clients.push(c);
    }
    let mut u4 = app.connect("u4").await;
    let joined = u4.join("big").await;
    assert_eq!(joined["presence_count"], 4);
    assert_eq!(joined["presence_truncated"], true);
    assert_eq!(
        users(&joined["presence"]),
        vec!["u4"],
        "past the cap, only the joiner"
    );

    // The rest is paged, in user id order, here over MessagePack.
    let mut u5 = app.connect_msgpack("u5").await;
    let joined = u5.join("big").await;
    assert_eq!(joined["presence_count"], 5);
    assert_eq!(joined["presence_truncated"], true);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 5, "paging never ends");
        let mut q = json!({"type":"presence","ref":format!("p{page}"),"room":"big","limit":2});
        if let Some(a) = &after {
            q["after"] = json!(a);
        }
        let p = u5.call(q).await;
        assert_eq!(p["type"], "presence_page", "{p}");
        let got = names(&p["users"]);
        assert!(got.len() <= 2);
        seen.extend(got);
        match p.get("next").and_then(|n| n.as_str()) {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["u1", "u2", "u3", "u4", "u5"]);

    // Without a limit the page holds up to the cap.
    let p = u4
        .call(json!({"type":"presence","ref":"all","room":"big"}))
        .await;
    assert_eq!(names(&p["users"]), vec!["u1", "u2", "u3"]);
    assert_eq!(p["next"], "u3");
    // A room not joined, and a bad limit, are refused.
    let e = u4
        .call(json!({"type":"presence","ref":"nj","room":"elsewhere"}))
        .await;
    assert_eq!(e["code"], "not_joined", "{e}");
    let e = u4
        .call(json!({"type":"presence","ref":"bad","room":"big","limit":0}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = u4
        .call(json!({"type":"join","ref":"badmode","room":"big2","presence":"some"}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
}

#[tokio::test]
async fn a_member_that_joined_for_counts_gets_counts_and_no_diffs() {
    let app = spawn_app().await;
    let mut counter = app.connect("counter").await;
    let joined = counter
        .call(json!({"type":"join","ref":"j","room":"r","presence":"count"}))
        .await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["presence_count"], 1);
    let mut lister = app.connect("lister").await;
    lister.join("r").await;
    let mut others = Vec::new();
    for i in 0..3 {
        let mut c = app.connect(&format!("o{i}")).await;
        c.join("r").await;
        others.push(c);
    }
    // The lister hears the joins as diffs.
    let mut listed = std::collections::BTreeSet::new();
    while listed.len() < 3 {
        let d = lister.next_of("presence").await;
        listed.extend(
            names(&d["joins"])
                .into_iter()
                .filter(|u| u.starts_with('o')),
        );
    }
    // The counter hears counts until it reaches 5 (counter, lister, three others), no diffs.
    let mut last = 0;
    while last != 5 {
        let v = counter.next().await.expect("socket open");
        assert_ne!(
            v["type"], "presence",
            "a counting member gets no diffs: {v}"
        );
        if v["type"] == "presence_count" {
            assert_eq!(v["room"], "r");
            last = v["count"].as_u64().unwrap();
        }
    }
    // Nothing changes, so nothing more is sent.
    counter.assert_quiet(Duration::from_millis(1500), &[]).await;
}

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

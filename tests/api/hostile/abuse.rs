//! Abuse (section 3): ping floods, ten thousand joins, joining and leaving over and over.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn a_ping_flood_is_rate_limited_and_a_bystander_still_gets_its_messages() {
    let (mut s, _) = test_settings().await;
    s.limits.messages_per_second = 50.0;
    s.limits.message_burst = 100;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let mut flood = Duplex::connect(&app, "flooder").await;
    const N: usize = 3000;
    let t = Instant::now();
    let sender = {
        let mut tx = flood.tx;
        tokio::spawn(async move {
            for i in 0..N {
                tx.feed(Message::Text(
                    json!({"type":"ping","ref":format!("p{i}")})
                        .to_string()
                        .into(),
                ))
                .await
                .expect("feed");
            }
            tx.flush().await.expect("flush");
            tx
        })
    };
    // While the flood is on, the bystanders keep talking; each message arrives within WAIT.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        slowest = slowest.max(calm.still_talk().await);
    }
    flood.tx = sender.await.unwrap();
    let (mut pongs, mut limited) = (0usize, 0usize);
    for i in 0..N {
        let r = format!("p{i}");
        let v = flood.reply(&r).await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("{r}: {v}"),
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    eprintln!(
        "{N} pings in {elapsed:.2}s: {pongs} pongs, {limited} rate_limited; slowest bystander round trip {slowest:?}"
    );
    assert_eq!(pongs + limited, N, "every ping answered once");
    assert!(pongs >= 100, "the burst is honoured: {pongs}");
    assert!(
        (pongs as f64) <= 100.0 + 50.0 * elapsed + 5.0,
        "{pongs} pongs in {elapsed:.2}s exceed burst + rate"
    );
    assert!(limited > 0);
    assert!(
        app.metric("chatty_rate_limited_total").await >= limited as f64,
        "rate limiting is counted"
    );
    // The flooder is throttled, not disconnected: once its bucket refills it is served again.
    assert!(flood.is_open(), "the flooder's socket stays open");
    let deadline = Instant::now() + WAIT;
    let mut k = 0;
    loop {
        k += 1;
        let r = format!("again{k}");
        flood.send(&json!({"type":"ping","ref":r})).await;
        if flood.reply(&r).await["type"] == "pong" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flooder was never served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    calm.still_talk().await;
}

#[tokio::test]
async fn ten_thousand_joins_on_one_connection_stop_at_room_limit_and_everything_keeps_working() {
    let app = spawn_app().await;
    let cap = app.settings.limits.rooms_per_connection;
    let mut calm = Bystanders::new(&app).await;
    let mut watch = app.connect("joins-watch").await;
    watch.join("j0").await;
    let mut c = Duplex::connect(&app, "joiner").await;
    const N: usize = 10_000;
    for i in 0..N {
        c.feed(&json!({"type":"join","ref":format!("j{i}"),"room":format!("j{i}")}))
            .await;
    }
    c.flush().await;
    let (mut joined, mut limited) = (0, 0);
    for i in 0..N {
        let v = c.reply(&format!("j{i}")).await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("joined"), _) if i < cap => joined += 1,
            (Some("error"), Some("room_limit")) if i >= cap => limited += 1,
            _ => panic!("join {i} (cap {cap}): {v}"),
        }
    }
    assert_eq!((joined, limited), (cap, N - cap));
    // The connection still works in its rooms; a freed slot can be used again, once.
    assert_eq!(c.send_msg_marker("j0").await, 1);
    assert_eq!(watch.messages("j0", 1).await[0]["cid"], "marker");
    c.send(&json!({"type":"leave","ref":"l","room":"j1"})).await;
    assert_eq!(c.reply("l").await["type"], "left");
    c.send(&json!({"type":"join","ref":"x1","room":"extra"}))
        .await;
    assert_eq!(c.reply("x1").await["type"], "joined");
    c.send(&json!({"type":"join","ref":"x2","room":"extra2"}))
        .await;
    assert_eq!(c.reply("x2").await["code"], "room_limit");
    // Refused joins left no room actor behind (cap + "extra" + the bystanders' room).
    let rooms = app.metric("chatty_actors_alive{kind=\"room\"}").await;
    assert!(rooms <= (cap + 2) as f64, "{rooms} room actors alive");
    calm.still_talk().await;
}

#[tokio::test]
async fn joining_and_leaving_one_room_over_and_over_leaves_one_membership_and_clean_presence() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut watch = app.connect("flap-watch").await;
    watch.join("flap").await;
    let mut f = Duplex::connect(&app, "flapper").await;
    const N: usize = 500;
    for i in 0..N {
        f.feed(&json!({"type":"join","ref":format!("j{i}"),"room":"flap"}))
            .await;
        f.feed(&json!({"type":"leave","ref":format!("l{i}"),"room":"flap"}))
            .await;
    }
    f.feed(&json!({"type":"join","ref":"final","room":"flap"}))
        .await;
    f.flush().await;
    for i in 0..N {
        let v = f.reply(&format!("j{i}")).await;
        assert_eq!(v["type"], "joined", "j{i}: {v}");
        let v = f.reply(&format!("l{i}")).await;
        assert_eq!(v["type"], "left", "l{i}: {v}");
    }
    assert_eq!(f.reply("final").await["type"], "joined");
    // One membership: each message arrives once, in order.
    for k in 1..=3u64 {
        assert_eq!(
            watch.send_msg("flap", &format!("w{k}"), "x").await["seq"],
            k
        );
    }
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let v = f.next_where(|v| v["type"] == "message").await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3], "no duplicate delivery");
    // Presence settles to exactly the two users, then to the watcher alone after a leave.
    let http = reqwest::Client::new();
    let presence = || {
        let req = http
            .get(app.http("/api/v1/rooms/flap/presence"))
            .bearer_auth(app.api_key());
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            let mut users: Vec<String> = v["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["user"].as_str().unwrap().to_string())
                .collect();
            users.sort();
            users
        }
    };
    eventually("presence is the two users", || async {
        presence().await == ["flap-watch", "flapper"]
    })
    .await;
    f.send(&json!({"type":"leave","ref":"bye","room":"flap"}))
        .await;
    assert_eq!(f.reply("bye").await["type"], "left");
    eventually("the flapper left presence", || async {
        presence().await == ["flap-watch"]
    })
    .await;
    f.send(&json!({"type":"send","ref":"s","room":"flap","cid":"s","body":"x"}))
        .await;
    assert_eq!(f.reply("s").await["code"], "not_joined");
    assert!(
        app.metric("chatty_actors_alive{kind=\"room\"}").await <= 2.0,
        "one actor for the room, one for the bystanders'"
    );
    assert_eq!(app.rows("flap").await.len(), 3);
    calm.still_talk().await;
}

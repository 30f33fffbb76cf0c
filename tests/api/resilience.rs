use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_the_room_goes_on() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    let big = format!(
        r#"{{"type":"send","room":"r","cid":"x","body":"{}"}}"#,
        "x".repeat(70_000)
    );
    b.send_raw(Message::Text(big.into())).await;
    assert!(b.next().await.is_none() || b.skip_closed().await);
    assert_eq!(b.closed, Some(1009));
    assert_eq!(a.send_msg("r", "after", "still here").await["type"], "ack");
    assert_eq!(a.messages("r", 1).await[0]["body"], "still here");
}

#[tokio::test]
async fn malformed_frames_get_errors_with_their_ref_and_break_nothing() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    b.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(b.next_of("error").await["code"], "bad_request");
    b.send(json!({"type":"send","ref":"k1","room":"r","cid":"bad cid!","body":"x"}))
        .await;
    let e = b.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("k1"))
    );
    b.send(json!({"type":"fly","ref":"k2"})).await;
    assert_eq!(b.next_of("error").await["code"], "unknown_type");
    b.send(json!({"type":"send","ref":"k3","room":"r","cid":"c","body":"x".repeat(5000)}))
        .await;
    assert_eq!(b.next_of("error").await["code"], "too_large");
    b.send(json!({"type":"send","ref":"k4","room":"r","cid":"c","body":"nul\u{0}"}))
        .await;
    assert_eq!(b.next_of("error").await["code"], "bad_request");
    // A binary frame on a JSON socket is the wrong encoding: an error, not a crash.
    b.send_raw(Message::Binary(vec![0x80].into())).await;
    assert_eq!(b.next_of("error").await["code"], "bad_request");
    // Invalid UTF-8 in a text frame closes with 1007 (the peer library refuses to send it,
    // so write it raw on a fresh socket).
    assert_eq!(
        raw_frame_close_code(&app, &[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).await,
        1007
    );
    // Reserved bits set: protocol error.
    assert_eq!(
        raw_frame_close_code(&app, &[0xf1, 0x80, 0, 0, 0, 0]).await,
        1002
    );
    // Both sockets that behaved still work.
    assert_eq!(b.send_msg("r", "ok", "fine").await["type"], "ack");
    assert_eq!(a.messages("r", 1).await[0]["body"], "fine");
    assert!(app.rows("r").await.len() == 1);
}

/// Open a socket by hand, send `frame` bytes, return the close code the server sends.
async fn raw_frame_close_code(app: &TestApp, frame: &[u8]) -> u16 {
    let mut ws = RawWs::open(app, "raw", None).await;
    ws.write(frame).await;
    ws.close_code().await.0
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_with_4000_while_others_keep_receiving() {
    use futures_util::StreamExt;
    let (mut s, _) = test_settings().await;
    s.limits.outbound_queue = 16;
    let app = spawn_with(s).await;
    let mut good = app.connect("good").await;
    let mut slow = app.connect("slow").await;
    good.join("busy").await;
    slow.join("busy").await;
    // `slow` never reads again. Publish (over HTTP, so no sender socket has to keep up) until
    // the kernel buffers and its queue overflow.
    let body = "y".repeat(4000);
    const N: usize = 2000;
    let mut reader = tokio::spawn(async move {
        let got = good.messages("busy", N).await;
        got.iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    });
    let http = reqwest::Client::new();
    let url = app.http("/api/v1/rooms/busy/messages");
    let key = app.api_key();
    futures_util::stream::iter(0..N)
        .map(|i| {
            let req = http
                .post(&url)
                .bearer_auth(&key)
                .json(&json!({"from":"pub","cid":format!("m{i}"),"body":body}));
            async move { assert_eq!(req.send().await.unwrap().status(), 201) }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let seqs = tokio::time::timeout(Duration::from_secs(60), &mut reader)
        .await
        .expect("the good reader kept receiving")
        .unwrap();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    eventually("slow consumer closed with 4000", || async {
        app.metric("chatty_connections_closed_total{code=\"4000\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(app.metric("chatty_slow_consumer_closes_total").await >= 1.0);
    drop(slow);
}

#[tokio::test]
async fn a_panicking_room_actor_is_restarted_and_its_members_keep_receiving_in_order() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join("r").await;
    b.join("r").await;
    a.send_msg("r", "m1", "before").await;
    let http = reqwest::Client::new();
    let r = http
        .post(app.http("/debug/rooms/r/panic"))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for i in 2..=6 {
        assert_eq!(
            a.send_msg("r", &format!("m{i}"), "after").await["type"],
            "ack"
        );
    }
    let got = b.messages("r", 6).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    eventually("room restart counted", || async {
        app.metric("chatty_actor_restarts_total{kind=\"room\"}")
            .await
            >= 1.0
    })
    .await;
}

#[tokio::test]
async fn a_panicking_writer_is_restarted_and_sends_go_on() {
    let app = spawn_app().await;
    let mut a = app.connect("alice").await;
    a.join("r").await;
    a.send_msg("r", "m1", "before").await;
    let r = reqwest::Client::new()
        .post(app.http("/debug/writer/panic"))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("writer restart counted", || async {
        app.metric("chatty_actor_restarts_total{kind=\"writer\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(a.send_msg("r", "m2", "after").await["seq"], 2);
}

#[tokio::test]
async fn rate_and_room_limits_answer_with_their_codes() {
    let (mut s, _) = test_settings().await;
    s.limits.messages_per_second = 1.0;
    s.limits.message_burst = 5;
    s.limits.rooms_per_connection = 2;
    let app = spawn_with(s).await;
    let mut a = app.connect("alice").await;
    a.join("r1").await;
    a.join("r2").await;
    a.send(json!({"type":"join","ref":"j3","room":"r3"})).await;
    assert_eq!(a.next_of("error").await["code"], "room_limit");
    for i in 0..5 {
        a.send(json!({"type":"ping","ref":format!("p{i}")})).await;
    }
    let e = a.next_of("error").await;
    assert_eq!(e["code"], "rate_limited");
}

/// A TCP proxy in front of PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().push(h);
            }
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn postgres_cut_off_mid_traffic_loses_and_duplicates_nothing_acked() {
    let (mut s, url) = test_settings().await;
    let parsed = reqwest::Url::parse(&url).unwrap();
    let proxy = Proxy::start((
        parsed.host_str().unwrap().to_string(),
        parsed.port().unwrap_or(5432),
    ))
    .await;
    let mut via = parsed.clone();
    via.set_port(Some(proxy.port)).unwrap();
    via.set_host(Some("127.0.0.1")).unwrap();
    s.database.url = chatty::settings::Secret::new(via.to_string());
    s.database.connect_timeout_ms = 500;
    s.writer.retry_max_ms = 1500;
    let app = spawn_with(s).await;
    let mut a = app.connect("alice").await;
    a.join("r").await;

    let mut acked = Vec::new();
    let mut unavailable = 0;
    for i in 0..30 {
        if i == 10 {
            proxy.cut();
        }
        if i == 20 {
            proxy.restore();
        }
        let cid = format!("m{i}");
        let r = a.send_msg("r", &cid, &format!("body {i}")).await;
        match r["type"].as_str() {
            Some("ack") => acked.push((cid, r["seq"].as_i64().unwrap())),
            Some("error") => {
                assert_eq!(r["code"], "unavailable", "{r}");
                unavailable += 1;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(unavailable > 0, "the cut was never noticed");
    // Retrying the refused ones with the same cid after the database returns stores each once.
    for i in 10..20 {
        let cid = format!("m{i}");
        if acked.iter().any(|(c, _)| *c == cid) {
            continue;
        }
        let mut r = a.send_msg("r", &cid, &format!("body {i}")).await;
        for _ in 0..50 {
            if r["type"] == "ack" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            r = a.send_msg("r", &cid, &format!("body {i}")).await;
        }
        assert_eq!(r["type"], "ack", "{r}");
        acked.push((cid, r["seq"].as_i64().unwrap()));
    }
    let rows = app.rows("r").await;
    assert_eq!(rows.len(), 30, "every message stored exactly once");
    for (cid, seq) in &acked {
        assert!(
            rows.iter().any(|r| r.0 == *seq && r.2 == *cid),
            "acked {cid} at {seq} missing"
        );
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "seq stays gap-free");
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_with_4001_after_the_pong_timeout() {
    let (mut s, _) = test_settings().await;
    s.server.ping_interval_ms = 200;
    s.server.pong_timeout_ms = 300;
    let app = spawn_with(s).await;
    let mut ws = RawWs::open(&app, "mute", None).await;
    // One masked ping frame from us ({"type":"ping"} is not needed: any frame counts), then
    // silence: we read what the server sends but never answer its pings.
    ws.write(&frame(true, 0x9, b"")).await;
    let started = std::time::Instant::now();
    let (code, frames) = ws.frames_until_close().await;
    assert_eq!(code, 4001, "frames before the close: {frames:?}");
    // Server pings (empty ones) went out before it gave up.
    assert!(
        frames.iter().any(|(op, p)| *op == 0x9 && p.is_empty()),
        "no ping was sent"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
}

//! Counters follow real traffic: a conversation moves every counter by exactly what happened.

use serde_json::Value;

use super::scrape;
use crate::support::*;

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

fn show(name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// Some series are updated just after the client can observe the effect (a delivery is counted
/// after the frames are queued, a close after the close frame is written): poll until the
/// delta reaches `expected`, then return a scrape on which it must be exactly `expected`.
async fn settled(
    app: &TestApp,
    before: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(app).await;
        let d = delta(before, &now, name, labels);
        if d >= expected || tokio::time::Instant::now() >= deadline {
            assert_eq!(d, expected, "{} moved by {d}", show(name, labels));
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_conversation_moves_every_counter_by_exactly_what_happened() {
    const N: usize = 7;
    const ROOM: &str = "observed";
    let members = ["alice", "bob", "carol"];
    let app = spawn_app().await;
    let start = scrape(&app).await;

    // Three members connect and join.
    let mut clients = Vec::new();
    for u in members {
        let mut c = app.connect(u).await;
        assert_eq!(c.join(ROOM).await["type"], "joined");
        clients.push(c);
    }
    let joined = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&start, &joined, name, labels);
    assert_eq!(d("chatty_connections_opened_total", &[]), 3.0);
    assert_eq!(d("chatty_connections_active", &[]), 3.0);
    assert_eq!(d("chatty_actors_alive", &[("kind", "connection")]), 3.0);
    assert_eq!(d("chatty_actors_alive", &[("kind", "room")]), 1.0);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "join")]
        ),
        3.0
    );
    assert_eq!(d("chatty_connections_closed_total", &[]), 0.0);

    // N sends from one member: each is committed once and fanned out to all three.
    for i in 0..N {
        let ack = clients[0]
            .send_msg(ROOM, &format!("m{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for c in clients.iter_mut() {
        assert_eq!(c.messages(ROOM, N).await.len(), N);
    }
    let n = N as f64;
    let members_n = members.len() as f64;
    // Batches are counted before their acks go out, so this count is final now.
    let batches = delta(
        &joined,
        &scrape(&app).await,
        "chatty_writer_batch_size_count",
        &[],
    );
    assert!(
        (1.0..=n).contains(&batches),
        "{batches} batches for {N} sends"
    );
    settled(&app, &joined, "chatty_deliveries_total", &[], n * members_n).await;
    // One local commit→delivery observation per batch the room takes in.
    let sent = settled(
        &app,
        &joined,
        "chatty_commit_delivery_seconds_count",
        &[("scope", "local")],
        batches,
    )
    .await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&joined, &sent, name, labels);
    assert_eq!(d("chatty_messages_persisted_total", &[]), n);
    assert_eq!(d("chatty_messages_duplicate_total", &[]), 0.0);
    assert_eq!(d("chatty_deliveries_total", &[]), n * members_n);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "send")]
        ),
        n
    );
    assert_eq!(d("chatty_send_ack_seconds_count", &[]), n);
    assert_eq!(
        d("chatty_send_ack_seconds_bucket", &[("le", "+Inf")]),
        n,
        "the +Inf bucket counts every observation"
    );
    assert!(d("chatty_send_ack_seconds_sum", &[]) > 0.0);
    // Group commit: N distinct messages in between 1 and N batches.
    assert_eq!(d("chatty_writer_batch_size_sum", &[]), n);
    assert_eq!(d("chatty_writer_batch_size_count", &[]), batches);
    assert_eq!(
        d("chatty_writer_flush_duration_seconds_count", &[]),
        batches,
        "one timed flush per committed batch"
    );
    assert_eq!(
        d(
            "chatty_commit_delivery_seconds_count",
            &[("scope", "remote")]
        ),
        0.0,
        "a single node has no remote deliveries"
    );
    assert_eq!(d("chatty_writer_unavailable_total", &[]), 0.0);
    assert_eq!(d("chatty_writer_flush_errors_total", &[]), 0.0);
    assert_eq!(d("chatty_connections_opened_total", &[]), 0.0);

    // Every member got N message frames and the sender N acks besides.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = delta(
            &joined,
            &scrape(&app).await,
            "chatty_frames_out_total",
            &[("encoding", "json")],
        );
        if out >= n * members_n + n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chatty_frames_out_total{{encoding=\"json\"}} moved by only {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A resent cid is answered with the original seq and counted as a duplicate only.
    let before = scrape(&app).await;
    let again = clients[0].send_msg(ROOM, "m0", "hello again").await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(again["seq"], 1);
    let after = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("chatty_messages_duplicate_total", &[]), 1.0);
    assert_eq!(d("chatty_messages_persisted_total", &[]), 0.0);
    assert_eq!(d("chatty_deliveries_total", &[]), 0.0);
    assert_eq!(d("chatty_send_ack_seconds_count", &[]), 1.0);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "send")]
        ),
        1.0
    );

    // A handshake with a bad token is refused and counted under its reason, and opens nothing.
    let before = scrape(&app).await;
    assert_eq!(
        handshake_status(&app.ws_url(), &[("authorization", "Bearer not.a.jwt")]).await,
        401
    );
    let after = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d(
            "chatty_handshake_rejections_total",
            &[("reason", "token_invalid")]
        ),
        1.0
    );
    assert_eq!(d("chatty_handshake_rejections_total", &[]), 1.0);
    assert_eq!(d("chatty_connections_opened_total", &[]), 0.0);
    assert_eq!(d("chatty_connections_active", &[]), 0.0);

    // An HTTP API request is counted under its route template, never the raw path.
    let before = scrape(&app).await;
    let http = reqwest::Client::new();
    let r = http
        .get(app.http(&format!("/api/v1/rooms/{ROOM}/messages?limit=100")))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(N));
    let after = scrape(&app).await;
    let route = [("route", "/api/v1/rooms/{room}/messages")];
    assert_eq!(
        delta(
            &before,
            &after,
            "chatty_http_requests_total",
            &[route[0], ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "chatty_http_requests_total", &[]),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "chatty_http_request_duration_seconds_count",
            &route
        ),
        1.0
    );
    let routes = after.label_values("chatty_http_requests_total", "route");
    assert!(
        routes.iter().all(|r| !r.contains(ROOM)),
        "a raw path leaked into the route label: {routes:?}"
    );

    // A client that leaves: one close with 1000, one connection fewer.
    let before = scrape(&app).await;
    clients.pop().unwrap().close().await;
    let after = settled(
        &app,
        &before,
        "chatty_connections_closed_total",
        &[("code", "1000")],
        1.0,
    )
    .await;
    assert_eq!(
        delta(&before, &after, "chatty_connections_closed_total", &[]),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "chatty_connections_active", &[]),
        -1.0
    );
    assert_eq!(after.sum("chatty_connections_active", &[]), 2.0);
}

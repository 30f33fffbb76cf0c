//! Webhooks (v1.1) on one node against real PostgreSQL and a real HTTP receiver in the test
//! process. The cluster's (one dispatcher, every node SIGKILLed) are in `cluster.rs`.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const SECRET: &str = "whsec-test-0123456789";

async fn app_with_hooks(url: &str, tweak: impl FnOnce(&mut chatty::Settings)) -> TestApp {
    let (mut s, _) = test_settings().await;
    s.webhooks.url = url.to_owned();
    s.webhooks.secret = chatty::settings::Secret::new(SECRET);
    s.webhooks.retry_base_ms = 20;
    s.webhooks.retry_max_ms = 100;
    s.webhooks.poll_ms = 20;
    s.webhooks.timeout_ms = 2000;
    tweak(&mut s);
    spawn_with(s).await
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_each_event_once_in_commit_order_per_room_and_signed() {
    let rx = Receiver::start(Mode::FailFirst(3)).await;
    let app = app_with_hooks(&rx.url, |_| {}).await;
    app.private_room("wh-a", &["ann", "bob", "cal"]).await;
    app.private_room("wh-b", &["bob", "dan"]).await;
    // Ann is online (so never named), Bob sends (never named), Cal and Dan are offline.
    let _ann = app.connect("ann").await;
    let mut bob = app.connect("bob").await;
    bob.join("wh-a").await;
    bob.join("wh-b").await;
    for i in 1..=6 {
        bob.send_msg("wh-a", &format!("a{i}"), "hi").await;
        if i % 2 == 0 {
            bob.send_msg("wh-b", &format!("b{i}"), "hi").await;
        }
    }
    // A public room's messages make no event.
    bob.join("wh-public").await;
    bob.send_msg("wh-public", "p1", "hi all").await;
    eventually("all nine events are accepted", || async {
        rx.accepted().len() == 9
    })
    .await;
    let hits = rx.hits();
    assert_commit_order_per_room(&hits);
    let accepted = rx.accepted();
    let seqs = |room: &str| -> Vec<u64> {
        accepted
            .iter()
            .filter(|e| e["room"] == room)
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs("wh-a"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs("wh-b"), [1, 2, 3]);
    for e in &accepted {
        assert_eq!(e["type"], "message.offline", "{e}");
        assert_eq!(e["from"], "bob", "{e}");
        assert!(e["ts"].as_i64().unwrap() > 0, "{e}");
        assert!(e.get("body").is_none(), "{e}");
        let want = if e["room"] == "wh-a" { "cal" } else { "dan" };
        assert_eq!(e["users"], json!([want]), "{e}");
    }
    // Each event was tried four times (three failures, then accepted) and every attempt carried
    // a valid signature over its exact bytes, with the event's id in the header too.
    assert_eq!(hits.len(), 9 * 4);
    for h in &hits {
        assert!(verify_signature(SECRET, &h.signature, &h.body), "{h:?}");
        assert!(!verify_signature(
            "whsec-wrong-0123456789",
            &h.signature,
            &h.body
        ));
        let mut tampered = h.body.to_vec();
        tampered.push(b' ');
        assert!(!verify_signature(SECRET, &h.signature, &tampered));
        assert_eq!(h.event_id, h.json["id"].as_str().unwrap());
    }
    // Delivered rows leave the outbox (the receiver saw the last answer before the dispatcher
    // recorded it, hence the wait).
    eventually("the outbox is empty and every outcome counted", || async {
        let left: i64 = sqlx::query_scalar("select count(*) from webhook_events")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let ok = app
            .metric("chatty_webhook_deliveries_total{result=\"ok\"}")
            .await;
        let failed = app
            .metric("chatty_webhook_deliveries_total{result=\"failed\"}")
            .await;
        (left, ok, failed) == (0, 9.0, 27.0)
    })
    .await;
}

#[tokio::test]
async fn users_offline_after_the_grace_make_one_event_and_online_members_none() {
    let rx = Receiver::start(Mode::FailFirst(0)).await;
    // A grace long enough for a reconnect on a loaded machine; the quiet checks wait for two.
    let grace = Duration::from_millis(1500);
    let app = app_with_hooks(&rx.url, |s| s.presence.grace_ms = 1500).await;
    app.private_room("wh-dm", &["ann", "bob"]).await;
    let ann = app.connect("ann").await;
    let ann2 = app.connect_msgpack("ann").await;
    let mut bob = app.connect("bob").await;
    bob.join("wh-dm").await;
    // Both members online: the event is recorded with the message, then skipped.
    bob.send_msg("wh-dm", "m1", "both here").await;
    eventually("the event is skipped", || async {
        app.metric("chatty_webhook_deliveries_total{result=\"skipped\"}")
            .await
            == 1.0
    })
    .await;
    // One of Ann's two sockets goes: she is still online.
    ann2.close().await;
    tokio::time::sleep(grace * 2).await;
    assert!(rx.hits().is_empty(), "{:?}", rx.hits());
    // Her last socket goes and she does not come back: one user.offline.
    ann.close().await;
    eventually("user.offline arrives", || async {
        rx.accepted().len() == 1
    })
    .await;
    let e = &rx.accepted()[0];
    assert_eq!(
        (e["type"].as_str(), e["user"].as_str()),
        (Some("user.offline"), Some("ann"))
    );
    // Now she is offline: a message names her.
    bob.send_msg("wh-dm", "m2", "you there?").await;
    eventually("message.offline names ann", || async {
        rx.accepted().len() == 2
    })
    .await;
    let e = &rx.accepted()[1];
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64(), &e["users"]),
        (Some("message.offline"), Some(2), &json!(["ann"]))
    );
    // A user whose only socket closes and reopens within the grace makes no event; when the
    // new one closes for good, one.
    let cal = app.connect("cal").await;
    cal.close().await;
    let cal = app.connect("cal").await;
    tokio::time::sleep(grace * 2).await;
    assert_eq!(rx.accepted().len(), 2, "{:?}", rx.accepted());
    cal.close().await;
    eventually("cal's user.offline", || async { rx.accepted().len() == 3 }).await;
    assert_eq!(rx.accepted()[2]["user"], "cal");
    tokio::time::sleep(grace).await;
    assert_eq!(
        rx.hits().len(),
        3,
        "one event per departure: {:?}",
        rx.hits()
    );
}

#[tokio::test]
async fn a_receiver_that_times_out_is_retried_and_a_dead_letter_lets_the_room_move_on() {
    let rx = Receiver::start(Mode::Hang).await;
    let app = app_with_hooks(&rx.url, |s| {
        s.webhooks.timeout_ms = 200;
        s.webhooks.dead_after_s = 1;
    })
    .await;
    app.private_room("wh-slow", &["bob", "cal"]).await;
    let mut bob = app.connect("bob").await;
    bob.join("wh-slow").await;
    // The send is acked while the receiver hangs: the outbox is not on the send path.
    assert_eq!(bob.send_msg("wh-slow", "s1", "hello").await["seq"], 1);
    eventually("the event fails by timeout, then is dead-lettered", || async {
        let row: Option<(String, Option<String>, i32)> = sqlx::query_as(
            "select state, last_error, attempts from webhook_events
              where room_id = 'wh-slow' and seq = 1",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        matches!(row, Some((state, Some(err), n)) if state == "dead" && err == "timed out" && n >= 2)
    })
    .await;
    assert!(rx.hits().iter().all(|h| h.json["seq"] == 1));
    // The dead event no longer holds the room back.
    rx.set_mode(Mode::FailFirst(0));
    for i in 2..=20 {
        assert_eq!(
            bob.send_msg("wh-slow", &format!("s{i}"), "hello").await["seq"],
            i
        );
    }
    eventually("the rest of the room is delivered", || async {
        rx.accepted().len() == 19
    })
    .await;
    assert_eq!(rx.accepted_seqs(), (2..=20).collect::<Vec<_>>());
    assert_eq!(
        app.metric("chatty_webhook_deliveries_total{result=\"dead\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn with_webhooks_off_nothing_is_written_to_the_outbox() {
    let app = spawn_app().await;
    app.private_room("wh-off", &["bob", "cal"]).await;
    let mut bob = app.connect("bob").await;
    bob.join("wh-off").await;
    bob.send_msg("wh-off", "o1", "hi").await;
    bob.close().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n: i64 = sqlx::query_scalar("select count(*) from webhook_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_row_that_cannot_be_read_is_dead_lettered_and_holds_nothing_back() {
    let rx = Receiver::start(Mode::FailFirst(0)).await;
    let app = app_with_hooks(&rx.url, |_| {}).await;
    // A user id no Chatty would write (a control character): as if written by a future or
    // broken binary.
    sqlx::query(
        "insert into webhook_events (okey, kind, user_id, ts, created_at, next_at)
         values ('u:bad', 'user.offline', 'bad' || chr(7), 1, 1, 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.private_room("wh-next", &["bob", "cal"]).await;
    let mut bob = app.connect("bob").await;
    bob.join("wh-next").await;
    bob.send_msg("wh-next", "n1", "hi").await;
    eventually("the readable event is delivered", || async {
        rx.accepted().len() == 1
    })
    .await;
    eventually("the unreadable one is dead", || async {
        let state: String =
            sqlx::query_scalar("select state from webhook_events where okey = 'u:bad'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        state == "dead"
    })
    .await;
    assert_eq!(rx.accepted()[0]["room"], "wh-next");
}

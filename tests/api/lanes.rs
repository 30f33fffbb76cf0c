//! The Writer's lanes against the real database: a sender's order within a room, rooms on
//! different lanes committing at the same time, and a lane whose connection dies.

use std::collections::HashMap;
use std::time::Duration;

use chatty_actors::{writer_lane, RoomId};
use serde_json::{json, Value};

use crate::support::*;

const LANES: usize = 4;

/// A room that the Writer puts on another lane than `room`.
fn room_on_another_lane(room: &str, prefix: &str) -> String {
    let lane = writer_lane(&RoomId::parse(room).unwrap(), LANES);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| writer_lane(&RoomId::parse(r).unwrap(), LANES) != lane)
        .unwrap()
}

#[tokio::test]
async fn a_thousand_quick_sends_of_one_sender_get_increasing_seqs_with_several_lanes() {
    let (mut s, _) = test_settings().await;
    s.writer.lanes = LANES;
    // The sender reads nothing until it has sent everything: room for its own echoes.
    s.limits.outbound_queue = 8192;
    let app = spawn_with(s).await;
    // Traffic in other rooms keeps every lane busy meanwhile.
    let mut others = Vec::new();
    for i in 0..8 {
        let mut o = app.connect(&format!("other{i}")).await;
        o.join(&format!("busy-{i}")).await;
        others.push(o);
    }
    let mut a = app.connect("alice").await;
    a.join("one").await;
    for i in 0..1000 {
        a.send(json!({"type":"send","ref":format!("c{i}"),"room":"one","cid":format!("c{i}"),"body":"x"}))
            .await;
        if i % 10 == 0 {
            for (k, o) in others.iter_mut().enumerate() {
                o.send(json!({"type":"send","room":format!("busy-{k}"),"cid":format!("o{i}"),"body":"y"}))
                    .await;
            }
        }
    }
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    let mut order = Vec::new();
    while seq_of.len() < 1000 {
        let v = a.next().await.expect("the sender's socket stays open");
        match v["type"].as_str() {
            Some("ack") => {
                let cid = v["cid"].as_str().unwrap().to_string();
                order.push(cid.clone());
                seq_of.insert(cid, v["seq"].as_u64().unwrap());
            }
            Some("error") => panic!("send refused: {v}"),
            _ => {}
        }
    }
    for i in 0..1000u64 {
        assert_eq!(
            seq_of[&format!("c{i}")],
            i + 1,
            "c{i} took seq out of send order"
        );
    }
    // Acks come back in the order the sends went out.
    assert_eq!(
        order,
        (0..1000).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn rooms_on_different_lanes_commit_while_one_lane_waits() {
    let (mut s, _) = test_settings().await;
    s.writer.lanes = LANES;
    let app = spawn_with(s).await;
    let held = "held";
    let free = room_on_another_lane(held, "free");
    let mut a = app.connect("alice").await;
    let mut b = app.connect("bob").await;
    a.join(held).await;
    b.join(&free).await;
    assert_eq!(a.send_msg(held, "first", "x").await["seq"], 1);

    // Lock the held room's counter row: its lane's next batch waits on it.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("select last_seq from rooms where id = $1 for update")
        .bind(held)
        .execute(&mut *lock)
        .await
        .unwrap();
    a.send(json!({"type":"send","ref":"blocked","room":held,"cid":"blocked","body":"x"}))
        .await;
    // Another lane commits meanwhile.
    for i in 0..5 {
        let ack = b.send_msg(&free, &format!("f{i}"), "y").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], i + 1);
    }
    // The held lane has still acked nothing.
    let early = tokio::time::timeout(Duration::from_millis(300), a.send_msg_wait_ack("blocked"));
    assert!(
        early.await.is_err(),
        "the held room's send committed through a lock"
    );
    lock.rollback().await.unwrap();
    let ack = a.send_msg_wait_ack("blocked").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 2);
}

#[tokio::test]
async fn a_lane_whose_database_connection_dies_loses_nothing_acknowledged() {
    let (mut s, _) = test_settings().await;
    s.writer.lanes = LANES;
    s.writer.retry_max_ms = 30_000;
    let app = spawn_with(s).await;
    const ROOMS: usize = 4;
    const EACH: usize = 150;
    let mut tasks = Vec::new();
    for r in 0..ROOMS {
        let mut c = app.connect(&format!("sender{r}")).await;
        let room = format!("dying-{r}");
        c.join(&room).await;
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64)> = Vec::new();
            let mut unavailable = 0;
            for i in 0..EACH {
                let cid = format!("m{i}");
                let v: Value = c.send_msg(&room, &cid, "x").await;
                match v["type"].as_str() {
                    Some("ack") => acked.push((cid, v["seq"].as_i64().unwrap())),
                    _ => {
                        assert_eq!(v["code"], "unavailable", "{v}");
                        unavailable += 1;
                    }
                }
            }
            (room, acked, unavailable)
        }));
    }
    // Meanwhile, kill every other backend of the database a few times: the lanes' connections
    // die mid-stream (and so do idle ones of both pools).
    let mut killed = 0i64;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n: i64 = sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        killed += n;
    }
    assert!(killed > 0, "no backend was killed: the test proved nothing");
    for t in tasks {
        let (room, acked, unavailable) = t.await.unwrap();
        assert_eq!(acked.len() + unavailable, EACH);
        let rows = app.rows(&room).await;
        // Gap-free from 1, and every acked message stored exactly once at its acked seq.
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=rows.len() as i64).collect::<Vec<_>>(),
            "{room}: gap"
        );
        for (cid, seq) in &acked {
            let stored: Vec<_> = rows.iter().filter(|r| r.2 == *cid).collect();
            assert_eq!(
                stored.len(),
                1,
                "{room}/{cid} stored {} times",
                stored.len()
            );
            assert_eq!(stored[0].0, *seq, "{room}/{cid} acked at {seq}");
        }
    }
}

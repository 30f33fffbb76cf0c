//! Hostile frames on an authenticated socket (section 2), continued: bursts of sends (one cid
//! copied fifty times, 11,000 sends at once).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn fifty_copies_of_one_cid_in_one_burst_all_ack_the_same_seq_and_store_one_row() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut a = Duplex::connect(&app, "dup-a").await;
    let mut b = Duplex::connect(&app, "dup-b").await;
    let mut watch = app.connect("dup-watch").await;
    watch.join("dup").await;
    for d in [&mut a, &mut b] {
        d.send(&json!({"type":"join","ref":"j","room":"dup"})).await;
        assert_eq!(d.reply("j").await["type"], "joined");
    }
    // Both users burst the same cid 50 times without waiting, bodies differing.
    for i in 0..50 {
        for d in [&mut a, &mut b] {
            d.feed(&json!({"type":"send","ref":format!("d{i}"),"room":"dup","cid":"same","body":format!("copy {i}")}))
                .await;
        }
    }
    a.flush().await;
    b.flush().await;
    let mut seqs = Vec::new();
    for (who, d) in [("a", &mut a), ("b", &mut b)] {
        let mut acks = Vec::new();
        for i in 0..50 {
            let v = d.reply(&format!("d{i}")).await;
            assert_eq!(v["type"], "ack", "{who} d{i}: {v}");
            acks.push((v["seq"].as_u64().unwrap(), v["ts"].as_u64().unwrap()));
        }
        assert!(
            acks.iter().all(|x| *x == acks[0]),
            "{who}: every ack carries the original seq and ts: {acks:?}"
        );
        seqs.push(acks[0].0);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2], "one seq per user");
    // Exactly two broadcasts, then the marker.
    assert_eq!(a.send_msg_marker("dup").await, 3);
    let got = watch.messages("dup", 3).await;
    let cids: Vec<_> = got.iter().map(|m| m["cid"].as_str().unwrap()).collect();
    assert_eq!(cids, vec!["same", "same", "marker"]);
    let rows = app.rows("dup").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for m in &got[..2] {
        let row = rows
            .iter()
            .find(|r| r.0 == m["seq"].as_i64().unwrap())
            .unwrap();
        assert_eq!(
            row.3,
            m["body"].as_str().unwrap(),
            "stored body is the one broadcast"
        );
    }
    calm.still_talk().await;
}

/// 11,000 sends in one burst from 10 sockets over 4 rooms: more rows than one statement could
/// bind at six parameters per row (65,535 / 6 = 10,922). Settings: `writer.batch_max` is
/// raised to 16,384 (above the 8,192 that settings validation allows, so one flush can really
/// take them all) and `writer.lanes` set to 1 (so the four rooms pile up behind one lane, and
/// its whole queue share is the default 20,000); the `messages` table is locked for a moment so the sends pile up
/// behind one blocked flush; `limits.outbound_queue` is raised to 65,536 so the test's own
/// readers cannot become slow consumers; the rate limit is the harness's 100,000/s and
/// `limits.writer_queue` stays at its default 20,000.
#[tokio::test]
async fn eleven_thousand_sends_in_one_burst_are_all_acked_and_stored_exactly_once() {
    const SENDERS: usize = 10;
    const EACH: usize = 1100;
    const ROOMS: usize = 4;
    let (mut s, _) = test_settings().await;
    s.writer.batch_max = 16_384;
    s.writer.lanes = 1;
    s.writer.retry_max_ms = 60_000;
    s.limits.outbound_queue = 65_536;
    s.limits.writer_queue = 20_000;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let room = |i: usize| format!("burst-{}", i % ROOMS);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut d = Duplex::connect(&app, &format!("burst{i}")).await;
        d.send(&json!({"type":"join","ref":"j","room":room(i)}))
            .await;
        assert_eq!(d.reply("j").await["type"], "joined");
        senders.push(d);
    }
    let mut watchers = Vec::new();
    for r in 0..ROOMS {
        let mut d = Duplex::connect(&app, &format!("burst-watch{r}")).await;
        d.send(&json!({"type":"join","ref":"j","room":room(r)}))
            .await;
        assert_eq!(d.reply("j").await["type"], "joined");
        watchers.push(d);
    }

    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("lock table messages in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let t = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            let room = room(i);
            tokio::spawn(async move {
                for k in 0..EACH {
                    let cid = format!("b{i}-{k}");
                    d.feed(&json!({"type":"send","ref":cid,"room":room,"cid":cid,"body":format!("burst {i} {k}")}))
                        .await;
                }
                d.flush().await;
                let mut acks = 0;
                while acks < EACH {
                    let v = d.recv().await;
                    match v["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("error") => panic!("sender {i}: {v}"),
                        _ => {}
                    }
                }
                acks
            })
        })
        .collect();
    // Hold the lock until every send has been read by the server (at most 4 s, well inside
    // the store's 5 s call timeout), so they queue behind one blocked flush.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(4) {
        let m = app.metrics().await;
        if metric_sum(&m, "chatty_frames_in_total", &[("type", "send")]) >= (SENDERS * EACH) as f64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.rollback().await.unwrap();
    for (i, task) in tasks.into_iter().enumerate() {
        let acks = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap_or_else(|_| panic!("sender {i} not fully acked within 60 s"))
            .unwrap();
        assert_eq!(acks, EACH);
    }
    let took = t.elapsed();
    for (r, w) in watchers.iter_mut().enumerate() {
        let n = (0..SENDERS).filter(|i| i % ROOMS == r).count() * EACH;
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let v = w.recv().await;
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(
            seqs,
            (1..=n as u64).collect::<Vec<_>>(),
            "room {r}: one gap-free order"
        );
    }
    assert_eq!(message_count(&app).await, (SENDERS * EACH) as i64);
    let per_room: Vec<(String, i64, i64)> = sqlx::query_as(
        "select room_id, count(*), max(seq) from messages where room_id like 'burst-%' group by room_id order by room_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (room, count, max) in &per_room {
        assert_eq!(count, max, "{room}: seqs are 1..=count");
    }
    let m = app.metrics().await;
    let batches = metric_sum(&m, "chatty_writer_batch_size_count", &[]);
    let small = metric_sum(&m, "chatty_writer_batch_size_bucket", &[("le", "4096")]);
    eprintln!(
        "{} sends acked in {took:?}; {batches} flushes, {} above 4096 rows",
        SENDERS * EACH,
        batches - small
    );
    assert!(
        batches - small >= 1.0,
        "no flush above 4096 rows: the burst never formed one big batch"
    );
    calm.still_talk().await;
}

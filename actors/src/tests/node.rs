//! Whole nodes over the in-memory ports, driven like the edge drives them: commands into a
//! connection, frames out of its outbox.

use std::sync::Arc;

use super::{config, message_seqs, new_msg, of_type, room, seed, settle, TestNode};
use crate::ports::BusEvent;
use crate::protocol::Command;
use crate::testkit::Op;

#[tokio::test(start_paused = true)]
async fn a_send_is_acked_to_its_sender_and_delivered_to_every_member_in_order() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    ann.frames();
    bob.frames();
    for i in 0..5 {
        ann.send("r", &format!("c{i}")).await;
    }
    settle().await;
    let got = ann.frames();
    let acks: Vec<(String, u64)> = of_type(&got, "ack")
        .iter()
        .map(|f| {
            (
                f["cid"].as_str().unwrap().to_string(),
                f["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = (0..5).map(|i| (format!("c{i}"), i + 1)).collect();
    assert_eq!(acks, want);
    assert_eq!(message_seqs(&got), [1, 2, 3, 4, 5]);
    assert_eq!(message_seqs(&bob.frames()), [1, 2, 3, 4, 5]);
    assert_eq!(n.bus.published_seqs(&room("r")), [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_send_the_store_cannot_take_is_answered_unavailable_and_reaches_no_one() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    ann.frames();
    bob.frames();
    n.store.fail_next(Op::Append, usize::MAX);
    ann.send("r", "lost").await;
    // Past the Writer's retry budget.
    tokio::time::sleep(config().writer_retry_max * 2).await;
    let got = ann.frames();
    let errors = of_type(&got, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "unavailable");
    assert_eq!(errors[0]["ref"], "lost");
    assert!(of_type(&got, "ack").is_empty());
    assert!(message_seqs(&bob.frames()).is_empty());
    // The client retries with the same cid once the store is back.
    n.store.fail_next(Op::Append, 0);
    ann.send("r", "lost").await;
    settle().await;
    assert_eq!(of_type(&ann.frames(), "ack")[0]["seq"], 1);
    assert_eq!(message_seqs(&bob.frames()), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_resent_cid_is_acked_with_its_first_seq_and_delivered_once() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    ann.send("r", "once").await;
    settle().await;
    ann.send("r", "once").await;
    ann.send("r", "twice").await;
    settle().await;
    let acks: Vec<u64> = of_type(&ann.frames(), "ack")
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(acks, [1, 1, 2]);
    assert_eq!(message_seqs(&bob.frames()), [1, 2]);
    assert_eq!(n.store.messages(&room("r")).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn events_from_other_nodes_arrive_through_the_bus_and_a_dropped_one_is_filled() {
    let c = config();
    let n = TestNode::start(c.clone()).await;
    let mut ann = n.connect("ann").await;
    ann.join("r", None).await;
    assert_eq!(n.bus.subscriptions(), [(room("r"), true)]);
    // Another node commits 1..3 and publishes 1 and 3; the event of 2 is lost.
    let m = seed(&n.store, "r", 3);
    n.bus.inject(BusEvent::Messages(Arc::from(&m[0..1])));
    n.bus.inject(BusEvent::Messages(Arc::from(&m[2..3])));
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1]);
    tokio::time::sleep(c.gap_wait * 2).await;
    assert_eq!(message_seqs(&ann.frames()), [2, 3]);
    // A resync from the bus reads back what came with no event at all.
    n.store.commit(&[new_msg("r", "zed", "quiet")]);
    n.bus.inject(BusEvent::Resync { room: room("r") });
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [4]);
}

#[tokio::test(start_paused = true)]
async fn a_rejoin_with_since_gets_exactly_what_was_missed() {
    let n = TestNode::start(config()).await;
    let ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    ann.send("r", "a1").await;
    settle().await;
    // bob's socket drops; ann keeps talking; bob comes back with the last seq he saw.
    let seen = *message_seqs(&bob.frames()).last().unwrap();
    bob.conn.handle.stop();
    settle().await;
    for i in 2..5 {
        ann.send("r", &format!("a{i}")).await;
    }
    settle().await;
    let mut bob = n.connect("bob").await;
    bob.join("r", Some(seen)).await;
    ann.send("r", "a5").await;
    settle().await;
    assert_eq!(message_seqs(&bob.frames()), [2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_join_the_store_cannot_check_is_answered_unavailable() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    n.store.fail_next(Op::JoinInfo, 1);
    ann.join("r", None).await;
    let got = ann.frames();
    assert_eq!(of_type(&got, "error")[0]["code"], "unavailable");
    assert!(of_type(&got, "joined").is_empty());
    assert_eq!(n.node.room_count(), 0);
    ann.command(Command::Ping { r#ref: None }).await;
    ann.join("r", None).await;
    assert_eq!(of_type(&ann.frames(), "joined").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn history_pages_come_oldest_first_and_say_whether_older_ones_exist() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    seed(&n.store, "r", 5);
    let page = |before, limit| Command::History {
        r#ref: None,
        room: room("r"),
        before,
        limit,
    };
    ann.command(page(None, 2)).await;
    ann.command(page(Some(4), 10)).await;
    settle().await;
    let got = ann.frames();
    let pages: Vec<(Vec<u64>, bool)> = of_type(&got, "history")
        .iter()
        .map(|f| {
            let seqs = f["messages"].as_array().unwrap().iter();
            let seqs = seqs.map(|m| m["seq"].as_u64().unwrap()).collect();
            (seqs, f["more"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(pages, [(vec![4, 5], true), (vec![1, 2, 3], false)]);
}

#[tokio::test(start_paused = true)]
async fn a_read_marker_only_moves_forward_and_reaches_the_users_other_sockets() {
    let n = TestNode::start(config()).await;
    let mut phone = n.connect("ann").await;
    let mut laptop = n.connect("ann").await;
    phone.join("r", None).await;
    laptop.join("r", None).await;
    seed(&n.store, "r", 3);
    for seq in [2, 1, 99] {
        let read = Command::Read {
            r#ref: None,
            room: room("r"),
            seq,
        };
        phone.command(read).await;
    }
    settle().await;
    let marks = |frames: &[serde_json::Value]| -> Vec<u64> {
        let reads = of_type(frames, "read");
        reads.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(
        marks(&phone.frames()),
        [2, 2, 3],
        "never back, never past the head"
    );
    assert_eq!(marks(&laptop.frames()), [2, 2, 3]);
    let published = n.bus.published();
    let reads = published
        .iter()
        .filter(|e| matches!(e, BusEvent::Read { .. }));
    assert_eq!(reads.count(), 3, "other nodes hear of it too");
}

#[tokio::test(start_paused = true)]
async fn a_private_room_admits_its_members_only() {
    use crate::ports::MessageStore;
    let n = TestNode::start(config()).await;
    n.store.set_private(&room("p"), true).await.unwrap();
    let mut bob = n.connect("bob").await;
    bob.join("p", None).await;
    let got = bob.frames();
    assert_eq!(of_type(&got, "error")[0]["code"], "forbidden");
    assert_eq!(n.node.room_count(), 0);
    let member = super::user("bob");
    n.store.set_member(&room("p"), &member, None).await.unwrap();
    bob.join("p", None).await;
    assert_eq!(of_type(&bob.frames(), "joined")[0]["role"], "member");
}

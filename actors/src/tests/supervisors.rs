//! The supervisors' decisions (node.rs, rooms.rs, connections.rs, writer.rs), each provoked
//! on purpose.

use std::sync::Arc;
use std::time::Duration;

use super::{config, message_seqs, of_type, room, settle, TestNode};
use crate::outbox::close;
use crate::protocol::Command;
use crate::testkit::{MemPresence, MemStore, Op};

#[tokio::test(start_paused = true)]
async fn the_node_restarts_a_panicked_writer_and_sends_are_acked_again() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    ann.join("r", None).await;
    assert!(n.node.inject_writer_panic());
    settle().await;
    assert_eq!(n.restarts("writer"), 1);
    // The handle points at the new Writer: it can be reached (and failed) again.
    assert!(n.node.inject_writer_panic());
    settle().await;
    assert_eq!(n.restarts("writer"), 2);
    ann.send("r", "after").await;
    settle().await;
    let got = ann.frames();
    assert_eq!(of_type(&got, "ack")[0]["seq"], 1);
    assert_eq!(message_seqs(&got), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_writer_lane_that_dies_fails_the_writer_and_the_node_restarts_it() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    ann.join("r", None).await;
    ann.frames();
    n.store.panic_next(Op::Append, 1);
    ann.send("r", "doomed").await;
    settle().await;
    // The send in the dying lane is answered, never dropped.
    assert_eq!(of_type(&ann.frames(), "error")[0]["code"], "unavailable");
    // The Writer notices on its next check (once a second) and fails; the node restarts it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(n.restarts("writer"), 1);
    ann.send("r", "doomed").await;
    settle().await;
    assert_eq!(of_type(&ann.frames(), "ack")[0]["seq"], 1);
}

#[tokio::test(start_paused = true)]
async fn the_node_restarts_a_failed_presence_keeper_and_repoints_its_handle() {
    let presence = Arc::new(MemPresence::default());
    let n = TestNode::start_with(config(), MemStore::new(), Some(presence.clone())).await;
    let ann = n.connect("ann").await;
    ann.join("r", None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    presence.panic_next_lists(1);
    assert!(
        n.node.presence(&room("r")).await.is_err(),
        "the keeper died"
    );
    settle().await;
    assert_eq!(n.restarts("presence"), 1);
    let list = n
        .node
        .presence(&room("r"))
        .await
        .expect("a new keeper answers");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].user.as_str(), "ann");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_presence_keeper_keeps_beating_with_this_nodes_entries() {
    let c = config();
    let presence = Arc::new(MemPresence::default());
    let n = TestNode::start_with(c.clone(), MemStore::new(), Some(presence.clone())).await;
    let ann = n.connect("ann").await;
    ann.join("r", None).await;
    tokio::time::sleep(c.presence_heartbeat + Duration::from_millis(100)).await;
    let last = |p: &MemPresence| p.beats().last().cloned().unwrap_or_default();
    assert_eq!(last(&presence).len(), 1, "the beat sees ann's entry");
    presence.panic_next_lists(1);
    let _ = n.node.presence(&room("r")).await;
    settle().await;
    assert_eq!(n.restarts("presence"), 1);
    tokio::time::sleep(c.presence_heartbeat * 2).await;
    assert_eq!(
        last(&presence).len(),
        1,
        "ann is still here: a rejoin would write her entry"
    );
}

#[tokio::test(start_paused = true)]
async fn the_room_supervisor_restarts_a_panicked_room_and_its_members_stay() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    assert!(n.node.inject_room_panic(&room("r")));
    settle().await;
    assert_eq!(n.restarts("room"), 1);
    assert_eq!(n.node.room_count(), 1);
    ann.send("r", "still-here").await;
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1]);
    assert_eq!(message_seqs(&bob.frames()), [1]);
    assert_eq!((ann.close_code(), bob.close_code()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_room_that_fails_again_after_a_restart_is_restarted_again() {
    // rooms.rs has no restart limit: every failure of the current actor restarts it.
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    ann.join("r", None).await;
    for i in 1..=3 {
        assert!(n.node.inject_room_panic(&room("r")));
        settle().await;
        assert_eq!(n.restarts("room"), i);
    }
    ann.send("r", "m").await;
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connection_is_closed_with_1011_and_no_other_is_touched() {
    let n = TestNode::start(config()).await;
    let mut ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    bob.join("r", None).await;
    bob.frames();
    // A bug in the store's join check makes ann's actor panic.
    n.store.panic_next(Op::JoinInfo, 1);
    ann.join("x", None).await;
    assert_eq!(ann.close_code(), close::INTERNAL);
    assert!(ann.frames().is_empty());
    assert_eq!(n.restarts("connection"), 1);
    assert_eq!(n.node.connection_count(), 1, "ann's connection is gone");
    settle().await;
    let alive = n
        .node
        .metrics
        .actors_alive
        .with_label_values(&["connection"]);
    assert_eq!(alive.get(), 1, "only bob's actor is counted");
    assert_eq!(bob.close_code(), 0);
    bob.command(Command::Ping {
        r#ref: Some("p".into()),
    })
    .await;
    settle().await;
    assert_eq!(of_type(&bob.frames(), "pong").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connection_leaves_the_rooms_it_had_joined() {
    let c = config();
    let n = TestNode::start(c.clone()).await;
    let ann = n.connect("ann").await;
    let mut bob = n.connect("bob").await;
    ann.join("r", None).await;
    bob.join("r", None).await;
    tokio::time::sleep(c.presence_coalesce * 2).await;
    bob.frames();
    n.store.panic_next(Op::JoinInfo, 1);
    ann.join("x", None).await;
    assert_eq!(ann.close_code(), close::INTERNAL);
    tokio::time::sleep(c.presence_grace * 2).await;
    let got = bob.frames();
    let leaves: Vec<&str> = of_type(&got, "presence")
        .iter()
        .flat_map(|f| f["leaves"].as_array().unwrap().iter())
        .map(|l| l["user"].as_str().unwrap())
        .collect();
    assert_eq!(leaves, ["ann"], "ann's socket is gone, so is ann");
}

#[tokio::test(start_paused = true)]
async fn actors_alive_counts_a_restarted_actor_once() {
    let n = TestNode::start(config()).await;
    let ann = n.connect("ann").await;
    ann.join("r", None).await;
    n.node.inject_room_panic(&room("r"));
    n.node.inject_writer_panic();
    settle().await;
    let alive = |k: &str| n.node.metrics.actors_alive.with_label_values(&[k]).get();
    assert_eq!((alive("room"), alive("writer")), (1, 1));
}

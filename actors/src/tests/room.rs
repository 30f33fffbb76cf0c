//! The RoomActor under its supervisor: ordered delivery, gap fill, replay then live, restart.

use std::time::Duration;

use super::{config, message_seqs, of_type, room, seed, settle, user, Rooms, Socket};
use crate::ids::ReactionKey;
use crate::ports::NewChange;
use crate::protocol::ChangeOp;
use crate::room::RoomMsg;
use crate::testkit::{MemStore, Op};

#[tokio::test(start_paused = true)]
async fn deliveries_out_of_order_reach_members_in_seq_order() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m[0..1]);
    rooms.deliver("r", &m[2..3]);
    settle().await;
    assert_eq!(
        message_seqs(&ann.frames()),
        [1],
        "3 waits for the gap in front of it"
    );
    rooms.deliver("r", &m[1..2]);
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [2, 3]);
    assert_eq!(rooms.store.calls(Op::After), 0, "the gap closed by itself");
}

#[tokio::test(start_paused = true)]
async fn repeated_deliveries_reach_members_once() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m[0..2]);
    rooms.deliver("r", &m[1..3]);
    rooms.deliver("r", &m[0..1]);
    rooms.deliver("r", &[m[2].clone(), m[2].clone()]);
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_gap_that_does_not_close_is_filled_from_the_store_after_gap_wait() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 4);
    rooms.deliver("r", &m[0..1]);
    rooms.deliver("r", &m[3..4]);
    tokio::time::sleep(c.gap_wait / 2).await;
    assert_eq!(message_seqs(&ann.frames()), [1]);
    assert_eq!(rooms.store.calls(Op::After), 0, "not before gap_wait");
    tokio::time::sleep(c.gap_wait).await;
    assert_eq!(message_seqs(&ann.frames()), [2, 3, 4]);
    assert_eq!(rooms.store.calls(Op::After), 1, "one read fills the gap");
    assert_eq!(rooms.metrics.gap_fills.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_gap_fill_the_store_refuses_is_tried_again() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.store.fail_next(Op::After, 1);
    rooms.deliver("r", &m[0..1]);
    rooms.deliver("r", &m[2..3]);
    tokio::time::sleep(c.gap_wait * 2).await;
    assert_eq!(rooms.store.calls(Op::After), 1);
    assert_eq!(
        message_seqs(&ann.frames()),
        [1],
        "still waiting after a failed fill"
    );
    tokio::time::sleep(c.gap_wait * 4).await;
    assert_eq!(rooms.store.calls(Op::After), 2);
    assert_eq!(message_seqs(&ann.frames()), [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_join_with_since_replays_from_the_store_then_continues_live() {
    let rooms = Rooms::start(config()).await;
    let m = seed(&rooms.store, "r", 5);
    let mut ann = rooms.join("r", "ann", None).await;
    // Hold the replay's reads so live messages arrive while it runs.
    rooms.store.hold(Op::After);
    let mut bob = rooms.join("r", "bob", Some(2)).await;
    let live = [m.clone(), seed(&rooms.store, "r", 2)].concat();
    rooms.deliver("r", &live[5..7]);
    settle().await;
    let early = bob.frames();
    let joined = of_type(&early, "joined");
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["seq"], 5, "the head when bob joined");
    assert!(
        message_seqs(&early).is_empty(),
        "live frames wait for the replay"
    );
    assert_eq!(
        message_seqs(&ann.frames()),
        [6, 7],
        "others are not held up"
    );
    rooms.store.release(Op::After);
    settle().await;
    assert_eq!(message_seqs(&bob.frames()), [3, 4, 5, 6, 7]);
    rooms.deliver("r", &seed(&rooms.store, "r", 1));
    settle().await;
    assert_eq!(message_seqs(&bob.frames()), [8], "live after the replay");
}

#[tokio::test(start_paused = true)]
async fn a_replay_longer_than_replay_max_is_truncated_to_the_newest() {
    let mut c = config();
    c.replay_max = 3;
    let rooms = Rooms::start(c).await;
    seed(&rooms.store, "r", 10);
    let mut ann = rooms.join("r", "ann", Some(0)).await;
    let frames = ann.frames();
    assert_eq!(of_type(&frames, "joined")[0]["replay_truncated"], true);
    assert_eq!(message_seqs(&frames), [8, 9, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_replay_the_store_cannot_serve_closes_the_member_as_overloaded() {
    let rooms = Rooms::start(config()).await;
    seed(&rooms.store, "r", 4);
    rooms.store.fail_next(Op::After, 1);
    let mut ann = rooms.join("r", "ann", Some(1)).await;
    assert!(message_seqs(&ann.frames()).is_empty());
    assert_eq!(
        super::close_code(&ann.shared),
        crate::outbox::close::OVERLOADED
    );
}

#[tokio::test(start_paused = true)]
async fn a_since_ahead_of_the_room_is_caught_up_from_the_store_without_repeats() {
    let rooms = Rooms::start(config()).await;
    let m = seed(&rooms.store, "r", 3);
    let mut ann = rooms.join("r", "ann", None).await;
    // 4 and 5 were committed on another node and their events lost; bob saw them there.
    seed(&rooms.store, "r", 2);
    let mut bob = rooms.join("r", "bob", Some(5)).await;
    assert_eq!(
        message_seqs(&ann.frames()),
        [4, 5],
        "read back from the store"
    );
    assert!(
        message_seqs(&bob.frames()).is_empty(),
        "bob had them already"
    );
    rooms.deliver("r", &[m[2].clone()]);
    rooms.deliver("r", &seed(&rooms.store, "r", 1));
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [6]);
    assert_eq!(message_seqs(&bob.frames()), [6]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_room_is_restarted_with_its_members_and_keeps_delivering() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let mut bob = rooms.join("r", "bob", None).await;
    let before = rooms.handle("r").actor().get_id();
    assert!(rooms.handle("r").cast(RoomMsg::Panic));
    settle().await;
    assert_eq!(rooms.restarts("room"), 1);
    assert_ne!(rooms.handle("r").actor().get_id(), before, "a new actor");
    assert_eq!(rooms.registry.len(), 1);
    ann.frames();
    bob.frames();
    rooms.deliver("r", &seed(&rooms.store, "r", 2));
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1, 2]);
    assert_eq!(message_seqs(&bob.frames()), [1, 2]);
    // Presence survived too: a newcomer is told both are here.
    let mut cy = rooms.join("r", "cy", None).await;
    let frames = cy.frames();
    let present: Vec<&str> = of_type(&frames, "joined")[0]["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap())
        .collect();
    assert_eq!(present, ["ann", "bob", "cy"]);
    assert_eq!(super::close_code(&ann.shared), 0, "members were not closed");
}

#[tokio::test(start_paused = true)]
async fn messages_committed_while_a_room_was_down_are_read_back_after_its_restart() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m[0..1]);
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1]);
    // The panic is queued ahead of the delivery: the delivery dies with the old actor.
    let h = rooms.handle("r");
    h.cast(RoomMsg::Panic);
    h.cast(RoomMsg::Deliver {
        msgs: m[1..3].to_vec().into(),
        committed: None,
    });
    settle().await;
    assert_eq!(rooms.restarts("room"), 1);
    assert_eq!(
        message_seqs(&ann.frames()),
        [2, 3],
        "from the store, once each"
    );
}

#[tokio::test(start_paused = true)]
async fn a_room_that_cannot_read_its_head_does_not_start_and_the_join_is_refused() {
    let store = MemStore::new();
    store.fail_next(Op::Head, 1);
    let rooms = Rooms::start_with(config(), store, None).await;
    assert!(rooms.registry.get_or_spawn(&room("r")).await.is_none());
    assert_eq!(rooms.registry.len(), 0);
    // The store is back: the next join starts it.
    let mut ann = rooms.join("r", "ann", None).await;
    assert_eq!(of_type(&ann.frames(), "joined").len(), 1);
    assert_eq!(rooms.registry.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_head_check_from_the_bus_delivers_what_the_room_missed() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    seed(&rooms.store, "r", 2);
    rooms.handle("r").cast(RoomMsg::CheckHead);
    settle().await;
    assert_eq!(message_seqs(&ann.frames()), [1, 2]);
    // A second check with nothing new delivers nothing.
    rooms.handle("r").cast(RoomMsg::CheckHead);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(message_seqs(&ann.frames()).is_empty());
}

/// A reaction `key` of `by` on message `seq` of room `r`.
fn react(r: &str, seq: u64, by: &str, key: &str) -> NewChange {
    NewChange {
        room: room(r),
        seq,
        by: user(by),
        moderator: false,
        op: ChangeOp::React {
            key: ReactionKey::parse(key).unwrap(),
            on: true,
        },
    }
}

/// The (rev, seq) of the `update` frames, in arrival order.
fn update_revs(frames: &[serde_json::Value]) -> Vec<(u64, u64)> {
    of_type(frames, "update")
        .iter()
        .map(|f| (f["rev"].as_u64().unwrap(), f["seq"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn changes_wait_for_a_rev_gap_which_is_filled_from_the_store_after_gap_wait() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m);
    let ups = rooms
        .change(&[
            react("r", 1, "bob", "a"),
            react("r", 2, "bob", "a"),
            react("r", 3, "bob", "a"),
        ])
        .await;
    rooms.deliver_updates("r", &ups[0..1]);
    rooms.deliver_updates("r", &ups[2..3]);
    settle().await;
    assert_eq!(
        update_revs(&ann.frames()),
        [(1, 1)],
        "rev 3 waits for rev 2"
    );
    tokio::time::sleep(c.gap_wait * 2).await;
    assert_eq!(update_revs(&ann.frames()), [(2, 2), (3, 3)]);
    // Late copies of what was filled are not delivered twice.
    rooms.deliver_updates("r", &ups);
    settle().await;
    assert!(update_revs(&ann.frames()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_head_check_catches_up_on_changes_a_later_change_overwrote() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    seed(&rooms.store, "r", 2);
    // Revs 1 and 3 change seq 1; only its state at rev 3 is left in the store.
    rooms
        .change(&[
            react("r", 1, "bob", "a"),
            react("r", 2, "bob", "a"),
            react("r", 1, "cat", "a"),
        ])
        .await;
    rooms.handle("r").cast(RoomMsg::CheckHead);
    settle().await;
    assert_eq!(update_revs(&ann.frames()), [(2, 2), (3, 1)]);
    let ups = rooms.change(&[react("r", 2, "cat", "b")]).await;
    rooms.deliver_updates("r", &ups);
    settle().await;
    assert_eq!(
        update_revs(&ann.frames()),
        [(4, 2)],
        "live again after the catch-up"
    );
}

#[tokio::test(start_paused = true)]
async fn a_join_with_since_rev_gets_the_missed_changes_after_its_replay_then_live_ones() {
    let rooms = Rooms::start(config()).await;
    let _keep = rooms.join("r", "keeper", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m);
    let ups = rooms
        .change(&[
            react("r", 1, "bob", "a"),
            react("r", 3, "bob", "a"),
            react("r", 2, "bob", "b"),
        ])
        .await;
    rooms.deliver_updates("r", &ups);
    settle().await;
    let mut ann = Socket::new(50, "ann", &rooms.metrics);
    // Ann has messages up to 2 and changes up to rev 1: she misses message 3 (which comes
    // with its current state) and rev 3 (on message 2); rev 2 is message 3's, already in it.
    rooms.join_socket_rev("r", &ann, Some(2), Some(1)).await;
    let f = ann.frames();
    let joined = of_type(&f, "joined")[0];
    assert_eq!(joined["rev"], 3);
    assert!(joined.get("rev_truncated").is_none());
    let kinds: Vec<(&str, u64)> = f
        .iter()
        .filter(|x| x["type"] == "message" || x["type"] == "update")
        .map(|x| (x["type"].as_str().unwrap(), x["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("message", 3), ("update", 2)]);
    let m3 = of_type(&f, "message")[0];
    assert_eq!(m3["rev"], 2, "a replayed message carries its current state");
    let more = rooms.change(&[react("r", 1, "cat", "c")]).await;
    rooms.deliver_updates("r", &more);
    settle().await;
    assert_eq!(update_revs(&ann.frames()), [(4, 1)]);
}

#[tokio::test(start_paused = true)]
async fn more_missed_changes_than_replay_max_are_not_replayed_and_the_joiner_is_told() {
    let mut c = config();
    c.replay_max = 2;
    let rooms = Rooms::start(c).await;
    let _keep = rooms.join("r", "keeper", None).await;
    let m = seed(&rooms.store, "r", 3);
    rooms.deliver("r", &m);
    let ups = rooms
        .change(&[
            react("r", 1, "bob", "a"),
            react("r", 2, "bob", "a"),
            react("r", 3, "bob", "a"),
        ])
        .await;
    rooms.deliver_updates("r", &ups);
    settle().await;
    let mut ann = Socket::new(50, "ann", &rooms.metrics);
    rooms.join_socket_rev("r", &ann, Some(3), Some(0)).await;
    let f = ann.frames();
    assert_eq!(of_type(&f, "joined")[0]["rev_truncated"], true);
    assert!(update_revs(&f).is_empty());
    // Within the cap, nothing is flagged.
    let mut bob = Socket::new(51, "bob", &rooms.metrics);
    rooms.join_socket_rev("r", &bob, Some(3), Some(1)).await;
    let f = bob.frames();
    assert!(of_type(&f, "joined")[0].get("rev_truncated").is_none());
    assert_eq!(update_revs(&f), [(2, 2), (3, 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_change_that_overtakes_its_message_waits_for_it_and_holds_later_changes_back() {
    let rooms = Rooms::start(config()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let m = seed(&rooms.store, "r", 2);
    rooms.deliver("r", &m[0..1]);
    // Rev 1 changes message 2, which this node has not delivered yet; rev 2 changes message 1.
    let ups = rooms
        .change(&[react("r", 2, "bob", "a"), react("r", 1, "bob", "a")])
        .await;
    rooms.deliver_updates("r", &ups);
    settle().await;
    let f = ann.frames();
    assert_eq!(message_seqs(&f), [1]);
    assert!(update_revs(&f).is_empty(), "both wait for message 2: {f:?}");
    rooms.deliver("r", &m[1..2]);
    settle().await;
    let order: Vec<(String, u64)> = ann
        .frames()
        .iter()
        .filter(|x| x["type"] == "message" || x["type"] == "update")
        .map(|x| {
            (
                x["type"].as_str().unwrap().to_string(),
                x["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("message".into(), 2),
            ("update".into(), 2),
            ("update".into(), 1)
        ]
    );
}

//! A room's presence and lifetime: coalesced diffs, grace periods, retiring an idle room.

use ractor::rpc::CallResult;
use serde_json::Value;

use super::{config, of_type, room, settle, Rooms};
use crate::presence::PresenceKeeperMsg;

/// (joins, leaves) of each `presence` frame, as user ids.
fn diffs(frames: &[Value]) -> Vec<(Vec<String>, Vec<String>)> {
    let users = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["user"].as_str().unwrap().to_string())
            .collect()
    };
    of_type(frames, "presence")
        .iter()
        .map(|f| (users(&f["joins"]), users(&f["leaves"])))
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What the node's PresenceKeeper lists for `r`.
async fn keeper_lists(rooms: &Rooms, r: &str) -> Vec<String> {
    let got = rooms
        .keeper
        .call(
            |reply| PresenceKeeperMsg::Get {
                room: room(r),
                reply,
            },
            None,
        )
        .await
        .unwrap();
    let CallResult::Success(list) = got else {
        panic!("the keeper answers")
    };
    list.into_iter()
        .map(|e| e.user.as_str().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn presence_changes_within_one_window_go_out_as_one_diff() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    // Three joins spread over less than one window.
    let mut ann = rooms.join("r", "ann", None).await;
    tokio::time::sleep(c.presence_coalesce / 3).await;
    let _bob = rooms.join("r", "bob", None).await;
    tokio::time::sleep(c.presence_coalesce / 3).await;
    let _cy = rooms.join("r", "cy", None).await;
    tokio::time::sleep(c.presence_coalesce * 2).await;
    assert_eq!(
        diffs(&ann.frames()),
        [(names(&["ann", "bob", "cy"]), vec![])],
        "three joins, one frame"
    );
    tokio::time::sleep(c.presence_coalesce * 4).await;
    assert!(diffs(&ann.frames()).is_empty(), "nothing changed since");
}

#[tokio::test(start_paused = true)]
async fn a_leave_shows_only_after_the_grace_period() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let bob = rooms.join("r", "bob", None).await;
    tokio::time::sleep(c.presence_coalesce * 2).await;
    ann.frames();
    rooms.leave("r", &bob);
    tokio::time::sleep(c.presence_grace / 2).await;
    assert!(
        diffs(&ann.frames()).is_empty(),
        "bob is present during grace"
    );
    assert_eq!(keeper_lists(&rooms, "r").await, ["ann", "bob"]);
    tokio::time::sleep(c.presence_grace).await;
    assert_eq!(diffs(&ann.frames()), [(vec![], names(&["bob"]))]);
    assert_eq!(keeper_lists(&rooms, "r").await, ["ann"]);
}

#[tokio::test(start_paused = true)]
async fn a_member_back_within_the_grace_period_shows_no_leave() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    let bob = rooms.join("r", "bob", None).await;
    tokio::time::sleep(c.presence_coalesce * 2).await;
    ann.frames();
    rooms.leave("r", &bob);
    tokio::time::sleep(c.presence_grace / 4).await;
    let _bob_again = rooms.join("r", "bob", None).await;
    tokio::time::sleep(c.presence_grace * 2).await;
    assert!(diffs(&ann.frames()).is_empty(), "a flap shows nothing");
    assert_eq!(keeper_lists(&rooms, "r").await, ["ann", "bob"]);
}

#[tokio::test(start_paused = true)]
async fn the_last_member_leaving_retires_the_room_when_the_grace_period_ends() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let mut ann = rooms.join("r", "ann", None).await;
    assert_eq!(rooms.bus.subscriptions(), [(room("r"), true)]);
    rooms.leave("r", &ann);
    settle().await;
    assert_eq!(of_type(&ann.frames(), "left").len(), 1);
    tokio::time::sleep(c.presence_grace / 2).await;
    assert_eq!(rooms.registry.len(), 1, "kept during the grace period");
    let actor = rooms.handle("r").actor();
    tokio::time::sleep(c.presence_grace).await;
    assert_eq!(rooms.registry.len(), 0, "retired");
    assert_eq!(
        rooms.bus.subscriptions(),
        [(room("r"), true), (room("r"), false)]
    );
    assert_eq!(actor.get_status(), ractor::ActorStatus::Stopped);
    assert_eq!(rooms.restarts("room"), 0, "a retired room is not restarted");
    // A later join starts a fresh room that resumes from the store's head.
    let mut bob = rooms.join("r", "bob", None).await;
    assert_eq!(of_type(&bob.frames(), "joined").len(), 1);
    assert_eq!(rooms.registry.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_room_with_a_join_pending_is_not_retired() {
    let c = config();
    let rooms = Rooms::start(c.clone()).await;
    let ann = rooms.join("r", "ann", None).await;
    rooms.leave("r", &ann);
    // Another socket got the handle (the join is on its way) before the grace ran out.
    let h = rooms.handle_or_spawn("r").await;
    tokio::time::sleep(c.presence_grace * 2).await;
    assert_eq!(rooms.registry.len(), 1, "the pending join holds it open");
    let mut bob = super::Socket::new(99, "bob", &rooms.metrics);
    h.cast(crate::room::RoomMsg::Join {
        member: Box::new(crate::room::Member {
            outbox: bob.outbox.clone(),
            user: bob.shared.user.clone(),
            name: crate::ids::DisplayName::sanitize("bob"),
            encoding: crate::protocol::Encoding::Json,
            membership: Default::default(),
            presence: Default::default(),
        }),
        r#ref: None,
        since: None,
        read: 0,
        role: crate::access::RoomRole::Member,
        asked: std::time::Instant::now(),
    });
    settle().await;
    assert_eq!(
        of_type(&bob.frames(), "joined").len(),
        1,
        "the join still lands"
    );
}

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
        since_rev: None,
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

/// A PresenceStore whose heartbeats answer from a script, one `Beat` per beat (then empty
/// ones with the last generation).
struct ScriptedBeats(parking_lot::Mutex<std::collections::VecDeque<crate::ports::Beat>>);

#[async_trait::async_trait]
impl crate::ports::PresenceStore for ScriptedBeats {
    async fn add(
        &self,
        _: &crate::ids::RoomId,
        _: &crate::ids::UserId,
        _: &crate::ids::DisplayName,
    ) -> Result<(), crate::ports::StoreError> {
        Ok(())
    }
    async fn remove(
        &self,
        _: &crate::ids::RoomId,
        _: &crate::ids::UserId,
    ) -> Result<(), crate::ports::StoreError> {
        Ok(())
    }
    async fn heartbeat(
        &self,
        _: &(dyn Fn() -> Vec<crate::ports::PresenceItem> + Send + Sync),
    ) -> Result<crate::ports::Beat, crate::ports::StoreError> {
        let mut q = self.0.lock();
        let next = q.pop_front().unwrap_or_default();
        if q.is_empty() {
            q.push_back(crate::ports::Beat {
                generation: next.generation,
                ..Default::default()
            });
        }
        Ok(next)
    }
    async fn list(
        &self,
        _: &crate::ids::RoomId,
    ) -> Result<Vec<crate::protocol::PresenceEntry>, crate::ports::StoreError> {
        Ok(Vec::new())
    }
}

#[tokio::test(start_paused = true)]
async fn the_keeper_acts_on_what_beats_find_and_reconciles_once_a_period_after_a_change() {
    use crate::ports::Beat;
    use crate::presence::{PresenceArgs, PresenceChange, PresenceKeeper};
    use std::sync::Arc;
    let beats = [
        // The first beat: this node (re)joined and wrote its entries in room a.
        Beat {
            rejoined: true,
            changed: vec![room("a")],
            purged: 0,
            generation: 1,
        },
        // Nothing changed anywhere.
        Beat {
            generation: 1,
            ..Beat::default()
        },
        // A dead node's entries were purged from room b.
        Beat {
            rejoined: false,
            changed: vec![room("b")],
            purged: 1,
            generation: 2,
        },
        // Something changed elsewhere (a bus event could have been lost).
        Beat {
            generation: 3,
            ..Beat::default()
        },
    ];
    let log = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    let on_change = Arc::new(move |c: PresenceChange| {
        l.lock().push(match c {
            PresenceChange::All => "all".into(),
            PresenceChange::Rooms(r) => r.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        })
    });
    let metrics = crate::metrics::Metrics::new(&prometheus::Registry::new());
    let (keeper, _) = ractor::Actor::spawn(
        None,
        PresenceKeeper,
        PresenceArgs {
            index: Default::default(),
            metrics: metrics.clone(),
            store: Some(Arc::new(ScriptedBeats(parking_lot::Mutex::new(
                beats.into(),
            )))),
            on_change,
            heartbeat: std::time::Duration::from_secs(1),
            reconcile: std::time::Duration::from_secs(10),
        },
    )
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let at = |secs: u64| tokio::time::sleep_until(start + std::time::Duration::from_secs(secs));
    at(5).await;
    settle().await;
    // The rejoin re-reads everything; the purge only room b (and tells the other nodes);
    // the generation moved, but a reconcile is not due before 10 s.
    assert_eq!(*log.lock(), names(&["a", "all", "b"]));
    assert_eq!(metrics.presence_purged.get(), 1);
    at(12).await;
    settle().await;
    assert_eq!(
        *log.lock(),
        names(&["a", "all", "b", "all"]),
        "one reconcile"
    );
    at(40).await;
    settle().await;
    assert_eq!(
        log.lock().len(),
        4,
        "nothing changed since: no more reconciles"
    );
    keeper.stop(None);
}

//! PresenceKeeper: it serves this node's presence entries (who is present in which room
//! through a connection on this node) from the node's `PresenceIndex`, which the rooms write.
//! It answers the HTTP presence API without waking room actors, and in cluster mode it is the
//! node's heartbeat: it refreshes this node's entries in the PresenceStore and has every local
//! room re-read the cluster-wide presence, so the entries of a node that died silently
//! disappear everywhere within the TTL.
//!
//! The index is not the keeper's state but the node's, like a room's `RoomShared`: a keeper
//! that fails is restarted with it intact (so the heartbeat goes on refreshing the entries of
//! users still connected), and the rooms write it directly, so no update is lost while the
//! keeper restarts or sent to the actor it replaced.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::ids::{DisplayName, RoomId, UserId};
use crate::metrics::{Alive, Metrics};
use crate::ports::PresenceStore;
use crate::protocol::PresenceEntry;

/// Who is present in which room through a connection on this node. Owned by the node and
/// shared by its rooms (writers) and its PresenceKeeper (reader); it outlives both.
#[derive(Default)]
pub struct PresenceIndex {
    local: Mutex<HashMap<RoomId, BTreeMap<UserId, DisplayName>>>,
}

impl PresenceIndex {
    /// A user became present (or stopped being present) in a room through this node.
    pub fn set(&self, room: &RoomId, user: &UserId, name: &DisplayName, present: bool) {
        let mut local = self.local.lock();
        if present {
            local
                .entry(room.clone())
                .or_default()
                .insert(user.clone(), name.clone());
        } else if let Some(users) = local.get_mut(room) {
            users.remove(user);
            if users.is_empty() {
                local.remove(room);
            }
        }
    }

    /// Forget a room's entries (the room is gone from this node without its leaves).
    pub fn forget_room(&self, room: &RoomId) {
        self.local.lock().remove(room);
    }

    /// The users present in `room` through this node.
    pub fn room(&self, room: &RoomId) -> Vec<PresenceEntry> {
        self.local
            .lock()
            .get(room)
            .map(|u| {
                u.iter()
                    .map(|(user, name)| PresenceEntry {
                        user: user.clone(),
                        name: name.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every (room, user, name) present through this node.
    pub fn entries(&self) -> Vec<(RoomId, UserId, DisplayName)> {
        self.local
            .lock()
            .iter()
            .flat_map(|(room, users)| {
                users
                    .iter()
                    .map(move |(u, n)| (room.clone(), u.clone(), n.clone()))
            })
            .collect()
    }
}

pub enum PresenceKeeperMsg {
    Get {
        room: RoomId,
        reply: RpcReplyPort<Vec<PresenceEntry>>,
    },
    Heartbeat,
}

pub struct PresenceKeeper;

pub struct PresenceArgs {
    /// The node's index, kept across restarts of the keeper.
    pub index: Arc<PresenceIndex>,
    pub metrics: Metrics,
    pub store: Option<Arc<dyn PresenceStore>>,
    /// After each heartbeat's refresh: have every local room re-read the cluster-wide
    /// presence (the node wires this to its rooms, so the keeper does not know them).
    pub after_heartbeat: Arc<dyn Fn() + Send + Sync>,
    pub heartbeat: Duration,
}

pub struct PresenceKeeperState {
    args: PresenceArgs,
    ticker: Option<JoinHandle<()>>,
    _alive: Alive,
}

#[ractor::async_trait]
impl Actor for PresenceKeeper {
    type Msg = PresenceKeeperMsg;
    type State = PresenceKeeperState;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PresenceKeeperMsg>,
        args: PresenceArgs,
    ) -> Result<PresenceKeeperState, ActorProcessingErr> {
        let alive = Alive::new(&args.metrics, "presence");
        let ticker = args
            .store
            .is_some()
            .then(|| myself.send_interval(args.heartbeat, || PresenceKeeperMsg::Heartbeat));
        Ok(PresenceKeeperState {
            args,
            ticker,
            _alive: alive,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        state: &mut PresenceKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        // A failed keeper skips this; its ticker then ends on its own at the next tick.
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        msg: PresenceKeeperMsg,
        state: &mut PresenceKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceKeeperMsg::Get { room, reply } => {
                let local = || state.args.index.room(&room);
                let list = match &state.args.store {
                    // Cluster-wide when a store is configured; this node's view if it fails.
                    Some(store) => {
                        match tokio::time::timeout(Duration::from_secs(2), store.list(&room)).await
                        {
                            Ok(Ok(list)) => list,
                            _ => local(),
                        }
                    }
                    None => local(),
                };
                let _ = reply.send(list);
            }
            PresenceKeeperMsg::Heartbeat => {
                let Some(store) = state.args.store.clone() else {
                    return Ok(());
                };
                let entries = state.args.index.entries();
                // Never block the keeper on a stalled Redis: the heartbeat runs on its own.
                let after = state.args.after_heartbeat.clone();
                let metrics = state.args.metrics.clone();
                tokio::spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(2), store.refresh(&entries)).await,
                        Ok(Ok(()))
                    );
                    if !ok {
                        metrics.bus_errors.inc();
                    }
                    after();
                });
            }
        }
        Ok(())
    }
}

//! PresenceKeeper: it serves this node's presence entries (who is present in which room
//! through a connection on this node) from the node's `PresenceIndex`, which the rooms write.
//! It answers the HTTP presence API without waking room actors, and in cluster mode it is the
//! node's heartbeat. The rooms write each change to the PresenceStore and tell the other nodes
//! on the bus, so a beat has nothing to refresh per entry: it keeps this node registered and
//! purges the entries of nodes that died silently. Work then follows change, not rooms × nodes:
//! - a purge makes the affected rooms (here, and through the bus everywhere) re-read;
//! - a node the store had lost (Redis restarted empty) writes its entries again, and its rooms
//!   re-read;
//! - a lost bus event (a subscription outage, a publish dropped on another node) is followed
//!   by a `resync` for its room, which re-reads presence too;
//! - as a last resort, when the store's generation moved, every local room re-reads, at most
//!   once per `reconcile` period (5 minutes by default), so an idle cluster reads nothing.
//!
//! The index is not the keeper's state but the node's, like a room's `RoomShared`: a keeper
//! that fails is restarted with it intact (so a rejoin still writes the entries of users still
//! connected), and the rooms write it directly, so no update is lost while the keeper restarts
//! or sent to the actor it replaced.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ids::{DisplayName, RoomId, UserId};
use crate::metrics::{Alive, Metrics};
use crate::ports::{Beat, PresenceItem, PresenceStore};
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
    pub fn entries(&self) -> Vec<PresenceItem> {
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
    /// What the last heartbeat found (`None`: it failed).
    Beaten(Option<Beat>),
}

/// Which local views a beat made stale.
pub enum PresenceChange {
    /// Every local room re-reads (this node rejoined, or a reconcile).
    All,
    /// These rooms' entries changed (a dead node's purged, this node's written again): tell
    /// every node, and re-read here.
    Rooms(Vec<RoomId>),
}

pub struct PresenceKeeper;

pub struct PresenceArgs {
    /// The node's index, kept across restarts of the keeper.
    pub index: Arc<PresenceIndex>,
    pub metrics: Metrics,
    pub store: Option<Arc<dyn PresenceStore>>,
    /// Act on a beat's findings (the node wires this to its rooms and bus, so the keeper
    /// knows neither).
    pub on_change: Arc<dyn Fn(PresenceChange) + Send + Sync>,
    pub heartbeat: Duration,
    /// The least time between two reconciles (every local room re-reading).
    pub reconcile: Duration,
}

pub struct PresenceKeeperState {
    args: PresenceArgs,
    ticker: Option<JoinHandle<()>>,
    /// A beat is running (a stalled Redis must not pile them up).
    beating: bool,
    /// The store generation the local views were last reconciled with.
    reconciled: Option<u64>,
    reconciled_at: Instant,
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
        let ticker = args.store.is_some().then(|| {
            // Register at once: the store refuses a node's writes until it is registered.
            let _ = myself.cast(PresenceKeeperMsg::Heartbeat);
            myself.send_interval(args.heartbeat, || PresenceKeeperMsg::Heartbeat)
        });
        Ok(PresenceKeeperState {
            args,
            ticker,
            beating: false,
            reconciled: None,
            reconciled_at: Instant::now(),
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
        myself: ActorRef<PresenceKeeperMsg>,
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
                if state.beating {
                    return Ok(());
                }
                state.beating = true;
                // Never block the keeper on a stalled Redis: the beat runs on its own.
                let (index, metrics, me) = (
                    state.args.index.clone(),
                    state.args.metrics.clone(),
                    myself.clone(),
                );
                tokio::spawn(async move {
                    let entries = move || index.entries();
                    let beat = tokio::time::timeout(BEAT_TIMEOUT, store.heartbeat(&entries)).await;
                    let beat = match beat {
                        Ok(Ok(beat)) => Some(beat),
                        _ => {
                            metrics.bus_errors.inc();
                            None
                        }
                    };
                    let _ = me.cast(PresenceKeeperMsg::Beaten(beat));
                });
            }
            PresenceKeeperMsg::Beaten(beat) => {
                state.beating = false;
                if let Some(beat) = beat {
                    state.beaten(beat);
                }
            }
        }
        Ok(())
    }
}

/// A beat that rewrites a node's whole presence may take a while; it is retried (the store
/// remembers that the rewrite is owed) if it does not finish in time.
const BEAT_TIMEOUT: Duration = Duration::from_secs(10);

impl PresenceKeeperState {
    fn beaten(&mut self, beat: Beat) {
        let on_change = &self.args.on_change;
        self.args.metrics.presence_purged.inc_by(beat.purged as u64);
        if !beat.changed.is_empty() {
            on_change(PresenceChange::Rooms(beat.changed));
        }
        let moved = self.reconciled != Some(beat.generation);
        let due = self.reconciled_at.elapsed() >= self.args.reconcile;
        if beat.rejoined || (moved && due) {
            if self.reconciled.is_some() || beat.rejoined {
                on_change(PresenceChange::All);
            }
            self.reconciled = Some(beat.generation);
            self.reconciled_at = Instant::now();
        }
    }
}

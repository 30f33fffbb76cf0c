//! RoomSupervisor and the registry of this node's rooms.
//!
//! The registry maps room ids to handles; the supervisor is the only one that adds or removes
//! entries, so creating a room and retiring an idle one can never race. A RoomActor that fails
//! is restarted with the same `RoomCore`, so its members stay and keep receiving.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::NodeConfig;
use crate::ids::RoomId;
use crate::metrics::{Alive, Metrics};
use crate::ports::{ClusterBus, MessageStore, PresenceStore};
use crate::presence::PresenceIndex;
use crate::protocol::StoredMessage;
use crate::room::{RoomActor, RoomArgs, RoomMsg, RoomShared};

/// What connections and the Writer hold to reach a room.
pub struct RoomHandle {
    actor: RwLock<ActorRef<RoomMsg>>,
    shared: Arc<RoomShared>,
    capacity: usize,
}

impl RoomHandle {
    pub fn actor(&self) -> ActorRef<RoomMsg> {
        self.actor.read().clone()
    }

    /// Send to the room's current actor (it may have been restarted since the handle was
    /// taken).
    pub fn cast(&self, msg: RoomMsg) -> bool {
        self.actor().cast(msg).is_ok()
    }

    /// Client-driven, droppable commands go through here: past the room's queue bound they
    /// are refused instead of growing the unbounded mailbox.
    pub fn try_cast_bounded(&self, msg: RoomMsg) -> bool {
        let q = &self.shared.queued;
        if q.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            q.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.cast(msg) {
            true
        } else {
            q.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// A join handed out by `get_or_spawn` but never sent (the connection gave up).
    pub fn join_abandoned(&self) {
        self.shared.pending_joins.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// The socket has joined this room here.
    pub fn has_member(&self, conn: crate::ids::ConnId) -> bool {
        self.shared.core.lock().members.contains_key(&conn)
    }
}

/// This node's rooms.
pub struct RoomRegistry {
    rooms: RwLock<HashMap<RoomId, Arc<RoomHandle>>>,
    supervisor: RwLock<Option<ActorRef<RoomSupervisorMsg>>>,
}

impl RoomRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            rooms: RwLock::new(HashMap::new()),
            supervisor: RwLock::new(None),
        })
    }

    pub fn get(&self, room: &RoomId) -> Option<Arc<RoomHandle>> {
        self.rooms.read().get(room).cloned()
    }

    pub fn len(&self) -> usize {
        self.rooms.read().len()
    }

    pub fn all(&self) -> Vec<Arc<RoomHandle>> {
        self.rooms.read().values().cloned().collect()
    }

    /// Hand committed messages of one room to its local actor, if this node has one.
    pub fn deliver(&self, msgs: Arc<[StoredMessage]>, committed: Instant) {
        let Some(room) = msgs.first().map(|m| m.room.clone()) else {
            return;
        };
        if let Some(h) = self.get(&room) {
            h.cast(RoomMsg::Deliver {
                msgs,
                committed: Some(committed),
            });
        }
    }

    /// Hand committed changes of one room to its local actor, if this node has one.
    pub fn deliver_updates(&self, updates: Arc<[crate::protocol::StoredUpdate]>) {
        let Some(room) = updates.first().map(|u| u.message.room.clone()) else {
            return;
        };
        if let Some(h) = self.get(&room) {
            h.cast(RoomMsg::Updates(updates));
        }
    }

    /// Ask the room (if it has local members) to compare what it delivered with the store's
    /// head and fill what it missed.
    pub fn check_head(&self, room: &RoomId) {
        if let Some(h) = self.get(room) {
            h.cast(RoomMsg::CheckHead);
        }
    }

    /// The room's handle, spawning its actor if needed. The caller must follow with exactly
    /// one `RoomMsg::Join` (or `join_abandoned`): until then the room is held open.
    pub async fn get_or_spawn(&self, room: &RoomId) -> Option<Arc<RoomHandle>> {
        let sup = self.supervisor.read().clone()?;
        let room = room.clone();
        match sup
            .call(
                |reply| RoomSupervisorMsg::GetOrSpawn { room, reply },
                Some(std::time::Duration::from_secs(10)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(h)) => h,
            _ => None,
        }
    }
}

pub enum RoomSupervisorMsg {
    GetOrSpawn {
        room: RoomId,
        reply: RpcReplyPort<Option<Arc<RoomHandle>>>,
    },
    /// A room found itself with nobody holding it open.
    Idle { room: RoomId, actor: ActorId },
}

pub struct RoomSupervisor;

pub struct RoomSupervisorArgs {
    pub registry: Arc<RoomRegistry>,
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn ClusterBus>,
    pub presence: Arc<PresenceIndex>,
    pub presence_store: Option<Arc<dyn PresenceStore>>,
    pub config: NodeConfig,
    pub metrics: Metrics,
}

pub struct RoomSupervisorState {
    args: RoomSupervisorArgs,
    children: HashMap<ActorId, RoomId>,
    _alive: Alive,
}

impl RoomSupervisorState {
    async fn spawn_room(
        &mut self,
        myself: &ActorRef<RoomSupervisorMsg>,
        room: &RoomId,
        shared: Arc<RoomShared>,
        restarted: bool,
    ) -> Result<ActorRef<RoomMsg>, ActorProcessingErr> {
        let a = &self.args;
        let args = RoomArgs {
            shared,
            room: room.clone(),
            store: a.store.clone(),
            bus: a.bus.clone(),
            presence: a.presence.clone(),
            presence_store: a.presence_store.clone(),
            on_idle: {
                let me = myself.clone();
                Arc::new(move |room, actor| {
                    let _ = me.cast(RoomSupervisorMsg::Idle { room, actor });
                })
            },
            config: a.config.clone(),
            metrics: a.metrics.clone(),
            restarted,
        };
        let (actor, _) = Actor::spawn_linked(None, RoomActor, args, myself.get_cell()).await?;
        self.children.insert(actor.get_id(), room.clone());
        Ok(actor)
    }
}

#[ractor::async_trait]
impl Actor for RoomSupervisor {
    type Msg = RoomSupervisorMsg;
    type State = RoomSupervisorState;
    type Arguments = RoomSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        args: RoomSupervisorArgs,
    ) -> Result<RoomSupervisorState, ActorProcessingErr> {
        *args.registry.supervisor.write() = Some(myself);
        Ok(RoomSupervisorState {
            _alive: Alive::new(&args.metrics, "room_supervisor"),
            args,
            children: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        msg: RoomSupervisorMsg,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomSupervisorMsg::GetOrSpawn { room, reply } => {
                if let Some(h) = state.args.registry.get(&room) {
                    h.shared.pending_joins.fetch_add(1, Ordering::AcqRel);
                    let _ = reply.send(Some(h));
                    return Ok(());
                }
                let shared = Arc::new(RoomShared::default());
                shared.pending_joins.store(1, Ordering::Release);
                match state
                    .spawn_room(&myself, &room, shared.clone(), false)
                    .await
                {
                    Ok(actor) => {
                        let handle = Arc::new(RoomHandle {
                            actor: RwLock::new(actor),
                            shared,
                            capacity: state.args.config.room_queue,
                        });
                        state
                            .args
                            .registry
                            .rooms
                            .write()
                            .insert(room.clone(), handle.clone());
                        let _ = reply.send(Some(handle));
                    }
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "room failed to start");
                        let _ = reply.send(None);
                    }
                }
            }
            RoomSupervisorMsg::Idle { room, actor } => {
                let Some(h) = state.args.registry.get(&room) else {
                    return Ok(());
                };
                let current = h.actor();
                if current.get_id() != actor
                    || h.shared.pending_joins.load(Ordering::Acquire) != 0
                    || !h.shared.core.lock().is_idle()
                {
                    return Ok(());
                }
                state.args.registry.rooms.write().remove(&room);
                state.args.bus.unsubscribe(&room);
                current.stop(Some("idle".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(room) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let Some(h) = state.args.registry.get(&room) else {
                    return Ok(());
                };
                if h.actor().get_id() != cell.get_id() {
                    return Ok(());
                }
                // Decision: a failed room is restarted with its members and presence intact;
                // whatever it missed meanwhile is read back from the store.
                tracing::error!(room = %room, error = %err, "room actor failed; restarting it");
                state
                    .args
                    .metrics
                    .actor_restarts
                    .with_label_values(&["room"])
                    .inc();
                h.shared.queued.store(0, Ordering::Release);
                match state
                    .spawn_room(&myself, &room, h.shared.clone(), true)
                    .await
                {
                    Ok(actor) => *h.actor.write() = actor,
                    Err(e) => {
                        // Decision: a room that cannot restart is dropped; its members are
                        // closed with 1011 and recover with `since` when they come back.
                        tracing::error!(room = %room, error = %e, "room restart failed; closing its members");
                        state.args.registry.rooms.write().remove(&room);
                        state.args.presence.forget_room(&room);
                        h.close_members(crate::outbox::close::INTERNAL);
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.children.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

impl RoomHandle {
    fn close_members(&self, code: u16) {
        self.shared.core.lock().close_all(code);
    }
}

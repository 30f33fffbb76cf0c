//! NodeSupervisor, the root of the tree: it starts the node's long-lived children and decides
//! what happens when one fails (see the module above for the decisions).

use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::bus::{BusListener, BusListenerArgs};
use crate::config::NodeConfig;
use crate::connections::{
    ConnRegistry, ConnSupArgs, ConnectionSupervisor, ConnectionSupervisorMsg,
};
use crate::metrics::{Alive, Metrics};
use crate::ports::{BusEvent, ClusterBus, MessageStore, PresenceStore};
use crate::presence::{
    PresenceArgs, PresenceChange, PresenceIndex, PresenceKeeper, PresenceKeeperMsg,
};
use crate::room::RoomMsg;
use crate::rooms::{RoomRegistry, RoomSupervisor, RoomSupervisorArgs};
use crate::writer::{Writer, WriterArgs, WriterHandle};

pub struct NodeSupervisor;

pub enum NodeMsg {}

pub struct RootArgs {
    pub(super) store: Arc<dyn MessageStore>,
    pub(super) bus: Arc<dyn ClusterBus>,
    pub(super) presence_store: Option<Arc<dyn PresenceStore>>,
    pub(super) config: NodeConfig,
    pub(super) metrics: Metrics,
    pub(super) rooms: Arc<RoomRegistry>,
    pub(super) writer: WriterHandle,
    pub(super) presence: Arc<RwLock<Option<ActorRef<PresenceKeeperMsg>>>>,
    /// Who is present through this node: the rooms write it, the keeper reads it; owned here
    /// so that a restarted keeper finds it intact.
    pub(super) presence_index: Arc<PresenceIndex>,
    pub(super) conns: Arc<ConnRegistry>,
    pub(super) conn_sup: Arc<RwLock<Option<ActorRef<ConnectionSupervisorMsg>>>>,
    pub(super) inbox: crate::inbox::Inbox,
}

/// The children, by role, so failures are matched by who failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Writer,
    Presence,
    BusListener,
    Rooms,
    Connections,
}

impl Child {
    fn kind(self) -> &'static str {
        match self {
            Child::Writer => "writer",
            Child::Presence => "presence",
            Child::BusListener => "bus_listener",
            Child::Rooms => "room_supervisor",
            Child::Connections => "connection_supervisor",
        }
    }
}

pub struct NodeState {
    args: RootArgs,
    children: Vec<(ractor::ActorId, Child)>,
    _alive: Alive,
}

impl NodeState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<NodeMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let a = &self.args;
        let cell = myself.get_cell();
        let id = match child {
            Child::Writer => {
                let args = WriterArgs {
                    store: a.store.clone(),
                    inbox: a.inbox.clone(),
                    rooms: a.rooms.clone(),
                    bus: a.bus.clone(),
                    config: a.config.clone(),
                    metrics: a.metrics.clone(),
                    handle: a.writer.clone(),
                };
                let (w, _) = Actor::spawn_linked(None, Writer, args, cell).await?;
                w.get_id()
            }
            Child::Presence => {
                let args = PresenceArgs {
                    index: a.presence_index.clone(),
                    metrics: a.metrics.clone(),
                    store: a.presence_store.clone(),
                    on_change: {
                        let (rooms, bus) = (a.rooms.clone(), a.bus.clone());
                        Arc::new(move |change| match change {
                            PresenceChange::All => {
                                for h in rooms.all() {
                                    h.cast(RoomMsg::PresenceResync);
                                }
                            }
                            PresenceChange::Rooms(changed) => {
                                for room in changed {
                                    if let Some(h) = rooms.get(&room) {
                                        h.cast(RoomMsg::PresenceResync);
                                    }
                                    bus.publish(BusEvent::PresenceChanged { room });
                                }
                            }
                        })
                    },
                    heartbeat: a.config.presence_heartbeat,
                    reconcile: a.config.presence_reconcile,
                };
                let (p, _) = Actor::spawn_linked(None, PresenceKeeper, args, cell).await?;
                *a.presence.write() = Some(p.clone());
                p.get_id()
            }
            Child::BusListener => {
                let args = BusListenerArgs {
                    bus: a.bus.clone(),
                    rooms: a.rooms.clone(),
                    conns: a.conns.clone(),
                    inbox: a.inbox.clone(),
                    metrics: a.metrics.clone(),
                };
                let (b, _) = Actor::spawn_linked(None, BusListener, args, cell).await?;
                b.get_id()
            }
            Child::Rooms => {
                let args = RoomSupervisorArgs {
                    registry: a.rooms.clone(),
                    store: a.store.clone(),
                    bus: a.bus.clone(),
                    presence: a.presence_index.clone(),
                    presence_store: a.presence_store.clone(),
                    config: a.config.clone(),
                    metrics: a.metrics.clone(),
                };
                let (r, _) = Actor::spawn_linked(None, RoomSupervisor, args, cell).await?;
                r.get_id()
            }
            Child::Connections => {
                let args = ConnSupArgs {
                    registry: a.conns.clone(),
                    metrics: a.metrics.clone(),
                };
                let (c, _) = Actor::spawn_linked(None, ConnectionSupervisor, args, cell).await?;
                *a.conn_sup.write() = Some(c.clone());
                c.get_id()
            }
        };
        self.children.retain(|(_, c)| *c != child);
        self.children.push((id, child));
        Ok(())
    }
}

#[ractor::async_trait]
impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: RootArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let mut state = NodeState {
            _alive: Alive::new(&args.metrics, "node"),
            args,
            children: Vec::new(),
        };
        for child in [
            Child::Presence,
            Child::Writer,
            Child::Rooms,
            Child::BusListener,
            Child::Connections,
        ] {
            state.spawn(&myself, child).await?;
        }
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell.clone(), Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.clone(), None),
            _ => return Ok(()),
        };
        let Some(&(_, child)) = state.children.iter().find(|(id, _)| *id == cell.get_id()) else {
            return Ok(());
        };
        match failed {
            Some(err) => {
                // Decision: every direct child is restarted; a node without its Writer or its
                // supervisors would be up but useless.
                tracing::error!(child = child.kind(), error = %err, "node child failed; restarting it");
                state
                    .args
                    .metrics
                    .actor_restarts
                    .with_label_values(&[child.kind()])
                    .inc();
                if let Err(e) = state.spawn(&myself, child).await {
                    tracing::error!(child = child.kind(), error = %e, "restart failed; stopping the node");
                    return Err(e);
                }
            }
            None => {
                // A child stopped normally: only during shutdown.
                state.children.retain(|(id, _)| *id != cell.get_id());
            }
        }
        Ok(())
    }
}

//! NodeSupervisor, the root of the tree, and `Node`, the typed facade the edge talks to.
//!
//! Decisions on failure: the Writer and the PresenceKeeper are restarted (their handles are
//! re-pointed at the new actor); the RoomSupervisor and ConnectionSupervisor make their own
//! decisions for their children and are restarted if they fail themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::access::{Identity, RoomRole};

use crate::bus::{BusListener, BusListenerArgs};
use crate::config::NodeConfig;
use crate::connection::{ConnArgs, ConnContext, ConnectionActor};
use crate::connections::{
    ConnRegistry, ConnSupArgs, ConnectionSupervisor, ConnectionSupervisorMsg,
};
use crate::expiry::Expiry;
use crate::handle::{ConnHandle, Connection};
use crate::ids::{Body, Cid, ConnId, DisplayName, RoomId, Seq, UserId};
use crate::metrics::Metrics;
use crate::moderation::{By, ModError, Moderation};
use crate::outbox::{ConnShared, Outbox};
use crate::ports::{Appended, ClusterBus, MessageStore, NewMessage, PresenceStore, StoreError};
use crate::presence::{PresenceArgs, PresenceKeeper, PresenceKeeperMsg};
use crate::protocol::{Encoding, PresenceEntry, StoredMessage};
use crate::room::RoomMsg;
use crate::rooms::{RoomRegistry, RoomSupervisor, RoomSupervisorArgs};
use crate::writer::{WriteError, Writer, WriterArgs, WriterHandle, WriterMsg};

/// Inputs of a node.
pub struct NodeArgs {
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn ClusterBus>,
    /// Cluster-wide presence (cluster mode); `None` on a single node.
    pub presence_store: Option<Arc<dyn PresenceStore>>,
    pub config: NodeConfig,
    pub metrics: Metrics,
}

/// A running node: the supervision tree plus the handles the edge needs.
pub struct Node {
    pub config: NodeConfig,
    pub metrics: Metrics,
    store: Arc<dyn MessageStore>,
    rooms: Arc<RoomRegistry>,
    writer: WriterHandle,
    presence: Arc<RwLock<Option<ActorRef<PresenceKeeperMsg>>>>,
    conns: Arc<ConnRegistry>,
    conn_sup: Arc<RwLock<Option<ActorRef<ConnectionSupervisorMsg>>>>,
    root: ActorRef<NodeMsg>,
    next_conn: AtomicU64,
    bus: Arc<dyn ClusterBus>,
    moderation: Arc<Moderation>,
    expiry: Arc<Expiry>,
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node could not start: {0}")]
    Start(String),
    #[error("the node is unavailable")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Start the supervision tree.
    pub async fn start(args: NodeArgs) -> Result<Arc<Node>, NodeError> {
        let rooms = RoomRegistry::new();
        let writer = WriterHandle::new(args.metrics.clone());
        let presence = Arc::new(RwLock::new(None));
        let conns = Arc::new(ConnRegistry::default());
        let conn_sup = Arc::new(RwLock::new(None));
        let moderation = Arc::new(Moderation {
            store: args.store.clone(),
            rooms: rooms.clone(),
            bus: args.bus.clone(),
            conns: conns.clone(),
            metrics: args.metrics.clone(),
        });
        let expiry = Arc::new(Expiry::default());
        let root_args = RootArgs {
            store: args.store.clone(),
            bus: args.bus.clone(),
            presence_store: args.presence_store,
            config: args.config.clone(),
            metrics: args.metrics.clone(),
            rooms: rooms.clone(),
            writer: writer.clone(),
            presence: presence.clone(),
            conns: conns.clone(),
            conn_sup: conn_sup.clone(),
        };
        let (root, _) = Actor::spawn(None, NodeSupervisor, root_args)
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        Ok(Arc::new(Node {
            config: args.config,
            metrics: args.metrics,
            store: args.store,
            rooms,
            writer,
            presence,
            conns,
            conn_sup,
            root,
            next_conn: AtomicU64::new(1),
            bus: args.bus,
            moderation,
            sweeper: Mutex::new(Some(expiry.spawn_sweeper())),
            expiry,
        }))
    }

    /// Start a ConnectionActor for an authenticated socket. It is closed with 1008 when the
    /// token expires, unless a `refresh` comes first.
    pub async fn open_connection(
        &self,
        identity: Identity,
        encoding: Encoding,
    ) -> Result<Connection, NodeError> {
        let sup = self.conn_sup.read().clone().ok_or(NodeError::Unavailable)?;
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let shared = ConnShared::new(id, self.config.inbound_queue, identity.user.clone());
        shared.set_admin(identity.admin);
        self.expiry.watch(&shared, identity.expires);
        let (outbox, outbound) = Outbox::new(
            self.config.outbound_queue,
            shared.clone(),
            self.metrics.clone(),
        );
        let args = ConnArgs {
            ctx: self.conn_context(),
            outbox: outbox.clone(),
            identity,
            encoding,
        };
        let (actor, _) = Actor::spawn_linked(None, ConnectionActor, args, sup.get_cell())
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        self.conns.insert(actor.get_id(), shared.clone());
        Ok(Connection {
            handle: ConnHandle {
                actor,
                shared,
                outbox,
            },
            outbound,
        })
    }

    fn conn_context(&self) -> ConnContext {
        ConnContext {
            store: self.store.clone(),
            rooms: self.rooms.clone(),
            writer: self.writer.clone(),
            bus: self.bus.clone(),
            moderation: self.moderation.clone(),
            expiry: self.expiry.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The backend kicks (and with `ban`, bans) a user from a room, on every node.
    pub async fn kick(&self, room: &RoomId, user: &UserId, ban: bool) -> Result<(), ModError> {
        self.moderation.kick(&By::Backend, room, user, ban).await
    }

    /// The backend lifts a ban.
    pub async fn unban(&self, room: &RoomId, user: &UserId) -> Result<(), ModError> {
        self.moderation.unban(&By::Backend, room, user).await
    }

    /// The backend makes a user a member of a room, with a role or keeping theirs.
    pub async fn set_member(
        &self,
        room: &RoomId,
        user: &UserId,
        role: Option<RoomRole>,
    ) -> Result<(), ModError> {
        self.moderation
            .set_role(&By::Backend, room, user, role)
            .await
    }

    /// The backend deletes a member row; in a private room the user is taken out live.
    pub async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), ModError> {
        self.moderation.remove_member(room, user).await
    }

    /// The backend closes every socket of a user in the cluster with 4003; how many were
    /// open on this node.
    pub fn disconnect_user(&self, user: &UserId) -> usize {
        self.moderation.disconnect(user)
    }

    /// Persist a message from the HTTP API; resolves after commit.
    pub async fn publish(
        &self,
        room: RoomId,
        from: UserId,
        name: DisplayName,
        cid: Cid,
        body: Body,
    ) -> Result<Appended, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.writer.submit(
            NewMessage {
                room,
                from,
                name,
                cid,
                body,
            },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(WriteError::Unavailable))
    }

    pub async fn history(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), NodeError> {
        Ok(self
            .store
            .before(room, before, limit.min(self.config.history_max))
            .await?)
    }

    pub async fn presence(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, NodeError> {
        let keeper = self.presence.read().clone().ok_or(NodeError::Unavailable)?;
        let room = room.clone();
        match keeper
            .call(
                |reply| PresenceKeeperMsg::Get { room, reply },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            _ => Err(NodeError::Unavailable),
        }
    }

    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Refresh the gauges that are read rather than counted (queue depths), at scrape time.
    pub fn sample_gauges(&self) {
        let rooms = self.rooms.all();
        let room_q: usize = rooms.iter().map(|h| h.queued()).sum();
        let q = &self.metrics.queue_depth;
        q.with_label_values(&["room"]).set(room_q as i64);
        q.with_label_values(&["writer"])
            .set(self.writer.in_flight() as i64);
        let conns = self.conns.all();
        let inbound: usize = conns.iter().map(|c| c.inbound_used()).sum();
        q.with_label_values(&["inbound"]).set(inbound as i64);
        let outbound: usize = conns.iter().map(|c| c.outbound_used()).sum();
        q.with_label_values(&["outbound"]).set(outbound as i64);
    }

    /// Fault injection (tests only): make a room's actor panic. False if no such room here.
    pub fn inject_room_panic(&self, room: &RoomId) -> bool {
        self.config.fault_injection
            && self
                .rooms
                .get(room)
                .map(|h| h.cast(RoomMsg::Panic))
                .unwrap_or(false)
    }

    /// Fault injection (tests only): make the Writer panic.
    pub fn inject_writer_panic(&self) -> bool {
        self.config.fault_injection
            && self
                .writer
                .actor()
                .map(|w| w.cast(WriterMsg::Panic).is_ok())
                .unwrap_or(false)
    }

    /// The shutdown order of DESIGN.md, for the node's part (the edge has already stopped
    /// accepting sockets): stop reading from every socket, let the commands already taken
    /// finish, commit and ack what the Writer holds, close every socket with 1001, wait for
    /// the sockets to go, stop the tree. Returns false if a step ran out of time.
    pub async fn shutdown(&self, deadline: Instant) -> bool {
        let mut clean = true;
        let conns = self.conns.all();
        for c in &conns {
            c.stop_reading();
        }
        // Commands already decoded finish (a send reaches the Writer).
        while !conns.iter().all(|c| c.inbound_idle()) {
            if Instant::now() >= deadline {
                clean = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        clean &= self
            .writer
            .drain(left.max(Duration::from_millis(100)))
            .await;
        for c in self.conns.all() {
            c.request_close(crate::outbox::close::GOING_AWAY);
        }
        while !self.conns.is_empty() {
            if Instant::now() >= deadline {
                clean = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(s) = self.sweeper.lock().take() {
            s.abort();
        }
        self.root.stop(Some("shutdown".into()));
        clean
    }
}

// ---- the root supervisor ----

pub struct NodeSupervisor;

pub enum NodeMsg {}

pub struct RootArgs {
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn ClusterBus>,
    presence_store: Option<Arc<dyn PresenceStore>>,
    config: NodeConfig,
    metrics: Metrics,
    rooms: Arc<RoomRegistry>,
    writer: WriterHandle,
    presence: Arc<RwLock<Option<ActorRef<PresenceKeeperMsg>>>>,
    conns: Arc<ConnRegistry>,
    conn_sup: Arc<RwLock<Option<ActorRef<ConnectionSupervisorMsg>>>>,
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
    presence_ref: Option<ActorRef<PresenceKeeperMsg>>,
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
                    metrics: a.metrics.clone(),
                    store: a.presence_store.clone(),
                    after_heartbeat: {
                        let rooms = a.rooms.clone();
                        Arc::new(move || {
                            for h in rooms.all() {
                                h.cast(RoomMsg::PresenceResync);
                            }
                        })
                    },
                    heartbeat: a.config.presence_heartbeat,
                };
                let (p, _) = Actor::spawn_linked(None, PresenceKeeper, args, cell).await?;
                *a.presence.write() = Some(p.clone());
                self.presence_ref = Some(p.clone());
                p.get_id()
            }
            Child::BusListener => {
                let args = BusListenerArgs {
                    bus: a.bus.clone(),
                    rooms: a.rooms.clone(),
                    conns: a.conns.clone(),
                    metrics: a.metrics.clone(),
                };
                let (b, _) = Actor::spawn_linked(None, BusListener, args, cell).await?;
                b.get_id()
            }
            Child::Rooms => {
                let presence = self
                    .presence_ref
                    .clone()
                    .ok_or("presence keeper must start before rooms")?;
                let args = RoomSupervisorArgs {
                    registry: a.rooms.clone(),
                    store: a.store.clone(),
                    bus: a.bus.clone(),
                    presence,
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
        args.metrics.actors_alive.with_label_values(&["node"]).inc();
        let mut state = NodeState {
            args,
            children: Vec::new(),
            presence_ref: None,
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

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .args
            .metrics
            .actors_alive
            .with_label_values(&["node"])
            .dec();
        Ok(())
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

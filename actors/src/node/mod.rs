//! NodeSupervisor, the root of the tree, and `Node`, the typed facade the edge talks to.
//!
//! Decisions on failure: the Writer and the PresenceKeeper are restarted (their handles are
//! re-pointed at the new actor; the keeper's index of who is present through this node is the
//! node's `PresenceIndex`, written by the rooms, so a new keeper heartbeats the same entries);
//! the RoomSupervisor and ConnectionSupervisor make their own decisions for their children and
//! are restarted if they fail themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::access::{Identity, RoomRole};

use crate::config::NodeConfig;
use crate::connection::{ConnArgs, ConnContext, ConnectionActor};
use crate::connections::{ConnRegistry, ConnectionSupervisorMsg};
use crate::expiry::Expiry;
use crate::handle::{ConnHandle, Connection};
use crate::ids::{ConnId, Meta, RoomId, Seq, UserId};
use crate::inbox::{Inbox, InboxDeps};
use crate::metrics::Metrics;
use crate::moderation::{By, ModError, Moderation};
use crate::outbox::{ConnShared, Outbox};
use crate::ports::{
    Appended, ChangeOutcome, ClusterBus, MessageStore, NewChange, NewMessage, PresenceStore,
    StoreError,
};
use crate::presence::{PresenceIndex, PresenceKeeperMsg};
use crate::protocol::{Encoding, PresenceEntry, StoredMessage};
use crate::room::RoomMsg;
use crate::rooms::RoomRegistry;
use crate::writer::{Ack, ChangeAck, WriteError, WriterHandle, WriterMsg};

mod supervisor;
use supervisor::{NodeMsg, NodeSupervisor, RootArgs};

/// Inputs of a node.
pub struct NodeArgs {
    /// Where messages, rooms and members are kept (the source of truth).
    pub store: Arc<dyn MessageStore>,
    /// How committed messages and room events reach the other nodes.
    pub bus: Arc<dyn ClusterBus>,
    /// Cluster-wide presence (cluster mode); `None` on a single node.
    pub presence_store: Option<Arc<dyn PresenceStore>>,
    /// Limits and timings.
    pub config: NodeConfig,
    /// The actor tree's metrics (registered by the caller).
    pub metrics: Metrics,
    /// Told when a user's first socket on this node opens and their last closes (webhooks).
    pub socket_watch: Option<Arc<dyn crate::ports::SocketWatch>>,
}

/// A running node: the supervision tree plus the handles the edge needs.
pub struct Node {
    /// The limits and timings it runs with.
    pub config: NodeConfig,
    /// The actor tree's metrics.
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

/// Why the node could not do what the edge asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An actor of the tree could not be started.
    #[error("the node could not start: {0}")]
    Start(String),
    /// The part of the tree that answers is not running (restarting, or shut down).
    #[error("the node is unavailable")]
    Unavailable,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Start the supervision tree.
    pub async fn start(args: NodeArgs) -> Result<Arc<Node>, NodeError> {
        let rooms = RoomRegistry::new();
        let writer = WriterHandle::new(args.metrics.clone());
        let presence = Arc::new(RwLock::new(None));
        let conns = Arc::new(ConnRegistry::new(
            args.bus.clone(),
            &args.metrics,
            args.socket_watch.clone(),
        ));
        let inbox = Inbox::start(
            InboxDeps {
                store: args.store.clone(),
                conns: conns.clone(),
                rooms: rooms.clone(),
                bus: args.bus.clone(),
            },
            &args.metrics,
        );
        let conn_sup = Arc::new(RwLock::new(None));
        let moderation = Arc::new(Moderation {
            store: args.store.clone(),
            rooms: rooms.clone(),
            bus: args.bus.clone(),
            conns: conns.clone(),
            inbox: inbox.clone(),
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
            presence_index: Arc::new(PresenceIndex::default()),
            conns: conns.clone(),
            conn_sup: conn_sup.clone(),
            inbox,
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
        let (outbox, outbound) =
            Outbox::new(self.config.outbound_queue, shared.clone(), &self.metrics);
        let args = ConnArgs {
            ctx: self.conn_context(),
            outbox: outbox.clone(),
            identity,
            encoding,
        };
        let (actor, _) = Actor::spawn_linked(None, ConnectionActor, args, sup.get_cell())
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        self.conns.insert(actor.get_id(), outbox.clone(), encoding);
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

    /// Persist a message from the HTTP API; resolves after commit. `msg.trace` is the
    /// request's span when the API sampled it.
    pub async fn publish(&self, msg: NewMessage) -> Result<Appended, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.writer.submit(msg, Ack::Reply(tx));
        rx.await.unwrap_or(Err(WriteError::Unavailable))
    }

    /// Push a backend's event to every socket of `user`, on this node and the others; how
    /// many sockets it was handed to (the other nodes' answers are awaited a bounded time).
    pub async fn user_event(&self, user: UserId, data: Meta) -> usize {
        let here = self.conns.send_event(&user, &data);
        here + self.bus.user_event(user, data).await
    }

    /// Change a message from the HTTP API (a moderation delete, an edit on behalf of its
    /// author); resolves after commit, like a socket's change.
    pub async fn change(&self, change: NewChange) -> Result<ChangeOutcome, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.writer.change(change, ChangeAck::Reply(tx));
        rx.await.unwrap_or(Err(WriteError::Unavailable))
    }

    /// A page of a room's messages before `before` (the newest when `None`), oldest first,
    /// at most `limit` (capped by `history_max`), and whether older ones exist.
    pub async fn history(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), NodeError> {
        Ok(self
            .store
            .before(room, before, limit.min(self.config.history_max), None)
            .await?)
    }

    /// A user's conversation list (v1.1), at most `limit` rooms (capped at `ROOMS_LIST_MAX`).
    pub async fn rooms_of(
        &self,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<crate::ports::RoomSummary>, NodeError> {
        let limit = limit.min(crate::ports::ROOMS_LIST_MAX);
        Ok(crate::ports::timed(self.store.rooms_of(user, limit)).await?)
    }

    /// Who is present in a room: cluster-wide in cluster mode, else through this node.
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

    /// The store the node uses (the HTTP API's room and member calls go straight to it).
    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Rooms with a live RoomActor on this node.
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

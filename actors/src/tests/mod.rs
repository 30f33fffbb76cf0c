//! Actor tests against the in-memory ports of `testkit`: the Writer, the RoomActor under its
//! supervisor, the supervisors' decisions, and whole nodes driven the way the edge drives them.
//! No PostgreSQL, no Redis; timers run on tokio's paused clock.

mod node;
mod presence;
mod room;
mod supervisors;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::access::{Identity, RoomRole};
use crate::config::NodeConfig;
use crate::handle::Connection;
use crate::ids::{Body, Cid, ConnId, DisplayName, RoomId, Seq, UserId};
use crate::metrics::Metrics;
use crate::node::{Node, NodeArgs};
use crate::outbox::{ConnShared, Out, Outbox};
use crate::ports::{NewMessage, PresenceStore};
use crate::presence::{PresenceArgs, PresenceIndex, PresenceKeeper, PresenceKeeperMsg};
use crate::protocol::{Command, Encoding, StoredMessage};
use crate::room::{Member, RoomMsg};
use crate::rooms::{RoomHandle, RoomRegistry, RoomSupervisor, RoomSupervisorArgs};
use crate::testkit::{MemBus, MemStore};

/// Timings short enough to step through on the paused clock, and far enough apart that one
/// step never crosses the next timer by accident.
pub(super) fn config() -> NodeConfig {
    NodeConfig {
        writer_lanes: 1,
        writer_retry_max: Duration::from_secs(2),
        gap_wait: Duration::from_millis(100),
        presence_coalesce: Duration::from_millis(50),
        presence_grace: Duration::from_secs(1),
        fault_injection: true,
        ..NodeConfig::default()
    }
}

pub(super) fn room(s: &str) -> RoomId {
    RoomId::parse(s).unwrap()
}

pub(super) fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// A send of `body` by `from`.
pub(super) fn new_msg(r: &str, from: &str, cid: &str) -> NewMessage {
    NewMessage {
        trace: None,
        room: room(r),
        meta: None,
        from: user(from),
        name: DisplayName::sanitize(from),
        cid: Cid::parse(cid).unwrap(),
        body: Body::parse(&format!("{from}:{cid}"), 4096).unwrap(),
    }
}

/// Commit `n` messages to `r` as another node would; the stored messages.
pub(super) fn seed(store: &MemStore, r: &str, n: usize) -> Vec<StoredMessage> {
    let start = store.messages(&room(r)).len();
    let batch: Vec<NewMessage> = (start..start + n)
        .map(|i| new_msg(r, "seeder", &format!("s{i}")))
        .collect();
    store.commit(&batch);
    store.messages(&room(r))[start..].to_vec()
}

/// Let every actor and task run until nothing is ready, moving the paused clock by 1 ms.
pub(super) async fn settle() {
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One socket's outbound side: what its rooms, its acks and its actor queued for it.
pub(super) struct Socket {
    pub shared: Arc<ConnShared>,
    pub outbox: Outbox,
    pub rx: mpsc::Receiver<Out>,
}

impl Socket {
    pub fn new(id: u64, user_id: &str, metrics: &Metrics) -> Self {
        let shared = ConnShared::new(ConnId(id), 32, user(user_id));
        let (outbox, rx) = Outbox::new(1024, shared.clone(), metrics);
        Self { shared, outbox, rx }
    }

    /// Every frame queued so far, decoded.
    pub fn frames(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(o) = self.rx.try_recv() {
            if let Out::Frame(b) = o {
                out.push(serde_json::from_slice(&b).expect("a JSON frame"));
            }
        }
        out
    }
}

/// The close code requested for a connection, 0 while none.
pub(super) fn close_code(shared: &ConnShared) -> u16 {
    shared.close_state().code().unwrap_or(0)
}

/// The frames of one type.
pub(super) fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == ty).collect()
}

/// The seqs of the `message` frames, in arrival order.
pub(super) fn message_seqs(frames: &[Value]) -> Vec<Seq> {
    of_type(frames, "message")
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

/// A RoomSupervisor with its PresenceKeeper and registry, as the node wires them.
pub(super) struct Rooms {
    pub registry: Arc<RoomRegistry>,
    pub store: Arc<MemStore>,
    pub bus: Arc<MemBus>,
    pub metrics: Metrics,
    pub keeper: ActorRef<PresenceKeeperMsg>,
    next_conn: std::sync::atomic::AtomicU64,
}

impl Rooms {
    pub async fn start(config: NodeConfig) -> Self {
        Self::start_with(config, MemStore::new(), None).await
    }

    pub async fn start_with(
        config: NodeConfig,
        store: Arc<MemStore>,
        presence_store: Option<Arc<dyn PresenceStore>>,
    ) -> Self {
        let metrics = Metrics::new(&prometheus::Registry::new());
        let bus = MemBus::new();
        let registry = RoomRegistry::new();
        let index = Arc::new(PresenceIndex::default());
        let (keeper, _) = Actor::spawn(
            None,
            PresenceKeeper,
            PresenceArgs {
                index: index.clone(),
                metrics: metrics.clone(),
                store: presence_store.clone(),
                on_change: Arc::new(|_| {}),
                heartbeat: config.presence_heartbeat,
                reconcile: config.presence_reconcile,
            },
        )
        .await
        .unwrap();
        let args = RoomSupervisorArgs {
            registry: registry.clone(),
            store: store.clone(),
            bus: bus.clone(),
            presence: index,
            presence_store,
            config,
            metrics: metrics.clone(),
        };
        let _sup: (ActorRef<_>, _) = Actor::spawn(None, RoomSupervisor, args).await.unwrap();
        Self {
            registry,
            store,
            bus,
            metrics,
            keeper,
            next_conn: 1.into(),
        }
    }

    /// A socket of `user_id` joins `r` (spawning the room if needed), asking for `since`.
    pub async fn join(&self, r: &str, user_id: &str, since: Option<Seq>) -> Socket {
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = Socket::new(id, user_id, &self.metrics);
        self.join_socket(r, &socket, since).await;
        socket
    }

    pub async fn join_socket(&self, r: &str, socket: &Socket, since: Option<Seq>) {
        self.join_socket_rev(r, socket, since, None).await
    }

    /// Join with `since` and, for the message lifecycle, `since_rev`.
    pub async fn join_socket_rev(
        &self,
        r: &str,
        socket: &Socket,
        since: Option<Seq>,
        since_rev: Option<crate::ids::Rev>,
    ) {
        let h = self.handle_or_spawn(r).await;
        let member = Member {
            outbox: socket.outbox.clone(),
            user: socket.shared.user.clone(),
            name: DisplayName::sanitize(socket.shared.user.as_str()),
            encoding: Encoding::Json,
            membership: Default::default(),
            presence: Default::default(),
        };
        assert!(h.cast(RoomMsg::Join {
            member: Box::new(member),
            since_rev,
            r#ref: None,
            since,
            read: 0,
            role: RoomRole::Member,
            asked: std::time::Instant::now(),
        }));
        settle().await;
    }

    pub async fn handle_or_spawn(&self, r: &str) -> Arc<RoomHandle> {
        self.registry
            .get_or_spawn(&room(r))
            .await
            .expect("the room starts")
    }

    pub fn handle(&self, r: &str) -> Arc<RoomHandle> {
        self.registry.get(&room(r)).expect("the room is open")
    }

    pub fn leave(&self, r: &str, socket: &Socket) {
        self.handle(r).cast(RoomMsg::Leave {
            conn: socket.shared.id,
            r#ref: None,
        });
    }

    /// Commit changes to the store as another node would; the updates it made.
    pub async fn change(
        &self,
        changes: &[crate::ports::NewChange],
    ) -> Vec<crate::protocol::StoredUpdate> {
        use crate::ports::MessageStore;
        self.store
            .change(changes, 20)
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                crate::ports::ChangeOutcome::Changed(u) => *u,
                other => panic!("not a change: {other:?}"),
            })
            .collect()
    }

    /// Hand changes to the room as the Writer or the bus would.
    pub fn deliver_updates(&self, r: &str, ups: &[crate::protocol::StoredUpdate]) {
        self.handle(r).cast(RoomMsg::Updates(ups.to_vec().into()));
    }

    /// Hand `msgs` to the room as the Writer or the bus would.
    pub fn deliver(&self, r: &str, msgs: &[StoredMessage]) {
        self.handle(r).cast(RoomMsg::Deliver {
            msgs: msgs.to_vec().into(),
            committed: None,
        });
    }

    pub fn restarts(&self, kind: &str) -> u64 {
        self.metrics.actor_restarts.with_label_values(&[kind]).get()
    }
}

/// A whole node over the in-memory ports.
pub(super) struct TestNode {
    pub node: Arc<Node>,
    pub store: Arc<MemStore>,
    pub bus: Arc<MemBus>,
}

impl TestNode {
    pub async fn start(config: NodeConfig) -> Self {
        Self::start_with(config, MemStore::new(), None).await
    }

    pub async fn start_with(
        config: NodeConfig,
        store: Arc<MemStore>,
        presence_store: Option<Arc<dyn PresenceStore>>,
    ) -> Self {
        let bus = MemBus::new();
        let node = Node::start(NodeArgs {
            store: store.clone(),
            bus: bus.clone(),
            presence_store,
            config,
            metrics: Metrics::new(&prometheus::Registry::new()),
            socket_watch: None,
        })
        .await
        .expect("the node starts");
        Self { node, store, bus }
    }

    /// A socket for `user_id`, as the edge opens one after the handshake.
    pub async fn connect(&self, user_id: &str) -> Client {
        let identity = Identity {
            user: user(user_id),
            name: DisplayName::sanitize(user_id),
            admin: false,
            expires: crate::expiry::now_secs() + 3600,
        };
        let conn = self
            .node
            .open_connection(identity, Encoding::Json)
            .await
            .expect("a connection opens");
        Client { conn }
    }

    pub fn restarts(&self, kind: &str) -> u64 {
        let m = &self.node.metrics;
        m.actor_restarts.with_label_values(&[kind]).get()
    }
}

/// The edge's view of one socket: submit commands, read frames.
pub(super) struct Client {
    pub conn: Connection,
}

impl Client {
    /// Hand a decoded command to the connection, as the edge's reader does.
    pub async fn command(&self, cmd: Command) {
        self.conn
            .handle
            .submit(cmd)
            .await
            .expect("the connection takes commands");
    }

    pub async fn join(&self, r: &str, since: Option<Seq>) {
        self.command(Command::Join {
            r#ref: Some("j".into()),
            since_rev: None,
            room: room(r),
            since,
            presence: Default::default(),
        })
        .await;
        settle().await;
    }

    pub async fn send(&self, r: &str, cid: &str) {
        self.command(Command::Send {
            r#ref: Some(cid.into()),
            meta: None,
            room: room(r),
            cid: Cid::parse(cid).unwrap(),
            body: Body::parse(cid, 4096).unwrap(),
            trace: None,
        })
        .await;
    }

    pub fn frames(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(o) = self.conn.outbound.try_recv() {
            if let Out::Frame(b) = o {
                out.push(serde_json::from_slice(&b).expect("a JSON frame"));
            }
        }
        out
    }

    /// The requested close code, 0 while none.
    pub fn close_code(&self) -> u16 {
        close_code(&self.conn.handle.shared)
    }
}

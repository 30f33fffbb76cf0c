//! ConnectionSupervisor: parent of every ConnectionActor. A connection cannot be resurrected
//! (its socket state is gone), so the decision on failure is to close that one socket with
//! 1011 and let the client reconnect; no other connection is touched. The failed actor's rooms
//! learn it is gone from the actor itself: its state detaches it from them when dropped.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ids::{ConnId, Meta, UserId};
use crate::metrics::{Alive, Metrics};
use crate::outbox::{close, ConnShared, Outbox};
use crate::ports::{ClusterBus, SocketWatch};
use crate::protocol::{EncodeOnce, Encoding, ServerFrame};

/// Every live connection of the node, by actor id, and by user: a user's events (v1.1) and
/// revocations find their sockets without a scan, and the bus hears when a user's first socket
/// opens on this node and their last one closes, so only nodes with a socket of the user
/// receive the user's events.
pub struct ConnRegistry {
    inner: Mutex<Inner>,
    bus: Arc<dyn ClusterBus>,
    /// `chatty_user_events_delivered_total`.
    events_delivered: prometheus::IntCounter,
    /// `chatty_inbox_frames_total`.
    inbox_delivered: prometheus::IntCounter,
    /// Told when a user's first socket on this node opens and their last one closes.
    watch: Option<Arc<dyn SocketWatch>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ActorId, Entry>,
    users: HashMap<UserId, Vec<ActorId>>,
}

/// What the registry keeps of one socket: enough to close it or hand it a frame.
#[derive(Clone)]
struct Entry {
    shared: Arc<ConnShared>,
    outbox: Outbox,
    encoding: Encoding,
}

impl ConnRegistry {
    /// An empty registry that tells `bus` which users this node has sockets of.
    pub fn new(
        bus: Arc<dyn ClusterBus>,
        metrics: &Metrics,
        watch: Option<Arc<dyn SocketWatch>>,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            bus,
            events_delivered: metrics.user_events_delivered.clone(),
            inbox_delivered: metrics.inbox_frames.clone(),
            watch,
        }
    }

    pub fn insert(&self, id: ActorId, outbox: Outbox, encoding: Encoding) {
        let shared = outbox.shared().clone();
        let user = shared.user.clone();
        let mut inner = self.inner.lock();
        inner.conns.insert(
            id,
            Entry {
                shared,
                outbox,
                encoding,
            },
        );
        let ids = inner.users.entry(user.clone()).or_default();
        ids.push(id);
        if ids.len() == 1 {
            // Under the lock (the bus only queues): a last socket closing while a first one
            // opens must reach the bus as "unsubscribe, subscribe", never the other way.
            self.bus.subscribe_user(&user);
            if let Some(w) = &self.watch {
                w.first(&user);
            }
        }
    }

    pub fn remove(&self, id: &ActorId) -> Option<Arc<ConnShared>> {
        let mut inner = self.inner.lock();
        let entry = inner.conns.remove(id)?;
        let user = &entry.shared.user;
        let last = match inner.users.get_mut(user) {
            Some(ids) => {
                ids.retain(|i| i != id);
                ids.is_empty()
            }
            None => false,
        };
        if last {
            inner.users.remove(user);
            self.bus.unsubscribe_user(user);
            if let Some(w) = &self.watch {
                w.last(user);
            }
        }
        Some(entry.shared)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<ConnShared>> {
        let inner = self.inner.lock();
        inner.conns.values().map(|e| e.shared.clone()).collect()
    }

    fn entries_of(&self, user: &UserId) -> Vec<Entry> {
        let inner = self.inner.lock();
        inner
            .users
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| inner.conns.get(i).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The user's connections on this node.
    pub fn of_user(&self, user: &UserId) -> Vec<Arc<ConnShared>> {
        self.entries_of(user)
            .into_iter()
            .map(|e| e.shared)
            .collect()
    }

    /// Close every connection of the user with `code`; how many there were.
    pub fn close_user(&self, user: &UserId, code: u16) -> usize {
        let conns = self.of_user(user);
        for c in &conns {
            c.request_close(code);
        }
        conns.len()
    }

    /// Queue `event {data}` to every socket of the user on this node, encoded once per
    /// encoding; how many sockets took it (a full outbox closes its socket as a slow consumer,
    /// like any other frame, and does not count).
    pub fn send_event(&self, user: &UserId, data: &Meta) -> usize {
        let mut frame = EncodeOnce::new(ServerFrame::Event { data });
        let n = self
            .entries_of(user)
            .into_iter()
            .filter(|e| e.outbox.push(frame.get(e.encoding)))
            .count();
        self.events_delivered.inc_by(n as u64);
        n
    }
}

impl ConnRegistry {
    /// Queue a room's `inbox` frames (one per new message, each encoded at most once per
    /// encoding whoever takes it) to the user's sockets on this node that have not joined that
    /// room (`joined` says which have); how many sockets took them.
    pub fn send_inbox(
        &self,
        user: &UserId,
        frames: &mut [EncodeOnce<'_>],
        joined: impl Fn(ConnId) -> bool,
    ) -> usize {
        let entries: Vec<Entry> = self
            .entries_of(user)
            .into_iter()
            .filter(|e| !joined(e.shared.id))
            .collect();
        for frame in frames.iter_mut() {
            for e in &entries {
                e.outbox.push(frame.get(e.encoding));
            }
        }
        self.inbox_delivered
            .inc_by((entries.len() * frames.len()) as u64);
        entries.len()
    }
}

pub struct ConnectionSupervisor;

pub enum ConnectionSupervisorMsg {}

pub struct ConnSupArgs {
    pub registry: Arc<ConnRegistry>,
    pub metrics: Metrics,
}

pub struct ConnSupState {
    args: ConnSupArgs,
    _alive: Alive,
}

#[ractor::async_trait]
impl Actor for ConnectionSupervisor {
    type Msg = ConnectionSupervisorMsg;
    type State = ConnSupState;
    type Arguments = ConnSupArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        args: ConnSupArgs,
    ) -> Result<ConnSupState, ActorProcessingErr> {
        Ok(ConnSupState {
            _alive: Alive::new(&args.metrics, "connection_supervisor"),
            args,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut ConnSupState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &state.args;
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // Decision: close the socket with 1011. Its rooms are told `Detach` by the
                // failed actor's state as ractor drops it (see `ConnState`'s `Drop`).
                if let Some(shared) = state.registry.remove(&cell.get_id()) {
                    tracing::error!(conn = %shared.id, error = %err, "connection actor failed; closing its socket");
                    state
                        .metrics
                        .actor_restarts
                        .with_label_values(&["connection"])
                        .inc();
                    shared.request_close(close::INTERNAL);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.registry.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

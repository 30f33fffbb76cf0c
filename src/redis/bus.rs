//! The Redis ClusterBus: after commit, each node publishes a room's messages on the room's
//! channel; a node subscribes only to the rooms it has members in.
//!
//! Redis is only a bus here: PostgreSQL is the source of truth. So every failure mode of Redis
//! (down, restarted empty, paused) is survivable: publishes that cannot go out are dropped and
//! counted, the rooms they were for are remembered and a `resync` hint is published for them
//! when Redis answers again; a subscriber that reconnects asks every local room to compare its
//! head with the store. Rooms fill any gap from PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatty_actors::{BoxFuture, BusEvent, ClusterBus, EventReply, Meta, Metrics, RoomId, UserId};
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::envelope::*;
use super::subscriber::subscriber;

/// Bound of each queue in and out of Redis.
const QUEUE: usize = 65_536;
/// How long one Redis operation may take before the connection is considered stalled.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) enum SubCmd {
    Subscribe(Target),
    Unsubscribe(Target),
}

/// The user events this node asked other nodes about (v1.1), by id: each answer (`Delivered`)
/// is handed to the asking call, which adds them up.
#[derive(Default)]
pub(super) struct Waiters {
    next: AtomicU64,
    asks: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
}

impl Waiters {
    /// An answer for ask `id` (an unknown id is a late answer: dropped).
    pub(super) fn answer(&self, id: u64, count: u64) {
        if let Some(tx) = self.asks.lock().get(&id) {
            let _ = tx.send(count);
        }
    }
}

/// Forgets an ask when its call ends, however it ends.
struct Asked(Arc<Waiters>, u64);

impl Drop for Asked {
    fn drop(&mut self) {
        self.0.asks.lock().remove(&self.1);
    }
}

/// How long a user event waits for the other nodes' answers.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Rooms whose events could not be published; a `resync` goes out for each once Redis
/// answers again. Bounded: past the bound, everything is resynced on the next reconnect of
/// every subscriber anyway.
///
/// Revocations (removals from a room, disconnects) cannot be rebuilt from the store like
/// messages, so those events themselves are kept (bounded too) and published again.
#[derive(Default)]
struct Dropped {
    rooms: Mutex<HashSet<RoomId>>,
    revocations: Mutex<Vec<(Target, Vec<u8>)>>,
}

/// Most revocation events kept for republishing while Redis is away.
const MAX_KEPT_REVOCATIONS: usize = 10_000;

impl Dropped {
    fn add(&self, room: RoomId) {
        let mut d = self.rooms.lock();
        if d.len() < 100_000 {
            d.insert(room);
        }
    }
    fn take(&self) -> Vec<RoomId> {
        self.rooms.lock().drain().collect()
    }
    fn keep(&self, target: Target, bytes: Vec<u8>) {
        let mut r = self.revocations.lock();
        if r.len() < MAX_KEPT_REVOCATIONS {
            r.push((target, bytes));
        }
    }
    fn take_revocations(&self) -> Vec<(Target, Vec<u8>)> {
        std::mem::take(&mut *self.revocations.lock())
    }
    /// An event that could not go out: remember what it takes to repair it.
    fn lost(&self, out: Outgoing) {
        if out.revocation {
            self.keep(out.target, out.bytes);
        } else if let Target::Room(room) = out.target {
            self.add(room);
        }
    }
}

/// One queued publish: where, the encoded envelope, and whether it is a revocation (kept and
/// republished if it cannot go out).
struct Outgoing {
    target: Target,
    bytes: Vec<u8>,
    revocation: bool,
    /// The publish spans of the sampled messages in it, ended once Redis answered.
    spans: Vec<tracing::Span>,
}

pub struct RedisBus {
    node: Arc<str>,
    client: redis::Client,
    /// A request/response connection for the publishes whose answer matters (user events:
    /// how many nodes received it), made on first use and again after an error.
    direct: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    waiters: Arc<Waiters>,
    publish_tx: mpsc::Sender<Outgoing>,
    sub_tx: mpsc::Sender<SubCmd>,
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    dropped: Arc<Dropped>,
    metrics: Metrics,
    redis_errors: IntCounter,
}

impl RedisBus {
    /// Start the publisher and subscriber tasks. Never fails on an unreachable Redis: the
    /// tasks keep retrying, and the node serves its local members meanwhile.
    pub fn start(
        url: &str,
        node: Arc<str>,
        metrics: Metrics,
        counters: BusCounters,
    ) -> anyhow::Result<Arc<Self>> {
        let redis_errors = counters.redis_errors.clone();
        let client = redis::Client::open(url)?;
        let (publish_tx, publish_rx) = mpsc::channel(QUEUE);
        let (sub_tx, sub_rx) = mpsc::channel(QUEUE);
        let (events_tx, events_rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(Dropped::default());
        let waiters = Arc::new(Waiters::default());
        let bus = Arc::new(Self {
            node: node.clone(),
            client: client.clone(),
            direct: Arc::new(Mutex::new(None)),
            waiters: waiters.clone(),
            publish_tx,
            sub_tx,
            rx: Mutex::new(Some(events_rx)),
            dropped: dropped.clone(),
            metrics: metrics.clone(),
            redis_errors: redis_errors.clone(),
        });
        tokio::spawn(publisher(
            client.clone(),
            node.clone(),
            publish_rx,
            dropped,
            metrics.clone(),
            redis_errors.clone(),
            counters.published.clone(),
        ));
        tokio::spawn(subscriber(
            client, node, sub_rx, events_tx, waiters, metrics, counters,
        ));
        Ok(bus)
    }
}

impl ClusterBus for RedisBus {
    fn publish(&self, event: BusEvent) {
        let revocation = matches!(
            event,
            BusEvent::Remove { .. } | BusEvent::Disconnect { .. } | BusEvent::MembersChanged { .. }
        );
        let Some((target, mut wire)) = to_wire(&event) else {
            return;
        };
        let spans = publish_spans(&event, &mut wire);
        let env = Envelope {
            node: self.node.to_string(),
            event: wire,
        };
        let Ok(bytes) = rmp_serde::to_vec_named(&env) else {
            return;
        };
        let out = Outgoing {
            target,
            bytes,
            revocation,
            spans,
        };
        if let Err(e) = self.publish_tx.try_send(out) {
            self.metrics.bus_errors.inc();
            self.dropped.lost(e.into_inner());
        }
    }

    fn subscribe(&self, room: &RoomId) {
        self.sub(SubCmd::Subscribe(Target::Room(room.clone())));
    }

    fn unsubscribe(&self, room: &RoomId) {
        self.sub(SubCmd::Unsubscribe(Target::Room(room.clone())));
    }

    fn subscribe_user(&self, user: &UserId) {
        self.sub(SubCmd::Subscribe(Target::User(user.clone())));
    }

    fn unsubscribe_user(&self, user: &UserId) {
        self.sub(SubCmd::Unsubscribe(Target::User(user.clone())));
    }

    fn user_event(&self, user: UserId, data: Meta) -> BoxFuture<usize> {
        let id = self.waiters.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut answers) = mpsc::unbounded_channel();
        self.waiters.asks.lock().insert(id, tx);
        let asked = Asked(self.waiters.clone(), id);
        let reply = Some(EventReply {
            node: self.node.clone(),
            id,
        });
        let channel = Target::User(user.clone()).channel();
        let event = BusEvent::UserEvent { user, data, reply };
        let bytes = to_wire(&event).and_then(|(_, wire)| {
            let env = Envelope {
                node: self.node.to_string(),
                event: wire,
            };
            rmp_serde::to_vec_named(&env).ok()
        });
        let (client, direct) = (self.client.clone(), self.direct.clone());
        let errors = self.redis_errors.clone();
        Box::pin(async move {
            let _asked = asked;
            let Some(bytes) = bytes else { return 0 };
            let cached = direct.lock().clone();
            let mut conn = match cached {
                Some(c) => c,
                None => match connect(&client).await {
                    Some(c) => {
                        *direct.lock() = Some(c.clone());
                        c
                    }
                    None => {
                        errors.inc();
                        return 0;
                    }
                },
            };
            // PUBLISH answers how many subscribers got it: the nodes with a socket of the
            // user (this one included, which answers itself with 0: see the subscriber).
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(channel).arg(bytes);
            let publish = cmd.query_async::<usize>(&mut conn);
            let nodes = match tokio::time::timeout(OP_TIMEOUT, publish).await {
                Ok(Ok(n)) => n,
                _ => {
                    errors.inc();
                    *direct.lock() = None;
                    return 0;
                }
            };
            let mut total = 0u64;
            let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
            for _ in 0..nodes {
                match tokio::time::timeout_at(deadline, answers.recv()).await {
                    Ok(Some(n)) => total += n,
                    _ => break,
                }
            }
            total as usize
        })
    }

    fn answer(&self, reply: EventReply, count: usize) {
        let env = Envelope {
            node: self.node.to_string(),
            event: WireEvent::Delivered {
                id: reply.id,
                count: count as u64,
            },
        };
        let Ok(bytes) = rmp_serde::to_vec_named(&env) else {
            return;
        };
        let out = Outgoing {
            target: Target::Node(reply.node),
            bytes,
            revocation: false,
            spans: Vec::new(),
        };
        if self.publish_tx.try_send(out).is_err() {
            self.metrics.bus_errors.inc();
        }
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }
}

impl RedisBus {
    fn sub(&self, cmd: SubCmd) {
        if self.sub_tx.try_send(cmd).is_err() {
            self.redis_errors.inc();
        }
    }
}

async fn connect(client: &redis::Client) -> Option<redis::aio::MultiplexedConnection> {
    match tokio::time::timeout(OP_TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// Drain the publish queue and send everything queued in one pipeline.
async fn publisher(
    client: redis::Client,
    node: Arc<str>,
    mut rx: mpsc::Receiver<Outgoing>,
    dropped: Arc<Dropped>,
    metrics: Metrics,
    redis_errors: IntCounter,
    published: IntCounter,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(256);
    loop {
        batch.clear();
        match rx.recv().await {
            Some(first) => batch.push(first),
            None => return,
        }
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            conn = connect(&client).await;
        }
        let ok = match conn.as_mut() {
            Some(c) => {
                let mut pipe = redis::pipe();
                for out in &batch {
                    pipe.publish(out.target.channel(), out.bytes.as_slice())
                        .ignore();
                }
                matches!(
                    tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(c)).await,
                    Ok(Ok(()))
                )
            }
            None => false,
        };
        for out in &mut batch {
            for span in out.spans.drain(..) {
                if !ok {
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
        if ok {
            published.inc_by(batch.len() as u64);
            // Redis answers again: the revocations that could not go out go now, then the
            // other nodes hear which rooms may have holes.
            let kept = dropped.take_revocations();
            if let (false, Some(c)) = (kept.is_empty(), conn.as_mut()) {
                let mut pipe = redis::pipe();
                for (target, bytes) in &kept {
                    pipe.publish(target.channel(), bytes.as_slice()).ignore();
                }
                if !matches!(
                    tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(c)).await,
                    Ok(Ok(()))
                ) {
                    kept.into_iter().for_each(|(t, b)| dropped.keep(t, b));
                }
            }
            let rooms = dropped.take();
            if let (false, Some(c)) = (rooms.is_empty(), conn.as_mut()) {
                let mut pipe = redis::pipe();
                for room in &rooms {
                    let env = Envelope {
                        node: node.to_string(),
                        event: WireEvent::Resync {
                            room: room.as_str().to_owned(),
                        },
                    };
                    if let Ok(bytes) = rmp_serde::to_vec_named(&env) {
                        pipe.publish(channel(room), bytes).ignore();
                    }
                }
                if !matches!(
                    tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(c)).await,
                    Ok(Ok(()))
                ) {
                    rooms.into_iter().for_each(|r| dropped.add(r));
                }
            }
        } else {
            metrics.bus_errors.inc();
            redis_errors.inc();
            conn = None;
            for out in batch.drain(..) {
                dropped.lost(out);
            }
            // Back off a little so a dead Redis is not hammered; the queue bound protects
            // memory meanwhile.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The edge's counters the bus moves.
#[derive(Clone)]
pub struct BusCounters {
    /// Errors talking to Redis (shared with presence).
    pub redis_errors: IntCounter,
    /// Times the subscriber connected again after losing its connection.
    pub reconnects: IntCounter,
    /// Events published.
    pub published: IntCounter,
}

//! The Redis ClusterBus: after commit, each node publishes a room's messages on the room's
//! channel; a node subscribes only to the rooms it has members in.
//!
//! Redis is only a bus here: PostgreSQL is the source of truth. So every failure mode of Redis
//! (down, restarted empty, paused) is survivable: publishes that cannot go out are dropped and
//! counted, the rooms they were for are remembered and a `resync` hint is published for them
//! when Redis answers again; a subscriber that reconnects asks every local room to compare its
//! head with the store. Rooms fill any gap from PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chatty_actors::{BusEvent, ClusterBus, Metrics, RoomId};
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
    Subscribe(RoomId),
    Unsubscribe(RoomId),
}

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
}

pub struct RedisBus {
    node: Arc<str>,
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
        let bus = Arc::new(Self {
            node: node.clone(),
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
            client, node, sub_rx, events_tx, metrics, counters,
        ));
        Ok(bus)
    }
}

impl ClusterBus for RedisBus {
    fn publish(&self, event: BusEvent) {
        let revocation = matches!(event, BusEvent::Remove { .. } | BusEvent::Disconnect { .. });
        let Some((target, wire)) = to_wire(&event) else {
            return;
        };
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
        };
        if let Err(e) = self.publish_tx.try_send(out) {
            self.metrics.bus_errors.inc();
            self.dropped.lost(e.into_inner());
        }
    }

    fn subscribe(&self, room: &RoomId) {
        if self
            .sub_tx
            .try_send(SubCmd::Subscribe(room.clone()))
            .is_err()
        {
            self.redis_errors.inc();
        }
    }

    fn unsubscribe(&self, room: &RoomId) {
        let _ = self.sub_tx.try_send(SubCmd::Unsubscribe(room.clone()));
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
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

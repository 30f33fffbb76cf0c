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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatty_actors::{
    Body, BusEvent, Cid, ClusterBus, DisplayName, Metrics, RemoveReason, RoomId, StoredMessage,
    UserId,
};
use futures_util::StreamExt;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Bound of each queue in and out of Redis.
const QUEUE: usize = 65_536;
/// How long one Redis operation may take before the connection is considered stalled.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

fn channel(room: &RoomId) -> String {
    format!("chatty:room:{}", room.as_str())
}

/// The channel every node listens on, for events that are not a room's (disconnect a user).
const CONTROL: &str = "chatty:control";

/// Where an event goes.
#[derive(Clone)]
enum Target {
    Room(RoomId),
    Control,
}

impl Target {
    fn channel(&self) -> String {
        match self {
            Target::Room(r) => channel(r),
            Target::Control => CONTROL.to_owned(),
        }
    }
}

/// What travels on a room's channel (MessagePack).
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing node, so it can ignore its own events.
    node: String,
    event: WireEvent,
}

#[derive(Serialize, Deserialize)]
enum WireEvent {
    Messages {
        room: String,
        /// Microseconds since the epoch at commit, for the cross-node latency metric.
        committed_us: u64,
        msgs: Vec<WireMessage>,
    },
    PresenceChanged {
        room: String,
    },
    Typing {
        room: String,
        user: String,
    },
    Resync {
        room: String,
    },
    Remove {
        room: String,
        user: String,
        reason: String,
        force: bool,
    },
    Read {
        room: String,
        user: String,
        seq: u64,
    },
    Disconnect {
        user: String,
    },
}

#[derive(Serialize, Deserialize)]
struct WireMessage {
    seq: u64,
    from: String,
    name: String,
    cid: String,
    body: String,
    ts: i64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn to_wire(ev: &BusEvent) -> Option<(Target, WireEvent)> {
    Some(match ev {
        BusEvent::Messages(msgs) => {
            let room = msgs.first()?.room.clone();
            let wire = WireEvent::Messages {
                room: room.as_str().to_owned(),
                committed_us: now_us(),
                msgs: msgs
                    .iter()
                    .map(|m| WireMessage {
                        seq: m.seq,
                        from: m.from.as_str().to_owned(),
                        name: m.name.as_str().to_owned(),
                        cid: m.cid.as_str().to_owned(),
                        body: m.body.as_str().to_owned(),
                        ts: m.ts,
                    })
                    .collect(),
            };
            (Target::Room(room), wire)
        }
        BusEvent::PresenceChanged { room } => (
            Target::Room(room.clone()),
            WireEvent::PresenceChanged {
                room: room.as_str().to_owned(),
            },
        ),
        BusEvent::Typing { room, user } => (
            Target::Room(room.clone()),
            WireEvent::Typing {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
            },
        ),
        BusEvent::Resync { room } => (
            Target::Room(room.clone()),
            WireEvent::Resync {
                room: room.as_str().to_owned(),
            },
        ),
        BusEvent::Remove {
            room,
            user,
            reason,
            force,
        } => (
            Target::Room(room.clone()),
            WireEvent::Remove {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
                reason: reason.as_str().to_owned(),
                force: *force,
            },
        ),
        BusEvent::Read { room, user, seq } => (
            Target::Room(room.clone()),
            WireEvent::Read {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
                seq: *seq,
            },
        ),
        BusEvent::Disconnect { user } => (
            Target::Control,
            WireEvent::Disconnect {
                user: user.as_str().to_owned(),
            },
        ),
    })
}

/// Decode and validate an event from another node; `None` for anything malformed.
fn from_wire(ev: WireEvent) -> Option<(BusEvent, Option<u64>)> {
    Some(match ev {
        WireEvent::Messages {
            room,
            committed_us,
            msgs,
        } => {
            let room = RoomId::parse(&room).ok()?;
            let msgs = msgs
                .into_iter()
                .map(|m| {
                    Some(StoredMessage {
                        room: room.clone(),
                        seq: m.seq,
                        from: UserId::parse(&m.from).ok()?,
                        name: DisplayName::sanitize(&m.name),
                        cid: Cid::parse(&m.cid).ok()?,
                        body: Body::parse(&m.body, usize::MAX).ok()?,
                        ts: m.ts,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            (BusEvent::Messages(msgs.into()), Some(committed_us))
        }
        WireEvent::PresenceChanged { room } => (
            BusEvent::PresenceChanged {
                room: RoomId::parse(&room).ok()?,
            },
            None,
        ),
        WireEvent::Typing { room, user } => (
            BusEvent::Typing {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
            },
            None,
        ),
        WireEvent::Resync { room } => (
            BusEvent::Resync {
                room: RoomId::parse(&room).ok()?,
            },
            None,
        ),
        WireEvent::Remove {
            room,
            user,
            reason,
            force,
        } => (
            BusEvent::Remove {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
                reason: RemoveReason::parse(&reason)?,
                force,
            },
            None,
        ),
        WireEvent::Read { room, user, seq } => (
            BusEvent::Read {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
                seq,
            },
            None,
        ),
        WireEvent::Disconnect { user } => (
            BusEvent::Disconnect {
                user: UserId::parse(&user).ok()?,
            },
            None,
        ),
    })
}

enum SubCmd {
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

/// Reconnect delays of the subscriber: doubling from the first to the second, each with
/// jitter, so that the nodes of a cluster do not all hit a Redis that comes back at once.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that stayed up this long starts the backoff over.
const HEALTHY_SPELL: Duration = Duration::from_secs(10);

/// "Equal jitter": half of `d` fixed, half random.
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let half = d / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// Sleep `d` while still taking subscription changes, so the wanted set stays right. False
/// when the bus is gone.
async fn pause(
    d: Duration,
    cmds: &mut mpsc::Receiver<SubCmd>,
    wanted: &mut HashSet<RoomId>,
) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            c = cmds.recv() => match c {
                Some(SubCmd::Subscribe(r)) => { wanted.insert(r); }
                Some(SubCmd::Unsubscribe(r)) => { wanted.remove(&r); }
                None => return false,
            },
        }
    }
}

/// Keep a subscription for every wanted room; on any trouble reconnect (with backoff),
/// resubscribe, and ask every local room to check its head against the store.
async fn subscriber(
    client: redis::Client,
    node: Arc<str>,
    mut cmds: mpsc::Receiver<SubCmd>,
    events: mpsc::Sender<BusEvent>,
    metrics: Metrics,
    counters: BusCounters,
) {
    let BusCounters {
        redis_errors,
        reconnects,
        ..
    } = counters;
    let mut wanted: HashSet<RoomId> = HashSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut attempt_now = true;
    let mut ever_connected = false;
    loop {
        if !std::mem::take(&mut attempt_now) {
            if !pause(jittered(backoff), &mut cmds, &mut wanted).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        let pubsub = match tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            _ => {
                redis_errors.inc();
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // The control channel first: every node hears every disconnect.
        let mut healthy = matches!(
            tokio::time::timeout(OP_TIMEOUT, sink.subscribe(CONTROL)).await,
            Ok(Ok(()))
        );
        for room in &wanted {
            if !healthy {
                break;
            }
            if !matches!(
                tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channel(room))).await,
                Ok(Ok(()))
            ) {
                healthy = false;
                break;
            }
        }
        if !healthy {
            redis_errors.inc();
            continue;
        }
        if std::mem::replace(&mut ever_connected, true) {
            reconnects.inc();
        }
        let connected_at = std::time::Instant::now();
        // Whatever was published while we were not listening is in the store.
        for room in &wanted {
            let _ = events.try_send(BusEvent::Resync { room: room.clone() });
        }
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(SubCmd::Subscribe(r)) => {
                        let ok = matches!(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channel(&r))).await, Ok(Ok(())));
                        // Events published before the subscription took effect are in the store.
                        let _ = events.try_send(BusEvent::Resync { room: r.clone() });
                        wanted.insert(r);
                        if !ok { break; }
                    }
                    Some(SubCmd::Unsubscribe(r)) => {
                        wanted.remove(&r);
                        if !matches!(tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(channel(&r))).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                    None => return,
                },
                m = stream.next() => {
                    let Some(m) = m else { break };
                    let Ok(env) = rmp_serde::from_slice::<Envelope>(m.get_payload_bytes()) else {
                        metrics.bus_errors.inc();
                        continue;
                    };
                    if *env.node == *node {
                        continue; // our own event: local rooms already have it
                    }
                    let Some((ev, committed_us)) = from_wire(env.event) else {
                        metrics.bus_errors.inc();
                        continue;
                    };
                    if let Some(us) = committed_us {
                        let lag = now_us().saturating_sub(us) as f64 / 1e6;
                        metrics.commit_delivery_seconds.with_label_values(&["remote"]).observe(lag);
                    }
                    if events.try_send(ev).is_err() {
                        metrics.bus_errors.inc();
                    }
                }
                _ = ping.tick() => {
                    // A paused Redis answers nothing and reports no error: notice it. While
                    // subscribed, Redis answers a PING with `["pong", ""]`, not `+PONG`: read
                    // the reply as any value (read as a string it failed every time, and the
                    // subscriber reconnected in a loop, losing what was published meanwhile).
                    if !matches!(tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        redis_errors.inc();
        tracing::warn!("redis subscription lost; reconnecting");
        if connected_at.elapsed() >= HEALTHY_SPELL {
            backoff = BACKOFF_MIN;
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

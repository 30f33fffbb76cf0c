//! The subscriber task: one connection in subscribed mode holding a subscription for every
//! room with local members (and the control channel), reconnecting with jittered backoff; after
//! a reconnect every local room checks its head against the store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatty_actors::{BusEvent, Metrics};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bus::{BusCounters, SubCmd, Waiters, OP_TIMEOUT};
use super::envelope::*;

/// Reconnect delays of the subscriber: doubling from the first to the second, each with
/// jitter, so that the nodes of a cluster do not all hit a Redis that comes back at once.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that stayed up this long starts the backoff over.
pub(super) const HEALTHY_SPELL: Duration = Duration::from_secs(10);

/// "Equal jitter": half of `d` fixed, half random.
pub(super) fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let half = d / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// Sleep `d` while still taking subscription changes, so the wanted set stays right. False
/// when the bus is gone.
pub(super) async fn pause(
    d: Duration,
    cmds: &mut mpsc::Receiver<SubCmd>,
    wanted: &mut HashSet<Target>,
) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            c = cmds.recv() => match c {
                Some(SubCmd::Subscribe(t)) => { wanted.insert(t); }
                Some(SubCmd::Unsubscribe(t)) => { wanted.remove(&t); }
                None => return false,
            },
        }
    }
}

/// Keep a subscription for every wanted room; on any trouble reconnect (with backoff),
/// resubscribe, and ask every local room to check its head against the store.
pub(super) async fn subscriber(
    client: redis::Client,
    node: Arc<str>,
    mut cmds: mpsc::Receiver<SubCmd>,
    events: mpsc::Sender<BusEvent>,
    waiters: Arc<Waiters>,
    metrics: Metrics,
    counters: BusCounters,
) {
    let BusCounters {
        redis_errors,
        reconnects,
        ..
    } = counters;
    let mut wanted: HashSet<Target> = HashSet::new();
    // This node's own channel: the answers to the user events it asks about.
    let own = Target::Node(node.clone()).channel();
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
            tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&[CONTROL, own.as_str()])).await,
            Ok(Ok(()))
        );
        for target in &wanted {
            if !healthy {
                break;
            }
            if !matches!(
                tokio::time::timeout(OP_TIMEOUT, sink.subscribe(target.channel())).await,
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
        // Whatever was published while we were not listening is in the store. (A user's
        // events are not: they are pushes, handed to whoever is listening.)
        for target in &wanted {
            if let Target::Room(room) = target {
                let _ = events.try_send(BusEvent::Resync { room: room.clone() });
            }
        }
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(SubCmd::Subscribe(t)) => {
                        let ok = matches!(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(t.channel())).await, Ok(Ok(())));
                        // Events published before the subscription took effect are in the store.
                        if let Target::Room(room) = &t {
                            let _ = events.try_send(BusEvent::Resync { room: room.clone() });
                        }
                        wanted.insert(t);
                        if !ok { break; }
                    }
                    Some(SubCmd::Unsubscribe(t)) => {
                        wanted.remove(&t);
                        if !matches!(tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(t.channel())).await, Ok(Ok(()))) {
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
                    if let WireEvent::Delivered { id, count } = env.event {
                        waiters.answer(id, count);
                        continue;
                    }
                    if *env.node == *node {
                        // Our own event: local rooms and sockets already have it. Our own user
                        // event counts as an answer (of 0: the sockets here were counted
                        // when it was sent), so the ask need not wait for itself.
                        if let WireEvent::UserEvent { reply_id, reply_node: Some(_), .. } = env.event {
                            waiters.answer(reply_id, 0);
                        }
                        continue;
                    }
                    let Some((mut ev, committed_us)) = from_wire(env.event) else {
                        metrics.bus_errors.inc();
                        continue;
                    };
                    receive_spans(&mut ev, committed_us);
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

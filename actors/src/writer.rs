//! The Writer: batched persistence in parallel lanes.
//!
//! A send goes to one of `writer.lanes` lanes, chosen by a hash of its room, so a room (and one
//! sender's sends into it) always lands in the same lane and keeps its order, while lanes
//! commit in parallel and share the database's fsyncs (group commit). Each lane is a plain
//! batching loop (`lane.rs`) over its own bounded queue: a full queue answers `unavailable`
//! at once instead of growing.
//!
//! The Writer actor is the lanes' supervisor: it starts them, watches them, and fails (so the
//! NodeSupervisor restarts it with fresh lanes) if one stops. The lanes' queues live in the
//! `WriterHandle`, which outlives restarts: a restarted Writer swaps in new queues, the old
//! lanes commit what they hold and end, and each new lane waits for its predecessor first.

mod batch;
mod lane;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus::IntCounter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::ids::RoomId;
use crate::metrics::{Alive, Metrics};
use crate::outbox::Outbox;
use crate::ports::{Appended, ChangeOutcome, ClusterBus, MessageStore, NewChange, NewMessage};
use crate::protocol::{Encoding, ErrorCode, Ref, ServerFrame};
use crate::rooms::RoomRegistry;
use lane::{Lane, LaneDone, LaneItem};

/// Why a send was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The store or the queue cannot take it now; retry with the same cid.
    Unavailable,
}

/// Who hears the outcome of a send. The Writer answers each send exactly once.
pub enum Ack {
    /// A socket: the `ack` frame, or the `unavailable` error, goes to its outbox.
    Socket {
        /// The sender's socket.
        outbox: Outbox,
        /// Its encoding.
        encoding: Encoding,
        /// The `ref` of its `send`, echoed in the answer.
        r#ref: Ref,
        /// Counts an `unavailable` answer (`chatty_errors_sent_total{code="unavailable"}`).
        unavailable: IntCounter,
    },
    /// A caller waiting for the outcome (the HTTP API).
    Reply(oneshot::Sender<Result<Appended, WriteError>>),
}

impl Ack {
    /// Answer: `msg` is the send, known unless the send was dropped unanswered.
    fn send(self, msg: Option<&NewMessage>, r: Result<Appended, WriteError>) {
        match self {
            Ack::Reply(tx) => {
                let _ = tx.send(r);
            }
            Ack::Socket {
                outbox,
                encoding,
                r#ref,
                unavailable,
            } => {
                let frame = match (r, msg) {
                    (Ok(a), Some(m)) => ServerFrame::Ack {
                        r#ref: r#ref.as_deref(),
                        room: &m.room,
                        cid: &m.cid,
                        seq: a.seq,
                        ts: a.ts,
                    },
                    _ => {
                        unavailable.inc();
                        ServerFrame::error(
                            r#ref.as_deref(),
                            ErrorCode::Unavailable,
                            "not stored; retry with the same cid",
                        )
                    }
                };
                outbox.push(frame.encode(encoding));
            }
        }
    }
}

/// Guarantees an answer: a send dropped without one (a lane that panicked, a node shutting
/// down, a full queue) is answered `unavailable`, which is always safe because the client
/// retries with the same cid and idempotency returns the original seq if it did commit.
struct AckGuard(Option<Ack>);

impl AckGuard {
    fn answer(mut self, msg: &NewMessage, r: Result<Appended, WriteError>) {
        if let Some(ack) = self.0.take() {
            ack.send(Some(msg), r)
        }
    }
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            ack.send(None, Err(WriteError::Unavailable))
        }
    }
}

/// Who hears the outcome of a change (v1.1). The Writer answers each change exactly once.
pub enum ChangeAck {
    /// A socket: `updated`, or the error, goes to its outbox.
    Socket {
        /// The asking socket.
        outbox: Outbox,
        /// Its encoding.
        encoding: Encoding,
        /// The request's `ref`, echoed in the answer.
        r#ref: Ref,
        /// `chatty_errors_sent_total`, by code.
        errors: prometheus::IntCounterVec,
    },
    /// A caller waiting for the outcome (the HTTP API).
    Reply(oneshot::Sender<Result<ChangeOutcome, WriteError>>),
}

/// Guarantees a change an answer, as `AckGuard` does a send: dropped unanswered, it says
/// `unavailable` (safe: a change states where the message should end up, so a retry of one
/// that did commit changes nothing).
struct ChangeGuard(Option<ChangeAck>);

impl ChangeGuard {
    fn answer(mut self, c: &NewChange, r: Result<ChangeOutcome, WriteError>) {
        let Some(ack) = self.0.take() else { return };
        let (outbox, encoding, r#ref, errors) = match ack {
            ChangeAck::Reply(tx) => {
                let _ = tx.send(r);
                return;
            }
            ChangeAck::Socket {
                outbox,
                encoding,
                r#ref,
                errors,
            } => (outbox, encoding, r#ref, errors),
        };
        let rev = match &r {
            Ok(ChangeOutcome::Changed(u)) => Some(u.rev()),
            Ok(ChangeOutcome::Unchanged(rev)) => Some(*rev),
            _ => None,
        };
        let frame = match (rev, r) {
            (Some(rev), _) => ServerFrame::Updated {
                r#ref: r#ref.as_deref(),
                room: &c.room,
                seq: c.seq,
                rev,
            },
            (None, r) => {
                let (code, message) = match r {
                    Ok(ChangeOutcome::NotFound) => (ErrorCode::NotFound, "no such message"),
                    Ok(ChangeOutcome::Forbidden) => {
                        (ErrorCode::Forbidden, "not yours to change, or deleted")
                    }
                    Ok(ChangeOutcome::TooManyReactions) => (
                        ErrorCode::TooLarge,
                        "too many reaction keys on this message",
                    ),
                    _ => (ErrorCode::Unavailable, "not stored; retry"),
                };
                errors.with_label_values(&[code.as_str()]).inc();
                ServerFrame::error(r#ref.as_deref(), code, message)
            }
        };
        outbox.push(frame.encode(encoding));
    }
}

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            match ack {
                ChangeAck::Reply(tx) => {
                    let _ = tx.send(Err(WriteError::Unavailable));
                }
                ChangeAck::Socket {
                    outbox,
                    encoding,
                    r#ref,
                    errors,
                } => {
                    let code = ErrorCode::Unavailable;
                    errors.with_label_values(&[code.as_str()]).inc();
                    let f = ServerFrame::error(r#ref.as_deref(), code, "not stored; retry");
                    outbox.push(f.encode(encoding));
                }
            }
        }
    }
}

/// A change waiting in a lane.
pub(crate) struct PendingChange {
    change: NewChange,
    ack: ChangeGuard,
    _slot: Slot,
}

/// Counts a send as waiting for the Writer until it is answered or dropped (the queue-depth
/// gauge).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A send waiting in a lane.
pub(crate) struct Pending {
    msg: NewMessage,
    ack: AckGuard,
    enqueued: Instant,
    _slot: Slot,
}

pub enum WriterMsg {
    /// Look at the lanes: one that stopped while the Writer runs has failed.
    Check,
    /// Fault injection for tests.
    Panic,
}

pub struct Writer;

pub struct WriterArgs {
    pub store: Arc<dyn MessageStore>,
    /// Where private rooms' committed messages go for their `inbox` frames.
    pub inbox: crate::inbox::Inbox,
    pub rooms: Arc<RoomRegistry>,
    pub bus: Arc<dyn ClusterBus>,
    pub config: NodeConfig,
    pub metrics: Metrics,
    pub handle: WriterHandle,
}

pub struct WriterState {
    /// Each lane's "finished" flag, by lane index.
    lanes: Vec<watch::Receiver<bool>>,
    ticker: Option<JoinHandle<()>>,
    _alive: Alive,
}

#[ractor::async_trait]
impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        args: WriterArgs,
    ) -> Result<WriterState, ActorProcessingErr> {
        let n = args.config.writer_lanes.max(1);
        // The bound is node-wide; each lane gets its share.
        let per_lane = args.config.writer_queue.div_ceil(n).max(1);
        let handle = args.handle.clone();
        let alive = Alive::new(&args.metrics, "writer");
        let predecessors = handle.finished_flags();
        let args = Arc::new(args);
        let mut queues = Vec::with_capacity(n);
        let mut watched = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::channel(per_lane);
            let (done_tx, done_rx) = watch::channel(false);
            let lane = Lane {
                index,
                rx,
                args: args.clone(),
                predecessor: predecessors.get(index).cloned(),
                _done: LaneDone(done_tx),
            };
            tokio::spawn(lane.run());
            queues.push(LaneQueue {
                tx,
                finished: done_rx.clone(),
            });
            watched.push(done_rx);
        }
        // Lanes beyond the new count (a restart never changes it, but be exact) still finish
        // on their own: their queues close when the old set is dropped here.
        handle.install(queues);
        handle.set_actor(myself.clone());
        let ticker = myself.send_interval(Duration::from_secs(1), || WriterMsg::Check);
        Ok(WriterState {
            lanes: watched,
            ticker: Some(ticker),
            _alive: alive,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WriterMsg>,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Check => {
                if let Some(i) = state.lanes.iter().position(|f| *f.borrow()) {
                    // The lanes' queues stay open while this Writer runs, so a finished lane
                    // panicked. Failing hands the decision to the NodeSupervisor (restart).
                    return Err(format!("writer lane {i} stopped").into());
                }
            }
            WriterMsg::Panic => panic!("fault injection: writer panic requested"),
        }
        Ok(())
    }
}

/// The sending side of one lane.
#[derive(Clone)]
struct LaneQueue {
    tx: mpsc::Sender<LaneItem>,
    finished: watch::Receiver<bool>,
}

/// The typed front of the Writer: routes each send to its room's lane.
#[derive(Clone)]
pub struct WriterHandle {
    lanes: Arc<RwLock<Arc<[LaneQueue]>>>,
    actor: Arc<RwLock<Option<ActorRef<WriterMsg>>>>,
    /// Sends admitted and not yet answered (the queue-depth gauge).
    in_flight: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl WriterHandle {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            lanes: Arc::new(RwLock::new(Arc::from(Vec::new()))),
            actor: Arc::new(RwLock::new(None)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    fn install(&self, lanes: Vec<LaneQueue>) {
        *self.lanes.write() = lanes.into();
    }

    fn finished_flags(&self) -> Vec<watch::Receiver<bool>> {
        self.lanes
            .read()
            .iter()
            .map(|l| l.finished.clone())
            .collect()
    }

    fn set_actor(&self, actor: ActorRef<WriterMsg>) {
        *self.actor.write() = Some(actor);
    }

    pub fn actor(&self) -> Option<ActorRef<WriterMsg>> {
        self.actor.read().clone()
    }

    /// Queue a send. `ack` is answered exactly once: with the committed seq, or `unavailable`
    /// (immediately, when the room's lane is full or no lane runs).
    pub fn submit(&self, msg: NewMessage, ack: Ack) {
        let ack = AckGuard(Some(ack));
        let lanes = self.lanes.read().clone();
        if lanes.is_empty() {
            self.metrics.writer_unavailable.inc();
            return; // dropping the guard answers `unavailable`
        }
        let lane = &lanes[lane_of(msg.room.as_str(), lanes.len())];
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            msg,
            ack,
            enqueued: Instant::now(),
            _slot: Slot(self.in_flight.clone()),
        };
        if let Err(e) = lane.tx.try_send(LaneItem::Send(pending)) {
            // Full, or the lane is being replaced: the send comes back in the error and its
            // guard answers `unavailable` as it drops.
            self.metrics.writer_unavailable.inc();
            drop(e);
        }
    }

    /// Queue a change (v1.1) in its room's lane, behind the room's sends. `ack` is answered
    /// exactly once, as for a send.
    pub fn change(&self, change: NewChange, ack: ChangeAck) {
        let ack = ChangeGuard(Some(ack));
        let lanes = self.lanes.read().clone();
        if lanes.is_empty() {
            self.metrics.writer_unavailable.inc();
            return; // dropping the guard answers `unavailable`
        }
        let lane = &lanes[lane_of(change.room.as_str(), lanes.len())];
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let pending = PendingChange {
            change,
            ack,
            _slot: Slot(self.in_flight.clone()),
        };
        if lane.tx.try_send(LaneItem::Change(pending)).is_err() {
            self.metrics.writer_unavailable.inc();
        }
    }

    /// Wait until everything queued so far is committed and answered, in every lane.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let lanes = self.lanes.read().clone();
        let all = async {
            let mut replies = Vec::with_capacity(lanes.len());
            for l in lanes.iter() {
                let (tx, rx) = oneshot::channel();
                if l.tx.send(LaneItem::Drain(tx)).await.is_ok() {
                    replies.push(rx);
                }
            }
            for r in replies {
                let _ = r.await;
            }
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Sends admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The lane (of `lanes`) that carries `room`'s sends.
pub fn writer_lane(room: &RoomId, lanes: usize) -> usize {
    lane_of(room.as_str(), lanes.max(1))
}

/// The lane of a room: FNV-1a of its id. Stable for the life of the process, which is all
/// that ordering needs (a room's sends on another node go through that node's own lanes and
/// are ordered by the database's row lock on the room).
fn lane_of(room: &str, lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

#[cfg(test)]
mod tests;

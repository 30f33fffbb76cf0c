//! The Writer: one per node, batching sends across rooms into group commits.
//!
//! It drains its mailbox into a batch and flushes when the batch is full, when the mailbox is
//! empty (so a lone message is not held back), or on a short interval. Only after the store
//! commits does anything become visible: acks go to senders, messages go to the local rooms and
//! onto the cluster bus. While the store fails it retries the batch with backoff; the bounded
//! queue in front of it fills meanwhile and further sends are answered `unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::ports::{Appended, BusEvent, ClusterBus, MessageStore, NewMessage, StoreError};
use crate::protocol::StoredMessage;
use crate::rooms::RoomRegistry;

/// Why a send was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The store or the queue cannot take it now; retry with the same cid.
    Unavailable,
}

/// Called exactly once with the outcome of a send.
pub type AckFn = Box<dyn FnOnce(Result<Appended, WriteError>) + Send>;

/// Guarantees an answer: a send dropped without one (a Writer that panicked, a node shutting
/// down) is answered `unavailable`, which is always safe because the client retries with the
/// same cid and idempotency returns the original seq if it did commit.
struct AckGuard(Option<AckFn>);

impl AckGuard {
    fn answer(mut self, r: Result<Appended, WriteError>) {
        if let Some(f) = self.0.take() {
            f(r)
        }
    }
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(WriteError::Unavailable))
        }
    }
}

/// Releases one slot of the Writer's bounded queue when the send is answered or dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Pending {
    msg: NewMessage,
    ack: AckGuard,
    enqueued: Instant,
    _slot: Slot,
}

pub enum WriterMsg {
    Append(Pending),
    Tick,
    /// Commit everything queued before this message, then reply.
    Drain(RpcReplyPort<()>),
    /// Fault injection for tests.
    Panic,
}

pub struct Writer;

pub struct WriterArgs {
    pub store: Arc<dyn MessageStore>,
    pub rooms: Arc<RoomRegistry>,
    pub bus: Arc<dyn ClusterBus>,
    pub config: NodeConfig,
    pub metrics: Metrics,
    pub counters: WriterCounters,
}

/// Counters shared between the handle (which admits sends) and the actor.
#[derive(Clone, Default)]
pub struct WriterCounters {
    /// Sends admitted and not yet answered: what the queue bound applies to.
    in_flight: Arc<AtomicUsize>,
    /// Sends in the mailbox, not yet taken into a batch: zero means "flush now".
    mailbox: Arc<AtomicUsize>,
}

pub struct WriterState {
    args: Arc<WriterArgs>,
    batch: Vec<Pending>,
    ticker: Option<JoinHandle<()>>,
    /// Flushes in flight, at most `writer_max_in_flight`.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Resolves when the newest flush has finished: flushes finish in the order they
    /// started, so acks and deliveries never overtake an earlier batch.
    last_done: Option<tokio::sync::oneshot::Receiver<()>>,
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
        let ticker = myself.send_interval(args.config.writer_flush_interval, || WriterMsg::Tick);
        args.metrics
            .actors_alive
            .with_label_values(&["writer"])
            .inc();
        Ok(WriterState {
            batch: Vec::with_capacity(args.config.writer_batch_max),
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                args.config.writer_max_in_flight.max(1),
            )),
            args: Arc::new(args),
            ticker: Some(ticker),
            last_done: None,
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
        state
            .args
            .metrics
            .actors_alive
            .with_label_values(&["writer"])
            .dec();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Append(p) => {
                let left = state.args.counters.mailbox.fetch_sub(1, Ordering::AcqRel) - 1;
                state.batch.push(p);
                if state.batch.len() >= state.args.config.writer_batch_max || left == 0 {
                    flush(state).await;
                }
            }
            WriterMsg::Tick => {
                // Only a batch nothing else is about to join: ticks sit in the mailbox among
                // the appends, and flushing at each one would cut batches to a few rows.
                let queued = state.args.counters.mailbox.load(Ordering::Acquire);
                if !state.batch.is_empty() && queued == 0 {
                    flush(state).await;
                }
            }
            WriterMsg::Drain(reply) => {
                flush(state).await;
                if let Some(done) = state.last_done.take() {
                    let _ = done.await;
                }
                let _ = reply.send(());
            }
            WriterMsg::Panic => panic!("fault injection: writer panic requested"),
        }
        state
            .args
            .metrics
            .queue_depth
            .with_label_values(&["writer"])
            .set(state.args.counters.in_flight.load(Ordering::Relaxed) as i64);
        Ok(())
    }
}

/// Start committing the batch. Up to `writer_max_in_flight` flushes overlap (each commit
/// waits on the database most of its time); while that many are in flight the actor waits
/// here, so its mailbox keeps filling the next, larger batch.
async fn flush(state: &mut WriterState) {
    if state.batch.is_empty() {
        return;
    }
    let Ok(permit) = state.in_flight.clone().acquire_owned().await else {
        return;
    };
    let batch = std::mem::take(&mut state.batch);
    let previous = state.last_done.take();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    state.last_done = Some(done_rx);
    let args = state.args.clone();
    let span = tracing::debug_span!("flush", size = batch.len());
    tokio::spawn(
        async move {
            commit_batch(&args, batch, previous).await;
            drop(permit);
            let _ = done_tx.send(());
        }
        .instrument(span),
    );
}

/// Commit one batch (retrying while the store fails), then, once every earlier batch is
/// visible, make this one visible: acks to senders, messages to rooms and the bus.
async fn commit_batch(
    a: &WriterArgs,
    batch: Vec<Pending>,
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    // Collapse repeats of one (room, user, cid) inside the batch: the store sees each key once
    // and every repeat gets the first one's outcome, flagged as a duplicate.
    let mut first: HashMap<(&str, &str, &str), usize> = HashMap::with_capacity(batch.len());
    let mut unique: Vec<NewMessage> = Vec::with_capacity(batch.len());
    let mut slot_of: Vec<(usize, bool)> = Vec::with_capacity(batch.len());
    for p in &batch {
        let key = (p.msg.room.as_str(), p.msg.from.as_str(), p.msg.cid.as_str());
        match first.get(&key) {
            Some(&i) => slot_of.push((i, true)),
            None => {
                first.insert(key, unique.len());
                slot_of.push((unique.len(), false));
                unique.push(p.msg.clone());
            }
        }
    }
    drop(first);

    let started = Instant::now();
    let mut backoff = Duration::from_millis(25);
    let outcome = loop {
        let t = Instant::now();
        match crate::ports::timed(a.store.append(&unique)).await {
            Ok(res) => {
                a.metrics
                    .writer_flush_seconds
                    .observe(t.elapsed().as_secs_f64());
                break Ok(res);
            }
            Err(e) => {
                a.metrics.writer_flush_errors.inc();
                if started.elapsed() >= a.config.writer_retry_max {
                    tracing::error!(error = %e, size = unique.len(), "flush failed, giving up on batch");
                    break Err(e);
                }
                tracing::warn!(error = %e, size = unique.len(), retry_in_ms = backoff.as_millis() as u64, "flush failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    if let Some(previous) = previous {
        let _ = previous.await;
    }

    let results = match outcome {
        Ok(r) if r.len() == unique.len() => r,
        Ok(_) | Err(StoreError::Other(_)) | Err(StoreError::Unavailable(_)) => {
            // Not committed (or the store broke its contract): nobody is acked, everybody may
            // retry with the same cid.
            a.metrics.writer_unavailable.inc_by(batch.len() as u64);
            for p in batch {
                p.ack.answer(Err(WriteError::Unavailable));
            }
            return;
        }
    };
    let committed = Instant::now();
    a.metrics.writer_batch_size.observe(unique.len() as f64);

    // Group the new messages by room, keeping seq order (a room's seqs within one batch are
    // ascending in input order).
    let mut by_room: HashMap<&str, Vec<StoredMessage>> = HashMap::new();
    let mut persisted = 0u64;
    for (m, r) in unique.iter().zip(&results) {
        if r.duplicate {
            continue;
        }
        persisted += 1;
        by_room
            .entry(m.room.as_str())
            .or_default()
            .push(StoredMessage {
                room: m.room.clone(),
                seq: r.seq,
                from: m.from.clone(),
                name: m.name.clone(),
                cid: m.cid.clone(),
                body: m.body.clone(),
                ts: r.ts,
            });
    }
    a.metrics.messages_persisted.inc_by(persisted);

    for (_, mut msgs) in by_room {
        msgs.sort_unstable_by_key(|m| m.seq);
        let msgs: Arc<[StoredMessage]> = msgs.into();
        a.rooms.deliver(msgs.clone(), committed);
        a.bus.publish(BusEvent::Messages(msgs));
    }

    for (p, (i, in_batch_dup)) in batch.into_iter().zip(slot_of) {
        let mut r = results[i];
        r.duplicate |= in_batch_dup;
        if r.duplicate {
            a.metrics.messages_duplicate.inc();
        }
        a.metrics
            .send_ack_seconds
            .observe(p.enqueued.elapsed().as_secs_f64());
        p.ack.answer(Ok(r));
    }
}

/// The typed front of the Writer: admits sends into its bounded queue.
#[derive(Clone)]
pub struct WriterHandle {
    actor: Arc<RwLock<Option<ActorRef<WriterMsg>>>>,
    counters: WriterCounters,
    capacity: usize,
    metrics: Metrics,
}

impl WriterHandle {
    pub fn new(counters: WriterCounters, capacity: usize, metrics: Metrics) -> Self {
        Self {
            actor: Arc::new(RwLock::new(None)),
            counters,
            capacity,
            metrics,
        }
    }

    /// Point the handle at a (re)started Writer.
    pub fn set_actor(&self, actor: ActorRef<WriterMsg>) {
        *self.actor.write() = Some(actor);
    }

    pub fn actor(&self) -> Option<ActorRef<WriterMsg>> {
        self.actor.read().clone()
    }

    /// Queue a send. `ack` is called exactly once: with the committed seq, or `unavailable`
    /// (immediately, when the queue is full).
    pub fn submit(&self, msg: NewMessage, ack: AckFn) {
        let ack = AckGuard(Some(ack));
        let prev = self.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.counters.in_flight.clone());
        if prev >= self.capacity {
            self.metrics.writer_unavailable.inc();
            drop(slot);
            ack.answer(Err(WriteError::Unavailable));
            return;
        }
        let Some(actor) = self.actor() else {
            self.metrics.writer_unavailable.inc();
            return; // dropping the guard answers `unavailable`
        };
        self.counters.mailbox.fetch_add(1, Ordering::AcqRel);
        let pending = Pending {
            msg,
            ack,
            enqueued: Instant::now(),
            _slot: slot,
        };
        if let Err(e) = actor.cast(WriterMsg::Append(pending)) {
            // The Writer is restarting; the message (and its guard) come back in the error.
            self.counters.mailbox.fetch_sub(1, Ordering::AcqRel);
            self.metrics.writer_unavailable.inc();
            drop(e);
        }
    }

    /// Wait until everything queued so far is committed and answered.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let Some(actor) = self.actor() else {
            return true;
        };
        matches!(
            actor.call(WriterMsg::Drain, Some(timeout)).await,
            Ok(ractor::rpc::CallResult::Success(()))
        )
    }

    pub(crate) fn counters(&self) -> WriterCounters {
        self.counters.clone()
    }

    /// Sends admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Reset the mailbox count after a restart dropped the old mailbox.
    pub fn reset_mailbox(&self) {
        self.counters.mailbox.store(0, Ordering::Relaxed);
    }
}

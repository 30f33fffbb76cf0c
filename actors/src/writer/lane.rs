//! One writer lane: a plain batching loop over its own bounded queue.
//!
//! It waits for the first send, takes whatever else is already queued (up to
//! `writer.batch_max`), commits that as one batch and only then makes it visible. While a batch
//! commits, the next one fills in the queue, so under load batches grow by themselves and at
//! low load a lone send is committed at once, with no timer to wait for. A room always maps to
//! the same lane and a lane commits one batch at a time, so a room's acks and deliveries keep
//! commit order; lanes commit in parallel and share the database's fsyncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::batch::Assembled;
use super::{Pending, PendingChange, WriteError, WriterArgs};
use crate::ids::RoomId;
use crate::ports::{ChangeOutcome, StoreError, STORE_TIMEOUT};

/// What a lane's queue carries.
pub(crate) enum LaneItem {
    Send(Pending),
    /// A change of a message (v1.1): committed after the sends queued with it.
    Change(PendingChange),
    /// Answer once everything queued before this item is committed and answered.
    Drain(oneshot::Sender<()>),
}

/// Set when the lane's task ends, however it ends (its queue closed, or a panic unwinding
/// through the task): the Writer watches it, and a successor lane waits for it.
pub(crate) struct LaneDone(pub watch::Sender<bool>);

impl Drop for LaneDone {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

pub(crate) struct Lane {
    pub index: usize,
    pub rx: mpsc::Receiver<LaneItem>,
    pub args: Arc<WriterArgs>,
    /// The lane this one replaces (after a Writer restart): it must finish committing first,
    /// or one room's sends could commit out of order across the two.
    pub predecessor: Option<watch::Receiver<bool>>,
    /// Held, never read: dropping it (however the task ends) marks the lane finished.
    pub _done: LaneDone,
}

/// Rooms whose last batch ended in doubt: the store failed or timed out, so the batch may have
/// committed after all (a statement cut off by a timeout can still commit on the server). Its
/// sends were answered `unavailable` and nothing was delivered; if it did commit, the room's
/// members would not see those messages until a later one revealed the gap. So such rooms, and
/// rooms where a send turns out to be stored already (a retry after such a doubt), are told to
/// compare what they delivered with the store, here and on every node, now and again after
/// the lane's next successful commit.
#[derive(Default)]
pub(crate) struct Doubt {
    rooms: std::collections::HashSet<RoomId>,
}

impl Doubt {
    fn note(&mut self, a: &WriterArgs, rooms: impl IntoIterator<Item = RoomId>) {
        for room in rooms {
            // Once per doubtful room until it settles: a room whose head check fails retries
            // by itself, and every further nudge during a long outage would start one more
            // retry loop against a database that is trying to come back.
            if !self.rooms.contains(&room) {
                recheck(a, &room);
                self.rooms.insert(room);
            }
        }
    }

    fn settle(&mut self, a: &WriterArgs) {
        for room in self.rooms.drain() {
            recheck(a, &room);
        }
    }
}

fn recheck(a: &WriterArgs, room: &RoomId) {
    a.rooms.check_head(room);
    a.bus
        .publish(crate::ports::BusEvent::Resync { room: room.clone() });
}

impl Lane {
    pub async fn run(mut self) {
        if let Some(mut p) = self.predecessor.take() {
            let _ = p.wait_for(|finished| *finished).await;
        }
        let max = self.args.config.writer_batch_max.max(1);
        let mut batch: Vec<Pending> = Vec::with_capacity(max);
        let mut changes: Vec<PendingChange> = Vec::new();
        let mut drains: Vec<oneshot::Sender<()>> = Vec::new();
        let mut doubt = Doubt::default();
        while let Some(item) = self.rx.recv().await {
            let mut next = Some(item);
            while let Some(item) = next.take() {
                match item {
                    LaneItem::Send(p) => batch.push(p),
                    LaneItem::Change(c) => changes.push(c),
                    LaneItem::Drain(reply) => drains.push(reply),
                }
                if batch.len() + changes.len() < max {
                    next = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                let span = tracing::debug_span!("flush", lane = self.index, size = batch.len());
                commit(&self.args, self.index, &mut batch, &mut doubt)
                    .instrument(span)
                    .await;
            }
            // A change names a seq its sender was acked, so it never needs a send of the same
            // batch: committing the sends first keeps the plain path exactly as it was.
            if !changes.is_empty() {
                let span = tracing::debug_span!("changes", lane = self.index, size = changes.len());
                commit_changes(&self.args, &mut changes, &mut doubt)
                    .instrument(span)
                    .await;
            }
            for reply in drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

/// Retry `attempt` while the store fails, up to `writer.retry_max`, each try bounded by what
/// is left of that budget; the store's answer, or its last error, and whether an attempt
/// failed first (it may have committed anyway: a statement cut off by a timeout can).
async fn with_retries<T, F, Fut>(
    a: &WriterArgs,
    size: usize,
    mut attempt: F,
) -> (Result<T, StoreError>, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    // Tokio's clock, so tests with paused time see the retry budget run out.
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(25);
    let mut failed = false;
    loop {
        let t = Instant::now();
        // Each attempt gets at most what is left of the retry budget, so a database that
        // hangs (frozen, or a black-holed connection) is answered `unavailable` after
        // `writer.retry_max`, not up to one store timeout later.
        let left = a.config.writer_retry_max.saturating_sub(started.elapsed());
        let limit = STORE_TIMEOUT.min(left.max(Duration::from_millis(100)));
        let r = match tokio::time::timeout(limit, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("store call timed out".into())),
        };
        match r {
            Ok(res) => {
                a.metrics
                    .writer_flush_seconds
                    .observe(t.elapsed().as_secs_f64());
                return (Ok(res), failed);
            }
            Err(e) => {
                failed = true;
                a.metrics.writer_flush_errors.inc();
                if started.elapsed() >= a.config.writer_retry_max {
                    tracing::error!(error = %e, size, "flush failed, giving up on batch");
                    return (Err(e), true);
                }
                tracing::warn!(error = %e, size, retry_in_ms = backoff.as_millis() as u64, "flush failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Commit a batch of changes in one transaction, then make them visible: `update`s to the
/// local rooms and onto the bus (per room, in revision order), `updated` to the askers.
async fn commit_changes(a: &WriterArgs, batch: &mut Vec<PendingChange>, doubt: &mut Doubt) {
    let changes: Vec<_> = batch.iter().map(|p| p.change.clone()).collect();
    let keys = a.config.max_reaction_keys;
    let (outcome, in_doubt) =
        with_retries(a, changes.len(), || a.store.change(&changes, keys)).await;
    let results = match outcome {
        Ok(r) if r.len() == changes.len() => r,
        _ => {
            // Maybe committed: the rooms compare their revision with the store's.
            doubt.note(a, changes.iter().map(|c| c.room.clone()));
            for p in batch.drain(..) {
                p.ack.answer(&p.change, Err(WriteError::Unavailable));
            }
            return;
        }
    };
    doubt.settle(a);
    if in_doubt {
        // An attempt that failed may have committed: its changes then came back from the
        // retry as "unchanged" and were never broadcast. Their rooms read what they missed
        // (once each; a batch that failed for good is left to `doubt` above).
        let mut rooms: Vec<&RoomId> = changes.iter().map(|c| &c.room).collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            recheck(a, room);
        }
    }
    // Per room, in the order committed (so in revision order).
    let mut runs: Vec<Vec<crate::protocol::StoredUpdate>> = Vec::new();
    for r in &results {
        if let ChangeOutcome::Changed(u) = r {
            a.metrics
                .changes_committed
                .with_label_values(&[u.change.as_str()])
                .inc();
            match runs
                .iter_mut()
                .find(|run| run[0].message.room == u.message.room)
            {
                Some(run) => run.push((**u).clone()),
                None => runs.push(vec![(**u).clone()]),
            }
        }
    }
    for run in runs {
        let run: Arc<[crate::protocol::StoredUpdate]> = run.into();
        a.rooms.deliver_updates(run.clone());
        a.bus.publish(crate::ports::BusEvent::Updates(run));
    }
    for (p, r) in batch.drain(..).zip(results) {
        p.ack.answer(&p.change, Ok(r));
    }
}

/// Commit one batch (retrying while the store fails, up to `writer.retry_max`), then make it
/// visible: messages to the local rooms and onto the bus, acks to the senders.
async fn commit(a: &WriterArgs, lane: usize, batch: &mut Vec<Pending>, doubt: &mut Doubt) {
    let mut asm = Assembled::new(batch.iter().map(|p| &p.msg));
    let spans = BatchSpans::open(lane, &mut asm.unique, &asm.slot_of, batch);
    // A send committed by a failed attempt comes back from the retry as a duplicate, which
    // rechecks its room below.
    let (outcome, _) = with_retries(a, asm.unique.len(), || a.store.append(&asm.unique)).await;
    if let Some(spans) = &spans {
        spans.close(outcome.as_ref().ok());
    }
    let results = match outcome {
        Ok(r) if r.len() == asm.unique.len() => r,
        Ok(_) | Err(StoreError::Other(_)) | Err(StoreError::Unavailable(_)) => {
            // Not committed (or the store broke its contract): nobody is acked, everybody may
            // retry with the same cid.
            a.metrics.writer_unavailable.inc_by(batch.len() as u64);
            doubt.note(a, asm.unique.iter().map(|m| m.room.clone()));
            for p in batch.drain(..) {
                p.ack.answer(&p.msg, Err(WriteError::Unavailable));
            }
            return;
        }
    };
    doubt.settle(a);
    for (m, r) in asm.unique.iter().zip(&results) {
        if r.duplicate {
            recheck(a, &m.room);
        }
    }
    let committed = Instant::now();
    a.metrics.writer_batch_size.observe(asm.unique.len() as f64);

    let runs = asm.visible(&results);
    let persisted: usize = runs.iter().map(|(r, _)| r.len()).sum();
    a.metrics.messages_persisted.inc_by(persisted as u64);
    for (run, private) in runs {
        a.rooms.deliver(run.clone(), committed);
        if private {
            a.inbox.offer(&run);
        }
        a.bus.publish(crate::ports::BusEvent::Messages(run));
    }

    let now = Instant::now();
    for (k, p) in batch.drain(..).enumerate() {
        let r = asm.answer(&results, k);
        if r.duplicate {
            a.metrics.messages_duplicate.inc();
        }
        a.metrics
            .send_ack_seconds
            .observe(now.duration_since(p.enqueued).as_secs_f64());
        p.ack.answer(&p.msg, Ok(r));
    }
}

/// The spans of a batch holding sampled sends: `chatty.lane.batch` for the group commit,
/// linked to each sampled send, and per sampled send a `chatty.lane.commit`, the child of its
/// receive span and linked back to the batch. The batch span roots a trace of its own (one
/// commit serves many traces); the per-send spans keep each message's trace whole.
struct BatchSpans {
    batch: tracing::Span,
    /// Per sampled send: its index in the batch's unique sends, and its span.
    each: Vec<(usize, tracing::Span)>,
}

impl BatchSpans {
    /// Open the spans (none unless a send was sampled) and make each sampled send's trace
    /// context its commit span, the parent of its delivery and bus spans.
    fn open(
        lane: usize,
        unique: &mut [crate::ports::NewMessage],
        slot_of: &[(usize, bool)],
        batch: &[Pending],
    ) -> Option<Self> {
        use crate::trace::{follow, link, TraceParent, TARGET};
        if !crate::trace::enabled() || unique.iter().all(|m| m.trace.is_none()) {
            return None;
        }
        let size = unique.len();
        let oldest = batch
            .iter()
            .map(|p| p.enqueued)
            .min()
            .unwrap_or_else(Instant::now);
        let batch_span = tracing::info_span!(
            target: TARGET, parent: None, "chatty.lane.batch", lane, size,
            queued_us = oldest.elapsed().as_micros() as u64,
            otel.status_code = tracing::field::Empty,
        );
        // When each unique send was first queued (a repeat of its cid may follow it).
        let mut enqueued = vec![None; unique.len()];
        for (p, &(i, _)) in batch.iter().zip(slot_of) {
            enqueued[i].get_or_insert(p.enqueued);
        }
        let mut each = Vec::new();
        for (i, m) in unique.iter_mut().enumerate() {
            let Some(tp) = m.trace else { continue };
            link(&batch_span, &tp);
            let queued = enqueued[i].unwrap_or(oldest);
            let span = tracing::info_span!(
                target: TARGET, parent: None, "chatty.lane.commit",
                trace_id = %tp.trace_id(), room = %m.room, lane, batch_size = size,
                queued_us = queued.elapsed().as_micros() as u64,
                seq = tracing::field::Empty, otel.status_code = tracing::field::Empty,
            );
            m.trace = follow(&span, &tp);
            each.push((i, span));
        }
        if let Some(b) = TraceParent::of(&batch_span) {
            for (_, s) in &each {
                link(s, &b);
            }
        }
        Some(Self {
            batch: batch_span,
            each,
        })
    }

    /// Record the outcome: each committed send's seq, or the error every span failed with.
    fn close(&self, results: Option<&Vec<crate::ports::Appended>>) {
        for (i, span) in &self.each {
            match results.and_then(|r| r.get(*i)) {
                Some(r) => {
                    span.record("seq", r.seq);
                    span.in_scope(|| {
                        // The span names the room (a log line lifts it from there).
                        tracing::debug!(seq = r.seq, duplicate = r.duplicate, "committed")
                    });
                }
                None => {
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
        if results.is_none() {
            self.batch.record("otel.status_code", "ERROR");
        }
    }
}

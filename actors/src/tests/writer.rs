//! The Writer over `MemStore`: batching, per-room order, retries, `unavailable`, idempotency.

use std::sync::Arc;

use ractor::Actor;
use tokio::sync::mpsc;

use super::{config, new_msg, room, settle};
use crate::metrics::Metrics;
use crate::ports::{Appended, BusEvent, NewMessage};
use crate::rooms::RoomRegistry;
use crate::testkit::{MemBus, MemStore, Op};
use crate::writer::{WriteError, Writer, WriterArgs, WriterHandle};

struct Harness {
    writer: WriterHandle,
    store: Arc<MemStore>,
    bus: Arc<MemBus>,
}

async fn start() -> Harness {
    let store = MemStore::new();
    let bus = MemBus::new();
    let metrics = Metrics::new(&prometheus::Registry::new());
    let writer = WriterHandle::new(metrics.clone());
    let rooms = RoomRegistry::new();
    let inbox = crate::inbox::Inbox::for_tests(store.clone(), rooms.clone(), bus.clone(), &metrics);
    let args = WriterArgs {
        store: store.clone(),
        inbox,
        rooms,
        bus: bus.clone(),
        config: config(),
        metrics,
        handle: writer.clone(),
    };
    Actor::spawn(None, Writer, args).await.unwrap();
    Harness { writer, store, bus }
}

type Answer = (usize, Result<Appended, WriteError>);

impl Harness {
    /// Submit every send before any lane runs (they queue together); answers are tagged with
    /// the send's index.
    fn submit(&self, sends: Vec<NewMessage>) -> mpsc::UnboundedReceiver<Answer> {
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, m) in sends.into_iter().enumerate() {
            let tx = tx.clone();
            // A oneshot per send (answered exactly once by type), forwarded tagged with its index.
            let (one, answer) = tokio::sync::oneshot::channel();
            self.writer.submit(m, crate::writer::Ack::Reply(one));
            tokio::spawn(async move {
                if let Ok(r) = answer.await {
                    let _ = tx.send((i, r));
                }
            });
        }
        rx
    }

    /// Submit and wait for every answer, in submission order; checks each send is answered
    /// exactly once.
    async fn run(&self, sends: Vec<NewMessage>) -> Vec<Result<Appended, WriteError>> {
        let n = sends.len();
        let mut rx = self.submit(sends);
        let mut out: Vec<Option<Result<Appended, WriteError>>> = vec![None; n];
        for _ in 0..n {
            let (i, r) = rx.recv().await.expect("every send is answered");
            assert!(out[i].replace(r).is_none(), "send {i} answered twice");
        }
        settle().await;
        assert!(rx.try_recv().is_err(), "no answer beyond one per send");
        out.into_iter().map(Option::unwrap).collect()
    }
}

fn seqs(answers: &[Result<Appended, WriteError>]) -> Vec<u64> {
    answers.iter().map(|a| a.expect("acked").seq).collect()
}

#[tokio::test(start_paused = true)]
async fn sends_into_several_rooms_queued_together_commit_as_one_append() {
    let h = start().await;
    let sends = (0..9)
        .map(|i| new_msg(&format!("r{}", i % 3), "ann", &format!("c{i}")))
        .collect();
    let answers = h.run(sends).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(h.store.calls(Op::Append), 1, "one store call for the batch");
    assert_eq!(h.store.batches(), vec![9]);
    for r in ["r0", "r1", "r2"] {
        assert_eq!(h.store.messages(&room(r)).len(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn each_rooms_seqs_follow_the_order_of_its_sends_within_a_batch() {
    let h = start().await;
    let mut sends = Vec::new();
    for i in 0..4 {
        sends.push(new_msg("a", "ann", &format!("a{i}")));
        sends.push(new_msg("b", "bob", &format!("b{i}")));
        sends.push(new_msg("a", "cy", &format!("x{i}")));
    }
    let answers = h.run(sends).await;
    let a: Vec<u64> = answers.iter().step_by(3).map(|r| r.unwrap().seq).collect();
    let b: Vec<u64> = answers
        .iter()
        .skip(1)
        .step_by(3)
        .map(|r| r.unwrap().seq)
        .collect();
    let x: Vec<u64> = answers
        .iter()
        .skip(2)
        .step_by(3)
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(a, [1, 3, 5, 7]);
    assert_eq!(x, [2, 4, 6, 8]);
    assert_eq!(b, [1, 2, 3, 4]);
    // Stored and published in that order: the cids by seq interleave like the sends.
    let cids: Vec<String> = h
        .store
        .messages(&room("a"))
        .iter()
        .map(|m| m.cid.as_str().to_string())
        .collect();
    assert_eq!(cids, ["a0", "x0", "a1", "x1", "a2", "x2", "a3", "x3"]);
    assert_eq!(
        h.bus.published_seqs(&room("a")),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(h.bus.published_seqs(&room("b")), [1, 2, 3, 4]);
    // One Messages event per room for the batch.
    let events = h.bus.published();
    assert_eq!(events.len(), 2, "one event per room");
    assert!(events.iter().all(|e| matches!(e, BusEvent::Messages(_))));
}

#[tokio::test(start_paused = true)]
async fn a_store_failing_twice_is_retried_and_every_send_is_acked_once_with_nothing_lost() {
    let h = start().await;
    h.store.fail_next(Op::Append, 2);
    let sends = (0..5)
        .map(|i| new_msg("r", "ann", &format!("c{i}")))
        .collect();
    let answers = h.run(sends).await;
    assert_eq!(seqs(&answers), [1, 2, 3, 4, 5]);
    assert_eq!(
        h.store.calls(Op::Append),
        3,
        "two failures, then the commit"
    );
    assert_eq!(h.store.batches(), vec![5, 5, 5], "the same batch each time");
    let stored = h.store.messages(&room("r"));
    assert_eq!(stored.len(), 5, "nothing stored twice");
    assert_eq!(h.bus.published_seqs(&room("r")), [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_failing_answers_unavailable_and_a_retry_later_commits_once() {
    let h = start().await;
    h.store.fail_next(Op::Append, usize::MAX);
    let answers = h
        .run(vec![new_msg("r", "ann", "c1"), new_msg("r", "bob", "c1")])
        .await;
    assert_eq!(
        answers,
        [Err(WriteError::Unavailable), Err(WriteError::Unavailable)]
    );
    assert!(h.store.calls(Op::Append) > 1, "retried before giving up");
    assert!(h.store.messages(&room("r")).is_empty());
    assert!(
        h.bus.published_seqs(&room("r")).is_empty(),
        "nothing delivered"
    );
    assert_eq!(h.bus.resyncs(&room("r")), 1, "the room is told to recheck");
    // The store is back: the client's retry with the same cid commits it once.
    h.store.fail_next(Op::Append, 0);
    let again = h.run(vec![new_msg("r", "ann", "c1")]).await;
    assert_eq!(seqs(&again), [1]);
    assert!(!again[0].unwrap().duplicate);
    assert_eq!(h.store.messages(&room("r")).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_same_cid_sent_twice_is_stored_once_and_acked_with_its_original_seq() {
    let h = start().await;
    let first = h
        .run(vec![
            new_msg("r", "ann", "same"),
            new_msg("r", "ann", "next"),
        ])
        .await;
    let again = h.run(vec![new_msg("r", "ann", "same")]).await;
    let (f, a) = (first[0].unwrap(), again[0].unwrap());
    assert_eq!((f.seq, f.duplicate), (1, false));
    assert_eq!((a.seq, a.ts, a.duplicate), (1, f.ts, true));
    assert_eq!(h.store.messages(&room("r")).len(), 2);
    assert_eq!(
        h.bus.published_seqs(&room("r")),
        [1, 2],
        "a duplicate is not delivered again"
    );
}

#[tokio::test(start_paused = true)]
async fn repeats_of_one_cid_in_one_batch_share_a_seq_and_the_cid_is_per_user() {
    let h = start().await;
    let answers = h
        .run(vec![
            new_msg("r", "ann", "c"),
            new_msg("r", "ann", "c"),
            new_msg("r", "bob", "c"),
        ])
        .await;
    let got: Vec<(u64, bool)> = answers
        .iter()
        .map(|a| (a.unwrap().seq, a.unwrap().duplicate))
        .collect();
    assert_eq!(got, [(1, false), (1, true), (2, false)]);
    assert_eq!(
        h.store.batches(),
        vec![2],
        "the repeat never reaches the store"
    );
    assert_eq!(h.store.messages(&room("r")).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_committed_but_reported_failure_is_acked_with_its_seq_on_retry() {
    let h = start().await;
    h.store.commit_then_fail_next(usize::MAX);
    let mut rx = h.submit(vec![new_msg("r", "ann", "c1")]);
    // Every attempt commits then fails: the first stores it, the retries find it stored.
    let (_, r) = rx.recv().await.unwrap();
    assert_eq!(r, Err(WriteError::Unavailable));
    assert_eq!(h.store.messages(&room("r")).len(), 1, "stored exactly once");
    h.store.commit_then_fail_next(0);
    let again = h.run(vec![new_msg("r", "ann", "c1")]).await;
    assert_eq!(
        (again[0].unwrap().seq, again[0].unwrap().duplicate),
        (1, true)
    );
    assert_eq!(h.store.messages(&room("r")).len(), 1);
    assert!(
        h.bus.resyncs(&room("r")) >= 2,
        "rooms recheck what no one delivered"
    );
}

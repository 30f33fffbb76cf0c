//! The Writer against an in-memory store: ordering across lanes, parallel commits, bounded
//! queues, retries. No database: what these show is the lanes' own behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use ractor::Actor;
use tokio::sync::mpsc;

use super::*;
use crate::bus::LocalBus;
use crate::ids::{Body, Cid, DisplayName, RoomId, Seq, UserId};
use crate::inbox::Inbox;
use crate::ports::{BusEvent, JoinInfo, StoreError};
use crate::protocol::StoredMessage;

/// (room, user, cid)
type Key = (String, String, String);

/// Assigns seqs like a real store; can be told to fail, or to hold every append until
/// `hold_until` appends are in progress at once.
#[derive(Default)]
struct FakeStore {
    heads: Mutex<HashMap<String, Seq>>,
    keys: Mutex<HashMap<Key, (Seq, i64)>>,
    in_progress: AtomicUsize,
    most_at_once: AtomicUsize,
    hold_until: AtomicUsize,
    failures_left: AtomicUsize,
    appends: AtomicUsize,
    /// Never answer (a frozen database).
    hang: std::sync::atomic::AtomicBool,
    /// Commit the next batch, then report a failure (a statement cut off after it committed).
    commit_then_fail: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl MessageStore for FakeStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let now = self.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let want = self.hold_until.load(Ordering::SeqCst);
        for _ in 0..200 {
            if self.in_progress.load(Ordering::SeqCst) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::yield_now().await;
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable("injected".into()));
        }
        let mut heads = self.heads.lock();
        let mut keys = self.keys.lock();
        let lie = self.commit_then_fail.swap(false, Ordering::SeqCst);
        let out: Vec<Appended> = batch
            .iter()
            .map(|m| {
                let key = (
                    m.room.as_str().to_string(),
                    m.from.as_str().to_string(),
                    m.cid.as_str().to_string(),
                );
                if let Some(&(seq, ts)) = keys.get(&key) {
                    return Appended {
                        seq,
                        ts,
                        duplicate: true,
                        private: false,
                    };
                }
                let head = heads.entry(key.0.clone()).or_default();
                *head += 1;
                keys.insert(key, (*head, 1));
                Appended {
                    seq: *head,
                    ts: 1,
                    duplicate: false,
                    private: false,
                }
            })
            .collect();
        if lie {
            return Err(StoreError::Unavailable(
                "connection lost after commit".into(),
            ));
        }
        Ok(out)
    }
    async fn heads(&self, room: &RoomId) -> Result<crate::ports::Heads, StoreError> {
        let seq = *self.heads.lock().get(room.as_str()).unwrap_or(&0);
        Ok(crate::ports::Heads { seq, rev: 0 })
    }
    async fn change(
        &self,
        _: &[crate::ports::NewChange],
        _: u32,
    ) -> Result<Vec<crate::ports::ChangeOutcome>, StoreError> {
        Err(StoreError::Other(
            "the writer's append fake keeps no messages".into(),
        ))
    }
    async fn changes(
        &self,
        _: &RoomId,
        _: crate::ids::Rev,
        _: Seq,
        _: u32,
    ) -> Result<(Vec<crate::protocol::StoredUpdate>, crate::ids::Rev), StoreError> {
        Ok((Vec::new(), 0))
    }
    async fn after(&self, _: &RoomId, _: Seq, _: u32) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn before(
        &self,
        _: &RoomId,
        _: Option<Seq>,
        _: u32,
        _: Option<&UserId>,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        Ok((Vec::new(), false))
    }
    async fn rooms_of(
        &self,
        _: &UserId,
        _: u32,
    ) -> Result<Vec<crate::ports::RoomSummary>, StoreError> {
        Ok(Vec::new())
    }
    async fn join_info(&self, _: &RoomId, _: &UserId) -> Result<JoinInfo, StoreError> {
        Ok(JoinInfo {
            allowed: true,
            banned: false,
            role: crate::access::RoomRole::Member,
            read: 0,
        })
    }
    async fn set_read(&self, _: &RoomId, _: &UserId, seq: Seq) -> Result<Seq, StoreError> {
        Ok(seq)
    }
    async fn set_private(&self, _: &RoomId, _: bool) -> Result<(), StoreError> {
        Ok(())
    }
    async fn set_member(
        &self,
        _: &RoomId,
        _: &UserId,
        _: Option<crate::access::RoomRole>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn remove_member(&self, _: &RoomId, _: &UserId) -> Result<(), StoreError> {
        Ok(())
    }
    async fn members(&self, _: &RoomId, _: u32) -> Result<Vec<UserId>, StoreError> {
        Ok(Vec::new())
    }
    async fn ban(&self, _: &RoomId, _: &UserId) -> Result<(), StoreError> {
        Ok(())
    }
    async fn unban(&self, _: &RoomId, _: &UserId) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// A bus that keeps what is published.
#[derive(Default)]
struct RecordingBus {
    events: Mutex<Vec<BusEvent>>,
}

impl ClusterBus for RecordingBus {
    fn publish(&self, event: BusEvent) {
        self.events.lock().push(event);
    }
    fn subscribe(&self, _: &RoomId) {}
    fn unsubscribe(&self, _: &RoomId) {}
    fn take_receiver(&self) -> Option<mpsc::Receiver<BusEvent>> {
        None
    }
}

impl RecordingBus {
    fn resyncs(&self, room: &str) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e, BusEvent::Resync { room: r } if r.as_str() == room))
            .count()
    }
}

fn config(lanes: usize, queue: usize) -> NodeConfig {
    NodeConfig {
        writer_lanes: lanes,
        writer_queue: queue,
        writer_batch_max: 64,
        writer_retry_max: Duration::from_secs(2),
        ..NodeConfig::default()
    }
}

async fn start(store: Arc<FakeStore>, config: NodeConfig) -> (WriterHandle, ActorRef<WriterMsg>) {
    start_with_bus(store, config, LocalBus::new()).await
}

async fn start_with_bus(
    store: Arc<FakeStore>,
    config: NodeConfig,
    bus: Arc<dyn ClusterBus>,
) -> (WriterHandle, ActorRef<WriterMsg>) {
    let metrics = Metrics::new(&prometheus::Registry::new());
    let handle = WriterHandle::new(metrics.clone());
    let rooms = RoomRegistry::new();
    let inbox = Inbox::for_tests(store.clone(), rooms.clone(), bus.clone(), &metrics);
    let args = WriterArgs {
        store,
        inbox,
        rooms,
        bus,
        config,
        metrics,
        handle: handle.clone(),
    };
    let (actor, _) = Actor::spawn(None, Writer, args).await.unwrap();
    (handle, actor)
}

/// A valid send (also used by the batch tests).
pub(super) fn msg(room: &str, user: &str, cid: &str) -> NewMessage {
    NewMessage {
        trace: None,
        room: RoomId::parse(room).unwrap(),
        meta: None,
        from: UserId::parse(user).unwrap(),
        name: DisplayName::sanitize(user),
        cid: Cid::parse(cid).unwrap(),
        body: Body::parse("hello", 100).unwrap(),
    }
}

type Answers = mpsc::UnboundedReceiver<(usize, Result<Appended, WriteError>)>;

/// Submit `sends` in order; answers arrive tagged with the send's index.
fn submit_all(w: &WriterHandle, sends: Vec<NewMessage>) -> Answers {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, m) in sends.into_iter().enumerate() {
        let tx = tx.clone();
        // A oneshot per send (answered exactly once by type), forwarded tagged with its index.
        let (one, answer) = tokio::sync::oneshot::channel();
        w.submit(m, crate::writer::Ack::Reply(one));
        tokio::spawn(async move {
            if let Ok(r) = answer.await {
                let _ = tx.send((i, r));
            }
        });
    }
    rx
}

async fn collect(rx: &mut Answers, n: usize) -> Vec<Result<Appended, WriteError>> {
    let mut out = vec![None; n];
    for _ in 0..n {
        let (i, r) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every send is answered")
            .expect("answer channel open");
        out[i] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// Two room names that map to different lanes.
fn rooms_on_two_lanes(lanes: usize) -> (String, String) {
    let a = "room-0".to_string();
    let b = (1..)
        .map(|i| format!("room-{i}"))
        .find(|r| lane_of(r, lanes) != lane_of(&a, lanes))
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_senders_quick_sends_into_one_room_get_increasing_seqs_with_several_lanes() {
    let (w, _a) = start(Arc::new(FakeStore::default()), config(4, 10_000)).await;
    // Interleave other rooms so every lane is busy while this sender's sends queue.
    let mut sends = Vec::new();
    for i in 0..1000 {
        sends.push(msg("chat", "alice", &format!("c{i}")));
        sends.push(msg(&format!("other-{}", i % 7), "bob", &format!("c{i}")));
    }
    let n = sends.len();
    let mut rx = submit_all(&w, sends);
    let answers = collect(&mut rx, n).await;
    let seqs: Vec<Seq> = answers
        .iter()
        .step_by(2)
        .map(|r| r.expect("acked").seq)
        .collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<Seq>>());
}

#[tokio::test]
async fn rooms_on_different_lanes_commit_concurrently() {
    let store = Arc::new(FakeStore::default());
    // Every append waits (up to 1 s) until two are in progress at once.
    store.hold_until.store(2, Ordering::SeqCst);
    let (w, _a) = start(store.clone(), config(4, 1000)).await;
    let (a, b) = rooms_on_two_lanes(4);
    let mut rx = submit_all(&w, vec![msg(&a, "u", "1"), msg(&b, "u", "1")]);
    let answers = collect(&mut rx, 2).await;
    assert!(answers.iter().all(|r| r.is_ok()));
    assert_eq!(store.most_at_once.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn one_lane_commits_one_batch_at_a_time() {
    let store = Arc::new(FakeStore::default());
    store.hold_until.store(2, Ordering::SeqCst);
    let (w, _a) = start(store.clone(), config(1, 1000)).await;
    let (a, b) = rooms_on_two_lanes(4);
    let mut rx = submit_all(&w, vec![msg(&a, "u", "1")]);
    let mut rx2 = submit_all(&w, vec![msg(&b, "u", "1")]);
    collect(&mut rx, 1).await;
    collect(&mut rx2, 1).await;
    assert_eq!(store.most_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_lane_answers_unavailable_at_once_and_the_rest_commit() {
    let store = Arc::new(FakeStore::default());
    // Hold the first batch long enough for the queue to fill behind it.
    store.hold_until.store(usize::MAX, Ordering::SeqCst);
    let (w, _a) = start(store.clone(), config(1, 10)).await;
    let mut rx = submit_all(&w, vec![msg("r", "u", "first")]);
    tokio::time::sleep(Duration::from_millis(50)).await; // the lane has taken it
    let sends = (0..30).map(|i| msg("r", "u", &format!("c{i}"))).collect();
    let mut rest = submit_all(&w, sends);
    let answers = collect(&mut rest, 30).await;
    let refused = answers.iter().filter(|r| r.is_err()).count();
    assert_eq!(refused, 20, "a queue of 10 takes 10 of 30");
    assert!(collect(&mut rx, 1).await[0].is_ok());
}

#[tokio::test]
async fn a_failing_store_is_retried_and_acks_wait_for_the_commit() {
    let store = Arc::new(FakeStore::default());
    store.failures_left.store(3, Ordering::SeqCst);
    let (w, _a) = start(store.clone(), config(2, 100)).await;
    let mut rx = submit_all(&w, vec![msg("r", "u", "1"), msg("r", "u", "2")]);
    let answers = collect(&mut rx, 2).await;
    assert_eq!(answers[0].unwrap().seq, 1);
    assert_eq!(answers[1].unwrap().seq, 2);
    assert!(
        store.appends.load(Ordering::SeqCst) >= 4,
        "three failures, then a commit"
    );
}

#[tokio::test]
async fn a_store_failing_past_the_retry_limit_answers_unavailable() {
    let store = Arc::new(FakeStore::default());
    store.failures_left.store(usize::MAX, Ordering::SeqCst);
    let mut c = config(2, 100);
    c.writer_retry_max = Duration::from_millis(100);
    let (w, _a) = start(store.clone(), c).await;
    let mut rx = submit_all(&w, vec![msg("r", "u", "1")]);
    assert_eq!(collect(&mut rx, 1).await[0], Err(WriteError::Unavailable));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_answered_unavailable_within_the_retry_budget() {
    let store = Arc::new(FakeStore::default());
    store.hang.store(true, Ordering::SeqCst);
    let mut c = config(1, 100);
    c.writer_retry_max = Duration::from_secs(2);
    let (w, _a) = start(store.clone(), c).await;
    let t = tokio::time::Instant::now();
    let mut rx = submit_all(&w, vec![msg("r", "u", "1")]);
    assert_eq!(collect(&mut rx, 1).await[0], Err(WriteError::Unavailable));
    // Virtual time: the budget (2 s), not the budget plus a whole store timeout (5 s).
    assert!(
        t.elapsed() < crate::ports::STORE_TIMEOUT,
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_batch_in_doubt_makes_its_rooms_recheck_the_store_now_and_after_the_next_commit() {
    let store = Arc::new(FakeStore::default());
    store.commit_then_fail.store(true, Ordering::SeqCst);
    let bus = Arc::new(RecordingBus::default());
    let mut c = config(1, 100);
    c.writer_retry_max = Duration::ZERO; // no retry: answer the first failure
    let (w, _a) = start_with_bus(store.clone(), c, bus.clone()).await;
    let mut rx = submit_all(&w, vec![msg("doubt", "u", "1")]);
    assert_eq!(collect(&mut rx, 1).await[0], Err(WriteError::Unavailable));
    // It did commit: no member has it, so the room is told to look.
    assert_eq!(bus.resyncs("doubt"), 1);
    // The client retries with the same cid: stored already, so the room looks again, and the
    // next successful commit settles the doubt with one more look.
    let mut rx = submit_all(&w, vec![msg("doubt", "u", "1")]);
    let again = collect(&mut rx, 1).await[0].unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(bus.resyncs("doubt"), 3);
    // Doubt settled: later commits do not recheck.
    let mut rx = submit_all(&w, vec![msg("doubt", "u", "2")]);
    collect(&mut rx, 1).await;
    assert_eq!(bus.resyncs("doubt"), 3);
}

#[tokio::test]
async fn drain_returns_once_every_lane_has_committed() {
    let store = Arc::new(FakeStore::default());
    let (w, _a) = start(store.clone(), config(4, 10_000)).await;
    let sends: Vec<NewMessage> = (0..500)
        .map(|i| msg(&format!("r{}", i % 13), "u", &format!("c{i}")))
        .collect();
    let mut answers: Vec<_> = sends
        .into_iter()
        .map(|m| {
            let (one, answer) = tokio::sync::oneshot::channel();
            w.submit(m, crate::writer::Ack::Reply(one));
            answer
        })
        .collect();
    assert!(w.drain(Duration::from_secs(5)).await);
    // Every answer was sent before drain returned.
    let answered = answers
        .iter_mut()
        .map(|a| a.try_recv())
        .filter(Result::is_ok)
        .count();
    assert_eq!(answered, 500);
    assert_eq!(w.in_flight(), 0);
}

#[tokio::test]
async fn a_restarted_writer_keeps_each_rooms_order() {
    let store = Arc::new(FakeStore::default());
    let (w, first) = start(store.clone(), config(2, 10_000)).await;
    let mut rx = submit_all(
        &w,
        (0..200).map(|i| msg("r", "u", &format!("a{i}"))).collect(),
    );
    // A second Writer takes over the same handle while the first's lanes still hold sends.
    first.stop(None);
    let metrics = Metrics::new(&prometheus::Registry::new());
    let (rooms, bus): (_, Arc<dyn ClusterBus>) = (RoomRegistry::new(), LocalBus::new());
    let args = WriterArgs {
        store: store.clone(),
        inbox: Inbox::for_tests(store.clone(), rooms.clone(), bus.clone(), &metrics),
        rooms,
        bus,
        config: config(2, 10_000),
        metrics,
        handle: w.clone(),
    };
    let (_second, _) = Actor::spawn(None, Writer, args).await.unwrap();
    let mut rx2 = submit_all(
        &w,
        (0..200).map(|i| msg("r", "u", &format!("b{i}"))).collect(),
    );
    let a: Vec<Seq> = collect(&mut rx, 200)
        .await
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
    let b: Vec<Seq> = collect(&mut rx2, 200)
        .await
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(a, (1..=200).collect::<Vec<Seq>>());
    assert_eq!(b, (201..=400).collect::<Vec<Seq>>());
}

#[test]
fn lanes_spread_rooms() {
    let mut count = [0usize; 4];
    for i in 0..4000 {
        count[lane_of(&format!("room-{i}"), 4)] += 1;
    }
    assert!(count.iter().all(|&c| c > 800), "{count:?}");
}

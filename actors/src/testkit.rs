//! In-memory fakes of the ports, for tests of the actors without PostgreSQL or Redis.
//!
//! `MemStore` keeps the contract of the real stores (`chatty`'s `store/postgres.rs` and
//! `store/sqlite.rs`): per-room seqs start at 1 and are gap-free, a batch commits whole or not
//! at all, a repeated (room, user, cid) answers its original seq and ts forever, read markers
//! only move forward and never past the head, a room nobody made private is public. On top it
//! counts calls per operation and can be told to fail, panic or hold calls.
//! `MemBus` records what is published and subscribed and injects events "from other nodes".
//! `MemPresence` is a PresenceStore that records refreshes and can panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::access::RoomRole;
use crate::ids::{DisplayName, ReactionKey, Rev, RoomId, Seq, UserId};
use crate::lifecycle::{self, Decision, RowEffect};
use crate::ports::{
    Appended, Beat, BusEvent, ChangeOutcome, ClusterBus, Heads, JoinInfo, MessageStore, NewChange,
    NewMessage, PresenceItem, PresenceStore, StoreError,
};
use crate::protocol::{ChangeKind, StoredUpdate};
use crate::protocol::{PresenceEntry, StoredMessage};

/// The operations of `MessageStore`, to count and to make misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Append,
    Change,
    Changes,
    RoomsOf,
    Head,
    After,
    Before,
    JoinInfo,
    SetRead,
    SetPrivate,
    SetMember,
    RemoveMember,
    Members,
    Ban,
    Unban,
}

#[derive(Default)]
struct Faults {
    /// How many of the next calls answer `Unavailable` (doing nothing), and how many panic.
    fail: usize,
    panic: usize,
    /// Commit this many appends, then answer `Unavailable` anyway (a batch in doubt).
    commit_then_fail: usize,
}

#[derive(Default)]
struct Room {
    head: Seq,
    private: bool,
    messages: BTreeMap<Seq, StoredMessage>,
    /// (user, cid) → (seq, ts): the idempotency key of the real stores.
    cids: HashMap<(UserId, String), (Seq, i64)>,
    members: HashMap<UserId, RoomRole>,
    bans: HashSet<UserId>,
    read: HashMap<UserId, Seq>,
    /// v1.1: the room's revision and every (seq, user, key) reaction row.
    rev: Rev,
    reactions: HashSet<(Seq, UserId, ReactionKey)>,
    /// Each changed message's last change and who made it (the stores' `change`, `changed_by`).
    last_change: HashMap<Seq, (ChangeKind, UserId)>,
}

impl Room {
    /// A user's reaction keys on one message.
    fn mine(&self, seq: Seq, user: &UserId) -> Vec<ReactionKey> {
        let mut keys: Vec<ReactionKey> = self
            .reactions
            .iter()
            .filter(|(s, u, _)| *s == seq && u == user)
            .map(|(_, _, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }
}

/// An in-memory `MessageStore` with fault injection.
pub(crate) struct MemStore {
    rooms: Mutex<HashMap<RoomId, Room>>,
    faults: Mutex<HashMap<Op, Faults>>,
    calls: Mutex<HashMap<Op, usize>>,
    /// The size of every batch `append` was called with (failed attempts included).
    batches: Mutex<Vec<usize>>,
    /// Per operation: open (true) lets calls through; closed holds them until opened.
    gates: Mutex<HashMap<Op, watch::Sender<bool>>>,
    /// A logical clock for `ts`: one tick per committed batch.
    clock: Mutex<i64>,
}

impl MemStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            rooms: Mutex::default(),
            faults: Mutex::default(),
            calls: Mutex::default(),
            batches: Mutex::default(),
            gates: Mutex::default(),
            clock: Mutex::new(1_700_000_000_000),
        })
    }

    /// The next `n` calls of `op` answer `Unavailable` and change nothing.
    pub fn fail_next(&self, op: Op, n: usize) {
        self.faults.lock().entry(op).or_default().fail = n;
    }

    /// The next `n` calls of `op` panic (a bug in an adapter).
    pub fn panic_next(&self, op: Op, n: usize) {
        self.faults.lock().entry(op).or_default().panic = n;
    }

    /// The next `n` appends commit, then report `Unavailable` (the answer was lost).
    pub fn commit_then_fail_next(&self, n: usize) {
        self.faults
            .lock()
            .entry(Op::Append)
            .or_default()
            .commit_then_fail = n;
    }

    /// Hold every call of `op` (a frozen database) until `release(op)`.
    pub fn hold(&self, op: Op) {
        self.gate(op).send_replace(false);
    }

    /// Let held and later calls of `op` through.
    pub fn release(&self, op: Op) {
        self.gate(op).send_replace(true);
    }

    fn gate(&self, op: Op) -> watch::Sender<bool> {
        let mut gates = self.gates.lock();
        gates
            .entry(op)
            .or_insert_with(|| watch::channel(true).0)
            .clone()
    }

    /// Calls of `op` so far (failed, held and panicked ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.calls.lock().get(&op).copied().unwrap_or(0)
    }

    /// The size of each batch `append` was called with, in call order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().clone()
    }

    /// Every stored message of `room`, ascending seq.
    pub fn messages(&self, room: &RoomId) -> Vec<StoredMessage> {
        self.rooms
            .lock()
            .get(room)
            .map(|r| r.messages.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Commit `batch` directly, as another node's Writer would: no fault, no call counted.
    pub fn commit(&self, batch: &[NewMessage]) -> Vec<Appended> {
        let ts = {
            let mut c = self.clock.lock();
            *c += 1;
            *c
        };
        let mut rooms = self.rooms.lock();
        batch
            .iter()
            .map(|m| {
                let room = rooms.entry(m.room.clone()).or_default();
                let key = (m.from.clone(), m.cid.as_str().to_string());
                if let Some(&(seq, ts)) = room.cids.get(&key) {
                    return Appended {
                        seq,
                        ts,
                        duplicate: true,
                        private: room.private,
                    };
                }
                room.head += 1;
                let seq = room.head;
                room.cids.insert(key, (seq, ts));
                room.messages.insert(
                    seq,
                    StoredMessage {
                        trace: None,
                        room: m.room.clone(),
                        seq,
                        from: m.from.clone(),
                        name: m.name.clone(),
                        cid: m.cid.clone(),
                        body: m.body.clone(),
                        ts,
                        meta: m.meta.clone(),
                        state: Default::default(),
                    },
                );
                Appended {
                    seq,
                    ts,
                    duplicate: false,
                    private: room.private,
                }
            })
            .collect()
    }

    /// Count the call, wait at the gate, then panic or fail if told to. `Ok(true)` for an
    /// append that must commit and then report a failure.
    async fn enter(&self, op: Op) -> Result<bool, StoreError> {
        *self.calls.lock().entry(op).or_default() += 1;
        let mut gate = self.gate(op).subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut faults = self.faults.lock();
        let f = faults.entry(op).or_default();
        if f.panic > 0 {
            f.panic -= 1;
            drop(faults);
            panic!("MemStore: injected panic in {op:?}");
        }
        if f.fail > 0 {
            f.fail -= 1;
            return Err(StoreError::Unavailable(
                format!("injected failure of {op:?}").into(),
            ));
        }
        if f.commit_then_fail > 0 {
            f.commit_then_fail -= 1;
            return Ok(true);
        }
        Ok(false)
    }

    fn with_room<T>(&self, room: &RoomId, f: impl FnOnce(&mut Room) -> T) -> T {
        f(self.rooms.lock().entry(room.clone()).or_default())
    }

    fn read_room<T>(&self, room: &RoomId, f: impl FnOnce(Option<&Room>) -> T) -> T {
        f(self.rooms.lock().get(room))
    }
}

#[async_trait]
impl MessageStore for MemStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        self.batches.lock().push(batch.len());
        let lie = self.enter(Op::Append).await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.commit(batch);
        if lie {
            return Err(StoreError::Unavailable(
                "connection lost after commit".into(),
            ));
        }
        Ok(out)
    }

    async fn heads(&self, room: &RoomId) -> Result<Heads, StoreError> {
        self.enter(Op::Head).await?;
        Ok(self.read_room(room, |r| {
            r.map_or(Heads::default(), |r| Heads {
                seq: r.head,
                rev: r.rev,
            })
        }))
    }

    async fn change(
        &self,
        batch: &[NewChange],
        max_reaction_keys: u32,
    ) -> Result<Vec<ChangeOutcome>, StoreError> {
        let lie = self.enter(Op::Change).await?;
        let now = {
            let mut c = self.clock.lock();
            *c += 1;
            *c
        };
        let mut rooms = self.rooms.lock();
        let out = batch
            .iter()
            .map(|c| {
                let room = rooms.entry(c.room.clone()).or_default();
                let mine = room.mine(c.seq, &c.by);
                let stored = room.messages.get(&c.seq);
                match lifecycle::decide(stored, &mine, c, max_reaction_keys, now) {
                    Decision::Answer(o) => o,
                    Decision::Apply { message, effect } => {
                        room.rev += 1;
                        match effect {
                            RowEffect::AddReaction(k) => {
                                room.reactions.insert((c.seq, c.by.clone(), k));
                            }
                            RowEffect::RemoveReaction(k) => {
                                room.reactions.remove(&(c.seq, c.by.clone(), k));
                            }
                            RowEffect::ClearReactions => {
                                room.reactions.retain(|(s, _, _)| *s != c.seq);
                            }
                            RowEffect::None => {}
                        }
                        let u = lifecycle::commit(*message, c, room.rev);
                        room.messages.insert(c.seq, u.message.clone());
                        room.last_change.insert(c.seq, (u.change, u.by.clone()));
                        ChangeOutcome::Changed(Box::new(u))
                    }
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

    async fn changes(
        &self,
        room: &RoomId,
        after: Rev,
        max_seq: Seq,
        limit: u32,
    ) -> Result<(Vec<StoredUpdate>, Rev), StoreError> {
        self.enter(Op::Changes).await?;
        Ok(self.read_room(room, |r| {
            let Some(r) = r else {
                return (Vec::new(), 0);
            };
            let mut changed: Vec<&StoredMessage> = r
                .messages
                .range(..=max_seq)
                .map(|(_, m)| m)
                .filter(|m| m.state.rev > after)
                .collect();
            changed.sort_by_key(|m| m.state.rev);
            let ups = changed
                .into_iter()
                .take(limit as usize)
                .filter_map(|m| {
                    let (change, by) = r.last_change.get(&m.seq)?.clone();
                    Some(StoredUpdate {
                        change,
                        by,
                        message: m.clone(),
                    })
                })
                .collect();
            (ups, r.rev)
        }))
    }

    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.enter(Op::After).await?;
        Ok(self.read_room(room, |r| {
            r.map(|r| {
                r.messages
                    .range(after.saturating_add(1)..)
                    .take(limit as usize)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default()
        }))
    }

    async fn before(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
        viewer: Option<&UserId>,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        self.enter(Op::Before).await?;
        Ok(self.read_room(room, |r| {
            let Some(r) = r else {
                return (Vec::new(), false);
            };
            // Newest first, one more than the page, like the SQL; then oldest first.
            let mut rows: Vec<StoredMessage> = r
                .messages
                .range(..before.unwrap_or(Seq::MAX))
                .rev()
                .take(limit as usize + 1)
                .map(|(_, m)| m.clone())
                .collect();
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            rows.reverse();
            if let Some(v) = viewer {
                for m in &mut rows {
                    m.state.mine = r.mine(m.seq, v);
                }
            }
            (rows, more)
        }))
    }

    async fn rooms_of(
        &self,
        user: &UserId,
        limit: u32,
    ) -> Result<Vec<crate::ports::RoomSummary>, StoreError> {
        self.enter(Op::RoomsOf).await?;
        let rooms = self.rooms.lock();
        let mut list: Vec<crate::ports::RoomSummary> = rooms
            .iter()
            .filter(|(_, r)| r.members.contains_key(user) || r.read.contains_key(user))
            .map(|(id, r)| {
                let ts = r.messages.values().next_back().map(|m| m.ts);
                let read = r.read.get(user).copied().unwrap_or(0);
                crate::ports::RoomSummary::new(id.clone(), r.head, read, ts)
            })
            .collect();
        list.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| a.room.cmp(&b.room)));
        list.truncate(limit as usize);
        Ok(list)
    }

    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError> {
        self.enter(Op::JoinInfo).await?;
        Ok(self.read_room(room, |r| match r {
            None => JoinInfo {
                allowed: true,
                banned: false,
                role: RoomRole::Member,
                read: 0,
            },
            Some(r) => {
                let role = r.members.get(user).copied();
                JoinInfo {
                    allowed: !r.private || role.is_some(),
                    banned: r.bans.contains(user),
                    role: role.unwrap_or_default(),
                    read: r.read.get(user).copied().unwrap_or(0),
                }
            }
        }))
    }

    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError> {
        self.enter(Op::SetRead).await?;
        Ok(self.with_room(room, |r| {
            let asked = seq.min(r.head);
            let marker = r.read.entry(user.clone()).or_insert(asked);
            *marker = (*marker).max(asked);
            *marker
        }))
    }

    async fn set_private(&self, room: &RoomId, private: bool) -> Result<(), StoreError> {
        self.enter(Op::SetPrivate).await?;
        self.with_room(room, |r| r.private = private);
        Ok(())
    }

    async fn set_member(
        &self,
        room: &RoomId,
        user: &UserId,
        role: Option<RoomRole>,
    ) -> Result<(), StoreError> {
        self.enter(Op::SetMember).await?;
        self.with_room(room, |r| match role {
            Some(role) => {
                r.members.insert(user.clone(), role);
            }
            None => {
                r.members.entry(user.clone()).or_default();
            }
        });
        Ok(())
    }

    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.enter(Op::RemoveMember).await?;
        self.with_room(room, |r| r.members.remove(user));
        Ok(())
    }

    async fn members(&self, room: &RoomId, limit: u32) -> Result<Vec<UserId>, StoreError> {
        self.enter(Op::Members).await?;
        Ok(self.read_room(room, |r| {
            let mut users: Vec<UserId> = r
                .map(|r| r.members.keys().cloned().collect())
                .unwrap_or_default();
            users.sort();
            users.truncate(limit as usize);
            users
        }))
    }

    async fn ban(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.enter(Op::Ban).await?;
        self.with_room(room, |r| r.bans.insert(user.clone()));
        Ok(())
    }

    async fn unban(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError> {
        self.enter(Op::Unban).await?;
        Ok(self.with_room(room, |r| r.bans.remove(user)))
    }
}

/// An in-memory `ClusterBus`: records what this node publishes and subscribes to, and
/// injects events as if other nodes had published them.
pub(crate) struct MemBus {
    published: Mutex<Vec<BusEvent>>,
    /// Every subscribe (true) and unsubscribe (false), in order.
    subscriptions: Mutex<Vec<(RoomId, bool)>>,
    tx: mpsc::Sender<BusEvent>,
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl MemBus {
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel(1024);
        Arc::new(Self {
            published: Mutex::default(),
            subscriptions: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        })
    }

    /// An event from another node (what the BusListener will receive).
    pub fn inject(&self, event: BusEvent) {
        self.tx
            .try_send(event)
            .expect("the injected-event queue has room");
    }

    pub fn published(&self) -> Vec<BusEvent> {
        self.published.lock().clone()
    }

    /// The seqs of `room` published as `Messages`, in publish order.
    pub fn published_seqs(&self, room: &RoomId) -> Vec<Seq> {
        self.published
            .lock()
            .iter()
            .filter_map(|e| match e {
                BusEvent::Messages(m) if m.first().is_some_and(|m| &m.room == room) => {
                    Some(m.iter().map(|m| m.seq).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// How many `Resync` of `room` were published.
    pub fn resyncs(&self, room: &RoomId) -> usize {
        self.published
            .lock()
            .iter()
            .filter(|e| matches!(e, BusEvent::Resync { room: r } if r == room))
            .count()
    }

    pub fn subscriptions(&self) -> Vec<(RoomId, bool)> {
        self.subscriptions.lock().clone()
    }
}

impl ClusterBus for MemBus {
    fn publish(&self, event: BusEvent) {
        self.published.lock().push(event);
    }
    fn subscribe(&self, room: &RoomId) {
        self.subscriptions.lock().push((room.clone(), true));
    }
    fn unsubscribe(&self, room: &RoomId) {
        self.subscriptions.lock().push((room.clone(), false));
    }
    fn take_receiver(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }
}

/// An in-memory `PresenceStore` (entries never expire) that records what this node's index
/// held at each heartbeat and can be told to panic in `list`.
#[derive(Default)]
pub(crate) struct MemPresence {
    entries: Mutex<BTreeMap<(RoomId, UserId), DisplayName>>,
    beats: Mutex<Vec<Vec<PresenceItem>>>,
    panic_lists: Mutex<usize>,
}

impl MemPresence {
    /// The next `n` calls of `list` panic.
    pub fn panic_next_lists(&self, n: usize) {
        *self.panic_lists.lock() = n;
    }

    /// This node's entries as each heartbeat so far saw them, in order.
    pub fn beats(&self) -> Vec<Vec<PresenceItem>> {
        self.beats.lock().clone()
    }
}

#[async_trait]
impl PresenceStore for MemPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &UserId,
        name: &DisplayName,
    ) -> Result<(), StoreError> {
        let key = (room.clone(), user.clone());
        self.entries.lock().insert(key, name.clone());
        Ok(())
    }
    async fn remove(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        self.entries.lock().remove(&(room.clone(), user.clone()));
        Ok(())
    }
    async fn heartbeat(
        &self,
        entries: &(dyn Fn() -> Vec<PresenceItem> + Send + Sync),
    ) -> Result<Beat, StoreError> {
        self.beats.lock().push(entries());
        Ok(Beat::default())
    }
    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, StoreError> {
        {
            let mut n = self.panic_lists.lock();
            if *n > 0 {
                *n -= 1;
                drop(n);
                panic!("MemPresence: injected panic in list");
            }
        }
        Ok(self
            .entries
            .lock()
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, user), name)| PresenceEntry {
                user: user.clone(),
                name: name.clone(),
            })
            .collect())
    }
}

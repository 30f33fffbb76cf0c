//! The inbox (v1.1): a message committed in a private room tells the room's members who have
//! not joined it on a socket (`inbox {room, seq, from, name, ts}`, no body), on every node.
//!
//! The writer lanes hand each private room's committed run here and move on: reading the
//! members is a store call the commit path must not wait for. One task reads them and queues
//! the frames to this node's sockets, then publishes the items on each member's own channel,
//! which only the nodes with a socket of that member hear (a member with no socket anywhere
//! costs one publish nobody receives). The queue is bounded: past it a run's inbox frames are
//! dropped and counted. An inbox frame is a notification; the conversation list is the truth.
//!
//! The members are cached per room for `MEMBERS_TTL`: in many small private rooms (direct
//! messages) a read per committed batch cost a fifth more CPU per delivery. A membership
//! change drops the room's entry on every node (`BusEvent::MembersChanged`), so a member
//! removed stops getting inbox frames at once; the expiry only bounds how long a lost bus
//! event can leave an entry stale.
//!
//! A room with more than `INBOX_MEMBERS_MAX` members sends no inbox at all: one publish per
//! member per batch would crowd the bus (which carries every room's messages) for a frame the
//! conversation list replaces. Such rooms are channels, not conversations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::connections::ConnRegistry;
use crate::ids::{RoomId, UserId};
use crate::metrics::Metrics;
use crate::ports::{timed, BusEvent, ClusterBus, InboxItem, MessageStore};
use crate::protocol::StoredMessage;
use crate::protocol::{EncodeOnce, ServerFrame};
use crate::rooms::{RoomHandle, RoomRegistry};

/// The most members a private room may have for its messages to send `inbox` frames.
pub const INBOX_MEMBERS_MAX: u32 = 1_000;
/// Private rooms' runs waiting for their members to be read.
const QUEUE: usize = 4096;
/// How long a room's cached members are used without a change being heard.
const MEMBERS_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Rooms whose members are cached at most (past it, the cache starts over).
const MEMBERS_CACHED: usize = 10_000;

/// A private room's members as read (`None`: more than `INBOX_MEMBERS_MAX`).
type Members = Option<Arc<[UserId]>>;

/// Private rooms' members, as last read, and when.
#[derive(Default)]
struct MembersCache {
    rooms: parking_lot::Mutex<HashMap<RoomId, (Instant, Members)>>,
    /// Bumped by every invalidation: a read that overlapped one is used once, not kept.
    changes: AtomicU64,
}

impl MembersCache {
    fn get(&self, room: &RoomId) -> Option<Members> {
        let rooms = self.rooms.lock();
        let (at, members) = rooms.get(room)?;
        (at.elapsed() < MEMBERS_TTL).then(|| members.clone())
    }

    /// Keep what a read found, unless any room changed while it ran (`changes` was the count
    /// when it started).
    fn put(&self, room: RoomId, members: Members, changes: u64) {
        let mut rooms = self.rooms.lock();
        if self.changes.load(Ordering::Acquire) != changes {
            return;
        }
        if rooms.len() >= MEMBERS_CACHED {
            rooms.retain(|_, (at, _)| at.elapsed() < MEMBERS_TTL);
            if rooms.len() >= MEMBERS_CACHED {
                rooms.clear();
            }
        }
        rooms.insert(room, (Instant::now(), members));
    }

    fn invalidate(&self, room: &RoomId) {
        let mut rooms = self.rooms.lock();
        self.changes.fetch_add(1, Ordering::AcqRel);
        rooms.remove(room);
    }
}

/// The writer lanes' end of the inbox.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Arc<[InboxItem]>>,
    dropped: prometheus::IntCounter,
    members: Arc<MembersCache>,
}

/// What the inbox task needs.
pub(crate) struct InboxDeps {
    pub store: Arc<dyn MessageStore>,
    pub conns: Arc<ConnRegistry>,
    pub rooms: Arc<RoomRegistry>,
    pub bus: Arc<dyn ClusterBus>,
}

impl Inbox {
    /// The inbox and its task (which ends when every `Inbox` is dropped).
    pub(crate) fn start(deps: InboxDeps, metrics: &Metrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = metrics.inbox_dropped.clone();
        let members = Arc::new(MembersCache::default());
        tokio::spawn(run(rx, deps, dropped.clone(), members.clone()));
        Self {
            tx,
            dropped,
            members,
        }
    }

    /// The room's members changed (here or on another node): read them again next time.
    pub fn invalidate(&self, room: &RoomId) {
        self.members.invalidate(room);
    }

    /// A private room's newly committed messages (one room, ascending seq). Never waits; only
    /// what the frame says is queued, never the bodies.
    pub fn offer(&self, run: &[StoredMessage]) {
        let items: Arc<[InboxItem]> = run
            .iter()
            .map(|m| InboxItem {
                room: m.room.clone(),
                seq: m.seq,
                from: m.from.clone(),
                name: m.name.clone(),
                ts: m.ts,
            })
            .collect();
        if self.tx.try_send(items).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Arc<[InboxItem]>>,
    deps: InboxDeps,
    dropped: prometheus::IntCounter,
    cache: Arc<MembersCache>,
) {
    while let Some(items) = rx.recv().await {
        let Some(room) = items.first().map(|m| m.room.clone()) else {
            continue;
        };
        let members = match cache.get(&room) {
            Some(m) => m,
            None => {
                let changes = cache.changes.load(Ordering::Acquire);
                match timed(deps.store.members(&room, INBOX_MEMBERS_MAX + 1)).await {
                    Ok(m) => {
                        let m: Members = (m.len() <= INBOX_MEMBERS_MAX as usize).then(|| m.into());
                        cache.put(room.clone(), m.clone(), changes);
                        m
                    }
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "inbox: cannot read the room's members");
                        dropped.inc();
                        continue;
                    }
                }
            }
        };
        // Too many members: no inbox for this room.
        let Some(members) = members else { continue };
        let handle = deps.rooms.get(&room);
        let mut frames = frames(&items);
        for user in members.iter().cloned() {
            deliver_here(&deps.conns, handle.as_deref(), &user, &mut frames);
            deps.bus.publish(BusEvent::Inbox {
                user,
                items: items.clone(),
            });
        }
    }
}

/// The `inbox` frames of one room's new messages, each to be encoded once per encoding for
/// every member and socket it goes to.
pub(crate) fn frames(items: &[InboxItem]) -> Vec<EncodeOnce<'_>> {
    items
        .iter()
        .map(|i| {
            EncodeOnce::new(ServerFrame::Inbox {
                room: &i.room,
                seq: i.seq,
                from: &i.from,
                name: &i.name,
                ts: i.ts,
            })
        })
        .collect()
}

/// Queue a room's inbox frames to this node's sockets of `user` that have not joined the room
/// (`room`: the room's handle here, if it has members here).
pub(crate) fn deliver_here(
    conns: &ConnRegistry,
    room: Option<&RoomHandle>,
    user: &UserId,
    frames: &mut [EncodeOnce<'_>],
) -> usize {
    conns.send_inbox(user, frames, |conn| {
        room.is_some_and(|h| h.has_member(conn))
    })
}

#[cfg(test)]
impl Inbox {
    /// An inbox for a Writer tested alone: it reads members from `store`, and no socket of this
    /// node takes its frames.
    pub(crate) fn for_tests(
        store: Arc<dyn MessageStore>,
        rooms: Arc<RoomRegistry>,
        bus: Arc<dyn ClusterBus>,
        metrics: &Metrics,
    ) -> Self {
        let conns = Arc::new(ConnRegistry::new(bus.clone(), metrics, None));
        Self::start(
            InboxDeps {
                store,
                conns,
                rooms,
                bus,
            },
            metrics,
        )
    }
}

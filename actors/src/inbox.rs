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
//! A room with more than `INBOX_MEMBERS_MAX` members sends no inbox at all: one publish per
//! member per batch would crowd the bus (which carries every room's messages) for a frame the
//! conversation list replaces. Such rooms are channels, not conversations.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::connections::ConnRegistry;
use crate::ids::RoomId;
use crate::metrics::Metrics;
use crate::ports::{timed, BusEvent, ClusterBus, InboxItem, MessageStore};
use crate::protocol::StoredMessage;
use crate::rooms::RoomRegistry;

/// The most members a private room may have for its messages to send `inbox` frames.
pub const INBOX_MEMBERS_MAX: u32 = 1_000;
/// Private rooms' runs waiting for their members to be read.
const QUEUE: usize = 4096;

/// The writer lanes' end of the inbox.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Arc<[InboxItem]>>,
    dropped: prometheus::IntCounter,
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
        tokio::spawn(run(rx, deps, dropped.clone()));
        Self { tx, dropped }
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
) {
    while let Some(items) = rx.recv().await {
        let Some(room) = items.first().map(|m| m.room.clone()) else {
            continue;
        };
        let members = match timed(deps.store.members(&room, INBOX_MEMBERS_MAX + 1)).await {
            Ok(m) if m.len() > INBOX_MEMBERS_MAX as usize => continue,
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "inbox: cannot read the room's members");
                dropped.inc();
                continue;
            }
        };
        for user in members {
            deliver_here(&deps.conns, &deps.rooms, &room, &user, &items);
            deps.bus.publish(BusEvent::Inbox {
                user,
                items: items.clone(),
            });
        }
    }
}

/// Queue a room's inbox items to this node's sockets of `user` that have not joined it.
pub(crate) fn deliver_here(
    conns: &ConnRegistry,
    rooms: &RoomRegistry,
    room: &RoomId,
    user: &crate::ids::UserId,
    items: &[InboxItem],
) -> usize {
    let handle = rooms.get(room);
    conns.send_inbox(user, items, |conn| {
        handle.as_ref().is_some_and(|h| h.has_member(conn))
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

//! The ports the actors need from the outside world. `chatty` implements them with sqlx and
//! redis; tests of single actors implement them with in-memory fakes.

use std::sync::Arc;

use async_trait::async_trait;

use crate::access::RoomRole;
use crate::ids::{Body, Cid, DisplayName, RoomId, Seq, UserId};
use crate::protocol::{PresenceEntry, RemoveReason, StoredMessage};

/// A message to persist. Within one `append` call, (room, from, cid) keys are unique: the
/// Writer collapses duplicates of one batch before it reaches the store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomId,
    pub from: UserId,
    pub name: DisplayName,
    pub cid: Cid,
    pub body: Body,
}

/// What the store did with one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    pub ts: i64,
    /// The (room, user, cid) was already stored: `seq`/`ts` are the original ones.
    pub duplicate: bool,
}

/// What the store knows of one user in one room: enough to decide a join (with
/// `access::may_join`) or a moderation action (with `access::decide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinInfo {
    /// False for a private room the user is not a member of.
    pub allowed: bool,
    /// The user is banned from the room.
    pub banned: bool,
    /// The user's room role (`Member` when they have no row).
    pub role: RoomRole,
    /// The user's read marker in that room (0 if none).
    pub read: Seq,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; logged whole, shown to clients as `internal`.
    #[error("store error: {0}")]
    Other(String),
}

/// Durable storage of rooms, messages, read markers and private-room members.
///
/// Guarantees every implementation keeps (checked by the shared contract suite):
/// per-room seq starts at 1 and is gap-free; `append` commits the whole batch or nothing;
/// a repeated (room, user, cid) returns the original seq forever.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Persist a batch in one transaction; results are in input order.
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError>;
    /// The room's head seq (0 for a room never written to).
    async fn head(&self, room: &RoomId) -> Result<Seq, StoreError>;
    /// Messages with seq > `after`, oldest first, at most `limit`.
    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The page of at most `limit` messages before `before` (or the newest), oldest first,
    /// and whether older ones exist.
    async fn before(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError>;
    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError>;
    /// Move the user's read marker forward (never back, never past the head); returns it.
    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError>;
    async fn set_private(&self, room: &RoomId, private: bool) -> Result<(), StoreError>;
    /// Make the user a member of the room with `role`; with `None`, a member unless they
    /// already have a role (which is kept).
    async fn set_member(
        &self,
        room: &RoomId,
        user: &UserId,
        role: Option<RoomRole>,
    ) -> Result<(), StoreError>;
    /// Delete the user's member row (and with it any role).
    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;
    /// Ban the user from the room (idempotent).
    async fn ban(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;
    /// Lift a ban; false if there was none.
    async fn unban(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError>;
}

/// An event that crosses nodes.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Committed messages of one room, ascending seq.
    Messages(Arc<[StoredMessage]>),
    /// Some node changed the room's presence: re-read it from the PresenceStore.
    PresenceChanged {
        room: RoomId,
    },
    Typing {
        room: RoomId,
        user: UserId,
    },
    /// Events of this room may have been lost (a reconnect, a dropped publish): compare the
    /// delivered head with the store and fill the gap.
    Resync {
        room: RoomId,
    },
    /// Take the user's sockets out of the room (member removed, kicked or banned). `force`
    /// (the backend asked) takes admins out too.
    Remove {
        room: RoomId,
        user: UserId,
        reason: RemoveReason,
        force: bool,
    },
    /// The user moved their read marker in the room: their connections in it hear of it.
    Read {
        room: RoomId,
        user: UserId,
        seq: Seq,
    },
    /// Close every socket of the user with 4003. Not a room's event: every node hears it.
    Disconnect {
        user: UserId,
    },
}

impl BusEvent {
    /// The room whose channel carries the event; `None` for node-wide events.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            BusEvent::Messages(m) => m.first().map(|m| &m.room),
            BusEvent::PresenceChanged { room }
            | BusEvent::Typing { room, .. }
            | BusEvent::Resync { room }
            | BusEvent::Remove { room, .. }
            | BusEvent::Read { room, .. } => Some(room),
            BusEvent::Disconnect { .. } => None,
        }
    }
}

/// Cluster-wide presence: which users are present in a room on any node. Entries carry an
/// expiry refreshed by each node's heartbeat, so the entries of a node that dies silently
/// disappear within the TTL.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// This node has `user` present in `room`.
    async fn add(&self, room: &RoomId, user: &UserId, name: &DisplayName)
        -> Result<(), StoreError>;
    /// This node no longer has `user` present in `room`.
    async fn remove(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;
    /// Extend the expiry of every entry this node holds (the heartbeat).
    async fn refresh(&self, entries: &[(RoomId, UserId, DisplayName)]) -> Result<(), StoreError>;
    /// Users present in `room` on any node (expired entries are dropped on the way).
    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, StoreError>;
}

/// Carries events between nodes. Publishing never blocks: implementations queue (bounded)
/// and count what they drop; Postgres, not the bus, is the source of truth, so a dropped
/// message event is repaired by the receiving room's gap fill.
pub trait ClusterBus: Send + Sync + 'static {
    fn publish(&self, event: BusEvent);
    /// This node now has members in `room`: start receiving its events.
    fn subscribe(&self, room: &RoomId);
    /// The last local member left `room`.
    fn unsubscribe(&self, room: &RoomId);
    /// Events from other nodes. Called once, by the BusListener.
    fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<BusEvent>>;
}

/// The longest any single store call may take before it counts as failed. A frozen database
/// (paused, or a network black hole) must not hold an actor forever: the caller retries or
/// answers `unavailable`, and idempotency makes a retry of an append that did commit safe.
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Run a store call with `STORE_TIMEOUT`.
pub async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable("store call timed out".into())),
    }
}

//! The ports the actors need from the outside world. `chatty` implements them with sqlx and
//! redis; tests of single actors implement them with in-memory fakes.

use std::sync::Arc;

use async_trait::async_trait;

use crate::access::RoomRole;
use crate::ids::{Body, Cid, DisplayName, Meta, Rev, RoomId, Seq, UserId};
use crate::protocol::{ChangeOp, PresenceEntry, RemoveReason, StoredMessage, StoredUpdate};

/// A message to persist. Within one `append` call, (room, from, cid) keys are unique: the
/// Writer collapses duplicates of one batch before it reaches the store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The room to append to; the store gives the message the room's next seq.
    pub room: RoomId,
    /// The sender.
    pub from: UserId,
    /// The sender's display name, stored with the message.
    pub name: DisplayName,
    /// The sender's idempotency key: one message per (room, from, cid), forever.
    pub cid: Cid,
    /// The text.
    pub body: Body,
    /// v1.1: the metadata, stored as JSON.
    pub meta: Option<Meta>,
    /// Where the send's span sits in its trace, when the edge sampled it (never stored).
    pub trace: Option<crate::trace::TraceParent>,
}

/// A change of a stored message to commit (v1.1): edit, delete or react.
#[derive(Debug, Clone)]
pub struct NewChange {
    /// The message's room.
    pub room: RoomId,
    /// The message.
    pub seq: Seq,
    /// Who asks: an edit must be the author's; a delete the author's unless `moderator`.
    pub by: UserId,
    /// The caller decided that `by` may delete anyone's message in the room (a moderator or
    /// owner of it, an admin, or the backend).
    pub moderator: bool,
    /// What to do.
    pub op: ChangeOp,
}

/// What the store did with one change of a batch.
#[derive(Debug, Clone)]
pub enum ChangeOutcome {
    /// Committed with the next revision of the room: deliver it.
    Changed(Box<StoredUpdate>),
    /// Nothing to change (the same body, a reaction already on or off, a message already
    /// deleted): the message's current revision; nothing is broadcast.
    Unchanged(Rev),
    /// No message with that seq in the room.
    NotFound,
    /// Not the author (nor, for a delete, a moderator), or the message is deleted.
    Forbidden,
    /// The user already has `max_reaction_keys` keys on the message.
    TooManyReactions,
}

/// The most rooms a conversation list holds (the most recently active ones).
pub const ROOMS_LIST_MAX: u32 = 500;

/// One room of a user's conversation list (v1.1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    /// The room.
    pub room: RoomId,
    /// Its head.
    pub seq: Seq,
    /// The user's read marker in it (0 if none).
    pub read: Seq,
    /// Messages after the read marker: `seq - read`.
    pub unread: Seq,
    /// When its last message was committed (ms since the Unix epoch); absent for a room
    /// without messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl RoomSummary {
    /// A row of the list from what the store read.
    pub fn new(room: RoomId, seq: Seq, read: Seq, ts: Option<i64>) -> Self {
        RoomSummary {
            room,
            seq,
            read,
            unread: seq.saturating_sub(read),
            ts,
        }
    }
}

/// The room's two counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heads {
    /// The last message's seq (0 for a room never written to).
    pub seq: Seq,
    /// The last change's revision (0 when nothing ever changed).
    pub rev: Rev,
}
/// What the store did with one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq in its room.
    pub seq: Seq,
    /// Its commit time, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The (room, user, cid) was already stored: `seq`/`ts` are the original ones.
    pub duplicate: bool,
    /// The room is private (v1.1: its members who have not joined it get `inbox`). Only
    /// meaningful for a message just stored.
    pub private: bool,
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

/// Why a store call failed. The split decides what the client is told: retry later
/// (`unavailable`) or `internal`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Anything else; logged whole, shown to clients as `internal`.
    #[error("store error: {0}")]
    Other(#[source] Cause),
}

/// The error underneath a `StoreError`, kept whole (the driver's error with its own chain, not
/// a string of it), so logs and `anyhow` reports show where it came from. Cheap to clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Keep `e` as the cause.
    pub fn of(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(e))
    }
}

/// A cause that is only a message (an invariant the store checked itself).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl From<String> for Cause {
    fn from(m: String) -> Self {
        Cause::of(Message(m))
    }
}

impl From<&str> for Cause {
    fn from(m: &str) -> Self {
        Cause::of(Message(m.to_owned()))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
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
    async fn head(&self, room: &RoomId) -> Result<Seq, StoreError> {
        Ok(self.heads(room).await?.seq)
    }
    /// The room's head seq and revision, read together.
    async fn heads(&self, room: &RoomId) -> Result<Heads, StoreError>;
    /// Commit a batch of changes in one transaction, in order, each taking the next revision
    /// of its room when it changes something; results are in input order. A user has at most
    /// `max_reaction_keys` reaction keys on one message.
    async fn change(
        &self,
        batch: &[NewChange],
        max_reaction_keys: u32,
    ) -> Result<Vec<ChangeOutcome>, StoreError>;
    /// The messages with seq <= `max_seq` whose last change has a revision > `after`, in their
    /// current state, oldest revision first, at most `limit`; and the room's revision as of
    /// the same read (what a caller that got fewer than `limit` has caught up to).
    async fn changes(
        &self,
        room: &RoomId,
        after: Rev,
        max_seq: Seq,
        limit: u32,
    ) -> Result<(Vec<StoredUpdate>, Rev), StoreError>;
    /// Messages with seq > `after`, oldest first, at most `limit`.
    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The page of at most `limit` messages before `before` (or the newest), oldest first,
    /// and whether older ones exist. With a `viewer`, each message's `state.mine` holds the
    /// viewer's reaction keys.
    async fn before(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
        viewer: Option<&UserId>,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError>;
    /// The user's conversation list (v1.1): the rooms they are a member of or hold a read
    /// marker in, the most recently active first (rooms without messages last), at most
    /// `limit`. One indexed query, not one per room.
    async fn rooms_of(&self, user: &UserId, limit: u32) -> Result<Vec<RoomSummary>, StoreError>;
    /// What the store knows of `user` in `room`. A room it never heard of is public, with no
    /// ban, role or read marker.
    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError>;
    /// Move the user's read marker forward (never back, never past the head); returns it.
    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError>;
    /// Make the room private (only its members may join) or public again; rooms start public.
    /// Sockets already in the room are not taken out.
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
    /// The members of a private room (v1.1: whom its messages' `inbox` frames are for), at
    /// most `limit`, in user-id order.
    async fn members(&self, room: &RoomId, limit: u32) -> Result<Vec<UserId>, StoreError>;
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
    /// Committed changes of one room's messages, ascending rev (v1.1).
    Updates(Arc<[StoredUpdate]>),
    /// Some node changed the room's presence: re-read it from the PresenceStore.
    PresenceChanged {
        /// The room whose presence changed.
        room: RoomId,
    },
    /// A user is typing in the room, on the publishing node.
    Typing {
        /// The room.
        room: RoomId,
        /// Who is typing.
        user: UserId,
    },
    /// Events of this room may have been lost (a reconnect, a dropped publish): compare the
    /// delivered head with the store and fill the gap.
    Resync {
        /// The room to check.
        room: RoomId,
    },
    /// Take the user's sockets out of the room (member removed, kicked or banned). `force`
    /// (the backend asked) takes admins out too.
    Remove {
        /// The room to take them out of.
        room: RoomId,
        /// Whose sockets.
        user: UserId,
        /// Sent to each socket as `removed.reason`.
        reason: RemoveReason,
        /// The backend asked, so admins' sockets go too; otherwise an admin's socket stays (only
        /// its own node knows, from its token, that it is an admin's).
        force: bool,
    },
    /// The user moved their read marker in the room: their connections in it hear of it.
    Read {
        /// The room of the marker.
        room: RoomId,
        /// Whose marker.
        user: UserId,
        /// The marker now, as the store returned it.
        seq: Seq,
    },
    /// Close every socket of the user with 4003. Not a room's event: every node hears it.
    Disconnect {
        /// Whose sockets to close.
        user: UserId,
    },
    /// v1.1: a backend's event for every socket of the user (`event {data}`). Only the nodes
    /// with a socket of the user hear it (the user's own channel).
    UserEvent {
        /// Whose sockets.
        user: UserId,
        /// The event's `data`, a JSON object.
        data: Meta,
        /// Where to say how many sockets took it (the node that asks waits for the answers).
        reply: Option<EventReply>,
    },
    /// A room's members changed (added, removed, role changed): every node drops what it
    /// cached of them. Not a room's event: every node hears it.
    MembersChanged {
        /// The room whose member rows changed.
        room: RoomId,
    },
    /// v1.1: new messages of a private room the user is a member of, for the user's sockets
    /// that have not joined it. On the user's own channel, like `UserEvent`.
    Inbox {
        /// Whose sockets.
        user: UserId,
        /// The messages, ascending seq, all of one room.
        items: Arc<[InboxItem]>,
    },
}

/// What an `inbox` frame says of one message of a private room (v1.1): no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// The private room.
    pub room: RoomId,
    /// The message's seq there.
    pub seq: Seq,
    /// Its sender.
    pub from: UserId,
    /// The sender's display name.
    pub name: DisplayName,
    /// Its commit time (ms since the Unix epoch).
    pub ts: i64,
}

/// Where a node answers how many of its sockets took a user's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReply {
    /// The asking node's id.
    pub node: Arc<str>,
    /// The ask's id on that node.
    pub id: u64,
}

impl BusEvent {
    /// The room whose channel carries the event; `None` for node-wide events.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            BusEvent::Messages(m) => m.first().map(|m| &m.room),
            BusEvent::Updates(u) => u.first().map(|u| &u.message.room),
            BusEvent::PresenceChanged { room }
            | BusEvent::Typing { room, .. }
            | BusEvent::Resync { room }
            | BusEvent::Remove { room, .. }
            | BusEvent::Read { room, .. } => Some(room),
            BusEvent::Disconnect { .. }
            | BusEvent::UserEvent { .. }
            | BusEvent::Inbox { .. }
            | BusEvent::MembersChanged { .. } => None,
        }
    }
}

/// Cluster-wide presence: which users are present in a room on any node. Each node writes
/// only its changes; a node stays registered by a heartbeat whose cost does not grow with its
/// rooms or users, and the entries of a node whose registration lapsed (it died silently) are
/// purged by the next live node's heartbeat.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// This node has `user` present in `room`.
    async fn add(&self, room: &RoomId, user: &UserId, name: &DisplayName)
        -> Result<(), StoreError>;
    /// This node no longer has `user` present in `room`.
    async fn remove(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;
    /// Keep this node registered and purge the entries of nodes whose registration lapsed.
    /// When the store has lost this node (first beat, Redis restarted empty, or the node was
    /// too slow and was purged), it writes `entries()`, this node's whole presence, again.
    async fn heartbeat(
        &self,
        entries: &(dyn Fn() -> Vec<PresenceItem> + Send + Sync),
    ) -> Result<Beat, StoreError>;
    /// Users present in `room` on any live node.
    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, StoreError>;
}

/// One (room, user, name) this node has present.
pub type PresenceItem = (RoomId, UserId, DisplayName);

/// What a presence heartbeat found.
#[derive(Debug, Default, Clone)]
pub struct Beat {
    /// This node's entries were written again: every local view may be stale.
    pub rejoined: bool,
    /// Rooms whose entries this beat changed (a dead node's purged, or this node's written
    /// again): every node re-reads them.
    pub changed: Vec<RoomId>,
    /// How many dead nodes' rooms this beat purged.
    pub purged: usize,
    /// Changes whenever any node's presence changes; equal values mean nothing changed.
    pub generation: u64,
}

/// Carries events between nodes. Publishing never blocks: implementations queue (bounded)
/// and count what they drop; Postgres, not the bus, is the source of truth, so a dropped
/// message event is repaired by the receiving room's gap fill.
pub trait ClusterBus: Send + Sync + 'static {
    /// Hand `event` to every other node (never back to this one). Never blocks: past the
    /// implementation's bound the event is dropped and counted.
    fn publish(&self, event: BusEvent);
    /// This node now has members in `room`: start receiving its events.
    fn subscribe(&self, room: &RoomId);
    /// The last local member left `room`.
    fn unsubscribe(&self, room: &RoomId);
    /// Events from other nodes. Called once, by the BusListener.
    fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<BusEvent>>;
    /// This node now has a socket of `user`: start receiving the user's events (v1.1). A bus
    /// with no other node has nothing to do.
    fn subscribe_user(&self, _user: &UserId) {}
    /// The user's last socket on this node closed.
    fn unsubscribe_user(&self, _user: &UserId) {}
    /// Hand a user's event to the other nodes that have a socket of theirs; resolves with how
    /// many sockets they handed it to, waiting a bounded time for their answers. With no
    /// other node, none.
    fn user_event(&self, _user: UserId, _data: Meta) -> BoxFuture<usize> {
        Box::pin(std::future::ready(0))
    }
    /// Tell the asking node how many of this node's sockets took its user event.
    fn answer(&self, _reply: EventReply, _count: usize) {}
}

/// Hears when a user's first socket on this node opens and their last one closes (v1.1: what
/// webhooks need to know who is online anywhere). Called under the connection registry's
/// lock, in order: implementations only queue.
pub trait SocketWatch: Send + Sync + 'static {
    /// The user's first socket on this node opened.
    fn first(&self, user: &UserId);
    /// The user's last socket on this node closed.
    fn last(&self, user: &UserId);
}

/// A boxed future, for the one bus call that waits for other nodes.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

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

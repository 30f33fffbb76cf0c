//! The protocol's typed commands (client → server, already validated) and server frames, plus
//! the one place server frames are encoded. Decoding of untrusted bytes lives at the edge
//! (`chatty::wire`); by the time a command reaches an actor, every field is a checked newtype.

use serde::Serialize;

use crate::access::{Identity, RoomRole};
use crate::ids::{Body, Cid, DisplayName, Meta, ReactionKey, Rev, RoomId, Seq, UserId};

mod frame;
pub use frame::{EncodeOnce, ServerFrame};

/// The encoding a socket negotiated; every frame it gets is encoded this way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `chatty.v1.json`: text frames holding one JSON object.
    Json,
    /// `chatty.v1.msgpack`: binary frames holding one MessagePack map.
    MsgPack,
}

impl Encoding {
    /// The encoding as a metric label value: `json` or `msgpack`.
    pub fn label(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        }
    }
}

/// A client-chosen request reference, echoed on every reply (at most 32 bytes).
pub type Ref = Option<Box<str>>;

/// What a member hears of a room's presence (`join`'s `presence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PresenceMode {
    /// `joined.presence` and every `presence` diff (the v1 behaviour).
    #[default]
    Full,
    /// No diffs: only `presence_count` frames, at most once a second when the count changed.
    /// For big rooms where a client shows a number, not a list.
    Count,
}

/// A validated client command.
#[derive(Debug, Clone)]
pub enum Command {
    /// `join`: become a member of the room (its messages, presence and typing), after replaying
    /// what the client missed. Answered with `joined`.
    Join {
        /// Echoed on the `joined` or `error` reply.
        r#ref: Ref,
        /// The room to join; a private one only as a member, never while banned.
        room: RoomId,
        /// Seq of the last message the client has: the messages after it are replayed in order
        /// before any live one (only the newest `replay_max`; past that `joined.replay_truncated`
        /// is set). `None`: no replay, live messages only.
        since: Option<Seq>,
        /// v1.1: what this socket wants to hear of the room's presence.
        presence: PresenceMode,
        /// v1.1: the room revision the client has: after the `since` replay, the messages with
        /// seq <= `since` changed after it are sent as `update` frames. Ignored without `since`.
        since_rev: Option<Rev>,
    },
    /// `presence` (v1.1): a page of who is present, for rooms whose `joined.presence` was
    /// truncated. Answered with `presence_page`.
    Presence {
        /// Echoed on the `presence_page` or `error` reply.
        r#ref: Ref,
        /// A room this socket has joined.
        room: RoomId,
        /// Start after this user id (the previous page's `next`); from the first when `None`.
        after: Option<UserId>,
        /// Users per page; capped by `limits.presence_list_max`.
        limit: Option<u32>,
    },
    /// `leave`: stop being a member of the room. Answered with `left`.
    Leave {
        /// Echoed on the `left` or `error` reply.
        r#ref: Ref,
        /// The room to leave; `not_joined` if this socket is not in it.
        room: RoomId,
    },
    /// `send`: store a message, then broadcast it. Answered with `ack` once committed.
    Send {
        /// Echoed on the `ack` or `error` reply.
        r#ref: Ref,
        /// The room to post to; the socket must have joined it.
        room: RoomId,
        /// The idempotency key: a repeat of (room, user, cid) is acked with the original seq and
        /// not stored or broadcast again.
        cid: Cid,
        /// The text, already checked against `max_body_bytes`.
        body: Body,
        /// v1.1: the message's metadata, already checked against `max_meta_bytes`.
        meta: Option<Meta>,
        /// The `chatty.receive` span's context, when the socket reader sampled this send.
        trace: Option<crate::trace::TraceParent>,
    },
    /// `edit`, `delete` or `react` (v1.1): change a message. Committed through the Writer, then
    /// answered with `updated` and broadcast as `update` in `rev` order.
    Change {
        /// Echoed on the `updated` or `error` reply.
        r#ref: Ref,
        /// The message's room; the socket must have joined it.
        room: RoomId,
        /// The message.
        seq: Seq,
        /// What to do to it.
        op: ChangeOp,
    },
    /// `history`: one page of a room's stored messages. Answered with `history`.
    History {
        /// Echoed on the `history` or `error` reply.
        r#ref: Ref,
        /// The room to read: joined, or one the user would be allowed to join.
        room: RoomId,
        /// Only messages with a seq below this one; `None`: the newest.
        before: Option<Seq>,
        /// Most messages wanted, at least 1 (the edge defaults it to 50); the server caps it at
        /// `NodeConfig::history_max`.
        limit: u32,
    },
    /// `read`: move the user's read marker in the room. Answered with `read`, also pushed
    /// (without `ref`) to the user's other sockets in the room on every node.
    Read {
        /// Echoed on the `read` or `error` reply.
        r#ref: Ref,
        /// The room of the marker; the socket must have joined it.
        room: RoomId,
        /// The new marker; the store never moves it back, nor past the room's head.
        seq: Seq,
    },
    /// `typing`: tell the room's other members that the user is typing. No reply; dropped,
    /// not queued, when the room is busy.
    Typing {
        /// The room; the socket must have joined it.
        room: RoomId,
    },
    /// `rooms` (v1.1): the user's conversation list. Answered with `rooms`.
    Rooms {
        /// Echoed on the `rooms` or `error` reply.
        r#ref: Ref,
    },
    /// `ping`: answered with `pong`.
    Ping {
        /// Echoed on the `pong`.
        r#ref: Ref,
    },
    /// Take `user` out of the room on every node; with `ban`, keep them out.
    Kick {
        /// Echoed on the `kicked` or `error` reply.
        r#ref: Ref,
        /// The room; the kicker's socket must have joined it.
        room: RoomId,
        /// Who to take out: a user ranked below the kicker, never the kicker.
        user: UserId,
        /// Also ban `user`. The ban is stored before the removal, so a re-join racing the kick
        /// is refused.
        ban: bool,
    },
    /// `unban`: let a banned user join the room again (moderators and up). Answered with
    /// `unbanned`.
    Unban {
        /// Echoed on the `unbanned` or `error` reply.
        r#ref: Ref,
        /// The room; the socket must have joined it.
        room: RoomId,
        /// The banned user; unbanning someone who is not banned is not an error.
        user: UserId,
    },
    /// Give `user` the room role `role` (an extension of v1.1 for owners and admins).
    SetRole {
        /// Echoed on the `role_set` or `error` reply.
        r#ref: Ref,
        /// The room; the socket must have joined it.
        room: RoomId,
        /// Whose role changes: a user ranked below the setter.
        user: UserId,
        /// The new role, below the setter's own.
        role: RoomRole,
    },
    /// A newer token. The edge verified it: `None` if it was invalid (its bytes never reach
    /// an actor, so they can never reach a log).
    Refresh {
        /// Echoed on the `refreshed` or `error` reply.
        r#ref: Ref,
        /// Who the new token is for; it must be this socket's own user, else `forbidden`.
        grant: Option<Identity>,
    },
}

impl Command {
    /// The `ref` the answer echoes (`typing` has none).
    pub fn r#ref(&self) -> Option<&str> {
        match self {
            Command::Join { r#ref, .. }
            | Command::Presence { r#ref, .. }
            | Command::Leave { r#ref, .. }
            | Command::Send { r#ref, .. }
            | Command::Change { r#ref, .. }
            | Command::History { r#ref, .. }
            | Command::Read { r#ref, .. }
            | Command::Ping { r#ref }
            | Command::Rooms { r#ref }
            | Command::Kick { r#ref, .. }
            | Command::Unban { r#ref, .. }
            | Command::SetRole { r#ref, .. }
            | Command::Refresh { r#ref, .. } => r#ref.as_deref(),
            Command::Typing { .. } => None,
        }
    }

    /// The frame type, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Join { .. } => "join",
            Command::Presence { .. } => "presence",
            Command::Leave { .. } => "leave",
            Command::Send { .. } => "send",
            Command::Change { op, .. } => op.kind().as_str(),
            Command::History { .. } => "history",
            Command::Read { .. } => "read",
            Command::Typing { .. } => "typing",
            Command::Ping { .. } => "ping",
            Command::Rooms { .. } => "rooms",
            Command::Kick { .. } => "kick",
            Command::Unban { .. } => "unban",
            Command::SetRole { .. } => "set_role",
            Command::Refresh { .. } => "refresh",
        }
    }
}

/// A message as stored and delivered.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The room it was posted to.
    pub room: RoomId,
    /// Its place in the room's order: 1, 2, 3… with no gaps.
    pub seq: Seq,
    /// The sender's user id.
    pub from: UserId,
    /// The sender's display name when it was sent (stored with the message).
    pub name: DisplayName,
    /// The sender's idempotency key; lets the sender reconcile its optimistic copy.
    pub cid: Cid,
    /// The text.
    pub body: Body,
    /// Server time of the commit, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// v1.1: the metadata sent with it (absent once deleted).
    pub meta: Option<Meta>,
    /// v1.1: the message's state after its last change; the default for a message never
    /// changed, which is what every fresh message is.
    pub state: MessageState,
    /// A freshly committed message's place in its trace, when its send was sampled: the
    /// parent of its bus and delivery spans. Never stored, never sent to clients.
    pub trace: Option<crate::trace::TraceParent>,
}

/// What changes can do to a message: its last revision, edit time, deletion and reactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageState {
    /// The room revision of the message's last change; 0 if never changed.
    pub rev: Rev,
    /// When it was last edited (milliseconds since the Unix epoch).
    pub edited_ts: Option<i64>,
    /// Deleted: the body is empty and the metadata gone (a tombstone keeping its seq).
    pub deleted: bool,
    /// Reaction counts, in the order each key was first used.
    pub reactions: Vec<Reaction>,
    /// The reaction keys of the user who read it (`history` only; empty elsewhere).
    pub mine: Vec<ReactionKey>,
}

/// `{key, count}` in `reactions`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reaction {
    /// The reaction.
    pub key: ReactionKey,
    /// How many users reacted with it.
    pub count: u32,
}

/// What a change does (`update.change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The body (and maybe the metadata) was replaced.
    Edit,
    /// The message was deleted.
    Delete,
    /// A reaction was added or removed.
    React,
}

impl ChangeKind {
    /// The wire name, also stored with the message and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Edit => "edit",
            ChangeKind::Delete => "delete",
            ChangeKind::React => "react",
        }
    }

    /// The kind named `s` (the inverse of `as_str`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "edit" => Some(ChangeKind::Edit),
            "delete" => Some(ChangeKind::Delete),
            "react" => Some(ChangeKind::React),
            _ => None,
        }
    }
}

/// A change a user asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    /// Replace the body; the metadata too when given (else it is kept).
    Edit {
        /// The new text.
        body: Body,
        /// The new metadata, if any.
        meta: Option<Meta>,
    },
    /// Erase the body and metadata, keep the seq.
    Delete,
    /// Add (`on`) or remove the user's reaction `key`.
    React {
        /// The reaction.
        key: ReactionKey,
        /// Add or remove.
        on: bool,
    },
}

impl ChangeOp {
    /// Which kind of change this is.
    pub fn kind(&self) -> ChangeKind {
        match self {
            ChangeOp::Edit { .. } => ChangeKind::Edit,
            ChangeOp::Delete => ChangeKind::Delete,
            ChangeOp::React { .. } => ChangeKind::React,
        }
    }
}

/// A committed change of a message: its whole new state, as every member hears it.
#[derive(Debug, Clone)]
pub struct StoredUpdate {
    /// What the change did.
    pub change: ChangeKind,
    /// Who made it.
    pub by: UserId,
    /// The message as it is now; `message.state.rev` is the change's revision.
    pub message: StoredMessage,
}

impl StoredUpdate {
    /// The change's revision.
    pub fn rev(&self) -> Rev {
        self.message.state.rev
    }
}

/// `{user, name}` in presence lists.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The present user.
    pub user: UserId,
    /// Their display name, from the connection that made them present.
    pub name: DisplayName,
}

/// `{user}` in presence leave lists.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceLeave {
    /// The user who is no longer present.
    pub user: UserId,
}

/// Why a socket was taken out of a room (`removed.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// No longer a member of the private room.
    Removed,
    /// A moderator, an owner, an admin or the backend kicked the user out.
    Kicked,
    /// Kicked and banned: re-joining is `forbidden` until an unban.
    Banned,
}

impl RemoveReason {
    /// The wire name (`removed`, `kicked`, `banned`), as in `removed.reason` and on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Removed => "removed",
            RemoveReason::Kicked => "kicked",
            RemoveReason::Banned => "banned",
        }
    }

    /// The reason named `s` (the inverse of `as_str`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "removed" => Some(RemoveReason::Removed),
            "kicked" => Some(RemoveReason::Kicked),
            "banned" => Some(RemoveReason::Banned),
            _ => None,
        }
    }
}

/// The error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed frame, or a missing or invalid field.
    BadRequest,
    /// A frame `type` the server does not know.
    UnknownType,
    /// A body (or a token) over its size limit.
    TooLarge,
    /// `leave`, `send`, `typing`, `read` or moderation in a room the socket has not joined
    /// (or was taken out of).
    NotJoined,
    /// Not allowed: a private room, a ban, a missing role, a refresh token that is invalid
    /// or another user's.
    Forbidden,
    /// The socket already has `rooms_per_connection` rooms joined.
    RoomLimit,
    /// The socket sends faster than its rate limit; the frame was dropped.
    RateLimited,
    /// The store or the bus cannot take it now: retry later (a send with the same `cid`).
    Unavailable,
    /// A server fault; the details go to the server's log, never to the client.
    Internal,
    /// v1.1: no such message.
    NotFound,
}

impl ErrorCode {
    /// The wire name (`error.code`), also the metric label of errors sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// A `message` as it appears inside a `history` reply (no `type` field), with its current
/// state (v1.1).
#[derive(Serialize)]
pub struct HistoryItem<'a> {
    /// The room it was posted to.
    pub room: &'a RoomId,
    /// Its place in the room's order.
    pub seq: Seq,
    /// The sender's user id.
    pub from: &'a UserId,
    /// The sender's display name when it was sent.
    pub name: &'a DisplayName,
    /// The sender's idempotency key.
    pub cid: &'a Cid,
    /// The text ("" once deleted).
    pub body: &'a Body,
    /// Server time of the commit, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The metadata, when it was sent (and the message is not deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Meta>,
    /// The revision of the last change; omitted when never changed.
    #[serde(skip_serializing_if = "is_zero")]
    pub rev: Rev,
    /// When it was last edited; omitted if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<i64>,
    /// Deleted (a tombstone); omitted when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Reaction counts; omitted when none.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub reactions: &'a [Reaction],
    /// The requesting user's reaction keys; omitted when none.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub mine: &'a [ReactionKey],
}

/// For `skip_serializing_if`: a revision of 0 (never changed) is not sent.
pub(crate) fn is_zero(r: &Rev) -> bool {
    *r == 0
}

impl<'a> From<&'a StoredMessage> for HistoryItem<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        HistoryItem {
            room: &m.room,
            seq: m.seq,
            from: &m.from,
            name: &m.name,
            cid: &m.cid,
            body: &m.body,
            ts: m.ts,
            meta: m.meta.as_ref(),
            rev: m.state.rev,
            edited_ts: m.state.edited_ts,
            deleted: m.state.deleted,
            reactions: &m.state.reactions,
            mine: &m.state.mine,
        }
    }
}

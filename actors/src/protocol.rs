//! The protocol's typed commands (client → server, already validated) and server frames, plus
//! the one place server frames are encoded. Decoding of untrusted bytes lives at the edge
//! (`chatty::wire`); by the time a command reaches an actor, every field is a checked newtype.

use bytes::Bytes;
use serde::Serialize;

use crate::access::{Identity, RoomRole};
use crate::ids::{Body, Cid, DisplayName, RoomId, Seq, UserId};

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
    /// The frame type, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Send { .. } => "send",
            Command::History { .. } => "history",
            Command::Read { .. } => "read",
            Command::Typing { .. } => "typing",
            Command::Ping { .. } => "ping",
            Command::Kick { .. } => "kick",
            Command::Unban { .. } => "unban",
            Command::SetRole { .. } => "set_role",
            Command::Refresh { .. } => "refresh",
        }
    }
}

/// A message as stored and delivered.
#[derive(Debug, Clone, Serialize)]
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
        }
    }
}

/// A `message` as it appears inside a `history` reply (no `type` field).
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
    /// The text.
    pub body: &'a Body,
    /// Server time of the commit, in milliseconds since the Unix epoch.
    pub ts: i64,
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
        }
    }
}

/// Every frame the server sends. Borrowed, so encoding never clones a body.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Reply to `join`: the socket is a member of the room. Replayed messages, if any, follow
    /// it, then live ones.
    Joined {
        /// The `join`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room joined.
        room: &'a RoomId,
        /// The room's head when the socket joined (0 for a new room): replay ends with it, live
        /// messages start after it.
        seq: Seq,
        /// The user's read marker in the room (0 if none).
        read: Seq,
        /// Everyone present after this join, the joiner included.
        presence: &'a [PresenceEntry],
        /// More than `replay_max` messages were missed: only the newest were replayed, the client
        /// pages the rest with `history`. Omitted when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replay_truncated: bool,
        /// v1.1: the joiner's room role, so a client knows whether to offer moderation.
        role: RoomRole,
    },
    /// Reply to `leave`.
    Left {
        /// The `leave`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room left.
        room: &'a RoomId,
    },
    /// A committed message of a joined room. Every member gets a room's messages in seq
    /// order, the sender included.
    Message {
        /// The room it was posted to.
        room: &'a RoomId,
        /// Its place in the room's order: one more than the previous `message` of the room.
        seq: Seq,
        /// The sender's user id.
        from: &'a UserId,
        /// The sender's display name when it was sent.
        name: &'a DisplayName,
        /// The sender's `cid`, so it can reconcile its optimistic copy.
        cid: &'a Cid,
        /// The text.
        body: &'a Body,
        /// Server time of the commit, in milliseconds since the Unix epoch.
        ts: i64,
    },
    /// Reply to `send`, only once the message is committed.
    Ack {
        /// The `send`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room it was posted to.
        room: &'a RoomId,
        /// The `send`'s `cid`.
        cid: &'a Cid,
        /// The message's seq; for a repeated `cid`, the original one.
        seq: Seq,
        /// Server time of the commit, in milliseconds since the Unix epoch; for a repeated
        /// `cid`, the original one.
        ts: i64,
    },
    /// Reply to `history`.
    History {
        /// The `history`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room read.
        room: &'a RoomId,
        /// The page, oldest first.
        messages: Vec<HistoryItem<'a>>,
        /// Older messages exist: ask again with `before` set to the first message's seq.
        more: bool,
    },
    /// Who came and went in a room; changes close together go out as one frame.
    Presence {
        /// The room.
        room: &'a RoomId,
        /// Users who became present.
        joins: &'a [PresenceEntry],
        /// Users who are no longer present (their last connection left, after a grace period).
        leaves: &'a [PresenceLeave],
    },
    /// Someone else in the room is typing (never sent to the typing user's own sockets).
    Typing {
        /// The room.
        room: &'a RoomId,
        /// Who is typing.
        user: &'a UserId,
    },
    /// The user's read marker moved: the reply to `read`, and a push to the user's other
    /// sockets in the room.
    Read {
        /// The `read`'s `ref`; absent on the pushes to the user's other sockets.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room of the marker.
        room: &'a RoomId,
        /// The marker now; it only ever moves forward.
        seq: Seq,
    },
    /// Reply to `ping`.
    Pong {
        /// The `ping`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// A request failed, or a frame could not be decoded.
    Error {
        /// The offending frame's `ref`, whenever it carried one (even if otherwise invalid).
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people; clients must not parse it.
        message: &'a str,
    },
    /// This socket was taken out of the room; it is no longer joined.
    Removed {
        /// The room the socket was taken out of.
        room: &'a RoomId,
        /// Why it was taken out.
        reason: RemoveReason,
    },
    /// Reply to `kick`: any ban is stored, and the user's sockets are being taken out of
    /// the room on every node.
    Kicked {
        /// The `kick`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room.
        room: &'a RoomId,
        /// Who was kicked.
        user: &'a UserId,
    },
    /// Reply to `unban`.
    Unbanned {
        /// The `unban`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room.
        room: &'a RoomId,
        /// Whose ban was lifted.
        user: &'a UserId,
    },
    /// Reply to `set_role`: the role is stored.
    RoleSet {
        /// The `set_role`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room.
        room: &'a RoomId,
        /// Whose role changed.
        user: &'a UserId,
        /// Their role now.
        role: RoomRole,
    },
    /// Reply to `refresh`: the new token's name, roles and expiry apply from now on.
    Refreshed {
        /// The `refresh`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The new token's `exp` (seconds since the Unix epoch).
        exp: u64,
    },
}

impl<'a> ServerFrame<'a> {
    /// The `message` frame of a stored message, borrowing its fields.
    pub fn message(m: &'a StoredMessage) -> Self {
        ServerFrame::Message {
            room: &m.room,
            seq: m.seq,
            from: &m.from,
            name: &m.name,
            cid: &m.cid,
            body: &m.body,
            ts: m.ts,
        }
    }

    /// An `error` frame, echoing `ref` when the request had one.
    pub fn error(r#ref: Option<&'a str>, code: ErrorCode, message: &'a str) -> Self {
        ServerFrame::Error {
            r#ref,
            code,
            message,
        }
    }

    /// Encode once; the returned bytes are shared by every recipient of that encoding.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        // Serialising these plain structs cannot fail (no maps with non-string keys, no
        // custom serialisers that error); an empty frame is the safe fallback regardless.
        let v = match encoding {
            Encoding::Json => serde_json::to_vec(self).unwrap_or_default(),
            Encoding::MsgPack => rmp_serde::to_vec_named(self).unwrap_or_default(),
        };
        Bytes::from(v)
    }
}

/// Encodes a frame lazily at most once per encoding: rooms call `get` for each recipient.
pub struct EncodeOnce<'a> {
    frame: ServerFrame<'a>,
    json: Option<Bytes>,
    msgpack: Option<Bytes>,
}

impl<'a> EncodeOnce<'a> {
    pub fn new(frame: ServerFrame<'a>) -> Self {
        Self {
            frame,
            json: None,
            msgpack: None,
        }
    }

    pub fn get(&mut self, encoding: Encoding) -> Bytes {
        let slot = match encoding {
            Encoding::Json => &mut self.json,
            Encoding::MsgPack => &mut self.msgpack,
        };
        slot.get_or_insert_with(|| self.frame.encode(encoding))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredMessage {
        StoredMessage {
            room: RoomId::parse("r1").unwrap(),
            seq: 7,
            from: UserId::parse("alice").unwrap(),
            name: DisplayName::sanitize("Alice"),
            cid: Cid::parse("c1").unwrap(),
            body: Body::parse("hi", 10).unwrap(),
            ts: 1_700_000_000_000,
        }
    }

    #[test]
    fn json_message_frames_carry_every_field() {
        let m = sample();
        let v: serde_json::Value =
            serde_json::from_slice(&ServerFrame::message(&m).encode(Encoding::Json)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","room":"r1","seq":7,"from":"alice",
                "name":"Alice","cid":"c1","body":"hi","ts":1_700_000_000_000i64})
        );
    }

    #[test]
    fn msgpack_frames_are_maps_with_named_fields() {
        let m = sample();
        let bytes = ServerFrame::message(&m).encode(Encoding::MsgPack);
        // A fixmap/map16 marker, never an array marker.
        assert!(bytes[0] & 0xf0 == 0x80 || bytes[0] == 0xde);
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["body"], "hi");
    }

    #[test]
    fn ref_is_omitted_when_absent_and_kept_when_present() {
        let room = RoomId::parse("r").unwrap();
        let f = ServerFrame::Read {
            r#ref: None,
            room: &room,
            seq: 3,
        };
        let v: serde_json::Value = serde_json::from_slice(&f.encode(Encoding::Json)).unwrap();
        assert!(v.get("ref").is_none());
        let f = ServerFrame::Pong { r#ref: Some("x") };
        let v: serde_json::Value = serde_json::from_slice(&f.encode(Encoding::Json)).unwrap();
        assert_eq!(v["ref"], "x");
    }

    #[test]
    fn encode_once_reuses_bytes() {
        let m = sample();
        let mut e = EncodeOnce::new(ServerFrame::message(&m));
        let a = e.get(Encoding::Json);
        let b = e.get(Encoding::Json);
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
}

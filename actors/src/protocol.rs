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
    Join {
        r#ref: Ref,
        room: RoomId,
        since: Option<Seq>,
    },
    Leave {
        r#ref: Ref,
        room: RoomId,
    },
    Send {
        r#ref: Ref,
        room: RoomId,
        cid: Cid,
        body: Body,
    },
    History {
        r#ref: Ref,
        room: RoomId,
        before: Option<Seq>,
        limit: u32,
    },
    Read {
        r#ref: Ref,
        room: RoomId,
        seq: Seq,
    },
    Typing {
        room: RoomId,
    },
    Ping {
        r#ref: Ref,
    },
    /// Take `user` out of the room on every node; with `ban`, keep them out.
    Kick {
        r#ref: Ref,
        room: RoomId,
        user: UserId,
        ban: bool,
    },
    Unban {
        r#ref: Ref,
        room: RoomId,
        user: UserId,
    },
    /// Give `user` the room role `role` (an extension of v1.1 for owners and admins).
    SetRole {
        r#ref: Ref,
        room: RoomId,
        user: UserId,
        role: RoomRole,
    },
    /// A newer token. The edge verified it: `None` if it was invalid (its bytes never reach
    /// an actor, so they can never reach a log).
    Refresh {
        r#ref: Ref,
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
    pub room: RoomId,
    pub seq: Seq,
    pub from: UserId,
    pub name: DisplayName,
    pub cid: Cid,
    pub body: Body,
    pub ts: i64,
}

/// `{user, name}` in presence lists.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceEntry {
    pub user: UserId,
    pub name: DisplayName,
}

/// `{user}` in presence leave lists.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceLeave {
    pub user: UserId,
}

/// Why a socket was taken out of a room (`removed.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// No longer a member of the private room.
    Removed,
    Kicked,
    Banned,
}

impl RemoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Removed => "removed",
            RemoveReason::Kicked => "kicked",
            RemoveReason::Banned => "banned",
        }
    }

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
    BadRequest,
    UnknownType,
    TooLarge,
    NotJoined,
    Forbidden,
    RoomLimit,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
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
    pub room: &'a RoomId,
    pub seq: Seq,
    pub from: &'a UserId,
    pub name: &'a DisplayName,
    pub cid: &'a Cid,
    pub body: &'a Body,
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
    Joined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        seq: Seq,
        read: Seq,
        presence: &'a [PresenceEntry],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replay_truncated: bool,
        /// v1.1: the joiner's room role, so a client knows whether to offer moderation.
        role: RoomRole,
    },
    Left {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
    },
    Message {
        room: &'a RoomId,
        seq: Seq,
        from: &'a UserId,
        name: &'a DisplayName,
        cid: &'a Cid,
        body: &'a Body,
        ts: i64,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        cid: &'a Cid,
        seq: Seq,
        ts: i64,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        messages: Vec<HistoryItem<'a>>,
        more: bool,
    },
    Presence {
        room: &'a RoomId,
        joins: &'a [PresenceEntry],
        leaves: &'a [PresenceLeave],
    },
    Typing {
        room: &'a RoomId,
        user: &'a UserId,
    },
    Read {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        seq: Seq,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
    /// This socket was taken out of the room; it is no longer joined.
    Removed {
        room: &'a RoomId,
        reason: RemoveReason,
    },
    Kicked {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        user: &'a UserId,
    },
    Unbanned {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        user: &'a UserId,
    },
    RoleSet {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        room: &'a RoomId,
        user: &'a UserId,
        role: RoomRole,
    },
    Refreshed {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The new token's `exp` (seconds since the Unix epoch).
        exp: u64,
    },
}

impl<'a> ServerFrame<'a> {
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

//! Server frames and their encoding: each frame is encoded once per encoding and the bytes
//! are shared by every recipient (`EncodeOnce`).

use bytes::Bytes;
use serde::Serialize;

use super::{
    is_zero, ChangeKind, Encoding, ErrorCode, HistoryItem, PresenceEntry, PresenceLeave, Reaction,
    RemoveReason, StoredMessage, StoredUpdate,
};
use crate::access::RoomRole;
use crate::ids::{Body, Cid, DisplayName, Meta, Rev, RoomId, Seq, UserId};

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
        /// Everyone present after this join, the joiner included; only the joiner when more
        /// than `limits.presence_list_max` are present (then `presence_truncated`).
        presence: &'a [PresenceEntry],
        /// v1.1: how many users are present, the joiner included.
        presence_count: usize,
        /// v1.1: `presence` lists only the joiner; page the rest with `presence`. Omitted when
        /// false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        presence_truncated: bool,
        /// More than `replay_max` messages were missed: only the newest were replayed, the client
        /// pages the rest with `history`. Omitted when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replay_truncated: bool,
        /// v1.1: the joiner's room role, so a client knows whether to offer moderation.
        role: RoomRole,
        /// v1.1: the room's revision when the socket joined: `update` frames replayed for
        /// `since_rev` end with it, live ones follow it.
        rev: Rev,
        /// v1.1: more than `replay_max` changes were missed since `since_rev`: none were
        /// replayed; the client reloads the messages it shows with `history`. Omitted when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        rev_truncated: bool,
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
        /// The text ("" once deleted).
        body: &'a Body,
        /// Server time of the commit, in milliseconds since the Unix epoch.
        ts: i64,
        /// v1.1: the metadata, when it was sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a Meta>,
        /// v1.1: the revision of its last change (a replayed message may have changed); the
        /// state fields are omitted while they hold their defaults, as for every live message.
        #[serde(skip_serializing_if = "is_zero")]
        rev: Rev,
        /// v1.1: when it was last edited.
        #[serde(skip_serializing_if = "Option::is_none")]
        edited_ts: Option<i64>,
        /// v1.1: deleted (a tombstone).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// v1.1: reaction counts.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        reactions: &'a [Reaction],
    },
    /// v1.1: reply to `edit`, `delete` and `react`, once the change is committed (or, for a
    /// change that changes nothing, at once with the message's current revision).
    Updated {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room.
        room: &'a RoomId,
        /// The message.
        seq: Seq,
        /// The revision the change got (a no-op: the message's current one).
        rev: Rev,
    },
    /// v1.1: a message changed: its whole new state, to every member in `rev` order.
    Update {
        /// The room.
        room: &'a RoomId,
        /// The message.
        seq: Seq,
        /// The change's revision: one more than the room's previous `update`.
        rev: Rev,
        /// What the change did.
        change: ChangeKind,
        /// Who made it.
        by: &'a UserId,
        /// The text now; absent once deleted.
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a Body>,
        /// The metadata now; absent when none or deleted.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a Meta>,
        /// When it was last edited.
        #[serde(skip_serializing_if = "Option::is_none")]
        edited_ts: Option<i64>,
        /// Deleted.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// Reaction counts now (always present, maybe empty).
        reactions: &'a [Reaction],
    },
    /// v1.1: an event the backend pushed to this socket's user (the personal channel).
    Event {
        /// The backend's JSON object, as given.
        data: &'a Meta,
    },
    /// v1.1: a message was committed in a private room the user is a member of and this
    /// socket has not joined: enough for a badge or a notification, never the body.
    Inbox {
        /// The private room.
        room: &'a RoomId,
        /// The message's seq there.
        seq: Seq,
        /// Its sender.
        from: &'a UserId,
        /// The sender's display name.
        name: &'a DisplayName,
        /// Its commit time (ms since the Unix epoch).
        ts: i64,
    },
    /// v1.1: reply to `rooms`: the user's conversation list, most recently active first.
    Rooms {
        /// The `rooms`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// `{room, seq, read, unread, ts}` per room.
        rooms: &'a [crate::ports::RoomSummary],
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
    /// v1.1: reply to `presence`: one page of who is present, in user id order.
    PresencePage {
        /// The `presence`'s `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
        /// The room.
        room: &'a RoomId,
        /// Up to `limit` users after the requested one.
        users: &'a [PresenceEntry],
        /// Ask again with `after: next` for the following page; omitted on the last page.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a UserId>,
    },
    /// v1.1: the number of users present, to members that joined with `presence: "count"`;
    /// at most once a second, and only when it changed.
    PresenceCount {
        /// The room.
        room: &'a RoomId,
        /// Users present.
        count: usize,
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
            meta: m.meta.as_ref(),
            rev: m.state.rev,
            edited_ts: m.state.edited_ts,
            deleted: m.state.deleted,
            reactions: &m.state.reactions,
        }
    }

    /// The `update` frame of a committed change.
    pub fn update(u: &'a StoredUpdate) -> Self {
        let m = &u.message;
        ServerFrame::Update {
            room: &m.room,
            seq: m.seq,
            rev: m.state.rev,
            change: u.change,
            by: &u.by,
            body: (!m.state.deleted).then_some(&m.body),
            meta: m.meta.as_ref().filter(|_| !m.state.deleted),
            edited_ts: m.state.edited_ts,
            deleted: m.state.deleted,
            reactions: &m.state.reactions,
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
            trace: None,
            room: RoomId::parse("r1").unwrap(),
            seq: 7,
            from: UserId::parse("alice").unwrap(),
            name: DisplayName::sanitize("Alice"),
            cid: Cid::parse("c1").unwrap(),
            body: Body::parse("hi", 10).unwrap(),
            ts: 1_700_000_000_000,
            meta: None,
            state: Default::default(),
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

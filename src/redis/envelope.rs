//! What travels on the Redis channels: the envelope (sender node, send time) around one event,
//! its MessagePack wire form, and the channel names. A node ignores its own envelopes.

use std::time::{SystemTime, UNIX_EPOCH};

use chatty_actors::{
    Body, BusEvent, Cid, DisplayName, RemoveReason, RoomId, StoredMessage, UserId,
};
use serde::{Deserialize, Serialize};

pub(super) fn channel(room: &RoomId) -> String {
    format!("chatty:room:{}", room.as_str())
}

/// The channel every node listens on, for events that are not a room's (disconnect a user).
pub(super) const CONTROL: &str = "chatty:control";

/// Where an event goes.
#[derive(Clone)]
pub(super) enum Target {
    Room(RoomId),
    Control,
}

impl Target {
    pub(super) fn channel(&self) -> String {
        match self {
            Target::Room(r) => channel(r),
            Target::Control => CONTROL.to_owned(),
        }
    }
}

/// What travels on a room's channel (MessagePack).
#[derive(Serialize, Deserialize)]
pub(super) struct Envelope {
    /// The publishing node, so it can ignore its own events.
    pub(super) node: String,
    pub(super) event: WireEvent,
}

#[derive(Serialize, Deserialize)]
pub(super) enum WireEvent {
    Messages {
        room: String,
        /// Microseconds since the epoch at commit, for the cross-node latency metric.
        committed_us: u64,
        msgs: Vec<WireMessage>,
    },
    PresenceChanged {
        room: String,
    },
    Typing {
        room: String,
        user: String,
    },
    Resync {
        room: String,
    },
    Remove {
        room: String,
        user: String,
        reason: String,
        force: bool,
    },
    Read {
        room: String,
        user: String,
        seq: u64,
    },
    Disconnect {
        user: String,
    },
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireMessage {
    pub(super) seq: u64,
    pub(super) from: String,
    pub(super) name: String,
    pub(super) cid: String,
    pub(super) body: String,
    pub(super) ts: i64,
}

pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(super) fn to_wire(ev: &BusEvent) -> Option<(Target, WireEvent)> {
    Some(match ev {
        BusEvent::Messages(msgs) => {
            let room = msgs.first()?.room.clone();
            let wire = WireEvent::Messages {
                room: room.as_str().to_owned(),
                committed_us: now_us(),
                msgs: msgs
                    .iter()
                    .map(|m| WireMessage {
                        seq: m.seq,
                        from: m.from.as_str().to_owned(),
                        name: m.name.as_str().to_owned(),
                        cid: m.cid.as_str().to_owned(),
                        body: m.body.as_str().to_owned(),
                        ts: m.ts,
                    })
                    .collect(),
            };
            (Target::Room(room), wire)
        }
        BusEvent::PresenceChanged { room } => (
            Target::Room(room.clone()),
            WireEvent::PresenceChanged {
                room: room.as_str().to_owned(),
            },
        ),
        BusEvent::Typing { room, user } => (
            Target::Room(room.clone()),
            WireEvent::Typing {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
            },
        ),
        BusEvent::Resync { room } => (
            Target::Room(room.clone()),
            WireEvent::Resync {
                room: room.as_str().to_owned(),
            },
        ),
        BusEvent::Remove {
            room,
            user,
            reason,
            force,
        } => (
            Target::Room(room.clone()),
            WireEvent::Remove {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
                reason: reason.as_str().to_owned(),
                force: *force,
            },
        ),
        BusEvent::Read { room, user, seq } => (
            Target::Room(room.clone()),
            WireEvent::Read {
                room: room.as_str().to_owned(),
                user: user.as_str().to_owned(),
                seq: *seq,
            },
        ),
        BusEvent::Disconnect { user } => (
            Target::Control,
            WireEvent::Disconnect {
                user: user.as_str().to_owned(),
            },
        ),
    })
}

/// Decode and validate an event from another node; `None` for anything malformed.
pub(super) fn from_wire(ev: WireEvent) -> Option<(BusEvent, Option<u64>)> {
    Some(match ev {
        WireEvent::Messages {
            room,
            committed_us,
            msgs,
        } => {
            let room = RoomId::parse(&room).ok()?;
            let msgs = msgs
                .into_iter()
                .map(|m| {
                    Some(StoredMessage {
                        room: room.clone(),
                        seq: m.seq,
                        from: UserId::parse(&m.from).ok()?,
                        name: DisplayName::sanitize(&m.name),
                        cid: Cid::parse(&m.cid).ok()?,
                        body: Body::parse(&m.body, usize::MAX).ok()?,
                        ts: m.ts,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            (BusEvent::Messages(msgs.into()), Some(committed_us))
        }
        WireEvent::PresenceChanged { room } => (
            BusEvent::PresenceChanged {
                room: RoomId::parse(&room).ok()?,
            },
            None,
        ),
        WireEvent::Typing { room, user } => (
            BusEvent::Typing {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
            },
            None,
        ),
        WireEvent::Resync { room } => (
            BusEvent::Resync {
                room: RoomId::parse(&room).ok()?,
            },
            None,
        ),
        WireEvent::Remove {
            room,
            user,
            reason,
            force,
        } => (
            BusEvent::Remove {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
                reason: RemoveReason::parse(&reason)?,
                force,
            },
            None,
        ),
        WireEvent::Read { room, user, seq } => (
            BusEvent::Read {
                room: RoomId::parse(&room).ok()?,
                user: UserId::parse(&user).ok()?,
                seq,
            },
            None,
        ),
        WireEvent::Disconnect { user } => (
            BusEvent::Disconnect {
                user: UserId::parse(&user).ok()?,
            },
            None,
        ),
    })
}

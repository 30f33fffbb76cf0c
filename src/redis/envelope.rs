//! What travels on the Redis channels: the envelope (sender node, send time) around one event,
//! its MessagePack wire form, and the channel names. A node ignores its own envelopes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chatty_actors::trace::{self, TraceParent, TARGET};
use chatty_actors::{
    Body, BusEvent, ChangeKind, Cid, DisplayName, EventReply, InboxItem, MessageState, Meta,
    Reaction, ReactionKey, RemoveReason, RoomId, StoredMessage, StoredUpdate, UserId,
};
use serde::{Deserialize, Serialize};

pub(super) fn channel(room: &RoomId) -> String {
    format!("chatty:room:{}", room.as_str())
}

/// The channel every node listens on, for events that are not a room's (disconnect a user).
pub(super) const CONTROL: &str = "chatty:control";

/// Where an event goes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Target {
    Room(RoomId),
    Control,
    /// A user's channel (v1.1): subscribed by the nodes with a socket of the user.
    User(UserId),
    /// One node's own channel: the answers to its questions.
    Node(Arc<str>),
}

impl Target {
    pub(super) fn channel(&self) -> String {
        match self {
            Target::Room(r) => channel(r),
            Target::Control => CONTROL.to_owned(),
            Target::User(u) => format!("chatty:user:{}", u.as_str()),
            Target::Node(n) => format!("chatty:node:{n}"),
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
    /// v1.1: committed changes, ascending rev.
    Updates {
        room: String,
        updates: Vec<WireUpdate>,
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
    /// A room's member rows changed: drop the cached members (every node, control channel).
    MembersChanged {
        room: String,
    },
    /// v1.1: a backend's event for the user's sockets; answer `Delivered` to `reply_node`
    /// when it is set.
    UserEvent {
        user: String,
        /// The JSON text of `data`.
        data: String,
        reply_node: Option<String>,
        reply_id: u64,
    },
    /// v1.1: a private room's new messages for the user's sockets not in it, as
    /// (seq, from, name, ts).
    Inbox {
        user: String,
        room: String,
        items: Vec<(u64, String, String, i64)>,
    },
    /// How many sockets of a node took the user event `id` of the node asking.
    Delivered {
        id: u64,
        count: u64,
    },
}

/// A message on the wire. The v1.1 fields are optional and omitted while default, so a fresh
/// message is encoded as before and nodes of either version read each other's.
#[derive(Serialize, Deserialize)]
pub(super) struct WireMessage {
    pub(super) seq: u64,
    pub(super) from: String,
    pub(super) name: String,
    pub(super) cid: String,
    pub(super) body: String,
    pub(super) ts: i64,
    /// The metadata's JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) meta: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) rev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) edited_ts: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) reactions: Vec<(String, u32)>,
    /// A sampled message's W3C `traceparent`: its publish span, the parent of the receiving
    /// node's spans. Absent for every other message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A committed change: the message's whole new state, what changed and who changed it.
#[derive(Serialize, Deserialize)]
pub(super) struct WireUpdate {
    pub(super) change: String,
    pub(super) by: String,
    pub(super) msg: WireMessage,
}

impl WireMessage {
    fn of(m: &StoredMessage) -> Self {
        WireMessage {
            seq: m.seq,
            from: m.from.as_str().to_owned(),
            name: m.name.as_str().to_owned(),
            cid: m.cid.as_str().to_owned(),
            body: m.body.as_str().to_owned(),
            ts: m.ts,
            meta: m.meta.as_ref().map(|m| m.as_json().to_owned()),
            rev: m.state.rev,
            edited_ts: m.state.edited_ts,
            deleted: m.state.deleted,
            reactions: m
                .state
                .reactions
                .iter()
                .map(|r| (r.key.as_str().to_owned(), r.count))
                .collect(),
            trace: None,
        }
    }

    /// Validated like client input: another node's bytes are not trusted either.
    fn into_message(self, room: &RoomId) -> Option<StoredMessage> {
        Some(StoredMessage {
            // Only a sampled context is sent; a malformed one is dropped, not the message.
            trace: self
                .trace
                .as_deref()
                .and_then(TraceParent::parse)
                .map(|(t, _)| t),
            room: room.clone(),
            seq: self.seq,
            from: UserId::parse(&self.from).ok()?,
            name: DisplayName::sanitize(&self.name),
            cid: Cid::parse(&self.cid).ok()?,
            body: if self.deleted {
                Body::tombstone()
            } else {
                Body::parse(&self.body, usize::MAX).ok()?
            },
            ts: self.ts,
            meta: match self.meta {
                None => None,
                Some(m) => Some(Meta::from_stored(&m)?),
            },
            state: MessageState {
                rev: self.rev,
                edited_ts: self.edited_ts,
                deleted: self.deleted,
                reactions: self
                    .reactions
                    .into_iter()
                    .map(|(k, count)| {
                        Some(Reaction {
                            key: ReactionKey::parse(&k).ok()?,
                            count,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
                mine: Vec::new(),
            },
        })
    }
}

/// A sampled message's publish: a `chatty.bus.publish` span, the child of its commit, whose
/// context travels in the envelope. The spans end once Redis took the publish.
pub(super) fn publish_spans(ev: &BusEvent, wire: &mut WireEvent) -> Vec<tracing::Span> {
    let (BusEvent::Messages(msgs), WireEvent::Messages { msgs: out, .. }) = (ev, wire) else {
        return Vec::new();
    };
    if msgs.iter().all(|m| m.trace.is_none()) || !trace::enabled() {
        return Vec::new();
    }
    let mut spans = Vec::new();
    for (m, w) in msgs.iter().zip(out.iter_mut()) {
        let Some(tp) = m.trace else { continue };
        let span = tracing::info_span!(
            target: TARGET, parent: None, "chatty.bus.publish",
            otel.kind = "producer", trace_id = %tp.trace_id(), room = %m.room, seq = m.seq,
            otel.status_code = tracing::field::Empty,
        );
        w.trace = trace::follow(&span, &tp).map(|t| t.header());
        spans.push(span);
    }
    spans
}

/// Another node's sampled messages arriving here: a `chatty.bus.receive` span each, the child
/// of the publish, and the parent of this node's delivery. A node not exporting traces drops
/// the contexts (and opens nothing).
pub(super) fn receive_spans(ev: &mut BusEvent, committed_us: Option<u64>) {
    let BusEvent::Messages(msgs) = ev else { return };
    if msgs.iter().all(|m| m.trace.is_none()) {
        return;
    }
    // Fresh from the decoder: nobody else holds it yet.
    let Some(msgs) = Arc::get_mut(msgs) else {
        return;
    };
    let lag_us = committed_us.map_or(0, |c| now_us().saturating_sub(c));
    for m in msgs.iter_mut() {
        let Some(tp) = m.trace.take() else { continue };
        if !trace::enabled() {
            continue;
        }
        let span = tracing::info_span!(
            target: TARGET, parent: None, "chatty.bus.receive",
            otel.kind = "consumer", trace_id = %tp.trace_id(), room = %m.room, seq = m.seq,
            commit_lag_us = lag_us,
        );
        m.trace = trace::follow(&span, &tp);
        span.in_scope(|| tracing::debug!(seq = m.seq, "received from the bus"));
    }
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
                msgs: msgs.iter().map(WireMessage::of).collect(),
            };
            (Target::Room(room), wire)
        }
        BusEvent::Updates(ups) => {
            let room = ups.first()?.message.room.clone();
            let wire = WireEvent::Updates {
                room: room.as_str().to_owned(),
                updates: ups
                    .iter()
                    .map(|u| WireUpdate {
                        change: u.change.as_str().to_owned(),
                        by: u.by.as_str().to_owned(),
                        msg: WireMessage::of(&u.message),
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
        BusEvent::MembersChanged { room } => (
            Target::Control,
            WireEvent::MembersChanged {
                room: room.as_str().to_owned(),
            },
        ),
        BusEvent::UserEvent { user, data, reply } => (
            Target::User(user.clone()),
            WireEvent::UserEvent {
                user: user.as_str().to_owned(),
                data: data.as_json().to_owned(),
                reply_node: reply.as_ref().map(|r| r.node.to_string()),
                reply_id: reply.as_ref().map_or(0, |r| r.id),
            },
        ),
        BusEvent::Inbox { user, items } => (
            Target::User(user.clone()),
            WireEvent::Inbox {
                user: user.as_str().to_owned(),
                room: items.first()?.room.as_str().to_owned(),
                items: items
                    .iter()
                    .map(|i| {
                        (
                            i.seq,
                            i.from.as_str().to_owned(),
                            i.name.as_str().to_owned(),
                            i.ts,
                        )
                    })
                    .collect(),
            },
        ),
    })
}

/// The most bytes of a user event's `data` (the HTTP API checks the same bound).
pub const MAX_EVENT_BYTES: usize = 4096;

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
                .map(|m| m.into_message(&room))
                .collect::<Option<Vec<_>>>()?;
            (BusEvent::Messages(msgs.into()), Some(committed_us))
        }
        WireEvent::Updates { room, updates } => {
            let room = RoomId::parse(&room).ok()?;
            let ups = updates
                .into_iter()
                .map(|u| {
                    Some(StoredUpdate {
                        change: ChangeKind::parse(&u.change)?,
                        by: UserId::parse(&u.by).ok()?,
                        message: u.msg.into_message(&room)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            (BusEvent::Updates(ups.into()), None)
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
        WireEvent::MembersChanged { room } => (
            BusEvent::MembersChanged {
                room: RoomId::parse(&room).ok()?,
            },
            None,
        ),
        WireEvent::Disconnect { user } => (
            BusEvent::Disconnect {
                user: UserId::parse(&user).ok()?,
            },
            None,
        ),
        WireEvent::UserEvent {
            user,
            data,
            reply_node,
            reply_id,
        } => {
            let value = serde_json::from_str(&data).ok()?;
            (
                BusEvent::UserEvent {
                    user: UserId::parse(&user).ok()?,
                    data: Meta::object(value, MAX_EVENT_BYTES).ok()?,
                    reply: reply_node.map(|n| EventReply {
                        node: Arc::from(n),
                        id: reply_id,
                    }),
                },
                None,
            )
        }
        WireEvent::Inbox { user, room, items } => {
            let room = RoomId::parse(&room).ok()?;
            let items = items
                .into_iter()
                .map(|(seq, from, name, ts)| {
                    Some(InboxItem {
                        room: room.clone(),
                        seq,
                        from: UserId::parse(&from).ok()?,
                        name: DisplayName::sanitize(&name),
                        ts,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            (
                BusEvent::Inbox {
                    user: UserId::parse(&user).ok()?,
                    items: items.into(),
                },
                None,
            )
        }
        // Answers are taken by the subscriber before this point.
        WireEvent::Delivered { .. } => return None,
    })
}

//! The part of a room that outlives its actor: the members, the presence and the delivered
//! head, owned by the room's handle so that a RoomActor that panics is restarted by its
//! supervisor with its members intact and resumes from the last seq it delivered. Also the
//! fan-out: one frame encoded once per encoding, queued to every member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::presence::RoomPresence;
use super::replay::{Hold, Offer};
use crate::ids::{ConnId, DisplayName, Rev, Seq, UserId};
use crate::metrics::Metrics;
use crate::outbox::{close, Outbox};
use crate::protocol::{
    EncodeOnce, Encoding, PresenceMode, ServerFrame, StoredMessage, StoredUpdate,
};

/// A connection in a room.
#[derive(Clone)]
pub struct Member {
    pub outbox: Outbox,
    pub user: UserId,
    pub name: DisplayName,
    pub encoding: Encoding,
    /// Shared with the connection: the room marks it when it takes the socket out.
    pub membership: Arc<Membership>,
    /// Presence diffs, or only the count.
    pub presence: PresenceMode,
}

/// One socket's membership of one room, shared by the room and the connection. The room
/// revokes it before it queues `removed`, so by the time a client can react to that frame its
/// connection already answers `not_joined` (one atomic load per command, no message).
#[derive(Default)]
pub struct Membership {
    revoked: AtomicBool,
}

impl Membership {
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

pub(crate) struct MemberState {
    pub member: Member,
    /// Messages up to this seq are not delivered to this member (it joined with `since`
    /// beyond what this room had delivered, or a replay already covered them).
    pub skip_through: Seq,
    /// While a replay is running, live frames wait here so they follow the replay.
    pub hold: Hold,
}

impl MemberState {
    /// Queue a frame, or hold it while a replay runs; a member whose hold is full is closed
    /// as a slow consumer (it could not have kept up anyway).
    fn send(&mut self, frame: bytes::Bytes, cap: usize) {
        match self.hold.offer(frame, cap) {
            Offer::Send(frame) => {
                self.member.outbox.push(frame);
            }
            Offer::Held => {}
            Offer::Full => self.member.outbox.close(close::SLOW_CONSUMER),
        }
    }
}

/// The part of a room that survives a restart of its actor.
#[derive(Default)]
pub struct RoomCore {
    pub(crate) delivered: Seq,
    /// The revision of the last change delivered or waiting in `parked` (v1.1).
    pub(crate) rev: Rev,
    /// Changes, in rev order, waiting for their message to be delivered here.
    pub(crate) parked: std::collections::VecDeque<StoredUpdate>,
    pub(crate) members: HashMap<ConnId, MemberState>,
    pub(crate) presence: RoomPresence,
}

/// What a room's handle and its (current) actor share.
#[derive(Default)]
pub struct RoomShared {
    pub(crate) core: Mutex<RoomCore>,
    /// Joins handed out by the supervisor and not yet processed: the room is not idle.
    pub(crate) pending_joins: AtomicUsize,
    /// Client-driven commands waiting in the mailbox (bounded by `room_queue`).
    pub(crate) queued: AtomicUsize,
}

impl RoomCore {
    /// Close every member's connection (the room cannot go on).
    pub fn close_all(&self, code: u16) {
        for m in self.members.values() {
            m.member.outbox.close(code);
        }
    }

    /// True when nothing holds the room open: no member, nobody in a presence grace period.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }

    /// Encode `frame` once per encoding and queue it to every member `to` accepts. Members in
    /// the middle of a replay get it after the replay, like live messages.
    pub(crate) fn broadcast(
        &mut self,
        frame: ServerFrame<'_>,
        to: impl Fn(&Member) -> bool,
        hold_cap: usize,
    ) {
        let mut enc = EncodeOnce::new(frame);
        for m in self.members.values_mut() {
            if !to(&m.member) {
                continue;
            }
            let bytes = enc.get(m.member.encoding);
            m.send(bytes, hold_cap);
        }
    }

    /// Deliver one committed message, the next in seq order, to every member that has not
    /// seen it, encoded once per encoding; the room's head moves to it.
    pub(crate) fn deliver(&mut self, m: &StoredMessage, metrics: &Metrics, hold_cap: usize) {
        self.delivered = m.seq;
        // A sampled message's last span on this node: its fan-out here.
        let span = m.trace.filter(|_| crate::trace::enabled()).map(|tp| {
            let span = tracing::info_span!(
                target: crate::trace::TARGET, parent: None, "chatty.deliver",
                trace_id = %tp.trace_id(), room = %m.room, seq = m.seq,
                sockets = tracing::field::Empty,
            );
            crate::trace::follow(&span, &tp);
            span
        });
        let mut enc = EncodeOnce::new(ServerFrame::message(m));
        let mut n = 0u64;
        for ms in self.members.values_mut() {
            if m.seq <= ms.skip_through {
                continue;
            }
            n += 1;
            ms.send(enc.get(ms.member.encoding), hold_cap);
        }
        metrics.deliveries.inc_by(n);
        if let Some(span) = span {
            span.record("sockets", n);
            span.in_scope(|| tracing::debug!(sockets = n, "delivered"));
        }
        if !self.parked.is_empty() {
            // This message may be what a waiting change needs: the change follows it.
            self.release_parked(hold_cap);
        }
    }

    /// Deliver one committed change, the next in rev order, to every member (the one who
    /// made it included), once its message has been delivered here; the room's revision moves
    /// to it. A change can overtake its message between nodes (they travel on different
    /// nodes' publishes, and a message can wait behind a gap), and a client that hears of a
    /// change before the message would ignore it, then show the message as first sent. So a
    /// change of a message not delivered yet waits, with every change after it, until it is.
    pub(crate) fn offer_update(&mut self, u: &StoredUpdate, hold_cap: usize) {
        self.rev = self.rev.max(u.rev());
        if self.parked.is_empty() && u.message.seq <= self.delivered {
            self.broadcast(ServerFrame::update(u), |_| true, hold_cap);
        } else {
            self.parked.push_back(u.clone());
        }
    }

    /// Deliver the waiting changes whose messages are delivered now, in rev order.
    fn release_parked(&mut self, hold_cap: usize) {
        while self
            .parked
            .front()
            .is_some_and(|u| u.message.seq <= self.delivered)
        {
            if let Some(u) = self.parked.pop_front() {
                self.broadcast(ServerFrame::update(&u), |_| true, hold_cap);
            }
        }
    }
}

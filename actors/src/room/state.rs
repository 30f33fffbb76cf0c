//! The RoomActor's handlers: they tie the plain parts (`core`, `order`, `replay`,
//! `presence`) to the ports (store, bus, presence store) and to the actor's timers.

use std::time::Instant;

use ractor::ActorRef;

use super::core::MemberState;
use super::replay::{spawn_replay, Hold};
use super::{Member, RoomMsg, RoomState};
use crate::access::RoomRole;
use crate::ids::{ConnId, Seq, UserId};
use crate::protocol::{PresenceEntry, Ref, RemoveReason, ServerFrame, StoredMessage};

/// At most this many messages per gap-fill read; a larger gap takes several checks.
const GAP_FILL_PAGE: u32 = 1000;
/// At most this many messages per head-check read.
const HEAD_CHECK_PAGE: u32 = 500;

/// What a joiner asked for, and what the connection and the store said about it.
pub(super) struct JoinAsk {
    pub r#ref: Ref,
    pub since: Option<Seq>,
    pub read: Seq,
    pub role: RoomRole,
    /// The store's head, read just before the join when `since` was ahead of this room.
    pub store_head: Option<Seq>,
}

impl RoomState {
    pub(super) fn join(&mut self, myself: &ActorRef<RoomMsg>, member: Member, ask: JoinAsk) {
        let JoinAsk {
            r#ref,
            since,
            read,
            role,
            store_head,
        } = ask;
        let room = self.args.room.clone();
        let conn = member.outbox.conn();
        let mut core = self.args.shared.core.lock();
        let head = core.delivered;

        // Presence: the first connection of a user makes them present (or cancels their
        // pending leave, which then never shows).
        let became_present =
            !core.members.contains_key(&conn) && core.presence.connect(&member.user, &member.name);
        if became_present {
            self.args.metrics.presence_entries.inc();
        }
        // In cluster mode a new presence is written to the PresenceStore before `joined` goes
        // out (see `local_presence_changed`); meanwhile the member's frames wait in its hold.
        let write_first = became_present && self.args.presence_store.is_some();
        // A big room lists only the joiner: listing everyone to every joiner made a join storm
        // cost members² entries. The rest is paged with `presence` on demand.
        let list_max = self.args.config.presence_list_max;
        let presence_count = core.presence.count();
        let presence_truncated = presence_count > list_max;
        let presence = if presence_truncated {
            vec![PresenceEntry {
                user: member.user.clone(),
                name: member.name.clone(),
            }]
        } else {
            core.presence.list()
        };

        let (replay_from, truncated) = match since {
            Some(s) if s < head => {
                let cap = Seq::from(self.args.config.replay_max);
                if head - s > cap {
                    (head - cap, true)
                } else {
                    (s, false)
                }
            }
            _ => (head, false),
        };
        let joined = ServerFrame::Joined {
            r#ref: r#ref.as_deref(),
            room: &room,
            seq: head,
            read,
            presence: &presence,
            presence_count,
            presence_truncated,
            replay_truncated: truncated,
            role,
        }
        .encode(member.encoding);
        let replaying = replay_from < head;
        let replay = replaying.then_some((replay_from, head));
        if write_first {
            let announce = RoomMsg::Announce {
                conn,
                joined,
                replay,
            };
            self.local_presence_changed(myself, &member.user, &member.name, true, Some(announce));
        } else {
            if became_present {
                self.local_presence_changed(myself, &member.user, &member.name, true, None);
            }
            member.outbox.push(joined);
        }

        // A `since` beyond what this room has delivered may be real (another node is ahead of
        // this one) or not (a restored database): the store decides. Its head, read just
        // before this join, caps what the member can have seen; what lies between this room's
        // head and the store's is filled by CheckHead (and skipped for this member only up to
        // its `since`). If the read failed, CheckHead caps it later.
        let claimed = since.unwrap_or(head);
        let skip_through = store_head.map_or(claimed, |h| claimed.min(h)).max(head);
        if skip_through > head || store_head.is_some_and(|h| h > head) {
            let _ = myself.cast(RoomMsg::CheckHead);
        }
        if let (Some((from, upto)), false) = (replay, write_first) {
            self.replay(myself, member.clone(), from, upto);
        }
        core.members.insert(
            conn,
            MemberState {
                member,
                skip_through,
                hold: Hold::new(replaying || write_first),
            },
        );
        let first_member = core.members.len() == 1;
        drop(core);
        if first_member {
            self.args.bus.subscribe(&room);
        }
        self.arm_presence_flush(myself);
    }

    fn replay(&self, myself: &ActorRef<RoomMsg>, member: Member, from: Seq, upto: Seq) {
        spawn_replay(
            self.args.store.clone(),
            myself.clone(),
            member,
            self.args.room.clone(),
            from,
            upto,
            self.args.metrics.clone(),
        );
    }

    /// A held join's presence is written: send its `joined`, then its replay, or let the live
    /// frames that waited follow.
    pub(super) fn announce(
        &self,
        myself: &ActorRef<RoomMsg>,
        conn: ConnId,
        joined: bytes::Bytes,
        replay: Option<(Seq, Seq)>,
    ) {
        let mut core = self.args.shared.core.lock();
        let Some(m) = core.members.get_mut(&conn) else {
            return; // gone meanwhile
        };
        m.member.outbox.push(joined);
        match replay {
            Some((from, upto)) => self.replay(myself, m.member.clone(), from, upto),
            None => {
                for frame in m.hold.release() {
                    m.member.outbox.push(frame);
                }
            }
        }
    }

    pub(super) fn remove_member(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        conn: ConnId,
    ) -> Option<MemberState> {
        let mut core = self.args.shared.core.lock();
        let m = core.members.remove(&conn)?;
        if let Some(epoch) = core.presence.disconnect(&m.member.user) {
            // Stay present through the grace period: a reconnect flap shows nothing.
            let user = m.member.user.clone();
            myself.send_after(self.args.config.presence_grace, move || {
                RoomMsg::GraceExpired { user, epoch }
            });
        }
        Some(m)
    }

    /// Take every socket of `user` out of the room: revoke, then say `removed` (the last
    /// frame of this room the socket gets). An admin's sockets stay unless `force`d.
    pub(super) fn remove_user(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        user: &UserId,
        reason: RemoveReason,
        force: bool,
    ) {
        let conns: Vec<ConnId> = {
            let core = self.args.shared.core.lock();
            core.members
                .iter()
                .filter(|(_, m)| {
                    m.member.user == *user && (force || !m.member.outbox.shared().is_admin())
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for conn in conns {
            if let Some(m) = self.remove_member(myself, conn) {
                m.member.membership.revoke();
                m.member.outbox.push(
                    ServerFrame::Removed {
                        room: &self.args.room,
                        reason,
                    }
                    .encode(m.member.encoding),
                );
                self.args.metrics.removals.inc();
            }
        }
    }

    pub(super) fn typing(&self, user: &UserId) {
        let mut core = self.args.shared.core.lock();
        let frame = ServerFrame::Typing {
            room: &self.args.room,
            user,
        };
        core.broadcast(frame, |m| m.user != *user, self.args.config.outbound_queue);
    }

    /// Take committed messages in, deliver what is next in order, buffer the rest.
    pub(super) fn accept(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        msgs: &[StoredMessage],
        committed: Option<Instant>,
    ) {
        let mut core = self.args.shared.core.lock();
        let (metrics, cap) = (&self.args.metrics, self.args.config.outbound_queue);
        let delivered = core.delivered;
        self.reorder
            .accept(delivered, msgs, |m| core.deliver(m, metrics, cap));
        drop(core);
        if let Some(t) = committed {
            self.args
                .metrics
                .commit_delivery_seconds
                .with_label_values(&["local"])
                .observe(t.elapsed().as_secs_f64());
        }
        if self.reorder.is_waiting() && !self.gap_timer_armed {
            self.gap_timer_armed = true;
            myself.send_after(self.args.config.gap_wait, || RoomMsg::GapCheck);
        }
    }

    /// Read the seqs missing before the first buffered one from the store.
    pub(super) async fn fill_gap(&mut self, myself: &ActorRef<RoomMsg>) {
        if !self.reorder.is_waiting() {
            return;
        }
        let delivered = self.args.shared.core.lock().delivered;
        let Some(missing) = self.reorder.missing(delivered, GAP_FILL_PAGE) else {
            // Closed meanwhile (a head check delivered up to it): deliver what waited.
            let mut core = self.args.shared.core.lock();
            let (metrics, cap) = (&self.args.metrics, self.args.config.outbound_queue);
            self.reorder
                .drain(delivered, |m| core.deliver(m, metrics, cap));
            return;
        };
        self.args.metrics.gap_fills.inc();
        tracing::debug!(room = %self.args.room, from = missing.after + 1, count = missing.count, "filling gap from store");
        let read = self
            .args
            .store
            .after(&self.args.room, missing.after, missing.count);
        match crate::ports::timed(read).await {
            Ok(found) => self.accept(myself, &found, None),
            Err(e) => {
                tracing::warn!(room = %self.args.room, error = %e, "gap fill failed, will retry");
                self.gap_timer_armed = true;
                myself.send_after(self.args.config.gap_wait * 4, || RoomMsg::GapCheck);
            }
        }
    }

    /// Compare the delivered head with the store and deliver what this room missed.
    pub(super) async fn check_head(&mut self, myself: &ActorRef<RoomMsg>) {
        self.args.metrics.head_checks.inc();
        let room = self.args.room.clone();
        let head = match crate::ports::timed(self.args.store.head(&room)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "head check failed, will retry");
                myself.send_after(self.args.config.gap_wait * 10, || RoomMsg::CheckHead);
                return;
            }
        };
        loop {
            let delivered = self.args.shared.core.lock().delivered;
            if delivered >= head {
                // Nobody waits for messages past the real head: a member that joined with a
                // `since` the store never reached gets everything after the head.
                let mut core = self.args.shared.core.lock();
                for m in core.members.values_mut() {
                    m.skip_through = m.skip_through.min(head);
                }
                return;
            }
            self.args.metrics.gap_fills.inc();
            let n = (head - delivered).min(Seq::from(HEAD_CHECK_PAGE)) as u32;
            match crate::ports::timed(self.args.store.after(&room, delivered, n)).await {
                Ok(found) if !found.is_empty() => self.accept(myself, &found, None),
                _ => return,
            }
        }
    }

    /// Hand the room back to its keeper when nobody holds it open.
    pub(super) fn maybe_idle(&self, myself: &ActorRef<RoomMsg>) {
        if self.args.shared.core.lock().is_idle() {
            (self.args.on_idle)(self.args.room.clone(), myself.get_id());
        }
    }
}

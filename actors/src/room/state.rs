//! The RoomActor's handlers: they tie the plain parts (`core`, `order`, `replay`,
//! `presence`) to the ports (store, bus, presence store) and to the actor's timers.

use std::time::Instant;

use ractor::ActorRef;

use super::core::MemberState;
use super::replay::{spawn_replay, Hold, Replay};
use super::{Member, RoomMsg, RoomState};
use crate::access::RoomRole;
use crate::ids::{ConnId, Rev, Seq, UserId};
use crate::protocol::{PresenceEntry, Ref, RemoveReason, ServerFrame, StoredMessage, StoredUpdate};

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
    /// The changes to replay for `since_rev`.
    pub missed: Missed,
}

/// The changes a joiner with `since_rev` missed, read as it joins.
pub(super) enum Missed {
    /// These, in rev order (maybe none).
    Changes(Vec<StoredUpdate>),
    /// More than `replay_max`, or the read failed: none are replayed, `joined.rev_truncated`
    /// tells the client to reload what it shows.
    Truncated,
}

impl RoomState {
    pub(super) fn join(&mut self, myself: &ActorRef<RoomMsg>, member: Member, ask: JoinAsk) {
        let JoinAsk {
            r#ref,
            since,
            read,
            role,
            store_head,
            missed,
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
        let (updates, rev_truncated) = match missed {
            Missed::Changes(u) => (u, false),
            Missed::Truncated => (Vec::new(), true),
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
            rev: core.rev,
            rev_truncated,
        }
        .encode(member.encoding);
        let replay = Replay {
            from: replay_from,
            upto: head,
            updates,
        };
        let replaying = !replay.is_empty();
        // Replayed now, or (cluster mode, a new presence) after the presence write.
        let (now, later) = if write_first {
            (None, replay)
        } else {
            (Some(replay), Replay::default())
        };
        if write_first {
            let announce = RoomMsg::Announce {
                conn,
                joined,
                replay: later,
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
        if let Some(replay) = now.filter(|r| !r.is_empty()) {
            self.replay(myself, member.clone(), replay);
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

    fn replay(&self, myself: &ActorRef<RoomMsg>, member: Member, replay: Replay) {
        spawn_replay(
            self.args.store.clone(),
            myself.clone(),
            member,
            self.args.room.clone(),
            replay,
            self.args.metrics.clone(),
        );
    }

    /// The changes a joiner missed: messages up to `since` changed after `since_rev`, up to
    /// this room's revision (later ones reach it live). Read only when something changed.
    pub(super) async fn missed_changes(
        &self,
        since: Option<Seq>,
        since_rev: Option<Rev>,
    ) -> Missed {
        let rev = self.args.shared.core.lock().rev;
        let (Some(since), Some(after)) = (since, since_rev) else {
            return Missed::Changes(Vec::new());
        };
        if after >= rev {
            return Missed::Changes(Vec::new());
        }
        let max = self.args.config.replay_max;
        let read = self
            .args
            .store
            .changes(&self.args.room, after, since, max.saturating_add(1));
        match crate::ports::timed(read).await {
            Ok((mut ups, _)) => {
                ups.retain(|u| u.rev() <= rev);
                if ups.len() > max as usize {
                    Missed::Truncated
                } else {
                    Missed::Changes(ups)
                }
            }
            Err(e) => {
                tracing::warn!(room = %self.args.room, error = %e, "change replay read failed");
                Missed::Truncated
            }
        }
    }

    /// A held join's presence is written: send its `joined`, then its replay, or let the live
    /// frames that waited follow.
    pub(super) fn announce(
        &self,
        myself: &ActorRef<RoomMsg>,
        conn: ConnId,
        joined: bytes::Bytes,
        replay: Replay,
    ) {
        let mut core = self.args.shared.core.lock();
        let Some(m) = core.members.get_mut(&conn) else {
            return; // gone meanwhile
        };
        m.member.outbox.push(joined);
        if replay.is_empty() {
            for frame in m.hold.release() {
                m.member.outbox.push(frame);
            }
        } else {
            self.replay(myself, m.member.clone(), replay);
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

    /// Take committed changes in, deliver what is next in rev order, buffer the rest.
    pub(super) fn accept_updates(&mut self, myself: &ActorRef<RoomMsg>, ups: &[StoredUpdate]) {
        let mut core = self.args.shared.core.lock();
        let cap = self.args.config.outbound_queue;
        let rev = core.rev;
        self.update_order
            .accept(rev, ups, |u| core.offer_update(u, cap));
        drop(core);
        if self.update_order.is_waiting() && !self.gap_timer_armed {
            self.gap_timer_armed = true;
            myself.send_after(self.args.config.gap_wait, || RoomMsg::GapCheck);
        }
    }

    /// Changes read from the store after this room's revision: deliver them (their revisions
    /// skip those a later change of the same message overwrote) and move the revision to what
    /// the read covered. False when the read failed.
    async fn catch_up_changes(&mut self, page: u32) -> bool {
        let room = self.args.room.clone();
        loop {
            let after = self.args.shared.core.lock().rev;
            let read = self.args.store.changes(&room, after, Seq::MAX, page);
            let (found, head) = match crate::ports::timed(read).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "change gap fill failed, will retry");
                    return false;
                }
            };
            let full = found.len() >= page as usize;
            let mut core = self.args.shared.core.lock();
            let cap = self.args.config.outbound_queue;
            for u in &found {
                if u.rev() > core.rev {
                    core.offer_update(u, cap);
                }
            }
            if !full {
                core.rev = core.rev.max(head);
            }
            let rev = core.rev;
            self.update_order.drain(rev, |u| core.offer_update(u, cap));
            if !full {
                return true;
            }
        }
    }

    /// Read the seqs missing before the first buffered one from the store.
    pub(super) async fn fill_gap(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.update_order.is_waiting() {
            self.args.metrics.gap_fills.inc();
            if !self.catch_up_changes(GAP_FILL_PAGE).await {
                self.gap_timer_armed = true;
                myself.send_after(self.args.config.gap_wait * 4, || RoomMsg::GapCheck);
            }
        }
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
        let heads = match crate::ports::timed(self.args.store.heads(&room)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "head check failed, will retry");
                myself.send_after(self.args.config.gap_wait * 10, || RoomMsg::CheckHead);
                return;
            }
        };
        if heads.rev > self.args.shared.core.lock().rev
            && !self.catch_up_changes(HEAD_CHECK_PAGE).await
        {
            myself.send_after(self.args.config.gap_wait * 10, || RoomMsg::CheckHead);
        }
        let head = heads.seq;
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

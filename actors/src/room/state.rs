//! The RoomActor's handlers: they tie the plain parts (`core`, `order`, `replay`,
//! `presence`) to the ports (store, bus, presence store) and to the actor's timers.

use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::core::MemberState;
use super::replay::{spawn_replay, Hold};
use super::{Member, RoomMsg, RoomState};
use crate::access::RoomRole;
use crate::ids::{ConnId, DisplayName, Seq, UserId};
use crate::ports::BusEvent;
use crate::protocol::{PresenceEntry, PresenceMode, Ref, RemoveReason, ServerFrame, StoredMessage};

/// Members that asked for counts get one at most this often.
const COUNT_INTERVAL: Duration = Duration::from_secs(1);

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
        if !core.members.contains_key(&conn) && core.presence.connect(&member.user, &member.name) {
            self.args.metrics.presence_entries.inc();
            self.local_presence_changed(myself, &member.user, &member.name, true);
        }
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
        member.outbox.push(joined);

        let replaying = replay_from < head;
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
        if replaying {
            spawn_replay(
                self.args.store.clone(),
                myself.clone(),
                member.clone(),
                room.clone(),
                replay_from,
                head,
                self.args.metrics.clone(),
            );
        }
        core.members.insert(
            conn,
            MemberState {
                member,
                skip_through,
                hold: Hold::new(replaying),
            },
        );
        let first_member = core.members.len() == 1;
        drop(core);
        if first_member {
            self.args.bus.subscribe(&room);
        }
        self.arm_presence_flush(myself);
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

    pub(super) fn grace_expired(&mut self, myself: &ActorRef<RoomMsg>, user: UserId, epoch: u64) {
        let Some(name) = self
            .args
            .shared
            .core
            .lock()
            .presence
            .grace_expired(&user, epoch)
        else {
            return;
        };
        self.args.metrics.presence_entries.dec();
        // In cluster mode the user stays in the remote view (the store's last word) until the
        // store has forgotten this node's entry: if another node still has them, no leave
        // shows.
        self.local_presence_changed(myself, &user, &name, false);
        self.arm_presence_flush(myself);
    }

    /// Record a change of this node's presence: in the node's index and, in cluster mode,
    /// in the PresenceStore (off the room's mailbox, so a stalled Redis never stalls a room),
    /// then tell the other nodes to re-read it.
    fn local_presence_changed(
        &self,
        myself: &ActorRef<RoomMsg>,
        user: &UserId,
        name: &DisplayName,
        present: bool,
    ) {
        self.args.presence.set(&self.args.room, user, name, present);
        let Some(store) = self.args.presence_store.clone() else {
            return;
        };
        let (room, user, name, bus, me) = (
            self.args.room.clone(),
            user.clone(),
            name.clone(),
            self.args.bus.clone(),
            myself.clone(),
        );
        tokio::spawn(async move {
            let write = async {
                if present {
                    store.add(&room, &user, &name).await
                } else {
                    store.remove(&room, &user).await
                }
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), write).await {
                bus.publish(BusEvent::PresenceChanged { room });
            }
            let _ = me.cast(RoomMsg::PresenceResync);
        });
    }

    /// Read the cluster-wide presence, at most one read in flight per room.
    pub(super) fn presence_resync(&mut self, myself: &ActorRef<RoomMsg>) {
        let Some(store) = self.args.presence_store.clone() else {
            return;
        };
        if self.resync_inflight {
            self.resync_again = true;
            return;
        }
        self.resync_inflight = true;
        let (room, me) = (self.args.room.clone(), myself.clone());
        tokio::spawn(async move {
            let list = match tokio::time::timeout(Duration::from_secs(2), store.list(&room)).await {
                Ok(Ok(l)) => Some(l),
                _ => None,
            };
            let _ = me.cast(RoomMsg::PresenceSnapshot(list));
        });
    }

    pub(super) fn arm_presence_flush(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.flush_armed {
            return;
        }
        self.flush_armed = true;
        myself.send_after(self.args.config.presence_coalesce, || {
            RoomMsg::FlushPresence
        });
    }

    /// Tell the local members what changed since they were last told: one diff per window
    /// to those who want diffs; those who want the count get it at most once a second.
    pub(super) fn flush_presence(&mut self, myself: &ActorRef<RoomMsg>) {
        self.flush_armed = false;
        let mut core = self.args.shared.core.lock();
        let Some((joins, leaves)) = core.presence.take_diff() else {
            return;
        };
        let frame = ServerFrame::Presence {
            room: &self.args.room,
            joins: &joins,
            leaves: &leaves,
        };
        core.broadcast(
            frame,
            |m| m.presence == PresenceMode::Full,
            self.args.config.outbound_queue,
        );
        let counting = core
            .members
            .values()
            .any(|m| m.member.presence == PresenceMode::Count);
        drop(core);
        if counting && !self.count_armed {
            self.count_armed = true;
            let wait = COUNT_INTERVAL.saturating_sub(self.count_sent_at.elapsed());
            myself.send_after(wait, || RoomMsg::FlushCount);
        }
    }

    /// Send the count to the members that asked for counts, if it changed since the last one.
    pub(super) fn flush_count(&mut self) {
        self.count_armed = false;
        let mut core = self.args.shared.core.lock();
        let count = core.presence.count();
        if self.count_sent == Some(count) {
            return;
        }
        self.count_sent = Some(count);
        self.count_sent_at = Instant::now();
        let frame = ServerFrame::PresenceCount {
            room: &self.args.room,
            count,
        };
        core.broadcast(
            frame,
            |m| m.presence == PresenceMode::Count,
            self.args.config.outbound_queue,
        );
    }

    /// Answer a `presence` page to one member.
    pub(super) fn presence_page(
        &self,
        conn: ConnId,
        r#ref: Ref,
        after: Option<UserId>,
        limit: Option<u32>,
    ) {
        let core = self.args.shared.core.lock();
        let Some(m) = core.members.get(&conn) else {
            return;
        };
        let max = self.args.config.presence_list_max;
        let limit = limit.map_or(max, |l| (l as usize).min(max));
        let (users, more) = core.presence.page(after.as_ref(), limit);
        let frame = ServerFrame::PresencePage {
            r#ref: r#ref.as_deref(),
            room: &self.args.room,
            users: &users,
            next: more.then(|| users.last().map(|e| &e.user)).flatten(),
        };
        m.member.outbox.push(frame.encode(m.member.encoding));
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

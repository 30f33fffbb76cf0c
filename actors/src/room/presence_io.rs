//! The RoomActor's presence handlers: the PresenceStore writes (a join's before its `joined`)
//! and reads, grace periods, the coalesced diffs, counts and pages.

use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::{RoomMsg, RoomState};
use crate::ids::{ConnId, DisplayName, UserId};
use crate::ports::BusEvent;
use crate::protocol::{PresenceMode, Ref, ServerFrame};

/// Members that asked for counts get one at most this often.
const COUNT_INTERVAL: Duration = Duration::from_secs(1);

impl RoomState {
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
        self.local_presence_changed(myself, &user, &name, false, None);
        self.arm_presence_flush(myself);
    }

    /// Record a change of this node's presence: in the node's index and, in cluster mode,
    /// in the PresenceStore (off the room's mailbox, so a stalled Redis never stalls a room),
    /// then tell the other nodes to re-read it.
    ///
    /// `then` is cast to the room once the write is done (or has failed or timed out): a join
    /// holds its `joined` until then, so that once a client has its `joined`, a join of the
    /// same room on any other node lists it (read-your-writes across nodes).
    pub(super) fn local_presence_changed(
        &self,
        myself: &ActorRef<RoomMsg>,
        user: &UserId,
        name: &DisplayName,
        present: bool,
        then: Option<RoomMsg>,
    ) {
        self.args.presence.set(&self.args.room, user, name, present);
        let Some(store) = self.args.presence_store.clone() else {
            if let Some(msg) = then {
                let _ = myself.cast(msg);
            }
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
            if let Some(msg) = then {
                let _ = me.cast(msg);
            }
            let _ = me.cast(RoomMsg::PresenceResync);
        });
    }

    /// Cluster mode, before a join is answered: read who is present on every node, so that
    /// `joined` lists everyone whose own `joined` has gone out anywhere (their presence was
    /// written before it, see `join`). Only while the list is short enough to be sent whole; a
    /// truncated room's joiner pages it anyway. A failed read keeps the last view.
    ///
    /// A read that started after the join was asked already covers it: in a join storm the
    /// joins queued behind one read share the next, instead of one read each.
    pub(super) async fn read_cluster_presence(&mut self, asked: Instant) {
        let Some(store) = self.args.presence_store.clone() else {
            return;
        };
        if self.presence_read_at.is_some_and(|at| at >= asked) {
            return;
        }
        let count = self.args.shared.core.lock().presence.count();
        if count > self.args.config.presence_list_max {
            return;
        }
        self.args.metrics.presence_reads.inc();
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(2), store.list(&self.args.room));
        if let Ok(Ok(list)) = read.await {
            self.args.shared.core.lock().presence.set_remote(list);
            self.presence_read_at = Some(started);
        }
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
        self.args.metrics.presence_reads.inc();
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
}

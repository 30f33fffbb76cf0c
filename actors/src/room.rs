//! RoomActor: one per room with members on this node. It owns the room's local members and
//! presence, and delivers committed messages strictly in seq order: a message that arrives
//! ahead of a gap waits in a reorder buffer, and a gap that does not close by itself within
//! `gap_wait` is filled from the store, the source of truth.
//!
//! The members, presence and delivered head live in a `RoomCore` owned by the room's handle,
//! not by the actor, so a RoomActor that panics is restarted by its supervisor with its members
//! intact and resumes from the last seq it delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::access::RoomRole;
use crate::config::NodeConfig;
use crate::ids::{ConnId, DisplayName, RoomId, Seq, UserId};
use crate::metrics::Metrics;
use crate::outbox::{close, Outbox};
use crate::ports::{BusEvent, ClusterBus, MessageStore, PresenceStore};
use crate::presence::{PresenceKeeperMsg, PresenceRef};
use crate::protocol::{
    EncodeOnce, Encoding, PresenceEntry, PresenceLeave, Ref, RemoveReason, ServerFrame,
    StoredMessage,
};
use crate::rooms::RoomSupervisorMsg;

/// A connection in a room.
#[derive(Clone)]
pub struct Member {
    pub outbox: Outbox,
    pub user: UserId,
    pub name: DisplayName,
    pub encoding: Encoding,
    /// Shared with the connection: the room marks it when it takes the socket out.
    pub membership: Arc<Membership>,
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

struct MemberState {
    member: Member,
    /// Messages up to this seq are not delivered to this member (it joined with `since`
    /// beyond what this room had delivered, or a replay already covered them).
    skip_through: Seq,
    /// While a replay is running, live frames wait here so they follow the replay.
    held: Option<Vec<Bytes>>,
}

struct UserPresence {
    name: DisplayName,
    conns: u32,
    /// Bumped on every change, so a grace timer fires only for the leave that armed it.
    epoch: u64,
}

/// The part of a room that survives a restart of its actor.
#[derive(Default)]
pub struct RoomCore {
    delivered: Seq,
    members: HashMap<ConnId, MemberState>,
    /// Users present through this node (a grace period included).
    users: HashMap<UserId, UserPresence>,
    /// Users present on any node, as last read from the PresenceStore (cluster mode).
    remote: BTreeMap<UserId, DisplayName>,
    /// The presence the local members have been told about.
    announced: BTreeMap<UserId, DisplayName>,
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
        self.members.is_empty() && self.users.is_empty()
    }
}

pub enum RoomMsg {
    Join {
        member: Box<Member>,
        r#ref: Ref,
        since: Option<Seq>,
        read: Seq,
        role: RoomRole,
    },
    Leave {
        conn: ConnId,
        r#ref: Ref,
    },
    /// The connection went away without leaving.
    Detach(ConnId),
    /// Committed messages of this room, ascending seq.
    Deliver {
        msgs: Arc<[StoredMessage]>,
        committed: Option<Instant>,
    },
    Typing {
        user: UserId,
        /// From a local connection (counted in the room's bounded queue, and published to
        /// other nodes), or from the bus.
        local: bool,
    },
    /// Push a read marker to the user's (other) connections in this room.
    ReadSync {
        user: UserId,
        seq: Seq,
        except: Option<ConnId>,
    },
    /// Take the user's sockets out of the room, each with a `removed` frame; admins' only
    /// when `force`d (the backend asked).
    RemoveUser {
        user: UserId,
        reason: RemoveReason,
        force: bool,
    },
    /// Re-read the cluster-wide presence (cluster mode).
    PresenceResync,
    /// The cluster-wide presence just read.
    PresenceSnapshot(Option<Vec<PresenceEntry>>),
    FlushPresence,
    GraceExpired {
        user: UserId,
        epoch: u64,
    },
    GapCheck,
    /// Compare the delivered head with the store and fill what was missed.
    CheckHead,
    ReplayDone {
        conn: ConnId,
        ok: bool,
    },
    /// Fault injection for tests.
    Panic,
}

pub struct RoomArgs {
    pub shared: Arc<RoomShared>,
    pub room: RoomId,
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn ClusterBus>,
    pub presence: PresenceRef,
    pub presence_store: Option<Arc<dyn PresenceStore>>,
    pub supervisor: ActorRef<RoomSupervisorMsg>,
    pub config: NodeConfig,
    pub metrics: Metrics,
    /// True when this actor replaces one that failed.
    pub restarted: bool,
}

pub struct RoomActor;

pub struct RoomState {
    args: RoomArgs,
    reorder: BTreeMap<Seq, StoredMessage>,
    gap_timer_armed: bool,
    flush_armed: bool,
    resync_inflight: bool,
    resync_again: bool,
    epoch: u64,
}

#[ractor::async_trait]
impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        if !args.restarted {
            let head = crate::ports::timed(args.store.head(&args.room)).await?;
            args.shared.core.lock().delivered = head;
        } else {
            // Whatever was committed while no actor listened is read back from the store.
            let _ = myself.cast(RoomMsg::CheckHead);
        }
        if args.presence_store.is_some() {
            let _ = myself.cast(RoomMsg::PresenceResync);
        }
        args.metrics.actors_alive.with_label_values(&["room"]).inc();
        Ok(RoomState {
            args,
            reorder: BTreeMap::new(),
            gap_timer_armed: false,
            flush_armed: false,
            resync_inflight: false,
            resync_again: false,
            epoch: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RoomMsg>,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .args
            .metrics
            .actors_alive
            .with_label_values(&["room"])
            .dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        // One span per room, with its id as a field (debug level: free when not enabled).
        let span = tracing::debug_span!("room", room = %state.args.room);
        handle_room(myself, msg, state).instrument(span).await
    }
}

async fn handle_room(
    myself: ActorRef<RoomMsg>,
    msg: RoomMsg,
    state: &mut RoomState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        RoomMsg::Join {
            member,
            r#ref,
            since,
            read,
            role,
        } => {
            state
                .args
                .shared
                .pending_joins
                .fetch_sub(1, Ordering::AcqRel);
            // A `since` beyond what this room has delivered: ask the store for the real head
            // now, before anything else is delivered. Asked later, a message committed
            // meanwhile would already count as "seen" by this member and be skipped for it.
            let delivered = state.args.shared.core.lock().delivered;
            let store_head = match since {
                Some(s) if s > delivered => {
                    crate::ports::timed(state.args.store.head(&state.args.room))
                        .await
                        .ok()
                }
                _ => None,
            };
            state.join(
                &myself,
                *member,
                JoinAsk {
                    r#ref,
                    since,
                    read,
                    role,
                    store_head,
                },
            );
        }
        RoomMsg::Leave { conn, r#ref } => {
            if let Some(m) = state.remove_member(&myself, conn) {
                let room = state.args.room.clone();
                m.member.outbox.push(
                    ServerFrame::Left {
                        r#ref: r#ref.as_deref(),
                        room: &room,
                    }
                    .encode(m.member.encoding),
                );
            }
            state.maybe_idle(&myself);
        }
        RoomMsg::Detach(conn) => {
            state.remove_member(&myself, conn);
            state.maybe_idle(&myself);
        }
        RoomMsg::Deliver { msgs, committed } => {
            state.accept(&myself, &msgs, committed);
        }
        RoomMsg::Typing { user, local } => {
            state.typing(&user);
            if local {
                state.args.shared.queued.fetch_sub(1, Ordering::AcqRel);
                state.args.bus.publish(BusEvent::Typing {
                    room: state.args.room.clone(),
                    user,
                });
            }
        }
        RoomMsg::ReadSync { user, seq, except } => {
            let core = state.args.shared.core.lock();
            let frame = ServerFrame::Read {
                r#ref: None,
                room: &state.args.room,
                seq,
            };
            let mut enc = EncodeOnce::new(frame);
            for (id, m) in &core.members {
                if Some(*id) != except && m.member.user == user {
                    m.member.outbox.push(enc.get(m.member.encoding));
                }
            }
        }
        RoomMsg::RemoveUser {
            user,
            reason,
            force,
        } => {
            state.remove_user(&myself, &user, reason, force);
            state.maybe_idle(&myself);
        }
        RoomMsg::PresenceResync => state.presence_resync(&myself),
        RoomMsg::PresenceSnapshot(list) => {
            state.resync_inflight = false;
            if let Some(list) = list {
                state.args.shared.core.lock().remote =
                    list.into_iter().map(|e| (e.user, e.name)).collect();
                state.arm_presence_flush(&myself);
            }
            if std::mem::take(&mut state.resync_again) {
                state.presence_resync(&myself);
            }
        }
        RoomMsg::FlushPresence => state.flush_presence(),
        RoomMsg::GraceExpired { user, epoch } => {
            state.grace_expired(&myself, user, epoch);
            state.maybe_idle(&myself);
        }
        RoomMsg::GapCheck => {
            state.gap_timer_armed = false;
            state.fill_gap(&myself).await;
        }
        RoomMsg::CheckHead => state.check_head(&myself).await,
        RoomMsg::ReplayDone { conn, ok } => {
            let mut core = state.args.shared.core.lock();
            if let Some(m) = core.members.get_mut(&conn) {
                if ok {
                    for frame in m.held.take().unwrap_or_default() {
                        m.member.outbox.push(frame);
                    }
                } else {
                    // The client would have a hole: make it reconnect and recover.
                    m.member.outbox.close(close::OVERLOADED);
                }
            }
        }
        RoomMsg::Panic => panic!("fault injection: room panic requested"),
    }
    Ok(())
}

/// Who is present: the users of this node plus those of other nodes, once each.
fn presence_view(core: &RoomCore) -> BTreeMap<UserId, DisplayName> {
    let mut v = core.remote.clone();
    for (user, p) in &core.users {
        v.insert(user.clone(), p.name.clone());
    }
    v
}

fn presence_list(core: &RoomCore) -> Vec<PresenceEntry> {
    presence_view(core)
        .into_iter()
        .map(|(user, name)| PresenceEntry { user, name })
        .collect()
}

/// Encode `frame` once per encoding and queue it to every member except `except_user`.
/// Members in the middle of a replay get it after the replay, like live messages.
fn broadcast(core: &mut RoomCore, frame: ServerFrame<'_>, except_user: Option<&UserId>) {
    let mut enc = EncodeOnce::new(frame);
    for m in core.members.values_mut() {
        if Some(&m.member.user) == except_user {
            continue;
        }
        let bytes = enc.get(m.member.encoding);
        match &mut m.held {
            Some(held) => held.push(bytes),
            None => {
                m.member.outbox.push(bytes);
            }
        }
    }
}

/// What a joiner asked for, and what the connection and the store said about it.
struct JoinAsk {
    r#ref: Ref,
    since: Option<Seq>,
    read: Seq,
    role: RoomRole,
    /// The store's head, read just before the join when `since` was ahead of this room.
    store_head: Option<Seq>,
}

impl RoomState {
    fn join(&mut self, myself: &ActorRef<RoomMsg>, member: Member, ask: JoinAsk) {
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
        let already = core.members.contains_key(&conn);

        // Presence: the first connection of a user makes them present (or cancels their
        // pending leave, which then never shows).
        if !already {
            // A user still in their grace period is present already: no diff for the return.
            let was_present = core.users.contains_key(&member.user);
            let p = core
                .users
                .entry(member.user.clone())
                .or_insert_with(|| UserPresence {
                    name: member.name.clone(),
                    conns: 0,
                    epoch: 0,
                });
            p.conns += 1;
            self.epoch += 1;
            p.epoch = self.epoch;
            if !was_present {
                self.args.metrics.presence_entries.inc();
                self.local_presence_changed(myself, &member.user, &member.name, true);
            }
        }
        let presence = presence_list(&core);

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
                held: replaying.then(Vec::new),
            },
        );
        let first_member = core.members.len() == 1;
        drop(core);
        if first_member {
            self.args.bus.subscribe(&room);
        }
        self.arm_presence_flush(myself);
    }

    fn remove_member(&mut self, myself: &ActorRef<RoomMsg>, conn: ConnId) -> Option<MemberState> {
        let mut core = self.args.shared.core.lock();
        let m = core.members.remove(&conn)?;
        self.epoch += 1;
        let epoch = self.epoch;
        if let Some(p) = core.users.get_mut(&m.member.user) {
            p.conns = p.conns.saturating_sub(1);
            p.epoch = epoch;
            if p.conns == 0 {
                // Stay present through the grace period: a reconnect flap shows nothing.
                let user = m.member.user.clone();
                myself.send_after(self.args.config.presence_grace, move || {
                    RoomMsg::GraceExpired { user, epoch }
                });
            }
        }
        Some(m)
    }

    /// Take every socket of `user` out of the room: revoke, then say `removed` (the last
    /// frame of this room the socket gets). An admin's sockets stay unless `force`d.
    fn remove_user(
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

    fn grace_expired(&mut self, myself: &ActorRef<RoomMsg>, user: UserId, epoch: u64) {
        let mut core = self.args.shared.core.lock();
        let gone = matches!(core.users.get(&user), Some(p) if p.conns == 0 && p.epoch == epoch);
        if !gone {
            return;
        }
        let Some(p) = core.users.remove(&user) else {
            return;
        };
        drop(core);
        self.args.metrics.presence_entries.dec();
        // In cluster mode the user stays in `remote` (the store's last word) until the store
        // has forgotten this node's entry: if another node still has them, no leave shows.
        self.local_presence_changed(myself, &user, &p.name, false);
        self.arm_presence_flush(myself);
    }

    /// Record a change of this node's presence: in the keeper's index and, in cluster mode,
    /// in the PresenceStore (off the room's mailbox, so a stalled Redis never stalls a room),
    /// then tell the other nodes to re-read it.
    fn local_presence_changed(
        &self,
        myself: &ActorRef<RoomMsg>,
        user: &UserId,
        name: &DisplayName,
        present: bool,
    ) {
        let _ = self.args.presence.cast(PresenceKeeperMsg::Local {
            room: self.args.room.clone(),
            user: user.clone(),
            name: name.clone(),
            present,
        });
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
    fn presence_resync(&mut self, myself: &ActorRef<RoomMsg>) {
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

    fn arm_presence_flush(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.flush_armed {
            return;
        }
        self.flush_armed = true;
        myself.send_after(self.args.config.presence_coalesce, || {
            RoomMsg::FlushPresence
        });
    }

    /// Tell the local members what changed since they were last told: one diff per window.
    fn flush_presence(&mut self) {
        self.flush_armed = false;
        let mut core = self.args.shared.core.lock();
        let view = presence_view(&core);
        let joins: Vec<PresenceEntry> = view
            .iter()
            .filter(|(u, n)| core.announced.get(*u) != Some(*n))
            .map(|(u, n)| PresenceEntry {
                user: u.clone(),
                name: n.clone(),
            })
            .collect();
        let leaves: Vec<PresenceLeave> = core
            .announced
            .keys()
            .filter(|u| !view.contains_key(*u))
            .map(|u| PresenceLeave { user: u.clone() })
            .collect();
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        core.announced = view;
        broadcast(
            &mut core,
            ServerFrame::Presence {
                room: &self.args.room,
                joins: &joins,
                leaves: &leaves,
            },
            None,
        );
    }

    fn typing(&self, user: &UserId) {
        let mut core = self.args.shared.core.lock();
        broadcast(
            &mut core,
            ServerFrame::Typing {
                room: &self.args.room,
                user,
            },
            Some(user),
        );
    }

    /// Take committed messages in, deliver what is next in order, buffer the rest.
    fn accept(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        msgs: &[StoredMessage],
        committed: Option<Instant>,
    ) {
        let mut core = self.args.shared.core.lock();
        for m in msgs {
            if m.seq <= core.delivered {
                continue; // already delivered (a duplicate from the bus or a gap fill)
            }
            if m.seq == core.delivered + 1 {
                deliver_one(
                    &mut core,
                    m,
                    &self.args.metrics,
                    self.args.config.outbound_queue,
                );
            } else {
                self.reorder.insert(m.seq, m.clone());
            }
        }
        drain_reorder(
            &mut core,
            &mut self.reorder,
            &self.args.metrics,
            self.args.config.outbound_queue,
        );
        drop(core);
        if let Some(t) = committed {
            let scope = "local";
            self.args
                .metrics
                .commit_delivery_seconds
                .with_label_values(&[scope])
                .observe(t.elapsed().as_secs_f64());
        }
        if !self.reorder.is_empty() && !self.gap_timer_armed {
            self.gap_timer_armed = true;
            myself.send_after(self.args.config.gap_wait, || RoomMsg::GapCheck);
        }
    }

    /// Read the seqs missing before the first buffered one from the store.
    async fn fill_gap(&mut self, myself: &ActorRef<RoomMsg>) {
        let Some((&first, _)) = self.reorder.iter().next() else {
            return;
        };
        let delivered = self.args.shared.core.lock().delivered;
        if first <= delivered + 1 {
            let mut core = self.args.shared.core.lock();
            drain_reorder(
                &mut core,
                &mut self.reorder,
                &self.args.metrics,
                self.args.config.outbound_queue,
            );
            return;
        }
        self.args.metrics.gap_fills.inc();
        // At most a page at a time: a larger gap is filled over several checks.
        let missing = (first - delivered - 1).min(1000) as u32;
        tracing::debug!(room = %self.args.room, from = delivered + 1, count = missing, "filling gap from store");
        let read = self.args.store.after(&self.args.room, delivered, missing);
        match crate::ports::timed(read).await {
            Ok(found) => self.accept(myself, &found, None),
            Err(e) => {
                tracing::warn!(room = %self.args.room, error = %e, "gap fill failed, will retry");
                self.gap_timer_armed = true;
                myself.send_after(self.args.config.gap_wait * 4, || RoomMsg::GapCheck);
            }
        }
    }

    async fn check_head(&mut self, myself: &ActorRef<RoomMsg>) {
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
            let n = (head - delivered).min(500) as u32;
            match crate::ports::timed(self.args.store.after(&room, delivered, n)).await {
                Ok(found) if !found.is_empty() => self.accept(myself, &found, None),
                _ => return,
            }
        }
    }

    /// Hand the room back to its supervisor when nobody holds it open.
    fn maybe_idle(&self, myself: &ActorRef<RoomMsg>) {
        if self.args.shared.core.lock().is_idle() {
            let _ = self.args.supervisor.cast(RoomSupervisorMsg::Idle {
                room: self.args.room.clone(),
                actor: myself.get_id(),
            });
        }
    }
}

fn drain_reorder(
    core: &mut RoomCore,
    reorder: &mut BTreeMap<Seq, StoredMessage>,
    metrics: &Metrics,
    held_cap: usize,
) {
    while let Some(entry) = reorder.first_entry() {
        let seq = *entry.key();
        if seq <= core.delivered {
            entry.remove();
        } else if seq == core.delivered + 1 {
            let m = entry.remove();
            deliver_one(core, &m, metrics, held_cap);
        } else {
            break;
        }
    }
}

/// Queue one message to every member, encoded once per encoding.
fn deliver_one(core: &mut RoomCore, m: &StoredMessage, metrics: &Metrics, held_cap: usize) {
    core.delivered = m.seq;
    let mut enc = EncodeOnce::new(ServerFrame::message(m));
    let mut n = 0u64;
    for ms in core.members.values_mut() {
        if m.seq <= ms.skip_through {
            continue;
        }
        let bytes = enc.get(ms.member.encoding);
        n += 1;
        match &mut ms.held {
            Some(held) => {
                if held.len() >= held_cap {
                    ms.member.outbox.close(close::SLOW_CONSUMER);
                } else {
                    held.push(bytes);
                }
            }
            None => {
                ms.member.outbox.push(bytes);
            }
        }
    }
    metrics.deliveries.inc_by(n);
}

/// Replay (from, upto] to one joiner in pages, off the room's mailbox.
fn spawn_replay(
    store: Arc<dyn MessageStore>,
    room_ref: ActorRef<RoomMsg>,
    member: Member,
    room: RoomId,
    from: Seq,
    upto: Seq,
    metrics: Metrics,
) {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut cursor = from;
        let mut ok = true;
        while cursor < upto && !member.membership.is_revoked() {
            let n = (upto - cursor).min(200) as u32;
            match crate::ports::timed(store.after(&room, cursor, n)).await {
                Ok(page) if !page.is_empty() => {
                    for m in page.iter().take_while(|m| m.seq <= upto) {
                        if member.membership.is_revoked() {
                            break; // taken out of the room: nothing after `removed`
                        }
                        if !member
                            .outbox
                            .push(ServerFrame::message(m).encode(member.encoding))
                        {
                            ok = false;
                            break;
                        }
                        cursor = m.seq;
                    }
                    if !ok {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "replay failed");
                    ok = false;
                    break;
                }
            }
        }
        metrics
            .join_replay_seconds
            .observe(started.elapsed().as_secs_f64());
        let _ = room_ref.cast(RoomMsg::ReplayDone {
            conn: member.outbox.conn(),
            ok,
        });
    });
}

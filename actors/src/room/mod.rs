//! RoomActor: one per room with members on this node. It owns the room's local members and
//! presence, and delivers committed messages strictly in seq order.
//!
//! The actor only routes messages and timers; the work is done by plain parts, each tested
//! without an actor, a socket or a database:
//! - `core`: the members, presence and delivered head that survive a restart of the actor
//!   (owned by the room's handle), and the fan-out of one frame to every member;
//! - `order`: the reorder buffer (a message ahead of a gap waits; a gap that does not close by
//!   itself within `gap_wait` is filled from the store, the source of truth);
//! - `replay`: replay-then-live for a member that joins with `since`;
//! - `presence`: who is present, grace periods, and the coalesced diffs members are told;
//! - `presence_io`: the presence handlers (store writes before `joined`, reads, counts, pages);
//! - `state`: the actor's handlers, which tie those to the ports and timers.

mod core;
mod order;
mod presence;
mod presence_io;
mod replay;
mod state;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tracing::Instrument;

pub use self::core::{Member, Membership, RoomShared};
use crate::access::RoomRole;
use crate::config::NodeConfig;
use crate::ids::{ConnId, Rev, RoomId, Seq, UserId};
use crate::metrics::Alive;
use crate::metrics::Metrics;
use crate::outbox::close;
use crate::ports::{BusEvent, ClusterBus, MessageStore, PresenceStore};
use crate::presence::PresenceIndex;
use crate::protocol::{
    EncodeOnce, PresenceEntry, Ref, RemoveReason, ServerFrame, StoredMessage, StoredUpdate,
};
use state::JoinAsk;

/// How a room tells whoever keeps it (its supervisor) that nothing holds it open any more:
/// called with the room and the id of the actor that found it idle.
pub type OnIdle = Arc<dyn Fn(RoomId, ActorId) + Send + Sync>;

pub enum RoomMsg {
    Join {
        member: Box<Member>,
        r#ref: Ref,
        since: Option<Seq>,
        /// v1.1: replay the changes after this revision (of messages up to `since`).
        since_rev: Option<Rev>,
        read: Seq,
        role: RoomRole,
        /// When the join was asked: a cluster presence read started later covers it.
        asked: Instant,
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
    /// Committed changes of this room's messages, ascending rev (v1.1).
    Updates(Arc<[StoredUpdate]>),
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
    /// A joiner's presence is in the PresenceStore: send its held `joined` (then its replay).
    Announce {
        conn: ConnId,
        joined: bytes::Bytes,
        replay: replay::Replay,
    },
    /// Send `presence_count` to the members that joined with `presence: "count"`.
    FlushCount,
    /// A member asked for a page of who is present.
    PresencePage {
        conn: ConnId,
        r#ref: Ref,
        after: Option<UserId>,
        limit: Option<u32>,
    },
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
    /// The node's index of local presence (read by the PresenceKeeper).
    pub presence: Arc<PresenceIndex>,
    pub presence_store: Option<Arc<dyn PresenceStore>>,
    pub on_idle: OnIdle,
    pub config: NodeConfig,
    pub metrics: Metrics,
    /// True when this actor replaces one that failed.
    pub restarted: bool,
}

pub struct RoomActor;

pub struct RoomState {
    args: RoomArgs,
    reorder: order::Reorder,
    /// Changes that arrived ahead of a gap in rev (v1.1).
    update_order: order::Reorder<StoredUpdate>,
    gap_timer_armed: bool,
    flush_armed: bool,
    resync_inflight: bool,
    /// When the last successful pre-join read of the cluster's presence started.
    presence_read_at: Option<Instant>,
    resync_again: bool,
    count_armed: bool,
    /// The count the counting members were last sent, and when.
    count_sent: Option<usize>,
    count_sent_at: Instant,
    _alive: Alive,
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
            let heads = crate::ports::timed(args.store.heads(&args.room)).await?;
            let mut core = args.shared.core.lock();
            core.delivered = heads.seq;
            core.rev = heads.rev;
        } else {
            // Whatever was committed while no actor listened is read back from the store.
            let _ = myself.cast(RoomMsg::CheckHead);
        }
        if args.presence_store.is_some() {
            let _ = myself.cast(RoomMsg::PresenceResync);
        }
        Ok(RoomState {
            _alive: Alive::new(&args.metrics, "room"),
            args,
            reorder: order::Reorder::default(),
            update_order: order::Reorder::default(),
            gap_timer_armed: false,
            flush_armed: false,
            resync_inflight: false,
            presence_read_at: None,
            resync_again: false,
            count_armed: false,
            count_sent: None,
            // "Long ago": the first count goes out without waiting.
            count_sent_at: Instant::now()
                .checked_sub(std::time::Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
        })
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
            since_rev,
            read,
            role,
            asked,
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
            let missed = state.missed_changes(since, since_rev).await;
            state.read_cluster_presence(asked).await;
            state.join(
                &myself,
                *member,
                JoinAsk {
                    r#ref,
                    since,
                    read,
                    role,
                    store_head,
                    missed,
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
        RoomMsg::Updates(updates) => state.accept_updates(&myself, &updates),
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
                state.args.shared.core.lock().presence.set_remote(list);
                state.arm_presence_flush(&myself);
            }
            if std::mem::take(&mut state.resync_again) {
                state.presence_resync(&myself);
            }
        }
        RoomMsg::FlushPresence => state.flush_presence(&myself),
        RoomMsg::FlushCount => state.flush_count(),
        RoomMsg::Announce {
            conn,
            joined,
            replay,
        } => state.announce(&myself, conn, joined, replay),
        RoomMsg::PresencePage {
            conn,
            r#ref,
            after,
            limit,
        } => state.presence_page(conn, r#ref, after, limit),
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
                    for frame in m.hold.release() {
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

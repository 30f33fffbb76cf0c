//! ConnectionActor: one per WebSocket. It holds the session (user, encoding, joined rooms,
//! rate limit) and turns validated commands into messages to rooms and the Writer.
//!
//! The socket itself is owned by two plain tasks at the edge: a reader that decodes frames and
//! hands commands here (waiting for an inbound permit first), and a writer that drains the
//! connection's `Outbox` and writes many frames per system call.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::OwnedSemaphorePermit;

use crate::access::{self, Identity};
use crate::config::NodeConfig;
use crate::expiry::Expiry;
use crate::ids::RoomId;
use crate::metrics::{Alive, Metrics};
use crate::moderation::{By, ModError, Moderation};
use crate::outbox::Outbox;
use crate::ports::{BusEvent, ClusterBus, JoinInfo, MessageStore, NewChange, NewMessage};
use crate::protocol::{ChangeOp, Command, Encoding, ErrorCode, HistoryItem, ServerFrame};
use crate::room::{Member, Membership, RoomMsg};
use crate::rooms::{RoomHandle, RoomRegistry};
use crate::writer::{Ack, ChangeAck, WriterHandle};

mod bucket;
use bucket::TokenBucket;

pub enum ConnMsg {
    /// A decoded command; the permit returns to the reader when the command is handled.
    Command(Command, OwnedSemaphorePermit),
}

/// What every connection shares with the node.
#[derive(Clone)]
pub struct ConnContext {
    pub store: Arc<dyn MessageStore>,
    pub rooms: Arc<RoomRegistry>,
    pub writer: WriterHandle,
    pub bus: Arc<dyn ClusterBus>,
    pub moderation: Arc<Moderation>,
    pub expiry: Arc<Expiry>,
    pub config: NodeConfig,
    pub metrics: Metrics,
}

pub struct ConnArgs {
    pub ctx: ConnContext,
    pub outbox: Outbox,
    /// From the handshake's token; a `refresh` replaces it (same user).
    pub identity: Identity,
    pub encoding: Encoding,
}

pub struct ConnectionActor;

/// A room this connection joined.
struct Joined {
    handle: Arc<RoomHandle>,
    /// Revoked by the room when it takes this socket out (kick, ban, member removal).
    membership: Arc<Membership>,
}

pub struct ConnState {
    args: ConnArgs,
    rooms: HashMap<RoomId, Joined>,
    bucket: TokenBucket,
    /// `errors_sent{code="unavailable"}`, resolved once: counted by the Writer's answers.
    unavailable: prometheus::IntCounter,
    _alive: Alive,
}

impl ConnState {
    /// Tell every room this socket is still in that it is gone.
    fn detach_all(&mut self) {
        let conn = self.args.outbox.conn();
        for (_, j) in self.rooms.drain() {
            j.handle.cast(RoomMsg::Detach(conn));
        }
    }
}

/// The rooms are left when the state goes, however the actor ends. ractor skips `post_stop`
/// for an actor that failed (panicked or returned `Err`) or was killed, but it always drops
/// the state; without this a failed socket would stay a member (and present) for good.
impl Drop for ConnState {
    fn drop(&mut self) {
        self.detach_all();
    }
}

#[ractor::async_trait]
impl Actor for ConnectionActor {
    type Msg = ConnMsg;
    type State = ConnState;
    type Arguments = ConnArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnMsg>,
        args: ConnArgs,
    ) -> Result<ConnState, ActorProcessingErr> {
        let alive = Alive::new(&args.ctx.metrics, "connection");
        let bucket = TokenBucket::new(
            args.ctx.config.messages_per_second,
            args.ctx.config.message_burst,
        );
        let unavailable = args
            .ctx
            .metrics
            .errors_sent
            .with_label_values(&[ErrorCode::Unavailable.as_str()]);
        Ok(ConnState {
            args,
            rooms: HashMap::new(),
            bucket,
            unavailable,
            _alive: alive,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnMsg>,
        state: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        // A stopped connection leaves now, not when its supervisor drops the state.
        state.detach_all();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConnMsg>,
        msg: ConnMsg,
        state: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        let ConnMsg::Command(cmd, _permit) = msg;
        if !state.bucket.take() {
            state.args.ctx.metrics.rate_limited.inc();
            state.error(
                cmd.r#ref(),
                ErrorCode::RateLimited,
                "too many frames; slow down",
            );
            return Ok(());
        }
        state.command(cmd).await;
        Ok(())
    }
}

impl ConnState {
    fn push(&self, frame: ServerFrame<'_>) {
        self.args.outbox.push(frame.encode(self.args.encoding));
    }

    fn error(&self, r#ref: Option<&str>, code: ErrorCode, message: &str) {
        self.args
            .ctx
            .metrics
            .errors_sent
            .with_label_values(&[code.as_str()])
            .inc();
        self.push(ServerFrame::error(r#ref, code, message));
    }

    /// The room's handle if this socket is (still) joined to it; else `not_joined`. A room
    /// the socket was taken out of is forgotten here, on first use.
    fn joined(&mut self, r#ref: Option<&str>, room: &RoomId) -> Option<Arc<RoomHandle>> {
        // One lookup on the hot path (every send, typing and read).
        match self.rooms.get(room) {
            Some(j) if !j.membership.is_revoked() => return Some(j.handle.clone()),
            Some(_) => {
                self.rooms.remove(room);
            }
            None => {}
        }
        self.error(r#ref, ErrorCode::NotJoined, "join the room first");
        None
    }

    /// May this socket see `room` (join it, or read its history unjoined)? The store's facts,
    /// judged by `access::may_join`; on a refusal or store trouble the error goes out here.
    async fn admitted(&self, r#ref: Option<&str>, room: &RoomId) -> Option<JoinInfo> {
        let ctx = &self.args.ctx;
        let user = &self.args.identity.user;
        match crate::ports::timed(ctx.store.join_info(room, user)).await {
            Ok(info) => match access::may_join(self.args.outbox.shared().is_admin(), &info) {
                Ok(()) => Some(info),
                Err(why) => {
                    self.error(r#ref, ErrorCode::Forbidden, why);
                    None
                }
            },
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "join check: store unavailable");
                self.error(r#ref, ErrorCode::Unavailable, "try again later");
                None
            }
        }
    }

    fn forget_if_revoked(&mut self, room: &RoomId) {
        if self
            .rooms
            .get(room)
            .is_some_and(|j| j.membership.is_revoked())
        {
            self.rooms.remove(room);
        }
    }

    fn by(&self) -> By {
        By::Socket {
            user: self.args.identity.user.clone(),
            admin: self.args.outbox.shared().is_admin(),
        }
    }

    fn moderation_error(&self, r#ref: Option<&str>, e: ModError) {
        match e {
            ModError::Forbidden(why) => self.error(r#ref, ErrorCode::Forbidden, why),
            ModError::BadRequest(why) => self.error(r#ref, ErrorCode::BadRequest, why),
            ModError::Unavailable => self.error(r#ref, ErrorCode::Unavailable, "try again later"),
            ModError::Store(m) => {
                tracing::error!(error = %m, "moderation: store error");
                self.error(r#ref, ErrorCode::Internal, "internal error")
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        let ctx = self.args.ctx.clone();
        match cmd {
            Command::Ping { r#ref } => self.push(ServerFrame::Pong {
                r#ref: r#ref.as_deref(),
            }),
            Command::Rooms { r#ref } => {
                let r = r#ref.as_deref();
                let user = &self.args.identity.user;
                let read = ctx.store.rooms_of(user, crate::ports::ROOMS_LIST_MAX);
                match crate::ports::timed(read).await {
                    Ok(rooms) => self.push(ServerFrame::Rooms {
                        r#ref: r,
                        rooms: &rooms,
                    }),
                    Err(_) => self.error(r, ErrorCode::Unavailable, "try again later"),
                }
            }
            Command::Join {
                r#ref,
                room,
                since,
                presence,
                since_rev,
            } => {
                let r = r#ref.as_deref();
                self.forget_if_revoked(&room);
                let limit = ctx.config.rooms_per_connection;
                let full = |rooms: &HashMap<RoomId, Joined>| {
                    !rooms.contains_key(&room) && rooms.len() >= limit
                };
                if full(&self.rooms) {
                    // Rooms this socket was taken out of do not count against its limit.
                    self.rooms.retain(|_, j| !j.membership.is_revoked());
                    if full(&self.rooms) {
                        return self.error(
                            r,
                            ErrorCode::RoomLimit,
                            "too many rooms on this connection",
                        );
                    }
                }
                let Some(info) = self.admitted(r, &room).await else {
                    return;
                };
                let Some(h) = ctx.rooms.get_or_spawn(&room).await else {
                    return self.error(r, ErrorCode::Unavailable, "try again later");
                };
                // A second join of a room already joined keeps the membership it has.
                let membership = self
                    .rooms
                    .get(&room)
                    .map(|j| j.membership.clone())
                    .unwrap_or_default();
                let member = Box::new(Member {
                    outbox: self.args.outbox.clone(),
                    user: self.args.identity.user.clone(),
                    name: self.args.identity.name.clone(),
                    encoding: self.args.encoding,
                    membership: membership.clone(),
                    presence,
                });
                if h.cast(RoomMsg::Join {
                    member,
                    r#ref: r#ref.clone(),
                    since,
                    since_rev,
                    read: info.read,
                    role: info.role,
                    asked: std::time::Instant::now(),
                }) {
                    self.rooms.insert(
                        room,
                        Joined {
                            handle: h,
                            membership,
                        },
                    );
                } else {
                    h.join_abandoned();
                    self.error(r, ErrorCode::Unavailable, "try again later");
                }
            }
            Command::Presence {
                r#ref,
                room,
                after,
                limit,
            } => {
                let Some(h) = self.joined(r#ref.as_deref(), &room) else {
                    return;
                };
                h.cast(RoomMsg::PresencePage {
                    conn: self.args.outbox.conn(),
                    r#ref,
                    after,
                    limit,
                });
            }
            Command::Leave { r#ref, room } => match self
                .rooms
                .remove(&room)
                .filter(|j| !j.membership.is_revoked())
            {
                Some(j) => {
                    j.handle.cast(RoomMsg::Leave {
                        conn: self.args.outbox.conn(),
                        r#ref,
                    });
                }
                None => self.error(r#ref.as_deref(), ErrorCode::NotJoined, "not in that room"),
            },
            Command::Send {
                r#ref,
                room,
                cid,
                body,
                meta,
                trace,
            } => {
                if self.joined(r#ref.as_deref(), &room).is_none() {
                    return;
                }
                let msg = NewMessage {
                    room,
                    from: self.args.identity.user.clone(),
                    name: self.args.identity.name.clone(),
                    cid,
                    body,
                    meta,
                    trace,
                };
                let ack = Ack::Socket {
                    outbox: self.args.outbox.clone(),
                    encoding: self.args.encoding,
                    r#ref,
                    unavailable: self.unavailable.clone(),
                };
                ctx.writer.submit(msg, ack);
            }
            Command::Change {
                r#ref,
                room,
                seq,
                op,
            } => {
                let r = r#ref.as_deref();
                if self.joined(r, &room).is_none() {
                    return;
                }
                let user = self.args.identity.user.clone();
                // Only a delete can act on someone else's message, and only with a role: the
                // role is read fresh (it may have changed since the join), and only then.
                let moderator = match op {
                    ChangeOp::Delete if self.args.outbox.shared().is_admin() => true,
                    ChangeOp::Delete => {
                        match crate::ports::timed(ctx.store.join_info(&room, &user)).await {
                            Ok(info) => info.role >= crate::access::RoomRole::Moderator,
                            Err(_) => {
                                return self.error(r, ErrorCode::Unavailable, "try again later")
                            }
                        }
                    }
                    _ => false,
                };
                let change = NewChange {
                    room,
                    seq,
                    by: user,
                    moderator,
                    op,
                };
                let ack = ChangeAck::Socket {
                    outbox: self.args.outbox.clone(),
                    encoding: self.args.encoding,
                    r#ref,
                    errors: ctx.metrics.errors_sent.clone(),
                };
                ctx.writer.change(change, ack);
            }
            Command::History {
                r#ref,
                room,
                before,
                limit,
            } => {
                let r = r#ref.as_deref();
                self.forget_if_revoked(&room);
                if !self.rooms.contains_key(&room) && self.admitted(r, &room).await.is_none() {
                    return;
                }
                let limit = limit.min(ctx.config.history_max);
                let me = Some(&self.args.identity.user);
                match crate::ports::timed(ctx.store.before(&room, before, limit, me)).await {
                    Ok((msgs, more)) => self.push(ServerFrame::History {
                        r#ref: r,
                        room: &room,
                        messages: msgs.iter().map(HistoryItem::from).collect(),
                        more,
                    }),
                    Err(_) => self.error(r, ErrorCode::Unavailable, "try again later"),
                }
            }
            Command::Read { r#ref, room, seq } => {
                let r = r#ref.as_deref();
                let Some(h) = self.joined(r, &room) else {
                    return;
                };
                let user = self.args.identity.user.clone();
                match crate::ports::timed(ctx.store.set_read(&room, &user, seq)).await {
                    Ok(seq) => {
                        self.push(ServerFrame::Read {
                            r#ref: r,
                            room: &room,
                            seq,
                        });
                        h.cast(RoomMsg::ReadSync {
                            user: user.clone(),
                            seq,
                            except: Some(self.args.outbox.conn()),
                        });
                        // The user's sockets on other nodes, through the room's channel.
                        ctx.bus.publish(BusEvent::Read { room, user, seq });
                    }
                    Err(_) => self.error(r, ErrorCode::Unavailable, "try again later"),
                }
            }
            Command::Typing { room } => {
                let Some(h) = self.joined(None, &room) else {
                    return;
                };
                // Typing is ephemeral: past the room's queue bound it is dropped.
                h.try_cast_bounded(RoomMsg::Typing {
                    user: self.args.identity.user.clone(),
                    local: true,
                });
            }
            Command::Kick {
                r#ref,
                room,
                user,
                ban,
            } => {
                let r = r#ref.as_deref();
                if self.joined(r, &room).is_none() {
                    return;
                }
                match ctx.moderation.kick(&self.by(), &room, &user, ban).await {
                    Ok(()) => self.push(ServerFrame::Kicked {
                        r#ref: r,
                        room: &room,
                        user: &user,
                    }),
                    Err(e) => self.moderation_error(r, e),
                }
            }
            Command::Unban { r#ref, room, user } => {
                let r = r#ref.as_deref();
                if self.joined(r, &room).is_none() {
                    return;
                }
                match ctx.moderation.unban(&self.by(), &room, &user).await {
                    Ok(()) => self.push(ServerFrame::Unbanned {
                        r#ref: r,
                        room: &room,
                        user: &user,
                    }),
                    Err(e) => self.moderation_error(r, e),
                }
            }
            Command::SetRole {
                r#ref,
                room,
                user,
                role,
            } => {
                let r = r#ref.as_deref();
                if self.joined(r, &room).is_none() {
                    return;
                }
                match ctx
                    .moderation
                    .set_role(&self.by(), &room, &user, Some(role))
                    .await
                {
                    Ok(()) => self.push(ServerFrame::RoleSet {
                        r#ref: r,
                        room: &room,
                        user: &user,
                        role,
                    }),
                    Err(e) => self.moderation_error(r, e),
                }
            }
            Command::Refresh { r#ref, grant } => {
                let r = r#ref.as_deref();
                let Some(id) = grant.filter(|g| g.user == self.args.identity.user) else {
                    return self.error(
                        r,
                        ErrorCode::Forbidden,
                        "not a valid token for this connection's user",
                    );
                };
                // From now on: the new name on what this socket sends and joins, the new
                // roles on what it may do, and the later of the two expiries.
                let shared = self.args.outbox.shared();
                shared.set_admin(id.admin);
                ctx.expiry.watch(shared, id.expires);
                let exp = shared.expires();
                self.args.identity = id;
                self.push(ServerFrame::Refreshed { r#ref: r, exp });
            }
        }
    }
}

//! ConnectionActor: one per WebSocket. It holds the session (user, encoding, joined rooms,
//! rate limit) and turns validated commands into messages to rooms and the Writer.
//!
//! The socket itself is owned by two plain tasks at the edge: a reader that decodes frames and
//! hands commands here (waiting for an inbound permit first), and a writer that drains the
//! connection's `Outbox` and writes many frames per system call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::NodeConfig;
use crate::ids::{DisplayName, RoomId, UserId};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::ports::{MessageStore, NewMessage};
use crate::protocol::{Command, Encoding, ErrorCode, HistoryItem, ServerFrame};
use crate::room::{Member, RoomMsg};
use crate::rooms::{RoomHandle, RoomRegistry};
use crate::writer::{WriteError, WriterHandle};

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
    pub config: NodeConfig,
    pub metrics: Metrics,
}

pub struct ConnArgs {
    pub ctx: ConnContext,
    pub outbox: Outbox,
    pub user: UserId,
    pub name: DisplayName,
    pub encoding: Encoding,
}

pub struct ConnectionActor;

pub struct ConnState {
    args: ConnArgs,
    rooms: HashMap<RoomId, Arc<RoomHandle>>,
    bucket: TokenBucket,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
        args.ctx
            .metrics
            .actors_alive
            .with_label_values(&["connection"])
            .inc();
        let bucket = TokenBucket::new(
            args.ctx.config.messages_per_second,
            args.ctx.config.message_burst,
        );
        Ok(ConnState {
            args,
            rooms: HashMap::new(),
            bucket,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnMsg>,
        state: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        let conn = state.args.outbox.conn();
        for (_, h) in state.rooms.drain() {
            h.cast(RoomMsg::Detach(conn));
        }
        state
            .args
            .ctx
            .metrics
            .actors_alive
            .with_label_values(&["connection"])
            .dec();
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
                cmd_ref(&cmd),
                ErrorCode::RateLimited,
                "too many frames; slow down",
            );
            return Ok(());
        }
        state.command(cmd).await;
        Ok(())
    }
}

fn cmd_ref(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Join { r#ref, .. }
        | Command::Leave { r#ref, .. }
        | Command::Send { r#ref, .. }
        | Command::History { r#ref, .. }
        | Command::Read { r#ref, .. }
        | Command::Ping { r#ref } => r#ref.as_deref(),
        Command::Typing { .. } => None,
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

    fn joined(&self, r#ref: Option<&str>, room: &RoomId) -> Option<&Arc<RoomHandle>> {
        let h = self.rooms.get(room);
        if h.is_none() {
            self.error(r#ref, ErrorCode::NotJoined, "join the room first");
        }
        h
    }

    async fn command(&mut self, cmd: Command) {
        let ctx = self.args.ctx.clone();
        match cmd {
            Command::Ping { r#ref } => self.push(ServerFrame::Pong {
                r#ref: r#ref.as_deref(),
            }),
            Command::Join { r#ref, room, since } => {
                let r = r#ref.as_deref();
                if !self.rooms.contains_key(&room)
                    && self.rooms.len() >= ctx.config.rooms_per_connection
                {
                    return self.error(
                        r,
                        ErrorCode::RoomLimit,
                        "too many rooms on this connection",
                    );
                }
                let read =
                    match crate::ports::timed(ctx.store.join_info(&room, &self.args.user)).await {
                        Ok(info) if !info.allowed => {
                            return self.error(r, ErrorCode::Forbidden, "this room is private");
                        }
                        Ok(info) => info.read,
                        Err(e) => {
                            tracing::warn!(room = %room, error = %e, "join: store unavailable");
                            return self.error(r, ErrorCode::Unavailable, "try again later");
                        }
                    };
                let Some(h) = ctx.rooms.get_or_spawn(&room).await else {
                    return self.error(r, ErrorCode::Unavailable, "try again later");
                };
                let member = Box::new(Member {
                    outbox: self.args.outbox.clone(),
                    user: self.args.user.clone(),
                    name: self.args.name.clone(),
                    encoding: self.args.encoding,
                });
                if h.cast(RoomMsg::Join {
                    member,
                    r#ref: r#ref.clone(),
                    since,
                    read,
                }) {
                    self.rooms.insert(room, h);
                } else {
                    h.join_abandoned();
                    self.error(r, ErrorCode::Unavailable, "try again later");
                }
            }
            Command::Leave { r#ref, room } => match self.rooms.remove(&room) {
                Some(h) => {
                    h.cast(RoomMsg::Leave {
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
            } => {
                if self.joined(r#ref.as_deref(), &room).is_none() {
                    return;
                }
                let outbox = self.args.outbox.clone();
                let encoding = self.args.encoding;
                let metrics = ctx.metrics.clone();
                let msg = NewMessage {
                    room,
                    from: self.args.user.clone(),
                    name: self.args.name.clone(),
                    cid,
                    body,
                };
                let (room, cid) = (msg.room.clone(), msg.cid.clone());
                ctx.writer.submit(
                    msg,
                    Box::new(move |res| {
                        let frame = match res {
                            Ok(a) => ServerFrame::Ack {
                                r#ref: r#ref.as_deref(),
                                room: &room,
                                cid: &cid,
                                seq: a.seq,
                                ts: a.ts,
                            },
                            Err(WriteError::Unavailable) => {
                                metrics
                                    .errors_sent
                                    .with_label_values(&[ErrorCode::Unavailable.as_str()])
                                    .inc();
                                ServerFrame::error(
                                    r#ref.as_deref(),
                                    ErrorCode::Unavailable,
                                    "not stored; retry with the same cid",
                                )
                            }
                        };
                        outbox.push(frame.encode(encoding));
                    }),
                );
            }
            Command::History {
                r#ref,
                room,
                before,
                limit,
            } => {
                let r = r#ref.as_deref();
                if !self.rooms.contains_key(&room) {
                    match crate::ports::timed(ctx.store.join_info(&room, &self.args.user)).await {
                        Ok(info) if !info.allowed => {
                            return self.error(r, ErrorCode::Forbidden, "this room is private")
                        }
                        Ok(_) => {}
                        Err(_) => return self.error(r, ErrorCode::Unavailable, "try again later"),
                    }
                }
                let limit = limit.min(ctx.config.history_max);
                match crate::ports::timed(ctx.store.before(&room, before, limit)).await {
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
                let Some(h) = self.joined(r, &room).cloned() else {
                    return;
                };
                match crate::ports::timed(ctx.store.set_read(&room, &self.args.user, seq)).await {
                    Ok(seq) => {
                        self.push(ServerFrame::Read {
                            r#ref: r,
                            room: &room,
                            seq,
                        });
                        h.cast(RoomMsg::ReadSync {
                            user: self.args.user.clone(),
                            seq,
                            except: self.args.outbox.conn(),
                        });
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
                    user: self.args.user.clone(),
                    local: true,
                });
            }
        }
    }
}

#![warn(missing_docs)]

//! `chatty-actors`: the supervision tree of a Chatty node and every actor in it.
//!
//! This crate knows only its ports (`MessageStore`, `ClusterBus`) and nothing of axum, sqlx or
//! redis: the `chatty` crate plugs the real adapters in, tests plug in fakes.

mod access;
mod bus;
mod config;
mod connection;
mod connections;
mod expiry;
mod handle;
mod ids;
mod inbox;
pub mod lifecycle;
mod metrics;
mod moderation;
mod node;
mod outbox;
mod ports;
mod presence;
mod protocol;
mod room;
mod rooms;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
pub mod trace;
mod writer;

pub use access::{Identity, RoomRole};
pub use bus::LocalBus;
pub use config::NodeConfig;
pub use handle::{ConnHandle, Connection, SubmitError};
pub use ids::{
    Body, BodyError, Cid, ConnId, DisplayName, InvalidId, Meta, MetaError, ReactionKey, Rev,
    RoomId, Seq, UserId,
};
pub use inbox::INBOX_MEMBERS_MAX;
pub use metrics::{Metrics, LATENCY_BUCKETS};
pub use moderation::ModError;
pub use node::{Node, NodeArgs, NodeError};
pub use outbox::{close, CloseState, CloseWatch, ConnShared, Out, Outbox};
pub use ports::{
    timed, Appended, Beat, BoxFuture, BusEvent, Cause, ChangeOutcome, ClusterBus, EventReply,
    Heads, InboxItem, JoinInfo, MessageStore, NewChange, NewMessage, PresenceItem, PresenceStore,
    RoomSummary, SocketWatch, StoreError, ROOMS_LIST_MAX,
};
pub use protocol::{
    ChangeKind, ChangeOp, Command, Encoding, ErrorCode, HistoryItem, MessageState, PresenceEntry,
    PresenceLeave, PresenceMode, Reaction, Ref, RemoveReason, ServerFrame, StoredMessage,
    StoredUpdate,
};
pub use writer::{writer_lane, Ack, ChangeAck, WriteError};

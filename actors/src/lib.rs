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
mod writer;

pub use access::{Identity, RoomRole};
pub use bus::LocalBus;
pub use config::NodeConfig;
pub use handle::{ConnHandle, Connection, SubmitError};
pub use ids::{Body, BodyError, Cid, ConnId, DisplayName, InvalidId, RoomId, Seq, UserId};
pub use metrics::{Metrics, LATENCY_BUCKETS};
pub use moderation::ModError;
pub use node::{Node, NodeArgs, NodeError};
pub use outbox::{close, CloseState, CloseWatch, ConnShared, Out, Outbox};
pub use ports::{
    Appended, Beat, BusEvent, Cause, ClusterBus, JoinInfo, MessageStore, NewMessage, PresenceItem,
    PresenceStore, StoreError,
};
pub use protocol::{
    Command, Encoding, ErrorCode, HistoryItem, PresenceEntry, PresenceLeave, PresenceMode, Ref,
    RemoveReason, ServerFrame, StoredMessage,
};
pub use writer::{writer_lane, Ack, WriteError};

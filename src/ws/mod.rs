//! The WebSocket edge, in two steps:
//! - `handshake`: the upgrade handler: draining, origin, subprotocol, token, capacity,
//!   admission; every refusal is a `Rejection` with its status, body and metric label;
//! - `session`: the two plain tasks that own an accepted socket: the reader (our frame parser,
//!   bounded reassembly → decode → `ConnHandle::submit`) and the writer (drain the
//!   outbox, frame everything queued, one `write` per batch), and the close that ends both.

pub mod echo;
pub mod frames;
mod handshake;
mod session;
pub mod wire;

pub use handshake::{
    negotiate, upgrade, NoSupportedProtocol, Rejection, PROTOCOL_JSON, PROTOCOL_MSGPACK,
};

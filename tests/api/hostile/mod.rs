//! Hostile clients (issue "Hardening"): forged and malformed tokens, odd subprotocol offers,
//! WebSocket frames that break RFC 6455 or our limits, frames that are valid WebSocket but
//! hostile protocol, and plain abuse. Every case asserts the documented status or close code
//! within a bounded time, that a bystander in another conversation is unaffected, and, where
//! something could be stored, that nothing was.
//!
//! Frames that a well-behaved client library refuses to produce are written as raw bytes on a
//! hand-upgraded TCP stream (`RawWs`, in `crate::support`).
//!
//! One module per section: `handshakes` (section 1, hostile handshakes); `frames`, `payloads`
//! and `bursts` (section 2, hostile frames on an authenticated socket: RFC 6455 and our limits,
//! hostile protocol in valid frames, bursts of sends); `abuse` (section 3, abuse).

mod abuse;
mod bursts;
mod frames;
mod handshakes;
mod payloads;

//! Test harness shared by every test module.
//!
//! - `app`: `spawn_app()` starts the real application on port 0 against a fresh PostgreSQL
//!   database; `start_binary*` runs the real binary; HTTP API calls.
//! - `client`: `Client` drives a real WebSocket client (tungstenite) with typed helpers.
//! - `duplex`: `Duplex`, a JSON client whose reads never stop, for bursts.
//! - `raw`: `RawWs`, the one WebSocket spoken by hand over TCP, for frames a well-behaved
//!   library refuses to produce; it reads server frames by parsing their headers.
//! - `prom`: the one parser of the Prometheus text format.
//! - `tokens`: JWTs built by hand (any header, any claims, any signature).
//! - `fixtures`: bystanders, row counts, the process's memory.
//! - `webhook`: a real HTTP receiver of webhooks, and the signature check receivers do.
//! - `otlp`: a real OTLP/HTTP trace receiver, decoding the protobuf exports.

use std::time::Duration;

mod app;
mod client;
mod duplex;
mod fixtures;
mod otlp;
mod prom;
mod raw;
mod tokens;
mod webhook;

pub use app::*;
pub use client::*;
pub use duplex::*;
pub use fixtures::*;
pub use otlp::{Receiver as OtlpReceiver, Span as OtlpSpan};
pub use prom::*;
pub use raw::*;
pub use tokens::*;
pub use webhook::*;

pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `f` until it returns true or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

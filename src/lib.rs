//! `chatty`: the edge and the adapters of the Chatty engine, in layers: `settings`, `http`
//! (routers and handlers), `ws` (handshake, socket session, frames and the bounded decoders),
//! `store` (PostgreSQL and SQLite), `redis` (cluster bus and presence), and `startup`, which
//! wires them around the actor tree of `chatty-actors`. docs/architecture.md has the map.

pub mod admission;
pub mod auth;
pub mod ecs;
pub mod health;
pub mod http;
pub mod metrics;
pub mod redis;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod ws;

pub use settings::Settings;
pub use startup::Application;

//! `chatty`: the edge and the adapters of the Chatty engine: settings, telemetry, the axum
//! router and WebSocket upgrade, the wire decoders, the PostgreSQL store, JWT and metrics.
//! The actors themselves live in `chatty-actors`.

pub mod admission;
pub mod api;
pub mod auth;
pub mod echo;
pub mod ecs;
pub mod frames;
pub mod health;
pub mod metrics;
pub mod redis_bus;
pub mod redis_presence;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod wire;
pub mod ws;

pub use settings::Settings;
pub use startup::Application;

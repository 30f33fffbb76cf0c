//! Black-box tests: the real application on port 0, real WebSocket clients, real PostgreSQL.

mod support;

mod cluster;
mod db_roles;
mod embedded;
mod faults;
mod handshake;
mod hostile;
mod http_api;
mod lanes;
mod lifecycle;
mod messaging;
mod moderation;
mod observability;
mod openapi;
mod presence;
mod reach;
mod resilience;
mod shutdown;
mod tracing;
mod webhooks;

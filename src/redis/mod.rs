//! The Redis adapters of cluster mode: the bus (`bus`: room and control channels, publish
//! batching, the subscriber with backoff) and the presence store (`presence`: one Lua script per
//! change). Both are optional: without `redis.url` the node runs alone on the in-process bus.

pub mod bus;
mod envelope;
pub mod presence;
mod subscriber;

pub use bus::{BusCounters, RedisBus};
pub use envelope::MAX_EVENT_BYTES;
pub use presence::RedisPresence;

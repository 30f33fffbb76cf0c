//! The limits and timings the actors run with. Built by the edge from its settings
//! (`chatty::settings`, which holds every default: this crate has none of its own).

use std::time::Duration;

/// The limits and timings of one node's actors. Each bound keeps a queue or a cost finite;
/// the defaults live in `chatty::settings`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Most users `joined.presence` lists and a `presence_page` holds; past it `joined` lists
    /// only the joiner and says `presence_truncated`.
    pub presence_list_max: usize,
    /// Rooms one connection may have joined at once (`room_limit` past it).
    pub rooms_per_connection: usize,
    /// Sustained client frames per second per connection (`rate_limited` past it).
    pub messages_per_second: f64,
    /// Burst allowance on top of the sustained rate.
    pub message_burst: u32,
    /// Frames one connection may have queued for writing (4000 past it).
    pub outbound_queue: usize,
    /// Client frames decoded but not yet handled, per connection (the reader waits past it).
    pub inbound_queue: usize,
    /// Sends waiting for the Writer, node-wide, split evenly between the lanes (`unavailable`
    /// past a lane's share).
    pub writer_queue: usize,
    /// Largest writer batch.
    pub writer_batch_max: usize,
    /// Writer lanes: batching loops that commit in parallel, each with its own database
    /// connection. A room always maps to the same lane.
    pub writer_lanes: usize,
    /// How long a failing flush is retried before its sends are answered `unavailable`.
    pub writer_retry_max: Duration,
    /// Room-bound commands (joins, typing) waiting per room (`unavailable` past it).
    pub room_queue: usize,
    /// Most messages replayed on a join with `since`; more sets `replay_truncated`. Also the
    /// most changes replayed for `since_rev` (more sets `rev_truncated`).
    pub replay_max: u32,
    /// Most reaction keys one user may have on one message (v1.1).
    pub max_reaction_keys: u32,
    /// Largest `history` page.
    pub history_max: u32,
    /// A user with no connection left in a room stays present this long.
    pub presence_grace: Duration,
    /// How often this node renews its registration in the cluster's presence (cluster mode).
    pub presence_heartbeat: Duration,
    /// The least time between two presence reconciles (every local room re-reading the
    /// cluster's presence after it changed, in case a bus event was lost).
    pub presence_reconcile: Duration,
    /// Presence changes within this window go out as one diff.
    pub presence_coalesce: Duration,
    /// How long a room waits for a missing seq before reading it from the store.
    pub gap_wait: Duration,
    /// Enables fault-injection hooks (panicking actors) for tests. Never in production.
    pub fault_injection: bool,
}

/// A fixture for the actors' unit tests only; the defaults a node runs with are the edge's.
#[cfg(test)]
impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            presence_list_max: 1000,
            rooms_per_connection: 100,
            messages_per_second: 50.0,
            message_burst: 100,
            outbound_queue: 1024,
            inbound_queue: 32,
            writer_queue: 20_000,
            writer_batch_max: 1024,
            writer_lanes: 2,
            writer_retry_max: Duration::from_secs(10),
            room_queue: 10_000,
            replay_max: 1000,
            max_reaction_keys: 20,
            history_max: 200,
            presence_grace: Duration::from_secs(3),
            presence_heartbeat: Duration::from_secs(5),
            presence_reconcile: Duration::from_secs(300),
            presence_coalesce: Duration::from_millis(50),
            gap_wait: Duration::from_millis(30),
            fault_injection: false,
        }
    }
}

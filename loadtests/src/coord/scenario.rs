//! The scenarios and what each one means as a connection layout: which groups of rooms, of
//! what size, with how many senders and which share of the rate. Kept apart because it is
//! the one place that says what a scenario measures.

use anyhow::Result;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::args::RunArgs;
use crate::plan::{Group, Layout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N connections, each joined to a room of --room-size, held for --hold seconds; server
    /// memory per connection from its RSS before and after.
    Idle,
    /// One room, N members, --senders of them sending; rates are messages/s into the room.
    HotRoom,
    /// Rooms of --room-size (5), every member sends in turn; rates are total messages/s.
    ManyRooms,
    /// N connect+join as fast as --connect-concurrency allows; time to the last join.
    Storm,
    /// N senders, each alone in its room; acks/s and send→ack latency; commit check with --db-url.
    Durable,
    /// A hot room where --slow-fraction of the members stop reading in every second step.
    SlowConsumers,
    /// A hot room whose members are spread over every --url (one per node).
    Cluster,
    /// A hot room of --hot-members taking --hot-share of the messages, the rest in rooms of 5.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::HotRoom => "hot-room",
            Scenario::ManyRooms => "many-rooms",
            Scenario::Storm => "storm",
            Scenario::Durable => "durable",
            Scenario::SlowConsumers => "slow-consumers",
            Scenario::Cluster => "cluster",
            Scenario::Mixed => "mixed",
        }
    }
}

pub(super) fn build_layout(a: &RunArgs) -> Result<Layout> {
    let n = a.conns;
    let hot = |name: &str, first: usize, members: usize, share: f64, slow_every: usize| Group {
        name: name.into(),
        first_conn: first,
        rooms: 1,
        room_size: members,
        senders: a.senders.min(members).max(1),
        share,
        slow_every,
    };
    let rooms = |name: &str, first: usize, conns: usize, share: f64, senders: usize| {
        let size = a.room_size.max(1);
        Group {
            name: name.into(),
            first_conn: first,
            rooms: (conns / size).max(1),
            room_size: size.min(conns.max(1)),
            senders,
            share,
            slow_every: 0,
        }
    };
    let groups = match a.scenario {
        Scenario::HotRoom | Scenario::Cluster => vec![hot("hot", 0, n, 1.0, 0)],
        Scenario::SlowConsumers => {
            let every = if a.slow_fraction > 0.0 {
                (1.0 / a.slow_fraction).round().max(2.0) as usize
            } else {
                0
            };
            vec![hot("hot", 0, n, 1.0, every)]
        }
        Scenario::ManyRooms => vec![rooms("rooms", 0, n, 1.0, a.room_size.max(1))],
        Scenario::Idle | Scenario::Storm => vec![rooms("idle", 0, n, 0.0, 0)],
        Scenario::Durable => vec![Group {
            name: "durable".into(),
            first_conn: 0,
            rooms: n.max(1),
            room_size: 1,
            senders: 1,
            share: 1.0,
            slow_every: 0,
        }],
        Scenario::Mixed => {
            let h = a.hot_members.min(n);
            let mut g = vec![hot("hot", 0, h, a.hot_share, 0)];
            if n - h >= a.room_size {
                g.push(rooms(
                    "rooms",
                    h,
                    n - h,
                    1.0 - a.hot_share,
                    a.room_size.max(1),
                ));
            }
            g
        }
    };
    let conns = groups
        .iter()
        .map(|g| g.first_conn + g.conns())
        .max()
        .unwrap_or(0);
    Ok(Layout { conns, groups })
}

//! What a run does, as data shared by the coordinator and its workers: the connection layout
//! (groups of equally sized rooms), the message schedule (a pure function of the step), and the
//! messages that pass between the coordinator and the workers.

use serde::{Deserialize, Serialize};

use crate::target::Target;

/// Rooms of one size, filled with consecutive connections, sharing part of the send rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Connections `first_conn .. first_conn + rooms * room_size`.
    pub first_conn: usize,
    pub rooms: usize,
    pub room_size: usize,
    /// Members `0 .. senders` of each room send.
    pub senders: usize,
    /// Fraction of the step's message rate sent to this group.
    pub share: f64,
    /// When > 0, every `slow_every`-th non-sending member stops reading in `slow_stop` steps.
    pub slow_every: usize,
}

impl Group {
    pub fn conns(&self) -> usize {
        self.rooms * self.room_size
    }

    pub fn room_of(&self, conn: usize) -> usize {
        (conn - self.first_conn) / self.room_size
    }

    pub fn member_of(&self, conn: usize) -> usize {
        (conn - self.first_conn) % self.room_size
    }

    pub fn is_slow(&self, member: usize) -> bool {
        self.slow_every > 0 && member >= self.senders && member.is_multiple_of(self.slow_every)
    }

    /// Message `i` of this group in a step: (room, sending connection).
    #[inline]
    pub fn message(&self, i: u64) -> (usize, usize) {
        let rooms = self.rooms as u64;
        let room = (i % rooms) as usize;
        let member = ((i / rooms) % self.senders as u64) as usize;
        (room, self.first_conn + room * self.room_size + member)
    }

    /// The sender's own counter for message `i` (strictly increasing per sender in a step).
    #[inline]
    pub fn counter(&self, i: u64) -> u64 {
        i / (self.rooms as u64 * self.senders as u64)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub conns: usize,
    pub groups: Vec<Group>,
}

impl Layout {
    pub fn group_of(&self, conn: usize) -> &Group {
        self.groups
            .iter()
            .find(|g| conn >= g.first_conn && conn < g.first_conn + g.conns())
            .expect("every connection is in a group")
    }
}

/// Everything a worker needs; sent as one JSON line on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub workers: usize,
    pub target: Target,
    pub urls: Vec<String>,
    pub layout: Layout,
    pub run_id: String,
    pub jwt_secret: String,
    pub body_bytes: usize,
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// SO_RCVBUF for connections that will stop reading (0: the kernel's default).
    pub slow_rcvbuf: usize,
}

impl WorkerSpec {
    pub fn room_name(&self, group: &Group, room: usize) -> String {
        format!("lt{}-{}-{}", self.run_id, group.name, room)
    }
}

/// One load step: a rate held for a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub index: usize,
    /// Messages per second offered across all groups.
    pub rate: f64,
    /// Unix µs: schedule origin.
    pub start_us: u64,
    /// Unix µs: the measurement window.
    pub window_start_us: u64,
    pub window_end_us: u64,
    /// How long after the window to wait for stragglers.
    pub drain_us: u64,
    /// Slow members stop reading at the start of this step.
    pub slow_stop: bool,
}

impl Step {
    /// Scheduled send time of message `i` of a group at `rate` msgs/s (unix µs).
    #[inline]
    pub fn sched(&self, rate: f64, i: u64) -> u64 {
        self.start_us + (i as f64 * 1e6 / rate) as u64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Connect {
        start_us: u64,
    },
    Step(Step),
    /// Report the connections closed so far (idle and storm have no steps to carry this).
    Closes,
    Quit,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    /// First few failure reasons.
    pub errors: Vec<String>,
    /// Failures counted by reason (the first few distinct reasons; the rest under "other").
    #[serde(default)]
    pub error_counts: Vec<(String, u64)>,
    /// Time from the start signal to the last join (µs).
    pub elapsed_us: u64,
    /// Per-connection connect+handshake+join latency (base64 HdrHistogram V2, µs).
    pub hist: String,
    /// Worker CPU from the start signal to the last join, seconds.
    #[serde(default)]
    pub cpu_s: f64,
}

/// Connections the server (or the network) closed since the connect phase. Cumulative: a
/// connection lost in one step is missing from every later step too.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloseReport {
    pub closed: u64,
    pub close_codes: Vec<(u16, u64)>,
    /// Closes the scenario did not plan for: all of them except slow consumers' once they
    /// have stopped reading.
    pub unexpected: u64,
    pub unexpected_codes: Vec<(u16, u64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepReport {
    pub index: usize,
    /// Sends written to sockets, scheduled in the window.
    pub sent: u64,
    /// Deliveries (and acks) the schedule promises this worker's readers for the window.
    pub expected: u64,
    pub expected_acks: u64,
    /// Deliveries of window-scheduled messages, received before the drain ended.
    pub delivered: u64,
    /// Deliveries received during the window (any schedule time).
    pub received_in_window: u64,
    pub acks: u64,
    pub acks_in_window: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub closed: u64,
    pub close_codes: Vec<(u16, u64)>,
    /// Of `closed`, those the scenario did not plan for (cumulative, like `closed`).
    #[serde(default)]
    pub unexpected_closed: u64,
    #[serde(default)]
    pub unexpected_close_codes: Vec<(u16, u64)>,
    /// Worker CPU over the window, seconds.
    pub cpu_s: f64,
    /// Worst lateness of a send behind its schedule (µs).
    pub max_send_lag_us: u64,
    pub hist: String,
    pub ack_hist: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Connected(ConnectReport),
    Progress {
        step: usize,
        second: u64,
        sent: u64,
        received: u64,
        acks: u64,
        p50_us: u64,
        p99_us: u64,
        max_us: u64,
        closed: u64,
    },
    StepDone(StepReport),
    Closes(CloseReport),
}

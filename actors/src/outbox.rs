//! The bounded outbound queue of one connection, shared by everything that writes to it
//! (its rooms, the Writer's acks, its own actor), and the close signal of that connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::ids::{ConnId, UserId};
use crate::metrics::Metrics;
use prometheus::IntCounter;

/// The close codes of the protocol.
pub mod close {
    /// Normal close: the client should not reconnect.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down or draining: reconnect with backoff and `since`. Queued
    /// frames go out before it.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL: u16 = 1002;
    /// Invalid payload: bad UTF-8 or an undecodable frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: today only a token whose `exp` passed without a `refresh`.
    pub const POLICY: u16 = 1008;
    /// A frame larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
    /// A server fault (such as a failed connection actor): reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// The server cannot serve the socket now (a join's replay failed, say): reconnect with
    /// backoff and `since`.
    pub const OVERLOADED: u16 = 1013;
    /// The outbound queue overflowed: reconnect and catch up with `since`.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The client went silent: no first frame, or no pong, in time.
    pub const IDLE: u16 = 4001;
    /// The backend disconnected the user (`POST /api/v1/users/{user}/disconnect`).
    pub const DISCONNECTED: u16 = 4003;

    /// The short reason sent in the close frame.
    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "normal",
            GOING_AWAY => "going away",
            PROTOCOL => "protocol error",
            INVALID_PAYLOAD => "invalid payload",
            // The server sends 1008 for one reason today: the token's `exp` passed.
            POLICY => "token expired",
            TOO_BIG => "message too big",
            INTERNAL => "internal error",
            OVERLOADED => "overloaded",
            SLOW_CONSUMER => "slow consumer",
            IDLE => "idle",
            DISCONNECTED => "disconnected",
            _ => "",
        }
    }
}

/// Where a connection is in closing; what every holder of the connection watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Open.
    Open,
    /// Shutdown's first step: stop taking commands from the socket but keep writing to it,
    /// so the acks of sends already taken still go out before the close.
    StopReading,
    /// Closing with this code (the first request wins).
    Closing(u16),
}

impl CloseState {
    /// The close code, once one is requested.
    pub fn code(self) -> Option<u16> {
        match self {
            CloseState::Closing(c) => Some(c),
            _ => None,
        }
    }

    /// A close that cuts writing short: anything but a normal or going-away close, which
    /// first let what is queued (acks above all) go out.
    pub fn is_urgent(self) -> bool {
        matches!(self, CloseState::Closing(c) if c != close::NORMAL && c != close::GOING_AWAY)
    }
}

/// A receiver of a connection's `CloseState`.
pub struct CloseWatch(watch::Receiver<CloseState>);

impl CloseWatch {
    /// The state now.
    pub fn state(&self) -> CloseState {
        *self.0.borrow()
    }

    /// Resolves at the next change, with the new state; `None` when the connection's shared
    /// state is gone.
    pub async fn changed(&mut self) -> Option<CloseState> {
        self.0.changed().await.ok()?;
        Some(self.state())
    }

    /// Resolves once a close code is requested, with that code.
    pub async fn closing(&mut self) -> u16 {
        match self.0.wait_for(|s| s.code().is_some()).await {
            Ok(s) => s.code().unwrap_or(close::INTERNAL),
            Err(_) => close::INTERNAL,
        }
    }

    /// Resolves once an urgent close (see `CloseState::is_urgent`) is requested.
    pub async fn urgent(&mut self) {
        let _ = self.0.wait_for(|s| s.is_urgent()).await;
    }
}

/// One item of the outbound queue.
#[derive(Debug)]
pub enum Out {
    /// An encoded protocol frame, written with the socket's opcode (text or binary).
    Frame(Bytes),
    /// A pong answering a client ping.
    Pong(Bytes),
}

/// State shared by a connection's actor, its socket tasks and every queue holder.
pub struct ConnShared {
    /// The connection's id on this node.
    pub id: ConnId,
    /// Whose socket this is (a refresh may change the token, never the user).
    pub user: UserId,
    /// The user's token holds the `admin` role (updated by `refresh`).
    admin: AtomicBool,
    /// The token's `exp`, seconds since the Unix epoch (updated by `refresh`); 0 for none.
    expires: AtomicU64,
    /// Permits for client commands decoded and not yet handled: the reader waits for one
    /// before handing a command to the actor, so a fast client meets TCP backpressure instead
    /// of growing the actor's unbounded mailbox.
    pub inbound: Arc<tokio::sync::Semaphore>,
    inbound_cap: usize,
    close: watch::Sender<CloseState>,
    /// Milliseconds since `epoch` at which the client last sent anything (any frame).
    last_seen_ms: AtomicU64,
    epoch: Instant,
    outbound_len: std::sync::atomic::AtomicUsize,
}

impl ConnShared {
    /// The state of a new, open connection of `user`, with `inbound_cap` permits for
    /// undispatched commands. No admin role and no expiry until they are set.
    pub fn new(id: ConnId, inbound_cap: usize, user: UserId) -> Arc<Self> {
        let (close, _) = watch::channel(CloseState::Open);
        Arc::new(Self {
            id,
            user,
            admin: AtomicBool::new(false),
            expires: AtomicU64::new(0),
            inbound: Arc::new(tokio::sync::Semaphore::new(inbound_cap)),
            inbound_cap,
            close,
            last_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            outbound_len: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The socket's latest token holds the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.admin.load(Ordering::Acquire)
    }

    /// Record the `admin` role of a newly verified token (at connect and on `refresh`).
    pub fn set_admin(&self, admin: bool) {
        self.admin.store(admin, Ordering::Release);
    }

    /// The token's `exp` (seconds since the Unix epoch), 0 for none.
    pub fn expires(&self) -> u64 {
        self.expires.load(Ordering::Acquire)
    }

    pub(crate) fn set_expires(&self, exp: u64) {
        self.expires.store(exp, Ordering::Release);
    }

    /// Ask the socket tasks to close with `code`. The first request wins (stopping to read,
    /// during shutdown, is the only state a close code replaces).
    pub fn request_close(&self, code: u16) {
        self.close.send_if_modified(|s| match s {
            CloseState::Open | CloseState::StopReading => {
                *s = CloseState::Closing(code);
                true
            }
            CloseState::Closing(_) => false,
        });
    }

    /// Shutdown, first step: stop taking commands from the socket but keep writing to it, so
    /// the acks of sends already taken can still go out before the 1001 close.
    pub fn stop_reading(&self) {
        self.close.send_if_modified(|s| {
            let open = *s == CloseState::Open;
            if open {
                *s = CloseState::StopReading;
            }
            open
        });
    }

    /// Decoded commands waiting to be handled.
    pub fn inbound_used(&self) -> usize {
        self.inbound_cap - self.inbound.available_permits()
    }

    /// Frames waiting to be written (as last sampled by the writer side).
    pub fn outbound_used(&self) -> usize {
        self.outbound_len.load(Ordering::Relaxed)
    }

    pub(crate) fn set_outbound_len(&self, n: usize) {
        self.outbound_len.store(n, Ordering::Relaxed);
    }

    /// True when no decoded command waits to be handled.
    pub fn inbound_idle(&self) -> bool {
        self.inbound.available_permits() == self.inbound_cap
    }

    /// Where the connection is in closing.
    pub fn close_state(&self) -> CloseState {
        *self.close.borrow()
    }

    /// Watch the close state (the socket tasks wait on it).
    pub fn close_watch(&self) -> CloseWatch {
        CloseWatch(self.close.subscribe())
    }

    /// Record that the client sent something now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Time since the client last sent anything; `None` if it never has.
    pub fn silent_for(&self) -> Option<std::time::Duration> {
        let seen = self.last_seen_ms.load(Ordering::Relaxed);
        if seen == 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(std::time::Duration::from_millis(now.saturating_sub(seen)))
    }
}

/// A handle for pushing frames to one connection. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    shared: Arc<ConnShared>,
    /// `chatty_slow_consumer_closes_total` (one counter, not the whole `Metrics`: outboxes
    /// are cloned into every room a socket joins).
    slow_consumer_closes: IntCounter,
}

impl Outbox {
    /// An outbox of at most `capacity` frames (at least 1), and the receiver the socket's
    /// writer task drains.
    pub fn new(
        capacity: usize,
        shared: Arc<ConnShared>,
        metrics: &Metrics,
    ) -> (Self, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                shared,
                slow_consumer_closes: metrics.slow_consumer_closes.clone(),
            },
            rx,
        )
    }

    /// The connection's id.
    pub fn conn(&self) -> ConnId {
        self.shared.id
    }

    /// The connection's shared state.
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Queue a frame without waiting. A full queue means the client is not reading fast
    /// enough: the connection is closed with 4000 and recovers with `since` on reconnect,
    /// so one slow reader never holds up a room.
    pub fn push(&self, frame: Bytes) -> bool {
        self.push_out(Out::Frame(frame))
    }

    /// Queue any item (a frame or a pong) without waiting; false if it was not queued. A full
    /// queue closes the connection with 4000, as for `push`.
    pub fn push_out(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => {
                self.shared
                    .set_outbound_len(self.tx.max_capacity() - self.tx.capacity());
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.shared.close_state() == CloseState::Open {
                    self.slow_consumer_closes.inc();
                }
                self.shared.request_close(close::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ask the connection to close with `code` (the first request wins).
    pub fn close(&self, code: u16) {
        self.shared.request_close(code);
    }

    /// A close was requested, or the writer side is gone: nothing pushed now is written.
    pub fn is_closed(&self) -> bool {
        self.shared.close_state().code().is_some() || self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_slow_consumer() {
        let shared = ConnShared::new(ConnId(1), 4, UserId::parse("u").unwrap());
        let (ob, _rx) = Outbox::new(2, shared.clone(), &Metrics::unregistered());
        assert!(ob.push(Bytes::from_static(b"a")));
        assert!(ob.push(Bytes::from_static(b"b")));
        assert!(!ob.push(Bytes::from_static(b"c")));
        assert_eq!(
            shared.close_state(),
            CloseState::Closing(close::SLOW_CONSUMER)
        );
    }

    #[test]
    fn first_close_request_wins() {
        let shared = ConnShared::new(ConnId(1), 4, UserId::parse("u").unwrap());
        shared.request_close(close::GOING_AWAY);
        shared.request_close(close::SLOW_CONSUMER);
        assert_eq!(shared.close_state(), CloseState::Closing(close::GOING_AWAY));
    }

    #[test]
    fn stopping_to_read_is_replaced_by_a_close_and_never_replaces_one() {
        let shared = ConnShared::new(ConnId(1), 4, UserId::parse("u").unwrap());
        shared.stop_reading();
        assert_eq!(shared.close_state(), CloseState::StopReading);
        assert!(!shared.close_state().is_urgent());
        shared.request_close(close::GOING_AWAY);
        assert_eq!(shared.close_state(), CloseState::Closing(close::GOING_AWAY));
        shared.stop_reading();
        assert_eq!(shared.close_state().code(), Some(close::GOING_AWAY));
        assert!(
            !shared.close_state().is_urgent(),
            "1001 lets queued frames out"
        );
        assert!(CloseState::Closing(close::SLOW_CONSUMER).is_urgent());
    }
}

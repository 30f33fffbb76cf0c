//! Token lifetimes: one wheel per node instead of a timer per socket.
//!
//! Each connection is filed under the second its token expires, as a weak reference (eight
//! bytes; nothing keeps a closed socket alive). One task wakes four times a second, takes the
//! seconds that have passed and closes, with 1008, every socket whose token is still the one
//! it was filed for. A `refresh` files the socket again under its new second and leaves the
//! old entry to be skipped: no search, no removal.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::outbox::{close, ConnShared};

/// How often the sweep runs: a socket is closed at most this long after its token's `exp`.
const TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Expiry {
    wheel: Mutex<BTreeMap<u64, Vec<Weak<ConnShared>>>>,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Expiry {
    /// The socket has proven a token valid until `exp` (seconds since the epoch). A socket's
    /// expiry only moves later: a refresh with an older token changes nothing here, so each
    /// socket is filed at most once per distinct, later second its backend issued.
    pub fn watch(&self, conn: &Arc<ConnShared>, exp: u64) {
        if exp <= conn.expires() {
            return;
        }
        conn.set_expires(exp);
        self.wheel
            .lock()
            .entry(exp)
            .or_default()
            .push(Arc::downgrade(conn));
    }

    /// Close every socket whose token expired at or before `now`; how many were closed.
    pub fn sweep(&self, now: u64) -> usize {
        let due: Vec<Weak<ConnShared>> = {
            let mut wheel = self.wheel.lock();
            let later = wheel.split_off(&(now + 1));
            std::mem::replace(&mut *wheel, later)
                .into_values()
                .flatten()
                .collect()
        };
        let mut closed = 0;
        for conn in due.iter().filter_map(Weak::upgrade) {
            // Refreshed since it was filed: a later entry covers it.
            let exp = conn.expires();
            if exp != 0 && exp <= now {
                conn.request_close(close::POLICY);
                closed += 1;
            }
        }
        closed
    }

    /// Entries filed (closed and refreshed sockets included until their second passes).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.wheel.lock().values().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sweeping task; the node aborts it at shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = me.sweep(now_secs());
                if n > 0 {
                    tracing::debug!(sockets = n, "closed sockets whose token expired");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConnId, UserId};
    use crate::outbox::CloseState;

    fn conn(id: u64) -> Arc<ConnShared> {
        ConnShared::new(ConnId(id), 4, UserId::parse("u").unwrap())
    }

    #[test]
    fn a_socket_closes_with_1008_once_its_second_has_passed() {
        let w = Expiry::default();
        let c = conn(1);
        w.watch(&c, 100);
        assert_eq!(w.sweep(99), 0);
        assert_eq!(c.close_state(), CloseState::Open);
        assert_eq!(w.sweep(100), 1);
        assert_eq!(c.close_state(), CloseState::Closing(close::POLICY));
        assert!(w.is_empty());
    }

    #[test]
    fn a_refreshed_socket_survives_its_old_second() {
        let w = Expiry::default();
        let c = conn(1);
        w.watch(&c, 100);
        w.watch(&c, 200);
        assert_eq!(w.sweep(150), 0);
        assert_eq!(c.close_state(), CloseState::Open);
        assert_eq!(w.len(), 1);
        assert_eq!(w.sweep(200), 1);
    }

    #[test]
    fn expiry_only_moves_later_and_gone_sockets_cost_nothing() {
        let w = Expiry::default();
        let c = conn(1);
        for _ in 0..1000 {
            w.watch(&c, 100);
            w.watch(&c, 90);
        }
        assert_eq!(w.len(), 1);
        assert_eq!(c.expires(), 100);
        drop(c);
        assert_eq!(w.sweep(100), 0);
    }
}

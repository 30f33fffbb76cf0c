//! PostgreSQL connections of the store's own, for the hot paths (the writer lanes' appends,
//! and the reads of a join, a replay, a gap fill or a history page).
//!
//! sqlx 0.9's pool pings every connection when it is handed back (`return_to_pool`), whatever
//! `test_before_acquire` says, so each pooled query costs two round trips: in a storm of
//! joins, 12% of the server's CPU went to handing connections back. This is the part of a pool
//! these paths need and no more: at most `max` connections open, idle ones kept on a stack,
//! a bounded wait for a free one. A connection whose query failed is not put back (it may be
//! broken, or mid-query after a timeout); the next lease opens a fresh one.

use std::time::Duration;

use chatty_actors::StoreError;
use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions;
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Conns {
    opts: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    /// One permit per connection that may be in use.
    slots: Semaphore,
    max: usize,
    wait: Duration,
}

/// One connection, leased until `done` puts it back; dropped without `done` (a failed or
/// abandoned query), it is closed instead.
pub struct Lease<'a> {
    conns: &'a Conns,
    conn: Option<PgConnection>,
    _slot: SemaphorePermit<'a>,
}

impl Conns {
    /// At most `max` connections opened with `opts`; a lease waits at most `wait` for one.
    pub fn new(opts: PgConnectOptions, max: usize, wait: Duration) -> Self {
        let max = max.max(1);
        Self {
            opts,
            idle: Mutex::new(Vec::with_capacity(max)),
            slots: Semaphore::new(max),
            max,
            wait,
        }
    }

    pub async fn lease(&self) -> Result<Lease<'_>, StoreError> {
        let slot = tokio::time::timeout(self.wait, self.slots.acquire())
            .await
            .map_err(|_| StoreError::Unavailable("no database connection free in time".into()))?
            .map_err(|_| StoreError::Unavailable("connections closed".into()))?;
        let idle = self.idle.lock().pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout(self.wait, self.opts.connect())
                    .await
                    .map_err(|_| StoreError::Unavailable("database connect timed out".into()))?
                    .map_err(super::store_err)?;
                // Harmless if it fails: the connection only misses the fix for Nagle.
                let _ = super::nodelay(self.opts.get_port());
                c
            }
        };
        Ok(Lease {
            conns: self,
            conn: Some(conn),
            _slot: slot,
        })
    }

    /// Refuse further leases and close the idle connections (shutdown, after the Writer
    /// drained; a connection still leased is closed when its lease ends).
    pub async fn close(&self) {
        self.slots.close();
        let idle: Vec<PgConnection> = std::mem::take(&mut *self.idle.lock());
        for c in idle {
            let _ = sqlx::Connection::close(c).await;
        }
    }

    /// (open, idle): connections leased out plus idle ones, and idle ones.
    pub fn stats(&self) -> (u32, usize) {
        let idle = self.idle.lock().len();
        let leased = self.max - self.slots.available_permits();
        ((leased + idle) as u32, idle)
    }
}

impl Lease<'_> {
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until done")
    }

    /// The query succeeded: the connection goes back for the next lease.
    pub fn done(mut self) {
        if let Some(c) = self.conn.take() {
            if !self.conns.slots.is_closed() {
                self.conns.idle.lock().push(c);
            }
        }
    }
}

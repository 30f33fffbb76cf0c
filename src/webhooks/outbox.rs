//! The outbox table (`webhook_events`, see the webhooks migration) as the dispatcher sees it,
//! for PostgreSQL and SQLite.
//!
//! Exactly one node dispatches. On PostgreSQL it is the one holding a session advisory lock on
//! its own connection, and every dispatcher statement runs on that same connection: a node
//! whose connection broke (so whose lock another node may now hold) cannot mark anything
//! delivered or failed any more; it only tries to lead again. A delivery it made meanwhile may
//! be made again by the new leader: at least once, deduplicated by `id`. The embedded SQLite
//! store is one process, which always leads.

use std::sync::Arc;

use async_trait::async_trait;
use chatty_actors::{RoomId, Seq, StoreError, UserId};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::SqlitePool;
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::Mutex;

use crate::store::store_err;

/// The lock's key: any fixed number no other part of Chatty uses ("chatty-wh").
const LEADER_LOCK: i64 = 0x6368_6174_7479_7768;
/// The longest any statement on the leading connection (or connecting it) may take: a
/// connection that hangs (half-open TCP) is dropped, and with it the lead, instead of holding
/// the whole cluster's dispatch.
const LEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A message of a private room: the offline members are found when it is dispatched.
    MessageOffline {
        room: RoomId,
        seq: Seq,
        from: UserId,
        name: String,
        /// Decided at the first attempt and kept, so every retry says the same.
        users: Option<Vec<UserId>>,
    },
    /// The user's last socket anywhere closed.
    UserOffline { user: UserId },
    /// A row this binary cannot read (the reason): dead-lettered at once rather than holding
    /// its key, or the whole dispatcher, back.
    Invalid(String),
}

/// One pending event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    /// What orders delivery: one event per key at a time, oldest first.
    pub okey: String,
    pub kind: EventKind,
    pub ts: i64,
    pub attempts: i32,
    /// ms since the Unix epoch.
    pub created_at: i64,
}

/// The dispatcher's view of the outbox.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Become (or stay) the dispatching node: true while this process holds the lead.
    async fn lead(&self) -> Result<bool, StoreError>;
    /// Give the lead up (shutdown).
    async fn resign(&self);
    /// Pending events due at `now`, each the oldest pending event of its key, leaving out the
    /// keys in `busy` (in flight); oldest first, at most `limit`.
    async fn due(&self, now: i64, busy: &[String], limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Delivered (or nobody to tell): the row goes.
    async fn delivered(&self, id: i64) -> Result<(), StoreError>;
    /// Failed: try again at `next_at`; `users` keeps what the first attempt decided.
    async fn failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        users: Option<&[UserId]>,
    ) -> Result<(), StoreError>;
    /// Failed for good: kept as `dead`, no longer retried, no longer holding its key back.
    async fn dead(&self, id: i64, error: &str) -> Result<(), StoreError>;
    /// (pending events, creation time of the oldest).
    async fn backlog(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Record `user.offline` (any node, not only the leader).
    async fn user_offline(&self, user: &UserId, ts: i64) -> Result<(), StoreError>;
}

/// The head (oldest pending event) of every key, found by skipping from key to key along the
/// `(okey, id)` index (a loose index scan): its cost follows the number of keys with pending
/// events, not the number of pending events, which a receiver outage makes large.
const DUE_PG: &str = "
with recursive k(okey) as (
    (select okey from webhook_events where state = 'pending' order by okey limit 1)
    union all
    select (select okey from webhook_events
             where state = 'pending' and okey > k.okey order by okey limit 1)
      from k where k.okey is not null
)
select h.id, h.okey, h.kind, h.room_id, h.seq, h.user_id, h.name, h.users, h.ts, h.attempts,
       h.created_at
  from k cross join lateral (
      select * from webhook_events e
       where e.state = 'pending' and e.okey = k.okey order by e.id limit 1
  ) h
 where k.okey is not null and h.next_at <= $1 and h.okey <> all($2)
 order by h.id
 limit $3";

const DUE_SQLITE: &str = "
with recursive k(okey) as (
    select (select okey from webhook_events where state = 'pending' order by okey limit 1)
    union all
    select (select okey from webhook_events
             where state = 'pending' and okey > k.okey order by okey limit 1)
      from k where k.okey is not null
)
select h.id, h.okey, h.kind, h.room_id, h.seq, h.user_id, h.name, h.users, h.ts, h.attempts,
       h.created_at
  from k join webhook_events h
    on h.id = (select e.id from webhook_events e
                where e.state = 'pending' and e.okey = k.okey order by e.id limit 1)
 where k.okey is not null and h.next_at <= ?1
   and h.okey not in (select value from json_each(?2))
 order by h.id
 limit ?3";

const USER_OFFLINE_PG: &str = "insert into webhook_events
     (okey, kind, user_id, ts, created_at, next_at)
     values ('u:' || $1, 'user.offline', $1, $2, $2, $2)";

const USER_OFFLINE_SQLITE: &str = "insert into webhook_events
     (okey, kind, user_id, ts, created_at, next_at)
     values ('u:' || ?1, 'user.offline', ?1, ?2, ?2, ?2)";

fn row_to_event<R: Row>(r: &R) -> Result<Event, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id: i64 = r.try_get("id").map_err(store_err)?;
    let okey: String = r.try_get("okey").map_err(store_err)?;
    let (ts, attempts, created_at) = (
        r.try_get("ts").map_err(store_err)?,
        r.try_get("attempts").map_err(store_err)?,
        r.try_get("created_at").map_err(store_err)?,
    );
    let kind = decode_kind(r).unwrap_or_else(|e| EventKind::Invalid(e.to_string()));
    Ok(Event {
        id,
        okey,
        kind,
        ts,
        attempts,
        created_at,
    })
}

/// What the row is about; an error for a row this binary cannot read.
fn decode_kind<R: Row>(r: &R) -> Result<EventKind, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let bad = |what: &str| StoreError::Other(format!("webhook_events: invalid {what}").into());
    let kind: String = r.try_get("kind").map_err(store_err)?;
    let user = UserId::parse(&r.try_get::<String, _>("user_id").map_err(store_err)?)
        .map_err(|_| bad("user_id"))?;
    let kind = match kind.as_str() {
        "message.offline" => {
            let room: Option<String> = r.try_get("room_id").map_err(store_err)?;
            let seq: Option<i64> = r.try_get("seq").map_err(store_err)?;
            let users: Option<String> = r.try_get("users").map_err(store_err)?;
            let users = match users {
                Some(text) => {
                    let names: Vec<String> =
                        serde_json::from_str(&text).map_err(|_| bad("users"))?;
                    Some(
                        names
                            .iter()
                            .map(|n| UserId::parse(n).map_err(|_| bad("users")))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
                None => None,
            };
            EventKind::MessageOffline {
                room: RoomId::parse(room.as_deref().unwrap_or_default())
                    .map_err(|_| bad("room_id"))?,
                seq: seq.ok_or_else(|| bad("seq"))?.max(0) as Seq,
                from: user,
                name: r
                    .try_get::<Option<String>, _>("name")
                    .map_err(store_err)?
                    .unwrap_or_default(),
                users,
            }
        }
        "user.offline" => EventKind::UserOffline { user },
        _ => return Err(bad("kind")),
    };
    Ok(kind)
}

fn users_json(users: Option<&[UserId]>) -> Option<String> {
    users.map(|u| {
        serde_json::to_string(&u.iter().map(|u| u.as_str()).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into())
    })
}

/// PostgreSQL: the lead is an advisory lock held by this node's own connection.
pub struct PgOutbox {
    opts: PgConnectOptions,
    pool: sqlx::PgPool,
    /// The leading connection (holding the lock), when this node leads.
    conn: Mutex<Option<PgConnection>>,
}

impl PgOutbox {
    pub fn new(pool: sqlx::PgPool) -> Arc<Self> {
        // The server ends a statement that runs too long, and finds a dead client within
        // about half a minute (keepalives, and a cap on unacknowledged sends): only then does
        // the session, and with it the lock, go, so another node can lead. The defaults would
        // keep a half-open session's lock for about two hours.
        let opts = (*pool.connect_options()).clone().options([
            ("statement_timeout", "10000"),
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "30000"),
        ]);
        Arc::new(Self {
            opts,
            pool,
            conn: Mutex::new(None),
        })
    }

    /// Run `f` on the leading connection; an error drops it (and with it the lock), so this
    /// node must lead again before it touches the outbox.
    async fn on_lead<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Unavailable("this node does not lead".into()));
        };
        match tokio::time::timeout(LEAD_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(store_err(e))
            }
            Err(_) => {
                *guard = None;
                Err(StoreError::Unavailable(
                    "the leading connection timed out".into(),
                ))
            }
        }
    }
}

#[async_trait]
impl Outbox for PgOutbox {
    async fn lead(&self) -> Result<bool, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_mut() {
            // Still the same session (so still the lock)?
            if let Ok(Ok(())) = tokio::time::timeout(LEAD_TIMEOUT, conn.ping()).await {
                return Ok(true);
            }
            *guard = None;
        }
        let timed_out = || StoreError::Unavailable("connecting to lead timed out".into());
        let mut conn = tokio::time::timeout(LEAD_TIMEOUT, self.opts.connect())
            .await
            .map_err(|_| timed_out())?
            .map_err(store_err)?;
        let got: bool = tokio::time::timeout(
            LEAD_TIMEOUT,
            sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(store_err)?;
        if got {
            *guard = Some(conn);
        } else {
            let _ = conn.close().await;
        }
        Ok(got)
    }

    async fn resign(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }

    async fn due(&self, now: i64, busy: &[String], limit: usize) -> Result<Vec<Event>, StoreError> {
        let busy = busy.to_vec();
        let rows = self
            .on_lead(move |c| {
                Box::pin(async move {
                    sqlx::query(DUE_PG)
                        .bind(now)
                        .bind(&busy)
                        .bind(limit as i64)
                        .fetch_all(&mut *c)
                        .await
                })
            })
            .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        self.on_lead(move |c| {
            Box::pin(async move {
                sqlx::query("delete from webhook_events where id = $1")
                    .bind(id)
                    .execute(&mut *c)
                    .await
                    .map(drop)
            })
        })
        .await
    }

    async fn failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        users: Option<&[UserId]>,
    ) -> Result<(), StoreError> {
        let (error, users) = (error.to_owned(), users_json(users));
        self.on_lead(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "update webhook_events
                        set attempts = attempts + 1, next_at = $2, last_error = $3,
                            users = coalesce(users, $4)
                      where id = $1",
                )
                .bind(id)
                .bind(next_at)
                .bind(&error)
                .bind(&users)
                .execute(&mut *c)
                .await
                .map(drop)
            })
        })
        .await
    }

    async fn dead(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.on_lead(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "update webhook_events
                        set state = 'dead', attempts = attempts + 1, last_error = $2
                      where id = $1",
                )
                .bind(id)
                .bind(&error)
                .execute(&mut *c)
                .await
                .map(drop)
            })
        })
        .await
    }

    async fn backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.on_lead(|c| {
            Box::pin(async move {
                sqlx::query_as(
                    "select count(*), min(created_at) from webhook_events
                      where state = 'pending'",
                )
                .fetch_one(&mut *c)
                .await
            })
        })
        .await
    }

    async fn user_offline(&self, user: &UserId, ts: i64) -> Result<(), StoreError> {
        sqlx::query(USER_OFFLINE_PG)
            .bind(user.as_str())
            .bind(ts)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(store_err)
    }
}

/// SQLite: one process, which always leads.
pub struct SqliteOutbox {
    pool: SqlitePool,
}

impl SqliteOutbox {
    pub fn new(pool: SqlitePool) -> Arc<Self> {
        Arc::new(Self { pool })
    }
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn resign(&self) {}

    async fn due(&self, now: i64, busy: &[String], limit: usize) -> Result<Vec<Event>, StoreError> {
        let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(DUE_SQLITE)
            .bind(now)
            .bind(busy)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(store_err)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("delete from webhook_events where id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(store_err)
    }

    async fn failed(
        &self,
        id: i64,
        next_at: i64,
        error: &str,
        users: Option<&[UserId]>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update webhook_events
                set attempts = attempts + 1, next_at = ?2, last_error = ?3,
                    users = coalesce(users, ?4)
              where id = ?1",
        )
        .bind(id)
        .bind(next_at)
        .bind(error)
        .bind(users_json(users))
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(store_err)
    }

    async fn dead(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "update webhook_events set state = 'dead', attempts = attempts + 1, last_error = ?2
              where id = ?1",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(store_err)
    }

    async fn backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        sqlx::query_as(
            "select count(*), min(created_at) from webhook_events where state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(store_err)
    }

    async fn user_offline(&self, user: &UserId, ts: i64) -> Result<(), StoreError> {
        sqlx::query(USER_OFFLINE_SQLITE)
            .bind(user.as_str())
            .bind(ts)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(store_err)
    }
}

//! PostgreSQL store. A batch is one statement, so one round trip and one implicit
//! transaction whatever its size: find the cids already stored, advance every room counter at
//! once (creating rooms on the way, locking them in room-id order), insert every new message
//! with one `UNNEST`, and return each message's seq.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chatty_actors::{
    Appended, JoinInfo, MessageStore, NewMessage, RoomId, RoomRole, Seq, StoreError, StoredMessage,
    UserId,
};
use sqlx::postgres::PgPool;
use sqlx::Row;

use super::conns::Conns;
use super::{join_info, page, row_to_message, store_err};

#[derive(Clone)]
pub struct PgStore {
    /// sqlx's pool: the rare calls (room settings, members).
    pool: PgPool,
    /// The hot reads (join, replay, gap fill, history, read markers).
    reads: Arc<Conns>,
    /// The writer lanes' appends: one connection per lane.
    writes: Arc<Conns>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The whole append. Data-modifying CTEs all run, once, on one snapshot, and the statement
/// commits or fails as a unit, so seq stays gap-free without an explicit transaction.
///
/// - `k`: the batch, numbered (`with ordinality`) so results map back without key strings, its
///   ids in the columns' bytewise collation, each row with the seq it already has if its
///   (room, user, cid) is stored. LATERAL with `limit 1` keeps that one index probe per key:
///   without the limit the planner may flatten it into a hash join over a sequential scan of
///   `messages`. A concurrent insert of the same key that this snapshot misses makes the insert
///   fail on the unique key; the lane's retry then finds it here.
/// - `fresh`: the rows to insert, numbered within their room (`n` of `c`).
/// - `heads`: every room counter advanced at once, rows taken in room-id order, so writers on
///   any node queue on the same locks in the same order and never deadlock. `on conflict do
///   update` waits for and then updates the newest row version, so concurrent writers never
///   hand out the same seq.
/// - `seqs`/`ins`: each new message's seq from its room's new head, inserted in one go.
const APPEND: &str = r#"
with k as (
    select t.i, t.r collate "C" as room_id, t.u collate "C" as user_id, t.nm as name,
           t.c collate "C" as cid, t.b as body, m.seq as old_seq, m.ts as old_ts
      from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
           with ordinality as t(r, u, nm, c, b, i)
      left join lateral (
        select seq, ts from messages m
         where m.room_id = t.r collate "C" and m.user_id = t.u collate "C"
           and m.cid = t.c collate "C"
         limit 1
      ) m on true
), fresh as (
    select k.*, row_number() over (partition by room_id order by i) as n,
           count(*) over (partition by room_id) as c
      from k where old_seq is null
), heads as (
    insert into rooms as r (id, last_seq)
    select distinct on (room_id) room_id, c from fresh order by room_id
    on conflict (id) do update set last_seq = r.last_seq + excluded.last_seq
    returning id, last_seq
), seqs as (
    select f.i, f.room_id, f.user_id, f.name, f.cid, f.body, h.last_seq - f.c + f.n as seq
      from fresh f join heads h on h.id = f.room_id
), ins as (
    insert into messages (room_id, seq, user_id, name, cid, body, ts)
    select room_id, seq, user_id, name, cid, body, $6 from seqs
)
select i, seq, $6::bigint as ts, false as dup from seqs
union all
select i, old_seq, old_ts, true from k where old_seq is not null"#;

impl PgStore {
    /// A store whose own connections are made like `pool`'s (tests, tools).
    pub fn new(pool: PgPool) -> Self {
        let opts = (*pool.connect_options()).clone();
        let wait = pool.options().get_acquire_timeout();
        let n = pool.options().get_max_connections() as usize;
        Self::from_parts(
            pool,
            Arc::new(Conns::new(opts.clone(), n, wait)),
            Arc::new(Conns::new(opts, crate::settings::MAX_WRITER_LANES, wait)),
        )
    }

    pub fn from_parts(pool: PgPool, reads: Arc<Conns>, writes: Arc<Conns>) -> Self {
        Self {
            pool,
            reads,
            writes,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl MessageStore for PgStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let n = batch.len();
        let mut rooms = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut cids = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        for m in batch {
            rooms.push(m.room.as_str());
            users.push(m.from.as_str());
            names.push(m.name.as_str());
            cids.push(m.cid.as_str());
            bodies.push(m.body.as_str());
        }
        // The arrays are one bind parameter each, so the 65,535-parameter limit never applies.
        let mut lease = self.writes.lease().await?;
        let rows = sqlx::query(APPEND)
            .bind(&rooms)
            .bind(&users)
            .bind(&names)
            .bind(&cids)
            .bind(&bodies)
            .bind(now_ms())
            .fetch_all(lease.conn())
            .await
            .map_err(store_err)?;
        lease.done();
        let mut out: Vec<Option<Appended>> = vec![None; n];
        for r in &rows {
            let i = r.try_get::<i64, _>(0).map_err(store_err)? as usize;
            if let Some(slot) = i.checked_sub(1).and_then(|i| out.get_mut(i)) {
                *slot = Some(Appended {
                    seq: r.try_get::<i64, _>(1).map_err(store_err)? as Seq,
                    ts: r.try_get(2).map_err(store_err)?,
                    duplicate: r.try_get(3).map_err(store_err)?,
                });
            }
        }
        // The statement committed; a message without a result would be a bug in it. Report it
        // rather than ack something unknown (the Writer answers `unavailable`, and the client's
        // retry finds the stored row by its cid).
        out.into_iter()
            .map(|a| {
                a.ok_or_else(|| StoreError::Other("append returned no seq for a message".into()))
            })
            .collect()
    }

    async fn head(&self, room: &RoomId) -> Result<Seq, StoreError> {
        let mut lease = self.reads.lease().await?;
        let h: Option<i64> = sqlx::query_scalar("select last_seq from rooms where id = $1")
            .bind(room.as_str())
            .fetch_optional(lease.conn())
            .await
            .map_err(store_err)?;
        lease.done();
        Ok(h.unwrap_or(0) as Seq)
    }

    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut lease = self.reads.lease().await?;
        let rows = sqlx::query(
            "select seq, user_id, name, cid, body, ts from messages
              where room_id = $1 and seq > $2 order by seq limit $3",
        )
        .bind(room.as_str())
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        rows.iter().map(|r| row_to_message(room, r)).collect()
    }

    async fn before(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let mut lease = self.reads.lease().await?;
        let before = before
            .map(|b| b.min(i64::MAX as u64) as i64)
            .unwrap_or(i64::MAX);
        // One more than asked tells whether older messages exist.
        let rows = sqlx::query(
            "select seq, user_id, name, cid, body, ts from messages
              where room_id = $1 and seq < $2 order by seq desc limit $3",
        )
        .bind(room.as_str())
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        page(room, &rows, limit)
    }

    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError> {
        let mut lease = self.reads.lease().await?;
        // One round trip, four primary-key probes: this runs on every join.
        let row = sqlx::query(
            "select coalesce((select not private from rooms where id = $1), true) as public,
                    (select role from room_members where room_id = $1 and user_id = $2) as role,
                    exists (select 1 from room_bans where room_id = $1 and user_id = $2) as banned,
                    coalesce((select seq from read_markers
                               where room_id = $1 and user_id = $2), 0) as read",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .fetch_one(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        join_info(
            row.get::<bool, _>(0),
            row.get::<Option<String>, _>(1).as_deref(),
            row.get::<bool, _>(2),
            row.get::<i64, _>(3),
        )
    }

    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError> {
        let mut lease = self.reads.lease().await?;
        // Clamp to the head and never move backwards.
        let v: i64 = sqlx::query_scalar(
            "insert into read_markers (room_id, user_id, seq)
             values ($1, $2, least($3, coalesce((select last_seq from rooms where id = $1), 0)))
             on conflict (room_id, user_id)
               do update set seq = greatest(read_markers.seq, excluded.seq)
             returning seq",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_one(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        Ok(v as Seq)
    }

    async fn set_private(&self, room: &RoomId, private: bool) -> Result<(), StoreError> {
        sqlx::query(
            "insert into rooms (id, private) values ($1, $2)
             on conflict (id) do update set private = excluded.private",
        )
        .bind(room.as_str())
        .bind(private)
        .execute(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn set_member(
        &self,
        room: &RoomId,
        user: &UserId,
        role: Option<RoomRole>,
    ) -> Result<(), StoreError> {
        // Without a role, an existing row (and its role) is kept.
        let sql = match role {
            Some(_) => {
                "insert into room_members (room_id, user_id, role) values ($1, $2, $3)
                 on conflict (room_id, user_id) do update set role = excluded.role"
            }
            None => {
                "insert into room_members (room_id, user_id, role) values ($1, $2, $3)
                 on conflict do nothing"
            }
        };
        sqlx::query(sql)
            .bind(room.as_str())
            .bind(user.as_str())
            .bind(role.unwrap_or_default().as_str())
            .execute(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let sql = "delete from room_members where room_id = $1 and user_id = $2";
        self.exec_room_user(sql, room, user).await.map(drop)
    }

    async fn ban(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let sql = "insert into room_bans (room_id, user_id) values ($1, $2) on conflict do nothing";
        self.exec_room_user(sql, room, user).await.map(drop)
    }

    async fn unban(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError> {
        let sql = "delete from room_bans where room_id = $1 and user_id = $2";
        Ok(self.exec_room_user(sql, room, user).await? > 0)
    }
}

impl PgStore {
    /// Run one of the rare statements about a user in a room ($1, $2) on sqlx's pool; the
    /// rows it touched.
    async fn exec_room_user(
        &self,
        sql: &'static str,
        room: &RoomId,
        user: &UserId,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(sql)
            .bind(room.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(r.rows_affected())
    }
}

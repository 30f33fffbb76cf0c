//! PostgreSQL store. A batch is one statement, so one round trip and one implicit
//! transaction whatever its size: find the cids already stored, advance every room counter at
//! once (creating rooms on the way, locking them in room-id order), insert every new message
//! with one `UNNEST`, and return each message's seq.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use std::collections::HashMap;

use chatty_actors::lifecycle::{self, Decision, RowEffect};
use chatty_actors::{
    Appended, ChangeOp, ChangeOutcome, Heads, JoinInfo, MessageStore, NewChange, NewMessage, Rev,
    RoomId, RoomRole, RoomSummary, Seq, StoreError, StoredMessage, StoredUpdate, UserId,
};
use sqlx::postgres::PgPool;
use sqlx::Row;

use super::conns::Conns;
use super::{
    join_info, page, reacted_range, row_to_message, row_to_update, store_err, summaries, with_mine,
};

/// The columns `row_to_message` reads, JSON as text (a macro, so statements stay `&'static`
/// strings, which sqlx requires of SQL).
macro_rules! message_columns {
    () => {
        "seq, user_id, name, cid, body, ts, meta::text as meta, rev, edited_ts, deleted, \
         reactions::text as reactions"
    };
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

#[derive(Clone)]
pub struct PgStore {
    /// sqlx's pool: the rare calls (room settings, members).
    pool: PgPool,
    /// The hot reads (join, replay, gap fill, history, read markers).
    reads: Arc<Conns>,
    /// The writer lanes' appends: one connection per lane.
    writes: Arc<Conns>,
    /// Webhooks are on: appends to private rooms write `message.offline` outbox rows.
    webhooks: bool,
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
/// - `hook`: with webhooks on (`$8`), a `message.offline` outbox row per new message of a
///   private room, in the same statement as the message (so never one without the other). It
///   reads `heads`, so it runs after the room's row is locked: a room's outbox ids follow its
///   commit order.
const APPEND: &str = r#"
with k as (
    select t.i, t.r collate "C" as room_id, t.u collate "C" as user_id, t.nm as name,
           t.c collate "C" as cid, t.b as body, t.mt::jsonb as meta, m.seq as old_seq,
           m.ts as old_ts
      from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::text[])
           with ordinality as t(r, u, nm, c, b, mt, i)
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
    insert into rooms as r (id, last_seq, last_ts)
    select distinct on (room_id) room_id, c, $6 from fresh order by room_id
    on conflict (id) do update set last_seq = r.last_seq + excluded.last_seq,
                                   last_ts = excluded.last_ts
    returning id, last_seq, private
), seqs as (
    select f.i, f.room_id, f.user_id, f.name, f.cid, f.body, f.meta,
           h.last_seq - f.c + f.n as seq, h.private
      from fresh f join heads h on h.id = f.room_id
), ins as (
    insert into messages (room_id, seq, user_id, name, cid, body, meta, ts)
    select room_id, seq, user_id, name, cid, body, meta, $6 from seqs
), hook as (
    insert into webhook_events (okey, kind, room_id, seq, user_id, name, ts, created_at, next_at)
    select 'r:' || room_id, 'message.offline', room_id, seq, user_id, name, $6, $6, $6
      from seqs where private and $8::boolean order by room_id, seq
)
select i, seq, $6::bigint as ts, false as dup, private from seqs
union all
select i, old_seq, old_ts, true, false from k where old_seq is not null"#;

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
            webhooks: false,
        }
    }

    /// With webhooks on, appends to private rooms also write their outbox rows.
    pub fn with_webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
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
        let mut metas: Vec<Option<&str>> = Vec::with_capacity(n);
        for m in batch {
            rooms.push(m.room.as_str());
            users.push(m.from.as_str());
            names.push(m.name.as_str());
            cids.push(m.cid.as_str());
            bodies.push(m.body.as_str());
            metas.push(m.meta.as_ref().map(|m| m.as_json()));
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
            .bind(&metas)
            .bind(self.webhooks)
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
                    private: r.try_get(4).map_err(store_err)?,
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

    async fn heads(&self, room: &RoomId) -> Result<Heads, StoreError> {
        let mut lease = self.reads.lease().await?;
        let h: Option<(i64, i64)> =
            sqlx::query_as("select last_seq, last_rev from rooms where id = $1")
                .bind(room.as_str())
                .fetch_optional(lease.conn())
                .await
                .map_err(store_err)?;
        lease.done();
        let (seq, rev) = h.unwrap_or((0, 0));
        Ok(Heads {
            seq: seq as Seq,
            rev: rev as Rev,
        })
    }

    async fn change(
        &self,
        batch: &[NewChange],
        max_reaction_keys: u32,
    ) -> Result<Vec<ChangeOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut lease = self.writes.lease().await?;
        let conn = lease.conn();
        let mut tx = sqlx::Connection::begin(conn).await.map_err(store_err)?;
        // The rooms' rows, locked in room-id order like an append's, so changes and appends
        // on any node queue on the same locks in the same order and never deadlock.
        let mut ids: Vec<&str> = batch.iter().map(|c| c.room.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let locked: Vec<(String, i64)> = sqlx::query_as(
            "select id, last_rev from rooms where id = any($1::text[]) order by id for update",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_err)?;
        let mut revs: HashMap<String, (i64, bool)> =
            locked.into_iter().map(|(id, r)| (id, (r, false))).collect();
        let now = now_ms();
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            let Some((rev, touched)) = revs.get_mut(c.room.as_str()) else {
                out.push(ChangeOutcome::NotFound); // no room row: no message either
                continue;
            };
            let row = sqlx::query(concat!(
                "select ",
                message_columns!(),
                " from messages where room_id = $1 and seq = $2"
            ))
            .bind(c.room.as_str())
            .bind(clamp(c.seq))
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_err)?;
            let stored = row.map(|r| row_to_message(&c.room, &r)).transpose()?;
            let mine: Vec<String> = match (&c.op, &stored) {
                (ChangeOp::React { .. }, Some(_)) => sqlx::query_scalar(
                    "select key from reactions where room_id = $1 and seq = $2 and user_id = $3",
                )
                .bind(c.room.as_str())
                .bind(clamp(c.seq))
                .bind(c.by.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(store_err)?,
                _ => Vec::new(),
            };
            let mine = lifecycle::keys(mine);
            let (message, effect) =
                match lifecycle::decide(stored.as_ref(), &mine, c, max_reaction_keys, now) {
                    Decision::Answer(o) => {
                        out.push(o);
                        continue;
                    }
                    Decision::Apply { message, effect } => (message, effect),
                };
            *rev += 1;
            *touched = true;
            let u = lifecycle::commit(*message, c, *rev as Rev);
            let m = &u.message;
            sqlx::query(
                "update messages set body = $3, meta = $4::jsonb, rev = $5, edited_ts = $6,
                        deleted = $7, reactions = $8::jsonb, change = $9, changed_by = $10
                  where room_id = $1 and seq = $2",
            )
            .bind(c.room.as_str())
            .bind(clamp(c.seq))
            .bind(m.body.as_str())
            .bind(m.meta.as_ref().map(|m| m.as_json()))
            .bind(*rev)
            .bind(m.state.edited_ts)
            .bind(m.state.deleted)
            .bind(lifecycle::reactions_to_json(&m.state.reactions))
            .bind(u.change.as_str())
            .bind(c.by.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
            let q = match &effect {
                RowEffect::None => None,
                RowEffect::AddReaction(k) => Some((
                    "insert into reactions (room_id, seq, user_id, key) values ($1, $2, $3, $4)",
                    Some(k),
                )),
                RowEffect::RemoveReaction(k) => Some((
                    "delete from reactions
                      where room_id = $1 and seq = $2 and user_id = $3 and key = $4",
                    Some(k),
                )),
                RowEffect::ClearReactions => Some((
                    "delete from reactions where room_id = $1 and seq = $2",
                    None,
                )),
            };
            if let Some((sql, key)) = q {
                let q = sqlx::query(sql).bind(c.room.as_str()).bind(clamp(c.seq));
                let q = match key {
                    Some(k) => q.bind(c.by.as_str()).bind(k.as_str()),
                    None => q,
                };
                q.execute(&mut *tx).await.map_err(store_err)?;
            }
            out.push(ChangeOutcome::Changed(Box::new(u)));
        }
        for (id, (rev, touched)) in &revs {
            if *touched {
                sqlx::query("update rooms set last_rev = $2 where id = $1")
                    .bind(id)
                    .bind(*rev)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
            }
        }
        tx.commit().await.map_err(store_err)?;
        lease.done();
        Ok(out)
    }

    async fn changes(
        &self,
        room: &RoomId,
        after: Rev,
        max_seq: Seq,
        limit: u32,
    ) -> Result<(Vec<StoredUpdate>, Rev), StoreError> {
        let mut lease = self.reads.lease().await?;
        // One statement, so the room's revision and the changes come from one snapshot: a
        // caller that got fewer than `limit` has seen every change up to that revision.
        let rows = sqlx::query(concat!(
            "select h.last_rev, m.* from
               (select coalesce((select last_rev from rooms where id = $1), 0) as last_rev) h
               left join lateral (
                 select ",
            message_columns!(),
            ", change, changed_by from messages
                  where room_id = $1 and rev > 0 and rev > $2 and seq <= $3
                  order by rev limit $4
               ) m on true"
        ))
        .bind(room.as_str())
        .bind(clamp(after))
        .bind(clamp(max_seq))
        .bind(i64::from(limit))
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        let head: i64 = match rows.first() {
            Some(r) => r.try_get(0).map_err(store_err)?,
            None => 0,
        };
        let mut ups = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<Option<i64>, _>("seq")
                .map_err(store_err)?
                .is_some()
            {
                ups.push(row_to_update(room, r)?);
            }
        }
        Ok((ups, head.max(0) as Rev))
    }

    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut lease = self.reads.lease().await?;
        let rows = sqlx::query(concat!(
            "select ",
            message_columns!(),
            " from messages
              where room_id = $1 and seq > $2 order by seq limit $3"
        ))
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
        viewer: Option<&UserId>,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let mut lease = self.reads.lease().await?;
        let before = before
            .map(|b| b.min(i64::MAX as u64) as i64)
            .unwrap_or(i64::MAX);
        // One more than asked tells whether older messages exist.
        let rows = sqlx::query(concat!(
            "select ",
            message_columns!(),
            " from messages
              where room_id = $1 and seq < $2 order by seq desc limit $3"
        ))
        .bind(room.as_str())
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        let (mut msgs, more) = page(room, &rows, limit)?;
        // The viewer's own reactions, only where the page has any.
        if let (Some(v), Some((lo, hi))) = (viewer, reacted_range(&msgs)) {
            let mine: Vec<(i64, String)> = sqlx::query_as(
                "select seq, key from reactions
                  where room_id = $1 and user_id = $2 and seq between $3 and $4 order by key",
            )
            .bind(room.as_str())
            .bind(v.as_str())
            .bind(lo)
            .bind(hi)
            .fetch_all(lease.conn())
            .await
            .map_err(store_err)?;
            with_mine(&mut msgs, mine);
        }
        lease.done();
        Ok((msgs, more))
    }

    async fn rooms_of(&self, user: &UserId, limit: u32) -> Result<Vec<RoomSummary>, StoreError> {
        let mut lease = self.reads.lease().await?;
        // Both sources by the user's own index; a member room never written to has no
        // `rooms` row yet (head 0, no activity).
        let rows: Vec<super::SummaryRow> = sqlx::query_as(
            "with mine as (
                 select room_id from room_members where user_id = $1
                 union
                 select room_id from read_markers where user_id = $1
             )
             select mine.room_id, r.last_seq, m.seq, r.last_ts
               from mine
               left join rooms r on r.id = mine.room_id
               left join read_markers m on m.room_id = mine.room_id and m.user_id = $1
              order by r.last_ts desc nulls last, mine.room_id
              limit $2",
        )
        .bind(user.as_str())
        .bind(i64::from(limit))
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        summaries(rows)
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

    async fn members(&self, room: &RoomId, limit: u32) -> Result<Vec<UserId>, StoreError> {
        let mut lease = self.reads.lease().await?;
        let rows: Vec<String> = sqlx::query_scalar(
            "select user_id from room_members where room_id = $1 order by user_id limit $2",
        )
        .bind(room.as_str())
        .bind(i64::from(limit))
        .fetch_all(lease.conn())
        .await
        .map_err(store_err)?;
        lease.done();
        super::user_ids(rows)
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

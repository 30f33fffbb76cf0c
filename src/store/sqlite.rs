//! The embedded SQLite store, the default when no database URL is set: `cargo run` works on a
//! machine with nothing installed. Single node only. Same guarantees as PostgreSQL: a batch is
//! one `BEGIN IMMEDIATE` transaction (SQLite's single writer lock), seqs come from the room
//! row's counter, cids are unique per (room, user) forever.

use std::collections::HashMap;

use async_trait::async_trait;
use chatty_actors::lifecycle::{self, Decision, RowEffect};
use chatty_actors::{
    Appended, ChangeOp, ChangeOutcome, Heads, JoinInfo, MessageStore, NewChange, NewMessage, Rev,
    RoomId, RoomRole, RoomSummary, Seq, StoreError, StoredMessage, StoredUpdate, UserId,
};
use sqlx::sqlite::SqlitePool;

use super::postgres::now_ms;
use super::{
    join_info, page, reacted_range, row_to_message, row_to_update, store_err, summaries, with_mine,
};

/// The columns `row_to_message` reads (a macro, so statements stay `&'static` strings).
macro_rules! message_columns {
    () => {
        "seq, user_id, name, cid, body, ts, meta, rev, edited_ts, deleted, reactions"
    };
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Webhooks are on: appends to private rooms write `message.offline` outbox rows.
    webhooks: bool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            webhooks: false,
        }
    }

    /// With webhooks on, appends to private rooms also write their outbox rows.
    pub fn with_webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn clamp(seq: Seq) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads, then
        // writes, can fail to upgrade its lock under concurrency.
        let mut tx = self
            .pool
            .begin_with("begin immediate")
            .await
            .map_err(store_err)?;
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut heads: HashMap<&str, (i64, i64, bool)> = HashMap::with_capacity(rooms.len());
        for room in &rooms {
            sqlx::query("insert or ignore into rooms (id) values (?1)")
                .bind(*room)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            let (head, private): (i64, bool) =
                sqlx::query_as("select last_seq, private from rooms where id = ?1")
                    .bind(*room)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_err)?;
            heads.insert(room, (head, head, private));
        }
        let ts = now_ms();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let existing: Option<(i64, i64)> = sqlx::query_as(
                "select seq, ts from messages where room_id = ?1 and user_id = ?2 and cid = ?3",
            )
            .bind(m.room.as_str())
            .bind(m.from.as_str())
            .bind(m.cid.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_err)?;
            if let Some((seq, ts)) = existing {
                out.push(Appended {
                    seq: seq as Seq,
                    ts,
                    duplicate: true,
                    private: false,
                });
                continue;
            }
            let head = heads
                .get_mut(m.room.as_str())
                .ok_or_else(|| StoreError::Other("room row missing after insert".into()))?;
            head.1 += 1;
            sqlx::query(
                "insert into messages (room_id, seq, user_id, name, cid, body, ts, meta)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(m.room.as_str())
            .bind(head.1)
            .bind(m.from.as_str())
            .bind(m.name.as_str())
            .bind(m.cid.as_str())
            .bind(m.body.as_str())
            .bind(ts)
            .bind(m.meta.as_ref().map(|m| m.as_json()))
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
            let private = head.2;
            if private && self.webhooks {
                // The outbox row in the message's transaction (see migrations/postgres).
                sqlx::query(
                    "insert into webhook_events
                         (okey, kind, room_id, seq, user_id, name, ts, created_at, next_at)
                     values ('r:' || ?1, 'message.offline', ?1, ?2, ?3, ?4, ?5, ?5, ?5)",
                )
                .bind(m.room.as_str())
                .bind(head.1)
                .bind(m.from.as_str())
                .bind(m.name.as_str())
                .bind(ts)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            }
            out.push(Appended {
                seq: head.1 as Seq,
                ts,
                duplicate: false,
                private,
            });
        }
        for (room, (before, after, _)) in &heads {
            if before != after {
                sqlx::query("update rooms set last_seq = ?1, last_ts = ?3 where id = ?2")
                    .bind(after)
                    .bind(*room)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
            }
        }
        tx.commit().await.map_err(store_err)?;
        Ok(out)
    }

    async fn heads(&self, room: &RoomId) -> Result<Heads, StoreError> {
        let h: Option<(i64, i64)> =
            sqlx::query_as("select last_seq, last_rev from rooms where id = ?1")
                .bind(room.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_err)?;
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
        // The write lock up front, as for an append: the revisions are read and advanced in it.
        let mut tx = self
            .pool
            .begin_with("begin immediate")
            .await
            .map_err(store_err)?;
        let mut revs: HashMap<&str, (i64, bool)> = HashMap::new();
        let now = now_ms();
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            let room = c.room.as_str();
            if !revs.contains_key(room) {
                let rev: Option<i64> =
                    sqlx::query_scalar("select last_rev from rooms where id = ?1")
                        .bind(room)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(store_err)?;
                match rev {
                    Some(r) => revs.insert(room, (r, false)),
                    None => {
                        out.push(ChangeOutcome::NotFound); // no room row: no message either
                        continue;
                    }
                };
            }
            let row = sqlx::query(concat!(
                "select ",
                message_columns!(),
                " from messages where room_id = ?1 and seq = ?2"
            ))
            .bind(room)
            .bind(clamp(c.seq))
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_err)?;
            let stored = row.map(|r| row_to_message(&c.room, &r)).transpose()?;
            let mine: Vec<String> = match (&c.op, &stored) {
                (ChangeOp::React { .. }, Some(_)) => sqlx::query_scalar(
                    "select key from reactions where room_id = ?1 and seq = ?2 and user_id = ?3",
                )
                .bind(room)
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
            let Some((rev, touched)) = revs.get_mut(room) else {
                continue;
            };
            *rev += 1;
            *touched = true;
            let u = lifecycle::commit(*message, c, *rev as Rev);
            let m = &u.message;
            sqlx::query(
                "update messages set body = ?3, meta = ?4, rev = ?5, edited_ts = ?6,
                        deleted = ?7, reactions = ?8, change = ?9, changed_by = ?10
                  where room_id = ?1 and seq = ?2",
            )
            .bind(room)
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
                    "insert into reactions (room_id, seq, user_id, key) values (?1, ?2, ?3, ?4)",
                    Some(k),
                )),
                RowEffect::RemoveReaction(k) => Some((
                    "delete from reactions
                      where room_id = ?1 and seq = ?2 and user_id = ?3 and key = ?4",
                    Some(k),
                )),
                RowEffect::ClearReactions => Some((
                    "delete from reactions where room_id = ?1 and seq = ?2",
                    None,
                )),
            };
            if let Some((sql, key)) = q {
                let q = sqlx::query(sql).bind(room).bind(clamp(c.seq));
                let q = match key {
                    Some(k) => q.bind(c.by.as_str()).bind(k.as_str()),
                    None => q,
                };
                q.execute(&mut *tx).await.map_err(store_err)?;
            }
            out.push(ChangeOutcome::Changed(Box::new(u)));
        }
        for (room, (rev, touched)) in &revs {
            if *touched {
                sqlx::query("update rooms set last_rev = ?2 where id = ?1")
                    .bind(*room)
                    .bind(*rev)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
            }
        }
        tx.commit().await.map_err(store_err)?;
        Ok(out)
    }

    async fn changes(
        &self,
        room: &RoomId,
        after: Rev,
        max_seq: Seq,
        limit: u32,
    ) -> Result<(Vec<StoredUpdate>, Rev), StoreError> {
        // One read transaction: the revision and the changes from one snapshot.
        let mut tx = self.pool.begin().await.map_err(store_err)?;
        let head: Option<i64> = sqlx::query_scalar("select last_rev from rooms where id = ?1")
            .bind(room.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_err)?;
        let rows = sqlx::query(concat!(
            "select ",
            message_columns!(),
            ", change, changed_by from messages
              where room_id = ?1 and rev > 0 and rev > ?2 and seq <= ?3 order by rev limit ?4"
        ))
        .bind(room.as_str())
        .bind(clamp(after))
        .bind(clamp(max_seq))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_err)?;
        tx.commit().await.map_err(store_err)?;
        let ups = rows
            .iter()
            .map(|r| row_to_update(room, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ups, head.unwrap_or(0).max(0) as Rev))
    }

    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(concat!(
            "select ",
            message_columns!(),
            " from messages where room_id = ?1 and seq > ?2 order by seq limit ?3"
        ))
        .bind(room.as_str())
        .bind(clamp(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        rows.iter().map(|r| row_to_message(room, r)).collect()
    }

    async fn before(
        &self,
        room: &RoomId,
        before: Option<Seq>,
        limit: u32,
        viewer: Option<&UserId>,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let rows = sqlx::query(concat!(
            "select ",
            message_columns!(),
            " from messages where room_id = ?1 and seq < ?2 order by seq desc limit ?3"
        ))
        .bind(room.as_str())
        .bind(before.map(clamp).unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        let (mut msgs, more) = page(room, &rows, limit)?;
        if let (Some(v), Some((lo, hi))) = (viewer, reacted_range(&msgs)) {
            let mine: Vec<(i64, String)> = sqlx::query_as(
                "select seq, key from reactions
                  where room_id = ?1 and user_id = ?2 and seq between ?3 and ?4 order by key",
            )
            .bind(room.as_str())
            .bind(v.as_str())
            .bind(lo)
            .bind(hi)
            .fetch_all(&self.pool)
            .await
            .map_err(store_err)?;
            with_mine(&mut msgs, mine);
        }
        Ok((msgs, more))
    }

    async fn rooms_of(&self, user: &UserId, limit: u32) -> Result<Vec<RoomSummary>, StoreError> {
        let rows: Vec<super::SummaryRow> = sqlx::query_as(
            "with mine as (
                 select room_id from room_members where user_id = ?1
                 union
                 select room_id from read_markers where user_id = ?1
             )
             select mine.room_id, r.last_seq, m.seq, r.last_ts
               from mine
               left join rooms r on r.id = mine.room_id
               left join read_markers m on m.room_id = mine.room_id and m.user_id = ?1
              order by r.last_ts is null, r.last_ts desc, mine.room_id
              limit ?2",
        )
        .bind(user.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        summaries(rows)
    }

    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError> {
        let (public, role, banned, read): (bool, Option<String>, bool, i64) = sqlx::query_as(
            "select coalesce((select not private from rooms where id = ?1), 1),
                    (select role from room_members where room_id = ?1 and user_id = ?2),
                    exists (select 1 from room_bans where room_id = ?1 and user_id = ?2),
                    coalesce((select seq from read_markers
                               where room_id = ?1 and user_id = ?2), 0)",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(store_err)?;
        join_info(public, role.as_deref(), banned, read)
    }

    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "insert into read_markers (room_id, user_id, seq)
             values (?1, ?2, min(?3, coalesce((select last_seq from rooms where id = ?1), 0)))
             on conflict (room_id, user_id)
               do update set seq = max(read_markers.seq, excluded.seq)
             returning seq",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .bind(clamp(seq))
        .fetch_one(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(v as Seq)
    }

    async fn set_private(&self, room: &RoomId, private: bool) -> Result<(), StoreError> {
        sqlx::query(
            "insert into rooms (id, private) values (?1, ?2)
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
        let sql = match role {
            Some(_) => {
                "insert into room_members (room_id, user_id, role) values (?1, ?2, ?3)
                 on conflict (room_id, user_id) do update set role = excluded.role"
            }
            None => {
                "insert or ignore into room_members (room_id, user_id, role) values (?1, ?2, ?3)"
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
        let sql = "delete from room_members where room_id = ?1 and user_id = ?2";
        self.exec_room_user(sql, room, user).await.map(drop)
    }

    async fn members(&self, room: &RoomId, limit: u32) -> Result<Vec<UserId>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "select user_id from room_members where room_id = ?1 order by user_id limit ?2",
        )
        .bind(room.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        super::user_ids(rows)
    }

    async fn ban(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let sql = "insert or ignore into room_bans (room_id, user_id) values (?1, ?2)";
        self.exec_room_user(sql, room, user).await.map(drop)
    }

    async fn unban(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError> {
        let sql = "delete from room_bans where room_id = ?1 and user_id = ?2";
        Ok(self.exec_room_user(sql, room, user).await? > 0)
    }
}

impl SqliteStore {
    /// Run one of the rare statements about a user in a room (?1, ?2); the rows it touched.
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

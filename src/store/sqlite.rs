//! The embedded SQLite store, the default when no database URL is set: `cargo run` works on a
//! machine with nothing installed. Single node only. Same guarantees as PostgreSQL: a batch is
//! one `BEGIN IMMEDIATE` transaction (SQLite's single writer lock), seqs come from the room
//! row's counter, cids are unique per (room, user) forever.

use std::collections::HashMap;

use async_trait::async_trait;
use chatty_actors::{
    Appended, JoinInfo, MessageStore, NewMessage, RoomId, RoomRole, Seq, StoreError, StoredMessage,
    UserId,
};
use sqlx::sqlite::SqlitePool;

use super::postgres::now_ms;
use super::{join_info, page, row_to_message, store_err};

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
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
        let mut heads: HashMap<&str, (i64, i64)> = HashMap::with_capacity(rooms.len());
        for room in &rooms {
            sqlx::query("insert or ignore into rooms (id) values (?1)")
                .bind(*room)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            let head: i64 = sqlx::query_scalar("select last_seq from rooms where id = ?1")
                .bind(*room)
                .fetch_one(&mut *tx)
                .await
                .map_err(store_err)?;
            heads.insert(room, (head, head));
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
                });
                continue;
            }
            let head = heads
                .get_mut(m.room.as_str())
                .ok_or_else(|| StoreError::Other("room row missing after insert".into()))?;
            head.1 += 1;
            sqlx::query(
                "insert into messages (room_id, seq, user_id, name, cid, body, ts)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(m.room.as_str())
            .bind(head.1)
            .bind(m.from.as_str())
            .bind(m.name.as_str())
            .bind(m.cid.as_str())
            .bind(m.body.as_str())
            .bind(ts)
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
            out.push(Appended {
                seq: head.1 as Seq,
                ts,
                duplicate: false,
            });
        }
        for (room, (before, after)) in &heads {
            if before != after {
                sqlx::query("update rooms set last_seq = ?1 where id = ?2")
                    .bind(after)
                    .bind(*room)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
            }
        }
        tx.commit().await.map_err(store_err)?;
        Ok(out)
    }

    async fn head(&self, room: &RoomId) -> Result<Seq, StoreError> {
        let h: Option<i64> = sqlx::query_scalar("select last_seq from rooms where id = ?1")
            .bind(room.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(h.unwrap_or(0) as Seq)
    }

    async fn after(
        &self,
        room: &RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(
            "select seq, user_id, name, cid, body, ts from messages
              where room_id = ?1 and seq > ?2 order by seq limit ?3",
        )
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
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let rows = sqlx::query(
            "select seq, user_id, name, cid, body, ts from messages
              where room_id = ?1 and seq < ?2 order by seq desc limit ?3",
        )
        .bind(room.as_str())
        .bind(before.map(clamp).unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        page(room, &rows, limit)
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

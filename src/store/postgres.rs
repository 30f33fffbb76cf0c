//! PostgreSQL store. A batch is one transaction of three statements whatever its size: find
//! the cids already stored, advance every room counter at once (creating rooms on the way,
//! locking them in room-id order), insert every new message with one `UNNEST`.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chatty_actors::{
    Appended, JoinInfo, MessageStore, NewMessage, RoomId, Seq, StoreError, StoredMessage, UserId,
};
use sqlx::postgres::PgPool;
use sqlx::Row;

use super::{page, row_to_message, store_err};

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
        let mut tx = self.pool.begin().await.map_err(store_err)?;
        // 1. Which cids are stored already: they keep their original seq and are not inserted.
        // LATERAL keeps this an index lookup per key: a plain join lets the planner pick a hash
        // join over a sequential scan of `messages` whenever its statistics are stale (a young,
        // fast-growing table), and every batch then reads the whole table. A concurrent insert
        // of the same key that this read misses makes step 3 fail on the unique key, and the
        // Writer's retry then finds it here.
        let (q_room, q_user, q_cid): (Vec<&str>, Vec<&str>, Vec<&str>) = batch
            .iter()
            .map(|m| (m.room.as_str(), m.from.as_str(), m.cid.as_str()))
            .fold((vec![], vec![], vec![]), |mut acc, (r, u, c)| {
                acc.0.push(r);
                acc.1.push(u);
                acc.2.push(c);
                acc
            });
        // The original (seq, ts) of each message of the batch already stored, by batch index:
        // `with ordinality` numbers the keys, so no key strings are rebuilt to look them up.
        let mut existing: Vec<Option<(i64, i64)>> = vec![None; batch.len()];
        let rows = sqlx::query(
            "select k.i, m.seq, m.ts
               from unnest($1::text[], $2::text[], $3::text[])
                      with ordinality as k(room_id, user_id, cid, i)
               cross join lateral (
                 select seq, ts from messages
                  where room_id = k.room_id and user_id = k.user_id and cid = k.cid
               ) m",
        )
        .bind(&q_room)
        .bind(&q_user)
        .bind(&q_cid)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_err)?;
        for r in rows {
            let i = r.get::<i64, _>(0) as usize - 1;
            if let Some(slot) = existing.get_mut(i) {
                *slot = Some((r.get::<i64, _>(1), r.get::<i64, _>(2)));
            }
        }

        // 2. Count the new messages per room and advance every counter in one statement. The
        // rows are taken in room-id order, so concurrent writers (on any node) queue on the
        // same locks in the same order and never deadlock; the counter and the messages commit
        // together, so seq stays gap-free.
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        let mut new_rows = 0usize;
        for (m, dup) in batch.iter().zip(&existing) {
            if dup.is_none() {
                *counts.entry(m.room.as_str()).or_default() += 1;
                new_rows += 1;
            }
        }
        let mut next: HashMap<String, i64> = HashMap::with_capacity(counts.len());
        if new_rows > 0 {
            let (ids, adds): (Vec<&str>, Vec<i64>) = counts.iter().map(|(r, n)| (*r, *n)).unzip();
            let heads = sqlx::query(
                "insert into rooms (id, last_seq)
                 select * from unnest($1::text[], $2::bigint[]) order by 1
                 on conflict (id) do update set last_seq = rooms.last_seq + excluded.last_seq
                 returning id, last_seq",
            )
            .bind(&ids)
            .bind(&adds)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_err)?;
            for r in heads {
                let (id, head): (String, i64) = (r.get(0), r.get(1));
                // The first seq of this batch in the room.
                let n = counts.get(id.as_str()).copied().unwrap_or(0);
                next.insert(id, head - n);
            }
        }

        // 3. Assign seqs in batch order and insert every new message with one statement: the
        // arrays are one bind parameter each, so the 65,535-parameter limit never applies.
        let ts = now_ms();
        let mut out = Vec::with_capacity(batch.len());
        let mut ins_room = Vec::with_capacity(new_rows);
        let mut ins_seq = Vec::with_capacity(new_rows);
        let mut ins_user = Vec::with_capacity(new_rows);
        let mut ins_name = Vec::with_capacity(new_rows);
        let mut ins_cid = Vec::with_capacity(new_rows);
        let mut ins_body = Vec::with_capacity(new_rows);
        for (m, dup) in batch.iter().zip(&existing) {
            if let Some((seq, ts)) = *dup {
                out.push(Appended {
                    seq: seq as Seq,
                    ts,
                    duplicate: true,
                });
                continue;
            }
            let last = next
                .get_mut(m.room.as_str())
                .ok_or_else(|| StoreError::Other("room counter missing after update".into()))?;
            *last += 1;
            out.push(Appended {
                seq: *last as Seq,
                ts,
                duplicate: false,
            });
            ins_room.push(m.room.as_str());
            ins_seq.push(*last);
            ins_user.push(m.from.as_str());
            ins_name.push(m.name.as_str());
            ins_cid.push(m.cid.as_str());
            ins_body.push(m.body.as_str());
        }
        if new_rows > 0 {
            sqlx::query(
                "insert into messages (room_id, seq, user_id, name, cid, body, ts)
                 select r, s, u, n, c, b, $7
                   from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                     as t(r, s, u, n, c, b)",
            )
            .bind(&ins_room)
            .bind(&ins_seq)
            .bind(&ins_user)
            .bind(&ins_name)
            .bind(&ins_cid)
            .bind(&ins_body)
            .bind(ts)
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)?;
        Ok(out)
    }

    async fn head(&self, room: &RoomId) -> Result<Seq, StoreError> {
        let h: Option<i64> = sqlx::query_scalar("select last_seq from rooms where id = $1")
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
              where room_id = $1 and seq > $2 order by seq limit $3",
        )
        .bind(room.as_str())
        .bind(after.min(i64::MAX as u64) as i64)
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
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        page(room, &rows, limit)
    }

    async fn join_info(&self, room: &RoomId, user: &UserId) -> Result<JoinInfo, StoreError> {
        let row = sqlx::query(
            "select coalesce((select not r.private
                                 or exists (select 1 from room_members m
                                             where m.room_id = $1 and m.user_id = $2)
                                from rooms r where r.id = $1), true) as allowed,
                    coalesce((select seq from read_markers
                               where room_id = $1 and user_id = $2), 0) as read",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(JoinInfo {
            allowed: row.get::<bool, _>(0),
            read: row.get::<i64, _>(1) as Seq,
        })
    }

    async fn set_read(&self, room: &RoomId, user: &UserId, seq: Seq) -> Result<Seq, StoreError> {
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
        .fetch_one(&self.pool)
        .await
        .map_err(store_err)?;
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

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        sqlx::query(
            "insert into room_members (room_id, user_id) values ($1, $2) on conflict do nothing",
        )
        .bind(room.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        sqlx::query("delete from room_members where room_id = $1 and user_id = $2")
            .bind(room.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

//! Cluster-wide presence in Redis, written in proportion to change.
//!
//! Keys (one primary, as ElastiCache's replication group provides; a room's own keys share a
//! hash tag, but the scripts also touch the node keys):
//! - `chatty:{room}:pusers`: HASH `node|user` → display name, the room's entries;
//! - `chatty:{room}:pcount`: HASH `node` → how many entries that node has in the room;
//! - `chatty:pnodes`: ZSET node → registration expiry (ms, Redis' own clock);
//! - `chatty:pnode:<node>`: SET of the rooms where the node has entries (what a purge visits);
//! - `chatty:pgen`: a counter bumped by every change, so "did anything change?" is one read.
//!
//! A node registers with one call per heartbeat, whatever its size. An entry is written once,
//! when it appears, and deleted when it goes; an `add` from a node whose registration lapsed is
//! refused, so a purge can never miss it. Reads skip the entries of lapsed nodes, so a node
//! that died silently vanishes from every `list` at once; the next live node's heartbeat then
//! purges its entries for good. A node the store has lost (first beat, Redis restarted empty,
//! too slow and purged) writes its whole presence again from the node's index.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatty_actors::{
    Beat, DisplayName, PresenceEntry, PresenceItem, PresenceStore, RoomId, StoreError, UserId,
};
use prometheus::IntCounter;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{Mutex, RwLock};

const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Dead nodes purged per heartbeat (the rest wait for the next beat).
const PURGE_PER_BEAT: usize = 8;

const NODES: &str = "chatty:pnodes";
const GEN: &str = "chatty:pgen";

/// Redis' clock in ms, so nodes with skewed clocks agree on who has lapsed.
const NOW: &str = r#"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(node)
  local s = redis.call('ZSCORE', KEYS[3], node)
  return s and tonumber(s) >= now()
end
"#;

/// KEYS: pusers, pcount, pnodes, node's room set, gen. ARGV: node, field, name, room.
/// 0 when the node is not registered (its next heartbeat rewrites its entries).
const ADD: &str = r#"
if not alive(ARGV[1]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[4])
if redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
redis.call('INCR', KEYS[5])
return 1
"#;

/// KEYS: pusers, pcount, pnodes, node's room set, gen. ARGV: node, field, room.
const REMOVE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[3])
end
redis.call('INCR', KEYS[5])
return 1
"#;

/// KEYS: pusers, pcount, pnodes. The entries of live nodes, as a flat
/// field/value list.
const LIST: &str = r#"
local flat = redis.call('HGETALL', KEYS[1])
local live, out = {}, {}
for i = 1, #flat, 2 do
  local node = string.match(flat[i], '^(.-)|')
  if node then
    if live[node] == nil then live[node] = alive(node) or false end
    if live[node] then
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
end
return out
"#;

/// KEYS: pusers, pcount, pnodes, -, gen. ARGV: node, force. Drop the node's entries from one
/// room unless it has come back (`force`: this node clearing its own earlier life).
const PURGE: &str = r#"
if ARGV[2] ~= '1' and alive(ARGV[1]) then return -1 end
local prefix = ARGV[1] .. '|'
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], f)
    n = n + 1
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[5]) end
return n
"#;

/// KEYS: -, -, pnodes, node's room set. ARGV: node, force. Forget a purged node.
const FORGET: &str = r#"
if ARGV[2] ~= '1' and alive(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
"#;

/// KEYS: -, -, pnodes, -, gen. ARGV: node, ttl (ms), most dead to return.
/// Returns {was registered, generation, dead nodes...}.
const HEARTBEAT: &str = r#"
local t = now()
local was = alive(ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[3], t + tonumber(ARGV[2]), ARGV[1])
local gen = tonumber(redis.call('GET', KEYS[5]) or '0')
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. t, 'LIMIT', 0, tonumber(ARGV[3]))
return {was, gen, dead}
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

fn room_keys(room: &RoomId) -> (String, String) {
    // The hash tag keeps a room's keys in one slot.
    let r = room.as_str();
    (
        format!("chatty:{{{r}}}:pusers"),
        format!("chatty:{{{r}}}:pcount"),
    )
}

fn rooms_key(node: &str) -> String {
    format!("chatty:pnode:{node}")
}

pub struct RedisPresence {
    conn: ConnectionManager,
    node: Arc<str>,
    ttl: Duration,
    add: Script,
    remove: Script,
    list: Script,
    purge: Script,
    forget: Script,
    heartbeat: Script,
    /// The store does not hold this node's entries (yet, or any more): the next beat writes
    /// them all. Cleared only once a rewrite has succeeded.
    owed: AtomicBool,
    /// Not yet cleared what an earlier process with this node id may have left.
    first: AtomicBool,
    /// Adds and removes hold it shared; a rewrite holds it alone, so a remove that raced
    /// the rewrite's snapshot of the index lands after the rewrite, not before it.
    writes: RwLock<()>,
    beats: Mutex<()>,
    errors: IntCounter,
}

impl RedisPresence {
    /// Connect lazily: the manager reconnects by itself, and a node starts even while Redis
    /// is down (presence then stays local until it returns).
    pub async fn connect(
        url: &str,
        node: Arc<str>,
        ttl: Duration,
        errors: IntCounter,
    ) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_connection_timeout(Some(OP_TIMEOUT));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Arc::new(Self {
            conn,
            node,
            ttl,
            add: script(ADD),
            remove: script(REMOVE),
            list: script(LIST),
            purge: script(PURGE),
            forget: script(FORGET),
            heartbeat: script(HEARTBEAT),
            owed: AtomicBool::new(true),
            first: AtomicBool::new(true),
            writes: RwLock::new(()),
            beats: Mutex::new(()),
            errors,
        }))
    }

    fn field(&self, user: &UserId) -> String {
        format!("{}|{}", self.node, user.as_str())
    }

    fn fail(&self, e: redis::RedisError) -> StoreError {
        self.errors.inc();
        StoreError::Unavailable(chatty_actors::Cause::of(e))
    }

    /// The five keys every script takes, in order: a script that touches no room gets
    /// placeholders for the room's two.
    fn keys<'a>(
        &self,
        script: &'a Script,
        room: Option<&RoomId>,
        node: &str,
    ) -> redis::ScriptInvocation<'a> {
        let (users, count) = room.map_or(("-".into(), "-".into()), room_keys);
        let mut inv = script.prepare_invoke();
        inv.key(users)
            .key(count)
            .key(NODES)
            .key(rooms_key(node))
            .key(GEN);
        inv
    }

    /// This node's ADD of one entry (a join's, or one of a rewrite's).
    fn add_entry<'a>(
        &'a self,
        room: &RoomId,
        user: &UserId,
        name: &DisplayName,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.keys(&self.add, Some(room), &self.node);
        inv.arg(&*self.node)
            .arg(self.field(user))
            .arg(name.as_str())
            .arg(room.as_str());
        inv
    }

    /// Drop every entry of `node` (a lapsed node; or, forced, this node's earlier life) and
    /// forget it. Returns the rooms that lost entries.
    async fn purge_node(&self, node: &str, force: bool) -> Result<Vec<RoomId>, StoreError> {
        let mut conn = self.conn.clone();
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(rooms_key(node))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let rooms: Vec<RoomId> = rooms.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
        let force = if force { "1" } else { "0" };
        let mut purged = Vec::new();
        if !rooms.is_empty() {
            self.load(&self.purge).await?;
            let mut pipe = redis::pipe();
            for room in &rooms {
                let mut inv = self.keys(&self.purge, Some(room), node);
                inv.arg(node).arg(force);
                pipe.invoke_script(&inv);
            }
            let counts: Vec<i64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e))?;
            if counts.contains(&-1) {
                return Ok(Vec::new()); // it came back: its entries are live again
            }
            purged = rooms
                .into_iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(r, _)| r)
                .collect();
        }
        let mut inv = self.keys(&self.forget, None, node);
        inv.arg(node).arg(force);
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(purged)
    }

    /// Write this node's whole presence (after registering). Holds off adds and removes.
    /// Returns the rooms written.
    async fn rewrite(
        &self,
        entries: &(dyn Fn() -> Vec<PresenceItem> + Send + Sync),
    ) -> Result<Vec<RoomId>, StoreError> {
        let _alone = self.writes.write().await;
        let entries = entries();
        if !entries.is_empty() {
            self.load(&self.add).await?;
            let mut pipe = redis::pipe();
            for (room, user, name) in &entries {
                pipe.invoke_script(&self.add_entry(room, user, name))
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(|e| self.fail(e))?;
        }
        self.owed.store(false, Ordering::Release);
        let mut rooms: Vec<RoomId> = entries.into_iter().map(|(room, _, _)| room).collect();
        rooms.dedup();
        Ok(rooms)
    }

    /// EVALSHA inside a pipeline does not fall back to EVAL: load the script first.
    async fn load(&self, script: &Script) -> Result<(), StoreError> {
        script
            .prepare_invoke()
            .load_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &UserId,
        name: &DisplayName,
    ) -> Result<(), StoreError> {
        let _shared = self.writes.read().await;
        let written: i64 = self
            .add_entry(room, user, name)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        if written == 0 {
            // Not registered: the next beat registers and writes this entry with the rest.
            self.owed.store(true, Ordering::Release);
            return Err(StoreError::Unavailable(
                "presence: this node is not registered yet".into(),
            ));
        }
        Ok(())
    }

    async fn remove(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let _shared = self.writes.read().await;
        let mut inv = self.keys(&self.remove, Some(room), &self.node);
        inv.arg(&*self.node)
            .arg(self.field(user))
            .arg(room.as_str());
        inv.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        entries: &(dyn Fn() -> Vec<PresenceItem> + Send + Sync),
    ) -> Result<Beat, StoreError> {
        let _one = self.beats.lock().await;
        let mut beat = Beat::default();
        if self.first.load(Ordering::Acquire) {
            // An earlier process with this id may have died with entries that this one
            // does not have: clear them before registering.
            beat.changed = self.purge_node(&self.node, true).await?;
            self.first.store(false, Ordering::Release);
        }
        let mut inv = self.keys(&self.heartbeat, None, &self.node);
        inv.arg(&*self.node)
            .arg(self.ttl.as_millis() as u64)
            .arg(PURGE_PER_BEAT);
        let (was, generation, dead): (i64, u64, Vec<String>) = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        beat.generation = generation;
        if was == 0 {
            self.owed.store(true, Ordering::Release);
        }
        if self.owed.load(Ordering::Acquire) {
            beat.changed.extend(self.rewrite(entries).await?);
            beat.rejoined = true;
        }
        for node in dead {
            let rooms = self.purge_node(&node, false).await?;
            beat.purged += rooms.len();
            beat.changed.extend(rooms);
        }
        beat.changed.sort();
        beat.changed.dedup();
        Ok(beat)
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, StoreError> {
        let flat: Vec<String> = self
            .keys(&self.list, Some(room), &self.node)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        // A user present on several nodes counts once.
        let mut out: BTreeMap<UserId, DisplayName> = BTreeMap::new();
        for pair in flat.chunks(2) {
            let [field, name] = pair else { continue };
            let Some((_, user)) = field.split_once('|') else {
                continue;
            };
            if let Ok(user) = UserId::parse(user) {
                out.insert(user, DisplayName::sanitize(name));
            }
        }
        Ok(out
            .into_iter()
            .map(|(user, name)| PresenceEntry { user, name })
            .collect())
    }
}

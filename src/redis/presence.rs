//! Cluster-wide presence in Redis. Redis 7.0 has no per-field TTL, so each room has a ZSET of
//! entry expiry times and a HASH of entries (field `node|user`, value the display name),
//! changed together by Lua scripts so they never disagree. Each node refreshes its own entries
//! on a heartbeat; a node that dies stops refreshing, and its entries are dropped by the next
//! `list` after they expire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chatty_actors::{DisplayName, PresenceEntry, PresenceStore, RoomId, StoreError, UserId};
use prometheus::IntCounter;
use redis::aio::ConnectionManager;
use redis::Script;

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: exp zset, users hash. ARGV: field, name, expiry (ms), key ttl (ms).
const ADD: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: exp zset, users hash. ARGV: field.
const REMOVE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: exp zset, users hash. ARGV: now (ms). Drops expired entries, returns the rest as a
/// flat field/value list.
const LIST: &str = r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, f in ipairs(expired) do
  redis.call('HDEL', KEYS[2], f)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"#;

fn keys(room: &RoomId) -> (String, String) {
    // The hash tag keeps a room's two keys in one slot on a Redis Cluster.
    let r = room.as_str();
    (
        format!("chatty:{{{r}}}:pexp"),
        format!("chatty:{{{r}}}:pusers"),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct RedisPresence {
    conn: ConnectionManager,
    node: Arc<str>,
    ttl: Duration,
    add: Script,
    remove: Script,
    list: Script,
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
            add: Script::new(ADD),
            remove: Script::new(REMOVE),
            list: Script::new(LIST),
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
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &UserId,
        name: &DisplayName,
    ) -> Result<(), StoreError> {
        let (exp, users) = keys(room);
        let ttl = self.ttl.as_millis() as u64;
        self.add
            .key(exp)
            .key(users)
            .arg(self.field(user))
            .arg(name.as_str())
            .arg(now_ms() + ttl)
            .arg(ttl * 2)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn remove(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let (exp, users) = keys(room);
        self.remove
            .key(exp)
            .key(users)
            .arg(self.field(user))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn refresh(&self, entries: &[(RoomId, UserId, DisplayName)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl.as_millis() as u64;
        let expiry = now_ms() + ttl;
        // One pipeline for the whole heartbeat; each entry is the same atomic script.
        let mut pipe = redis::pipe();
        for (room, user, name) in entries {
            let (exp, users) = keys(room);
            pipe.invoke_script(
                self.add
                    .key(exp)
                    .key(users)
                    .arg(self.field(user))
                    .arg(name.as_str())
                    .arg(expiry)
                    .arg(ttl * 2),
            )
            .ignore();
        }
        // Load the script first: EVALSHA inside a pipeline does not fall back to EVAL.
        let mut conn = self.conn.clone();
        self.add
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceEntry>, StoreError> {
        let (exp, users) = keys(room);
        let flat: Vec<String> = self
            .list
            .key(exp)
            .key(users)
            .arg(now_ms())
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

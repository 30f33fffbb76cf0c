//! Who is online anywhere, for webhooks: `message.offline` names the members with no socket on
//! any node, and `user.offline` is recorded when a user's last socket anywhere went and they
//! did not come back within the presence grace.
//!
//! Each node counts a user online from their first socket on it until the grace after their
//! last one ends. In cluster mode it mirrors that set in Redis (`chatty:online:<db>:<node>`,
//! one namespace per database, so per deployment) and asks
//! the sets of the live nodes (those registered in presence's `chatty:pnodes`), so a node that
//! died stops counting at once. The grace ends with one script that takes the user out of this
//! node's set and looks at every other live node's in the same atomic step, so when two nodes
//! lose a user's last sockets at the same time exactly one of them sees "nowhere" and records
//! the event.
//!
//! A node that dies takes its users' grace timers with it. Its set is ignored at once (it is
//! no longer live), and once its registration has been lapsed for `dead_margin` the next
//! refresh of any node claims the set in one script: it deletes the set and returns the users
//! no live node has, for which that node records `user.offline`. One script, so exactly one
//! node claims a dead node's set.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chatty_actors::{SocketWatch, StoreError, UserId};
use parking_lot::Mutex;
use prometheus::IntCounter;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::outbox::Outbox;

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's set outlives its last renewal by at least this much (three refreshes when those
/// are slower), so the sets of dead nodes go away even if nobody claims them.
const SET_TTL_S: u64 = 120;
/// Arrivals and departures waiting for the worker.
const QUEUE: usize = 65_536;

const NODES: &str = "chatty:pnodes";

/// The keys of one deployment: nodes that share a database share them. Named after the
/// database, so two deployments on one Redis (or two test clusters) never read, or claim,
/// each other's users.
#[derive(Clone)]
struct Keys {
    /// `chatty:online:<db>:`, followed by a node id: that node's set.
    prefix: Arc<str>,
    /// `chatty:online:<db>`: the nodes that keep a set (what a claim looks through).
    registry: Arc<str>,
}

impl Keys {
    fn new(namespace: &str) -> Self {
        Self {
            prefix: Arc::from(format!("chatty:online:{namespace}:")),
            registry: Arc::from(format!("chatty:online:{namespace}")),
        }
    }

    fn set(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }
}

/// KEYS[1]: pnodes; KEYS[2]: the deployment's set prefix. The live nodes (Redis' clock, as
/// presence registers them), then whether `u` is in any of their sets.
const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local prefix = KEYS[2]
local function online(u)
  for _, n in ipairs(nodes) do
    if redis.call('SISMEMBER', prefix .. n, u) == 1 then return true end
  end
  return false
end
"#;

/// KEYS: pnodes, prefix, registry. ARGV: this node, the dead margin (ms). Claim the sets of nodes
/// whose registration lapsed more than the margin ago (or is gone): delete each, and return
/// its users that no live node has.
const CLAIM: &str = r#"
local cutoff = now - tonumber(ARGV[2])
local gone = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if n ~= ARGV[1] then
    local s = redis.call('ZSCORE', KEYS[1], n)
    if not s or tonumber(s) < cutoff then
      local key = prefix .. n
      for _, u in ipairs(redis.call('SMEMBERS', key)) do
        if not online(u) then gone[#gone + 1] = u end
      end
      redis.call('DEL', key)
      redis.call('SREM', KEYS[3], n)
    end
  end
end
return gone
"#;

/// KEYS: pnodes, prefix. ARGV: users. The users no live node has.
const OFFLINE: &str = r#"
local out = {}
for i = 1, #ARGV do
  if not online(ARGV[i]) then out[#out + 1] = ARGV[i] end
end
return out
"#;

/// KEYS: pnodes, prefix, this node's set. ARGV: user. Take the user out of this node's set; 1
/// when no live node has them any more.
const GONE: &str = r#"
redis.call('SREM', KEYS[3], ARGV[1])
if online(ARGV[1]) then return 0 end
return 1
"#;

enum Cmd {
    Came(UserId),
    Left(UserId),
}

/// The node's view of who is online, and its side of the cluster's.
pub struct Online {
    shared: Arc<Shared>,
    /// The worker's queue; dropping the last `Online` ends the worker.
    tx: mpsc::Sender<Cmd>,
}

/// What the sockets' side and the worker share.
struct Shared {
    /// Users this node counts online: `true` while a socket is open, `false` during the grace.
    local: Mutex<HashMap<UserId, bool>>,
    redis: Option<Redis>,
    /// Arrivals or departures the worker never heard of (its queue was full), or a Redis write
    /// that failed: the next refresh rewrites this node's set.
    dropped: std::sync::atomic::AtomicBool,
    errors: IntCounter,
}

impl Shared {
    fn fail(&self, e: redis::RedisError) -> StoreError {
        self.errors.inc();
        self.lost();
        StoreError::Unavailable(chatty_actors::Cause::of(e))
    }

    fn lost(&self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

#[derive(Clone)]
struct Redis {
    conn: ConnectionManager,
    node: Arc<str>,
    keys: Keys,
    offline: Arc<Script>,
    gone: Arc<Script>,
    claim: Arc<Script>,
}

impl Online {
    /// Start the worker. `redis`: the cluster's Redis URL and this node's id; `None` for a
    /// single node.
    pub fn start(
        redis: Option<(&str, Arc<str>, &str)>,
        grace: Duration,
        refresh: Duration,
        dead_margin: Duration,
        outbox: Arc<dyn Outbox>,
        errors: IntCounter,
        wake: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = match redis {
            Some((url, node, namespace)) => {
                let client = redis::Client::open(url)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(OP_TIMEOUT))
                    .set_connection_timeout(Some(OP_TIMEOUT));
                Some(Redis {
                    conn: ConnectionManager::new_lazy_with_config(client, config)?,
                    node,
                    keys: Keys::new(namespace),
                    offline: Arc::new(Script::new(&format!("{LIVE}{OFFLINE}"))),
                    gone: Arc::new(Script::new(&format!("{LIVE}{GONE}"))),
                    claim: Arc::new(Script::new(&format!("{LIVE}{CLAIM}"))),
                })
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            local: Mutex::default(),
            redis,
            // The first refresh (at once) rewrites this node's set: a previous process with
            // the same node id may have left users in it.
            dropped: std::sync::atomic::AtomicBool::new(true),
            errors,
        });
        let online = Arc::new(Self {
            shared: shared.clone(),
            tx,
        });
        let worker = Worker {
            shared,
            refresh,
            dead_margin,
            grace,
            outbox,
            wake,
            left_at: HashMap::new(),
            expiring: VecDeque::new(),
        };
        tokio::spawn(worker.run(rx));
        Ok(online)
    }

    /// Of `users`, those with no socket on any node (nor in a grace period).
    pub async fn offline(&self, users: Vec<UserId>) -> Result<Vec<UserId>, StoreError> {
        match &self.shared.redis {
            None => {
                let local = self.shared.local.lock();
                Ok(users
                    .into_iter()
                    .filter(|u| !local.contains_key(u))
                    .collect())
            }
            Some(r) => {
                if users.is_empty() {
                    return Ok(users);
                }
                let mut inv = r.offline.key(NODES);
                inv.key(&*r.keys.prefix);
                for u in &users {
                    inv.arg(u.as_str());
                }
                let mut conn = r.conn.clone();
                let names: Vec<String> = inv.invoke_async(&mut conn).await.map_err(|e| {
                    // A failed read changes nothing here: count it without a rewrite.
                    self.shared.errors.inc();
                    StoreError::Unavailable(chatty_actors::Cause::of(e))
                })?;
                let names: std::collections::HashSet<&str> =
                    names.iter().map(String::as_str).collect();
                Ok(users
                    .into_iter()
                    .filter(|u| names.contains(u.as_str()))
                    .collect())
            }
        }
    }

    fn queue(&self, cmd: Cmd) {
        if self.tx.try_send(cmd).is_err() {
            self.shared.lost();
        }
    }
}

impl SocketWatch for Online {
    fn first(&self, user: &UserId) {
        self.shared.local.lock().insert(user.clone(), true);
        self.queue(Cmd::Came(user.clone()));
    }

    fn last(&self, user: &UserId) {
        if let Some(connected) = self.shared.local.lock().get_mut(user) {
            *connected = false;
        }
        self.queue(Cmd::Left(user.clone()));
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// How often this node renews its set (and claims dead nodes' sets).
    refresh: Duration,
    /// A registration lapsed this long is a dead node's, whose set is claimed: the margin
    /// keeps a live node whose heartbeat is only late from having its users reported offline.
    dead_margin: Duration,
    grace: Duration,
    outbox: Arc<dyn Outbox>,
    wake: Arc<tokio::sync::Notify>,
    /// Each departed user's latest departure: only the grace of that one counts.
    left_at: HashMap<UserId, Instant>,
    /// Graces in the order they end (one fixed length, so a queue is already sorted).
    expiring: VecDeque<(Instant, UserId)>,
}

impl Worker {
    /// The set's expiry: a few refreshes, never under `SET_TTL_S`.
    fn set_ttl_s(&self) -> u64 {
        (self.refresh.as_secs() * 3).max(SET_TTL_S)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut refresh = tokio::time::interval(self.refresh);
        loop {
            let next = self.expiring.front().map(|(at, _)| *at);
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Came(u)) => self.came(u).await,
                    Some(Cmd::Left(u)) => {
                        let at = Instant::now() + self.grace;
                        self.left_at.insert(u.clone(), at);
                        self.expiring.push_back((at, u));
                    }
                    None => return,
                },
                _ = sleep_until(next) => {
                    if let Some((at, u)) = self.expiring.pop_front() {
                        self.expire(at, u).await;
                    }
                }
                _ = refresh.tick() => self.refresh().await,
            }
        }
    }

    async fn came(&mut self, u: UserId) {
        self.left_at.remove(&u);
        if let Some(r) = &self.shared.redis {
            let mut conn = r.conn.clone();
            let res: Result<(), _> = redis::pipe()
                .sadd(r.keys.set(&r.node), u.as_str())
                .ignore()
                .expire(r.keys.set(&r.node), self.set_ttl_s() as i64)
                .ignore()
                .query_async(&mut conn)
                .await;
            if let Err(e) = res {
                self.shared.fail(e);
            }
        }
    }

    /// A grace ended: if it is the user's latest and they did not come back, they are gone
    /// from this node; when no node has them, record `user.offline`.
    async fn expire(&mut self, at: Instant, u: UserId) {
        if self.left_at.get(&u) != Some(&at) {
            return; // came back since, or left again later (that grace counts)
        }
        self.left_at.remove(&u);
        {
            let mut local = self.shared.local.lock();
            if local.get(&u) != Some(&false) {
                return; // a socket is open again
            }
            local.remove(&u);
        }
        let gone = match &self.shared.redis {
            None => true,
            Some(r) => {
                let mut conn = r.conn.clone();
                let res: Result<i64, _> = r
                    .gone
                    .key(NODES)
                    .key(&*r.keys.prefix)
                    .key(r.keys.set(&r.node))
                    .arg(u.as_str())
                    .invoke_async(&mut conn)
                    .await;
                match res {
                    Ok(n) => n == 1,
                    Err(e) => {
                        // Unknown: better no event than an invented one. The set is rewritten
                        // at the next refresh.
                        tracing::warn!(user = %u, error = %e, "webhooks: cannot tell whether the user is gone");
                        self.shared.fail(e);
                        false
                    }
                }
            }
        };
        if gone {
            let ts = super::now_ms();
            match chatty_actors::timed(self.outbox.user_offline(&u, ts)).await {
                Ok(()) => self.wake.notify_one(),
                Err(e) => {
                    tracing::error!(user = %u, error = %e, "webhooks: user.offline not recorded")
                }
            }
        }
    }

    /// Renew this node's set; rewrite it whole when Redis lost it or an update was lost. A
    /// lost departure would leave its user counted online for good: every user in their grace
    /// with no grace running gets one now.
    async fn refresh(&mut self) {
        let lost = self
            .shared
            .dropped
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if lost {
            let orphans: Vec<UserId> = self
                .shared
                .local
                .lock()
                .iter()
                .filter(|(u, connected)| !**connected && !self.left_at.contains_key(*u))
                .map(|(u, _)| u.clone())
                .collect();
            for u in orphans {
                let at = Instant::now() + self.grace;
                self.left_at.insert(u.clone(), at);
                self.expiring.push_back((at, u));
            }
        }
        let ttl = self.set_ttl_s();
        let Some(r) = &self.shared.redis else { return };
        let key = r.keys.set(&r.node);
        let mut conn = r.conn.clone();
        let users: Vec<String> = self
            .shared
            .local
            .lock()
            .keys()
            .map(|u| u.as_str().to_owned())
            .collect();
        let res: Result<bool, redis::RedisError> = async {
            let (kept,): (bool,) = redis::pipe()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .sadd(&*r.keys.registry, &*r.node)
                .ignore()
                .query_async(&mut conn)
                .await?;
            if lost || (!kept && !users.is_empty()) {
                let mut p = redis::pipe();
                p.atomic().del(&key).ignore();
                for chunk in users.chunks(1000) {
                    p.sadd(&key, chunk).ignore();
                }
                p.expire(&key, ttl as i64).ignore();
                p.query_async::<()>(&mut conn).await?;
                return Ok(true);
            }
            Ok(false)
        }
        .await;
        match res {
            Ok(true) => tracing::info!(
                users = users.len(),
                "webhooks: this node's online set rewritten"
            ),
            Ok(false) => {}
            Err(e) => {
                self.shared.fail(e);
            }
        }
        self.claim_dead().await;
    }

    /// Take over the sets of nodes that died: their users no live node has are offline.
    async fn claim_dead(&mut self) {
        let Some(r) = &self.shared.redis else { return };
        let mut conn = r.conn.clone();
        let claimed: Result<Vec<String>, _> = r
            .claim
            .key(NODES)
            .key(&*r.keys.prefix)
            .key(&*r.keys.registry)
            .arg(&*r.node)
            .arg(self.dead_margin.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        let users = match claimed {
            Ok(u) => u,
            Err(e) => {
                self.shared.errors.inc();
                tracing::warn!(error = %e, "webhooks: cannot claim dead nodes' users");
                return;
            }
        };
        if users.is_empty() {
            return;
        }
        tracing::info!(
            users = users.len(),
            "webhooks: users of a dead node are offline"
        );
        let ts = super::now_ms();
        for u in users.iter().filter_map(|u| UserId::parse(u).ok()) {
            if let Err(e) = chatty_actors::timed(self.outbox.user_offline(&u, ts)).await {
                tracing::error!(user = %u, error = %e, "webhooks: user.offline not recorded");
            }
        }
        self.wake.notify_one();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

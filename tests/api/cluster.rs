//! Cluster mode: three real node processes on loopback sharing PostgreSQL and Redis.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

pub(crate) fn redis_url() -> String {
    std::env::var("CHATTY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A room name no other test (or earlier run) uses: Redis is shared.
pub(crate) fn unique_room(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<(tokio::process::Child, u16)>,
    /// Each node's environment, to start it again (its id is `CHATTY__NODE__ID`).
    pub(crate) envs: Vec<Vec<(String, String)>>,
    /// Each node's metrics port.
    metrics: Vec<u16>,
    /// Each node's log lines (stderr), as they arrive.
    pub(crate) logs: Vec<Logs>,
    auth: chatty::auth::Authenticator,
    pool: sqlx::PgPool,
}

impl Cluster {
    pub(crate) async fn start(n: usize, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        let (settings, db_url) = test_settings().await;
        // Create and migrate the database once, before the nodes race to do it.
        chatty::startup::migrate_only(&settings).await.unwrap();
        let mut nodes = Vec::new();
        let mut envs = Vec::new();
        let mut metrics = Vec::new();
        let mut logs = Vec::new();
        for i in 0..n {
            let id = format!(
                "node{i}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            );
            let mut env: Vec<(&str, &str)> = vec![
                ("CHATTY__DATABASE__URL", db_url.as_str()),
                ("CHATTY__REDIS__URL", redis),
                ("CHATTY__NODE__ID", id.as_str()),
                ("CHATTY__PRESENCE__GRACE_MS", "200"),
                ("CHATTY__PRESENCE__COALESCE_MS", "10"),
                ("CHATTY__PRESENCE__TTL_MS", "2000"),
                ("CHATTY__PRESENCE__HEARTBEAT_MS", "300"),
            ];
            env.extend_from_slice(extra);
            let (child, port, metrics_port, log) = start_binary_logged(&env).await;
            nodes.push((child, port));
            metrics.push(metrics_port);
            logs.push(log);
            envs.push(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        Cluster {
            nodes,
            envs,
            metrics,
            logs,
            auth: chatty::auth::Authenticator::new(&settings.auth),
            pool: sqlx::PgPool::connect(&db_url).await.unwrap(),
        }
    }

    pub(crate) async fn connect(&self, node: usize, user: &str) -> Client {
        let token = self
            .auth
            .mint(user, None, Duration::from_secs(600))
            .unwrap();
        let url = format!("ws://127.0.0.1:{}/ws", self.nodes[node].1);
        Client::connect(&url, &token, Some("chatty.v1.json")).await
    }

    async fn connect_msgpack(&self, node: usize, user: &str) -> Client {
        let token = self
            .auth
            .mint(user, None, Duration::from_secs(600))
            .unwrap();
        let url = format!("ws://127.0.0.1:{}/ws", self.nodes[node].1);
        Client::connect(&url, &token, Some("chatty.v1.msgpack")).await
    }

    async fn api(
        &self,
        node: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_call(self.nodes[node].1, "local-api-key", method, path, body).await
    }

    /// Stop every node (SIGTERM), then start each again with the same settings.
    async fn restart_all(&mut self) {
        for (child, _) in &mut self.nodes {
            let _ = terminate(child).await;
        }
        self.start_all_again().await;
    }

    /// Make `room` private with `members` (plain members), through node 0.
    async fn private_room(&self, room: &str, members: &[&str]) {
        let private = Some(json!({"private": true}));
        let (st, _) = self
            .api(0, "PUT", &format!("/api/v1/rooms/{room}"), private)
            .await;
        assert_eq!(st, 204);
        for u in members {
            let path = format!("/api/v1/rooms/{room}/members/{u}");
            assert_eq!(self.api(0, "PUT", &path, None).await.0, 204);
        }
    }

    /// Start every node again with its settings (after `sigkill`).
    async fn start_all_again(&mut self) {
        for (i, env) in self.envs.iter().enumerate() {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (child, port, metrics_port, log) = start_binary_logged(&env).await;
            self.nodes[i] = (child, port);
            self.metrics[i] = metrics_port;
            self.logs[i] = log;
        }
    }

    /// Kill node `i` with SIGKILL (no drain, no goodbye) and reap it.
    async fn sigkill(&mut self, i: usize) {
        let pid = self.nodes[i].0.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
        let _ = self.nodes[i].0.wait().await;
    }

    /// One sample of a node's metrics (0 if absent).
    pub(crate) async fn metric(&self, node: usize, series: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics[node]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, series)
    }

    async fn presence(&self, node: usize, room: &str) -> Vec<String> {
        let v: Value = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/api/v1/rooms/{room}/presence",
                self.nodes[node].1
            ))
            .bearer_auth("local-api-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut u: Vec<String> = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user"].as_str().unwrap().to_string())
            .collect();
        u.sort();
        u
    }

    async fn rows(&self, room: &str) -> Vec<(i64, String, String)> {
        sqlx::query_as("select seq, user_id, cid from messages where room_id = $1 order by seq")
            .bind(room)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub(crate) async fn stop(mut self) {
        // A node already killed (and reaped) has no pid left to signal.
        for (child, _) in self.nodes.iter_mut().filter(|(c, _)| c.id().is_some()) {
            let _ = terminate(child).await;
        }
    }
}

/// Every log equals the table: same seqs, same cids, in order, exactly once.
fn check_history(room: &str, logs: &[(String, Vec<Value>)], rows: &[(i64, String, String)]) {
    let table: Vec<(u64, String)> = rows.iter().map(|r| (r.0 as u64, r.2.clone())).collect();
    let expected: Vec<u64> = (1..=rows.len() as u64).collect();
    assert_eq!(
        table.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected,
        "{room}: table is gap-free"
    );
    for (who, log) in logs {
        let seen: Vec<(u64, String)> = log
            .iter()
            .map(|m| {
                (
                    m["seq"].as_u64().unwrap(),
                    m["cid"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            seen, table,
            "{room}: {who} saw a different history than the table"
        );
    }
}

#[tokio::test]
async fn members_spread_over_three_nodes_see_every_message_once_in_one_gap_free_order() {
    let cluster = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("spread");
    const SENDERS: usize = 30;
    const PER: usize = 10;
    let mut receivers = Vec::new();
    for i in 0..6 {
        let mut c = cluster.connect(i % 3, &format!("reader{i}")).await;
        c.join(&room).await;
        receivers.push((format!("reader{i}@node{}", i % 3), c));
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut c = cluster.connect(s % 3, &format!("sender{s}")).await;
        c.join(&room).await;
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for m in 0..PER {
                let cid = format!("s{s}m{m}");
                c.send(json!({"type":"send","ref":cid,"room":room,"cid":cid,"body":"x"}))
                    .await;
            }
            for m in 0..PER {
                let ack = c.send_msg_wait_ack(&format!("s{s}m{m}")).await;
                assert_eq!(ack["type"], "ack", "{ack}");
                acked.push(ack["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=(SENDERS * PER) as u64).collect::<Vec<_>>());
    let mut logs = Vec::new();
    for (who, mut c) in receivers {
        logs.push((who, c.messages(&room, SENDERS * PER).await));
        c.assert_quiet(Duration::from_millis(100), &["presence"])
            .await;
    }
    check_history(&room, &logs, &cluster.rows(&room).await);
    cluster.stop().await;
}

#[tokio::test]
async fn presence_is_the_same_from_every_node_and_a_user_on_two_nodes_counts_once() {
    let cluster = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("presence");
    let mut a0 = cluster.connect(0, "alice").await;
    let mut a1 = cluster.connect(1, "alice").await;
    let mut b2 = cluster.connect(2, "bob").await;
    a0.join(&room).await;
    a1.join(&room).await;
    b2.join(&room).await;
    for n in 0..3 {
        let room = room.as_str();
        let c = &cluster;
        eventually("presence converges on every node", || async move {
            c.presence(n, room).await == vec!["alice".to_string(), "bob".to_string()]
        })
        .await;
    }
    // bob, on node 2, sees alice once.
    let mut present: BTreeMap<String, usize> = BTreeMap::new();
    for u in b2.join(&room).await["presence"].as_array().unwrap() {
        *present
            .entry(u["user"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(present.get("alice"), Some(&1));
    // alice leaving node 0 changes nothing: she is still on node 1.
    a0.close().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        cluster.presence(2, &room).await,
        vec!["alice".to_string(), "bob".to_string()]
    );
    // Her last socket leaving makes her leave everywhere (after the grace period).
    a1.close().await;
    for n in 0..3 {
        let room = room.as_str();
        let c = &cluster;
        eventually("alice gone everywhere", || async move {
            c.presence(n, room).await == vec!["bob".to_string()]
        })
        .await;
    }
    let leave = loop {
        let d = b2.next_of("presence").await;
        if d["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["user"] == "alice")
        {
            break d;
        }
    };
    assert!(leave["joins"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["user"] != "alice"));
    cluster.stop().await;
}

/// Read-your-writes: once a user's `joined` arrived on one node, a join of the same room on
/// another node lists them, whether the room is new to that node or already open there.
#[tokio::test]
async fn a_joined_user_is_listed_by_the_next_join_on_any_node() {
    let cluster = Cluster::start(2, &redis_url(), &[]).await;
    // The room is already open on node 1 (a member there), and brand new on node 1.
    let mut keeper = cluster.connect(1, "keeper").await;
    for round in 0..10 {
        for open_on_b in [true, false] {
            let room = unique_room(&format!("ryw{round}{open_on_b}"));
            if open_on_b {
                keeper.join(&room).await;
            }
            let mut a = cluster.connect(0, &format!("a{round}")).await;
            a.join(&room).await;
            let mut b = cluster.connect(1, &format!("b{round}")).await;
            let joined = b.join(&room).await;
            let listed: Vec<&str> = joined["presence"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["user"].as_str().unwrap())
                .collect();
            assert!(
                listed.contains(&format!("a{round}").as_str()),
                "round {round} (room open on node 1: {open_on_b}): {listed:?}"
            );
            a.close().await;
            b.close().await;
        }
    }
}

#[tokio::test]
async fn a_node_killed_under_traffic_leaves_presence_and_its_clients_recover_elsewhere() {
    let mut cluster = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("kill");
    let mut watcher = cluster.connect(0, "watcher").await;
    watcher.join(&room).await;
    let mut victim = cluster.connect(2, "victim").await;
    victim.join(&room).await;
    let mut sender = cluster.connect(1, "sender").await;
    sender.join(&room).await;
    // Traffic, then SIGKILL node 2 in the middle of it.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut last_seen = 0;
    for i in 0..40 {
        if i == 20 {
            cluster.sigkill(2).await;
        }
        let cid = format!("k{i}");
        let ack = sender.send_msg(&room, &cid, "x").await;
        acked.insert(cid, ack["seq"].as_u64().unwrap());
        if i < 20 {
            last_seen = victim.messages(&room, 1).await[0]["seq"].as_u64().unwrap();
        }
    }
    // The victim's user leaves presence on the surviving nodes within the TTL.
    for n in [0usize, 1] {
        let room = room.as_str();
        let c = &cluster;
        eventually("the dead node's user leaves presence", || async move {
            !c.presence(n, room).await.contains(&"victim".to_string())
        })
        .await;
    }
    // The victim reconnects to another node and recovers exactly what it missed.
    let mut back = cluster.connect(0, "victim").await;
    let joined = back.join_since(&room, last_seen).await;
    let head = joined["seq"].as_u64().unwrap();
    assert_eq!(head, 40);
    let got = back.messages(&room, (head - last_seen) as usize).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, ((last_seen + 1)..=head).collect::<Vec<_>>());
    // No acked message lost.
    let rows = cluster.rows(&room).await;
    for (cid, seq) in &acked {
        assert!(
            rows.iter().any(|r| r.0 as u64 == *seq && r.2 == *cid),
            "acked {cid} missing"
        );
    }
    let mut w = watcher.messages(&room, 40).await;
    w.truncate(40);
    check_history(&room, &[("watcher".into(), w)], &rows);
    cluster.nodes.remove(2);
    cluster.stop().await;
}

/// A member that asked for presence counts only, and the last count it was told.
struct Counter {
    c: Client,
    last: u64,
}

impl Counter {
    async fn join(cluster: &Cluster, node: usize, room: &str) -> Counter {
        let mut c = cluster.connect(node, &format!("counter{node}")).await;
        let joined = c
            .call(json!({"type":"join","ref":"j","room":room,"presence":"count"}))
            .await;
        let last = joined["presence_count"].as_u64().unwrap();
        Counter { c, last }
    }

    /// Read `presence_count` frames (at most one a second) until the count is `want`.
    async fn reaches(&mut self, want: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
        while self.last != want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.c.next_of("presence_count")).await {
                Ok(v) => self.last = v["count"].as_u64().unwrap(),
                Err(_) => panic!("{what}: the count stayed {}, not {want}", self.last),
            }
        }
    }
}

/// What a new member joining `room` on `node` is told: the count and the users listed.
async fn probe(cluster: &Cluster, node: usize, room: &str) -> (u64, Vec<String>) {
    let mut p = cluster.connect(node, &format!("probe{node}")).await;
    let joined = p.join(room).await;
    p.close().await;
    let users = joined["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .filter(|u| !u.starts_with("probe"))
        .collect();
    (joined["presence_count"].as_u64().unwrap() - 1, users)
}

#[tokio::test]
async fn presence_counts_converge_on_every_node_after_joins_leaves_a_node_sigkill_and_a_redis_restart(
) {
    let mut redis = OwnRedis::start();
    let mut cluster = Cluster::start(
        3,
        &redis.url(),
        &[("CHATTY__PRESENCE__RECONCILE_MS", "1000")],
    )
    .await;
    let room = unique_room("converge");
    let mut counters = Vec::new();
    for n in 0..3 {
        counters.push(Counter::join(&cluster, n, &room).await);
    }
    // Nine users, three on each node: u0, u3, u6 on node 0 and so on.
    let mut users = BTreeMap::new();
    for i in 0..9 {
        let mut u = cluster.connect(i % 3, &format!("u{i}")).await;
        u.join(&room).await;
        users.insert(i, u);
    }
    for (n, c) in counters.iter_mut().enumerate() {
        c.reaches(12, &format!("node {n} after the joins")).await;
    }
    // Two leave (from nodes 0 and 1).
    users.remove(&0).unwrap().close().await;
    users.remove(&1).unwrap().close().await;
    for (n, c) in counters.iter_mut().enumerate() {
        c.reaches(10, &format!("node {n} after the leaves")).await;
    }
    // Node 2 dies silently with its counter and u2, u5, u8: they leave everywhere.
    cluster.sigkill(2).await;
    cluster.nodes.remove(2);
    counters.truncate(2);
    for (n, c) in counters.iter_mut().enumerate() {
        c.reaches(6, &format!("node {n} after node 2 died")).await;
    }
    let expected: Vec<String> = ["counter0", "counter1", "u3", "u4", "u6", "u7"]
        .map(String::from)
        .to_vec();
    // Redis loses everything: each node writes its presence again, and a new member on
    // either node is told everyone on both (the store itself holds them again).
    redis.restart_empty();
    // Long enough for several heartbeats: the nodes must write their presence again because
    // the beat found them gone, not because a new member's write was refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..2 {
        let c = &cluster;
        let (room, expected) = (room.as_str(), &expected);
        eventually(
            "a join after the Redis restart lists every node's users",
            || async move { probe(c, n, room).await == (6, expected.clone()) },
        )
        .await;
    }
    for (n, c) in counters.iter_mut().enumerate() {
        c.reaches(6, &format!("node {n} after the Redis restart"))
            .await;
    }
    // And the counts still follow change: one more leave reaches both nodes.
    users.remove(&3).unwrap().close().await;
    for (n, c) in counters.iter_mut().enumerate() {
        c.reaches(5, &format!("node {n} after a leave past the restart"))
            .await;
    }
    cluster.stop().await;
}

/// A throwaway Redis the test can restart and pause.
pub(crate) struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub(crate) fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("chatty-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = OwnRedis {
            port,
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart_empty(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Send `n` messages round-robin from senders on every node while `fault` runs in the middle.
async fn traffic_through_a_redis_fault(
    fault: impl FnOnce(&mut OwnRedis),
    heal: impl FnOnce(&mut OwnRedis),
) {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start(3, &redis.url(), &[]).await;
    let room = unique_room("fault");
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for n in 0..3 {
        let mut r = cluster.connect(n, &format!("reader{n}")).await;
        r.join(&room).await;
        readers.push(r);
        let mut s = cluster.connect(n, &format!("sender{n}")).await;
        s.join(&room).await;
        senders.push(s);
    }
    const N: usize = 60;
    let (mut fault, mut heal) = (Some(fault), Some(heal));
    for i in 0..N {
        if i == 20 {
            fault.take().unwrap()(&mut redis);
        }
        if i == 40 {
            heal.take().unwrap()(&mut redis);
        }
        let cid = format!("f{i}");
        // Durability never depends on Redis: every send is acked while Redis is in trouble.
        let ack = senders[i % 3].send_msg(&room, &cid, "x").await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let rows = cluster.rows(&room).await;
    assert_eq!(rows.len(), N);
    let mut logs = Vec::new();
    for (n, mut r) in readers.into_iter().enumerate() {
        // Cross-node delivery resumes by itself; what was missed is filled from PostgreSQL.
        logs.push((format!("reader{n}"), r.messages(&room, N).await));
    }
    check_history(&room, &logs, &rows);
    cluster.stop().await;
}

#[tokio::test]
async fn redis_restarted_empty_under_traffic_loses_and_misorders_nothing() {
    traffic_through_a_redis_fault(|r| r.restart_empty(), |_| {}).await;
}

#[tokio::test]
async fn redis_paused_under_traffic_loses_and_misorders_nothing() {
    traffic_through_a_redis_fault(|r| r.signal("-STOP"), |r| r.signal("-CONT")).await;
}

/// The frame of type `ty` must arrive; how long it took.
async fn timed_next_of(c: &mut Client, ty: &str) -> (Value, Duration) {
    let t = std::time::Instant::now();
    let v = c.next_of(ty).await;
    (v, t.elapsed())
}

#[tokio::test]
async fn removal_kick_ban_disconnect_and_read_markers_reach_every_node() {
    let mut cluster = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("mod");
    // A private room: ann (owner), ben and cat are members.
    let (st, _) = cluster
        .api(
            2,
            "PUT",
            &format!("/api/v1/rooms/{room}"),
            Some(json!({"private": true})),
        )
        .await;
    assert_eq!(st, 204);
    for (u, role) in [("ann", Some("owner")), ("ben", None), ("cat", None)] {
        let body = role.map(|r| json!({"role": r}));
        let (st, _) = cluster
            .api(1, "PUT", &format!("/api/v1/rooms/{room}/members/{u}"), body)
            .await;
        assert_eq!(st, 204);
    }
    let mut ann = cluster.connect(0, "ann").await;
    let mut ben = cluster.connect(1, "ben").await;
    let mut cat1 = cluster.connect(1, "cat").await;
    let mut cat2 = cluster.connect(2, "cat").await;
    for c in [&mut ann, &mut ben, &mut cat1, &mut cat2] {
        assert_eq!(c.join(&room).await["type"], "joined");
    }
    assert_eq!(ann.send_msg(&room, "a1", "hello").await["type"], "ack");
    for c in [&mut ben, &mut cat1, &mut cat2] {
        c.messages(&room, 1).await;
    }

    // A read marker set by cat on node 1 reaches cat's socket on node 2, nobody else's.
    let v = cat1
        .call(json!({"type":"read","ref":"r","room":room,"seq":1}))
        .await;
    assert_eq!(v["type"], "read");
    let (v, took) = timed_next_of(&mut cat2, "read").await;
    assert_eq!(
        (v["room"].as_str(), v["seq"].as_u64()),
        (Some(room.as_str()), Some(1))
    );
    println!("read marker node 1 -> node 2: {took:?}");

    // The backend, on node 2, removes ben (connected to node 1) from the private room.
    let (st, _) = cluster
        .api(
            2,
            "DELETE",
            &format!("/api/v1/rooms/{room}/members/ben"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (v, took) = timed_next_of(&mut ben, "removed").await;
    assert_eq!(v["reason"], "removed");
    println!("member removal node 2 -> node 1: {took:?}");
    let v = ben.send_msg(&room, "b1", "am I still here?").await;
    assert_eq!(v["code"], "not_joined", "{v}");
    let v = ben.call(json!({"type":"join","ref":"j","room":room})).await;
    assert_eq!(v["code"], "forbidden", "{v}");

    // The owner, on node 0, bans cat, connected to nodes 1 and 2.
    let v = ann
        .call(json!({"type":"kick","ref":"k","room":room,"user":"cat","ban":true}))
        .await;
    assert_eq!(v["type"], "kicked", "{v}");
    for c in [&mut cat1, &mut cat2] {
        let (v, took) = timed_next_of(c, "removed").await;
        assert_eq!(v["reason"], "banned");
        println!("ban node 0 -> another node: {took:?}");
        assert_eq!(c.send_msg(&room, "c1", "x").await["code"], "not_joined");
    }
    // Nothing ben or cat sent after their removal reached the room.
    ann.assert_quiet(Duration::from_millis(300), &["presence", "read"])
        .await;
    let cids: Vec<String> = cluster.rows(&room).await.into_iter().map(|r| r.2).collect();
    assert_eq!(cids, vec!["a1".to_string()]);

    // The bus stayed connected throughout: no node lost its subscription (each loss drops
    // what is published meanwhile, repaired only by reading the store).
    for n in 0..3 {
        assert_eq!(
            cluster.metric(n, "chatty_redis_errors_total").await,
            0.0,
            "node {n}"
        );
    }

    // A ban survives a restart of every node.
    drop((ben, cat1, cat2));
    cluster.restart_all().await;
    for n in 0..3 {
        let mut cat = cluster.connect(n, "cat").await;
        let v = cat.call(json!({"type":"join","ref":"j","room":room})).await;
        assert_eq!(v["code"], "forbidden", "node {n}: {v}");
    }

    // Disconnect dan everywhere: all three sockets close with 4003, eve's stay open.
    let mut dans = Vec::new();
    let mut eves = Vec::new();
    for n in 0..3 {
        dans.push(cluster.connect(n, "dan").await);
        eves.push(cluster.connect(n, "eve").await);
    }
    let (st, _) = cluster
        .api(
            0,
            "POST",
            "/api/v1/users/dan/disconnect",
            Some(json!({"reason":"test"})),
        )
        .await;
    assert_eq!(st, 204);
    for (n, d) in dans.iter_mut().enumerate() {
        assert_eq!(d.next_of_close().await, Some(4003), "dan on node {n}");
    }
    for (n, e) in eves.iter_mut().enumerate() {
        let v = e.call(json!({"type":"ping","ref":format!("p{n}")})).await;
        assert_eq!(v["type"], "pong", "eve on node {n}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn an_idle_cluster_keeps_its_redis_subscriptions_and_reloads_nothing_for_a_minute() {
    let cluster = Cluster::start(3, &redis_url(), &[]).await;
    let rooms: Vec<String> = (0..4).map(|i| unique_room(&format!("idle{i}"))).collect();
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut c = cluster.connect(n, &format!("sitter{n}")).await;
        for room in &rooms {
            c.join(room).await;
        }
        clients.push(c);
    }
    // One message per room, so every node has delivered something through the bus.
    for (i, room) in rooms.iter().enumerate() {
        let ack = clients[i % 3]
            .send_msg(room, &format!("hello{i}"), "x")
            .await;
        assert_eq!(ack["type"], "ack");
    }
    for c in &mut clients {
        for room in &rooms {
            c.messages(room, 1).await;
        }
    }
    // Joining made each room check its head once; from here on nothing should.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut before = Vec::new();
    for n in 0..3 {
        before.push((
            cluster.metric(n, "chatty_room_head_checks_total").await,
            cluster.metric(n, "chatty_presence_reads_total").await,
        ));
    }
    // A minute with no traffic but the clients' own pings (which keep the sockets, and so the
    // subscriptions, alive: a silent client is closed after ping_interval + pong_timeout).
    for round in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for (n, c) in clients.iter_mut().enumerate() {
            let v = c
                .call(json!({"type":"ping","ref":format!("p{round}")}))
                .await;
            assert_eq!(v["type"], "pong", "node {n}");
        }
    }
    for (n, before) in before.iter().enumerate() {
        assert_eq!(
            cluster.metric(n, "chatty_bus_reconnects_total").await,
            0.0,
            "node {n} reconnected"
        );
        assert_eq!(
            cluster.metric(n, "chatty_redis_errors_total").await,
            0.0,
            "node {n}"
        );
        assert_eq!(
            cluster.metric(n, "chatty_room_head_checks_total").await,
            before.0,
            "node {n}: rooms reloaded their head while idle"
        );
        // Presence work follows change: heartbeats renew the node, rooms read nothing.
        assert_eq!(
            cluster.metric(n, "chatty_presence_reads_total").await,
            before.1,
            "node {n}: rooms re-read presence while idle"
        );
    }
    cluster.stop().await;
}

/// One message as a client holds it: (rev, body, deleted, reactions).
type Held = (u64, String, bool, Value);

/// Fold a `message` or `update` frame into a client's view, as a client must: a message
/// frame is its state as of its `rev`, an update replaces the state when its rev is newer.
fn fold(view: &mut BTreeMap<u64, Held>, f: &Value) {
    let seq = f["seq"].as_u64().unwrap();
    let rev = f["rev"].as_u64().unwrap_or(0);
    let held = (
        rev,
        f["body"].as_str().unwrap_or("").to_string(),
        f["deleted"].as_bool().unwrap_or(false),
        f.get("reactions").cloned().unwrap_or(json!([])),
    );
    match view.get(&seq) {
        Some(old) if old.0 >= rev && f["type"] == "update" => {}
        _ => {
            view.insert(seq, held);
        }
    }
}

#[tokio::test]
async fn changes_reach_three_nodes_in_one_rev_order_and_a_client_that_missed_fifty_recovers() {
    let c = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("life");
    let mut a = c.connect(0, "alice").await;
    let mut b = c.connect_msgpack(1, "bob").await;
    let mut w = c.connect(2, "wendy").await;
    let mut gone = c.connect_msgpack(2, "carol").await;
    for cl in [&mut a, &mut b, &mut w, &mut gone] {
        cl.join(&room).await;
    }
    for i in 1..=5 {
        assert_eq!(
            a.send_msg(&room, &format!("a{i}"), &format!("a says {i}"))
                .await["seq"],
            i
        );
    }
    assert_eq!(b.send_msg(&room, "b1", "bob says").await["seq"], 6);
    // Everyone has the six messages; carol then leaves with since = 6, since_rev = 0.
    let mut views: Vec<BTreeMap<u64, Held>> = vec![BTreeMap::new(); 4];
    for (cl, view) in [&mut a, &mut b, &mut w, &mut gone]
        .into_iter()
        .zip(&mut views)
    {
        for m in cl.messages(&room, 6).await {
            fold(view, &m);
        }
    }
    let mut carol = views.pop().unwrap();
    gone.close().await;

    // 50 changes from two nodes, every one a real change: edits by alice (node 0), reactions
    // toggled and edits by bob (node 1), a late message, and a delete at the end.
    let mut on: HashMap<(u64, String), bool> = HashMap::new();
    let mut revs = Vec::new();
    for i in 0..49u64 {
        let seq = 1 + i % 5;
        let reply = match i % 3 {
            0 => {
                a.call(
                    json!({"type": "edit", "ref": format!("e{i}"), "room": room, "seq": seq,
                    "body": format!("alice edit {i}")}),
                )
                .await
            }
            1 => {
                let key = format!("k{}", i % 4);
                let now = !on.get(&(seq, key.clone())).copied().unwrap_or(false);
                on.insert((seq, key.clone()), now);
                b.call(
                    json!({"type": "react", "ref": format!("r{i}"), "room": room, "seq": seq,
                    "key": key, "on": now}),
                )
                .await
            }
            _ => {
                b.call(
                    json!({"type": "edit", "ref": format!("b{i}"), "room": room, "seq": 6,
                    "body": format!("bob edit {i}")}),
                )
                .await
            }
        };
        assert_eq!(reply["type"], "updated", "change {i}: {reply}");
        revs.push(reply["rev"].as_u64().unwrap());
        if i == 20 {
            assert_eq!(a.send_msg(&room, "late", "a late message").await["seq"], 7);
        }
    }
    let del = a
        .call(json!({"type": "delete", "ref": "del", "room": room, "seq": 2}))
        .await;
    revs.push(del["rev"].as_u64().unwrap());
    assert_eq!(
        revs,
        (1..=50).collect::<Vec<u64>>(),
        "one gap-free rev per change"
    );

    // Every member, on every node and in either encoding, saw the same 50 updates in rev order.
    let mut orders = Vec::new();
    for (cl, view) in [&mut a, &mut b, &mut w].into_iter().zip(&mut views) {
        fold(view, &cl.next_of("message").await);
        let mut order = Vec::new();
        for _ in 0..50 {
            let u = cl.next_of("update").await;
            order.push((u["rev"].as_u64().unwrap(), u["seq"].as_u64().unwrap()));
            fold(view, &u);
        }
        assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), revs);
        orders.push(order);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "{orders:?}");
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    let want = &views[0];
    assert!(want[&2].2, "seq 2 is deleted");
    assert_eq!(want[&2].1, "");

    // Carol comes back on another node with since and since_rev: the missed message, then the
    // missed changes, end with the same state as the members that stayed.
    let mut back = c.connect_msgpack(0, "carol").await;
    back.send(json!({"type": "join", "ref": "j", "room": room, "since": 6, "since_rev": 0}))
        .await;
    let joined = back.next_of("joined").await;
    assert_eq!(
        (joined["seq"].as_u64(), joined["rev"].as_u64()),
        (Some(7), Some(50))
    );
    loop {
        let f = back.next().await.expect("socket open");
        match f["type"].as_str() {
            Some("message") | Some("update") => fold(&mut carol, &f),
            _ => continue,
        }
        if f["type"] == "update" && f["rev"] == 50 {
            break;
        }
    }
    assert_eq!(&carol, want, "the recovered view equals the live one");
    // The store agrees: history holds the final state, and the deleted body is gone from the table.
    let h = back
        .call(json!({"type": "history", "ref": "h", "room": room}))
        .await;
    let mut from_history = BTreeMap::new();
    for m in h["messages"].as_array().unwrap() {
        fold(&mut from_history, m);
    }
    assert_eq!(&from_history, want);
    let (body, deleted): (String, bool) =
        sqlx::query_as("select body, deleted from messages where room_id = $1 and seq = 2")
            .bind(&room)
            .fetch_one(&c.pool)
            .await
            .unwrap();
    assert_eq!((body.as_str(), deleted), ("", true));
    c.stop().await;
}

/// How many subscribers a Redis channel has (the nodes listening on it).
async fn listeners(channel: &str) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    counts.first().map_or(0, |c| c.1)
}

#[tokio::test]
async fn a_backend_event_reaches_the_users_sockets_on_every_node_and_only_their_nodes_listen() {
    let c = Cluster::start(3, &redis_url(), &[]).await;
    // Redis is shared with other tests: user ids of their own.
    let ann = unique_room("ann");
    let bob = unique_room("bob");
    let mut a0 = c.connect(0, &ann).await;
    let mut a1 = c.connect_msgpack(1, &ann).await;
    let mut a2 = c.connect(2, &ann).await;
    let mut a2b = c.connect(2, &ann).await;
    let mut b1 = c.connect(1, &bob).await;
    let (ann_ch, bob_ch) = (format!("chatty:user:{ann}"), format!("chatty:user:{bob}"));
    eventually(
        "each node with a socket of the user listens on its channel",
        || async { listeners(&ann_ch).await == 3 && listeners(&bob_ch).await == 1 },
    )
    .await;
    let data = json!({"hello": 1, "from": "backend"});
    let (st, v) = c
        .api(
            0,
            "POST",
            &format!("/api/v1/users/{ann}/events"),
            Some(json!({ "data": data })),
        )
        .await;
    assert_eq!((st, v["connections"].as_u64()), (202, Some(4)), "{v}");
    for s in [&mut a0, &mut a1, &mut a2, &mut a2b] {
        assert_eq!(s.next_of("event").await["data"], data);
    }
    b1.assert_quiet(Duration::from_millis(300), &[]).await;
    // Asked on a node with no socket of the user.
    let (st, v) = c
        .api(
            2,
            "POST",
            &format!("/api/v1/users/{bob}/events"),
            Some(json!({"data": {"x": 1}})),
        )
        .await;
    assert_eq!((st, v["connections"].as_u64()), (202, Some(1)), "{v}");
    assert_eq!(b1.next_of("event").await["data"], json!({"x": 1}));
    // The user's last socket on node 1 goes: node 1 stops listening, and the count follows.
    a1.close().await;
    eventually("node 1 stops listening on ann's channel", || async {
        listeners(&ann_ch).await == 2
    })
    .await;
    let (_, v) = c
        .api(
            1,
            "POST",
            &format!("/api/v1/users/{ann}/events"),
            Some(json!({"data": {}})),
        )
        .await;
    assert_eq!(v["connections"], 3, "{v}");
    c.stop().await;
}

#[tokio::test]
async fn a_private_rooms_message_reaches_members_not_in_it_as_inbox_on_every_node_without_its_body()
{
    let c = Cluster::start(3, &redis_url(), &[]).await;
    let room = unique_room("dm");
    let public = unique_room("pub");
    let (ann, bob, eve) = (unique_room("ann"), unique_room("bob"), unique_room("eve"));
    c.private_room(&room, &[&ann, &bob]).await;
    // Ann: joined on node 0, not joined on nodes 1 (JSON) and 2 (MessagePack). Eve is no member.
    let mut a_in = c.connect(0, &ann).await;
    let mut a1 = c.connect(1, &ann).await;
    let mut a2 = c.connect_msgpack(2, &ann).await;
    let mut b0 = c.connect(0, &bob).await;
    let mut e2 = c.connect(2, &eve).await;
    assert_eq!(a_in.join(&room).await["type"], "joined");
    assert_eq!(b0.join(&room).await["type"], "joined");
    let ann_ch = format!("chatty:user:{ann}");
    eventually("ann's nodes listen on her channel", || async {
        listeners(&ann_ch).await == 3
    })
    .await;
    let ack = b0.send_msg(&room, "b1", "secret words").await;
    let seq = ack["seq"].as_u64().unwrap();
    for s in [&mut a1, &mut a2] {
        let f = s.next_of("inbox").await;
        assert_eq!(f["room"], room.as_str(), "{f}");
        assert_eq!(f["seq"].as_u64(), Some(seq), "{f}");
        assert_eq!(f["from"], bob.as_str(), "{f}");
        assert!(f["ts"].as_i64().unwrap() > 0, "{f}");
        assert!(f.get("body").is_none(), "no body in an inbox frame: {f}");
    }
    // The joined socket gets the message itself, not an inbox.
    assert_eq!(a_in.next_of("message").await["body"], "secret words");
    // A message published over HTTP on a third node reaches them the same way.
    let (st, v) = c
        .api(
            2,
            "POST",
            &format!("/api/v1/rooms/{room}/messages"),
            Some(json!({"from": bob, "cid": "h1", "body": "from the backend"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    for s in [&mut a1, &mut a2] {
        assert_eq!(s.next_of("inbox").await["seq"].as_u64(), Some(seq + 1));
    }
    // Public rooms send no inbox; a non-member hears nothing; the joined socket gets none.
    let mut p = c.connect(1, &bob).await;
    p.join(&public).await;
    p.send_msg(&public, "p1", "hello all").await;
    a_in.assert_quiet(Duration::from_millis(300), &["message"])
        .await;
    e2.assert_quiet(Duration::from_millis(300), &[]).await;
    a1.assert_quiet(Duration::from_millis(300), &[]).await;
    assert!(c.metric(1, "chatty_inbox_frames_total").await >= 2.0);
    // Eve is made a member through node 2. Node 0, which commits Bob's messages, has the
    // room's members cached for 10 s; the change reaches it on the bus within milliseconds,
    // so one of Bob's next messages (one every 100 ms) tells Eve well before that.
    let (st, _) = c
        .api(
            2,
            "PUT",
            &format!("/api/v1/rooms/{room}/members/{eve}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let mut told = None;
    for i in 0..20 {
        b0.send_msg(&room, &format!("w{i}"), "welcome").await;
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), e2.next_of("inbox")).await {
            told = Some(f);
            break;
        }
    }
    let f = told.expect("the new member hears of one of 20 messages");
    assert_eq!(f["room"], room.as_str());
    c.stop().await;
}

#[tokio::test]
async fn one_node_dispatches_webhooks_and_pending_events_survive_every_node_being_sigkilled() {
    let rx = Receiver::start(Mode::FailFirst(0)).await;
    let secret = "whsec-cluster-0123456789";
    let mut c = Cluster::start(
        3,
        &redis_url(),
        &[
            ("CHATTY__WEBHOOKS__URL", rx.url.as_str()),
            ("CHATTY__WEBHOOKS__SECRET", secret),
            ("CHATTY__WEBHOOKS__RETRY_BASE_MS", "20"),
            ("CHATTY__WEBHOOKS__RETRY_MAX_MS", "100"),
            ("CHATTY__WEBHOOKS__POLL_MS", "20"),
        ],
    )
    .await;
    let room = unique_room("whc");
    let (bob, cal) = (unique_room("bob"), unique_room("cal"));
    c.private_room(&room, &[&bob, &cal]).await;
    // Bob sends from all three nodes; Cal never connects.
    let mut senders = Vec::new();
    for n in 0..3 {
        let mut s = c.connect(n, &bob).await;
        s.join(&room).await;
        senders.push(s);
    }
    for i in 1..=9usize {
        senders[i % 3]
            .send_msg(&room, &format!("m{i}"), "hello")
            .await;
    }
    eventually("the first nine events are accepted", || async {
        rx.accepted().len() == 9
    })
    .await;
    // One dispatcher: each event was sent once, and one node says it dispatches.
    assert_eq!(rx.hits().len(), 9, "every event sent once: {:?}", rx.hits());
    let mut leaders = 0.0;
    for n in 0..3 {
        leaders += c.metric(n, "chatty_webhook_dispatcher").await;
    }
    assert_eq!(leaders, 1.0);

    // The receiver goes down; more events wait in the outbox; then every node dies at once.
    rx.set_mode(Mode::Down);
    for i in 10..=18usize {
        senders[i % 3]
            .send_msg(&room, &format!("m{i}"), "hello")
            .await;
    }
    eventually(
        "an event of the second batch was tried and failed",
        || async { rx.hits().iter().any(|h| h.status == 503) },
    )
    .await;
    for n in 0..3 {
        c.sigkill(n).await;
    }
    let pending: i64 =
        sqlx::query_scalar("select count(*) from webhook_events where state = 'pending'")
            .fetch_one(&c.pool)
            .await
            .unwrap();
    assert_eq!(pending, 9, "the second batch is pending while no node runs");
    rx.set_mode(Mode::FailFirst(0));
    c.start_all_again().await;
    // (Only message events: a restarted node may also find a killed one's users offline.)
    eventually("every event is delivered after the restart", || async {
        rx.accepted_messages().len() == 18
    })
    .await;
    assert_eq!(rx.accepted_seqs(), (1..=18).collect::<Vec<_>>());
    assert_commit_order_per_room(&rx.hits());
    for e in rx.accepted_messages() {
        assert_eq!(e["users"], json!([cal]), "{e}");
    }
    for h in rx.hits() {
        assert!(verify_signature(secret, &h.signature, &h.body));
    }
    c.stop().await;
}

#[tokio::test]
async fn the_users_of_a_node_that_dies_are_reported_offline_once_by_a_survivor() {
    let rx = Receiver::start(Mode::FailFirst(0)).await;
    let mut c = Cluster::start(
        3,
        &redis_url(),
        &[
            ("CHATTY__WEBHOOKS__URL", rx.url.as_str()),
            ("CHATTY__WEBHOOKS__SECRET", "whsec-cluster-0123456789"),
            ("CHATTY__WEBHOOKS__RETRY_BASE_MS", "20"),
            ("CHATTY__WEBHOOKS__RETRY_MAX_MS", "100"),
            ("CHATTY__WEBHOOKS__POLL_MS", "20"),
        ],
    )
    .await;
    let (ann, bob, cat) = (unique_room("ann"), unique_room("bob"), unique_room("cat"));
    // Ann only on node 1; Bob on nodes 1 and 2; Cat only on node 0.
    let _a1 = c.connect(1, &ann).await;
    let _b1 = c.connect(1, &bob).await;
    let _b2 = c.connect(2, &bob).await;
    let _c0 = c.connect(0, &cat).await;
    // Node 1 dies with its sockets: no grace timer survives it, so a survivor must tell.
    c.sigkill(1).await;
    let offline = |rx: &Receiver, who: &str| {
        rx.accepted()
            .iter()
            .filter(|e| e["type"] == "user.offline" && e["user"] == who)
            .count()
    };
    eventually("ann's user.offline, from a surviving node", || async {
        offline(&rx, &ann) == 1
    })
    .await;
    // Bob still has a socket on node 2, Cat on node 0: neither is offline. And Ann's event
    // came once (one node claims a dead node's users).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(offline(&rx, &ann), 1);
    assert_eq!(offline(&rx, &bob), 0);
    assert_eq!(offline(&rx, &cat), 0);
    c.stop().await;
}

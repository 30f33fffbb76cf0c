//! Cluster mode: three real node processes on loopback sharing PostgreSQL and Redis.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn redis_url() -> String {
    std::env::var("CHATTY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A room name no other test (or earlier run) uses: Redis is shared.
fn unique_room(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

struct Cluster {
    nodes: Vec<(tokio::process::Child, u16)>,
    auth: chatty::auth::Authenticator,
    pool: sqlx::PgPool,
}

impl Cluster {
    async fn start(n: usize, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        let (settings, db_url) = test_settings().await;
        // Create and migrate the database once, before the nodes race to do it.
        chatty::startup::migrate_only(&settings).await.unwrap();
        let mut nodes = Vec::new();
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
            nodes.push(start_binary(&env).await);
        }
        Cluster {
            nodes,
            auth: chatty::auth::Authenticator::new(&settings.auth),
            pool: sqlx::PgPool::connect(&db_url).await.unwrap(),
        }
    }

    async fn connect(&self, node: usize, user: &str) -> Client {
        let token = self
            .auth
            .mint(user, None, Duration::from_secs(600))
            .unwrap();
        let url = format!("ws://127.0.0.1:{}/ws", self.nodes[node].1);
        Client::connect(&url, &token, Some("chatty.v1.json")).await
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

    async fn stop(mut self) {
        for (child, _) in &mut self.nodes {
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
            let pid = cluster.nodes[2].0.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap();
            let _ = cluster.nodes[2].0.wait().await;
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

/// A throwaway Redis the test can restart and pause.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
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

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart_empty(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    fn signal(&self, sig: &str) {
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

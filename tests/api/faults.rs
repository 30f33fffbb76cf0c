//! Faults of the database under traffic, on a throwaway PostgreSQL the test owns: stopped
//! hard, and frozen. The history checker: every acked message is in the table exactly once,
//! and every member that stayed connected received the room in gap-free order.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

fn as_postgres(cmd: &Path, args: &[&str]) -> Command {
    // PostgreSQL refuses to run as root.
    let root = unsafe_is_root();
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.args(args);
    c
}

use std::path::Path;

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("chatty-pg-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe_is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let ok = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(ok.success(), "initdb failed");
        let pg = OwnPostgres { bin, dir, port };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let ok = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(ok.success(), "pg_ctl start failed");
    }

    fn stop_hard(&self) {
        let data = self.dir.join("data");
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    }

    /// The postmaster and every backend, so the whole server freezes or thaws.
    fn signal_all(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let pid: u32 = pid.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![pid];
        for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                // Field 4 (after the parenthesised command) is the parent pid.
                if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                    let ppid: Option<u32> =
                        rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                    if ppid == Some(pid) {
                        if let Ok(child) = e.file_name().to_string_lossy().parse() {
                            pids.push(child);
                        }
                    }
                }
            }
        }
        for p in pids {
            Command::new("kill")
                .args([sig, &p.to_string()])
                .status()
                .unwrap();
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/chatty", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.signal_all("-CONT");
        self.stop_hard();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run 3 readers and one sender through `fault`, then check the history.
async fn traffic_through_a_database_fault(
    retry_max_ms: u64,
    fault: impl FnOnce(&OwnPostgres) + Send + 'static,
) {
    let pg = std::sync::Arc::new(OwnPostgres::start());
    let (mut s, _) = test_settings().await;
    s.database.url = chatty::settings::Secret::new(pg.url());
    s.database.connect_timeout_ms = 1000;
    s.writer.retry_max_ms = retry_max_ms;
    let app = spawn_with(s).await;
    let room = "faulty";
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut r = app.connect(&format!("reader{i}")).await;
        r.join(room).await;
        readers.push(r);
    }
    let mut sender = app.connect("sender").await;
    sender.join(room).await;
    let mut acked: Vec<(String, i64)> = Vec::new();
    let mut unavailable = 0;
    let mut fault = Some(fault);
    let mut faulting = None;
    for i in 0..40 {
        if i == 15 {
            let pg = pg.clone();
            let f = fault.take().unwrap();
            faulting = Some(tokio::task::spawn_blocking(move || f(&pg)));
        }
        let cid = format!("m{i}");
        let r: Value = sender.send_msg(room, &cid, "x").await;
        match r["type"].as_str() {
            Some("ack") => acked.push((cid, r["seq"].as_i64().unwrap())),
            _ => {
                assert_eq!(r["code"], "unavailable", "{r}");
                unavailable += 1;
            }
        }
    }
    // The fault is over (the database thawed or restarted) before the table is read: the
    // sends can all be answered while it still lasts.
    faulting.expect("the fault started").await.unwrap();
    let rows: Vec<(i64, String)> = {
        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        sqlx::query_as("select seq, cid from messages where room_id = $1 order by seq")
            .bind(room)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    // Every acked message exactly once, at its acked seq; the table gap-free.
    for (cid, seq) in &acked {
        assert_eq!(rows.iter().filter(|r| r.1 == *cid).count(), 1, "{cid}");
        assert!(
            rows.iter().any(|r| r.0 == *seq && r.1 == *cid),
            "acked {cid} at {seq}"
        );
    }
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=rows.len() as i64).collect::<Vec<_>>()
    );
    assert!(acked.len() + unavailable == 40);
    // Every reader got the whole room in order, or was told to recover.
    for (i, mut r) in readers.into_iter().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < rows.len() {
            match r.next().await {
                Some(v) if v["type"] == "message" => seen.push((
                    v["seq"].as_i64().unwrap(),
                    v["cid"].as_str().unwrap().to_string(),
                )),
                Some(_) => {}
                None => break,
            }
        }
        if seen.len() < rows.len() {
            assert!(
                matches!(r.closed, Some(1001 | 1011 | 1013 | 4000)),
                "reader{i} lost messages without being told to recover: {:?}",
                r.closed
            );
        }
        assert_eq!(
            seen[..],
            rows[..seen.len()],
            "reader{i}: gap, duplicate or reorder"
        );
    }
}

#[tokio::test]
async fn postgres_stopped_hard_under_traffic_loses_nothing_acked() {
    // Sends wait for the database to come back (retries up to 60 s) and are acked then.
    traffic_through_a_database_fault(60_000, |pg| {
        pg.stop_hard();
        std::thread::sleep(Duration::from_secs(2));
        pg.pg_ctl_start();
    })
    .await;
}

#[tokio::test]
async fn postgres_frozen_for_30_seconds_under_traffic_loses_nothing_acked() {
    // Sends are answered `unavailable` after 8 s of retries while it is frozen.
    traffic_through_a_database_fault(8_000, |pg| {
        pg.signal_all("-STOP");
        std::thread::sleep(Duration::from_secs(30));
        pg.signal_all("-CONT");
    })
    .await;
}

/// `GET /health` on the real binary: JSON status and latency for each dependency.
async fn health(port: u16) -> (u16, Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn health_reports_a_stopped_postgres_and_a_frozen_redis_while_readyz_stays_200() {
    let pg = OwnPostgres::start();
    let redis = crate::cluster::OwnRedis::start();
    let (pg_url, redis_url) = (pg.url(), redis.url());
    let (mut child, port, _) = start_binary_with_metrics(&[
        ("CHATTY__DATABASE__URL", pg_url.as_str()),
        ("CHATTY__REDIS__URL", redis_url.as_str()),
        ("CHATTY__NODE__ID", "health-node"),
    ])
    .await;
    let readyz = || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (st, v) = health(port).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")), "{v}");
    assert_eq!(v["checks"]["postgres"]["ok"], true, "{v}");
    assert_eq!(v["checks"]["redis"]["ok"], true, "{v}");
    assert!(v["checks"]["postgres"]["latency_ms"].as_f64().is_some());

    // PostgreSQL stopped, Redis frozen: each reported, the node still takes sockets.
    pg.stop_hard();
    redis.signal("-STOP");
    eventually("both dependencies reported down", || async move {
        let (st, v) = health(port).await;
        st == 503
            && v["status"] == "degraded"
            && v["checks"]["postgres"]["ok"] == false
            && v["checks"]["redis"]["ok"] == false
            && v["checks"]["postgres"]["error"].is_string()
            && v["checks"]["redis"]["error"].is_string()
    })
    .await;
    assert_eq!(readyz().await, 200, "readiness ignores the dependencies");

    // Both come back, and so does the report.
    pg.pg_ctl_start();
    redis.signal("-CONT");
    eventually("both dependencies reported up again", || async move {
        let (st, v) = health(port).await;
        st == 200 && v["status"] == "ok"
    })
    .await;
    assert_eq!(readyz().await, 200);
    let _ = terminate(&mut child).await;
}

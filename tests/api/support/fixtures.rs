//! Fixtures: bystanders who must be unaffected by whatever a test does elsewhere, row counts,
//! the process's memory.

use std::time::{Duration, Instant};

use super::{Client, TestApp};

/// Two users talking in their own room: whatever a hostile client does elsewhere, a message
/// from one must still be acknowledged and reach the other, in order.
pub struct Bystanders {
    a: Client,
    b: Client,
    sent: u64,
}

pub const CALM: &str = "calm";

impl Bystanders {
    pub async fn new(app: &TestApp) -> Self {
        let mut a = app.connect("bystander-a").await;
        let mut b = app.connect("bystander-b").await;
        a.join(CALM).await;
        b.join(CALM).await;
        Bystanders { a, b, sent: 0 }
    }

    /// One message from a to b, acknowledged and delivered with the next seq.
    pub async fn still_talk(&mut self) -> Duration {
        let t = Instant::now();
        self.sent += 1;
        let cid = format!("calm-{}", self.sent);
        let ack = self.a.send_msg(CALM, &cid, "still here").await;
        assert_eq!(ack["type"], "ack", "bystander's send: {ack}");
        let got = self.b.messages(CALM, 1).await;
        assert_eq!(got[0]["cid"], cid.as_str(), "bystander got {}", got[0]);
        assert_eq!(got[0]["seq"], self.sent, "bystander got {}", got[0]);
        t.elapsed()
    }
}

pub async fn room_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from rooms")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

pub async fn message_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Resident set size of this process (the app runs in-process), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

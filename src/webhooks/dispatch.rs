//! The dispatcher: on the leading node, it takes the due events (each the oldest pending one
//! of its room or user, so a key's events go out one at a time in commit order), POSTs them
//! signed, at most `max_in_flight` at once, and records each outcome: delivered rows go,
//! failed ones wait `backoff` (exponential, equal jitter), and one still failing at
//! `dead_after` is dead-lettered so its key moves on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chatty_actors::{MessageStore, UserId};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::online::Online;
use super::outbox::{Event, EventKind, Outbox};
use super::{now_ms, sign, WebhookMetrics};
use crate::settings::WebhookSettings;

/// How long a node that does not lead (or lost the outbox) waits before trying again.
const LEAD_RETRY: Duration = Duration::from_secs(2);
/// How often the leader counts the backlog for its gauges.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// The most members of a room a `message.offline` event considers.
const MEMBERS_MAX: u32 = 10_000;

pub(super) struct Dispatcher {
    pub outbox: Arc<dyn Outbox>,
    pub store: Arc<dyn MessageStore>,
    pub online: Arc<Online>,
    pub http: reqwest::Client,
    pub settings: WebhookSettings,
    pub metrics: WebhookMetrics,
    pub wake: Arc<Notify>,
}

/// What became of one attempt.
enum Outcome {
    Delivered,
    /// Nobody to tell (every member was online): no request, the row goes.
    Skipped,
    Failed {
        error: String,
        /// What the attempt decided, kept for the retries.
        users: Option<Vec<UserId>>,
    },
    /// The row cannot be read: dead-lettered at once.
    Invalid(String),
}

impl Dispatcher {
    pub async fn run(self: Arc<Self>) {
        let mut leading = false;
        let mut flying: JoinSet<(Event, Outcome)> = JoinSet::new();
        // What each request in flight is sending: a task that panics still frees its key
        // (and its event is retried with backoff like any failure).
        let mut sending: HashMap<tokio::task::Id, Event> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        let mut last_gauge = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            if !leading {
                match self.outbox.lead().await {
                    Ok(true) => {
                        tracing::info!("webhooks: this node dispatches");
                        leading = true;
                        self.metrics.dispatcher.set(1);
                    }
                    Ok(false) => {
                        tokio::time::sleep(LEAD_RETRY).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: cannot take the lead");
                        tokio::time::sleep(LEAD_RETRY).await;
                        continue;
                    }
                }
            }
            let room = self.settings.max_in_flight.saturating_sub(flying.len());
            let mut failed = None;
            if room > 0 {
                let keys: Vec<String> = busy.iter().cloned().collect();
                match self.outbox.due(now_ms(), &keys, room).await {
                    Ok(events) => {
                        for e in events {
                            busy.insert(e.okey.clone());
                            let me = self.clone();
                            let event = e.clone();
                            let task = flying.spawn(async move {
                                let outcome = me.attempt(&event).await;
                                (event, outcome)
                            });
                            sending.insert(task.id(), e);
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            self.metrics.in_flight.set(flying.len() as i64);
            // A count over the pending rows: cheap on the partial index, but not free on a
            // large backlog, so not every turn.
            if failed.is_none() && last_gauge.elapsed() >= BACKLOG_EVERY {
                last_gauge = tokio::time::Instant::now();
                match self.outbox.backlog().await {
                    Ok((n, oldest)) => {
                        self.metrics.backlog.set(n);
                        let age = oldest.map_or(0, |t| (now_ms() - t).max(0));
                        self.metrics.oldest.set(age as f64 / 1000.0);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if failed.is_none() {
                tokio::select! {
                    Some(done) = flying.join_next_with_id(), if !flying.is_empty() => {
                        let (event, outcome) = match done {
                            Ok((id, done)) => {
                                sending.remove(&id);
                                done
                            }
                            Err(err) => {
                                let Some(event) = sending.remove(&err.id()) else { continue };
                                let error = "the delivery task failed".to_owned();
                                tracing::error!(id = event.id, error = %err, "webhooks: delivery task failed");
                                (event, Outcome::Failed { error, users: None })
                            }
                        };
                        busy.remove(&event.okey);
                        if let Err(e) = self.record(&event, outcome).await {
                            failed = Some(e);
                        }
                    }
                    _ = tokio::time::sleep(poll) => {}
                    _ = self.wake.notified() => {}
                }
            }
            if let Some(e) = failed {
                // Whatever is in flight may be sent again by the next leader: stop it here so
                // one key never has two requests out at once, and wait before leading again
                // (an outbox that keeps failing must not be hammered).
                self.lost_lead(&e.to_string());
                leading = false;
                flying.abort_all();
                while flying.join_next().await.is_some() {}
                sending.clear();
                busy.clear();
                tokio::time::sleep(LEAD_RETRY).await;
            }
        }
    }

    fn lost_lead(&self, why: &str) {
        tracing::warn!(
            error = why,
            "webhooks: outbox unavailable; leading again first"
        );
        self.metrics.dispatcher.set(0);
    }

    /// One attempt at one event.
    async fn attempt(&self, e: &Event) -> Outcome {
        let (kind, body, users) = match &e.kind {
            EventKind::MessageOffline {
                room,
                seq,
                from,
                name,
                users,
            } => {
                let users = match users {
                    Some(u) => u.clone(),
                    None => match self.offline_members(room, from).await {
                        Ok(u) => u,
                        Err(error) => return Outcome::Failed { error, users: None },
                    },
                };
                if users.is_empty() {
                    return Outcome::Skipped;
                }
                let kind = "message.offline";
                let body = json!({
                    "id": e.id.to_string(),
                    "type": kind,
                    "room": room,
                    "seq": seq,
                    "from": from,
                    "name": name,
                    "ts": e.ts,
                    "users": users,
                });
                (kind, body, Some(users))
            }
            EventKind::Invalid(error) => {
                return Outcome::Invalid(error.clone());
            }
            EventKind::UserOffline { user } => {
                let kind = "user.offline";
                let body = json!({
                    "id": e.id.to_string(),
                    "type": kind,
                    "user": user,
                    "ts": e.ts,
                });
                (kind, body, None)
            }
        };
        let body = body.to_string();
        let t = now_ms() / 1000;
        let sig = sign(self.settings.secret.expose().as_bytes(), t, body.as_bytes());
        let sent = self
            .http
            .post(&self.settings.url)
            .header("content-type", "application/json")
            .header("chatty-signature", sig)
            .header("chatty-event-id", e.id.to_string())
            .header("chatty-event-type", kind)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => Outcome::Failed {
                error: format!("HTTP {}", r.status().as_u16()),
                users,
            },
            Err(err) => Outcome::Failed {
                error: if err.is_timeout() {
                    "timed out".to_owned()
                } else {
                    // Without the URL: it may hold a credential, and this goes to the log and
                    // to the row.
                    format!("request failed: {}", err.without_url())
                },
                users,
            },
        }
    }

    /// The room's members other than the sender with no socket anywhere.
    async fn offline_members(
        &self,
        room: &chatty_actors::RoomId,
        from: &UserId,
    ) -> Result<Vec<UserId>, String> {
        let members = chatty_actors::timed(self.store.members(room, MEMBERS_MAX))
            .await
            .map_err(|e| format!("members: {e}"))?;
        let others: Vec<UserId> = members.into_iter().filter(|u| u != from).collect();
        self.online
            .offline(others)
            .await
            .map_err(|e| format!("online check: {e}"))
    }

    async fn record(&self, e: &Event, outcome: Outcome) -> Result<(), chatty_actors::StoreError> {
        match outcome {
            Outcome::Delivered => {
                self.metrics.result("ok");
                self.outbox.delivered(e.id).await
            }
            Outcome::Skipped => {
                self.metrics.result("skipped");
                self.outbox.delivered(e.id).await
            }
            Outcome::Invalid(error) => {
                tracing::error!(id = e.id, error, "webhooks: unreadable event dead-lettered");
                self.metrics.result("dead");
                self.outbox.dead(e.id, &error).await
            }
            Outcome::Failed { error, users } => {
                let now = now_ms();
                let dead_after = (self.settings.dead_after_s as i64).saturating_mul(1000);
                if now - e.created_at >= dead_after {
                    tracing::error!(id = e.id, error, "webhooks: event dead-lettered");
                    self.metrics.result("dead");
                    self.outbox.dead(e.id, &error).await
                } else {
                    let wait = backoff(&self.settings, e.attempts as u32 + 1);
                    tracing::warn!(
                        id = e.id,
                        attempt = e.attempts + 1,
                        error,
                        retry_in_ms = wait.as_millis() as u64,
                        "webhooks: delivery failed"
                    );
                    self.metrics.result("failed");
                    let next = now + wait.as_millis() as i64;
                    self.outbox
                        .failed(e.id, next, &error, users.as_deref())
                        .await
                }
            }
        }
    }
}

/// The wait after the `n`-th failure: `min(max, base·2^(n-1))`, of which a random half
/// ("equal jitter"), so receivers coming back are not hit by every retry at once.
pub(super) fn backoff(s: &WebhookSettings, n: u32) -> Duration {
    let exp = s
        .retry_base_ms
        .saturating_mul(1u64 << n.saturating_sub(1).min(30));
    let cap = exp.min(s.retry_max_ms).max(1);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            url: "http://x".into(),
            secret: crate::settings::Secret::new("s"),
            timeout_ms: 1000,
            max_in_flight: 4,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            dead_after_s: 60,
            poll_ms: 100,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_a_random_half() {
        let s = settings();
        for (n, cap) in [(1, 500), (2, 1000), (3, 2000), (8, 60_000), (40, 60_000)] {
            for _ in 0..200 {
                let w = backoff(&s, n).as_millis() as u64;
                assert!((cap / 2..=cap).contains(&w), "attempt {n}: {w} ms");
            }
        }
    }
}

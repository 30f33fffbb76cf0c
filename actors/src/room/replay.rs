//! Replay then live: a member that joins with `since` gets the messages it missed from the
//! store, off the room's mailbox, then (v1.1, `since_rev`) the changes it missed, while live
//! frames for it wait in a `Hold` so they follow the replay instead of overtaking it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ractor::ActorRef;

use super::{Member, RoomMsg};
use crate::ids::{RoomId, Seq};
use crate::metrics::Metrics;
use crate::ports::MessageStore;
use crate::protocol::{ServerFrame, StoredUpdate};

/// What one joiner is replayed: the messages in (from, upto], then `updates` (read when it
/// joined, in rev order).
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub from: Seq,
    pub upto: Seq,
    pub updates: Vec<StoredUpdate>,
}

impl Replay {
    /// Nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.from >= self.upto && self.updates.is_empty()
    }
}

/// The frames a member gets while its replay runs. Bounded: a member that falls further
/// behind than the cap is a slow consumer.
#[derive(Debug, Default)]
pub(crate) struct Hold(Option<Vec<Bytes>>);

/// What to do with a frame offered to a member.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// No replay is running: send it now.
    Send(Bytes),
    /// Kept until the replay is done.
    Held,
    /// The hold is full: the member cannot keep up.
    Full,
}

impl Hold {
    /// A hold for a member whose replay starts now (`replaying`), or a live one.
    pub fn new(replaying: bool) -> Self {
        Hold(replaying.then(Vec::new))
    }

    pub fn offer(&mut self, frame: Bytes, cap: usize) -> Offer {
        match &mut self.0 {
            None => Offer::Send(frame),
            Some(held) if held.len() >= cap => Offer::Full,
            Some(held) => {
                held.push(frame);
                Offer::Held
            }
        }
    }

    /// The replay is done: what was held, in order; the member is live from now on.
    pub fn release(&mut self) -> Vec<Bytes> {
        self.0.take().unwrap_or_default()
    }
}

/// Replay to one joiner, the messages in pages, off the room's mailbox; tells the room when
/// done (`ok: false` when the store failed or the socket could not take it).
pub(crate) fn spawn_replay(
    store: Arc<dyn MessageStore>,
    room_ref: ActorRef<RoomMsg>,
    member: Member,
    room: RoomId,
    replay: Replay,
    metrics: Metrics,
) {
    let Replay {
        from,
        upto,
        updates,
    } = replay;
    tokio::spawn(async move {
        let started = Instant::now();
        let mut cursor = from;
        let mut ok = true;
        while cursor < upto && !member.membership.is_revoked() {
            let n = (upto - cursor).min(200) as u32;
            match crate::ports::timed(store.after(&room, cursor, n)).await {
                Ok(page) if !page.is_empty() => {
                    for m in page.iter().take_while(|m| m.seq <= upto) {
                        if member.membership.is_revoked() {
                            break; // taken out of the room: nothing after `removed`
                        }
                        if !member
                            .outbox
                            .push(ServerFrame::message(m).encode(member.encoding))
                        {
                            ok = false;
                            break;
                        }
                        cursor = m.seq;
                    }
                    if !ok {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "replay failed");
                    ok = false;
                    break;
                }
            }
        }
        for u in &updates {
            if !ok || member.membership.is_revoked() {
                break;
            }
            ok = member
                .outbox
                .push(ServerFrame::update(u).encode(member.encoding));
        }
        metrics
            .join_replay_seconds
            .observe(started.elapsed().as_secs_f64());
        let _ = room_ref.cast(RoomMsg::ReplayDone {
            conn: member.outbox.conn(),
            ok,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_live_member_gets_frames_at_once() {
        let mut h = Hold::new(false);
        assert_eq!(h.offer(b("x"), 1), Offer::Send(b("x")));
        assert!(h.release().is_empty());
    }

    #[test]
    fn frames_wait_for_the_replay_and_come_out_in_order() {
        let mut h = Hold::new(true);
        assert_eq!(h.offer(b("1"), 10), Offer::Held);
        assert_eq!(h.offer(b("2"), 10), Offer::Held);
        assert_eq!(h.release(), vec![b("1"), b("2")]);
        // Live after the release.
        assert_eq!(h.offer(b("3"), 10), Offer::Send(b("3")));
    }

    #[test]
    fn a_full_hold_refuses() {
        let mut h = Hold::new(true);
        assert_eq!(h.offer(b("1"), 2), Offer::Held);
        assert_eq!(h.offer(b("2"), 2), Offer::Held);
        assert_eq!(h.offer(b("3"), 2), Offer::Full);
        assert_eq!(h.release().len(), 2);
    }
}

//! Ordered delivery: messages reach a room in any order (local commits, the bus, gap fills,
//! head checks) and leave it strictly in seq order; changes (v1.1) likewise in rev order. An
//! item ahead of a gap waits here until the gap closes by itself or is filled from the store.
//! Plain data: no actor, no timer.

use std::collections::BTreeMap;

use crate::ids::Seq;
use crate::protocol::{StoredMessage, StoredUpdate};

/// Something delivered in the order of a gap-free counter.
pub(crate) trait Counted: Clone {
    /// Its place: a message's seq, a change's rev.
    fn pos(&self) -> u64;
}

impl Counted for StoredMessage {
    fn pos(&self) -> u64 {
        self.seq
    }
}

impl Counted for StoredUpdate {
    fn pos(&self) -> u64 {
        self.rev()
    }
}

/// Items that arrived ahead of a gap, by position.
pub(crate) struct Reorder<T = StoredMessage> {
    ahead: BTreeMap<Seq, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            ahead: BTreeMap::new(),
        }
    }
}

/// What to read from the store to close the gap in front of the waiting messages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Missing {
    /// Read the messages after this seq...
    pub after: Seq,
    /// ...at most this many (a page; a larger gap takes several reads).
    pub count: u32,
}

impl<T: Counted> Reorder<T> {
    /// Take `msgs` in (any order, duplicates allowed) given the room has delivered up to
    /// `delivered`, and hand every message that is now next in line to `deliver`, in seq
    /// order. The caller's head advances with each call of `deliver`.
    pub fn accept(&mut self, delivered: Seq, msgs: &[T], mut deliver: impl FnMut(&T)) {
        let mut next = delivered;
        for m in msgs {
            if m.pos() <= next {
                continue; // already delivered: a duplicate from the bus or a gap fill
            }
            if m.pos() == next + 1 {
                deliver(m);
                next = m.pos();
            } else {
                self.ahead.insert(m.pos(), m.clone());
            }
        }
        self.drain(next, deliver);
    }

    /// Deliver what waits here and has become next in line after `delivered`.
    pub fn drain(&mut self, delivered: Seq, mut deliver: impl FnMut(&T)) {
        let mut next = delivered;
        while let Some(entry) = self.ahead.first_entry() {
            let seq = *entry.key();
            if seq <= next {
                entry.remove();
            } else if seq == next + 1 {
                let m = entry.remove();
                deliver(&m);
                next = seq;
            } else {
                break;
            }
        }
    }

    /// True while messages wait for a gap to close.
    pub fn is_waiting(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// The read that closes the gap in front of the first waiting message, at most `page`
    /// messages; `None` when nothing waits or nothing is missing any more (then `drain`).
    pub fn missing(&self, delivered: Seq, page: u32) -> Option<Missing> {
        let (&first, _) = self.ahead.iter().next()?;
        if first <= delivered + 1 {
            return None;
        }
        Some(Missing {
            after: delivered,
            count: (first - delivered - 1).min(Seq::from(page)) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Body, Cid, DisplayName, RoomId, UserId};

    fn msg(seq: Seq) -> StoredMessage {
        StoredMessage {
            trace: None,
            room: RoomId::parse("r").unwrap(),
            seq,
            from: UserId::parse("u").unwrap(),
            name: DisplayName::sanitize("U"),
            cid: Cid::parse(&format!("c{seq}")).unwrap(),
            body: Body::parse(&format!("m{seq}"), 100).unwrap(),
            ts: 0,
            meta: None,
            state: Default::default(),
        }
    }

    fn run(r: &mut Reorder<StoredMessage>, head: &mut Seq, seqs: &[Seq]) -> Vec<Seq> {
        let msgs: Vec<_> = seqs.iter().map(|&s| msg(s)).collect();
        let mut out = Vec::new();
        r.accept(*head, &msgs, |m| out.push(m.seq));
        if let Some(&last) = out.last() {
            *head = last;
        }
        out
    }

    #[test]
    fn in_order_messages_pass_straight_through() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 0);
        assert_eq!(run(&mut r, &mut head, &[1, 2, 3]), vec![1, 2, 3]);
        assert!(!r.is_waiting());
    }

    #[test]
    fn a_message_ahead_of_a_gap_waits_until_the_gap_closes() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 0);
        assert_eq!(run(&mut r, &mut head, &[1, 3, 4]), vec![1]);
        assert!(r.is_waiting());
        assert_eq!(run(&mut r, &mut head, &[2]), vec![2, 3, 4]);
        assert!(!r.is_waiting());
    }

    #[test]
    fn duplicates_and_old_messages_are_dropped() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 5);
        assert_eq!(run(&mut r, &mut head, &[3, 5, 6, 6, 7]), vec![6, 7]);
        assert_eq!(run(&mut r, &mut head, &[9, 9]), Vec::<Seq>::new());
        assert_eq!(run(&mut r, &mut head, &[8, 9]), vec![8, 9]);
        assert!(!r.is_waiting());
    }

    #[test]
    fn a_batch_in_reverse_order_comes_out_sorted() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 0);
        assert_eq!(
            run(&mut r, &mut head, &[5, 4, 3, 2, 1]),
            vec![1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn missing_names_the_gap_in_pages() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 10);
        assert_eq!(r.missing(head, 1000), None);
        run(&mut r, &mut head, &[2_000]);
        assert_eq!(
            r.missing(10, 1000),
            Some(Missing {
                after: 10,
                count: 1000
            })
        );
        assert_eq!(
            r.missing(1_500, 1000),
            Some(Missing {
                after: 1_500,
                count: 499
            })
        );
        // Delivered up to the gap by other means (a head check): nothing missing, drain.
        assert_eq!(r.missing(1_999, 1000), None);
        let mut out = Vec::new();
        r.drain(1_999, |m| out.push(m.seq));
        assert_eq!(out, vec![2_000]);
        assert!(!r.is_waiting());
    }

    #[test]
    fn drain_discards_what_was_delivered_meanwhile() {
        let (mut r, mut head) = (Reorder::<StoredMessage>::default(), 0);
        run(&mut r, &mut head, &[3, 4, 6]);
        let mut out = Vec::new();
        r.drain(4, |m| out.push(m.seq));
        assert!(out.is_empty(), "3 and 4 were delivered elsewhere: {out:?}");
        assert_eq!(r.missing(4, 100), Some(Missing { after: 4, count: 1 }));
    }
}

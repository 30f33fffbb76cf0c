//! Batch assembly, kept out of the lane loop so it can be tested without a database: collapse
//! repeats of one (room, user, cid) before the store sees them, then turn the store's answers
//! into what becomes visible (per-room runs of messages in seq order).

use std::collections::HashMap;
use std::sync::Arc;

use crate::ports::{Appended, NewMessage};
use crate::protocol::StoredMessage;

/// Keys of the batch maps are short ids: foldhash is several times cheaper than SipHash on
/// them, and still seeded per process, so clients cannot aim collisions at it.
type Fast = foldhash::fast::RandomState;

/// A batch as the store sees it: unique keys, and where each submitted send's answer comes from.
#[derive(Debug)]
pub(crate) struct Assembled {
    /// One entry per distinct (room, user, cid), in first-seen order.
    pub unique: Vec<NewMessage>,
    /// For each submitted send, in submission order: the index of its key in `unique`, and
    /// whether it repeated a key seen earlier in the same batch.
    pub slot_of: Vec<(usize, bool)>,
}

impl Assembled {
    pub fn new<'a>(sends: impl ExactSizeIterator<Item = &'a NewMessage>) -> Self {
        let n = sends.len();
        let mut first: HashMap<(&str, &str, &str), usize, Fast> =
            HashMap::with_capacity_and_hasher(n, Fast::default());
        let mut unique = Vec::with_capacity(n);
        let mut slot_of = Vec::with_capacity(n);
        for m in sends {
            let key = (m.room.as_str(), m.from.as_str(), m.cid.as_str());
            match first.get(&key) {
                Some(&i) => slot_of.push((i, true)),
                None => {
                    first.insert(key, unique.len());
                    slot_of.push((unique.len(), false));
                    unique.push(m.clone());
                }
            }
        }
        Self { unique, slot_of }
    }

    /// The answer for submitted send `k`: a repeat inside the batch is a duplicate too.
    pub fn answer(&self, results: &[Appended], k: usize) -> Appended {
        let (i, repeat) = self.slot_of[k];
        let mut r = results[i];
        r.duplicate |= repeat;
        r
    }

    /// The newly stored messages grouped by room, each run in ascending seq, rooms in the order
    /// they first appear in the batch, with whether the room is private. Duplicates are left
    /// out: they were delivered when first stored.
    pub fn visible(&self, results: &[Appended]) -> Vec<(Arc<[StoredMessage]>, bool)> {
        let mut index: HashMap<&str, usize, Fast> = HashMap::with_hasher(Fast::default());
        let mut runs: Vec<Vec<StoredMessage>> = Vec::new();
        let mut private: Vec<bool> = Vec::new();
        for (m, r) in self.unique.iter().zip(results) {
            if r.duplicate {
                continue;
            }
            let i = *index.entry(m.room.as_str()).or_insert_with(|| {
                runs.push(Vec::new());
                private.push(r.private);
                runs.len() - 1
            });
            runs[i].push(StoredMessage {
                room: m.room.clone(),
                seq: r.seq,
                from: m.from.clone(),
                name: m.name.clone(),
                cid: m.cid.clone(),
                body: m.body.clone(),
                ts: r.ts,
                meta: m.meta.clone(),
                state: Default::default(),
                trace: m.trace,
            });
        }
        runs.into_iter()
            .zip(private)
            .map(|(mut run, private)| {
                // A store assigns a room's seqs in batch order, so this is already sorted; the
                // sort is a guard that costs nothing on sorted input.
                run.sort_by_key(|m| m.seq);
                (run.into(), private)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::msg;

    fn ok(seq: u64) -> Appended {
        Appended {
            seq,
            ts: 1,
            duplicate: false,
            private: false,
        }
    }

    #[test]
    fn repeats_inside_a_batch_reach_the_store_once_and_answer_as_duplicates() {
        let sends = [
            msg("r", "a", "1"),
            msg("r", "a", "2"),
            msg("r", "a", "1"),
            msg("r", "b", "1"),
        ];
        let a = Assembled::new(sends.iter());
        assert_eq!(a.unique.len(), 3);
        let results = [ok(1), ok(2), ok(3)];
        assert_eq!(a.answer(&results, 0), ok(1));
        let repeat = a.answer(&results, 2);
        assert_eq!((repeat.seq, repeat.duplicate), (1, true));
        assert_eq!(a.answer(&results, 3).seq, 3);
    }

    #[test]
    fn visible_groups_by_room_in_seq_order_and_leaves_duplicates_out() {
        let sends = [
            msg("x", "a", "1"),
            msg("y", "a", "1"),
            msg("x", "a", "2"),
            msg("x", "b", "old"),
        ];
        let a = Assembled::new(sends.iter());
        let results = [
            ok(7),
            ok(1),
            ok(8),
            Appended {
                seq: 3,
                ts: 0,
                duplicate: true,
                private: false,
            },
        ];
        let runs: Vec<_> = a.visible(&results).into_iter().map(|(r, _)| r).collect();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0][0].room.as_str(), "x");
        assert_eq!(runs[0].iter().map(|m| m.seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(runs[1][0].room.as_str(), "y");
        assert_eq!(runs[1].len(), 1);
    }
}

//! The rules of the message lifecycle (v1.1), in one place every store follows: given a
//! message as stored and a change someone asks for, what happens. A store only reads the
//! message (and the asker's reaction keys on it), calls `decide`, and writes what `apply`
//! returns, so PostgreSQL, SQLite and the in-memory fake cannot disagree on a rule.

use crate::ids::{Body, ReactionKey, Rev};
use crate::ports::{ChangeOutcome, NewChange};
use crate::protocol::{ChangeOp, Reaction, StoredMessage, StoredUpdate};

/// Most distinct reaction keys on one message: every `update` and history entry carries the
/// whole list, so it is bounded whatever the number of users (each may add up to
/// `limits.max_reaction_keys` of their own).
pub const MAX_KEYS_PER_MESSAGE: usize = 64;

/// What a change does to the stored rows besides the message's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowEffect {
    /// Nothing else.
    None,
    /// Insert the asker's reaction row for this key.
    AddReaction(ReactionKey),
    /// Delete the asker's reaction row for this key.
    RemoveReaction(ReactionKey),
    /// Delete every reaction row of the message (it was deleted).
    ClearReactions,
}

/// The verdict on one change.
#[derive(Debug)]
pub enum Decision {
    /// Refused or a no-op: answer with this, write nothing.
    Answer(ChangeOutcome),
    /// Write the message's new state (and `effect`), which takes the room's next revision.
    Apply {
        /// The message as it will be stored, `state.rev` still to be set by `commit`.
        message: Box<StoredMessage>,
        /// The reaction rows to change.
        effect: RowEffect,
    },
}

/// Decide `c` against the message as stored (`None`: no such message). `mine` holds the
/// asker's reaction keys on it; `now` is the server time in milliseconds.
pub fn decide(
    stored: Option<&StoredMessage>,
    mine: &[ReactionKey],
    c: &NewChange,
    max_reaction_keys: u32,
    now: i64,
) -> Decision {
    let Some(m) = stored else {
        return Decision::Answer(ChangeOutcome::NotFound);
    };
    let unchanged = Decision::Answer(ChangeOutcome::Unchanged(m.state.rev));
    let author = m.from == c.by;
    match &c.op {
        ChangeOp::Delete if m.state.deleted => unchanged,
        ChangeOp::Delete if !(author || c.moderator) => Decision::Answer(ChangeOutcome::Forbidden),
        // A tombstone cannot be edited or reacted to.
        _ if m.state.deleted => Decision::Answer(ChangeOutcome::Forbidden),
        ChangeOp::Edit { .. } if !author => Decision::Answer(ChangeOutcome::Forbidden),
        ChangeOp::Edit { body, meta } => {
            let meta = meta.clone().or_else(|| m.meta.clone());
            if *body == m.body && meta == m.meta {
                return unchanged;
            }
            let mut next = Box::new(m.clone());
            next.body = body.clone();
            next.meta = meta;
            next.state.edited_ts = Some(now);
            Decision::Apply {
                message: next,
                effect: RowEffect::None,
            }
        }
        ChangeOp::Delete => {
            let mut next = Box::new(m.clone());
            next.body = Body::tombstone();
            next.meta = None;
            next.state.deleted = true;
            next.state.reactions.clear();
            Decision::Apply {
                message: next,
                effect: RowEffect::ClearReactions,
            }
        }
        ChangeOp::React { key, on } => {
            let has = mine.contains(key);
            if has == *on {
                return unchanged;
            }
            let new_key = !m.state.reactions.iter().any(|r| r.key == *key);
            if *on
                && (mine.len() >= max_reaction_keys as usize
                    || (new_key && m.state.reactions.len() >= MAX_KEYS_PER_MESSAGE))
            {
                return Decision::Answer(ChangeOutcome::TooManyReactions);
            }
            let mut next = Box::new(m.clone());
            bump(&mut next.state.reactions, key, *on);
            Decision::Apply {
                message: next,
                effect: if *on {
                    RowEffect::AddReaction(key.clone())
                } else {
                    RowEffect::RemoveReaction(key.clone())
                },
            }
        }
    }
}

/// Give an applied change its revision: the update every member hears.
pub fn commit(mut message: StoredMessage, c: &NewChange, rev: Rev) -> StoredUpdate {
    message.state.rev = rev;
    message.state.mine.clear();
    StoredUpdate {
        change: c.op.kind(),
        by: c.by.clone(),
        message,
    }
}

/// The asker's reaction keys as a store read them (unreadable ones, edited by hand, skipped).
pub fn keys(stored: Vec<String>) -> Vec<ReactionKey> {
    stored
        .iter()
        .filter_map(|k| ReactionKey::parse(k).ok())
        .collect()
}

/// Reaction counts as the stores keep them (a JSON list of `{key, count}`).
pub fn reactions_to_json(r: &[Reaction]) -> Option<String> {
    (!r.is_empty()).then(|| serde_json::to_string(r).unwrap_or_else(|_| "[]".into()))
}

/// Reaction counts read back from a store; anything unreadable counts as none.
pub fn reactions_from_json(s: Option<&str>) -> Vec<Reaction> {
    #[derive(serde::Deserialize)]
    struct Raw {
        key: String,
        count: u32,
    }
    let Some(s) = s else { return Vec::new() };
    serde_json::from_str::<Vec<Raw>>(s)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let key = crate::ids::ReactionKey::parse(&r.key).ok()?;
            (r.count > 0).then_some(Reaction {
                key,
                count: r.count,
            })
        })
        .collect()
}

/// One user's reaction `key` added (`on`) or removed: counts stay in first-use order, and a
/// key nobody uses any more goes.
fn bump(reactions: &mut Vec<Reaction>, key: &ReactionKey, on: bool) {
    match reactions.iter().position(|r| r.key == *key) {
        Some(i) if on => reactions[i].count += 1,
        Some(i) if reactions[i].count > 1 => reactions[i].count -= 1,
        Some(i) => {
            reactions.remove(i);
        }
        None if on => reactions.push(Reaction {
            key: key.clone(),
            count: 1,
        }),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cid, DisplayName, Meta, RoomId, UserId};
    use crate::protocol::MessageState;

    fn msg() -> StoredMessage {
        StoredMessage {
            trace: None,
            room: RoomId::parse("r").unwrap(),
            seq: 1,
            from: UserId::parse("ann").unwrap(),
            name: DisplayName::sanitize("Ann"),
            cid: Cid::parse("c").unwrap(),
            body: Body::parse("hi", 10).unwrap(),
            ts: 0,
            meta: None,
            state: MessageState::default(),
        }
    }

    fn change(by: &str, op: ChangeOp) -> NewChange {
        NewChange {
            room: RoomId::parse("r").unwrap(),
            seq: 1,
            by: UserId::parse(by).unwrap(),
            moderator: false,
            op,
        }
    }

    fn key(k: &str) -> ReactionKey {
        ReactionKey::parse(k).unwrap()
    }

    fn edit(body: &str) -> ChangeOp {
        ChangeOp::Edit {
            body: Body::parse(body, 10).unwrap(),
            meta: None,
        }
    }

    fn outcome(d: Decision) -> String {
        match d {
            Decision::Answer(o) => format!("{o:?}"),
            Decision::Apply { effect, .. } => format!("apply {effect:?}"),
        }
    }

    #[test]
    fn only_the_author_edits_and_the_same_text_is_a_no_op() {
        let m = msg();
        assert_eq!(
            outcome(decide(None, &[], &change("ann", edit("x")), 20, 5)),
            "NotFound"
        );
        assert_eq!(
            outcome(decide(Some(&m), &[], &change("bob", edit("x")), 20, 5)),
            "Forbidden"
        );
        assert_eq!(
            outcome(decide(Some(&m), &[], &change("ann", edit("hi")), 20, 5)),
            "Unchanged(0)"
        );
        let Decision::Apply { message, .. } =
            decide(Some(&m), &[], &change("ann", edit("x")), 20, 5)
        else {
            panic!("an edit by the author applies")
        };
        assert_eq!(
            (message.body.as_str(), message.state.edited_ts),
            ("x", Some(5))
        );
    }

    #[test]
    fn an_edit_keeps_the_meta_unless_it_gives_one() {
        let mut m = msg();
        m.meta = Meta::parse(serde_json::json!({"reply_to": 1}), 100).ok();
        let Decision::Apply { message, .. } =
            decide(Some(&m), &[], &change("ann", edit("x")), 20, 5)
        else {
            panic!()
        };
        assert_eq!(message.meta, m.meta);
        let op = ChangeOp::Edit {
            body: m.body.clone(),
            meta: Meta::parse(serde_json::json!({"reply_to": 2}), 100).ok(),
        };
        assert!(matches!(
            decide(Some(&m), &[], &change("ann", op), 20, 5),
            Decision::Apply { .. }
        ));
    }

    #[test]
    fn deletes_need_the_author_or_a_moderator_and_tombstones_are_final() {
        let m = msg();
        assert_eq!(
            outcome(decide(
                Some(&m),
                &[],
                &change("bob", ChangeOp::Delete),
                20,
                5
            )),
            "Forbidden"
        );
        let mut by_mod = change("bob", ChangeOp::Delete);
        by_mod.moderator = true;
        let Decision::Apply { message, effect } = decide(Some(&m), &[], &by_mod, 20, 5) else {
            panic!()
        };
        assert_eq!(effect, RowEffect::ClearReactions);
        assert!(
            message.state.deleted && message.body.as_str().is_empty() && message.meta.is_none()
        );
        let gone = commit(*message, &by_mod, 3).message;
        assert_eq!(
            outcome(decide(Some(&gone), &[], &by_mod, 20, 5)),
            "Unchanged(3)"
        );
        assert_eq!(
            outcome(decide(Some(&gone), &[], &change("ann", edit("x")), 20, 5)),
            "Forbidden"
        );
        let react = ChangeOp::React {
            key: key("x"),
            on: true,
        };
        assert_eq!(
            outcome(decide(Some(&gone), &[], &change("ann", react), 20, 5)),
            "Forbidden"
        );
    }

    #[test]
    fn reactions_toggle_idempotently_within_the_key_cap() {
        let m = msg();
        let on = |k: &str| ChangeOp::React {
            key: key(k),
            on: true,
        };
        let Decision::Apply { message, effect } =
            decide(Some(&m), &[], &change("bob", on("👍")), 2, 5)
        else {
            panic!()
        };
        assert_eq!(effect, RowEffect::AddReaction(key("👍")));
        assert_eq!(
            message.state.reactions,
            vec![Reaction {
                key: key("👍"),
                count: 1
            }]
        );
        // Already on: no-op; two keys already: refused.
        assert_eq!(
            outcome(decide(
                Some(&message),
                &[key("👍")],
                &change("bob", on("👍")),
                2,
                5
            )),
            "Unchanged(0)"
        );
        let two = [key("a"), key("b")];
        assert_eq!(
            outcome(decide(Some(&m), &two, &change("bob", on("c")), 2, 5)),
            "TooManyReactions"
        );
        let off = ChangeOp::React {
            key: key("👍"),
            on: false,
        };
        assert_eq!(
            outcome(decide(Some(&m), &[], &change("bob", off.clone()), 2, 5)),
            "Unchanged(0)"
        );
        let Decision::Apply { message, .. } =
            decide(Some(&message), &[key("👍")], &change("bob", off), 2, 5)
        else {
            panic!()
        };
        assert!(message.state.reactions.is_empty());
    }

    #[test]
    fn reaction_counts_survive_a_round_trip_through_json() {
        let r = vec![
            Reaction {
                key: key("👍"),
                count: 2,
            },
            Reaction {
                key: key("x"),
                count: 1,
            },
        ];
        assert_eq!(reactions_from_json(reactions_to_json(&r).as_deref()), r);
        assert_eq!(reactions_to_json(&[]), None);
        assert!(reactions_from_json(Some("not json")).is_empty());
    }
}

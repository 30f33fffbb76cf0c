//! The store contract: every `MessageStore` keeps the same guarantees. Each test below runs
//! once against PostgreSQL and once against the embedded SQLite store.

use std::sync::Arc;

use chatty::store::Database;
use chatty::Settings;
use chatty_actors::{
    Body, ChangeOp, ChangeOutcome, Cid, DisplayName, MessageStore, Meta, NewChange, NewMessage,
    ReactionKey, RoomId, RoomRole, UserId,
};

fn msg(room: &str, user: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage {
        trace: None,
        room: RoomId::parse(room).unwrap(),
        from: UserId::parse(user).unwrap(),
        name: DisplayName::sanitize(user),
        cid: Cid::parse(cid).unwrap(),
        body: Body::parse(body, 4096).unwrap(),
        meta: None,
    }
}

fn change(room: &str, seq: u64, by: &str, op: ChangeOp) -> NewChange {
    NewChange {
        room: RoomId::parse(room).unwrap(),
        seq,
        by: UserId::parse(by).unwrap(),
        moderator: false,
        op,
    }
}

fn edit(body: &str) -> ChangeOp {
    ChangeOp::Edit {
        body: Body::parse(body, 4096).unwrap(),
        meta: None,
    }
}

fn react(key: &str, on: bool) -> ChangeOp {
    ChangeOp::React {
        key: ReactionKey::parse(key).unwrap(),
        on,
    }
}

/// `rev` of a change that did something; a readable panic otherwise.
fn rev_of(o: &ChangeOutcome) -> u64 {
    match o {
        ChangeOutcome::Changed(u) => u.rev(),
        other => panic!("expected a change, got {other:?}"),
    }
}

fn room(r: &str) -> RoomId {
    RoomId::parse(r).unwrap()
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

/// A fresh PostgreSQL database.
async fn postgres_db() -> Database {
    let mut s = Settings::load(std::path::Path::new("config")).unwrap();
    let base = std::env::var("CHATTY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("chatty_test_{}", uuid::Uuid::new_v4().simple());
    s.database.url = chatty::settings::Secret::new(format!("{base}/{db}"));
    Database::open(&s, true)
        .await
        .expect("PostgreSQL must be reachable (set CHATTY_TEST_DATABASE_URL)")
}

/// A fresh SQLite file.
async fn sqlite_db() -> Database {
    let mut s = Settings::load(std::path::Path::new("config")).unwrap();
    let dir = std::env::temp_dir().join(format!("chatty-store-{}", uuid::Uuid::new_v4().simple()));
    s.database.url = chatty::settings::Secret::new("");
    s.database.sqlite_path = dir.join("chatty.db").to_string_lossy().into_owned();
    Database::open(&s, true).await.unwrap()
}

async fn postgres() -> Arc<dyn MessageStore> {
    postgres_db().await.store()
}

async fn sqlite() -> Arc<dyn MessageStore> {
    sqlite_db().await.store()
}

/// Generate one test per store for each contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod pg {
            $( #[tokio::test] async fn $name() { super::$name(super::postgres().await).await } )*
        }
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::sqlite().await).await } )*
        }
    };
}

contract!(
    seqs_start_at_one_and_stay_gap_free_across_batches_and_rooms,
    a_stored_cid_returns_its_original_seq_forever,
    after_and_before_page_in_seq_order,
    read_markers_never_move_back_or_past_the_head,
    private_rooms_admit_members_only,
    an_empty_batch_is_a_no_op,
    roles_are_set_kept_and_removed_with_the_member_row,
    bans_keep_a_user_out_until_lifted_and_outlive_membership,
    meta_is_stored_and_read_back_as_given,
    changes_follow_the_rules_and_advance_a_gap_free_rev,
    changed_messages_are_read_back_by_rev_in_their_current_state,
    a_user_has_at_most_the_allowed_reaction_keys_and_sees_their_own,
    a_users_rooms_come_most_recently_active_first_with_unread_counts,
    an_edit_repeating_the_stored_meta_changes_nothing,
    appends_say_whether_the_room_is_private_and_members_are_listed_in_order,
);

async fn appends_say_whether_the_room_is_private_and_members_are_listed_in_order(
    s: Arc<dyn MessageStore>,
) {
    let r = room("dm");
    s.set_private(&r, true).await.unwrap();
    for u in ["cy", "ann", "bo"] {
        s.set_member(&r, &user(u), None).await.unwrap();
    }
    let out = s
        .append(&[msg("dm", "ann", "1", "x"), msg("open", "ann", "1", "y")])
        .await
        .unwrap();
    assert_eq!((out[0].private, out[1].private), (true, false));
    let names = |v: Vec<UserId>| v.iter().map(|u| u.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(s.members(&r, 10).await.unwrap()), ["ann", "bo", "cy"]);
    assert_eq!(names(s.members(&r, 2).await.unwrap()), ["ann", "bo"]);
    assert!(s.members(&room("open"), 10).await.unwrap().is_empty());
}

/// With webhooks on, an append writes one `message.offline` outbox row per new message of a
/// private room, in its own statement: none for a public room's, none for a repeated cid.
async fn outbox_rows_follow_the_append(db: Database) {
    let s = db.store_with_webhooks(true);
    let r = room("dm");
    s.set_private(&r, true).await.unwrap();
    s.append(&[
        msg("dm", "ann", "1", "x"),
        msg("open", "ann", "1", "y"),
        msg("dm", "bo", "1", "z"),
    ])
    .await
    .unwrap();
    s.append(&[msg("dm", "ann", "1", "x"), msg("dm", "ann", "2", "w")])
        .await
        .unwrap();
    let sql = "select okey, kind, room_id, seq, user_id from webhook_events order by id";
    type Row = (String, String, Option<String>, Option<i64>, String);
    let rows: Vec<Row> = match &db {
        Database::Postgres { pool, .. } => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        Database::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    };
    let want = |seq: i64, u: &str| {
        (
            "r:dm".to_owned(),
            "message.offline".to_owned(),
            Some("dm".to_owned()),
            Some(seq),
            u.to_owned(),
        )
    };
    assert_eq!(rows, [want(1, "ann"), want(2, "bo"), want(3, "ann")]);
    // The same store with webhooks off writes none.
    db.store()
        .append(&[msg("dm", "ann", "3", "v")])
        .await
        .unwrap();
    let n: i64 = match &db {
        Database::Postgres { pool, .. } => {
            sqlx::query_scalar("select count(*) from webhook_events")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        Database::Sqlite(pool) => sqlx::query_scalar("select count(*) from webhook_events")
            .fetch_one(pool)
            .await
            .unwrap(),
    };
    assert_eq!(n, 3);
}

#[tokio::test]
async fn outbox_rows_follow_the_append_on_postgres() {
    outbox_rows_follow_the_append(postgres_db().await).await;
}

#[tokio::test]
async fn outbox_rows_follow_the_append_on_sqlite() {
    outbox_rows_follow_the_append(sqlite_db().await).await;
}

async fn an_edit_repeating_the_stored_meta_changes_nothing(s: Arc<dyn MessageStore>) {
    s.append(&[msg("em", "ann", "1", "x")]).await.unwrap();
    let meta = || Meta::parse(serde_json::json!({"b": [1, 2], "a": {"k": "v"}}), 2048).unwrap();
    let edit = || {
        change(
            "em",
            1,
            "ann",
            ChangeOp::Edit {
                body: Body::parse("y", 4096).unwrap(),
                meta: Some(meta()),
            },
        )
    };
    assert_eq!(rev_of(&s.change(&[edit()], 20).await.unwrap()[0]), 1);
    // The store gives the meta back in its own text (jsonb's spacing and key order): the same
    // value is still the same meta.
    let again = s.change(&[edit()], 20).await.unwrap();
    assert!(
        matches!(again[0], ChangeOutcome::Unchanged(1)),
        "{:?}",
        again[0]
    );
}

async fn a_users_rooms_come_most_recently_active_first_with_unread_counts(
    s: Arc<dyn MessageStore>,
) {
    let ann = user("ann");
    s.append(&[
        msg("general", "bob", "1", "x"),
        msg("general", "bob", "2", "x"),
        msg("general", "bob", "3", "x"),
    ])
    .await
    .unwrap();
    s.set_read(&room("general"), &ann, 1).await.unwrap();
    s.set_member(&room("quiet"), &ann, None).await.unwrap();
    s.set_member(&room("dm-ab"), &ann, None).await.unwrap();
    s.append(&[msg("other", "bob", "1", "x")]).await.unwrap();
    // Later than general's last message (the clock is in milliseconds).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.append(&[msg("dm-ab", "bob", "1", "x"), msg("dm-ab", "bob", "2", "x")])
        .await
        .unwrap();
    let list = s.rooms_of(&ann, 10).await.unwrap();
    let rows: Vec<(&str, u64, u64, u64, bool)> = list
        .iter()
        .map(|r| (r.room.as_str(), r.seq, r.read, r.unread, r.ts.is_some()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("dm-ab", 2, 0, 2, true),
            ("general", 3, 1, 2, true),
            ("quiet", 0, 0, 0, false),
        ],
        "member rooms and read-marker rooms, most recent first; `other` is not hers"
    );
    assert!(list[0].ts > list[1].ts);
    assert_eq!(s.rooms_of(&ann, 1).await.unwrap().len(), 1);
    assert!(s.rooms_of(&user("nobody"), 10).await.unwrap().is_empty());
}

async fn meta_is_stored_and_read_back_as_given(s: Arc<dyn MessageStore>) {
    let meta = Meta::parse(
        serde_json::json!({"reply_to": 1, "files": [{"url": "https://x/y.png"}], "é": "ü"}),
        2048,
    )
    .unwrap();
    let mut m = msg("meta", "u", "1", "x");
    m.meta = Some(meta.clone());
    s.append(&[m, msg("meta", "u", "2", "plain")])
        .await
        .unwrap();
    let all = s.after(&room("meta"), 0, 10).await.unwrap();
    assert_eq!(all[0].meta.as_ref().map(Meta::value), Some(meta.value()));
    assert!(all[1].meta.is_none());
    let (page, _) = s.before(&room("meta"), None, 10, None).await.unwrap();
    assert_eq!(page[0].meta.as_ref().map(Meta::value), Some(meta.value()));
}

async fn changes_follow_the_rules_and_advance_a_gap_free_rev(s: Arc<dyn MessageStore>) {
    s.append(&[msg("lc", "ann", "1", "hello"), msg("lc", "bob", "2", "hi")])
        .await
        .unwrap();
    let mut by_mod = change("lc", 2, "mod", ChangeOp::Delete);
    by_mod.moderator = true;
    let out = s
        .change(
            &[
                change("lc", 1, "ann", edit("hello!")),
                change("lc", 1, "bob", edit("mine now")),
                change("lc", 1, "ann", edit("hello!")),
                change("lc", 2, "ann", react("👍", true)),
                change("lc", 2, "ann", react("👍", true)),
                change("lc", 2, "bob", react("👍", true)),
                change("lc", 99, "ann", edit("x")),
                change("lc", 2, "ann", ChangeOp::Delete),
                by_mod.clone(),
                by_mod,
                change("lc", 2, "bob", edit("back")),
                change("nowhere", 1, "ann", edit("x")),
            ],
            20,
        )
        .await
        .unwrap();
    assert_eq!(rev_of(&out[0]), 1);
    assert!(matches!(out[1], ChangeOutcome::Forbidden), "{:?}", out[1]);
    assert!(
        matches!(out[2], ChangeOutcome::Unchanged(1)),
        "{:?}",
        out[2]
    );
    assert_eq!(rev_of(&out[3]), 2);
    assert!(
        matches!(out[4], ChangeOutcome::Unchanged(2)),
        "{:?}",
        out[4]
    );
    let ChangeOutcome::Changed(two) = &out[5] else {
        panic!("{:?}", out[5])
    };
    assert_eq!((two.rev(), two.message.state.reactions[0].count), (3, 2));
    assert!(matches!(out[6], ChangeOutcome::NotFound), "{:?}", out[6]);
    assert!(
        matches!(out[7], ChangeOutcome::Forbidden),
        "not the author: {:?}",
        out[7]
    );
    let ChangeOutcome::Changed(gone) = &out[8] else {
        panic!("{:?}", out[8])
    };
    assert_eq!(gone.rev(), 4);
    assert!(gone.message.state.deleted && gone.message.body.as_str().is_empty());
    assert!(gone.message.state.reactions.is_empty());
    assert!(
        matches!(out[9], ChangeOutcome::Unchanged(4)),
        "{:?}",
        out[9]
    );
    assert!(matches!(out[10], ChangeOutcome::Forbidden), "{:?}", out[10]);
    assert!(matches!(out[11], ChangeOutcome::NotFound), "{:?}", out[11]);
    let heads = s.heads(&room("lc")).await.unwrap();
    assert_eq!((heads.seq, heads.rev), (2, 4));
    // A later batch goes on from the stored revision.
    let out = s
        .change(&[change("lc", 1, "ann", edit("again"))], 20)
        .await
        .unwrap();
    assert_eq!(rev_of(&out[0]), 5);
    // Sends do not move the revision; changes do not move the seq.
    s.append(&[msg("lc", "ann", "3", "more")]).await.unwrap();
    let heads = s.heads(&room("lc")).await.unwrap();
    assert_eq!((heads.seq, heads.rev), (3, 5));
}

async fn changed_messages_are_read_back_by_rev_in_their_current_state(s: Arc<dyn MessageStore>) {
    s.append(&[
        msg("cr", "ann", "1", "one"),
        msg("cr", "ann", "2", "two"),
        msg("cr", "ann", "3", "three"),
    ])
    .await
    .unwrap();
    s.change(
        &[
            change("cr", 2, "ann", edit("two, edited")),
            change("cr", 1, "bob", react("x", true)),
            change("cr", 2, "ann", ChangeOp::Delete),
        ],
        20,
    )
    .await
    .unwrap();
    // Revs 1 and 3 both changed seq 2: only its latest state (rev 3) is left to read.
    let (ups, head) = s.changes(&room("cr"), 0, u64::MAX, 100).await.unwrap();
    assert_eq!(head, 3);
    let got: Vec<(u64, u64)> = ups.iter().map(|u| (u.message.seq, u.rev())).collect();
    assert_eq!(got, vec![(1, 2), (2, 3)]);
    assert_eq!(ups[0].by.as_str(), "bob");
    assert_eq!(ups[0].change.as_str(), "react");
    assert_eq!(ups[1].change.as_str(), "delete");
    assert!(ups[1].message.state.deleted && ups[1].message.body.as_str().is_empty());
    // Bounded by seq (a joiner's `since`) and by count.
    let (ups, _) = s.changes(&room("cr"), 0, 1, 100).await.unwrap();
    assert_eq!(ups.len(), 1);
    let (ups, head) = s.changes(&room("cr"), 0, u64::MAX, 1).await.unwrap();
    assert_eq!((ups.len(), head), (1, 3));
    let (ups, head) = s.changes(&room("cr"), 3, u64::MAX, 10).await.unwrap();
    assert!(ups.is_empty());
    assert_eq!(head, 3);
    let (ups, head) = s.changes(&room("none"), 0, u64::MAX, 10).await.unwrap();
    assert!(ups.is_empty() && head == 0);
    // Replays and history carry the current state.
    let all = s.after(&room("cr"), 0, 10).await.unwrap();
    assert_eq!(all[0].state.reactions.len(), 1);
    assert!(all[1].state.deleted);
    assert_eq!(all[2].state.rev, 0);
}

async fn a_user_has_at_most_the_allowed_reaction_keys_and_sees_their_own(s: Arc<dyn MessageStore>) {
    s.append(&[msg("rk", "ann", "1", "one")]).await.unwrap();
    let out = s
        .change(
            &[
                change("rk", 1, "bob", react("a", true)),
                change("rk", 1, "bob", react("b", true)),
                change("rk", 1, "bob", react("c", true)),
                change("rk", 1, "cat", react("c", true)),
                change("rk", 1, "bob", react("a", false)),
                change("rk", 1, "bob", react("c", true)),
            ],
            2,
        )
        .await
        .unwrap();
    assert!(
        matches!(out[2], ChangeOutcome::TooManyReactions),
        "{:?}",
        out[2]
    );
    assert_eq!(rev_of(&out[3]), 3);
    assert_eq!(rev_of(&out[5]), 5, "room for one more once one is off");
    let bob = user("bob");
    let (page, _) = s.before(&room("rk"), None, 10, Some(&bob)).await.unwrap();
    let mine: Vec<&str> = page[0].state.mine.iter().map(|k| k.as_str()).collect();
    assert_eq!(mine, vec!["b", "c"]);
    let counts: Vec<(&str, u32)> = page[0]
        .state
        .reactions
        .iter()
        .map(|r| (r.key.as_str(), r.count))
        .collect();
    assert_eq!(counts, vec![("b", 1), ("c", 2)]);
    let (page, _) = s.before(&room("rk"), None, 10, None).await.unwrap();
    assert!(page[0].state.mine.is_empty());
}

async fn seqs_start_at_one_and_stay_gap_free_across_batches_and_rooms(s: Arc<dyn MessageStore>) {
    assert_eq!(s.head(&room("a")).await.unwrap(), 0);
    let r = s
        .append(&[
            msg("b", "u", "1", "x"),
            msg("a", "u", "1", "x"),
            msg("a", "u", "2", "x"),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = r.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![1, 1, 2]);
    assert!(r.iter().all(|a| !a.duplicate && a.ts > 0));
    let r = s.append(&[msg("a", "v", "1", "y")]).await.unwrap();
    assert_eq!(r[0].seq, 3);
    assert_eq!(s.head(&room("a")).await.unwrap(), 3);
    assert_eq!(s.head(&room("b")).await.unwrap(), 1);
    let all = s.after(&room("a"), 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(all[2].from.as_str(), "v");
}

async fn a_stored_cid_returns_its_original_seq_forever(s: Arc<dyn MessageStore>) {
    let first = s.append(&[msg("r", "u", "c", "one")]).await.unwrap()[0];
    s.append(&[msg("r", "w", "other", "x")]).await.unwrap();
    let again = s
        .append(&[msg("r", "u", "c", "two"), msg("r", "u", "d", "three")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!((again[0].seq, again[0].ts), (first.seq, first.ts));
    assert_eq!(again[1].seq, 3, "a duplicate takes no seq");
    let stored = s.after(&room("r"), 0, 10).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].body.as_str(), "one");
    // The same cid from another user, or in another room, is another message.
    let r = s
        .append(&[msg("r", "x", "c", "x"), msg("q", "u", "c", "x")])
        .await
        .unwrap();
    assert!(!r[0].duplicate && !r[1].duplicate);
}

async fn after_and_before_page_in_seq_order(s: Arc<dyn MessageStore>) {
    let batch: Vec<NewMessage> = (1..=10)
        .map(|i| msg("p", "u", &format!("c{i}"), &format!("b{i}")))
        .collect();
    s.append(&batch).await.unwrap();
    let page = s.after(&room("p"), 3, 4).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    let (newest, more) = s.before(&room("p"), None, 3, None).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert!(more);
    let (older, more) = s.before(&room("p"), Some(8), 10, None).await.unwrap();
    assert_eq!(
        older.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(!more);
    assert_eq!(older[0].body.as_str(), "b1");
    let (none, more) = s.before(&room("nothing"), None, 10, None).await.unwrap();
    assert!(none.is_empty() && !more);
    assert!(s.after(&room("p"), u64::MAX, 10).await.unwrap().is_empty());
}

async fn read_markers_never_move_back_or_past_the_head(s: Arc<dyn MessageStore>) {
    s.append(&[
        msg("m", "u", "1", "x"),
        msg("m", "u", "2", "x"),
        msg("m", "u", "3", "x"),
    ])
    .await
    .unwrap();
    assert_eq!(s.join_info(&room("m"), &user("u")).await.unwrap().read, 0);
    assert_eq!(s.set_read(&room("m"), &user("u"), 2).await.unwrap(), 2);
    assert_eq!(s.set_read(&room("m"), &user("u"), 1).await.unwrap(), 2);
    assert_eq!(s.set_read(&room("m"), &user("u"), 99).await.unwrap(), 3);
    assert_eq!(
        s.set_read(&room("m"), &user("u"), u64::MAX).await.unwrap(),
        3
    );
    assert_eq!(s.join_info(&room("m"), &user("u")).await.unwrap().read, 3);
    assert_eq!(
        s.join_info(&room("m"), &user("other")).await.unwrap().read,
        0
    );
    // A marker in a room never written to stays at 0.
    assert_eq!(s.set_read(&room("empty"), &user("u"), 5).await.unwrap(), 0);
}

async fn private_rooms_admit_members_only(s: Arc<dyn MessageStore>) {
    let (r, a, b) = (room("vip"), user("a"), user("b"));
    assert!(
        s.join_info(&r, &b).await.unwrap().allowed,
        "rooms are public by default"
    );
    s.set_private(&r, true).await.unwrap();
    s.set_member(&r, &a, None).await.unwrap();
    s.set_member(&r, &a, None).await.unwrap();
    assert!(s.join_info(&r, &a).await.unwrap().allowed);
    assert!(!s.join_info(&r, &b).await.unwrap().allowed);
    s.remove_member(&r, &a).await.unwrap();
    assert!(!s.join_info(&r, &a).await.unwrap().allowed);
    s.set_private(&r, false).await.unwrap();
    assert!(s.join_info(&r, &b).await.unwrap().allowed);
    // Making a room private keeps its history and counter.
    s.append(&[msg("vip", "a", "1", "x")]).await.unwrap();
    s.set_private(&r, true).await.unwrap();
    assert_eq!(s.head(&r).await.unwrap(), 1);
}

async fn an_empty_batch_is_a_no_op(s: Arc<dyn MessageStore>) {
    assert!(s.append(&[]).await.unwrap().is_empty());
}

async fn roles_are_set_kept_and_removed_with_the_member_row(s: Arc<dyn MessageStore>) {
    let (r, a) = (room("lobby"), user("a"));
    let role = |i: chatty_actors::JoinInfo| i.role;
    assert_eq!(role(s.join_info(&r, &a).await.unwrap()), RoomRole::Member);
    // A role row in a public room: the room stays public, the role counts.
    s.set_member(&r, &a, Some(RoomRole::Moderator))
        .await
        .unwrap();
    let info = s.join_info(&r, &a).await.unwrap();
    assert_eq!(info.role, RoomRole::Moderator);
    assert!(s.join_info(&r, &user("b")).await.unwrap().allowed);
    // Without a role, an existing one is kept; with one, it is replaced.
    s.set_member(&r, &a, None).await.unwrap();
    assert_eq!(
        role(s.join_info(&r, &a).await.unwrap()),
        RoomRole::Moderator
    );
    s.set_member(&r, &a, Some(RoomRole::Owner)).await.unwrap();
    assert_eq!(role(s.join_info(&r, &a).await.unwrap()), RoomRole::Owner);
    s.set_member(&r, &a, Some(RoomRole::Member)).await.unwrap();
    assert_eq!(role(s.join_info(&r, &a).await.unwrap()), RoomRole::Member);
    s.set_member(&r, &a, Some(RoomRole::Owner)).await.unwrap();
    s.remove_member(&r, &a).await.unwrap();
    assert_eq!(role(s.join_info(&r, &a).await.unwrap()), RoomRole::Member);
    // Roles are per room.
    assert_eq!(
        role(s.join_info(&room("other"), &a).await.unwrap()),
        RoomRole::Member
    );
}

async fn bans_keep_a_user_out_until_lifted_and_outlive_membership(s: Arc<dyn MessageStore>) {
    let (r, a, b) = (room("club"), user("a"), user("b"));
    assert!(!s.join_info(&r, &a).await.unwrap().banned);
    s.ban(&r, &a).await.unwrap();
    s.ban(&r, &a).await.unwrap();
    assert!(s.join_info(&r, &a).await.unwrap().banned);
    assert!(!s.join_info(&r, &b).await.unwrap().banned);
    assert!(!s.join_info(&room("elsewhere"), &a).await.unwrap().banned);
    // A member of a private room who is banned stays a member (an unban restores them).
    s.set_private(&r, true).await.unwrap();
    s.set_member(&r, &a, Some(RoomRole::Moderator))
        .await
        .unwrap();
    let info = s.join_info(&r, &a).await.unwrap();
    assert!(info.banned && info.allowed && info.role == RoomRole::Moderator);
    assert!(s.unban(&r, &a).await.unwrap());
    assert!(
        !s.unban(&r, &a).await.unwrap(),
        "a second unban finds nothing"
    );
    assert!(!s.join_info(&r, &a).await.unwrap().banned);
}

//! The store contract: every `MessageStore` keeps the same guarantees. Each test below runs
//! once against PostgreSQL and once against the embedded SQLite store.

use std::sync::Arc;

use chatty::store::Database;
use chatty::Settings;
use chatty_actors::{Body, Cid, DisplayName, MessageStore, NewMessage, RoomId, RoomRole, UserId};

fn msg(room: &str, user: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage {
        room: RoomId::parse(room).unwrap(),
        from: UserId::parse(user).unwrap(),
        name: DisplayName::sanitize(user),
        cid: Cid::parse(cid).unwrap(),
        body: Body::parse(body, 4096).unwrap(),
    }
}

fn room(r: &str) -> RoomId {
    RoomId::parse(r).unwrap()
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

async fn postgres() -> Arc<dyn MessageStore> {
    let mut s = Settings::load(std::path::Path::new("config")).unwrap();
    let base = std::env::var("CHATTY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("chatty_test_{}", uuid::Uuid::new_v4().simple());
    s.database.url = chatty::settings::Secret::new(format!("{base}/{db}"));
    Database::open(&s, true)
        .await
        .expect("PostgreSQL must be reachable (set CHATTY_TEST_DATABASE_URL)")
        .store()
}

async fn sqlite() -> Arc<dyn MessageStore> {
    let mut s = Settings::load(std::path::Path::new("config")).unwrap();
    let dir = std::env::temp_dir().join(format!("chatty-store-{}", uuid::Uuid::new_v4().simple()));
    s.database.url = chatty::settings::Secret::new("");
    s.database.sqlite_path = dir.join("chatty.db").to_string_lossy().into_owned();
    Database::open(&s, true).await.unwrap().store()
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
);

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
    let (newest, more) = s.before(&room("p"), None, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert!(more);
    let (older, more) = s.before(&room("p"), Some(8), 10).await.unwrap();
    assert_eq!(
        older.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(!more);
    assert_eq!(older[0].body.as_str(), "b1");
    let (none, more) = s.before(&room("nothing"), None, 10).await.unwrap();
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

//! `chatty migrate` with a migration role: the serving nodes' role can read and write rows and
//! nothing else, and the application runs on it.

use chatty::settings::Secret;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::support::*;

/// A fresh database (owned by the test's superuser) and the URL of a new application role in
/// it. Roles are cluster-wide: scripts/test.sh drops leftover `chatty_test_role_*` roles.
async fn with_app_role() -> (chatty::settings::Settings, String, String) {
    let (mut s, owner_url) = test_settings().await;
    let role = format!(
        "chatty_test_role_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut app_url = url::Url::parse(&owner_url).unwrap();
    app_url.set_username(&role).unwrap();
    // Characters that must be percent-encoded in a URL and quoted in SQL.
    app_url.set_password(Some("p@ss w'rd/1")).unwrap();
    s.database.migration_url = Secret::new(owner_url.clone());
    s.database.url = Secret::new(app_url.to_string());
    s.database.migrate_on_start = false;
    (s, owner_url, role)
}

async fn drop_role(owner_url: &str, role: &str) {
    let mut c = PgConnection::connect(owner_url).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(format!(
        "drop owned by {role}; drop role {role}"
    )))
    .await
    .unwrap();
}

#[tokio::test]
async fn the_application_role_reads_and_writes_rows_and_cannot_change_the_schema() {
    let (s, owner_url, role) = with_app_role().await;
    chatty::startup::migrate_only(&s)
        .await
        .expect("migrate with a migration role");
    // A second run (a later deploy) alters the existing role instead of creating it.
    chatty::startup::migrate_only(&s)
        .await
        .expect("migrate again");

    let mut owner = PgConnection::connect(&owner_url).await.unwrap();
    let (login, sup, createrole, createdb, has_password): (bool, bool, bool, bool, bool) =
        sqlx::query_as(
            "select rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolpassword is not null \
             from pg_authid where rolname = $1",
        )
        .bind(&role)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert!(login && has_password, "the role logs in with a password");
    assert!(
        !sup && !createrole && !createdb,
        "the role has no administrative attribute"
    );

    // The application serves on that role: a send is acknowledged and stored.
    let mut app = spawn_with(s.clone()).await;
    let mut c = app.connect("ann").await;
    c.join("r").await;
    let ack = c.send_msg("r", "c1", "hello").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (status, body) = app
        .api(
            "POST",
            "/api/v1/rooms/r/messages",
            Some(json!({"from": "svc", "name": "Service", "cid": "s1", "body": "from the API"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.rows("r").await.len(), 2);
    c.close().await;
    assert!(app.stop().await);

    // As the role: rows yes, schema no, the migration ledger read-only.
    let mut as_app = PgConnection::connect(s.database.url.expose())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&mut as_app)
        .await
        .unwrap();
    assert_eq!(n, 2);
    for ddl in [
        "create table intruder (i int)",
        "drop table messages",
        "alter table messages add column x int",
        "delete from _sqlx_migrations",
        "create role another",
    ] {
        let err = as_app.execute(ddl).await.expect_err(ddl);
        assert!(
            err.to_string().contains("permission denied")
                || err.to_string().contains("must be owner"),
            "{ddl}: {err}"
        );
    }
    as_app.close().await.unwrap();
    drop_role(&owner_url, &role).await;
}

#[tokio::test]
async fn migrate_refuses_an_application_role_that_is_the_owner_or_privileged() {
    // The same user on both URLs: no separation, refused.
    let (mut s, owner_url) = test_settings().await;
    let mut same_user = url::Url::parse(&owner_url).unwrap();
    same_user.set_password(Some("pw")).unwrap();
    s.database.url = Secret::new(same_user.to_string());
    s.database.migration_url = Secret::new(owner_url.clone());
    let err = chatty::startup::migrate_only(&s)
        .await
        .expect_err("same user");
    assert!(err.to_string().contains("same user"), "{err:#}");

    // A role that may create roles is not an application role.
    let (s, owner_url, role) = with_app_role().await;
    let mut owner = PgConnection::connect(&owner_url).await.unwrap();
    owner
        .execute(sqlx::AssertSqlSafe(format!(
            "create role {role} login createrole"
        )))
        .await
        .unwrap();
    let err = chatty::startup::migrate_only(&s)
        .await
        .expect_err("privileged role");
    assert!(err.to_string().contains("plain role"), "{err:#}");
    owner
        .execute(sqlx::AssertSqlSafe(format!("drop role {role}")))
        .await
        .unwrap();
}

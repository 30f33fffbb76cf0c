//! The `MessageStore` adapters: PostgreSQL (production, every multi-node setup) and the
//! embedded SQLite default (single node, nothing to install), behind one `Database` handle.

mod conns;
mod nodelay;
mod postgres;
mod roles;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatty_actors::lifecycle;
use chatty_actors::{
    Body, Cause, ChangeKind, Cid, DisplayName, JoinInfo, MessageState, MessageStore, Meta,
    ReactionKey, Rev, RoomId, RoomRole, RoomSummary, Seq, StoreError, StoredMessage, StoredUpdate,
    UserId,
};
pub(crate) use postgres::now_ms;
pub use postgres::PgStore;
pub use roles::AppRole;
pub use sqlite::SqliteStore;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::settings::{Settings, MAX_WRITER_LANES};
use conns::Conns;

/// An open database of either kind.
#[derive(Clone)]
pub enum Database {
    Postgres {
        /// sqlx's pool: migrations and the rare calls.
        pool: PgPool,
        /// The hot reads' connections (see `conns.rs`).
        reads: Arc<Conns>,
        /// The writer lanes' connections.
        writes: Arc<Conns>,
    },
    Sqlite(SqlitePool),
}

impl Database {
    /// Open the configured database: PostgreSQL when `database.url` is set, else SQLite at
    /// `database.sqlite_path`. Creates it when missing and migrates when `migrate` is true.
    pub async fn open(settings: &Settings, migrate: bool) -> anyhow::Result<Database> {
        let d = &settings.database;
        let timeout = Duration::from_millis(d.connect_timeout_ms);
        let url = d.url.expose();
        let db = if url.is_empty() {
            let path = std::path::Path::new(&d.sqlite_path);
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("database.sqlite_path: cannot create {}", dir.display())
                })?;
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // WAL: readers never block the writer. FULL: every commit is fsynced before
                // it returns, so an acknowledged message survives a power loss too.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(d.max_connections.clamp(1, 8))
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .with_context(|| format!("database.sqlite_path: cannot open {}", path.display()))?;
            Database::Sqlite(pool)
        } else {
            if migrate
                && !tokio::time::timeout(timeout, sqlx::Postgres::database_exists(url))
                    .await
                    .context("database.url: timed out reaching the database")?
                    .context("database.url: cannot reach the database")?
            {
                sqlx::Postgres::create_database(url)
                    .await
                    .context("database.url: cannot create the database")?;
            }
            let opts: PgConnectOptions = url.parse().context("database.url: not a valid URL")?;
            let port = opts.get_port();
            // sqlx's pool now serves only migrations and the rare API calls (the hot paths use
            // `conns.rs`). No ping before each use, as there: a connection that died while idle
            // fails its next query once (the caller sees `unavailable` and may retry).
            let pool = PgPoolOptions::new()
                .max_connections(d.max_connections)
                .acquire_timeout(timeout)
                .test_before_acquire(false)
                .after_connect(move |_, _| Box::pin(async move { nodelay(port) }))
                .connect_with(opts)
                .await
                .context("database.url: cannot connect")?;
            // The writer lanes' connections: their own, outside the pool, so reads never hold
            // a lane back and a batch pays neither the pool's ping nor its hand-back (~4% of the
            // server's CPU in the many-rooms profile). They run nothing but the append, so they
            // are tuned for it (measured with pgbench and psql, see docs/benchmarks.md):
            // - one generic plan, made once per connection: planning the statement each time
            //   cost ~0.5 ms, 40% of a small batch;
            // - hash joins between its CTEs: the generic plan cannot know how many rows the
            //   arrays hold, guesses few, and otherwise joins them with nested loops that take
            //   ~70 ms on a 1,000-row batch (the one nested loop it needs, the index probe per
            //   key, stays: LATERAL leaves no other way);
            // - no JIT: a large batch's plan crosses `jit_above_cost`, and compiling took
            //   longer than running it (540 rows: 12-19 ms without, 32-36 ms with).
            let writes = (*pool.connect_options()).clone().options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_nestloop", "off"),
                ("jit", "off"),
            ]);
            Database::Postgres {
                reads: Arc::new(Conns::new(
                    (*pool.connect_options()).clone(),
                    d.max_connections as usize,
                    timeout,
                )),
                writes: Arc::new(Conns::new(writes, MAX_WRITER_LANES, timeout)),
                pool,
            }
        };
        if migrate {
            db.migrate().await?;
        }
        Ok(db)
    }

    /// Apply the migrations embedded in the binary.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Database::Postgres { pool, .. } => {
                sqlx::migrate!("./migrations/postgres").run(pool).await
            }
            Database::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await,
        }
        .context("running migrations")
    }

    /// Keep the application's role (see `roles.rs`); PostgreSQL only.
    pub async fn grant_app_role(&self, role: &AppRole) -> anyhow::Result<()> {
        match self {
            Database::Postgres { pool, .. } => roles::grant_app_role(pool, role).await,
            Database::Sqlite(_) => anyhow::bail!("database.migration_url needs PostgreSQL"),
        }
    }

    pub fn store(&self) -> Arc<dyn MessageStore> {
        self.store_with_webhooks(false)
    }

    /// The store; with `webhooks`, appends to private rooms also write their outbox rows.
    pub fn store_with_webhooks(&self, webhooks: bool) -> Arc<dyn MessageStore> {
        match self {
            Database::Postgres {
                pool,
                reads,
                writes,
            } => Arc::new(
                PgStore::from_parts(pool.clone(), reads.clone(), writes.clone())
                    .with_webhooks(webhooks),
            ),
            Database::Sqlite(p) => Arc::new(SqliteStore::new(p.clone()).with_webhooks(webhooks)),
        }
    }

    /// How many writer lanes this store can use: SQLite has one writer by nature (more lanes
    /// would only queue on its lock), PostgreSQL takes what is configured.
    pub fn writer_lanes(&self, configured: usize) -> usize {
        match self {
            Database::Postgres { .. } => configured,
            Database::Sqlite(_) => 1,
        }
    }

    /// One cheap round trip to the database (the health check), on sqlx's pool.
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Database::Postgres { pool, .. } => {
                sqlx::query("select 1").execute(pool).await.map(drop)
            }
            Database::Sqlite(p) => sqlx::query("select 1").execute(p).await.map(drop),
        }
        .map_err(|e| e.to_string())
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Database::Postgres { .. } => "postgres",
            Database::Sqlite(_) => "sqlite",
        }
    }

    /// (open, idle) connections of the pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            // The hot reads' connections: the pool itself only serves the rare calls.
            Database::Postgres { reads, .. } => reads.stats(),
            Database::Sqlite(p) => (p.size(), p.num_idle()),
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres {
                pool,
                reads,
                writes,
            } => {
                writes.close().await;
                reads.close().await;
                pool.close().await
            }
            Database::Sqlite(p) => p.close().await,
        }
    }
}

/// Run after each new PostgreSQL connection: see `nodelay.rs`.
pub(crate) fn nodelay(port: u16) -> Result<(), sqlx::Error> {
    let n = nodelay::apply(port);
    tracing::debug!(sockets = n, "TCP_NODELAY set on database connections");
    Ok(())
}

/// Rebuild a message from a row of either store (the columns of `MESSAGE_COLUMNS`). Rows
/// were validated on the way in; a row that no longer parses (edited by hand) is reported
/// rather than delivered.
pub(crate) fn row_to_message<'r, R>(room: &RoomId, r: &'r R) -> Result<StoredMessage, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database>,
    Option<bool>: Decode<'r, R::Database>,
    Option<String>: Decode<'r, R::Database>,
{
    let bad =
        |what: &str| StoreError::Other(format!("stored message has an invalid {what}").into());
    let seq: i64 = r.try_get("seq").map_err(store_err)?;
    let user: String = r.try_get("user_id").map_err(store_err)?;
    let name: String = r.try_get("name").map_err(store_err)?;
    let cid: String = r.try_get("cid").map_err(store_err)?;
    let body: String = r.try_get("body").map_err(store_err)?;
    let ts: i64 = r.try_get("ts").map_err(store_err)?;
    let meta: Option<String> = r.try_get("meta").map_err(store_err)?;
    // Null until the message first changes: a plain send writes none of these columns.
    let rev: Option<i64> = r.try_get("rev").map_err(store_err)?;
    let edited_ts: Option<i64> = r.try_get("edited_ts").map_err(store_err)?;
    let deleted: Option<bool> = r.try_get("deleted").map_err(store_err)?;
    let deleted = deleted.unwrap_or(false);
    let reactions: Option<String> = r.try_get("reactions").map_err(store_err)?;
    Ok(StoredMessage {
        trace: None,
        room: room.clone(),
        seq: seq as Seq,
        from: UserId::parse(&user).map_err(|_| bad("user"))?,
        name: DisplayName::sanitize(&name),
        cid: Cid::parse(&cid).map_err(|_| bad("cid"))?,
        body: if deleted {
            Body::tombstone()
        } else {
            Body::parse(&body, usize::MAX).map_err(|_| bad("body"))?
        },
        ts,
        meta: match meta.as_deref() {
            None => None,
            Some(m) => Some(Meta::from_stored(m).ok_or_else(|| bad("meta"))?),
        },
        state: MessageState {
            rev: rev.unwrap_or(0).max(0) as Rev,
            edited_ts,
            deleted,
            reactions: lifecycle::reactions_from_json(reactions.as_deref()),
            mine: Vec::new(),
        },
    })
}

/// A changed message as a change replayed or filled: its row plus `change` and `changed_by`.
pub(crate) fn row_to_update<'r, R>(room: &RoomId, r: &'r R) -> Result<StoredUpdate, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database>,
    Option<String>: Decode<'r, R::Database>,
{
    let bad =
        |what: &str| StoreError::Other(format!("changed message has an invalid {what}").into());
    let change: Option<String> = r.try_get("change").map_err(store_err)?;
    let by: Option<String> = r.try_get("changed_by").map_err(store_err)?;
    Ok(StoredUpdate {
        change: change
            .as_deref()
            .and_then(ChangeKind::parse)
            .ok_or_else(|| bad("change"))?,
        by: UserId::parse(by.as_deref().unwrap_or_default()).map_err(|_| bad("changed_by"))?,
        message: row_to_message(room, r)?,
    })
}

/// A conversation-list row as both stores read it: (room, head, read marker, last activity).
pub(crate) type SummaryRow = (String, Option<i64>, Option<i64>, Option<i64>);

/// The conversation list from rows of either store.
pub(crate) fn summaries(rows: Vec<SummaryRow>) -> Result<Vec<RoomSummary>, StoreError> {
    rows.into_iter()
        .map(|(room, seq, read, ts)| {
            let room = RoomId::parse(&room)
                .map_err(|_| StoreError::Other("stored room id is invalid".into()))?;
            let n = |v: Option<i64>| v.unwrap_or(0).max(0) as Seq;
            Ok(RoomSummary::new(room, n(seq), n(read), ts))
        })
        .collect()
}

/// User ids as both stores read them.
pub(crate) fn user_ids(rows: Vec<String>) -> Result<Vec<UserId>, StoreError> {
    rows.iter()
        .map(|u| {
            UserId::parse(u).map_err(|_| StoreError::Other("stored user id is invalid".into()))
        })
        .collect()
}

/// Fill each message's `state.mine` from (seq, key) rows of one user's reactions.
pub(crate) fn with_mine(msgs: &mut [StoredMessage], rows: Vec<(i64, String)>) {
    for (seq, key) in rows {
        let Ok(key) = ReactionKey::parse(&key) else {
            continue;
        };
        if let Some(m) = msgs.iter_mut().find(|m| m.seq == seq as Seq) {
            m.state.mine.push(key);
        }
    }
}

/// The seq range of a page's messages that have reactions (none: no need to ask whose).
pub(crate) fn reacted_range(msgs: &[StoredMessage]) -> Option<(i64, i64)> {
    let mut it = msgs.iter().filter(|m| !m.state.reactions.is_empty());
    let first = it.next()?.seq as i64;
    let last = it.next_back().map_or(first, |m| m.seq as i64);
    Some((first, last))
}

/// Build a `JoinInfo` from the columns both stores read. A role the table's check
/// constraint lets through but this binary does not know (a newer version wrote it) is read
/// as the least one, `member`.
pub(crate) fn join_info(
    public: bool,
    role: Option<&str>,
    banned: bool,
    read: i64,
) -> Result<JoinInfo, StoreError> {
    Ok(JoinInfo {
        allowed: public || role.is_some(),
        banned,
        role: role.and_then(RoomRole::parse).unwrap_or_default(),
        read: read.max(0) as Seq,
    })
}

/// Turn rows read newest first, one more than `limit`, into a page oldest first and whether
/// older messages exist.
pub(crate) fn page<R>(
    room: &RoomId,
    rows: &[R],
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database>,
    for<'r> Option<bool>: Decode<'r, R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
{
    let more = rows.len() > limit as usize;
    let mut msgs = rows
        .iter()
        .take(limit as usize)
        .map(|r| row_to_message(room, r))
        .collect::<Result<Vec<_>, _>>()?;
    msgs.reverse();
    Ok((msgs, more))
}

/// Classify a sqlx error: connection trouble is `Unavailable` (retry later), the rest is
/// `Other` (logged whole, opaque to clients).
pub(crate) fn store_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(Cause::of(e)),
        sqlx::Error::Database(db) => {
            // Postgres classes 08 (connection exception), 53 (insufficient resources), 57
            // (operator intervention, e.g. shutdown), 40001/40P01 (retryable conflicts);
            // SQLite 5/6 (BUSY/LOCKED).
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
                || code == "5"
                || code == "6"
            {
                StoreError::Unavailable(Cause::of(e))
            } else {
                StoreError::Other(Cause::of(e))
            }
        }
        _ => StoreError::Other(Cause::of(e)),
    }
}

//! The `MessageStore` adapters: PostgreSQL (production, every multi-node setup).

mod postgres;

pub use postgres::PgStore;

use chatty_actors::StoreError;

/// Classify a sqlx error: connection trouble is `Unavailable` (retry later), the rest is
/// `Other` (logged whole, opaque to clients).
pub(crate) fn store_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => {
            // Class 08 (connection exception), 53 (insufficient resources), 57 (operator
            // intervention, e.g. shutdown), 40001/40P01 (retryable conflicts).
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
            {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Other(e.to_string())
            }
        }
        _ => StoreError::Other(e.to_string()),
    }
}

//! The application's PostgreSQL role, kept by `chatty migrate`.
//!
//! Two identities touch the database: the migration role (the schema's owner, on RDS the master
//! user) runs `chatty migrate` as a one-off task; the serving nodes connect as an application
//! role that may read and write rows and nothing else: no DDL, no other roles, no other
//! databases. After migrating, `chatty migrate` creates that role from the user and password of
//! `database.url` (or sets its password again, so rotating the secret and re-running the task
//! rotates the role) and grants it exactly that, on every table the migrations made.

use anyhow::{bail, Context};
use sqlx::{PgPool, Row};

/// Who the serving nodes connect as, read from their `database.url`.
#[derive(Debug, PartialEq, Eq)]
pub struct AppRole {
    pub name: String,
    password: String,
}

impl AppRole {
    /// The user and password of a `postgres://user:password@host/db` URL.
    pub fn from_url(app_url: &str) -> anyhow::Result<AppRole> {
        let url = url::Url::parse(app_url).context("database.url: not a valid URL")?;
        let decode = |s: &str| {
            percent_decode(s).context("database.url: the user or password is not valid UTF-8")
        };
        let name = decode(url.username())?;
        let password = decode(url.password().unwrap_or(""))?;
        if name.is_empty() || password.is_empty() {
            bail!("database.url must name the application's user and password when database.migration_url is set");
        }
        Ok(AppRole { name, password })
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    Ok(percent_encoding::percent_decode_str(s)
        .decode_utf8()?
        .into_owned())
}

/// Create or update `role` and grant it row access to everything in the `public` schema,
/// connected as the migration role. One transaction: a half-granted role is never left behind.
pub async fn grant_app_role(pool: &PgPool, role: &AppRole) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("app role: cannot begin")?;
    let me: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&mut *tx)
        .await?;
    if me == role.name {
        bail!(
            "database.url and database.migration_url name the same user ({me}): the application \
             must connect as its own, less privileged role"
        );
    }
    let existing =
        sqlx::query("select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = $1")
            .bind(&role.name)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(row) = &existing {
        let (sup, cr, cd): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if sup || cr || cd {
            bail!(
                "the application role {} may create roles or databases (or is a superuser): \
                 refusing to use it; give the application a plain role",
                role.name
            );
        }
    }
    // Role names and passwords cannot be bind parameters in DDL: the server quotes them
    // (format's %I and %L), so a name or password is never spliced in by hand.
    let role_statement = if existing.is_some() {
        "select format('alter role %I login nosuperuser nocreatedb nocreaterole noinherit password %L', $1::text, $2::text)"
    } else {
        "select format('create role %I login nosuperuser nocreatedb nocreaterole noinherit password %L', $1::text, $2::text)"
    };
    let statements = [
        role_statement,
        "select format('grant connect, temporary on database %I to %I', current_database(), $1::text)",
        "select format('grant usage on schema public to %I', $1::text)",
        "select format('grant select, insert, update, delete on all tables in schema public to %I', $1::text)",
        "select format('grant usage, select, update on all sequences in schema public to %I', $1::text)",
        // The migration ledger is the schema's history: readable, never writable.
        "select format('revoke insert, update, delete on table _sqlx_migrations from %I', $1::text)",
        // Tables a later migration adds get the same grants even before the next run.
        "select format('alter default privileges in schema public grant select, insert, update, delete on tables to %I', $1::text)",
        "select format('alter default privileges in schema public grant usage, select, update on sequences to %I', $1::text)",
    ];
    for quoting in statements {
        let sql: String = sqlx::query_scalar(quoting)
            .bind(&role.name)
            .bind(&role.password)
            .fetch_one(&mut *tx)
            .await
            .context("app role: quoting")?;
        // Safe: every name and literal in it was quoted by the server's format() above.
        let label = sql.split(" password ").next().unwrap_or("").to_owned();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("app role {}: {label}", role.name))?;
    }
    tx.commit().await.context("app role: cannot commit")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_password_percent_decoded() {
        let r = AppRole::from_url(
            "postgres://chatty_app:p%40ss%2Fw@db:5432/chatty?sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(r.name, "chatty_app");
        assert_eq!(r.password, "p@ss/w");
    }

    #[test]
    fn refuses_a_url_without_credentials() {
        assert!(AppRole::from_url("postgres://db/chatty").is_err());
        assert!(AppRole::from_url("postgres://user@db/chatty").is_err());
    }
}

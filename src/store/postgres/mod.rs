//! Postgres store: for production, and for several sidecars sharing one database.
//!
//! Sharing is safe because every decision is made inside a transaction on the rows it
//! concerns: work is picked with `FOR UPDATE SKIP LOCKED` (two sidecars never lease the same
//! item), and a commit first writes its instance row, ending the lease, `WHERE lock_token =
//! $token`, which takes the row lock, so a sidecar whose lease was taken over finds the token
//! gone and writes nothing. Each transaction that gives another sidecar something to do ends with a
//! `NOTIFY`; every sidecar `LISTEN`s, so work created anywhere is dispatched at once.

mod notify;
mod queries;

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::sync::broadcast;
use tracing::info;

use super::db::Db;
use super::*;

/// Whether a URL names a Postgres database.
pub fn handles(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

pub struct PostgresStore {
    pool: PgPool,
    /// Tells other sidecars (and filters our own echoes) which instances a commit touched.
    notifier: notify::Notifier,
    changes: broadcast::Sender<Change>,
    _listener: crate::task::AbortOnDrop,
    write_concurrency: usize,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// An RPC waits at most this long for a connection; when the database is gone it answers
/// UNAVAILABLE instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

async fn pool(url: &str, options: &Options, schema: Option<&str>) -> Result<PgPool, sqlx::Error> {
    let mut connect = url.parse::<PgConnectOptions>()?.application_name("outrigger");
    // One direct connection first: its error says what is wrong (refused, bad password, no
    // such database), where a pool would only report that it timed out.
    let mut first = PgConnection::connect_with(&connect).await?;
    if let Some(schema) = schema {
        create_schema(&mut first, schema).await?;
        // Every connection of a named hub's pool sees only the hub's schema, so the store's
        // queries (and the migrator's bookkeeping table) stay unqualified and shared by all hubs.
        connect = connect.options([("search_path", format!("\"{schema}\""))]);
    }
    first.close().await?;
    Ok(PgPoolOptions::new()
        .max_connections(options.pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(connect))
}

/// The schema a named task hub's tables live in (the default hub keeps the URL's own, `public`
/// unless the URL says otherwise). Hub names are lower-case letters, digits, `-` and `_`.
pub fn hub_schema(hub: &str) -> String {
    format!("outrigger_hub_{hub}")
}

async fn create_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
        .execute(&mut *conn)
        .await;
    match created {
        // Two sidecars creating the same schema at once: one of them gets a unique violation
        // in spite of IF NOT EXISTS; the schema exists either way.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        other => other.map(drop),
    }
}

/// Applies pending migrations. Safe to run from several sidecars at once: the migrator holds
/// an advisory lock while it works.
pub async fn migrate(url: &str, options: &Options) -> Result<(), sqlx::Error> {
    let pool = pool(url, options, None).await?;
    run_migrations(&pool).await
}

async fn run_migrations(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::migrate!("src/store/postgres/migrations").run(pool).await?;
    Ok(())
}

impl PostgresStore {
    /// Connects, applies pending migrations and starts listening for other sidecars' changes.
    pub async fn open(url: &str, options: &Options) -> Result<Self, sqlx::Error> {
        Self::open_in(url, options, None).await
    }

    /// The store of a named task hub: its own schema (created and migrated when missing) and
    /// its own notification channel, in the same database.
    pub async fn open_hub(url: &str, options: &Options, hub: &str) -> Result<Self, sqlx::Error> {
        Self::open_in(url, options, Some(hub)).await
    }

    async fn open_in(url: &str, options: &Options, hub: Option<&str>) -> Result<Self, sqlx::Error> {
        let schema = hub.map(hub_schema);
        let pool = pool(url, options, schema.as_deref()).await?;
        run_migrations(&pool).await?;
        let channel = hub.map_or_else(|| notify::CHANNEL.to_string(), notify::hub_channel);
        let notifier = notify::Notifier::new(channel);
        let (changes, _) = broadcast::channel(1024);
        let listener = notify::listen(url, notifier.clone(), changes.clone()).await?;
        info!(
            pool_size = options.pool_size,
            schema = schema.as_deref().unwrap_or("(default)"),
            "postgres store open"
        );
        // Write batches run side by side on part of the pool, leaving the rest for leasing and
        // client calls.
        let write_concurrency = (options.pool_size as usize / 2).max(1);
        Ok(PostgresStore {
            pool,
            notifier,
            changes,
            _listener: listener,
            write_concurrency,
        })
    }
}

impl Db for PostgresStore {
    type Conn = PgConnection;
    type Tx = sqlx::Transaction<'static, Postgres>;
    type Pooled = PoolConnection<Postgres>;

    async fn begin(&self) -> Result<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

    /// The NOTIFY is delivered only if the transaction commits.
    async fn commit(&self, mut tx: Self::Tx, wake: Option<&[String]>) -> Result<()> {
        if let Some(ids) = wake {
            self.notifier.send(&mut tx, ids).await?;
        }
        Ok(tx.commit().await?)
    }

    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn lease(&self) -> Result<PoolConnection<Postgres>> {
        self.read().await
    }

    fn writers(&self) -> usize {
        self.write_concurrency
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

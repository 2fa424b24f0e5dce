//! SQLite store: the embedded default. One writer connection (SQLite allows one writer at a
//! time anyway, and a single connection avoids SQLITE_BUSY between our own transactions) and a
//! small pool of readers, which WAL mode lets run beside the writer.

mod queries;

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Sqlite, SqliteConnection, SqlitePool};
use tracing::{debug, info, warn};

use super::cache::HistoryCache;
use super::db::Db;
use super::*;

#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    histories: HistoryCache,
}

/// Creates a missing database file readable and writable by its owner only: it holds every
/// payload. SQLite gives its -wal and -shm files the same mode. An existing file is left as it
/// is, and a failure here is left for SQLite to report when it opens the file.
fn create_private(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The database of a named task hub: a sibling file of the default hub's, `NAME.db` becoming
/// `NAME.hub-<hub>.db` (query parameters kept), or a database of its own in memory. A file
/// per hub keeps every query unchanged and gives each hub its own writer lock, so a busy hub
/// never holds up another's commits.
pub fn hub_url(url: &str, hub: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return "sqlite::memory:".to_string();
    }
    let (path, query) = url.split_once('?').map_or((url, None), |(path, query)| (path, Some(query)));
    // The file name starts after the last '/' or, with none, after the scheme's ':'.
    let (dir, file) = path.split_at(path.rfind(['/', ':']).map_or(0, |i| i + 1));
    let file = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.hub-{hub}.{ext}"),
        _ => format!("{file}.hub-{hub}"),
    };
    format!("{dir}{file}{}", query.map(|q| format!("?{q}")).unwrap_or_default())
}

/// Read connections beside the writer (WAL lets them run while it writes).
const READERS: u32 = 4;

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, sqlx::Error> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            // FULL: a commit is on disk before a worker hears "OK", so even a power loss keeps
            // what was acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        if !memory {
            create_private(options.get_filename());
        }
        // An in-memory database lives and dies with its connection, so it gets exactly one,
        // kept forever, shared by readers and the writer.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("src/store/sqlite/migrations").run(&writer).await?;
        let reader = if memory {
            writer.clone()
        } else {
            // Every reader is opened now and kept: a process that later runs out of file
            // descriptors (a flood of connections) still reads, where opening one would fail.
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .min_connections(READERS)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options.read_only(true))
                .await?
        };
        let store = SqliteStore {
            writer,
            reader,
            histories: HistoryCache::default(),
        };
        // One SQLite file serves one sidecar, so leases left by a previous run (a crash) belong
        // to nobody now: release them so that work is dispatched again at once.
        store.release_all(None).await.map_err(|e| match e {
            StoreError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
        info!(%url, "sqlite store open");
        Ok(store)
    }
}

/// A transaction on the writer connection, begun, committed and rolled back by hand.
///
/// sqlx's own transactions keep a nesting count beside the connection, and it goes wrong when
/// SQLite has already rolled a transaction back by itself (it does on a full disk and on I/O
/// errors): the ROLLBACK that follows fails, the count stays at one, and from then on every
/// "transaction" is a savepoint inside one that is never committed, so each write is answered
/// OK and lost. Here nothing is counted: a failed statement or COMMIT is followed by a ROLLBACK
/// (its "no transaction is active" error is expected and harmless), and a transaction dropped
/// unfinished (an early error return, a cancelled call) is rolled back before the connection
/// serves anyone else.
pub(super) struct WriteTx {
    conn: Option<PoolConnection<Sqlite>>,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = conn.execute("BEGIN IMMEDIATE").await {
            // Still inside a transaction that a failed rollback left open: end it, once more.
            warn!(error = %e, "could not begin a write transaction; rolling back and retrying");
            rollback(&mut conn).await;
            conn.execute("BEGIN IMMEDIATE").await?;
        }
        Ok(WriteTx { conn: Some(conn) })
    }

    /// Commits; on failure the transaction is rolled back and the error returned, so the
    /// caller never acknowledges what is not on disk.
    async fn commit(mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("a transaction is committed once");
        if let Err(e) = conn.execute("COMMIT").await {
            rollback(&mut conn).await;
            return Err(e.into());
        }
        Ok(())
    }
}

/// Ends whatever transaction the connection is in; the connection is in autocommit afterwards
/// unless the ROLLBACK itself failed for another reason (then the next begin tries again).
async fn rollback(conn: &mut SqliteConnection) {
    if let Err(e) = conn.execute("ROLLBACK").await {
        debug!(error = %e, "rollback (the transaction may already have been rolled back by SQLite)");
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        // The connection goes back to the pool only after the rollback, as the task owns it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { rollback(&mut conn).await });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("an open transaction")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("an open transaction")
    }
}

impl Db for SqliteStore {
    type Conn = SqliteConnection;
    type Tx = WriteTx;
    type Pooled = PoolConnection<Sqlite>;

    async fn begin(&self) -> Result<WriteTx> {
        WriteTx::begin(&self.writer).await
    }

    /// One sidecar per file: nobody else to tell.
    async fn commit(&self, tx: WriteTx, _: Option<&[String]>) -> Result<()> {
        tx.commit().await
    }

    async fn read(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    async fn lease(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.writer.acquire().await?)
    }

    fn cache(&self) -> Option<&HistoryCache> {
        Some(&self.histories)
    }
}

#[cfg(test)]
mod hub_url_tests {
    use super::hub_url;

    #[test]
    fn hub_files_sit_beside_the_default_one() {
        assert_eq!(
            hub_url("sqlite:///data/outrigger.db", "mine"),
            "sqlite:///data/outrigger.hub-mine.db"
        );
        assert_eq!(
            hub_url("sqlite://outrigger.db?mode=rwc", "a-1"),
            "sqlite://outrigger.hub-a-1.db?mode=rwc"
        );
        assert_eq!(hub_url("sqlite:state", "x"), "sqlite:state.hub-x");
        assert_eq!(hub_url("sqlite://./dir.v2/.hidden", "x"), "sqlite://./dir.v2/.hidden.hub-x");
        assert_eq!(hub_url("sqlite::memory:", "x"), "sqlite::memory:");
    }
}

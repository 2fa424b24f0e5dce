//! SQLite store: the embedded default. One writer connection (SQLite allows one writer at a
//! time anyway, and a single connection avoids SQLITE_BUSY between our own transactions) and a
//! small pool of readers, which WAL mode lets run beside the writer.

mod cache;
mod entities;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Executor, Row, Sqlite, SqliteConnection, SqlitePool};
use tonic::async_trait;
use tracing::{debug, info, warn};

use super::encoding::{bind_fields, decode, decode_tags, encode, status};
use super::filters;
use super::*;
use crate::engine::events::kind_name;
use crate::engine::wakes_suspended;
use crate::model::{ChildRewind, HistoryWrite, is_terminal};
use crate::proto::ActivityRequest;
use crate::proto::history_event::EventType;
use cache::HistoryCache;

#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    histories: HistoryCache,
}

const INSTANCE_COLUMNS: &str = "instance_id, name, version, execution_id, status, input, output, custom_status, \
     failure_details, created_at, updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, trace_context";

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
    let (scheme, rest) = match url.strip_prefix("sqlite://") {
        Some(rest) => ("sqlite://", rest),
        None => ("sqlite:", url.strip_prefix("sqlite:").unwrap_or(url)),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (rest, String::new()),
    };
    let (dir, file) = match path.rsplit_once('/') {
        Some((dir, file)) => (format!("{dir}/"), file),
        None => (String::new(), path),
    };
    let file = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.hub-{hub}.{ext}"),
        _ => format!("{file}.hub-{hub}"),
    };
    format!("{scheme}{dir}{file}{query}")
}

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
            SqlitePoolOptions::new()
                .max_connections(4)
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
struct WriteTx {
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

fn instance_from_row(row: &SqliteRow) -> Result<Instance> {
    Ok(Instance {
        instance_id: row.try_get("instance_id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        execution_id: row.try_get("execution_id")?,
        status: status(row.try_get("status")?)?,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        custom_status: row.try_get("custom_status")?,
        failure_details: row
            .try_get::<Option<Vec<u8>>, _>("failure_details")?
            .map(|b| decode(&b))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        scheduled_start_at: row.try_get("scheduled_start_at")?,
        parent_instance_id: row.try_get("parent_instance_id")?,
        tags: decode_tags(row.try_get::<Option<Vec<u8>>, _>("tags")?.as_deref())?,
        trace_context: row
            .try_get::<Option<Vec<u8>>, _>("trace_context")?
            .map(|b| decode(&b))
            .transpose()?,
    })
}

async fn load_instance(conn: &mut SqliteConnection, id: &str) -> Result<Option<Instance>> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(instance_from_row).transpose()
}

async fn load_history(conn: &mut SqliteConnection, id: &str) -> Result<Vec<HistoryEvent>> {
    let rows = sqlx::query("SELECT event FROM history WHERE instance_id = ? ORDER BY seq")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| decode(r.get::<&[u8], _>(0))).collect()
}

/// Inserts a new, unleased instance row.
async fn insert_instance(conn: &mut SqliteConnection, i: &Instance, ready_at: Micros) -> Result<()> {
    bind_fields(
        sqlx::query(
            "INSERT INTO instances (instance_id, name, version, execution_id, status, input, output, custom_status, \
         failure_details, created_at, updated_at, completed_at, scheduled_start_at, parent_instance_id, tags, trace_context, ready_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&i.instance_id),
        i,
    )
    .bind(ready_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes a step's instance row and ends its lease, in one statement that matches only while
/// `token` still holds the lease (the row lock it takes also fences a sidecar that took over).
/// False when the lease is gone; then nothing was written.
async fn update_held_instance(conn: &mut SqliteConnection, i: &Instance, token: &str) -> Result<bool> {
    let done = bind_fields(
        sqlx::query(
            "UPDATE instances SET name = ?, version = ?, execution_id = ?, status = ?, input = ?, output = ?, custom_status = ?, \
         failure_details = ?, created_at = ?, updated_at = ?, completed_at = ?, scheduled_start_at = ?, parent_instance_id = ?, \
         tags = ?, trace_context = ?, ready_at = 0, lock_token = NULL, lock_owner = NULL, lock_expires = 0 \
         WHERE instance_id = ? AND lock_token = ?",
        ),
        i,
    )
    .bind(&i.instance_id)
    .bind(token)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

async fn insert_message(conn: &mut SqliteConnection, m: &Message) -> Result<()> {
    sqlx::query("INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&m.instance_id)
        .bind(&m.execution_id)
        .bind(m.priority)
        .bind(i32::from(wakes_suspended(&m.event)))
        .bind(m.visible_at)
        .bind(encode(&m.event))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Queues a message if its target exists, is running and (for execution-bound messages) is
/// still on that execution; otherwise drops it with a log line.
async fn deliver(conn: &mut SqliteConnection, m: &Message) -> Result<Delivery> {
    if m.is_for_entity() {
        return entities::enqueue(conn, m).await;
    }
    let row = sqlx::query("SELECT status, execution_id FROM instances WHERE instance_id = ?")
        .bind(&m.instance_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        info!(instance_id = %m.instance_id, event = kind_name(&m.event), "dropping event for an unknown instance");
        return Ok(Delivery::Unknown);
    };
    let target_status = status(row.get(0))?;
    let execution: String = row.get(1);
    if is_terminal(target_status) {
        info!(instance_id = %m.instance_id, event = kind_name(&m.event), status = target_status.as_str_name(), "dropping event for a finished instance");
        return Ok(Delivery::Finished);
    }
    if m.execution_id.as_ref().is_some_and(|e| *e != execution) {
        debug!(instance_id = %m.instance_id, event = kind_name(&m.event), "dropping event for a replaced execution");
        return Ok(Delivery::Finished);
    }
    if matches!(m.event.event_type, Some(EventType::ExecutionTerminated(_))) && target_status == OrchestrationStatus::Pending {
        sqlx::query("UPDATE inbox SET visible_at = ? WHERE instance_id = ? AND visible_at > ?")
            .bind(m.visible_at)
            .bind(&m.instance_id)
            .bind(m.visible_at)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE instances SET ready_at = 0 WHERE instance_id = ?")
            .bind(&m.instance_id)
            .execute(&mut *conn)
            .await?;
    }
    insert_message(conn, m).await?;
    Ok(Delivery::Queued)
}

/// Adds "{column} IN (?, ?, ...)" binding each of `values`.
fn push_in<'a>(q: &mut sqlx::QueryBuilder<sqlx::Sqlite>, column: &str, values: impl IntoIterator<Item = &'a String>) {
    q.push(column).push(" IN (");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v.clone());
    }
    q.push(")");
}

/// Most rows one multi-row statement writes or names: SQLite binds at most 32,766 values per
/// statement, so larger steps (a fan-out to thousands of activities) take several statements.
const ROWS_PER_STATEMENT: usize = 1000;

async fn delete_messages(conn: &mut SqliteConnection, ids: &[i64]) -> Result<()> {
    for ids in ids.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM inbox WHERE id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes an instance and everything that belongs to it.
async fn delete_instance(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM history WHERE instance_id = ?",
        "DELETE FROM inbox WHERE instance_id = ?",
        "DELETE FROM activities WHERE instance_id = ?",
        "DELETE FROM instances WHERE instance_id = ?",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Creates an instance; `replacing` says a finished one with the same id is there to go first.
async fn insert_new(conn: &mut SqliteConnection, new: &NewInstance, replacing: bool) -> Result<()> {
    if replacing {
        delete_instance(conn, &new.instance.instance_id).await?;
    }
    insert_instance(conn, &new.instance, new.instance.scheduled_start_at.unwrap_or(0)).await?;
    insert_message(conn, &new.start).await
}

/// Writes a step's history; `known_len` is the current length when the caller knows it.
async fn write_history(conn: &mut SqliteConnection, id: &str, write: &HistoryWrite, known_len: Option<usize>) -> Result<()> {
    let (events, mut seq) = match write {
        HistoryWrite::Append(events) if events.is_empty() => return Ok(()),
        HistoryWrite::Append(events) => match known_len {
            Some(len) => (events, len as i64),
            None => {
                let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM history WHERE instance_id = ?")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
                (events, next)
            }
        },
        HistoryWrite::Replace(events) => {
            sqlx::query("DELETE FROM history WHERE instance_id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            (events, 0)
        }
    };
    for events in events.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::new("INSERT INTO history (instance_id, seq, event) ");
        q.push_values(events, |mut row, e| {
            row.push_bind(id.to_string()).push_bind(seq).push_bind(encode(e));
            seq += 1;
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn rewind_in(conn: &mut SqliteConnection, id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
    let Some(instance) = load_instance(conn, id).await? else {
        return Ok(Rewind::Unknown);
    };
    if instance.status != OrchestrationStatus::Failed {
        return Ok(Rewind::NotFailed(instance.status));
    }
    sqlx::query(
        "UPDATE instances SET status = ?, output = NULL, failure_details = NULL, completed_at = NULL, updated_at = ?, ready_at = 0 \
         WHERE instance_id = ?",
    )
    .bind(OrchestrationStatus::Running as i32)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let message = Message {
        instance_id: id.to_string(),
        execution_id: Some(instance.execution_id),
        event,
        visible_at: now,
        priority: Message::NORMAL,
    };
    insert_message(conn, &message).await?;
    Ok(Rewind::Rewound)
}

async fn rewind_child(conn: &mut SqliteConnection, r: &ChildRewind, now: Micros) -> Result<()> {
    let event = crate::engine::events::rewound(now, r.reason.clone(), Some(r.parent_execution_id.clone()));
    if rewind_in(conn, &r.instance_id, event, now).await? == Rewind::Unknown {
        info!(instance_id = %r.instance_id, "recreating purged sub-orchestration for rewind");
        insert_new(conn, &r.recreate, false).await?;
    }
    Ok(())
}

/// What a committed step did to an instance's history, for the cache.
struct HistoryChange {
    instance_id: String,
    execution_id: String,
    write: HistoryWrite,
    finished: bool,
}

/// One orchestration step inside a write batch; nothing is written when the lease is gone.
async fn step_in(
    conn: &mut SqliteConnection,
    token: &str,
    consumed: &[i64],
    commit: &Commit,
    now: Micros,
    cache: &HistoryCache,
    changes: &mut Vec<HistoryChange>,
) -> Result<Vec<String>> {
    if !update_held_instance(conn, &commit.instance, token).await? {
        return Err(StoreError::LeaseLost);
    }
    delete_messages(conn, consumed).await?;
    let known_len = cache.len(&commit.instance.instance_id, &commit.instance.execution_id);
    let changed = effects_in(conn, commit, now, known_len).await?;
    changes.push(HistoryChange {
        instance_id: commit.instance.instance_id.clone(),
        execution_id: commit.instance.execution_id.clone(),
        finished: commit.instance.is_terminal(),
        write: commit.history.clone(),
    });
    Ok(changed)
}

/// What a commit writes beyond its instance row: history, leftovers of a finished instance,
/// activities, children, messages and rewinds. Returns the instances whose state changed.
async fn effects_in(conn: &mut SqliteConnection, commit: &Commit, now: Micros, known_len: Option<usize>) -> Result<Vec<String>> {
    let id = commit.instance.instance_id.clone();
    write_history(conn, &id, &commit.history, known_len).await?;
    if commit.instance.is_terminal() {
        // Nothing will consume these any more: pending events, timers, queued activities.
        sqlx::query("DELETE FROM inbox WHERE instance_id = ?")
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM activities WHERE instance_id = ? AND lock_token IS NULL")
            .bind(&id)
            .execute(&mut *conn)
            .await?;
    }
    for activities in commit.activities.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            sqlx::QueryBuilder::new("INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at, name, version) ");
        q.push_values(activities, |mut row, a| {
            row.push_bind(a.instance_id.clone())
                .push_bind(a.execution_id.clone())
                .push_bind(a.request.task_id)
                .push_bind(encode(&a.request))
                .push_bind(now)
                .push_bind(a.request.name.clone())
                .push_bind(a.request.version.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    let mut changed = vec![id.clone()];
    for c in &commit.children {
        let existing: Option<i64> = sqlx::query_scalar("SELECT status FROM instances WHERE instance_id = ?")
            .bind(&c.child.instance.instance_id)
            .fetch_optional(&mut *conn)
            .await?;
        match existing.map(status).transpose()? {
            Some(s) if !is_terminal(s) => {
                info!(parent = %id, child = %c.child.instance.instance_id, "sub-orchestration id is taken by a running instance; failing that child");
                deliver(conn, &c.on_conflict).await?;
            }
            existing => {
                insert_new(conn, &c.child, existing.is_some()).await?;
                changed.push(c.child.instance.instance_id.clone());
            }
        }
    }
    for m in &commit.messages {
        deliver(conn, m).await?;
    }
    for r in &commit.rewinds {
        rewind_child(conn, r, now).await?;
        changed.push(r.instance_id.clone());
    }
    Ok(changed)
}

/// One activity result inside a write batch; nothing is written when the lease is gone.
async fn activity_result_in(conn: &mut SqliteConnection, id: i64, token: &str, result: &HistoryEvent, now: Micros) -> Result<Vec<String>> {
    let row = sqlx::query("DELETE FROM activities WHERE id = ? AND lock_token = ? RETURNING instance_id, execution_id")
        .bind(id)
        .bind(token)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Err(StoreError::LeaseLost) };
    let message = Message {
        instance_id: row.get(0),
        execution_id: Some(row.get(1)),
        event: result.clone(),
        visible_at: now,
        priority: Message::NORMAL,
    };
    // One statement: queued only while that execution is still running (a result for a
    // finished or replaced execution is dropped, as `deliver` would).
    static QUEUE_RESULT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO inbox (instance_id, execution_id, priority, kind, visible_at, event) SELECT ?, ?, ?, 0, ?, ? \
             WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = ? AND execution_id = ? AND status NOT IN ({}))",
            filters::terminal_statuses()
        )
    });
    let queued = sqlx::query(QUEUE_RESULT.as_str())
        .bind(&message.instance_id)
        .bind(&message.execution_id)
        .bind(message.priority)
        .bind(message.visible_at)
        .bind(encode(&message.event))
        .bind(&message.instance_id)
        .bind(&message.execution_id)
        .execute(&mut *conn)
        .await?;
    if queued.rows_affected() == 0 {
        debug!(instance_id = %message.instance_id, "dropping an activity result for a finished or replaced execution");
    }
    Ok(vec![message.instance_id])
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, new: NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let existing: Option<i64> = sqlx::query_scalar("SELECT status FROM instances WHERE instance_id = ?")
            .bind(&new.instance.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(s) = existing {
            let s = status(s)?;
            if !replaceable.contains(&s) {
                return Err(StoreError::AlreadyExists(new.instance.instance_id, s.as_str_name()));
            }
        }
        insert_new(&mut tx, &new, existing.is_some()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_with_history(&self, commit: Commit, now: Micros) -> Result<Vec<String>> {
        let id = commit.instance.instance_id.clone();
        let mut tx = WriteTx::begin(&self.writer).await?;
        let existing: Option<i64> = sqlx::query_scalar("SELECT status FROM instances WHERE instance_id = ?")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(s) = existing {
            return Err(StoreError::AlreadyExists(id, status(s)?.as_str_name()));
        }
        insert_instance(&mut tx, &commit.instance, 0).await?;
        let changed = effects_in(&mut tx, &commit, now, Some(0)).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn get_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        let mut conn = self.reader.acquire().await?;
        load_instance(&mut conn, instance_id).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>> {
        let mut conn = self.reader.acquire().await?;
        load_history(&mut conn, instance_id).await
    }

    async fn send(&self, message: Message) -> Result<Delivery> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let delivery = deliver(&mut tx, &message).await?;
        tx.commit().await?;
        Ok(delivery)
    }

    async fn rewind(&self, instance_id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let outcome = rewind_in(&mut tx, instance_id, event, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn query(&self, f: &InstanceFilter) -> Result<Vec<Instance>> {
        let rows = filters::instances::<sqlx::Sqlite>(INSTANCE_COLUMNS, f)
            .build()
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn count_by_status(&self, f: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>> {
        let rows = filters::counts::<sqlx::Sqlite>(f).build().fetch_all(&self.reader).await?;
        filters::status_counts(rows.iter().map(|r| (i64::from(r.get::<i32, _>(0)), r.get::<i64, _>(1))))
    }

    async fn finished(&self, f: &FinishedFilter) -> Result<Vec<(Micros, String)>> {
        let rows = filters::finished::<sqlx::Sqlite>(f).build().fetch_all(&self.reader).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn purge(&self, instance_id: &str, recursive: bool) -> Result<Purge> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        if let Ok(entity) = crate::engine::entities::normalize_id(instance_id) {
            let deleted = entities::purge(&mut tx, &entity).await?;
            tx.commit().await?;
            return Ok(Purge::Deleted(deleted));
        }
        let mut pending = vec![instance_id.to_string()];
        let mut deleted = 0;
        while let Some(id) = pending.pop() {
            let Some(row) = sqlx::query("SELECT status FROM instances WHERE instance_id = ?")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                continue;
            };
            let s = status(row.get(0))?;
            if !is_terminal(s) {
                if deleted == 0 && id == instance_id {
                    return Ok(Purge::NotFinished(s));
                }
                continue; // a child still running is left alone
            }
            if recursive {
                for e in load_history(&mut tx, &id).await? {
                    if let Some(EventType::SubOrchestrationInstanceCreated(c)) = e.event_type {
                        pending.push(c.instance_id);
                    }
                }
            }
            delete_instance(&mut tx, &id).await?;
            self.histories.forget(&id);
            deleted += 1;
        }
        tx.commit().await?;
        Ok(Purge::Deleted(deleted))
    }

    async fn delete_all(&self) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        for table in ["history", "inbox", "activities", "instances"] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *tx).await?;
        }
        for sql in entities::DELETE_ALL {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        self.histories.clear();
        tx.commit().await?;
        Ok(())
    }

    async fn lock_orchestrations(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedOrchestration>> {
        // One statement leases the batch and returns the rows (nothing to do costs one query).
        // History and inbox are then read beside the writer: the lease keeps them ours.
        // ?6 is the workers' name filter (NULL: any name), see `filters::names_json`.
        static LOCK: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE instances SET lock_token = lower(hex(randomblob(16))), lock_owner = ?1, lock_expires = ?2 \
                 WHERE instance_id IN ( \
                   SELECT DISTINCT m.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
                   WHERE m.visible_at <= ?3 AND i.lock_expires <= ?3 AND i.ready_at <= ?3 AND (i.status != ?4 OR m.kind = 1) \
                     AND (?6 IS NULL OR EXISTS (SELECT 1 FROM json_each(?6) f \
                       WHERE f.value ->> 0 = i.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(i.version, '')))) \
                   LIMIT ?5) \
                 RETURNING lock_token, {INSTANCE_COLUMNS}"
            )
        });
        let rows = sqlx::query(LOCK.as_str())
            .bind(lease.owner)
            .bind(lease.until)
            .bind(lease.now)
            .bind(OrchestrationStatus::Suspended as i32)
            .bind(i64::from(max))
            .bind(filters::names_json(names))
            .fetch_all(&self.writer)
            .await?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let mut picked = Vec::with_capacity(rows.len());
        for row in &rows {
            picked.push((row.try_get::<String, _>("lock_token")?, instance_from_row(row)?));
        }
        let ids: Vec<String> = picked.iter().map(|(_, i)| i.instance_id.clone()).collect();
        let mut histories: HashMap<String, Vec<HistoryEvent>> = HashMap::new();
        for (_, i) in &picked {
            if let Some(events) = self.histories.get(&i.instance_id, &i.execution_id) {
                histories.insert(i.instance_id.clone(), events);
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !histories.contains_key(*id)).collect();
        let mut conn = self.reader.acquire().await?;
        if !missing.is_empty() {
            let mut q = sqlx::QueryBuilder::new("SELECT instance_id, event FROM history");
            push_in(&mut q, " WHERE instance_id", missing.iter().copied());
            q.push(" ORDER BY instance_id, seq");
            let mut loaded: HashMap<String, Vec<HistoryEvent>> = HashMap::new();
            for r in q.build().fetch_all(&mut *conn).await? {
                loaded.entry(r.get(0)).or_default().push(decode(r.get::<&[u8], _>(1))?);
            }
            for (_, i) in picked.iter().filter(|(_, i)| missing.contains(&&i.instance_id)) {
                let events = loaded.remove(&i.instance_id).unwrap_or_default();
                if !i.is_terminal() {
                    self.histories.put(&i.instance_id, &i.execution_id, events.clone());
                }
                histories.insert(i.instance_id.clone(), events);
            }
        }
        let mut q = sqlx::QueryBuilder::new("SELECT id, instance_id, execution_id, priority, visible_at, event FROM inbox");
        push_in(&mut q, " WHERE instance_id", &ids);
        q.push(" AND visible_at <= ").push_bind(lease.now).push(" ORDER BY priority, id");
        let mut inboxes: HashMap<String, Vec<(i64, Message)>> = HashMap::new();
        for r in q.build().fetch_all(&mut *conn).await? {
            let instance_id: String = r.get(1);
            let message = Message {
                instance_id: instance_id.clone(),
                execution_id: r.get(2),
                priority: r.get(3),
                visible_at: r.get(4),
                event: decode(r.get::<&[u8], _>(5))?,
            };
            inboxes.entry(instance_id).or_default().push((r.get(0), message));
        }
        Ok(LockedOrchestration::assemble(picked, histories, inboxes))
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Result<Vec<String>>>> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let mut results = Vec::with_capacity(writes.len());
        let mut changes = vec![];
        for w in writes {
            let result = match w {
                Write::Step {
                    token,
                    consumed,
                    commit,
                    now,
                } => step_in(&mut tx, token, consumed, commit, *now, &self.histories, &mut changes).await,
                Write::ActivityResult { id, token, result, now } => activity_result_in(&mut tx, *id, token, result, *now).await,
                Write::EntityStep { token, commit } => entities::step_in(&mut tx, token, commit).await,
            };
            match result {
                Err(StoreError::LeaseLost) => results.push(Err(StoreError::LeaseLost)),
                Err(e) => return Err(e),
                Ok(changed) => results.push(Ok(changed)),
            }
        }
        tx.commit().await?;
        // Only now that the batch is on disk does the cache learn of it.
        for c in changes {
            match c.write {
                _ if c.finished => self.histories.forget(&c.instance_id),
                HistoryWrite::Append(events) => self.histories.append(&c.instance_id, &c.execution_id, &events),
                HistoryWrite::Replace(events) => self.histories.put(&c.instance_id, &c.execution_id, events),
            }
        }
        Ok(results)
    }

    async fn release_orchestration(&self, instance_id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let held = sqlx::query(
            "UPDATE instances SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, ready_at = ? \
             WHERE instance_id = ? AND lock_token = ?",
        )
        .bind(ready_at)
        .bind(instance_id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        delete_messages(&mut tx, consumed).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_activities(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>> {
        // ?5 is the workers' name filter (NULL: any name); rows without a name column (queued
        // before it existed) are leased whatever the filter and checked by the dispatcher.
        let rows = sqlx::query(
            "UPDATE activities SET lock_token = lower(hex(randomblob(16))), lock_owner = ?1, lock_expires = ?2 \
             WHERE id IN (SELECT id FROM activities a WHERE lock_expires <= ?3 AND visible_at <= ?3 \
               AND (?5 IS NULL OR a.name IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) f \
                 WHERE f.value ->> 0 = a.name AND (f.value ->> 1 IS NULL OR f.value ->> 1 = COALESCE(a.version, '')))) \
               ORDER BY id LIMIT ?4) \
             RETURNING id, lock_token, instance_id, execution_id, request",
        )
        .bind(lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(i64::from(max))
        .bind(filters::names_json(names))
        .fetch_all(&self.writer)
        .await?;
        let mut locked = Vec::with_capacity(rows.len());
        for r in rows {
            let request: ActivityRequest = decode(r.get::<&[u8], _>(4))?;
            let task = ActivityTask {
                instance_id: r.get(2),
                execution_id: r.get(3),
                request,
            };
            locked.push(LockedActivity {
                id: r.get(0),
                token: r.get(1),
                task,
            });
        }
        locked.sort_by_key(|a| a.id);
        Ok(locked)
    }

    async fn release_activity(&self, id: i64, token: &str, visible_at: Micros) -> Result<()> {
        let done = sqlx::query(
            "UPDATE activities SET lock_token = NULL, lock_owner = NULL, lock_expires = 0, visible_at = ? WHERE id = ? AND lock_token = ?",
        )
        .bind(visible_at)
        .bind(id)
        .bind(token)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    async fn renew_leases(&self, tokens: &[String], until: Micros) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        for token in tokens {
            for sql in [
                "UPDATE instances SET lock_expires = ? WHERE lock_token = ?",
                "UPDATE activities SET lock_expires = ? WHERE lock_token = ?",
                "UPDATE entities SET lease_expires = ? WHERE lease_token = ?",
            ] {
                sqlx::query(sql).bind(until).bind(token).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_all(&self, owner: Option<&str>) -> Result<()> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        for table in ["instances", "activities"] {
            let sql = format!(
                "UPDATE {table} SET lock_token = NULL, lock_owner = NULL, lock_expires = 0 WHERE lock_owner IS NOT NULL AND (?1 IS NULL OR lock_owner = ?1)"
            );
            sqlx::query(AssertSqlSafe(sql)).bind(owner).execute(&mut *tx).await?;
        }
        sqlx::query(
            "UPDATE entities SET lease_token = NULL, lease_owner = NULL, lease_expires = 0 WHERE lease_owner IS NOT NULL AND (?1 IS NULL OR lease_owner = ?1)",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_entity(&self, instance_id: &str) -> Result<Option<EntitySummary>> {
        entities::get(&self.reader, instance_id).await
    }

    async fn query_entities(&self, filter: &EntityListFilter) -> Result<Vec<EntitySummary>> {
        entities::query(&self.reader, filter).await
    }

    async fn clean_entities(&self, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
        let mut tx = WriteTx::begin(&self.writer).await?;
        let cleaned = entities::clean(&mut tx, remove_empty, release_orphaned_locks).await?;
        tx.commit().await?;
        Ok(cleaned)
    }

    async fn lock_entities(&self, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
        entities::lock(&self.writer, &self.reader, lease, max).await
    }

    async fn release_entity(&self, instance_id: &str, token: &str, ready_at: Micros) -> Result<()> {
        entities::release(&self.writer, instance_id, token, ready_at).await
    }

    async fn next_due(&self, now: Micros) -> Result<Option<Micros>> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(visible_at) AS t FROM inbox WHERE visible_at > ?1 \
               UNION ALL SELECT MIN(ready_at) FROM instances WHERE ready_at > 0 AND ready_at > ?1 \
               UNION ALL SELECT MIN(visible_at) FROM activities WHERE visible_at > ?1 \
               UNION ALL SELECT MIN(visible_at) FROM entity_queue WHERE deferred = 0 AND visible_at > ?1 \
               UNION ALL SELECT MIN(ready_at) FROM entities WHERE ready_at > ?1)",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(due)
    }

    async fn backlog(&self, now: Micros) -> Result<Backlog> {
        // As lock_orchestrations picks instances; see the Postgres store's BACKLOG.
        let (orchestrations, activities, timers, expired): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT COUNT(DISTINCT m.instance_id) FROM inbox m JOIN instances i ON i.instance_id = m.instance_id \
                 WHERE m.visible_at <= ?1 AND i.lock_expires <= ?1 AND i.ready_at <= ?1 AND (i.status != ?2 OR m.kind = 1)), \
               (SELECT COUNT(*) FROM activities WHERE lock_expires <= ?1 AND visible_at <= ?1), \
               (SELECT COUNT(*) FROM inbox WHERE visible_at > ?1), \
               (SELECT COUNT(*) FROM instances WHERE lock_token IS NOT NULL AND lock_expires <= ?1) \
                 + (SELECT COUNT(*) FROM activities WHERE lock_token IS NOT NULL AND lock_expires <= ?1)",
        )
        .bind(now)
        .bind(OrchestrationStatus::Suspended as i32)
        .fetch_one(&self.reader)
        .await?;
        Ok(Backlog {
            orchestrations: orchestrations as u64,
            activities: activities as u64,
            timers: timers as u64,
            expired_leases: expired as u64,
        })
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

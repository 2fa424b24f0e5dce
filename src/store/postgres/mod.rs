//! Postgres store: for production, and for several sidecars sharing one database.
//!
//! Sharing is safe because every decision is made inside a transaction on the rows it
//! concerns: work is picked with `FOR UPDATE SKIP LOCKED` (two sidecars never lease the same
//! item), and a commit first writes its instance row, ending the lease, `WHERE lock_token =
//! $token`, which takes the row lock, so a sidecar whose lease was taken over finds the token
//! gone and writes nothing. Each transaction that gives another sidecar something to do ends with a
//! `NOTIFY`; every sidecar `LISTEN`s, so work created anywhere is dispatched at once.

mod entities;
mod notify;
mod queries;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::broadcast;
use tonic::async_trait;
use tracing::{debug, info};

use super::encoding::{bind_fields, decode, decode_tags, encode, status};
use super::filters;
use super::*;
use crate::engine::events::kind_name;
use crate::engine::wakes_suspended;
use crate::model::{ChildRewind, HistoryWrite, is_terminal};
use crate::proto::ActivityRequest;
use crate::proto::history_event::EventType;
use queries::*;

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

fn instance_from_row(row: &PgRow) -> Result<Instance> {
    Ok(Instance {
        instance_id: row.try_get("instance_id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        execution_id: row.try_get("execution_id")?,
        status: status(row.try_get::<i32, _>("status")?.into())?,
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

async fn load_instance(conn: &mut PgConnection, id: &str) -> Result<Option<Instance>> {
    let row = sqlx::query(SELECT_INSTANCE).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(instance_from_row).transpose()
}

async fn instance_status(conn: &mut PgConnection, id: &str) -> Result<Option<OrchestrationStatus>> {
    let s: Option<i32> = sqlx::query_scalar(SELECT_STATUS).bind(id).fetch_optional(&mut *conn).await?;
    s.map(|s| status(s.into())).transpose()
}

async fn load_history(conn: &mut PgConnection, id: &str) -> Result<Vec<HistoryEvent>> {
    let rows = sqlx::query(SELECT_HISTORY).bind(id).fetch_all(&mut *conn).await?;
    rows.iter().map(|r| decode(r.get::<&[u8], _>(0))).collect()
}

/// Inserts a new, unleased instance row.
async fn insert_instance(conn: &mut PgConnection, i: &Instance, ready_at: Micros) -> Result<()> {
    bind_fields(sqlx::query(INSERT_INSTANCE).bind(&i.instance_id), i)
        .bind(ready_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes a step's instance row and ends its lease, in one statement that matches only while
/// `token` still holds the lease (the row lock it takes also fences a sidecar that took over).
/// False when the lease is gone; then nothing was written.
async fn update_held_instance(conn: &mut PgConnection, i: &Instance, token: &str) -> Result<bool> {
    let done = bind_fields(sqlx::query(UPDATE_HELD_INSTANCE), i)
        .bind(&i.instance_id)
        .bind(token)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

async fn insert_message(conn: &mut PgConnection, m: &Message) -> Result<()> {
    sqlx::query(INSERT_MESSAGE)
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
/// still on that execution; otherwise drops it with a log line. A message that races with
/// its target finishing on another sidecar may still be queued; the engine drops it when the
/// finished instance is next looked at.
async fn deliver(conn: &mut PgConnection, m: &Message) -> Result<Delivery> {
    if m.is_for_entity() {
        return entities::enqueue(conn, m).await;
    }
    let row = sqlx::query(SELECT_STATUS_AND_EXECUTION)
        .bind(&m.instance_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        info!(instance_id = %m.instance_id, event = kind_name(&m.event), "dropping event for an unknown instance");
        return Ok(Delivery::Unknown);
    };
    let target_status = status(row.get::<i32, _>(0).into())?;
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
        sqlx::query(MAKE_PENDING_DUE)
            .bind(m.visible_at)
            .bind(&m.instance_id)
            .execute(&mut *conn)
            .await?;
    }
    insert_message(conn, m).await?;
    Ok(Delivery::Queued)
}

/// Deletes an instance and everything that belongs to it.
async fn delete_instance(conn: &mut PgConnection, id: &str) -> Result<()> {
    for sql in DELETE_INSTANCE {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Creates an instance; `replacing` says a finished one with the same id is there to go first.
async fn insert_new(conn: &mut PgConnection, new: &NewInstance, replacing: bool) -> Result<()> {
    if replacing {
        delete_instance(conn, &new.instance.instance_id).await?;
    }
    insert_instance(conn, &new.instance, new.instance.scheduled_start_at.unwrap_or(0)).await?;
    insert_message(conn, &new.start).await
}

async fn write_history(conn: &mut PgConnection, id: &str, write: &HistoryWrite) -> Result<()> {
    let (events, first) = match write {
        HistoryWrite::Append(events) if events.is_empty() => return Ok(()),
        HistoryWrite::Append(events) => {
            let next: i32 = sqlx::query_scalar(NEXT_HISTORY_SEQ).bind(id).fetch_one(&mut *conn).await?;
            (events, next)
        }
        HistoryWrite::Replace(events) => {
            sqlx::query(DELETE_HISTORY).bind(id).execute(&mut *conn).await?;
            (events, 0)
        }
    };
    let encoded: Vec<Vec<u8>> = events.iter().map(encode).collect();
    sqlx::query(INSERT_HISTORY)
        .bind(id)
        .bind(first)
        .bind(encoded)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn rewind_in(conn: &mut PgConnection, id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
    let Some(instance) = load_instance(conn, id).await? else {
        return Ok(Rewind::Unknown);
    };
    if instance.status != OrchestrationStatus::Failed {
        return Ok(Rewind::NotFailed(instance.status));
    }
    sqlx::query(REWIND_INSTANCE)
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

async fn rewind_child(conn: &mut PgConnection, r: &ChildRewind, now: Micros) -> Result<()> {
    let event = crate::engine::events::rewound(now, r.reason.clone(), Some(r.parent_execution_id.clone()));
    if rewind_in(conn, &r.instance_id, event, now).await? == Rewind::Unknown {
        info!(instance_id = %r.instance_id, "recreating purged sub-orchestration for rewind");
        insert_new(conn, &r.recreate, false).await?;
    }
    Ok(())
}

/// Maps a unique-key violation on an instance id to [`StoreError::AlreadyExists`]: two
/// sidecars creating the same new id at once both see no row, and one insert loses.
fn taken(id: &str, e: StoreError) -> StoreError {
    match &e {
        StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            StoreError::AlreadyExists(id.to_string(), OrchestrationStatus::Pending.as_str_name())
        }
        _ => e,
    }
}

/// One orchestration step inside a write batch; nothing is written when the lease is gone.
/// The instances the step sends messages to are added to `touched`, to be notified.
async fn step_in(
    conn: &mut PgConnection,
    token: &str,
    consumed: &[i64],
    commit: &Commit,
    now: Micros,
    touched: &mut Vec<String>,
) -> Result<Vec<String>> {
    // Checked first: a sidecar that took the instance over after our lease expired has
    // changed the token, and we write nothing.
    if !update_held_instance(conn, &commit.instance, token).await? {
        return Err(StoreError::LeaseLost);
    }
    sqlx::query(DELETE_MESSAGES).bind(consumed).execute(&mut *conn).await?;
    effects_in(conn, commit, now, touched).await
}

/// What a commit writes beyond its instance row: history, leftovers of a finished instance,
/// activities, children, messages and rewinds. Returns the instances whose state changed; the
/// ones it sends messages to are added to `touched`.
async fn effects_in(conn: &mut PgConnection, commit: &Commit, now: Micros, touched: &mut Vec<String>) -> Result<Vec<String>> {
    let id = commit.instance.instance_id.clone();
    write_history(conn, &id, &commit.history).await?;
    if commit.instance.is_terminal() {
        // Nothing will consume these any more: pending events, timers, queued activities.
        for sql in DELETE_LEFTOVERS {
            sqlx::query(sql).bind(&id).execute(&mut *conn).await?;
        }
    }
    if !commit.activities.is_empty() {
        let (mut ids, mut executions, mut task_ids, mut requests) = (vec![], vec![], vec![], vec![]);
        let (mut names, mut versions) = (vec![], vec![]);
        for a in &commit.activities {
            ids.push(a.instance_id.as_str());
            executions.push(a.execution_id.as_str());
            task_ids.push(a.request.task_id);
            requests.push(encode(&a.request));
            names.push(a.request.name.as_str());
            versions.push(a.request.version.as_deref());
        }
        sqlx::query(INSERT_ACTIVITIES)
            .bind(ids)
            .bind(executions)
            .bind(task_ids)
            .bind(requests)
            .bind(now)
            .bind(names)
            .bind(versions)
            .execute(&mut *conn)
            .await?;
    }
    let mut changed = vec![id.clone()];
    for c in &commit.children {
        let child = &c.child.instance.instance_id;
        match instance_status(conn, child).await? {
            Some(s) if !is_terminal(s) => {
                info!(parent = %id, %child, "sub-orchestration id is taken by a running instance; failing that child");
                deliver(conn, &c.on_conflict).await?;
            }
            existing => {
                insert_new(conn, &c.child, existing.is_some()).await?;
                changed.push(child.clone());
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
    touched.extend(commit.messages.iter().map(|m| m.instance_id.clone()));
    touched.extend(commit.children.iter().map(|c| c.on_conflict.instance_id.clone()));
    Ok(changed)
}

/// One activity result inside a write batch; nothing is written when the lease is gone.
async fn activity_result_in(conn: &mut PgConnection, id: i64, token: &str, result: &HistoryEvent, now: Micros) -> Result<Vec<String>> {
    let row = sqlx::query(DELETE_LOCKED_ACTIVITY)
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
impl Store for PostgresStore {
    async fn create_instance(&self, new: NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
        let id = new.instance.instance_id.clone();
        let mut tx = self.pool.begin().await?;
        let existing: Option<i32> = sqlx::query_scalar(SELECT_STATUS_FOR_UPDATE)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(s) = existing.map(|s| status(s.into())).transpose()?
            && !replaceable.contains(&s)
        {
            return Err(StoreError::AlreadyExists(id, s.as_str_name()));
        }
        insert_new(&mut tx, &new, existing.is_some()).await.map_err(|e| taken(&id, e))?;
        self.notifier.send(&mut tx, [&id]).await?;
        tx.commit().await.map_err(|e| taken(&id, e.into()))?;
        Ok(())
    }

    async fn create_with_history(&self, commit: Commit, now: Micros) -> Result<Vec<String>> {
        let id = commit.instance.instance_id.clone();
        let mut tx = self.pool.begin().await?;
        if let Some(s) = instance_status(&mut tx, &id).await? {
            return Err(StoreError::AlreadyExists(id, s.as_str_name()));
        }
        insert_instance(&mut tx, &commit.instance, 0).await.map_err(|e| taken(&id, e))?;
        let mut touched = vec![];
        let changed = effects_in(&mut tx, &commit, now, &mut touched).await?;
        touched.extend(changed.iter().cloned());
        self.notifier.send(&mut tx, &touched).await?;
        tx.commit().await.map_err(|e| taken(&id, e.into()))?;
        Ok(changed)
    }

    async fn get_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        let mut conn = self.pool.acquire().await?;
        load_instance(&mut conn, instance_id).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>> {
        let mut conn = self.pool.acquire().await?;
        load_history(&mut conn, instance_id).await
    }

    async fn send(&self, message: Message) -> Result<Delivery> {
        let mut tx = self.pool.begin().await?;
        let delivery = deliver(&mut tx, &message).await?;
        if delivery == Delivery::Queued {
            self.notifier.send(&mut tx, [&message.instance_id]).await?;
        }
        tx.commit().await?;
        Ok(delivery)
    }

    async fn rewind(&self, instance_id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
        let mut tx = self.pool.begin().await?;
        let outcome = rewind_in(&mut tx, instance_id, event, now).await?;
        if outcome == Rewind::Rewound {
            self.notifier.send(&mut tx, [instance_id]).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn query(&self, f: &InstanceFilter) -> Result<Vec<Instance>> {
        let rows = filters::instances::<sqlx::Postgres>(INSTANCE_COLUMNS, f)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn count_by_status(&self, f: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>> {
        let rows = filters::counts::<sqlx::Postgres>(f).build().fetch_all(&self.pool).await?;
        filters::status_counts(rows.iter().map(|r| (i64::from(r.get::<i32, _>(0)), r.get::<i64, _>(1))))
    }

    async fn finished(&self, f: &FinishedFilter) -> Result<Vec<(Micros, String)>> {
        let rows = filters::finished::<sqlx::Postgres>(f).build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn purge(&self, instance_id: &str, recursive: bool) -> Result<Purge> {
        let mut tx = self.pool.begin().await?;
        if let Ok(entity) = crate::engine::entities::normalize_id(instance_id) {
            let deleted = entities::purge(&mut *tx, &entity).await?;
            tx.commit().await?;
            return Ok(Purge::Deleted(deleted));
        }
        let mut pending = vec![instance_id.to_string()];
        let mut deleted = 0;
        while let Some(id) = pending.pop() {
            let Some(s) = instance_status(&mut tx, &id).await? else { continue };
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
            deleted += 1;
        }
        tx.commit().await?;
        Ok(Purge::Deleted(deleted))
    }

    async fn delete_all(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(DELETE_ALL).execute(&mut *tx).await?;
        sqlx::query(entities::DELETE_ALL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_orchestrations(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedOrchestration>> {
        // One statement leases the batch and returns the rows (nothing to do costs one query).
        // History and inbox are read after it commits: the lease keeps them ours.
        let rows = sqlx::query(LOCK_ORCHESTRATIONS)
            .bind(lease.now)
            .bind(lease.owner)
            .bind(lease.until)
            .bind(OrchestrationStatus::Suspended as i32)
            .bind(i64::from(max))
            .bind(filters::names_json(names))
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let mut picked = Vec::with_capacity(rows.len());
        for row in &rows {
            picked.push((row.try_get::<String, _>("lock_token")?, instance_from_row(row)?));
        }
        let ids: Vec<&str> = picked.iter().map(|(_, i)| i.instance_id.as_str()).collect();
        let mut conn = self.pool.acquire().await?;
        let mut histories: HashMap<String, Vec<HistoryEvent>> = HashMap::new();
        for r in sqlx::query(SELECT_HISTORIES).bind(&ids).fetch_all(&mut *conn).await? {
            histories.entry(r.get(0)).or_default().push(decode(r.get::<&[u8], _>(1))?);
        }
        let mut inboxes: HashMap<String, Vec<(i64, Message)>> = HashMap::new();
        for r in sqlx::query(SELECT_INBOXES).bind(&ids).bind(lease.now).fetch_all(&mut *conn).await? {
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
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(writes.len());
        let mut touched = vec![];
        for w in writes {
            let result = match w {
                Write::Step {
                    token,
                    consumed,
                    commit,
                    now,
                } => step_in(&mut tx, token, consumed, commit, *now, &mut touched).await,
                Write::ActivityResult { id, token, result, now } => activity_result_in(&mut tx, *id, token, result, *now).await,
                Write::EntityStep { token, commit } => entities::step_in(&mut tx, token, commit, &mut touched).await,
            };
            match result {
                Err(StoreError::LeaseLost) => results.push(Err(StoreError::LeaseLost)),
                Err(e) => return Err(e),
                Ok(changed) => {
                    touched.extend(changed.iter().cloned());
                    results.push(Ok(changed));
                }
            }
        }
        if !touched.is_empty() {
            self.notifier.send(&mut tx, &touched).await?;
        }
        tx.commit().await?;
        Ok(results)
    }

    fn write_concurrency(&self) -> usize {
        self.write_concurrency
    }

    async fn release_orchestration(&self, instance_id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(RELEASE_ORCHESTRATION)
            .bind(ready_at)
            .bind(instance_id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        if held.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        sqlx::query(DELETE_MESSAGES).bind(consumed).execute(&mut *tx).await?;
        self.notifier.send(&mut tx, [instance_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_activities(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>> {
        let rows = sqlx::query(LOCK_ACTIVITIES)
            .bind(lease.now)
            .bind(lease.owner)
            .bind(lease.until)
            .bind(i64::from(max))
            .bind(filters::names_json(names))
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(RELEASE_ACTIVITY)
            .bind(visible_at)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        self.notifier.send(&mut tx, None::<&str>).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_leases(&self, tokens: &[String], until: Micros) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in RENEW_LEASES.into_iter().chain([entities::RENEW]) {
            sqlx::query(sql).bind(until).bind(tokens).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_all(&self, owner: Option<&str>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in RELEASE_ALL.into_iter().chain([entities::RELEASE_ALL]) {
            sqlx::query(sql).bind(owner).execute(&mut *tx).await?;
        }
        self.notifier.send(&mut tx, None::<&str>).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_due(&self, now: Micros) -> Result<Option<Micros>> {
        Ok(sqlx::query_scalar(NEXT_DUE.as_str()).bind(now).fetch_one(&self.pool).await?)
    }

    async fn get_entity(&self, instance_id: &str) -> Result<Option<EntitySummary>> {
        entities::get(&self.pool, instance_id).await
    }

    async fn query_entities(&self, filter: &EntityListFilter) -> Result<Vec<EntitySummary>> {
        entities::query(&self.pool, filter).await
    }

    async fn clean_entities(&self, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
        let mut tx = self.pool.begin().await?;
        let cleaned = entities::clean(&mut *tx, remove_empty, release_orphaned_locks).await?;
        if cleaned.released > 0 {
            self.notifier.send(&mut tx, None::<&str>).await?;
        }
        tx.commit().await?;
        Ok(cleaned)
    }

    async fn lock_entities(&self, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
        entities::lock(&self.pool, lease, max).await
    }

    async fn release_entity(&self, instance_id: &str, token: &str, ready_at: Micros) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        entities::release(&mut tx, instance_id, token, ready_at).await?;
        self.notifier.send(&mut tx, [instance_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn backlog(&self, now: Micros) -> Result<Backlog> {
        let (orchestrations, activities, timers, expired): (i64, i64, i64, i64) = sqlx::query_as(BACKLOG)
            .bind(now)
            .bind(OrchestrationStatus::Suspended as i32)
            .fetch_one(&self.pool)
            .await?;
        Ok(Backlog {
            orchestrations: orchestrations as u64,
            activities: activities as u64,
            timers: timers as u64,
            expired_leases: expired as u64,
        })
    }

    fn remote_changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

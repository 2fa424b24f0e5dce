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

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::broadcast;
use tonic::async_trait;
use tracing::info;

use super::encoding::{self, bind_lease, encode};
use super::filters;
use super::txn::{self, Effects, Statements};
use super::*;
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

impl PostgresStore {
    /// Joins freshly leased instances to their histories and visible inboxes, read after the
    /// lease commits: the lease keeps them ours.
    async fn load_leased(&self, picked: Vec<(String, Instance)>, now: Micros) -> Result<Vec<LockedOrchestration>> {
        let ids: Vec<&str> = picked.iter().map(|(_, i)| i.instance_id.as_str()).collect();
        let mut conn = self.pool.acquire().await?;
        let histories = sqlx::query(SELECT_HISTORIES).bind(&ids).fetch_all(&mut *conn).await?;
        let inboxes = sqlx::query(SELECT_INBOXES).bind(&ids).bind(now).fetch_all(&mut *conn).await?;
        Ok(LockedOrchestration::assemble(
            picked,
            encoding::histories(&histories)?,
            encoding::inboxes(&inboxes)?,
        ))
    }
}

impl Statements for PgConnection {
    txn::same_statements!();

    async fn make_start_due(&mut self, id: &str, at: Micros) -> Result<()> {
        sqlx::query(MAKE_PENDING_DUE).bind(at).bind(id).execute(&mut *self).await?;
        Ok(())
    }

    async fn delete_messages(&mut self, ids: &[i64]) -> Result<()> {
        sqlx::query(DELETE_MESSAGES).bind(ids).execute(&mut *self).await?;
        Ok(())
    }

    async fn next_history_seq(&mut self, id: &str) -> Result<i64> {
        let next: i32 = sqlx::query_scalar(NEXT_HISTORY_SEQ).bind(id).fetch_one(&mut *self).await?;
        Ok(next.into())
    }

    async fn insert_history(&mut self, id: &str, first: i64, events: &[HistoryEvent]) -> Result<()> {
        // The column is an INTEGER: no history comes near 2^31 events.
        let q = sqlx::query(INSERT_HISTORY).bind(id).bind(first as i32);
        q.bind(events.iter().map(encode).collect::<Vec<_>>()).execute(&mut *self).await?;
        Ok(())
    }

    async fn insert_activities(&mut self, activities: &[ActivityTask], now: Micros) -> Result<()> {
        // One row per array element: the arrays are the columns.
        let (mut ids, mut executions, mut task_ids, mut requests) = (vec![], vec![], vec![], vec![]);
        let (mut names, mut versions) = (vec![], vec![]);
        for a in activities {
            ids.push(a.instance_id.as_str());
            executions.push(a.execution_id.as_str());
            task_ids.push(a.request.task_id);
            requests.push(encode(&a.request));
            names.push(a.request.name.as_str());
            versions.push(a.request.version.as_deref());
        }
        let q = sqlx::query(INSERT_ACTIVITIES)
            .bind(ids)
            .bind(executions)
            .bind(task_ids)
            .bind(requests);
        q.bind(now).bind(names).bind(versions).execute(&mut *self).await?;
        Ok(())
    }

    async fn insert_claimed_activities(&mut self, activities: &[ActivityTask], now: Micros, claim: &Claim) -> Result<Vec<LockedActivity>> {
        let (mut ids, mut executions, mut task_ids, mut requests) = (vec![], vec![], vec![], vec![]);
        let (mut names, mut versions) = (vec![], vec![]);
        for a in activities {
            ids.push(a.instance_id.as_str());
            executions.push(a.execution_id.as_str());
            task_ids.push(a.request.task_id);
            requests.push(encode(&a.request));
            names.push(a.request.name.as_str());
            versions.push(a.request.version.as_deref());
        }
        let q = sqlx::query_as(INSERT_CLAIMED_ACTIVITIES)
            .bind(ids)
            .bind(executions)
            .bind(task_ids)
            .bind(requests);
        let q = q.bind(now).bind(names).bind(versions).bind(&claim.owner).bind(claim.until);
        let rows: Vec<(i64, String, i32)> = q.fetch_all(&mut *self).await?;
        Ok(encoding::claimed(activities, rows))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_instance(&self, new: NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
        let id = &new.instance.instance_id;
        let mut tx = self.pool.begin().await?;
        txn::create(&mut *tx, &new, replaceable).await?;
        self.notifier.send(&mut tx, [id]).await?;
        tx.commit().await.map_err(|e| txn::taken(id, e.into()))
    }

    async fn create_with_history(&self, commit: Commit, now: Micros) -> Result<Vec<String>> {
        let id = &commit.instance.instance_id;
        let mut tx = self.pool.begin().await?;
        let mut effects = Effects::default();
        let changed = txn::create_with_history(&mut *tx, &commit, now, &mut effects).await?;
        self.notifier.send(&mut tx, &effects.touched).await?;
        tx.commit().await.map_err(|e| txn::taken(id, e.into()))?;
        Ok(changed)
    }

    async fn get_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        self.pool.acquire().await?.load_instance(instance_id).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>> {
        self.pool.acquire().await?.load_history(instance_id).await
    }

    async fn send(&self, message: Message) -> Result<Delivery> {
        let mut tx = self.pool.begin().await?;
        let delivery = txn::deliver(&mut *tx, &message).await?;
        if delivery == Delivery::Queued {
            self.notifier.send(&mut tx, [&message.instance_id]).await?;
        }
        tx.commit().await?;
        Ok(delivery)
    }

    async fn rewind(&self, instance_id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
        let mut tx = self.pool.begin().await?;
        let outcome = txn::rewind(&mut *tx, instance_id, event, now).await?;
        if outcome == Rewind::Rewound {
            self.notifier.send(&mut tx, [instance_id]).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn query(&self, f: &InstanceFilter) -> Result<Vec<Instance>> {
        let mut q = filters::instances::<sqlx::Postgres>(INSTANCE_COLUMNS, f);
        q.build().fetch_all(&self.pool).await?.iter().map(encoding::instance).collect()
    }

    async fn count_by_status(&self, f: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>> {
        let rows: Vec<(i32, i64)> = filters::counts::<sqlx::Postgres>(f).build_query_as().fetch_all(&self.pool).await?;
        filters::status_counts(rows)
    }

    async fn finished(&self, f: &FinishedFilter) -> Result<Vec<(Micros, String)>> {
        Ok(filters::finished::<sqlx::Postgres>(f)
            .build_query_as()
            .fetch_all(&self.pool)
            .await?)
    }

    async fn purge(&self, instance_id: &str, recursive: bool) -> Result<Purge> {
        let mut tx = self.pool.begin().await?;
        let (outcome, _) = txn::purge(&mut *tx, instance_id, recursive).await?;
        tx.commit().await?;
        Ok(outcome)
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
        let q = bind_lease(sqlx::query(LOCK_ORCHESTRATIONS), lease, max, names);
        let rows = q.bind(OrchestrationStatus::Suspended as i32).fetch_all(&self.pool).await?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        self.load_leased(encoding::leased(&rows)?, lease.now).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Result<Written>>> {
        let mut tx = self.pool.begin().await?;
        let mut effects = Effects::default();
        let mut results = txn::write(&mut *tx, writes, |_, _| None, &mut effects).await?;
        if !effects.touched.is_empty() {
            self.notifier.send(&mut tx, &effects.touched).await?;
        }
        tx.commit().await?;
        let picked = claimed(&results);
        if !picked.is_empty() {
            let leased = self.load_leased(picked.clone(), latest(writes)).await;
            attach_claimed(self, &mut results, picked, leased).await;
        }
        Ok(results)
    }

    fn write_concurrency(&self) -> usize {
        self.write_concurrency
    }

    async fn release_orchestration(&self, instance_id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        txn::release(&mut *tx, instance_id, token, consumed, ready_at).await?;
        self.notifier.send(&mut tx, [instance_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lock_activities(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>> {
        let rows = bind_lease(sqlx::query(LOCK_ACTIVITIES), lease, max, names)
            .fetch_all(&self.pool)
            .await?;
        encoding::activities(&rows)
    }

    async fn release_activity(&self, id: i64, token: &str, visible_at: Micros) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(RELEASE_ACTIVITY).bind(visible_at).bind(id).bind(token);
        if done.execute(&mut *tx).await?.rows_affected() == 0 {
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
        let q = sqlx::query_as(BACKLOG).bind(now).bind(OrchestrationStatus::Suspended as i32);
        Ok(Backlog::from_counts(q.fetch_one(&self.pool).await?))
    }

    fn remote_changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

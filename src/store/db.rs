//! The [`Store`] written once for both engines: each method takes its engine's connection or
//! begins its write transaction, runs the shared transaction (`txn`, `entities_txn`) or
//! statement, and commits. What differs between the databases is in each engine's [`Db`]:
//! how a write begins and commits (SQLite's single writer; Postgres's pool, and the NOTIFY a
//! commit sends to the other sidecars), where reads and leases run, and whether this process
//! may cache histories (SQLite, where one process owns the file).

use std::collections::HashMap;
use std::future::Future;
use std::ops::DerefMut;
use std::slice;

use tokio::sync::broadcast;
use tonic::async_trait;

use super::cache::HistoryCache;
use super::encoding::{self, Columns, bind_lease};
use super::entities_txn;
use super::queries::*;
use super::sql::{Conn, Sql};
use super::txn::{self, Dialect, Effects};
use super::*;

/// One database engine: its connections and transactions, statically dispatched.
pub(super) trait Db: Send + Sync + 'static {
    /// What the statements run on.
    type Conn: Dialect;
    type Tx: DerefMut<Target = Self::Conn> + Send;
    type Pooled: DerefMut<Target = Self::Conn> + Send;

    /// Begins a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;
    /// Commits. `wake` is what other sidecars sharing the database must hear of: these
    /// instances, or (an empty list) only that some work became available; `None` is nothing.
    fn commit(&self, tx: Self::Tx, wake: Option<&[String]>) -> impl Future<Output = Result<()>> + Send;
    /// A connection for reads (SQLite: a reader, beside the writer).
    fn read(&self) -> impl Future<Output = Result<Self::Pooled>> + Send;
    /// A connection for the one-statement leases (SQLite: the writer).
    fn lease(&self) -> impl Future<Output = Result<Self::Pooled>> + Send;
    /// The histories as this process last committed them, where every history change passes
    /// through this process.
    fn cache(&self) -> Option<&HistoryCache> {
        None
    }
    /// How many write batches may run at once.
    fn writers(&self) -> usize {
        1
    }
    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        None
    }
}

/// Joins freshly leased instances to their histories (from the cache where it has them) and
/// visible inboxes, read beside the writer: the lease keeps them ours.
async fn load_leased<D: Db>(db: &D, picked: Vec<(String, Instance)>, now: Micros) -> Result<Vec<LockedOrchestration>> {
    let mut histories: HashMap<String, Arc<Vec<HistoryEvent>>> = HashMap::new();
    let mut missing = vec![];
    for (_, i) in &picked {
        match db.cache().and_then(|c| c.get(&i.instance_id, &i.execution_id)) {
            Some(events) => {
                histories.insert(i.instance_id.clone(), events);
            }
            None => missing.push(i),
        }
    }
    let mut conn = db.read().await?;
    if !missing.is_empty() {
        let ids: Vec<&str> = missing.iter().map(|i| i.instance_id.as_str()).collect();
        let mut loaded = txn::histories(&mut *conn, &ids).await?;
        for i in missing {
            let events = Arc::new(loaded.remove(&i.instance_id).unwrap_or_default());
            if let Some(cache) = db.cache().filter(|_| !i.is_terminal()) {
                cache.put(&i.instance_id, &i.execution_id, Arc::clone(&events));
            }
            histories.insert(i.instance_id.clone(), events);
        }
    }
    let ids: Vec<&str> = picked.iter().map(|(_, i)| i.instance_id.as_str()).collect();
    let mut inboxes = txn::inboxes(&mut *conn, &ids, now).await?;
    let locked = picked.into_iter().map(|(token, instance)| LockedOrchestration {
        token,
        history: histories.remove(&instance.instance_id).unwrap_or_default(),
        inbox: inboxes.remove(&instance.instance_id).unwrap_or_default(),
        instance,
    });
    Ok(locked.collect())
}

/// What [`Db::commit`] tells other sidecars when no instance in particular changed.
const SOME_WORK: &[String] = &[];

#[async_trait]
impl<D: Db> Store for D {
    async fn create_instance(&self, new: NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
        let id = &new.instance.instance_id;
        let mut tx = self.begin().await?;
        txn::create(&mut *tx, &new, replaceable).await?;
        self.commit(tx, Some(slice::from_ref(id))).await.map_err(|e| txn::taken(id, e))
    }

    async fn create_with_history(&self, commit: Commit, now: Micros) -> Result<Vec<String>> {
        let id = &commit.instance.instance_id;
        let mut tx = self.begin().await?;
        let mut effects = Effects::default();
        let changed = txn::create_with_history(&mut *tx, &commit, now, &mut effects).await?;
        self.commit(tx, Some(&effects.touched)).await.map_err(|e| txn::taken(id, e))?;
        Ok(changed)
    }

    async fn get_instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        txn::load_instance(&mut *self.read().await?, instance_id).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>> {
        txn::load_history(&mut *self.read().await?, instance_id).await
    }

    async fn send(&self, message: Message) -> Result<Delivery> {
        let mut tx = self.begin().await?;
        let delivery = txn::deliver(&mut *tx, &message).await?;
        let queued = delivery == Delivery::Queued;
        self.commit(tx, queued.then_some(slice::from_ref(&message.instance_id))).await?;
        Ok(delivery)
    }

    async fn rewind(&self, instance_id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
        let mut tx = self.begin().await?;
        let outcome = txn::rewind(&mut *tx, instance_id, event, now).await?;
        let rewound = [instance_id.to_string()];
        self.commit(tx, (outcome == Rewind::Rewound).then_some(&rewound[..])).await?;
        Ok(outcome)
    }

    async fn query(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let q = filters::instances(INSTANCE_COLUMNS, filter).bound::<D::Conn>();
        q.rows(&mut *self.read().await?).await?.iter().map(encoding::instance).collect()
    }

    async fn count_by_status(&self, filter: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>> {
        let rows = filters::counts(filter).bound::<D::Conn>().rows(&mut *self.read().await?).await?;
        filters::status_counts(&rows)
    }

    async fn finished(&self, filter: &FinishedFilter) -> Result<Vec<(Micros, String)>> {
        let rows = filters::finished(filter).bound::<D::Conn>().rows(&mut *self.read().await?).await?;
        rows.iter().map(|r| Ok((r.int("completed_at")?, r.text("instance_id")?))).collect()
    }

    async fn purge(&self, instance_id: &str, recursive: bool) -> Result<Purge> {
        let mut tx = self.begin().await?;
        let (outcome, deleted) = txn::purge(&mut *tx, instance_id, recursive).await?;
        self.commit(tx, None).await?;
        if let Some(cache) = self.cache() {
            deleted.iter().for_each(|id| cache.forget(id));
        }
        Ok(outcome)
    }

    async fn delete_all(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        for sql in D::Conn::DELETE_ALL {
            D::Conn::sql(*sql).run(&mut *tx).await?;
        }
        if let Some(cache) = self.cache() {
            cache.clear();
        }
        self.commit(tx, None).await
    }

    async fn lock_orchestrations(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedOrchestration>> {
        // One statement leases the batch and returns the rows (nothing to do costs one query).
        // History and inbox are read after it, beside the writer: the lease keeps them ours.
        // Histories the cache holds are not read at all.
        let q = bind_lease(D::Conn::sql(D::Conn::LOCK_ORCHESTRATIONS), lease, max, names);
        let rows = q
            .small(OrchestrationStatus::Suspended as i32)
            .rows(&mut *self.lease().await?)
            .await?;
        let picked = encoding::leased(&rows)?;
        if picked.is_empty() {
            return Ok(vec![]);
        }
        load_leased(self, picked, lease.now).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Result<Written>>> {
        let cache = self.cache();
        let mut tx = self.begin().await?;
        let mut effects = Effects::default();
        let known_len = |id: &str, execution: &str| cache.and_then(|c| c.len(id, execution));
        let mut results = txn::write(&mut *tx, writes, known_len, &mut effects).await?;
        let touched = effects.touched.as_slice();
        self.commit(tx, (!touched.is_empty()).then_some(touched)).await?;
        // Only now that the batch is on disk does the cache learn of it.
        if let Some(cache) = cache {
            cache.learn(effects.histories);
        }
        let picked = claimed(&results);
        if !picked.is_empty() {
            let leased = load_leased(self, picked.clone(), latest(writes)).await;
            attach_claimed(self, &mut results, picked, leased).await;
        }
        Ok(results)
    }
    fn write_concurrency(&self) -> usize {
        self.writers()
    }

    async fn release_orchestration(&self, instance_id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
        let mut tx = self.begin().await?;
        txn::release(&mut *tx, instance_id, token, consumed, ready_at).await?;
        self.commit(tx, Some(&[instance_id.to_string()])).await
    }

    async fn lock_activities(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>> {
        let q = bind_lease(D::Conn::sql(D::Conn::LOCK_ACTIVITIES), lease, max, names);
        encoding::activities(&q.rows(&mut *self.lease().await?).await?)
    }

    async fn release_activity(&self, id: i64, token: &str, visible_at: Micros) -> Result<()> {
        let mut tx = self.begin().await?;
        let q = D::Conn::sql(RELEASE_ACTIVITY).int(visible_at).int(id).text(token);
        if q.run(&mut *tx).await? == 0 {
            return Err(StoreError::LeaseLost);
        }
        self.commit(tx, Some(SOME_WORK)).await
    }

    async fn renew_leases(&self, tokens: &[String], until: Micros) -> Result<()> {
        let mut tx = self.begin().await?;
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        for sql in D::Conn::RENEW_LEASES {
            D::Conn::sql(sql).int(until).texts(&tokens).run(&mut *tx).await?;
        }
        self.commit(tx, None).await
    }

    async fn release_all(&self, owner: Option<&str>) -> Result<()> {
        let mut tx = self.begin().await?;
        for sql in D::Conn::RELEASE_ALL {
            D::Conn::sql(*sql).maybe_text(owner).run(&mut *tx).await?;
        }
        self.commit(tx, Some(SOME_WORK)).await
    }

    async fn next_due(&self, now: Micros) -> Result<Option<Micros>> {
        let row = D::Conn::sql(D::Conn::NEXT_DUE).int(now).row(&mut *self.read().await?).await?;
        Ok(row.map(|r| r.maybe_int("due")).transpose()?.flatten())
    }

    async fn get_entity(&self, instance_id: &str) -> Result<Option<EntitySummary>> {
        let row = D::Conn::sql(SELECT_ENTITY).text(instance_id).row(&mut *self.read().await?).await?;
        row.as_ref().map(entities_txn::summary).transpose()
    }

    async fn query_entities(&self, filter: &EntityListFilter) -> Result<Vec<EntitySummary>> {
        let rows = filters::entities(filter).bound::<D::Conn>().rows(&mut *self.read().await?).await?;
        rows.iter().map(entities_txn::summary).collect()
    }

    async fn clean_entities(&self, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned> {
        let mut tx = self.begin().await?;
        let cleaned = entities_txn::clean(&mut *tx, remove_empty, release_orphaned_locks).await?;
        self.commit(tx, (cleaned.released > 0).then_some(SOME_WORK)).await?;
        Ok(cleaned)
    }

    async fn lock_entities(&self, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>> {
        // Leased on the writer, queues read beside it: the writer is held no longer than the
        // lease itself.
        let q = D::Conn::sql(D::Conn::LOCK_ENTITIES)
            .int(lease.now)
            .text(lease.owner)
            .int(lease.until);
        let leased = entities_txn::leased(&q.int(i64::from(max)).rows(&mut *self.lease().await?).await?)?;
        if leased.is_empty() {
            return Ok(vec![]);
        }
        entities_txn::with_queues(&mut *self.read().await?, leased, lease.now).await
    }

    async fn release_entity(&self, instance_id: &str, token: &str, ready_at: Micros) -> Result<()> {
        let mut tx = self.begin().await?;
        let q = D::Conn::sql(RELEASE_ENTITY).int(ready_at).text(instance_id).text(token);
        if q.run(&mut *tx).await? == 0 {
            return Err(StoreError::LeaseLost);
        }
        self.commit(tx, Some(&[instance_id.to_string()])).await
    }

    async fn unpark_entities(&self, now: Micros) -> Result<()> {
        let mut tx = self.begin().await?;
        D::Conn::sql(UNPARK_ENTITIES).int(now).run(&mut *tx).await?;
        self.commit(tx, Some(SOME_WORK)).await
    }

    async fn backlog(&self, now: Micros) -> Result<Backlog> {
        let q = D::Conn::sql(BACKLOG).int(now).small(OrchestrationStatus::Suspended as i32);
        let Some(r) = q.row(&mut *self.read().await?).await? else {
            return Ok(Backlog::default());
        };
        let count = |c| Ok::<_, StoreError>(r.int(c)?.max(0) as u64);
        Ok(Backlog {
            orchestrations: count("orchestrations")?,
            activities: count("activities")?,
            timers: count("timers")?,
            expired_leases: count("expired")?,
        })
    }

    fn remote_changes(&self) -> Option<broadcast::Receiver<Change>> {
        self.changes()
    }
}

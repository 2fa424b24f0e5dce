//! The orchestration transactions, written once for both engines: the order of reads and
//! writes that creates an instance, delivers a message, applies a step or an activity result,
//! rewinds and purges. What each read means for Durable Task is decided by
//! `engine::rules`; each engine implements [`Statements`] with its own SQL (SQLite `IN (..)`
//! lists under a single writer; Postgres array binds and row locks) and wraps these in its own
//! transaction, adding what only it does (the SQLite history cache, Postgres NOTIFY).

use std::collections::HashMap;
use std::future::Future;

use tracing::{debug, info};

use super::entities_txn::{self, EntityStatements};
use super::{
    Backlog, Claim, Delivery, FinishedFilter, InstanceFilter, Lease, LockedActivity, Purge, Result, Rewind, StoreError, Write, Written,
};
use crate::engine::events::kind_name;
use crate::engine::rules::{self, PurgeStep, Slot, Target};
use crate::model::{ActivityTask, ChildRewind, Commit, HistoryWrite, Instance, Message, Names, NewInstance};
use crate::proto::{HistoryEvent, OrchestrationStatus};
use crate::time::Micros;

/// The statements one engine runs for orchestrations, each on the connection of the
/// transaction (or batch) that calls it.
pub(super) trait Statements: Send {
    fn load_instance(&mut self, id: &str) -> impl Future<Output = Result<Option<Instance>>> + Send;
    fn instance_status(&mut self, id: &str) -> impl Future<Output = Result<Option<OrchestrationStatus>>> + Send;
    /// As `instance_status`, and the row (when there is one) stays locked until the
    /// transaction ends where the database locks rows, so a concurrent create of the id waits.
    fn lock_status(&mut self, id: &str) -> impl Future<Output = Result<Option<OrchestrationStatus>>> + Send;
    /// The status and current execution of a message's target.
    fn target(&mut self, id: &str) -> impl Future<Output = Result<Option<(OrchestrationStatus, String)>>> + Send;
    fn load_history(&mut self, id: &str) -> impl Future<Output = Result<Vec<HistoryEvent>>> + Send;
    /// Inserts a new, unleased instance row, not dispatched before `ready_at`.
    fn insert_instance(&mut self, i: &Instance, ready_at: Micros) -> impl Future<Output = Result<()>> + Send;
    /// Writes a step's instance row and ends its lease, in one statement that matches only
    /// while `token` still holds the lease (the row lock it takes also fences a sidecar that
    /// took over). False when the lease is gone; then nothing was written.
    fn update_held_instance(&mut self, i: &Instance, token: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Ends the lease `token` holds, the instance not dispatched again before `ready_at`;
    /// false when the lease is gone.
    fn release_instance(&mut self, id: &str, token: &str, ready_at: Micros) -> impl Future<Output = Result<bool>> + Send;
    /// Sets a failed instance running again: no output, no failure, not completed.
    fn reopen_instance(&mut self, id: &str, now: Micros) -> impl Future<Output = Result<()>> + Send;
    fn insert_message(&mut self, m: &Message) -> impl Future<Output = Result<()>> + Send;
    /// Makes the instance's scheduled start (and everything else it has queued) due `at`.
    fn make_start_due(&mut self, id: &str, at: Micros) -> impl Future<Output = Result<()>> + Send;
    fn delete_messages(&mut self, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;
    /// Deletes an instance and everything that belongs to it.
    fn delete_instance(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Deletes what a finished instance leaves that nothing will consume: its pending events
    /// and timers, its activities not yet handed out.
    fn delete_leftovers(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn next_history_seq(&mut self, id: &str) -> impl Future<Output = Result<i64>> + Send;
    fn delete_history(&mut self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Appends `events` numbered from `first`.
    fn insert_history(&mut self, id: &str, first: i64, events: &[HistoryEvent]) -> impl Future<Output = Result<()>> + Send;
    fn insert_activities(&mut self, activities: &[ActivityTask], now: Micros) -> impl Future<Output = Result<()>> + Send;
    /// Inserts activities already leased by `claim`, and returns them with their tokens.
    fn insert_claimed_activities(
        &mut self,
        activities: &[ActivityTask],
        now: Micros,
        claim: &Claim,
    ) -> impl Future<Output = Result<Vec<LockedActivity>>> + Send;
    /// Leases the instance by `claim` if it has visible work at `now` (a suspended one only
    /// for an event that wakes it), is ready and nobody else holds it; its token and row.
    fn claim_instance(&mut self, id: &str, now: Micros, claim: &Claim) -> impl Future<Output = Result<Option<(String, Instance)>>> + Send;
    /// Deletes a leased activity while `token` holds it; its (instance, execution), or `None`
    /// when the lease is gone.
    fn take_activity(&mut self, id: i64, token: &str) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// Queues an activity's result only while its execution still runs; false when dropped.
    fn queue_result(&mut self, m: &Message) -> impl Future<Output = Result<bool>> + Send;

    // What the `Store` runs outside these transactions: leases, releases and reads.

    /// Leases up to `max` instances with visible work of the orchestration names `names`, in
    /// one statement; (token, instance) each.
    fn lease_orchestrations(
        &mut self,
        l: &Lease<'_>,
        max: u32,
        names: &Names,
    ) -> impl Future<Output = Result<Vec<(String, Instance)>>> + Send;
    /// The histories of these instances, by instance.
    fn histories(&mut self, ids: &[&str]) -> impl Future<Output = Result<HashMap<String, Vec<HistoryEvent>>>> + Send;
    /// The inbox messages of these instances visible at `now`, by instance, in delivery order.
    fn inboxes(&mut self, ids: &[&str], now: Micros) -> impl Future<Output = Result<HashMap<String, Vec<(i64, Message)>>>> + Send;
    fn lease_activities(&mut self, l: &Lease<'_>, max: u32, names: &Names) -> impl Future<Output = Result<Vec<LockedActivity>>> + Send;
    /// Ends the lease `token` holds on an activity, not dispatched again before `visible_at`;
    /// false when the lease is gone.
    fn release_activity(&mut self, id: i64, token: &str, visible_at: Micros) -> impl Future<Output = Result<bool>> + Send;
    /// Extends the leases (of instances, activities and entities) with these tokens.
    fn renew_leases(&mut self, tokens: &[String], until: Micros) -> impl Future<Output = Result<()>> + Send;
    /// Releases every lease `owner` holds, or every lease when `None`.
    fn release_all(&mut self, owner: Option<&str>) -> impl Future<Output = Result<()>> + Send;
    fn delete_all(&mut self) -> impl Future<Output = Result<()>> + Send;
    fn next_due(&mut self, now: Micros) -> impl Future<Output = Result<Option<Micros>>> + Send;
    fn backlog(&mut self, now: Micros) -> impl Future<Output = Result<Backlog>> + Send;
    fn query(&mut self, f: &InstanceFilter) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    fn count_by_status(&mut self, f: &InstanceFilter) -> impl Future<Output = Result<Vec<(OrchestrationStatus, u64)>>> + Send;
    fn finished(&mut self, f: &FinishedFilter) -> impl Future<Output = Result<Vec<(Micros, String)>>> + Send;
}

/// What a batch did beyond its results, for the engine's own after-commit work.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Instances whose state changed or that were sent messages (for Postgres's NOTIFY).
    pub touched: Vec<String>,
    /// What each step did to its history, in order (for SQLite's history cache).
    pub histories: Vec<HistoryChange>,
}

/// What a committed step did to an instance's history.
#[derive(Debug)]
pub(super) struct HistoryChange {
    pub instance_id: String,
    pub execution_id: String,
    pub write: HistoryWrite,
    pub finished: bool,
}

/// Maps a unique-key violation on an instance id to [`StoreError::AlreadyExists`]: two
/// sidecars creating the same new id at once both see no row, and one insert loses.
pub(super) fn taken(id: &str, e: StoreError) -> StoreError {
    match &e {
        StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            StoreError::AlreadyExists(id.to_string(), OrchestrationStatus::Pending.as_str_name())
        }
        _ => e,
    }
}

/// Creates an instance, replacing one with the same id whose status is in `replaceable`.
pub(super) async fn create<C: Statements>(conn: &mut C, new: &NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
    let id = &new.instance.instance_id;
    let replacing = match rules::slot(conn.lock_status(id).await?, replaceable) {
        Slot::Taken(s) => return Err(StoreError::AlreadyExists(id.clone(), s.as_str_name())),
        Slot::Free => false,
        Slot::Replace => true,
    };
    insert_new(conn, new, replacing).await.map_err(|e| taken(id, e))
}

/// Creates an instance whose first step is decided: its row, history and queued work. Returns
/// the instances created or changed.
pub(super) async fn create_with_history<C: EntityStatements>(
    conn: &mut C,
    commit: &Commit,
    now: Micros,
    effects: &mut Effects,
) -> Result<Vec<String>> {
    let id = &commit.instance.instance_id;
    if let Some(s) = conn.instance_status(id).await? {
        return Err(StoreError::AlreadyExists(id.clone(), s.as_str_name()));
    }
    conn.insert_instance(&commit.instance, 0).await.map_err(|e| taken(id, e))?;
    let changed = apply(conn, commit, now, Some(0), None, effects).await?.changed;
    effects.touched.extend(changed.iter().cloned());
    Ok(changed)
}

/// Creates an instance; `replacing` says a finished one with the same id is there to go first.
pub(super) async fn insert_new<C: Statements>(conn: &mut C, new: &NewInstance, replacing: bool) -> Result<()> {
    if replacing {
        conn.delete_instance(&new.instance.instance_id).await?;
    }
    conn.insert_instance(&new.instance, new.instance.scheduled_start_at.unwrap_or(0))
        .await?;
    conn.insert_message(&new.start).await
}

/// Queues a message if its target can take it (see [`rules::delivery`]); otherwise drops it
/// with a log line. On a database several sidecars share, a message racing with its target
/// finishing elsewhere may still be queued; the engine drops it when the finished instance
/// is next looked at.
pub(super) async fn deliver<C: EntityStatements>(conn: &mut C, m: &Message) -> Result<Delivery> {
    if m.is_for_entity() {
        return entities_txn::enqueue(conn, m).await;
    }
    let target = conn.target(&m.instance_id).await?;
    let (id, event) = (&m.instance_id, kind_name(&m.event));
    match rules::delivery(target.as_ref().map(|(s, e)| (*s, e.as_str())), m) {
        Target::Unknown => {
            info!(instance_id = %id, event, "dropping event for an unknown instance");
            Ok(Delivery::Unknown)
        }
        Target::Finished(s) => {
            info!(instance_id = %id, event, status = s.as_str_name(), "dropping event for a finished instance");
            Ok(Delivery::Finished)
        }
        Target::Replaced => {
            debug!(instance_id = %id, event, "dropping event for a replaced execution");
            Ok(Delivery::Finished)
        }
        Target::Queue { start_now } => {
            if start_now {
                conn.make_start_due(id, m.visible_at).await?;
            }
            conn.insert_message(m).await?;
            Ok(Delivery::Queued)
        }
    }
}

/// Rewinds a failed instance with `event` (see [`rules::rewind`]).
pub(super) async fn rewind<C: Statements>(conn: &mut C, id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
    let Some(instance) = conn.load_instance(id).await? else {
        return Ok(Rewind::Unknown);
    };
    match rules::rewind(&instance, event, now) {
        Err(status) => Ok(Rewind::NotFailed(status)),
        Ok(message) => {
            conn.reopen_instance(id, now).await?;
            conn.insert_message(&message).await?;
            Ok(Rewind::Rewound)
        }
    }
}

/// Brings back a sub-orchestration for its parent's rewind: rewound if it is there, created
/// again if it was purged.
async fn rewind_child<C: Statements>(conn: &mut C, r: &ChildRewind, now: Micros) -> Result<()> {
    if rewind(conn, &r.instance_id, rules::child_rewound(r, now), now).await? == Rewind::Unknown {
        info!(instance_id = %r.instance_id, "recreating purged sub-orchestration for rewind");
        insert_new(conn, &r.recreate, false).await?;
    }
    Ok(())
}

/// Deletes a finished instance and, when `recursive`, its finished sub-orchestrations (see
/// [`rules::purge_step`]); an entity id purges that entity. Returns the outcome and the
/// instances deleted.
pub(super) async fn purge<C: EntityStatements>(conn: &mut C, instance_id: &str, recursive: bool) -> Result<(Purge, Vec<String>)> {
    if let Ok(entity) = crate::engine::entities::normalize_id(instance_id) {
        return Ok((Purge::Deleted(entities_txn::purge(conn, &entity).await?), vec![]));
    }
    let mut pending = vec![instance_id.to_string()];
    let mut deleted = vec![];
    while let Some(id) = pending.pop() {
        let Some(status) = conn.instance_status(&id).await? else { continue };
        match rules::purge_step(status, deleted.is_empty() && id == instance_id, recursive) {
            PurgeStep::Refuse(s) => return Ok((Purge::NotFinished(s), vec![])),
            PurgeStep::Keep => continue,
            PurgeStep::Delete { children } => {
                if children {
                    pending.extend(rules::purge_children(&conn.load_history(&id).await?));
                }
                conn.delete_instance(&id).await?;
                deleted.push(id);
            }
        }
    }
    Ok((Purge::Deleted(deleted.len() as u32), deleted))
}

/// Applies a batch of writes, each whole or (when its lease is gone) not at all, in the
/// caller's transaction. `known_len` gives a step's current history length when the engine
/// knows it (instance, execution). A database failure is returned for the whole batch.
pub(super) async fn write<C, K>(conn: &mut C, writes: &[Write], known_len: K, effects: &mut Effects) -> Result<Vec<Result<Written>>>
where
    C: EntityStatements,
    K: Fn(&str, &str) -> Option<usize> + Sync,
{
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        let result = match w {
            Write::Step {
                token,
                consumed,
                commit,
                now,
                claim,
            } => {
                let len = known_len(&commit.instance.instance_id, &commit.instance.execution_id);
                step(conn, token, consumed, commit, *now, len, claim.as_ref(), effects).await
            }
            Write::ActivityResult {
                id,
                token,
                result,
                now,
                claim,
            } => activity_result(conn, *id, token, result, *now, claim.as_ref()).await,
            Write::EntityStep { token, commit } => {
                let changed = entities_txn::step(conn, token, commit).await;
                if changed.is_ok() {
                    effects.touched.extend(commit.messages.iter().map(|m| m.instance_id.clone()));
                }
                changed.map(Written::changed)
            }
        };
        match result {
            Err(StoreError::LeaseLost) => results.push(Err(StoreError::LeaseLost)),
            Err(e) => return Err(e),
            Ok(written) => {
                effects.touched.extend(written.changed.iter().cloned());
                results.push(Ok(written));
            }
        }
    }
    Ok(results)
}

/// Releases a lease without a step, deleting the `consumed` inbox rows.
pub(super) async fn release<C: Statements>(conn: &mut C, id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
    if !conn.release_instance(id, token, ready_at).await? {
        return Err(StoreError::LeaseLost);
    }
    conn.delete_messages(consumed).await
}

/// One orchestration step; nothing is written when the lease is gone.
#[allow(clippy::too_many_arguments)]
async fn step<C: EntityStatements>(
    conn: &mut C,
    token: &str,
    consumed: &[i64],
    commit: &Commit,
    now: Micros,
    known_len: Option<usize>,
    claim: Option<&Claim>,
    effects: &mut Effects,
) -> Result<Written> {
    // Checked first: a sidecar that took the instance over after our lease expired has
    // changed the token, and we write nothing.
    if !conn.update_held_instance(&commit.instance, token).await? {
        return Err(StoreError::LeaseLost);
    }
    conn.delete_messages(consumed).await?;
    let mut written = apply(conn, commit, now, known_len, claim, effects).await?;
    effects.histories.push(HistoryChange {
        instance_id: commit.instance.instance_id.clone(),
        execution_id: commit.instance.execution_id.clone(),
        finished: commit.instance.is_terminal(),
        write: commit.history.clone(),
    });
    // Events that arrived while the step ran (or a continued-as-new start) make the instance
    // due again at once.
    if let Some(claim) = claim.filter(|c| c.orchestration && !commit.instance.is_terminal()) {
        written.claimed = conn.claim_instance(&commit.instance.instance_id, now, claim).await?;
    }
    Ok(written)
}

/// What a commit writes beyond its instance row: history, leftovers of a finished instance,
/// activities (the first ones leased when `claim` says so), children, messages and rewinds.
/// Returns the instances whose state changed and the activities leased; the instances it
/// sends messages to are added to `effects.touched`.
async fn apply<C: EntityStatements>(
    conn: &mut C,
    commit: &Commit,
    now: Micros,
    known_len: Option<usize>,
    claim: Option<&Claim>,
    effects: &mut Effects,
) -> Result<Written> {
    let id = &commit.instance.instance_id;
    write_history(conn, id, &commit.history, known_len).await?;
    if commit.instance.is_terminal() {
        conn.delete_leftovers(id).await?;
    }
    let mut written = Written::default();
    let claimed = claim.map_or(0, |c| c.activities.min(commit.activities.len()));
    let (leased, queued) = commit.activities.split_at(claimed);
    if let Some(claim) = claim.filter(|_| !leased.is_empty()) {
        written.activities = conn.insert_claimed_activities(leased, now, claim).await?;
    }
    if !queued.is_empty() {
        conn.insert_activities(queued, now).await?;
    }
    let mut changed = vec![id.clone()];
    for c in &commit.children {
        let child = &c.child.instance.instance_id;
        match rules::child_slot(conn.instance_status(child).await?) {
            Slot::Taken(_) => {
                info!(parent = %id, %child, "sub-orchestration id is taken by a running instance; failing that child");
                deliver(conn, &c.on_conflict).await?;
            }
            slot => {
                insert_new(conn, &c.child, slot == Slot::Replace).await?;
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
    effects.touched.extend(commit.messages.iter().map(|m| m.instance_id.clone()));
    effects
        .touched
        .extend(commit.children.iter().map(|c| c.on_conflict.instance_id.clone()));
    written.changed = changed;
    Ok(written)
}

/// Writes a step's history; `known_len` is the current length when the caller knows it.
async fn write_history<C: Statements>(conn: &mut C, id: &str, write: &HistoryWrite, known_len: Option<usize>) -> Result<()> {
    match write {
        HistoryWrite::Append(events) if events.is_empty() => Ok(()),
        HistoryWrite::Append(events) => {
            let first = match known_len {
                Some(len) => len as i64,
                None => conn.next_history_seq(id).await?,
            };
            conn.insert_history(id, first, events).await
        }
        HistoryWrite::Replace(events) => {
            conn.delete_history(id).await?;
            conn.insert_history(id, 0, events).await
        }
    }
}

/// One activity result; nothing is written when the lease is gone. With a `claim`, the
/// orchestration it feeds is leased in the same transaction if it is free to run.
async fn activity_result<C: Statements>(
    conn: &mut C,
    id: i64,
    token: &str,
    result: &HistoryEvent,
    now: Micros,
    claim: Option<&Claim>,
) -> Result<Written> {
    let Some((instance_id, execution_id)) = conn.take_activity(id, token).await? else {
        return Err(StoreError::LeaseLost);
    };
    let message = Message {
        instance_id,
        execution_id: Some(execution_id),
        event: result.clone(),
        visible_at: now,
        priority: Message::NORMAL,
    };
    // One statement: queued only while that execution is still running (a result for a
    // finished or replaced execution is dropped, as `deliver` would).
    let mut written = Written::default();
    if !conn.queue_result(&message).await? {
        debug!(instance_id = %message.instance_id, "dropping an activity result for a finished or replaced execution");
    } else if let Some(claim) = claim.filter(|c| c.orchestration) {
        written.claimed = conn.claim_instance(&message.instance_id, now, claim).await?;
    }
    written.changed = vec![message.instance_id];
    Ok(written)
}

/// The [`Statements`] both engines run the same way, only with their own SQL: expanded inside
/// each engine's `impl Statements`, where that engine's `queries.rs` names the statements.
/// (The rest of the trait is written per engine, where the databases differ.)
macro_rules! same_statements {
    () => {
        async fn load_instance(&mut self, id: &str) -> Result<Option<Instance>> {
            let row = sqlx::query(SELECT_INSTANCE).bind(id).fetch_optional(&mut *self).await?;
            row.as_ref().map($crate::store::encoding::instance).transpose()
        }

        async fn instance_status(&mut self, id: &str) -> Result<Option<OrchestrationStatus>> {
            let s: Option<i32> = sqlx::query_scalar(SELECT_STATUS).bind(id).fetch_optional(&mut *self).await?;
            s.map(|s| $crate::store::encoding::status(s.into())).transpose()
        }

        async fn lock_status(&mut self, id: &str) -> Result<Option<OrchestrationStatus>> {
            let q = sqlx::query_scalar(SELECT_STATUS_FOR_UPDATE).bind(id);
            let s: Option<i32> = q.fetch_optional(&mut *self).await?;
            s.map(|s| $crate::store::encoding::status(s.into())).transpose()
        }

        async fn target(&mut self, id: &str) -> Result<Option<(OrchestrationStatus, String)>> {
            let q = sqlx::query_as(SELECT_STATUS_AND_EXECUTION).bind(id);
            let row: Option<(i32, String)> = q.fetch_optional(&mut *self).await?;
            row.map(|(s, execution)| Ok(($crate::store::encoding::status(s.into())?, execution)))
                .transpose()
        }

        async fn load_history(&mut self, id: &str) -> Result<Vec<HistoryEvent>> {
            let rows = sqlx::query(SELECT_HISTORY).bind(id).fetch_all(&mut *self).await?;
            rows.iter()
                .map(|r| $crate::store::encoding::decode(r.get::<&[u8], _>(0)))
                .collect()
        }

        async fn insert_instance(&mut self, i: &Instance, ready_at: Micros) -> Result<()> {
            let q = $crate::store::encoding::bind_fields(sqlx::query(INSERT_INSTANCE).bind(&i.instance_id), i);
            q.bind(ready_at).execute(&mut *self).await?;
            Ok(())
        }

        async fn update_held_instance(&mut self, i: &Instance, token: &str) -> Result<bool> {
            let q = $crate::store::encoding::bind_fields(sqlx::query(UPDATE_HELD_INSTANCE), i).bind(&i.instance_id);
            Ok(q.bind(token).execute(&mut *self).await?.rows_affected() > 0)
        }

        async fn release_instance(&mut self, id: &str, token: &str, ready_at: Micros) -> Result<bool> {
            let q = sqlx::query(RELEASE_ORCHESTRATION).bind(ready_at).bind(id).bind(token);
            Ok(q.execute(&mut *self).await?.rows_affected() > 0)
        }

        async fn reopen_instance(&mut self, id: &str, now: Micros) -> Result<()> {
            let q = sqlx::query(REWIND_INSTANCE)
                .bind(OrchestrationStatus::Running as i32)
                .bind(now);
            q.bind(id).execute(&mut *self).await?;
            Ok(())
        }

        async fn insert_message(&mut self, m: &Message) -> Result<()> {
            let q = $crate::store::encoding::bind_message(sqlx::query(INSERT_MESSAGE), m);
            q.execute(&mut *self).await?;
            Ok(())
        }

        async fn delete_instance(&mut self, id: &str) -> Result<()> {
            for sql in DELETE_INSTANCE {
                sqlx::query(sql).bind(id).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn delete_leftovers(&mut self, id: &str) -> Result<()> {
            for sql in DELETE_LEFTOVERS {
                sqlx::query(sql).bind(id).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn delete_history(&mut self, id: &str) -> Result<()> {
            sqlx::query(DELETE_HISTORY).bind(id).execute(&mut *self).await?;
            Ok(())
        }

        async fn claim_instance(&mut self, id: &str, now: Micros, claim: &Claim) -> Result<Option<(String, Instance)>> {
            let q = sqlx::query(CLAIM_INSTANCE)
                .bind(now)
                .bind(&claim.owner)
                .bind(claim.until)
                .bind(id);
            let rows = q.bind(OrchestrationStatus::Suspended as i32).fetch_all(&mut *self).await?;
            Ok($crate::store::encoding::leased(&rows)?.pop())
        }

        async fn take_activity(&mut self, id: i64, token: &str) -> Result<Option<(String, String)>> {
            let q = sqlx::query_as(DELETE_LOCKED_ACTIVITY).bind(id).bind(token);
            Ok(q.fetch_optional(&mut *self).await?)
        }

        async fn queue_result(&mut self, m: &Message) -> Result<bool> {
            let q = $crate::store::encoding::bind_message(sqlx::query(QUEUE_RESULT.as_str()), m);
            Ok(q.execute(&mut *self).await?.rows_affected() > 0)
        }

        async fn make_start_due(&mut self, id: &str, at: Micros) -> Result<()> {
            let [messages, start] = MAKE_PENDING_DUE;
            sqlx::query(messages).bind(at).bind(id).execute(&mut *self).await?;
            sqlx::query(start).bind(id).execute(&mut *self).await?;
            Ok(())
        }

        async fn next_history_seq(&mut self, id: &str) -> Result<i64> {
            Ok(sqlx::query_scalar(NEXT_HISTORY_SEQ).bind(id).fetch_one(&mut *self).await?)
        }

        async fn lease_orchestrations(&mut self, l: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<(String, Instance)>> {
            let q = $crate::store::encoding::bind_lease(sqlx::query(LOCK_ORCHESTRATIONS), l, max, names);
            let rows = q.bind(OrchestrationStatus::Suspended as i32).fetch_all(&mut *self).await?;
            $crate::store::encoding::leased(&rows)
        }

        async fn lease_activities(&mut self, l: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>> {
            let q = $crate::store::encoding::bind_lease(sqlx::query(LOCK_ACTIVITIES), l, max, names);
            $crate::store::encoding::activities(&q.fetch_all(&mut *self).await?)
        }

        async fn release_activity(&mut self, id: i64, token: &str, visible_at: Micros) -> Result<bool> {
            let q = sqlx::query(RELEASE_ACTIVITY).bind(visible_at).bind(id).bind(token);
            Ok(q.execute(&mut *self).await?.rows_affected() > 0)
        }

        async fn release_all(&mut self, owner: Option<&str>) -> Result<()> {
            for sql in RELEASE_ALL.into_iter().chain([entities::RELEASE_ALL]) {
                sqlx::query(sql).bind(owner).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn delete_all(&mut self) -> Result<()> {
            for sql in DELETE_ALL.into_iter().chain(entities::DELETE_ALL) {
                sqlx::query(sql).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn next_due(&mut self, now: Micros) -> Result<Option<Micros>> {
            Ok(sqlx::query_scalar(NEXT_DUE).bind(now).fetch_one(&mut *self).await?)
        }

        async fn backlog(&mut self, now: Micros) -> Result<Backlog> {
            let q = sqlx::query_as(BACKLOG).bind(now).bind(OrchestrationStatus::Suspended as i32);
            Ok(Backlog::from_counts(q.fetch_one(&mut *self).await?))
        }

        async fn query(&mut self, f: &InstanceFilter) -> Result<Vec<Instance>> {
            let mut q = $crate::store::filters::instances::<<Self as sqlx::Connection>::Database>(INSTANCE_COLUMNS, f);
            let rows = q.build().fetch_all(&mut *self).await?;
            rows.iter().map($crate::store::encoding::instance).collect()
        }

        async fn count_by_status(&mut self, f: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>> {
            let mut q = $crate::store::filters::counts::<<Self as sqlx::Connection>::Database>(f);
            let rows: Vec<(i32, i64)> = q.build_query_as().fetch_all(&mut *self).await?;
            $crate::store::filters::status_counts(rows)
        }

        async fn finished(&mut self, f: &FinishedFilter) -> Result<Vec<(Micros, String)>> {
            let mut q = $crate::store::filters::finished::<<Self as sqlx::Connection>::Database>(f);
            Ok(q.build_query_as().fetch_all(&mut *self).await?)
        }
    };
}
pub(super) use same_statements;

//! The orchestration transactions, written once for both engines: the order of reads and
//! writes that creates an instance, delivers a message, applies a step or an activity result,
//! rewinds and purges. What each read means for Durable Task is decided by
//! `engine::rules`; the statements both engines say alike are in `queries.rs`, and each engine
//! implements [`Dialect`] for what it says its own way (SQLite JSON lists under a single
//! writer; Postgres array binds and row locks). Each engine wraps these in its own
//! transaction (`db.rs`), adding what only it does (the SQLite history cache, Postgres NOTIFY).

use std::collections::HashMap;

use tracing::{debug, info};

use super::encoding::{self, Columns, bind_fields, bind_message};
use super::entities_txn;
use super::queries::*;
use super::sql::{Conn, Sql};
use super::{Claim, Delivery, Purge, Result, Rewind, StoreError, Write, Written};
use crate::engine::events::kind_name;
use crate::engine::rules::{self, PurgeStep, Slot, Target};
use crate::model::{ChildRewind, Commit, HistoryWrite, Instance, Message, NewInstance};
use crate::proto::{HistoryEvent, OrchestrationStatus};
use crate::time::Micros;

/// The SQL one engine writes its own way for the shared code: row locks, lease picks, what
/// it deletes and releases, the statements over lists and many rows. Each engine's
/// `queries.rs` implements it for its connection, constant for constant.
pub(super) trait Dialect: Conn {
    /// `SELECT status` of instance $1, its row (when there is one) locked until the transaction
    /// ends where the database locks rows, so a concurrent create of the id waits.
    const SELECT_STATUS_FOR_UPDATE: &'static str;
    /// Leases, with a fresh token each, up to $4 instances with visible work at $1 that are
    /// ready and that nobody holds, of the names filter $5 takes, for owner $2 until $3 (bound
    /// by `encoding::bind_lease`); a suspended ($6) one only for an event that wakes it.
    /// Returns `lock_token` and the instance columns.
    const LOCK_ORCHESTRATIONS: &'static str;
    /// Leases visible activities nobody holds, oldest first, as LOCK_ORCHESTRATIONS binds (rows
    /// queued before activities had a name column are leased whatever the filter, and checked
    /// by the dispatcher); returns id, lock_token, instance_id, execution_id, request.
    const LOCK_ACTIVITIES: &'static str;
    /// Leases entities with runnable messages: now $1, owner $2, until $3, at most $4; returns
    /// `lease_token` and the entity columns.
    const LOCK_ENTITIES: &'static str;
    /// Releases the leases (of instances, activities and entities) of owner $1, or every lease
    /// when $1 is NULL.
    const RELEASE_ALL: &'static [&'static str];
    /// Empties every table of the hub.
    const DELETE_ALL: &'static [&'static str];
    /// The earliest moment after $1 when work appears, as `due`: a future message (a timer), a
    /// scheduled start or back-off ending, an activity's retry time.
    const NEXT_DUE: &'static str;
    // Statements over a list bound as one parameter (`Sql::ids`, `Sql::texts`).
    /// Leases, of instances $4, those with visible work at $1 (a suspended ($5) one only for
    /// an event that wakes it) that are ready and that nobody else holds, for owner $2 until
    /// $3: a batch's claims on the work it leaves. Returns `lock_token` and the instance
    /// columns.
    const CLAIM_INSTANCES: &'static str;
    /// Deletes the inbox rows with ids $1.
    const DELETE_INBOX_IDS: &'static str;
    /// Deletes the entity-queue rows with ids $1.
    const DELETE_QUEUE_IDS: &'static str;
    /// Makes exactly the rows with ids $2 the deferred ones of entity $1's queue (those
    /// deferred before may run again), in one statement.
    const SET_DEFERRED: &'static str;
    /// Undefers the queues of entities $1.
    const UNDEFER_QUEUES: &'static str;
    /// `instance_id, event` of the histories of instances $1, by instance, in order.
    const SELECT_HISTORIES: &'static str;
    /// The inbox messages of instances $1 visible at $2, in delivery order.
    const SELECT_INBOXES: &'static str;
    /// Extends to $1 the leases (of instances, activities, entities) with tokens $2.
    const RENEW_LEASES: [&'static str; 3];
    // Statements over many rows, each bound as one list whatever its length.
    /// Appends to instance $1's history the events `Sql::blobs` binds, numbered from $2 or,
    /// when $2 is NULL, after its last.
    const INSERT_HISTORY: &'static str;
    /// Queues the activities `Sql::activities` binds, visible at the time bound next.
    const INSERT_ACTIVITIES: &'static str;
    /// As INSERT_ACTIVITIES, each row leased as it is queued, with a fresh token, for the owner
    /// and until the time bound after; returns id, lock_token, task_id.
    const INSERT_CLAIMED_ACTIVITIES: &'static str;
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
pub(super) async fn create<C: Dialect>(conn: &mut C, new: &NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()> {
    let id = &new.instance.instance_id;
    let replacing = match rules::slot(status_of(conn, C::SELECT_STATUS_FOR_UPDATE, id).await?, replaceable) {
        Slot::Taken(s) => return Err(StoreError::AlreadyExists(id.clone(), s.as_str_name())),
        Slot::Free => false,
        Slot::Replace => true,
    };
    insert_new(conn, new, replacing).await.map_err(|e| taken(id, e))
}

/// Creates an instance whose first step is decided: its row, history and queued work. Returns
/// the instances created or changed.
pub(super) async fn create_with_history<C: Dialect>(
    conn: &mut C,
    commit: &Commit,
    now: Micros,
    effects: &mut Effects,
) -> Result<Vec<String>> {
    let id = &commit.instance.instance_id;
    if let Some(s) = status_of(conn, SELECT_STATUS, id).await? {
        return Err(StoreError::AlreadyExists(id.clone(), s.as_str_name()));
    }
    insert_instance(conn, &commit.instance, 0).await.map_err(|e| taken(id, e))?;
    let changed = apply(conn, commit, now, Some(0), None, effects).await?.changed;
    effects.touched.extend(changed.iter().cloned());
    Ok(changed)
}

/// Creates an instance; `replacing` says a finished one with the same id is there to go first.
pub(super) async fn insert_new<C: Dialect>(conn: &mut C, new: &NewInstance, replacing: bool) -> Result<()> {
    if replacing {
        for_id(conn, &DELETE_INSTANCE, &new.instance.instance_id).await?;
    }
    insert_instance(conn, &new.instance, new.instance.scheduled_start_at.unwrap_or(0)).await?;
    insert_message(conn, &new.start).await
}

/// Queues a message if its target can take it (see [`rules::delivery`]); otherwise drops it
/// with a log line. On a database several sidecars share, a message racing with its target
/// finishing elsewhere may still be queued; the engine drops it when the finished instance
/// is next looked at.
pub(super) async fn deliver<C: Dialect>(conn: &mut C, m: &Message) -> Result<Delivery> {
    if m.is_for_entity() {
        return entities_txn::enqueue(conn, m).await;
    }
    let row = C::sql(SELECT_STATUS_AND_EXECUTION).text(&m.instance_id).row(conn).await?;
    let target = match row {
        Some(r) => Some((encoding::status(r.small("status")?.into())?, r.text("execution_id")?)),
        None => None,
    };
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
                let [messages, start] = MAKE_PENDING_DUE;
                C::sql(messages).int(m.visible_at).text(id).run(conn).await?;
                C::sql(start).text(id).run(conn).await?;
            }
            insert_message(conn, m).await?;
            Ok(Delivery::Queued)
        }
    }
}

/// Rewinds a failed instance with `event` (see [`rules::rewind`]).
pub(super) async fn rewind<C: Dialect>(conn: &mut C, id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind> {
    let Some(instance) = load_instance(conn, id).await? else {
        return Ok(Rewind::Unknown);
    };
    match rules::rewind(&instance, event, now) {
        Err(status) => Ok(Rewind::NotFailed(status)),
        Ok(message) => {
            let running = OrchestrationStatus::Running as i32;
            C::sql(REWIND_INSTANCE).small(running).int(now).text(id).run(conn).await?;
            insert_message(conn, &message).await?;
            Ok(Rewind::Rewound)
        }
    }
}

/// Brings back a sub-orchestration for its parent's rewind: rewound if it is there, created
/// again if it was purged.
async fn rewind_child<C: Dialect>(conn: &mut C, r: &ChildRewind, now: Micros) -> Result<()> {
    if rewind(conn, &r.instance_id, rules::child_rewound(r, now), now).await? == Rewind::Unknown {
        info!(instance_id = %r.instance_id, "recreating purged sub-orchestration for rewind");
        insert_new(conn, &r.recreate, false).await?;
    }
    Ok(())
}

/// Deletes a finished instance and, when `recursive`, its finished sub-orchestrations (see
/// [`rules::purge_step`]); an entity id purges that entity. Returns the outcome and the
/// instances deleted.
pub(super) async fn purge<C: Dialect>(conn: &mut C, instance_id: &str, recursive: bool) -> Result<(Purge, Vec<String>)> {
    if let Ok(entity) = crate::engine::entities::normalize_id(instance_id) {
        return Ok((Purge::Deleted(entities_txn::purge(conn, &entity).await?), vec![]));
    }
    let mut pending = vec![instance_id.to_string()];
    let mut deleted = vec![];
    while let Some(id) = pending.pop() {
        let Some(status) = status_of(conn, SELECT_STATUS, &id).await? else {
            continue;
        };
        match rules::purge_step(status, deleted.is_empty() && id == instance_id, recursive) {
            PurgeStep::Refuse(s) => return Ok((Purge::NotFinished(s), vec![])),
            PurgeStep::Keep => continue,
            PurgeStep::Delete { children } => {
                if children {
                    pending.extend(rules::purge_children(&load_history(conn, &id).await?));
                }
                for_id(conn, &DELETE_INSTANCE, &id).await?;
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
    C: Dialect,
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
                id, token, result, now, ..
            } => activity_result(conn, *id, token, result, *now).await,
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
    claim_instances(conn, writes, &mut results).await?;
    Ok(results)
}

/// Leases, in one statement for the whole batch, the orchestrations its writes' claims ask
/// for (a step's own instance, which events that arrived while it ran or a continued-as-new
/// start leave due; an activity result's orchestration) where they are free to run now. Each
/// lease goes to the first write that asked for its instance.
async fn claim_instances<C: Dialect>(conn: &mut C, writes: &[Write], results: &mut [Result<Written>]) -> Result<()> {
    let mut wanted: Vec<(usize, &str)> = vec![];
    let mut lease: Option<(&Claim, Micros)> = None;
    for (i, (w, r)) in writes.iter().zip(results.iter()).enumerate() {
        let (claim, id, now) = match (w, r) {
            (
                Write::Step {
                    commit,
                    claim: Some(c),
                    now,
                    ..
                },
                Ok(_),
            ) if !commit.instance.is_terminal() => (c, commit.instance.instance_id.as_str(), *now),
            (Write::ActivityResult { claim: Some(c), now, .. }, Ok(written)) => match written.changed.first() {
                Some(id) => (c, id.as_str(), *now),
                None => continue,
            },
            _ => continue,
        };
        if claim.orchestration && !wanted.iter().any(|(_, w)| *w == id) {
            wanted.push((i, id));
            // One owner (the dispatcher's) for every claim; the latest time and lease win.
            lease = Some(match lease {
                Some((c, at)) => (if claim.until > c.until { claim } else { c }, at.max(now)),
                None => (claim, now),
            });
        }
    }
    let Some((claim, now)) = lease else { return Ok(()) };
    let ids: Vec<&str> = wanted.iter().map(|(_, id)| *id).collect();
    let q = C::sql(C::CLAIM_INSTANCES).int(now).text(&claim.owner).int(claim.until).texts(&ids);
    let rows = q.small(OrchestrationStatus::Suspended as i32).rows(conn).await?;
    let mut claimed: Vec<_> = wanted.iter().map(|(i, _)| (*i, None)).collect();
    for (token, instance) in encoding::leased(&rows)? {
        if let Some(at) = ids.iter().position(|id| *id == instance.instance_id) {
            claimed[at].1 = Some((token, instance));
        }
    }
    for (i, lease) in claimed {
        if let Ok(written) = &mut results[i] {
            written.claimed = lease;
        }
    }
    Ok(())
}

/// Releases a lease without a step, deleting the `consumed` inbox rows.
pub(super) async fn release<C: Dialect>(conn: &mut C, id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()> {
    if C::sql(RELEASE_ORCHESTRATION).int(ready_at).text(id).text(token).run(conn).await? == 0 {
        return Err(StoreError::LeaseLost);
    }
    delete_ids(conn, C::DELETE_INBOX_IDS, consumed).await
}

/// One orchestration step; nothing is written when the lease is gone.
#[allow(clippy::too_many_arguments)]
async fn step<C: Dialect>(
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
    let q = bind_fields(C::sql(UPDATE_HELD_INSTANCE), &commit.instance).text(&commit.instance.instance_id);
    if q.text(token).run(conn).await? == 0 {
        return Err(StoreError::LeaseLost);
    }
    delete_ids(conn, C::DELETE_INBOX_IDS, consumed).await?;
    let written = apply(conn, commit, now, known_len, claim, effects).await?;
    effects.histories.push(HistoryChange {
        instance_id: commit.instance.instance_id.clone(),
        execution_id: commit.instance.execution_id.clone(),
        finished: commit.instance.is_terminal(),
        write: commit.history.clone(),
    });
    Ok(written)
}

/// What a commit writes beyond its instance row: history, leftovers of a finished instance,
/// activities (the first ones leased when `claim` says so), children, messages and rewinds.
/// Returns the instances whose state changed and the activities leased; the instances it
/// sends messages to are added to `effects.touched`.
async fn apply<C: Dialect>(
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
        for_id(conn, &DELETE_LEFTOVERS, id).await?;
    }
    let mut written = Written::default();
    let claimed = claim.map_or(0, |c| c.activities.min(commit.activities.len()));
    let (leased, queued) = commit.activities.split_at(claimed);
    if let Some(claim) = claim.filter(|_| !leased.is_empty()) {
        let q = C::sql(C::INSERT_CLAIMED_ACTIVITIES).activities(leased).int(now);
        let rows = q.text(&claim.owner).int(claim.until).rows(conn).await?;
        written.activities = encoding::claimed(leased, &rows)?;
    }
    if !queued.is_empty() {
        C::sql(C::INSERT_ACTIVITIES).activities(queued).int(now).run(conn).await?;
    }
    let mut changed = vec![id.clone()];
    for c in &commit.children {
        let child = &c.child.instance.instance_id;
        match rules::child_slot(status_of(conn, SELECT_STATUS, child).await?) {
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
async fn write_history<C: Dialect>(conn: &mut C, id: &str, write: &HistoryWrite, known_len: Option<usize>) -> Result<()> {
    match write {
        HistoryWrite::Append(events) if events.is_empty() => Ok(()),
        HistoryWrite::Append(events) => insert_history(conn, id, known_len.map(|l| l as i64), events).await,
        HistoryWrite::Replace(events) => {
            C::sql(DELETE_HISTORY).text(id).run(conn).await?;
            insert_history(conn, id, Some(0), events).await
        }
    }
}

/// Appends `events` numbered from `first`, or after the last stored when that is not known.
async fn insert_history<C: Dialect>(conn: &mut C, id: &str, first: Option<i64>, events: &[HistoryEvent]) -> Result<()> {
    let q = C::sql(C::INSERT_HISTORY).text(id).maybe_int(first);
    q.blobs(events.iter().map(encoding::encode).collect()).run(conn).await.map(drop)
}

/// One activity result; nothing is written when the lease is gone.
async fn activity_result<C: Dialect>(conn: &mut C, id: i64, token: &str, result: &HistoryEvent, now: Micros) -> Result<Written> {
    let Some(row) = C::sql(DELETE_LOCKED_ACTIVITY).int(id).text(token).row(conn).await? else {
        return Err(StoreError::LeaseLost);
    };
    let (instance_id, execution_id) = (row.text("instance_id")?, row.text("execution_id")?);
    let message = Message {
        instance_id,
        execution_id: Some(execution_id),
        event: result.clone(),
        visible_at: now,
        priority: Message::NORMAL,
    };
    // One statement: queued only while that execution is still running (a result for a
    // finished or replaced execution is dropped, as `deliver` would).
    if bind_message(C::sql(QUEUE_RESULT.as_str()), &message).run(conn).await? == 0 {
        debug!(instance_id = %message.instance_id, "dropping an activity result for a finished or replaced execution");
    }
    Ok(Written::changed(vec![message.instance_id]))
}

pub(super) async fn load_instance<C: Conn>(conn: &mut C, id: &str) -> Result<Option<Instance>> {
    let row = C::sql(SELECT_INSTANCE).text(id).row(conn).await?;
    row.as_ref().map(encoding::instance).transpose()
}

/// The current execution's history, in order.
pub(super) async fn load_history<C: Conn>(conn: &mut C, id: &str) -> Result<Vec<HistoryEvent>> {
    let rows = C::sql(SELECT_HISTORY).text(id).rows(conn).await?;
    rows.iter().map(|r| encoding::decode(r.bytes("event")?)).collect()
}

/// The status of an instance, read with `sql` (SELECT_STATUS or SELECT_STATUS_FOR_UPDATE).
pub(super) async fn status_of<C: Conn>(conn: &mut C, sql: &'static str, id: &str) -> Result<Option<OrchestrationStatus>> {
    let row = C::sql(sql).text(id).row(conn).await?;
    row.map(|r| encoding::status(r.small("status")?.into())).transpose()
}

/// Inserts a new, unleased instance row, not dispatched before `ready_at`.
async fn insert_instance<C: Conn>(conn: &mut C, i: &Instance, ready_at: Micros) -> Result<()> {
    let q = bind_fields(C::sql(INSERT_INSTANCE).text(&i.instance_id), i);
    q.int(ready_at).run(conn).await.map(drop)
}

async fn insert_message<C: Conn>(conn: &mut C, m: &Message) -> Result<()> {
    bind_message(C::sql(INSERT_MESSAGE), m).run(conn).await.map(drop)
}

/// Deletes the rows with `ids` by `sql` (one of the `Dialect`'s `DELETE_*_IDS`).
pub(super) async fn delete_ids<C: Conn>(conn: &mut C, sql: &'static str, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        C::sql(sql).ids(ids).run(conn).await?;
    }
    Ok(())
}

/// The histories of these instances, by instance.
pub(super) async fn histories<C: Dialect>(conn: &mut C, ids: &[&str]) -> Result<HashMap<String, Vec<HistoryEvent>>> {
    encoding::histories(&C::sql(C::SELECT_HISTORIES).texts(ids).rows(conn).await?)
}

/// The inbox messages of these instances visible at `now`, by instance, in delivery order.
pub(super) async fn inboxes<C: Dialect>(conn: &mut C, ids: &[&str], now: Micros) -> Result<HashMap<String, Vec<(i64, Message)>>> {
    encoding::inboxes(&C::sql(C::SELECT_INBOXES).texts(ids).int(now).rows(conn).await?)
}

/// Runs each of `statements` with `id` as its one parameter.
async fn for_id<C: Conn>(conn: &mut C, statements: &[&'static str], id: &str) -> Result<()> {
    for sql in statements {
        C::sql(*sql).text(id).run(conn).await?;
    }
    Ok(())
}

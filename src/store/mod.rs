//! Durable storage behind one trait. The store executes what the engine decided: the trait
//! is implemented once (`db.rs`) over each engine's connections and transactions, each
//! transaction is written once (`txn.rs`, `entities_txn.rs`), every statement is bound and
//! run one way on either engine (`sql.rs`), the SQL both run alike is written once
//! (`queries.rs`), and what a transaction decides from the rows it reads (a message to a
//! finished instance is dropped, only finished instances are purged, ...) comes from
//! `engine::rules`. Each engine's folder keeps what only it says or does (`txn::Dialect`):
//! SQLite's single writer, JSON lists and the history cache it may keep (`cache.rs`);
//! Postgres's row locks, array binds and NOTIFY.

mod batch;
mod cache;
mod db;
mod encoding;
mod entities_txn;
mod filters;
pub mod postgres;
mod queries;
mod sql;
pub mod sqlite;
mod txn;

use std::sync::Arc;

use tokio::sync::broadcast;
use tonic::async_trait;

pub use batch::Batcher;

pub use crate::model::Names;
use crate::model::{ActivityTask, Commit, Entity, EntityCommit, Instance, Message, NewInstance};
use crate::proto::{HistoryEvent, OrchestrationStatus};
use crate::time::Micros;

/// Store failures the callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an instance with id '{0}' already exists and is {1}")]
    AlreadyExists(String, &'static str),
    #[error("the work item's lease is no longer held (it expired, was abandoned, or was completed already)")]
    LeaseLost,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The batch writer is gone (the sidecar is stopping); nothing was written.
    #[error("database error (nothing written): {0}")]
    BatchFailed(String),
}

/// A database's own error code: Postgres's SQLSTATE, or SQLite's primary result code (the
/// low byte of the extended one).
enum Code {
    Postgres(String),
    Sqlite(u32),
}

fn code(e: &dyn sqlx::error::DatabaseError) -> Code {
    let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
    match e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        Some(_) => Code::Postgres(code),
        None => Code::Sqlite(code.parse::<u32>().map(|c| c & 0xff).unwrap_or(0)),
    }
}

impl StoreError {
    /// A transaction the database aborted to break a deadlock or a serialization conflict:
    /// running it again is the documented remedy.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if matches!(code(&**e), Code::Postgres(c) if c == "40P01" || c == "40001"))
    }

    /// A write the database refuses for what it is, not for the state it is in: running it
    /// again can never succeed (a value or statement over a limit, a violated constraint).
    /// Full disks, lost connections and locks are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Encode(_)) => true,
            StoreError::Database(sqlx::Error::Database(e)) => match code(&**e) {
                // Classes 22 (data exception), 23 (integrity), 54 (program limit).
                Code::Postgres(c) => ["22", "23", "54"].iter().any(|class| c.starts_with(class)),
                // TOOBIG, CONSTRAINT, MISMATCH, RANGE; "too many SQL variables" comes as a
                // plain SQLITE_ERROR.
                Code::Sqlite(c) => matches!(c, 18 | 19 | 20 | 25) || e.message().contains("too many SQL variables"),
            },
            _ => false,
        }
    }

    /// Why the database failed, in words a client may be shown: the category only, never the
    /// driver's or the database's own text (which can name tables, values or the server).
    pub fn plain_cause(&self) -> &'static str {
        let StoreError::Database(e) = self else {
            return "the store is stopping";
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => "the connection to the database failed",
            sqlx::Error::Database(e) => match code(&**e) {
                Code::Postgres(c) => match c.as_str() {
                    "53100" => "the database's disk is full",
                    "40001" | "40P01" | "55P03" => "the database is busy",
                    c if c.starts_with("08") || c.starts_with("57") => "the connection to the database failed",
                    c if c.starts_with("53") => "the database is out of resources",
                    _ => "the database refused the transaction",
                },
                Code::Sqlite(13) => "the database's disk is full",
                Code::Sqlite(5 | 6) => "the database is busy",
                Code::Sqlite(10) => "the database could not write to its disk",
                Code::Sqlite(_) => "the database refused the transaction",
            },
            _ => "the database refused the transaction",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What happened to a message sent to an instance from outside a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The instance has finished; the message was dropped.
    Finished,
    Unknown,
}

/// Outcome of rewinding an instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewind {
    Rewound,
    Unknown,
    /// Only failed instances can be rewound.
    NotFailed(OrchestrationStatus),
}

/// Outcome of purging one instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Purge {
    /// How many instances were deleted (more than one when recursive).
    Deleted(u32),
    /// Only finished instances can be purged.
    NotFinished(OrchestrationStatus),
}

/// An orchestration work item the store has leased to this sidecar.
#[derive(Debug)]
pub struct LockedOrchestration {
    pub token: String,
    pub instance: Instance,
    /// Shared with the history cache where there is one, so leasing copies no events.
    pub history: Arc<Vec<HistoryEvent>>,
    /// Visible inbox messages, in delivery order, with their row ids.
    pub inbox: Vec<(i64, Message)>,
}

/// An activity work item the store has leased to this sidecar.
#[derive(Debug)]
pub struct LockedActivity {
    pub id: i64,
    pub token: String,
    pub task: ActivityTask,
}

/// An entity work item the store has leased to this sidecar: the entity and its visible
/// queue, oldest first, with row ids.
#[derive(Debug)]
pub struct LockedEntity {
    pub token: String,
    pub entity: Entity,
    pub queue: Vec<(i64, HistoryEvent)>,
}

/// An entity with the number of messages queued for it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitySummary {
    pub entity: Entity,
    pub backlog: u32,
}

/// Filter and page for listing entities by id.
#[derive(Debug, Default, Clone)]
pub struct EntityListFilter {
    pub id_prefix: Option<String>,
    pub modified_from: Option<Micros>,
    /// Exclusive.
    pub modified_to: Option<Micros>,
    /// Also entities without state that are locked or have queued messages.
    pub include_transient: bool,
    /// Resume after this entity id.
    pub after: Option<String>,
    pub limit: u32,
}

/// What CleanEntityStorage did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub removed: u32,
    pub released: u32,
}

/// Filter and page for listing instances (by creation time unless `sort` says otherwise).
#[derive(Debug, Default, Clone)]
pub struct InstanceFilter {
    pub statuses: Vec<OrchestrationStatus>,
    pub created_from: Option<Micros>,
    pub created_to: Option<Micros>,
    pub completed_from: Option<Micros>,
    pub completed_to: Option<Micros>,
    pub id_prefix: Option<String>,
    /// Exactly this orchestration name.
    pub name: Option<String>,
    /// The custom status contains this text, ignoring ASCII case.
    pub custom_status: Option<String>,
    /// Leaves out sub-orchestrations.
    pub top_level_only: bool,
    pub sort: SortKey,
    pub descending: bool,
    /// Resume after this (sort time, instance_id): the created time, or the completed time
    /// when sorting by completion.
    pub after: Option<(Micros, String)>,
    /// With [`SortKey::Name`], the last row's name, before the created time of `after`.
    pub after_name: Option<String>,
    pub limit: u32,
}

/// The order instances are listed in; ties are broken by creation time and instance id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Created,
    /// Finished instances only, by completion time.
    Completed,
    Name,
}

/// Filter and page for listing finished instances by completion time.
#[derive(Debug, Default, Clone)]
pub struct FinishedFilter {
    pub statuses: Vec<OrchestrationStatus>,
    pub completed_from: Option<Micros>,
    pub completed_to: Option<Micros>,
    /// Resume after this (completed_at, instance_id).
    pub after: Option<(Micros, String)>,
    pub limit: u32,
}

/// A write that ends a lease: what a worker's answer turns into.
#[derive(Debug)]
pub enum Write {
    /// An orchestration step: apply `commit`, delete the `consumed` inbox rows, end the lease.
    Step {
        token: String,
        consumed: Vec<i64>,
        commit: Commit,
        now: Micros,
        claim: Option<Claim>,
    },
    /// An activity's result: delete the task, queue `result` for its orchestration.
    ActivityResult {
        id: i64,
        token: String,
        result: HistoryEvent,
        now: Micros,
        claim: Option<Claim>,
    },
    /// An entity step: write the entity, consume its queue rows, send its messages, start its
    /// orchestrations, end the lease.
    EntityStep { token: String, commit: EntityCommit },
}

/// Work a write creates that is leased in the same transaction, for workers already waiting
/// for it: no lease round after the commit, no second flush to disk. What the caller cannot
/// hand out it releases like any other lease; what it never gets to (a crash) comes free when
/// the lease expires.
#[derive(Debug, Clone)]
pub struct Claim {
    pub owner: String,
    pub until: Micros,
    /// How many of a step's new activities to lease, from the first.
    pub activities: usize,
    /// Lease the orchestration the write leaves with visible work (the step's own instance,
    /// the activity's orchestration), unless someone holds it or it is not ready.
    pub orchestration: bool,
}

/// What a write did: the instances whose state changed, and the work it leased by its
/// [`Claim`].
#[derive(Debug, Default)]
pub struct Written {
    pub changed: Vec<String>,
    pub activities: Vec<LockedActivity>,
    pub orchestration: Option<LockedOrchestration>,
    /// The orchestration leased in the transaction, before its history and inbox are read
    /// (after the commit) into `orchestration`.
    pub(crate) claimed: Option<(String, Instance)>,
}

impl Written {
    pub(crate) fn changed(changed: Vec<String>) -> Written {
        Written {
            changed,
            ..Default::default()
        }
    }
}

impl Write {
    /// When the write was decided (entity steps carry no time).
    fn now(&self) -> Option<Micros> {
        match self {
            Write::Step { now, .. } | Write::ActivityResult { now, .. } => Some(*now),
            Write::EntityStep { .. } => None,
        }
    }
}

/// The latest time of a batch's writes: what their claims' inboxes are read as of.
fn latest(writes: &[Write]) -> Micros {
    writes.iter().filter_map(Write::now).max().unwrap_or_default()
}

/// The orchestrations a committed batch's claims leased, with their tokens.
fn claimed(results: &[Result<Written>]) -> Vec<(String, Instance)> {
    results.iter().filter_map(|r| r.as_ref().ok()?.claimed.clone()).collect()
}

/// Puts the claimed orchestrations, read with their histories and inboxes, into their writes'
/// results. When they could not be read, their leases are let go again for the dispatch loop
/// (the batch itself is committed: its results stand).
async fn attach_claimed<S: Store + ?Sized>(
    store: &S,
    results: &mut [Result<Written>],
    picked: Vec<(String, Instance)>,
    leased: Result<Vec<LockedOrchestration>>,
) {
    let mut leased = match leased {
        Ok(leased) => leased,
        Err(e) => {
            tracing::warn!(error = %e, "reading claimed orchestrations failed; releasing them");
            for (token, i) in picked {
                let _ = store.release_orchestration(&i.instance_id, &token, &[], 0).await;
            }
            vec![]
        }
    };
    for w in results.iter_mut().flatten() {
        if let Some((token, _)) = w.claimed.take() {
            let at = leased.iter().position(|l| l.token == token);
            w.orchestration = at.map(|at| leased.swap_remove(at));
        }
    }
}

/// Lease parameters: who takes the lease and until when.
#[derive(Debug, Clone)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub now: Micros,
    pub until: Micros,
}

/// What is waiting in the store, for the metrics (counted when scraped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Instances with an event due now that nobody holds.
    pub orchestrations: u64,
    /// Activities due now that nobody holds.
    pub activities: u64,
    /// Timers and other events not due yet.
    pub timers: u64,
    /// Work items whose lease ran out without being released (a dead sidecar's work, about to
    /// be taken over).
    pub expired_leases: u64,
}

/// A change another process sharing the database made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These instances changed state or received work; an empty list means only that some
    /// work (an activity, a released lease) became available.
    Instances(Vec<String>),
    /// Changes may have been missed (the notification channel was lost): assume anything
    /// changed.
    Unknown,
}

/// Durable state of a task hub. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an instance. An existing instance with the same id is replaced when its status
    /// is in `replaceable` (its history, inbox and activities go with it); otherwise
    /// [`StoreError::AlreadyExists`].
    async fn create_instance(&self, new: NewInstance, replaceable: &[OrchestrationStatus]) -> Result<()>;

    /// Creates an instance whose first step is already decided (a rerun): the commit's
    /// instance row, history and the work it queues, in one transaction. An existing instance
    /// with that id, in any status, is [`StoreError::AlreadyExists`]. Returns the ids of the
    /// instances created or changed.
    async fn create_with_history(&self, commit: Commit, now: Micros) -> Result<Vec<String>>;

    async fn get_instance(&self, instance_id: &str) -> Result<Option<Instance>>;

    /// The current execution's history, in order.
    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>>;

    /// Queues a message from a client. A terminate also makes a not-yet-due scheduled start
    /// due now, so terminating a pending instance never waits for its start time.
    async fn send(&self, message: Message) -> Result<Delivery>;

    /// Makes a failed instance runnable again with an ExecutionRewound event.
    async fn rewind(&self, instance_id: &str, event: HistoryEvent, now: Micros) -> Result<Rewind>;

    /// Instances by creation time, oldest first.
    async fn query(&self, filter: &InstanceFilter) -> Result<Vec<Instance>>;

    /// How many instances match `filter` per status (paging and order aside); statuses no
    /// instance has are left out.
    async fn count_by_status(&self, filter: &InstanceFilter) -> Result<Vec<(OrchestrationStatus, u64)>>;

    /// Finished instances by completion time, oldest first.
    async fn finished(&self, filter: &FinishedFilter) -> Result<Vec<(Micros, String)>>;

    /// Deletes a finished instance (and, when `recursive`, its finished sub-orchestrations).
    /// An unknown instance purges nothing.
    async fn purge(&self, instance_id: &str, recursive: bool) -> Result<Purge>;

    /// Deletes every instance (DeleteTaskHub).
    async fn delete_all(&self) -> Result<()>;

    /// Leases up to `max` instances that have visible work, of the orchestration names `names`.
    async fn lock_orchestrations(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedOrchestration>>;

    /// Applies several writes in one transaction (group commit: one flush to disk for all).
    /// Each write either happens whole or, when its lease is gone, not at all
    /// ([`StoreError::LeaseLost`] in its slot); a database failure rolls the whole batch back
    /// and is returned (the [`Batcher`] then writes each alone). An `Ok` means committed.
    async fn write(&self, writes: &[Write]) -> Result<Vec<Result<Written>>>;

    /// How many batches may be written at once (one for a single-writer database).
    fn write_concurrency(&self) -> usize {
        1
    }

    /// Releases an orchestration lease, deleting `consumed` inbox rows; the instance is not
    /// dispatched again before `ready_at`.
    async fn release_orchestration(&self, instance_id: &str, token: &str, consumed: &[i64], ready_at: Micros) -> Result<()>;

    /// Leases up to `max` visible activities of the names `names` (activities queued before
    /// names were stored are leased whatever `names` says; the caller checks those).
    async fn lock_activities(&self, lease: &Lease<'_>, max: u32, names: &Names) -> Result<Vec<LockedActivity>>;

    /// Releases an activity lease; it is not dispatched again before `visible_at`.
    async fn release_activity(&self, id: i64, token: &str, visible_at: Micros) -> Result<()>;

    /// Extends the leases with these tokens (orchestrations and activities alike). Leases a
    /// sidecar no longer tracks are not renewed, so they expire on their own.
    async fn renew_leases(&self, tokens: &[String], until: Micros) -> Result<()>;

    /// Releases every lease held by `owner`, or by anyone when `owner` is `None`.
    async fn release_all(&self, owner: Option<&str>) -> Result<()>;

    /// The earliest future time at which some work becomes visible (a timer, a scheduled
    /// start, the end of a back-off, or a lease that will expire unless renewed).
    async fn next_due(&self, now: Micros) -> Result<Option<Micros>>;

    /// An entity, if it has a row (it may have no state).
    async fn get_entity(&self, instance_id: &str) -> Result<Option<EntitySummary>>;

    /// Entities by id, ascending.
    async fn query_entities(&self, filter: &EntityListFilter) -> Result<Vec<EntitySummary>>;

    /// Removes entities with no state, no lock and no queued messages, and/or releases locks
    /// held by orchestrations that no longer run.
    async fn clean_entities(&self, remove_empty: bool, release_orphaned_locks: bool) -> Result<Cleaned>;

    /// Leases up to `max` entities that have runnable (visible, not deferred) messages.
    async fn lock_entities(&self, lease: &Lease<'_>, max: u32) -> Result<Vec<LockedEntity>>;

    /// Releases an entity lease; the entity is not dispatched again before `ready_at`.
    async fn release_entity(&self, instance_id: &str, token: &str, ready_at: Micros) -> Result<()>;

    /// Makes every entity that nobody holds and that waits out a back-off at `now` due at once.
    async fn unpark_entities(&self, now: Micros) -> Result<()>;

    /// Counts what is waiting (read-only; for the metrics and readiness).
    async fn backlog(&self, now: Micros) -> Result<Backlog>;

    /// Changes made by other processes sharing this store, for a store that can be shared.
    fn remote_changes(&self) -> Option<broadcast::Receiver<Change>> {
        None
    }
}

/// How to open a store, beyond its URL.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most database connections held at once (Postgres).
    pub pool_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { pool_size: 10 }
    }
}

/// Opens the store a database URL names, applying pending schema migrations first.
pub async fn open(url: &str, options: &Options) -> Result<Arc<dyn Store>, String> {
    let shown = crate::redact::redact(url);
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open(url)
            .await
            .map_err(|e| format!("cannot open {shown}: {e}"))?;
        return Ok(Arc::new(store));
    }
    if postgres::handles(url) {
        let store = postgres::PostgresStore::open(url, options)
            .await
            .map_err(|e| format!("cannot open {shown}: {e}"))?;
        return Ok(Arc::new(store));
    }
    Err(format!(
        "unsupported database URL '{shown}': expected postgres://..., sqlite://PATH or sqlite::memory:"
    ))
}

/// Opens the store of the named task hub `hub` (already validated by `crate::hubs`) in the
/// database `url` names, beside the default hub's: Postgres keeps each hub in a schema of its
/// own, SQLite in a sibling file ([`sqlite::hub_url`]). Migrations are applied as for
/// [`open`].
pub async fn open_hub(url: &str, hub: &str, options: &Options) -> Result<Arc<dyn Store>, String> {
    if postgres::handles(url) {
        let store = postgres::PostgresStore::open_hub(url, options, hub)
            .await
            .map_err(|e| format!("cannot open task hub '{hub}' in {}: {e}", crate::redact::redact(url)))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("sqlite:") {
        return open(&sqlite::hub_url(url, hub), options).await;
    }
    open(url, options).await
}

/// Applies pending schema migrations and returns (for operators who migrate separately).
pub async fn migrate(url: &str, options: &Options) -> Result<(), String> {
    let shown = crate::redact::redact(url);
    if postgres::handles(url) {
        return postgres::migrate(url, options)
            .await
            .map_err(|e| format!("cannot migrate {shown}: {e}"));
    }
    open(url, options).await.map(drop)
}

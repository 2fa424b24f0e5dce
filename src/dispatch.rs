//! Who gets which work item. Workers open `GetWorkItems` streams; the dispatch loop leases due
//! work from the store and pushes it to a stream with free capacity the moment it is
//! committed (every commit wakes the loop; future work wakes it at its due time). Items a
//! worker holds are tracked here by completion token until completed, abandoned, or the
//! worker's stream drops, which releases them at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::engine::entities::{self as entity_rules, Plan};
use crate::engine::work_filters::WorkFilter;
use crate::engine::{self, Prepared, events};
use crate::limits;
use crate::metrics::{Kind, METRICS};
use crate::model::{Entity, Instance, Names};
use crate::proto::work_item::Request as Item;
use crate::proto::*;
use crate::store::{Batcher, Change, Lease, LockedActivity, LockedEntity, LockedOrchestration, Store, StoreError, Write};
use crate::telemetry::Telemetry;
use crate::time::{self, Micros};

/// Tunables of the dispatch loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a lease lasts without renewal; renewed every third of it while held.
    pub lease: Duration,
    /// Health pings on every worker stream at this interval.
    pub ping_interval: Duration,
    /// Workers that stream history get `requiresHistoryStreaming` instead of `pastEvents`
    /// when the encoded history is larger than this.
    pub history_streaming_threshold: usize,
    /// Back-off before an abandoned item is dispatched again.
    pub abandon_delay: Duration,
    /// Re-check for expired leases and missed wake-ups at this interval (a safety net only).
    pub sweep_interval: Duration,
    /// A work item a worker has held this long without answering is taken back and given to
    /// another worker (its late answer is refused); `None` lets a worker hold an item as long
    /// as its stream lives.
    pub item_deadline: Option<Duration>,
    /// Most bytes of work items queued for one worker stream and not yet taken by it: a worker
    /// that stops reading gets nothing more, and what it has not read stays bounded.
    pub worker_buffer_bytes: usize,
    /// Largest work item sent to a worker (the receive limit of the SDKs' gRPC clients is 4 MiB
    /// by default). An orchestration whose next work item would be larger fails, and an
    /// activity result larger than this is recorded as the activity's failure.
    pub max_work_item_bytes: usize,
    /// Sent on every orchestrator work item as `entityParameters.entityMessageReorderWindow`.
    /// The .NET SDK refuses every entity operation from an orchestration when the field is
    /// absent; SDKs that do not use it ignore it.
    pub entity_reorder_window: Duration,
    /// Which work item carries entity batches.
    pub entity_work_items: EntityWorkItems,
}

/// The two shapes of entity work item in the protocol. Every SDK that runs entities (.NET,
/// Java, JavaScript, Python) reads both; workers built against the older protocol read only
/// the batch request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EntityWorkItems {
    /// `EntityRequest` (`entityRequestV2`): the queued operations as history events.
    #[default]
    Request,
    /// `EntityBatchRequest` (`entityRequest`): operations as `OperationRequest`s.
    BatchRequest,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            history_streaming_threshold: 1 << 20,
            abandon_delay: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(5),
            item_deadline: None,
            worker_buffer_bytes: 16 << 20,
            max_work_item_bytes: 4 << 20,
            entity_reorder_window: Duration::from_secs(30 * 60),
            entity_work_items: EntityWorkItems::default(),
        }
    }
}

/// A worker that declares no limit still gets at most this many items of a kind at once, so
/// one worker cannot hoard the whole backlog.
const DEFAULT_LIMIT: usize = 1000;
/// Most items leased in one store round trip.
const BATCH: usize = 100;
/// A work item whose worker's stream ended while holding it this many times in a row is not
/// sent again: it evidently kills the workers that receive it (too large or too deeply nested
/// for their parsers).
const MAX_LOST_DELIVERIES: u32 = 3;
/// Most bytes of actions buffered for one chunked answer (all its partial chunks together).
const MAX_CHUNKED_BYTES: usize = 64 << 20;

type Sender = mpsc::UnboundedSender<Result<WorkItem, Status>>;

struct Worker {
    tx: Sender,
    /// Bytes sent to the stream and not yet taken by it (shared with its [`WorkStream`]).
    buffered: Arc<AtomicUsize>,
    max_orchestrations: usize,
    max_activities: usize,
    max_entities: usize,
    orchestrations: usize,
    activities: usize,
    entities: usize,
    history_streaming: bool,
    /// The work it takes (its `workItemFilters`).
    filter: WorkFilter,
    /// Health pings; stops when the worker is removed.
    _pinger: AbortOnDrop,
}

/// Keys of [`State::lost`].
mod lost_key {
    pub fn orchestration(instance_id: &str) -> String {
        format!("o:{instance_id}")
    }
    pub fn activity(id: i64) -> String {
        format!("a:{id}")
    }
}

/// What became of an orchestrator work item offered to the workers.
enum Handed {
    Sent(u64),
    NoWorker,
    /// Too large to send: handed back for the instance to fail.
    TooLarge(Box<Undeliverable>),
}

struct Undeliverable {
    size: usize,
    instance: Instance,
    history: Vec<HistoryEvent>,
    new_events: Vec<HistoryEvent>,
    consumed: Vec<i64>,
}

impl Worker {
    /// Whether the stream has taken enough of what was sent to it to be sent more.
    fn has_room(&self, buffer: usize) -> bool {
        self.buffered.load(Ordering::Acquire) < buffer
    }

    /// Queues a work item of `size` encoded bytes; false if the stream is gone.
    fn send(&self, work: WorkItem, size: usize) -> bool {
        self.buffered.fetch_add(size, Ordering::AcqRel);
        if self.tx.send(Ok(work)).is_err() {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// An orchestrator work item a worker holds.
struct HeldOrchestration {
    worker: u64,
    instance: Instance,
    history: Vec<HistoryEvent>,
    new_events: Vec<HistoryEvent>,
    consumed: Vec<i64>,
    /// Actions of a chunked answer received so far (and their size), and the next chunk
    /// index expected.
    chunks: Vec<OrchestratorAction>,
    chunk_bytes: usize,
    next_chunk: i32,
    /// When it was handed out (item deadlines, the step latency metric).
    since: Instant,
}

struct HeldActivity {
    worker: u64,
    id: i64,
    instance_id: String,
    task_id: i32,
    since: Instant,
}

/// An entity batch a worker holds: what the engine planned, to apply the result to.
struct HeldEntity {
    worker: u64,
    entity: Entity,
    plan: Plan,
}

/// Workers that send the same filters, and their free room per kind of work item.
struct Group {
    filter: WorkFilter,
    orchestrations: usize,
    activities: usize,
    entities: usize,
}

#[derive(Default)]
struct State {
    next_worker: u64,
    workers: BTreeMap<u64, Worker>,
    orchestrations: HashMap<String, HeldOrchestration>,
    activities: HashMap<String, HeldActivity>,
    entities: HashMap<String, HeldEntity>,
    /// Round-robin cursor over workers.
    cursor: u64,
    /// Work items (by instance id, or activity row id) whose workers' streams ended while
    /// holding them, and how often in a row.
    lost: HashMap<String, u32>,
}

impl State {
    /// The connected workers' distinct filters, each with the free room of the workers that
    /// share it. Each group leases only what it takes, so work no connected worker takes is
    /// never leased and stays queued.
    fn groups(&self, buffer: usize) -> Vec<Group> {
        let mut groups: Vec<Group> = vec![];
        // A worker that has not taken what it was sent gets nothing more for now; taking it
        // wakes the dispatch loop.
        for w in self.workers.values().filter(|w| w.has_room(buffer)) {
            let takes_entities = w.filter.entities != Names::Only(Default::default());
            let room = Group {
                filter: w.filter.clone(),
                orchestrations: w.max_orchestrations.saturating_sub(w.orchestrations),
                activities: w.max_activities.saturating_sub(w.activities),
                entities: if takes_entities {
                    w.max_entities.saturating_sub(w.entities)
                } else {
                    0
                },
            };
            match groups.iter_mut().find(|g| g.filter == w.filter) {
                Some(g) => {
                    g.orchestrations += room.orchestrations;
                    g.activities += room.activities;
                    g.entities += room.entities;
                }
                None => groups.push(room),
            }
        }
        groups
    }
    /// The next worker (round robin) with room for one more item of a kind.
    fn choose(&mut self, room: impl Fn(&Worker) -> bool) -> Option<u64> {
        let after = self.workers.range(self.cursor + 1..).chain(self.workers.range(..=self.cursor));
        let id = after.filter(|(_, w)| room(w)).map(|(id, _)| *id).next()?;
        self.cursor = id;
        Some(id)
    }
}

/// Wakes clients waiting on an instance's state (WaitForInstanceStart/Completion), and feeds
/// the live views (the dashboard's change stream) with every change.
pub struct Watchers {
    senders: Mutex<HashMap<String, watch::Sender<()>>>,
    feed: broadcast::Sender<Changed>,
    /// Set at shutdown: feed subscribers end their streams, so open pages do not hold the
    /// HTTP listener's graceful stop.
    feed_closed: watch::Sender<bool>,
}

/// What a change-feed subscriber is told: these instances changed, or (`None`) any may have.
pub type Changed = Option<Arc<[String]>>;

/// Changes a slow feed subscriber may fall behind by before it is told it lagged.
const FEED_CAPACITY: usize = 1024;

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            senders: Mutex::default(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            feed_closed: watch::channel(false).0,
        }
    }
}

impl Watchers {
    /// Every change from now on, as it is committed (this sidecar's and, on a shared store,
    /// the others').
    pub fn feed(&self) -> broadcast::Receiver<Changed> {
        self.feed.subscribe()
    }

    /// Becomes true when the feed ends (shutdown).
    pub fn feed_closed(&self) -> watch::Receiver<bool> {
        self.feed_closed.subscribe()
    }

    /// Subscribes before the caller reads the state, so no change can slip in between.
    pub fn subscribe(&self, instance_id: &str) -> watch::Receiver<()> {
        let mut senders = self.senders.lock().unwrap();
        senders
            .entry(instance_id.to_string())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// A guard that releases the instance's channel when dropped: when its wait ends, and
    /// also when the call is cancelled (the future is dropped mid-wait).
    pub fn releasing<'a>(&'a self, instance_id: &'a str) -> Release<'a> {
        Release(self, instance_id)
    }

    /// Forgets an instance's channel once nobody waits on it any more.
    pub fn release(&self, instance_id: &str) {
        let mut senders = self.senders.lock().unwrap();
        if senders.get(instance_id).is_some_and(|tx| tx.receiver_count() == 0) {
            senders.remove(instance_id);
        }
    }

    /// Wakes every waiter (they re-read the state), for when what changed is not known.
    pub fn notify_all(&self) {
        let _ = self.feed.send(None);
        let mut senders = self.senders.lock().unwrap();
        senders.retain(|_, tx| tx.send(()).is_ok());
    }

    pub fn notify<'a>(&self, instance_ids: impl IntoIterator<Item = &'a String>) {
        let ids: Vec<&String> = instance_ids.into_iter().collect();
        if self.feed.receiver_count() > 0 && !ids.is_empty() {
            let _ = self.feed.send(Some(ids.iter().map(|id| id.to_string()).collect()));
        }
        let mut senders = self.senders.lock().unwrap();
        for id in ids {
            if let Some(tx) = senders.get(id)
                && tx.send(()).is_err()
            {
                senders.remove(id); // nobody is waiting any more
            }
        }
    }
}

/// See [`Watchers::releasing`].
pub struct Release<'a>(&'a Watchers, &'a str);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

impl Watchers {
    /// How many instances have a channel (waiters, or channels not yet released).
    pub fn len(&self) -> usize {
        self.senders.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The work-item hub of one sidecar.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    /// Worker answers are written through here, so concurrent answers share a commit.
    batcher: Batcher,
    settings: Settings,
    /// Lease owner name of this sidecar process.
    owner: String,
    state: Mutex<State>,
    wake: Notify,
    /// Set when shutdown begins: nothing more is handed out; answers are still taken.
    draining: AtomicBool,
    /// Woken with every wake-up of the loop, which follows every item let go; the drain waits
    /// on it.
    settled: Notify,
    pub watchers: Watchers,
    pub telemetry: Telemetry,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("owner", &self.owner).finish()
    }
}

/// Why a completion or abandon was refused.
fn stale(token: &str) -> Status {
    Status::failed_precondition(format!(
        "completion token '{token}' does not name a work item this sidecar has outstanding (already completed, abandoned, or its worker disconnected)"
    ))
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, settings: Settings, telemetry: Telemetry) -> Arc<Self> {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Arc::new(Dispatcher {
            batcher: Batcher::new(store.clone()),
            store,
            settings,
            owner,
            state: Mutex::default(),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
            settled: Notify::new(),
            watchers: Watchers::default(),
            telemetry,
        })
    }

    /// Tells the loop that new work may be due (after any commit).
    pub fn wake(&self) {
        self.wake.notify_one();
        self.settled.notify_waiters();
    }

    /// Stops handing out work (at shutdown); items already held may still be answered.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// How many work items workers hold.
    pub fn held(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.orchestrations.len() + state.activities.len() + state.entities.len()
    }

    /// Resolves once workers hold no work items.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held() == 0 {
                return;
            }
            // A few paths let an item go without a wake-up (a lost lease): look again anyway.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Called after a store change outside a work item (client RPCs).
    pub fn changed<'a>(&self, instance_ids: impl IntoIterator<Item = &'a String>) {
        self.watchers.notify(instance_ids);
        self.wake();
    }

    fn lease(&self, now: Micros) -> Lease<'_> {
        Lease {
            owner: &self.owner,
            now,
            until: now + time::span(self.settings.lease),
        }
    }

    fn entity_parameters(&self) -> OrchestratorEntityParameters {
        let window = self.settings.entity_reorder_window;
        OrchestratorEntityParameters {
            entity_message_reorder_window: Some(prost_types::Duration {
                seconds: window.as_secs() as i64,
                nanos: window.subsec_nanos() as i32,
            }),
        }
    }

    /// Runs the dispatch loop and the lease renewer until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let renewer = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(this.settings.lease / 3);
                loop {
                    tick.tick().await;
                    if let Some(deadline) = this.settings.item_deadline {
                        this.take_back_overdue(deadline).await;
                    }
                    let until = time::now() + time::span(this.settings.lease);
                    let tokens: Vec<String> = {
                        let state = this.state.lock().unwrap();
                        state
                            .orchestrations
                            .keys()
                            .chain(state.activities.keys())
                            .chain(state.entities.keys())
                            .cloned()
                            .collect()
                    };
                    if tokens.is_empty() {
                        continue;
                    }
                    match this.store.renew_leases(&tokens, until).await {
                        Ok(()) => METRICS.leases_renewed(tokens.len()),
                        Err(e) => warn!(error = %e, "renewing leases failed"),
                    }
                }
            })
        };
        let _renewer = AbortOnDrop(renewer);
        // Other sidecars sharing the database: their commits wake our loop and our waiters.
        let _remote = self.store.remote_changes().map(|mut changes| {
            let this = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.recv().await {
                        Ok(Change::Instances(ids)) => this.changed(&ids),
                        Ok(Change::Unknown) | Err(RecvError::Lagged(_)) => {
                            this.watchers.notify_all();
                            this.wake();
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }))
        });
        loop {
            match self.dispatch_once().await {
                Ok(true) => continue, // a full batch: there may be more due work
                Ok(false) => {}
                Err(e) => warn!(error = %e, "dispatch failed; retrying"),
            }
            let now = time::now();
            let due = self.store.next_due(now).await.ok().flatten();
            let until_due = due.map(|d| time::until(d, now)).unwrap_or(self.settings.sweep_interval);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(until_due.min(self.settings.sweep_interval)) => {}
            }
        }
    }

    /// Leases what free worker capacity allows and hands it out. Returns whether a batch came
    /// back full, so more work may be waiting. (Work committed after the lease query wakes the
    /// loop anyway.)
    async fn dispatch_once(&self) -> Result<bool, StoreError> {
        if self.draining.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let groups = self.state.lock().unwrap().groups(self.settings.worker_buffer_bytes);
        // Entities are leased for every worker that takes any; `hand_entity` picks by name.
        let entity_room = groups.iter().map(|g| g.entities).sum::<usize>().min(BATCH);
        let mut more = false;
        for Group {
            filter,
            orchestrations: orchestration_room,
            activities: activity_room,
            ..
        } in groups
        {
            let orchestration_room = orchestration_room.min(BATCH);
            if orchestration_room > 0 && filter.orchestrations != Names::Only(Default::default()) {
                let now = time::now();
                let lease = self.lease(now);
                let items = self
                    .store
                    .lock_orchestrations(&lease, orchestration_room as u32, &filter.orchestrations)
                    .await?;
                more |= items.len() == orchestration_room;
                for item in items {
                    let id = item.instance.instance_id.clone();
                    if let Err(e) = self.hand_orchestration(item, now).await {
                        warn!(instance_id = %id, error = %e, "could not hand out orchestration work item; its lease will expire");
                    }
                }
            }
            let activity_room = activity_room.min(BATCH);
            if activity_room > 0 && filter.activities != Names::Only(Default::default()) {
                let now = time::now();
                let items = self
                    .store
                    .lock_activities(&self.lease(now), activity_room as u32, &filter.activities)
                    .await?;
                more |= items.len() == activity_room;
                for item in items {
                    if let Err(e) = self.hand_activity(item).await {
                        warn!(error = %e, "could not hand out activity work item; its lease will expire");
                    }
                }
            }
        }
        if entity_room > 0 {
            let now = time::now();
            let items = self.store.lock_entities(&self.lease(now), entity_room as u32).await?;
            more |= items.len() == entity_room;
            for item in items {
                let id = item.entity.instance_id.clone();
                if let Err(e) = self.hand_entity(item, now).await {
                    warn!(entity = %id, error = %e, "could not hand out entity work item; its lease will expire");
                }
            }
        }
        Ok(more)
    }

    async fn hand_orchestration(&self, item: LockedOrchestration, now: Micros) -> Result<(), StoreError> {
        let LockedOrchestration {
            token,
            instance,
            history,
            inbox,
        } = item;
        let id = instance.instance_id.clone();
        let (new_events, consumed) = match engine::prepare(&instance, &history, &inbox, now) {
            Prepared::Run { new_events, consumed } => (new_events, consumed),
            Prepared::Drop { consumed, reason } => {
                for (_, m) in &inbox {
                    info!(instance_id = %id, event = events::kind_name(&m.event), reason, "dropping event");
                }
                return self.store.release_orchestration(&id, &token, &consumed, 0).await;
            }
            Prepared::Wait => {
                let later = now + time::span(self.settings.abandon_delay);
                return self.store.release_orchestration(&id, &token, &[], later).await;
            }
        };
        let key = lost_key::orchestration(&id);
        let lost = self.state.lock().unwrap().lost.get(&key).copied().unwrap_or(0);
        if lost >= MAX_LOST_DELIVERIES {
            let why = format!(
                "the orchestrator work item was sent to {lost} workers in a row whose streams ended before they answered; it is not sent again"
            );
            self.state.lock().unwrap().lost.remove(&key);
            return self
                .fail_step(token, &instance, &history, &new_events, consumed, "WorkItemUndeliverable", why)
                .await;
        }
        let handed = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let (name, version) = (&instance.name, instance.version.as_deref());
            let chosen = state
                .choose(|w| w.orchestrations < w.max_orchestrations && w.has_room(buffer) && w.filter.takes_orchestration(name, version));
            match chosen.and_then(|worker_id| Some((worker_id, state.workers.get_mut(&worker_id)?))) {
                None => Handed::NoWorker,
                Some((worker_id, worker)) => {
                    let stream_history = worker.history_streaming
                        && history.iter().map(|e| e.encoded_len()).sum::<usize>() > self.settings.history_streaming_threshold;
                    let request = OrchestratorRequest {
                        instance_id: id.clone(),
                        execution_id: Some(instance.execution_id.clone()),
                        past_events: if stream_history { vec![] } else { history.clone() },
                        new_events: new_events.clone(),
                        requires_history_streaming: stream_history,
                        orchestration_trace_context: instance.trace_context.clone(),
                        entity_parameters: Some(self.entity_parameters()),
                        ..Default::default()
                    };
                    let work = WorkItem {
                        request: Some(Item::OrchestratorRequest(request)),
                        completion_token: token.clone(),
                    };
                    let size = work.encoded_len();
                    if size > self.settings.max_work_item_bytes {
                        Handed::TooLarge(Box::new(Undeliverable {
                            size,
                            instance,
                            history,
                            new_events,
                            consumed,
                        }))
                    } else if worker.send(work, size) {
                        worker.orchestrations += 1;
                        state.orchestrations.insert(
                            token.clone(),
                            HeldOrchestration {
                                worker: worker_id,
                                instance,
                                history,
                                new_events,
                                consumed,
                                chunks: vec![],
                                chunk_bytes: 0,
                                next_chunk: 0,
                                since: Instant::now(),
                            },
                        );
                        Handed::Sent(worker_id)
                    } else {
                        Handed::NoWorker
                    }
                }
            }
        };
        match handed {
            Handed::Sent(worker) => {
                METRICS.dispatched(Kind::Orchestration);
                debug!(instance_id = %id, worker, "orchestration work item sent");
            }
            Handed::NoWorker => self.store.release_orchestration(&id, &token, &[], 0).await?,
            Handed::TooLarge(item) => {
                let Undeliverable {
                    size,
                    instance,
                    history,
                    new_events,
                    consumed,
                } = *item;
                let why = format!(
                    "the next orchestrator work item would be {size} bytes, more than the {} a worker accepts (--max-work-item-mib); the history has grown too large to deliver",
                    self.settings.max_work_item_bytes
                );
                self.fail_step(token, &instance, &history, &new_events, consumed, "WorkItemTooLarge", why)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends an orchestration that cannot go on (its next work item cannot be delivered, or its
    /// step can never be stored) as FAILED, with `why` in its failure details: that instance
    /// alone stops, instead of being dispatched again and again.
    #[allow(clippy::too_many_arguments)]
    async fn fail_step(
        &self,
        token: String,
        instance: &Instance,
        history: &[HistoryEvent],
        new_events: &[HistoryEvent],
        consumed: Vec<i64>,
        error_type: &str,
        why: String,
    ) -> Result<(), StoreError> {
        warn!(instance_id = %instance.instance_id, error_type, reason = %why, "failing the orchestration");
        let complete = CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(events::failure(error_type, why)),
            ..Default::default()
        };
        let answer = engine::Response {
            actions: vec![OrchestratorAction {
                id: -1,
                orchestrator_action_type: Some(orchestrator_action::OrchestratorActionType::CompleteOrchestration(complete)),
            }],
            ..Default::default()
        };
        let now = time::now();
        let mut commit = engine::apply(instance, history, new_events, answer, now, &mut || {
            uuid::Uuid::new_v4().simple().to_string()
        });
        let spans = self.telemetry.step(instance, history, new_events, &mut commit, now);
        match self
            .batcher
            .write(Write::Step {
                token,
                consumed,
                commit,
                now,
            })
            .await
        {
            Ok(changed) => {
                spans.committed();
                self.changed(&changed);
                Ok(())
            }
            Err(e) => {
                spans.failed(&e);
                Err(e)
            }
        }
    }

    async fn hand_activity(&self, item: LockedActivity) -> Result<(), StoreError> {
        let LockedActivity { id, token, task } = item;
        let key = lost_key::activity(id);
        let lost = self.state.lock().unwrap().lost.get(&key).copied().unwrap_or(0);
        if lost >= MAX_LOST_DELIVERIES {
            self.state.lock().unwrap().lost.remove(&key);
            let why = format!(
                "the activity work item was sent to {lost} workers in a row whose streams ended before they answered; it is not sent again"
            );
            warn!(instance_id = %task.instance_id, task_id = task.request.task_id, reason = %why, "failing the activity");
            let now = time::now();
            let result = events::task_result(now, task.request.task_id, None, Some(events::failure("WorkItemUndeliverable", why)));
            let changed = self.batcher.write(Write::ActivityResult { id, token, result, now }).await?;
            self.changed(&changed);
            return Ok(());
        }
        let (taken, sent) = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let (name, version) = (&task.request.name, task.request.version.as_deref());
            let taken = state.workers.values().any(|w| w.filter.takes_activity(name, version));
            let chosen = state.choose(|w| w.activities < w.max_activities && w.has_room(buffer) && w.filter.takes_activity(name, version));
            let sent = chosen.and_then(|worker_id| {
                let worker = state.workers.get_mut(&worker_id)?;
                let task_id = task.request.task_id;
                let work = WorkItem {
                    request: Some(Item::ActivityRequest(task.request)),
                    completion_token: token.clone(),
                };
                let size = work.encoded_len();
                worker.send(work, size).then_some(())?;
                worker.activities += 1;
                state.activities.insert(
                    token.clone(),
                    HeldActivity {
                        worker: worker_id,
                        id,
                        instance_id: task.instance_id,
                        task_id,
                        since: Instant::now(),
                    },
                );
                Some(())
            });
            (taken, sent)
        };
        match sent {
            Some(()) => METRICS.dispatched(Kind::Activity),
            None => {
                // Only an activity queued before names were stored can be leased for a filter that
                // does not take it; it waits a moment before it is offered again.
                let later = if taken { 0 } else { time::span(self.settings.abandon_delay) };
                self.store.release_activity(id, &token, time::now() + later).await?;
            }
        }
        Ok(())
    }

    async fn hand_entity(&self, item: LockedEntity, now: Micros) -> Result<(), StoreError> {
        let LockedEntity { token, entity, queue } = item;
        let id = entity.instance_id.clone();
        let plan = entity_rules::plan(&entity, &queue, now);
        if plan.operations.is_empty() {
            // Only lock traffic or deferrals: nothing for a worker to run.
            let commit = entity_rules::without_worker(&entity, plan, now);
            let changed = self.batcher.write(Write::EntityStep { token, commit }).await?;
            self.changed(&changed);
            return Ok(());
        }
        let shape = self.settings.entity_work_items;
        let (taken, sent) = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let taken = state.workers.values().any(|w| w.filter.takes_entity(&id));
            let chosen = state.choose(|w| w.entities < w.max_entities && w.has_room(buffer) && w.filter.takes_entity(&id));
            let sent = chosen.and_then(|worker_id| {
                let worker = state.workers.get_mut(&worker_id)?;
                let request = match shape {
                    EntityWorkItems::Request => Item::EntityRequestV2(EntityRequest {
                        instance_id: id.clone(),
                        execution_id: String::new(),
                        entity_state: entity.state.clone(),
                        operation_requests: plan.operations.iter().map(|(_, e)| e.clone()).collect(),
                    }),
                    EntityWorkItems::BatchRequest => Item::EntityRequest(EntityBatchRequest {
                        instance_id: id.clone(),
                        entity_state: entity.state.clone(),
                        operations: plan.operations.iter().map(|(_, e)| entity_rules::operation_request(e)).collect(),
                        properties: Default::default(),
                    }),
                };
                let work = WorkItem {
                    request: Some(request),
                    completion_token: token.clone(),
                };
                let size = work.encoded_len();
                worker.send(work, size).then_some(())?;
                worker.entities += 1;
                state.entities.insert(
                    token.clone(),
                    HeldEntity {
                        worker: worker_id,
                        entity,
                        plan,
                    },
                );
                Some(worker_id)
            });
            (taken, sent)
        };
        match sent {
            Some(worker) => debug!(entity = %id, worker, "entity work item sent"),
            // Entity leases do not filter by name: an entity no connected worker takes is
            // offered again a moment later, not at once.
            None if !taken => {
                self.store
                    .release_entity(&id, &token, now + time::span(self.settings.abandon_delay))
                    .await?
            }
            None => self.store.release_entity(&id, &token, 0).await?,
        }
        Ok(())
    }

    /// Registers a worker stream. The returned guard unregisters it (releasing what it holds)
    /// when the stream is dropped.
    pub fn connect(self: &Arc<Self>, request: &GetWorkItemsRequest) -> (Outbox, WorkerGuard) {
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let limit = |n: i32| if n > 0 { n as usize } else { DEFAULT_LIMIT };
        // Pings let workers tell a quiet stream from a dead one (SDKs reconnect after 120 s of silence).
        let interval = self.settings.ping_interval;
        let ping_tx = tx.clone();
        let unread = buffered.clone();
        let pinger = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tick.tick().await;
                if unread.load(Ordering::Acquire) > 0 {
                    continue; // the stream is not idle: work items wait for it already
                }
                let ping = WorkItem {
                    request: Some(Item::HealthPing(HealthPing {})),
                    completion_token: String::new(),
                };
                if ping_tx.send(Ok(ping)).is_err() {
                    break;
                }
            }
        });
        let worker = Worker {
            tx,
            buffered: buffered.clone(),
            _pinger: AbortOnDrop(pinger),
            max_orchestrations: limit(request.max_concurrent_orchestration_work_items),
            max_activities: limit(request.max_concurrent_activity_work_items),
            // 0 is what the Python SDK sends though it runs entities: it means "no limit".
            max_entities: limit(request.max_concurrent_entity_work_items),
            orchestrations: 0,
            activities: 0,
            entities: 0,
            history_streaming: request.capabilities.contains(&(WorkerCapability::HistoryStreaming as i32)),
            filter: WorkFilter::from_request(request.work_item_filters.as_ref()),
        };
        let id = {
            let mut state = self.state.lock().unwrap();
            state.next_worker += 1;
            let id = state.next_worker;
            state.workers.insert(id, worker);
            id
        };
        info!(
            worker = id,
            max_orchestrations = request.max_concurrent_orchestration_work_items,
            max_activities = request.max_concurrent_activity_work_items,
            filtered = request.work_item_filters.is_some(),
            "worker connected"
        );
        self.wake();
        let outbox = Outbox {
            rx,
            buffered,
            buffer: self.settings.worker_buffer_bytes,
            dispatcher: self.clone(),
        };
        (
            outbox,
            WorkerGuard {
                dispatcher: self.clone(),
                worker: id,
            },
        )
    }

    /// Ends every worker stream cleanly (OK trailers), so workers reconnect elsewhere; used
    /// at shutdown.
    pub fn close_all(self: &Arc<Self>) {
        self.watchers.feed_closed.send_replace(true);
        let workers: Vec<u64> = self.state.lock().unwrap().workers.keys().copied().collect();
        for worker in workers {
            self.disconnect(worker);
        }
    }

    /// Releases everything a vanished worker held, so other workers get it at once.
    fn disconnect(self: &Arc<Self>, worker: u64) {
        let (orchestrations, activities, entities) = {
            let mut state = self.state.lock().unwrap();
            if state.workers.remove(&worker).is_none() {
                return; // already gone (closed at shutdown, then its stream dropped)
            }
            let orchestrations: Vec<_> = state.orchestrations.extract_if(|_, h| h.worker == worker).collect();
            let activities: Vec<_> = state.activities.extract_if(|_, h| h.worker == worker).collect();
            let entities: Vec<_> = state.entities.extract_if(|_, h| h.worker == worker).collect();
            let keys = orchestrations
                .iter()
                .map(|(_, h)| lost_key::orchestration(&h.instance.instance_id))
                .chain(activities.iter().map(|(_, h)| lost_key::activity(h.id)));
            for key in keys.collect::<Vec<_>>() {
                *state.lost.entry(key).or_default() += 1;
            }
            (orchestrations, activities, entities)
        };
        info!(
            worker,
            orchestrations = orchestrations.len(),
            activities = activities.len(),
            "worker disconnected; releasing its work items"
        );
        let this = self.clone();
        tokio::spawn(async move {
            let now = time::now();
            for (token, held) in orchestrations {
                if let Err(e) = this.store.release_orchestration(&held.instance.instance_id, &token, &[], 0).await {
                    debug!(error = %e, "releasing orchestration lease");
                }
            }
            for (token, held) in activities {
                if let Err(e) = this.store.release_activity(held.id, &token, now).await {
                    debug!(error = %e, "releasing activity lease");
                }
            }
            for (token, held) in entities {
                if let Err(e) = this.store.release_entity(&held.entity.instance_id, &token, 0).await {
                    debug!(error = %e, "releasing entity lease");
                }
            }
            this.wake();
        });
    }

    /// Takes back the items workers have held longer than `deadline` and offers them again;
    /// an answer that comes later is refused as stale.
    async fn take_back_overdue(&self, deadline: Duration) {
        let (orchestrations, activities) = {
            let mut state = self.state.lock().unwrap();
            let orchestrations: Vec<_> = state.orchestrations.extract_if(|_, h| h.since.elapsed() >= deadline).collect();
            let activities: Vec<_> = state.activities.extract_if(|_, h| h.since.elapsed() >= deadline).collect();
            for (_, h) in &orchestrations {
                if let Some(w) = state.workers.get_mut(&h.worker) {
                    w.orchestrations -= 1;
                }
            }
            for (_, h) in &activities {
                if let Some(w) = state.workers.get_mut(&h.worker) {
                    w.activities -= 1;
                }
            }
            (orchestrations, activities)
        };
        if orchestrations.is_empty() && activities.is_empty() {
            return;
        }
        warn!(
            orchestrations = orchestrations.len(),
            activities = activities.len(),
            deadline_seconds = deadline.as_secs_f64(),
            "work items held past the item deadline; giving them to other workers"
        );
        let now = time::now();
        for (token, held) in orchestrations {
            if let Err(e) = self.store.release_orchestration(&held.instance.instance_id, &token, &[], 0).await {
                debug!(error = %e, "releasing an overdue orchestration lease");
            }
        }
        for (token, held) in activities {
            if let Err(e) = self.store.release_activity(held.id, &token, now).await {
                debug!(error = %e, "releasing an overdue activity lease");
            }
        }
        self.wake();
    }

    /// Applies an orchestrator's answer (or buffers it, for a chunk that is not the last).
    /// Chunking is deprecated in the protocol but still sent by the .NET and Java SDKs.
    #[allow(deprecated)]
    pub async fn complete_orchestration(&self, response: OrchestratorResponse) -> Result<(), Status> {
        engine::validate(&response.actions).map_err(Status::invalid_argument)?;
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if response.completion_token.is_empty() {
                // Workers built before completion tokens existed: one item per instance at a time.
                if response.instance_id.is_empty() {
                    return Err(Status::invalid_argument("instanceId is required when completionToken is empty"));
                }
                state
                    .orchestrations
                    .iter()
                    .find(|(_, h)| h.instance.instance_id == response.instance_id)
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "no orchestration work item for instance '{}' is outstanding",
                            response.instance_id
                        ))
                    })?
            } else {
                response.completion_token.clone()
            };
            let held = state.orchestrations.get_mut(&token).ok_or_else(|| stale(&token))?;
            if !response.instance_id.is_empty() && response.instance_id != held.instance.instance_id {
                return Err(Status::invalid_argument(format!(
                    "instanceId '{}' does not match the work item's instance '{}'",
                    response.instance_id, held.instance.instance_id
                )));
            }
            let chunked = response.is_partial || response.chunk_index.is_some();
            if chunked {
                let index = response.chunk_index.unwrap_or(held.next_chunk);
                if index != held.next_chunk {
                    return Err(Status::invalid_argument(format!(
                        "expected chunk {}, got chunk {index}",
                        held.next_chunk
                    )));
                }
                let bytes = response.actions.iter().map(|a| a.encoded_len()).sum::<usize>();
                if held.chunks.len() + response.actions.len() > limits::MAX_ACTIONS || held.chunk_bytes + bytes > MAX_CHUNKED_BYTES {
                    // Nothing of the answer is kept; the item goes back to the queue.
                    held.chunks = vec![];
                    held.chunk_bytes = 0;
                    held.next_chunk = 0;
                    return Err(Status::resource_exhausted(format!(
                        "a chunked answer may hold at most {} actions and {MAX_CHUNKED_BYTES} bytes; this chunk makes it larger, so the answer is discarded (abandon the work item)",
                        limits::MAX_ACTIONS
                    )));
                }
                held.next_chunk += 1;
                held.chunk_bytes += bytes;
                held.chunks.extend(response.actions.iter().cloned());
                if response.is_partial {
                    return Ok(());
                }
            }
            let mut held = state.orchestrations.remove(&token).expect("checked above");
            if let Some(w) = state.workers.get_mut(&held.worker) {
                w.orchestrations -= 1;
            }
            state.lost.remove(&lost_key::orchestration(&held.instance.instance_id));
            if !chunked {
                held.chunks = response.actions.clone();
            }
            METRICS.completed(Kind::Orchestration, held.since.elapsed());
            (token, held)
        };
        let id = held.instance.instance_id.clone();
        if response.requires_history {
            // The worker could not use what it got; send the same step again, with history.
            self.release(&id, &token).await;
            return Ok(());
        }
        let answer = engine::Response {
            actions: held.chunks,
            custom_status: response.custom_status,
            trace_context: response.orchestration_trace_context,
        };
        let now = time::now();
        // Kept for failing the instance should its step turn out impossible to store.
        let retained = (held.instance.clone(), held.new_events.clone(), held.consumed.clone());
        let mut commit = engine::apply(&held.instance, &held.history, &held.new_events, answer, now, &mut || {
            uuid::Uuid::new_v4().simple().to_string()
        });
        // Tracing: marks trace contexts in the commit, emits the step's spans once it is stored.
        let spans = self
            .telemetry
            .step(&held.instance, &held.history, &held.new_events, &mut commit, now);
        let ended = if commit.instance.execution_id != held.instance.execution_id {
            Some(OrchestrationStatus::ContinuedAsNew)
        } else {
            (commit.instance.is_terminal() && !held.instance.is_terminal()).then_some(commit.instance.status)
        };
        let children = commit.children.len();
        match self
            .batcher
            .write(Write::Step {
                token: token.clone(),
                consumed: held.consumed,
                commit,
                now,
            })
            .await
        {
            Ok(changed) => {
                spans.committed();
                if let Some(status) = ended {
                    METRICS.orchestration_finished(status);
                }
                METRICS.orchestrations_started(children);
                self.changed(&changed);
                Ok(())
            }
            Err(e) if e.is_permanent() => {
                // Storing this step can never succeed (it would be refused again on every
                // retry): the instance fails instead, and its worker hears why.
                spans.failed(&e);
                let (instance, new_events, consumed) = retained;
                let why = format!("the orchestration step could not be stored: {e}");
                if let Err(e) = self
                    .fail_step(
                        token.clone(),
                        &instance,
                        &held.history,
                        &new_events,
                        consumed,
                        "StepNotStorable",
                        why,
                    )
                    .await
                {
                    warn!(instance_id = %id, error = %e, "could not fail the orchestration either");
                    self.release(&id, &token).await;
                }
                Err(Status::invalid_argument(format!(
                    "the orchestration step could not be stored, so the orchestration was failed: {e}"
                )))
            }
            Err(e) => {
                spans.failed(&e);
                warn!(instance_id = %id, error = %e, "orchestration step not committed");
                if !matches!(e, StoreError::LeaseLost) {
                    self.release(&id, &token).await;
                }
                Err(crate::grpc::status(e))
            }
        }
    }

    async fn release(&self, instance_id: &str, token: &str) {
        if let Err(e) = self.store.release_orchestration(instance_id, token, &[], 0).await {
            debug!(error = %e, "releasing orchestration lease");
        }
        self.wake();
    }

    /// Records an activity's result.
    pub async fn complete_activity(&self, response: ActivityResponse) -> Result<(), Status> {
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if response.completion_token.is_empty() {
                state
                    .activities
                    .iter()
                    .find(|(_, h)| h.instance_id == response.instance_id && h.task_id == response.task_id)
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "no activity work item for instance '{}' task {} is outstanding",
                            response.instance_id, response.task_id
                        ))
                    })?
            } else {
                response.completion_token.clone()
            };
            let held = state.activities.get(&token).ok_or_else(|| stale(&token))?;
            if (!response.instance_id.is_empty() && response.instance_id != held.instance_id) || response.task_id != held.task_id {
                return Err(Status::invalid_argument(format!(
                    "instanceId/taskId '{}'/{} do not match the work item's '{}'/{}",
                    response.instance_id, response.task_id, held.instance_id, held.task_id
                )));
            }
            let held = state.activities.remove(&token).expect("checked above");
            if let Some(w) = state.workers.get_mut(&held.worker) {
                w.activities -= 1;
            }
            METRICS.completed(Kind::Activity, held.since.elapsed());
            state.lost.remove(&lost_key::activity(held.id));
            (token, held)
        };
        let now = time::now();
        // A result the orchestration could never be sent fails the activity instead, so the
        // orchestration sees a failure that says why rather than an undeliverable work item.
        let size = response.result.as_ref().map_or(0, |r| r.len()) + response.failure_details.as_ref().map_or(0, |f| f.encoded_len());
        let refused = if size > self.settings.max_work_item_bytes {
            Some((
                "ActivityResultTooLarge",
                format!(
                    "the activity's result is {size} bytes, more than the {} a work item may carry (--max-work-item-mib)",
                    self.settings.max_work_item_bytes
                ),
            ))
        } else {
            limits::failure("failureDetails", response.failure_details.as_ref()).err().map(|e| {
                (
                    "InvalidFailureDetails",
                    format!("the activity's failure could not be recorded: {e}"),
                )
            })
        };
        let (result, failure_details) = match refused {
            Some((error_type, why)) => {
                warn!(instance_id = %held.instance_id, task_id = held.task_id, size, reason = %why, "recording the activity as failed");
                (None, Some(events::failure(error_type, why)))
            }
            None => (response.result, response.failure_details),
        };
        let result = events::task_result(now, held.task_id, result, failure_details);
        let outcome = self
            .batcher
            .write(Write::ActivityResult {
                id: held.id,
                token,
                result,
                now,
            })
            .await;
        self.wake();
        outcome.map(drop).map_err(crate::grpc::status)
    }

    /// Returns an orchestration work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_orchestration(&self, token: &str) {
        let held = {
            let mut state = self.state.lock().unwrap();
            let held = state.orchestrations.remove(token);
            if let Some(w) = held.as_ref().and_then(|h| state.workers.get_mut(&h.worker)) {
                w.orchestrations -= 1;
            }
            held
        };
        if let Some(held) = held {
            METRICS.abandoned(Kind::Orchestration);
            let later = time::now() + time::span(self.settings.abandon_delay);
            if let Err(e) = self
                .store
                .release_orchestration(&held.instance.instance_id, token, &[], later)
                .await
            {
                debug!(error = %e, "abandoning orchestration");
            }
            self.wake();
        }
    }

    /// Returns an activity work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_activity(&self, token: &str) {
        let held = {
            let mut state = self.state.lock().unwrap();
            let held = state.activities.remove(token);
            if let Some(w) = held.as_ref().and_then(|h| state.workers.get_mut(&h.worker)) {
                w.activities -= 1;
            }
            held
        };
        if let Some(held) = held {
            METRICS.abandoned(Kind::Activity);
            let later = time::now() + time::span(self.settings.abandon_delay);
            if let Err(e) = self.store.release_activity(held.id, token, later).await {
                debug!(error = %e, "abandoning activity");
            }
            self.wake();
        }
    }

    /// Applies an entity batch's result. Workers that predate completion tokens may send none;
    /// then the result belongs to the one entity batch outstanding, if there is only one.
    pub async fn complete_entity(&self, result: EntityBatchResult) -> Result<(), Status> {
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if result.completion_token.is_empty() {
                let mut tokens = state.entities.keys();
                match (tokens.next(), tokens.next()) {
                    (Some(only), None) => only.clone(),
                    _ => {
                        return Err(Status::failed_precondition(
                            "completionToken is required when more than one entity work item is outstanding (EntityBatchResult has no instance id)",
                        ));
                    }
                }
            } else {
                result.completion_token.clone()
            };
            let held = state.entities.remove(&token).ok_or_else(|| stale(&token))?;
            if let Some(w) = state.workers.get_mut(&held.worker) {
                w.entities -= 1;
            }
            (token, held)
        };
        let id = held.entity.instance_id.clone();
        if result.results.is_empty() && result.failure_details.is_some() {
            // The batch failed as a whole (not one operation): nothing of it happened; retry later.
            let reason = result.failure_details.as_ref().map(|f| f.error_message.clone()).unwrap_or_default();
            warn!(entity = %id, reason, "entity batch failed; it will run again");
            let later = time::now() + time::span(self.settings.abandon_delay);
            let _ = self.store.release_entity(&id, &token, later).await;
            self.wake();
            return Ok(());
        }
        let now = time::now();
        let commit = entity_rules::complete(&held.entity, held.plan, result, now, &mut || uuid::Uuid::new_v4().to_string());
        match self
            .batcher
            .write(Write::EntityStep {
                token: token.clone(),
                commit,
            })
            .await
        {
            Ok(changed) => {
                self.changed(&changed);
                Ok(())
            }
            Err(e) => {
                warn!(entity = %id, error = %e, "entity step not committed");
                if !matches!(e, StoreError::LeaseLost) {
                    let _ = self.store.release_entity(&id, &token, 0).await;
                    self.wake();
                }
                Err(crate::grpc::status(e))
            }
        }
    }

    /// Returns an entity work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_entity(&self, token: &str) {
        let held = {
            let mut state = self.state.lock().unwrap();
            let held = state.entities.remove(token);
            if let Some(w) = held.as_ref().and_then(|h| state.workers.get_mut(&h.worker)) {
                w.entities -= 1;
            }
            held
        };
        if let Some(held) = held {
            let later = time::now() + time::span(self.settings.abandon_delay);
            if let Err(e) = self.store.release_entity(&held.entity.instance_id, token, later).await {
                debug!(error = %e, "abandoning entity work item");
            }
            self.wake();
        }
    }

    /// Worker streams open now (the metrics' gauge).
    pub fn connected_workers(&self) -> usize {
        self.state.lock().unwrap().workers.len()
    }

    /// Releases everything this sidecar holds (at shutdown).
    pub async fn release_everything(&self) {
        if let Err(e) = self.store.release_all(Some(&self.owner)).await {
            warn!(error = %e, "releasing leases at shutdown");
        }
    }
}

/// What the dispatcher queued for one worker stream, counted out as the stream takes it, so
/// a worker that stops reading is sent nothing more (see [`Settings::worker_buffer_bytes`]).
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Result<WorkItem, Status>>,
    buffered: Arc<AtomicUsize>,
    buffer: usize,
    dispatcher: Arc<Dispatcher>,
}

impl Outbox {
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<WorkItem, Status>>> {
        let next = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(Ok(item))) = &next
            && !matches!(item.request, Some(Item::HealthPing(_)))
        {
            let size = item.encoded_len();
            let before = self.buffered.fetch_sub(size, Ordering::AcqRel);
            if before >= self.buffer && before - size < self.buffer {
                self.dispatcher.wake(); // room again: the loop may send this worker more
            }
        }
        next
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("buffered", &self.buffered).finish()
    }
}

/// Unregisters a worker stream when dropped.
pub struct WorkerGuard {
    dispatcher: Arc<Dispatcher>,
    worker: u64,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.dispatcher.disconnect(self.worker);
    }
}

impl std::fmt::Debug for WorkerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerGuard").field("worker", &self.worker).finish()
    }
}

/// Aborts a background task when its owner goes away.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

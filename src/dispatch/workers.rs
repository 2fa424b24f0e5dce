//! The worker registry: who is connected, with what limits and filters, what each holds,
//! the health pings, and the outbox a worker's stream reads from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message as _;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::Dispatcher;
use super::completion::{HeldActivity, HeldEntity, HeldOrchestration};
use crate::engine::work_filters::WorkFilter;
use crate::model::Names;
use crate::proto::work_item::Request as Item;
use crate::proto::*;
use crate::task::AbortOnDrop;

/// A worker that declares no limit still gets at most this many items of a kind at once, so
/// one worker cannot hoard the whole backlog.
pub(super) const DEFAULT_LIMIT: usize = 1000;

pub(super) type Sender = mpsc::UnboundedSender<WorkItem>;

pub(super) struct Worker {
    pub(super) tx: Sender,
    /// Bytes sent to the stream and not yet taken by it (shared with its [`WorkStream`]).
    pub(super) buffered: Arc<AtomicUsize>,
    pub(super) max_orchestrations: usize,
    pub(super) max_activities: usize,
    pub(super) max_entities: usize,
    pub(super) orchestrations: usize,
    pub(super) activities: usize,
    pub(super) entities: usize,
    pub(super) history_streaming: bool,
    /// The work it takes (its `workItemFilters`).
    pub(super) filter: WorkFilter,
    /// Health pings; stops when the worker is removed.
    pub(super) _pinger: AbortOnDrop,
}

/// Keys of [`State::lost`].
pub(super) mod lost_key {
    pub fn orchestration(instance_id: &str) -> String {
        format!("o:{instance_id}")
    }
    pub fn activity(id: i64) -> String {
        format!("a:{id}")
    }
}

impl Worker {
    /// Whether the stream has taken enough of what was sent to it to be sent more.
    pub(super) fn has_room(&self, buffer: usize) -> bool {
        self.buffered.load(Ordering::Acquire) < buffer
    }

    /// Queues a work item of `size` encoded bytes; false if the stream is gone.
    pub(super) fn send(&self, work: WorkItem, size: usize) -> bool {
        self.buffered.fetch_add(size, Ordering::AcqRel);
        if self.tx.send(work).is_err() {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Workers that send the same filters, and their free room per kind of work item.
pub(super) struct Group {
    pub(super) filter: WorkFilter,
    pub(super) orchestrations: usize,
    pub(super) activities: usize,
    pub(super) entities: usize,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) next_worker: u64,
    pub(super) workers: BTreeMap<u64, Worker>,
    pub(super) orchestrations: HashMap<String, HeldOrchestration>,
    pub(super) activities: HashMap<String, HeldActivity>,
    pub(super) entities: HashMap<String, HeldEntity>,
    /// Round-robin cursor over workers.
    pub(super) cursor: u64,
    /// Work items (by instance id, or activity row id) whose workers' streams ended while
    /// holding them, and how often in a row.
    pub(super) lost: HashMap<String, u32>,
    /// Entities were put off because no connected worker takes them (their leases do not
    /// filter by name): a worker that takes entities connecting makes them due at once.
    pub(super) entities_parked: bool,
    /// Set by such a connect; the dispatch loop makes the parked entities due before it leases.
    pub(super) unpark_entities: bool,
}

impl State {
    /// One item fewer held by `worker`, of the kind `count` picks.
    pub(super) fn freed(&mut self, worker: u64, count: fn(&mut Worker) -> &mut usize) {
        if let Some(w) = self.workers.get_mut(&worker) {
            *count(w) -= 1;
        }
    }

    /// Takes a held orchestration back by its token, giving its worker room for another.
    pub(super) fn take_orchestration(&mut self, token: &str) -> Option<HeldOrchestration> {
        let held = self.orchestrations.remove(token)?;
        self.freed(held.worker, |w| &mut w.orchestrations);
        Some(held)
    }

    pub(super) fn take_activity(&mut self, token: &str) -> Option<HeldActivity> {
        let held = self.activities.remove(token)?;
        self.freed(held.worker, |w| &mut w.activities);
        Some(held)
    }

    pub(super) fn take_entity(&mut self, token: &str) -> Option<HeldEntity> {
        let held = self.entities.remove(token)?;
        self.freed(held.worker, |w| &mut w.entities);
        Some(held)
    }

    /// The connected workers' distinct filters, each with the free room of the workers that
    /// share it. Each group leases only what it takes, so work no connected worker takes is
    /// never leased and stays queued.
    pub(super) fn groups(&self, buffer: usize) -> Vec<Group> {
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
    pub(super) fn choose(&mut self, room: impl Fn(&Worker) -> bool) -> Option<u64> {
        let after = self.workers.range(self.cursor + 1..).chain(self.workers.range(..=self.cursor));
        let id = after.filter(|(_, w)| room(w)).map(|(id, _)| *id).next()?;
        self.cursor = id;
        Some(id)
    }
}

impl Dispatcher {
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
                if ping_tx.send(ping).is_err() {
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
            if worker.filter.entities != Names::Only(Default::default()) && state.entities_parked {
                state.entities_parked = false;
                state.unpark_entities = true;
            }
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
        self.watchers.close_feed();
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
        tokio::spawn(async move { this.release_held(orchestrations, activities, entities).await });
    }

    /// Releases items taken back from their workers, so they are offered again at once.
    pub(super) async fn release_held(
        &self,
        orchestrations: Vec<(String, HeldOrchestration)>,
        activities: Vec<(String, HeldActivity)>,
        entities: Vec<(String, HeldEntity)>,
    ) {
        let now = self.clock.now();
        for (token, held) in orchestrations {
            if let Err(e) = self.store.release_orchestration(&held.instance.instance_id, &token, &[], 0).await {
                debug!(error = %e, "releasing orchestration lease");
            }
        }
        for (token, held) in activities {
            if let Err(e) = self.store.release_activity(held.id, &token, now).await {
                debug!(error = %e, "releasing activity lease");
            }
        }
        for (token, held) in entities {
            if let Err(e) = self.store.release_entity(&held.entity.instance_id, &token, 0).await {
                debug!(error = %e, "releasing entity lease");
            }
        }
        self.wake();
    }
}

/// What the dispatcher queued for one worker stream, counted out as the stream takes it, so
/// a worker that stops reading is sent nothing more (see [`Settings::worker_buffer_bytes`]).
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<WorkItem>,
    buffered: Arc<AtomicUsize>,
    buffer: usize,
    dispatcher: Arc<Dispatcher>,
}

impl Outbox {
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<WorkItem>> {
        let next = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(item)) = &next
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

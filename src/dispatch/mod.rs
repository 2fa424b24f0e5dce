//! Who gets which work item. Workers open `GetWorkItems` streams; the dispatch loop leases due
//! work from the store and pushes it to a stream with free capacity the moment it is
//! committed. A worker's answer leases the work it creates in its own commit when a worker
//! waits for it (`claims.rs`) and wakes the loop only for the kinds of work it left queued;
//! other commits wake it for everything, and future work wakes it at its due time. Items a
//! worker holds are tracked here by completion token until completed, abandoned, or the
//! worker's stream drops, which releases them at once.

mod claims;
mod completion;
mod push;
mod refused;
mod workers;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

use crate::proto::*;
use crate::store::{Batcher, Lease, Store};
use crate::telemetry::Telemetry;
use crate::time::{self, Clock, Micros};
use crate::watchers::Watchers;

pub use refused::Refused;
use workers::State;
pub use workers::{Outbox, WorkerGuard};

/// The kinds of work a round of the dispatch loop leases, as bits.
pub(super) struct Kinds;

impl Kinds {
    pub(super) const ORCHESTRATIONS: u8 = 1;
    pub(super) const ACTIVITIES: u8 = 2;
    pub(super) const ENTITIES: u8 = 4;
    /// Not a lease: the next due time is read again.
    pub(super) const DUE: u8 = 8;
    pub(super) const ALL: u8 = 15;
}

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
    /// What the next round of the loop leases ([`Kinds`] bits), gathered from the wake-ups
    /// since the last round.
    wanted: AtomicU8,
    /// The earliest time of a commit since the loop last looked for the next due time that
    /// set a due time of its own (`Micros::MAX`: none). The loop looks from there: by the time
    /// it gets to the wake-up the clock may be past the due time, and a look from its own
    /// `now` alone would miss it.
    due_since: AtomicI64,
    /// The kinds of work that may be queued unleased ([`Kinds`] bits): set by whatever may
    /// queue such work, cleared by a lease round that found less than it had room for. Room
    /// a worker's answer frees wakes the loop only for these.
    backlog: AtomicU8,
    /// Set while the loop leases orchestrations: work a commit leaves now is leased by this
    /// round or the next, at no extra cost per item, so commits do not claim it then.
    leasing: AtomicBool,
    /// Set when shutdown begins: nothing more is handed out; answers are still taken.
    draining: AtomicBool,
    /// Woken with every wake-up of the loop, which follows every item let go; the drain waits
    /// on it.
    settled: Notify,
    watchers: Arc<Watchers>,
    telemetry: Telemetry,
    /// Where lease times, due times and the times stamped on events are read.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("owner", &self.owner).finish()
    }
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        telemetry: Telemetry,
        watchers: Arc<Watchers>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Arc::new(Dispatcher {
            batcher: Batcher::new(store.clone()),
            store,
            settings,
            owner,
            state: Mutex::default(),
            wake: Notify::new(),
            wanted: AtomicU8::new(Kinds::ALL),
            due_since: AtomicI64::new(Micros::MAX),
            backlog: AtomicU8::new(Kinds::ALL),
            leasing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            settled: Notify::new(),
            watchers,
            telemetry,
            clock,
        })
    }

    /// Tells the loop that new work of any kind may be due (after any commit).
    pub fn wake(&self) {
        self.backlog.fetch_or(Kinds::ALL, Ordering::SeqCst);
        self.wake_for(Kinds::ALL);
    }

    /// Tells the loop that work of these kinds ([`Kinds`] bits) may be due; with
    /// [`Kinds::DUE`], that the next due time may have moved.
    pub(super) fn wake_for(&self, kinds: u8) {
        if kinds != 0 {
            self.wanted.fetch_or(kinds, Ordering::SeqCst);
            self.wake.notify_one();
        }
        self.settled.notify_waiters();
    }

    /// [`Dispatcher::wake_for`], after a commit made at `now`: a due time it set (with
    /// [`Kinds::DUE`]) is looked for from `now` on.
    pub(super) fn wake_after(&self, kinds: u8, now: Micros) {
        if kinds & Kinds::DUE != 0 {
            self.due_since.fetch_min(now, Ordering::SeqCst);
        }
        self.wake_for(kinds);
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

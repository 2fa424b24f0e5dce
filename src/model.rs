//! The domain records the engine produces and the store persists. They hold wire types
//! (`HistoryEvent`, `ActivityRequest`, ...) where the protocol already defines the shape, so
//! nothing is translated twice.

use std::collections::BTreeMap;

use crate::proto::{ActivityRequest, HistoryEvent, OrchestrationStatus, OrchestrationTraceContext, TaskFailureDetails};
use crate::time::Micros;

/// One orchestration instance, as kept in the `instances` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    /// The current execution; a new one starts on continue-as-new, restart and rewind.
    pub execution_id: String,
    pub status: OrchestrationStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub custom_status: Option<String>,
    pub failure_details: Option<TaskFailureDetails>,
    pub created_at: Micros,
    pub updated_at: Micros,
    pub completed_at: Option<Micros>,
    pub scheduled_start_at: Option<Micros>,
    pub parent_instance_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The orchestration span a worker reported, echoed back on every later dispatch.
    pub trace_context: Option<OrchestrationTraceContext>,
}

impl Instance {
    /// Finished for good: nothing will run for it again unless a client restarts or rewinds it.
    pub fn is_terminal(&self) -> bool {
        is_terminal(self.status)
    }
}

/// The final statuses: an instance in one of them runs no more unless a client restarts or
/// rewinds it. The one list; the stores' SQL and the default reuse policy are built from it.
pub const TERMINAL: [OrchestrationStatus; 4] = [
    OrchestrationStatus::Completed,
    OrchestrationStatus::Failed,
    OrchestrationStatus::Terminated,
    OrchestrationStatus::Canceled,
];

/// Whether a status is final.
pub fn is_terminal(status: OrchestrationStatus) -> bool {
    TERMINAL.contains(&status)
}

/// An event waiting in an instance's inbox until its orchestrator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub instance_id: String,
    /// The execution the event belongs to. `None` means "whichever execution is current"
    /// (external events); `Some` messages are dropped when that execution is gone.
    pub execution_id: Option<String>,
    pub event: HistoryEvent,
    /// Not delivered before this time (timers, scheduled starts).
    pub visible_at: Micros,
    /// Lower sorts first. A new execution's ExecutionStarted and carried-over events use
    /// `FIRST` so they precede events that arrived while the previous execution was running.
    pub priority: i32,
}

impl Message {
    pub const FIRST: i32 = 0;
    pub const NORMAL: i32 = 1;
}

/// An activity waiting for a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityTask {
    pub instance_id: String,
    pub execution_id: String,
    pub request: ActivityRequest,
}

/// A new instance together with the ExecutionStarted message that starts it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewInstance {
    pub instance: Instance,
    pub start: Message,
}

/// A sub-orchestration to create. When its id is held by a live instance, the parent receives
/// `on_conflict` (a SubOrchestrationInstanceFailed) instead, so only that child fails.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildStart {
    pub child: NewInstance,
    pub on_conflict: Message,
}

/// A sub-orchestration to bring back when its parent is rewound: rewound itself if it failed,
/// created again from `recreate` if it was purged.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildRewind {
    pub instance_id: String,
    pub reason: Option<String>,
    pub parent_execution_id: String,
    pub recreate: NewInstance,
}

/// How an orchestration step changes the stored history.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoryWrite {
    Append(Vec<HistoryEvent>),
    /// The execution's history becomes exactly this (continue-as-new, rewind).
    Replace(Vec<HistoryEvent>),
}

/// Everything one orchestration step writes, applied by the store in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// The instance row after the step.
    pub instance: Instance,
    pub history: HistoryWrite,
    /// Messages to this or other instances. Messages to unknown or finished instances are
    /// dropped by the store (with a log line).
    pub messages: Vec<Message>,
    pub activities: Vec<ActivityTask>,
    pub children: Vec<ChildStart>,
    pub rewinds: Vec<ChildRewind>,
}

/// Which task names of one kind (orchestrations, activities or entities) a worker takes, from
/// its `workItemFilters`. Matching is [`crate::engine::work_filters`]; the stores turn it into
/// a lease condition, so work no connected worker takes stays queued.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Names {
    /// No filters were sent: everything.
    #[default]
    Any,
    /// Only these names, each with the versions taken (empty: any version; an unversioned
    /// item has version ""). An empty map takes nothing of this kind.
    Only(BTreeMap<String, std::collections::BTreeSet<String>>),
}

impl Message {
    /// Whether the message is addressed to an entity (`@name@key`) rather than an
    /// orchestration: entity messages go to the entity's queue.
    pub fn is_for_entity(&self) -> bool {
        self.instance_id.starts_with('@')
    }
}

/// The critical section holding an entity's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityLock {
    /// The orchestration instance that requested the lock.
    pub owner: String,
    pub critical_section_id: String,
}

/// One entity, as kept in the `entities` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// `@name@key`, the name lower-cased.
    pub instance_id: String,
    /// Serialized state; `None` when the entity has none (never set, or deleted).
    pub state: Option<String>,
    pub lock: Option<EntityLock>,
    pub last_modified: Micros,
}

/// Everything one entity step writes, applied by the store in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityCommit {
    pub instance_id: String,
    pub state: Option<String>,
    pub lock: Option<EntityLock>,
    /// Queue rows handled by this step (executed operations, lock messages).
    pub consumed: Vec<i64>,
    /// Queue rows that wait for the lock to be released; every other row stays runnable.
    pub deferred: Vec<i64>,
    /// Results to calling orchestrations, lock grants, signals to entities.
    pub messages: Vec<Message>,
    /// Orchestrations the entity started; an id held by a live instance is skipped.
    pub starts: Vec<NewInstance>,
    pub now: Micros,
}

/// Runtime status names as the Durable Functions HTTP API and the CLI show them.
pub const RUNTIME_STATUSES: [(OrchestrationStatus, &str); 8] = [
    (OrchestrationStatus::Running, "Running"),
    (OrchestrationStatus::Completed, "Completed"),
    (OrchestrationStatus::ContinuedAsNew, "ContinuedAsNew"),
    (OrchestrationStatus::Failed, "Failed"),
    (OrchestrationStatus::Canceled, "Canceled"),
    (OrchestrationStatus::Terminated, "Terminated"),
    (OrchestrationStatus::Pending, "Pending"),
    (OrchestrationStatus::Suspended, "Suspended"),
];

pub fn runtime_status_name(status: OrchestrationStatus) -> &'static str {
    RUNTIME_STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map(|(_, n)| *n)
        .unwrap_or("Unknown")
}

/// Parses a runtime status name, ignoring case.
pub fn parse_runtime_status(name: &str) -> Result<OrchestrationStatus, String> {
    RUNTIME_STATUSES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(s, _)| *s)
        .ok_or_else(|| {
            let known: Vec<_> = RUNTIME_STATUSES.iter().map(|(_, n)| *n).collect();
            format!("unknown runtime status '{name}' (known: {})", known.join(", "))
        })
}

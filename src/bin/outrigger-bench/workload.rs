//! The workloads and the orchestrator logic the bench worker replays for them.
//!
//! Every workload is a script of stages run one after another: a stage schedules some
//! activities at once (one for a sequence, many for a fan-out) or one timer, and waits for all
//! of them. [`decide`] is the whole orchestrator: given an instance's history it returns the
//! actions a Durable Task SDK would send for the same code, the way an SDK does it: by
//! replaying the history and emitting only what was not yet recorded. It is a pure function, so
//! it is unit tested here.

use std::collections::HashSet;
use std::time::Duration;

use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::*;
use prost_types::Timestamp;

/// What one benchmark run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// HelloCities5: five sequential no-op activities.
    Hello5,
    /// One activity, one orchestration at a time: end-to-end latency at light load.
    Latency1,
    /// One orchestration fanning out to many activities and in again.
    Fanout,
    /// Orchestrations each waiting on one durable timer; reports how late the timers fire.
    Timers,
    /// One orchestration with many sequential activities; reports late steps against early ones.
    Long,
    /// StartInstance alone (no worker attached while starting); drained afterwards.
    Starts,
    /// Single-step orchestrations at the highest rate: fills a store with completed instances.
    Fill,
    /// hello5 driven through the Python SDK (client and worker) instead of the raw worker.
    SdkHello5,
    /// Orchestrations each calling their own entity five times in a row; reports entity ops/s.
    EntityCalls,
    /// Client signals spread over many entities (no orchestrations); reports entity ops/s.
    EntitySignals,
    /// The `Hello` call alone: the cost of one gRPC round trip to the server, the floor under
    /// every figure that needs round trips.
    Ping,
}

/// The workloads `--workload standard` stands for, in the order they run.
pub const STANDARD: [Workload; 8] = [
    Workload::Hello5,
    Workload::Latency1,
    Workload::Fanout,
    Workload::Timers,
    Workload::Long,
    Workload::Starts,
    Workload::EntitySignals,
    Workload::EntityCalls,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hello5 => "hello5",
            Workload::Latency1 => "latency1",
            Workload::Fanout => "fanout",
            Workload::Timers => "timers",
            Workload::Long => "long",
            Workload::Starts => "starts",
            Workload::Fill => "fill",
            Workload::SdkHello5 => "sdk-hello5",
            Workload::EntityCalls => "entity-calls",
            Workload::EntitySignals => "entity-signals",
            Workload::Ping => "ping",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        [STANDARD.as_slice(), &[Workload::Fill, Workload::SdkHello5, Workload::Ping]]
            .concat()
            .into_iter()
            .find(|w| w.name() == name)
    }

    /// Orchestrations started per run, unless `--count` says otherwise.
    pub fn default_count(self) -> usize {
        match self {
            Workload::Hello5 | Workload::SdkHello5 => 2000,
            Workload::Latency1 => 300,
            Workload::Fanout | Workload::Long => 1,
            Workload::Timers => 1000,
            Workload::Starts => 5000,
            Workload::Fill => 1_000_000,
            Workload::EntityCalls => 1000,
            Workload::EntitySignals => 10_000,
            Workload::Ping => 5000,
        }
    }

    /// Orchestrations in flight at once, unless `--concurrency` says otherwise.
    pub fn default_concurrency(self) -> usize {
        match self {
            Workload::Hello5 | Workload::SdkHello5 | Workload::Starts | Workload::EntityCalls | Workload::EntitySignals => 100,
            Workload::Latency1 | Workload::Fanout | Workload::Long | Workload::Ping => 1,
            Workload::Timers => 1000,
            Workload::Fill => 500,
        }
    }

    /// The orchestrator this workload runs; `width` overrides the size of the fan-out or of
    /// the long sequence.
    pub fn script(self, width: Option<u32>) -> Script {
        let stages = match self {
            Workload::Hello5 | Workload::SdkHello5 => vec![Stage::Activities(1); 5],
            Workload::Latency1 => vec![Stage::Activities(1)],
            Workload::Fanout => vec![Stage::Activities(width.unwrap_or(1000))],
            Workload::Timers => vec![Stage::Timer(Duration::from_secs(1))],
            Workload::Long => vec![Stage::Activities(1); width.unwrap_or(1000) as usize],
            Workload::EntityCalls => vec![Stage::EntityCall; 5],
            Workload::Starts | Workload::Fill | Workload::EntitySignals | Workload::Ping => vec![],
        };
        Script {
            name: format!("bench.{}", self.name()),
            stages,
        }
    }
}

/// One step of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Schedule this many activities at once and wait for all of them.
    Activities(u32),
    /// Wait this long on a durable timer.
    Timer(Duration),
    /// Call the orchestration's own entity (`@bench@<instance id>`) and wait for the result.
    EntityCall,
}

impl Stage {
    fn width(self) -> i32 {
        match self {
            Stage::Activities(n) => n as i32,
            Stage::Timer(_) | Stage::EntityCall => 1,
        }
    }
}

/// An orchestrator: its name and its stages.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: String,
    pub stages: Vec<Stage>,
}

impl Script {
    /// Activities one orchestration of this script runs.
    pub fn activities(&self) -> u64 {
        self.stages
            .iter()
            .map(|s| if let Stage::Activities(n) = s { u64::from(*n) } else { 0 })
            .sum()
    }
}

/// The activity every script schedules; it does nothing and returns [`ACTIVITY_RESULT`].
pub const ACTIVITY: &str = "bench.noop";
pub const ACTIVITY_RESULT: &str = "\"ok\"";
const OUTPUT: &str = "\"done\"";

/// The new actions of one orchestrator episode, from the instance's history.
///
/// Action ids are a sequence number from 1, counted over the script the way SDKs count them,
/// so a replay finds the ids of the actions it already sent in the history (TaskScheduled and
/// TimerCreated carry them as eventId; completions refer to them). The first stage not yet
/// finished decides: its missing actions if it was not (fully) scheduled, nothing while it
/// runs. After the last stage the orchestration completes, FAILED if any activity failed.
pub fn decide(script: &Script, past: &[HistoryEvent], new: &[HistoryEvent]) -> Vec<OrchestratorAction> {
    let mut scheduled = HashSet::new();
    let mut done = HashSet::new();
    let mut failed = false;
    let mut now = None;
    let mut instance_id = String::new();
    for event in past.iter().chain(new) {
        match &event.event_type {
            Some(EventType::TaskScheduled(_)) | Some(EventType::TimerCreated(_)) | Some(EventType::EntityOperationCalled(_)) => {
                scheduled.insert(event.event_id);
            }
            Some(EventType::ExecutionStarted(e)) => {
                instance_id = e.orchestration_instance.as_ref().map(|i| i.instance_id.clone()).unwrap_or_default();
            }
            // Calls use their action id as request id.
            Some(EventType::EntityOperationCompleted(e)) => {
                done.extend(e.request_id.parse::<i32>());
            }
            Some(EventType::EntityOperationFailed(e)) => {
                done.extend(e.request_id.parse::<i32>());
                failed = true;
            }
            Some(EventType::TaskCompleted(e)) => {
                done.insert(e.task_scheduled_id);
            }
            Some(EventType::TaskFailed(e)) => {
                done.insert(e.task_scheduled_id);
                failed = true;
            }
            Some(EventType::TimerFired(e)) => {
                done.insert(e.timer_id);
            }
            Some(EventType::OrchestratorStarted(_)) => now = event.timestamp,
            Some(EventType::ExecutionCompleted(_)) | Some(EventType::ExecutionTerminated(_)) => return vec![],
            _ => {}
        }
    }

    let mut next_id = 1;
    for stage in &script.stages {
        let ids = next_id..next_id + stage.width();
        next_id = ids.end;
        let missing: Vec<i32> = ids.clone().filter(|id| !scheduled.contains(id)).collect();
        if !missing.is_empty() {
            return missing.into_iter().map(|id| stage_action(*stage, id, now, &instance_id)).collect();
        }
        if !ids.into_iter().all(|id| done.contains(&id)) {
            return vec![];
        }
    }
    let status = if failed {
        OrchestrationStatus::Failed
    } else {
        OrchestrationStatus::Completed
    };
    vec![OrchestratorAction {
        id: next_id,
        orchestrator_action_type: Some(ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: status as i32,
            result: Some(OUTPUT.into()),
            ..Default::default()
        })),
    }]
}

/// The action of one slot of a stage. A timer's due time counts from the episode's
/// deterministic time (its OrchestratorStarted), as `create_timer(delay)` does in an SDK.
fn stage_action(stage: Stage, id: i32, now: Option<Timestamp>, instance_id: &str) -> OrchestratorAction {
    let kind = match stage {
        Stage::Activities(_) => ActionType::ScheduleTask(ScheduleTaskAction {
            name: ACTIVITY.into(),
            input: Some(id.to_string()),
            ..Default::default()
        }),
        Stage::Timer(delay) => {
            let now = now.unwrap_or_else(|| Timestamp::from(std::time::SystemTime::now()));
            let due = std::time::SystemTime::try_from(now).unwrap_or_else(|_| std::time::SystemTime::now()) + delay;
            ActionType::CreateTimer(CreateTimerAction {
                fire_at: Some(Timestamp::from(due)),
            })
        }
        Stage::EntityCall => ActionType::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(send_entity_message_action::EntityMessageType::EntityOperationCalled(
                EntityOperationCalledEvent {
                    request_id: id.to_string(),
                    operation: "add".into(),
                    input: Some("1".into()),
                    parent_instance_id: Some(instance_id.to_string()),
                    target_instance_id: Some(format!("@bench@{instance_id}")),
                    ..Default::default()
                },
            )),
        }),
    };
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i32, kind: EventType) -> HistoryEvent {
        HistoryEvent {
            event_id: id,
            timestamp: Some(Timestamp { seconds: 1000, nanos: 0 }),
            event_type: Some(kind),
        }
    }
    fn started() -> HistoryEvent {
        event(-1, EventType::OrchestratorStarted(OrchestratorStartedEvent::default()))
    }
    fn execution_started() -> HistoryEvent {
        event(
            -1,
            EventType::ExecutionStarted(ExecutionStartedEvent {
                name: "bench.x".into(),
                ..Default::default()
            }),
        )
    }
    fn scheduled(id: i32) -> HistoryEvent {
        event(
            id,
            EventType::TaskScheduled(TaskScheduledEvent {
                name: ACTIVITY.into(),
                ..Default::default()
            }),
        )
    }
    fn completed(id: i32) -> HistoryEvent {
        event(
            -1,
            EventType::TaskCompleted(TaskCompletedEvent {
                task_scheduled_id: id,
                ..Default::default()
            }),
        )
    }
    fn failed(id: i32) -> HistoryEvent {
        event(
            -1,
            EventType::TaskFailed(TaskFailedEvent {
                task_scheduled_id: id,
                ..Default::default()
            }),
        )
    }

    fn scheduled_ids(actions: &[OrchestratorAction]) -> Vec<i32> {
        actions
            .iter()
            .map(|a| match &a.orchestrator_action_type {
                Some(ActionType::ScheduleTask(t)) => {
                    assert_eq!(t.name, ACTIVITY);
                    a.id
                }
                other => panic!("expected ScheduleTask, got {other:?}"),
            })
            .collect()
    }

    fn completion(actions: &[OrchestratorAction]) -> (i32, OrchestrationStatus) {
        assert_eq!(actions.len(), 1, "{actions:?}");
        match &actions[0].orchestrator_action_type {
            Some(ActionType::CompleteOrchestration(c)) => (actions[0].id, c.orchestration_status()),
            other => panic!("expected CompleteOrchestration, got {other:?}"),
        }
    }

    #[test]
    fn hello5_schedules_one_activity_per_episode_then_completes() {
        let script = Workload::Hello5.script(None);
        let mut past = vec![];
        let mut new = vec![started(), execution_started()];
        for step in 1..=5 {
            let actions = decide(&script, &past, &new);
            assert_eq!(scheduled_ids(&actions), vec![step], "step {step}");
            past.append(&mut new);
            past.push(scheduled(step));
            new = vec![started(), completed(step)];
        }
        assert_eq!(completion(&decide(&script, &past, &new)), (6, OrchestrationStatus::Completed));
    }

    #[test]
    fn a_replay_of_the_whole_history_in_new_events_gives_the_same_answer() {
        let script = Workload::Hello5.script(None);
        let history = vec![started(), execution_started(), scheduled(1), started(), completed(1)];
        assert_eq!(scheduled_ids(&decide(&script, &history, &[])), vec![2]);
        assert_eq!(scheduled_ids(&decide(&script, &[], &history)), vec![2]);
    }

    #[test]
    fn fanout_schedules_everything_at_once_and_waits_for_the_last_result() {
        let script = Workload::Fanout.script(Some(4));
        let new = vec![started(), execution_started()];
        assert_eq!(scheduled_ids(&decide(&script, &[], &new)), vec![1, 2, 3, 4]);

        let mut past = new.clone();
        past.extend((1..=4).map(scheduled));
        let partial = vec![started(), completed(2), completed(4)];
        assert!(decide(&script, &past, &partial).is_empty(), "two results still missing");
        past.extend(partial);
        let rest = vec![started(), completed(1), completed(3)];
        assert_eq!(completion(&decide(&script, &past, &rest)), (5, OrchestrationStatus::Completed));
    }

    #[test]
    fn entity_calls_go_to_the_instances_own_entity_one_at_a_time() {
        let script = Workload::EntityCalls.script(None);
        let start = event(
            -1,
            EventType::ExecutionStarted(ExecutionStartedEvent {
                name: "bench.entity-calls".into(),
                orchestration_instance: Some(OrchestrationInstance {
                    instance_id: "i-1".into(),
                    execution_id: None,
                }),
                ..Default::default()
            }),
        );
        let actions = decide(&script, &[], &[started(), start.clone()]);
        assert_eq!(actions.len(), 1);
        let Some(ActionType::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(send_entity_message_action::EntityMessageType::EntityOperationCalled(call)),
        })) = &actions[0].orchestrator_action_type
        else {
            panic!("expected an entity call, got {actions:?}");
        };
        assert_eq!(call.target_instance_id.as_deref(), Some("@bench@i-1"));
        assert_eq!(call.request_id, "1");
        let called = event(1, EventType::EntityOperationCalled(call.clone()));
        let past = vec![started(), start, called];
        assert!(decide(&script, &past, &[started()]).is_empty(), "waits for the result");
        let result = event(
            -1,
            EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
                request_id: "1".into(),
                output: None,
            }),
        );
        let next = decide(&script, &past, &[started(), result]);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].id, 2);
    }

    #[test]
    fn a_failed_activity_fails_the_orchestration() {
        let script = Workload::Latency1.script(None);
        let past = vec![started(), execution_started(), scheduled(1)];
        let new = vec![started(), failed(1)];
        assert_eq!(completion(&decide(&script, &past, &new)), (2, OrchestrationStatus::Failed));
    }

    #[test]
    fn timer_is_due_one_second_after_the_episode_time_and_its_firing_completes() {
        let script = Workload::Timers.script(None);
        let actions = decide(&script, &[], &[started(), execution_started()]);
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].id, 1);
        match &actions[0].orchestrator_action_type {
            Some(ActionType::CreateTimer(t)) => assert_eq!(t.fire_at, Some(Timestamp { seconds: 1001, nanos: 0 })),
            other => panic!("expected CreateTimer, got {other:?}"),
        }
        let past = vec![
            started(),
            execution_started(),
            event(
                1,
                EventType::TimerCreated(TimerCreatedEvent {
                    fire_at: Some(Timestamp { seconds: 1001, nanos: 0 }),
                }),
            ),
        ];
        assert!(decide(&script, &past, &[started()]).is_empty(), "timer not fired yet");
        let fired = event(
            -1,
            EventType::TimerFired(TimerFiredEvent {
                fire_at: None,
                timer_id: 1,
            }),
        );
        assert_eq!(
            completion(&decide(&script, &past, &[started(), fired])),
            (2, OrchestrationStatus::Completed)
        );
    }

    #[test]
    fn single_step_workloads_complete_at_once() {
        for w in [Workload::Starts, Workload::Fill] {
            let actions = decide(&w.script(None), &[], &[started(), execution_started()]);
            assert_eq!(completion(&actions), (1, OrchestrationStatus::Completed));
        }
    }

    #[test]
    fn a_finished_history_asks_for_nothing() {
        let script = Workload::Latency1.script(None);
        let mut history = vec![started(), execution_started(), scheduled(1), completed(1)];
        history.push(event(2, EventType::ExecutionCompleted(ExecutionCompletedEvent::default())));
        assert!(decide(&script, &history, &[started()]).is_empty());
    }

    #[test]
    fn names_round_trip_and_counts_match_the_scripts() {
        for w in STANDARD.into_iter().chain([Workload::Fill, Workload::SdkHello5, Workload::Ping]) {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert_eq!(Workload::parse("nope"), None);
        assert_eq!(Workload::Hello5.script(None).activities(), 5);
        assert_eq!(Workload::Long.script(Some(30)).activities(), 30);
        assert_eq!(Workload::Timers.script(None).activities(), 0);
    }
}

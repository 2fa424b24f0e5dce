//! One suite for the `Store` trait, run against SQLite and Postgres alike. Time is passed in
//! explicitly, so leases expire and timers fall due without any waiting.
//!
//! The Postgres half needs a server: `OUTRIGGER_TEST_POSTGRES_URL` names a database whose
//! user may create databases (the README's test command provisions one); every test gets a
//! database of its own, dropped when it passes. Without the URL the Postgres half is skipped
//! with a notice (see `pg::available`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use outrigger::engine::entities;
use outrigger::engine::rerun::{self, RerunRequest};
use outrigger::engine::{self, Prepared, Response, StartSpec};
use outrigger::model::{Commit, EntityCommit, EntityLock, Message};
use outrigger::proto::orchestrator_action::OrchestratorActionType as Action;
use outrigger::proto::*;
use outrigger::store::{
    self, Change, Cleaned, Delivery, EntityListFilter, FinishedFilter, InstanceFilter, Lease, LockedEntity, LockedOrchestration, Names,
    Purge, SortKey, Store, StoreError, Write,
};
use outrigger::time::{Micros, to_timestamp};
use sqlx::Connection;
#[path = "common/postgres.rs"]
mod pg;

const T0: Micros = 1_700_000_000_000_000;
const LEASE: Micros = 10_000_000;

// ---------------------------------------------------------------------------------------------
// Harness: a fresh store per test, and a second handle on the same data ("another sidecar").

enum Engine {
    /// The directory lives as long as the test.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin: String,
        database: String,
    },
}

struct Harness {
    engine: Engine,
    url: String,
    store: Arc<dyn Store>,
}

/// A step or an activity result written alone, as a one-write batch.
trait WriteOne {
    async fn commit_orchestration(&self, token: &str, consumed: &[i64], commit: Commit, now: Micros) -> Result<Vec<String>, StoreError>;
    async fn complete_activity(&self, id: i64, token: &str, result: HistoryEvent, now: Micros) -> Result<(), StoreError>;
}

impl WriteOne for dyn Store {
    async fn commit_orchestration(&self, token: &str, consumed: &[i64], commit: Commit, now: Micros) -> Result<Vec<String>, StoreError> {
        let (token, consumed) = (token.to_string(), consumed.to_vec());
        let step = Write::Step {
            token,
            consumed,
            commit,
            now,
            claim: None,
        };
        Ok(self.write(&[step]).await?.pop().expect("one result per write")?.changed)
    }

    async fn complete_activity(&self, id: i64, token: &str, result: HistoryEvent, now: Micros) -> Result<(), StoreError> {
        let token = token.to_string();
        let done = Write::ActivityResult {
            id,
            token,
            result,
            now,
            claim: None,
        };
        self.write(&[done]).await?.pop().expect("one result per write").map(drop)
    }
}

fn options() -> store::Options {
    store::Options { pool_size: 4 }
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
        let store = store::open(&url, &options()).await.unwrap();
        Harness {
            engine: Engine::Sqlite { _dir: dir },
            url,
            store,
        }
    }

    async fn postgres() -> Harness {
        let admin = pg::admin_url();
        let database = format!("conformance_{}", uuid::Uuid::new_v4().simple());
        pg::create_migrated_database(&admin, &database).await;
        let url = pg::with_database(&admin, &database);
        let store = store::open(&url, &options()).await.unwrap();
        Harness {
            engine: Engine::Postgres { admin, database },
            url,
            store,
        }
    }

    /// Another handle on the same data, as a second sidecar would have. SQLite files belong
    /// to one sidecar, so there it is the same store.
    async fn peer(&self) -> Arc<dyn Store> {
        match self.engine {
            Engine::Sqlite { .. } => self.store.clone(),
            Engine::Postgres { .. } => store::open(&self.url, &options()).await.unwrap(),
        }
    }

    async fn finish(self) {
        if let Engine::Postgres { admin, database } = self.engine {
            drop(self.store);
            pg::drop_database(&admin, &database).await;
        }
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let h = super::Harness::sqlite().await;
                    super::$test(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if !super::pg::available() {
                        return;
                    }
                    let h = super::Harness::postgres().await;
                    super::$test(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    created_instances_read_back,
    a_live_id_is_not_taken_twice,
    a_leased_instance_is_not_leased_again_until_its_lease_expires,
    a_stale_token_is_refused_without_harm,
    a_step_commits_everything_or_nothing_visible,
    activities_are_leased_completed_and_expire,
    renewed_leases_do_not_expire,
    releasing_an_owner_frees_only_its_leases,
    timers_become_visible_at_their_time,
    a_release_can_delay_the_next_dispatch,
    concurrent_lockers_never_share_an_instance,
    messages_reach_only_live_instances,
    purge_removes_finished_instances_only,
    queries_page_in_creation_order,
    finished_instances_page_in_completion_order,
    delete_all_empties_the_hub,
    a_batch_refuses_a_stale_write_alone,
    a_result_for_a_finished_execution_is_dropped,
    times_keep_microseconds,
    leases_take_only_the_names_a_filter_takes,
    listings_filter_sort_and_count_as_the_dashboard_asks,
    entity_messages_are_queued_and_leased_with_their_entity,
    an_entity_step_commits_state_results_signals_and_starts_together,
    deferred_entity_messages_wait_for_a_new_message,
    entity_locks_persist_and_orphaned_ones_are_released,
    concurrent_lockers_never_share_an_entity,
    entities_query_by_prefix_state_and_page,
    purge_and_delete_all_remove_entities,
    entity_leases_are_renewed_and_released_by_owner,
    a_prepared_instance_is_created_whole,
    a_step_leases_the_activities_it_claims_in_its_commit,
    an_activity_result_leases_the_orchestration_it_claims,
    a_claim_takes_nothing_held_and_strands_nothing,
    a_step_claims_its_instance_when_events_arrived_meanwhile,
    a_batch_claims_each_instance_once_for_the_first_write_that_asks,
);

// ---------------------------------------------------------------------------------------------
// Builders

fn lease(owner: &str, now: Micros) -> Lease<'_> {
    Lease {
        owner,
        now,
        until: now + LEASE,
    }
}

async fn create(store: &dyn Store, id: &str, at: Micros) {
    let spec = StartSpec {
        instance_id: id.into(),
        name: "Orchestration".into(),
        version: None,
        input: Some("\"in\"".into()),
        execution_id: format!("{id}-e1"),
        scheduled_start: None,
        tags: BTreeMap::from([("team".to_string(), "blue".to_string())]),
        parent: None,
        parent_trace_context: None,
    };
    store.create_instance(engine::new_instance(spec, at), &[]).await.unwrap();
}

fn action(id: i32, a: Action) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(a),
    }
}

fn schedule_task(id: i32) -> OrchestratorAction {
    action(
        id,
        Action::ScheduleTask(ScheduleTaskAction {
            name: "Work".into(),
            input: Some(format!("{id}")),
            ..Default::default()
        }),
    )
}

fn create_timer(id: i32, fire_at: Micros) -> OrchestratorAction {
    action(
        id,
        Action::CreateTimer(CreateTimerAction {
            fire_at: Some(to_timestamp(fire_at)),
        }),
    )
}

fn complete(id: i32, output: &str) -> OrchestratorAction {
    action(
        id,
        Action::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Completed as i32,
            result: Some(output.into()),
            ..Default::default()
        }),
    )
}

/// Runs one orchestration step the way the dispatcher does: prepare, apply the actions, commit.
async fn step(
    store: &dyn Store,
    item: LockedOrchestration,
    actions: Vec<OrchestratorAction>,
    now: Micros,
) -> Result<Vec<String>, StoreError> {
    let Prepared::Run { new_events, consumed } = engine::prepare(&item.instance, &item.history, &item.inbox, now) else {
        panic!("{} has nothing to run", item.instance.instance_id);
    };
    let mut n = 0;
    let commit: Commit = engine::apply(
        &item.instance,
        &item.history,
        &new_events,
        Response {
            actions,
            ..Default::default()
        },
        now,
        &mut || {
            n += 1;
            format!("new-{n}")
        },
    );
    store.commit_orchestration(&item.token, &consumed, commit, now).await
}

async fn lock_one(store: &dyn Store, owner: &str, now: Micros) -> LockedOrchestration {
    let mut items = store.lock_orchestrations(&lease(owner, now), 10, &Names::Any).await.unwrap();
    assert_eq!(items.len(), 1, "expected exactly one orchestration work item");
    items.pop().unwrap()
}

async fn lock_ids(store: &dyn Store, owner: &str, now: Micros) -> Vec<String> {
    let items = store.lock_orchestrations(&lease(owner, now), 100, &Names::Any).await.unwrap();
    let mut ids: Vec<String> = items.into_iter().map(|i| i.instance.instance_id).collect();
    ids.sort();
    ids
}

fn kinds(history: &[HistoryEvent]) -> Vec<&'static str> {
    history.iter().map(outrigger::engine::events::kind_name).collect()
}

/// Runs an instance to completion in one step.
async fn run_to_completion(store: &dyn Store, id: &str, at: Micros) {
    create(store, id, at).await;
    let item = lock_one(store, "w", at).await;
    step(store, item, vec![complete(0, "\"done\"")], at).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn created_instances_read_back(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let got = s.get_instance("a").await.unwrap().expect("instance a");
    assert_eq!(got.status, OrchestrationStatus::Pending);
    assert_eq!(got.name, "Orchestration");
    assert_eq!(got.input.as_deref(), Some("\"in\""));
    assert_eq!(got.tags.get("team").map(String::as_str), Some("blue"));
    assert_eq!(got.created_at, T0);
    assert!(s.history("a").await.unwrap().is_empty());
    assert!(s.get_instance("missing").await.unwrap().is_none());

    let item = lock_one(s, "w", T0).await;
    assert_eq!(item.instance, got);
    assert_eq!(
        kinds(&item.inbox.iter().map(|(_, m)| m.event.clone()).collect::<Vec<_>>()),
        ["ExecutionStarted"]
    );
}

async fn a_live_id_is_not_taken_twice(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let spec = |input: &str| StartSpec {
        instance_id: "a".into(),
        name: "Other".into(),
        version: None,
        input: Some(input.into()),
        execution_id: "e2".into(),
        scheduled_start: None,
        tags: BTreeMap::new(),
        parent: None,
        parent_trace_context: None,
    };
    let again = s
        .create_instance(engine::new_instance(spec("1"), T0), &[OrchestrationStatus::Completed])
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyExists(..))), "{again:?}");
    assert_eq!(s.get_instance("a").await.unwrap().unwrap().name, "Orchestration");

    // A status the caller allows replacing is replaced, history, inbox and all.
    s.create_instance(engine::new_instance(spec("2"), T0 + 1), &[OrchestrationStatus::Pending])
        .await
        .unwrap();
    let got = s.get_instance("a").await.unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.execution_id.as_str()), ("Other", "e2"));
    let item = lock_one(s, "w", T0 + 1).await;
    assert_eq!(item.inbox.len(), 1, "the replaced instance's start message is gone");
}

async fn a_leased_instance_is_not_leased_again_until_its_lease_expires(h: &Harness) {
    let (s, peer) = (&*h.store, h.peer().await);
    create(s, "a", T0).await;
    let first = lock_one(s, "one", T0).await;
    assert!(lock_ids(&*peer, "two", T0 + 1).await.is_empty(), "held by 'one'");
    assert!(
        lock_ids(&*peer, "two", T0 + LEASE - 1).await.is_empty(),
        "still held just before expiry"
    );

    // Expired: another sidecar takes it over with a fresh token.
    let second = lock_one(&*peer, "two", T0 + LEASE).await;
    assert_ne!(first.token, second.token);
    let late = step(s, first, vec![complete(0, "\"one\"")], T0 + LEASE + 1).await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    step(&*peer, second, vec![complete(0, "\"two\"")], T0 + LEASE + 2).await.unwrap();
    let got = s.get_instance("a").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.output.as_deref()),
        (OrchestrationStatus::Completed, Some("\"two\""))
    );
    assert_eq!(
        kinds(&s.history("a").await.unwrap())
            .iter()
            .filter(|k| **k == "ExecutionStarted")
            .count(),
        1
    );
}

async fn a_stale_token_is_refused_without_harm(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let mut item = lock_one(s, "w", T0).await;
    let real = std::mem::replace(&mut item.token, "not-a-token".into());
    let refused = step(s, item, vec![schedule_task(0)], T0).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    assert!(s.history("a").await.unwrap().is_empty(), "nothing written");
    assert!(
        s.lock_activities(&lease("w", T0), 10, &Names::Any).await.unwrap().is_empty(),
        "no activity queued"
    );
    assert!(matches!(
        s.release_orchestration("a", "not-a-token", &[], 0).await,
        Err(StoreError::LeaseLost)
    ));

    // The real token still works, and finds its inbox intact.
    s.release_orchestration("a", &real, &[], 0).await.unwrap();
    let item = lock_one(s, "w", T0 + 1).await;
    assert_eq!(item.inbox.len(), 1);
}

async fn a_step_commits_everything_or_nothing_visible(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "w", T0).await;
    let changed = step(s, item, vec![schedule_task(0), schedule_task(1)], T0 + 1).await.unwrap();
    assert_eq!(changed, ["a"]);
    assert_eq!(
        kinds(&s.history("a").await.unwrap()),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "TaskScheduled",
            "OrchestratorCompleted"
        ]
    );
    assert_eq!(s.get_instance("a").await.unwrap().unwrap().status, OrchestrationStatus::Running);
    assert!(lock_ids(s, "w", T0 + 2).await.is_empty(), "the start message was consumed");

    let activities = s.lock_activities(&lease("w", T0 + 2), 10, &Names::Any).await.unwrap();
    let task_ids: Vec<i32> = activities.iter().map(|a| a.task.request.task_id).collect();
    assert_eq!(task_ids, [0, 1]);
    for a in activities {
        let result = engine::events::task_result(T0 + 3, a.task.request.task_id, Some("\"ok\"".into()), None);
        s.complete_activity(a.id, &a.token, result, T0 + 3).await.unwrap();
    }
    let item = lock_one(s, "w", T0 + 4).await;
    assert_eq!(
        kinds(&item.inbox.iter().map(|(_, m)| m.event.clone()).collect::<Vec<_>>()),
        ["TaskCompleted", "TaskCompleted"]
    );
    assert_eq!(item.history.len(), 5);
    step(s, item, vec![complete(2, "\"all\"")], T0 + 5).await.unwrap();
    let got = s.get_instance("a").await.unwrap().unwrap();
    assert_eq!((got.status, got.completed_at), (OrchestrationStatus::Completed, Some(T0 + 5)));
    assert!(lock_ids(s, "w", T0 + 6).await.is_empty());
}

async fn activities_are_leased_completed_and_expire(h: &Harness) {
    let (s, peer) = (&*h.store, h.peer().await);
    create(s, "a", T0).await;
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![schedule_task(0)], T0).await.unwrap();

    let first = s
        .lock_activities(&lease("one", T0), 10, &Names::Any)
        .await
        .unwrap()
        .pop()
        .expect("one activity");
    assert!(
        peer.lock_activities(&lease("two", T0 + LEASE - 1), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty()
    );
    let second = peer
        .lock_activities(&lease("two", T0 + LEASE), 10, &Names::Any)
        .await
        .unwrap()
        .pop()
        .expect("expired lease taken over");
    assert_eq!(first.id, second.id);
    let result = |at| engine::events::task_result(at, 0, Some("\"ok\"".into()), None);
    assert!(matches!(
        s.complete_activity(first.id, &first.token, result(T0), T0 + LEASE).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        s.release_activity(first.id, &first.token, T0).await,
        Err(StoreError::LeaseLost)
    ));

    // Released with a back-off: invisible until then.
    peer.release_activity(second.id, &second.token, T0 + LEASE + 500).await.unwrap();
    assert!(
        s.lock_activities(&lease("one", T0 + LEASE + 499), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.next_due(T0 + LEASE).await.unwrap(), Some(T0 + LEASE + 500));
    let third = s
        .lock_activities(&lease("one", T0 + LEASE + 500), 10, &Names::Any)
        .await
        .unwrap()
        .pop()
        .expect("visible again");
    s.complete_activity(third.id, &third.token, result(T0 + LEASE + 501), T0 + LEASE + 501)
        .await
        .unwrap();
    assert!(
        matches!(
            s.complete_activity(third.id, &third.token, result(T0), T0).await,
            Err(StoreError::LeaseLost)
        ),
        "completes once"
    );
    let item = lock_one(s, "w", T0 + LEASE + 502).await;
    assert_eq!(item.inbox.len(), 1, "exactly one result queued");
}

async fn renewed_leases_do_not_expire(h: &Harness) {
    let (s, peer) = (&*h.store, h.peer().await);
    create(s, "a", T0).await;
    create(s, "b", T0).await;
    let items = s.lock_orchestrations(&lease("one", T0), 10, &Names::Any).await.unwrap();
    let a = items.iter().find(|i| i.instance.instance_id == "a").unwrap();
    s.renew_leases(std::slice::from_ref(&a.token), T0 + 3 * LEASE).await.unwrap();
    assert_eq!(
        lock_ids(&*peer, "two", T0 + LEASE).await,
        ["b"],
        "only the lease that was not renewed expired"
    );
    assert_eq!(
        lock_ids(&*peer, "two", T0 + 3 * LEASE - 1).await,
        ["b"],
        "'a' is held until its renewed expiry"
    );
    assert_eq!(lock_ids(&*peer, "two", T0 + 3 * LEASE).await, ["a"]);
}

async fn releasing_an_owner_frees_only_its_leases(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    create(s, "b", T0).await;
    let _a = s.lock_orchestrations(&lease("one", T0), 1, &Names::Any).await.unwrap();
    let _b = s.lock_orchestrations(&lease("two", T0), 1, &Names::Any).await.unwrap();
    assert!(lock_ids(s, "three", T0).await.is_empty());
    s.release_all(Some("one")).await.unwrap();
    let freed = lock_ids(s, "three", T0 + 1).await;
    assert_eq!(freed.len(), 1);
    assert!(lock_ids(s, "three", T0 + 2).await.is_empty(), "'two' still holds the other");
}

async fn timers_become_visible_at_their_time(h: &Harness) {
    let (s, peer) = (&*h.store, h.peer().await);
    create(s, "a", T0).await;
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![create_timer(0, T0 + 5_000)], T0).await.unwrap();
    assert_eq!(peer.next_due(T0).await.unwrap(), Some(T0 + 5_000));
    assert!(lock_ids(&*peer, "w", T0 + 4_999).await.is_empty(), "not before its time");
    let item = lock_one(&*peer, "w", T0 + 5_000).await;
    assert_eq!(
        kinds(&item.inbox.iter().map(|(_, m)| m.event.clone()).collect::<Vec<_>>()),
        ["TimerFired"]
    );
    step(&*peer, item, vec![complete(1, "\"late\"")], T0 + 5_001).await.unwrap();
    assert!(lock_ids(s, "w", T0 + 10_000).await.is_empty(), "fired once");
    assert_eq!(s.next_due(T0 + 5_001).await.unwrap(), None);
}

async fn a_release_can_delay_the_next_dispatch(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "w", T0).await;
    s.release_orchestration("a", &item.token, &[], T0 + 1_000).await.unwrap();
    assert!(lock_ids(s, "w", T0 + 999).await.is_empty());
    assert_eq!(s.next_due(T0).await.unwrap(), Some(T0 + 1_000));
    let item = lock_one(s, "w", T0 + 1_000).await;
    let consumed: Vec<i64> = item.inbox.iter().map(|(id, _)| *id).collect();
    s.release_orchestration("a", &item.token, &consumed, 0).await.unwrap();
    assert!(lock_ids(s, "w", T0 + 2_000).await.is_empty(), "consumed messages are gone");
}

async fn concurrent_lockers_never_share_an_instance(h: &Harness) {
    let ids: Vec<String> = (0..60).map(|i| format!("i{i:02}")).collect();
    for id in &ids {
        create(&*h.store, id, T0).await;
    }
    let mut lockers = vec![];
    for n in 0..6 {
        let store = if n % 2 == 0 { h.store.clone() } else { h.peer().await };
        lockers.push(tokio::spawn(async move {
            let owner = format!("locker-{n}");
            let mut mine = vec![];
            loop {
                let items = store.lock_orchestrations(&lease(&owner, T0), 7, &Names::Any).await.unwrap();
                if items.is_empty() {
                    return mine;
                }
                mine.extend(items.into_iter().map(|i| i.instance.instance_id));
            }
        }));
    }
    let mut all = vec![];
    for l in lockers {
        all.extend(l.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an instance was leased twice: {all:?}");
    assert_eq!(all.len(), ids.len(), "every instance was leased");
}

async fn messages_reach_only_live_instances(h: &Harness) {
    let s = &*h.store;
    let raised = |to: &str, execution: Option<&str>| Message {
        instance_id: to.into(),
        execution_id: execution.map(str::to_string),
        event: engine::events::event_raised(T0, "Approval".into(), Some("true".into())),
        visible_at: T0,
        priority: Message::NORMAL,
    };
    assert_eq!(s.send(raised("nobody", None)).await.unwrap(), Delivery::Unknown);
    run_to_completion(s, "done", T0).await;
    assert_eq!(s.send(raised("done", None)).await.unwrap(), Delivery::Finished);
    create(s, "live", T0).await;
    assert_eq!(s.send(raised("live", Some("old-execution"))).await.unwrap(), Delivery::Finished);
    assert_eq!(s.send(raised("live", None)).await.unwrap(), Delivery::Queued);
    let item = lock_one(s, "w", T0 + 1).await;
    assert_eq!(item.instance.instance_id, "live");
    assert_eq!(
        kinds(&item.inbox.iter().map(|(_, m)| m.event.clone()).collect::<Vec<_>>()),
        ["ExecutionStarted", "EventRaised"]
    );
}

async fn purge_removes_finished_instances_only(h: &Harness) {
    let s = &*h.store;
    run_to_completion(s, "done", T0).await;
    create(s, "live", T0).await;
    assert_eq!(
        s.purge("live", false).await.unwrap(),
        Purge::NotFinished(OrchestrationStatus::Pending)
    );
    assert_eq!(s.purge("done", false).await.unwrap(), Purge::Deleted(1));
    assert!(s.get_instance("done").await.unwrap().is_none());
    assert!(s.history("done").await.unwrap().is_empty());
    assert_eq!(s.purge("done", false).await.unwrap(), Purge::Deleted(0));
    assert!(s.get_instance("live").await.unwrap().is_some());
}

async fn queries_page_in_creation_order(h: &Harness) {
    let s = &*h.store;
    for i in 0..25 {
        create(s, &format!("order-{i:02}"), T0 + i).await;
    }
    create(s, "other", T0 + 100).await;
    let mut seen = vec![];
    let mut after = None;
    loop {
        let filter = InstanceFilter {
            id_prefix: Some("order-".into()),
            after: after.clone(),
            limit: 10,
            ..Default::default()
        };
        let page = s.query(&filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().map(|i| (i.created_at, i.instance_id.clone()));
        seen.extend(page.into_iter().map(|i| i.instance_id));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("order-{i:02}")).collect();
    assert_eq!(seen, expected);

    let window = InstanceFilter {
        created_from: Some(T0 + 5),
        created_to: Some(T0 + 7),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.query(&window).await.unwrap().len(), 3);
    let running = InstanceFilter {
        statuses: vec![OrchestrationStatus::Running],
        limit: 100,
        ..Default::default()
    };
    assert!(s.query(&running).await.unwrap().is_empty());
    let pending = InstanceFilter {
        statuses: vec![OrchestrationStatus::Pending],
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.query(&pending).await.unwrap().len(), 26);
}

async fn finished_instances_page_in_completion_order(h: &Harness) {
    let s = &*h.store;
    for i in 0..5 {
        run_to_completion(s, &format!("f{i}"), T0 + 10 - i).await;
    }
    create(s, "live", T0).await;
    let all = s
        .finished(&FinishedFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["f4", "f3", "f2", "f1", "f0"], "by completion time, live ones left out");
    let page = s
        .finished(&FinishedFilter {
            after: Some(all[1].clone()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["f2", "f1"]);
    let none = FinishedFilter {
        statuses: vec![OrchestrationStatus::Failed],
        limit: 100,
        ..Default::default()
    };
    assert!(s.finished(&none).await.unwrap().is_empty());
}

async fn delete_all_empties_the_hub(h: &Harness) {
    let s = &*h.store;
    run_to_completion(s, "done", T0).await;
    create(s, "live", T0).await;
    s.delete_all().await.unwrap();
    assert!(
        s.query(&InstanceFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert!(lock_ids(s, "w", T0).await.is_empty());
    assert!(s.history("done").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Postgres only: what makes several sidecars on one database work.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_notify_other_sidecars() {
    if !pg::available() {
        return;
    }
    let h = Harness::postgres().await;
    let peer = h.peer().await;
    let mut changes = peer.remote_changes().expect("a shared store reports remote changes");
    let mut own = h.store.remote_changes().unwrap();
    create(&*h.store, "a", T0).await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(got, Change::Instances(vec!["a".into()]));
    let item = lock_one(&*peer, "w", T0).await;
    step(&*peer, item, vec![schedule_task(0)], T0).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), own.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(
        got,
        Change::Instances(vec!["a".into()]),
        "the first store hears the peer's commit, not its own create"
    );
    drop(peer);
    h.finish().await;
}

#[test]
fn database_urls_swap_only_the_database() {
    assert_eq!(pg::with_database("postgres://u:p@h:5432/postgres", "x"), "postgres://u:p@h:5432/x");
    assert_eq!(
        pg::with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(pg::with_database("postgres://h", "x"), "postgres://h/x");
}

async fn a_batch_refuses_a_stale_write_alone(h: &Harness) {
    let s = &*h.store;
    for id in ["a", "b"] {
        create(s, id, T0).await;
    }
    let mut writes = vec![];
    for item in s.lock_orchestrations(&lease("w", T0), 10, &Names::Any).await.unwrap() {
        let Prepared::Run { new_events, consumed } = engine::prepare(&item.instance, &item.history, &item.inbox, T0) else {
            panic!()
        };
        let response = Response {
            actions: vec![schedule_task(0)],
            ..Default::default()
        };
        let commit = engine::apply(&item.instance, &item.history, &new_events, response, T0, &mut || "x".into());
        let token = if item.instance.instance_id == "a" {
            "stale".to_string()
        } else {
            item.token
        };
        writes.push(Write::Step {
            token,
            consumed,
            commit,
            now: T0,
            claim: None,
        });
    }
    writes.sort_by_key(|w| match w {
        Write::Step { commit, .. } => commit.instance.instance_id.clone(),
        Write::ActivityResult { .. } | Write::EntityStep { .. } => unreachable!(),
    });
    let results = s.write(&writes).await.unwrap();
    assert!(matches!(results[0], Err(StoreError::LeaseLost)), "{:?}", results[0]);
    assert_eq!(results[1].as_ref().unwrap().changed, ["b"]);
    assert!(s.history("a").await.unwrap().is_empty(), "the stale write wrote nothing");
    assert_eq!(s.history("b").await.unwrap().len(), 4);
    let activities = s.lock_activities(&lease("w", T0), 10, &Names::Any).await.unwrap();
    assert_eq!(activities.iter().map(|a| a.task.instance_id.as_str()).collect::<Vec<_>>(), ["b"]);
}

fn event_raised(to: &str, name: &str, at: Micros) -> Message {
    Message {
        instance_id: to.into(),
        execution_id: None,
        event: engine::events::event_raised(at, name.into(), None),
        visible_at: at,
        priority: Message::NORMAL,
    }
}

fn claim(owner: &str, now: Micros, activities: usize, orchestration: bool) -> Option<store::Claim> {
    Some(store::Claim {
        owner: owner.into(),
        until: now + LEASE,
        activities,
        orchestration,
    })
}

/// A step's commit, as the dispatcher writes it, with `claim`.
fn step_write(item: &LockedOrchestration, actions: Vec<OrchestratorAction>, now: Micros, claim: Option<store::Claim>) -> Write {
    let Prepared::Run { new_events, consumed } = engine::prepare(&item.instance, &item.history, &item.inbox, now) else {
        panic!("{} has nothing to run", item.instance.instance_id);
    };
    let response = Response {
        actions,
        ..Default::default()
    };
    let commit = engine::apply(&item.instance, &item.history, &new_events, response, now, &mut || "x".into());
    Write::Step {
        token: item.token.clone(),
        consumed,
        commit,
        now,
        claim,
    }
}

async fn write_one(s: &dyn Store, write: Write) -> store::Written {
    s.write(&[write]).await.unwrap().pop().unwrap().unwrap()
}

fn result_write(id: i64, token: &str, task_id: i32, now: Micros, claim: Option<store::Claim>) -> Write {
    Write::ActivityResult {
        id,
        token: token.into(),
        result: engine::events::task_result(now, task_id, Some("\"done\"".into()), None),
        now,
        claim,
    }
}

async fn a_step_leases_the_activities_it_claims_in_its_commit(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "me", T0).await;
    let written = write_one(
        s,
        step_write(&item, vec![schedule_task(0), schedule_task(1)], T0, claim("me", T0, 1, false)),
    )
    .await;
    assert_eq!(written.changed, ["a"]);
    assert!(written.orchestration.is_none());
    let [claimed] = &written.activities[..] else {
        panic!("one activity claimed: {:?}", written.activities)
    };
    assert_eq!(claimed.task.instance_id, "a");
    assert_eq!(claimed.task.execution_id, "a-e1");
    assert_eq!(claimed.task.request.task_id, 0);
    assert_eq!(claimed.task.request.input.as_deref(), Some("0"));
    // The claimed one is leased; the other waits for the dispatch loop, here another sidecar's.
    let peer = h.peer().await;
    let others = peer.lock_activities(&lease("peer", T0), 10, &Names::Any).await.unwrap();
    assert_eq!(others.iter().map(|a| a.task.request.task_id).collect::<Vec<_>>(), [1]);
    // The claim's token completes it; released, it would be leased again.
    s.complete_activity(claimed.id, &claimed.token, engine::events::task_result(T0, 0, None, None), T0)
        .await
        .unwrap();
    assert!(peer.lock_activities(&lease("peer", T0), 10, &Names::Any).await.unwrap().is_empty());
    assert_eq!(lock_one(s, "me", T0).await.inbox.len(), 1, "the result reached the orchestration");
}

async fn an_activity_result_leases_the_orchestration_it_claims(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "me", T0).await;
    let written = write_one(s, step_write(&item, vec![schedule_task(0)], T0, claim("me", T0, 1, true))).await;
    assert!(written.orchestration.is_none(), "nothing was due for the instance after its step");
    let activity = written.activities.into_iter().next().expect("the activity was claimed");
    let t1 = T0 + 1_000;
    let written = write_one(s, result_write(activity.id, &activity.token, 0, t1, claim("me", t1, 0, true))).await;
    assert_eq!(written.changed, ["a"]);
    let leased = written.orchestration.expect("the orchestration was claimed with the result");
    assert_eq!(leased.instance.instance_id, "a");
    assert_eq!(leased.history.len(), 4, "its history came with it");
    let kinds: Vec<_> = leased.inbox.iter().map(|(_, m)| engine::events::kind_name(&m.event)).collect();
    assert_eq!(kinds, ["TaskCompleted"]);
    // Leased: neither this sidecar's loop nor another sidecar gets it while the lease lasts.
    let peer = h.peer().await;
    assert!(lock_ids(&*peer, "peer", t1).await.is_empty());
    assert!(lock_ids(s, "me", t1).await.is_empty());
    // Its token steps it, as any lease's.
    step(s, leased, vec![complete(1, "\"ok\"")], t1).await.unwrap();
    assert_eq!(s.get_instance("a").await.unwrap().unwrap().status, OrchestrationStatus::Completed);
}

async fn a_claim_takes_nothing_held_and_strands_nothing(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "me", T0).await;
    let written = write_one(
        s,
        step_write(&item, vec![schedule_task(0), schedule_task(1)], T0, claim("me", T0, 2, false)),
    )
    .await;
    let [first, second] = &written.activities[..] else { panic!() };
    // A result for an instance someone holds claims nothing; the result waits in its inbox.
    s.send(event_raised("a", "go", T0)).await.unwrap();
    let _held = lock_one(s, "other", T0).await;
    let written = write_one(s, result_write(first.id, &first.token, 0, T0, claim("me", T0, 0, true))).await;
    assert!(written.orchestration.is_none(), "a held instance is not claimed");
    // A claim whose sidecar dies before handing the work out: it comes free when the lease
    // expires, to anyone.
    let written = write_one(s, result_write(second.id, &second.token, 1, T0, claim("me", T0, 0, true))).await;
    assert!(written.orchestration.is_none());
    let peer = h.peer().await;
    let expired = T0 + LEASE + 1;
    let item = lock_one(&*peer, "peer", expired).await;
    assert_eq!(item.inbox.len(), 3, "the event and both results wait for the next episode");
    // A claimed activity dropped unhanded is leased again after its lease expires.
    create(s, "b", expired).await;
    let item_b = lock_one(s, "me", expired).await;
    let written = write_one(
        s,
        step_write(&item_b, vec![schedule_task(0)], expired, claim("me", expired, 1, false)),
    )
    .await;
    assert_eq!(written.activities.len(), 1);
    assert!(
        peer.lock_activities(&lease("peer", expired), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty()
    );
    let later = expired + LEASE + 1;
    let retaken = peer.lock_activities(&lease("peer", later), 10, &Names::Any).await.unwrap();
    assert_eq!(retaken.iter().map(|a| a.task.instance_id.as_str()).collect::<Vec<_>>(), ["b"]);
}

async fn a_step_claims_its_instance_when_events_arrived_meanwhile(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "me", T0).await;
    let written = write_one(s, step_write(&item, vec![schedule_task(0)], T0, claim("me", T0, 1, false))).await;
    let activity = written.activities.into_iter().next().unwrap();
    // The instance runs its next episode while the result arrives: the result cannot claim it.
    let t1 = T0 + 1_000;
    s.send(event_raised("a", "go", t1)).await.unwrap();
    let episode = lock_one(s, "me", t1).await;
    let written = write_one(s, result_write(activity.id, &activity.token, 0, t1, claim("me", t1, 0, true))).await;
    assert!(written.orchestration.is_none());
    // The episode's step ends its lease and, as it claims, leases it again for the result.
    let t2 = t1 + 1_000;
    let written = write_one(s, step_write(&episode, vec![], t2, claim("me", t2, 0, true))).await;
    let again = written.orchestration.expect("the instance was claimed again by its own step");
    let kinds: Vec<_> = again.inbox.iter().map(|(_, m)| engine::events::kind_name(&m.event)).collect();
    assert_eq!(kinds, ["TaskCompleted"]);
    assert!(lock_ids(s, "me", t2).await.is_empty());
    // A finished instance claims nothing.
    let written = write_one(s, step_write(&again, vec![complete(1, "1")], t2, claim("me", t2, 0, true))).await;
    assert!(written.orchestration.is_none());
}

async fn a_batch_claims_each_instance_once_for_the_first_write_that_asks(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    create(s, "b", T0).await;
    let mut items = s.lock_orchestrations(&lease("me", T0), 10, &Names::Any).await.unwrap();
    items.sort_by(|x, y| x.instance.instance_id.cmp(&y.instance.instance_id));
    let mut activities = vec![];
    for item in items {
        let tasks = if item.instance.instance_id == "a" {
            vec![schedule_task(0), schedule_task(1)]
        } else {
            vec![schedule_task(0)]
        };
        let n = tasks.len();
        activities.extend(
            write_one(s, step_write(&item, tasks, T0, claim("me", T0, n, false)))
                .await
                .activities,
        );
    }
    let [a0, a1, b0] = &activities[..] else { panic!("{activities:?}") };
    assert_eq!(
        (
            a0.task.instance_id.as_str(),
            a1.task.instance_id.as_str(),
            b0.task.instance_id.as_str()
        ),
        ("a", "a", "b")
    );
    // Three results in one commit: a's two and b's one, each asking for its orchestration.
    let t1 = T0 + 1_000;
    let results = s
        .write(&[
            result_write(a0.id, &a0.token, 0, t1, claim("me", t1, 0, true)),
            result_write(b0.id, &b0.token, 0, t1, claim("me", t1, 0, true)),
            result_write(a1.id, &a1.token, 1, t1, claim("me", t1, 0, true)),
        ])
        .await
        .unwrap();
    let leased: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap().orchestration.map(|o| (o.instance.instance_id, o.inbox.len())))
        .collect();
    assert_eq!(
        leased,
        [Some(("a".into(), 2)), Some(("b".into(), 1)), None],
        "a once, with both results"
    );
    assert!(lock_ids(s, "me", t1).await.is_empty(), "both are held by their claims");
}

async fn a_result_for_a_finished_execution_is_dropped(h: &Harness) {
    let s = &*h.store;
    create(s, "a", T0).await;
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![schedule_task(0)], T0).await.unwrap();
    let activity = s
        .lock_activities(&lease("w", T0), 10, &Names::Any)
        .await
        .unwrap()
        .pop()
        .expect("one activity");
    // The orchestration finishes (say, terminated) while its activity is still running.
    s.send(Message {
        instance_id: "a".into(),
        execution_id: None,
        event: engine::events::terminated(T0, None, false),
        visible_at: T0,
        priority: Message::NORMAL,
    })
    .await
    .unwrap();
    let item = lock_one(s, "w", T0 + 1).await;
    step(s, item, vec![], T0 + 1).await.unwrap();
    assert_eq!(s.get_instance("a").await.unwrap().unwrap().status, OrchestrationStatus::Terminated);

    let result = engine::events::task_result(T0 + 2, 0, Some("\"late\"".into()), None);
    s.complete_activity(activity.id, &activity.token, result, T0 + 2).await.unwrap();
    assert!(
        lock_ids(s, "w", T0 + 3).await.is_empty(),
        "nothing queued for the finished execution"
    );
    assert!(
        s.lock_activities(&lease("w", T0 + LEASE), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty(),
        "the activity is done"
    );
}

async fn times_keep_microseconds(h: &Harness) {
    let s = &*h.store;
    let at = T0 + 123_457; // not a whole millisecond
    create(s, "a", at).await;
    let got = s.get_instance("a").await.unwrap().unwrap();
    assert_eq!((got.created_at, got.updated_at), (at, at));
    let item = lock_one(s, "w", at).await;
    step(s, item, vec![complete(0, "\"done\"")], at + 1).await.unwrap();
    let got = s.get_instance("a").await.unwrap().unwrap();
    assert_eq!((got.updated_at, got.completed_at), (at + 1, Some(at + 1)));
    let history = s.history("a").await.unwrap();
    let last = history.last().and_then(|e| e.timestamp).expect("a timestamp");
    assert_eq!(last.nanos % 1_000_000, 458_000, "history timestamps keep microseconds: {last:?}");
}

fn only(pairs: &[(&str, &[&str])]) -> Names {
    Names::Only(
        pairs
            .iter()
            .map(|(n, vs)| (n.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect(),
    )
}

async fn leases_take_only_the_names_a_filter_takes(h: &Harness) {
    let s = &*h.store;
    let start = |id: &str, name: &str, version: Option<&str>| StartSpec {
        instance_id: id.into(),
        name: name.into(),
        version: version.map(String::from),
        execution_id: format!("{id}-e1"),
        ..Default::default()
    };
    for (id, name, version) in [("o1", "Order", None), ("o2", "Order", Some("2")), ("s1", "Ship", None)] {
        s.create_instance(engine::new_instance(start(id, name, version), T0), &[])
            .await
            .unwrap();
    }
    let ids = |items: Vec<LockedOrchestration>| {
        let mut ids: Vec<String> = items.into_iter().map(|i| i.instance.instance_id).collect();
        ids.sort();
        ids
    };
    let lock = |names: Names, at: Micros| async move { ids(s.lock_orchestrations(&lease("w", at), 10, &names).await.unwrap()) };
    assert!(lock(only(&[("Pay", &[])]), T0).await.is_empty(), "nobody takes Pay");
    assert_eq!(lock(only(&[("Order", &["2"])]), T0).await, ["o2"]);
    assert_eq!(
        lock(only(&[("Order", &[""]), ("Ship", &["1"])]), T0 + LEASE).await,
        ["o1"],
        "unversioned is \"\""
    );
    assert_eq!(lock(only(&[("Ship", &[])]), T0 + 2 * LEASE).await, ["s1"]);
    assert_eq!(lock(Names::Any, T0 + 3 * LEASE).await, ["o1", "o2", "s1"]);

    // Activities by name and version alike.
    let item = s
        .lock_orchestrations(&lease("w", T0 + 4 * LEASE), 10, &only(&[("Ship", &[])]))
        .await
        .unwrap();
    let task = |id: i32, name: &str, version: Option<&str>| {
        action(
            id,
            Action::ScheduleTask(ScheduleTaskAction {
                name: name.into(),
                version: version.map(String::from),
                ..Default::default()
            }),
        )
    };
    let item = item.into_iter().next().expect("s1");
    let actions = vec![task(0, "Pack", None), task(1, "Pack", Some("3")), task(2, "Label", None)];
    step(s, item, actions, T0 + 4 * LEASE).await.unwrap();
    let at = T0 + 4 * LEASE;
    let tasks = |names: Names, at: Micros| async move {
        let mut got: Vec<i32> = s
            .lock_activities(&lease("w", at), 10, &names)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.task.request.task_id)
            .collect();
        got.sort();
        got
    };
    assert!(tasks(only(&[]), at).await.is_empty(), "an empty filter takes nothing");
    assert_eq!(tasks(only(&[("Pack", &["3"])]), at).await, [1]);
    assert_eq!(tasks(only(&[("Pack", &[]), ("Label", &["9"])]), at).await, [0]);
    assert_eq!(tasks(Names::Any, at).await, [2]);
}

// ---------------------------------------------------------------------------------------------
// Upgrades: a database written by the first schema (times in milliseconds, activities without
// name columns) is converted by migration 0002 when the store opens it.

const MS: i64 = 1_700_000_000_123;

/// Applies migration 0001 alone (from a copy of its file), then returns the statements that
/// write what a sidecar of that schema would have; `blob` is the engine's first placeholder.
async fn first_schema<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, engine: &str, blob: &str) -> [String; 2]
where
    DB::Connection: sqlx::migrate::Migrate,
{
    let dir = tempfile::tempdir().unwrap();
    let first = format!("{}/src/store/{engine}/migrations/0001_init.sql", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(first, dir.path().join("0001_init.sql")).unwrap();
    sqlx::migrate::Migrator::new(dir.path()).await.unwrap().run(pool).await.unwrap();
    [
        format!(
            "INSERT INTO instances (instance_id, name, execution_id, status, created_at, updated_at, completed_at) \
             VALUES ('old', 'Old', 'e1', 1, {MS}, {MS}, {})",
            MS + 1
        ),
        format!("INSERT INTO activities (instance_id, execution_id, task_id, request, visible_at) VALUES ('old', 'e1', 3, {blob}, {MS})"),
    ]
}

fn legacy_request() -> Vec<u8> {
    let request = ActivityRequest {
        name: "Legacy".into(),
        task_id: 3,
        ..Default::default()
    };
    prost::Message::encode_to_vec(&request)
}

async fn check_upgraded(store: &dyn Store) {
    let got = store.get_instance("old").await.unwrap().expect("the old instance");
    assert_eq!((got.created_at, got.updated_at), (MS * 1000, MS * 1000));
    assert_eq!(got.completed_at, Some((MS + 1) * 1000));
    let at = MS * 1000;
    assert!(
        store
            .lock_activities(&lease("w", at - 1), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty(),
        "not yet visible"
    );
    // Its name is not a column: it is leased whatever the filter, for the dispatcher to check.
    let nobody = Names::Only(Default::default());
    let leased = store.lock_activities(&lease("w", at), 10, &nobody).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].task.request.name, "Legacy");
}

#[tokio::test]
async fn sqlite_upgrade_converts_millisecond_times() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let [instance, activity] = first_schema(&pool, "sqlite", "?1").await;
    sqlx::query(sqlx::AssertSqlSafe(instance)).execute(&pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(activity))
        .bind(legacy_request())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = store::open(&url, &options()).await.unwrap();
    check_upgraded(&*store).await;
}

#[tokio::test]
async fn postgres_upgrade_converts_millisecond_times() {
    if !pg::available() {
        return;
    }
    let admin = pg::admin_url();
    let database = format!("upgrade_{}", uuid::Uuid::new_v4().simple());
    pg::create_database(&admin, &database).await;
    let url = pg::with_database(&admin, &database);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let [instance, activity] = first_schema(&pool, "postgres", "$1").await;
    sqlx::query(sqlx::AssertSqlSafe(instance)).execute(&pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(activity))
        .bind(legacy_request())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = store::open(&url, &options()).await.unwrap();
    check_upgraded(&*store).await;
    drop(store);
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(&mut conn)
        .await;
}

// ---------------------------------------------------------------------------------------------
// Entities: state, queue and lock persistence.

async fn signal(store: &dyn Store, entity: &str, op: &str, at: Micros) {
    let m = entities::signal(entity, format!("req-{op}"), op.into(), Some("1".into()), None, Some(at), at);
    assert_eq!(store.send(m).await.unwrap(), Delivery::Queued);
}

async fn lock_entity(store: &dyn Store, owner: &str, now: Micros) -> LockedEntity {
    let mut items = store.lock_entities(&lease(owner, now), 10).await.unwrap();
    assert_eq!(items.len(), 1, "expected exactly one entity work item");
    items.pop().unwrap()
}

fn entity_commit(item: &LockedEntity, state: Option<&str>, now: Micros) -> EntityCommit {
    EntityCommit {
        instance_id: item.entity.instance_id.clone(),
        state: state.map(str::to_string),
        lock: item.entity.lock.clone(),
        consumed: item.queue.iter().map(|(id, _)| *id).collect(),
        deferred: vec![],
        messages: vec![],
        starts: vec![],
        now,
    }
}

async fn write_entity(store: &dyn Store, token: &str, commit: EntityCommit) -> Result<Vec<String>, StoreError> {
    let write = Write::EntityStep {
        token: token.into(),
        commit,
    };
    store.write(&[write]).await.unwrap().pop().unwrap().map(|w| w.changed)
}

fn all_entities(transient: bool) -> EntityListFilter {
    EntityListFilter {
        include_transient: transient,
        limit: 100,
        ..Default::default()
    }
}

async fn entity_messages_are_queued_and_leased_with_their_entity(h: &Harness) {
    let s = &*h.store;
    signal(s, "@c@1", "add", T0).await;
    signal(s, "@c@1", "sub", T0).await;
    let found = s.get_entity("@c@1").await.unwrap().expect("the entity row exists once messaged");
    assert_eq!((found.entity.state.clone(), found.backlog), (None, 2));

    let item = lock_entity(s, "w1", T0).await;
    assert_eq!(item.queue.len(), 2);
    assert!(item.queue[0].0 < item.queue[1].0, "the queue is in arrival order");
    assert!(s.lock_entities(&lease("w2", T0), 10).await.unwrap().is_empty(), "leased once");
    // The lease runs out; another worker takes it over and the old token can write nothing.
    let again = lock_entity(s, "w2", T0 + LEASE + 1).await;
    assert_ne!(again.token, item.token);
    let stale = write_entity(s, &item.token, entity_commit(&item, Some("99"), T0 + LEASE + 2)).await;
    assert!(matches!(stale, Err(StoreError::LeaseLost)), "{stale:?}");
    write_entity(s, &again.token, entity_commit(&again, Some("5"), T0 + LEASE + 3))
        .await
        .unwrap();
    let found = s.get_entity("@c@1").await.unwrap().unwrap();
    assert_eq!(found.entity.state.as_deref(), Some("5"));
    assert_eq!(found.entity.last_modified, T0 + LEASE + 3);
    assert_eq!(found.backlog, 0);
    assert!(
        s.lock_entities(&lease("w3", T0 + LEASE + 4), 10).await.unwrap().is_empty(),
        "nothing left to run"
    );
}

async fn an_entity_step_commits_state_results_signals_and_starts_together(h: &Harness) {
    let s = &*h.store;
    create(s, "caller", T0).await;
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![], T0).await.unwrap();
    signal(s, "@c@1", "add", T0).await;
    let item = lock_entity(s, "w", T0 + 1).await;
    let mut commit = entity_commit(&item, Some("7"), T0 + 2);
    commit.messages.push(Message {
        instance_id: "caller".into(),
        execution_id: None,
        event: outrigger::engine::events::event(
            -1,
            T0 + 2,
            history_event::EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
                request_id: "r1".into(),
                output: Some("7".into()),
            }),
        ),
        visible_at: T0 + 2,
        priority: Message::NORMAL,
    });
    commit
        .messages
        .push(entities::signal("@other@x", "r2".into(), "ping".into(), None, None, None, T0 + 2));
    let spec = StartSpec {
        instance_id: "from-entity".into(),
        name: "Started".into(),
        execution_id: "fe-1".into(),
        ..Default::default()
    };
    commit.starts.push(engine::new_instance(spec, T0 + 2));
    write_entity(s, &item.token, commit).await.unwrap();

    let mut ready = s.lock_orchestrations(&lease("w", T0 + 3), 10, &Names::Any).await.unwrap();
    ready.sort_by(|a, b| a.instance.instance_id.cmp(&b.instance.instance_id));
    assert_eq!(
        ready.iter().map(|i| i.instance.instance_id.as_str()).collect::<Vec<_>>(),
        ["caller", "from-entity"]
    );
    let caller = &ready[0];
    assert!(caller.inbox.iter().any(|(_, m)| matches!(&m.event.event_type,
        Some(history_event::EventType::EntityOperationCompleted(c)) if c.request_id == "r1")));
    let other = lock_entity(s, "w", T0 + 3).await;
    assert_eq!(other.entity.instance_id, "@other@x");
    let started = s
        .get_instance("from-entity")
        .await
        .unwrap()
        .expect("the entity started an orchestration");
    assert_eq!(started.name, "Started");
}

async fn deferred_entity_messages_wait_for_a_new_message(h: &Harness) {
    let s = &*h.store;
    signal(s, "@c@1", "add", T0).await;
    let item = lock_entity(s, "w", T0).await;
    let mut commit = entity_commit(&item, Some("1"), T0 + 1);
    commit.deferred = std::mem::take(&mut commit.consumed);
    commit.lock = Some(EntityLock {
        owner: "holder".into(),
        critical_section_id: "cs".into(),
    });
    write_entity(s, &item.token, commit).await.unwrap();
    assert!(
        s.lock_entities(&lease("w", T0 + 2), 10).await.unwrap().is_empty(),
        "deferred rows do not wake it"
    );
    assert_eq!(s.get_entity("@c@1").await.unwrap().unwrap().backlog, 1);
    signal(s, "@c@1", "more", T0 + 3).await;
    let item = lock_entity(s, "w", T0 + 4).await;
    assert_eq!(item.queue.len(), 2, "the deferred row comes back with the new one");
    assert_eq!(item.entity.lock.as_ref().map(|l| l.owner.as_str()), Some("holder"));
}

async fn entity_locks_persist_and_orphaned_ones_are_released(h: &Harness) {
    let s = &*h.store;
    create(s, "alive", T0).await;
    for (entity, owner) in [("@c@gone", "no-such-instance"), ("@c@alive", "alive")] {
        signal(s, entity, "x", T0).await;
        let item = lock_entity(s, "w", T0).await;
        let mut commit = entity_commit(&item, None, T0 + 1);
        commit.lock = Some(EntityLock {
            owner: owner.into(),
            critical_section_id: format!("cs-{owner}"),
        });
        write_entity(s, &item.token, commit).await.unwrap();
    }
    let gone = s.get_entity("@c@gone").await.unwrap().unwrap();
    assert_eq!(gone.entity.lock.map(|l| l.critical_section_id), Some("cs-no-such-instance".into()));
    assert_eq!(s.clean_entities(false, true).await.unwrap(), Cleaned { removed: 0, released: 1 });
    assert_eq!(s.get_entity("@c@gone").await.unwrap().unwrap().entity.lock, None);
    assert!(
        s.get_entity("@c@alive").await.unwrap().unwrap().entity.lock.is_some(),
        "a live holder keeps its lock"
    );
    // Unlocked, stateless and idle: an empty entity, which cleaning removes.
    assert_eq!(s.clean_entities(true, false).await.unwrap(), Cleaned { removed: 1, released: 0 });
    assert!(s.get_entity("@c@gone").await.unwrap().is_none());
    assert!(s.get_entity("@c@alive").await.unwrap().is_some());
}

async fn concurrent_lockers_never_share_an_entity(h: &Harness) {
    for i in 0..40 {
        signal(&*h.store, &format!("@c@{i:02}"), "add", T0).await;
    }
    let mut lockers = vec![];
    for n in 0..6 {
        let store = if n % 2 == 0 { h.store.clone() } else { h.peer().await };
        lockers.push(tokio::spawn(async move {
            let owner = format!("locker-{n}");
            let mut mine = vec![];
            loop {
                let items = store.lock_entities(&lease(&owner, T0), 5).await.unwrap();
                if items.is_empty() {
                    return mine;
                }
                mine.extend(items.into_iter().map(|i| i.entity.instance_id));
            }
        }));
    }
    let mut all = vec![];
    for l in lockers {
        all.extend(l.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an entity was leased twice: {all:?}");
    assert_eq!(all.len(), 40, "every entity was leased");
}

async fn entities_query_by_prefix_state_and_page(h: &Harness) {
    let s = &*h.store;
    for (i, id) in ["@a@1", "@a@2", "@a@3", "@b@1"].iter().enumerate() {
        signal(s, id, "set", T0).await;
        let item = lock_entity(s, "w", T0).await;
        write_entity(s, &item.token, entity_commit(&item, Some("s"), T0 + i as Micros))
            .await
            .unwrap();
    }
    signal(s, "@a@queued", "set", T0).await; // no state yet: transient
    let ids = |rows: Vec<store::EntitySummary>| rows.into_iter().map(|r| r.entity.instance_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.query_entities(&all_entities(false)).await.unwrap()),
        ["@a@1", "@a@2", "@a@3", "@b@1"]
    );
    assert_eq!(ids(s.query_entities(&all_entities(true)).await.unwrap()).len(), 5);
    let prefix = EntityListFilter {
        id_prefix: Some("@a@".into()),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(ids(s.query_entities(&prefix).await.unwrap()), ["@a@1", "@a@2"]);
    let next = EntityListFilter {
        after: Some("@a@2".into()),
        ..prefix.clone()
    };
    assert_eq!(ids(s.query_entities(&next).await.unwrap()), ["@a@3"]);
    let range = EntityListFilter {
        modified_from: Some(T0 + 1),
        modified_to: Some(T0 + 3),
        ..all_entities(false)
    };
    assert_eq!(ids(s.query_entities(&range).await.unwrap()), ["@a@2", "@a@3"]);
}

async fn purge_and_delete_all_remove_entities(h: &Harness) {
    let s = &*h.store;
    for id in ["@c@1", "@c@2"] {
        signal(s, id, "set", T0).await;
        let item = lock_entity(s, "w", T0).await;
        write_entity(s, &item.token, entity_commit(&item, Some("s"), T0)).await.unwrap();
    }
    assert_eq!(
        s.purge("@C@1", false).await.unwrap(),
        Purge::Deleted(1),
        "names are case-insensitive"
    );
    assert!(s.get_entity("@c@1").await.unwrap().is_none());
    assert_eq!(s.purge("@c@1", false).await.unwrap(), Purge::Deleted(0));
    signal(s, "@c@3", "set", T0).await;
    s.delete_all().await.unwrap();
    assert!(s.query_entities(&all_entities(true)).await.unwrap().is_empty());
    assert!(s.lock_entities(&lease("w", T0), 10).await.unwrap().is_empty());
}

async fn entity_leases_are_renewed_and_released_by_owner(h: &Harness) {
    let s = &*h.store;
    signal(s, "@c@1", "x", T0).await;
    signal(s, "@c@2", "x", T0).await;
    let one = s.lock_entities(&lease("one", T0), 1).await.unwrap();
    let _two = s.lock_entities(&lease("two", T0), 1).await.unwrap();
    s.renew_leases(&[one[0].token.clone()], T0 + 3 * LEASE).await.unwrap();
    // At T0 + 2 * LEASE only "two"'s lease has run out.
    let taken = s.lock_entities(&lease("three", T0 + 2 * LEASE), 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_ne!(taken[0].entity.instance_id, one[0].entity.instance_id);
    s.release_all(Some("one")).await.unwrap();
    let freed = s.lock_entities(&lease("four", T0 + 2 * LEASE), 10).await.unwrap();
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].entity.instance_id, one[0].entity.instance_id);
    // A released lease can still be told to go: it is refused, harmlessly.
    assert!(matches!(
        s.release_entity(&one[0].entity.instance_id, &one[0].token, 0).await,
        Err(StoreError::LeaseLost)
    ));
}

async fn listings_filter_sort_and_count_as_the_dashboard_asks(h: &Harness) {
    let s = &*h.store;
    let start = |id: &str, name: &str, at: Micros, parent: Option<&str>| {
        let spec = StartSpec {
            instance_id: id.into(),
            name: name.into(),
            version: None,
            input: None,
            execution_id: format!("{id}-e1"),
            scheduled_start: None,
            tags: BTreeMap::new(),
            parent: parent.map(|p| ParentInstanceInfo {
                task_scheduled_id: 0,
                name: None,
                version: None,
                orchestration_instance: Some(OrchestrationInstance {
                    instance_id: p.into(),
                    execution_id: Some(format!("{p}-e1")),
                }),
            }),
            parent_trace_context: None,
        };
        engine::new_instance(spec, at)
    };
    for (id, name, at, parent) in [
        ("a-1", "Alpha", T0, None),
        ("a-2", "Alpha", T0 + 1, None),
        ("b-1", "Beta", T0 + 2, None),
        ("b-2", "Beta", T0 + 3, Some("a-1")),
    ] {
        s.create_instance(start(id, name, at, parent), &[]).await.unwrap();
    }
    // a-2 completes at T0 + 10 with a custom status; b-1 completes at T0 + 5.
    for (id, at, custom) in [("b-1", T0 + 5, None), ("a-2", T0 + 10, Some("\"Shipped 50%_OK\""))] {
        let item = s.lock_orchestrations(&lease("w", at), 10, &Names::Any).await.unwrap();
        for item in item {
            let ours = item.instance.instance_id == id;
            let token = item.token.clone();
            if !ours {
                s.release_orchestration(&item.instance.instance_id, &token, &[], 0).await.unwrap();
                continue;
            }
            let Prepared::Run { new_events, consumed } = engine::prepare(&item.instance, &item.history, &item.inbox, at) else {
                panic!("{id} has nothing to run");
            };
            let response = Response {
                actions: vec![complete(0, "\"done\"")],
                custom_status: custom.map(str::to_string),
                ..Default::default()
            };
            let commit = engine::apply(&item.instance, &item.history, &new_events, response, at, &mut || "x".into());
            s.commit_orchestration(&token, &consumed, commit, at).await.unwrap();
        }
    }
    let ids = |rows: Vec<outrigger::model::Instance>| rows.into_iter().map(|i| i.instance_id).collect::<Vec<_>>();
    let list = |f: InstanceFilter| async move { ids(s.query(&InstanceFilter { limit: 100, ..f }).await.unwrap()) };

    assert_eq!(
        list(InstanceFilter {
            descending: true,
            ..Default::default()
        })
        .await,
        ["b-2", "b-1", "a-2", "a-1"]
    );
    assert_eq!(
        list(InstanceFilter {
            top_level_only: true,
            ..Default::default()
        })
        .await,
        ["a-1", "a-2", "b-1"]
    );
    assert_eq!(
        list(InstanceFilter {
            name: Some("Beta".into()),
            ..Default::default()
        })
        .await,
        ["b-1", "b-2"]
    );
    // Contains, ignoring case; % and _ are literal.
    for text in ["shipped 50%_ok", "50%_"] {
        let f = InstanceFilter {
            custom_status: Some(text.into()),
            ..Default::default()
        };
        assert_eq!(list(f).await, ["a-2"], "custom status contains {text}");
    }
    assert!(
        list(InstanceFilter {
            custom_status: Some("50%x".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let completed_window = InstanceFilter {
        completed_from: Some(T0 + 4),
        completed_to: Some(T0 + 6),
        ..Default::default()
    };
    assert_eq!(list(completed_window).await, ["b-1"]);
    // By completion: finished instances only.
    assert_eq!(
        list(InstanceFilter {
            sort: SortKey::Completed,
            descending: true,
            ..Default::default()
        })
        .await,
        ["a-2", "b-1"]
    );
    // By name, then creation; paging resumes after the last row's (name, created, id).
    let by_name = InstanceFilter {
        sort: SortKey::Name,
        descending: true,
        limit: 3,
        ..Default::default()
    };
    let first = s.query(&by_name).await.unwrap();
    assert_eq!(ids(first.clone()), ["b-2", "b-1", "a-2"]);
    let last = first.last().unwrap();
    let rest = InstanceFilter {
        after: Some((last.created_at, last.instance_id.clone())),
        after_name: Some(last.name.clone()),
        ..by_name
    };
    assert_eq!(ids(s.query(&rest).await.unwrap()), ["a-1"]);

    let mut counts = s.count_by_status(&InstanceFilter::default()).await.unwrap();
    counts.sort_by_key(|(st, _)| *st as i32);
    assert_eq!(counts, [(OrchestrationStatus::Completed, 2), (OrchestrationStatus::Pending, 2)]);
    let top = s
        .count_by_status(&InstanceFilter {
            top_level_only: true,
            name: Some("Beta".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(top, [(OrchestrationStatus::Completed, 1)]);
}

/// A rerun's instance: row, history and reissued activity appear together, and an id that is
/// taken in any status is refused with nothing written.
async fn a_prepared_instance_is_created_whole(h: &Harness) {
    let s = &*h.store;
    create(s, "src", T0).await;
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![schedule_task(0)], T0).await.unwrap();
    let activity = s.lock_activities(&lease("w", T0), 10, &Names::Any).await.unwrap().pop().unwrap();
    let result = engine::events::task_result(T0, 0, Some("\"ok\"".into()), None);
    s.complete_activity(activity.id, &activity.token, result, T0).await.unwrap();
    let item = lock_one(s, "w", T0).await;
    step(s, item, vec![complete(1, "\"done\"")], T0).await.unwrap();

    let source = s.get_instance("src").await.unwrap().unwrap();
    let history = s.history("src").await.unwrap();
    let request = RerunRequest {
        event_id: 0,
        new_instance_id: "copy".into(),
        ..Default::default()
    };
    let commit = rerun::rerun(&source, &history, &request, T0 + 1, &mut || "copy-e1".into()).unwrap();
    let expected = match &commit.history {
        outrigger::model::HistoryWrite::Replace(events) => events.clone(),
        other => panic!("{other:?}"),
    };
    let changed = s.create_with_history(commit.clone(), T0 + 1).await.unwrap();
    assert!(changed.contains(&"copy".to_string()));

    let copy = s.get_instance("copy").await.unwrap().expect("created");
    assert_eq!((copy.status, copy.execution_id.as_str()), (OrchestrationStatus::Running, "copy-e1"));
    assert_eq!(s.history("copy").await.unwrap(), expected);
    let again = s.lock_activities(&lease("w", T0 + 1), 10, &Names::Any).await.unwrap();
    assert_eq!(again.len(), 1, "the activity is queued again");
    assert_eq!(
        (
            again[0].task.instance_id.as_str(),
            again[0].task.execution_id.as_str(),
            again[0].task.request.task_id
        ),
        ("copy", "copy-e1", 0)
    );
    assert!(
        s.lock_orchestrations(&lease("w", T0 + 1), 10, &Names::Any)
            .await
            .unwrap()
            .is_empty(),
        "nothing to run until the activity answers"
    );

    // Taken ids: the running copy and the finished source.
    for taken in ["copy", "src"] {
        let mut c = commit.clone();
        c.instance.instance_id = taken.into();
        assert!(
            matches!(s.create_with_history(c, T0 + 2).await, Err(StoreError::AlreadyExists(..))),
            "{taken}"
        );
    }
    assert_eq!(s.history("src").await.unwrap(), history, "the source is untouched");
    assert_eq!(s.get_instance("copy").await.unwrap().unwrap().execution_id, "copy-e1");
}

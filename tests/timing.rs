//! Time-dependent behaviour: scheduled starts, durable timers and the deadlines of the
//! WaitForInstance* calls. Nothing here sleeps: scheduled starts and timers run on virtual time
//! (the test moves the sidecar's clock past the due time), the times the sidecar stamped are
//! compared with the times asked for, and waits are bounded by gRPC deadlines. The deadline
//! tests run on real time: they are about when a call's own deadline ends it, raced against
//! tonic's enforcement of the same deadline.

mod common;

use std::time::Duration;

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::*;

#[tokio::test]
async fn scheduled_start_is_not_dispatched_before_its_time() {
    let time = VirtualTime::start();
    let sidecar = Sidecar::with(|o| time.options(o)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    let start_at = time.now_ms() + 2_000;
    let request = CreateInstanceRequest {
        instance_id: "later".into(),
        name: "Later".into(),
        scheduled_start_timestamp: Some(ts(start_at)),
        ..Default::default()
    };
    client.start_instance(request).await.expect("StartInstance");
    let state = get(&mut client, "later").await.expect("exists");
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Pending);
    assert_eq!(state.scheduled_start_timestamp.as_ref().map(ms), Some(start_at));

    time.advance(Duration::from_millis(2_000)).await;
    let (_, item) = worker.orchestration().await;
    let arrived = time.now_ms();
    assert!(
        arrived >= start_at,
        "dispatched {} ms before its scheduled start",
        start_at - arrived
    );
    assert_eq!(item.instance_id, "later");
    assert_eq!(kinds(&item.new_events), ["OrchestratorStarted", "ExecutionStarted"]);
    let started_at = ms(item.new_events[0].timestamp.as_ref().expect("OrchestratorStarted timestamp"));
    assert!(
        started_at >= start_at,
        "OrchestratorStarted at {started_at}, scheduled for {start_at}"
    );
    let started = execution_started(&item.new_events[1]);
    assert_eq!(started.scheduled_start_timestamp.as_ref().map(ms), Some(start_at));
    // Still PENDING: the worker has it but has not answered.
    assert_eq!(status_of(&mut client, "later").await, OrchestrationStatus::Pending);
}

#[tokio::test]
async fn timer_fires_no_earlier_than_fire_at() {
    let time = VirtualTime::start();
    let sidecar = Sidecar::with(|o| time.options(o)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "timed", "Timer", None).await;
    let (token, _) = worker.orchestration().await;

    let fire_at = time.now_ms() + 1_000;
    complete_orchestrator(&mut client, &token, "timed", vec![create_timer(7, fire_at)])
        .await
        .expect("create timer");

    time.advance(Duration::from_millis(1_000)).await;
    let (_, item) = worker.orchestration().await;
    let arrived = time.now_ms();
    assert!(arrived >= fire_at, "timer fired {} ms early", fire_at - arrived);
    // The sidecar's own record of when it ran the step that the timer woke.
    let started_at = ms(item.new_events[0].timestamp.as_ref().expect("OrchestratorStarted timestamp"));
    assert!(started_at >= fire_at, "OrchestratorStarted at {started_at}, timer due at {fire_at}");
    let created = item
        .past_events
        .iter()
        .find(|e| matches!(e.event_type, Some(EventType::TimerCreated(_))))
        .unwrap_or_else(|| panic!("pastEvents hold TimerCreated: {:?}", kinds(&item.past_events)));
    assert_eq!(created.event_id, 7);
    assert_eq!(kinds(&item.new_events), ["OrchestratorStarted", "TimerFired"]);
    match &item.new_events[1].event_type {
        Some(EventType::TimerFired(fired)) => {
            assert_eq!(fired.timer_id, 7, "timerId is the createTimer action's id");
            assert_eq!(fired.fire_at.as_ref().map(ms), Some(fire_at));
        }
        other => panic!("expected TimerFired, got {other:?}"),
    }
}

/// A timer due a moment after the step that makes it: the dispatch loop may get to that
/// step's wake-up only once the clock has passed the timer, and must fire it then, not at the
/// next sweep. On real time (the race is between the commit and the loop reading the clock),
/// with the sweep a minute away so that a timer it missed cannot be found by the sweep within
/// the worker's guard. Many timers, a millisecond or two ahead each, so that some fall due
/// inside that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_before_the_loop_gets_to_its_step_still_fires() {
    let sidecar = Sidecar::with(|o| o.dispatch.sweep_interval = Duration::from_secs(60)).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    for i in 0..60 {
        let id = format!("soon-{i}");
        start(&mut client, &id, "Soon", None).await;
        let (token, _) = worker.orchestration().await;
        let fire_at = now_ms() + 1 + i64::from(i % 2);
        complete_orchestrator(&mut client, &token, &id, vec![create_timer(1, fire_at)])
            .await
            .expect("create timer");
        let (token, item) = worker.orchestration().await;
        assert_eq!(item.instance_id, id);
        assert_eq!(kinds(&item.new_events), ["OrchestratorStarted", "TimerFired"], "{id}");
        let done = complete(2, OrchestrationStatus::Completed, "\"done\"");
        complete_orchestrator(&mut client, &token, &id, vec![done]).await.expect("complete");
    }
}

/// A WaitForInstance* request with a gRPC deadline.
fn with_deadline(instance_id: &str, deadline: Duration) -> tonic::Request<GetInstanceRequest> {
    let mut request = tonic::Request::new(GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs: false,
    });
    request.set_timeout(deadline);
    request
}

/// Starts "busy" and runs its first step, so it is RUNNING and will stay so (the worker holds
/// its activity and never answers).
async fn running_instance(sidecar: &Sidecar, worker: &mut Worker) {
    let mut client = sidecar.client.clone();
    start(&mut client, "busy", "Busy", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "busy", vec![schedule_task(0, "Slow", "1")])
        .await
        .expect("step 1");
    worker.activity().await;
    assert_eq!(status_of(&mut client, "busy").await, OrchestrationStatus::Running);
}

#[tokio::test]
async fn waits_end_when_their_grpc_deadline_passes() {
    let sidecar = Sidecar::start().await;
    let mut worker = sidecar.worker().await;
    running_instance(&sidecar, &mut worker).await;
    start(&mut sidecar.client.clone(), "nobody-home", "Idle", Some("1")).await;
    worker.orchestration().await; // held and never answered: stays PENDING

    // Over a bare HTTP/2 connection: tonic's client would end the call itself at the deadline.
    let connection = raw::RawConnection::open(sidecar.addr).await;
    for (method, id) in [("WaitForInstanceCompletion", "busy"), ("WaitForInstanceStart", "nobody-home")] {
        let request = GetInstanceRequest {
            instance_id: id.into(),
            get_inputs_and_outputs: false,
        };
        let (outcome, took) = timed(guarded(
            method,
            connection.unary::<_, GetInstanceResponse>(method, &request, Some("300m")),
        ))
        .await;
        assert!(
            outcome.is_err(),
            "{method} answered {outcome:?} though the instance never got there"
        );
        // The server answers a few milliseconds early on purpose, so that its precise
        // DEADLINE_EXCEEDED beats tonic's own CANCELLED at the deadline.
        assert!(
            took >= Duration::from_millis(270),
            "{method} ended after {took:?}, well before its deadline"
        );
        assert!(took < Duration::from_secs(3), "{method} ended only after {took:?}");
    }
    // The instances are unaffected.
    let mut client = sidecar.client.clone();
    assert_eq!(status_of(&mut client, "busy").await, OrchestrationStatus::Running);
    assert_eq!(status_of(&mut client, "nobody-home").await, OrchestrationStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_waits_answer_deadline_exceeded() {
    let sidecar = Sidecar::start().await;
    let mut worker = sidecar.worker().await;
    running_instance(&sidecar, &mut worker).await;
    start(&mut sidecar.client.clone(), "nobody-home", "Idle", Some("1")).await;
    worker.orchestration().await; // held and never answered: stays PENDING

    // The wrong answer comes from a race with the deadline, so ask many times, all at once.
    const CALLS: usize = 10;
    let connection = std::sync::Arc::new(raw::RawConnection::open(sidecar.addr).await);
    let mut calls = tokio::task::JoinSet::new();
    for (method, id) in [("WaitForInstanceCompletion", "busy"), ("WaitForInstanceStart", "nobody-home")] {
        for _ in 0..CALLS {
            let connection = connection.clone();
            let request = GetInstanceRequest {
                instance_id: id.into(),
                get_inputs_and_outputs: false,
            };
            calls.spawn(async move {
                let call = connection.unary::<_, GetInstanceResponse>(method, &request, Some("300m"));
                (method, guarded(method, call).await)
            });
        }
    }
    let mut wrong = vec![];
    while let Some(joined) = calls.join_next().await {
        match joined.expect("call task") {
            (_, Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {}
            (method, other) => wrong.push(format!("{method}: {:?}", other.map_err(|s| (s.code(), s.message().to_string())))),
        }
    }
    assert!(
        wrong.is_empty(),
        "a wait past its deadline must answer DEADLINE_EXCEEDED; {} of {} answered otherwise, e.g. {:?}",
        wrong.len(),
        2 * CALLS,
        wrong.first()
    );
}

#[tokio::test]
async fn wait_for_start_returns_once_a_worker_runs_the_instance() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    start(&mut client, "starting", "Starting", None).await;

    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move { waiter_client.wait_for_instance_start(with_deadline("starting", GUARD)).await });

    let mut worker = sidecar.worker().await;
    let (token, _) = worker.orchestration().await;
    assert!(
        !waiter.is_finished(),
        "WaitForInstanceStart answered while the instance was still PENDING"
    );
    complete_orchestrator(&mut client, &token, "starting", vec![schedule_task(0, "Work", "1")])
        .await
        .expect("step 1");

    let response = guarded("WaitForInstanceStart", waiter)
        .await
        .expect("waiter task")
        .expect("WaitForInstanceStart")
        .into_inner();
    assert!(response.exists);
    let state = response.orchestration_state.expect("state");
    assert_eq!(state.instance_id, "starting");
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Running);
}

#[tokio::test]
async fn wait_for_completion_returns_when_the_instance_completes() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "finishing", "Finishing", None).await;

    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move { wait_completion(&mut waiter_client, "finishing").await });
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(
        &mut client,
        &token,
        "finishing",
        vec![complete(0, OrchestrationStatus::Failed, "\"oops\"")],
    )
    .await
    .expect("fail it");
    let state = guarded("waiter", waiter).await.expect("waiter task");
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Failed);
}

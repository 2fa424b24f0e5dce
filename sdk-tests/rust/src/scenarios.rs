//! The scenarios: the Python suite's list where the Rust SDK has the feature, then the
//! Dapr-only behaviours (unique ids, routers, history RPCs, stateful history, the process
//! contract of a sidecar).

use std::time::Duration;

use dapr_durabletask::api::{DurableTaskError, OrchestrationState, OrchestrationStatus, PurgeInstanceFilter, RetryPolicy};
use dapr_durabletask::client::{ListInstanceIdsOptions, NewOrchestrationOptions, PurgeOptions, RerunOptions, TaskHubGrpcClient};
use dapr_durabletask::proto_public::history_event::EventType;
use dapr_durabletask::task::{ActivityContext, ActivityOptions, SubOrchestratorOptions, when_all, when_any};
use dapr_durabletask::worker::WorkerOptions;

use crate::{Outcome, Scenario, Sidecar, TIMEOUT, free_port, run_worker};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! scenario {
    ($name:ident) => {
        (stringify!($name), (|s| Box::pin($name(s))) as Scenario)
    };
}

pub fn all() -> Vec<(&'static str, Scenario)> {
    vec![
        scenario!(activity_sequence),
        scenario!(fan_out_fan_in_100_activities),
        scenario!(activity_failure_caught_by_orchestrator),
        scenario!(uncaught_activity_failure_fails_instance),
        scenario!(retry_policy_retries_until_success),
        scenario!(retry_policy_gives_up_after_max_attempts),
        scenario!(continue_as_new_counter),
        scenario!(event_raised_before_orchestrator_waits_for_it),
        scenario!(event_raised_before_instance_starts),
        scenario!(wait_for_event_times_out),
        scenario!(event_beats_the_timeout),
        scenario!(custom_status_visible_while_waiting),
        scenario!(history_read_back),
        scenario!(rerun_from_an_activity_runs_it_again),
        scenario!(missing_instance_has_no_state),
        scenario!(raise_event_to_missing_instance_is_an_error),
        scenario!(purge_completed_instance),
        scenario!(purging_running_instance_fails),
        scenario!(forced_purge_of_running_instance),
        scenario!(recursive_purge_removes_sub_orchestrations),
        scenario!(purge_by_filter),
        scenario!(list_instance_ids_pages),
        scenario!(scheduled_start),
        scenario!(pending_until_the_first_turn),
        scenario!(duplicate_id_of_running_instance_is_rejected),
        scenario!(id_of_finished_instance_is_reused_by_default),
        scenario!(enforce_unique_instance_id_rejects_finished),
        scenario!(sub_orchestrations_return_results_to_parent),
        scenario!(sub_orchestration_ids_are_assigned_by_the_sidecar),
        scenario!(sub_orchestration_failure_reaches_parent),
        scenario!(terminate_running_instance),
        scenario!(recursive_terminate_ends_child),
        scenario!(suspend_and_resume),
        scenario!(durable_timer_fires_and_time_advances),
        scenario!(routers_naming_this_app_are_accepted),
        scenario!(cross_app_routers_are_refused),
        scenario!(stateful_history_long_sequence),
        scenario!(stateless_worker_gets_full_history),
        scenario!(worker_reconnects_after_kill_9_on_same_port),
        scenario!(bind_failure_exits_non_zero),
    ]
}

// ---- helpers ----

fn status(state: &Option<OrchestrationState>) -> Option<OrchestrationStatus> {
    state.as_ref().map(|s| s.runtime_status)
}

async fn finished(client: &mut TaskHubGrpcClient, id: &str) -> Result<OrchestrationState, String> {
    client
        .wait_for_orchestration_completion(id, true, Some(TIMEOUT))
        .await
        .map_err(|e| format!("waiting for {id}: {e}"))?
        .ok_or_else(|| format!("{id} does not exist"))
}

async fn started(client: &mut TaskHubGrpcClient, id: &str) -> Result<OrchestrationState, String> {
    client
        .wait_for_orchestration_start(id, true, Some(TIMEOUT))
        .await
        .map_err(|e| format!("waiting for {id} to start: {e}"))?
        .ok_or_else(|| format!("{id} does not exist"))
}

async fn start(client: &mut TaskHubGrpcClient, name: &str, input: Option<&str>, id: Option<&str>) -> Result<String, String> {
    client
        .schedule_new_orchestration(name, input.map(str::to_string), id.map(str::to_string), None)
        .await
        .map_err(|e| format!("starting {name}: {e}"))
}

fn grpc_code(e: &DurableTaskError) -> Option<tonic::Code> {
    match e {
        DurableTaskError::GrpcError(s) => Some(s.code()),
        _ => None,
    }
}

/// Polls (the SDK has no change feed) until the instance shows `want`.
async fn until_status(client: &mut TaskHubGrpcClient, id: &str, want: OrchestrationStatus) -> Outcome {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = client.get_orchestration_state(id, false).await.map_err(|e| e.to_string())?;
        if status(&s) == Some(want) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {want:?} (last {:?})",
            status(&s)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn number(s: &Option<String>) -> i64 {
    s.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or(-1)
}

// ---- activities ----

async fn activity_sequence(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("sequence", |ctx| async move {
        let mut out = vec![];
        for city in ["Tokyo", "Seattle", "London"] {
            out.push(ctx.call_activity("hello", city).await?.unwrap_or_default());
        }
        ctx.set_custom_status("done");
        Ok(Some(serde_json::to_string(&out).unwrap()))
    });
    w.registry_mut()
        .add_named_activity("hello", |ctx: ActivityContext, input: Option<String>| async move {
            // The sidecar must carry the SDK's task execution id to the activity.
            if ctx.task_execution_id().is_empty() {
                return Err(DurableTaskError::Other("no task execution id".into()));
            }
            let name: String = serde_json::from_str(input.as_deref().unwrap_or("\"\"")).unwrap();
            Ok(Some(format!("Hello {name}!")))
        });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "sequence", None, Some("seq-1")).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.runtime_status == OrchestrationStatus::Completed,
        "status {:?}: {:?}",
        s.runtime_status,
        s.failure_details
    );
    let out: Vec<String> = serde_json::from_str(s.serialized_output.as_deref().unwrap_or("[]")).unwrap();
    ensure!(
        out == ["\"Hello Tokyo!\"", "\"Hello Seattle!\"", "\"Hello London!\""]
            || out == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"],
        "output {out:?}"
    );
    ensure!(
        s.serialized_custom_status.as_deref() == Some("\"done\"") || s.serialized_custom_status.as_deref() == Some("done"),
        "custom status {:?}",
        s.serialized_custom_status
    );
    ensure!(s.name == "sequence" && s.instance_id == "seq-1", "state {s:?}");
    Ok(())
}

async fn fan_out_fan_in_100_activities(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("fan", |ctx| async move {
        let tasks: Vec<_> = (0..100).map(|i| ctx.call_activity("square", i)).collect();
        let results = when_all(tasks).await?;
        let sum: i64 = results.iter().map(number).sum();
        Ok(Some(sum.to_string()))
    });
    w.registry_mut()
        .add_named_activity("square", |_ctx: ActivityContext, input: Option<String>| async move {
            let n = number(&input);
            Ok(Some((n * n).to_string()))
        });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "fan", None, None).await?;
    let s = finished(&mut c, &id).await?;
    let want: i64 = (0..100i64).map(|i| i * i).sum();
    ensure!(number(&s.serialized_output) == want, "sum {:?}, want {want}", s.serialized_output);
    Ok(())
}

fn failing_activity(w: &mut dapr_durabletask::worker::TaskHubGrpcWorker) {
    w.registry_mut()
        .add_named_activity("fails", |_ctx: ActivityContext, _input: Option<String>| async move {
            Err(DurableTaskError::Other("kaboom".into()))
        });
}

async fn activity_failure_caught_by_orchestrator(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("catcher", |ctx| async move {
        match ctx.call_activity("fails", ()).await {
            Ok(_) => Ok(Some("\"no failure\"".into())),
            Err(e) => Ok(Some(serde_json::to_string(&format!("caught: {e}")).unwrap())),
        }
    });
    failing_activity(&mut w);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "catcher", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Completed, "status {:?}", s.runtime_status);
    let out = s.serialized_output.unwrap_or_default();
    ensure!(out.contains("caught") && out.contains("kaboom"), "output {out}");
    Ok(())
}

async fn uncaught_activity_failure_fails_instance(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("thrower", |ctx| async move {
        ctx.call_activity("fails", ()).await?;
        Ok(None)
    });
    failing_activity(&mut w);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "thrower", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Failed, "status {:?}", s.runtime_status);
    let f = s.failure_details.ok_or("no failure details")?;
    ensure!(f.message.contains("kaboom"), "failure {f:?}");
    Ok(())
}

fn flaky(w: &mut dapr_durabletask::worker::TaskHubGrpcWorker, succeed_on: u32) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = calls.clone();
    w.registry_mut()
        .add_named_activity("flaky", move |_ctx: ActivityContext, _input: Option<String>| {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move {
                if n >= succeed_on {
                    Ok(Some(n.to_string()))
                } else {
                    Err(DurableTaskError::Other(format!("attempt {n} fails")))
                }
            }
        });
    calls
}

async fn retry_policy_retries_until_success(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("retrying", |ctx| async move {
        let policy = RetryPolicy::new(5, Duration::from_millis(100));
        let r = ctx
            .call_activity_with_options("flaky", (), ActivityOptions::new().with_retry_policy(policy))
            .await?;
        Ok(r)
    });
    let calls = flaky(&mut w, 3);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "retrying", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.runtime_status == OrchestrationStatus::Completed,
        "status {:?} {:?}",
        s.runtime_status,
        s.failure_details
    );
    ensure!(number(&s.serialized_output) == 3, "output {:?}", s.serialized_output);
    ensure!(calls.load(std::sync::atomic::Ordering::SeqCst) == 3, "calls {calls:?}");
    Ok(())
}

async fn retry_policy_gives_up_after_max_attempts(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("giving_up", |ctx| async move {
        let policy = RetryPolicy::new(3, Duration::from_millis(50));
        ctx.call_activity_with_options("flaky", (), ActivityOptions::new().with_retry_policy(policy))
            .await?;
        Ok(None)
    });
    let calls = flaky(&mut w, 100);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "giving_up", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Failed, "status {:?}", s.runtime_status);
    ensure!(calls.load(std::sync::atomic::Ordering::SeqCst) == 3, "calls {calls:?}");
    Ok(())
}

// ---- continue-as-new, events, timers ----

async fn continue_as_new_counter(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("counter", |ctx| async move {
        let n: i64 = ctx.input()?;
        if n < 5 {
            ctx.continue_as_new(n + 1, true);
            return Ok(None);
        }
        Ok(Some(n.to_string()))
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "counter", Some("0"), None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Completed, "status {:?}", s.runtime_status);
    ensure!(number(&s.serialized_output) == 5, "output {:?}", s.serialized_output);
    ensure!(s.serialized_input.as_deref() == Some("5"), "input {:?}", s.serialized_input);
    Ok(())
}

fn approval(w: &mut dapr_durabletask::worker::TaskHubGrpcWorker, timeout: Duration) {
    w.registry_mut().add_named_orchestrator("approval", move |ctx| async move {
        let event = ctx.wait_for_external_event("approve");
        let timer = ctx.create_timer(timeout);
        let winner = when_any(vec![event, timer]).await?;
        Ok(Some(if winner == 0 {
            "\"approved\"".to_string()
        } else {
            "\"timed out\"".to_string()
        }))
    });
}

async fn event_raised_before_orchestrator_waits_for_it(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("late_waiter", |ctx| async move {
        ctx.create_timer(Duration::from_millis(500)).await?;
        let v = ctx.wait_for_external_event("go").await?;
        Ok(v)
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "late_waiter", None, None).await?;
    started(&mut c, &id).await?;
    c.raise_orchestration_event(&id, "go", Some("\"early\"".into()))
        .await
        .map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.serialized_output.as_deref() == Some("\"early\""),
        "output {:?}",
        s.serialized_output
    );
    Ok(())
}

async fn event_raised_before_instance_starts(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "waiter", None, None).await?;
    // No worker yet: the event waits in the inbox with the start.
    c.raise_orchestration_event(&id, "go", Some("42".into()))
        .await
        .map_err(|e| e.to_string())?;
    let mut w = sidecar.worker();
    w.registry_mut()
        .add_named_orchestrator("waiter", |ctx| async move { ctx.wait_for_external_event("go").await });
    let _w = run_worker(w);
    let s = finished(&mut c, &id).await?;
    ensure!(number(&s.serialized_output) == 42, "output {:?}", s.serialized_output);
    Ok(())
}

async fn wait_for_event_times_out(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    approval(&mut w, Duration::from_millis(500));
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "approval", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.serialized_output.as_deref() == Some("\"timed out\""),
        "output {:?}",
        s.serialized_output
    );
    Ok(())
}

async fn event_beats_the_timeout(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    approval(&mut w, Duration::from_secs(60));
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "approval", None, None).await?;
    started(&mut c, &id).await?;
    c.raise_orchestration_event(&id, "approve", None).await.map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.serialized_output.as_deref() == Some("\"approved\""),
        "output {:?}",
        s.serialized_output
    );
    Ok(())
}

async fn custom_status_visible_while_waiting(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("status_setter", |ctx| async move {
        ctx.set_custom_status("waiting for go");
        ctx.wait_for_external_event("go").await?;
        Ok(None)
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "status_setter", None, None).await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = c.get_orchestration_state(&id, true).await.map_err(|e| e.to_string())?;
        if s.as_ref()
            .and_then(|s| s.serialized_custom_status.clone())
            .is_some_and(|c| c.contains("waiting for go"))
        {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "custom status never showed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.raise_orchestration_event(&id, "go", None).await.map_err(|e| e.to_string())?;
    finished(&mut c, &id).await?;
    Ok(())
}

async fn durable_timer_fires_and_time_advances(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("sleeper", |ctx| async move {
        let before = ctx.current_utc_datetime();
        ctx.create_timer(Duration::from_secs(1)).await?;
        let after = ctx.current_utc_datetime();
        Ok(Some((after - before).num_milliseconds().to_string()))
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "sleeper", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        number(&s.serialized_output) >= 1000,
        "orchestration time advanced {:?} ms",
        s.serialized_output
    );
    Ok(())
}

// ---- history and lookup ----

async fn history_read_back(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut()
        .add_named_orchestrator("one_call", |ctx| async move { ctx.call_activity("echo", "x").await });
    w.registry_mut()
        .add_named_activity("echo", |_ctx: ActivityContext, input: Option<String>| async move { Ok(input) });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "one_call", None, None).await?;
    finished(&mut c, &id).await?;
    let events = c.get_instance_history(&id).await.map_err(|e| e.to_string())?;
    let kinds: Vec<&'static str> = events
        .iter()
        .filter_map(|e| {
            Some(match e.event_type.as_ref()? {
                EventType::ExecutionStarted(_) => "started",
                EventType::TaskScheduled(t) if !t.task_execution_id.is_empty() => "scheduled",
                EventType::TaskCompleted(t) if !t.task_execution_id.is_empty() => "completed",
                EventType::ExecutionCompleted(_) => "finished",
                _ => return None,
            })
        })
        .collect();
    ensure!(
        kinds == ["started", "scheduled", "completed", "finished"],
        "history kinds {kinds:?} of {events:?}"
    );
    Ok(())
}

/// `twice` doubles 1 and then doubles the result (4); rerun from the second activity with the
/// input 10, the new instance runs only that activity again and ends with 20.
async fn rerun_from_an_activity_runs_it_again(sidecar: Sidecar) -> Outcome {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("twice", |ctx| async move {
        let first = ctx.call_activity("double", 1).await?;
        ctx.call_activity("double", number(&first)).await
    });
    let counted = calls.clone();
    w.registry_mut()
        .add_named_activity("double", move |_ctx: ActivityContext, input: Option<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Some((number(&input) * 2).to_string())) }
        });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let source = start(&mut c, "twice", None, Some("twice-1")).await?;
    let s = finished(&mut c, &source).await?;
    ensure!(number(&s.serialized_output) == 4, "source output {:?}", s.serialized_output);
    let events = c.get_instance_history(&source).await.map_err(|e| e.to_string())?;
    let second = events
        .iter()
        .filter(|e| matches!(e.event_type, Some(EventType::TaskScheduled(_))))
        .nth(1)
        .ok_or("no second TaskScheduled")?
        .event_id;

    let options = RerunOptions::new()
        .with_new_instance_id("twice-again")
        .with_input(Some("10".into()));
    let id = c
        .rerun_orchestration_from_event(&source, second as u32, options)
        .await
        .map_err(|e| format!("rerun: {e}"))?;
    ensure!(id == "twice-again", "new instance id {id}");
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.runtime_status == OrchestrationStatus::Completed && number(&s.serialized_output) == 20,
        "rerun instance {:?} output {:?}: {:?}",
        s.runtime_status,
        s.serialized_output,
        s.failure_details
    );
    ensure!(
        calls.load(Ordering::SeqCst) == 3,
        "activity calls {} (2 + the rerun one)",
        calls.load(Ordering::SeqCst)
    );
    let events = c.get_instance_history(&id).await.map_err(|e| e.to_string())?;
    let marked = events.iter().any(|e| {
        matches!(&e.event_type, Some(EventType::TaskScheduled(t))
            if t.rerun_parent_instance_info.as_ref().is_some_and(|p| p.instance_id == source))
    });
    ensure!(marked, "no TaskScheduled marked as rerun from {source}: {events:?}");

    // The new id is taken now; a second rerun to it is refused.
    let again = c
        .rerun_orchestration_from_event(&source, second as u32, RerunOptions::new().with_new_instance_id("twice-again"))
        .await;
    ensure!(
        again.as_ref().err().and_then(grpc_code) == Some(tonic::Code::AlreadyExists),
        "rerun to a taken id: {again:?}"
    );
    Ok(())
}

async fn missing_instance_has_no_state(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let s = c.get_orchestration_state("nobody-home", true).await.map_err(|e| e.to_string())?;
    ensure!(s.is_none(), "state of an unknown instance: {s:?}");
    Ok(())
}

async fn raise_event_to_missing_instance_is_an_error(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let e = c.raise_orchestration_event("nobody-home", "go", None).await;
    ensure!(
        e.as_ref().err().and_then(grpc_code) == Some(tonic::Code::NotFound),
        "raise to unknown: {e:?}"
    );
    Ok(())
}

// ---- purge and list ----

async fn one_activity_worker(sidecar: &Sidecar) -> crate::Running {
    let mut w = sidecar.worker();
    w.registry_mut()
        .add_named_orchestrator("quick", |_ctx| async move { Ok(Some("1".into())) });
    w.registry_mut()
        .add_named_orchestrator("forever", |ctx| async move { ctx.wait_for_external_event("never").await });
    w.registry_mut().add_named_orchestrator("parent_of_forever", |ctx| async move {
        ctx.call_sub_orchestrator("forever", (), Some(&format!("{}-child", ctx.instance_id())))
            .await
    });
    w.registry_mut().add_named_orchestrator("parent_of_quick", |ctx| async move {
        ctx.call_sub_orchestrator("quick", (), Some(&format!("{}-child", ctx.instance_id())))
            .await
    });
    run_worker(w)
}

async fn purge_completed_instance(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "quick", None, None).await?;
    finished(&mut c, &id).await?;
    let n = c.purge_orchestration(&id, false).await.map_err(|e| e.to_string())?;
    ensure!(n == 1, "purged {n}");
    let s = c.get_orchestration_state(&id, false).await.map_err(|e| e.to_string())?;
    ensure!(s.is_none(), "still there: {s:?}");
    Ok(())
}

async fn purging_running_instance_fails(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "forever", None, None).await?;
    started(&mut c, &id).await?;
    let e = c.purge_orchestration(&id, false).await;
    ensure!(e.is_err(), "purging a running instance: {e:?}");
    ensure!(
        status(&c.get_orchestration_state(&id, false).await.map_err(|e| e.to_string())?) == Some(OrchestrationStatus::Running),
        "not running any more"
    );
    Ok(())
}

async fn forced_purge_of_running_instance(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "forever", None, None).await?;
    started(&mut c, &id).await?;
    let n = c
        .purge_orchestration_with_options(&id, PurgeOptions::new().with_force(true))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(n == 1, "purged {n}");
    ensure!(
        c.get_orchestration_state(&id, false).await.map_err(|e| e.to_string())?.is_none(),
        "still there"
    );
    Ok(())
}

async fn recursive_purge_removes_sub_orchestrations(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "parent_of_quick", None, Some("rp")).await?;
    finished(&mut c, &id).await?;
    let n = c.purge_orchestration(&id, true).await.map_err(|e| e.to_string())?;
    ensure!(n == 2, "purged {n}");
    ensure!(
        c.get_orchestration_state("rp-child", false)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "child left"
    );
    Ok(())
}

async fn purge_by_filter(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let mut done = vec![];
    for i in 0..3 {
        let id = start(&mut c, "quick", None, Some(&format!("pf-{i}"))).await?;
        finished(&mut c, &id).await?;
        done.push(id);
    }
    let live = start(&mut c, "forever", None, Some("pf-live")).await?;
    started(&mut c, &live).await?;
    let filter = PurgeInstanceFilter::new().with_runtime_status([OrchestrationStatus::Completed]);
    let n = c.purge_orchestrations_by_filter(filter, false).await.map_err(|e| e.to_string())?;
    ensure!(n == 3, "purged {n}");
    ensure!(
        c.get_orchestration_state(&live, false).await.map_err(|e| e.to_string())?.is_some(),
        "live one purged"
    );
    Ok(())
}

async fn list_instance_ids_pages(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let mut want = vec![];
    for i in 0..5 {
        want.push(start(&mut c, "nobody_runs_this", None, Some(&format!("li-{i}"))).await?);
    }
    let mut seen = vec![];
    let mut token = None;
    for _ in 0..10 {
        let mut options = ListInstanceIdsOptions::new().with_page_size(2);
        if let Some(t) = token.take() {
            options = options.with_continuation_token(t);
        }
        let page = c.list_instance_ids(options).await.map_err(|e| e.to_string())?;
        ensure!(page.instance_ids.len() <= 2, "page of {}", page.instance_ids.len());
        seen.extend(page.instance_ids);
        token = page.continuation_token;
        if token.is_none() {
            break;
        }
    }
    seen.sort();
    ensure!(seen == want, "listed {seen:?}");
    Ok(())
}

// ---- start options ----

async fn scheduled_start(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let id = c
        .schedule_new_orchestration("quick", None, None, Some(at))
        .await
        .map_err(|e| e.to_string())?;
    let s = c.get_orchestration_state(&id, false).await.map_err(|e| e.to_string())?;
    ensure!(
        status(&s) == Some(OrchestrationStatus::Pending),
        "before its time: {:?}",
        status(&s)
    );
    let s = finished(&mut c, &id).await?;
    let ran_at = s.last_updated_at.ok_or("no update time")?;
    ensure!(ran_at >= at, "ran at {ran_at}, scheduled for {at}");
    Ok(())
}

async fn pending_until_the_first_turn(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "quick", None, None).await?;
    let s = c.get_orchestration_state(&id, false).await.map_err(|e| e.to_string())?;
    ensure!(status(&s) == Some(OrchestrationStatus::Pending), "with no worker: {:?}", status(&s));
    let _w = one_activity_worker(&sidecar).await;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Completed, "status {:?}", s.runtime_status);
    Ok(())
}

async fn duplicate_id_of_running_instance_is_rejected(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    start(&mut c, "forever", None, Some("dup")).await?;
    let e = c.schedule_new_orchestration("forever", None, Some("dup".into()), None).await;
    ensure!(
        e.as_ref().err().and_then(grpc_code) == Some(tonic::Code::AlreadyExists),
        "second start: {e:?}"
    );
    Ok(())
}

async fn id_of_finished_instance_is_reused_by_default(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    start(&mut c, "quick", None, Some("again")).await?;
    let first = finished(&mut c, "again").await?;
    start(&mut c, "quick", Some("2"), Some("again")).await?;
    let second = finished(&mut c, "again").await?;
    ensure!(
        second.serialized_input.as_deref() == Some("2"),
        "not restarted: {second:?} after {first:?}"
    );
    Ok(())
}

async fn enforce_unique_instance_id_rejects_finished(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    start(&mut c, "quick", None, Some("unique")).await?;
    finished(&mut c, "unique").await?;
    let e = c
        .schedule_new_orchestration_with_options(
            "quick",
            NewOrchestrationOptions::new()
                .with_instance_id("unique")
                .with_enforce_unique_instance_id(),
        )
        .await;
    match &e {
        Err(DurableTaskError::GrpcError(s)) if s.code() == tonic::Code::AlreadyExists => {
            ensure!(
                s.message().contains("orchestration instance already exists"),
                "message {}",
                s.message()
            )
        }
        other => return Err(format!("unique start over a finished instance: {other:?}")),
    }
    Ok(())
}

// ---- sub-orchestrations ----

async fn sub_orchestrations_return_results_to_parent(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("doubler", |ctx| async move {
        let n: i64 = ctx.input()?;
        Ok(Some((2 * n).to_string()))
    });
    w.registry_mut().add_named_orchestrator("parent", |ctx| async move {
        let tasks: Vec<_> = (1..=3).map(|i| ctx.call_sub_orchestrator("doubler", i, None)).collect();
        let r = when_all(tasks).await?;
        Ok(Some(r.iter().map(number).sum::<i64>().to_string()))
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "parent", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        number(&s.serialized_output) == 12,
        "output {:?} {:?}",
        s.serialized_output,
        s.failure_details
    );
    Ok(())
}

async fn sub_orchestration_ids_are_assigned_by_the_sidecar(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut()
        .add_named_orchestrator("leaf", |_ctx| async move { Ok(Some("1".into())) });
    w.registry_mut()
        .add_named_orchestrator("root", |ctx| async move { ctx.call_sub_orchestrator("leaf", (), None).await });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "root", None, Some("p")).await?;
    finished(&mut c, &id).await?;
    // <parent id>:<action id as 4 hex digits>, as the Dapr runtimes assign it.
    let child = c.get_orchestration_state("p:0000", false).await.map_err(|e| e.to_string())?;
    let child = child.ok_or("no child p:0000")?;
    ensure!(child.parent_instance_id.as_deref() == Some("p"), "child {child:?}");
    Ok(())
}

async fn sub_orchestration_failure_reaches_parent(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator(
        "bad_child",
        |_ctx| async move { Err(DurableTaskError::Other("child broke".into())) },
    );
    w.registry_mut().add_named_orchestrator("careful_parent", |ctx| async move {
        match ctx
            .call_sub_orchestrator_with_options("bad_child", (), SubOrchestratorOptions::new())
            .await
        {
            Ok(_) => Ok(Some("\"no failure\"".into())),
            Err(e) => Ok(Some(serde_json::to_string(&e.to_string()).unwrap())),
        }
    });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "careful_parent", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.serialized_output.as_deref().is_some_and(|o| o.contains("child broke")),
        "output {:?}",
        s.serialized_output
    );
    Ok(())
}

// ---- terminate, suspend ----

async fn terminate_running_instance(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "forever", None, None).await?;
    started(&mut c, &id).await?;
    c.terminate_orchestration(&id, Some("\"stop\"".into()), false)
        .await
        .map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(s.runtime_status == OrchestrationStatus::Terminated, "status {:?}", s.runtime_status);
    ensure!(
        s.serialized_output.as_deref() == Some("\"stop\""),
        "output {:?}",
        s.serialized_output
    );
    Ok(())
}

async fn recursive_terminate_ends_child(sidecar: Sidecar) -> Outcome {
    let _w = one_activity_worker(&sidecar).await;
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "parent_of_forever", None, Some("rt")).await?;
    until_status(&mut c, "rt-child", OrchestrationStatus::Running).await?;
    c.terminate_orchestration(&id, None, true).await.map_err(|e| e.to_string())?;
    let child = finished(&mut c, "rt-child").await?;
    ensure!(
        child.runtime_status == OrchestrationStatus::Terminated,
        "child {:?}",
        child.runtime_status
    );
    Ok(())
}

async fn suspend_and_resume(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut()
        .add_named_orchestrator("pausable", |ctx| async move { ctx.wait_for_external_event("go").await });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "pausable", None, None).await?;
    started(&mut c, &id).await?;
    c.suspend_orchestration(&id, Some("pause".into()))
        .await
        .map_err(|e| e.to_string())?;
    until_status(&mut c, &id, OrchestrationStatus::Suspended).await?;
    // An event raised while suspended waits until the resume.
    c.raise_orchestration_event(&id, "go", Some("7".into()))
        .await
        .map_err(|e| e.to_string())?;
    c.resume_orchestration(&id, Some("go on".into())).await.map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(number(&s.serialized_output) == 7, "output {:?}", s.serialized_output);
    Ok(())
}

// ---- Dapr-only ----

async fn routers_naming_this_app_are_accepted(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker();
    w.registry_mut().add_named_orchestrator("routed", |ctx| async move {
        // An activity routed to this same app.
        ctx.call_activity_with_options("echo", "r", ActivityOptions::new().with_app_id("this-app"))
            .await
    });
    w.registry_mut()
        .add_named_activity("echo", |_ctx: ActivityContext, input: Option<String>| async move { Ok(input) });
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = c
        .schedule_new_orchestration_with_options("routed", NewOrchestrationOptions::new().with_app_id("this-app"))
        .await
        .map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        s.runtime_status == OrchestrationStatus::Completed,
        "status {:?} {:?}",
        s.runtime_status,
        s.failure_details
    );
    ensure!(s.serialized_output.as_deref() == Some("\"r\""), "output {:?}", s.serialized_output);
    Ok(())
}

async fn cross_app_routers_are_refused(sidecar: Sidecar) -> Outcome {
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "anything", None, None).await?;
    let e = c
        .get_orchestration_state_with_options(&id, dapr_durabletask::client::FetchOptions::new().with_app_id("other-app"))
        .await;
    // The sidecar runs as app "this-app" (see main.rs).
    ensure!(
        e.as_ref().err().and_then(grpc_code) == Some(tonic::Code::FailedPrecondition),
        "cross-app read: {e:?}"
    );
    Ok(())
}

fn long_sequence(w: &mut dapr_durabletask::worker::TaskHubGrpcWorker) {
    w.registry_mut().add_named_orchestrator("long", |ctx| async move {
        let mut total = 0;
        for i in 0..20 {
            total += number(&ctx.call_activity("id", i).await?);
        }
        Ok(Some(total.to_string()))
    });
    w.registry_mut()
        .add_named_activity("id", |_ctx: ActivityContext, input: Option<String>| async move { Ok(input) });
}

async fn stateful_history_long_sequence(sidecar: Sidecar) -> Outcome {
    // Stateful history is the SDK's default: turns after the first carry only new history.
    let mut w = sidecar.worker();
    long_sequence(&mut w);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "long", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(
        number(&s.serialized_output) == 190,
        "output {:?} {:?}",
        s.serialized_output,
        s.failure_details
    );
    Ok(())
}

async fn stateless_worker_gets_full_history(sidecar: Sidecar) -> Outcome {
    let mut w = sidecar.worker_with(WorkerOptions::new().with_stateful_history_disabled());
    long_sequence(&mut w);
    let _w = run_worker(w);
    let mut c = sidecar.client().await?;
    let id = start(&mut c, "long", None, None).await?;
    let s = finished(&mut c, &id).await?;
    ensure!(number(&s.serialized_output) == 190, "output {:?}", s.serialized_output);
    Ok(())
}

// ---- the process contract ----

async fn worker_reconnects_after_kill_9_on_same_port(sidecar: Sidecar) -> Outcome {
    drop(sidecar); // this scenario runs its own, on a file store that outlives the process
    let dir = std::env::temp_dir().join(format!("outrigger-rust-sdk-{}", free_port()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}/hub.db", dir.display());
    let port = free_port();
    let mut first = Sidecar::start(port, &url).await?;
    let mut w = first.worker();
    w.registry_mut()
        .add_named_orchestrator("waits", |ctx| async move { ctx.wait_for_external_event("go").await });
    w.registry_mut()
        .add_named_orchestrator("quick", |_ctx| async move { Ok(Some("1".into())) });
    let _w = run_worker(w);
    let mut c = first.client().await?;
    let id = start(&mut c, "waits", None, Some("survivor")).await?;
    started(&mut c, &id).await?;
    first.kill();
    // Straight back on the same port, as the SDK's own tests restart a sidecar.
    let second = Sidecar::start(port, &url).await?;
    let mut c = second.client().await?;
    c.raise_orchestration_event(&id, "go", Some("5".into()))
        .await
        .map_err(|e| e.to_string())?;
    let s = finished(&mut c, &id).await?;
    ensure!(number(&s.serialized_output) == 5, "survivor output {:?}", s.serialized_output);
    let id = start(&mut c, "quick", None, None).await?;
    finished(&mut c, &id).await?;
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn bind_failure_exits_non_zero(sidecar: Sidecar) -> Outcome {
    // The port is taken by the running sidecar.
    let status = tokio::process::Command::new(crate::bin())
        .args([
            "--host",
            "127.0.0.1",
            "--dapr-port",
            &sidecar.port.to_string(),
            "--database-url",
            "sqlite::memory:",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let status = tokio::time::timeout(TIMEOUT, status)
        .await
        .map_err(|_| "a sidecar on a taken port did not exit".to_string())?
        .map_err(|e| e.to_string())?;
    ensure!(!status.success(), "exit status {status}");
    Ok(())
}

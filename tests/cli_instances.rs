//! `outrigger instances ...`: the binary run against a sidecar on a real socket, its output
//! (tables and `--output json` parsed back) and its exit codes.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::*;
use serde_json::Value;

/// Runs the binary with `args` against `address`, off the async runtime.
async fn cli(address: &str, args: &[&str]) -> Output {
    let mut all = vec!["instances".to_string(), "--address".into(), address.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
            .args(&all)
            .env_remove("OUTRIGGER_ADDRESS")
            .env_remove("OUTRIGGER_TASK_HUB")
            .output()
            .expect("run outrigger")
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(o), stderr(o)))
}

fn addr(s: &Sidecar) -> String {
    s.addr.to_string()
}

#[tokio::test]
async fn start_list_and_show_print_tables_and_json() {
    let s = Sidecar::start().await;
    let a = addr(&s);
    let o = cli(&a, &["list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "INSTANCE ID  NAME  STATUS  CREATED  UPDATED\n", "an empty table");

    let o = cli(&a, &["start", "Order", "--id", "o-1", "--input", r#"{"qty": 2}"#, "--version", "3"]).await;
    assert_eq!((code(&o), stdout(&o)), (0, "o-1\n".to_string()), "{}", stderr(&o));
    let o = cli(&a, &["start", "Order"]).await;
    let generated = stdout(&o).trim().to_string();
    assert_eq!(generated.len(), 32, "a new id: {generated}");
    let o = cli(&a, &["-o", "json", "start", "Order", "--id", "o-3"]).await;
    assert_eq!(json(&o), serde_json::json!({"instanceId": "o-3"}));
    let state = get(&mut s.client.clone(), "o-1").await.expect("started");
    assert_eq!((state.name.as_str(), state.version.as_deref()), ("Order", Some("3")));
    assert_eq!(state.input.as_deref(), Some(r#"{"qty": 2}"#));

    let o = cli(&a, &["list"]).await;
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("INSTANCE ID"));
    assert!(
        lines[1].starts_with("o-1") && lines[1].contains("Order") && lines[1].contains("Pending"),
        "{lines:?}"
    );

    let o = cli(&a, &["-o", "json", "list", "--prefix", "o-"]).await;
    let body = json(&o);
    let ids: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instanceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o-1", "o-3"]);
    assert_eq!(body["continuationToken"], Value::Null);
    assert_eq!(body["instances"][0]["runtimeStatus"], "Pending");

    // Paging: --limit with the printed token, or --all.
    let o = cli(&a, &["list", "--limit", "2"]).await;
    let text = stdout(&o);
    let token = text
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("more: --page-token '"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or_else(|| panic!("a next-page hint: {text}"))
        .to_string();
    assert_eq!(text.lines().count(), 4, "header, two rows, the hint");
    let o = cli(&a, &["-o", "json", "list", "--limit", "2", "--page-token", &token]).await;
    assert_eq!(json(&o)["instances"].as_array().unwrap().len(), 1);
    let o = cli(&a, &["-o", "json", "list", "--limit", "1", "--all"]).await;
    assert_eq!(json(&o)["instances"].as_array().unwrap().len(), 3);
    let o = cli(&a, &["-o", "json", "list", "--status", "Completed,Failed"]).await;
    assert_eq!(json(&o)["instances"], serde_json::json!([]));

    let o = cli(&a, &["show", "o-1"]).await;
    let text = stdout(&o);
    assert!(
        text.starts_with("instance id    o-1\nname           Order\nstatus         Pending\n"),
        "{text}"
    );
    assert!(text.contains("input          {\"qty\": 2}\n"), "{text}");
    let o = cli(&a, &["-o", "json", "show", "o-1"]).await;
    let body = json(&o);
    assert_eq!(body["input"], serde_json::json!({"qty": 2}));
    assert_eq!(body["runtimeStatus"], "Pending");
}

#[tokio::test]
async fn exit_codes_tell_scripts_what_happened() {
    let s = Sidecar::start().await;
    let a = addr(&s);
    let o = cli(&a, &["show", "ghost"]).await;
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("no instance with id 'ghost'"), "{}", stderr(&o));
    assert_eq!(code(&cli(&a, &["history", "ghost"]).await), 3);
    assert_eq!(code(&cli(&a, &["raise", "ghost", "e"]).await), 3);
    assert_eq!(code(&cli(&a, &["terminate", "ghost"]).await), 3);
    assert_eq!(code(&cli(&a, &["purge", "ghost"]).await), 3);
    assert_eq!(code(&cli(&a, &["restart", "ghost"]).await), 3);

    assert_eq!(code(&cli(&a, &["start", "X", "--id", "busy"]).await), 0);
    let o = cli(&a, &["start", "X", "--id", "busy"]).await;
    assert_eq!(code(&o), 4, "a live id: {}", stderr(&o));
    assert_eq!(code(&cli(&a, &["purge", "busy"]).await), 4, "live instances are not purged");
    assert_eq!(code(&cli(&a, &["rewind", "busy"]).await), 4, "only failed instances rewind");
    assert_eq!(code(&cli(&a, &["restart", "busy"]).await), 4);

    // Usage errors: checked before anything is sent (2 even with no sidecar there).
    let o = cli("127.0.0.1:1", &["start", "X", "--input", "{not json"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--input is not valid JSON"), "{}", stderr(&o));
    assert_eq!(code(&cli("127.0.0.1:1", &["purge"]).await), 2, "purge needs an id or a filter");
    assert_eq!(code(&cli("127.0.0.1:1", &["list", "--status", "Sleeping"]).await), 2);
    assert_eq!(code(&cli("127.0.0.1:1", &["list", "--created-after", "soon"]).await), 2);
    assert_eq!(code(&cli("127.0.0.1:1", &["list", "--bogus"]).await), 2, "clap's own usage error");

    let o = cli("127.0.0.1:1", &["list"]).await;
    assert_eq!(code(&o), 69);
    assert!(
        stderr(&o).contains("cannot reach the sidecar at http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );

    // The manual.
    let o = cli(&a, &["--help"]).await;
    let help = stdout(&o);
    assert_eq!(code(&o), 0);
    for word in [
        "list",
        "show",
        "history",
        "start",
        "raise",
        "terminate",
        "suspend",
        "resume",
        "restart",
        "rewind",
        "purge",
        "watch",
        "Exit codes",
    ] {
        assert!(help.contains(word), "--help mentions {word}");
    }
}

#[tokio::test]
async fn signals_reach_the_instance_and_history_lists_its_events() {
    let s = Sidecar::start().await;
    let a = addr(&s);
    let mut worker = s.worker().await;
    let mut client = s.client.clone();
    start(&mut client, "sig", "Flow", Some("1")).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "sig", vec![schedule_task(1, "Step", "\"x\"")])
        .await
        .unwrap();
    let _step = worker.activity().await; // held, never answered: the instance stays running

    let o = cli(&a, &["raise", "sig", "approval", "--data", r#"{"ok": true}"#]).await;
    assert_eq!(
        (code(&o), stdout(&o)),
        (0, "raised event 'approval' to sig\n".to_string()),
        "{}",
        stderr(&o)
    );
    let (token, request) = worker.orchestration().await;
    let raised = request.new_events.iter().find_map(|e| match &e.event_type {
        Some(EventType::EventRaised(r)) => Some(r.clone()),
        _ => None,
    });
    let raised = raised.expect("the event reached the orchestrator");
    assert_eq!(
        (raised.name.as_str(), raised.input.as_deref()),
        ("approval", Some(r#"{"ok": true}"#))
    );
    complete_orchestrator(&mut client, &token, "sig", vec![]).await.unwrap();

    for (command, event) in [("suspend", "ExecutionSuspended"), ("resume", "ExecutionResumed")] {
        let o = cli(&a, &["-o", "json", command, "sig", "--reason", "ops"]).await;
        assert_eq!(json(&o)["action"], command);
        let (token, request) = worker.orchestration().await;
        assert!(
            kinds(&request.new_events).iter().any(|k| k == event),
            "{command}: {:?}",
            kinds(&request.new_events)
        );
        complete_orchestrator(&mut client, &token, "sig", vec![]).await.unwrap();
    }
    let o = cli(&a, &["terminate", "sig", "--reason", "enough"]).await;
    assert_eq!(code(&o), 0);
    let (token, request) = worker.orchestration().await;
    assert!(kinds(&request.new_events).iter().any(|k| k == "ExecutionTerminated"));
    complete_orchestrator(
        &mut client,
        &token,
        "sig",
        vec![complete(2, OrchestrationStatus::Terminated, "\"enough\"")],
    )
    .await
    .unwrap();
    wait_completion(&mut client, "sig").await;

    let o = cli(&a, &["history", "sig"]).await;
    let text = stdout(&o);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("TIME") && header.contains("EVENT") && header.contains("DETAILS"),
        "{text}"
    );
    for expected in [
        "ExecutionStarted",
        "TaskScheduled",
        "EventRaised",
        "ExecutionSuspended",
        "ExecutionResumed",
        "ExecutionTerminated",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    assert!(text.contains("Step \"x\""), "details name the task: {text}");
    let o = cli(&a, &["-o", "json", "history", "sig"]).await;
    let events = json(&o);
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"ExecutionStarted"));
    assert!(types.contains(&"EventRaised"), "{types:?}");

    // Finished: purge it, then it is gone.
    let o = cli(&a, &["purge", "sig"]).await;
    assert_eq!((code(&o), stdout(&o)), (0, "purged 1 instance(s)\n".to_string()));
    assert!(get(&mut client, "sig").await.is_none());
}

#[tokio::test]
async fn start_wait_watch_restart_and_bulk_purge() {
    let s = Sidecar::start().await;
    let a = addr(&s);
    let mut client = s.client.clone();

    // No worker: --wait runs out (exit 6) and prints the state.
    let o = cli(&a, &["-o", "json", "start", "Slow", "--id", "slow", "--wait", "0.3"]).await;
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_eq!(json(&o)["runtimeStatus"], "Pending");

    // With a worker finishing it while the CLI waits: exit 0 and the output.
    let mut worker = s.worker().await;
    let (slow_token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, "slow");
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { cli(&a, &["-o", "json", "start", "Quick", "--id", "quick", "--wait", "10"]).await }
    });
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, "quick");
    complete_orchestrator(
        &mut client,
        &token,
        "quick",
        vec![complete(1, OrchestrationStatus::Completed, "\"fast\"")],
    )
    .await
    .unwrap();
    let o = waiting.await.unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["output"], "fast");

    // watch follows a running instance and exits 5 when it fails.
    complete_orchestrator(&mut client, &slow_token, "slow", vec![schedule_task(1, "Work", "1")])
        .await
        .unwrap();
    let watching = tokio::spawn({
        let a = a.clone();
        async move { cli(&a, &["watch", "slow"]).await }
    });
    let (token, activity) = worker.activity().await;
    complete_activity(&mut client, &token, &activity, "2").await.unwrap();
    let (token, _) = worker.orchestration().await;
    let failed = action(
        2,
        outrigger::proto::orchestrator_action::OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(TaskFailureDetails {
                error_type: "Boom".into(),
                error_message: "it failed".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    complete_orchestrator(&mut client, &token, "slow", vec![failed]).await.unwrap();
    let o = guarded("watch to end", async { waiting_output(watching).await }).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let text = stdout(&o);
    for expected in [
        "ExecutionStarted",
        "TaskScheduled",
        "TaskCompleted",
        "ExecutionCompleted",
        "slow Failed",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }

    // restart a finished instance under a new id; it runs again.
    let o = cli(&a, &["restart", "quick", "--new-id"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let new_id = stdout(&o).trim().to_string();
    assert_ne!(new_id, "quick");
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, new_id);
    complete_orchestrator(&mut client, &token, &new_id, vec![complete(1, OrchestrationStatus::Completed, "1")])
        .await
        .unwrap();
    wait_completion(&mut client, &new_id).await;

    // Bulk purge by status and age: the failed one, then every finished one.
    let o = cli(&a, &["-o", "json", "purge", "--status", "Failed", "--created-after", "1h"]).await;
    assert_eq!(json(&o), serde_json::json!({"instancesDeleted": 1, "isComplete": true}));
    let o = cli(&a, &["purge", "--all"]).await;
    assert_eq!(stdout(&o), "purged 2 instance(s)\n");
    assert_eq!(code(&cli(&a, &["show", "quick"]).await), 3);
}

async fn waiting_output(handle: tokio::task::JoinHandle<Output>) -> Output {
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the command ended")
        .unwrap()
}

#[tokio::test]
async fn task_hub_picks_the_hub_every_command_acts_on() {
    let s = Sidecar::start().await;
    let a = addr(&s);
    let o = cli(&a, &["--task-hub", "mine", "start", "Order", "--id", "same", "--input", "1"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = cli(&a, &["start", "Order", "--id", "same", "--input", "2"]).await;
    assert_eq!(code(&o), 0, "the default hub has no 'same' yet: {}", stderr(&o));
    let o = cli(&a, &["-o", "json", "show", "same", "--task-hub", "Mine"]).await;
    assert_eq!(json(&o)["input"], serde_json::json!(1), "{}", stdout(&o));
    assert_eq!(get(&mut s.client.clone(), "same").await.unwrap().input.as_deref(), Some("2"));
    let o = cli(&a, &["--task-hub", "mine", "terminate", "same"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(status_of(&mut s.client.clone(), "same").await, OrchestrationStatus::Pending);
    let o = cli(&a, &["--task-hub", "not.a.hub", "list"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--task-hub"), "{}", stderr(&o));
}

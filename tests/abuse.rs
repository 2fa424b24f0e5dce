//! Hostile and unlucky conditions: a full disk, oversized and malformed payloads, workers that
//! misbehave. Each probe checks what the offending client is told and that everyone else's
//! work keeps completing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use outrigger::proto::*;
use outrigger::server::Options;
use outrigger::store::{InstanceFilter, Store};
use sqlx::Connection;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

/// A sidecar on a store URL of the test's choosing, which can be stopped and waited for.
struct Running {
    client: Client,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(url: &str, adjust: impl FnOnce(&mut Options)) -> Running {
        let mut options = Options::default();
        adjust(&mut options);
        let store = outrigger::store::open(url, &Default::default()).await.expect("open store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            outrigger::server::run(vec![listener], store, options, shutdown)
                .await
                .expect("server ran");
        });
        let client = Client::connect(format!("http://{addr}")).await.expect("connect");
        Running { client, stop, server }
    }

    async fn worker(&self) -> Worker {
        Worker::connect(&mut self.client.clone(), GetWorkItemsRequest::default()).await
    }

    /// Shuts the server down and waits until it has stopped.
    async fn stop(self, workers: Vec<Worker>) {
        drop(workers);
        drop(self.client);
        let _ = self.stop.send(());
        guarded("the server to stop", self.server).await.expect("server task");
    }
}

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of the disk but `spare` bytes with a file, returning its path.
    fn fill(&self, spare: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let block = vec![0xa5u8; 4096];
        while file.write_all(&block).is_ok() {}
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(spare)).expect("make room");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn start_request(id: &str, input: &str) -> CreateInstanceRequest {
    CreateInstanceRequest {
        instance_id: id.into(),
        name: "Filler".into(),
        input: Some(input.into()),
        ..Default::default()
    }
}

/// The disk fills up under a running sidecar: every write that cannot be stored is refused
/// (never answered OK), the writer recovers once space is back, and after a restart exactly
/// what was acknowledged is there.
#[tokio::test]
async fn full_disk_refuses_writes_and_loses_nothing_acknowledged() {
    let disk = SmallDisk::mount("4m");
    let url = format!("sqlite://{}", disk.path().join("t.db").display());
    let sidecar = Running::start(&url, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let input = format!("\"{}\"", "x".repeat(500));

    // Held work items, to be completed once the disk is full.
    let held = 30;
    for i in 0..held {
        client
            .start_instance(start_request(&format!("held-{i}"), &input))
            .await
            .expect("start");
    }
    let items = worker.orchestrations(held).await;

    let filler = disk.fill(256 << 10);
    let mut started = vec![];
    let mut refused_starts = vec![];
    let mut completed = vec![];
    let mut refused_completions = 0;
    for (i, (id, (token, _))) in items.iter().enumerate() {
        let output = format!("\"{}\"", "y".repeat(500));
        match complete_orchestrator(&mut client, token, id, vec![complete(1, OrchestrationStatus::Completed, &output)]).await {
            Ok(()) => completed.push(id.clone()),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "a refused completion: {status:?}");
                refused_completions += 1;
            }
        }
        let id = format!("full-{i}");
        match client.start_instance(start_request(&id, &input)).await {
            Ok(_) => started.push(id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "a refused start: {status:?}");
                assert!(status.message().contains("full"), "the error says why: {status:?}");
                refused_starts.push(id);
            }
        }
    }
    assert!(
        refused_starts.len() > held / 2 && refused_completions > 0,
        "a full disk refuses writes (refused {} starts and {refused_completions} completions of {held})",
        refused_starts.len()
    );

    // Space comes back: the same sidecar writes again, and nothing holds the file locked.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut after = vec![];
    for i in 0..10 {
        let id = format!("after-{i}");
        client
            .start_instance(start_request(&id, "1"))
            .await
            .expect("a start once space is back");
        after.push(id);
    }
    let mut other = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the file beside the sidecar");
    sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
        .execute(&mut other)
        .await
        .expect("another connection can take the write lock: no transaction was left open");
    drop(other);

    sidecar.stop(vec![worker]).await;
    let store = outrigger::store::open(&url, &Default::default()).await.expect("reopen");
    let stored = all_ids(&*store).await;
    let acknowledged: Vec<&String> = started.iter().chain(&after).collect();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(**id)).collect();
    assert!(lost.is_empty(), "acknowledged starts lost after the restart: {lost:?}");
    let ghosts: Vec<_> = refused_starts.iter().filter(|id| stored.contains(*id)).collect();
    assert!(ghosts.is_empty(), "refused starts stored anyway: {ghosts:?}");
    for id in &completed {
        let instance = store.get_instance(id).await.expect("read").expect("exists");
        assert_eq!(
            instance.status,
            OrchestrationStatus::Completed,
            "acknowledged completion of {id} lost"
        );
    }
    eprintln!(
        "full disk: {} of {} starts and {} of {held} completions acknowledged, all {} survived the restart",
        started.len(),
        held,
        completed.len(),
        acknowledged.len() + completed.len()
    );
}

async fn all_ids(store: &dyn Store) -> std::collections::HashSet<String> {
    let filter = InstanceFilter {
        limit: 100_000,
        ..Default::default()
    };
    store
        .query(&filter)
        .await
        .expect("query")
        .into_iter()
        .map(|i| i.instance_id)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Payloads too large or too deep for workers
// ---------------------------------------------------------------------------------------------

/// A neighbour instance run start to finish while a probe misbehaves: other clients' work
/// keeps completing.
async fn neighbour_completes(sidecar: &Sidecar, worker: &mut Worker, id: &str) {
    let mut client = sidecar.new_client().await;
    run_to_completion(&mut client, worker, id, "\"fine\"").await;
}

fn failure_of(state: &OrchestrationState) -> &TaskFailureDetails {
    state.failure_details.as_ref().expect("failure details")
}

/// Starts an instance and answers its first step with `actions`, returning the token-less
/// request the worker got.
async fn first_step(client: &mut Client, worker: &mut Worker, id: &str, actions: Vec<OrchestratorAction>) {
    start(client, id, "Probe", None).await;
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, id);
    complete_orchestrator(client, &token, id, actions).await.expect("first step");
}

#[tokio::test]
async fn an_activity_result_too_large_for_workers_fails_the_activity() {
    let sidecar = Sidecar::with(|o| o.dispatch.max_work_item_bytes = 64 << 10).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    first_step(&mut client, &mut worker, "big-result", vec![schedule_task(1, "Big", "1")]).await;
    let (token, request) = worker.activity().await;
    let huge = format!("\"{}\"", "r".repeat(100 << 10));
    complete_activity(&mut client, &token, &request, &huge)
        .await
        .expect("the completion is taken (and recorded as a failure)");
    let (token, step) = worker.orchestration().await;
    let failed = step
        .new_events
        .iter()
        .find_map(|e| match &e.event_type {
            Some(history_event::EventType::TaskFailed(f)) => f.failure_details.clone(),
            _ => None,
        })
        .expect("the orchestrator sees the activity fail");
    assert_eq!(failed.error_type, "ActivityResultTooLarge");
    assert!(failed.error_message.contains("--max-work-item-mib"), "{failed:?}");
    complete_orchestrator(
        &mut client,
        &token,
        "big-result",
        vec![complete(2, OrchestrationStatus::Completed, "0")],
    )
    .await
    .expect("the orchestration goes on");
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

#[tokio::test]
async fn an_orchestration_whose_history_outgrows_the_work_item_limit_fails_once() {
    let sidecar = Sidecar::with(|o| o.dispatch.max_work_item_bytes = 64 << 10).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    // Two results of 40 KiB each pass alone; together they make the next item too large.
    first_step(
        &mut client,
        &mut worker,
        "grows",
        vec![schedule_task(1, "Half", "1"), schedule_task(2, "Half", "2")],
    )
    .await;
    let result = format!("\"{}\"", "h".repeat(40 << 10));
    for _ in 0..2 {
        let (token, request) = worker.activity().await;
        complete_activity(&mut client, &token, &request, &result).await.expect("result");
    }
    // The orchestration may get one step with the first result; answer it with nothing new.
    let mut client2 = client.clone();
    let state = loop {
        tokio::select! {
            state = async { wait_completion(&mut client2, "grows").await } => break state,
            (token, _) = worker.orchestration() => {
                complete_orchestrator(&mut client, &token, "grows", vec![]).await.expect("step");
            }
        }
    };
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Failed);
    let failure = failure_of(&state);
    assert_eq!(failure.error_type, "WorkItemTooLarge");
    assert!(failure.error_message.contains("--max-work-item-mib"), "{failure:?}");
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

fn nested_failure(depth: usize) -> TaskFailureDetails {
    let mut details = TaskFailureDetails {
        error_type: "Deep".into(),
        ..Default::default()
    };
    for _ in 1..depth {
        details = TaskFailureDetails {
            error_type: "Deep".into(),
            inner_failure: Some(Box::new(details)),
            ..Default::default()
        };
    }
    details
}

#[tokio::test]
async fn deeply_nested_failure_details_are_refused_or_replaced() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;

    // Nested beyond what protobuf parsers take at all: refused before anything is read.
    start(&mut client, "deeper", "Probe", None).await;
    let (token, _) = worker.orchestration().await;
    let fail = action(
        1,
        orchestrator_action::OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(nested_failure(99)),
            ..Default::default()
        }),
    );
    let refused = expect_code(
        complete_orchestrator(&mut client, &token, "deeper", vec![fail]).await,
        Code::InvalidArgument,
    );
    assert!(refused.message().len() < 300, "no echo: {refused:?}");

    // An orchestration failing with 60 levels: the answer is refused.
    start(&mut client, "deep-orch", "Probe", None).await;
    let (token, _) = worker.orchestration().await;
    let fail = action(
        1,
        orchestrator_action::OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(nested_failure(60)),
            ..Default::default()
        }),
    );
    let refused = expect_code(
        complete_orchestrator(&mut client, &token, "deep-orch", vec![fail]).await,
        Code::InvalidArgument,
    );
    assert!(refused.message().contains("32 levels"), "{refused:?}");

    // An activity failing with 99 levels: recorded as a plain failure saying why.
    first_step(&mut client, &mut worker, "deep-act", vec![schedule_task(1, "Fails", "1")]).await;
    let (token, request) = worker.activity().await;
    let response = ActivityResponse {
        instance_id: "deep-act".into(),
        task_id: request.task_id,
        completion_token: token,
        failure_details: Some(nested_failure(60)),
        ..Default::default()
    };
    client.complete_activity_task(response).await.expect("taken");
    let (_, step) = worker.orchestration().await;
    let failed = step
        .new_events
        .iter()
        .find_map(|e| match &e.event_type {
            Some(history_event::EventType::TaskFailed(f)) => f.failure_details.clone(),
            _ => None,
        })
        .expect("a TaskFailed");
    assert_eq!(failed.error_type, "InvalidFailureDetails");
    assert!(failed.inner_failure.is_none());
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

/// A work item that kills every worker it reaches is not sent a fourth time: its
/// orchestration fails, and the next worker carries on with other work.
#[tokio::test]
async fn a_work_item_whose_workers_keep_dying_fails_its_orchestration() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    start(&mut client, "poison", "Probe", None).await;
    for _ in 0..3 {
        let mut doomed = sidecar.worker().await;
        let (_, request) = doomed.orchestration().await;
        assert_eq!(request.instance_id, "poison");
        drop(doomed); // the stream dies holding the item
    }
    // The next worker is not sent the item; the orchestration fails instead.
    let mut worker = sidecar.worker().await;
    let state = wait_completion(&mut client, "poison").await;
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Failed);
    assert_eq!(failure_of(&state).error_type, "WorkItemUndeliverable");
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

// ---------------------------------------------------------------------------------------------
// Large steps (SQLite's bound-variable limit)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_activity_fan_out_commits() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar
        .worker_with(GetWorkItemsRequest {
            max_concurrent_activity_work_items: 1,
            ..Default::default()
        })
        .await;
    let actions: Vec<_> = (1..=10_000).map(|i| schedule_task(i, "Fan", "1")).collect();
    first_step(&mut client, &mut worker, "fan-out", actions).await;
    let scheduled = history(&mut client, "fan-out")
        .await
        .iter()
        .filter(|e| matches!(e.event_type, Some(history_event::EventType::TaskScheduled(_))))
        .count();
    assert_eq!(scheduled, 10_000, "the whole step is stored");
    let (_, first) = worker.activity().await;
    assert_eq!(first.name, "Fan");
    // This worker holds its one activity, so it gets only the neighbour's orchestration.
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

// ---------------------------------------------------------------------------------------------
// Hostile ids and fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ids_in_actions_obey_the_client_id_rules() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "parent", "Probe", None).await;
    let (token, _) = worker.orchestration().await;
    let cases = [
        (
            "sub-orchestration id with a newline",
            orchestrator_action::OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
                instance_id: "child\nINFO forged".into(),
                name: "Child".into(),
                ..Default::default()
            }),
        ),
        (
            "2 MiB sub-orchestration id",
            orchestrator_action::OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
                instance_id: "c".repeat(2 << 20),
                name: "Child".into(),
                ..Default::default()
            }),
        ),
        (
            "sendEvent target with a newline",
            orchestrator_action::OrchestratorActionType::SendEvent(SendEventAction {
                instance: Some(OrchestrationInstance {
                    instance_id: "x\nERROR forged".into(),
                    ..Default::default()
                }),
                name: "E".into(),
                ..Default::default()
            }),
        ),
    ];
    for (what, kind) in cases {
        let status = expect_code(
            complete_orchestrator(&mut client, &token, "parent", vec![action(1, kind)]).await,
            Code::InvalidArgument,
        );
        assert!(status.message().len() < 300, "{what}: the message does not echo the input");
        assert!(!status.message().contains('\n'), "{what}");
    }
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

#[tokio::test]
async fn oversized_fields_are_refused_with_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let big = "n".repeat(2 << 20);
    let requests = [
        (
            "name",
            CreateInstanceRequest {
                name: big.clone(),
                ..Default::default()
            },
        ),
        (
            "version",
            CreateInstanceRequest {
                name: "Ok".into(),
                version: Some(big.clone()),
                ..Default::default()
            },
        ),
        (
            "tags",
            CreateInstanceRequest {
                name: "Ok".into(),
                tags: [("k".to_string(), big.clone())].into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in requests {
        let status = expect_code(client.start_instance(request).await, Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{field}: {status:?}");
        assert!(status.message().len() < 200, "{field}: no echo");
    }
    start_later(&mut client, "target").await;
    let event = RaiseEventRequest {
        instance_id: "target".into(),
        name: big.clone(),
        ..Default::default()
    };
    expect_code(client.raise_event(event).await, Code::InvalidArgument);

    // Filters: huge status lists and continuation tokens are refused briefly.
    let query = QueryInstancesRequest {
        query: Some(InstanceQuery {
            runtime_status: vec![OrchestrationStatus::Running as i32; 40_000],
            ..Default::default()
        }),
    };
    expect_code(client.query_instances(query).await, Code::InvalidArgument);
    let query = QueryInstancesRequest {
        query: Some(InstanceQuery {
            continuation_token: Some("t".repeat(1 << 20)),
            ..Default::default()
        }),
    };
    let status = expect_code(client.query_instances(query).await, Code::InvalidArgument);
    assert!(status.message().len() < 200, "no echo: {} bytes", status.message().len());
    let mut worker = sidecar.worker().await;
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

#[tokio::test]
async fn a_huge_continuation_token_is_a_short_invalid_argument() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let token = "1|".to_string() + &"x".repeat(1 << 20);
    let query = client
        .query_instances(QueryInstancesRequest {
            query: Some(InstanceQuery {
                continuation_token: Some(token.clone()),
                ..Default::default()
            }),
        })
        .await;
    let list = client
        .list_instance_ids(ListInstanceIdsRequest {
            last_instance_key: Some(token.clone()),
            ..Default::default()
        })
        .await;
    let entities = client
        .query_entities(QueryEntitiesRequest {
            query: Some(EntityQuery {
                continuation_token: Some(token.clone()),
                ..Default::default()
            }),
        })
        .await;
    for (rpc, status) in [
        ("QueryInstances", expect_code(query, Code::InvalidArgument)),
        ("ListInstanceIds", expect_code(list, Code::InvalidArgument)),
        ("QueryEntities", expect_code(entities, Code::InvalidArgument)),
    ] {
        assert!(
            status.message().len() < 200,
            "{rpc} echoes its input: {} bytes",
            status.message().len()
        );
    }
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

// ---------------------------------------------------------------------------------------------
// Responses: paged by size, and too large for the message limit
// ---------------------------------------------------------------------------------------------

/// Thirty instances with 200 KiB inputs are 6 MiB together, over the 4 MiB an SDK receives by
/// default (as does this test's client): a 100-count page stops early with a continuation,
/// and paging on returns every instance once.
#[tokio::test]
async fn query_pages_stop_before_they_outgrow_the_receive_limit() {
    use prost::Message;
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let input = format!("\"{}\"", "i".repeat(200 << 10));
    for i in 0..30 {
        start(&mut client, &format!("large-{i:02}"), "Large", Some(&input)).await;
    }
    let mut seen = std::collections::HashSet::new();
    let mut pages = vec![];
    let mut token = None;
    loop {
        let response = client
            .query_instances(QueryInstancesRequest {
                query: Some(InstanceQuery {
                    max_instance_count: 100,
                    fetch_inputs_and_outputs: true,
                    continuation_token: token.take(),
                    ..Default::default()
                }),
            })
            .await
            .expect("a page fits the client's 4 MiB receive limit")
            .into_inner();
        let bytes = response.encoded_len();
        assert!(bytes <= (2 << 20) + (64 << 10), "a page of {bytes} bytes");
        for state in &response.orchestration_state {
            assert_eq!(state.input.as_deref(), Some(input.as_str()), "inputs are whole");
            assert!(seen.insert(state.instance_id.clone()), "{} twice", state.instance_id);
        }
        pages.push((response.orchestration_state.len(), bytes));
        match response.continuation_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30, "every instance once");
    assert!(pages.len() >= 3, "paged by size: {pages:?}");
    eprintln!("30 instances of 200 KiB: pages (instances, bytes) {pages:?}");
}

/// A response larger than the message limit answers RESOURCE_EXHAUSTED (tonic's own code
/// for it is OUT_OF_RANGE), and the connection goes on serving.
#[tokio::test]
async fn a_response_over_the_message_limit_is_resource_exhausted() {
    let sidecar = Sidecar::with(|o| o.max_message_bytes = 1 << 20).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let half = format!("\"{}\"", "h".repeat(600 << 10));
    start(&mut client, "big", "Big", Some(&half)).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "big", vec![complete(1, OrchestrationStatus::Completed, &half)])
        .await
        .expect("600 KiB fits the 1 MiB limit");
    let request = GetInstanceRequest {
        instance_id: "big".into(),
        get_inputs_and_outputs: true,
    };
    let status = expect_code(client.get_instance(request).await, Code::ResourceExhausted);
    assert!(status.message().contains("too large"), "{status:?}");
    // Without the payloads the same instance reads fine, on the same connection.
    let request = GetInstanceRequest {
        instance_id: "big".into(),
        get_inputs_and_outputs: false,
    };
    let state = client.get_instance(request).await.expect("read").into_inner();
    assert_eq!(
        state.orchestration_state.expect("exists").orchestration_status(),
        OrchestrationStatus::Completed
    );
    neighbour_completes(&sidecar, &mut worker, "neighbour").await;
}

// ---------------------------------------------------------------------------------------------
// Memory: every buffer a client can fill is bounded (figures from a sidecar process of its own)
// ---------------------------------------------------------------------------------------------

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A worker that sends partial chunks without end: the chunked answer is refused once it
/// passes its bound (64 MiB), with an error that says so, and the sidecar's memory stays
/// near that bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_chunks_beyond_their_bound_are_refused() {
    let sidecar = spawned::Spawned::start(&[]);
    let mut client = sidecar.client().await;
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    let base = sidecar.kib("VmRSS");
    start(&mut client, "chunky", "Chunky", None).await;
    let (token, _) = worker.orchestration().await;
    let payload = format!("\"{}\"", "c".repeat(1 << 20));
    let mut accepted = 0;
    let refused = loop {
        #[allow(deprecated)]
        let chunk = OrchestratorResponse {
            instance_id: "chunky".into(),
            completion_token: token.clone(),
            actions: vec![schedule_task(accepted + 1, "Chunk", &payload)],
            is_partial: true,
            chunk_index: Some(accepted),
            ..Default::default()
        };
        match client.complete_orchestrator_task(chunk).await {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted <= 200, "200 MiB of chunks taken without a refusal");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("chunked answer may hold at most"), "{refused:?}");
    assert!((60..=64).contains(&accepted), "refused after {accepted} chunks of 1 MiB");
    let peak = sidecar.kib("VmHWM");
    eprintln!(
        "partial chunks: {accepted} chunks of 1 MiB taken, the next refused; sidecar RSS {:.0} MiB before, peak {:.0} MiB",
        mib(base),
        mib(peak)
    );
    assert!(mib(peak) < 512.0, "peak RSS {:.0} MiB", mib(peak));
    // The worker abandons the item; the sidecar goes on serving.
    client
        .abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest { completion_token: token })
        .await
        .expect("abandon");
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(
        &mut client,
        &token,
        "chunky",
        vec![complete(1, OrchestrationStatus::Completed, "0")],
    )
    .await
    .expect("a plain answer after the refused chunks");
    assert_eq!(
        wait_completion(&mut client, "chunky").await.orchestration_status(),
        OrchestrationStatus::Completed
    );
}

/// One answer with 1,000,000 actions is refused with a clear error, before it is decoded (the
/// decoded actions alone took over 300 MiB); the sidecar's peak RSS for it is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_million_actions_is_refused() {
    let sidecar = spawned::Spawned::start(&[]);
    let mut client = sidecar.client().await;
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    start(&mut client, "million", "Million", None).await;
    let (token, _) = worker.orchestration().await;
    let base = sidecar.kib("VmRSS");
    let actions: Vec<_> = (1..=1_000_000).map(|i| schedule_task(i, "A", "")).collect();
    let refused = expect_code(
        complete_orchestrator(&mut client, &token, "million", actions).await,
        Code::InvalidArgument,
    );
    assert!(refused.message().contains("at most 100000 are allowed"), "{refused:?}");
    let peak = sidecar.kib("VmHWM");
    eprintln!(
        "1,000,000 actions: refused ({}); sidecar RSS {:.0} MiB before, peak {:.0} MiB",
        refused.message(),
        mib(base),
        mib(peak)
    );
    // Counted before it is decoded: the peak is about the message's own 10 MB.
    assert!(mib(peak) < 160.0, "peak RSS {:.0} MiB", mib(peak));
    complete_orchestrator(
        &mut client,
        &token,
        "million",
        vec![complete(1, OrchestrationStatus::Completed, "0")],
    )
    .await
    .expect("the same item answered sensibly");
}

/// A worker that stops reading its stream is sent no more than `--worker-buffer-mib` of work
/// items; the others keep getting work, and what it held goes to them when it disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_is_bounded_by_its_buffer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sidecar = spawned::Spawned::start(&["--worker-buffer-mib", "1"]);
    let mut client = sidecar.client().await;
    let stalled = Worker::connect(&mut sidecar.client().await, GetWorkItemsRequest::default()).await;
    let total = 160;
    let input = format!("\"{}\"", "s".repeat(200 << 10));
    for i in 0..total {
        start(&mut client, &format!("item-{i:03}"), "Stalled", Some(&input)).await;
    }
    // The healthy worker completes whatever it gets.
    let done = Arc::new(AtomicUsize::new(0));
    let mut healthy = Worker::connect(&mut sidecar.client().await, GetWorkItemsRequest::default()).await;
    let healthy_task = {
        let (done, mut client) = (done.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let (token, request) = healthy.orchestration().await;
                let id = request.instance_id.clone();
                complete_orchestrator(&mut client, &token, &id, vec![complete(1, OrchestrationStatus::Completed, "0")])
                    .await
                    .expect("complete");
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The stalled worker holds no more than its buffer and its connection's flow-control
    // window let it (40 items of 200 KiB is generous for a 1 MiB buffer): the healthy worker
    // gets everything else while the stalled one stays connected.
    let bound = 40;
    spawned::until("the healthy worker to do all the stalled one cannot hold", || {
        done.load(Ordering::SeqCst) >= total - bound
    })
    .await;
    let peak = sidecar.kib("VmHWM");
    eprintln!(
        "stalled worker, 1 MiB buffer, {total} items of 200 KiB: the healthy worker reached {} (all but 40) with the stalled one still connected; sidecar peak RSS {:.0} MiB",
        done.load(Ordering::SeqCst),
        mib(peak)
    );
    assert!(mib(peak) < 512.0, "peak RSS {:.0} MiB", mib(peak));
    drop(stalled);
    spawned::until("the stalled worker's items to be done", || done.load(Ordering::SeqCst) == total).await;
    healthy_task.abort();
}

/// 8,000 WaitForInstanceCompletion calls cancelled mid-wait, in rounds of 2,000, leave nothing
/// registered: the waiter count (`outrigger_awaited_instances`) returns to zero after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waits_leave_nothing_behind() {
    let sidecar = spawned::Spawned::start(&[]);
    let mut clients = vec![];
    for _ in 0..20 {
        clients.push(sidecar.client().await);
    }
    let (rounds, per_round) = (4, 2000);
    let base = sidecar.kib("VmRSS");
    let mut after_first = 0;
    for round in 0..rounds {
        let mut waits = tokio::task::JoinSet::new();
        for i in 0..per_round {
            let mut client = clients[i % clients.len()].clone();
            let id = format!("absent-{round}-{i}");
            waits.spawn(async move {
                let _ = client
                    .wait_for_instance_completion(GetInstanceRequest {
                        instance_id: id,
                        get_inputs_and_outputs: false,
                    })
                    .await;
            });
        }
        spawned::until("every wait to be registered", || {
            sidecar.metric("outrigger_awaited_instances") == per_round as f64
        })
        .await;
        waits.abort_all(); // the calls are cancelled: the client resets their streams
        while waits.join_next().await.is_some() {}
        spawned::until("the cancelled waits to be released", || {
            sidecar.metric("outrigger_awaited_instances") == 0.0
        })
        .await;
        if round == 0 {
            after_first = sidecar.kib("VmRSS");
        }
    }
    let end = sidecar.kib("VmRSS");
    eprintln!(
        "{} cancelled waits: sidecar RSS {:.1} MiB before, {:.1} MiB after the first {per_round}, {:.1} MiB after all (peak {:.1} MiB)",
        rounds * per_round,
        mib(base),
        mib(after_first),
        mib(end),
        mib(sidecar.kib("VmHWM"))
    );
}

// ---------------------------------------------------------------------------------------------
// Postgres: failed commits and connections dropped mid-transaction
// ---------------------------------------------------------------------------------------------

/// Writes run while the store's connections are terminated under them (`pg_terminate_backend`,
/// often mid-transaction), and some commits fail (a deferred trigger refuses them at COMMIT):
/// every write answered OK survives, every refused one is answered UNAVAILABLE, and once the
/// terminations stop every write succeeds again on the same sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_connections_and_failed_commits_lose_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let db = common::postgres::TestDatabase::create("dropped").await;
    let sidecar = Running::start(&db.url, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect to the test database");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.instance_id LIKE 'doomed-%' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NEW; END $$;
         CREATE CONSTRAINT TRIGGER refuse_doomed AFTER INSERT ON instances
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_doomed();",
    )
    .execute(&mut admin)
    .await
    .expect("install the refusing trigger");

    // Commits that fail: refused, never stored.
    for i in 0..5 {
        let status = expect_code(
            client.start_instance(start_request(&format!("doomed-{i}"), "1")).await,
            Code::Unavailable,
        );
        // The client learns the category; the database's own text stays in the log.
        assert!(status.message().contains("refused the transaction"), "{status:?}");
        assert!(!status.message().contains("refused at commit"), "{status:?}");
    }

    #[derive(Default)]
    struct Outcomes {
        started: Vec<String>,
        refused: Vec<(String, Code)>,
        completed: Vec<String>,
        refused_completions: Vec<Code>,
    }
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(true));

    // A worker completing whatever it gets; its answers go through the batched commits.
    let mut worker = sidecar.worker().await;
    let completer = {
        let (outcomes, acknowledged, mut client) = (outcomes.clone(), acknowledged.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let (token, request) = worker.orchestration().await;
                let id = request.instance_id.clone();
                let done = complete(1, OrchestrationStatus::Completed, "\"done\"");
                match complete_orchestrator(&mut client, &token, &id, vec![done]).await {
                    Ok(()) => {
                        outcomes.lock().unwrap().completed.push(id);
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => outcomes.lock().unwrap().refused_completions.push(status.code()),
                }
            }
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (outcomes, acknowledged, mut client) = (outcomes.clone(), acknowledged.clone(), client.clone());
        writers.spawn(async move {
            for i in 0..100 {
                let id = format!("w{w}-{i:03}");
                match client.start_instance(start_request(&id, "\"in\"")).await {
                    Ok(_) => {
                        outcomes.lock().unwrap().started.push(id);
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => outcomes.lock().unwrap().refused.push((id, status.code())),
                }
            }
        });
    }
    // Terminates the sidecar's connections each time another 15 writes were acknowledged.
    let killer = {
        let (acknowledged, writing, name) = (acknowledged.clone(), writing.clone(), db.name.clone());
        tokio::spawn(async move {
            let mut admin = sqlx::PgConnection::connect(&common::postgres::admin_url()).await.expect("admin");
            let (mut kills, mut terminated, mut last) = (0, 0i64, 0);
            while writing.load(Ordering::SeqCst) {
                let now = acknowledged.load(Ordering::SeqCst);
                if now >= last + 15 {
                    last = now;
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = $1 AND application_name = 'outrigger'",
                    )
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .expect("terminate");
                    kills += 1;
                    terminated += n;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (kills, terminated)
        })
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        let o = outcomes.lock().unwrap();
        panic!(
            "the writers hung: {} started, {} refused {:?}, {} completed, {} completions refused",
            o.started.len(),
            o.refused.len(),
            o.refused.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            o.completed.len(),
            o.refused_completions.len()
        );
    }
    writing.store(false, Ordering::SeqCst);
    let (kills, terminated) = killer.await.expect("killer");
    assert!(kills >= 5 && terminated >= 5, "{kills} rounds terminated {terminated} connections");

    // The same sidecar writes again once connections stay up.
    let mut after = vec![];
    for i in 0..20 {
        let id = format!("after-{i}");
        client
            .start_instance(start_request(&id, "1"))
            .await
            .unwrap_or_else(|s| panic!("a start after the terminations: {s:?}"));
        after.push(id);
    }
    completer.abort();
    drop(admin);
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    sidecar.stop(vec![]).await;

    let store = outrigger::store::open(&db.url, &Default::default()).await.expect("reopen");
    let stored = all_ids(&*store).await;
    let lost: Vec<_> = outcomes.started.iter().chain(&after).filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged starts lost: {lost:?}");
    assert!(
        !stored.iter().any(|id| id.starts_with("doomed-")),
        "a start refused at commit was stored"
    );
    for id in &outcomes.completed {
        let instance = store.get_instance(id).await.expect("read").expect("exists");
        assert_eq!(
            instance.status,
            OrchestrationStatus::Completed,
            "acknowledged completion of {id} lost"
        );
    }
    let codes: Vec<Code> = outcomes
        .refused
        .iter()
        .map(|(_, c)| *c)
        .chain(outcomes.refused_completions.iter().copied())
        .collect();
    assert!(codes.iter().all(|c| *c == Code::Unavailable), "refusals: {codes:?}");
    // A write refused because its connection died after COMMIT reached the server may have
    // been stored: the client cannot tell, and a retry answers ALREADY_EXISTS.
    let ambiguous = outcomes.refused.iter().filter(|(id, _)| stored.contains(id)).count();
    eprintln!(
        "postgres: {kills} rounds terminated {terminated} connections; {} starts and {} completions acknowledged, all stored; \
         {} starts and {} completions refused (UNAVAILABLE), {ambiguous} of those starts stored all the same; 5 of 5 commits refused by the trigger answered UNAVAILABLE and not stored; 20 of 20 starts afterwards succeeded",
        outcomes.started.len(),
        outcomes.completed.len(),
        outcomes.refused.len(),
        outcomes.refused_completions.len(),
    );
}

// ---------------------------------------------------------------------------------------------
// A paused worker (SIGSTOP): its items go to a healthy worker within a bounded time
// ---------------------------------------------------------------------------------------------

const WORKER_OF: &str = "OUTRIGGER_TEST_PAUSED_WORKER_OF";

/// The worker process of the paused-worker tests (this test binary started again, running only
/// this): it takes work items, says which, and never answers.
#[tokio::test]
#[ignore = "the worker process of the paused-worker tests, which start it themselves"]
async fn paused_worker_process() {
    let addr = std::env::var(WORKER_OF).expect("started by a paused-worker test");
    let mut client = Client::connect(format!("http://{addr}")).await.expect("connect");
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    println!("worker connected");
    loop {
        if let Some(work_item::Request::OrchestratorRequest(r)) = worker.stream_message().await.and_then(|w| w.request) {
            println!("holding {}", r.instance_id);
        }
    }
}

/// Starts the worker process, has it take `id`'s work item, stops it with SIGSTOP and returns
/// how long a healthy worker then waited for the item.
async fn hand_over_from_a_paused_worker(sidecar: &Sidecar, id: &str) -> std::time::Duration {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["paused_worker_process", "--exact", "--ignored", "--nocapture"])
        .env(WORKER_OF, sidecar.addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the worker process");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    async fn line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) {
        guarded(what, async {
            while let Some(l) = lines.recv().await {
                if l.contains(what) {
                    return;
                }
            }
            panic!("the worker process ended before {what}");
        })
        .await
    }
    line(&mut lines, "worker connected").await;
    let mut client = sidecar.client.clone();
    start(&mut client, id, "Held", None).await;
    line(&mut lines, "holding").await;
    // The shell's own kill: no procps needed.
    let stopped = Command::new("sh")
        .args(["-c", "kill -STOP \"$0\"", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let paused_at = std::time::Instant::now();
    let mut healthy = sidecar.worker().await;
    let (token, request) = tokio::time::timeout(std::time::Duration::from_secs(30), healthy.orchestration())
        .await
        .expect("the paused worker's item handed over within 30 s");
    let took = paused_at.elapsed();
    assert_eq!(request.instance_id, id);
    complete_orchestrator(&mut client, &token, id, vec![complete(1, OrchestrationStatus::Completed, "0")])
        .await
        .expect("the healthy worker's answer is taken");
    assert_eq!(
        wait_completion(&mut client, id).await.orchestration_status(),
        OrchestrationStatus::Completed
    );
    let _ = child.kill(); // SIGKILL ends a stopped process too
    let _ = child.wait();
    took
}

/// With keepalive pings every second, a frozen worker's connection is closed when a ping goes
/// unanswered for a second, and its items go to another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_items_when_keepalive_goes_unanswered() {
    let sidecar = Sidecar::with(|o| o.keepalive = Some(std::time::Duration::from_secs(1))).await;
    let took = hand_over_from_a_paused_worker(&sidecar, "kept").await;
    eprintln!("paused worker, keepalive 1 s: its item reached a healthy worker {took:.2?} after SIGSTOP");
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");
}

/// Without keepalive, the item deadline takes the item back from a frozen worker whose
/// connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_items_at_the_item_deadline() {
    let sidecar = Sidecar::with(|o| {
        o.keepalive = None;
        o.dispatch.item_deadline = Some(std::time::Duration::from_secs(2));
    })
    .await;
    let took = hand_over_from_a_paused_worker(&sidecar, "deadlined").await;
    eprintln!("paused worker, no keepalive, item deadline 2 s: its item reached a healthy worker {took:.2?} after SIGSTOP");
    assert!(took < std::time::Duration::from_secs(12), "{took:?}");
}

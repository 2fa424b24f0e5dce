//! Task hubs: the `taskhub` metadata selects one of several isolated hubs in one database, on
//! both stores. The same instance id lives in several hubs at once; workers, waits, queries,
//! entity calls, purges and DeleteTaskHub each see their own hub only; the default hub (no
//! `taskhub`, or `taskhub: default`) is what every other test uses.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, GUARD, Sidecar, complete, expect_code, guarded};
use outrigger::proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Adds `taskhub: <name>` to every call, as the scheduler's SDK packages do.
#[derive(Clone)]
struct TaskHub(Option<MetadataValue<Ascii>>);

impl Interceptor for TaskHub {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(name) = &self.0 {
            request.metadata_mut().insert("taskhub", name.clone());
        }
        Ok(request)
    }
}

type HubClient = TaskHubSidecarServiceClient<InterceptedService<Channel, TaskHub>>;

async fn client(sidecar: &Sidecar, hub: Option<&str>) -> HubClient {
    let channel = Channel::from_shared(format!("http://{}", sidecar.addr))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    TaskHubSidecarServiceClient::with_interceptor(channel, TaskHub(hub.map(|h| h.parse().expect("ascii"))))
}

async fn start(client: &mut HubClient, instance_id: &str, input: &str) {
    client
        .start_instance(CreateInstanceRequest {
            instance_id: instance_id.into(),
            name: "Greet".into(),
            input: Some(input.into()),
            ..Default::default()
        })
        .await
        .expect("StartInstance");
}

async fn get(client: &mut HubClient, instance_id: &str) -> Option<OrchestrationState> {
    let request = GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs: true,
    };
    client
        .get_instance(request)
        .await
        .expect("GetInstance")
        .into_inner()
        .orchestration_state
}

async fn input_and_status(client: &mut HubClient, instance_id: &str) -> (Option<String>, OrchestrationStatus) {
    let state = get(client, instance_id)
        .await
        .unwrap_or_else(|| panic!("no instance '{instance_id}'"));
    (state.input.clone(), state.orchestration_status())
}

/// WaitForInstanceCompletion with a deadline.
async fn wait(client: &mut HubClient, instance_id: &str, deadline: Duration) -> Result<OrchestrationState, Status> {
    let mut request = Request::new(GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs: true,
    });
    request.set_timeout(deadline);
    let response = guarded("WaitForInstanceCompletion", client.wait_for_instance_completion(request)).await?;
    Ok(response.into_inner().orchestration_state.expect("the instance exists"))
}

async fn ids(client: &mut HubClient) -> BTreeSet<String> {
    let query = QueryInstancesRequest {
        query: Some(InstanceQuery {
            max_instance_count: 100,
            ..Default::default()
        }),
    };
    let page = client.query_instances(query).await.expect("QueryInstances").into_inner();
    page.orchestration_state.into_iter().map(|s| s.instance_id).collect()
}

async fn entity_ids(client: &mut HubClient) -> Vec<String> {
    let query = QueryEntitiesRequest {
        query: Some(EntityQuery {
            include_transient: true,
            ..Default::default()
        }),
    };
    let page = client.query_entities(query).await.expect("QueryEntities").into_inner();
    page.entities.into_iter().map(|e| e.instance_id).collect()
}

/// The next `n` orchestrator work items on `stream`: instance id -> (token, input).
async fn orchestrations(stream: &mut tonic::Streaming<WorkItem>, n: usize) -> Vec<(String, String, Option<String>)> {
    let mut items = vec![];
    while items.len() < n {
        let item = guarded("a work item", stream.message())
            .await
            .expect("stream")
            .expect("open stream");
        let Some(Item::OrchestratorRequest(request)) = item.request else {
            continue;
        };
        let input = request.new_events.iter().find_map(|e| match &e.event_type {
            Some(history_event::EventType::ExecutionStarted(started)) => started.input.clone(),
            _ => None,
        });
        items.push((request.instance_id, item.completion_token, input));
    }
    items.sort();
    items
}

async fn finish(client: &mut HubClient, instance_id: &str, token: &str, output: &str) {
    client
        .complete_orchestrator_task(OrchestratorResponse {
            instance_id: instance_id.into(),
            completion_token: token.into(),
            actions: vec![complete(1, OrchestrationStatus::Completed, output)],
            ..Default::default()
        })
        .await
        .expect("CompleteOrchestratorTask");
}

async fn isolation(backend: Backend) {
    let sidecar = Sidecar::on(backend, |o| o.task_hubs.max = 2).await;
    let mut default = client(&sidecar, None).await;
    let mut alpha = client(&sidecar, Some("alpha")).await;
    // Names are compared without regard to case.
    let mut beta = client(&sidecar, Some("Beta")).await;
    let mut beta_lower = client(&sidecar, Some("beta")).await;
    let mut named_default = client(&sidecar, Some("default")).await;

    // The same instance id in three hubs, each with its own input.
    start(&mut default, "same", "\"default\"").await;
    start(&mut alpha, "same", "\"alpha\"").await;
    start(&mut beta, "same", "\"beta\"").await;
    start(&mut alpha, "only-alpha", "\"alpha 2\"").await;
    let pending = OrchestrationStatus::Pending;
    assert_eq!(input_and_status(&mut default, "same").await, (Some("\"default\"".into()), pending));
    assert_eq!(
        input_and_status(&mut named_default, "same").await,
        (Some("\"default\"".into()), pending)
    );
    assert_eq!(input_and_status(&mut alpha, "same").await, (Some("\"alpha\"".into()), pending));
    assert_eq!(input_and_status(&mut beta_lower, "same").await, (Some("\"beta\"".into()), pending));
    assert!(get(&mut beta, "only-alpha").await.is_none());
    assert!(get(&mut default, "only-alpha").await.is_none());
    // Creating an existing id collides within a hub only.
    let again = alpha
        .start_instance(CreateInstanceRequest {
            instance_id: "same".into(),
            name: "Greet".into(),
            ..Default::default()
        })
        .await;
    expect_code(again, Code::AlreadyExists);

    // A worker of hub alpha gets alpha's two instances and nothing else.
    let mut alpha_worker = alpha
        .get_work_items(GetWorkItemsRequest::default())
        .await
        .expect("GetWorkItems")
        .into_inner();
    let items = orchestrations(&mut alpha_worker, 2).await;
    let seen: Vec<_> = items.iter().map(|(id, _, input)| (id.as_str(), input.as_deref())).collect();
    assert_eq!(seen, [("only-alpha", Some("\"alpha 2\"")), ("same", Some("\"alpha\""))]);
    for (id, token, _) in &items {
        finish(&mut alpha, id, token, "\"alpha done\"").await;
    }
    assert_eq!(
        wait(&mut alpha, "same", GUARD).await.unwrap().output.as_deref(),
        Some("\"alpha done\"")
    );

    // Alpha's completion is nobody else's: the same id elsewhere is still pending, and a wait
    // on it in beta runs into its deadline.
    assert_eq!(input_and_status(&mut default, "same").await.1, pending);
    assert_eq!(input_and_status(&mut beta, "same").await.1, pending);
    // The wait ends at its deadline without an answer: DEADLINE_EXCEEDED from the handler, or,
    // on a machine too loaded for the handler's early answer to win, CANCELLED from tonic's own
    // enforcement of the same grpc-timeout. Either way alpha's completion was not seen.
    match wait(&mut beta, "same", Duration::from_millis(300)).await {
        Err(s) if s.code() == Code::DeadlineExceeded => {}
        Err(s) if s.code() == Code::Cancelled && s.message().contains("Timeout expired") => {}
        other => panic!("expected the wait to end at its deadline, got {other:?}"),
    }

    // Beta's worker gets beta's instance (alpha's worker, still connected, does not).
    let mut beta_worker = beta
        .get_work_items(GetWorkItemsRequest::default())
        .await
        .expect("GetWorkItems")
        .into_inner();
    let items = orchestrations(&mut beta_worker, 1).await;
    assert_eq!((items[0].0.as_str(), items[0].2.as_deref()), ("same", Some("\"beta\"")));
    finish(&mut beta, "same", &items[0].1, "\"beta done\"").await;
    assert_eq!(
        wait(&mut beta, "same", GUARD).await.unwrap().output.as_deref(),
        Some("\"beta done\"")
    );
    assert_eq!(get(&mut alpha, "same").await.unwrap().output.as_deref(), Some("\"alpha done\""));

    // Queries list the hub's own instances.
    assert_eq!(ids(&mut alpha).await, BTreeSet::from(["only-alpha".into(), "same".into()]));
    assert_eq!(ids(&mut beta).await, BTreeSet::from(["same".into()]));
    assert_eq!(ids(&mut default).await, BTreeSet::from(["same".into()]));

    // Entity calls stay in their hub.
    alpha
        .signal_entity(SignalEntityRequest {
            instance_id: "@counter@one".into(),
            name: "add".into(),
            input: Some("1".into()),
            request_id: "r1".into(),
            ..Default::default()
        })
        .await
        .expect("SignalEntity");
    assert_eq!(entity_ids(&mut alpha).await, ["@counter@one"]);
    assert!(entity_ids(&mut beta).await.is_empty());
    assert!(entity_ids(&mut default).await.is_empty());
    let elsewhere = GetEntityRequest {
        instance_id: "@counter@one".into(),
        include_state: true,
    };
    assert!(!beta.get_entity(elsewhere).await.expect("GetEntity").into_inner().exists);

    // A purge by filter purges the hub's own finished instances only.
    let purge = PurgeInstancesRequest {
        request: Some(purge_instances_request::Request::PurgeInstanceFilter(PurgeInstanceFilter {
            runtime_status: vec![OrchestrationStatus::Completed as i32],
            ..Default::default()
        })),
        ..Default::default()
    };
    let purged = beta.purge_instances(purge).await.expect("PurgeInstances").into_inner();
    assert_eq!(purged.deleted_instance_count, 1);
    assert!(get(&mut beta, "same").await.is_none());
    assert_eq!(ids(&mut alpha).await.len(), 2);

    // DeleteTaskHub empties its own hub.
    alpha.delete_task_hub(DeleteTaskHubRequest {}).await.expect("DeleteTaskHub");
    assert!(ids(&mut alpha).await.is_empty());
    assert!(entity_ids(&mut alpha).await.is_empty());
    assert_eq!(input_and_status(&mut default, "same").await, (Some("\"default\"".into()), pending));

    // Two named hubs are open: a third is refused, clearly, on any call.
    let mut gamma = client(&sidecar, Some("gamma")).await;
    let refused = expect_code(gamma.get_instance(GetInstanceRequest::default()).await, Code::InvalidArgument);
    assert!(refused.message().contains("--max-task-hubs"), "{}", refused.message());
    let refused = gamma.get_work_items(GetWorkItemsRequest::default()).await;
    expect_code(refused, Code::InvalidArgument);
}

#[tokio::test]
async fn hubs_are_isolated_on_sqlite() {
    isolation(Backend::Sqlite).await;
}

#[tokio::test]
async fn hubs_are_isolated_on_postgres() {
    if !common::postgres::available() {
        return;
    }
    isolation(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_hub_names_are_invalid_arguments() {
    let sidecar = Sidecar::start().await;
    for bad in ["-leading-dash", "dots.are.out", "a space", &"x".repeat(41)] {
        let mut c = client(&sidecar, Some(bad)).await;
        let refused = expect_code(c.get_instance(GetInstanceRequest::default()).await, Code::InvalidArgument);
        assert!(refused.message().starts_with("taskhub: "), "{bad}: {}", refused.message());
    }
}

#[tokio::test]
async fn without_named_hubs_only_the_default_is_served() {
    let sidecar = Sidecar::with(|o| o.task_hubs.max = 0).await;
    let mut default = client(&sidecar, Some("default")).await;
    start(&mut default, "one", "1").await;
    let mut mine = client(&sidecar, Some("mine")).await;
    expect_code(mine.get_instance(GetInstanceRequest::default()).await, Code::InvalidArgument);
}

/// A sidecar on a database of the test's choosing; stops when dropped or told to.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

async fn serve_on(url: &str) -> Server {
    let store = outrigger::store::open(url, &Default::default()).await.expect("open store");
    let mut options = outrigger::server::Options::default();
    options.task_hubs.database = Some((url.to_string(), Default::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        outrigger::server::run(vec![listener], store, options, shutdown)
            .await
            .expect("serve");
    });
    Server {
        addr,
        stop: Some(stop),
        served,
    }
}

async fn client_of(addr: std::net::SocketAddr, hub: Option<&str>) -> HubClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    TaskHubSidecarServiceClient::with_interceptor(channel, TaskHub(hub.map(|h| h.parse().expect("ascii"))))
}

async fn notification(listener: &mut sqlx::postgres::PgListener) -> String {
    guarded("a notification", listener.recv())
        .await
        .expect("notification")
        .payload()
        .to_string()
}

/// Sidecars sharing a Postgres database share its named hubs as they share the default one: a
/// commit in a hub is announced on that hub's channel only, and a worker on one sidecar gets
/// the hub's work started through another, and no other hub's.
#[tokio::test]
async fn sidecars_sharing_postgres_share_named_hubs() {
    if !common::postgres::available() {
        return;
    }
    let database = common::postgres::TestDatabase::create("hubs").await;
    let a = serve_on(&database.url).await;
    let b = serve_on(&database.url).await;
    let mut alpha_on_a = client_of(a.addr, Some("alpha")).await;
    let mut default_on_a = client_of(a.addr, None).await;
    let mut alpha_on_b = client_of(b.addr, Some("alpha")).await;

    let mut alpha_channel = sqlx::postgres::PgListener::connect(&database.url).await.expect("listen");
    alpha_channel.listen("outrigger_hub_alpha").await.expect("LISTEN");
    let mut default_channel = sqlx::postgres::PgListener::connect(&database.url).await.expect("listen");
    default_channel.listen("outrigger").await.expect("LISTEN");

    // Payloads end with the instance ids, each as "<length>:<id>".
    start(&mut alpha_on_a, "n1", "1").await;
    assert!(notification(&mut alpha_channel).await.ends_with(" 2:n1"));
    start(&mut default_on_a, "n2", "2").await;
    let first_on_default = notification(&mut default_channel).await;
    assert!(
        first_on_default.ends_with(" 2:n2"),
        "alpha's commit reached the default channel: {first_on_default}"
    );

    let mut worker = alpha_on_b
        .get_work_items(GetWorkItemsRequest::default())
        .await
        .expect("GetWorkItems")
        .into_inner();
    let first = orchestrations(&mut worker, 1).await;
    assert_eq!(first[0].0, "n1");
    finish(&mut alpha_on_b, "n1", &first[0].1, "\"done\"").await;
    // Work started through A after B's worker connected reaches it (A's commit wakes B).
    start(&mut alpha_on_a, "n3", "3").await;
    let next = orchestrations(&mut worker, 1).await;
    assert_eq!(next[0].0, "n3", "the worker of hub alpha gets alpha's work only");
    assert_eq!(
        wait(&mut alpha_on_a, "n1", GUARD).await.unwrap().output.as_deref(),
        Some("\"done\"")
    );
    assert_eq!(
        get(&mut default_on_a, "n2").await.unwrap().orchestration_status(),
        OrchestrationStatus::Pending
    );
}

/// The drain at shutdown covers every hub: a named hub's item in flight may still be answered,
/// then its worker stream ends cleanly and the server stops.
#[tokio::test]
async fn shutdown_drains_named_hubs_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut server = serve_on(&url).await;
    let mut alpha = client_of(server.addr, Some("alpha")).await;
    start(&mut alpha, "held", "1").await;
    let mut worker = alpha
        .get_work_items(GetWorkItemsRequest::default())
        .await
        .expect("GetWorkItems")
        .into_inner();
    let item = orchestrations(&mut worker, 1).await.remove(0);

    drop(server.stop.take());
    finish(&mut alpha, "held", &item.1, "\"answered while draining\"").await;
    loop {
        match guarded("the end of the stream", worker.message()).await {
            Ok(Some(_)) => continue, // health pings
            Ok(None) => break,
            Err(status) => panic!("the stream should end cleanly: {status:?}"),
        }
    }
    guarded("the server to stop", &mut server.served).await.expect("server task");

    // The answer was committed to the hub's own file.
    let store = outrigger::store::open_hub(&url, "alpha", &Default::default())
        .await
        .expect("reopen");
    let held = store.get_instance("held").await.expect("read").expect("exists");
    assert_eq!(held.output.as_deref(), Some("\"answered while draining\""));
    assert!(dir.path().join("t.hub-alpha.db").exists());
}

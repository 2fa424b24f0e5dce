//! Test harness: a real sidecar on a real socket, spoken to with the generated gRPC client.
//!
//! Every test starts its own [`Sidecar`] (fresh SQLite file in a temp dir, or a fresh Postgres
//! database with [`Sidecar::on`]), so tests never see each other's instances. Waiting is always done on something the server sends (a work item,
//! a WaitForInstance* answer); `tokio::time::timeout` is only a guard against hangs.
#![allow(dead_code)]

pub mod postgres;
pub mod raw;
pub mod spawned;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use outrigger::server::Options;
use outrigger::time::{Clock, ManualClock, SystemClock};
use prost_types::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub type Client = TaskHubSidecarServiceClient<Channel>;

/// How long any single wait may take before the test is declared hung.
pub const GUARD: Duration = Duration::from_secs(10);

/// The store a test sidecar keeps its state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// A database of the test's own on `OUTRIGGER_TEST_POSTGRES_URL`'s server.
    Postgres,
}

/// A running sidecar. Dropping it shuts the server down (and drops its Postgres database).
pub struct Sidecar {
    pub client: Client,
    pub addr: SocketAddr,
    /// The store's database URL.
    pub url: String,
    _stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    _database: Option<postgres::TestDatabase>,
}

impl Sidecar {
    /// A sidecar with default options.
    pub async fn start() -> Sidecar {
        Sidecar::with(|_| {}).await
    }

    /// A sidecar with options adjusted by `adjust` (e.g. a short ping interval).
    pub async fn with(adjust: impl FnOnce(&mut Options)) -> Sidecar {
        Sidecar::on(Backend::Sqlite, adjust).await
    }

    /// A sidecar on the given store, with options adjusted by `adjust`.
    pub async fn on(backend: Backend, adjust: impl FnOnce(&mut Options)) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres::TestDatabase::create("sidecar").await),
        };
        let url = match &database {
            None => format!("sqlite://{}", dir.path().join("t.db").display()),
            Some(db) => db.url.clone(),
        };
        Sidecar::serve(url, dir, database, adjust).await
    }

    /// Shuts the sidecar down and waits until it has stopped (drained, leases released, its
    /// connections closed), handing back its Postgres database (if it has one) to outlive it,
    /// for the sidecars [`Sidecar::sharing`] it. A database dropped while a sidecar on it still
    /// runs blocks this thread's runtime, and a connection it was opening then holds the drop up
    /// for Postgres's authentication timeout (a minute).
    pub async fn stop(self) -> Option<postgres::TestDatabase> {
        let Sidecar {
            _stop, server, _database, ..
        } = self;
        drop(_stop);
        server.await.expect("the sidecar's server ends cleanly");
        _database
    }

    /// Another sidecar on this one's Postgres database (which lives as long as this one).
    pub async fn sharing(&self, adjust: impl FnOnce(&mut Options)) -> Sidecar {
        assert!(self._database.is_some(), "only a Postgres database can be shared");
        Sidecar::serve(self.url.clone(), tempfile::tempdir().expect("temp dir"), None, adjust).await
    }

    async fn serve(
        url: String,
        dir: tempfile::TempDir,
        database: Option<postgres::TestDatabase>,
        adjust: impl FnOnce(&mut Options),
    ) -> Sidecar {
        let mut options = Options::default();
        adjust(&mut options);
        let store = outrigger::store::open(&url, &Default::default()).await.expect("open store");
        // Named task hubs live beside the test's own store, as the binary sets them up.
        if options.task_hubs.database.is_none() {
            options.task_hubs.database = Some((url.clone(), Default::default()));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = outrigger::server::run(vec![listener], store, options, shutdown).await {
                panic!("server failed: {e}");
            }
        });
        // The listener is already bound, so connecting cannot race the server's start.
        let client = Client::connect(format!("http://{addr}")).await.expect("connect");
        Sidecar {
            client,
            addr,
            url,
            _stop: stop,
            server,
            _dir: dir,
            _database: database,
        }
    }

    /// A second, independent client connection (its own HTTP/2 connection).
    pub async fn new_client(&self) -> Client {
        Client::connect(format!("http://{}", self.addr)).await.expect("connect")
    }

    /// Opens a worker stream with no concurrency limits and no capabilities.
    pub async fn worker(&self) -> Worker {
        self.worker_with(GetWorkItemsRequest::default()).await
    }

    pub async fn worker_with(&self, request: GetWorkItemsRequest) -> Worker {
        Worker::connect(&mut self.client.clone(), request).await
    }
}

/// Virtual time for one test: tokio's clock paused, and a [`ManualClock`] that follows it, for
/// the sidecar (`o.clock = time.clock()`) and for the times the test sends and checks. Nothing
/// moves until the test calls [`VirtualTime::advance`]: a scheduled start, a timer, an abandon's
/// back-off or a ping interval passes at once, and everything the sidecar sleeps towards
/// (the dispatch loop's next due time, the ping interval, lease renewal, item deadlines, call
/// deadlines) falls due exactly when the clock passes it.
///
/// Needs the current-thread runtime (`#[tokio::test]`), and a sidecar started in the process:
/// a sidecar spawned as its own process runs on real time.
pub struct VirtualTime {
    clock: Arc<ManualClock>,
    /// Dropped with this, which ends the blocking task that holds auto-advance off.
    _hold: std::sync::mpsc::Sender<()>,
}

/// How long, in real time, a test on virtual time may run before its guards may fire: after
/// this, tokio's clock advances on its own whenever the runtime is idle, so a test that waits
/// for something that never comes fails on its guard instead of hanging.
const VIRTUAL_WATCHDOG: Duration = Duration::from_secs(60);

impl VirtualTime {
    pub fn start() -> VirtualTime {
        tokio::time::pause();
        // A paused clock advances on its own to the next timer whenever the runtime is idle,
        // and it is idle whenever the sidecar waits for SQLite's thread or a socket: leases,
        // pings and the test's guards would fire while a query is in flight. While a blocking
        // task runs it does not, so one runs for as long as the test holds this.
        let (hold, released) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = released.recv_timeout(VIRTUAL_WATCHDOG);
        });
        VirtualTime {
            clock: Arc::new(ManualClock::new(SystemClock.now())),
            _hold: hold,
        }
    }

    /// Sets what a sidecar on this virtual time needs: its clock, and no HTTP/2 keepalive (a
    /// jump of the clock past a keepalive ping's answer window could close the connection
    /// before the runtime has read the answer; keepalive is transport liveness, tested on real
    /// time).
    pub fn options(&self, o: &mut Options) {
        o.clock = self.clock.clone();
        o.keepalive = None;
    }

    /// The clock's time, in milliseconds since the Unix epoch (what [`ts`] takes).
    pub fn now_ms(&self) -> i64 {
        self.clock.now().div_euclid(1_000)
    }

    /// Moves the clock, and every tokio timer with it, by `by` and one millisecond more: tokio
    /// rounds a timer's deadline up to its next millisecond, so a timer due exactly `by` from
    /// now would otherwise wait for a millisecond that, with auto-advance held off, never comes.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by + Duration::from_millis(1)).await;
    }
}

/// Runs `f` under the hang guard.
pub async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// Raw worker
// ---------------------------------------------------------------------------------------------

/// A raw worker: one GetWorkItems stream. Dropping it drops the stream.
pub struct Worker {
    stream: tonic::Streaming<WorkItem>,
}

impl Worker {
    pub async fn connect(client: &mut Client, request: GetWorkItemsRequest) -> Worker {
        // The server registers the worker before it answers with the response headers, so once
        // this returns the dispatcher knows about it.
        let stream = client.get_work_items(request).await.expect("GetWorkItems").into_inner();
        Worker { stream }
    }

    /// The next message on the stream, health pings included, within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> WorkItem {
        match tokio::time::timeout(limit, self.stream.message()).await {
            Err(_) => panic!("no work item within {limit:?}"),
            Ok(Err(status)) => panic!("work item stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("work item stream ended"),
            Ok(Ok(Some(item))) => item,
        }
    }

    /// The next message, or `None` once the server has ended the stream cleanly.
    pub async fn stream_message(&mut self) -> Option<WorkItem> {
        self.stream.message().await.expect("work item stream failed")
    }

    /// The next message on the stream, health pings included.
    pub async fn next_raw(&mut self) -> WorkItem {
        self.next_within(GUARD).await
    }

    /// The next real work item, skipping health pings.
    pub async fn next(&mut self) -> WorkItem {
        loop {
            let item = self.next_raw().await;
            if !matches!(item.request, Some(Item::HealthPing(_))) {
                return item;
            }
        }
    }

    /// The next work item, which must be an orchestrator request: (completion token, request).
    pub async fn orchestration(&mut self) -> (String, OrchestratorRequest) {
        let item = self.next().await;
        match item.request {
            Some(Item::OrchestratorRequest(r)) => (item.completion_token, r),
            other => panic!("expected an orchestrator work item, got {other:?}"),
        }
    }

    /// The next work item, which must be an activity request: (completion token, request).
    pub async fn activity(&mut self) -> (String, ActivityRequest) {
        let item = self.next().await;
        match item.request {
            Some(Item::ActivityRequest(r)) => (item.completion_token, r),
            other => panic!("expected an activity work item, got {other:?}"),
        }
    }

    /// The next `n` orchestrator work items, by instance id (they may arrive in any order).
    pub async fn orchestrations(&mut self, n: usize) -> HashMap<String, (String, OrchestratorRequest)> {
        let mut items = HashMap::new();
        while items.len() < n {
            let (token, request) = self.orchestration().await;
            let previous = items.insert(request.instance_id.clone(), (token, request));
            assert!(previous.is_none(), "two orchestrator work items for one instance at once");
        }
        items
    }
}

// ---------------------------------------------------------------------------------------------
// Client calls
// ---------------------------------------------------------------------------------------------

pub async fn start(client: &mut Client, instance_id: &str, name: &str, input: Option<&str>) -> String {
    let request = CreateInstanceRequest {
        instance_id: instance_id.into(),
        name: name.into(),
        input: input.map(Into::into),
        ..Default::default()
    };
    client
        .start_instance(request)
        .await
        .expect("StartInstance")
        .into_inner()
        .instance_id
}

/// Starts an instance whose start time is an hour away, so it stays PENDING and is never
/// dispatched during the test.
pub async fn start_later(client: &mut Client, instance_id: &str) -> String {
    let request = CreateInstanceRequest {
        instance_id: instance_id.into(),
        name: "Later".into(),
        scheduled_start_timestamp: Some(ts(now_ms() + 3_600_000)),
        ..Default::default()
    };
    client
        .start_instance(request)
        .await
        .expect("StartInstance")
        .into_inner()
        .instance_id
}

pub async fn get(client: &mut Client, instance_id: &str) -> Option<OrchestrationState> {
    let request = GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs: true,
    };
    let response = client.get_instance(request).await.expect("GetInstance").into_inner();
    assert_eq!(
        response.exists,
        response.orchestration_state.is_some(),
        "exists must match the state's presence"
    );
    response.orchestration_state
}

pub async fn status_of(client: &mut Client, instance_id: &str) -> OrchestrationStatus {
    let state = get(client, instance_id)
        .await
        .unwrap_or_else(|| panic!("instance '{instance_id}' does not exist"));
    state.orchestration_status()
}

/// The committed history of an instance's current execution.
pub async fn history(client: &mut Client, instance_id: &str) -> Vec<HistoryEvent> {
    history_for(
        client,
        StreamInstanceHistoryRequest {
            instance_id: instance_id.into(),
            ..Default::default()
        },
    )
    .await
}

pub async fn history_for(client: &mut Client, request: StreamInstanceHistoryRequest) -> Vec<HistoryEvent> {
    let mut stream = client
        .stream_instance_history(request)
        .await
        .expect("StreamInstanceHistory")
        .into_inner();
    let mut events = vec![];
    while let Some(chunk) = guarded("history chunks", stream.message()).await.expect("history chunk") {
        events.extend(chunk.events);
    }
    events
}

/// WaitForInstanceCompletion with a generous deadline; the instance must exist.
pub async fn wait_completion(client: &mut Client, instance_id: &str) -> OrchestrationState {
    let mut request = tonic::Request::new(GetInstanceRequest {
        instance_id: instance_id.into(),
        get_inputs_and_outputs: true,
    });
    request.set_timeout(GUARD);
    let response = guarded("WaitForInstanceCompletion", client.wait_for_instance_completion(request))
        .await
        .expect("WaitForInstanceCompletion")
        .into_inner();
    response
        .orchestration_state
        .unwrap_or_else(|| panic!("instance '{instance_id}' does not exist"))
}

pub async fn complete_orchestrator(
    client: &mut Client,
    token: &str,
    instance_id: &str,
    actions: Vec<OrchestratorAction>,
) -> Result<(), Status> {
    let response = OrchestratorResponse {
        instance_id: instance_id.into(),
        completion_token: token.into(),
        actions,
        ..Default::default()
    };
    client.complete_orchestrator_task(response).await.map(|_| ())
}

pub async fn complete_activity(client: &mut Client, token: &str, request: &ActivityRequest, result: &str) -> Result<(), Status> {
    let response = ActivityResponse {
        instance_id: request
            .orchestration_instance
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default(),
        task_id: request.task_id,
        result: Some(result.into()),
        completion_token: token.into(),
        failure_details: None,
    };
    client.complete_activity_task(response).await.map(|_| ())
}

/// Starts an instance and runs it to COMPLETED with `output` through `worker`.
pub async fn run_to_completion(client: &mut Client, worker: &mut Worker, instance_id: &str, output: &str) {
    start(client, instance_id, "Quick", None).await;
    let (token, request) = worker.orchestration().await;
    assert_eq!(request.instance_id, instance_id);
    complete_orchestrator(
        client,
        &token,
        instance_id,
        vec![complete(1, OrchestrationStatus::Completed, output)],
    )
    .await
    .expect("complete orchestration");
    let state = wait_completion(client, instance_id).await;
    assert_eq!(state.orchestration_status(), OrchestrationStatus::Completed);
}

// ---------------------------------------------------------------------------------------------
// Actions and events
// ---------------------------------------------------------------------------------------------

pub fn action(id: i32, kind: ActionType) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(kind),
    }
}

pub fn schedule_task(id: i32, name: &str, input: &str) -> OrchestratorAction {
    action(
        id,
        ActionType::ScheduleTask(ScheduleTaskAction {
            name: name.into(),
            input: Some(input.into()),
            ..Default::default()
        }),
    )
}

pub fn complete(id: i32, status: OrchestrationStatus, result: &str) -> OrchestratorAction {
    action(
        id,
        ActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: status as i32,
            result: Some(result.into()),
            ..Default::default()
        }),
    )
}

pub fn create_timer(id: i32, fire_at_ms: i64) -> OrchestratorAction {
    action(
        id,
        ActionType::CreateTimer(CreateTimerAction {
            fire_at: Some(ts(fire_at_ms)),
        }),
    )
}

/// The event's kind as a short name ("TaskScheduled", "OrchestratorStarted", ...).
pub fn kind(event: &HistoryEvent) -> String {
    match &event.event_type {
        None => "None".into(),
        Some(t) => {
            let debug = format!("{t:?}");
            debug.split('(').next().unwrap_or_default().to_string()
        }
    }
}

pub fn kinds(events: &[HistoryEvent]) -> Vec<String> {
    events.iter().map(kind).collect()
}

pub fn execution_started(event: &HistoryEvent) -> &ExecutionStartedEvent {
    match &event.event_type {
        Some(EventType::ExecutionStarted(e)) => e,
        _ => panic!("expected ExecutionStarted, got {event:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Time and status checks
// ---------------------------------------------------------------------------------------------

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

pub fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn ms(ts: &Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

/// Asserts a call failed with `code`, returning the status for further checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// Measures how long `f` takes.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = f.await;
    (value, started.elapsed())
}

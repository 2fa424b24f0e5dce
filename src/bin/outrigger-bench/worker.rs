//! The bench's own worker: one GetWorkItems stream, answered straight from the generated
//! client with no SDK in between, so the figures are the sidecar's and not a worker's.
//!
//! It declares no capabilities (in particular not history streaming), echoes whatever
//! completion token an item carries (an empty one when the server sends none), answers
//! orchestrator items with [`decide`], activity items with a fixed result and entity batches by
//! counting (each operation adds one to the entity's state). Each item is
//! handled on its own task so answers overlap as they would with a real worker pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::workload::{ACTIVITY_RESULT, Script, decide};

pub type Client = TaskHubSidecarServiceClient<Channel>;

/// What the worker saw, for the report.
#[derive(Debug, Default)]
pub struct Observed {
    /// For each TimerFired received: receipt time minus the timer's fireAt, in ms.
    pub timer_lateness_ms: Vec<f64>,
    /// Per instance, when each of its orchestrator work items arrived (only if asked for).
    pub episodes: HashMap<String, Vec<Instant>>,
    /// Activities completed and acknowledged by the server.
    pub activities: u64,
    /// Entity operations executed and acknowledged by the server.
    pub entity_operations: u64,
    pub errors: Errors,
}

/// A count of errors and the first few messages.
#[derive(Debug, Default)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, message: String) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(message);
        }
    }
}

/// A worker with one stream per server; dropping it closes them.
pub struct Worker {
    tasks: Vec<JoinHandle<()>>,
    pub observed: Arc<Mutex<Observed>>,
    /// Entity operations acknowledged so far, for waiting on them.
    pub entity_operations: watch::Receiver<u64>,
    /// Why the work-item stream stopped, once it has.
    pub stopped: watch::Receiver<Option<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Worker {
    /// Starts the worker. The stream is opened on the worker's own task, so the caller never
    /// waits for the response headers: a server may send them only with its first work item
    /// (grpc-go does), which comes only after the caller started something. Each instance
    /// whose completing answer the server accepted is sent on `completed`. With
    /// `track_episodes` the arrival time of every orchestrator item is kept. Once a stream
    /// cannot be opened, fails or ends, [`Worker::stopped`] holds why. One stream is opened on
    /// each of `clients` (servers sharing a database); what they observe is added up.
    pub fn start(clients: Vec<Client>, script: Arc<Script>, track_episodes: bool, completed: mpsc::UnboundedSender<String>) -> Worker {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let (entity_tx, entity_operations) = watch::channel(0);
        let entity_tx = Arc::new(entity_tx);
        let (stopped_tx, stopped) = watch::channel(None);
        let stopped_tx = Arc::new(stopped_tx);
        let tasks = clients
            .into_iter()
            .map(|client| {
                let (observed, entity_tx, stopped_tx) = (Arc::clone(&observed), Arc::clone(&entity_tx), Arc::clone(&stopped_tx));
                tokio::spawn(stream(
                    client,
                    Arc::clone(&script),
                    track_episodes,
                    completed.clone(),
                    observed,
                    entity_tx,
                    stopped_tx,
                ))
            })
            .collect();
        Worker {
            tasks,
            observed,
            entity_operations,
            stopped,
        }
    }
}

/// One work-item stream: opens it and hands each item to its own task until it stops.
async fn stream(
    mut client: Client,
    script: Arc<Script>,
    track_episodes: bool,
    completed: mpsc::UnboundedSender<String>,
    shared: Arc<Mutex<Observed>>,
    entity_tx: Arc<watch::Sender<u64>>,
    stopped_tx: Arc<watch::Sender<Option<String>>>,
) {
    let why = match client.get_work_items(GetWorkItemsRequest::default()).await {
        Err(status) => format!("GetWorkItems: {status}"),
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(item)) => {
                        let handler = Handler {
                            client: client.clone(),
                            entity_operations: Arc::clone(&entity_tx),
                            script: Arc::clone(&script),
                            observed: Arc::clone(&shared),
                            completed: completed.clone(),
                            track_episodes,
                        };
                        tokio::spawn(handler.handle(item));
                    }
                    Ok(None) => break "the work-item stream ended".to_string(),
                    Err(status) => break format!("the work-item stream failed: {status}"),
                }
            }
        }
    };
    shared.lock().unwrap().errors.add(why.clone());
    let _ = stopped_tx.send(Some(why));
}

struct Handler {
    client: Client,
    entity_operations: Arc<watch::Sender<u64>>,
    script: Arc<Script>,
    observed: Arc<Mutex<Observed>>,
    completed: mpsc::UnboundedSender<String>,
    track_episodes: bool,
}

impl Handler {
    async fn handle(mut self, item: WorkItem) {
        let token = item.completion_token;
        match item.request {
            Some(Item::OrchestratorRequest(r)) => self.orchestrator(token, r).await,
            Some(Item::ActivityRequest(r)) => self.activity(token, r).await,
            Some(Item::HealthPing(_)) | None => {}
            Some(Item::EntityRequestV2(r)) => self.entity(token, r.instance_id, r.entity_state, r.operation_requests.len()).await,
            Some(Item::EntityRequest(r)) => self.entity(token, r.instance_id, r.entity_state, r.operations.len()).await,
        }
    }

    async fn orchestrator(&mut self, token: String, r: OrchestratorRequest) {
        let arrived = Instant::now();
        let wall = SystemTime::now();
        {
            let mut observed = self.observed.lock().unwrap();
            for event in &r.new_events {
                if let Some(EventType::TimerFired(t)) = &event.event_type
                    && let Some(due) = t.fire_at.and_then(|ts| SystemTime::try_from(ts).ok())
                {
                    observed.timer_lateness_ms.push(signed_ms(wall, due));
                }
            }
            if self.track_episodes {
                observed.episodes.entry(r.instance_id.clone()).or_default().push(arrived);
            }
        }
        if r.requires_history_streaming {
            // We never declare the capability, so a server asking for it is not following the
            // protocol; hand the item back rather than answer from a partial history.
            let _ = self
                .client
                .abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest { completion_token: token })
                .await;
            self.error(format!(
                "server asked to stream history for '{}' without the capability",
                r.instance_id
            ));
            return;
        }
        let actions = decide(&self.script, &r.past_events, &r.new_events);
        let completes = actions
            .iter()
            .any(|a| matches!(a.orchestrator_action_type, Some(ActionType::CompleteOrchestration(_))));
        let response = OrchestratorResponse {
            instance_id: r.instance_id.clone(),
            actions,
            completion_token: token,
            ..Default::default()
        };
        match self.client.complete_orchestrator_task(response).await {
            Ok(_) if completes => {
                let _ = self.completed.send(r.instance_id);
            }
            Ok(_) => {}
            Err(status) => self.error(format!("CompleteOrchestratorTask '{}': {status}", r.instance_id)),
        }
    }

    async fn activity(&mut self, token: String, r: ActivityRequest) {
        let instance_id = r.orchestration_instance.map(|i| i.instance_id).unwrap_or_default();
        let response = ActivityResponse {
            instance_id: instance_id.clone(),
            task_id: r.task_id,
            result: Some(ACTIVITY_RESULT.into()),
            completion_token: token,
            failure_details: None,
        };
        match self.client.complete_activity_task(response).await {
            Ok(_) => self.observed.lock().unwrap().activities += 1,
            Err(status) => self.error(format!("CompleteActivityTask '{instance_id}' #{}: {status}", r.task_id)),
        }
    }

    /// Every entity counts its operations: each adds one to the state.
    async fn entity(&mut self, token: String, instance_id: String, state: Option<String>, operations: usize) {
        let before: u64 = state.and_then(|s| s.parse().ok()).unwrap_or(0);
        let ok = OperationResult {
            result_type: Some(operation_result::ResultType::Success(OperationResultSuccess::default())),
        };
        let result = EntityBatchResult {
            results: vec![ok; operations],
            entity_state: Some((before + operations as u64).to_string()),
            completion_token: token,
            ..Default::default()
        };
        match self.client.complete_entity_task(result).await {
            Ok(_) => {
                self.observed.lock().unwrap().entity_operations += operations as u64;
                self.entity_operations.send_modify(|n| *n += operations as u64);
            }
            Err(status) => self.error(format!("CompleteEntityTask '{instance_id}': {status}")),
        }
    }

    fn error(&self, message: String) {
        self.observed.lock().unwrap().errors.add(message);
    }
}

/// `a - b` in milliseconds, negative when `a` is earlier.
fn signed_ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

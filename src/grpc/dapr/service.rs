//! The Dapr-dialect `TaskHubSidecarService`: each RPC converts its request to the Microsoft
//! dialect, runs the Microsoft handler (which owns every rule) and converts the answer back.

use std::collections::HashMap;
use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{self, recode};
use super::proto as dp;
use crate::engine::rerun::RerunRequest;
use crate::grpc::Service;
use crate::proto as ms;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarService as Microsoft;

type Rpc<T> = Result<Response<T>, Status>;

/// How long a forced purge waits for a live instance's termination to be recorded.
const FORCE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the Dapr dialect over the same handlers as the Microsoft one.
#[derive(Debug, Clone)]
pub struct DaprService {
    inner: Service,
    /// The app this sidecar serves, when named; routers to other apps are refused.
    app_id: Option<String>,
}

impl DaprService {
    pub fn new(inner: Service, app_id: Option<String>) -> Self {
        DaprService { inner, app_id }
    }
}

/// Swaps a request's message, keeping its metadata (deadlines, trace headers).
fn with<T, U>(r: Request<T>, f: impl FnOnce(T) -> Result<U, Status>) -> Result<Request<U>, Status> {
    let (metadata, extensions, message) = r.into_parts();
    Ok(Request::from_parts(metadata, extensions, f(message)?))
}

/// Requests whose Dapr form is the Microsoft one plus an optional router.
macro_rules! routed {
    ($self:ident, $r:expr) => {
        with($r, |mut m| {
            convert::check_router(m.router.take(), $self.app_id.as_deref())?;
            recode(&m)
        })?
    };
}

pub type DaprWorkStream = Pin<Box<dyn Stream<Item = Result<dp::WorkItem, Status>> + Send>>;

/// What a stateful-history worker already holds of an instance: the first `events` committed
/// events of execution `execution_id`, as sent in the last turn on this stream.
struct Warm {
    execution_id: Option<String>,
    events: usize,
}

/// Per-stream translation of Microsoft work items into Dapr ones.
struct WorkItems {
    inner: Service,
    stateful: bool,
    health_pings: bool,
    warm: HashMap<String, Warm>,
}

impl WorkItems {
    fn translate(&mut self, item: ms::WorkItem) -> Option<Result<dp::WorkItem, Status>> {
        use dp::work_item::Request as Dp;
        use ms::work_item::Request as Ms;
        let request = match item.request? {
            Ms::OrchestratorRequest(o) => match self.turn(&o) {
                Ok(w) => Dp::WorkflowRequest(w),
                Err(e) => return Some(Err(e)),
            },
            Ms::ActivityRequest(a) => match convert::activity_request(&a) {
                Ok(a) => Dp::ActivityRequest(a),
                Err(e) => return Some(Err(e)),
            },
            // Only workers that asked for pings get them (at Dapr's tag).
            Ms::HealthPing(_) if self.health_pings => Dp::HealthPing(dp::HealthPing {}),
            Ms::HealthPing(_) => return None,
            // Entities do not exist in the Dapr dialect: the item goes back for a
            // Microsoft-dialect worker to take.
            Ms::EntityRequest(_) | Ms::EntityRequestV2(_) => {
                let inner = self.inner.clone();
                let completion_token = item.completion_token;
                tokio::spawn(async move {
                    let abandon = ms::AbandonEntityTaskRequest { completion_token };
                    let _ = inner.abandon_task_entity_work_item(Request::new(abandon)).await;
                });
                return None;
            }
        };
        Some(Ok(dp::WorkItem {
            request: Some(request),
            completion_token: item.completion_token,
        }))
    }

    /// An orchestration turn; for a stateful-history worker that holds a prefix of this
    /// execution's history, only the committed events after that prefix.
    fn turn(&mut self, o: &ms::OrchestratorRequest) -> Result<dp::WorkflowRequest, Status> {
        let mut w = convert::workflow_request(o)?;
        if !self.stateful {
            return Ok(w);
        }
        let committed = w.past_events.len();
        if let Some(warm) = self.warm.get(&o.instance_id)
            && warm.events > 0
            && warm.events <= committed
            && warm.execution_id == o.execution_id
        {
            w.past_events.drain(..warm.events);
            w.cached_history = Some(dp::CachedHistory {
                event_count: warm.events as i32,
            });
        }
        self.warm.insert(
            o.instance_id.clone(),
            Warm {
                execution_id: o.execution_id.clone(),
                events: committed,
            },
        );
        Ok(w)
    }
}

#[tonic::async_trait]
impl dp::task_hub_sidecar_service_server::TaskHubSidecarService for DaprService {
    async fn hello(&self, r: Request<()>) -> Rpc<()> {
        self.inner.hello(r).await
    }

    async fn start_instance(&self, r: Request<dp::CreateInstanceRequest>) -> Rpc<dp::CreateInstanceResponse> {
        let mut enforce_unique = false;
        let r = with(r, |m| {
            let (m, unique) = convert::create(m, self.app_id.as_deref())?;
            enforce_unique = unique;
            Ok(m)
        })?;
        match self.inner.start_instance(r).await {
            Ok(a) => Ok(Response::new(recode(a.get_ref())?)),
            // The Dapr SDKs look for this phrase.
            Err(e) if e.code() == tonic::Code::AlreadyExists => Err(Status::already_exists(format!(
                "orchestration instance already exists: {}{}",
                e.message(),
                if enforce_unique { " (enforceUniqueInstanceId)" } else { "" }
            ))),
            Err(e) => Err(e),
        }
    }

    async fn get_instance(&self, r: Request<dp::GetInstanceRequest>) -> Rpc<dp::GetInstanceResponse> {
        let a = self.inner.get_instance(routed!(self, r)).await?;
        Ok(Response::new(convert::instance(a.into_inner())?))
    }

    async fn wait_for_instance_start(&self, r: Request<dp::GetInstanceRequest>) -> Rpc<dp::GetInstanceResponse> {
        self.wait(r, Until::Started).await
    }

    async fn wait_for_instance_completion(&self, r: Request<dp::GetInstanceRequest>) -> Rpc<dp::GetInstanceResponse> {
        self.wait(r, Until::Completed).await
    }

    async fn raise_event(&self, r: Request<dp::RaiseEventRequest>) -> Rpc<dp::RaiseEventResponse> {
        self.inner.raise_event(routed!(self, r)).await?;
        Ok(Response::new(dp::RaiseEventResponse {}))
    }

    async fn terminate_instance(&self, r: Request<dp::TerminateRequest>) -> Rpc<dp::TerminateResponse> {
        self.inner.terminate_instance(routed!(self, r)).await?;
        Ok(Response::new(dp::TerminateResponse {}))
    }

    async fn suspend_instance(&self, r: Request<dp::SuspendRequest>) -> Rpc<dp::SuspendResponse> {
        self.inner.suspend_instance(routed!(self, r)).await?;
        Ok(Response::new(dp::SuspendResponse {}))
    }

    async fn resume_instance(&self, r: Request<dp::ResumeRequest>) -> Rpc<dp::ResumeResponse> {
        self.inner.resume_instance(routed!(self, r)).await?;
        Ok(Response::new(dp::ResumeResponse {}))
    }

    async fn purge_instances(&self, r: Request<dp::PurgeInstancesRequest>) -> Rpc<dp::PurgeInstancesResponse> {
        let mut force = false;
        let r = with(r, |m| {
            let (m, f) = convert::purge(m, self.app_id.as_deref())?;
            force = f;
            Ok(m)
        })?;
        let single = match &r.get_ref().request {
            Some(ms::purge_instances_request::Request::InstanceId(id)) => Some(id.clone()),
            _ => None,
        };
        if force && let Some(id) = &single {
            self.force_finish(id).await?;
        }
        let a = self.inner.purge_instances(r).await?;
        Ok(Response::new(recode(a.get_ref())?))
    }

    type GetWorkItemsStream = DaprWorkStream;
    async fn get_work_items(&self, r: Request<dp::GetWorkItemsRequest>) -> Rpc<Self::GetWorkItemsStream> {
        let capabilities = &r.get_ref().capabilities;
        let mut items = WorkItems {
            inner: self.inner.clone(),
            stateful: capabilities.contains(&(dp::WorkerCapability::StatefulHistory as i32)),
            health_pings: capabilities.contains(&(dp::WorkerCapability::HealthPing as i32)),
            warm: HashMap::new(),
        };
        // The Microsoft request with no limits, filters or capabilities: the defaults.
        let r = with(r, |_| Ok(ms::GetWorkItemsRequest::default()))?;
        let stream = self.inner.get_work_items(r).await?.into_inner();
        let stream = stream.filter_map(move |item| match item {
            Ok(item) => items.translate(item),
            Err(e) => Some(Err(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn complete_activity_task(&self, r: Request<dp::ActivityResponse>) -> Rpc<dp::CompleteTaskResponse> {
        self.inner.complete_activity_task(with(r, |m| recode(&m))?).await?;
        Ok(Response::new(dp::CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(&self, r: Request<dp::WorkflowResponse>) -> Rpc<dp::CompleteTaskResponse> {
        self.inner
            .complete_orchestrator_task(with(r, |m| convert::workflow_response(m, self.app_id.as_deref()))?)
            .await?;
        Ok(Response::new(dp::CompleteTaskResponse {}))
    }

    async fn complete_workflow_task(&self, r: Request<dp::WorkflowResponse>) -> Rpc<dp::CompleteTaskResponse> {
        self.complete_orchestrator_task(r).await
    }

    async fn rerun_workflow_from_event(&self, r: Request<dp::RerunWorkflowFromEventRequest>) -> Rpc<dp::RerunWorkflowFromEventResponse> {
        let m = r.into_inner();
        convert::check_router(m.router, self.app_id.as_deref())?;
        let request = RerunRequest {
            event_id: i32::try_from(m.event_id).map_err(|_| Status::invalid_argument(format!("eventID {} is out of range", m.event_id)))?,
            new_instance_id: m.new_instance_id.unwrap_or_default(),
            input: m.overwrite_input.then_some(m.input),
            new_child_instance_id: m.new_child_workflow_instance_id.filter(|id| !id.is_empty()),
        };
        let new_instance_id = self.inner.rerun(&m.source_instance_id, request).await?;
        Ok(Response::new(dp::RerunWorkflowFromEventResponse { new_instance_id }))
    }

    async fn list_instance_i_ds(&self, r: Request<dp::ListInstanceIDsRequest>) -> Rpc<dp::ListInstanceIDsResponse> {
        let r = with(r, |m| {
            Ok(ms::QueryInstancesRequest {
                query: Some(ms::InstanceQuery {
                    max_instance_count: i32::try_from(m.page_size.unwrap_or(0)).unwrap_or(i32::MAX),
                    continuation_token: m.continuation_token,
                    fetch_inputs_and_outputs: false,
                    ..Default::default()
                }),
            })
        })?;
        let a = self.inner.query_instances(r).await?.into_inner();
        Ok(Response::new(dp::ListInstanceIDsResponse {
            instance_ids: a.orchestration_state.into_iter().map(|s| s.instance_id).collect(),
            continuation_token: a.continuation_token,
        }))
    }

    async fn get_instance_history(&self, r: Request<dp::GetInstanceHistoryRequest>) -> Rpc<dp::GetInstanceHistoryResponse> {
        let r = with(r, |m| {
            Ok(ms::StreamInstanceHistoryRequest {
                instance_id: m.instance_id,
                ..Default::default()
            })
        })?;
        let mut chunks = self.inner.stream_instance_history(r).await?.into_inner();
        let mut events = vec![];
        while let Some(chunk) = chunks.next().await {
            events.extend(chunk?.events);
        }
        Ok(Response::new(dp::GetInstanceHistoryResponse {
            events: convert::history(&events)?,
        }))
    }
}

/// What a wait waits for.
enum Until {
    Started,
    Completed,
}

impl DaprService {
    /// Dapr reads an unknown instance as not existing, at once, rather than waiting for it to
    /// be created as the Microsoft dialect does.
    async fn wait(&self, r: Request<dp::GetInstanceRequest>, until: Until) -> Rpc<dp::GetInstanceResponse> {
        let r = routed!(self, r);
        if let Some(absent) = self.absent(r.get_ref()).await? {
            return Ok(Response::new(absent));
        }
        let a = match until {
            Until::Started => self.inner.wait_for_instance_start(r).await?,
            Until::Completed => self.inner.wait_for_instance_completion(r).await?,
        };
        Ok(Response::new(convert::instance(a.into_inner())?))
    }

    /// The answer for an instance that does not exist, or None when it does.
    async fn absent(&self, r: &ms::GetInstanceRequest) -> Result<Option<dp::GetInstanceResponse>, Status> {
        let get = ms::GetInstanceRequest {
            instance_id: r.instance_id.clone(),
            get_inputs_and_outputs: false,
        };
        let found = self.inner.get_instance(Request::new(get)).await?.into_inner();
        Ok((!found.exists).then_some(dp::GetInstanceResponse {
            exists: false,
            workflow_state: None,
        }))
    }

    /// `force` purges an instance whatever its state: a live one is terminated first and
    /// purged once the termination is recorded.
    async fn force_finish(&self, id: &str) -> Result<(), Status> {
        let get = |id: &str| ms::GetInstanceRequest {
            instance_id: id.to_string(),
            get_inputs_and_outputs: false,
        };
        let state = self.inner.get_instance(Request::new(get(id))).await?.into_inner();
        let live = state
            .orchestration_state
            .is_some_and(|s| !crate::model::is_terminal(ms::OrchestrationStatus::try_from(s.orchestration_status).unwrap_or_default()));
        if live {
            self.inner
                .terminate_instance(Request::new(ms::TerminateRequest {
                    instance_id: id.to_string(),
                    output: None,
                    recursive: false,
                }))
                .await?;
            let finished = self.inner.wait_for_instance_completion(Request::new(get(id)));
            tokio::time::timeout(FORCE_WAIT, finished).await.map_err(|_| {
                Status::failed_precondition(format!(
                    "instance '{id}' was asked to terminate for a forced purge but did not finish within {FORCE_WAIT:?} (is a worker connected?)"
                ))
            })??;
        }
        Ok(())
    }
}

//! `TaskHubSidecarService`: input checks and wire <-> domain translation, one handler per RPC.
//! Client-facing RPCs live in [`client`], worker-facing ones in [`worker`]; the store and the
//! dispatcher do the work. [`dapr`] serves the Dapr dialect of the same service, translated
//! onto these handlers; both dialects' errors become statuses in [`status`] and nowhere else.

mod auth_layer;
pub(crate) mod client;
pub mod codec;
pub mod dapr;
mod entities;
mod refusal;
mod rerun;
pub mod status;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

pub use auth_layer::AuthLayer;

use crate::auth::Caller;
use crate::dispatch::Dispatcher;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarService;
use crate::proto::*;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::time::{Clock, Micros};
use crate::watchers::Watchers;

pub use refusal::refusal_codes;

/// The service state shared by all handlers.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    dispatcher: Arc<Dispatcher>,
    /// Clients waiting on an instance subscribe here; the dispatcher wakes them.
    watchers: Arc<Watchers>,
    telemetry: Telemetry,
    /// How long a WaitForInstance* call without a deadline may wait.
    max_wait: Duration,
    /// Where created, last-updated and event times and scheduled starts are read.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        dispatcher: Arc<Dispatcher>,
        watchers: Arc<Watchers>,
        telemetry: Telemetry,
        max_wait: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Service {
            store,
            dispatcher,
            watchers,
            telemetry,
            max_wait,
            clock,
        }
    }

    /// The time of day, from the sidecar's clock.
    pub fn now(&self) -> Micros {
        self.clock.now()
    }

    /// The store, for the HTTP listener's readiness probe and metrics.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Instance waits and the change feed (the dashboard's live view).
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }
}

/// When a call reached the server, stamped on every request by [`stamp_arrival`] (the
/// outermost layer) so that deadlines count from the same moment tonic's own enforcement does.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub tokio::time::Instant);

pub fn stamp_arrival<B>(mut request: tonic::codegen::http::Request<B>) -> tonic::codegen::http::Request<B> {
    request.extensions_mut().insert(Arrival(tokio::time::Instant::now()));
    request
}

/// Most encoded bytes of the rows of one query page (QueryInstances, ListInstanceIds,
/// QueryEntities): a page ends early, with a continuation, rather than grow past this, so it
/// stays well under the 4 MiB an SDK's gRPC client receives by default however large the
/// instances' inputs and outputs are. A single row larger than this still goes out, alone.
pub(crate) const MAX_PAGE_BYTES: usize = 2 << 20;

/// One page of query results: the first `limit` of `rows` (the store was asked for one more,
/// which tells whether another page exists), fewer when their encoded size would pass
/// [`MAX_PAGE_BYTES`], with the continuation naming the last row kept.
pub(crate) fn page<R, T: prost::Message>(
    rows: Vec<R>,
    limit: usize,
    key: impl Fn(&R) -> String,
    convert: impl Fn(R) -> T,
) -> (Vec<T>, Option<String>) {
    let mut more = rows.len() > limit;
    let (mut page, mut bytes, mut last) = (Vec::new(), 0, None);
    for row in rows.into_iter().take(limit) {
        let row_key = key(&row);
        let message = convert(row);
        // A repeated field's entry costs its length, a tag and a length prefix.
        bytes += message.encoded_len() + 8;
        if !page.is_empty() && bytes > MAX_PAGE_BYTES {
            more = true;
            break;
        }
        page.push(message);
        last = Some(row_key);
    }
    (page, last.filter(|_| more))
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl TaskHubSidecarService for Service {
    async fn hello(&self, _: Request<()>) -> Rpc<()> {
        Ok(Response::new(()))
    }
    async fn start_instance(&self, r: Request<CreateInstanceRequest>) -> Rpc<CreateInstanceResponse> {
        self.start(r.into_inner()).await.map(Response::new)
    }
    async fn get_instance(&self, r: Request<GetInstanceRequest>) -> Rpc<GetInstanceResponse> {
        self.get(r.into_inner()).await.map(Response::new)
    }
    async fn rewind_instance(&self, r: Request<RewindInstanceRequest>) -> Rpc<RewindInstanceResponse> {
        self.rewind(r.into_inner()).await.map(Response::new)
    }
    async fn restart_instance(&self, r: Request<RestartInstanceRequest>) -> Rpc<RestartInstanceResponse> {
        self.restart(r.into_inner()).await.map(Response::new)
    }
    async fn wait_for_instance_start(&self, r: Request<GetInstanceRequest>) -> Rpc<GetInstanceResponse> {
        let deadline = client::deadline(&r)?;
        self.wait(r.into_inner(), deadline, |s| s != OrchestrationStatus::Pending)
            .await
            .map(Response::new)
    }
    async fn wait_for_instance_completion(&self, r: Request<GetInstanceRequest>) -> Rpc<GetInstanceResponse> {
        let deadline = client::deadline(&r)?;
        self.wait(r.into_inner(), deadline, crate::model::is_terminal)
            .await
            .map(Response::new)
    }
    async fn raise_event(&self, r: Request<RaiseEventRequest>) -> Rpc<RaiseEventResponse> {
        self.raise(r.into_inner()).await.map(|_| Response::new(RaiseEventResponse {}))
    }
    async fn terminate_instance(&self, r: Request<TerminateRequest>) -> Rpc<TerminateResponse> {
        self.terminate(r.into_inner()).await.map(|_| Response::new(TerminateResponse {}))
    }
    async fn suspend_instance(&self, r: Request<SuspendRequest>) -> Rpc<SuspendResponse> {
        let r = r.into_inner();
        self.suspend_or_resume(r.instance_id, r.reason, true)
            .await
            .map(|_| Response::new(SuspendResponse {}))
    }
    async fn resume_instance(&self, r: Request<ResumeRequest>) -> Rpc<ResumeResponse> {
        let r = r.into_inner();
        self.suspend_or_resume(r.instance_id, r.reason, false)
            .await
            .map(|_| Response::new(ResumeResponse {}))
    }
    async fn query_instances(&self, r: Request<QueryInstancesRequest>) -> Rpc<QueryInstancesResponse> {
        self.query(r.into_inner()).await.map(Response::new)
    }
    async fn list_instance_ids(&self, r: Request<ListInstanceIdsRequest>) -> Rpc<ListInstanceIdsResponse> {
        self.list_ids(r.into_inner()).await.map(Response::new)
    }
    async fn purge_instances(&self, r: Request<PurgeInstancesRequest>) -> Rpc<PurgeInstancesResponse> {
        let caller = Caller::of(&r);
        let r = r.into_inner();
        if matches!(r.request, Some(purge_instances_request::Request::PurgeInstanceFilter(_))) {
            caller.may_destroy().map_err(|d| status::denied(&d))?;
        }
        self.purge(r).await.map(Response::new)
    }

    type GetWorkItemsStream = worker::WorkStream;
    async fn get_work_items(&self, r: Request<GetWorkItemsRequest>) -> Rpc<Self::GetWorkItemsStream> {
        self.work_items(r.into_inner()).map(Response::new)
    }
    async fn complete_activity_task(&self, r: Request<ActivityResponse>) -> Rpc<CompleteTaskResponse> {
        self.dispatcher
            .complete_activity(r.into_inner())
            .await
            .map_err(status::refused)
            .map(|_| Response::new(CompleteTaskResponse {}))
    }
    async fn complete_orchestrator_task(&self, r: Request<OrchestratorResponse>) -> Rpc<CompleteTaskResponse> {
        self.dispatcher
            .complete_orchestration(r.into_inner())
            .await
            .map_err(status::refused)
            .map(|_| Response::new(CompleteTaskResponse {}))
    }
    async fn complete_entity_task(&self, r: Request<EntityBatchResult>) -> Rpc<CompleteTaskResponse> {
        self.dispatcher
            .complete_entity(r.into_inner())
            .await
            .map_err(status::refused)
            .map(|_| Response::new(CompleteTaskResponse {}))
    }

    type StreamInstanceHistoryStream = tokio_stream::Iter<std::vec::IntoIter<Result<HistoryChunk, Status>>>;
    async fn stream_instance_history(&self, r: Request<StreamInstanceHistoryRequest>) -> Rpc<Self::StreamInstanceHistoryStream> {
        self.history(r.into_inner())
            .await
            .map(|chunks| Response::new(tokio_stream::iter(chunks.into_iter().map(Ok).collect::<Vec<_>>())))
    }
    async fn create_task_hub(&self, r: Request<CreateTaskHubRequest>) -> Rpc<CreateTaskHubResponse> {
        // The schema is created when the sidecar starts; "recreate" means start empty.
        let caller = Caller::of(&r);
        if r.into_inner().recreate_if_exists {
            caller.may_destroy().map_err(|d| status::denied(&d))?;
            self.store.delete_all().await.map_err(status::store)?;
        }
        Ok(Response::new(CreateTaskHubResponse {}))
    }
    async fn delete_task_hub(&self, r: Request<DeleteTaskHubRequest>) -> Rpc<DeleteTaskHubResponse> {
        Caller::of(&r).may_destroy().map_err(|d| status::denied(&d))?;
        self.store.delete_all().await.map_err(status::store)?;
        Ok(Response::new(DeleteTaskHubResponse {}))
    }
    async fn signal_entity(&self, r: Request<SignalEntityRequest>) -> Rpc<SignalEntityResponse> {
        self.signal_entity(r.into_inner()).await.map(Response::new)
    }
    async fn get_entity(&self, r: Request<GetEntityRequest>) -> Rpc<GetEntityResponse> {
        self.get_entity(r.into_inner()).await.map(Response::new)
    }
    async fn query_entities(&self, r: Request<QueryEntitiesRequest>) -> Rpc<QueryEntitiesResponse> {
        self.query_entities(r.into_inner()).await.map(Response::new)
    }
    async fn clean_entity_storage(&self, r: Request<CleanEntityStorageRequest>) -> Rpc<CleanEntityStorageResponse> {
        self.clean_entity_storage(r.into_inner()).await.map(Response::new)
    }
    async fn abandon_task_activity_work_item(&self, r: Request<AbandonActivityTaskRequest>) -> Rpc<AbandonActivityTaskResponse> {
        let token = worker::required_token(r.into_inner().completion_token)?;
        self.dispatcher.abandon_activity(&token).await;
        Ok(Response::new(AbandonActivityTaskResponse {}))
    }
    async fn abandon_task_orchestrator_work_item(
        &self,
        r: Request<AbandonOrchestrationTaskRequest>,
    ) -> Rpc<AbandonOrchestrationTaskResponse> {
        let token = worker::required_token(r.into_inner().completion_token)?;
        self.dispatcher.abandon_orchestration(&token).await;
        Ok(Response::new(AbandonOrchestrationTaskResponse {}))
    }
    async fn abandon_task_entity_work_item(&self, r: Request<AbandonEntityTaskRequest>) -> Rpc<AbandonEntityTaskResponse> {
        let token = worker::required_token(r.into_inner().completion_token)?;
        self.dispatcher.abandon_entity(&token).await;
        Ok(Response::new(AbandonEntityTaskResponse {}))
    }
    async fn skip_graceful_orchestration_terminations(
        &self,
        _: Request<SkipGracefulOrchestrationTerminationsRequest>,
    ) -> Rpc<SkipGracefulOrchestrationTerminationsResponse> {
        Err(Status::unimplemented(
            "SkipGracefulOrchestrationTerminations is not supported; use TerminateInstance",
        ))
    }
}

//! Entities over the raw protocol: SignalEntity/GetEntity, both entity work-item shapes
//! (`EntityRequest` and the older `EntityBatchRequest`), completion tokens, abandon,
//! redelivery after a dropped worker, calls from orchestrations with their results, and
//! critical sections (lock grants without a worker, lock-holder-only delivery, release).

mod common;

use std::time::Duration;

use common::*;
use outrigger::dispatch::EntityWorkItems;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::send_entity_message_action::EntityMessageType;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use tonic::Code;

/// The next work item, which must be an entity batch of the newer shape.
async fn entity_v2(worker: &mut Worker) -> (String, EntityRequest) {
    let item = worker.next().await;
    match item.request {
        Some(Item::EntityRequestV2(r)) => (item.completion_token, r),
        other => panic!("expected an EntityRequest work item, got {other:?}"),
    }
}

async fn entity_v1(worker: &mut Worker) -> (String, EntityBatchRequest) {
    let item = worker.next().await;
    match item.request {
        Some(Item::EntityRequest(r)) => (item.completion_token, r),
        other => panic!("expected an EntityBatchRequest work item, got {other:?}"),
    }
}

async fn signal(client: &mut Client, id: &str, op: &str, input: &str, request_id: &str) {
    client
        .signal_entity(SignalEntityRequest {
            instance_id: id.into(),
            name: op.into(),
            input: Some(input.into()),
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .expect("SignalEntity");
}

async fn get_entity(client: &mut Client, id: &str, include_state: bool) -> GetEntityResponse {
    client
        .get_entity(GetEntityRequest {
            instance_id: id.into(),
            include_state,
        })
        .await
        .expect("GetEntity")
        .into_inner()
}

fn ok(result: &str) -> OperationResult {
    OperationResult {
        result_type: Some(operation_result::ResultType::Success(OperationResultSuccess {
            result: Some(result.into()),
            ..Default::default()
        })),
    }
}

fn failed(message: &str) -> OperationResult {
    OperationResult {
        result_type: Some(operation_result::ResultType::Failure(OperationResultFailure {
            failure_details: Some(TaskFailureDetails {
                error_type: "Refused".into(),
                error_message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

async fn complete_entity(
    client: &mut Client,
    token: &str,
    results: Vec<OperationResult>,
    state: Option<&str>,
) -> Result<(), tonic::Status> {
    client
        .complete_entity_task(EntityBatchResult {
            results,
            entity_state: state.map(str::to_string),
            completion_token: token.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

fn entity_action(id: i32, message: EntityMessageType) -> OrchestratorAction {
    action(
        id,
        ActionType::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(message),
        }),
    )
}

fn call(target: &str, op: &str, request_id: &str) -> EntityMessageType {
    EntityMessageType::EntityOperationCalled(EntityOperationCalledEvent {
        request_id: request_id.into(),
        operation: op.into(),
        target_instance_id: Some(target.into()),
        ..Default::default()
    })
}

fn operation_ids(r: &EntityRequest) -> Vec<String> {
    r.operation_requests
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::EntityOperationSignaled(s)) => s.request_id.clone(),
            Some(EventType::EntityOperationCalled(c)) => c.request_id.clone(),
            other => panic!("not an operation: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_signal_reaches_a_worker_and_its_state_is_kept() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    signal(&mut client, "@Counter@k1", "add", "5", "11111111-1111-1111-1111-111111111111").await;

    let (token, request) = guarded("the entity batch", entity_v2(&mut worker)).await;
    assert_eq!(request.instance_id, "@counter@k1", "the name is lower-cased, the key kept");
    assert_eq!(request.entity_state, None);
    assert_eq!(operation_ids(&request), vec!["11111111-1111-1111-1111-111111111111"]);
    // Before the batch completes the entity has no state and no lock: it does not exist yet.
    assert!(!get_entity(&mut client, "@counter@k1", true).await.exists);

    complete_entity(&mut client, &token, vec![ok("")], Some("5"))
        .await
        .expect("CompleteEntityTask");
    let found = get_entity(&mut client, "@COUNTER@k1", true).await;
    assert!(found.exists);
    let meta = found.entity.expect("metadata");
    assert_eq!(meta.instance_id, "@counter@k1");
    assert_eq!(meta.serialized_state.as_deref(), Some("5"));
    assert_eq!(meta.backlog_queue_size, 0);
    assert_eq!(meta.locked_by, None);
    let without = get_entity(&mut client, "@counter@k1", false).await.entity.expect("metadata");
    assert_eq!(without.serialized_state, None);
    // Keys are case-sensitive.
    assert!(!get_entity(&mut client, "@counter@K1", true).await.exists);

    // A second batch sees the stored state; a stale token is refused and changes nothing.
    signal(&mut client, "@counter@k1", "add", "1", "r2").await;
    let (token2, request) = guarded("the second batch", entity_v2(&mut worker)).await;
    assert_eq!(request.entity_state.as_deref(), Some("5"));
    expect_code(
        complete_entity(&mut client, &token, vec![ok("")], Some("99")).await,
        Code::FailedPrecondition,
    );
    complete_entity(&mut client, &token2, vec![ok("")], Some("6"))
        .await
        .expect("complete");
    let meta = get_entity(&mut client, "@counter@k1", true).await.entity.expect("metadata");
    assert_eq!(meta.serialized_state.as_deref(), Some("6"));
}

#[tokio::test]
async fn bad_entity_ids_are_refused() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    for id in ["", "counter", "@counter", "@@key"] {
        let request = SignalEntityRequest {
            instance_id: id.into(),
            name: "add".into(),
            ..Default::default()
        };
        expect_code(client.signal_entity(request).await, Code::InvalidArgument);
        let request = GetEntityRequest {
            instance_id: id.into(),
            include_state: true,
        };
        expect_code(client.get_entity(request).await, Code::InvalidArgument);
    }
    let no_operation = SignalEntityRequest {
        instance_id: "@counter@1".into(),
        ..Default::default()
    };
    expect_code(client.signal_entity(no_operation).await, Code::InvalidArgument);
}

#[tokio::test]
async fn a_dropped_worker_gets_its_batch_redelivered_and_an_abandoned_one_comes_back() {
    let sidecar = Sidecar::with(|o| o.dispatch.abandon_delay = Duration::ZERO).await;
    let mut client = sidecar.client.clone();
    let mut first = sidecar.worker().await;
    signal(&mut client, "@counter@drop", "add", "1", "r1").await;
    let (_, request) = guarded("the batch", entity_v2(&mut first)).await;
    assert_eq!(operation_ids(&request), vec!["r1"]);
    drop(first);

    let mut second = sidecar.worker().await;
    let (token, request) = guarded("the redelivered batch", entity_v2(&mut second)).await;
    assert_eq!(operation_ids(&request), vec!["r1"]);
    client
        .abandon_task_entity_work_item(AbandonEntityTaskRequest {
            completion_token: token.clone(),
        })
        .await
        .expect("abandon");
    let (token, request) = guarded("the batch after abandon", entity_v2(&mut second)).await;
    assert_eq!(operation_ids(&request), vec!["r1"]);
    complete_entity(&mut client, &token, vec![ok("")], Some("1"))
        .await
        .expect("complete");
    let meta = get_entity(&mut client, "@counter@drop", true).await.entity.expect("metadata");
    assert_eq!(meta.serialized_state.as_deref(), Some("1"));
}

#[tokio::test]
async fn the_older_batch_shape_carries_operations_and_results_reach_the_caller() {
    let sidecar = Sidecar::with(|o| o.dispatch.entity_work_items = EntityWorkItems::BatchRequest).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "caller", "Caller", None).await;
    let (token, _) = worker.orchestration().await;
    let actions = vec![
        entity_action(1, call("@acct@a", "deposit", "call-1")),
        entity_action(2, call("@acct@a", "withdraw", "call-2")),
        entity_action(3, call("@acct@a", "balance", "call-3")),
    ];
    complete_orchestrator(&mut client, &token, "caller", actions)
        .await
        .expect("complete step");

    let (token, batch) = guarded("the entity batch", entity_v1(&mut worker)).await;
    assert_eq!(batch.instance_id, "@acct@a");
    let ops: Vec<(&str, &str)> = batch
        .operations
        .iter()
        .map(|o| (o.operation.as_str(), o.request_id.as_str()))
        .collect();
    assert_eq!(ops, vec![("deposit", "call-1"), ("withdraw", "call-2"), ("balance", "call-3")]);
    // The worker ran two of three: the third stays queued for the next batch.
    client
        .complete_entity_task(EntityBatchResult {
            results: vec![ok("10"), failed("insufficient funds")],
            entity_state: Some("10".into()),
            completion_token: token,
            ..Default::default()
        })
        .await
        .expect("CompleteEntityTask");

    // The caller's next step and the entity's remaining call are both due now, in either order.
    let (mut step, mut rest) = (None, None);
    while step.is_none() || rest.is_none() {
        let item = guarded("the caller's step and the rest of the queue", worker.next()).await;
        match item.request {
            Some(Item::OrchestratorRequest(r)) => step = Some((item.completion_token, r)),
            Some(Item::EntityRequest(b)) => rest = Some((item.completion_token, b)),
            other => panic!("unexpected work item {other:?}"),
        }
    }
    let (token, request) = step.unwrap();
    let results: Vec<_> = request.new_events.iter().filter_map(|e| e.event_type.clone()).collect();
    assert!(results.iter().any(|e| matches!(e,
        EventType::EntityOperationCompleted(c) if c.request_id == "call-1" && c.output.as_deref() == Some("10"))));
    assert!(results.iter().any(|e| matches!(e,
        EventType::EntityOperationFailed(f) if f.request_id == "call-2"
            && f.failure_details.as_ref().is_some_and(|d| d.error_message == "insufficient funds"))));
    complete_orchestrator(&mut client, &token, "caller", vec![]).await.expect("step");

    let (token, batch) = rest.unwrap();
    assert_eq!(batch.entity_state.as_deref(), Some("10"));
    assert_eq!(batch.operations.len(), 1);
    assert_eq!(batch.operations[0].request_id, "call-3");
    complete_entity(&mut client, &token, vec![ok("10")], Some("10"))
        .await
        .expect("complete");
    let (_, request) = worker.orchestration().await;
    assert!(request.new_events.iter().any(|e| matches!(&e.event_type,
        Some(EventType::EntityOperationCompleted(c)) if c.request_id == "call-3")));
}

#[tokio::test]
async fn a_locked_entity_serves_only_its_holder_until_released() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    start(&mut client, "holder", "Holder", None).await;
    let (token, _) = worker.orchestration().await;
    let lock = EntityMessageType::EntityLockRequested(EntityLockRequestedEvent {
        critical_section_id: "cs-1".into(),
        lock_set: vec!["@e@2".into(), "@e@1".into()],
        position: 0,
        parent_instance_id: Some("holder".into()),
    });
    complete_orchestrator(&mut client, &token, "holder", vec![entity_action(1, lock)])
        .await
        .expect("lock step");
    // Both locks are taken without any entity work item: the grant comes straight back.
    let (token, request) = worker.orchestration().await;
    assert!(request.new_events.iter().any(|e| matches!(&e.event_type,
        Some(EventType::EntityLockGranted(g)) if g.critical_section_id == "cs-1")));
    let meta = get_entity(&mut client, "@e@1", false).await;
    assert!(meta.exists, "a locked entity exists even without state");
    assert_eq!(meta.entity.expect("metadata").locked_by.as_deref(), Some("holder"));

    // A client signal sent now waits; the holder's call sent after it runs first.
    signal(&mut client, "@e@1", "poke", "1", "outsider").await;
    complete_orchestrator(&mut client, &token, "holder", vec![entity_action(2, call("@e@1", "get", "inside"))])
        .await
        .expect("call step");
    let (etoken, batch) = guarded("the holder's call", entity_v2(&mut worker)).await;
    assert_eq!(operation_ids(&batch), vec!["inside"]);
    complete_entity(&mut client, &etoken, vec![ok("0")], None).await.expect("complete");
    let (token, _) = worker.orchestration().await;
    assert_eq!(
        get_entity(&mut client, "@e@1", false)
            .await
            .entity
            .expect("metadata")
            .backlog_queue_size,
        1
    );

    // Ending the orchestration releases both locks; the waiting signal runs.
    complete_orchestrator(
        &mut client,
        &token,
        "holder",
        vec![complete(3, OrchestrationStatus::Completed, "done")],
    )
    .await
    .expect("final step");
    let (etoken, batch) = guarded("the deferred signal", entity_v2(&mut worker)).await;
    assert_eq!(batch.instance_id, "@e@1");
    assert_eq!(operation_ids(&batch), vec!["outsider"]);
    complete_entity(&mut client, &etoken, vec![ok("")], Some("1"))
        .await
        .expect("complete");
    let meta = get_entity(&mut client, "@e@1", true).await.entity.expect("metadata");
    assert_eq!(meta.locked_by, None);
    assert_eq!(meta.serialized_state.as_deref(), Some("1"));
    // @e@2 was locked and released without ever getting state: it does not exist.
    assert!(!get_entity(&mut client, "@e@2", true).await.exists);
}

#[tokio::test]
async fn query_and_clean_entities() {
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    for key in ["a", "b", "c"] {
        signal(&mut client, &format!("@q@{key}"), "set", key, key).await;
        let (token, _) = guarded("a batch", entity_v2(&mut worker)).await;
        complete_entity(&mut client, &token, vec![ok("")], Some(key))
            .await
            .expect("complete");
    }
    let query = |token: Option<String>| QueryEntitiesRequest {
        query: Some(EntityQuery {
            instance_id_starts_with: Some("@Q@".into()),
            include_state: true,
            page_size: Some(2),
            continuation_token: token,
            ..Default::default()
        }),
    };
    let page = client.query_entities(query(None)).await.expect("query").into_inner();
    let ids: Vec<_> = page.entities.iter().map(|e| e.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["@q@a", "@q@b"]);
    assert_eq!(page.entities[0].serialized_state.as_deref(), Some("a"));
    let page = client
        .query_entities(query(page.continuation_token))
        .await
        .expect("query")
        .into_inner();
    let ids: Vec<_> = page.entities.iter().map(|e| e.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["@q@c"]);
    assert_eq!(page.continuation_token, None);

    // Entities are not orchestrations.
    let instances = client
        .query_instances(QueryInstancesRequest::default())
        .await
        .expect("instances")
        .into_inner();
    assert!(instances.orchestration_state.is_empty());

    let cleaned = client
        .clean_entity_storage(CleanEntityStorageRequest {
            remove_empty_entities: true,
            release_orphaned_locks: true,
            ..Default::default()
        })
        .await
        .expect("clean")
        .into_inner();
    assert_eq!((cleaned.empty_entities_removed, cleaned.orphaned_locks_released), (0, 0));
    assert_eq!(cleaned.continuation_token, None);
}

#[tokio::test]
async fn an_older_worker_without_completion_tokens_completes_its_only_batch() {
    let sidecar = Sidecar::with(|o| o.dispatch.entity_work_items = EntityWorkItems::BatchRequest).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    signal(&mut client, "@c@1", "add", "1", "r1").await;
    let (_, batch) = guarded("the batch", entity_v1(&mut worker)).await;
    assert_eq!(batch.operations.len(), 1);
    // EntityBatchResult has no instance id: an empty token names the one outstanding batch.
    complete_entity(&mut client, "", vec![ok("")], Some("1"))
        .await
        .expect("complete without a token");
    let meta = get_entity(&mut client, "@c@1", true).await.entity.expect("metadata");
    assert_eq!(meta.serialized_state.as_deref(), Some("1"));
    // With nothing outstanding, an empty token is refused.
    expect_code(
        complete_entity(&mut client, "", vec![ok("")], Some("2")).await,
        Code::FailedPrecondition,
    );
}

/// Thirty entities with 200 KiB states are 6 MiB together: QueryEntities pages end early by
/// size, under the client's 4 MiB receive limit, and paging on returns every entity once.
#[tokio::test]
async fn entity_query_pages_stop_before_they_outgrow_the_receive_limit() {
    use prost::Message;
    let sidecar = Sidecar::start().await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let state = format!("\"{}\"", "e".repeat(200 << 10));
    for i in 0..30 {
        signal(&mut client, &format!("@big@k{i:02}"), "set", "1", &format!("r{i}")).await;
    }
    for _ in 0..30 {
        let (token, request) = guarded("an entity batch", entity_v2(&mut worker)).await;
        let results = request.operation_requests.iter().map(|_| ok("")).collect::<Vec<_>>();
        complete_entity(&mut client, &token, results, Some(&state)).await.expect("complete");
    }
    let (mut seen, mut pages, mut token) = (std::collections::HashSet::new(), vec![], None);
    loop {
        let response = client
            .query_entities(QueryEntitiesRequest {
                query: Some(EntityQuery {
                    include_state: true,
                    page_size: Some(100),
                    continuation_token: token.take(),
                    ..Default::default()
                }),
            })
            .await
            .expect("a page fits the client's 4 MiB receive limit")
            .into_inner();
        for e in &response.entities {
            assert_eq!(e.serialized_state.as_deref(), Some(state.as_str()));
            assert!(seen.insert(e.instance_id.clone()), "{} twice", e.instance_id);
        }
        pages.push((response.entities.len(), response.encoded_len()));
        match response.continuation_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30, "every entity once: {pages:?}");
    assert!(pages.len() >= 3, "paged by size: {pages:?}");
    eprintln!("30 entities of 200 KiB: pages (entities, bytes) {pages:?}");
}

/// A worker that takes only the entities named `names`.
fn entity_worker(names: &[&str]) -> GetWorkItemsRequest {
    GetWorkItemsRequest {
        work_item_filters: Some(WorkItemFilters {
            entities: names.iter().map(|n| EntityFilter { name: n.to_string() }).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Entity leases do not filter by name, so an entity no connected worker takes is put off for
/// the abandon back-off; a worker that takes it connecting gets it at once, not after that.
#[tokio::test]
async fn an_entity_put_off_for_want_of_a_worker_goes_at_once_to_one_that_connects() {
    let time = VirtualTime::start();
    let sidecar = Sidecar::with(|o| time.options(o)).await;
    let mut client = sidecar.client.clone();
    let _other = sidecar.worker_with(entity_worker(&["other"])).await;
    signal(&mut client, "@ledger@1", "add", "1", "r-1").await;
    // Put off: its row shows a ready time to come (the store is the one place that says so).
    let db = sqlx::SqlitePool::connect(&sidecar.url).await.expect("open the sidecar's file");
    guarded("the entity to be put off", async {
        loop {
            let ready: Option<i64> = sqlx::query_scalar("SELECT ready_at FROM entities WHERE instance_id = '@ledger@1'")
                .fetch_optional(&db)
                .await
                .expect("read the entity row");
            if ready.is_some_and(|r| r > 0) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut ledger = sidecar.worker_with(entity_worker(&["ledger"])).await;
    let back_off = outrigger::dispatch::Settings::default().abandon_delay;
    // Virtual time stands still: only a hand-out that does not wait for the back-off arrives.
    let (_, request) = tokio::time::timeout(back_off / 2, entity_v2(&mut ledger))
        .await
        .expect("the entity handed out at once, not after its back-off");
    assert_eq!(request.instance_id, "@ledger@1");
}

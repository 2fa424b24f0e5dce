//! Client-facing RPCs: create, inspect, signal, query and purge instances.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use super::{Arrival, Service, page, status};
use crate::engine::reuse::{self, Reuse, TERMINAL};
use crate::engine::{self, StartSpec, events};
use crate::limits;
use crate::model::{Instance, Message, NewInstance, is_terminal};
use crate::proto::*;
use crate::store::{Delivery, FinishedFilter, InstanceFilter, Purge, Rewind, StoreError};
use crate::time::{self, Micros};

const DEFAULT_PAGE: u32 = 100;
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
const MAX_PAGE: u32 = 1000;
/// Most instance ids in one purge batch (the protocol's documented limit).
const MAX_BATCH: usize = 500;
/// History chunks stay well under the default 4 MB message limit of every SDK.
const CHUNK_EVENTS: usize = 100;
const CHUNK_BYTES: usize = 256 * 1024;

fn instance_id(id: &str) -> Result<&str, Status> {
    limits::instance_id("instanceId", id).map_err(Status::invalid_argument)?;
    Ok(id)
}

/// A field check of [`limits`] as an INVALID_ARGUMENT.
fn checked(check: Result<(), String>) -> Result<(), Status> {
    check.map_err(Status::invalid_argument)
}

fn timestamp(field: &str, ts: &Option<prost_types::Timestamp>) -> Result<Option<Micros>, Status> {
    ts.as_ref()
        .map(|t| time::from_timestamp(t).map_err(|e| Status::invalid_argument(format!("{field}: {e}"))))
        .transpose()
}

fn statuses(field: &str, values: &[i32]) -> Result<Vec<OrchestrationStatus>, Status> {
    checked(limits::status_filter(field, values.len()))?;
    values
        .iter()
        .map(|v| OrchestrationStatus::try_from(*v).map_err(|_| Status::invalid_argument(format!("{field}: unknown status {v}"))))
        .collect()
}

fn page_size(field: &str, n: i32) -> Result<u32, Status> {
    match n {
        n if n < 0 => Err(Status::invalid_argument(format!("{field} must not be negative, got {n}"))),
        0 => Ok(DEFAULT_PAGE),
        n => Ok((n as u32).min(MAX_PAGE)),
    }
}

/// Page tokens are "<microseconds>|<instance id>" of the last row returned.
fn page_token(at: Micros, id: &str) -> String {
    format!("{at}|{id}")
}

fn parse_page_token(field: &str, token: &Option<String>) -> Result<Option<(Micros, String)>, Status> {
    let Some(token) = token.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("{field} is not a token this sidecar issued"));
    // A token holds a timestamp and an instance id: anything longer was not issued here.
    if token.len() > limits::MAX_ID_BYTES + 24 {
        return Err(bad());
    }
    let (at, id) = token.split_once('|').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_string())))
}

/// The caller's deadline from the `grpc-timeout` header, if any, counted from the call's
/// arrival (tonic enforces the header from then on too).
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Result<Option<Instant>, Status> {
    let Some(value) = request.metadata().get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument("malformed grpc-timeout header");
    let text = value.to_str().map_err(|_| bad())?;
    if text.len() < 2 {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    let arrived = request.extensions().get::<Arrival>().map_or_else(Instant::now, |a| a.0);
    // The header allows about 11,000 years; no call waits longer than a year.
    Ok(Some(arrived + timeout.min(Duration::from_secs(365 * 86_400))))
}

fn state(i: Instance, with_payloads: bool) -> OrchestrationState {
    OrchestrationState {
        instance_id: i.instance_id,
        name: i.name,
        version: i.version,
        orchestration_status: i.status as i32,
        scheduled_start_timestamp: i.scheduled_start_at.map(time::to_timestamp),
        created_timestamp: Some(time::to_timestamp(i.created_at)),
        last_updated_timestamp: Some(time::to_timestamp(i.updated_at)),
        // Payloads travel together: a caller that did not ask for inputs and outputs gets no
        // custom status and no failure details either (the reference servers' rule, which the
        // .NET SDK's own tests assert).
        input: i.input.filter(|_| with_payloads),
        output: i.output.filter(|_| with_payloads),
        custom_status: i.custom_status.filter(|_| with_payloads),
        failure_details: i.failure_details.filter(|_| with_payloads),
        execution_id: Some(i.execution_id),
        completed_timestamp: i.completed_at.map(time::to_timestamp),
        parent_instance_id: i.parent_instance_id,
        tags: i.tags.into_iter().collect(),
    }
}

fn found(i: Option<Instance>, with_payloads: bool) -> GetInstanceResponse {
    GetInstanceResponse {
        exists: i.is_some(),
        orchestration_state: i.map(|i| state(i, with_payloads)),
    }
}

fn new_execution_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Service {
    pub(crate) async fn start(&self, r: CreateInstanceRequest) -> Result<CreateInstanceResponse, Status> {
        let id = if r.instance_id.is_empty() {
            new_execution_id()
        } else {
            instance_id(&r.instance_id)?.to_string()
        };
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name (the orchestrator to run) is required"));
        }
        checked(limits::name("name", &r.name))?;
        checked(limits::optional_name("version", r.version.as_deref()))?;
        checked(limits::tag_map("tags", &r.tags))?;
        let now = self.now();
        // Epoch zero is what some clients send for "no scheduled start".
        let scheduled = timestamp("scheduledStartTimestamp", &r.scheduled_start_timestamp)?.filter(|at| *at > 0 && *at > now);
        let given = match &r.orchestration_id_reuse_policy {
            Some(p) => Some((
                statuses("orchestrationIdReusePolicy.replaceableStatus", &p.replaceable_status)?,
                p.action,
            )),
            None => None,
        };
        let reuse = reuse::policy(given).map_err(Status::invalid_argument)?;
        let execution_id = match r.execution_id.filter(|e| !e.is_empty()) {
            Some(e) if e.len() > limits::MAX_ID_BYTES => return Err(Status::invalid_argument("executionId is too long")),
            Some(e) => e,
            None => new_execution_id(),
        };
        let spec = StartSpec {
            instance_id: id.clone(),
            name: r.name,
            version: r.version,
            input: r.input,
            execution_id,
            scheduled_start: scheduled,
            tags: r.tags.into_iter().collect(),
            parent: None,
            parent_trace_context: r.parent_trace_context,
        };
        let (replaceable, keep) = match reuse {
            Reuse::Replace(r) => (r, vec![]),
            Reuse::Ignore(keep) => (vec![], keep),
        };
        match self.create(engine::new_instance(spec, now), &replaceable, now).await {
            Err(StoreError::AlreadyExists(_, existing)) if keep.iter().any(|s| s.as_str_name() == existing) => {}
            other => other.map_err(status::store)?,
        }
        Ok(CreateInstanceResponse { instance_id: id })
    }

    /// Stores a new instance, inside its create span when tracing.
    async fn create(&self, mut new: NewInstance, replaceable: &[OrchestrationStatus], now: Micros) -> Result<(), StoreError> {
        let creation = self.telemetry.creating(&mut new, now);
        let id = new.instance.instance_id.clone();
        if let Err(e) = self.store.create_instance(new, replaceable).await {
            creation.failed(&e);
            return Err(e);
        }
        drop(creation); // ends the create span: the instance exists
        crate::metrics::METRICS.orchestrations_started(1);
        self.dispatcher.changed([&id]);
        Ok(())
    }

    pub(crate) async fn get(&self, r: GetInstanceRequest) -> Result<GetInstanceResponse, Status> {
        let i = self.store.get_instance(instance_id(&r.instance_id)?).await.map_err(status::store)?;
        Ok(found(i, r.get_inputs_and_outputs))
    }

    /// Answers once the instance exists and `done(status)` holds, woken by state changes
    /// rather than polling. An instance that does not exist yet is waited for (a client may
    /// wait on a sub-orchestration its parent has not created yet); a call that outlives its
    /// deadline, or `max_wait` when it has none, answers DEADLINE_EXCEEDED.
    pub(crate) async fn wait(
        &self,
        r: GetInstanceRequest,
        deadline: Option<Instant>,
        done: impl Fn(OrchestrationStatus) -> bool,
    ) -> Result<GetInstanceResponse, Status> {
        let id = instance_id(&r.instance_id)?.to_string();
        let watchers = &self.watchers;
        // Declared before the wait, so dropped after it (and its subscription) even when the
        // call is cancelled.
        let _release = watchers.releasing(&id);
        let seen = AtomicBool::new(false);
        let wait = async {
            let mut changes = watchers.subscribe(&id);
            loop {
                if let Some(i) = self.store.get_instance(&id).await.map_err(status::store)? {
                    seen.store(true, Ordering::Relaxed);
                    if done(i.status) {
                        return Ok(found(Some(i), r.get_inputs_and_outputs));
                    }
                }
                if changes.changed().await.is_err() {
                    // The sender was dropped (no one else watching); subscribe afresh.
                    changes = watchers.subscribe(&id);
                }
            }
        };
        // tonic enforces grpc-timeout too, from the same moment, answering CANCELLED; finishing a
        // moment early makes the caller see the precise DEADLINE_EXCEEDED instead.
        let until = match deadline {
            Some(d) => d.checked_sub(DEADLINE_MARGIN).unwrap_or(d),
            None => Instant::now() + self.max_wait,
        };
        tokio::time::timeout_at(until, wait).await.unwrap_or_else(|_| {
            let what = if seen.load(Ordering::Relaxed) {
                "did not reach the awaited state"
            } else {
                "does not exist (it may not have been created yet)"
            };
            let within = match deadline {
                Some(_) => "the call's deadline".to_string(),
                None => format!("{} s (the longest a wait without a deadline lasts)", self.max_wait.as_secs()),
            };
            Err(Status::deadline_exceeded(format!("instance '{id}' {what} within {within}")))
        })
    }

    /// Returns whether the event was queued ([`Delivery::Queued`]) or ignored because the
    /// instance has finished ([`Delivery::Finished`]); gRPC answers both alike, HTTP does not.
    pub(crate) async fn raise(&self, r: RaiseEventRequest) -> Result<Delivery, Status> {
        let id = instance_id(&r.instance_id)?;
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name (the event name) is required"));
        }
        checked(limits::name("name", &r.name))?;
        let now = self.now();
        self.send(id, events::event_raised(now, r.name, r.input), now).await
    }

    pub(crate) async fn terminate(&self, r: TerminateRequest) -> Result<Delivery, Status> {
        let id = instance_id(&r.instance_id)?;
        let now = self.now();
        let delivery = self.send(id, events::terminated(now, r.output.clone(), r.recursive), now).await?;
        if r.recursive {
            self.terminate_descendants(id, r.output, now).await?;
        }
        Ok(delivery)
    }

    /// A recursive terminate travels down through the steps of running parents only: a
    /// sub-orchestration that has already finished passes nothing on, yet children it started
    /// without waiting for them may still run. So every live descendant is sent the terminate
    /// here too (an instance that gets it twice ends on the first).
    async fn terminate_descendants(&self, root: &str, reason: Option<String>, now: Micros) -> Result<(), Status> {
        let mut seen = HashSet::from([root.to_string()]);
        let mut pending = vec![root.to_string()];
        while let Some(id) = pending.pop() {
            let history = self.store.history(&id).await.map_err(status::store)?;
            for child in engine::sub_orchestrations(&history) {
                if !seen.insert(child.clone()) {
                    continue;
                }
                let Some(i) = self.store.get_instance(&child).await.map_err(status::store)? else {
                    continue;
                };
                if !is_terminal(i.status) {
                    let message = Message {
                        instance_id: child.clone(),
                        execution_id: None,
                        event: events::terminated(now, reason.clone(), true),
                        visible_at: now,
                        priority: Message::NORMAL,
                    };
                    self.store.send(message).await.map_err(status::store)?;
                }
                pending.push(child);
            }
        }
        self.dispatcher.wake();
        Ok(())
    }

    pub(crate) async fn suspend_or_resume(&self, id: String, reason: Option<String>, suspend: bool) -> Result<Delivery, Status> {
        let id = instance_id(&id)?;
        let now = self.now();
        let event = if suspend {
            events::suspended(now, reason)
        } else {
            events::resumed(now, reason)
        };
        self.send(id, event, now).await
    }

    /// Queues an event for an instance. Unknown instances are an error; finished ones
    /// silently ignore it (the event could not change anything).
    async fn send(&self, id: &str, event: HistoryEvent, now: Micros) -> Result<Delivery, Status> {
        let message = Message {
            instance_id: id.to_string(),
            execution_id: None,
            event,
            visible_at: now,
            priority: Message::NORMAL,
        };
        match self.store.send(message).await.map_err(status::store)? {
            Delivery::Unknown => Err(Status::not_found(format!("no instance with id '{id}'"))),
            delivery => {
                self.dispatcher.wake();
                Ok(delivery)
            }
        }
    }

    pub(crate) async fn query(&self, r: QueryInstancesRequest) -> Result<QueryInstancesResponse, Status> {
        let q = r.query.unwrap_or_default();
        let limit = page_size("maxInstanceCount", q.max_instance_count)?;
        let filter = InstanceFilter {
            statuses: statuses("runtimeStatus", &q.runtime_status)?,
            created_from: timestamp("createdTimeFrom", &q.created_time_from)?,
            created_to: timestamp("createdTimeTo", &q.created_time_to)?,
            id_prefix: match q.instance_id_prefix.filter(|p| !p.is_empty()) {
                Some(p) if p.len() > limits::MAX_ID_BYTES => {
                    return Err(Status::invalid_argument(format!(
                        "instanceIdPrefix is {} bytes; at most {} are allowed",
                        p.len(),
                        limits::MAX_ID_BYTES
                    )));
                }
                p => p,
            },
            after: parse_page_token("continuationToken", &q.continuation_token)?,
            limit: limit + 1, // one extra row tells whether another page exists
            ..Default::default()
        };
        let rows = self.store.query(&filter).await.map_err(status::store)?;
        let (orchestration_state, continuation_token) = page(
            rows,
            limit as usize,
            |i| page_token(i.created_at, &i.instance_id),
            |i| state(i, q.fetch_inputs_and_outputs),
        );
        Ok(QueryInstancesResponse {
            orchestration_state,
            continuation_token,
        })
    }

    pub(crate) async fn list_ids(&self, r: ListInstanceIdsRequest) -> Result<ListInstanceIdsResponse, Status> {
        let limit = page_size("pageSize", r.page_size)?;
        let filter = FinishedFilter {
            statuses: statuses("runtimeStatus", &r.runtime_status)?,
            completed_from: timestamp("completedTimeFrom", &r.completed_time_from)?,
            completed_to: timestamp("completedTimeTo", &r.completed_time_to)?,
            after: parse_page_token("lastInstanceKey", &r.last_instance_key)?,
            limit: limit + 1,
        };
        let rows = self.store.finished(&filter).await.map_err(status::store)?;
        let (instance_ids, last_instance_key) = page(rows, limit as usize, |(at, id)| page_token(*at, id), |(_, id)| id);
        Ok(ListInstanceIdsResponse {
            instance_ids,
            last_instance_key,
        })
    }

    pub(crate) async fn purge(&self, r: PurgeInstancesRequest) -> Result<PurgeInstancesResponse, Status> {
        use purge_instances_request::Request as Target;
        let complete = |deleted: u32, done: bool| PurgeInstancesResponse {
            deleted_instance_count: deleted as i32,
            is_complete: Some(done),
        };
        match r.request {
            None => Err(Status::invalid_argument(
                "one of instanceId, purgeInstanceFilter or instanceBatch is required",
            )),
            Some(Target::InstanceId(id)) => {
                let id = instance_id(&id)?;
                match self.store.purge(id, r.recursive).await.map_err(status::store)? {
                    Purge::Deleted(n) => Ok(complete(n, true)),
                    Purge::NotFinished(s) => Err(Status::failed_precondition(format!(
                        "instance '{id}' is {} and cannot be purged until it finishes (terminate it first)",
                        s.as_str_name()
                    ))),
                }
            }
            Some(Target::InstanceBatch(batch)) => {
                if batch.instance_ids.len() > MAX_BATCH {
                    return Err(Status::invalid_argument(format!(
                        "instanceBatch holds {} ids; at most {MAX_BATCH} are allowed",
                        batch.instance_ids.len()
                    )));
                }
                let mut deleted = 0;
                for id in &batch.instance_ids {
                    if let Purge::Deleted(n) = self.store.purge(instance_id(id)?, r.recursive).await.map_err(status::store)? {
                        deleted += n;
                    }
                }
                Ok(complete(deleted, true))
            }
            Some(Target::PurgeInstanceFilter(f)) => {
                let requested = statuses("purgeInstanceFilter.runtimeStatus", &f.runtime_status)?;
                // Only finished instances are ever purged, whatever else the filter names.
                let statuses: Vec<_> = if requested.is_empty() {
                    TERMINAL.to_vec()
                } else {
                    requested.into_iter().filter(|s| is_terminal(*s)).collect()
                };
                let timeout = f
                    .timeout
                    .map(|d| Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64));
                let started = tokio::time::Instant::now();
                let mut filter = InstanceFilter {
                    statuses,
                    created_from: timestamp("purgeInstanceFilter.createdTimeFrom", &f.created_time_from)?,
                    created_to: timestamp("purgeInstanceFilter.createdTimeTo", &f.created_time_to)?,
                    limit: MAX_PAGE,
                    ..Default::default()
                };
                let mut deleted = 0;
                if filter.statuses.is_empty() {
                    return Ok(complete(0, true));
                }
                loop {
                    let page = self.store.query(&filter).await.map_err(status::store)?;
                    let Some(last) = page.last() else {
                        return Ok(complete(deleted, true));
                    };
                    filter.after = Some((last.created_at, last.instance_id.clone()));
                    for i in &page {
                        if timeout.is_some_and(|t| started.elapsed() >= t) {
                            return Ok(complete(deleted, false));
                        }
                        if let Purge::Deleted(n) = self.store.purge(&i.instance_id, r.recursive).await.map_err(status::store)? {
                            deleted += n;
                        }
                    }
                }
            }
        }
    }

    pub(crate) async fn history(&self, r: StreamInstanceHistoryRequest) -> Result<Vec<HistoryChunk>, Status> {
        let id = instance_id(&r.instance_id)?;
        let Some(instance) = self.store.get_instance(id).await.map_err(status::store)? else {
            return Err(Status::not_found(format!("no instance with id '{id}'")));
        };
        if let Some(e) = r.execution_id.filter(|e| !e.is_empty() && *e != instance.execution_id) {
            return Err(Status::not_found(format!(
                "execution '{e}' of instance '{id}' is not its current execution; only the current one is kept"
            )));
        }
        let events = self.store.history(id).await.map_err(status::store)?;
        let mut chunks = vec![];
        let mut chunk = HistoryChunk::default();
        let mut bytes = 0;
        for e in events {
            let size = prost::Message::encoded_len(&e);
            if !chunk.events.is_empty() && (chunk.events.len() >= CHUNK_EVENTS || bytes + size > CHUNK_BYTES) {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.events.push(e);
        }
        if !chunk.events.is_empty() || chunks.is_empty() {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    pub(crate) async fn restart(&self, r: RestartInstanceRequest) -> Result<RestartInstanceResponse, Status> {
        let id = instance_id(&r.instance_id)?;
        let Some(old) = self.store.get_instance(id).await.map_err(status::store)? else {
            return Err(Status::not_found(format!("no instance with id '{id}'")));
        };
        if !r.restart_with_new_instance_id && !old.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "instance '{id}' is {}; only a finished instance can be restarted under the same id",
                old.status.as_str_name()
            )));
        }
        let new_id = if r.restart_with_new_instance_id {
            new_execution_id()
        } else {
            id.to_string()
        };
        let history = self.store.history(id).await.map_err(status::store)?;
        let spec = engine::restart_spec(old, &history, new_id.clone(), new_execution_id());
        let replaceable: &[OrchestrationStatus] = if r.restart_with_new_instance_id { &[] } else { &TERMINAL };
        let now = self.now();
        self.create(engine::new_instance(spec, now), replaceable, now)
            .await
            .map_err(status::store)?;
        Ok(RestartInstanceResponse { instance_id: new_id })
    }

    pub(crate) async fn rewind(&self, r: RewindInstanceRequest) -> Result<RewindInstanceResponse, Status> {
        let id = instance_id(&r.instance_id)?;
        let now = self.now();
        match self
            .store
            .rewind(id, events::rewound(now, r.reason, None), now)
            .await
            .map_err(status::store)?
        {
            Rewind::Rewound => {
                self.dispatcher.changed([&id.to_string()]);
                Ok(RewindInstanceResponse {})
            }
            Rewind::Unknown => Err(Status::not_found(format!("no instance with id '{id}'"))),
            Rewind::NotFailed(s) => Err(Status::failed_precondition(format!(
                "instance '{id}' is {}; only failed instances can be rewound",
                s.as_str_name()
            ))),
        }
    }
}

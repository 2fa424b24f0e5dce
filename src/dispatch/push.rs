//! The push loop: leases due work for the free room of connected workers and hands it out;
//! and, beside it, the lease renewer and the relay of other sidecars' changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::completion::{HeldActivity, HeldEntity, HeldOrchestration};
use super::workers::{Group, lost_key};
use super::{Dispatcher, EntityWorkItems, Kinds};
use crate::engine::entities as entity_rules;
use crate::engine::{self, Prepared, events};
use crate::metrics::{Kind, METRICS};
use crate::model::{Instance, Names};
use crate::proto::work_item::Request as Item;
use crate::proto::*;
use crate::store::{Change, LockedActivity, LockedEntity, LockedOrchestration, StoreError, Write};
use crate::task::AbortOnDrop;
use crate::time::{self, Micros};

/// Most items leased in one store round trip.
const BATCH: usize = 100;
/// A work item whose worker's stream ended while holding it this many times in a row is not
/// sent again: it evidently kills the workers that receive it (too large or too deeply nested
/// for their parsers).
const MAX_LOST_DELIVERIES: u32 = 3;

/// What became of an orchestrator work item offered to the workers.
enum Handed {
    Sent(u64),
    NoWorker,
    /// Too large to send: handed back for the instance to fail.
    TooLarge(Box<Undeliverable>),
}

struct Undeliverable {
    size: usize,
    instance: Instance,
    history: Arc<Vec<HistoryEvent>>,
    new_events: Vec<HistoryEvent>,
    consumed: Vec<i64>,
}

impl Dispatcher {
    /// Runs the dispatch loop and the lease renewer until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let renewer = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(this.settings.lease / 3);
                loop {
                    tick.tick().await;
                    if let Some(deadline) = this.settings.item_deadline {
                        this.take_back_overdue(deadline).await;
                    }
                    let until = this.clock.now() + time::span(this.settings.lease);
                    let tokens: Vec<String> = {
                        let state = this.state.lock().unwrap();
                        state
                            .orchestrations
                            .keys()
                            .chain(state.activities.keys())
                            .chain(state.entities.keys())
                            .cloned()
                            .collect()
                    };
                    if tokens.is_empty() {
                        continue;
                    }
                    match this.store.renew_leases(&tokens, until).await {
                        Ok(()) => METRICS.leases_renewed(tokens.len()),
                        Err(e) => warn!(error = %e, "renewing leases failed"),
                    }
                }
            })
        };
        let _renewer = AbortOnDrop(renewer);
        // Other sidecars sharing the database: their commits wake our loop and our waiters.
        let _remote = self.store.remote_changes().map(|mut changes| {
            let this = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.recv().await {
                        Ok(Change::Instances(ids)) => this.changed(&ids),
                        Ok(Change::Unknown) | Err(RecvError::Lagged(_)) => {
                            this.watchers.notify_all();
                            this.wake();
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }))
        });
        let mut due = None;
        loop {
            // Read before leasing: what falls due after this moment is either leased below or
            // found by `next_due`, which looks only past `now` (read after leasing, work that
            // fell due in between would be neither, and wait for the sweep), or past the time
            // of a commit that set a due time, in a round that may lease no orchestration. The
            // sleep counts from this moment too, so it ends when the clock reaches the due time
            // however long leasing and the query took.
            let (now, read_at) = (self.clock.now(), Instant::now());
            // Taken before the kinds: a commit sets its time before it asks for a round, so a
            // time taken here is either looked from in this round or the next.
            let since = self.due_since.swap(Micros::MAX, Ordering::SeqCst);
            let kinds = self.wanted.swap(0, Ordering::SeqCst);
            let mut moved = kinds & Kinds::DUE != 0 || since != Micros::MAX;
            self.leasing.store(kinds & Kinds::ORCHESTRATIONS != 0, Ordering::SeqCst);
            let outcome = self.dispatch_once(kinds).await;
            self.leasing.store(false, Ordering::SeqCst);
            match outcome {
                // Full batches: there may be more due work of those kinds.
                Ok((full, _)) if full != 0 => {
                    self.due_since.fetch_min(since, Ordering::SeqCst);
                    self.wanted.fetch_or(full | Kinds::DUE, Ordering::SeqCst);
                    continue;
                }
                // Items handed back (to wait, or for want of a worker) move the due time.
                Ok((_, leased)) => moved |= leased,
                Err(e) => {
                    warn!(error = %e, "dispatch failed; retrying");
                    self.backlog.fetch_or(kinds, Ordering::SeqCst);
                    moved = true;
                }
            }
            // Read again only when something may have moved it; otherwise the time read last
            // stands (work that came due since is found when the sleep ends).
            if moved {
                due = self.store.next_due(now.min(since)).await.ok().flatten();
            }
            let until_due = due.map(|d| time::until(d, now)).unwrap_or(self.settings.sweep_interval);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(read_at + until_due.min(self.settings.sweep_interval)) => {
                    // Due work, expired leases, or the safety sweep: everything.
                    self.backlog.fetch_or(Kinds::ALL, Ordering::SeqCst);
                    self.wanted.fetch_or(Kinds::ALL, Ordering::SeqCst);
                }
            }
        }
    }

    /// Leases what free worker capacity allows of the `kinds` asked for ([`Kinds`] bits) and
    /// hands it out. Returns the kinds whose batch came back full, so more work may be
    /// waiting, and whether anything was leased at all. (Work committed after the lease
    /// query wakes the loop anyway.)
    async fn dispatch_once(&self, kinds: u8) -> Result<(u8, bool), StoreError> {
        if self.draining.load(Ordering::SeqCst) || kinds & !Kinds::DUE == 0 {
            return Ok((0, false));
        }
        let mut leased = false;
        // Cleared before the lease statements run: whatever queues work while they run sets
        // it again.
        self.backlog.fetch_and(!kinds, Ordering::SeqCst);
        let wants = |kind: u8| kinds & kind != 0;
        let groups = self.state.lock().unwrap().groups(self.settings.worker_buffer_bytes);
        // Entities are leased for every worker that takes any; `hand_entity` picks by name.
        let entity_room = groups.iter().map(|g| g.entities).sum::<usize>().min(BATCH);
        // A kind some worker takes but has no room for stays behind whatever the leases find.
        let mut skipped = if entity_room == 0 { Kinds::ENTITIES } else { 0 };
        for g in &groups {
            if g.orchestrations == 0 && g.filter.orchestrations != Names::Only(Default::default()) {
                skipped |= Kinds::ORCHESTRATIONS;
            }
            if g.activities == 0 && g.filter.activities != Names::Only(Default::default()) {
                skipped |= Kinds::ACTIVITIES;
            }
        }
        let mut full = 0;
        for Group {
            filter,
            orchestrations: orchestration_room,
            activities: activity_room,
            ..
        } in groups
        {
            let orchestration_room = orchestration_room.min(BATCH);
            if wants(Kinds::ORCHESTRATIONS) && orchestration_room > 0 && filter.orchestrations != Names::Only(Default::default()) {
                let now = self.clock.now();
                let lease = self.lease(now);
                let items = self
                    .store
                    .lock_orchestrations(&lease, orchestration_room as u32, &filter.orchestrations)
                    .await?;
                leased |= !items.is_empty();
                if items.len() == orchestration_room {
                    full |= Kinds::ORCHESTRATIONS;
                }
                for item in items {
                    let id = item.instance.instance_id.clone();
                    if let Err(e) = self.hand_orchestration(item, now).await {
                        warn!(instance_id = %id, error = %e, "could not hand out orchestration work item; its lease will expire");
                    }
                }
            }
            let activity_room = activity_room.min(BATCH);
            if wants(Kinds::ACTIVITIES) && activity_room > 0 && filter.activities != Names::Only(Default::default()) {
                let now = self.clock.now();
                let items = self
                    .store
                    .lock_activities(&self.lease(now), activity_room as u32, &filter.activities)
                    .await?;
                leased |= !items.is_empty();
                if items.len() == activity_room {
                    full |= Kinds::ACTIVITIES;
                }
                for item in items {
                    if let Err(e) = self.hand_activity(item).await {
                        warn!(error = %e, "could not hand out activity work item; its lease will expire");
                    }
                }
            }
        }
        if wants(Kinds::ENTITIES) && entity_room > 0 {
            let now = self.clock.now();
            if std::mem::take(&mut self.state.lock().unwrap().unpark_entities) {
                self.store.unpark_entities(now).await?;
            }
            let items = self.store.lock_entities(&self.lease(now), entity_room as u32).await?;
            leased |= !items.is_empty();
            if items.len() == entity_room {
                full |= Kinds::ENTITIES;
            }
            for item in items {
                let id = item.entity.instance_id.clone();
                if let Err(e) = self.hand_entity(item, now).await {
                    warn!(entity = %id, error = %e, "could not hand out entity work item; its lease will expire");
                }
            }
        }
        // Full batches leave work behind; so does a kind no worker had room for.
        self.backlog.fetch_or(full | skipped, Ordering::SeqCst);
        Ok((full, leased))
    }

    pub(super) async fn hand_orchestration(&self, item: LockedOrchestration, now: Micros) -> Result<(), StoreError> {
        let LockedOrchestration {
            token,
            instance,
            history,
            inbox,
        } = item;
        let id = instance.instance_id.clone();
        let (new_events, consumed) = match engine::prepare(&instance, &history, &inbox, now) {
            Prepared::Run { new_events, consumed } => (new_events, consumed),
            Prepared::Drop { consumed, reason } => {
                for (_, m) in &inbox {
                    info!(instance_id = %id, event = events::kind_name(&m.event), reason, "dropping event");
                }
                return self.store.release_orchestration(&id, &token, &consumed, 0).await;
            }
            Prepared::Wait => {
                let later = now + time::span(self.settings.abandon_delay);
                return self.store.release_orchestration(&id, &token, &[], later).await;
            }
        };
        let key = lost_key::orchestration(&id);
        let lost = self.state.lock().unwrap().lost.get(&key).copied().unwrap_or(0);
        if lost >= MAX_LOST_DELIVERIES {
            let why = format!(
                "the orchestrator work item was sent to {lost} workers in a row whose streams ended before they answered; it is not sent again"
            );
            self.state.lock().unwrap().lost.remove(&key);
            return self
                .fail_step(token, &instance, &history, &new_events, consumed, "WorkItemUndeliverable", why)
                .await;
        }
        let handed = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let (name, version) = (&instance.name, instance.version.as_deref());
            let chosen = state
                .choose(|w| w.orchestrations < w.max_orchestrations && w.has_room(buffer) && w.filter.takes_orchestration(name, version));
            match chosen.and_then(|worker_id| Some((worker_id, state.workers.get_mut(&worker_id)?))) {
                None => Handed::NoWorker,
                Some((worker_id, worker)) => {
                    let stream_history = worker.history_streaming
                        && history.iter().map(|e| e.encoded_len()).sum::<usize>() > self.settings.history_streaming_threshold;
                    let request = OrchestratorRequest {
                        instance_id: id.clone(),
                        execution_id: Some(instance.execution_id.clone()),
                        past_events: if stream_history { vec![] } else { Vec::clone(&history) },
                        new_events: new_events.clone(),
                        requires_history_streaming: stream_history,
                        orchestration_trace_context: instance.trace_context.clone(),
                        entity_parameters: Some(self.entity_parameters()),
                        ..Default::default()
                    };
                    let (work, size) = work_item(Item::OrchestratorRequest(request), &token);
                    if size > self.settings.max_work_item_bytes {
                        Handed::TooLarge(Box::new(Undeliverable {
                            size,
                            instance,
                            history,
                            new_events,
                            consumed,
                        }))
                    } else if worker.send(work, size) {
                        worker.orchestrations += 1;
                        state.orchestrations.insert(
                            token.clone(),
                            HeldOrchestration {
                                worker: worker_id,
                                instance,
                                history,
                                new_events,
                                consumed,
                                chunks: vec![],
                                chunk_bytes: 0,
                                next_chunk: 0,
                                since: Instant::now(),
                            },
                        );
                        Handed::Sent(worker_id)
                    } else {
                        Handed::NoWorker
                    }
                }
            }
        };
        match handed {
            Handed::Sent(worker) => {
                METRICS.dispatched(Kind::Orchestration);
                debug!(instance_id = %id, worker, "orchestration work item sent");
            }
            Handed::NoWorker => self.store.release_orchestration(&id, &token, &[], 0).await?,
            Handed::TooLarge(item) => {
                let Undeliverable {
                    size,
                    instance,
                    history,
                    new_events,
                    consumed,
                } = *item;
                let why = format!(
                    "the next orchestrator work item would be {size} bytes, more than the {} a worker accepts (--max-work-item-mib); the history has grown too large to deliver",
                    self.settings.max_work_item_bytes
                );
                self.fail_step(token, &instance, &history, &new_events, consumed, "WorkItemTooLarge", why)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends an orchestration that cannot go on (its next work item cannot be delivered, or its
    /// step can never be stored) as FAILED, with `why` in its failure details: that instance
    /// alone stops, instead of being dispatched again and again.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fail_step(
        &self,
        token: String,
        instance: &Instance,
        history: &[HistoryEvent],
        new_events: &[HistoryEvent],
        consumed: Vec<i64>,
        error_type: &str,
        why: String,
    ) -> Result<(), StoreError> {
        warn!(instance_id = %instance.instance_id, error_type, reason = %why, "failing the orchestration");
        let complete = CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(events::failure(error_type, why)),
            ..Default::default()
        };
        let answer = engine::Response {
            actions: vec![OrchestratorAction {
                id: -1,
                orchestrator_action_type: Some(orchestrator_action::OrchestratorActionType::CompleteOrchestration(complete)),
            }],
            ..Default::default()
        };
        let now = self.clock.now();
        let mut commit = engine::apply(instance, history, new_events, answer, now, &mut || {
            uuid::Uuid::new_v4().simple().to_string()
        });
        let spans = self.telemetry.step(instance, history, new_events, &mut commit, now);
        match self
            .batcher
            .write(Write::Step {
                token,
                consumed,
                commit,
                now,
                claim: None,
            })
            .await
        {
            Ok(written) => {
                spans.committed();
                self.changed(&written.changed);
                Ok(())
            }
            Err(e) => {
                spans.failed(&e);
                Err(e)
            }
        }
    }

    pub(super) async fn hand_activity(&self, item: LockedActivity) -> Result<(), StoreError> {
        let LockedActivity { id, token, task } = item;
        let key = lost_key::activity(id);
        let lost = self.state.lock().unwrap().lost.get(&key).copied().unwrap_or(0);
        if lost >= MAX_LOST_DELIVERIES {
            self.state.lock().unwrap().lost.remove(&key);
            let why = format!(
                "the activity work item was sent to {lost} workers in a row whose streams ended before they answered; it is not sent again"
            );
            warn!(instance_id = %task.instance_id, task_id = task.request.task_id, reason = %why, "failing the activity");
            let now = self.clock.now();
            let result = events::task_result(now, task.request.task_id, None, Some(events::failure("WorkItemUndeliverable", why)));
            let done = Write::ActivityResult {
                id,
                token,
                result,
                now,
                claim: None,
            };
            let written = self.batcher.write(done).await?;
            self.changed(&written.changed);
            return Ok(());
        }
        let (taken, sent) = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let (name, version) = (&task.request.name, task.request.version.as_deref());
            let taken = state.workers.values().any(|w| w.filter.takes_activity(name, version));
            let chosen = state.choose(|w| w.activities < w.max_activities && w.has_room(buffer) && w.filter.takes_activity(name, version));
            let sent = chosen.and_then(|worker_id| {
                let worker = state.workers.get_mut(&worker_id)?;
                let task_id = task.request.task_id;
                let (work, size) = work_item(Item::ActivityRequest(task.request), &token);
                worker.send(work, size).then_some(())?;
                worker.activities += 1;
                state.activities.insert(
                    token.clone(),
                    HeldActivity {
                        worker: worker_id,
                        id,
                        instance_id: task.instance_id,
                        task_id,
                        since: Instant::now(),
                    },
                );
                Some(())
            });
            (taken, sent)
        };
        match sent {
            Some(()) => METRICS.dispatched(Kind::Activity),
            None => {
                // Only an activity queued before names were stored can be leased for a filter that
                // does not take it; it waits a moment before it is offered again.
                let later = if taken { 0 } else { time::span(self.settings.abandon_delay) };
                self.store.release_activity(id, &token, self.clock.now() + later).await?;
            }
        }
        Ok(())
    }

    async fn hand_entity(&self, item: LockedEntity, now: Micros) -> Result<(), StoreError> {
        let LockedEntity { token, entity, queue } = item;
        let id = entity.instance_id.clone();
        let plan = entity_rules::plan(&entity, &queue, now);
        if plan.operations.is_empty() {
            // Only lock traffic or deferrals: nothing for a worker to run.
            let commit = entity_rules::without_worker(&entity, plan, now);
            let written = self.batcher.write(Write::EntityStep { token, commit }).await?;
            self.changed(&written.changed);
            return Ok(());
        }
        let shape = self.settings.entity_work_items;
        let (taken, sent) = {
            let mut state = self.state.lock().unwrap();
            let buffer = self.settings.worker_buffer_bytes;
            let taken = state.workers.values().any(|w| w.filter.takes_entity(&id));
            let chosen = state.choose(|w| w.entities < w.max_entities && w.has_room(buffer) && w.filter.takes_entity(&id));
            let sent = chosen.and_then(|worker_id| {
                let worker = state.workers.get_mut(&worker_id)?;
                let request = match shape {
                    EntityWorkItems::Request => Item::EntityRequestV2(EntityRequest {
                        instance_id: id.clone(),
                        execution_id: String::new(),
                        entity_state: entity.state.clone(),
                        operation_requests: plan.operations.iter().map(|(_, e)| e.clone()).collect(),
                    }),
                    EntityWorkItems::BatchRequest => Item::EntityRequest(EntityBatchRequest {
                        instance_id: id.clone(),
                        entity_state: entity.state.clone(),
                        operations: plan.operations.iter().map(|(_, e)| entity_rules::operation_request(e)).collect(),
                        properties: Default::default(),
                    }),
                };
                let (work, size) = work_item(request, &token);
                worker.send(work, size).then_some(())?;
                worker.entities += 1;
                state.entities.insert(
                    token.clone(),
                    HeldEntity {
                        worker: worker_id,
                        entity,
                        plan,
                    },
                );
                Some(worker_id)
            });
            state.entities_parked |= sent.is_none() && !taken;
            (taken, sent)
        };
        match sent {
            Some(worker) => debug!(entity = %id, worker, "entity work item sent"),
            // Entity leases do not filter by name: an entity no connected worker takes is
            // offered again a moment later, not at once.
            None if !taken => {
                self.store
                    .release_entity(&id, &token, now + time::span(self.settings.abandon_delay))
                    .await?
            }
            None => self.store.release_entity(&id, &token, 0).await?,
        }
        Ok(())
    }

    /// Takes back the items workers have held longer than `deadline` and offers them again;
    /// an answer that comes later is refused as stale.
    async fn take_back_overdue(&self, deadline: Duration) {
        let (orchestrations, activities) = {
            let mut state = self.state.lock().unwrap();
            let orchestrations: Vec<_> = state.orchestrations.extract_if(|_, h| h.since.elapsed() >= deadline).collect();
            let activities: Vec<_> = state.activities.extract_if(|_, h| h.since.elapsed() >= deadline).collect();
            for (_, h) in &orchestrations {
                state.freed(h.worker, |w| &mut w.orchestrations);
            }
            for (_, h) in &activities {
                state.freed(h.worker, |w| &mut w.activities);
            }
            (orchestrations, activities)
        };
        if orchestrations.is_empty() && activities.is_empty() {
            return;
        }
        warn!(
            orchestrations = orchestrations.len(),
            activities = activities.len(),
            deadline_seconds = deadline.as_secs_f64(),
            "work items held past the item deadline; giving them to other workers"
        );
        self.release_held(orchestrations, activities, vec![]).await;
    }
}

/// A work item for `token`, with its encoded size (what it takes of a worker's buffer).
fn work_item(request: Item, token: &str) -> (WorkItem, usize) {
    let work = WorkItem {
        request: Some(request),
        completion_token: token.to_string(),
    };
    let size = work.encoded_len();
    (work, size)
}

//! Completion handling: what workers hold, and their answers (complete or abandon) applied
//! through the engine and written through the batcher.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prost::Message as _;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::workers::lost_key;
use super::{Dispatcher, Kinds, Refused};
use crate::engine::entities::{self as entity_rules, Plan};
use crate::engine::{self, events};
use crate::limits;
use crate::metrics::{Kind, METRICS};
use crate::model::{Entity, Instance};
use crate::proto::*;
use crate::store::{StoreError, Write};
use crate::time;

/// Most bytes of actions buffered for one chunked answer (all its partial chunks together).
pub(super) const MAX_CHUNKED_BYTES: usize = 64 << 20;

/// An orchestrator work item a worker holds.
pub(super) struct HeldOrchestration {
    pub(super) worker: u64,
    pub(super) instance: Instance,
    /// Shared with the history cache (SQLite); let go before the step is written, so the
    /// cache appends the step's events in place.
    pub(super) history: Arc<Vec<HistoryEvent>>,
    pub(super) new_events: Vec<HistoryEvent>,
    pub(super) consumed: Vec<i64>,
    /// Actions of a chunked answer received so far (and their size), and the next chunk
    /// index expected.
    pub(super) chunks: Vec<OrchestratorAction>,
    pub(super) chunk_bytes: usize,
    pub(super) next_chunk: i32,
    /// When it was handed out (item deadlines, the step latency metric), on tokio's clock.
    pub(super) since: Instant,
}

pub(super) struct HeldActivity {
    pub(super) worker: u64,
    pub(super) id: i64,
    pub(super) instance_id: String,
    pub(super) task_id: i32,
    pub(super) since: Instant,
}

/// An entity batch a worker holds: what the engine planned, to apply the result to.
pub(super) struct HeldEntity {
    pub(super) worker: u64,
    pub(super) entity: Entity,
    pub(super) plan: Plan,
}

impl Dispatcher {
    /// Applies an orchestrator's answer (or buffers it, for a chunk that is not the last).
    /// Chunking is deprecated in the protocol but still sent by the .NET and Java SDKs.
    #[allow(deprecated)]
    pub async fn complete_orchestration(&self, response: OrchestratorResponse) -> Result<(), Refused> {
        engine::validate(&response.actions)?;
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if response.completion_token.is_empty() {
                // Workers built before completion tokens existed: one item per instance at a time.
                if response.instance_id.is_empty() {
                    return Err(Refused::NoInstanceId);
                }
                state
                    .orchestrations
                    .iter()
                    .find(|(_, h)| h.instance.instance_id == response.instance_id)
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| Refused::NoOrchestration(response.instance_id.clone()))?
            } else {
                response.completion_token.clone()
            };
            let held = state.orchestrations.get_mut(&token).ok_or_else(|| Refused::Stale(token.clone()))?;
            if !response.instance_id.is_empty() && response.instance_id != held.instance.instance_id {
                return Err(Refused::OtherInstance {
                    given: response.instance_id.clone(),
                    held: held.instance.instance_id.clone(),
                });
            }
            let chunked = response.is_partial || response.chunk_index.is_some();
            if chunked {
                let index = response.chunk_index.unwrap_or(held.next_chunk);
                if index != held.next_chunk {
                    return Err(Refused::ChunkOutOfOrder {
                        expected: held.next_chunk,
                        got: index,
                    });
                }
                let bytes = response.actions.iter().map(|a| a.encoded_len()).sum::<usize>();
                if held.chunks.len() + response.actions.len() > limits::MAX_ACTIONS || held.chunk_bytes + bytes > MAX_CHUNKED_BYTES {
                    // Nothing of the answer is kept; the item goes back to the queue.
                    held.chunks = vec![];
                    held.chunk_bytes = 0;
                    held.next_chunk = 0;
                    return Err(Refused::ChunksTooLarge);
                }
                held.next_chunk += 1;
                held.chunk_bytes += bytes;
                held.chunks.extend(response.actions.iter().cloned());
                if response.is_partial {
                    return Ok(());
                }
            }
            let mut held = state.take_orchestration(&token).expect("checked above");
            state.lost.remove(&lost_key::orchestration(&held.instance.instance_id));
            if !chunked {
                held.chunks = response.actions.clone();
            }
            METRICS.completed(Kind::Orchestration, held.since.elapsed());
            (token, held)
        };
        let id = held.instance.instance_id.clone();
        if response.requires_history {
            // The worker could not use what it got; send the same step again, with history.
            self.release(&id, &token).await;
            return Ok(());
        }
        let answer = engine::Response {
            actions: held.chunks,
            custom_status: response.custom_status,
            trace_context: response.orchestration_trace_context,
        };
        let now = self.clock.now();
        // Kept for failing the instance should its step turn out impossible to store.
        let retained = (held.instance.clone(), held.new_events.clone(), held.consumed.clone());
        let mut commit = engine::apply(&held.instance, &held.history, &held.new_events, answer, now, &mut || {
            uuid::Uuid::new_v4().simple().to_string()
        });
        // Tracing: marks trace contexts in the commit, emits the step's spans once it is stored.
        let spans = self
            .telemetry
            .step(&held.instance, &held.history, &held.new_events, &mut commit, now);
        let ended = if commit.instance.execution_id != held.instance.execution_id {
            Some(OrchestrationStatus::ContinuedAsNew)
        } else {
            (commit.instance.is_terminal() && !held.instance.is_terminal()).then_some(commit.instance.status)
        };
        drop(held.history);
        let children = commit.children.len();
        let claim = self.claim(&commit.activities);
        let fed = self.fed_by_step(&commit, claim.as_ref(), now);
        match self
            .batcher
            .write(Write::Step {
                token: token.clone(),
                consumed: held.consumed,
                commit,
                now,
                claim,
            })
            .await
        {
            Ok(mut written) => {
                spans.committed();
                if let Some(status) = ended {
                    METRICS.orchestration_finished(status);
                }
                METRICS.orchestrations_started(children);
                let handed = self.hand_claimed(&mut written).await;
                self.watchers.notify(&written.changed);
                let kinds = if handed { fed } else { Kinds::ALL };
                self.backlog.fetch_or(kinds, Ordering::SeqCst);
                self.wake_after(kinds, now);
                Ok(())
            }
            Err(e) if e.is_permanent() => {
                // Storing this step can never succeed (it would be refused again on every
                // retry): the instance fails instead, and its worker hears why.
                spans.failed(&e);
                let (instance, new_events, consumed) = retained;
                let why = format!("the orchestration step could not be stored: {e}");
                // Nothing of the step was written, so the stored history is the one it ran on.
                let failed = match self.store.history(&id).await {
                    Ok(history) => {
                        self.fail_step(token.clone(), &instance, &history, &new_events, consumed, "StepNotStorable", why)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = failed {
                    warn!(instance_id = %id, error = %e, "could not fail the orchestration either");
                    self.release(&id, &token).await;
                }
                Err(Refused::NotStorable(e))
            }
            Err(e) => {
                spans.failed(&e);
                warn!(instance_id = %id, error = %e, "orchestration step not committed");
                if !matches!(e, StoreError::LeaseLost) {
                    self.release(&id, &token).await;
                }
                Err(Refused::Store(e))
            }
        }
    }

    async fn release(&self, instance_id: &str, token: &str) {
        if let Err(e) = self.store.release_orchestration(instance_id, token, &[], 0).await {
            debug!(error = %e, "releasing orchestration lease");
        }
        self.wake();
    }

    /// Records an activity's result.
    pub async fn complete_activity(&self, response: ActivityResponse) -> Result<(), Refused> {
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if response.completion_token.is_empty() {
                state
                    .activities
                    .iter()
                    .find(|(_, h)| h.instance_id == response.instance_id && h.task_id == response.task_id)
                    .map(|(t, _)| t.clone())
                    .ok_or_else(|| Refused::NoActivity {
                        instance_id: response.instance_id.clone(),
                        task_id: response.task_id,
                    })?
            } else {
                response.completion_token.clone()
            };
            let held = state.activities.get(&token).ok_or_else(|| Refused::Stale(token.clone()))?;
            if (!response.instance_id.is_empty() && response.instance_id != held.instance_id) || response.task_id != held.task_id {
                return Err(Refused::OtherTask {
                    given_instance: response.instance_id.clone(),
                    given_task: response.task_id,
                    held_instance: held.instance_id.clone(),
                    held_task: held.task_id,
                });
            }
            let held = state.take_activity(&token).expect("checked above");
            METRICS.completed(Kind::Activity, held.since.elapsed());
            state.lost.remove(&lost_key::activity(held.id));
            (token, held)
        };
        let now = self.clock.now();
        // A result the orchestration could never be sent fails the activity instead, so the
        // orchestration sees a failure that says why rather than an undeliverable work item.
        let size = response.result.as_ref().map_or(0, |r| r.len()) + response.failure_details.as_ref().map_or(0, |f| f.encoded_len());
        let refused = if size > self.settings.max_work_item_bytes {
            Some((
                "ActivityResultTooLarge",
                format!(
                    "the activity's result is {size} bytes, more than the {} a work item may carry (--max-work-item-mib)",
                    self.settings.max_work_item_bytes
                ),
            ))
        } else {
            limits::failure("failureDetails", response.failure_details.as_ref()).err().map(|e| {
                (
                    "InvalidFailureDetails",
                    format!("the activity's failure could not be recorded: {e}"),
                )
            })
        };
        let (result, failure_details) = match refused {
            Some((error_type, why)) => {
                warn!(instance_id = %held.instance_id, task_id = held.task_id, size, reason = %why, "recording the activity as failed");
                (None, Some(events::failure(error_type, why)))
            }
            None => (response.result, response.failure_details),
        };
        let result = events::task_result(now, held.task_id, result, failure_details);
        let claim = self.claim(&[]);
        let mut outcome = self
            .batcher
            .write(Write::ActivityResult {
                id: held.id,
                token,
                result,
                now,
                claim,
            })
            .await;
        match &mut outcome {
            Ok(written) => {
                // The orchestration it fed is running already when the claim handed it out;
                // otherwise the loop leases it. The room freed matters where work waits.
                let claimed = written.orchestration.is_some();
                let handed = self.hand_claimed(written).await;
                let fed = if handed && claimed { 0 } else { Kinds::ORCHESTRATIONS };
                let freed = self.backlog.load(Ordering::SeqCst) & Kinds::ACTIVITIES;
                let kinds = if handed { fed | freed } else { Kinds::ALL };
                self.backlog.fetch_or(kinds, Ordering::SeqCst);
                self.wake_for(kinds);
            }
            Err(_) => self.wake(),
        }
        outcome.map(drop).map_err(Refused::Store)
    }

    /// Returns an orchestration work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_orchestration(&self, token: &str) {
        let Some(held) = self.state.lock().unwrap().take_orchestration(token) else {
            return;
        };
        METRICS.abandoned(Kind::Orchestration);
        let released = self
            .store
            .release_orchestration(&held.instance.instance_id, token, &[], self.after_back_off());
        if let Err(e) = released.await {
            debug!(error = %e, "abandoning orchestration");
        }
        self.wake();
    }

    /// When an abandoned item is offered again.
    fn after_back_off(&self) -> time::Micros {
        self.clock.now() + time::span(self.settings.abandon_delay)
    }

    /// Returns an activity work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_activity(&self, token: &str) {
        let Some(held) = self.state.lock().unwrap().take_activity(token) else {
            return;
        };
        METRICS.abandoned(Kind::Activity);
        if let Err(e) = self.store.release_activity(held.id, token, self.after_back_off()).await {
            debug!(error = %e, "abandoning activity");
        }
        self.wake();
    }

    /// Applies an entity batch's result. Workers that predate completion tokens may send none;
    /// then the result belongs to the one entity batch outstanding, if there is only one.
    pub async fn complete_entity(&self, result: EntityBatchResult) -> Result<(), Refused> {
        let (token, held) = {
            let mut state = self.state.lock().unwrap();
            let token = if result.completion_token.is_empty() {
                let mut tokens = state.entities.keys();
                match (tokens.next(), tokens.next()) {
                    (Some(only), None) => only.clone(),
                    _ => {
                        return Err(Refused::AmbiguousEntity);
                    }
                }
            } else {
                result.completion_token.clone()
            };
            let held = state.take_entity(&token).ok_or_else(|| Refused::Stale(token.clone()))?;
            (token, held)
        };
        let id = held.entity.instance_id.clone();
        if result.results.is_empty() && result.failure_details.is_some() {
            // The batch failed as a whole (not one operation): nothing of it happened; retry later.
            let reason = result.failure_details.as_ref().map(|f| f.error_message.clone()).unwrap_or_default();
            warn!(entity = %id, reason, "entity batch failed; it will run again");
            let _ = self.store.release_entity(&id, &token, self.after_back_off()).await;
            self.wake();
            return Ok(());
        }
        let now = self.clock.now();
        let commit = entity_rules::complete(&held.entity, held.plan, result, now, &mut || uuid::Uuid::new_v4().to_string());
        match self
            .batcher
            .write(Write::EntityStep {
                token: token.clone(),
                commit,
            })
            .await
        {
            Ok(written) => {
                self.changed(&written.changed);
                Ok(())
            }
            Err(e) => {
                warn!(entity = %id, error = %e, "entity step not committed");
                if !matches!(e, StoreError::LeaseLost) {
                    let _ = self.store.release_entity(&id, &token, 0).await;
                    self.wake();
                }
                Err(Refused::Store(e))
            }
        }
    }

    /// Returns an entity work item to the queue. Unknown tokens are fine (idempotent).
    pub async fn abandon_entity(&self, token: &str) {
        let Some(held) = self.state.lock().unwrap().take_entity(token) else {
            return;
        };
        let released = self.store.release_entity(&held.entity.instance_id, token, self.after_back_off());
        if let Err(e) = released.await {
            debug!(error = %e, "abandoning entity work item");
        }
        self.wake();
    }
}

//! Work a commit creates, leased inside that commit for the workers already waiting for it
//! and handed to them as soon as it returns: no lease round after the commit, no second
//! flush to disk. The claim is only made while a connected worker has room for the work,
//! and an orchestration's only while the loop is not leasing orchestrations (then its round
//! takes the work along in statements it runs anyway, which under load is cheaper);
//! what no worker takes by the time the commit returns (its room went to other work, its
//! stream ended) is released at once, and what this sidecar never hands out (it died) comes
//! free when the lease expires, as any lease.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::Dispatcher;
use super::Kinds;
use crate::model::{ActivityTask, Commit, Names};
use crate::store::{Claim, Written};
use crate::time::{self, Micros};

impl Dispatcher {
    /// What a write should lease for the workers waiting now: the first of a step's new
    /// `activities` that connected workers with room take, and the orchestration the write
    /// leaves due when a worker with room takes any orchestration. `None` when nothing would
    /// be handed out (no room, or the sidecar is draining).
    pub(super) fn claim(&self, activities: &[ActivityTask]) -> Option<Claim> {
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        let buffer = self.settings.worker_buffer_bytes;
        let state = self.state.lock().unwrap();
        let waiting = || state.workers.values().filter(|w| w.has_room(buffer));
        // When the loop is leasing orchestrations, or about to, it takes this one along in a
        // statement it runs anyway; a claim would cost a statement and a read of its own.
        let round = self.leasing.load(Ordering::SeqCst) || self.wanted.load(Ordering::SeqCst) & Kinds::ORCHESTRATIONS != 0;
        let orchestration = !round && waiting().any(|w| w.orchestrations < w.max_orchestrations && w.filter.orchestrations == Names::Any);
        // Each activity in turn goes to some worker with room that takes it; the claim stops
        // at the first that none would take.
        let mut room: Vec<_> = waiting()
            .map(|w| (&w.filter, w.max_activities.saturating_sub(w.activities)))
            .filter(|(_, free)| *free > 0)
            .collect();
        let mut claimed = 0;
        for a in activities {
            let (name, version) = (&a.request.name, a.request.version.as_deref());
            match room.iter_mut().find(|(f, free)| *free > 0 && f.takes_activity(name, version)) {
                Some((_, free)) => *free -= 1,
                None => break,
            }
            claimed += 1;
        }
        if claimed == 0 && !orchestration {
            return None;
        }
        Some(Claim {
            owner: self.owner.clone(),
            until: self.clock.now() + time::span(self.settings.lease),
            activities: claimed,
            orchestration,
        })
    }

    /// Hands out what a committed write's claim leased; what no worker takes now is released.
    /// False when something was released (or could not be), so the loop must look again.
    pub(super) async fn hand_claimed(&self, written: &mut Written) -> bool {
        let activities: Vec<String> = written.activities.iter().map(|a| a.token.clone()).collect();
        let orchestration = written.orchestration.as_ref().map(|o| o.token.clone());
        let now = self.clock.now();
        let draining = self.draining.load(Ordering::SeqCst);
        for item in std::mem::take(&mut written.activities) {
            let outcome = if draining {
                self.store.release_activity(item.id, &item.token, now).await
            } else {
                self.hand_activity(item).await
            };
            if let Err(e) = outcome {
                warn!(error = %e, "could not hand out a claimed activity work item; its lease will expire");
            }
        }
        if let Some(item) = written.orchestration.take() {
            let id = item.instance.instance_id.clone();
            let outcome = if draining {
                self.store.release_orchestration(&id, &item.token, &[], 0).await
            } else {
                self.hand_orchestration(item, now).await
            };
            match outcome {
                Ok(()) => debug!(instance_id = %id, "claimed orchestration work item handed out"),
                Err(e) => {
                    warn!(instance_id = %id, error = %e, "could not hand out a claimed orchestration work item; its lease will expire")
                }
            }
        }
        // Everything handed out is held now (a worker's answer may already have let some
        // go: then the loop looks again, which costs a round, never an item).
        let state = self.state.lock().unwrap();
        !draining
            && activities.iter().all(|t| state.activities.contains_key(t))
            && orchestration.is_none_or(|t| state.orchestrations.contains_key(&t))
    }

    /// The kinds of work ([`Kinds`] bits) a committed step leaves for the dispatch loop:
    /// what it queued and did not claim, what became due elsewhere, and the room its answer
    /// freed where work may be waiting.
    pub(super) fn fed_by_step(&self, commit: &Commit, claim: Option<&Claim>, now: Micros) -> u8 {
        let mut kinds = self.backlog.load(Ordering::SeqCst) & Kinds::ORCHESTRATIONS;
        let own = &commit.instance.instance_id;
        let claimed_own = claim.is_some_and(|c| c.orchestration);
        if commit.activities.len() > claim.map_or(0, |c| c.activities) {
            kinds |= Kinds::ACTIVITIES;
        }
        if !claimed_own || !commit.children.is_empty() || !commit.rewinds.is_empty() {
            kinds |= Kinds::ORCHESTRATIONS | Kinds::DUE;
        }
        for m in &commit.messages {
            if m.visible_at > now {
                kinds |= Kinds::DUE;
            } else if m.is_for_entity() {
                kinds |= Kinds::ENTITIES;
            } else if &m.instance_id != own || !claimed_own {
                kinds |= Kinds::ORCHESTRATIONS;
            }
        }
        kinds
    }
}

//! What StartInstance does when its instance id is already taken: the reuse policy, read in
//! both of the shapes the protocol has had.
//!
//! - Current (2025 on): `replaceableStatus` lists the statuses in which the existing instance is
//!   replaced; in any other status the start fails with ALREADY_EXISTS. Replacing a live
//!   instance terminates it, so a list that allows that but leaves out TERMINATED contradicts
//!   itself and is refused.
//! - 2023 (field 2 set): field 1 lists the statuses the action applies to. IGNORE keeps the
//!   existing instance and answers as if started; TERMINATE replaces it (terminating it when
//!   live). An existing instance in an unlisted status is a conflict. ERROR is the enum's zero,
//!   which is never on the wire, so such a policy reads as the current shape.

use crate::proto::{CreateOrchestrationAction, OrchestrationStatus};

use OrchestrationStatus as S;

/// Without a policy, the final statuses are the replaceable ones.
pub use crate::model::TERMINAL;

/// What to do with an existing instance of the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reuse {
    /// Replace it when its status is listed; otherwise the start conflicts.
    Replace(Vec<OrchestrationStatus>),
    /// Keep it when its status is listed (the start answers OK and changes nothing);
    /// otherwise the start conflicts.
    Ignore(Vec<OrchestrationStatus>),
}

/// Reads a policy; `None` when the request carried none. Errors are for INVALID_ARGUMENT.
pub fn policy(given: Option<(Vec<OrchestrationStatus>, i32)>) -> Result<Reuse, String> {
    let Some((statuses, action)) = given else {
        return Ok(Reuse::Replace(TERMINAL.to_vec()));
    };
    match CreateOrchestrationAction::try_from(action) {
        Ok(CreateOrchestrationAction::Error) => {
            let live = statuses.iter().find(|s| matches!(s, S::Pending | S::Running | S::Suspended));
            if let Some(live) = live
                && !statuses.contains(&S::Terminated)
            {
                return Err(format!(
                    "orchestrationIdReusePolicy.replaceableStatus allows replacing a {} instance, which terminates \
                     it, but does not include TERMINATED; add TERMINATED or remove the non-terminal statuses",
                    live.as_str_name()
                ));
            }
            Ok(Reuse::Replace(statuses))
        }
        Ok(CreateOrchestrationAction::Ignore) => Ok(Reuse::Ignore(statuses)),
        Ok(CreateOrchestrationAction::Terminate) => Ok(Reuse::Replace(statuses)),
        Err(_) => Err(format!(
            "orchestrationIdReusePolicy.action {action} is not ERROR, IGNORE or TERMINATE"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ERROR: i32 = CreateOrchestrationAction::Error as i32;
    const IGNORE: i32 = CreateOrchestrationAction::Ignore as i32;
    const TERMINATE: i32 = CreateOrchestrationAction::Terminate as i32;

    #[test]
    fn no_policy_replaces_only_finished_instances() {
        assert_eq!(policy(None), Ok(Reuse::Replace(TERMINAL.to_vec())));
    }

    #[test]
    fn current_shape_replaces_the_listed_statuses() {
        assert_eq!(policy(Some((vec![S::Failed], ERROR))), Ok(Reuse::Replace(vec![S::Failed])));
        let all_live = vec![S::Running, S::Pending, S::Suspended, S::Terminated];
        assert_eq!(policy(Some((all_live.clone(), ERROR))), Ok(Reuse::Replace(all_live)));
        assert_eq!(
            policy(Some((vec![], ERROR))),
            Ok(Reuse::Replace(vec![])),
            "an empty list replaces nothing"
        );
    }

    #[test]
    fn current_shape_refuses_replacing_live_instances_without_terminated() {
        for live in [S::Pending, S::Running, S::Suspended] {
            let err = policy(Some((vec![S::Completed, live], ERROR))).unwrap_err();
            assert!(err.contains("TERMINATED") && err.contains(live.as_str_name()), "{err}");
        }
    }

    #[test]
    fn old_shape_ignore_keeps_the_existing_instance() {
        let listed = vec![S::Running, S::Completed, S::Pending];
        assert_eq!(policy(Some((listed.clone(), IGNORE))), Ok(Reuse::Ignore(listed)));
    }

    #[test]
    fn old_shape_terminate_replaces_live_instances_without_listing_terminated() {
        let listed = vec![S::Running, S::Completed, S::Pending];
        assert_eq!(policy(Some((listed.clone(), TERMINATE))), Ok(Reuse::Replace(listed)));
    }

    #[test]
    fn unknown_actions_are_refused() {
        assert!(policy(Some((vec![], 7))).unwrap_err().contains("action 7"));
    }
}

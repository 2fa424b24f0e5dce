//! Work-item filters: which work a worker takes, read from `GetWorkItemsRequest.workItemFilters`
//! the way the SDKs send them (the .NET worker builds them from its registry: one entry per
//! name, with the versions it has registered, or no versions for "any").
//!
//! - No `workItemFilters`: the worker takes everything.
//! - Filters sent: per kind, only the listed names; a kind with no entries takes nothing (an
//!   activity-only worker sends no orchestration names and must get no orchestrations).
//! - A name with no versions takes any version; with versions, the item's version must be one
//!   of them, an unversioned item counting as "". Names and versions compare exactly.
//! - Entity names compare without case (entity ids are `@name@key` with the name lowercased
//!   by the SDKs that normalize it) and with the `name` part of the id only.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::Names;
use crate::proto::WorkItemFilters;

/// Everything one worker takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkFilter {
    pub orchestrations: Names,
    pub activities: Names,
    pub entities: Names,
}

impl WorkFilter {
    pub fn from_request(filters: Option<&WorkItemFilters>) -> Self {
        let Some(f) = filters else {
            return WorkFilter::default();
        };
        let entities = f.entities.iter().map(|e| (e.name.to_lowercase(), vec![]));
        WorkFilter {
            orchestrations: names(f.orchestrations.iter().map(|o| (o.name.clone(), o.versions.clone()))),
            activities: names(f.activities.iter().map(|a| (a.name.clone(), a.versions.clone()))),
            entities: names(entities),
        }
    }

    pub fn takes_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        matches(&self.orchestrations, name, version)
    }

    pub fn takes_activity(&self, name: &str, version: Option<&str>) -> bool {
        matches(&self.activities, name, version)
    }

    /// `entity` is an entity instance id (`@name@key`) or a bare entity name.
    pub fn takes_entity(&self, entity: &str) -> bool {
        let name = entity
            .strip_prefix('@')
            .and_then(|rest| rest.split_once('@'))
            .map_or(entity, |(name, _)| name);
        matches(&self.entities, &name.to_lowercase(), None)
    }
}

/// Merges the entries by name: a name listed twice takes the union of its versions, and any
/// version if one of its entries lists none.
fn names(entries: impl Iterator<Item = (String, Vec<String>)>) -> Names {
    let mut by_name: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for (name, versions) in entries {
        let slot = by_name.entry(name).or_insert_with(|| Some(BTreeSet::new()));
        match (slot.as_mut(), versions.is_empty()) {
            (Some(_), true) => *slot = None,
            (Some(listed), false) => listed.extend(versions),
            (None, _) => {}
        }
    }
    Names::Only(by_name.into_iter().map(|(n, v)| (n, v.unwrap_or_default())).collect())
}

fn matches(names: &Names, name: &str, version: Option<&str>) -> bool {
    match names {
        Names::Any => true,
        Names::Only(listed) => listed
            .get(name)
            .is_some_and(|versions| versions.is_empty() || versions.contains(version.unwrap_or(""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ActivityFilter, EntityFilter, OrchestrationFilter};

    fn orchestration(name: &str, versions: &[&str]) -> OrchestrationFilter {
        OrchestrationFilter {
            name: name.into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn activity(name: &str, versions: &[&str]) -> ActivityFilter {
        ActivityFilter {
            name: name.into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn no_filters_take_everything() {
        let f = WorkFilter::from_request(None);
        assert!(f.takes_orchestration("Any", None));
        assert!(f.takes_activity("Any", Some("2")));
        assert!(f.takes_entity("@counter@1"));
    }

    #[test]
    fn filters_take_only_the_listed_names_of_each_kind() {
        let f = WorkFilter::from_request(Some(&WorkItemFilters {
            orchestrations: vec![],
            activities: vec![activity("Charge", &[])],
            entities: vec![],
        }));
        assert!(f.takes_activity("Charge", None));
        assert!(f.takes_activity("Charge", Some("7")), "no versions: any version");
        assert!(!f.takes_activity("charge", None), "names compare exactly");
        assert!(!f.takes_activity("Ship", None));
        assert!(
            !f.takes_orchestration("Order", None),
            "an activity-only worker takes no orchestrations"
        );
        assert!(!f.takes_entity("@counter@1"));
    }

    #[test]
    fn listed_versions_must_match_and_unversioned_is_the_empty_version() {
        // What the .NET worker sends for a name registered unversioned and as "2".
        let f = WorkFilter::from_request(Some(&WorkItemFilters {
            orchestrations: vec![orchestration("Order", &["", "2"])],
            ..Default::default()
        }));
        assert!(f.takes_orchestration("Order", None));
        assert!(f.takes_orchestration("Order", Some("")));
        assert!(f.takes_orchestration("Order", Some("2")));
        assert!(!f.takes_orchestration("Order", Some("3")));
        let strict = WorkFilter::from_request(Some(&WorkItemFilters {
            orchestrations: vec![orchestration("Order", &["2"])],
            ..Default::default()
        }));
        assert!(
            !strict.takes_orchestration("Order", None),
            "a strict worker does not take unversioned work"
        );
    }

    #[test]
    fn a_name_listed_twice_takes_the_union() {
        let f = WorkFilter::from_request(Some(&WorkItemFilters {
            orchestrations: vec![orchestration("Order", &["1"]), orchestration("Order", &["2"])],
            activities: vec![activity("Charge", &["1"]), activity("Charge", &[])],
            entities: vec![],
        }));
        assert!(f.takes_orchestration("Order", Some("1")) && f.takes_orchestration("Order", Some("2")));
        assert!(!f.takes_orchestration("Order", Some("3")));
        assert!(f.takes_activity("Charge", Some("9")), "one entry without versions takes any");
    }

    #[test]
    fn entities_match_the_name_part_without_case() {
        let f = WorkFilter::from_request(Some(&WorkItemFilters {
            entities: vec![EntityFilter { name: "Counter".into() }],
            ..Default::default()
        }));
        assert!(f.takes_entity("@counter@key-1"));
        assert!(f.takes_entity("@Counter@key@with@ats"));
        assert!(f.takes_entity("counter"));
        assert!(!f.takes_entity("@account@1"));
        assert!(!f.takes_orchestration("Counter", None));
    }
}

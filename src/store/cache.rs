//! The histories of running instances as this process last committed them, so a step neither
//! re-reads its whole history nor asks for the next sequence number. Sound only because one
//! SQLite file serves one process: every history change passes through this store. Entries are
//! keyed by execution id too, so a replaced instance (a new execution) never sees an old one.
//! A history is shared with the work item leased from it, not copied: by the time the step's
//! events are appended the item is gone, so the append happens in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::txn::HistoryChange;
use crate::model::HistoryWrite;
use crate::proto::HistoryEvent;

/// Past this many cached events the cache starts over, which bounds its memory (a few tens
/// of MB of typical events); a miss costs only a read.
const MAX_EVENTS: usize = 200_000;

#[derive(Default)]
pub struct HistoryCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    events: usize,
}

impl std::fmt::Debug for HistoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryCache")
            .field("events", &self.inner.lock().unwrap().events)
            .finish()
    }
}

struct Entry {
    execution_id: String,
    events: Arc<Vec<HistoryEvent>>,
}

impl Inner {
    fn make_room(&mut self, more: usize) {
        if self.events + more > MAX_EVENTS {
            self.entries.clear();
            self.events = 0;
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.events -= old.events.len();
        }
    }
}

impl HistoryCache {
    /// The cached history of `id` in `execution_id`, if any.
    pub fn get(&self, id: &str, execution_id: &str) -> Option<Arc<Vec<HistoryEvent>>> {
        let inner = self.inner.lock().unwrap();
        let entry = inner.entries.get(id).filter(|e| e.execution_id == execution_id)?;
        Some(Arc::clone(&entry.events))
    }

    /// How many events `id` has in `execution_id`, if cached.
    pub fn len(&self, id: &str, execution_id: &str) -> Option<usize> {
        self.get(id, execution_id).map(|events| events.len())
    }

    pub fn put(&self, id: &str, execution_id: &str, events: Arc<Vec<HistoryEvent>>) {
        let mut inner = self.inner.lock().unwrap();
        inner.remove(id);
        inner.make_room(events.len());
        inner.events += events.len();
        inner.entries.insert(
            id.to_string(),
            Entry {
                execution_id: execution_id.to_string(),
                events,
            },
        );
    }

    /// Adds committed events to a cached history (nothing if `id` is not cached in that
    /// execution: the next step reads it).
    pub fn append(&self, id: &str, execution_id: &str, events: &[HistoryEvent]) {
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.get(id).is_none_or(|e| e.execution_id != execution_id) {
            inner.remove(id);
            return;
        }
        inner.make_room(events.len());
        // Starting over may have dropped this entry too.
        if let Some(entry) = inner.entries.get_mut(id) {
            // Copies the history only if a work item leased from it is still about.
            Arc::make_mut(&mut entry.events).extend_from_slice(events);
            inner.events += events.len();
        }
    }

    /// Takes in what a committed batch wrote.
    pub fn learn(&self, changes: Vec<HistoryChange>) {
        for c in changes {
            match c.write {
                _ if c.finished => self.forget(&c.instance_id),
                HistoryWrite::Append(events) => self.append(&c.instance_id, &c.execution_id, &events),
                HistoryWrite::Replace(events) => self.put(&c.instance_id, &c.execution_id, Arc::new(events)),
            }
        }
    }

    pub fn forget(&self, id: &str) {
        self.inner.lock().unwrap().remove(id);
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.entries.clear();
        inner.events = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<HistoryEvent> {
        (0..n)
            .map(|i| HistoryEvent {
                event_id: i as i32,
                ..Default::default()
            })
            .collect()
    }

    fn shared(n: usize) -> Arc<Vec<HistoryEvent>> {
        Arc::new(events(n))
    }

    #[test]
    fn entries_belong_to_one_execution() {
        let cache = HistoryCache::default();
        cache.put("a", "e1", shared(2));
        assert_eq!(cache.len("a", "e1"), Some(2));
        assert_eq!(cache.get("a", "e2"), None, "another execution never sees this history");
        cache.append("a", "e1", &events(1));
        assert_eq!(cache.len("a", "e1"), Some(3));
        cache.append("a", "e2", &events(1));
        assert_eq!(cache.len("a", "e1"), None, "a step of another execution drops the entry");
    }

    #[test]
    fn a_leased_history_is_shared_and_keeps_what_it_was_leased_with() {
        let cache = HistoryCache::default();
        cache.put("a", "e1", shared(2));
        let leased = cache.get("a", "e1").expect("cached");
        assert!(Arc::ptr_eq(&leased, &cache.get("a", "e1").expect("cached")), "not copied");
        cache.append("a", "e1", &events(1));
        assert_eq!(leased.len(), 2, "a work item's history does not change under it");
        assert_eq!(cache.len("a", "e1"), Some(3));
        drop(leased);
        let before = cache.get("a", "e1").map(|h| Arc::as_ptr(&h)).expect("cached");
        cache.append("a", "e1", &events(1));
        let after = cache.get("a", "e1").expect("cached");
        assert_eq!(after.len(), 4);
        assert_eq!(Arc::as_ptr(&after), before, "with nothing else holding it, appended in place");
    }

    #[test]
    fn appending_to_an_unknown_history_caches_nothing() {
        let cache = HistoryCache::default();
        cache.append("a", "e1", &events(3));
        assert_eq!(cache.get("a", "e1"), None);
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let cache = HistoryCache::default();
        cache.put("a", "e1", shared(MAX_EVENTS - 1));
        cache.put("b", "e1", shared(2));
        assert_eq!(cache.get("a", "e1"), None);
        assert_eq!(cache.len("b", "e1"), Some(2));
        cache.forget("b");
        assert_eq!(cache.len("b", "e1"), None);
    }
}

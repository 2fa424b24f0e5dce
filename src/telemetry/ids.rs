//! Span ids. Most spans are emitted long after their id was handed out (to a worker, or into
//! history), so the id generator can be told which id the next span must get.
//!
//! Activity span ids are not stored anywhere: they are derived from the orchestration span id,
//! the task id and how often that task id was scheduled before, all of which history keeps.
//! The derivation is FNV-1a, fixed here, so sidecars of different builds agree on it.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

thread_local! {
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except for a span started inside [`with_span_id`].
#[derive(Debug)]
pub(super) struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        RandomIdGenerator::default().new_trace_id()
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID.with(Cell::take).unwrap_or_else(random_span_id)
    }
}

/// Runs `start` (which starts exactly one span, synchronously) so that span gets `id`.
pub(super) fn with_span_id<T>(id: SpanId, start: impl FnOnce() -> T) -> T {
    NEXT_SPAN_ID.with(|next| next.set(Some(id)));
    let span = start();
    NEXT_SPAN_ID.with(|next| next.set(None)); // unused if the span was not recorded
    span
}

pub(super) fn random_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// The id of the span for the `nth` scheduling (from 0) of task `task_id` in the execution
/// whose orchestration span is `orchestration`.
pub(super) fn activity_span_id(orchestration: SpanId, task_id: i32, nth: u32) -> SpanId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = orchestration
        .to_bytes()
        .into_iter()
        .chain(task_id.to_be_bytes())
        .chain(nth.to_be_bytes());
    for b in b"activity".iter().copied().chain(bytes) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    SpanId::from(hash.max(1)) // zero is the invalid span id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let s = SpanId::from(0x1234_5678_9abc_def0);
        assert_eq!(activity_span_id(s, 3, 0), activity_span_id(s, 3, 0));
        assert_ne!(activity_span_id(s, 3, 0), activity_span_id(s, 3, 1));
        assert_ne!(activity_span_id(s, 3, 0), activity_span_id(s, 4, 0));
        assert_ne!(activity_span_id(s, 3, 0), activity_span_id(SpanId::from(1), 3, 0));
        // Pinned, so a change of derivation (which would split traces across versions) fails here.
        assert_eq!(activity_span_id(s, 3, 0).to_string(), "35a4f544f98b1dc5");
    }

    #[test]
    fn the_next_span_id_is_used_once() {
        let id = SpanId::from(42);
        assert_eq!(with_span_id(id, || Ids.new_span_id()), id);
        assert_ne!(Ids.new_span_id(), id);
    }
}

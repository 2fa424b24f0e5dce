//! Prometheus metrics. Recording is a few relaxed atomic adds on fixed slots (no locks, no
//! label maps, no allocation), so the dispatch and commit paths pay next to nothing; labels
//! are small closed sets (work-item kind, final status). Gauges that describe the store or the
//! dispatcher (backlog, connected workers) are read when scraped, not kept up to date.
//! Rendered in the Prometheus text exposition format, base units (seconds), `_total` counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::proto::OrchestrationStatus;

/// The process's metrics. One sidecar per process, so one set.
pub static METRICS: Metrics = Metrics::new();

/// Turns recording on or off (`--metrics`); on by default.
pub fn set_enabled(on: bool) {
    METRICS.enabled.store(on, Relaxed);
}

/// A work item's kind, a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Orchestration = 0,
    Activity = 1,
}

const KINDS: [&str; 2] = ["orchestration", "activity"];

/// How an orchestration execution ended, a label value.
const FINISHED: [(OrchestrationStatus, &str); 5] = [
    (OrchestrationStatus::Completed, "completed"),
    (OrchestrationStatus::Failed, "failed"),
    (OrchestrationStatus::Terminated, "terminated"),
    (OrchestrationStatus::Canceled, "canceled"),
    (OrchestrationStatus::ContinuedAsNew, "continued_as_new"),
];

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Upper bounds of the batch-size buckets, in writes.
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram over fixed bounds (at most 16). Sums are kept in millionths.
struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; 16],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 16],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        // Past the last bound the observation only counts towards +Inf (count).
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

pub struct Metrics {
    enabled: AtomicBool,
    started: Counter,
    finished: [Counter; 5],
    dispatched: [Counter; 2],
    completed: [Counter; 2],
    abandoned: [Counter; 2],
    durations: [Histogram; 2],
    lease_renewals: Counter,
    commit_seconds: Histogram,
    commit_batch: Histogram,
}

/// Figures read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connected_workers: u64,
    /// Instances some WaitForInstanceStart/Completion call is waiting on.
    pub awaited_instances: u64,
    /// Work due now and not leased to anyone: orchestrations, activities.
    pub backlog: Option<[u64; 2]>,
    /// Durable timers (and other future messages) not yet due.
    pub timers_waiting: Option<u64>,
    /// Leases that ran out unreleased: work about to be taken over.
    pub expired_leases: Option<u64>,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            enabled: AtomicBool::new(true),
            started: Counter::new(),
            finished: [const { Counter::new() }; 5],
            dispatched: [const { Counter::new() }; 2],
            completed: [const { Counter::new() }; 2],
            abandoned: [const { Counter::new() }; 2],
            durations: [const { Histogram::new(&LATENCY_BOUNDS) }; 2],
            lease_renewals: Counter::new(),
            commit_seconds: Histogram::new(&LATENCY_BOUNDS),
            commit_batch: Histogram::new(&BATCH_BOUNDS),
        }
    }

    fn on(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.on()
    }

    /// An orchestration instance was created (by a client, a restart or a parent).
    pub fn orchestrations_started(&self, n: usize) {
        if self.on() && n > 0 {
            self.started.add(n as u64);
        }
    }

    /// An execution ended with `status` (ContinuedAsNew for continue-as-new).
    pub fn orchestration_finished(&self, status: OrchestrationStatus) {
        if self.on()
            && let Some(i) = FINISHED.iter().position(|(s, _)| *s == status)
        {
            self.finished[i].add(1);
        }
    }

    pub fn dispatched(&self, kind: Kind) {
        if self.on() {
            self.dispatched[kind as usize].add(1);
        }
    }

    /// A worker answered a work item it held for `held`.
    pub fn completed(&self, kind: Kind, held: Duration) {
        if self.on() {
            self.completed[kind as usize].add(1);
            self.durations[kind as usize].observe(held.as_secs_f64());
        }
    }

    pub fn abandoned(&self, kind: Kind) {
        if self.on() {
            self.abandoned[kind as usize].add(1);
        }
    }

    pub fn leases_renewed(&self, n: usize) {
        if self.on() {
            self.lease_renewals.add(n as u64);
        }
    }

    /// A store write batch of `writes` writes was committed in `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        if self.on() {
            self.commit_seconds.observe(took.as_secs_f64());
            self.commit_batch.observe(writes as f64);
        }
    }

    /// The text exposition of everything.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "outrigger_orchestrations_started_total",
            "counter",
            "Orchestration instances created (by clients, restarts and parent orchestrations).",
        );
        let _ = writeln!(out, "outrigger_orchestrations_started_total {}", self.started.get());

        family(
            &mut out,
            "outrigger_orchestrations_finished_total",
            "counter",
            "Orchestration executions that ended, by final status.",
        );
        for (i, (_, status)) in FINISHED.iter().enumerate() {
            let _ = writeln!(
                out,
                "outrigger_orchestrations_finished_total{{status=\"{status}\"}} {}",
                self.finished[i].get()
            );
        }
        for (name, help, counters) in [
            (
                "outrigger_work_items_dispatched_total",
                "Work items handed to a worker, by kind.",
                &self.dispatched,
            ),
            (
                "outrigger_work_items_completed_total",
                "Work items a worker answered, by kind.",
                &self.completed,
            ),
            (
                "outrigger_work_items_abandoned_total",
                "Work items a worker gave back, by kind.",
                &self.abandoned,
            ),
        ] {
            family(&mut out, name, "counter", help);
            for (i, kind) in KINDS.iter().enumerate() {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", counters[i].get());
            }
        }
        family(
            &mut out,
            "outrigger_orchestration_step_duration_seconds",
            "histogram",
            "From handing an orchestrator work item to a worker to receiving its answer.",
        );
        self.durations[Kind::Orchestration as usize].render(&mut out, "outrigger_orchestration_step_duration_seconds", "");
        family(
            &mut out,
            "outrigger_activity_duration_seconds",
            "histogram",
            "From handing an activity work item to a worker to receiving its result.",
        );
        self.durations[Kind::Activity as usize].render(&mut out, "outrigger_activity_duration_seconds", "");

        family(
            &mut out,
            "outrigger_connected_workers",
            "gauge",
            "Worker streams (GetWorkItems) open on this sidecar.",
        );
        let _ = writeln!(out, "outrigger_connected_workers {}", gauges.connected_workers);
        family(
            &mut out,
            "outrigger_awaited_instances",
            "gauge",
            "Instances that WaitForInstanceStart/Completion calls on this sidecar are waiting on.",
        );
        let _ = writeln!(out, "outrigger_awaited_instances {}", gauges.awaited_instances);
        if let Some(backlog) = gauges.backlog {
            family(
                &mut out,
                "outrigger_backlog_work_items",
                "gauge",
                "Work due now that no worker holds yet, by kind (whole store).",
            );
            for (i, kind) in KINDS.iter().enumerate() {
                let _ = writeln!(out, "outrigger_backlog_work_items{{kind=\"{kind}\"}} {}", backlog[i]);
            }
        }
        if let Some(timers) = gauges.timers_waiting {
            family(
                &mut out,
                "outrigger_timers_waiting",
                "gauge",
                "Durable timers and other delayed events not yet due (whole store).",
            );
            let _ = writeln!(out, "outrigger_timers_waiting {timers}");
        }
        family(
            &mut out,
            "outrigger_lease_renewals_total",
            "counter",
            "Work-item leases renewed while a worker held the item.",
        );
        let _ = writeln!(out, "outrigger_lease_renewals_total {}", self.lease_renewals.get());
        if let Some(expired) = gauges.expired_leases {
            family(
                &mut out,
                "outrigger_expired_leases",
                "gauge",
                "Work items whose lease ran out without release (a dead sidecar's work), waiting to be taken over (whole store).",
            );
            let _ = writeln!(out, "outrigger_expired_leases {expired}");
        }
        family(
            &mut out,
            "outrigger_store_commit_duration_seconds",
            "histogram",
            "Time to commit one batch of worker answers to the store.",
        );
        self.commit_seconds.render(&mut out, "outrigger_store_commit_duration_seconds", "");
        family(
            &mut out,
            "outrigger_store_commit_batch_size",
            "histogram",
            "Worker answers written per store commit.",
        );
        self.commit_batch.render(&mut out, "outrigger_store_commit_batch_size", "");
        family(
            &mut out,
            "outrigger_metrics_enabled",
            "gauge",
            "1 when recording is on (--metrics).",
        );
        let _ = writeln!(out, "outrigger_metrics_enabled {}", u8::from(self.on()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::new(&BATCH_BOUNDS);
        for v in [1.0, 3.0, 3.0, 300.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"256\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 307\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }
}

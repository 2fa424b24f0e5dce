//! One row of figures per run, printed as a markdown table and written as JSON.

use serde_json::{Value, json};

use crate::stats::Summary;

/// The figures of one workload run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub workload: String,
    pub backend: String,
    pub count: usize,
    pub concurrency: usize,
    pub completed: usize,
    pub failed: usize,
    pub elapsed_s: f64,
    pub orchestrations_per_s: Option<f64>,
    pub activities_per_s: Option<f64>,
    pub latency_ms: Summary,
    pub timer_lateness_ms: Summary,
    pub sidecar_cpu_s: Option<f64>,
    pub cpu_s_per_1k: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    /// Workload-specific figures (e.g. the cost of early and late steps of `long`).
    pub extra: serde_json::Map<String, Value>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let summary = |s: &Summary| json!({"p50": s.p50, "p90": s.p90, "p99": s.p99, "max": s.max});
        json!({
            "workload": self.workload,
            "backend": self.backend,
            "count": self.count,
            "concurrency": self.concurrency,
            "completed": self.completed,
            "failed": self.failed,
            "elapsed_s": self.elapsed_s,
            "orchestrations_per_s": self.orchestrations_per_s,
            "activities_per_s": self.activities_per_s,
            "latency_ms": summary(&self.latency_ms),
            "timer_lateness_ms": summary(&self.timer_lateness_ms),
            "sidecar_cpu_s": self.sidecar_cpu_s,
            "sidecar_cpu_s_per_1000_orchestrations": self.cpu_s_per_1k,
            "sidecar_peak_rss_mib": self.peak_rss_mib,
            "sidecar_rss_after_mib": self.rss_after_mib,
            "extra": self.extra,
            "notes": self.notes,
            "errors": self.errors,
        })
    }
}

const HEADER: [&str; 16] = [
    "workload",
    "backend",
    "n",
    "conc",
    "ok",
    "orch/s",
    "act/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "timer p50 ms",
    "timer p99 ms",
    "CPU s/1k orch",
    "peak RSS MiB",
    "notes",
];

/// The reports as one markdown table.
pub fn markdown(reports: &[Report]) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADER.join(" | "), "---|".repeat(HEADER.len()));
    for r in reports {
        let mut notes = r.notes.clone();
        if r.failed > 0 {
            notes.push(format!("{} failed", r.failed));
        }
        let cells = [
            r.workload.clone(),
            r.backend.clone(),
            r.count.to_string(),
            r.concurrency.to_string(),
            r.completed.to_string(),
            rate(r.orchestrations_per_s),
            rate(r.activities_per_s),
            num(r.latency_ms.p50, 1),
            num(r.latency_ms.p90, 1),
            num(r.latency_ms.p99, 1),
            num(r.latency_ms.max, 1),
            num(r.timer_lateness_ms.p50, 1),
            num(r.timer_lateness_ms.p99, 1),
            num(r.cpu_s_per_1k, 2),
            num(r.peak_rss_mib, 1),
            notes.join("; "),
        ];
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// A rate: whole numbers, except below 10 where the decimals are the figure (`long` runs one
/// orchestration in many seconds).
fn rate(v: Option<f64>) -> String {
    num(v, if v.is_some_and(|v| v < 10.0) { 2 } else { 0 })
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "–".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_report_and_dashes_for_missing_figures() {
        let r = Report {
            workload: "hello5".into(),
            backend: "sqlite".into(),
            count: 10,
            concurrency: 2,
            completed: 9,
            failed: 1,
            orchestrations_per_s: Some(123.456),
            latency_ms: Summary {
                p50: Some(1.24),
                p90: Some(2.0),
                p99: Some(3.0),
                max: Some(4.0),
            },
            ..Default::default()
        };
        let slow = Report {
            orchestrations_per_s: Some(0.0612),
            ..r.clone()
        };
        let table = markdown(&[r, slow]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[3].contains("| 9 | 0.06 |"), "{}", lines[3]);
        assert!(
            lines[2].starts_with("| hello5 | sqlite | 10 | 2 | 9 | 123 | – | 1.2 | 2.0 |"),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("| 1 failed |"), "{}", lines[2]);
        assert_eq!(lines[0].matches('|').count(), lines[2].matches('|').count());
    }
}

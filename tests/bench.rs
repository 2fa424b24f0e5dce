//! Smoke test of the outrigger-bench binary against a test sidecar: tiny runs of a few
//! workloads must complete and produce a results file. Figures are checked for presence and
//! consistency only, never against speeds.

mod common;

use std::process::Command;

use common::Sidecar;
use serde_json::Value;

/// Runs `outrigger-bench` with `args` and `--results FILE`; asserts it succeeded and returns
/// its stdout, its stderr and the results document.
async fn bench(args: Vec<String>) -> (String, String, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_outrigger-bench"));
    command.args(args).arg("--results").arg(&results);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run outrigger-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let document = serde_json::from_str(&std::fs::read_to_string(&results).expect("results file")).expect("JSON");
    (stdout, stderr, document)
}

/// Arguments from one line of words (none of them holds a space).
fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_runs_complete_and_write_results() {
    let sidecar = Sidecar::start().await;
    let address = format!("http://{}", sidecar.addr);
    // The sidecar runs inside this test process, so its pid is ours.
    let pid = std::process::id().to_string();
    let workloads = "hello5,fanout,timers,starts,entity-signals,entity-calls,ping";
    let line = format!("--address {address} --sidecar-pid {pid} --workload {workloads}");
    let (stdout, _, document) = bench(args(&format!("{line} --count 4 --concurrency 2 --width 10 --timeout 30"))).await;
    assert!(
        stdout.contains("| workload |") && stdout.contains("| hello5 |"),
        "no table on stdout:\n{stdout}"
    );

    let runs = document["runs"].as_array().expect("runs");
    let names: Vec<&str> = runs.iter().map(|r| r["workload"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        names,
        ["hello5", "fanout", "timers", "starts", "entity-signals", "entity-calls", "ping"]
    );
    for run in runs {
        let name = &run["workload"];
        assert_eq!(run["completed"], 4, "{name}: {run}");
        assert_eq!(run["failed"], 0, "{name}: {run}");
        assert!(run["errors"].as_array().is_some_and(Vec::is_empty), "{name}: {run}");
        let p50 = run["latency_ms"]["p50"].as_f64().expect("p50");
        let max = run["latency_ms"]["max"].as_f64().expect("max");
        assert!(0.0 < p50 && p50 <= max, "{name}: {run}");
        assert!(
            run["sidecar_cpu_s"].as_f64().is_some() && run["sidecar_peak_rss_mib"].as_f64().is_some(),
            "{name}: {run}"
        );
    }
    let by_name = |n: &str| runs.iter().find(|r| r["workload"] == n).expect("run");
    // 4 orchestrations of five activities, and of a fan-out of ten.
    let hello5 = by_name("hello5");
    let rate = |r: &Value, k: &str| r[k].as_f64().expect(k);
    assert!(
        (rate(hello5, "activities_per_s") - 5.0 * rate(hello5, "orchestrations_per_s")).abs() < 1e-6,
        "{hello5}"
    );
    let fanout = by_name("fanout");
    assert!(
        (rate(fanout, "activities_per_s") - 10.0 * rate(fanout, "orchestrations_per_s")).abs() < 1e-6,
        "{fanout}"
    );
    // The worker saw the timers fire, so lateness figures exist (their size is not a test matter).
    let lateness = &by_name("timers")["timer_lateness_ms"];
    assert!(
        lateness["p50"].as_f64().is_some() && lateness["p99"].as_f64().is_some(),
        "{lateness}"
    );
    assert!(hello5["timer_lateness_ms"]["p50"].is_null(), "hello5 has no timers: {hello5}");
    assert!(
        by_name("starts")["notes"].to_string().contains("4 drained after"),
        "{}",
        by_name("starts")
    );
}

/// `--dapr` starts the sidecar with only its Dapr listener, and hello5 runs through it.
#[tokio::test(flavor = "multi_thread")]
async fn hello5_runs_over_the_dapr_listener() {
    let mut line = args("--dapr --workload hello5 --count 4 --concurrency 2 --timeout 30");
    line.extend(["--sidecar".into(), env!("CARGO_BIN_EXE_outrigger").into()]);
    let (_, stderr, document) = bench(line).await;
    assert!(stderr.contains("sqlite (Dapr listener)"), "the row names the listener:\n{stderr}");
    let run = &document["runs"][0];
    assert_eq!(
        (run["workload"].as_str(), run["completed"].as_u64()),
        (Some("hello5"), Some(4)),
        "{run}"
    );
    assert!(run["errors"].as_array().is_some_and(Vec::is_empty), "{run}");
}

/// Several --address values: instances are started on each in turn and a worker is attached to
/// each (here the same sidecar twice, so the run must still complete every instance once).
#[tokio::test(flavor = "multi_thread")]
async fn several_addresses_share_the_run() {
    let sidecar = Sidecar::start().await;
    let address = format!("http://{}", sidecar.addr);
    let line = format!("--address {address},{address} --workload hello5 --count 6 --concurrency 3 --timeout 30");
    let (_, _, document) = bench(args(&line)).await;
    let run = &document["runs"][0];
    assert_eq!((run["completed"].as_u64(), run["failed"].as_u64()), (Some(6), Some(0)), "{run}");
    assert!(run["errors"].as_array().is_some_and(Vec::is_empty), "{run}");
    assert!(run["backend"].as_str().is_some_and(|b| b.ends_with("×2")), "{run}");
}

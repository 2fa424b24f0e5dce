//! `outrigger-bench`: a load generator for any server speaking TaskHubSidecarService.
//!
//! It starts orchestrations with the generated client and runs them with its own raw worker
//! (see worker.rs), then reports throughput, end-to-end latency, timer lateness and the
//! sidecar's CPU time and peak memory, as a markdown table on stdout and JSON in a file.
//! Either point it at a running server (`--address`, plus `--sidecar-pid` for CPU and memory)
//! or let it start an outrigger binary itself (`--sidecar`).

mod driver;
mod report;
mod sdk;
mod sidecar;
mod stats;
mod worker;
mod workload;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use report::Report;
use sidecar::{Probe, Spawned};
use stats::Summary;
use worker::{Client, Worker};
use workload::{STANDARD, Workload};

/// Load generator for a Durable Task sidecar: starts orchestrations, runs them with its own
/// raw-protocol worker and reports throughput, latency, timer lateness and the server's CPU
/// time and peak memory (markdown on stdout, JSON in --results).
///
/// Workloads: hello5, latency1, fanout, timers, long, starts, entity-signals, entity-calls
/// (the standard set, also named "standard"), fill (1,000,000 single-step orchestrations, for
/// the memory target), sdk-hello5 (hello5 through the Python SDK) and ping (the Hello call
/// alone: what one gRPC round trip costs).
#[derive(Debug, Parser)]
#[command(name = "outrigger-bench", version)]
struct Args {
    /// Server to benchmark, when not started with --sidecar. Several, comma-separated, are
    /// sidecars sharing one database: the run starts instances on each in turn and attaches
    /// one worker to each (hello5, latency1, fanout, timers, long, fill).
    #[arg(long, default_value = "http://127.0.0.1:4001", value_delimiter = ',')]
    address: Vec<String>,

    /// Process ids of the servers at --address, to report their CPU time (summed) and peak RSS
    /// (the largest); comma-separated.
    #[arg(long, value_delimiter = ',')]
    sidecar_pid: Vec<u32>,

    /// Start this outrigger binary on a free port and benchmark it (killed at the end).
    #[arg(long, conflicts_with_all = ["address", "sidecar_pid"])]
    sidecar: Option<PathBuf>,

    /// How many --sidecar processes to start on the one --database-url (scale-out figures).
    #[arg(long, default_value_t = 1, requires = "sidecar")]
    sidecars: usize,

    /// Start the --sidecar outrigger with only its Dapr-dialect listener (`--dapr-port`) and
    /// benchmark that. The raw worker and client send only fields both dialects encode alike,
    /// so the same load runs through the Dapr listener's translation.
    #[arg(long, requires = "sidecar")]
    dapr: bool,

    /// Database URL for the outrigger started by --sidecar [default: a new temporary SQLite file].
    #[arg(long, requires = "sidecar")]
    database_url: Option<String>,

    /// Comma-separated workloads, or "standard".
    #[arg(long, default_value = "standard")]
    workload: String,

    /// Orchestrations per workload (default: each workload's own).
    #[arg(long)]
    count: Option<usize>,

    /// Orchestrations in flight at once (default: each workload's own).
    #[arg(long)]
    concurrency: Option<usize>,

    /// Activities in the fan-out, or steps of the long sequence [default: 1000].
    #[arg(long)]
    width: Option<u32>,

    /// Label of the store in the table [default: from --database-url, else "external"].
    #[arg(long)]
    backend: Option<String>,

    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/results.json")]
    results: PathBuf,

    /// Give up on a workload after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,

    /// Python with durabletask installed, for sdk-hello5
    /// [default: sdk-tests/python/.venv/bin/python in the repository].
    #[arg(long)]
    python: Option<PathBuf>,

    /// The Python SDK driver, for sdk-hello5 [default: bench/sdk_hello5.py in the repository].
    #[arg(long)]
    sdk_driver: Option<PathBuf>,
}

/// The repository this bench runs from: the first of the current directory and the
/// directories above the binary (target/release/outrigger-bench) that holds `bench/`.
fn repository() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.into_iter()
        .chain(exe.iter().flat_map(|e| e.ancestors().skip(1).map(PathBuf::from)))
        .find(|dir| dir.join("bench").join("sdk_hello5.py").is_file() && dir.join("Cargo.toml").is_file())
}

/// `given`, or `relative` inside the repository; an error naming `flag` when neither exists.
fn in_repository(given: &Option<PathBuf>, relative: &str, flag: &str) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    repository()
        .map(|repo| repo.join(relative))
        .filter(|p| p.exists())
        .ok_or_else(|| format!("{relative} not found next to this binary or in the current directory; pass {flag}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("outrigger-bench: {e}");
            // 69 (EX_UNAVAILABLE): the server could not be started or reached, so nothing ran.
            ExitCode::from(69)
        }
    }
}

/// Runs every workload asked for; Ok(false) when any of them had failures.
async fn run(args: Args) -> Result<bool, String> {
    let workloads = parse_workloads(&args.workload)?;
    let temp_dir = std::env::temp_dir().join(format!("outrigger-bench-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(temp_dir.clone());
    let (spawned, addresses, probe) = match &args.sidecar {
        Some(binary) => {
            std::fs::create_dir_all(&temp_dir).map_err(|e| e.to_string())?;
            let url = args
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", temp_dir.join("bench.db").display()));
            let port_flag = if args.dapr { "--dapr-port" } else { "--port" };
            if args.sidecars > 1 && !url.starts_with("postgres") {
                return Err("--sidecars above 1 needs a Postgres --database-url (SQLite is one file, one sidecar)".into());
            }
            let mut spawned = vec![];
            for i in 0..args.sidecars.max(1) {
                spawned.push(Spawned::start(binary, port_flag, &url, &temp_dir.join(format!("sidecar-{i}.log")))?);
            }
            let addresses = spawned.iter().map(|s| s.address.clone()).collect();
            let probe = Some(Probe::new(spawned.iter().map(Spawned::pid).collect()));
            (spawned, addresses, probe)
        }
        None => (
            vec![],
            args.address.clone(),
            (!args.sidecar_pid.is_empty()).then(|| Probe::new(args.sidecar_pid.clone())),
        ),
    };
    let address = addresses.join(",");
    let backend = args.backend.clone().unwrap_or_else(|| match &args.database_url {
        Some(url) => url.split(':').next().unwrap_or("external").to_string(),
        None if !spawned.is_empty() => "sqlite".into(),
        None => "external".into(),
    }) + if args.dapr { " (Dapr listener)" } else { "" }
        + &if addresses.len() > 1 {
            format!(" ×{}", addresses.len())
        } else {
            String::new()
        };
    let context = Context {
        args: &args,
        addresses,
        probe,
        backend,
    };

    let mut reports = vec![];
    for workload in workloads {
        eprintln!("== {} on {} ({address})", workload.name(), context.backend);
        let report = context.run(workload).await?;
        for e in &report.errors {
            eprintln!("  error: {e}");
        }
        eprint!(
            "{}",
            report::markdown(std::slice::from_ref(&report))
                .lines()
                .nth(2)
                .map(|l| format!("  {l}\n"))
                .unwrap_or_default()
        );
        reports.push(report);
    }
    drop(spawned);

    println!("{}", report::markdown(&reports));
    let document = json!({
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": repository().and_then(|repo| {
            command_output("git", &["-C", &repo.to_string_lossy(), "describe", "--always", "--dirty"])
        }),
        "machine": machine(),
        "address": address,
        "runs": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
    if let Some(dir) = args.results.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&args.results, text + "\n").map_err(|e| format!("cannot write {}: {e}", args.results.display()))?;
    eprintln!("results written to {}", args.results.display());
    Ok(reports
        .iter()
        .all(|r| r.failed == 0 && r.errors.is_empty() && r.completed == r.count))
}

async fn connect(address: &str) -> Result<Client, String> {
    let channel = Endpoint::from_shared(address.to_string())
        .map_err(|e| format!("bad --address '{address}': {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    Ok(Client::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn parse_workloads(list: &str) -> Result<Vec<Workload>, String> {
    let mut out = vec![];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "standard" {
            out.extend(STANDARD);
        } else {
            out.push(Workload::parse(name).ok_or_else(|| format!("unknown workload '{name}'"))?);
        }
    }
    if out.is_empty() {
        return Err("no workload given".into());
    }
    Ok(out)
}

/// What every workload run shares.
struct Context<'a> {
    args: &'a Args,
    /// One server, or several sharing a database.
    addresses: Vec<String>,
    probe: Option<Probe>,
    backend: String,
}

impl Context<'_> {
    /// A client of the first server.
    async fn connect(&self) -> Result<Client, String> {
        connect(&self.addresses[0]).await
    }

    /// A client of every server, in --address order.
    async fn connect_all(&self) -> Result<Vec<Client>, String> {
        let mut clients = vec![];
        for address in &self.addresses {
            clients.push(connect(address).await?);
        }
        Ok(clients)
    }

    async fn run(&self, workload: Workload) -> Result<Report, String> {
        let args = self.args;
        let script = Arc::new(workload.script(args.width));
        let count = args.count.unwrap_or(workload.default_count());
        let concurrency = args.concurrency.unwrap_or(workload.default_concurrency());
        let deadline = Duration::from_secs(if workload == Workload::Fill {
            args.timeout.max(3 * 3600)
        } else {
            args.timeout
        });
        let prefix = driver::instance_prefix(workload.name());
        let client = self.connect().await?;
        let mut report = Report {
            workload: workload.name().into(),
            backend: self.backend.clone(),
            count,
            concurrency,
            ..Default::default()
        };
        // Other processes' load skews every figure; keep it with the results.
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next()?.parse::<f64>().ok())
        {
            report.extra.insert("load_average_1m_before".into(), json!(load));
        }
        let peak_reset = self.probe.as_ref().is_some_and(Probe::reset_peak);
        let cpu_before = self.probe.as_ref().and_then(Probe::cpu_seconds);

        let mut worker = None;
        let (outcome, activities) = match workload {
            Workload::SdkHello5 => {
                let python = in_repository(&args.python, "sdk-tests/python/.venv/bin/python", "--python")?;
                let driver = in_repository(&args.sdk_driver, "bench/sdk_hello5.py", "--sdk-driver")?;
                sdk::run(&python, &driver, &self.addresses[0], count, concurrency).await?
            }
            Workload::Starts => {
                let outcome = driver::start_only(&client, &script.name, &prefix, count, concurrency).await;
                report
                    .notes
                    .push("StartInstance only: rate and latency of the start call, no worker attached".into());
                (outcome, 0)
            }
            Workload::Ping => {
                let outcome = driver::ping_only(&client, count, concurrency).await;
                report
                    .notes
                    .push("Hello calls only: the round trip and server CPU of one unary gRPC call; orch/s column is calls/s".into());
                (outcome, 0)
            }
            Workload::EntitySignals => {
                let (completed_tx, _) = mpsc::unbounded_channel();
                let w = Worker::start(vec![self.connect().await?], Arc::clone(&script), false, completed_tx);
                let entities = args.width.unwrap_or(1000) as usize;
                let (applied, stopped) = (w.entity_operations.clone(), w.stopped.clone());
                worker = Some(w);
                let outcome = driver::signal_only(&client, &prefix, count, concurrency, entities, applied, stopped, deadline).await;
                report.notes.push(format!(
                    "signals over {entities} entities; latency is the SignalEntity call; orch/s column is entity ops/s"
                ));
                (outcome, 0)
            }
            _ => {
                let (completed_tx, completed_rx) = mpsc::unbounded_channel();
                // One worker per server; they share what they observe and when one stops.
                let clients = self.connect_all().await?;
                let w = Worker::start(clients.clone(), Arc::clone(&script), workload == Workload::Long, completed_tx);
                let stopped = w.stopped.clone();
                worker = Some(w);
                let outcome = driver::run(&clients, &script.name, &prefix, count, concurrency, completed_rx, stopped, deadline).await;
                let activities = outcome.completed as u64 * script.activities();
                (outcome, activities)
            }
        };
        let cpu_after = self.probe.as_ref().and_then(Probe::cpu_seconds);

        let secs = outcome.elapsed.as_secs_f64();
        report.completed = outcome.completed;
        report.failed = outcome.failed;
        report.elapsed_s = secs;
        report.orchestrations_per_s = (secs > 0.0).then(|| outcome.completed as f64 / secs);
        report.activities_per_s = (secs > 0.0 && activities > 0).then(|| activities as f64 / secs);
        report.latency_ms = Summary::of(&outcome.latencies_ms);
        report.errors = outcome.errors.first.clone();
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            report.sidecar_cpu_s = Some(after - before);
            if outcome.completed > 0 {
                report.cpu_s_per_1k = Some((after - before) / outcome.completed as f64 * 1000.0);
            }
            if activities > 0 {
                let per_activity_us = (after - before) / activities as f64 * 1e6;
                report.extra.insert("sidecar_cpu_us_per_activity".into(), json!(per_activity_us));
                if matches!(workload, Workload::Fanout | Workload::Long) {
                    report.notes.push(format!("sidecar CPU {per_activity_us:.0} µs/activity"));
                }
            }
        }
        if let Some(probe) = &self.probe {
            report.peak_rss_mib = probe.peak_rss_mib();
            report.rss_after_mib = probe.rss_mib();
            if !peak_reset {
                report
                    .notes
                    .push("peak RSS is since the sidecar started (could not reset it)".into());
            }
        }

        if let Some(w) = &worker {
            let observed = w.observed.lock().unwrap();
            if observed.entity_operations > 0 && secs > 0.0 {
                let rate = observed.entity_operations as f64 / secs;
                report.extra.insert("entity_operations_per_s".into(), json!(rate));
                report.notes.push(format!("{rate:.0} entity ops/s"));
            }
            report.timer_lateness_ms = Summary::of(&observed.timer_lateness_ms);
            report.errors.extend(observed.errors.first.iter().cloned());
            if workload == Workload::Long {
                add_step_costs(&mut report, &observed.episodes);
            }
        }
        drop(worker);

        match workload {
            Workload::Starts => {
                // Leave no pending instances behind for later workloads: run them to completion.
                let (completed_tx, completed_rx) = mpsc::unbounded_channel();
                let drainer = Worker::start(vec![self.connect().await?], Arc::clone(&script), false, completed_tx);
                let drained = driver::drain(&client, outcome.completed, completed_rx, drainer.stopped.clone(), deadline).await;
                report.notes.push(format!("{drained} drained after"));
            }
            Workload::Fill => {
                if let Some(rss) = report.rss_after_mib {
                    report.notes.push(format!("RSS after the fill {rss:.1} MiB"));
                }
            }
            Workload::SdkHello5 => report.notes.push("Python SDK client and worker in one process".into()),
            _ => {}
        }
        Ok(report)
    }
}

/// For `long`: the mean time of steps 6-15 against the last ten, where a step is the time
/// between two orchestrator work items of the instance (one activity's full round trip).
fn add_step_costs(report: &mut Report, episodes: &std::collections::HashMap<String, Vec<std::time::Instant>>) {
    let mut early = vec![];
    let mut late = vec![];
    for arrivals in episodes.values() {
        let steps: Vec<f64> = arrivals.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0).collect();
        if steps.len() < 30 {
            continue;
        }
        early.extend_from_slice(&steps[5..15]);
        late.extend_from_slice(&steps[steps.len() - 10..]);
    }
    if let (Some(early), Some(late)) = (stats::mean(&early), stats::mean(&late)) {
        report.extra.insert("early_step_ms".into(), json!(early));
        report.extra.insert("late_step_ms".into(), json!(late));
        report.extra.insert("late_over_early".into(), json!(late / early));
        report
            .notes
            .push(format!("step ~10 {early:.2} ms, last steps {late:.2} ms ({:.2}x)", late / early));
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_string());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory": memory,
        "kernel": command_output("uname", &["-sr"]),
    })
}

/// Removes a directory when dropped (the temporary store of a spawned sidecar).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

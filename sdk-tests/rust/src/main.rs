//! Runs the Rust SDK (`dapr-durabletask` 0.0.4) against Outrigger's Dapr-dialect listener.
//!
//! Each scenario gets its own sidecar (`$OUTRIGGER_BIN --dapr-port P`, nothing else, an
//! in-memory store unless it needs a file), so scenarios run side by side. Arguments filter
//! scenarios by substring. The last line is "N passed, N failed".

mod scenarios;

use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dapr_durabletask::client::TaskHubGrpcClient;
use dapr_durabletask::worker::{ReconnectPolicy, TaskHubGrpcWorker, WorkerOptions};
use tokio_util::sync::CancellationToken;

pub type Outcome = Result<(), String>;
pub type Scenario = fn(Sidecar) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How long any single wait in a scenario may take before it counts as a failure.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An outrigger process serving only the Dapr dialect.
pub struct Sidecar {
    pub port: u16,
    pub database_url: String,
    child: Option<Child>,
}

pub fn bin() -> String {
    std::env::var("OUTRIGGER_BIN").expect("OUTRIGGER_BIN names the outrigger binary to test")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sidecar {
    /// Starts a sidecar; it must accept connections within a few seconds.
    pub async fn start(port: u16, database_url: &str) -> Result<Sidecar, String> {
        let child = Command::new(bin())
            .args([
                "--host",
                "127.0.0.1",
                "--dapr-port",
                &port.to_string(),
                "--dapr-app-id",
                "this-app",
                "--database-url",
                database_url,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin()))?;
        let mut sidecar = Sidecar {
            port,
            database_url: database_url.to_string(),
            child: Some(child),
        };
        sidecar.ready().await?;
        Ok(sidecar)
    }

    async fn ready(&mut self) -> Outcome {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("sidecar exited at start: {status}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("sidecar did not listen within 10 s".into())
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> Result<TaskHubGrpcClient, String> {
        TaskHubGrpcClient::new(&self.address()).await.map_err(|e| e.to_string())
    }

    pub fn worker(&self) -> TaskHubGrpcWorker {
        self.worker_with(WorkerOptions::new())
    }

    pub fn worker_with(&self, options: WorkerOptions) -> TaskHubGrpcWorker {
        let policy = ReconnectPolicy::new()
            .with_initial_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(200))
            .with_jitter(false);
        TaskHubGrpcWorker::with_options(&self.address(), options.with_reconnect_policy(policy))
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running worker, stopped on drop.
pub struct Running {
    stop: CancellationToken,
}

pub fn run_worker(worker: TaskHubGrpcWorker) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = worker.start(token).await;
    });
    Running { stop }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let all = scenarios::all();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    // A few at a time: each has its own sidecar, and the machine's cores are shared.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut runs = vec![];
    for (name, scenario) in chosen {
        let slots = slots.clone();
        runs.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let started = std::time::Instant::now();
            let outcome = match Sidecar::start(free_port(), "sqlite::memory:").await {
                Err(e) => Err(e),
                // Its own task, so a panic (a failed assertion inside the SDK) is one failure.
                Ok(sidecar) => match tokio::time::timeout(Duration::from_secs(90), tokio::spawn(scenario(sidecar))).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => Err(format!("panicked: {e}")),
                    Err(_) => Err("scenario took longer than 90 s".into()),
                },
            };
            (name, outcome, started.elapsed())
        }));
    }
    let (mut passed, mut failed) = (0, 0);
    for run in runs {
        let (name, outcome, took) = match run.await {
            Ok(r) => r,
            Err(e) => ("<panicked>", Err(e.to_string()), Duration::ZERO),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok     {name} ({:.1}s)", took.as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {name} ({:.1}s): {e}", took.as_secs_f64());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 && passed > 0 { 0 } else { 1 });
}

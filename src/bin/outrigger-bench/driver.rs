//! The client side of a run: starts instances at a fixed concurrency and observes their
//! completion.
//!
//! Completion is observed in two steps. The worker reports an instance once the server has
//! acknowledged the answer that completes it; the driver then asks WaitForInstanceCompletion,
//! which answers at once if the completion is durable and only then. The first step makes the
//! observation cheap (one read per instance, no long-lived waits piling up on the server), the
//! second keeps it honest on servers that acknowledge before they commit. Latency runs from
//! just before StartInstance is sent to that answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrigger::proto::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::worker::{Client, Errors};

/// What the driver measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub completed: usize,
    pub failed: usize,
    /// First start to last observed completion (or to the last start answer, for starts only).
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
    pub errors: Errors,
}

/// Instance ids of one run: a per-run prefix so runs never collide in a shared store.
pub fn instance_prefix(workload: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{workload}-{nonce:x}-")
}

fn instance_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:07}")
}

fn create_request(id: String, name: &str) -> CreateInstanceRequest {
    CreateInstanceRequest {
        instance_id: id,
        name: name.into(),
        input: Some("\"bench\"".into()),
        ..Default::default()
    }
}

/// Starts `count` instances of `name` on `clients` in turn (several servers sharing one
/// database), at most `concurrency` of them unfinished at a time, and
/// waits until each completion arrives on `completed` and is confirmed, until `deadline`, or
/// until the worker's stream stops (`stopped`), since then nothing more will complete.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    clients: &[Client],
    name: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
    mut completed: mpsc::UnboundedReceiver<String>,
    mut stopped: watch::Receiver<Option<String>>,
    deadline: Duration,
) -> Outcome {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let in_flight: Arc<Mutex<HashMap<String, (Instant, OwnedSemaphorePermit)>>> = Arc::default();
    let (results, mut results_rx) = mpsc::unbounded_channel::<Result<f64, String>>();
    let began = Instant::now();

    let starter = {
        let (clients, name, prefix, in_flight, results) = (
            clients.to_vec(),
            name.to_string(),
            prefix.to_string(),
            Arc::clone(&in_flight),
            results.clone(),
        );
        tokio::spawn(async move {
            for i in 0..count {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let id = instance_id(&prefix, i);
                // Registered before the call: the completion may be reported before it returns.
                in_flight.lock().unwrap().insert(id.clone(), (Instant::now(), slot));
                let (mut client, in_flight, results, request) = (
                    clients[i % clients.len()].clone(),
                    Arc::clone(&in_flight),
                    results.clone(),
                    create_request(id.clone(), &name),
                );
                tokio::spawn(async move {
                    if let Err(status) = client.start_instance(request).await {
                        in_flight.lock().unwrap().remove(&id);
                        let _ = results.send(Err(format!("StartInstance '{id}': {status}")));
                    }
                });
            }
        })
    };

    let confirmer = {
        let (clients, in_flight) = (clients.to_vec(), Arc::clone(&in_flight));
        tokio::spawn(async move {
            let mut turn = 0;
            while let Some(id) = completed.recv().await {
                turn += 1;
                let client = clients[turn % clients.len()].clone();
                let (in_flight, results) = (Arc::clone(&in_flight), results.clone());
                tokio::spawn(async move {
                    let outcome = confirm(client, &id).await;
                    // Dropping the entry frees its concurrency slot.
                    let Some((started, _slot)) = in_flight.lock().unwrap().remove(&id) else {
                        return;
                    };
                    let _ = results.send(outcome.map(|()| started.elapsed().as_secs_f64() * 1000.0));
                });
            }
        })
    };

    let mut outcome = Outcome::default();
    let mut progress = Progress::new(count);
    while outcome.completed + outcome.failed < count {
        let remaining = deadline.saturating_sub(began.elapsed());
        let next = tokio::select! {
            next = tokio::time::timeout(remaining.min(Duration::from_secs(10)), results_rx.recv()) => next,
            why = stop_reason(&mut stopped) => {
                outcome.errors.add(format!(
                    "{why}, with {} instances unfinished",
                    count - outcome.completed - outcome.failed
                ));
                break;
            }
        };
        match next {
            Ok(Some(Ok(ms))) => {
                outcome.completed += 1;
                outcome.latencies_ms.push(ms);
            }
            Ok(Some(Err(e))) => {
                outcome.failed += 1;
                outcome.errors.add(e);
            }
            Ok(None) => break,
            Err(_) if remaining <= Duration::from_secs(10) => {
                outcome.errors.add(format!(
                    "gave up after {deadline:?} with {} instances unfinished",
                    count - outcome.completed - outcome.failed
                ));
                break;
            }
            Err(_) => {}
        }
        progress.tick(outcome.completed);
    }
    outcome.elapsed = began.elapsed();
    starter.abort();
    confirmer.abort();
    outcome
}

/// Starts `count` instances with no worker attached, `concurrency` StartInstance calls in
/// flight; latency is each call's round trip. The instances are left pending for [`drain`].
pub async fn start_only(client: &Client, name: &str, prefix: &str, count: usize, concurrency: usize) -> Outcome {
    timed_calls(count, concurrency, |i| {
        let (mut client, request) = (client.clone(), create_request(instance_id(prefix, i), name));
        async move {
            client
                .start_instance(request)
                .await
                .map(drop)
                .map_err(|s| format!("StartInstance: {s}"))
        }
    })
    .await
}

/// `count` Hello calls, `concurrency` in flight; latency is each call's round trip. Nothing is
/// stored: this is what the transport and the server's request path cost on their own.
pub async fn ping_only(client: &Client, count: usize, concurrency: usize) -> Outcome {
    timed_calls(count, concurrency, |_| {
        let mut client = client.clone();
        async move { client.hello(()).await.map(drop).map_err(|s| format!("Hello: {s}")) }
    })
    .await
}

/// Makes `count` calls, `concurrency` in flight (`call(i)` makes the i-th). Completed are the
/// calls answered, each with its round trip as latency; elapsed runs from the first call to
/// the last answer.
async fn timed_calls<F>(count: usize, concurrency: usize, mut call: impl FnMut(usize) -> F) -> Outcome
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let (results, mut results_rx) = mpsc::unbounded_channel::<Result<f64, String>>();
    let began = Instant::now();
    for i in 0..count {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (call, results) = (call(i), results.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = call.await.map(|()| sent.elapsed().as_secs_f64() * 1000.0);
            drop(slot);
            let _ = results.send(outcome);
        });
    }
    drop(results);
    let mut outcome = Outcome::default();
    while let Some(result) = results_rx.recv().await {
        match result {
            Ok(ms) => {
                outcome.completed += 1;
                outcome.latencies_ms.push(ms);
            }
            Err(e) => {
                outcome.failed += 1;
                outcome.errors.add(e);
            }
        }
    }
    outcome.elapsed = began.elapsed();
    outcome
}

/// Signals spread round-robin over `entities` entities, `concurrency` SignalEntity calls at a
/// time; the latencies are the calls'. Finishes once `applied` (the worker's count of executed
/// operations) reaches `count`, so the elapsed time covers running them all.
#[allow(clippy::too_many_arguments)]
pub async fn signal_only(
    client: &Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
    entities: usize,
    mut applied: watch::Receiver<u64>,
    mut stopped: watch::Receiver<Option<String>>,
    deadline: Duration,
) -> Outcome {
    let began = Instant::now();
    let mut outcome = timed_calls(count, concurrency, |i| {
        let request = SignalEntityRequest {
            instance_id: format!("@bench@{prefix}{}", i % entities.max(1)),
            name: "add".into(),
            input: Some("1".into()),
            ..Default::default()
        };
        let mut client = client.clone();
        async move {
            client
                .signal_entity(request)
                .await
                .map(drop)
                .map_err(|s| format!("SignalEntity: {s}"))
        }
    })
    .await;
    // Accepted is not applied: what completed is counted from the worker below.
    let target = (count - outcome.failed) as u64;
    let remaining = deadline.saturating_sub(began.elapsed());
    let all = tokio::select! {
        all = tokio::time::timeout(remaining, applied.wait_for(|n| *n >= target)) => matches!(all, Ok(Ok(_))),
        why = stop_reason(&mut stopped) => {
            outcome.errors.add(why);
            false
        }
    };
    match all {
        true => outcome.completed = target as usize,
        false => {
            let done = *applied.borrow() as usize;
            outcome.completed = done;
            outcome
                .errors
                .add(format!("gave up after {deadline:?} with {} of {target} signals applied", done));
        }
    }
    outcome.elapsed = began.elapsed();
    outcome
}

/// Waits until `count` completions arrived on `completed` and are confirmed (or `deadline`, or
/// the worker's stream stopped); returns how many were confirmed.
pub async fn drain(
    client: &Client,
    count: usize,
    mut completed: mpsc::UnboundedReceiver<String>,
    mut stopped: watch::Receiver<Option<String>>,
    deadline: Duration,
) -> usize {
    let (results, mut results_rx) = mpsc::unbounded_channel::<bool>();
    let client = client.clone();
    let confirmer = tokio::spawn(async move {
        while let Some(id) = completed.recv().await {
            let (client, results) = (client.clone(), results.clone());
            tokio::spawn(async move {
                let _ = results.send(confirm(client, &id).await.is_ok());
            });
        }
    });
    let mut confirmed = 0;
    let mut seen = 0;
    let confirming = async {
        while seen < count {
            match results_rx.recv().await {
                Some(ok) => {
                    seen += 1;
                    confirmed += usize::from(ok);
                }
                None => break,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(deadline, confirming) => {}
        _ = stop_reason(&mut stopped) => {}
    }
    confirmer.abort();
    confirmed
}

/// Resolves once the worker's stream stopped, with why; never if it is still running.
async fn stop_reason(stopped: &mut watch::Receiver<Option<String>>) -> String {
    match stopped.wait_for(Option::is_some).await {
        Ok(why) => why.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// Asks the server whether `id` completed; Ok once it reports COMPLETED.
async fn confirm(mut client: Client, id: &str) -> Result<(), String> {
    let mut request = tonic::Request::new(GetInstanceRequest {
        instance_id: id.into(),
        get_inputs_and_outputs: false,
    });
    request.set_timeout(Duration::from_secs(60));
    let response = client
        .wait_for_instance_completion(request)
        .await
        .map_err(|s| format!("WaitForInstanceCompletion '{id}': {s}"))?;
    match response.into_inner().orchestration_state.map(|s| s.orchestration_status()) {
        Some(OrchestrationStatus::Completed) => Ok(()),
        Some(other) => Err(format!("instance '{id}' ended {}", other.as_str_name())),
        None => Err(format!("instance '{id}' does not exist")),
    }
}

/// A line on stderr every few seconds for long runs, so a fill can be followed.
struct Progress {
    total: usize,
    began: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            began: Instant::now(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: usize) {
        if self.last.elapsed() >= Duration::from_secs(10) {
            self.last = Instant::now();
            let secs = self.began.elapsed().as_secs_f64();
            eprintln!("  {done}/{} completed in {secs:.0} s ({:.0}/s)", self.total, done as f64 / secs);
        }
    }
}

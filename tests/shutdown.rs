//! Shutdown in sidecar order: readiness turns false while liveness stays up, no new work is
//! handed out, items in flight may still be answered until the drain deadline, then worker
//! streams end cleanly and the server returns. Also: the SQLite file is private to its owner.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Running {
    client: Client,
    health: HealthClient<tonic::transport::Channel>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

/// A sidecar on `db` with a health-only listener of its own, as probes in a pod use.
async fn serve(db: &Path, drain: Duration) -> Running {
    let store = outrigger::store::open(&format!("sqlite://{}", db.display()), &Default::default())
        .await
        .expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health_listener.local_addr().unwrap();
    let options = outrigger::server::Options {
        drain,
        health_listeners: vec![health_listener],
        ..Default::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        outrigger::server::run(vec![listener], store, options, shutdown)
            .await
            .expect("server");
    });
    let client = Client::connect(format!("http://{addr}")).await.unwrap();
    let health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    Running {
        client,
        health,
        stop,
        server,
    }
}

async fn status(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    health
        .check(HealthCheckRequest { service: service.into() })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

/// Polls the health service (a probe's view) until `service` reports `wanted`.
async fn until_status(health: &mut HealthClient<tonic::transport::Channel>, service: &str, wanted: ServingStatus) {
    guarded("the health status", async {
        while status(health, service).await != wanted {
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_order_readiness_off_no_new_work_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drain.db");
    let Running {
        mut client,
        mut health,
        stop,
        server,
    } = serve(&db, Duration::from_secs(30)).await;
    assert_eq!(status(&mut health, "readiness").await, ServingStatus::Serving);

    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    start(&mut client, "drain-1", "Drain", None).await;
    let (token, _) = worker.orchestration().await;
    complete_orchestrator(&mut client, &token, "drain-1", vec![schedule_task(0, "Slow", "1")])
        .await
        .expect("step 1");
    let (activity_token, activity) = worker.activity().await;

    // SIGTERM: readiness goes, liveness stays, and the server keeps waiting for the activity.
    stop.send(()).unwrap();
    until_status(&mut health, "readiness", ServingStatus::NotServing).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::NotServing);
    assert_eq!(status(&mut health, "liveness").await, ServingStatus::Serving);
    assert!(!server.is_finished(), "the server waits for the item in flight");

    // Work created now is not handed out; the held activity's answer is still taken.
    start(&mut client, "drain-2", "Drain", None).await;
    complete_activity(&mut client, &activity_token, &activity, "\"ok\"")
        .await
        .expect("the answer of an item in flight is accepted while draining");

    // Nothing more arrives: the stream ends cleanly (pings aside) once nothing is held.
    let ended = guarded("the stream to end", async {
        loop {
            match worker_message(&mut worker).await {
                Some(Item::HealthPing(_)) => continue,
                Some(other) => return Some(other),
                None => return None,
            }
        }
    })
    .await;
    assert!(ended.is_none(), "no new work while draining, got {ended:?}");
    drop(client);
    guarded("the server to return", server).await.expect("server task");

    // The activity's result was kept: after a restart, both instances run on.
    let Running { mut client, stop, .. } = serve(&db, Duration::from_secs(1)).await;
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    let items = worker.orchestrations(2).await;
    let (_, resumed) = &items["drain-1"];
    assert!(
        resumed.new_events.iter().any(|e| kind(e) == "TaskCompleted"),
        "the result recorded while draining is delivered: {:?}",
        kinds(&resumed.new_events)
    );
    drop(stop);
}

async fn worker_message(worker: &mut Worker) -> Option<Item> {
    worker.stream_message().await.and_then(|w| w.request)
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let Running {
        mut client, stop, server, ..
    } = serve(&dir.path().join("deadline.db"), Duration::from_millis(300)).await;
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    start(&mut client, "stuck", "Stuck", None).await;
    let _held = worker.orchestration().await; // never answered
    let began = Instant::now();
    stop.send(()).unwrap();
    drop(client);
    guarded("the server to return", server).await.expect("server task");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(300), "waited for the deadline, took {took:?}");
    let end = guarded("the stream's end", worker.stream_message()).await;
    assert!(end.is_none(), "the stream ended cleanly");
}

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("private.db");
    let _store = outrigger::store::open(&format!("sqlite://{}", db.display()), &Default::default())
        .await
        .expect("open store");
    for path in [db.clone(), dir.path().join("private.db-wal")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
}

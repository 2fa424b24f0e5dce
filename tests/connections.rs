//! Connections that hold descriptors without speaking, and a process out of descriptors: the
//! silent ones are closed at the handshake deadline on every listener, and accepting backs off
//! (logged, without spinning) until descriptors free up, while real clients keep working.

mod common;

use std::time::{Duration, Instant};

use common::*;
use outrigger::proto::*;
use outrigger::server::{Listeners, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the server closes `conn` (end of stream or reset), reading and dropping
/// whatever the server sends first (its SETTINGS frame, say). `None` if it stays open.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn silent_and_preface_only_connections_are_closed_at_the_handshake_deadline() {
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (grpc, dapr, http, health) = (bind().await, bind().await, bind().await, bind().await);
    let addrs = [
        ("grpc", grpc.local_addr().unwrap()),
        ("dapr", dapr.local_addr().unwrap()),
        ("http", http.local_addr().unwrap()),
        ("health", health.local_addr().unwrap()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = outrigger::store::open(&format!("sqlite://{}", dir.path().join("t.db").display()), &Default::default())
        .await
        .expect("open store");
    let options = Options {
        handshake_deadline: Duration::from_secs(1),
        health_listeners: vec![health],
        ..Options::default()
    };
    let listeners = Listeners {
        microsoft: vec![grpc],
        dapr: vec![dapr],
        http: vec![http],
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(outrigger::server::serve(listeners, store, options, async move {
        let _ = stopped.await;
    }));
    // A real client connected before the silent ones, and one worker: their connections are
    // older than the deadline by the time the silent ones are closed, and must stay open.
    let mut client = Client::connect(format!("http://{}", addrs[0].1)).await.expect("connect");
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;

    let mut silent = vec![];
    for (listener, addr) in addrs {
        for opening in [&b""[..], PREFACE, b"GET /"] {
            for _ in 0..5 {
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                conn.write_all(opening).await.unwrap();
                silent.push((listener, String::from_utf8_lossy(opening).into_owned(), conn));
            }
        }
    }
    // Meanwhile the real client's work completes.
    run_to_completion(&mut client, &mut worker, "neighbour", "\"done\"").await;

    let mut longest = Duration::ZERO;
    for (listener, opening, conn) in &mut silent {
        let closed = closed_within(conn, Duration::from_secs(30)).await;
        let closed = closed.unwrap_or_else(|| panic!("{listener}: a connection opening with {opening:?} is still open"));
        longest = longest.max(closed);
    }
    println!(
        "{} silent or preface-only connections on 4 listeners closed; the last {longest:?} after the checks began (deadline 1 s)",
        silent.len()
    );
    // The old connections were not touched by the deadline.
    run_to_completion(&mut client, &mut worker, "after", "\"done\"").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[3].1))
        .unwrap()
        .connect()
        .await
        .expect("connect to health");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health check");
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_logs_and_recovers() {
    let mut sidecar = spawned::Spawned::with_fd_limit(64, &["--handshake-deadline-seconds", "600"]);
    let addr = sidecar.addr.to_string();
    let mut client = Client::connect(format!("http://{addr}")).await.expect("connect");
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;

    // Silent connections (the deadline is long here) until the sidecar has no descriptor left.
    let mut held = vec![];
    for _ in 0..100 {
        held.push(TcpStream::connect(&addr).await.expect("connect: the backlog still takes it"));
    }
    let refusal = tokio::task::block_in_place(|| sidecar.wait_for_line("cannot accept connections"));
    println!("logged: {refusal}");

    // While out of descriptors: no spinning, and the open connections keep working.
    let (cpu_before, wall_before) = (sidecar.cpu(), Instant::now());
    run_to_completion(&mut client, &mut worker, "during", "\"done\"").await;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window.saturating_sub(wall_before.elapsed())).await; // a measuring window, not a wait
    let (cpu, wall) = (sidecar.cpu() - cpu_before, wall_before.elapsed());
    println!("out of descriptors: {cpu:?} of CPU in {wall:?} (a spinning accept loop takes a whole core)");
    // Backing off costs about 1 % of a core; a loop that spins took over a third on 2 busy cores.
    assert!(cpu < wall / 5, "the accept loop spins: {cpu:?} of CPU in {wall:?}");

    // Descriptors free up: new clients are served again.
    drop(held);
    let freed = Instant::now();
    let mut fresh = guarded("a new client to connect", async {
        loop {
            if let Ok(c) = Client::connect(format!("http://{addr}")).await {
                return c;
            }
        }
    })
    .await;
    run_to_completion(&mut fresh, &mut worker, "after", "\"done\"").await;
    println!("a new client served {:?} after the held connections closed", freed.elapsed());
    tokio::task::block_in_place(|| sidecar.wait_for_line("accepting connections again"));
}

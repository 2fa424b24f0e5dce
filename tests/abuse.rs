//! Hostile and unlucky conditions: a full disk, oversized and malformed payloads, workers that
//! misbehave. Each probe checks what the offending client is told and that everyone else's
//! work keeps completing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use outrigger::proto::*;
use outrigger::server::Options;
use outrigger::store::{InstanceFilter, Store};
use sqlx::Connection;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

/// A sidecar on a store URL of the test's choosing, which can be stopped and waited for.
struct Running {
    client: Client,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(url: &str, adjust: impl FnOnce(&mut Options)) -> Running {
        let mut options = Options::default();
        adjust(&mut options);
        let store = outrigger::store::open(url, &Default::default()).await.expect("open store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            outrigger::server::run(vec![listener], store, options, shutdown)
                .await
                .expect("server ran");
        });
        let client = Client::connect(format!("http://{addr}")).await.expect("connect");
        Running { client, stop, server }
    }

    async fn worker(&self) -> Worker {
        Worker::connect(&mut self.client.clone(), GetWorkItemsRequest::default()).await
    }

    /// Shuts the server down and waits until it has stopped.
    async fn stop(self, workers: Vec<Worker>) {
        drop(workers);
        drop(self.client);
        let _ = self.stop.send(());
        guarded("the server to stop", self.server).await.expect("server task");
    }
}

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of the disk but `spare` bytes with a file, returning its path.
    fn fill(&self, spare: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let block = vec![0xa5u8; 4096];
        while file.write_all(&block).is_ok() {}
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(spare)).expect("make room");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn start_request(id: &str, input: &str) -> CreateInstanceRequest {
    CreateInstanceRequest {
        instance_id: id.into(),
        name: "Filler".into(),
        input: Some(input.into()),
        ..Default::default()
    }
}

/// The disk fills up under a running sidecar: every write that cannot be stored is refused
/// (never answered OK), the writer recovers once space is back, and after a restart exactly
/// what was acknowledged is there.
#[tokio::test]
async fn full_disk_refuses_writes_and_loses_nothing_acknowledged() {
    let disk = SmallDisk::mount("4m");
    let url = format!("sqlite://{}", disk.path().join("t.db").display());
    let sidecar = Running::start(&url, |_| {}).await;
    let mut client = sidecar.client.clone();
    let mut worker = sidecar.worker().await;
    let input = format!("\"{}\"", "x".repeat(500));

    // Held work items, to be completed once the disk is full.
    let held = 30;
    for i in 0..held {
        client
            .start_instance(start_request(&format!("held-{i}"), &input))
            .await
            .expect("start");
    }
    let items = worker.orchestrations(held).await;

    let filler = disk.fill(256 << 10);
    let mut started = vec![];
    let mut refused_starts = vec![];
    let mut completed = vec![];
    let mut refused_completions = 0;
    for (i, (id, (token, _))) in items.iter().enumerate() {
        let output = format!("\"{}\"", "y".repeat(500));
        match complete_orchestrator(&mut client, token, id, vec![complete(1, OrchestrationStatus::Completed, &output)]).await {
            Ok(()) => completed.push(id.clone()),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "a refused completion: {status:?}");
                refused_completions += 1;
            }
        }
        let id = format!("full-{i}");
        match client.start_instance(start_request(&id, &input)).await {
            Ok(_) => started.push(id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "a refused start: {status:?}");
                assert!(status.message().contains("full"), "the error says why: {status:?}");
                refused_starts.push(id);
            }
        }
    }
    assert!(
        refused_starts.len() > held / 2 && refused_completions > 0,
        "a full disk refuses writes (refused {} starts and {refused_completions} completions of {held})",
        refused_starts.len()
    );

    // Space comes back: the same sidecar writes again, and nothing holds the file locked.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut after = vec![];
    for i in 0..10 {
        let id = format!("after-{i}");
        client
            .start_instance(start_request(&id, "1"))
            .await
            .expect("a start once space is back");
        after.push(id);
    }
    let mut other = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the file beside the sidecar");
    sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
        .execute(&mut other)
        .await
        .expect("another connection can take the write lock: no transaction was left open");
    drop(other);

    sidecar.stop(vec![worker]).await;
    let store = outrigger::store::open(&url, &Default::default()).await.expect("reopen");
    let stored = all_ids(&*store).await;
    let acknowledged: Vec<&String> = started.iter().chain(&after).collect();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(**id)).collect();
    assert!(lost.is_empty(), "acknowledged starts lost after the restart: {lost:?}");
    let ghosts: Vec<_> = refused_starts.iter().filter(|id| stored.contains(*id)).collect();
    assert!(ghosts.is_empty(), "refused starts stored anyway: {ghosts:?}");
    for id in &completed {
        let instance = store.get_instance(id).await.expect("read").expect("exists");
        assert_eq!(
            instance.status,
            OrchestrationStatus::Completed,
            "acknowledged completion of {id} lost"
        );
    }
    eprintln!(
        "full disk: {} of {} starts and {} of {held} completions acknowledged, all {} survived the restart",
        started.len(),
        held,
        completed.len(),
        acknowledged.len() + completed.len()
    );
}

async fn all_ids(store: &dyn Store) -> std::collections::HashSet<String> {
    let filter = InstanceFilter {
        limit: 100_000,
        ..Default::default()
    };
    store
        .query(&filter)
        .await
        .expect("query")
        .into_iter()
        .map(|i| i.instance_id)
        .collect()
}

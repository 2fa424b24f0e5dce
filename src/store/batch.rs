//! Group commit. Every worker answer ends in a durable write, and a durable commit costs a
//! flush to disk, so answers that arrive while a commit is under way are gathered and written
//! together in the next transaction: one flush for all of them. Nothing waits on purpose: an
//! answer that finds the writer idle is written at once, alone. A batch the database refuses
//! is written again one write at a time, so a write that cannot succeed fails alone.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::warn;

use super::{Result, Store, StoreError, Write, Written};

/// Most writes in one transaction: enough to amortise a flush, few enough that a batch never
/// holds the database for long.
const MAX_BATCH: usize = 256;

type Pending = (Write, oneshot::Sender<Result<Written>>);

/// Queues writes for the store's batch writers.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts `store.write_concurrency()` writers, which run until every `Batcher` clone is
    /// dropped.
    pub fn new(store: Arc<dyn Store>) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..store.write_concurrency().max(1) {
            tokio::spawn(writer(store.clone(), rx.clone()));
        }
        Batcher { queue }
    }

    /// Writes durably (in some batch) and returns what the store returned for this write.
    pub async fn write(&self, write: Write) -> Result<Written> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((write, tx))
            .map_err(|_| StoreError::BatchFailed("the writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::BatchFailed("the writer has stopped".into()))?
    }
}

async fn writer(store: Arc<dyn Store>, queue: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let began = std::time::Instant::now();
        let results = match write(&*store, &writes).await {
            Ok(results) => {
                crate::metrics::METRICS.committed(writes.len(), began.elapsed());
                results
            }
            Err(e) if writes.len() == 1 => {
                warn!(error = %e, "write failed; nothing of it was written");
                vec![Err(e)]
            }
            // One bad write must not fail its neighbours: each is written again on its own,
            // so only the one that cannot be written reports the failure.
            Err(e) => {
                warn!(error = %e, writes = writes.len(), "write batch failed; nothing in it was written, writing each alone");
                let mut results = Vec::with_capacity(writes.len());
                for w in &writes {
                    results.push(match write(&*store, std::slice::from_ref(w)).await {
                        Ok(mut one) => one.pop().expect("one result per write"),
                        Err(e) => {
                            warn!(error = %e, "write failed; nothing of it was written");
                            Err(e)
                        }
                    });
                }
                results
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Writes a batch, running it again when the database aborted it over a conflict with a
/// concurrent transaction (nothing of it was written then).
async fn write(store: &dyn Store, writes: &[Write]) -> Result<Vec<Result<Written>>> {
    let mut attempts = 0;
    loop {
        match store.write(writes).await {
            Err(e) if e.is_conflict() && attempts < MAX_CONFLICT_RETRIES => {
                attempts += 1;
                warn!(error = %e, attempt = attempts, "write batch hit a conflict; running it again");
            }
            other => return other,
        }
    }
}

/// How often a batch aborted by a deadlock or serialization conflict is run again.
const MAX_CONFLICT_RETRIES: u32 = 3;

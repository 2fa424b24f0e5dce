//! Client waits on instance state and the live change feed: woken by the dispatcher after
//! every commit, subscribed to by the gRPC handlers and the dashboard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

/// Wakes clients waiting on an instance's state (WaitForInstanceStart/Completion), and feeds
/// the live views (the dashboard's change stream) with every change.
pub struct Watchers {
    senders: Mutex<HashMap<String, watch::Sender<()>>>,
    feed: broadcast::Sender<Changed>,
    /// Set at shutdown: feed subscribers end their streams, so open pages do not hold the
    /// HTTP listener's graceful stop.
    feed_closed: watch::Sender<bool>,
}

/// What a change-feed subscriber is told: these instances changed, or (`None`) any may have.
pub type Changed = Option<Arc<[String]>>;

/// Changes a slow feed subscriber may fall behind by before it is told it lagged.
const FEED_CAPACITY: usize = 1024;

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            senders: Mutex::default(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            feed_closed: watch::channel(false).0,
        }
    }
}

impl Watchers {
    /// Every change from now on, as it is committed (this sidecar's and, on a shared store,
    /// the others').
    pub fn feed(&self) -> broadcast::Receiver<Changed> {
        self.feed.subscribe()
    }

    /// Becomes true when the feed ends (shutdown).
    pub fn feed_closed(&self) -> watch::Receiver<bool> {
        self.feed_closed.subscribe()
    }

    /// Ends the feed (shutdown): its subscribers end their streams.
    pub fn close_feed(&self) {
        self.feed_closed.send_replace(true);
    }

    /// Subscribes before the caller reads the state, so no change can slip in between.
    pub fn subscribe(&self, instance_id: &str) -> watch::Receiver<()> {
        let mut senders = self.senders.lock().unwrap();
        senders
            .entry(instance_id.to_string())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// A guard that releases the instance's channel when dropped: when its wait ends, and
    /// also when the call is cancelled (the future is dropped mid-wait).
    pub fn releasing<'a>(&'a self, instance_id: &'a str) -> Release<'a> {
        Release(self, instance_id)
    }

    /// Forgets an instance's channel once nobody waits on it any more.
    pub fn release(&self, instance_id: &str) {
        let mut senders = self.senders.lock().unwrap();
        if senders.get(instance_id).is_some_and(|tx| tx.receiver_count() == 0) {
            senders.remove(instance_id);
        }
    }

    /// Wakes every waiter (they re-read the state), for when what changed is not known.
    pub fn notify_all(&self) {
        let _ = self.feed.send(None);
        let mut senders = self.senders.lock().unwrap();
        senders.retain(|_, tx| tx.send(()).is_ok());
    }

    pub fn notify<'a>(&self, instance_ids: impl IntoIterator<Item = &'a String>) {
        let ids: Vec<&String> = instance_ids.into_iter().collect();
        if self.feed.receiver_count() > 0 && !ids.is_empty() {
            let _ = self.feed.send(Some(ids.iter().map(|id| id.to_string()).collect()));
        }
        let mut senders = self.senders.lock().unwrap();
        for id in ids {
            if let Some(tx) = senders.get(id)
                && tx.send(()).is_err()
            {
                senders.remove(id); // nobody is waiting any more
            }
        }
    }
}

/// See [`Watchers::releasing`].
pub struct Release<'a>(&'a Watchers, &'a str);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

impl Watchers {
    /// How many instances have a channel (waiters, or channels not yet released).
    pub fn len(&self) -> usize {
        self.senders.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

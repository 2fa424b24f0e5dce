//! `GET /api/events`: server-sent events telling an open page what changed, fed by the
//! dispatcher's change notifications (the ones that wake gRPC waiters), so a page re-reads only
//! when something changed and the store is never polled. Changes are gathered for a short
//! window and sent as one event, so a busy sidecar costs a page a few events a second.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use super::{Dashboard, Need};
use crate::http::error::ApiResult;

/// How long changes are gathered into one event.
const WINDOW: Duration = Duration::from_millis(250);
/// More changed ids than this in one window are sent as "anything changed".
const MAX_IDS: usize = 200;

pub async fn events(State(d): State<Dashboard>, headers: HeaderMap) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    d.permit(&headers, Need::Read)?;
    let watchers = d.service.watchers();
    let mut feed = watchers.feed();
    let mut closed = watchers.feed_closed();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(Event::default().event("ready").data("{}"))).await.is_err() {
            return;
        }
        loop {
            // Wait for a first change (or for the page to go away).
            let first = tokio::select! {
                change = feed.recv() => change,
                _ = tx.closed() => return,
                _ = closed.wait_for(|c| *c) => return,
            };
            let mut ids: Vec<String> = vec![];
            let mut all = false;
            let mut take = |change: Result<crate::watchers::Changed, RecvError>| match change {
                Ok(Some(changed)) => ids.extend(changed.iter().cloned()),
                Ok(None) | Err(RecvError::Lagged(_)) => all = true,
                Err(RecvError::Closed) => all = true,
            };
            if matches!(first, Err(RecvError::Closed)) {
                return;
            }
            take(first);
            let until = tokio::time::Instant::now() + WINDOW;
            loop {
                tokio::select! {
                    change = feed.recv() => {
                        if matches!(change, Err(RecvError::Closed)) { break; }
                        take(change);
                    }
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            ids.sort();
            ids.dedup();
            let data = if all || ids.len() > MAX_IDS {
                serde_json::json!({ "all": true })
            } else {
                serde_json::json!({ "ids": ids })
            };
            if tx.send(Ok(Event::default().event("change").data(data.to_string()))).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

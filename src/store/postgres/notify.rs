//! Wake-ups between sidecars sharing a database: a transaction that creates work ends with
//! `NOTIFY <channel>, '<node> <ids>'` (delivered only if it commits), and every sidecar
//! `LISTEN`s and turns what it hears into [`Change`]s for its dispatcher and waiters. Each task
//! hub has a channel of its own (`outrigger` for the default hub), since instance ids repeat
//! across hubs and one hub's commits must not wake another's waiters.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::store::{Change, Result};
use crate::task::AbortOnDrop;

/// The default hub's channel; a named hub's is [`hub_channel`].
pub const CHANNEL: &str = "outrigger";

/// The channel of a named task hub (names are short and plain, see `crate::hubs`).
pub fn hub_channel(hub: &str) -> String {
    format!("{CHANNEL}_hub_{hub}")
}
/// Postgres refuses payloads of 8000 bytes or more; a longer list is sent as "anything".
const MAX_PAYLOAD: usize = 7900;

/// Signs this process's notifications so its listener can skip its own echoes (the local
/// dispatcher already knows about its own commits).
#[derive(Clone, Debug)]
pub struct Notifier {
    node: String,
    channel: String,
}

impl Notifier {
    pub fn new(channel: String) -> Self {
        Notifier {
            node: uuid::Uuid::new_v4().simple().to_string(),
            channel,
        }
    }

    /// Queues a notification naming `ids` in the transaction `tx`.
    pub async fn send<'a, I, S>(&self, tx: &mut PgConnection, ids: I) -> Result<()>
    where
        I: IntoIterator<Item = &'a S>,
        S: AsRef<str> + ?Sized + 'a,
    {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(encode(&self.node, ids))
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// Payload: the sender's node id, a space, then each id as `<byte length>:<id>` (ids may
/// hold any character, so no separator would be safe), or `*` for "anything changed".
fn encode<'a, I, S>(node: &str, ids: I) -> String
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let mut ids: Vec<&str> = ids.into_iter().map(AsRef::as_ref).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut payload = format!("{node} ");
    for id in ids {
        payload.push_str(&format!("{}:{id}", id.len()));
        if payload.len() > MAX_PAYLOAD {
            return format!("{node} *");
        }
    }
    payload
}

/// The sender and the change a payload describes; `None` for a payload we cannot read.
fn decode(payload: &str) -> Option<(&str, Change)> {
    let (node, mut rest) = payload.split_once(' ')?;
    if rest == "*" {
        return Some((node, Change::Unknown));
    }
    let mut ids = vec![];
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        ids.push(tail.get(..len)?.to_string());
        rest = tail.get(len..)?;
    }
    Some((node, Change::Instances(ids)))
}

/// Starts listening. The first connection is made before returning, so a store that opens
/// successfully hears everything committed after that. The task stops when the returned
/// handle is dropped (with the store).
pub async fn listen(url: &str, notifier: Notifier, changes: broadcast::Sender<Change>) -> Result<AbortOnDrop, sqlx::Error> {
    let first = connect(url, &notifier.channel).await?;
    let url = url.to_string();
    Ok(AbortOnDrop(tokio::spawn(async move {
        let mut listener = Some(first);
        loop {
            let Some(l) = listener.as_mut() else {
                match connect(&url, &notifier.channel).await {
                    Ok(l) => {
                        debug!("listening for other sidecars' changes again");
                        listener = Some(l);
                        // Whatever was committed while we were deaf is unknown.
                        let _ = changes.send(Change::Unknown);
                    }
                    // The database is away; the store's own calls report it. Try again soon.
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
                continue;
            };
            match l.try_recv().await {
                Ok(Some(n)) => match decode(n.payload()) {
                    Some((node, _)) if node == notifier.node => {}
                    Some((_, change)) => {
                        let _ = changes.send(change);
                    }
                    None => warn!(payload = n.payload(), "ignoring an unreadable notification"),
                },
                Ok(None) | Err(_) => {
                    warn!("lost the notification connection to the database; reconnecting");
                    listener = None;
                    let _ = changes.send(Change::Unknown);
                }
            }
        }
    })))
}

async fn connect(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_any_id() {
        let ids = ["b", "a", "with space", "colon:1:", "a"];
        let payload = encode("node", ids.iter().copied());
        let (node, change) = decode(&payload).unwrap();
        assert_eq!(node, "node");
        assert_eq!(
            change,
            Change::Instances(vec!["a".into(), "b".into(), "colon:1:".into(), "with space".into()])
        );
    }

    #[test]
    fn empty_and_oversized_lists() {
        assert_eq!(decode(&encode("n", None::<&str>)), Some(("n", Change::Instances(vec![]))));
        let many: Vec<String> = (0..2000).map(|i| format!("instance-{i}")).collect();
        assert_eq!(decode(&encode("n", &many)), Some(("n", Change::Unknown)));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode("no-space"), None);
        assert_eq!(decode("n 5:ab"), None);
        assert_eq!(decode("n x:ab"), None);
    }
}

//! Task hubs: isolated sets of instances, work and entities in one database, chosen per call by
//! the `taskhub` metadata ([`crate::taskhub`]). Each hub is served by its own store, dispatcher and
//! service handlers ([`Hub`]), so the handlers, the engine and the stores know nothing of hubs;
//! a [`route::Route`] in front of each dialect's service forwards every call to its hub's. The
//! default hub is opened at start; named hubs on their first call, up to a bound.

pub mod route;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tracing::info;

use crate::dispatch::{self, Dispatcher};
use crate::grpc::Service;
use crate::grpc::dapr::DaprService;
use crate::grpc::dapr::proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer as DaprServer;
use crate::proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use crate::store::{self, Store};
use crate::task::AbortOnDrop;
use crate::taskhub::HubError;
use crate::telemetry::Telemetry;
use crate::time::Clock;
use crate::watchers::Watchers;

pub use route::Route;

/// How named hubs are opened.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The default hub's database URL and store options, from which each named hub's store is
    /// derived (`store::open_hub`). `None`: only the default hub is served.
    pub database: Option<(String, store::Options)>,
    /// Most named hubs open at once (each holds a store with its connections and a dispatch
    /// loop); a call naming one more is refused.
    pub max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { database: None, max: 16 }
    }
}

/// What every hub's service set is built with.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub dispatch: dispatch::Settings,
    pub telemetry: Telemetry,
    pub max_wait: Duration,
    pub max_message_bytes: usize,
    pub dapr_app_id: Option<String>,
    pub clock: Arc<dyn Clock>,
}

/// One task hub's store, dispatcher (with its running loop) and the services of both dialects.
pub struct Hub {
    pub handlers: Service,
    pub dispatcher: Arc<Dispatcher>,
    pub microsoft: TaskHubSidecarServiceServer<Service>,
    pub dapr: DaprServer<DaprService>,
    _dispatch_loop: AbortOnDrop,
}

impl Hub {
    fn new(store: Arc<dyn Store>, recipe: &Recipe) -> Hub {
        let watchers = Arc::new(Watchers::default());
        let dispatcher = Dispatcher::new(
            store.clone(),
            recipe.dispatch.clone(),
            recipe.telemetry.clone(),
            watchers.clone(),
            recipe.clock.clone(),
        );
        let dispatch_loop = AbortOnDrop(tokio::spawn(dispatcher.clone().run()));
        let handlers = Service::new(
            store,
            dispatcher.clone(),
            watchers,
            recipe.telemetry.clone(),
            recipe.max_wait,
            recipe.clock.clone(),
        );
        let microsoft = TaskHubSidecarServiceServer::new(handlers.clone())
            .max_decoding_message_size(recipe.max_message_bytes)
            .max_encoding_message_size(recipe.max_message_bytes);
        let dapr = DaprServer::new(DaprService::new(handlers.clone(), recipe.dapr_app_id.clone()))
            .max_decoding_message_size(recipe.max_message_bytes)
            .max_encoding_message_size(recipe.max_message_bytes);
        Hub {
            handlers,
            dispatcher,
            microsoft,
            dapr,
            _dispatch_loop: dispatch_loop,
        }
    }
}

/// Every hub this sidecar serves: the default one, and the named ones opened so far.
pub struct Hubs {
    recipe: Recipe,
    settings: Settings,
    default: Arc<Hub>,
    /// A cell per named hub, so concurrent first calls open it once.
    named: Mutex<HashMap<String, Arc<OnceCell<Arc<Hub>>>>>,
    /// Set at shutdown: no hub is opened after it.
    draining: AtomicBool,
}

impl std::fmt::Debug for Hubs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hubs").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Hubs {
    pub fn new(store: Arc<dyn Store>, recipe: Recipe, settings: Settings) -> Arc<Hubs> {
        Arc::new(Hubs {
            default: Arc::new(Hub::new(store, &recipe)),
            recipe,
            settings,
            named: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
        })
    }

    pub fn default_hub(&self) -> &Arc<Hub> {
        &self.default
    }

    /// The hub `name` names (`None`: the default hub), opening it on first use.
    pub async fn get(&self, name: Option<&str>) -> Result<Arc<Hub>, HubError> {
        let Some(name) = name else {
            return Ok(self.default.clone());
        };
        let cell = {
            let mut named = self.named.lock().unwrap();
            match named.get(name) {
                Some(cell) => cell.clone(),
                None => {
                    let Some((url, _)) = &self.settings.database else {
                        return Err(HubError::OnlyDefault(name.to_string()));
                    };
                    if named.len() >= self.settings.max {
                        return Err(HubError::TooMany {
                            name: name.to_string(),
                            number: named.len() + 1,
                            max: self.settings.max,
                        });
                    }
                    if self.draining.load(Ordering::SeqCst) {
                        return Err(HubError::ShuttingDown);
                    }
                    info!(task_hub = name, database_url = %crate::redact::redact(url), "opening task hub");
                    let cell = Arc::new(OnceCell::new());
                    named.insert(name.to_string(), cell.clone());
                    cell
                }
            }
        };
        let opened = cell
            .get_or_try_init(|| async {
                let (url, options) = self.settings.database.as_ref().expect("checked above");
                let store = store::open_hub(url, name, options).await.map_err(HubError::Open)?;
                // A hub opened while the drain began hands out no work either.
                let hub = Arc::new(Hub::new(store, &self.recipe));
                if self.draining.load(Ordering::SeqCst) {
                    hub.dispatcher.drain();
                }
                Ok::<_, HubError>(hub)
            })
            .await;
        match opened {
            Ok(hub) => Ok(hub.clone()),
            Err(e) => {
                // Not counted against the bound: the next call tries again.
                let mut named = self.named.lock().unwrap();
                if named.get(name).is_some_and(|c| c.get().is_none()) {
                    named.remove(name);
                }
                Err(e)
            }
        }
    }

    /// The default hub and every named hub opened so far.
    pub fn all(&self) -> Vec<Arc<Hub>> {
        let named = self.named.lock().unwrap();
        std::iter::once(self.default.clone())
            .chain(named.values().filter_map(|c| c.get().cloned()))
            .collect()
    }

    /// Named hubs open now.
    pub fn named_count(&self) -> usize {
        self.named.lock().unwrap().values().filter(|c| c.get().is_some()).count()
    }

    /// Stops handing out work in every hub (at shutdown), and opening hubs.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for hub in self.all() {
            hub.dispatcher.drain();
        }
    }

    /// Work items workers hold, over all hubs.
    pub fn held(&self) -> usize {
        self.all().iter().map(|h| h.dispatcher.held()).sum()
    }

    /// Resolves once workers hold no work items in any hub (after [`Hubs::drain`], none is
    /// handed out again, so a hub once settled stays settled).
    pub async fn settled(&self) {
        for hub in self.all() {
            hub.dispatcher.settled().await;
        }
    }

    /// Ends every worker stream of every hub.
    pub fn close_all(&self) {
        for hub in self.all() {
            hub.dispatcher.close_all();
        }
    }

    /// Releases every lease this sidecar holds, in every hub.
    pub async fn release_everything(&self) {
        for hub in self.all() {
            hub.dispatcher.release_everything().await;
        }
    }
}

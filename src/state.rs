//! What every handler shares: settings, the node, auth, admission, metrics, health. The
//! handlers (`http`, `ws`) and `startup`, which builds it, depend on this module; it depends
//! on none of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chatty_actors::Node;
use prometheus::Registry;

use crate::admission::{Admission, Cidr};
use crate::auth::Authenticator;
use crate::health::Health;
use crate::metrics::EdgeMetrics;
use crate::settings::Settings;
use crate::store::Database;

/// The state every handler shares.
pub struct AppStateInner {
    pub settings: Settings,
    pub admission: Arc<Admission>,
    pub trusted_proxies: Vec<Cidr>,
    pub auth: Authenticator,
    pub node: Arc<Node>,
    pub edge_metrics: EdgeMetrics,
    pub health: Arc<Health>,
    pub(crate) draining: AtomicBool,
    pub(crate) registry: Registry,
    pub(crate) db: Database,
    /// Webhooks, when `webhooks.url` is set: stopped after the node at shutdown.
    pub(crate) webhooks: Option<std::sync::Arc<crate::webhooks::Webhooks>>,
}

/// What every handler gets: a cheap clone of the shared state.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

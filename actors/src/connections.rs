//! ConnectionSupervisor: parent of every ConnectionActor. A connection cannot be resurrected
//! (its socket state is gone), so the decision on failure is to close that one socket with
//! 1011 and let the client reconnect; no other connection is touched.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::outbox::{close, ConnShared};

/// Every live connection of the node, by actor id.
#[derive(Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<ActorId, Arc<ConnShared>>>,
}

impl ConnRegistry {
    pub fn insert(&self, id: ActorId, shared: Arc<ConnShared>) {
        self.conns.lock().insert(id, shared);
    }

    pub fn remove(&self, id: &ActorId) -> Option<Arc<ConnShared>> {
        self.conns.lock().remove(id)
    }

    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<ConnShared>> {
        self.conns.lock().values().cloned().collect()
    }

    /// The user's connections on this node. A scan: it serves the rare moderation calls,
    /// and an index by user would cost every connect and disconnect instead.
    pub fn of_user(&self, user: &UserId) -> Vec<Arc<ConnShared>> {
        self.conns
            .lock()
            .values()
            .filter(|c| c.user == *user)
            .cloned()
            .collect()
    }

    /// Close every connection of the user with `code`; how many there were.
    pub fn close_user(&self, user: &UserId, code: u16) -> usize {
        let conns = self.of_user(user);
        for c in &conns {
            c.request_close(code);
        }
        conns.len()
    }
}

pub struct ConnectionSupervisor;

pub enum ConnectionSupervisorMsg {}

pub struct ConnSupArgs {
    pub registry: Arc<ConnRegistry>,
    pub metrics: Metrics,
}

#[ractor::async_trait]
impl Actor for ConnectionSupervisor {
    type Msg = ConnectionSupervisorMsg;
    type State = ConnSupArgs;
    type Arguments = ConnSupArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        args: ConnSupArgs,
    ) -> Result<ConnSupArgs, ActorProcessingErr> {
        args.metrics
            .actors_alive
            .with_label_values(&["connection_supervisor"])
            .inc();
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        state: &mut ConnSupArgs,
    ) -> Result<(), ActorProcessingErr> {
        state
            .metrics
            .actors_alive
            .with_label_values(&["connection_supervisor"])
            .dec();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut ConnSupArgs,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(shared) = state.registry.remove(&cell.get_id()) {
                    tracing::error!(conn = %shared.id, error = %err, "connection actor failed; closing its socket");
                    state
                        .metrics
                        .actor_restarts
                        .with_label_values(&["connection"])
                        .inc();
                    shared.request_close(close::INTERNAL);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.registry.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

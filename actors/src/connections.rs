//! ConnectionSupervisor: parent of every ConnectionActor. A connection cannot be resurrected
//! (its socket state is gone), so the decision on failure is to close that one socket with
//! 1011 and let the client reconnect; no other connection is touched. The failed actor's rooms
//! learn it is gone from the actor itself: its state detaches it from them when dropped.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ids::UserId;
use crate::metrics::{Alive, Metrics};
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

pub struct ConnSupState {
    args: ConnSupArgs,
    _alive: Alive,
}

#[ractor::async_trait]
impl Actor for ConnectionSupervisor {
    type Msg = ConnectionSupervisorMsg;
    type State = ConnSupState;
    type Arguments = ConnSupArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        args: ConnSupArgs,
    ) -> Result<ConnSupState, ActorProcessingErr> {
        Ok(ConnSupState {
            _alive: Alive::new(&args.metrics, "connection_supervisor"),
            args,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ConnectionSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut ConnSupState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &state.args;
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // Decision: close the socket with 1011. Its rooms are told `Detach` by the
                // failed actor's state as ractor drops it (see `ConnState`'s `Drop`).
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

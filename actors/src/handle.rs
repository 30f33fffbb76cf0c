//! What the edge holds for one socket: a small typed API over the connection's actor, so the
//! edge never sees the actor's message enum or the permits that bound its inbound queue.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::mpsc;

use crate::connection::ConnMsg;
use crate::outbox::{CloseState, ConnShared, Out, Outbox};
use crate::protocol::Command;

/// A new socket's connection: the handle, and the queue its writer task drains.
pub struct Connection {
    /// Submit commands, queue frames, watch the close state.
    pub handle: ConnHandle,
    /// Everything to write to the socket, in order (frames and pongs).
    pub outbound: mpsc::Receiver<Out>,
}

/// The edge's side of one connection. Cheap to clone.
#[derive(Clone)]
pub struct ConnHandle {
    pub(crate) actor: ActorRef<ConnMsg>,
    /// State shared with the actor: id, close state, liveness.
    pub shared: Arc<ConnShared>,
    /// Queue frames to the socket (error answers and pongs from the edge itself).
    pub outbox: Outbox,
}

/// Why a command was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The connection is closing (or stopped reading): the reader should stop.
    Closing,
    /// The connection's actor is gone.
    Gone,
}

impl ConnHandle {
    /// Hand a decoded command to the connection. Waits while its inbound queue is full, so a
    /// client that sends faster than it is served is slowed down by TCP, not buffered; gives
    /// up as soon as the connection starts closing.
    pub async fn submit(&self, cmd: Command) -> Result<(), SubmitError> {
        let mut close = self.shared.close_watch();
        if close.state() != CloseState::Open {
            return Err(SubmitError::Closing);
        }
        let permit = tokio::select! {
            biased;
            _ = close.changed() => return Err(SubmitError::Closing),
            p = self.shared.inbound.clone().acquire_owned() => {
                p.map_err(|_| SubmitError::Gone)?
            }
        };
        self.actor
            .cast(ConnMsg::Command(cmd, permit))
            .map_err(|_| SubmitError::Gone)
    }

    /// Stop the connection's actor (the socket is gone).
    pub fn stop(&self) {
        self.actor.stop(None);
    }
}

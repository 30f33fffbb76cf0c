//! PresenceKeeper: this node's presence entries (who is present in which room through a
//! connection on this node), fed by the rooms. It answers the HTTP presence API without waking
//! room actors, and in cluster mode it is the node's heartbeat: it refreshes this node's
//! entries in the PresenceStore and has every local room re-read the cluster-wide presence, so
//! the entries of a node that died silently disappear everywhere within the TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::ids::{DisplayName, RoomId, UserId};
use crate::metrics::Metrics;
use crate::ports::PresenceStore;
use crate::protocol::PresenceEntry;

pub type PresenceRef = ActorRef<PresenceKeeperMsg>;

pub enum PresenceKeeperMsg {
    /// A user became present (or stopped being present) in a room through this node.
    Local {
        room: RoomId,
        user: UserId,
        name: DisplayName,
        present: bool,
    },
    Get {
        room: RoomId,
        reply: RpcReplyPort<Vec<PresenceEntry>>,
    },
    Heartbeat,
}

pub struct PresenceKeeper;

pub struct PresenceArgs {
    pub metrics: Metrics,
    pub store: Option<Arc<dyn PresenceStore>>,
    /// After each heartbeat's refresh: have every local room re-read the cluster-wide
    /// presence (the node wires this to its rooms, so the keeper does not know them).
    pub after_heartbeat: Arc<dyn Fn() + Send + Sync>,
    pub heartbeat: Duration,
}

pub struct PresenceKeeperState {
    args: PresenceArgs,
    local: HashMap<RoomId, BTreeMap<UserId, DisplayName>>,
    ticker: Option<JoinHandle<()>>,
}

#[ractor::async_trait]
impl Actor for PresenceKeeper {
    type Msg = PresenceKeeperMsg;
    type State = PresenceKeeperState;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PresenceKeeperMsg>,
        args: PresenceArgs,
    ) -> Result<PresenceKeeperState, ActorProcessingErr> {
        args.metrics
            .actors_alive
            .with_label_values(&["presence"])
            .inc();
        let ticker = args
            .store
            .is_some()
            .then(|| myself.send_interval(args.heartbeat, || PresenceKeeperMsg::Heartbeat));
        Ok(PresenceKeeperState {
            args,
            local: HashMap::new(),
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        state: &mut PresenceKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        state
            .args
            .metrics
            .actors_alive
            .with_label_values(&["presence"])
            .dec();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        msg: PresenceKeeperMsg,
        state: &mut PresenceKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceKeeperMsg::Local {
                room,
                user,
                name,
                present,
            } => {
                let users = state.local.entry(room.clone()).or_default();
                if present {
                    users.insert(user, name);
                } else {
                    users.remove(&user);
                }
                if users.is_empty() {
                    state.local.remove(&room);
                }
            }
            PresenceKeeperMsg::Get { room, reply } => {
                let local = || {
                    state
                        .local
                        .get(&room)
                        .map(|u| {
                            u.iter()
                                .map(|(user, name)| PresenceEntry {
                                    user: user.clone(),
                                    name: name.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let list = match &state.args.store {
                    // Cluster-wide when a store is configured; this node's view if it fails.
                    Some(store) => {
                        match tokio::time::timeout(Duration::from_secs(2), store.list(&room)).await
                        {
                            Ok(Ok(list)) => list,
                            _ => local(),
                        }
                    }
                    None => local(),
                };
                let _ = reply.send(list);
            }
            PresenceKeeperMsg::Heartbeat => {
                let Some(store) = state.args.store.clone() else {
                    return Ok(());
                };
                let entries: Vec<(RoomId, UserId, DisplayName)> = state
                    .local
                    .iter()
                    .flat_map(|(room, users)| {
                        users
                            .iter()
                            .map(move |(u, n)| (room.clone(), u.clone(), n.clone()))
                    })
                    .collect();
                // Never block the keeper on a stalled Redis: the heartbeat runs on its own.
                let after = state.args.after_heartbeat.clone();
                let metrics = state.args.metrics.clone();
                tokio::spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(2), store.refresh(&entries)).await,
                        Ok(Ok(()))
                    );
                    if !ok {
                        metrics.bus_errors.inc();
                    }
                    after();
                });
            }
        }
        Ok(())
    }
}

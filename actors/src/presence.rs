//! PresenceKeeper: this node's index of who is present in which room, fed by the rooms'
//! coalesced diffs. It answers the HTTP presence API without waking room actors (or creating
//! them for rooms with no local members). Cluster-wide replication builds on it.

use std::collections::{BTreeMap, HashMap};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ids::{RoomId, UserId};
use crate::metrics::Metrics;
use crate::protocol::{PresenceEntry, PresenceLeave};

pub type PresenceRef = ActorRef<PresenceKeeperMsg>;

pub enum PresenceKeeperMsg {
    Diff {
        room: RoomId,
        joins: Vec<PresenceEntry>,
        leaves: Vec<PresenceLeave>,
    },
    Get {
        room: RoomId,
        reply: RpcReplyPort<Vec<PresenceEntry>>,
    },
}

pub struct PresenceKeeper;

pub struct PresenceKeeperState {
    rooms: HashMap<RoomId, BTreeMap<UserId, PresenceEntry>>,
    metrics: Metrics,
}

#[ractor::async_trait]
impl Actor for PresenceKeeper {
    type Msg = PresenceKeeperMsg;
    type State = PresenceKeeperState;
    type Arguments = Metrics;

    async fn pre_start(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        metrics: Metrics,
    ) -> Result<PresenceKeeperState, ActorProcessingErr> {
        metrics.actors_alive.with_label_values(&["presence"]).inc();
        Ok(PresenceKeeperState {
            rooms: HashMap::new(),
            metrics,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PresenceKeeperMsg>,
        state: &mut PresenceKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        state
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
            PresenceKeeperMsg::Diff {
                room,
                joins,
                leaves,
            } => {
                let users = state.rooms.entry(room.clone()).or_default();
                for l in leaves {
                    users.remove(&l.user);
                }
                for j in joins {
                    users.insert(j.user.clone(), j);
                }
                if users.is_empty() {
                    state.rooms.remove(&room);
                }
            }
            PresenceKeeperMsg::Get { room, reply } => {
                let list = state
                    .rooms
                    .get(&room)
                    .map(|u| u.values().cloned().collect())
                    .unwrap_or_default();
                let _ = reply.send(list);
            }
        }
        Ok(())
    }
}

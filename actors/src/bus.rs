//! The in-process ClusterBus of a single node, and the BusListener that hands events from other
//! nodes to the local rooms.
//!
//! On a single node no other node exists, so `publish` has no one to reach: local rooms already
//! got the event straight from the Writer or the room (one hop fewer than looping it through the
//! bus). The listener still runs, so the tree has the same shape in both modes.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connections::ConnRegistry;
use crate::ids::RoomId;
use crate::metrics::{Alive, Metrics};
use crate::outbox::close;
use crate::ports::{BusEvent, ClusterBus};
use crate::room::RoomMsg;
use crate::rooms::RoomRegistry;

/// A bus with no other node on it.
pub struct LocalBus {
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    // Kept so the receiver never reports "closed" while the node runs.
    _tx: mpsc::Sender<BusEvent>,
}

impl LocalBus {
    /// A bus for a single node: `publish` reaches no one and the receiver never yields.
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel(1);
        Arc::new(Self {
            rx: Mutex::new(Some(rx)),
            _tx: tx,
        })
    }
}

impl ClusterBus for LocalBus {
    fn publish(&self, _event: BusEvent) {}
    fn subscribe(&self, _room: &RoomId) {}
    fn unsubscribe(&self, _room: &RoomId) {}
    fn take_receiver(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }
}

pub struct BusListener;

pub struct BusListenerArgs {
    pub bus: Arc<dyn ClusterBus>,
    pub rooms: Arc<RoomRegistry>,
    pub conns: Arc<ConnRegistry>,
    /// Told when a room's members changed on another node.
    pub inbox: crate::inbox::Inbox,
    pub metrics: Metrics,
}

pub struct BusListenerState {
    pump: Option<JoinHandle<()>>,
    _alive: Alive,
}

pub enum BusListenerMsg {}

#[ractor::async_trait]
impl Actor for BusListener {
    type Msg = BusListenerMsg;
    type State = BusListenerState;
    type Arguments = BusListenerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<BusListenerMsg>,
        args: BusListenerArgs,
    ) -> Result<BusListenerState, ActorProcessingErr> {
        let alive = Alive::new(&args.metrics, "bus_listener");
        // The pump is a plain task so bus events go straight to the room mailboxes without
        // an extra hop through this actor's own mailbox.
        let pump = args.bus.take_receiver().map(|mut rx| {
            let rooms = args.rooms.clone();
            let conns = args.conns.clone();
            let inbox = args.inbox.clone();
            let metrics = args.metrics.clone();
            let bus = args.bus.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    metrics.bus_received.inc();
                    route(&rooms, &conns, &inbox, &*bus, ev);
                }
            })
        });
        Ok(BusListenerState {
            pump,
            _alive: alive,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BusListenerMsg>,
        state: &mut BusListenerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = state.pump.take() {
            p.abort();
        }
        Ok(())
    }
}

fn route(
    rooms: &RoomRegistry,
    conns: &ConnRegistry,
    inbox: &crate::inbox::Inbox,
    bus: &dyn ClusterBus,
    ev: BusEvent,
) {
    match ev {
        BusEvent::MembersChanged { room } => {
            inbox.invalidate(&room);
            return;
        }
        BusEvent::Disconnect { user } => {
            conns.close_user(&user, close::DISCONNECTED);
            return;
        }
        BusEvent::UserEvent { user, data, reply } => {
            let n = conns.send_event(&user, &data);
            if let Some(reply) = reply {
                bus.answer(reply, n);
            }
            return;
        }
        BusEvent::Inbox { user, items } => {
            if let Some(first) = items.first() {
                let handle = rooms.get(&first.room);
                let mut frames = crate::inbox::frames(&items);
                crate::inbox::deliver_here(conns, handle.as_deref(), &user, &mut frames);
            }
            return;
        }
        _ => {}
    }
    let Some(h) = ev.room().and_then(|r| rooms.get(r)) else {
        return;
    };
    let msg = match ev {
        BusEvent::Messages(msgs) => RoomMsg::Deliver {
            msgs,
            committed: None::<Instant>,
        },
        BusEvent::Updates(updates) => RoomMsg::Updates(updates),
        BusEvent::PresenceChanged { .. } => RoomMsg::PresenceResync,
        BusEvent::Typing { user, .. } => RoomMsg::Typing { user, local: false },
        BusEvent::Resync { .. } => {
            // Events may have been lost (a subscription outage, a publish dropped on another
            // node): presence changes among them, so re-read presence too.
            h.cast(RoomMsg::PresenceResync);
            RoomMsg::CheckHead
        }
        BusEvent::Remove {
            user,
            reason,
            force,
            ..
        } => RoomMsg::RemoveUser {
            user,
            reason,
            force,
        },
        BusEvent::Read { user, seq, .. } => RoomMsg::ReadSync {
            user,
            seq,
            except: None,
        },
        BusEvent::Disconnect { .. }
        | BusEvent::UserEvent { .. }
        | BusEvent::Inbox { .. }
        | BusEvent::MembersChanged { .. } => return,
    };
    h.cast(msg);
}

//! Moderation on every node: kick, ban, unban, room roles, member removal and disconnect.
//!
//! The socket commands and the HTTP API both come here; what is allowed is decided by
//! `access::decide`, what is stored goes to the store first (so a ban holds on a join racing
//! the kick, and survives any restart), and the live part travels on the bus: each node takes
//! the user's sockets out of its copy of the room, or closes them.

use std::sync::Arc;

use crate::access::{self, Action, Authority, Denied, RoomRole, Standing};
use crate::connections::ConnRegistry;
use crate::ids::{RoomId, UserId};
use crate::metrics::Metrics;
use crate::outbox::close;
use crate::ports::{timed, BusEvent, ClusterBus, MessageStore, StoreError};
use crate::protocol::RemoveReason;
use crate::room::RoomMsg;
use crate::rooms::RoomRegistry;

/// Who asks.
#[derive(Clone, Debug)]
pub enum By {
    /// A user on a socket of this node (their token's `admin` role as of now).
    Socket { user: UserId, admin: bool },
    /// The backend, with the API key.
    Backend,
}

impl By {
    fn label(&self) -> &'static str {
        match self {
            By::Socket { .. } => "socket",
            By::Backend => "backend",
        }
    }
}

/// Why a moderation call failed; maps to an `error` code on a socket, a status on the API.
#[derive(Debug, thiserror::Error)]
pub enum ModError {
    /// The rules say no (`forbidden`); the sentence says why.
    #[error("{0}")]
    Forbidden(Denied),
    /// The request makes no sense, such as kicking yourself (`bad_request`).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The store cannot take it now (`unavailable`): retry later.
    #[error("try again later")]
    Unavailable,
    /// Any other store error, as text for the log; clients only see `internal`.
    #[error("store error: {0}")]
    Store(String),
}

impl From<StoreError> for ModError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ModError::Unavailable,
            StoreError::Other(m) => ModError::Store(m.to_string()),
        }
    }
}

pub struct Moderation {
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) rooms: Arc<RoomRegistry>,
    pub(crate) bus: Arc<dyn ClusterBus>,
    pub(crate) conns: Arc<ConnRegistry>,
    /// Whose cached members a change drops (here; the bus tells the other nodes).
    pub(crate) inbox: crate::inbox::Inbox,
    pub(crate) metrics: Metrics,
}

impl Moderation {
    /// A user's standing in a room: their room role from the store; `admin` as the caller
    /// knows it.
    async fn standing(
        &self,
        room: &RoomId,
        user: &UserId,
        admin: bool,
    ) -> Result<Standing, ModError> {
        let info = timed(self.store.join_info(room, user)).await?;
        Ok(Standing {
            admin,
            role: info.role,
        })
    }

    async fn authority(&self, room: &RoomId, by: &By) -> Result<Authority, ModError> {
        Ok(match by {
            By::Backend => Authority::Backend,
            By::Socket { user, admin } => Authority::User(self.standing(room, user, *admin).await?),
        })
    }

    /// The target's standing. Global roles live in tokens, not in the store, so a target is
    /// known as an admin when one of their sockets on this node says so; on other nodes their
    /// sockets refuse a removal that was not the backend's (see `RoomMsg::RemoveUser`).
    async fn target(&self, room: &RoomId, target: &UserId) -> Result<Standing, ModError> {
        let admin = self.conns.of_user(target).iter().any(|c| c.is_admin());
        self.standing(room, target, admin).await
    }

    fn count(&self, action: &str, by: &By) {
        self.metrics
            .moderation
            .with_label_values(&[action, by.label()])
            .inc();
    }

    /// Take `target` out of `room` on every node; with `ban`, keep them out.
    pub async fn kick(
        &self,
        by: &By,
        room: &RoomId,
        target: &UserId,
        ban: bool,
    ) -> Result<(), ModError> {
        if matches!(by, By::Socket { user, .. } if user == target) {
            return Err(ModError::BadRequest("you cannot kick yourself"));
        }
        let who = self.authority(room, by).await?;
        let target_standing = self.target(room, target).await?;
        access::decide(
            who,
            Action::Remove {
                target: target_standing,
            },
        )
        .map_err(ModError::Forbidden)?;
        // Stored before anyone is removed: a join racing this kick reads the ban.
        if ban {
            timed(self.store.ban(room, target)).await?;
        }
        let reason = if ban {
            RemoveReason::Banned
        } else {
            RemoveReason::Kicked
        };
        self.remove(room, target, reason, matches!(by, By::Backend));
        self.count(if ban { "ban" } else { "kick" }, by);
        Ok(())
    }

    /// Lift a ban (idempotent).
    pub async fn unban(&self, by: &By, room: &RoomId, target: &UserId) -> Result<(), ModError> {
        let who = self.authority(room, by).await?;
        access::decide(who, Action::Unban).map_err(ModError::Forbidden)?;
        timed(self.store.unban(room, target)).await?;
        self.count("unban", by);
        Ok(())
    }

    /// Make `target` a member of `room` with `role` (`None`: a member, keeping any role).
    pub async fn set_role(
        &self,
        by: &By,
        room: &RoomId,
        target: &UserId,
        role: Option<RoomRole>,
    ) -> Result<(), ModError> {
        if let By::Socket { .. } = by {
            let who = self.authority(room, by).await?;
            let target_standing = self.target(room, target).await?;
            let to = role.unwrap_or_default();
            access::decide(
                who,
                Action::SetRole {
                    target: target_standing,
                    to,
                },
            )
            .map_err(ModError::Forbidden)?;
        }
        timed(self.store.set_member(room, target, role)).await?;
        self.members_changed(room);
        self.count("set_role", by);
        Ok(())
    }

    /// Delete the user's member row (the backend's call). In a private room that ends their
    /// right to be there, so their sockets are taken out of it everywhere.
    pub async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<(), ModError> {
        timed(self.store.remove_member(room, user)).await?;
        self.members_changed(room);
        let info = timed(self.store.join_info(room, user)).await?;
        if !info.allowed {
            self.remove(room, user, RemoveReason::Removed, true);
        }
        self.count("remove_member", &By::Backend);
        Ok(())
    }

    /// The room's member rows changed: every node reads them again for its inbox frames.
    fn members_changed(&self, room: &RoomId) {
        self.inbox.invalidate(room);
        self.bus
            .publish(BusEvent::MembersChanged { room: room.clone() });
    }

    /// Take the user's sockets out of the room here and on every other node.
    pub fn remove(&self, room: &RoomId, user: &UserId, reason: RemoveReason, force: bool) {
        if let Some(h) = self.rooms.get(room) {
            h.cast(RoomMsg::RemoveUser {
                user: user.clone(),
                reason,
                force,
            });
        }
        self.bus.publish(BusEvent::Remove {
            room: room.clone(),
            user: user.clone(),
            reason,
            force,
        });
    }

    /// Close every socket of the user, here and on every other node, with 4003. Returns how
    /// many were open on this node.
    pub fn disconnect(&self, user: &UserId) -> usize {
        let n = self.conns.close_user(user, close::DISCONNECTED);
        self.bus
            .publish(BusEvent::Disconnect { user: user.clone() });
        self.count("disconnect", &By::Backend);
        n
    }
}

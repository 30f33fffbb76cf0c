//! Who may do what: the one place the socket commands and the HTTP API ask before they join,
//! kick, ban, unban or set a role. Every rule of the permissions table in docs/protocol.md is
//! a line of `decide` or `may_join`, and the tests below are that table.

use serde::Serialize;

use crate::ids::{DisplayName, UserId};
use crate::ports::JoinInfo;

/// A user's role in one room (a row of `room_members`; no row is `Member`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomRole {
    /// The default, and the role of anyone without a row: no moderation rights.
    #[default]
    Member,
    /// May kick and ban users ranked below them in the room, and unban anyone.
    Moderator,
    /// A moderator who may also set the roles of users below them, to a role below owner.
    Owner,
}

impl RoomRole {
    /// The role named `s`; `None` for anything else (names are exact and lower case).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(RoomRole::Member),
            "moderator" => Some(RoomRole::Moderator),
            "owner" => Some(RoomRole::Owner),
            _ => None,
        }
    }

    /// The role's name on the wire and in the store; `parse` reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Member => "member",
            RoomRole::Moderator => "moderator",
            RoomRole::Owner => "owner",
        }
    }
}

/// Who a socket belongs to, from its (latest) token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`. Fixed for the socket's life: a refresh must be for the same user.
    pub user: UserId,
    /// The token's `name` claim (sanitised), or the user id when it has none.
    pub name: DisplayName,
    /// The token's `roles` claim holds `admin`.
    pub admin: bool,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires: u64,
}

/// A user's standing in one room: their global admin role and their room role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub admin: bool,
    pub role: RoomRole,
}

impl Standing {
    /// Moderation is by rank: member < moderator < owner < admin.
    fn rank(self) -> u8 {
        if self.admin {
            3
        } else {
            self.role as u8
        }
    }
}

/// Who asks for a moderation action.
#[derive(Clone, Copy, Debug)]
pub enum Authority {
    /// The backend, through the HTTP API with the API key: it may do everything.
    Backend,
    /// A user on a socket.
    User(Standing),
}

/// What is asked.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Take a user out of the room (kick), and keep them out (ban).
    Remove {
        target: Standing,
    },
    Unban,
    /// Give the target user the room role `to`.
    SetRole {
        target: Standing,
        to: RoomRole,
    },
}

/// The answer when the rules say no: a sentence for the `forbidden` error.
pub type Denied = &'static str;

/// May `who` do `action` in a room?
pub fn decide(who: Authority, action: Action) -> Result<(), Denied> {
    let Authority::User(me) = who else {
        return Ok(());
    };
    let moderates = me.admin || me.role >= RoomRole::Moderator;
    match action {
        Action::Remove { .. } | Action::Unban if !moderates => {
            Err("only moderators, owners and admins may do this in this room")
        }
        Action::Remove { target } if target.rank() >= me.rank() => {
            Err("you may not remove a user of your rank or above")
        }
        Action::Remove { .. } | Action::Unban => Ok(()),
        Action::SetRole { .. } if !(me.admin || me.role == RoomRole::Owner) => {
            Err("only owners and admins may set roles")
        }
        Action::SetRole { target, to } if target.rank() >= me.rank() || to as u8 >= me.rank() => {
            Err("you may only set roles below your own, of users below you")
        }
        Action::SetRole { .. } => Ok(()),
    }
}

/// May a user with `admin` join a room, given what the store knows of them there? Admins may
/// join every room (to moderate it); everyone else needs to be unbanned and, in a private
/// room, a member.
pub fn may_join(admin: bool, info: &JoinInfo) -> Result<(), Denied> {
    if admin {
        Ok(())
    } else if info.banned {
        Err("you are banned from this room")
    } else if !info.allowed {
        Err("this room is private")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBER: Standing = Standing {
        admin: false,
        role: RoomRole::Member,
    };
    const MOD: Standing = Standing {
        admin: false,
        role: RoomRole::Moderator,
    };
    const OWNER: Standing = Standing {
        admin: false,
        role: RoomRole::Owner,
    };
    const ADMIN: Standing = Standing {
        admin: true,
        role: RoomRole::Member,
    };

    fn kick(me: Standing, target: Standing) -> bool {
        decide(Authority::User(me), Action::Remove { target }).is_ok()
    }

    #[test]
    fn removal_goes_strictly_down_the_ranks() {
        assert!(!kick(MEMBER, MEMBER));
        assert!(kick(MOD, MEMBER));
        assert!(!kick(MOD, MOD));
        assert!(!kick(MOD, OWNER));
        assert!(kick(OWNER, MOD));
        assert!(!kick(OWNER, OWNER));
        assert!(kick(ADMIN, OWNER));
        assert!(!kick(ADMIN, ADMIN));
        assert!(!kick(OWNER, ADMIN));
        assert!(decide(Authority::Backend, Action::Remove { target: ADMIN }).is_ok());
    }

    #[test]
    fn unban_needs_a_moderator() {
        assert!(decide(Authority::User(MEMBER), Action::Unban).is_err());
        for who in [MOD, OWNER, ADMIN] {
            assert!(decide(Authority::User(who), Action::Unban).is_ok());
        }
    }

    #[test]
    fn roles_are_set_by_owners_below_themselves() {
        let set = |me, target, to| decide(Authority::User(me), Action::SetRole { target, to });
        assert!(set(MOD, MEMBER, RoomRole::Moderator).is_err());
        assert!(set(OWNER, MEMBER, RoomRole::Moderator).is_ok());
        assert!(set(OWNER, MOD, RoomRole::Member).is_ok());
        assert!(set(OWNER, MEMBER, RoomRole::Owner).is_err());
        assert!(set(OWNER, OWNER, RoomRole::Member).is_err());
        assert!(set(ADMIN, OWNER, RoomRole::Member).is_ok());
        assert!(set(ADMIN, MEMBER, RoomRole::Owner).is_ok());
    }

    #[test]
    fn joins_need_membership_of_private_rooms_and_no_ban_except_for_admins() {
        let info = |allowed, banned| JoinInfo {
            allowed,
            banned,
            read: 0,
            role: RoomRole::Member,
        };
        assert!(may_join(false, &info(true, false)).is_ok());
        assert!(may_join(false, &info(false, false)).is_err());
        assert!(may_join(false, &info(true, true)).is_err());
        assert!(may_join(true, &info(false, true)).is_ok());
    }

    #[test]
    fn role_names_round_trip_and_nothing_else_parses() {
        for r in [RoomRole::Member, RoomRole::Moderator, RoomRole::Owner] {
            assert_eq!(RoomRole::parse(r.as_str()), Some(r));
        }
        for bad in ["admin", "Owner", "", "owner ", "moderator\0"] {
            assert_eq!(RoomRole::parse(bad), None);
        }
    }
}

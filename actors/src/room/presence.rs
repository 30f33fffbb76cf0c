//! Who is present in one room, and what its members have been told: users present through
//! this node (a leave waits out a grace period, so a reconnect flap shows nothing), users
//! present on other nodes (the PresenceStore's last word), and the diff since the last
//! announcement. Plain data: the room actor owns the timers and sends the frames.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{DisplayName, UserId};
use crate::protocol::{PresenceEntry, PresenceLeave};

struct UserPresence {
    name: DisplayName,
    conns: u32,
    /// Bumped on every change, so a grace timer fires only for the leave that armed it.
    epoch: u64,
}

/// One room's presence.
#[derive(Default)]
pub(crate) struct RoomPresence {
    /// Users present through this node (a grace period included).
    users: HashMap<UserId, UserPresence>,
    /// Users present on any node, as last read from the PresenceStore (cluster mode).
    remote: BTreeMap<UserId, DisplayName>,
    /// Everyone present: `remote` and `users` once each (a local name wins). Kept up to date
    /// with every change, so the list, a count or a page never rebuilds it: in a join storm
    /// that rebuild, once per join, was most of the room's work.
    view: BTreeMap<UserId, DisplayName>,
    /// Users whose entry in `view` may differ from `announced`: a diff looks at these only.
    dirty: BTreeSet<UserId>,
    /// The presence the local members have been told about.
    announced: BTreeMap<UserId, DisplayName>,
    epoch: u64,
}

/// A presence diff: who appeared (or changed name) and who left.
pub(crate) type Diff = (Vec<PresenceEntry>, Vec<PresenceLeave>);

impl RoomPresence {
    /// A connection of `user` joined. True when that made the user present (they were not,
    /// not even within a grace period), which the node's presence index must hear about.
    pub fn connect(&mut self, user: &UserId, name: &DisplayName) -> bool {
        let was_present = self.users.contains_key(user);
        self.epoch += 1;
        let p = self
            .users
            .entry(user.clone())
            .or_insert_with(|| UserPresence {
                name: name.clone(),
                conns: 0,
                epoch: 0,
            });
        p.conns += 1;
        p.epoch = self.epoch;
        if !was_present {
            self.refresh(user);
        }
        !was_present
    }

    /// A connection of `user` left. When it was their last, returns the epoch to arm a grace
    /// timer with: the user stays present until `grace_expired(user, epoch)`.
    pub fn disconnect(&mut self, user: &UserId) -> Option<u64> {
        self.epoch += 1;
        let p = self.users.get_mut(user)?;
        p.conns = p.conns.saturating_sub(1);
        p.epoch = self.epoch;
        (p.conns == 0).then_some(self.epoch)
    }

    /// The grace timer armed at `epoch` ran out. Returns the user's name when they are gone
    /// now (no connection came back meanwhile and no later leave re-armed the timer).
    pub fn grace_expired(&mut self, user: &UserId, epoch: u64) -> Option<DisplayName> {
        match self.users.get(user) {
            Some(p) if p.conns == 0 && p.epoch == epoch => {}
            _ => return None,
        }
        let name = self.users.remove(user).map(|p| p.name);
        self.refresh(user);
        name
    }

    /// Bring `user`'s entry in the view in line with `users` and `remote`, and mark it for the
    /// next diff if it changed.
    fn refresh(&mut self, user: &UserId) {
        let now = self
            .users
            .get(user)
            .map(|p| &p.name)
            .or_else(|| self.remote.get(user))
            .cloned();
        let changed = match now {
            Some(name) => self.view.insert(user.clone(), name.clone()).as_ref() != Some(&name),
            None => self.view.remove(user).is_some(),
        };
        if changed {
            self.dirty.insert(user.clone());
        }
    }

    /// The cluster-wide presence just read from the store.
    pub fn set_remote(&mut self, list: Vec<PresenceEntry>) {
        let new: BTreeMap<UserId, DisplayName> =
            list.into_iter().map(|e| (e.user, e.name)).collect();
        let old = std::mem::replace(&mut self.remote, new);
        let mut touched: Vec<UserId> = old
            .keys()
            .filter(|u| !self.remote.contains_key(*u))
            .cloned()
            .collect();
        touched.extend(
            self.remote
                .iter()
                .filter(|(u, n)| old.get(*u) != Some(*n))
                .map(|(u, _)| u.clone()),
        );
        for user in &touched {
            self.refresh(user);
        }
    }

    /// Everyone present: this node's users and other nodes', once each.
    pub fn list(&self) -> Vec<PresenceEntry> {
        self.view
            .iter()
            .map(|(user, name)| PresenceEntry {
                user: user.clone(),
                name: name.clone(),
            })
            .collect()
    }

    /// What changed since the members were last told, marked as told; `None` when nothing
    /// did (several changes within one coalescing window make one diff).
    pub fn take_diff(&mut self) -> Option<Diff> {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        // In user id order, as the sets are sorted.
        for user in std::mem::take(&mut self.dirty) {
            match (self.view.get(&user), self.announced.get(&user)) {
                (Some(name), told) if told != Some(name) => {
                    self.announced.insert(user.clone(), name.clone());
                    joins.push(PresenceEntry {
                        user,
                        name: name.clone(),
                    });
                }
                (None, Some(_)) => {
                    self.announced.remove(&user);
                    leaves.push(PresenceLeave { user });
                }
                _ => {}
            }
        }
        if joins.is_empty() && leaves.is_empty() {
            return None;
        }
        Some((joins, leaves))
    }

    /// How many users are present.
    pub fn count(&self) -> usize {
        self.view.len()
    }

    /// Up to `limit` present users after `after`, in user id order, and whether more follow.
    pub fn page(&self, after: Option<&UserId>, limit: usize) -> (Vec<PresenceEntry>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        let mut it = self.view.range((from, Unbounded));
        let users: Vec<PresenceEntry> = it
            .by_ref()
            .take(limit)
            .map(|(user, name)| PresenceEntry {
                user: user.clone(),
                name: name.clone(),
            })
            .collect();
        (users, it.next().is_some())
    }

    /// True when nobody is present through this node, grace periods included.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn n(s: &str) -> DisplayName {
        DisplayName::sanitize(s)
    }
    fn users(d: &Diff) -> (Vec<&str>, Vec<&str>) {
        (
            d.0.iter().map(|e| e.user.as_str()).collect(),
            d.1.iter().map(|e| e.user.as_str()).collect(),
        )
    }

    #[test]
    fn the_first_connection_makes_a_user_present_and_the_second_does_not() {
        let mut p = RoomPresence::default();
        assert!(p.connect(&u("ann"), &n("Ann")));
        assert!(!p.connect(&u("ann"), &n("Ann")));
        assert_eq!(p.list().len(), 1);
    }

    #[test]
    fn a_leave_waits_for_its_grace_period() {
        let mut p = RoomPresence::default();
        p.connect(&u("ann"), &n("Ann"));
        let epoch = p
            .disconnect(&u("ann"))
            .expect("last connection arms the grace timer");
        assert_eq!(p.list().len(), 1, "still present during the grace period");
        assert_eq!(p.grace_expired(&u("ann"), epoch), Some(n("Ann")));
        assert!(p.list().is_empty() && p.is_empty());
    }

    #[test]
    fn a_reconnect_within_the_grace_period_cancels_the_leave() {
        let mut p = RoomPresence::default();
        p.connect(&u("ann"), &n("Ann"));
        let epoch = p.disconnect(&u("ann")).unwrap();
        assert!(
            !p.connect(&u("ann"), &n("Ann")),
            "a return within grace is no new presence"
        );
        assert_eq!(
            p.grace_expired(&u("ann"), epoch),
            None,
            "the stale timer does nothing"
        );
        assert_eq!(p.list().len(), 1);
    }

    #[test]
    fn only_the_latest_leave_s_timer_counts() {
        let mut p = RoomPresence::default();
        p.connect(&u("ann"), &n("Ann"));
        let first = p.disconnect(&u("ann")).unwrap();
        p.connect(&u("ann"), &n("Ann"));
        let second = p.disconnect(&u("ann")).unwrap();
        assert_ne!(first, second);
        assert_eq!(p.grace_expired(&u("ann"), first), None);
        assert_eq!(p.grace_expired(&u("ann"), second), Some(n("Ann")));
    }

    #[test]
    fn a_connection_that_is_not_the_last_arms_nothing() {
        let mut p = RoomPresence::default();
        p.connect(&u("ann"), &n("Ann"));
        p.connect(&u("ann"), &n("Ann"));
        assert_eq!(p.disconnect(&u("ann")), None);
        assert!(p.disconnect(&u("ann")).is_some());
        assert_eq!(p.disconnect(&u("nobody")), None);
    }

    #[test]
    fn diffs_coalesce_and_are_told_once() {
        let mut p = RoomPresence::default();
        assert!(p.take_diff().is_none());
        p.connect(&u("ann"), &n("Ann"));
        p.connect(&u("bob"), &n("Bob"));
        let d = p.take_diff().unwrap();
        assert_eq!(users(&d), (vec!["ann", "bob"], vec![]));
        assert!(p.take_diff().is_none(), "nothing changed since");
        // A user who comes and goes within one window never shows.
        p.connect(&u("cy"), &n("Cy"));
        let e = p.disconnect(&u("cy")).unwrap();
        p.grace_expired(&u("cy"), e);
        assert!(p.take_diff().is_none());
        let e = p.disconnect(&u("bob")).unwrap();
        p.grace_expired(&u("bob"), e);
        assert_eq!(users(&p.take_diff().unwrap()), (vec![], vec!["bob"]));
    }

    #[test]
    fn remote_users_merge_with_local_ones_once_each() {
        let mut p = RoomPresence::default();
        p.connect(&u("ann"), &n("Ann"));
        p.set_remote(vec![
            PresenceEntry {
                user: u("ann"),
                name: n("Ann"),
            },
            PresenceEntry {
                user: u("zed"),
                name: n("Zed"),
            },
        ]);
        let names: Vec<_> = p.list().into_iter().map(|e| e.user).collect();
        assert_eq!(names, vec![u("ann"), u("zed")]);
        // A local user gone but still in the store's last word stays until the store forgets.
        let e = p.disconnect(&u("ann")).unwrap();
        p.grace_expired(&u("ann"), e);
        assert_eq!(p.list().len(), 2);
        p.set_remote(vec![PresenceEntry {
            user: u("zed"),
            name: n("Zed"),
        }]);
        assert_eq!(p.list().len(), 1);
    }

    #[test]
    fn count_and_pages_cover_local_and_remote_users_once() {
        let mut p = RoomPresence::default();
        for name in ["a", "c", "e"] {
            p.connect(&u(name), &n(name));
        }
        p.set_remote(vec![
            PresenceEntry {
                user: u("b"),
                name: n("b"),
            },
            PresenceEntry {
                user: u("c"),
                name: n("c"),
            },
            PresenceEntry {
                user: u("d"),
                name: n("d"),
            },
        ]);
        assert_eq!(p.count(), 5);
        assert_eq!(p.count(), p.list().len());
        let names = |v: &[PresenceEntry]| {
            v.iter()
                .map(|e| e.user.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let (first, more) = p.page(None, 2);
        assert_eq!((names(&first), more), (vec!["a".into(), "b".into()], true));
        let (second, more) = p.page(Some(&u("b")), 2);
        assert_eq!((names(&second), more), (vec!["c".into(), "d".into()], true));
        let (last, more) = p.page(Some(&u("d")), 2);
        assert_eq!((names(&last), more), (vec!["e".into()], false));
        let (none, more) = p.page(Some(&u("e")), 2);
        assert!(none.is_empty() && !more);
    }

    #[test]
    fn a_renamed_user_is_announced_again() {
        let mut p = RoomPresence::default();
        p.set_remote(vec![PresenceEntry {
            user: u("ann"),
            name: n("Ann"),
        }]);
        p.take_diff();
        p.set_remote(vec![PresenceEntry {
            user: u("ann"),
            name: n("Anna"),
        }]);
        let (joins, leaves) = p.take_diff().unwrap();
        assert_eq!(joins[0].name, n("Anna"));
        assert!(leaves.is_empty());
    }

    /// Random joins, leaves, grace expiries and remote reads: the kept view always equals
    /// one rebuilt from scratch (local names win), and the diffs, applied in order, tell the
    /// members exactly that view.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Connect(u8, u8),
            Disconnect(u8),
            Expire(u8),
            Remote(Vec<(u8, u8)>),
            Diff,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..6u8, 0..2u8).prop_map(|(u, n)| Op::Connect(u, n)),
                (0..6u8).prop_map(Op::Disconnect),
                (0..6u8).prop_map(Op::Expire),
                proptest::collection::vec((0..6u8, 0..2u8), 0..6).prop_map(Op::Remote),
                Just(Op::Diff),
            ]
        }

        proptest! {
            #[test]
            fn the_view_and_the_diffs_match_a_rebuilt_view(ops in proptest::collection::vec(op(), 0..60)) {
                let mut p = RoomPresence::default();
                let mut told: BTreeMap<UserId, DisplayName> = BTreeMap::new();
                let mut epochs: HashMap<u8, u64> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Connect(user, name) => {
                            p.connect(&u(&format!("u{user}")), &n(&format!("n{name}")));
                        }
                        Op::Disconnect(user) => {
                            if let Some(e) = p.disconnect(&u(&format!("u{user}"))) {
                                epochs.insert(user, e);
                            }
                        }
                        Op::Expire(user) => {
                            if let Some(e) = epochs.get(&user) {
                                p.grace_expired(&u(&format!("u{user}")), *e);
                            }
                        }
                        Op::Remote(list) => p.set_remote(
                            list.iter()
                                .map(|(user, name)| PresenceEntry {
                                    user: u(&format!("u{user}")),
                                    name: n(&format!("r{name}")),
                                })
                                .collect(),
                        ),
                        Op::Diff => {
                            if let Some((joins, leaves)) = p.take_diff() {
                                for j in joins {
                                    told.insert(j.user, j.name);
                                }
                                for l in leaves {
                                    told.remove(&l.user);
                                }
                            }
                        }
                    }
                    let mut rebuilt = p.remote.clone();
                    for (user, up) in &p.users {
                        rebuilt.insert(user.clone(), up.name.clone());
                    }
                    prop_assert_eq!(&p.view, &rebuilt);
                    prop_assert_eq!(p.count(), rebuilt.len());
                }
                if let Some((joins, leaves)) = p.take_diff() {
                    for j in joins {
                        told.insert(j.user, j.name);
                    }
                    for l in leaves {
                        told.remove(&l.user);
                    }
                }
                prop_assert_eq!(&told, &p.view);
            }
        }
    }
}

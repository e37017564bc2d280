//! The membership view: foca's notifications turned into the set of live
//! members and a configuration number that grows on every change (seed
//! 003: the driver checks that its mapping and membership are current by
//! that number).

use std::collections::BTreeMap;

use foca::OwnedNotification;

use crate::NodeId;

/// The live members as this node sees them, numbered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Grows by one on every change of the live set or of a live member's
    /// identity.
    pub config_number: u64,
    /// The live members other than this node, by name.
    pub alive: BTreeMap<String, NodeId>,
}

/// What a notification changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Up(NodeId),
    Down(NodeId),
    Renamed { old: NodeId, new: NodeId },
}

impl View {
    /// Applies one of foca's notifications; returns the change, if any.
    pub fn apply(&mut self, notification: OwnedNotification<NodeId>) -> Option<Change> {
        let change = match notification {
            OwnedNotification::MemberUp(id) => {
                self.alive.insert(id.name.clone(), id.clone());
                Change::Up(id)
            }
            OwnedNotification::MemberDown(id) => {
                // A stale identity's death says nothing of its successor.
                if self.alive.get(&id.name) != Some(&id) {
                    return None;
                }
                self.alive.remove(&id.name);
                Change::Down(id)
            }
            OwnedNotification::Rename(old, new) => {
                // Only a live member's new identity changes the view; a
                // rename of a dead one is followed by its MemberUp.
                let current = self.alive.get_mut(&new.name)?;
                *current = new.clone();
                Change::Renamed { old, new }
            }
            _ => return None,
        };
        self.config_number += 1;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::NodeMeta;

    fn id(name: &str, incarnation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            gossip: SocketAddr::from(([127, 0, 0, 1], 7000)),
            incarnation,
            meta: NodeMeta {
                links: Vec::new(),
                tails: Vec::new(),
                version: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn every_change_of_the_live_set_bumps_the_number() {
        let mut view = View::default();
        assert_eq!(
            view.apply(OwnedNotification::MemberUp(id("b", 1))),
            Some(Change::Up(id("b", 1)))
        );
        view.apply(OwnedNotification::MemberUp(id("c", 1)));
        assert_eq!(view.config_number, 2);
        assert!(view.alive.contains_key("b") && view.alive.contains_key("c"));
        view.apply(OwnedNotification::MemberDown(id("b", 1)));
        assert_eq!(view.config_number, 3);
        assert!(!view.alive.contains_key("b"));
    }

    #[test]
    fn a_live_rename_replaces_the_identity_and_counts() {
        let mut view = View::default();
        view.apply(OwnedNotification::MemberUp(id("b", 1)));
        view.apply(OwnedNotification::Rename(id("b", 1), id("b", 2)));
        assert_eq!(view.alive["b"].incarnation, 2);
        assert_eq!(view.config_number, 2);
    }

    #[test]
    fn news_that_changes_nothing_keeps_the_number() {
        let mut view = View::default();
        view.apply(OwnedNotification::MemberUp(id("b", 2)));
        // The old life of b dying, a dead member renamed, foca's own state.
        assert_eq!(view.apply(OwnedNotification::MemberDown(id("b", 1))), None);
        assert_eq!(
            view.apply(OwnedNotification::Rename(id("c", 1), id("c", 2))),
            None
        );
        assert_eq!(view.apply(OwnedNotification::Idle), None);
        assert_eq!(view.apply(OwnedNotification::Active), None);
        assert_eq!(view.config_number, 1);
        assert_eq!(view.alive["b"].incarnation, 2);
    }
}

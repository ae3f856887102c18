//! A host's view of the cluster's membership: an IO-free state machine fed
//! with what the registry's watch reports, so every transition is tested
//! without etcd, sockets or sleeps.
//!
//! The registry delivers three kinds of event: a member's record was written
//! (it joined, or reported new load), a member's record went away (it left,
//! or its lease expired), or the watch broke and was re-established, in
//! which case the full member list replaces the view (events may have been
//! missed in between). [`View::apply`] turns each into the changes a host
//! acts on: who joined, who left.

use fabric_proto::HostInfo;
use std::collections::BTreeMap;

/// What the registry reports about membership.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberEvent {
    /// A member's record was written.
    Put(HostInfo),
    /// A member's record is gone (left, or its lease expired).
    Gone(String),
    /// The full member list (after a watch was re-established).
    Reset(Vec<HostInfo>),
}

/// What changed in the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A host not in the view joined.
    Joined(String),
    /// A member's record changed (a load report).
    Updated(String),
    /// A member left.
    Left(String),
}

/// The members a host knows of, by id.
#[derive(Clone, Debug, Default)]
pub struct View {
    hosts: BTreeMap<String, HostInfo>,
}

impl View {
    /// An empty view.
    pub fn new() -> Self {
        View::default()
    }

    /// Applies one event; returns what changed.
    pub fn apply(&mut self, event: MemberEvent) -> Vec<Change> {
        match event {
            MemberEvent::Put(info) => {
                let id = info.id.clone();
                match self.hosts.insert(id.clone(), info) {
                    None => vec![Change::Joined(id)],
                    Some(_) => vec![Change::Updated(id)],
                }
            }
            MemberEvent::Gone(id) => match self.hosts.remove(&id) {
                Some(_) => vec![Change::Left(id)],
                None => Vec::new(),
            },
            MemberEvent::Reset(members) => {
                let mut next: BTreeMap<String, HostInfo> =
                    members.into_iter().map(|info| (info.id.clone(), info)).collect();
                let mut changes: Vec<Change> =
                    self.hosts.keys().filter(|id| !next.contains_key(*id)).map(|id| Change::Left(id.clone())).collect();
                for (id, info) in &next {
                    match self.hosts.get(id) {
                        None => changes.push(Change::Joined(id.clone())),
                        Some(old) if old != info => changes.push(Change::Updated(id.clone())),
                        Some(_) => {}
                    }
                }
                std::mem::swap(&mut self.hosts, &mut next);
                changes
            }
        }
    }

    /// One member.
    pub fn get(&self, id: &str) -> Option<&HostInfo> {
        self.hosts.get(id)
    }

    /// Every member, by id.
    pub fn hosts(&self) -> impl Iterator<Item = &HostInfo> {
        self.hosts.values()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, queued: u64) -> HostInfo {
        HostInfo {
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            capacity: Vec::new(),
            used: Vec::new(),
            queued,
            pool: None,
            labels: Vec::new(),
            started_ms: 0,
            draining: false,
        }
    }

    #[test]
    fn puts_join_then_update_and_gone_leaves_once() {
        let mut view = View::new();
        assert_eq!(view.apply(MemberEvent::Put(host("a", 0))), vec![Change::Joined("a".into())]);
        assert_eq!(view.apply(MemberEvent::Put(host("a", 3))), vec![Change::Updated("a".into())]);
        assert_eq!(view.get("a").map(|h| h.queued), Some(3));
        assert_eq!(view.apply(MemberEvent::Gone("a".into())), vec![Change::Left("a".into())]);
        assert_eq!(view.apply(MemberEvent::Gone("a".into())), vec![]);
        assert!(view.is_empty());
    }

    #[test]
    fn a_reset_reports_what_was_missed() {
        let mut view = View::new();
        view.apply(MemberEvent::Put(host("a", 0)));
        view.apply(MemberEvent::Put(host("b", 0)));
        // While the watch was down, b left, c joined and a's load changed.
        let changes = view.apply(MemberEvent::Reset(vec![host("a", 5), host("c", 0)]));
        assert_eq!(changes, vec![Change::Left("b".into()), Change::Updated("a".into()), Change::Joined("c".into())]);
        assert_eq!(view.hosts().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        // The same list again changes nothing.
        assert_eq!(view.apply(MemberEvent::Reset(vec![host("a", 5), host("c", 0)])), vec![]);
    }
}

//! Where a named actor lives: consistent hashing of `tenant/name` over the
//! members, so every host computes the same owner from the same view, and a
//! join or leave moves only the names whose owner it changes (about 1/N of
//! them) rather than reshuffling all.
//!
//! The ring decides where a *new* named actor is created. Once created, its
//! location is recorded in the registry under its host's lease, and lookups
//! read that record: an actor never moves because a host joined later.

use hashring::HashRing;

/// Virtual nodes per host: enough that names spread evenly over a few hosts.
const VNODES: u32 = 64;

#[derive(Hash, Clone, Debug, PartialEq)]
struct VNode<'a> {
    host: &'a str,
    replica: u32,
}

/// The host that should own the actor `name` of `tenant` among `hosts`.
pub fn owner<'a>(hosts: impl IntoIterator<Item = &'a str>, tenant: &str, name: &str) -> Option<String> {
    let mut ring = HashRing::new();
    for host in hosts {
        for replica in 0..VNODES {
            ring.add(VNode { host, replica });
        }
    }
    ring.get(&(tenant, name)).map(|vnode| vnode.host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        (0..1000).map(|i| format!("actor-{i}")).collect()
    }

    #[test]
    fn every_host_agrees_and_the_order_of_the_view_does_not_matter() {
        let a = owner(["h1", "h2", "h3"], "t", "counter");
        assert_eq!(a, owner(["h3", "h1", "h2"], "t", "counter"));
        assert!(a.is_some());
        assert_eq!(owner([], "t", "counter"), None);
        // Tenants are part of the key.
        let spread: std::collections::HashSet<_> =
            (0..50).map(|i| owner(["h1", "h2", "h3"], &format!("t{i}"), "counter")).collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn a_join_moves_only_the_names_the_new_host_takes() {
        let before: Vec<_> = names().iter().map(|n| owner(["h1", "h2", "h3"], "t", n).unwrap()).collect();
        let after: Vec<_> = names().iter().map(|n| owner(["h1", "h2", "h3", "h4"], "t", n).unwrap()).collect();
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(moved.iter().all(|(_, a)| *a == "h4"), "names only move to the new host");
        // About a quarter move; far from all.
        assert!(moved.len() > 100 && moved.len() < 400, "{} of 1000 moved", moved.len());
        // Each host holds a fair share.
        for host in ["h1", "h2", "h3"] {
            let share = before.iter().filter(|o| *o == host).count();
            assert!(share > 200 && share < 470, "{host}: {share}");
        }
    }
}

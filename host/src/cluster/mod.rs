//! The cluster: which hosts exist and where work should run.
//!
//! - [`view`]: the membership view, an IO-free state machine fed with the
//!   registry's watch events.
//! - [`placement`]: the IO-free placement rules (resources, pools, labels,
//!   strategies, impossible demands) over that view.
//! - [`membership`]: the async loop that joins the registry under a lease,
//!   keeps it alive, reports load, feeds the view, and rejoins after the
//!   registry was unreachable for longer than the lease.
//!
//! There is no head node: every host runs the same loop against the shared
//! registry and keeps its own view; any host can answer `fabric hosts` or
//! place work.

pub mod membership;
pub mod naming;
pub mod placement;
pub mod view;

use fabric_proto::{Demand, FabricError, HostInfo, Label, Resource};
use placement::Placer;
use std::sync::{Mutex, MutexGuard};
use view::View;

/// What this host declares about itself (its record minus live load).
#[derive(Clone, Debug, Default)]
pub struct Declared {
    /// Resources beyond `cpu` (the slot count), which is always declared.
    pub resources: Vec<Resource>,
    /// The pool it belongs to.
    pub pool: Option<String>,
    /// Its labels.
    pub labels: Vec<Label>,
}

/// A host's cluster state: its view of the members and its placement
/// bookkeeping.
#[derive(Debug, Default)]
pub struct Cluster {
    view: Mutex<View>,
    placer: Mutex<Placer>,
    lease: Mutex<Option<crate::registry::LeaseId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// No members known yet.
    pub fn new() -> Self {
        Cluster::default()
    }

    /// Applies a membership event to the view; forgets hosts that left and
    /// returns them as (id, address) (their connections must close).
    pub fn apply(&self, event: view::MemberEvent) -> Vec<(String, String)> {
        let mut view = lock(&self.view);
        let before: Vec<(String, String)> = match &event {
            view::MemberEvent::Put(_) => Vec::new(),
            _ => view.hosts().map(|h| (h.id.clone(), h.addr.clone())).collect(),
        };
        let changes = view.apply(event);
        drop(view);
        let mut left = Vec::new();
        for change in &changes {
            match change {
                view::Change::Left(id) => {
                    lock(&self.placer).forget(id);
                    tracing::info!(host = %id, "a host left the cluster");
                    left.extend(before.iter().filter(|(h, _)| h == id).cloned());
                }
                view::Change::Joined(id) => tracing::info!(host = %id, "a host joined the cluster"),
                view::Change::Updated(_) => {}
            }
        }
        left
    }

    /// The members as this host sees them, with `local`'s live record in
    /// place of its last report.
    pub fn members(&self, local: &HostInfo) -> Vec<HostInfo> {
        let view = lock(&self.view);
        let mut members: Vec<HostInfo> =
            view.hosts().map(|h| if h.id == local.id { local.clone() } else { h.clone() }).collect();
        if view.get(&local.id).is_none() {
            members.push(local.clone());
            members.sort_by(|a, b| a.id.cmp(&b.id));
        }
        members
    }

    /// Where `demand` should run, avoiding hosts in `avoid` (see
    /// [`placement`]).
    pub fn place(&self, local: &HostInfo, demand: &Demand, avoid: &[String]) -> Result<String, FabricError> {
        let view = lock(&self.view);
        lock(&self.placer).place(&view, local, demand, avoid)
    }

    /// Records work holding `resources` sent to `host`.
    pub fn dispatched(&self, host: &str, resources: &[Resource]) {
        lock(&self.placer).dispatched(host, resources);
    }

    /// Records that work sent to `host` ended.
    pub fn finished(&self, host: &str, resources: &[Resource]) {
        lock(&self.placer).finished(host, resources);
    }

    /// The address of member `id`.
    pub fn addr_of(&self, id: &str) -> Option<String> {
        lock(&self.view).get(id).map(|h| h.addr.clone())
    }

    /// The host's membership lease, while it has one.
    pub fn lease(&self) -> Option<crate::registry::LeaseId> {
        *lock(&self.lease)
    }

    /// Records the host's current lease.
    pub fn set_lease(&self, lease: Option<crate::registry::LeaseId>) {
        *lock(&self.lease) = lease;
    }

    /// The member that should own the actor `name` of `tenant`, among those
    /// that meet `demand` (see [`naming`]); `local` is this host's record.
    pub fn owner_of(
        &self,
        local: &HostInfo,
        tenant: &str,
        name: &str,
        demand: &Demand,
        avoid: &[String],
    ) -> Option<String> {
        let members = self.members(local);
        // A draining host still owns its names (it holds their actors until
        // it leaves): names move only when hosts join or leave. One that
        // refused a new actor is `avoid`ed: the name goes where it will
        // live once that host has left.
        let eligible = members.iter().filter(|h| placement::could_host(h, demand) && !avoid.contains(&h.id));
        naming::owner(eligible.map(|h| h.id.as_str()), tenant, name)
    }

    /// How many members the view holds.
    pub fn len(&self) -> usize {
        lock(&self.view).len()
    }

    /// Whether the view is empty (before the first watch event).
    pub fn is_empty(&self) -> bool {
        lock(&self.view).is_empty()
    }
}

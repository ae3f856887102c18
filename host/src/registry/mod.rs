//! The registry: what the hosts of a fabric share. Job records; membership
//! (each host's record under a lease it keeps alive, and a watch that
//! delivers every change); and the cluster's certificate authority, from
//! which each host issues itself a certificate at start (see `tls`).
//!
//! Membership is a lease, not a heartbeat table: a host that dies stops
//! renewing, its lease expires after its TTL and etcd deletes its record,
//! which every watcher sees as [`MemberEvent::Gone`]. A watch starts with
//! the full member list ([`MemberEvent::Reset`]), so a watcher that
//! re-establishes a broken watch learns what it missed.
//!
//! One trait, two backends, one behavioural test suite (`tests/registry.rs`)
//! run against both:
//! - [`embedded`]: redb, in a file for a single host (`fabric up`) or in
//!   memory (`fabric run`); nothing to install.
//! - [`etcd`]: etcd's v3 API, shared by every host of a cluster (`fabric up
//!   --etcd URLS`); works against Debian's etcd 3.4 and newer.
//!
//! The trait is async (etcd is a network service); its methods return boxed
//! futures so it stays object-safe.

pub mod embedded;
pub mod etcd;

use crate::cluster::view::MemberEvent;
use fabric_proto::{ActorLocation, Deployment, ErrorKind, FabricError, HostInfo, JobRecord};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;

/// A membership lease.
pub type LeaseId = i64;

/// A membership watch: events in order; an error, then the end, when the
/// watch breaks (the watcher opens a new one).
pub type MemberWatch = mpsc::Receiver<Result<MemberEvent, FabricError>>;

/// The cluster's certificate authority, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaPem {
    /// The CA's certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A boxed, sendable future: what the registry's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What hosts record durably.
pub trait Registry: Send + Sync + 'static {
    /// Creates or replaces a job's record.
    fn put_job<'a>(&'a self, record: &'a JobRecord) -> BoxFuture<'a, Result<(), FabricError>>;
    /// One job's record.
    fn job<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, FabricError>>;
    /// Every job of `tenant` (all tenants when `None`), newest first.
    fn jobs<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<JobRecord>, FabricError>>;

    /// Records `host` as a member under a new lease of `ttl`.
    fn join<'a>(&'a self, host: &'a HostInfo, ttl: Duration) -> BoxFuture<'a, Result<LeaseId, FabricError>>;
    /// Rewrites a member's record (its load report) under its lease; fails
    /// once the lease has expired.
    fn report<'a>(&'a self, host: &'a HostInfo, lease: LeaseId) -> BoxFuture<'a, Result<(), FabricError>>;
    /// Renews a lease; `Ok(false)` when it has expired (the member must
    /// join again).
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, FabricError>>;
    /// Ends a lease, removing the member's record at once.
    fn leave(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), FabricError>>;
    /// The members now.
    fn members(&self) -> BoxFuture<'_, Result<Vec<HostInfo>, FabricError>>;
    /// Watches membership: a [`MemberEvent::Reset`] first, then changes.
    fn watch_members(&self) -> BoxFuture<'_, Result<MemberWatch, FabricError>>;

    /// Records where the actor `name` of `tenant` lives, under `lease` (the
    /// record goes when the lease does).
    fn put_actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        location: &'a ActorLocation,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<(), FabricError>>;
    /// Where the actor `name` of `tenant` lives, if recorded.
    fn actor<'a>(&'a self, tenant: &'a str, name: &'a str)
        -> BoxFuture<'a, Result<Option<ActorLocation>, FabricError>>;
    /// Forgets the actor `name` of `tenant` if the record is still
    /// `location` (a newer actor of that name keeps its record).
    fn remove_actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        location: &'a ActorLocation,
    ) -> BoxFuture<'a, Result<(), FabricError>>;

    /// Records that `host` is running job `job` of `tenant`.
    fn mark_running<'a>(
        &'a self,
        host: &'a str,
        tenant: &'a str,
        job: &'a str,
    ) -> BoxFuture<'a, Result<(), FabricError>>;
    /// Clears that mark (the job ended, or was swept).
    fn clear_running<'a>(
        &'a self,
        host: &'a str,
        tenant: &'a str,
        job: &'a str,
    ) -> BoxFuture<'a, Result<(), FabricError>>;
    /// The (tenant, job) pairs marked as running on `host`.
    fn running_on<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>, FabricError>>;

    /// Records `deployment` as the newest version of its name (the version
    /// it carries is replaced by the previous one's plus one) and returns
    /// it as recorded. Refused when its route conflicts with another's
    /// ([`route_conflict`]).
    fn put_deployment<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Deployment, FabricError>>;
    /// Every deployment of `tenant` (all tenants when `None`), by tenant
    /// and name.
    fn deployments<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Deployment>, FabricError>>;
    /// Removes the deployment `name` of `tenant`; `false` if there was none.
    fn remove_deployment<'a>(&'a self, tenant: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, FabricError>>;

    /// The cluster's CA: the one recorded, or `proposal` if there was none
    /// (whichever host asks first creates it; the rest adopt it).
    fn cluster_ca<'a>(&'a self, proposal: &'a CaPem) -> BoxFuture<'a, Result<CaPem, FabricError>>;
    /// The CA's certificate alone, for clients (`None` before any host ran).
    fn ca_cert(&self) -> BoxFuture<'_, Result<Option<String>, FabricError>>;
}

/// Newest first, ties by id: the order every backend lists jobs in.
pub(crate) fn sort_newest_first(jobs: &mut [JobRecord]) {
    jobs.sort_by(|a, b| b.submitted_ms.cmp(&a.submitted_ms).then_with(|| b.id.cmp(&a.id)));
}

/// The routes `route` lies under (`/`, then each longer prefix ending
/// before a `/`), shortest first.
pub(crate) fn routes_above(route: &str) -> Vec<&str> {
    if route == "/" {
        return Vec::new();
    }
    std::iter::once("/").chain(route.match_indices('/').skip(1).map(|(at, _)| &route[..at])).collect()
}

/// Who holds a route, as both backends record it: `tenant/name`.
pub(crate) fn route_owner(deployment: &Deployment) -> String {
    format!("{}/{}", deployment.tenant, deployment.spec.name)
}

/// Why `deployment` may not take its route while deployment `holder`
/// (`tenant/name`) serves route `held`; `None` if it may. `previous`: the
/// route its name served before this deploy, if any.
///
/// Two deployments never share a route. Across tenants, neither route may
/// lie under the other either: a route serves every path under it and the
/// longest route wins, so a tenant nesting a route in another's (or
/// wrapping one, `/` included) would take requests meant for it. Within a
/// tenant nesting is how an app splits its paths, and allowed. A redeploy
/// that keeps its route is not refused for nesting (routes recorded before
/// the rule stay deployable). Another tenant's deployment is not named.
pub(crate) fn route_conflict(
    deployment: &Deployment,
    previous: Option<&str>,
    held: &str,
    holder: &str,
) -> Option<FabricError> {
    let route = deployment.spec.route.as_deref()?;
    if holder == route_owner(deployment) || (previous == Some(route) && held != route) {
        return None;
    }
    let same_tenant = holder.split_once('/').map(|(tenant, _)| tenant) == Some(deployment.tenant.as_str());
    let why = match (route == held, same_tenant) {
        (true, true) => format!("route {route} is already served by deployment {holder}"),
        (true, false) => format!("route {route} is already served by another tenant's deployment"),
        (false, true) => return None,
        (false, false) if crate::deployments::route_serves(held, route) => {
            format!("route {route} lies under route {held}, which another tenant's deployment serves")
        }
        (false, false) if crate::deployments::route_serves(route, held) => {
            format!("route {route} would take the paths of route {held}, which another tenant's deployment serves")
        }
        (false, false) => return None,
    };
    Some(FabricError::new(ErrorKind::InvalidArgument, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_above_a_route_are_its_whole_segment_prefixes() {
        assert!(routes_above("/").is_empty());
        assert_eq!(routes_above("/a"), ["/"]);
        assert_eq!(routes_above("/a/bc/d"), ["/", "/a", "/a/bc"]);
        for route in ["/a", "/a/bc/d"] {
            assert!(routes_above(route).iter().all(|above| crate::deployments::route_serves(above, route)));
        }
    }
}

//! The registry: the durable, shared records of a fabric (today: job
//! records; membership, named actors and deployments join them).
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

use fabric_proto::{FabricError, JobRecord};
use std::future::Future;
use std::pin::Pin;

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
}

/// Newest first, ties by id: the order every backend lists jobs in.
pub(crate) fn sort_newest_first(jobs: &mut [JobRecord]) {
    jobs.sort_by(|a, b| b.submitted_ms.cmp(&a.submitted_ms).then_with(|| b.id.cmp(&a.id)));
}

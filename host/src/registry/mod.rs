//! The registry: the durable, shared records of a fabric (here: job records).
//!
//! One trait, several backends: [`embedded`] keeps them in a redb file for a
//! single host (`fabric up`) or in memory (`fabric run`); the cluster adds an
//! etcd backend behind the same trait.

pub mod embedded;

use fabric_proto::{FabricError, JobRecord};

/// What hosts record durably.
pub trait Registry: Send + Sync + 'static {
    /// Creates or replaces a job's record.
    fn put_job(&self, record: &JobRecord) -> Result<(), FabricError>;
    /// One job's record.
    fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, FabricError>;
    /// Every job of `tenant` (all tenants when `None`), newest first.
    fn jobs(&self, tenant: Option<&str>) -> Result<Vec<JobRecord>, FabricError>;
}

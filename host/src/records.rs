//! Job records, written through to the registry, and behind it while the
//! registry is unreachable.
//!
//! A host that loses etcd keeps accepting and running work: a record the
//! registry cannot take now is kept here (the newest per job) and written
//! when it answers again, and reads of that job are answered from here
//! meanwhile. Later records of a job queue behind a pending one, so a stale
//! `running` can never overwrite a final `succeeded`.

use crate::registry::Registry;
use fabric_proto::{ErrorKind, FabricError, JobRecord};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How often pending records are retried.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Records waiting for the registry, by (tenant, job).
#[derive(Debug, Default)]
pub struct Records {
    pending: Mutex<HashMap<(String, String), JobRecord>>,
}

impl Records {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), JobRecord>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `record`, or keeps it for later if the registry is
    /// unreachable; other failures are returned.
    pub async fn write(&self, registry: &dyn Registry, record: &JobRecord) -> Result<(), FabricError> {
        let key = (record.tenant.clone(), record.id.clone());
        {
            let mut pending = self.lock();
            if let Some(queued) = pending.get_mut(&key) {
                *queued = record.clone();
                return Ok(());
            }
        }
        match registry.put_job(record).await {
            Err(e) if e.kind == ErrorKind::Unavailable => {
                tracing::warn!(job = %record.id, "the registry is unreachable; the job's record will be written later: {e}");
                self.lock().entry(key).or_insert_with(|| record.clone());
                Ok(())
            }
            other => other,
        }
    }

    /// The pending record of a job, if any.
    pub fn pending(&self, tenant: &str, job: &str) -> Option<JobRecord> {
        self.lock().get(&(tenant.to_string(), job.to_string())).cloned()
    }

    /// The tenant's pending records.
    pub fn pending_of(&self, tenant: Option<&str>) -> Vec<JobRecord> {
        self.lock().values().filter(|r| tenant.is_none_or(|t| r.tenant == t)).cloned().collect()
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Tries every pending record once; returns how many remain.
    pub async fn flush(&self, registry: &dyn Registry) -> usize {
        let batch: Vec<JobRecord> = self.lock().values().cloned().collect();
        for record in batch {
            if registry.put_job(&record).await.is_err() {
                break;
            }
            let mut pending = self.lock();
            let key = (record.tenant.clone(), record.id.clone());
            // Keep a newer record that arrived while this one was written.
            if pending.get(&key) == Some(&record) {
                pending.remove(&key);
            }
        }
        self.lock().len()
    }
}

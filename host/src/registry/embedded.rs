//! The embedded registry: redb, in a file under the data directory or in
//! memory. Values are rkyv archives of the protocol's records, validated when
//! read back, so a damaged database gives an error, not a panic.

use super::{sort_newest_first, BoxFuture, Registry};
use fabric_proto::{ErrorKind, FabricError, JobRecord};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;

/// Jobs by `tenant/id`.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// A redb-backed registry.
pub struct Embedded {
    db: Database,
}

fn storage(e: impl std::fmt::Display) -> FabricError {
    FabricError::new(ErrorKind::Internal, format!("registry: {e}"))
}

fn key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

impl Embedded {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, FabricError> {
        let db = Database::create(path).map_err(|e| {
            FabricError::new(ErrorKind::Unavailable, format!("cannot open the registry at {}: {e}", path.display()))
        })?;
        Self::init(db)
    }

    /// A registry that lives in memory only.
    pub fn in_memory() -> Result<Self, FabricError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(storage)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, FabricError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(JOBS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Embedded { db })
    }
}

impl Embedded {
    fn put_job_now(&self, record: &JobRecord) -> Result<(), FabricError> {
        let value = fabric_proto::encode(record).map_err(storage)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(JOBS).map_err(storage)?;
            table.insert(key(&record.tenant, &record.id).as_str(), value.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    fn job_now(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, FabricError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOBS).map_err(storage)?;
        let Some(value) = table.get(key(tenant, id).as_str()).map_err(storage)? else { return Ok(None) };
        fabric_proto::decode(value.value()).map(Some).map_err(storage)
    }

    fn jobs_now(&self, tenant: Option<&str>) -> Result<Vec<JobRecord>, FabricError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOBS).map_err(storage)?;
        let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(fabric_proto::decode::<JobRecord>(v.value()).map_err(storage)?);
        }
        sort_newest_first(&mut out);
        Ok(out)
    }
}

// redb's calls are short and local: run them inline.
impl Registry for Embedded {
    fn put_job<'a>(&'a self, record: &'a JobRecord) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move { self.put_job_now(record) })
    }

    fn job<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, FabricError>> {
        Box::pin(async move { self.job_now(tenant, id) })
    }

    fn jobs<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<JobRecord>, FabricError>> {
        Box::pin(async move { self.jobs_now(tenant) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_proto::JobState;

    fn record(tenant: &str, id: &str, at: u64) -> JobRecord {
        JobRecord {
            id: id.into(),
            tenant: tenant.into(),
            component: "c".into(),
            function: "main".into(),
            state: JobState::Succeeded,
            submitted_ms: at,
            started_ms: Some(at),
            finished_ms: Some(at + 1),
            result: Some("1".into()),
            error: None,
        }
    }

    #[test]
    fn records_persist_across_reopen_and_are_tenant_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        {
            let reg = Embedded::open(&path).unwrap();
            reg.put_job_now(&record("a", "j1", 1)).unwrap();
            reg.put_job_now(&record("a", "j2", 2)).unwrap();
            reg.put_job_now(&record("ab", "j3", 3)).unwrap();
        }
        let reg = Embedded::open(&path).unwrap();
        let ids: Vec<_> = reg.jobs_now(Some("a")).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["j2", "j1"]);
        assert!(reg.job_now("ab", "j1").unwrap().is_none());
        assert_eq!(reg.job_now("a", "j1").unwrap().unwrap(), record("a", "j1", 1));
        assert_eq!(reg.jobs_now(None).unwrap().len(), 3);
    }
}

//! The embedded registry: redb, in a file under the data directory or in
//! memory. Values are rkyv archives of the protocol's records, validated when
//! read back, so a damaged database gives an error, not a panic.
//!
//! Membership lives in memory: the embedded registry serves one process, so
//! its members are that process's host(s), and leases expire on the same
//! clock etcd's would (checked on every read and by each watch's ticker).

use super::{route_conflict, route_owner, sort_newest_first, BoxFuture, CaPem, LeaseId, MemberWatch, Registry};
use crate::cluster::view::MemberEvent;
use fabric_proto::{ActorLocation, Deployment, ErrorKind, FabricError, HostInfo, JobRecord};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Jobs by `tenant/id`.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// Deployments by `tenant/name`.
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");

/// Cluster-wide settings by name (the CA).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// A redb-backed registry.
pub struct Embedded {
    db: Database,
    members: Arc<Mutex<Members>>,
}

/// Members under leases, in memory.
struct Members {
    next_lease: LeaseId,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    hosts: BTreeMap<String, (HostInfo, LeaseId)>,
    actors: HashMap<(String, String), (ActorLocation, LeaseId)>,
    running: std::collections::BTreeSet<(String, String, String)>,
    events: broadcast::Sender<MemberEvent>,
}

impl Members {
    /// Drops members whose lease ran out, telling watchers.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<LeaseId> =
            self.leases.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(id, _)| *id).collect();
        for lease in expired {
            self.end_lease(lease);
        }
    }

    fn end_lease(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        self.actors.retain(|_, (_, l)| *l != lease);
        let gone: Vec<String> = self.hosts.iter().filter(|(_, (_, l))| *l == lease).map(|(id, _)| id.clone()).collect();
        for id in gone {
            self.hosts.remove(&id);
            let _ = self.events.send(MemberEvent::Gone(id));
        }
    }

    fn live(&mut self, lease: LeaseId) -> bool {
        self.expire(Instant::now());
        self.leases.contains_key(&lease)
    }
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
        txn.open_table(META).map_err(storage)?;
        txn.open_table(DEPLOYMENTS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let members = Members {
            next_lease: 1,
            leases: HashMap::new(),
            hosts: BTreeMap::new(),
            actors: HashMap::new(),
            running: Default::default(),
            events: broadcast::channel(1024).0,
        };
        Ok(Embedded { db, members: Arc::new(Mutex::new(members)) })
    }

    fn members_lock(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lease_gone(lease: LeaseId) -> FabricError {
    FabricError::new(ErrorKind::NotFound, format!("membership lease {lease:x} has expired"))
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
        let mut out: Vec<JobRecord> = self.records_of(JOBS, tenant)?;
        sort_newest_first(&mut out);
        Ok(out)
    }

    /// Every record in `table` under `tenant/` (all of them without a
    /// tenant), in key order.
    fn records_of<T>(&self, table: TableDefinition<&str, &[u8]>, tenant: Option<&str>) -> Result<Vec<T>, FabricError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(table).map_err(storage)?;
        let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(fabric_proto::decode::<T>(v.value()).map_err(storage)?);
        }
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

    fn join<'a>(&'a self, host: &'a HostInfo, ttl: Duration) -> BoxFuture<'a, Result<LeaseId, FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            let lease = members.next_lease;
            members.next_lease += 1;
            members.leases.insert(lease, (ttl, Instant::now() + ttl));
            members.hosts.insert(host.id.clone(), (host.clone(), lease));
            let _ = members.events.send(MemberEvent::Put(host.clone()));
            Ok(lease)
        })
    }

    fn report<'a>(&'a self, host: &'a HostInfo, lease: LeaseId) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            if !members.live(lease) {
                return Err(lease_gone(lease));
            }
            members.hosts.insert(host.id.clone(), (host.clone(), lease));
            let _ = members.events.send(MemberEvent::Put(host.clone()));
            Ok(())
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            if !members.live(lease) {
                return Ok(false);
            }
            if let Some((ttl, deadline)) = members.leases.get_mut(&lease) {
                *deadline = Instant::now() + *ttl;
            }
            Ok(true)
        })
    }

    fn leave(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), FabricError>> {
        Box::pin(async move {
            self.members_lock().end_lease(lease);
            Ok(())
        })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<HostInfo>, FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            members.expire(Instant::now());
            Ok(members.hosts.values().map(|(info, _)| info.clone()).collect())
        })
    }

    fn watch_members(&self) -> BoxFuture<'_, Result<MemberWatch, FabricError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(256);
            let (current, mut events) = {
                let mut members = self.members_lock();
                members.expire(Instant::now());
                let current: Vec<HostInfo> = members.hosts.values().map(|(info, _)| info.clone()).collect();
                (current, members.events.subscribe())
            };
            let _ = tx.send(Ok(MemberEvent::Reset(current))).await;
            let members = Arc::downgrade(&self.members);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    let event = tokio::select! {
                        event = events.recv() => event,
                        _ = tick.tick() => {
                            let Some(members) = members.upgrade() else { return };
                            members.lock().unwrap_or_else(|p| p.into_inner()).expire(Instant::now());
                            continue;
                        }
                    };
                    let forwarded = match event {
                        Ok(event) => tx.send(Ok(event)).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(FabricError::new(ErrorKind::Unavailable, "watch fell behind"))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if forwarded.is_err() {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn put_actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        location: &'a ActorLocation,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            if !members.live(lease) {
                return Err(lease_gone(lease));
            }
            members.actors.insert((tenant.to_string(), name.to_string()), (location.clone(), lease));
            Ok(())
        })
    }

    fn actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActorLocation>, FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            members.expire(Instant::now());
            Ok(members.actors.get(&(tenant.to_string(), name.to_string())).map(|(l, _)| l.clone()))
        })
    }

    fn remove_actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        location: &'a ActorLocation,
    ) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            let mut members = self.members_lock();
            let key = (tenant.to_string(), name.to_string());
            if members.actors.get(&key).is_some_and(|(l, _)| l == location) {
                members.actors.remove(&key);
            }
            Ok(())
        })
    }

    fn mark_running<'a>(
        &'a self,
        host: &'a str,
        tenant: &'a str,
        job: &'a str,
    ) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            self.members_lock().running.insert((host.into(), tenant.into(), job.into()));
            Ok(())
        })
    }

    fn clear_running<'a>(
        &'a self,
        host: &'a str,
        tenant: &'a str,
        job: &'a str,
    ) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            self.members_lock().running.remove(&(host.into(), tenant.into(), job.into()));
            Ok(())
        })
    }

    fn running_on<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>, FabricError>> {
        Box::pin(async move {
            let members = self.members_lock();
            Ok(members.running.iter().filter(|(h, _, _)| h == host).map(|(_, t, j)| (t.clone(), j.clone())).collect())
        })
    }

    fn put_deployment<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Deployment, FabricError>> {
        Box::pin(async move {
            // One write transaction: the route check and the version bump
            // see no concurrent deploy.
            let txn = self.db.begin_write().map_err(storage)?;
            let recorded = {
                let mut table = txn.open_table(DEPLOYMENTS).map_err(storage)?;
                let own = key(&deployment.tenant, &deployment.spec.name);
                let previous = match table.get(own.as_str()).map_err(storage)? {
                    Some(v) => Some(fabric_proto::decode::<Deployment>(v.value()).map_err(storage)?),
                    None => None,
                };
                let previous_route = previous.as_ref().and_then(|p| p.spec.route.as_deref());
                for entry in table.iter().map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    if k.value() == own {
                        continue;
                    }
                    let other: Deployment = fabric_proto::decode(v.value()).map_err(storage)?;
                    if let Some(held) = &other.spec.route {
                        if let Some(conflict) = route_conflict(deployment, previous_route, held, &route_owner(&other)) {
                            return Err(conflict);
                        }
                    }
                }
                let previous = previous.map_or(0, |p| p.version);
                let mut recorded = deployment.clone();
                recorded.version = previous + 1;
                let value = fabric_proto::encode(&recorded).map_err(storage)?;
                table.insert(own.as_str(), value.as_slice()).map_err(storage)?;
                recorded
            };
            txn.commit().map_err(storage)?;
            Ok(recorded)
        })
    }

    fn deployments<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Deployment>, FabricError>> {
        Box::pin(async move { self.records_of(DEPLOYMENTS, tenant) })
    }

    fn remove_deployment<'a>(&'a self, tenant: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, FabricError>> {
        Box::pin(async move {
            let txn = self.db.begin_write().map_err(storage)?;
            let removed = {
                let mut table = txn.open_table(DEPLOYMENTS).map_err(storage)?;
                let removed = table.remove(key(tenant, name).as_str()).map_err(storage)?.is_some();
                removed
            };
            txn.commit().map_err(storage)?;
            Ok(removed)
        })
    }

    fn cluster_ca<'a>(&'a self, proposal: &'a CaPem) -> BoxFuture<'a, Result<CaPem, FabricError>> {
        Box::pin(async move {
            let txn = self.db.begin_write().map_err(storage)?;
            let ca = {
                let mut table = txn.open_table(META).map_err(storage)?;
                let cert = table.get("ca.cert").map_err(storage)?.map(|v| v.value().to_string());
                let key = table.get("ca.key").map_err(storage)?.map(|v| v.value().to_string());
                match (cert, key) {
                    (Some(cert), Some(key)) => CaPem { cert, key },
                    _ => {
                        table.insert("ca.cert", proposal.cert.as_str()).map_err(storage)?;
                        table.insert("ca.key", proposal.key.as_str()).map_err(storage)?;
                        proposal.clone()
                    }
                }
            };
            txn.commit().map_err(storage)?;
            Ok(ca)
        })
    }

    fn ca_cert(&self) -> BoxFuture<'_, Result<Option<String>, FabricError>> {
        Box::pin(async move {
            let txn = self.db.begin_read().map_err(storage)?;
            let table = txn.open_table(META).map_err(storage)?;
            Ok(table.get("ca.cert").map_err(storage)?.map(|v| v.value().to_string()))
        })
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

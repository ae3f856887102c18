//! The etcd registry: records under `/fabric/` in etcd's v3 key space,
//! shared by every host of a cluster.
//!
//! Keys: `/fabric/jobs/<tenant>/<id>`, `/fabric/hosts/<id>` (attached to
//! the member's lease, so etcd deletes it when the lease expires),
//! `/fabric/deployments/<tenant>/<name>` with `/fabric/routes/<hex route>`
//! naming the deployment that holds each route (a deploy reads every route
//! key and writes only if none that could conflict changed since: its own,
//! those of the routes above it, and the range of those under it, compared
//! in its transaction; that is what keeps routes unique and tenants'
//! routes apart), and
//! `/fabric/ca/{cert,key}`. Values are rkyv archives of the protocol's
//! records, validated when read, as in the embedded backend. The client is
//! cloned per call (it is a cheap handle over one channel, which reconnects
//! by itself when etcd comes back).

use super::{route_conflict, route_owner, sort_newest_first, BoxFuture, CaPem, LeaseId, MemberWatch, Registry};
use crate::cluster::view::MemberEvent;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use fabric_proto::{ActorLocation, Deployment, ErrorKind, FabricError, HostInfo, JobRecord};
use std::time::Duration;
use tokio::sync::mpsc;

/// Where fabric's keys live.
const ROOT: &str = "/fabric";

/// An etcd-backed registry.
pub struct Etcd {
    client: Client,
}

fn unavailable(e: impl std::fmt::Display) -> FabricError {
    FabricError::new(ErrorKind::Unavailable, format!("etcd: {e}"))
}

fn job_key(tenant: &str, id: &str) -> String {
    format!("{ROOT}/jobs/{tenant}/{id}")
}

const HOSTS: &str = "/fabric/hosts/";

fn running_key(host: &str, tenant: &str, job: &str) -> String {
    format!("{ROOT}/running/{host}/{tenant}/{job}")
}

fn actor_key(tenant: &str, name: &str) -> String {
    format!("{ROOT}/actors/{tenant}/{name}")
}
fn deployment_key(tenant: &str, name: &str) -> String {
    format!("{ROOT}/deployments/{tenant}/{name}")
}

/// Where route keys live: `ROUTES` then the route in hex.
const ROUTES: &str = "/fabric/routes/";

fn route_key(route: &str) -> String {
    format!("{ROUTES}{}", hex::encode(route))
}

/// What a deploy of `route` that read the route keys at `revision` must
/// find unchanged: the keys of the routes it lies under and its own, and
/// the range of the routes under it (hex keeps prefixes). Any route that
/// could conflict with it is among them; deploys elsewhere do not touch
/// them.
fn conflict_compares(route: &str, revision: i64) -> Vec<Compare> {
    let unchanged = |key: String| Compare::mod_revision(key, CompareOp::Less, revision + 1);
    let mut compares: Vec<Compare> =
        super::routes_above(route).into_iter().map(|above| unchanged(route_key(above))).collect();
    compares.push(unchanged(route_key(route)));
    let under = if route == "/" { route_key(route) } else { route_key(&format!("{route}/")) };
    compares.push(unchanged(under).with_prefix());
    compares
}

/// The route a route key names (`None` for a key no host wrote).
fn route_of_key(key: &[u8]) -> Option<String> {
    let hex = key.strip_prefix(ROUTES.as_bytes())?;
    String::from_utf8(hex::decode(hex).ok()?).ok()
}

/// Transactions a deploy retries when another deploy of the same name or
/// route wins the race.
const DEPLOY_ATTEMPTS: usize = 8;

const CA_CERT: &str = "/fabric/ca/cert";
const CA_KEY: &str = "/fabric/ca/key";

fn decode_host(bytes: &[u8]) -> Result<HostInfo, FabricError> {
    fabric_proto::decode(bytes).map_err(|e| unavailable(format!("malformed member record: {e}")))
}

/// Reads a member list and the revision it was read at.
async fn list_members(client: &mut Client) -> Result<(Vec<HostInfo>, i64), FabricError> {
    let response = client.get(HOSTS, Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
    let revision = response.header().map(|h| h.revision()).unwrap_or(0);
    let mut hosts = Vec::new();
    for kv in response.kvs() {
        match decode_host(kv.value()) {
            Ok(host) => hosts.push(host),
            Err(e) => tracing::warn!("skipping {}: {e}", String::from_utf8_lossy(kv.key())),
        }
    }
    Ok((hosts, revision))
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

fn string_at(response: &etcd_client::GetResponse) -> Option<String> {
    response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

impl Etcd {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, FabricError> {
        if endpoints.is_empty() {
            return Err(FabricError::new(ErrorKind::InvalidArgument, "no etcd endpoints given"));
        }
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(format!("cannot connect to {}: {e}", endpoints.join(","))))?;
        // Fail now, not on the first job, if nobody answers.
        client.status().await.map_err(|e| unavailable(format!("{} does not answer: {e}", endpoints.join(","))))?;
        Ok(Etcd { client })
    }
}

impl Etcd {
    /// Archives `value` and writes it at `key` (under `lease`, if any).
    async fn put_archived<T>(&self, key: String, value: &T, lease: Option<LeaseId>) -> Result<(), FabricError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let bytes = fabric_proto::encode(value).map_err(unavailable)?;
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        self.client.clone().put(key, bytes, options).await.map_err(unavailable)?;
        Ok(())
    }

    /// Reads the archive at `key`, validated.
    async fn get_archived<T>(&self, key: String) -> Result<Option<T>, FabricError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let response = self.client.clone().get(key, None).await.map_err(unavailable)?;
        match response.kvs().first() {
            Some(kv) => fabric_proto::decode(kv.value()).map(Some).map_err(unavailable),
            None => Ok(None),
        }
    }

    /// Connects, retrying for up to `wait` while etcd does not answer (a
    /// host may start before its etcd).
    pub async fn connect_waiting(endpoints: &[String], wait: Duration) -> Result<Self, FabricError> {
        let deadline = std::time::Instant::now() + wait;
        let mut warned = false;
        loop {
            match Self::connect(endpoints).await {
                Err(e) if e.kind == ErrorKind::Unavailable && std::time::Instant::now() < deadline => {
                    if !warned {
                        eprintln!("fabric: waiting up to {wait:?} for etcd at {}", endpoints.join(","));
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                outcome => return outcome,
            }
        }
    }
}

impl Registry for Etcd {
    fn put_job<'a>(&'a self, record: &'a JobRecord) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(self.put_archived(job_key(&record.tenant, &record.id), record, None))
    }

    fn job<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, FabricError>> {
        Box::pin(self.get_archived(job_key(tenant, id)))
    }

    fn jobs<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<JobRecord>, FabricError>> {
        Box::pin(async move {
            let prefix = match tenant {
                Some(tenant) => format!("{ROOT}/jobs/{tenant}/"),
                None => format!("{ROOT}/jobs/"),
            };
            let mut client = self.client.clone();
            let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
            let mut jobs = response
                .kvs()
                .iter()
                .map(|kv| fabric_proto::decode::<JobRecord>(kv.value()).map_err(unavailable))
                .collect::<Result<Vec<_>, _>>()?;
            sort_newest_first(&mut jobs);
            Ok(jobs)
        })
    }

    fn join<'a>(&'a self, host: &'a HostInfo, ttl: Duration) -> BoxFuture<'a, Result<LeaseId, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
            let lease = client.lease_grant(seconds, None).await.map_err(unavailable)?.id();
            self.put_archived(format!("{HOSTS}{}", host.id), host, Some(lease)).await?;
            Ok(lease)
        })
    }

    fn report<'a>(&'a self, host: &'a HostInfo, lease: LeaseId) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(self.put_archived(format!("{HOSTS}{}", host.id), host, Some(lease)))
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let renewal = async {
                let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                stream.message().await
            };
            match renewal.await {
                Ok(Some(response)) => Ok(response.ttl() > 0),
                Ok(None) => Err(unavailable("the keep-alive stream ended")),
                // Newer etcd answers an expired lease with an error, older with TTL 0.
                Err(e) if lease_not_found(&e) => Ok(false),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn leave(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            match client.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // Already expired: the record is gone either way.
                Err(e) if lease_not_found(&e) => Ok(()),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<HostInfo>, FabricError>> {
        Box::pin(async move { Ok(list_members(&mut self.client.clone()).await?.0) })
    }

    fn watch_members(&self) -> BoxFuture<'_, Result<MemberWatch, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let (current, revision) = list_members(&mut client).await?;
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut stream = client.watch(HOSTS, Some(options)).await.map_err(unavailable)?;
            let (tx, rx) = mpsc::channel(256);
            let _ = tx.send(Ok(MemberEvent::Reset(current))).await;
            tokio::spawn(async move {
                loop {
                    let response = match stream.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            let _ = tx.send(Err(unavailable("the membership watch ended"))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(unavailable(e))).await;
                            return;
                        }
                    };
                    if response.canceled() {
                        let _ =
                            tx.send(Err(unavailable(format!("watch cancelled: {}", response.cancel_reason())))).await;
                        return;
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let id = String::from_utf8_lossy(kv.key()).trim_start_matches(HOSTS).to_string();
                        let event = match event.event_type() {
                            EventType::Delete => MemberEvent::Gone(id),
                            EventType::Put => match decode_host(kv.value()) {
                                Ok(host) => MemberEvent::Put(host),
                                Err(e) => {
                                    tracing::warn!("skipping member {id}: {e}");
                                    continue;
                                }
                            },
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
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
        Box::pin(self.put_archived(actor_key(tenant, name), location, Some(lease)))
    }

    fn actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActorLocation>, FabricError>> {
        Box::pin(self.get_archived(actor_key(tenant, name)))
    }

    fn remove_actor<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        location: &'a ActorLocation,
    ) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            let value = fabric_proto::encode(location).map_err(unavailable)?;
            let key = actor_key(tenant, name);
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, value)])
                .and_then([TxnOp::delete(key, None)]);
            self.client.clone().txn(txn).await.map_err(unavailable)?;
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
            self.client.clone().put(running_key(host, tenant, job), "", None).await.map_err(unavailable)?;
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
            self.client.clone().delete(running_key(host, tenant, job), None).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn running_on<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<(String, String)>, FabricError>> {
        Box::pin(async move {
            let prefix = format!("{ROOT}/running/{host}/");
            let options = GetOptions::new().with_prefix().with_keys_only();
            let response = self.client.clone().get(prefix.clone(), Some(options)).await.map_err(unavailable)?;
            Ok(response
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(kv.key());
                    let (tenant, job) = key.strip_prefix(&prefix)?.split_once('/')?;
                    Some((tenant.to_string(), job.to_string()))
                })
                .collect())
        })
    }

    fn put_deployment<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Deployment, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let key = deployment_key(&deployment.tenant, &deployment.spec.name);
            let owner = route_owner(deployment);
            for _ in 0..DEPLOY_ATTEMPTS {
                // Read what is there, then write only if neither the
                // deployment's key nor its route key changed meanwhile.
                let current = client.get(key.clone(), None).await.map_err(unavailable)?;
                let (previous, revision) = match current.kvs().first() {
                    Some(kv) => {
                        (Some(fabric_proto::decode::<Deployment>(kv.value()).map_err(unavailable)?), kv.mod_revision())
                    }
                    None => (None, 0),
                };
                let mut recorded = deployment.clone();
                recorded.version = previous.as_ref().map_or(0, |p| p.version) + 1;
                let value = fabric_proto::encode(&recorded).map_err(unavailable)?;
                let mut when = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, revision)];
                let mut then = vec![TxnOp::put(key.clone(), value, None)];
                if let Some(route) = &deployment.spec.route {
                    // Every route held, read at one revision: the write goes
                    // through only if no route key changed since, so two
                    // deploys racing for the same or nested routes cannot
                    // both win.
                    let options = GetOptions::new().with_prefix();
                    let held = client.get(ROUTES, Some(options)).await.map_err(unavailable)?;
                    let previous_route = previous.as_ref().and_then(|p| p.spec.route.as_deref());
                    let mut ours = false;
                    for kv in held.kvs() {
                        let Some(other) = route_of_key(kv.key()) else { continue };
                        let holder = String::from_utf8_lossy(kv.value());
                        if let Some(conflict) = route_conflict(deployment, previous_route, &other, &holder) {
                            return Err(conflict);
                        }
                        ours |= other == *route && holder == owner;
                    }
                    let revision = held.header().map_or(0, |header| header.revision());
                    when.extend(conflict_compares(route, revision));
                    if !ours {
                        then.push(TxnOp::put(route_key(route), owner.clone(), None));
                    }
                }
                // A redeploy that moves to another route frees the old one.
                if let Some(old) = previous.as_ref().and_then(|p| p.spec.route.clone()) {
                    if Some(&old) != deployment.spec.route.as_ref() {
                        then.push(TxnOp::delete(route_key(&old), None));
                    }
                }
                let txn = Txn::new().when(when).and_then(then);
                if client.txn(txn).await.map_err(unavailable)?.succeeded() {
                    return Ok(recorded);
                }
                // Another deploy of the same name or a route in the way won:
                // read again after a moment, racers staggered.
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 20)).await;
            }
            Err(unavailable(format!("deployment {owner}: too many concurrent deploys, try again")))
        })
    }

    fn deployments<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Deployment>, FabricError>> {
        Box::pin(async move {
            let prefix = match tenant {
                Some(tenant) => format!("{ROOT}/deployments/{tenant}/"),
                None => format!("{ROOT}/deployments/"),
            };
            let options =
                GetOptions::new().with_prefix().with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
            let response = self.client.clone().get(prefix, Some(options)).await.map_err(unavailable)?;
            response
                .kvs()
                .iter()
                .map(|kv| fabric_proto::decode::<Deployment>(kv.value()).map_err(unavailable))
                .collect()
        })
    }

    fn remove_deployment<'a>(&'a self, tenant: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let key = deployment_key(tenant, name);
            for _ in 0..DEPLOY_ATTEMPTS {
                let current = client.get(key.clone(), None).await.map_err(unavailable)?;
                let Some(kv) = current.kvs().first() else { return Ok(false) };
                let deployment: Deployment = fabric_proto::decode(kv.value()).map_err(unavailable)?;
                // Delete only what was read: a concurrent redeploy wins.
                let mut when = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())];
                let mut then = vec![TxnOp::delete(key.clone(), None)];
                if let Some(route) = &deployment.spec.route {
                    // The route key goes only if it is still this deployment's.
                    let owner = route_owner(&deployment);
                    let held = client.get(route_key(route), None).await.map_err(unavailable)?;
                    if let Some(held) = held.kvs().first().filter(|kv| kv.value() == owner.as_bytes()) {
                        when.push(Compare::mod_revision(route_key(route), CompareOp::Equal, held.mod_revision()));
                        then.push(TxnOp::delete(route_key(route), None));
                    }
                }
                if client.txn(Txn::new().when(when).and_then(then)).await.map_err(unavailable)?.succeeded() {
                    return Ok(true);
                }
            }
            Err(unavailable(format!("deployment {tenant}/{name}: too many concurrent changes, try again")))
        })
    }

    fn cluster_ca<'a>(&'a self, proposal: &'a CaPem) -> BoxFuture<'a, Result<CaPem, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            // Create both keys only if no CA exists; either way read back the
            // winner, so racing first hosts agree.
            let txn = Txn::new().when([Compare::version(CA_CERT, CompareOp::Equal, 0)]).and_then([
                TxnOp::put(CA_CERT, proposal.cert.clone(), None),
                TxnOp::put(CA_KEY, proposal.key.clone(), None),
            ]);
            client.txn(txn).await.map_err(unavailable)?;
            let cert = string_at(&client.get(CA_CERT, None).await.map_err(unavailable)?);
            let key = string_at(&client.get(CA_KEY, None).await.map_err(unavailable)?);
            match (cert, key) {
                (Some(cert), Some(key)) => Ok(CaPem { cert, key }),
                _ => Err(unavailable("the cluster CA is incomplete in etcd")),
            }
        })
    }

    fn ca_cert(&self) -> BoxFuture<'_, Result<Option<String>, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            Ok(string_at(&client.get(CA_CERT, None).await.map_err(unavailable)?))
        })
    }
}

//! Deployments: components served over HTTP by every host's gateway.
//!
//! - A deployment is a record in the registry (`tenant`, `name`, version,
//!   route, scaling and limits). Every host keeps the same table of them:
//!   it reads the registry every [`SYNC_EVERY`] (and at once after a deploy
//!   through itself), so any host serves any deployment's route, with no
//!   ingress node. Routes are unique in the cluster (the registry refuses a
//!   second deployment on a route), and one tenant's routes never nest in
//!   another's (the longest route wins, so a nested route would take the
//!   other tenant's requests: see `registry::route_conflict`).
//! - On each host a deployment version runs as [`Deployed`]: its loaded
//!   component (fetched from the host it was deployed through if this one
//!   lacks it), its [`replicas::Replicas`] (the gate, the queue and the idle
//!   instances) scaled by [`scaler`], and a log for its instances' output.
//! - Where replicas run: a deployment may demand resources per replica,
//!   a pool and labels (`--resources gpu=1`). A host that cannot meet the
//!   demand runs none (its *cap* is zero) and its gateway forwards the
//!   deployment's requests; one that can runs at most `max`, fewer when its
//!   capacity holds fewer replicas' worth ([`replica_cap`]). A request holds
//!   the demanded resources (but `cpu`) while it runs, so replicas and tasks
//!   never oversubscribe a GPU between them.
//! - A redeploy is a rolling update with nothing dropped: the new version
//!   is readied first (component loaded, `min` instances started), then the
//!   table switches to it in one step; requests already holding the old
//!   version finish on it, and its instances go when the last one ends.

pub mod replicas;
pub mod scaler;

use crate::cluster::placement::{amount, can_host, could_host, format_resources};
use crate::components::LoadedComponent;
use crate::joblog::JobLog;
use crate::HostInner;
use fabric_proto::{Demand, Deployment, DeploymentKind, DeploymentSpec, ErrorKind, FabricError, HostInfo};
use replicas::{HttpInstance, Replicas};
use scaler::ScalePolicy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// How often a host reads the deployments from the registry.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// How often autoscalers look at their load.
pub const TICK_EVERY: Duration = Duration::from_millis(100);

/// Replicas per host at most (each holds a pooling-allocator slot).
pub const MAX_REPLICAS: u32 = 1024;

/// Requests in one batch at most.
pub const MAX_BATCH: u32 = 4096;

/// Milliseconds a batch waits for more requests at most.
pub const MAX_BATCH_WAIT_MS: u64 = 60_000;

/// Requests waiting per replica at most, beyond which the gateway answers 429.
const QUEUE_PER_REPLICA: u32 = 64;

/// Defaults `fabric deploy` fills in.
pub mod defaults {
    /// Replicas kept warm per host.
    pub const MIN: u32 = 1;
    /// Replicas per host at most.
    pub const MAX: u32 = 64;
    /// Requests per replica aimed for.
    pub const TARGET_CONCURRENCY: u32 = 1;
    /// Milliseconds of lower load before replicas go.
    pub const SCALE_DOWN_DELAY_MS: u64 = 30_000;
    /// Largest request body, bytes.
    pub const MAX_BODY_BYTES: u64 = 16 << 20;
    /// Request timeout, milliseconds.
    pub const TIMEOUT_MS: u64 = 30_000;
    /// Memory cap per instance, bytes.
    pub const MEMORY_BYTES: u64 = 256 << 20;
}

/// One version of a deployment, running on this host.
pub struct Deployed {
    /// Its record.
    pub record: Deployment,
    /// Its component.
    pub component: Arc<LoadedComponent>,
    /// Its replicas here.
    pub replicas: Arc<Replicas>,
    /// Where its instances' stdout and stderr go.
    pub log: Arc<JobLog>,
    /// Replicas this host may run (0: it forwards every request).
    pub cap: u32,
    /// The request batches it is gathering (when it batches).
    pub batcher: crate::gateway::batch::Batcher,
}

/// How many replicas of `spec` the host `info` may run: none when it cannot
/// meet the demand (pool, labels, capacity), else `max`, fewer when its
/// capacity holds fewer replicas' worth of a demanded resource.
pub fn replica_cap(spec: &DeploymentSpec, info: &HostInfo) -> u32 {
    if !can_host(info, &spec.demand) {
        return 0;
    }
    spec.demand.resources.iter().filter(|r| r.amount > 0).fold(spec.max, |cap, need| {
        let fits = amount(&info.capacity, &need.name) / need.amount;
        cap.min(u32::try_from(fits).unwrap_or(u32::MAX))
    })
}

/// `gpu=1, pool gpus, label zone=a`, for messages.
pub fn describe_demand(demand: &Demand) -> String {
    let mut parts = Vec::new();
    let resources: Vec<_> = demand.resources.iter().filter(|r| r.amount > 0).cloned().collect();
    if !resources.is_empty() {
        parts.push(format_resources(&resources));
    }
    if let Some(pool) = &demand.pool {
        parts.push(format!("pool `{pool}`"));
    }
    parts.extend(demand.labels.iter().map(|l| format!("label {}={}", l.key, l.value)));
    if parts.is_empty() {
        "nothing special".into()
    } else {
        parts.join(", ")
    }
}

impl Deployed {
    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.record.spec.limits.timeout_ms.unwrap_or(defaults::TIMEOUT_MS))
    }

    /// The CPU budget of one request (the timeout when unset).
    pub fn cpu(&self) -> Duration {
        self.record.spec.limits.cpu_ms.map(Duration::from_millis).unwrap_or_else(|| self.timeout())
    }

    /// The memory cap of one instance.
    pub fn memory_bytes(&self) -> u64 {
        self.record.spec.limits.memory_bytes.unwrap_or(defaults::MEMORY_BYTES)
    }

    /// A new instance of a `wasi:http` deployment.
    pub async fn instantiate(&self, host: &HostInner) -> Result<HttpInstance, FabricError> {
        let crate::components::World::Http(pre) = &self.component.world else {
            return Err(FabricError::new(ErrorKind::Internal, "not a wasi:http component"));
        };
        let mut store = crate::runtime::new_store(host, self.memory_bytes(), self.cpu());
        store.data_mut().stdout.attach(self.log.clone());
        store.data_mut().stderr.attach(self.log.clone());
        let proxy = pre.instantiate_async(&mut store).await.map_err(|e| {
            FabricError::new(ErrorKind::Unavailable, format!("cannot start an instance of {}: {e:#}", self.describe()))
        })?;
        Ok(HttpInstance::new(store, proxy))
    }

    /// `tenant/name@vN`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}@v{}", self.record.tenant, self.record.spec.name, self.record.version)
    }
}

#[derive(Default)]
struct Table {
    by_name: HashMap<(String, String), Arc<Deployed>>,
    /// Longest route first, so the first prefix that matches wins.
    routes: Vec<(String, Arc<Deployed>)>,
}

/// The deployments this host serves.
#[derive(Default)]
pub struct Deployments {
    table: RwLock<Arc<Table>>,
    /// One reconciliation at a time; when the last one began, and how it
    /// ended.
    syncing: tokio::sync::Mutex<Option<(Instant, Result<(), FabricError>)>>,
    /// Versions that failed to start here (each is logged once).
    failed: Mutex<HashMap<(String, String), u64>>,
}

/// Whether `route` serves `path`: the same, or a prefix ending at a `/`.
pub(crate) fn route_serves(route: &str, path: &str) -> bool {
    route == "/"
        || path == route
        || (path.starts_with(route) && (route.ends_with('/') || path.as_bytes().get(route.len()) == Some(&b'/')))
}

impl Deployments {
    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failed(&self) -> MutexGuard<'_, HashMap<(String, String), u64>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deployment whose route serves `path`, longest route first.
    pub fn route(&self, path: &str) -> Option<Arc<Deployed>> {
        self.table().routes.iter().find(|(route, _)| route_serves(route, path)).map(|(_, d)| d.clone())
    }

    /// The deployment `name` of `tenant`.
    pub fn named(&self, tenant: &str, name: &str) -> Option<Arc<Deployed>> {
        self.table().by_name.get(&(tenant.to_string(), name.to_string())).cloned()
    }

    /// Every deployment served here (of `tenant`).
    pub fn of(&self, tenant: &str) -> Vec<Arc<Deployed>> {
        let mut all: Vec<_> = self.table().by_name.values().filter(|d| d.record.tenant == tenant).cloned().collect();
        all.sort_by(|a, b| a.record.spec.name.cmp(&b.record.spec.name));
        all
    }

    /// Lets every autoscaler observe its load; tears down idle instances
    /// they no longer want.
    pub fn tick(&self, host: &HostInner, now: Instant) {
        for deployed in self.table().by_name.values() {
            for instance in deployed.replicas.tick(now) {
                host.instances.reap(Box::new(instance));
            }
        }
    }
}

/// Least time between two syncs that requests naming a deployment this host
/// does not know make ([`sync_after`]).
pub const ON_DEMAND_GAP: Duration = Duration::from_millis(100);

/// Brings this host's table in line with the registry: starts versions it
/// lacks (readied before they are switched to), drops removed ones.
pub async fn sync(host: &Arc<HostInner>) -> Result<(), FabricError> {
    let mut last = host.deployments.syncing.lock().await;
    sync_locked(host, &mut last).await
}

/// How long a deploy or undeploy waits for the other hosts to read it (a
/// host that lacks the component fetches and compiles it first).
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// Tells every other member the deployments changed and waits (at most
/// [`ANNOUNCE_WAIT`]) until each serves what it read: a deploy or undeploy
/// returns once every host routes as it says, rather than within
/// [`SYNC_EVERY`], so a request sent to any host right after it is served
/// by the new version (or 404 after an undeploy). A host that does not
/// answer in time catches up at its next sync.
pub async fn announce(host: &Arc<HostInner>) {
    let me = host.local_info();
    let others = host.cluster.members(&me).into_iter().filter(|member| member.id != me.id);
    let asks = others.map(|member| async move {
        let request = fabric_proto::Request::PeerDeploymentsChanged;
        match tokio::time::timeout(ANNOUNCE_WAIT, host.peers.ask(&member.addr, &request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot tell {} the deployments changed: {}", member.addr, e.into_error()),
            Err(_) => tracing::warn!("{} did not read the deployments within {ANNOUNCE_WAIT:?}", member.addr),
        }
    });
    futures_util::future::join_all(asks).await;
}

/// Syncs for a request that named a deployment this host did not know at
/// `asked`, unless a sync begun since then ran (it saw every deployment
/// recorded before the request was sent, so another adds nothing).
/// Such syncs are [`ON_DEMAND_GAP`] apart: a stream of requests naming a
/// deployment that exists nowhere (a peer's stale table, a client guessing)
/// costs the registry one read per gap, not one per request, and a request
/// for a deployment made a moment ago waits for the next one rather than
/// being refused.
/// A sync that failed answers the requests that waited for it with its
/// error.
pub async fn sync_after(host: &Arc<HostInner>, asked: Instant) -> Result<(), FabricError> {
    loop {
        let mut last = host.deployments.syncing.lock().await;
        match on_demand(last.as_ref().map(|(began, _)| *began), asked, Instant::now()) {
            OnDemand::Synced => return last.as_ref().map_or(Ok(()), |(_, outcome)| outcome.clone()),
            OnDemand::WaitUntil(when) => {
                drop(last);
                tokio::time::sleep_until(when.into()).await;
            }
            OnDemand::Sync => return sync_locked(host, &mut last).await,
        }
    }
}

/// What a request for an unknown deployment does about syncing.
#[derive(Debug, PartialEq, Eq)]
enum OnDemand {
    /// Nothing: a sync began after it was asked.
    Synced,
    /// Waits for the gap since the last sync to pass, then looks again.
    WaitUntil(Instant),
    /// Syncs now.
    Sync,
}

/// [`sync_after`]'s choice at `now`, the last sync having begun at `last`.
fn on_demand(last: Option<Instant>, asked: Instant, now: Instant) -> OnDemand {
    match last {
        Some(began) if began >= asked => OnDemand::Synced,
        Some(began) if now < began + ON_DEMAND_GAP => OnDemand::WaitUntil(began + ON_DEMAND_GAP),
        _ => OnDemand::Sync,
    }
}

/// [`sync`] under the sync lock, whose `last` it sets to when it began and
/// how it ended.
async fn sync_locked(
    host: &Arc<HostInner>,
    last: &mut Option<(Instant, Result<(), FabricError>)>,
) -> Result<(), FabricError> {
    let began = Instant::now();
    let outcome = reconcile(host).await;
    *last = Some((began, outcome.clone()));
    outcome
}

/// The work of [`sync`].
async fn reconcile(host: &Arc<HostInner>) -> Result<(), FabricError> {
    let deployments = &host.deployments;
    let records = host.registry.deployments(None).await?;
    let current = deployments.table();
    let mut next = Table::default();
    for record in records {
        let key = (record.tenant.clone(), record.spec.name.clone());
        // The whole record, not just the version: versions start again at 1
        // after an undeploy, which a host may not have seen between syncs.
        let running = current.by_name.get(&key).filter(|d| d.record == record).cloned();
        let deployed = match running {
            Some(deployed) => deployed,
            None => match start(host, record.clone()).await {
                Ok(deployed) => {
                    deployments.failed().remove(&key);
                    deployed
                }
                Err(e) => {
                    // Tried again at every sync (the host it comes from may
                    // be back), but said once per version.
                    if deployments.failed().insert(key.clone(), record.version) != Some(record.version) {
                        tracing::warn!("cannot start deployment {}/{} v{}: {e}", key.0, key.1, record.version);
                    }
                    // Keep serving the version that works, if any.
                    match current.by_name.get(&key) {
                        Some(old) => old.clone(),
                        None => continue,
                    }
                }
            },
        };
        next.by_name.insert(key, deployed);
    }
    next.routes = routes_of(&next.by_name);
    *deployments.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    Ok(())
}

/// Readies `record` before it is recorded, so that a component that cannot
/// start (it traps at start, or exceeds its memory cap) is refused before
/// the registry has it; what [`install`] serves once it is recorded.
pub async fn trial(host: &Arc<HostInner>, record: &Deployment) -> Result<Arc<Deployed>, FabricError> {
    let deployed = start(host, record.clone()).await?;
    if deployed.record.kind == DeploymentKind::Http && deployed.record.spec.min.min(deployed.cap) == 0 {
        // No warm instance was started: start one to see that it can.
        host.instances.reap(Box::new(deployed.instantiate(host).await?));
    }
    Ok(deployed)
}

/// Lets a trialled version go without serving it (its record was refused).
pub fn discard(host: &HostInner, trialled: Arc<Deployed>) {
    for instance in trialled.replicas.drain_idle() {
        host.instances.reap(Box::new(instance));
    }
}

/// Serves `trialled` at once as `recorded` (the version the registry gave
/// it: its component and warm instances are ready, so this host does not
/// start it a second time), then brings the rest of the table in line.
pub async fn install(host: &Arc<HostInner>, trialled: Arc<Deployed>, recorded: Deployment) -> Result<(), FabricError> {
    {
        let deployments = &host.deployments;
        let _one = deployments.syncing.lock().await;
        let key = (recorded.tenant.clone(), recorded.spec.name.clone());
        let deployed = Arc::new(Deployed {
            record: recorded,
            component: trialled.component.clone(),
            replicas: trialled.replicas.clone(),
            log: trialled.log.clone(),
            cap: trialled.cap,
            batcher: Default::default(),
        });
        let current = deployments.table();
        let mut next = Table { by_name: current.by_name.clone(), routes: Vec::new() };
        next.by_name.insert(key, deployed);
        next.routes = routes_of(&next.by_name);
        *deployments.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }
    // The version serves already; the rest of the table catches up at the
    // next periodic sync if the registry cannot be read now.
    if let Err(e) = sync(host).await {
        tracing::warn!("cannot read the deployments after a deploy (the next sync will): {e}");
    }
    Ok(())
}

/// The route table of `by_name`, longest route first.
fn routes_of(by_name: &HashMap<(String, String), Arc<Deployed>>) -> Vec<(String, Arc<Deployed>)> {
    let mut routes: Vec<_> =
        by_name.values().filter_map(|d| d.record.spec.route.clone().map(|route| (route, d.clone()))).collect();
    routes.sort_by_key(|route| std::cmp::Reverse(route.0.len()));
    routes
}

/// Readies one version: its component here, `min` warm instances.
async fn start(host: &Arc<HostInner>, record: Deployment) -> Result<Arc<Deployed>, FabricError> {
    let spec = &record.spec;
    let component = crate::remote::component_from(host, &record.tenant, &spec.component, &record.origin).await?;
    let cap = replica_cap(spec, &host.local_info());
    let policy = ScalePolicy {
        min: spec.min.min(cap),
        max: cap,
        target: spec.target_concurrency,
        down_delay: Duration::from_millis(spec.scale_down_delay_ms),
    };
    let replicas = Replicas::new(policy, cap.saturating_mul(QUEUE_PER_REPLICA).max(1), !spec.isolate);
    let log = JobLog::ring(host.config.echo_logs);
    let deployed = Arc::new(Deployed { record, component, replicas, log, cap, batcher: Default::default() });
    if deployed.record.kind == DeploymentKind::Http && !deployed.record.spec.isolate {
        for _ in 0..deployed.record.spec.min.min(cap) {
            deployed.replicas.add_idle(deployed.instantiate(host).await?);
        }
    }
    Ok(deployed)
}

/// Checks a deployment request, filling in what only the host knows.
pub fn validate(spec: &DeploymentSpec, component: &LoadedComponent) -> Result<DeploymentKind, FabricError> {
    let invalid = |m: String| Err(FabricError::new(ErrorKind::InvalidArgument, m));
    crate::validate_name("deployment name", &spec.name)?;
    let kind = component.kind();
    match (&spec.route, kind) {
        (None, DeploymentKind::Http) => {
            return invalid(format!(
                "deployment {} is a wasi:http component: give it a route (`--route /{}`)",
                spec.name, spec.name
            ))
        }
        (Some(_), DeploymentKind::Tasks) => {
            return invalid(format!(
                "deployment {} is a task component, called as POST /v1/call/{}/<function>: it takes no route \
                 (routes are for wasi:http components)",
                spec.name, spec.name
            ))
        }
        (Some(route), DeploymentKind::Http) => validate_route(route)?,
        (None, DeploymentKind::Tasks) => {}
    }
    if spec.max == 0 {
        return invalid("--max must be at least 1".into());
    }
    if spec.min > spec.max {
        return invalid(format!("--min ({}) is above --max ({})", spec.min, spec.max));
    }
    if spec.target_concurrency == 0 {
        return invalid("--target-concurrency must be at least 1".into());
    }
    if spec.limits.timeout_ms == Some(0) || spec.limits.cpu_ms == Some(0) || spec.limits.memory_bytes == Some(0) {
        return invalid("a timeout, CPU budget or memory cap of zero would refuse every request".into());
    }
    if spec.max > MAX_REPLICAS {
        return invalid(format!("--max is at most {MAX_REPLICAS} replicas per host"));
    }
    let day = 24 * 3600 * 1000;
    if spec.limits.timeout_ms.unwrap_or(0) > day || spec.limits.cpu_ms.unwrap_or(0) > day {
        return invalid("a request's timeout or CPU budget is at most a day".into());
    }
    if spec.scale_down_delay_ms > day {
        return invalid("--scale-down-delay is at most a day".into());
    }
    if let Some(batch) = &spec.batch {
        if kind != DeploymentKind::Tasks {
            return invalid("batching is for task deployments (their functions take the batch as a list)".into());
        }
        if batch.max_size == 0 || batch.max_size > MAX_BATCH {
            return invalid(format!("--max-batch-size is 1 to {MAX_BATCH}"));
        }
        if batch.max_wait_ms > MAX_BATCH_WAIT_MS {
            return invalid(format!("--batch-wait-ms is at most {MAX_BATCH_WAIT_MS}"));
        }
    }
    Ok(kind)
}

/// Refuses a deployment no member of the cluster can run a replica of.
pub fn check_placeable(spec: &DeploymentSpec, members: &[HostInfo]) -> Result<(), FabricError> {
    if members.iter().any(|member| replica_cap(spec, member) > 0) {
        return Ok(());
    }
    if members.iter().any(|m| m.draining && could_host(m, &spec.demand)) {
        return Err(FabricError::new(
            ErrorKind::Unavailable,
            format!("every host that can run a replica of {} is shutting down", spec.name),
        ));
    }
    Err(FabricError::new(
        ErrorKind::ResourceLimit,
        format!(
            "no host in the cluster can run a replica of {} (it needs {}; hosts: {})",
            spec.name,
            describe_demand(&spec.demand),
            members
                .iter()
                .map(|m| format!("{} has {}", m.id, format_resources(&m.capacity)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    ))
}

/// A route is an absolute path prefix outside the gateway's own `/v1/`.
fn validate_route(route: &str) -> Result<(), FabricError> {
    // No trailing `/` (but the root): `/api` and `/api/` would be two
    // routes to the registry yet serve the same paths.
    let ok = route.starts_with('/')
        && (route == "/" || !route.ends_with('/'))
        && route.len() <= 256
        && !route.contains("//")
        && !route.split('/').any(|seg| seg == "." || seg == "..")
        && route.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !ok {
        return Err(FabricError::new(
            ErrorKind::InvalidArgument,
            format!("invalid route `{route}`: an absolute path of letters, digits and -_.~ (like /api/hello)"),
        ));
    }
    if route == "/v1" || route.starts_with("/v1/") {
        return Err(FabricError::new(ErrorKind::InvalidArgument, "routes under /v1/ belong to the gateway itself"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_for_unknown_deployments_share_spaced_syncs() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Never synced: sync.
        assert_eq!(on_demand(None, t0, t0), OnDemand::Sync);
        // A sync that began after the request was asked saw what it names.
        assert_eq!(on_demand(Some(ms(5)), ms(3), ms(10)), OnDemand::Synced);
        assert_eq!(on_demand(Some(ms(5)), ms(5), ms(10)), OnDemand::Synced);
        // One that began before may have missed it: sync again, but not
        // sooner than the gap after it.
        assert_eq!(on_demand(Some(ms(5)), ms(6), ms(10)), OnDemand::WaitUntil(ms(5) + ON_DEMAND_GAP));
        let after_gap = ms(5) + ON_DEMAND_GAP;
        assert_eq!(on_demand(Some(ms(5)), ms(6), after_gap), OnDemand::Sync);
    }

    #[test]
    fn routes_match_whole_segments() {
        assert!(route_serves("/hello", "/hello"));
        assert!(route_serves("/hello", "/hello/world"));
        assert!(!route_serves("/hello", "/helloworld"));
        assert!(route_serves("/api", "/api/x"));
        assert!(route_serves("/", "/anything"));
        assert!(!route_serves("/hello/x", "/hello"));
    }

    fn host(capacity: &[(&str, u64)], pool: Option<&str>) -> HostInfo {
        HostInfo {
            id: "h".into(),
            addr: "127.0.0.1:1".into(),
            capacity: capacity
                .iter()
                .map(|(n, a)| fabric_proto::Resource { name: n.to_string(), amount: *a })
                .collect(),
            used: Vec::new(),
            queued: 0,
            pool: pool.map(str::to_string),
            labels: Vec::new(),
            started_ms: 0,
            draining: false,
        }
    }

    fn spec(max: u32, resources: &[(&str, u64)], pool: Option<&str>) -> DeploymentSpec {
        let demand = Demand {
            resources: resources
                .iter()
                .map(|(n, a)| fabric_proto::Resource { name: n.to_string(), amount: *a })
                .collect(),
            pool: pool.map(str::to_string),
            ..Demand::default()
        };
        DeploymentSpec {
            name: "d".into(),
            component: String::new(),
            route: None,
            min: 1,
            max,
            target_concurrency: 1,
            scale_down_delay_ms: 0,
            isolate: false,
            max_body_bytes: 1,
            limits: Default::default(),
            demand,
            batch: None,
        }
    }

    #[test]
    fn replica_caps_follow_capacity_pool_and_max() {
        let plain = host(&[("cpu", 2)], None);
        let gpus = host(&[("cpu", 2), ("gpu", 3)], Some("gpu"));
        // No demand: `max` on any host (replicas do not hold task slots).
        assert_eq!(replica_cap(&spec(64, &[], None), &plain), 64);
        // A demanded resource: none where it is missing, capacity/need elsewhere.
        assert_eq!(replica_cap(&spec(64, &[("gpu", 1)], None), &plain), 0);
        assert_eq!(replica_cap(&spec(64, &[("gpu", 1)], None), &gpus), 3);
        assert_eq!(replica_cap(&spec(64, &[("gpu", 2)], None), &gpus), 1);
        assert_eq!(replica_cap(&spec(2, &[("gpu", 1)], None), &gpus), 2);
        assert_eq!(replica_cap(&spec(64, &[("gpu", 4)], None), &gpus), 0);
        // Pools.
        assert_eq!(replica_cap(&spec(8, &[], Some("gpu")), &plain), 0);
        assert_eq!(replica_cap(&spec(8, &[], Some("gpu")), &gpus), 8);
        // Refused at deploy when nobody can, saying what it needs.
        let err = check_placeable(&spec(8, &[("gpu", 4)], None), &[plain.clone(), gpus.clone()]).unwrap_err();
        assert!(err.message.contains("gpu=4"), "{}", err.message);
        assert!(check_placeable(&spec(8, &[("gpu", 3)], None), &[plain, gpus]).is_ok());
    }

    #[test]
    fn routes_are_checked() {
        assert!(validate_route("/hello").is_ok());
        assert!(validate_route("/api/v2/predict").is_ok());
        for bad in ["hello", "/a//b", "/v1", "/v1/call", "/a/../b", "/sp ace", "", "/api/"] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }
}

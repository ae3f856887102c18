//! One fabric node.
//!
//! A guide to the crate, following a job through it:
//!
//! - [`server`] accepts a client's QUIC streams and turns each request into a
//!   call on [`Host`]. `fabric run` calls the same [`Host`] methods
//!   in-process, so the daemon and the one-shot path cannot drift apart.
//! - [`components`] stores a job's component content-addressed, compiles it
//!   once (cached on disk) and keeps it pre-linked for fast instantiation.
//! - [`Host::submit`] records the job in the [`registry`], then runs its
//!   entry task through [`runtime`], which takes a CPU slot from the
//!   [`scheduler`] and instantiates the component in the [`sandbox`].
//! - Guest code reaches the host through [`hostfns`] (one module per WIT
//!   interface): sub-tasks go back through [`runtime`]; results and `put`
//!   values live in the [`objects`] store; output goes to the job's
//!   [`joblog`].
//! - When the entry task ends, the [`jobs`] machinery cancels stragglers,
//!   frees the job's objects and writes its final record.
//!
//! - [`gateway`] serves HTTP: requests under a deployment's route go to a
//!   `wasi:http` component, `POST /v1/call/...` to a task; [`deployments`]
//!   keeps every host's table of what is deployed, their replicas and
//!   autoscalers.
//!
//! - [`cluster`] keeps this host a member of the cluster (a lease in the
//!   registry), its view of the other members, and the placement rules;
//!   [`tls`] gives it a certificate from the cluster's CA.
//!
//! Everything is keyed by tenant: components, objects, jobs and logs.
#![warn(missing_docs)]

pub mod actors;
pub mod cluster;
pub mod components;
pub mod config;
pub mod deployments;
pub mod drain;
pub mod faults;
pub mod gateway;
pub mod hostfns;
pub mod instances;
pub mod joblog;
pub mod jobs;
pub mod objects;
pub mod peers;
pub mod records;
pub mod registry;
pub mod remote;
pub mod resources;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod tls;

pub use config::{DefaultLimits, HostConfig};
pub use fabric_proto::{
    ActorInfo, Demand, Deployment, DeploymentInfo, DeploymentLog, DeploymentSpec, ErrorKind, FabricError, HostInfo,
    JobRecord, JobState, Replicas, Resource, SubmitRequest, TaskLimits,
};

use components::Components;
use hostfns::Encoding;
use joblog::JobLog;
use jobs::{now_ms, Job, JobHandle};
use objects::{ObjectId, ObjectStore};
use registry::Registry;
use runtime::{run_task, TaskSpec};
use scheduler::Slots;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct Host(Arc<HostInner>);

/// The node's shared state, reached by tasks through their context.
pub struct HostInner {
    pub(crate) config: HostConfig,
    pub(crate) id: String,
    pub(crate) engine: wasmtime::Engine,
    pub(crate) components: Components,
    pub(crate) objects: Arc<ObjectStore>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) instances: instances::InstancePool,
    pub(crate) actors: actors::Actors,
    pub(crate) registry: Box<dyn Registry>,
    records: records::Records,
    live: Mutex<HashMap<(String, String), LiveJob>>,
    pub(crate) identity: tls::Identity,
    pub(crate) cluster: cluster::Cluster,
    pub(crate) peers: peers::Peers,
    /// Resources besides `cpu`, held by the tasks that demand them.
    pub(crate) resources: resources::Resources,
    /// Jobs of other hosts that left objects or actors here.
    pub(crate) visiting: remote::Visiting,
    /// Whether the host is shutting down, and what it waits for first.
    pub(crate) drain: drain::Drain,
    /// Faults the tests asked this host to inject.
    pub(crate) faults: faults::Faults,
    /// Counters of objects pulled from peers, and faults to inject.
    pub(crate) transfers: objects::transfer::Transfers,
    /// Streams of asks to actors on other hosts.
    pub(crate) actor_asks: remote::asks::AskStreams,
    /// What this host's gateway serves.
    pub(crate) deployments: deployments::Deployments,
    /// Gateway requests sent to peers and not yet answered.
    pub(crate) forwarded: gateway::forward::InFlight,
    /// The host's id as the gateway's `x-fabric-host` header.
    pub(crate) host_header: hyper::header::HeaderValue,
    /// Where the gateway listens, once it does.
    gateway: Mutex<Option<std::net::SocketAddr>>,
    /// What the host offers (read once: placement asks on every decision).
    capacity: Vec<Resource>,
    /// One fetch per missing component at a time, by (tenant, sha256).
    pub(crate) fetching: Mutex<HashMap<(String, String), FetchGate>>,
    /// The address peers and clients reach this host at, once serving.
    addr: Mutex<String>,
    started_ms: u64,
    membership: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    _ticker: sandbox::EpochTicker,
}

/// Held by the one task that fetches a missing component; others wait.
type FetchGate = Arc<tokio::sync::Mutex<()>>;

struct LiveJob {
    job: Arc<Job>,
    done: watch::Receiver<Option<JobRecord>>,
}

/// A job's place in the host's live jobs, taken back when dropped: at its
/// end, and also if its task panics (a stopping host would otherwise wait
/// on it for its whole drain).
struct Listed {
    host: Arc<HostInner>,
    key: (String, String),
}

impl Listed {
    /// Lists `job` live on `host` until the returned guard drops; `done`
    /// says when it ended (with its record, or closed without one).
    fn new(host: &Arc<HostInner>, job: &Arc<Job>, done: watch::Receiver<Option<JobRecord>>) -> Self {
        let key = (job.tenant.to_string(), job.id.to_string());
        host.live().insert(key.clone(), LiveJob { job: job.clone(), done });
        Listed { host: host.clone(), key }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.host.live().remove(&self.key);
    }
}

/// A job's log as `fabric logs` reads it.
pub struct LogFollow {
    /// Everything written so far.
    pub snapshot: Vec<u8>,
    /// For a live job: what comes next, and its end.
    pub live: Option<JobHandle>,
}

impl HostInner {
    /// Queues `spec` as a task of `job`, to run where `placement` says;
    /// returns the id of its result object (held once, for the caller).
    /// `named`: objects its arguments name, one reference to each passed
    /// in, held until the task ends.
    pub(crate) fn spawn_task(
        self: &Arc<Self>,
        job: &Arc<Job>,
        spec: TaskSpec,
        placement: remote::Placement,
        named: Vec<ObjectId>,
    ) -> ObjectId {
        let (id, cell) = self.objects.reserve(&job.tenant, &job.id);
        let host = self.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let outcome = remote::run_anywhere(&host, &job, spec, placement, &named).await;
            host.objects.release(&job.tenant, &named);
            match outcome {
                Ok(remote::TaskOutput::Here { bytes, named }) => {
                    host.objects.fill_naming(&job.tenant, id, &cell, Ok(bytes), named.hand_over())
                }
                Ok(remote::TaskOutput::Kept { id: kept, len, lineage }) => {
                    host.objects.fill_elsewhere(Some(id), &cell, kept, len, lineage)
                }
                Err(error) => host.objects.fill(&cell, Err(error)),
            }
        });
        id
    }

    /// What follows a job's (or a call's, or a shadow's) end: stragglers stop,
    /// its actors (here and on peers) and its objects go.
    pub(crate) fn end_job(self: &Arc<Self>, job: &Arc<Job>, why: &str) {
        job.cancel(FabricError::new(ErrorKind::Cancelled, why));
        // Noted as ended before what it left goes (see `remote::Visiting`):
        // its work that a peer sends back here later is refused.
        let came_back = remote::own_job_ending(self, job);
        self.actors.kill_owned_by(&job.tenant, &job.id);
        self.objects.drop_job(&job.tenant, &job.id);
        remote::job_ended(self, job, came_back);
    }

    /// Records where the gateway listens.
    pub(crate) fn set_gateway(&self, addr: std::net::SocketAddr) {
        *self.gateway.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// The address this host serves on (empty before it joins).
    pub(crate) fn local_addr(&self) -> String {
        self.addr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn live(&self) -> MutexGuard<'_, HashMap<(String, String), LiveJob>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a peer's output to `tenant`'s live `job`'s log here.
    pub(crate) fn append_to_log(&self, tenant: &str, job: &str, chunk: &[u8]) -> Result<(), FabricError> {
        let live = self.live();
        let Some(live) = live.get(&(tenant.to_string(), job.to_string())) else {
            return Err(FabricError::new(ErrorKind::NotFound, format!("job {job} does not run here")));
        };
        live.job.log.append(chunk);
        Ok(())
    }

    /// Whether this host turns away a peer's new task or actor: it is
    /// draining (or a test made it act so); the peer places it elsewhere.
    pub(crate) fn refuses_peer_work(&self) -> bool {
        self.drain.is_draining() || self.faults.refuse_runs.strikes()
    }

    /// Whether `tenant`'s `job` runs on this host now.
    pub(crate) fn is_live(&self, tenant: &str, job: &str) -> bool {
        self.live().contains_key(&(tenant.to_string(), job.to_string()))
    }

    /// This host's membership record with its load now.
    pub(crate) fn local_info(&self) -> HostInfo {
        let (held, waiting) = self.slots.load();
        let declared = &self.config.declared;
        let mut used = vec![Resource { name: cluster::placement::CPU.into(), amount: held as u64 }];
        used.extend(self.resources.used());
        HostInfo {
            id: self.id.clone(),
            addr: self.local_addr(),
            capacity: self.capacity.clone(),
            used,
            queued: waiting as u64,
            pool: declared.pool.clone(),
            labels: declared.labels.clone(),
            started_ms: self.started_ms,
            draining: self.drain.is_draining(),
        }
    }
}

/// What a host offers: its slots as `cpu`, the machine's memory, and what it
/// declares (which overrides either).
fn capacity_of(config: &HostConfig) -> Vec<Resource> {
    let mut capacity = vec![Resource { name: cluster::placement::CPU.into(), amount: config.slots as u64 }];
    if let Some(bytes) = system_memory() {
        capacity.push(Resource { name: "memory".into(), amount: bytes });
    }
    cluster::placement::adjust_set(&mut capacity, &config.declared.resources);
    capacity
}

/// The machine's memory in bytes (Linux), the default `memory` capacity.
fn system_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn wasm_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// The two halves of a 128-bit id written as 32 hex digits (object and
/// actor ids); `what` names the kind in the error.
pub(crate) fn parse_id128(what: &str, hex: &str) -> Result<(u64, u64), FabricError> {
    let bad = || FabricError::new(ErrorKind::InvalidArgument, format!("`{hex}` is not an {what} id"));
    if hex.len() != 32 || !hex.is_ascii() {
        return Err(bad());
    }
    let hi = u64::from_str_radix(&hex[..16], 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(&hex[16..], 16).map_err(|_| bad())?;
    Ok((hi, lo))
}

/// Tenant names become directory names: keep them plain.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), FabricError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FabricError::new(
            ErrorKind::InvalidArgument,
            format!("invalid {what} `{name}`: use 1-64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

impl Host {
    /// Starts a node with `config`. Must be called within a tokio runtime.
    pub async fn new(config: HostConfig) -> anyhow::Result<Host> {
        std::fs::create_dir_all(&config.data_dir)?;
        let engine = sandbox::engine(config.max_instances).map_err(wasm_error)?;
        let mut linker = wasmtime::component::Linker::new(&engine);
        hostfns::add_to_linker(&mut linker).map_err(wasm_error)?;
        // Task components do not import wasi:http; handlers behind the
        // gateway do (outgoing requests are refused, see `sandbox`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm_error)?;
        let components = Components::new(engine.clone(), linker, &config.data_dir, config.persist)?;
        let registry: Box<dyn Registry> = if !config.etcd.is_empty() {
            Box::new(registry::etcd::Etcd::connect_waiting(&config.etcd, config.etcd_wait).await?)
        } else if config.persist {
            Box::new(registry::embedded::Embedded::open(&config.data_dir.join("registry.redb"))?)
        } else {
            Box::new(registry::embedded::Embedded::in_memory()?)
        };
        let ca = registry.cluster_ca(&tls::new_ca()?).await?;
        let names: Vec<String> = config.advertise_names.clone();
        let identity = tls::Identity::issue(&ca, &names)?;
        if config.persist {
            let path = tls::ca_path(&config.data_dir);
            std::fs::create_dir_all(path.parent().unwrap_or(&config.data_dir))?;
            components::write_atomic(&path, identity.ca_pem().as_bytes())?;
        }
        let node: u64 = rand::random();
        let capacity = capacity_of(&config);
        let id = objects::host_id(node);
        let host_header = hyper::header::HeaderValue::from_str(&id)?;
        let host = Host(Arc::new(HostInner {
            id,
            objects: Arc::new(ObjectStore::new(node, config.store_limits())),
            actors: actors::Actors::new(node),
            slots: Slots::new(config.slots),
            instances: instances::InstancePool::new(config.slots * 4, (config.max_instances / 4) as usize),
            _ticker: sandbox::EpochTicker::start(engine.clone())?,
            engine,
            components,
            registry,
            records: records::Records::default(),
            live: Mutex::new(HashMap::new()),
            peers: peers::Peers::new(identity.peer_client_config()?),
            resources: resources::Resources::new(&capacity),
            visiting: remote::Visiting::default(),
            drain: drain::Drain::default(),
            faults: faults::Faults::from_env(),
            transfers: objects::transfer::Transfers::default(),
            actor_asks: remote::asks::AskStreams::default(),
            deployments: deployments::Deployments::default(),
            forwarded: Default::default(),
            host_header,
            gateway: Mutex::new(None),
            capacity,
            fetching: Mutex::new(HashMap::new()),
            identity,
            cluster: cluster::Cluster::new(),
            addr: Mutex::new(String::new()),
            started_ms: now_ms(),
            membership: Mutex::new(None),
            config,
        }));
        host.fail_interrupted_jobs().await?;
        remote::actors::forget_released_names(&host.0);
        objects::transfer::release_elsewhere(&host.0);
        let flusher = Arc::downgrade(&host.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(records::RETRY_EVERY).await;
                let Some(host) = flusher.upgrade() else { return };
                if !host.records.is_empty() && host.records.flush(&*host.registry).await == 0 {
                    tracing::warn!("every pending job record is written");
                }
            }
        });
        // Autoscalers tick on their own task, so a slow sync (an origin
        // host that is slow to send a component) never delays a scale-down.
        let scaling = Arc::downgrade(&host.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(deployments::TICK_EVERY).await;
                let Some(host) = scaling.upgrade() else { return };
                host.deployments.tick(&host, std::time::Instant::now());
            }
        });
        let syncing = Arc::downgrade(&host.0);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(deployments::SYNC_EVERY).await;
                let Some(host) = syncing.upgrade() else { return };
                match deployments::sync(&host).await {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        tracing::warn!("cannot read the deployments (serving the last ones read): {e}");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(host)
    }

    /// Jobs a previous run of this host left unfinished did not survive it.
    async fn fail_interrupted_jobs(&self) -> Result<(), FabricError> {
        // With a shared (etcd) registry other hosts' jobs are not ours to
        // judge: a host that dies is swept by the hosts that see it leave
        // (`cluster::membership`). The embedded registry is this host's alone.
        if !self.0.config.etcd.is_empty() {
            return Ok(());
        }
        for mut record in self.0.registry.jobs(None).await? {
            if !record.state.is_terminal() {
                record.state = JobState::Failed;
                record.finished_ms = Some(now_ms());
                record.error =
                    Some(FabricError::new(ErrorKind::Unavailable, "the host stopped while the job was running"));
                self.0.registry.put_job(&record).await?;
            }
        }
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The node's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.0.config
    }

    /// QUIC server settings with this host's certificate.
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        self.0.identity.server_config()
    }

    /// Joins the cluster as reachable at `addr`, serving on `endpoint` (peer
    /// connections go out from it too): registers under a lease and keeps a
    /// view of the members until [`Host::shutdown`].
    pub fn join(&self, endpoint: quinn::Endpoint, addr: &str) {
        *self.0.addr.lock().unwrap_or_else(|p| p.into_inner()) = addr.to_string();
        self.0.peers.set_endpoint(endpoint);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(cluster::membership::run(self.0.clone(), stopped));
        *self.0.membership.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop, task));
    }

    /// The cluster's members as this host sees them (itself included).
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.0.cluster.members(&self.0.local_info())
    }

    /// The node's object store (for host-side access and benchmarks).
    pub fn objects(&self) -> &ObjectStore {
        &self.0.objects
    }

    /// Whether `tenant` has component `sha256` here.
    pub fn has_component(&self, tenant: &str, sha256: &str) -> bool {
        validate_name("tenant", tenant).is_ok() && self.0.components.has(tenant, sha256)
    }

    /// The stored bytes of a component of `tenant`.
    pub async fn component_bytes(&self, tenant: &str, sha256: &str) -> Result<Vec<u8>, FabricError> {
        validate_name("tenant", tenant)?;
        self.0.components.bytes(tenant, sha256).await
    }

    /// Checks, compiles and stores a component for `tenant`; returns its
    /// sha256. `claimed` is the hash the uploader computed.
    pub async fn add_component(
        &self,
        tenant: &str,
        bytes: Vec<u8>,
        claimed: Option<&str>,
    ) -> Result<String, FabricError> {
        validate_name("tenant", tenant)?;
        Ok(self.0.components.add(tenant, bytes, claimed).await?.sha256.clone())
    }

    /// Runs a job: records it, starts its entry task, returns at once.
    pub async fn submit(&self, tenant: &str, request: SubmitRequest) -> Result<JobHandle, FabricError> {
        validate_name("tenant", tenant)?;
        let inner = &self.0;
        if inner.drain.is_draining() {
            let why = format!("host {} is shutting down: submit the job to another host", inner.id);
            return Err(FabricError::new(ErrorKind::Unavailable, why));
        }
        let component = inner.components.get(tenant, &request.component).await?;
        let id = format!("job-{:012x}", rand::random::<u64>() >> 16);
        let log_path =
            inner.config.persist.then(|| inner.config.data_dir.join("logs").join(tenant).join(format!("{id}.log")));
        let log = JobLog::new(log_path, inner.config.echo_logs)
            .map_err(|e| FabricError::new(ErrorKind::Internal, format!("cannot create the job log: {e}")))?;
        let job = Job::new(&id, tenant, request.limits.clone(), log.clone());
        let mut record = JobRecord {
            id: id.clone(),
            tenant: tenant.to_string(),
            component: component.sha256.clone(),
            function: request.function.clone(),
            state: JobState::Queued,
            submitted_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            result: None,
            error: None,
        };
        inner.records.write(&*inner.registry, &record).await?;
        // Who runs it, so that others can tell its end if this host is lost;
        // written before the job is accepted, so no accepted job goes unmarked.
        let _ = inner.registry.mark_running(&inner.id, tenant, &id).await;
        let (done_tx, done_rx) = watch::channel(None);
        let (_, log_rx) = log.subscribe();
        let listed = Listed::new(inner, &job, done_rx.clone());

        let host = self.0.clone();
        tokio::spawn(async move {
            record.state = JobState::Running;
            record.started_ms = Some(now_ms());
            let _ = host.records.write(&*host.registry, &record).await;
            let spec = TaskSpec {
                component,
                function: request.function,
                args: request.args.into_bytes(),
                encoding: Encoding::Json,
                limits: request.limits,
            };
            let outcome = run_task(&host, &job, spec).await;
            // Stragglers stop; the job's actors and objects go with it.
            host.end_job(&job, "the job ended");
            record.finished_ms = Some(now_ms());
            match outcome {
                Ok(bytes) => {
                    record.state = JobState::Succeeded;
                    record.result = Some(String::from_utf8_lossy(&bytes).into_owned());
                }
                Err(error) => {
                    record.state =
                        if error.kind == ErrorKind::Cancelled { JobState::Stopped } else { JobState::Failed };
                    record.error = Some(error);
                }
            }
            if let Err(e) = host.records.write(&*host.registry, &record).await {
                tracing::error!(job = %record.id, "cannot record the job's end: {e}");
            }
            let _ = host.registry.clear_running(&host.id, &record.tenant, &record.id).await;
            drop(listed);
            let _ = done_tx.send(Some(record));
        });
        Ok(JobHandle::new(id, log_rx, done_rx))
    }

    /// Calls `function` of a component once with JSON `args` and returns its
    /// JSON result, without a job record: the path for request/response
    /// callers (and the benchmarks). Sub-tasks it submits end with it.
    pub async fn call(
        &self,
        tenant: &str,
        sha256: &str,
        function: &str,
        args: &str,
        limits: TaskLimits,
    ) -> Result<Vec<u8>, FabricError> {
        let log = JobLog::in_memory(self.0.config.echo_logs);
        self.call_logged(tenant, sha256, function, args, limits, log, false).await
    }

    /// [`call`](Self::call), writing what the call prints to `log` (a
    /// deployment's, for calls over HTTP); `isolated`: its tasks here get
    /// fresh instances.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_logged(
        &self,
        tenant: &str,
        sha256: &str,
        function: &str,
        args: &str,
        limits: TaskLimits,
        log: Arc<JobLog>,
        isolated: bool,
    ) -> Result<Vec<u8>, FabricError> {
        validate_name("tenant", tenant)?;
        let component = self.0.components.get(tenant, sha256).await?;
        let id = format!("call-{:012x}", rand::random::<u64>() >> 16);
        let job = if isolated { Job::new_isolated } else { Job::new }(&id, tenant, limits.clone(), log);
        // Live while it runs, as a submitted job: what its actors on peers
        // print reaches its log (`PeerLog`), and a stopping host waits for
        // it, then stops it. Its end closes `done` (it has no record).
        let (done_tx, done) = watch::channel(None);
        let listed = Listed::new(&self.0, &job, done);
        let spec = TaskSpec {
            component,
            function: function.to_string(),
            args: args.as_bytes().to_vec(),
            encoding: Encoding::Json,
            limits,
        };
        // Run on the runtime's workers, wherever the caller is polled from
        // (on a `block_on` thread every round trip with the task's children
        // would pay a cross-thread wake-up).
        let host = self.0.clone();
        let task = tokio::spawn(async move {
            let outcome = run_task(&host, &job, spec).await;
            host.end_job(&job, "the call ended");
            drop((listed, done_tx));
            outcome
        });
        task.await
            .unwrap_or_else(|e| Err(FabricError::new(ErrorKind::Internal, format!("the call's task failed: {e}"))))
    }

    /// The tenant's actors, oldest first.
    pub fn local_actors(&self, tenant: &str) -> Result<Vec<ActorInfo>, FabricError> {
        validate_name("tenant", tenant)?;
        Ok(self.0.actors.list(tenant).iter().map(|actor| actor.info(&self.0.id)).collect())
    }

    /// The tenant's actors on every member: this host's first, then each
    /// peer's (a peer that does not answer is left out, with a warning in
    /// this host's log).
    pub async fn actors(&self, tenant: &str) -> Result<Vec<ActorInfo>, FabricError> {
        let mut all = self.local_actors(tenant)?;
        let request = fabric_proto::Request::PeerActors { tenant: tenant.to_string() };
        let mut theirs = remote::gather_from_members(&self.0, &request, "a list of actors", |answer| match answer {
            fabric_proto::Response::Actors(actors) => Ok(actors),
            other => Err(format!("{other:?}")),
        })
        .await;
        theirs.sort_by(|a, b| a.host.cmp(&b.host));
        all.extend(theirs);
        Ok(all)
    }

    /// Calls `method` of the actor named `actor` (or with that hex id),
    /// wherever in the cluster it lives, with JSON arguments; waits for and
    /// returns its JSON result.
    pub async fn actor_call(&self, tenant: &str, actor: &str, method: &str, args: &str) -> Result<String, FabricError> {
        validate_name("tenant", tenant)?;
        let id = remote::actors::resolve(&self.0, tenant, actor).await?;
        let args = if args.trim().is_empty() { "{}".to_string() } else { args.to_string() };
        let ask =
            remote::actors::Ask::Call { method: method.to_string(), args: args.into_bytes(), encoding: Encoding::Json };
        let bytes = remote::actors::ask_and_wait(&self.0, tenant, id, ask).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Kills the actor named `actor` (or with that hex id), wherever it lives.
    pub async fn actor_kill(&self, tenant: &str, actor: &str) -> Result<(), FabricError> {
        validate_name("tenant", tenant)?;
        let id = remote::actors::resolve(&self.0, tenant, actor).await?;
        remote::actors::kill(&self.0, tenant, id).await
    }

    /// The tenant's jobs, newest first.
    pub async fn jobs(&self, tenant: &str) -> Result<Vec<JobRecord>, FabricError> {
        validate_name("tenant", tenant)?;
        let mut jobs = self.0.registry.jobs(Some(tenant)).await?;
        for record in self.0.records.pending_of(Some(tenant)) {
            match jobs.iter_mut().find(|j| j.id == record.id) {
                Some(stale) => *stale = record,
                None => jobs.push(record),
            }
        }
        registry::sort_newest_first(&mut jobs);
        Ok(jobs)
    }

    /// One job's record.
    pub async fn status(&self, tenant: &str, job: &str) -> Result<JobRecord, FabricError> {
        validate_name("tenant", tenant)?;
        if let Some(record) = self.0.records.pending(tenant, job) {
            return Ok(record);
        }
        self.0
            .registry
            .job(tenant, job)
            .await?
            .ok_or_else(|| FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no job `{job}`")))
    }

    /// A job's log so far, and for a live job the rest as it comes.
    pub async fn logs(&self, tenant: &str, job: &str) -> Result<LogFollow, FabricError> {
        let record = self.status(tenant, job).await?;
        if let Some(live) = self.0.live().get(&(tenant.to_string(), job.to_string())) {
            let (snapshot, rx) = live.job.log.subscribe();
            return Ok(LogFollow { snapshot, live: Some(JobHandle::new(job.to_string(), rx, live.done.clone())) });
        }
        validate_name("job", &record.id)?;
        let path = self.0.config.data_dir.join("logs").join(tenant).join(format!("{}.log", record.id));
        Ok(LogFollow { snapshot: std::fs::read(path).unwrap_or_default(), live: None })
    }

    /// Stops a job and waits for its final record.
    pub async fn stop(&self, tenant: &str, job: &str) -> Result<JobRecord, FabricError> {
        let record = self.status(tenant, job).await?;
        let live = self.0.live().get(&(tenant.to_string(), job.to_string())).map(|l| (l.job.clone(), l.done.clone()));
        let Some((live_job, mut done)) = live else {
            return Ok(record);
        };
        live_job.cancel(FabricError::new(ErrorKind::Cancelled, "stopped by request"));
        let finished = done.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
        Ok(finished.unwrap_or(record))
    }

    /// Deploys (or redeploys) a component of `tenant` for HTTP. Returns
    /// once this host serves the new version and the other members have
    /// read it ([`deployments::announce`]; one that does not answer within
    /// [`deployments::ANNOUNCE_WAIT`] follows within
    /// [`deployments::SYNC_EVERY`]).
    pub async fn deploy(&self, tenant: &str, spec: DeploymentSpec) -> Result<Deployment, FabricError> {
        validate_name("tenant", tenant)?;
        let component = self.0.components.get(tenant, &spec.component).await?;
        let kind = deployments::validate(&spec, &component)?;
        deployments::check_placeable(&spec, &self.0.cluster.members(&self.0.local_info()))?;
        let record = Deployment {
            tenant: tenant.to_string(),
            spec,
            kind,
            version: 0,
            deployed_ms: now_ms(),
            origin: self.0.local_addr(),
        };
        // Ready it before recording it: a component that cannot start (it
        // traps at start, or exceeds its memory cap) is refused here.
        let trialled = deployments::trial(&self.0, &record).await?;
        let recorded = match self.0.registry.put_deployment(&record).await {
            Ok(recorded) => recorded,
            Err(e) => {
                deployments::discard(&self.0, trialled);
                return Err(e);
            }
        };
        deployments::install(&self.0, trialled, recorded.clone()).await?;
        deployments::announce(&self.0).await;
        match self.0.deployments.named(tenant, &recorded.spec.name) {
            Some(serving) if serving.record.version >= recorded.version => Ok(recorded),
            _ => Err(FabricError::new(
                ErrorKind::Unavailable,
                format!(
                    "deployment {} v{} is recorded but this host could not start it",
                    recorded.spec.name, recorded.version
                ),
            )),
        }
    }

    /// Removes a deployment; its requests in flight finish.
    pub async fn undeploy(&self, tenant: &str, name: &str) -> Result<(), FabricError> {
        validate_name("tenant", tenant)?;
        if !self.0.registry.remove_deployment(tenant, name).await? {
            return Err(FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no deployment `{name}`")));
        }
        deployments::sync(&self.0).await?;
        deployments::announce(&self.0).await;
        Ok(())
    }

    /// The end of `tenant`'s deployment `name`'s log on this host (none if
    /// it does not serve it).
    pub fn local_deployment_logs(
        &self,
        tenant: &str,
        name: &str,
        since: &[fabric_proto::LogPosition],
    ) -> Result<Vec<DeploymentLog>, FabricError> {
        validate_name("tenant", tenant)?;
        let serving = self.0.deployments.of(tenant).into_iter().find(|d| d.record.spec.name == name);
        Ok(serving
            .map(|d| {
                let (host, version, log) = (self.0.id.clone(), d.record.version, d.log.id());
                let followed = since.iter().find(|p| p.host == host && p.version == version && p.log == log);
                let (text, end) = match followed {
                    // Where the follower left off, as much as one answer carries.
                    Some(position) => d.log.since(position.offset, fabric_proto::DEPLOYMENT_LOG_TAIL),
                    // A first look: the end of it.
                    None => {
                        let (mut text, end) = d.log.since(0, usize::MAX);
                        let tail = text.len().saturating_sub(fabric_proto::DEPLOYMENT_LOG_TAIL);
                        text.drain(..tail);
                        (text, end)
                    }
                };
                DeploymentLog { host, version, text, end, log }
            })
            .into_iter()
            .collect())
    }

    /// The end of `tenant`'s deployment `name`'s log on every member that
    /// serves it.
    pub async fn deployment_logs(
        &self,
        tenant: &str,
        name: &str,
        since: Vec<fabric_proto::LogPosition>,
    ) -> Result<Vec<DeploymentLog>, FabricError> {
        let mut logs = self.local_deployment_logs(tenant, name, &since)?;
        let request =
            fabric_proto::Request::PeerDeploymentLogs { tenant: tenant.to_string(), name: name.to_string(), since };
        logs.extend(
            remote::gather_from_members(&self.0, &request, "a deployment's logs", |answer| match answer {
                fabric_proto::Response::DeploymentLogs(theirs) => Ok(theirs),
                other => Err(format!("{other:?}")),
            })
            .await,
        );
        if logs.is_empty() {
            return Err(FabricError::new(ErrorKind::NotFound, format!("no host serves a deployment named {name}")));
        }
        logs.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(logs)
    }

    /// The tenant's deployments here: replicas per deployment.
    pub fn local_replicas(&self, tenant: &str) -> Result<Vec<Replicas>, FabricError> {
        validate_name("tenant", tenant)?;
        Ok(self
            .0
            .deployments
            .of(tenant)
            .iter()
            .map(|d| {
                let counts = d.replicas.counts();
                Replicas {
                    host: self.0.id.clone(),
                    name: d.record.spec.name.clone(),
                    version: d.record.version,
                    desired: counts.desired,
                    instances: counts.instances,
                    busy: counts.busy,
                    queued: counts.queued,
                    served: counts.served,
                    cap: d.cap,
                }
            })
            .collect())
    }

    /// Answers one HTTP request as this host's gateway would, with no
    /// connection: routing, replicas, forwarding and failures as for a
    /// request that came over TCP. For servers that embed a host, and for
    /// measuring the gateway's own cost apart from the kernel's.
    pub async fn answer_http(&self, request: hyper::Request<gateway::Body>) -> hyper::Response<gateway::Body> {
        gateway::handle(&self.0, request).await
    }

    /// The tenant's deployments with their replicas on every member.
    pub async fn deployments(&self, tenant: &str) -> Result<Vec<DeploymentInfo>, FabricError> {
        let mut replicas = self.local_replicas(tenant)?;
        let request = fabric_proto::Request::PeerReplicas { tenant: tenant.to_string() };
        replicas.extend(
            remote::gather_from_members(&self.0, &request, "a list of replicas", |answer| match answer {
                fabric_proto::Response::Replicas(theirs) => Ok(theirs),
                other => Err(format!("{other:?}")),
            })
            .await,
        );
        let records = self.0.registry.deployments(Some(tenant)).await?;
        Ok(records
            .into_iter()
            .map(|deployment| {
                let mut mine: Vec<Replicas> =
                    replicas.iter().filter(|r| r.name == deployment.spec.name).cloned().collect();
                mine.sort_by(|a, b| a.host.cmp(&b.host));
                DeploymentInfo { deployment, replicas: mine }
            })
            .collect())
    }

    /// Where this host's HTTP gateway listens, if it does.
    pub fn gateway(&self) -> Option<std::net::SocketAddr> {
        *self.0.gateway.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts the host down gracefully ([`drain`]): marks itself draining in
    /// the cluster (peers place nothing new here), refuses new work, and
    /// lets what is under way finish until `drain` has passed or
    /// `cut_short` resolves (a second signal); then cancels every job still
    /// live, waits for their records to be written, and leaves.
    pub async fn shutdown(&self, drain: std::time::Duration, cut_short: impl std::future::Future<Output = ()>) {
        self.0.drain.start();
        let finished = async {
            // Jobs admitted as the drain began register a moment later:
            // look again until none is unfinished.
            loop {
                let unfinished = self.0.live().values().find(|l| l.done.borrow().is_none()).map(|l| l.done.clone());
                match unfinished {
                    Some(mut done) => drop(done.wait_for(Option::is_some).await),
                    None => break,
                }
            }
            self.0.drain.idle().await;
        };
        tokio::select! {
            _ = tokio::time::timeout(drain, finished) => {}
            _ = cut_short => {}
        }
        let live: Vec<_> = self.0.live().values().map(|l| (l.job.clone(), l.done.clone())).collect();
        for (job, mut done) in live {
            job.cancel(FabricError::new(ErrorKind::Unavailable, "the host is shutting down"));
            let _ = done.wait_for(Option::is_some).await;
        }
        // Leave now rather than when the lease runs out: peers see at once
        // that what still ran here is gone, and run it again elsewhere.
        let membership = self.0.membership.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, task)) = membership {
            let _ = stop.send(true);
            let _ = task.await;
        }
        // Give idle instances' memory back now rather than at exit.
        self.0.instances.clear();
    }
}

//! Actors across hosts.
//!
//! A named actor is created on the host consistent hashing picks for its
//! `tenant/name` (see `cluster::naming`), whichever host asked, and its
//! location is recorded in the registry under that host's lease; so every
//! host resolves the name to the same actor, and the record vanishes with
//! the host. An actor's id carries the id of the host that minted it, so a
//! call to an actor elsewhere is routed to that host without a lookup. If
//! that host is gone the caller gets `actor-dead` saying so (restarting
//! actors on other hosts comes with the fault-tolerance work).
//!
//! An actor created for a job on another host belongs to that job unless it
//! is detached: when the job ends, its host tells each peer it created
//! actors on (`PeerJobEnded`).

use crate::actors::{ActorId, ActorOptions, NewActor};
use crate::hostfns::Encoding;
use crate::joblog::JobLog;
use crate::jobs::Job;
use crate::peers::PeerError;
use crate::registry::LeaseId;
use crate::HostInner;
use fabric_proto::{ActorLocation, ActorSpec, ErrorKind, FabricError, Request, Response, TaskLimits};
use std::sync::Arc;

/// An actor id from its 32-digit hex form.
pub fn parse_id(hex: &str) -> Result<ActorId, FabricError> {
    crate::parse_id128("actor", hex).map(|(hi, lo)| ActorId { hi, lo })
}

fn spec_of(options: &ActorOptions) -> ActorSpec {
    ActorSpec {
        name: options.name.clone(),
        detached: options.detached,
        max_restarts: options.max_restarts,
        max_pending: options.max_pending,
        snapshot_every: options.snapshot_every,
        snapshot_interval_ms: options.snapshot_interval.map(|d| d.as_millis() as u64),
        memory_bytes: options.memory_bytes,
        demand: options.demand.clone(),
    }
}

fn options_of(spec: ActorSpec) -> ActorOptions {
    ActorOptions {
        name: spec.name,
        detached: spec.detached,
        max_restarts: spec.max_restarts,
        max_pending: spec.max_pending,
        snapshot_every: spec.snapshot_every,
        snapshot_interval: spec.snapshot_interval_ms.map(std::time::Duration::from_millis),
        memory_bytes: spec.memory_bytes,
        demand: spec.demand,
    }
}

/// The host an actor id says it lives on.
pub(crate) fn home_of(id: ActorId) -> String {
    crate::objects::host_id(id.hi)
}

pub(crate) fn lost(id: ActorId, why: impl std::fmt::Display) -> FabricError {
    FabricError::new(ErrorKind::ActorDead, format!("actor {id} was on host {} and is lost: {why}", home_of(id)))
}

/// Creates an actor for `job`. With a demand (resources, pool, labels) it
/// goes where placement says, and a demand no member could meet fails here
/// at once. A named one in a cluster goes where the ring puts its name among
/// the members that meet its demand; an unnamed one without a demand stays
/// here.
pub(crate) async fn create(
    host: &Arc<HostInner>,
    new: NewActor,
    options: ActorOptions,
    get_or_create: bool,
) -> Result<ActorId, FabricError> {
    let local = host.local_info();
    let placed = options.demand != fabric_proto::Demand::default();
    if placed {
        host.cluster.place(&local, &options.demand, &[])?;
    }
    let clustered = host.cluster.lease().is_some();
    let named = options.name.clone().filter(|_| clustered);
    if !(named.is_some() || clustered && placed) {
        return host.actors.create(host, new, options, get_or_create);
    }
    if let Some(name) = &named {
        let tenant = new.tenant.clone();
        if let Some(found) = located(host, &tenant, name).await? {
            if get_or_create {
                return Ok(found);
            }
            return Err(FabricError::new(
                ErrorKind::InvalidArgument,
                format!("tenant `{tenant}` already has an actor named `{name}`"),
            ));
        }
    }
    // Hosts that would not take it (draining, their drain not yet in this
    // host's view): each is asked once, then left out.
    let mut avoid = Vec::new();
    loop {
        let target = match &named {
            Some(name) => host
                .cluster
                .owner_of(&local, &new.tenant, name, &options.demand, &avoid)
                .unwrap_or_else(|| host.id.clone()),
            None => host.cluster.place(&local, &options.demand, &avoid)?,
        };
        if target == host.id {
            return create_here(host, new, options, get_or_create).await;
        }
        match create_on(host, &target, &new, &options, get_or_create).await {
            Err(PeerError::Refused(error)) => {
                let note = format!(
                    "[fabric: host {target} would not take actor `{}` ({}); creating it elsewhere]\n",
                    new.class, error.message
                );
                new.creator.log.append(note.as_bytes());
                avoid.push(target);
            }
            created => return created.map_err(PeerError::into_error),
        }
    }
}

/// Asks member `owner` to create the actor.
async fn create_on(
    host: &Arc<HostInner>,
    owner: &str,
    new: &NewActor,
    options: &ActorOptions,
    get_or_create: bool,
) -> Result<ActorId, PeerError> {
    let addr = host.cluster.addr_of(owner).ok_or_else(|| {
        PeerError::Lost(FabricError::new(ErrorKind::Unavailable, format!("host {owner} left the cluster")))
    })?;
    let request = Request::PeerActorCreate {
        origin: host.local_addr(),
        tenant: new.tenant.to_string(),
        job: new.creator.id.to_string(),
        component: new.component.sha256.clone(),
        class: new.class.clone(),
        args: new.args.clone(),
        spec: spec_of(options),
        get_or_create,
    };
    let id = match host.peers.ask(&addr, &request).await? {
        Response::Output(bytes) => parse_id(&String::from_utf8_lossy(&bytes)).map_err(PeerError::Answered)?,
        Response::Refused(error) => return Err(PeerError::Refused(error)),
        other => {
            return Err(PeerError::Answered(FabricError::new(
                ErrorKind::Internal,
                format!("unexpected answer to an actor's creation: {other:?}"),
            )))
        }
    };
    if !options.detached {
        new.creator.reached(&addr);
    }
    Ok(id)
}

/// Creates the actor on this host and records where its name lives.
async fn create_here(
    host: &Arc<HostInner>,
    new: NewActor,
    options: ActorOptions,
    get_or_create: bool,
) -> Result<ActorId, FabricError> {
    let tenant = new.tenant.clone();
    let name = options.name.clone();
    let id = host.actors.create(host, new, options, get_or_create)?;
    if let (Some(name), Some(lease)) = (name, host.cluster.lease()) {
        let location = ActorLocation { host: host.id.clone(), id: id.to_string() };
        if let Err(e) = host.registry.put_actor(&tenant, &name, &location, lease).await {
            tracing::warn!(actor = %id, "cannot record where actor `{name}` lives: {e}");
        }
    }
    Ok(id)
}

/// The live actor named `name`: here, or wherever the registry says (on a
/// host that is still a member).
pub(crate) async fn located(host: &Arc<HostInner>, tenant: &str, name: &str) -> Result<Option<ActorId>, FabricError> {
    if let Ok(id) = host.actors.lookup(tenant, name) {
        return Ok(Some(id));
    }
    if host.cluster.lease().is_none() {
        return Ok(None);
    }
    match host.registry.actor(tenant, name).await? {
        Some(location) if location.host != host.id && host.cluster.addr_of(&location.host).is_some() => {
            parse_id(&location.id).map(Some)
        }
        _ => Ok(None),
    }
}

/// The actor named `name` (or with that hex id) of `tenant`, wherever it is.
pub(crate) async fn resolve(host: &Arc<HostInner>, tenant: &str, name_or_id: &str) -> Result<ActorId, FabricError> {
    if let Some(id) = located(host, tenant, name_or_id).await? {
        return Ok(id);
    }
    match parse_id(name_or_id) {
        Ok(id) if !host.actors.is_local(id) => Ok(id),
        _ => host.actors.resolve(tenant, name_or_id),
    }
}

/// What a caller asks of an actor.
#[derive(Debug)]
pub(crate) enum Ask {
    /// A call of `method` with encoded `args`.
    Call {
        /// The method.
        method: String,
        /// Its encoded arguments.
        args: Vec<u8>,
        /// How they (and the result) are encoded.
        encoding: Encoding,
    },
    /// A snapshot of its state, after the calls queued before.
    Snapshot,
}

/// Asks `ask` of actor `id` wherever it lives, for `job` (a client's call
/// has none); the result fills `cell`. An actor on another host gets this
/// host's asks in the order they were made (see [`super::asks`]); it answers
/// inline up to [`INLINE_MAX`](crate::objects::transfer::INLINE_MAX) bytes
/// and keeps a larger answer for `job` (read from there, like a large task
/// result), or, without a job, answers inline up to [`MAX_INLINE_ANSWER`].
pub(crate) fn ask(
    host: &Arc<HostInner>,
    job: Option<&crate::jobs::Job>,
    id: ActorId,
    ask: Ask,
    cell: Arc<crate::objects::Cell>,
) -> Result<(), FabricError> {
    let tenant = cell.tenant().clone();
    if host.actors.is_local(id) {
        return ask_here(host, &tenant, id, ask, cell);
    }
    if let (Some(job), Some(addr)) = (job, host.cluster.addr_of(&home_of(id))) {
        // What it keeps for the job there goes when the job ends.
        job.reached(&addr);
    }
    super::asks::ask_remote(host, &tenant, id, ask, cell, job.map(|job| job.id.clone()));
    Ok(())
}

/// [`ask`] of an actor of this host.
pub(crate) fn ask_here(
    host: &HostInner,
    tenant: &str,
    id: ActorId,
    ask: Ask,
    cell: Arc<crate::objects::Cell>,
) -> Result<(), FabricError> {
    match ask {
        Ask::Call { method, args, encoding } => host.actors.call(tenant, id, method, args, encoding, cell),
        Ask::Snapshot => host.actors.snapshot(tenant, id, cell),
    }
}

/// The largest answer an actor sends for a call without a job (a client's:
/// it travels back in one frame).
pub const MAX_INLINE_ANSWER: usize = fabric_proto::MAX_FRAME - 1024;

/// The error for an answer too large for a client's call.
pub(crate) fn too_large(id: ActorId, len: usize) -> FabricError {
    FabricError::new(
        ErrorKind::ResourceLimit,
        format!(
            "the answer of actor {id} is {len} bytes; a client's call is answered with at most \
             {MAX_INLINE_ANSWER} bytes (return a reference to an object for more)"
        ),
    )
}

/// Asks `what` of actor `id` and waits for the result, for a client: it
/// must fit in one frame.
pub(crate) async fn ask_and_wait(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ActorId,
    what: Ask,
) -> Result<Vec<u8>, FabricError> {
    let tenant: Arc<str> = tenant.into();
    let job: Arc<str> = format!("call-{:012x}", rand::random::<u64>() >> 16).into();
    let (result, cell) = host.objects.reserve(&tenant, &job);
    let outcome = match ask(host, None, id, what, cell) {
        Ok(()) => crate::objects::transfer::bytes(host, &tenant, &job, result).await.map(|bytes| bytes.to_vec()),
        Err(error) => Err(error),
    };
    host.objects.drop_job(&tenant, &job);
    match outcome {
        Ok(bytes) if bytes.len() > MAX_INLINE_ANSWER => Err(too_large(id, bytes.len())),
        outcome => outcome,
    }
}

/// Kills actor `id` wherever it lives.
pub(crate) async fn kill(host: &Arc<HostInner>, tenant: &str, id: ActorId) -> Result<(), FabricError> {
    if host.actors.is_local(id) {
        return host.actors.kill(tenant, id);
    }
    let addr = host.cluster.addr_of(&home_of(id)).ok_or_else(|| lost(id, "its host is not in the cluster"))?;
    let request = Request::PeerActorKill { tenant: tenant.to_string(), actor: id.to_string() };
    host.peers.ask(&addr, &request).await.map(|_| ()).map_err(PeerError::into_error)
}

/// Removes the registry's record of each name this host frees.
pub(crate) fn forget_released_names(host: &Arc<HostInner>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    host.actors.on_release(tx);
    let weak = Arc::downgrade(host);
    tokio::spawn(async move {
        while let Some((tenant, name, id)) = rx.recv().await {
            let Some(host) = weak.upgrade() else { return };
            if host.cluster.lease().is_none() {
                continue;
            }
            let location = ActorLocation { host: host.id.clone(), id: id.to_string() };
            if let Err(e) = host.registry.remove_actor(&tenant, &name, &location).await {
                tracing::warn!("cannot forget where actor `{name}` lived: {e}");
            }
        }
    });
}

/// Records every live named actor of this host under `lease` (after a
/// rejoin, the old records went with the old lease).
pub(crate) async fn republish(host: &Arc<HostInner>, lease: LeaseId) {
    for (tenant, name, id) in host.actors.named() {
        let location = ActorLocation { host: host.id.clone(), id: id.to_string() };
        if let Err(e) = host.registry.put_actor(&tenant, &name, &location, lease).await {
            tracing::warn!("cannot record where actor `{name}` lives: {e}");
        }
    }
}

/// Serves a peer's [`Request::PeerActorCreate`]: the id of the actor made
/// (or found) here, as [`Response::Output`]; [`Response::Refused`] for a new
/// actor while this host drains (it would be lost when the host leaves).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_create(
    host: &Arc<HostInner>,
    origin: &str,
    tenant: &str,
    job: &str,
    component: &str,
    class: String,
    args: Vec<u8>,
    spec: ActorSpec,
    get_or_create: bool,
) -> Result<Response, FabricError> {
    let existing =
        || get_or_create && spec.name.as_deref().is_some_and(|name| host.actors.lookup(tenant, name).is_ok());
    if host.refuses_peer_work() && !existing() {
        let why = FabricError::new(ErrorKind::Unavailable, format!("host {} is draining", host.id));
        return Ok(Response::Refused(why));
    }
    let component = super::component_from(host, tenant, component, origin).await?;
    // An actor created as the job ends goes with it.
    let _arrival = super::arrive(host, tenant, job, origin)?;
    let log = JobLog::in_memory(host.config.echo_logs);
    forward_log(host, &log, origin, tenant, job);
    let creator = Job::new(job, tenant, TaskLimits::default(), log);
    let new = NewActor { tenant: tenant.into(), creator, component, class, args, encoding: Encoding::Binary };
    let id = create_here(host, new, options_of(spec), get_or_create).await?;
    Ok(Response::Output(id.to_string().into_bytes()))
}

/// Sends what an actor created here for a peer's job writes to that job's
/// log on its host, as it comes (what piled up meanwhile goes in one
/// request), until the actor is gone, the job has ended or its host left.
fn forward_log(host: &Arc<HostInner>, log: &JobLog, origin: &str, tenant: &str, job: &str) {
    let (_, mut chunks) = log.subscribe();
    let (host, origin, tenant, job) = (host.clone(), origin.to_string(), tenant.to_string(), job.to_string());
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            let mut chunk = match chunks.recv().await {
                Ok(first) => first.to_vec(),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            while chunk.len() < LOG_BATCH {
                match chunks.try_recv() {
                    Ok(more) => chunk.extend_from_slice(&more),
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let request = Request::PeerLog { tenant: tenant.clone(), job: job.clone(), chunk };
            match host.peers.ask(&origin, &request).await {
                Ok(_) => {}
                // The job has ended there, or its host is gone: stop.
                Err(PeerError::Answered(_) | PeerError::Refused(_)) => return,
                Err(PeerError::Lost(e)) => {
                    let members = host.cluster.members(&host.local_info());
                    if !members.iter().any(|member| member.addr == origin) {
                        return;
                    }
                    tracing::warn!(host = %origin, "cannot send an actor's output: {}", e.message);
                }
            }
        }
    });
}

/// Output sent to a job's host in one request at most (more waits for the
/// next).
const LOG_BATCH: usize = 256 << 10;

//! Work that crosses hosts: placing a sub-task, running it on a peer (with
//! retries when the peer is lost), and serving the requests peers send.
//!
//! A job lives on the host that accepted it: its entry task, its record and
//! its log stay there. Each sub-task is placed by the cluster's placement
//! rules; one placed elsewhere runs on the peer under a *shadow* of the job
//! (same tenant and id, so its own sub-tasks and objects are scoped alike)
//! whose log streams back into the real job's log, and whose result comes
//! back over the stream into the task's result object here. Closing the
//! stream (the job stopped) cancels the shadow. A peer that lacks the
//! component fetches it from the job's host and verifies its hash.

pub mod actors;

use crate::cluster::placement::effective_resources;
use crate::hostfns::Encoding;
use crate::joblog::JobLog;
use crate::jobs::Job;
use crate::peers::PeerError;
use crate::runtime::{run_task, TaskSpec};
use crate::HostInner;
use fabric_proto::{Demand, ErrorKind, FabricError, Request, Response, TaskLimits};
use std::sync::Arc;

/// Retries after host loss when a task does not say.
pub const DEFAULT_RETRIES: u32 = 3;

/// Where and how often to try a sub-task.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// What it needs from its host.
    pub demand: Demand,
    /// How many times to run it elsewhere if its host is lost.
    pub retries: u32,
}

/// Runs `spec` wherever placement says, retrying on other hosts when the
/// one running it is lost.
pub(crate) async fn run_anywhere(
    host: &Arc<HostInner>,
    job: &Arc<Job>,
    spec: TaskSpec,
    placement: Placement,
) -> Result<Vec<u8>, FabricError> {
    // One host and nothing asked of it: no placement to do.
    if host.cluster.len() <= 1 && placement.demand == Demand::default() {
        return run_task(host, job, spec).await;
    }
    let needs = effective_resources(&placement.demand);
    let mut avoid: Vec<String> = Vec::new();
    let mut retries = placement.retries;
    loop {
        let target = host.cluster.place(&host.local_info(), &placement.demand, &avoid)?;
        if target == host.id {
            host.cluster.dispatched(&target, &needs);
            let outcome = run_holding(host, job, spec, &needs).await;
            host.cluster.finished(&target, &needs);
            return outcome;
        }
        let Some(addr) = host.cluster.addr_of(&target) else {
            avoid.push(target);
            continue;
        };
        let request = Request::PeerRun {
            origin: host.local_addr(),
            tenant: job.tenant.to_string(),
            job: job.id.to_string(),
            component: spec.component.sha256.clone(),
            function: spec.function.clone(),
            args: spec.args.clone(),
            limits: spec.limits.clone(),
            resources: placement.demand.resources.clone(),
        };
        host.cluster.dispatched(&target, &needs);
        let outcome = tokio::select! {
            biased;
            reason = job.cancelled() => Err(PeerError::Answered(reason)),
            outcome = host.peers.run(&addr, &request, |chunk| job.log.append(chunk)) => outcome,
        };
        host.cluster.finished(&target, &needs);
        match outcome {
            Ok(bytes) => return Ok(bytes),
            Err(PeerError::Answered(error)) => return Err(error),
            Err(PeerError::Lost(error)) if retries > 0 => {
                retries -= 1;
                let note = format!(
                    "[fabric: task `{}` lost its host {target} ({}); running it again elsewhere]\n",
                    spec.function, error.message
                );
                job.log.append(note.as_bytes());
                avoid.push(target);
            }
            Err(PeerError::Lost(error)) => {
                return Err(FabricError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "task `{}` lost its host and has no retries left ({} allowed): {}",
                        spec.function, placement.retries, error.message
                    ),
                ))
            }
        }
    }
}

/// Runs `spec` here once the resources it needs (besides its slot) are free.
async fn run_holding(
    host: &Arc<HostInner>,
    job: &Arc<Job>,
    spec: TaskSpec,
    needs: &[fabric_proto::Resource],
) -> Result<Vec<u8>, FabricError> {
    let _held = tokio::select! {
        biased;
        reason = job.cancelled() => return Err(reason),
        held = host.resources.hold(needs) => held?,
    };
    run_task(host, job, spec).await
}

/// Serves a peer's [`Request::PeerRun`]: runs the task under a shadow of its
/// job, streams the log back, then the outcome.
pub(crate) async fn serve_run(
    host: &crate::Host,
    request: PeerRun,
    send: &mut quinn::SendStream,
) -> Result<(), FabricError> {
    let inner = &host.0;
    let component = component_from(inner, &request.tenant, &request.component, &request.origin).await?;
    let log = JobLog::new(None, inner.config.echo_logs)
        .map_err(|e| FabricError::new(ErrorKind::Internal, format!("cannot create a log: {e}")))?;
    let shadow = Job::new(&request.job, &request.tenant, request.limits.clone(), log.clone());
    let (_, mut chunks) = log.subscribe();
    let spec = TaskSpec {
        component,
        function: request.function,
        args: request.args,
        encoding: Encoding::Binary,
        limits: request.limits,
    };
    let stopped = send.stopped();
    let run = run_holding(inner, &shadow, spec, &request.resources);
    tokio::pin!(run, stopped);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break Some(outcome),
            chunk = chunks.recv() => {
                if let Ok(chunk) = chunk {
                    // A log the origin cannot take is no reason to fail the task.
                    let _ = write_frame_to(send, &Response::Log(chunk.to_vec())).await;
                }
            }
            _ = &mut stopped => break None,
        }
    };
    inner.end_job(&shadow, "the task ended");
    let Some(outcome) = outcome else {
        return Ok(());
    };
    while let Ok(chunk) = chunks.try_recv() {
        let _ = write_frame_to(send, &Response::Log(chunk.to_vec())).await;
    }
    match outcome {
        Ok(bytes) => write_frame_to(send, &Response::Output(bytes)).await,
        Err(error) => Err(error),
    }
}

async fn write_frame_to(send: &mut quinn::SendStream, response: &Response) -> Result<(), FabricError> {
    fabric_proto::write_frame(send, response)
        .await
        .map_err(|e| FabricError::new(ErrorKind::Unavailable, format!("peer stream failed: {e}")))
}

/// The fields of a [`Request::PeerRun`].
pub(crate) struct PeerRun {
    pub origin: String,
    pub tenant: String,
    pub job: String,
    pub component: String,
    pub function: String,
    pub args: Vec<u8>,
    pub limits: TaskLimits,
    pub resources: Vec<fabric_proto::Resource>,
}

/// The component, fetched from `origin` (once, however many tasks ask at
/// the same time) if this host lacks it.
pub(crate) async fn component_from(
    host: &Arc<HostInner>,
    tenant: &str,
    sha256: &str,
    origin: &str,
) -> Result<Arc<crate::components::LoadedComponent>, FabricError> {
    crate::validate_name("tenant", tenant)?;
    if host.components.has(tenant, sha256) {
        return host.components.get(tenant, sha256).await;
    }
    let gate = host
        .fetching
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((tenant.into(), sha256.into()))
        .or_default()
        .clone();
    let _turn = gate.lock().await;
    if host.components.has(tenant, sha256) {
        return host.components.get(tenant, sha256).await;
    }
    // `add` checks the bytes hash to the name asked for.
    let loaded = match host.peers.fetch_component(origin, tenant, sha256).await {
        Ok(bytes) => host.components.add(tenant, bytes, Some(sha256)).await,
        Err(e) => Err(e),
    };
    // Done either way: a failed fetch leaves no gate behind.
    host.fetching.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant.to_string(), sha256.to_string()));
    loaded
}

//! Work that crosses hosts: placing a sub-task, running it on a peer (with
//! retries when the peer is lost), and serving the requests peers send.
//!
//! A job lives on the host that accepted it: its entry task, its record and
//! its log stay there. Each sub-task is placed by the cluster's placement
//! rules; one placed elsewhere runs on the peer under a *shadow* of the job
//! (same tenant and id, so its own sub-tasks and objects are scoped alike)
//! whose log streams back into the real job's log. A small result comes
//! back over the stream into the task's result object here; a large one
//! stays on the peer, and the result object here says where (readers pull
//! it, see `objects::transfer`). Closing the stream (the job stopped)
//! cancels the shadow. A peer that lacks the component fetches it from the
//! job's host and verifies its hash.
//!
//! What a job leaves on a peer (objects its tasks made there, actors it
//! owns there) belongs to a *visiting* job on that peer, which lasts until
//! the job's host says the job ended ([`Request::PeerJobEnded`], passed on
//! to the hosts the visiting job's own tasks reached) or leaves the cluster.

pub mod actors;
pub mod asks;

use crate::cluster::placement::effective_resources;
use crate::hostfns::Encoding;
use crate::joblog::JobLog;
use crate::jobs::Job;
use crate::objects::holds::Declared;
use crate::peers::{PeerError, RunOutput};
use crate::runtime::{run_task_naming, TaskSpec};
use crate::HostInner;
use fabric_proto::{Demand, ErrorKind, FabricError, Request, Response, TaskLimits};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// What a task produced.
#[derive(Debug)]
pub enum TaskOutput {
    /// Its encoded result, here.
    Here {
        /// The result.
        bytes: Vec<u8>,
        /// The objects it names, one reference of each of this host's.
        named: Declared,
    },
    /// Its result, kept on the peer that ran it as object `id`.
    Kept {
        /// The object there.
        id: crate::objects::ObjectId,
        /// Its size.
        len: u64,
        /// The task, to run again if that peer is lost.
        lineage: Option<Arc<Lineage>>,
    },
}

/// How a result kept on a peer was made: the task, for its job, to run
/// again when the peer is lost and a reader still needs the result (Ray's
/// lineage reconstruction). Only task results have one: an object a task
/// `put` gets a new id when its task runs again, so it cannot be rebuilt.
pub struct Lineage {
    job: std::sync::Weak<Job>,
    spec: TaskSpec,
    placement: Placement,
}

impl std::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lineage({}, {} retries)", self.spec.function, self.placement.retries)
    }
}

/// Makes the result whose copy on a lost host (object `lost` there) a reader
/// needs by running its task again, if the task may run again (it has
/// retries left) and its job is still running; else `error` (why the copy
/// could not be pulled) stands, with the reason it was not rebuilt.
pub(crate) async fn rebuild(
    host: &Arc<HostInner>,
    lineage: &Lineage,
    lost: crate::objects::ObjectId,
    error: FabricError,
) -> Result<Vec<u8>, FabricError> {
    let why_not = |reason: &str| FabricError::new(error.kind, format!("{}; {reason}", error.message));
    if lineage.placement.retries == 0 {
        let function = &lineage.spec.function;
        return Err(why_not(&format!("task `{function}` may not run again (retries 0), so it was not rebuilt")));
    }
    let Some(job) = lineage.job.upgrade() else {
        return Err(why_not("its job has ended"));
    };
    let note = format!(
        "[fabric: the result of task `{}` was lost with host {}; running the task again to rebuild it]\n",
        lineage.spec.function,
        lost.holder()
    );
    job.log.append(note.as_bytes());
    let placement = Placement { retries: lineage.placement.retries - 1, ..lineage.placement.clone() };
    match Box::pin(run_anywhere(host, &job, lineage.spec.clone(), placement, &[])).await? {
        TaskOutput::Here { bytes, named } => {
            // The reader's copy is made from it: kept until the job ends.
            named.settle();
            Ok(bytes)
        }
        TaskOutput::Kept { id, .. } => {
            let pulled = crate::objects::transfer::pull(host, &job.tenant, id, 0, crate::objects::transfer::Want::Rest)
                .await
                .map(|(data, _)| data);
            // The reader's copy is made from it: the new peer's can go.
            host.objects.release_kept(&job.tenant, id);
            pulled
        }
    }
}

/// Runs `spec` wherever placement says, retrying on other hosts when the
/// one running it is lost. `named`: the objects its arguments name; a peer
/// that runs it says which objects of other hosts its task kept, and those
/// live until their job ends (all of `named`, if the task failed or its
/// host was lost).
pub(crate) async fn run_anywhere(
    host: &Arc<HostInner>,
    job: &Arc<Job>,
    spec: TaskSpec,
    placement: Placement,
    named: &[crate::objects::ObjectId],
) -> Result<TaskOutput, FabricError> {
    // One host and nothing asked of it: no placement to do.
    if host.cluster.len() <= 1 && placement.demand == Demand::default() {
        return run_task_naming(host, job, spec).await.map(|(bytes, named)| TaskOutput::Here { bytes, named });
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
            return outcome.map(|(bytes, named)| TaskOutput::Here { bytes, named });
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
        job.reached(&addr);
        let outcome = tokio::select! {
            biased;
            reason = job.cancelled() => Err(PeerError::Answered(reason)),
            outcome = host.peers.run(&addr, &request, |chunk| job.log.append(chunk)) => outcome,
        };
        host.cluster.finished(&target, &needs);
        // The objects the peer's task kept live until their job ends; what it
        // only read goes when nothing here refers to it. A task that failed
        // or was lost may have handed any of its arguments on.
        match &outcome {
            Ok((_, borrowed)) => {
                let kept: Vec<crate::objects::ObjectId> = borrowed.iter().copied().map(Into::into).collect();
                host.objects.escape(&job.tenant, &kept);
            }
            Err(PeerError::Refused(_)) => {}
            Err(PeerError::Answered(_) | PeerError::Lost(_)) => host.objects.escape(&job.tenant, named),
        }
        match outcome.map(|(output, _)| output) {
            Ok(RunOutput::Inline { bytes, names }) => {
                let named = Declared::naming(&host.objects, &job.tenant, names.into_iter().map(Into::into));
                return Ok(TaskOutput::Here { bytes, named });
            }
            Ok(RunOutput::Kept { id, len }) => {
                let lineage = Lineage { job: Arc::downgrade(job), spec, placement };
                return Ok(TaskOutput::Kept { id: id.into(), len, lineage: Some(Arc::new(lineage)) });
            }
            Err(PeerError::Answered(error)) => return Err(error),
            Err(PeerError::Refused(error)) => {
                let note = format!(
                    "[fabric: host {target} would not take task `{}` ({}); placing it elsewhere]\n",
                    spec.function, error.message
                );
                job.log.append(note.as_bytes());
                avoid.push(target);
            }
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
) -> Result<(Vec<u8>, Declared), FabricError> {
    let _held = tokio::select! {
        biased;
        reason = job.cancelled() => return Err(reason),
        held = host.resources.hold(needs) => held?,
    };
    run_task_naming(host, job, spec).await
}

/// Serves a peer's [`Request::PeerRun`]: runs the task under a shadow of its
/// job, streams the log back, then the outcome.
pub(crate) async fn serve_run(
    host: &crate::Host,
    request: PeerRun,
    send: &mut quinn::SendStream,
) -> Result<(), FabricError> {
    let inner = &host.0;
    crate::validate_name("tenant", &request.tenant)?;
    if inner.refuses_peer_work() {
        // The sender's view did not show the drain yet: it places the task
        // elsewhere at once rather than wait for this host's deadline.
        let why = FabricError::new(ErrorKind::Unavailable, format!("host {} is draining", inner.id));
        return write_frame_to(send, &Response::Refused(why)).await;
    }
    let component = component_from(inner, &request.tenant, &request.component, &request.origin).await?;
    // Whatever it stores here is freed when it is done, should the job end meanwhile.
    let _arrival = arrive(inner, &request.tenant, &request.job, &request.origin)?;
    let log = JobLog::in_memory(inner.config.echo_logs);
    let shadow = Job::shadow(&request.job, &request.tenant, request.limits.clone(), log.clone());
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
    // Stragglers stop with the task; what it left here stays with the
    // visiting job.
    shadow.cancel(FabricError::new(ErrorKind::Cancelled, "the task ended"));
    if inner.visiting.has_ended(&request.tenant, &request.job) {
        // The end came while it ran: the peers it reached hear it from here.
        tell_ended(inner, &request.tenant, &request.job, shadow.peers());
    } else {
        inner.visiting.reached(&request.tenant, &request.job, shadow.peers());
    }
    let Some(outcome) = outcome else {
        return Ok(());
    };
    while let Ok(chunk) = chunks.try_recv() {
        let _ = write_frame_to(send, &Response::Log(chunk.to_vec())).await;
    }
    if outcome.is_ok() {
        for frame in crate::objects::id_frames(shadow.borrowed(), Response::Borrowed) {
            write_frame_to(send, &frame).await?;
        }
    }
    match outcome {
        // A host shutting down hands its result back rather than keep it
        // (as far as one frame carries; a larger one is rebuilt or lost).
        Ok((bytes, named))
            if bytes.len() <= crate::objects::transfer::INLINE_MAX
                || (inner.drain.is_draining() && bytes.len() <= fabric_proto::MAX_FRAME - 1024) =>
        {
            // What it names goes where this host cannot count it; its
            // holder lists it.
            let names = crate::objects::id_frames(named.ids().iter().copied(), Response::ResultNames);
            named.settle();
            for frame in names {
                write_frame_to(send, &frame).await?;
            }
            write_frame_to(send, &Response::Output(bytes)).await
        }
        Ok((bytes, named)) => {
            let len = bytes.len() as u64;
            let id = inner.objects.put_naming(&shadow.tenant, &shadow.id, bytes, named.hand_over())?;
            write_frame_to(send, &Response::Stored { id: id.into(), len }).await
        }
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

/// Jobs of other hosts that left objects or actors here, and those whose
/// end came lately.
///
/// Why remember ended ones: a job's end and its last work travel on
/// different streams, so work can arrive after the end (an ask, a task, an
/// actor to create). What it left would have no job to free it. A task or
/// an actor of an ended job is refused ([`arrive`]), and an ask of one is
/// answered inline, keeping nothing; work that arrived before the end but
/// stores what it makes after it (a result, an actor, an answer kept)
/// frees it when it sees the end ([`Arrival`], [`after_arrival`]).
#[derive(Debug, Default)]
pub(crate) struct Visiting {
    state: Mutex<VisitState>,
}

#[derive(Debug, Default)]
struct VisitState {
    jobs: HashMap<(String, String), VisitingJob>,
    /// tenant -> jobs whose end came here, at most [`ENDED_REMEMBERED`]
    /// (the oldest forgotten first, in `ended_order`).
    ended: HashMap<String, HashSet<String>>,
    ended_order: VecDeque<(String, String)>,
}

/// How many ended visiting jobs a host remembers (a few MiB at most): far
/// more than can end while work of theirs is still on its way.
const ENDED_REMEMBERED: usize = 16_384;

#[derive(Debug)]
struct VisitingJob {
    /// The address of the host that sent it here.
    origin: String,
    /// Peers its tasks here reached in turn: told when it ends.
    peers: Vec<String>,
}

impl Visiting {
    fn lock(&self) -> MutexGuard<'_, VisitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `origin` sent work of `tenant`'s `job` here; an error if
    /// the job has ended.
    fn note(&self, tenant: &str, job: &str, origin: &str) -> Result<(), FabricError> {
        let mut state = self.lock();
        if state.has_ended(tenant, job) {
            return Err(ended(job));
        }
        state
            .jobs
            .entry((tenant.to_string(), job.to_string()))
            .or_insert_with(|| VisitingJob { origin: origin.to_string(), peers: Vec::new() });
        Ok(())
    }

    /// Whether `tenant`'s `job` ended (its host said so).
    pub(crate) fn has_ended(&self, tenant: &str, job: &str) -> bool {
        self.lock().has_ended(tenant, job)
    }

    /// Notes the peers a task of the visiting job reached from here.
    fn reached(&self, tenant: &str, job: &str, peers: Vec<String>) {
        if peers.is_empty() {
            return;
        }
        if let Some(visit) = self.lock().jobs.get_mut(&(tenant.to_string(), job.to_string())) {
            add_peers(&mut visit.peers, peers);
        }
    }

    /// Forgets the visiting job, remembering that it ended when `ended`;
    /// returns the peers to tell.
    fn leave(&self, tenant: &str, job: &str, ended: bool) -> Vec<String> {
        let mut state = self.lock();
        if ended && !state.has_ended(tenant, job) {
            if state.ended_order.len() == ENDED_REMEMBERED {
                if let Some((tenant, job)) = state.ended_order.pop_front() {
                    if let Some(jobs) = state.ended.get_mut(&tenant) {
                        jobs.remove(&job);
                        if jobs.is_empty() {
                            state.ended.remove(&tenant);
                        }
                    }
                }
            }
            state.ended.entry(tenant.to_string()).or_default().insert(job.to_string());
            state.ended_order.push_back((tenant.to_string(), job.to_string()));
        }
        state.jobs.remove(&(tenant.to_string(), job.to_string())).map(|v| v.peers).unwrap_or_default()
    }

    /// Forgets every job `origin` sent; returns them with the peers to tell.
    fn leave_all_from(&self, origin: &str) -> Vec<(String, String, Vec<String>)> {
        let jobs = &mut self.lock().jobs;
        let gone: Vec<(String, String)> =
            jobs.iter().filter(|(_, v)| v.origin == origin).map(|(k, _)| k.clone()).collect();
        gone.into_iter().filter_map(|key| jobs.remove(&key).map(|v| (key.0, key.1, v.peers))).collect()
    }
}

impl VisitState {
    fn has_ended(&self, tenant: &str, job: &str) -> bool {
        self.ended.get(tenant).is_some_and(|jobs| jobs.contains(job))
    }
}

/// The error for work of a job that has ended.
fn ended(job: &str) -> FabricError {
    FabricError::new(ErrorKind::Cancelled, format!("job {job} has ended: its work is not taken"))
}

/// Work of a visiting job under way here (see [`Visiting`]): once it is
/// over (dropped), what the job left here is freed if its end came
/// meanwhile, since the end freed only what was here when it came.
pub(crate) struct Arrival {
    host: Arc<HostInner>,
    tenant: String,
    job: String,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        after_arrival(&self.host, &self.tenant, &self.job);
    }
}

/// Notes that `origin` sent work of `tenant`'s `job` here, to run while the
/// returned [`Arrival`] lives; an error if the job has ended.
pub(crate) fn arrive(host: &Arc<HostInner>, tenant: &str, job: &str, origin: &str) -> Result<Arrival, FabricError> {
    host.visiting.note(tenant, job, origin)?;
    Ok(Arrival { host: host.clone(), tenant: tenant.to_string(), job: job.to_string() })
}

/// Frees what `tenant`'s `job` left here if its end came already: called by
/// work that arrived before the end once it has stored what it made.
pub(crate) fn after_arrival(host: &Arc<HostInner>, tenant: &str, job: &str) {
    if host.visiting.has_ended(tenant, job) {
        free_visit(host, tenant, job);
    }
}

/// Notes that `job`, of this host, is ending; returns the peers its work
/// that came back here from a peer reached from here.
pub(crate) fn own_job_ending(host: &HostInner, job: &Job) -> Vec<String> {
    host.visiting.leave(&job.tenant, &job.id, true)
}

/// Tells every peer `job` reached (itself, or its work that came back here,
/// `came_back`) that it ended, so they free what it left there.
pub(crate) fn job_ended(host: &Arc<HostInner>, job: &Job, came_back: Vec<String>) {
    let mut peers = job.peers();
    add_peers(&mut peers, came_back);
    tell_ended(host, &job.tenant, &job.id, peers);
}

/// Adds to `peers` those of `more` it lacks.
fn add_peers(peers: &mut Vec<String>, more: Vec<String>) {
    for peer in more {
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
}

fn tell_ended(host: &Arc<HostInner>, tenant: &str, job: &str, peers: Vec<String>) {
    let me = host.local_addr();
    for addr in peers.into_iter().filter(|addr| *addr != me) {
        let request = Request::PeerJobEnded { tenant: tenant.to_string(), job: job.to_string() };
        tell(host, addr, request, "that a job ended");
    }
}

/// Sends `request` to the peer at `addr` on its own task; a failure is
/// logged as "cannot tell ADDR `what`".
pub(crate) fn tell(host: &Arc<HostInner>, addr: String, request: Request, what: &'static str) {
    let host = host.clone();
    tokio::spawn(async move {
        if let Err(e) = host.peers.ask(&addr, &request).await {
            tracing::warn!("cannot tell {addr} {what}: {}", e.into_error());
        }
    });
}

/// A visiting job ended (its host said so): its actors and objects here go,
/// and the peers it reached from here are told in turn.
pub(crate) fn visit_ended(host: &Arc<HostInner>, tenant: &str, job: &str) {
    // Noted as ended before what it left is freed: work of its that stores
    // something after this frees it itself (`after_arrival`).
    let peers = host.visiting.leave(tenant, job, !host.is_live(tenant, job));
    free_visit(host, tenant, job);
    tell_ended(host, tenant, job, peers);
}

/// The host at `origin` left the cluster: the jobs it sent here are over.
/// Their work elsewhere is not passed on: the job's own host may still be
/// alive and owns it.
pub(crate) fn origin_left(host: &Arc<HostInner>, origin: &str) {
    for (tenant, job, _) in host.visiting.leave_all_from(origin) {
        free_visit(host, &tenant, &job);
    }
}

/// Frees what a visiting job left here, unless the job also lives here (a
/// job's own host may be told of its end by a peer its tasks reached).
fn free_visit(host: &Arc<HostInner>, tenant: &str, job: &str) {
    // A job of this host that is ending is still listed live a moment
    // (while its record is written), but has ended.
    if host.is_live(tenant, job) && !host.visiting.has_ended(tenant, job) {
        return;
    }
    host.actors.kill_owned_by(tenant, job);
    host.objects.drop_job(&tenant.into(), &job.into());
}

/// What every other member lists in answer to `request` (`take` finds the
/// list in an answer, or shows the unexpected answer, which is logged), for
/// the cluster-wide listings of `what`.
pub(crate) async fn gather_from_members<T>(
    host: &Arc<HostInner>,
    request: &Request,
    what: &str,
    take: impl Fn(Response) -> Result<Vec<T>, String>,
) -> Vec<T> {
    let mut all = Vec::new();
    for (peer, answer) in ask_members(host, request).await {
        match take(answer) {
            Ok(listed) => all.extend(listed),
            Err(other) => tracing::warn!(host = %peer, "unexpected answer to {what}: {other}"),
        }
    }
    all
}

/// Sends `request` to every other member at once and returns the answers of
/// those that gave one within two seconds (the others are logged).
pub(crate) async fn ask_members(host: &Arc<HostInner>, request: &Request) -> Vec<(String, Response)> {
    let members = host.cluster.members(&host.local_info());
    let asks = members.into_iter().filter(|m| m.id != host.id).map(|member| async move {
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(2), host.peers.ask(&member.addr, request)).await;
        match answer {
            Ok(Ok(response)) => Some((member.id, response)),
            Ok(Err(e)) => {
                tracing::warn!(host = %member.id, "no answer: {}", e.into_error());
                None
            }
            Err(_) => {
                tracing::warn!(host = %member.id, "no answer within two seconds");
                None
            }
        }
    });
    futures_util::future::join_all(asks).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_of_a_job_whose_end_came_is_refused_and_ends_are_remembered_within_a_bound() {
        let visiting = Visiting::default();
        visiting.note("t", "j", "a").unwrap();
        assert!(!visiting.has_ended("t", "j"));
        visiting.leave("t", "j", true);
        let error = visiting.note("t", "j", "a").unwrap_err();
        assert_eq!(error.kind, ErrorKind::Cancelled);
        assert!(error.message.contains("job j has ended"), "{}", error.message);
        // Another tenant's job of that name, and a job whose host left (not
        // ended), are not refused.
        visiting.note("u", "j", "a").unwrap();
        visiting.note("t", "k", "gone").unwrap();
        assert_eq!(visiting.leave_all_from("gone").len(), 1);
        visiting.note("t", "k", "gone").unwrap();
        // The oldest end is forgotten once ENDED_REMEMBERED more came.
        for n in 0..ENDED_REMEMBERED {
            visiting.leave("t", &format!("e{n}"), true);
        }
        visiting.note("t", "j", "a").unwrap();
        assert!(visiting.has_ended("t", "e0") && visiting.has_ended("t", &format!("e{}", ENDED_REMEMBERED - 1)));
        assert_eq!(visiting.lock().ended_order.len(), ENDED_REMEMBERED);
    }

    #[tokio::test]
    async fn what_work_stores_after_its_jobs_end_is_freed_when_the_work_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::Host::new(crate::HostConfig::new(dir.path())).await.unwrap();
        let inner = &host.0;
        let (tenant, job): (Arc<str>, Arc<str>) = ("t".into(), "visiting".into());
        let arrival = arrive(inner, "t", "visiting", "127.0.0.1:9").unwrap();
        inner.objects.put(&tenant, &job, vec![1; 10]).unwrap();
        // Its end frees what is here, and refuses what comes after.
        visit_ended(inner, "t", "visiting");
        assert_eq!(inner.objects.footprint().objects, 0);
        assert_eq!(arrive(inner, "t", "visiting", "127.0.0.1:9").err().map(|e| e.kind), Some(ErrorKind::Cancelled));
        // Work under way stores its result after the end: freed as it ends.
        inner.objects.put(&tenant, &job, vec![2; 10]).unwrap();
        assert_eq!(inner.objects.footprint().objects, 1);
        drop(arrival);
        assert_eq!(inner.objects.footprint().objects, 0);
        // Work of a job that has not ended leaves its objects with it.
        let own = arrive(inner, "t", "other", "127.0.0.1:9").unwrap();
        inner.objects.put(&tenant, &"other".into(), vec![3; 10]).unwrap();
        drop(own);
        assert_eq!(inner.objects.footprint().objects, 1, "a job that did not end keeps its objects");
        // A job of this host's own that ended: its work that a peer sends
        // back later is refused.
        let log = JobLog::in_memory(false);
        let job = Job::new("mine", "t", TaskLimits::default(), log);
        inner.end_job(&job, "the job ended");
        assert_eq!(arrive(inner, "t", "mine", "127.0.0.1:9").err().map(|e| e.kind), Some(ErrorKind::Cancelled));
    }
}

//! The wire protocol between fabric clients and hosts.
//!
//! Every message is an rkyv archive in a length-prefixed frame:
//! `u32 little-endian length | archive bytes`. A reader checks the length
//! against a limit before allocating, then validates the archive with
//! bytecheck before it touches a field: a malformed or hostile frame is an
//! [`WireError`], never a panic. Bulk bytes (a component upload) follow their
//! header frame raw on the same stream, which is a stream of its own, so a
//! large transfer never delays small requests on other streams.
//!
//! Each request opens one bidirectional QUIC stream: the client writes one
//! [`Request`] frame (plus raw bytes for an upload) and reads [`Response`]
//! frames until the one that ends the exchange.
#![warn(missing_docs)]

use rkyv::{rancor, Archive, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// ALPN protocol name clients and hosts agree on; bump on breaking changes.
pub const ALPN: &[u8] = b"fabric/0";

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Largest control frame accepted (requests and responses other than bulk).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The most ids one frame listing objects ([`Response::Borrowed`],
/// [`Response::PinParts`], [`Response::ResultNames`]) carries.
pub const MAX_IDS_PER_FRAME: usize = 1 << 16;

/// The most bytes one [`Request::ObjectRead`] answer carries: a client reads
/// a larger object in several.
pub const MAX_OBJECT_READ: u64 = 8 << 20;

/// Largest component accepted for upload.
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// What kind of failure an error is; mirrors `fabric:core/types.error`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The thing named does not exist for this tenant.
    NotFound,
    /// Guest code trapped.
    Trapped,
    /// Wall-clock timeout or CPU budget ran out.
    TimedOut,
    /// A memory cap, size limit or quota was hit.
    ResourceLimit,
    /// Bad arguments or input.
    InvalidArgument,
    /// The host cannot serve this now.
    Unavailable,
    /// The job was stopped.
    Cancelled,
    /// The task returned an error of its own.
    Failed,
    /// The actor is dead.
    ActorDead,
    /// A failure inside the host.
    Internal,
}

impl ErrorKind {
    /// The kebab-case name used in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Trapped => "trapped",
            ErrorKind::TimedOut => "timed-out",
            ErrorKind::ResourceLimit => "resource-limit",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Failed => "failed",
            ErrorKind::ActorDead => "actor-dead",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error as it crosses the wire and is stored in job records.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FabricError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, for a person.
    pub message: String,
}

impl FabricError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        FabricError { kind, message: message.into() }
    }
}

impl std::fmt::Display for FabricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for FabricError {}

/// Where a job is in its life.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Accepted, waiting for a slot.
    Queued,
    /// Its entry task is running.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by `fabric stop`.
    Stopped,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Stopped)
    }
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        }
    }
}

/// Limits for a job's tasks; unset fields take the host's defaults.
#[derive(
    Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
pub struct TaskLimits {
    /// Wall-clock limit per task, milliseconds.
    pub timeout_ms: Option<u64>,
    /// CPU budget per task, milliseconds.
    pub cpu_ms: Option<u64>,
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: Option<u64>,
}

/// The durable record of a job.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// The tenant it runs for.
    pub tenant: String,
    /// sha256 hex of its component.
    pub component: String,
    /// The entry function.
    pub function: String,
    /// Where it is in its life.
    pub state: JobState,
    /// Unix milliseconds when submitted.
    pub submitted_ms: u64,
    /// Unix milliseconds when its entry task started.
    pub started_ms: Option<u64>,
    /// Unix milliseconds when it ended.
    pub finished_ms: Option<u64>,
    /// The entry function's JSON result, when it succeeded.
    pub result: Option<String>,
    /// The error, when it failed or was stopped.
    pub error: Option<FabricError>,
}

/// An actor as `fabric actors` shows it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActorInfo {
    /// The actor's id (hex).
    pub id: String,
    /// Its name, if any.
    pub name: Option<String>,
    /// Its class.
    pub class: String,
    /// Its tenant.
    pub tenant: String,
    /// `alive` or `dead`.
    pub state: String,
    /// Why it is dead.
    pub cause: Option<FabricError>,
    /// Calls completed.
    pub calls: u64,
    /// Restarts after traps.
    pub restarts: u32,
    /// The job that owns it; none when detached.
    pub owner: Option<String>,
    /// The host it lives on.
    pub host: String,
}

/// One named, countable resource: `cpu` (task slots), `memory` (bytes),
/// `gpu` (devices) or any custom name a host declares.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    /// Its name.
    pub name: String,
    /// How much.
    pub amount: u64,
}

/// A `key=value` label on a host, which work may require.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Label {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// How work is spread over the hosts that can take it.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Run where the work was submitted while that host has room; spill to
    /// the least loaded host that fits otherwise (Ray's default).
    #[default]
    Local,
    /// Prefer the least loaded host that fits, wherever it is.
    Spread,
    /// Prefer the most loaded host that still fits (keep hosts free).
    Pack,
}

/// What a task or actor needs from the host it runs on.
#[derive(
    Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
pub struct Demand {
    /// Resources held while it runs; a task with none holds one `cpu`.
    pub resources: Vec<Resource>,
    /// The pool its host must belong to.
    pub pool: Option<String>,
    /// Labels its host must carry.
    pub labels: Vec<Label>,
    /// How to choose among hosts that fit.
    pub strategy: Strategy,
}

/// A host as the membership records it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// The host's id (unique per process start).
    pub id: String,
    /// The QUIC address clients and peers reach it at.
    pub addr: String,
    /// What it has in all.
    pub capacity: Vec<Resource>,
    /// What running work holds now (its load report).
    pub used: Vec<Resource>,
    /// Tasks waiting for room on it.
    pub queued: u64,
    /// Its pool, if any.
    pub pool: Option<String>,
    /// Its labels.
    pub labels: Vec<Label>,
    /// Unix milliseconds when it joined.
    pub started_ms: u64,
    /// Shutting down: it finishes what it runs and takes nothing new.
    #[serde(default)]
    pub draining: bool,
}

/// An object's id on the wire: the minting host's id in `hi`, a counter in
/// `lo`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireObjectId {
    /// The host that minted it (and holds it, unless it moved).
    pub hi: u64,
    /// Its number on that host.
    pub lo: u64,
}

/// What one job holds in one host's object store.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobObjects {
    /// The owning job.
    pub job: String,
    /// How many objects (ready or pending).
    pub objects: u64,
    /// Their bytes in memory.
    pub bytes: u64,
}

/// One host's object store, for one tenant.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostObjects {
    /// The host's id.
    pub host: String,
    /// The tenant's objects there, per owning job.
    pub jobs: Vec<JobObjects>,
    /// Objects this host pulled from peers (all tenants) since it started.
    pub pulls: u64,
    /// Bytes it pulled.
    pub pulled_bytes: u64,
    /// Ranges it pulled again after a truncated or corrupted transfer.
    pub retried_ranges: u64,
    /// Bytes of objects (all tenants) in the host's memory now.
    pub memory_bytes: u64,
    /// Its object memory budget; past it, objects spill to disk.
    pub memory_budget: u64,
    /// Bytes of objects (all tenants) in spill files now.
    pub spilled_bytes: u64,
    /// Objects spilled since the host started.
    pub spills: u64,
    /// Copies of other hosts' objects dropped for memory (not spilled:
    /// their holders have them) since the host started.
    pub dropped_copies: u64,
    /// Copies of other hosts' objects too large to keep in memory, written
    /// to disk as they arrived, since the host started.
    #[serde(default)]
    pub disk_copies: u64,
    /// Bytes of objects (all tenants) this host sent to peers since it
    /// started.
    pub served_bytes: u64,
    /// Pin and unpin requests (each for up to [`MAX_IDS_PER_FRAME`]
    /// objects) peers sent this host since it started.
    #[serde(default)]
    pub pin_requests: u64,
}

/// What a deployment's component is, which decides how the gateway calls it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentKind {
    /// Exports `wasi:http/incoming-handler`: requests under its route reach
    /// it as they came.
    Http,
    /// Guest SDK tasks, called as `POST /v1/call/<name>/<function>` with
    /// JSON arguments.
    Tasks,
}

impl DeploymentKind {
    /// `http` or `tasks`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Http => "http",
            DeploymentKind::Tasks => "tasks",
        }
    }
}

/// What `fabric deploy` asks for.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentSpec {
    /// The deployment's name, unique within its tenant.
    pub name: String,
    /// sha256 hex of its component.
    pub component: String,
    /// The path prefix it serves under (`/hello`); none for a task
    /// deployment reached only through `/v1/call`.
    pub route: Option<String>,
    /// Replicas kept warm on each host even when idle.
    pub min: u32,
    /// Replicas at most on each host.
    pub max: u32,
    /// Requests in flight per replica the autoscaler aims for.
    pub target_concurrency: u32,
    /// Milliseconds of lower load before replicas are let go.
    pub scale_down_delay_ms: u64,
    /// A fresh instance per request instead of pooled ones.
    pub isolate: bool,
    /// Largest request body accepted, bytes (larger gets 413).
    pub max_body_bytes: u64,
    /// Per request: `timeout_ms` (then 504), CPU and memory caps.
    pub limits: TaskLimits,
    /// What a replica needs from its host (resources per replica, pool,
    /// labels): hosts that cannot meet it run no replicas and forward.
    pub demand: Demand,
    /// Calls of one function of a task deployment gathered into one call
    /// with a list (none: each request is its own call).
    pub batch: Option<Batching>,
}

/// Request batching for a task deployment (Ray Serve's `@serve.batch`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batching {
    /// The function that takes a batch (its one parameter is the list).
    pub function: String,
    /// Requests per call at most.
    pub max_size: u32,
    /// Milliseconds the first request of a batch waits for more.
    pub max_wait_ms: u64,
}

/// One header of an HTTP request or response a host forwards to another.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HttpHeader {
    /// Its name.
    pub name: String,
    /// Its value, as sent.
    pub value: Vec<u8>,
}

/// A deployment as the registry records it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    /// Its tenant.
    pub tenant: String,
    /// What was asked for.
    pub spec: DeploymentSpec,
    /// What its component is.
    pub kind: DeploymentKind,
    /// 1 for the first deploy of this name, then one more per redeploy.
    pub version: u64,
    /// Unix milliseconds of this version's deploy.
    pub deployed_ms: u64,
    /// The address of the host it was deployed through (it has the
    /// component; other hosts fetch it from there).
    pub origin: String,
}

/// One host's replicas of one deployment.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replicas {
    /// The host's id.
    pub host: String,
    /// The deployment's name.
    pub name: String,
    /// The version these replicas run.
    pub version: u64,
    /// Replicas the autoscaler wants now.
    pub desired: u32,
    /// Instances there now (busy or idle).
    pub instances: u32,
    /// Requests being handled.
    pub busy: u32,
    /// Requests waiting for a replica.
    pub queued: u32,
    /// Requests answered since this version started there.
    pub served: u64,
    /// Replicas this host may run at most (`--max`, bounded by what its
    /// resources hold of the deployment's demand; 0: it cannot run one).
    pub cap: u32,
}

/// The end of one host's log of a deployment (its instances' output and
/// the gateway's notes about failed requests), as `fabric logs
/// --deployment` shows it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentLog {
    /// The host's id.
    pub host: String,
    /// The version serving there.
    pub version: u64,
    /// What was asked for: its last [`DEPLOYMENT_LOG_TAIL`] bytes at most,
    /// or what came after a [`LogPosition`].
    pub text: Vec<u8>,
    /// Where the log ends now, to follow it from.
    pub end: u64,
    /// The log's random id (a later log of the same host and version, after
    /// an undeploy or a restart, has another).
    pub log: u64,
}

/// How far a follower has read one host's log of a deployment version.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    /// The host's id.
    pub host: String,
    /// The version.
    pub version: u64,
    /// The log's id ([`DeploymentLog::log`]).
    pub log: u64,
    /// Bytes of it read.
    pub offset: u64,
}

/// How much of each host's log of a deployment `fabric logs --deployment`
/// gets (the hosts keep up to 8 MiB each).
pub const DEPLOYMENT_LOG_TAIL: usize = 1 << 20;

/// A deployment and its replicas on every host, as `fabric deployments`
/// shows it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentInfo {
    /// The record.
    pub deployment: Deployment,
    /// Its replicas, per host.
    pub replicas: Vec<Replicas>,
}

/// Where a named actor lives, as the registry records it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActorLocation {
    /// The id of the host running it.
    pub host: String,
    /// The actor's id (32 hex digits).
    pub id: String,
}

/// How an actor lives, as one host asks another to create it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ActorSpec {
    /// What its host must have.
    pub demand: Demand,
    /// Unique within the tenant.
    pub name: Option<String>,
    /// Outlives its creating job.
    pub detached: bool,
    /// Restarts after traps before it is dead.
    pub max_restarts: u32,
    /// Mailbox bound.
    pub max_pending: Option<u32>,
    /// Snapshot every this many calls (0: not by count).
    pub snapshot_every: u32,
    /// Snapshot after a call when the last is older than this.
    pub snapshot_interval_ms: Option<u64>,
    /// Memory cap of its instance.
    pub memory_bytes: Option<u64>,
}

/// A job to run.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SubmitRequest {
    /// sha256 hex of the component (uploaded before, or asked for).
    pub component: String,
    /// The entry function.
    pub function: String,
    /// JSON arguments.
    pub args: String,
    /// Limits for the job's tasks.
    pub limits: TaskLimits,
    /// Return once accepted instead of streaming the log and result.
    pub detach: bool,
}

pub use messages::{ActorAsk, Request, Response};

/// The request and response enums. rkyv's derive generates resolver types
/// whose fields cannot carry docs, hence the allowance on this module only.
#[allow(missing_docs)]
mod messages {
    use super::*;

    /// A client's request: one per stream.
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Request {
        /// Is the host up? Answered with [`Response::Pong`].
        Ping,
        /// Upload a component: `len` raw bytes follow this frame.
        Upload {
            /// Tenant that owns the upload.
            tenant: String,
            /// sha256 hex the bytes must hash to.
            sha256: String,
            /// Number of bytes that follow.
            len: u64,
        },
        /// Run a job.
        Submit {
            /// Tenant to run for.
            tenant: String,
            /// The job.
            job: SubmitRequest,
        },
        /// List the tenant's jobs.
        Jobs {
            /// Whose jobs.
            tenant: String,
        },
        /// One job's record.
        Status {
            /// Whose job.
            tenant: String,
            /// Which job.
            job: String,
        },
        /// A job's log; with `follow`, until the job ends.
        Logs {
            /// Whose job.
            tenant: String,
            /// Which job.
            job: String,
            /// Keep streaming until the job ends.
            follow: bool,
        },
        /// Stop a job.
        Stop {
            /// Whose job.
            tenant: String,
            /// Which job.
            job: String,
        },
        /// List the tenant's actors.
        Actors {
            /// Whose actors.
            tenant: String,
        },
        /// Call a method of a named actor with JSON arguments.
        ActorCall {
            /// Whose actor.
            tenant: String,
            /// Its name (or hex id).
            actor: String,
            /// The method.
            method: String,
            /// JSON arguments.
            args: String,
        },
        /// Kill a named actor.
        ActorKill {
            /// Whose actor.
            tenant: String,
            /// Its name (or hex id).
            actor: String,
        },
        /// The cluster's members as this host sees them.
        Hosts,
        /// Host to host: run one task of a job that lives on another host.
        /// Answered with [`Response::Log`] frames while it runs, then
        /// [`Response::Output`] (a small result), [`Response::Stored`] (a
        /// large one, kept on the peer) or [`Response::Error`]. Closing the
        /// stream cancels the task.
        PeerRun {
            /// The address of the host whose job this is (it has the component).
            origin: String,
            /// Whose job.
            tenant: String,
            /// The job's id.
            job: String,
            /// sha256 hex of the component.
            component: String,
            /// The function.
            function: String,
            /// Binary-encoded arguments.
            args: Vec<u8>,
            /// The task's limits.
            limits: TaskLimits,
            /// What it holds while it runs (besides its slot).
            resources: Vec<Resource>,
        },
        /// Host to host: create (or with `get_or_create` find) an actor here
        /// for a job on `origin`; answered with [`Response::Output`] holding
        /// its id.
        PeerActorCreate {
            /// The address of the creating job's host (it has the component).
            origin: String,
            /// Whose actor.
            tenant: String,
            /// The creating job (the owner unless detached).
            job: String,
            /// sha256 hex of the component exporting the class.
            component: String,
            /// The class.
            class: String,
            /// Binary-encoded constructor arguments.
            args: Vec<u8>,
            /// How it lives.
            spec: ActorSpec,
            /// Return the live actor of that name instead of failing.
            get_or_create: bool,
        },
        /// Host to host: opens a stream of asks of an actor here, in order.
        /// [`ActorAsk`] frames follow, each enqueued in the actor's mailbox
        /// as it arrives; each is answered, in the same order, with
        /// [`Response::Output`], [`Response::Stored`] (an answer too large
        /// to send inline, kept here for the asking job) or
        /// [`Response::Error`]. The caller ends the stream when it has
        /// nothing more to ask.
        PeerActorAsks {
            /// Whose actor.
            tenant: String,
            /// Its id (32 hex digits).
            actor: String,
            /// The address of the asking host (whose jobs' answers are kept
            /// here until it says they ended).
            origin: String,
        },
        /// Host to host: kill an actor here.
        PeerActorKill {
            /// Whose actor.
            tenant: String,
            /// Its id (32 hex digits).
            actor: String,
        },
        /// Host to host: the tenant's actors on this host alone.
        PeerActors {
            /// Whose actors.
            tenant: String,
        },
        /// Host to host: a job ended; free what it left here (its actors
        /// and objects) and pass the news on to the hosts its tasks here
        /// reached.
        PeerJobEnded {
            /// Whose job.
            tenant: String,
            /// Which job.
            job: String,
        },
        /// Host to host: output of an actor a job created on the sending
        /// host, for that job's log here. Answered with [`Response::Done`],
        /// or `not-found` once the job has ended (the sender stops then).
        PeerLog {
            /// Whose job.
            tenant: String,
            /// Which job.
            job: String,
            /// The output, as written.
            chunk: Vec<u8>,
        },
        /// Host to host: up to `len` bytes of an object from `offset` (fewer
        /// at its end), once it is ready. Answered with
        /// [`Response::ObjectRange`] and the raw bytes, with
        /// [`Response::ObjectMoved`] when another host holds it, or with the
        /// error of the task that was to produce it.
        PeerObjectRead {
            /// Whose object.
            tenant: String,
            /// Which.
            id: WireObjectId,
            /// First byte.
            offset: u64,
            /// Bytes wanted.
            len: u64,
            /// The reading host's id when it pulls the whole object and
            /// may be sent to a host that copied it (empty otherwise).
            reader: String,
            /// A host this reader was sent to whose copy was gone or could
            /// not be read (empty: none): the holder sends no more readers
            /// there.
            no_copy_at: String,
        },
        /// The end of a deployment's log on every member (from where a
        /// follower left off, for the hosts and versions in `since`).
        DeploymentLogs {
            /// Whose deployment.
            tenant: String,
            /// Its name.
            name: String,
            /// Where a follower is.
            since: Vec<LogPosition>,
        },
        /// Host to host: the end of a deployment's log on this host alone.
        PeerDeploymentLogs {
            /// Whose deployment.
            tenant: String,
            /// Its name.
            name: String,
            /// Where a follower is.
            since: Vec<LogPosition>,
        },
        /// Host to host: the tenant's objects on this host alone.
        PeerObjects {
            /// Whose objects.
            tenant: String,
        },
        /// The tenant's objects on every member.
        Objects {
            /// Whose objects.
            tenant: String,
        },
        /// Host to host: a component's bytes, answered with
        /// [`Response::Component`] and the raw bytes.
        FetchComponent {
            /// Whose component.
            tenant: String,
            /// Its sha256 hex.
            sha256: String,
        },
        /// Deploy (or redeploy) a component for HTTP; answered with
        /// [`Response::Deployed`], or [`Response::NeedComponent`].
        Deploy {
            /// Whose deployment.
            tenant: String,
            /// What to deploy.
            spec: DeploymentSpec,
        },
        /// The tenant's deployments with their replicas on every host.
        Deployments {
            /// Whose deployments.
            tenant: String,
        },
        /// Remove a deployment; its instances drain and go.
        Undeploy {
            /// Whose deployment.
            tenant: String,
            /// Its name.
            name: String,
        },
        /// Host to host: the tenant's replicas on this host alone.
        PeerReplicas {
            /// Whose replicas.
            tenant: String,
        },
        /// The host's HTTP gateway address, answered with [`Response::Value`].
        Gateway,
        /// Host to host: serve this gateway request with replicas there
        /// (never forwarded again). The request body follows raw until the
        /// stream's end; the answer is [`Response::HttpHead`], then the
        /// response body raw until the end (a reset stream: it broke off).
        PeerHttp {
            /// The tenant of the deployment.
            tenant: String,
            /// The deployment.
            name: String,
            /// The method.
            method: String,
            /// The path and query.
            uri: String,
            /// The end-to-end headers.
            headers: Vec<HttpHeader>,
        },
        /// Host to host: the sender no longer refers to these objects of
        /// this host (task results kept here for it); answered with
        /// [`Response::Done`].
        PeerRelease {
            /// Whose objects.
            tenant: String,
            /// Which.
            ids: Vec<WireObjectId>,
        },
        /// Host to host: pin (or unpin) objects of this host, and what they
        /// name here; answered with [`Response::PinParts`] frames listing
        /// what they name that other hosts keep (for the asker to pin
        /// there), then [`Response::Done`], or [`Response::Error`] (a pin
        /// that fails takes back what it pinned; an unpin goes on with the
        /// rest, lists their parts, then fails).
        PeerPin {
            /// Whose objects.
            tenant: String,
            /// Which (at most [`MAX_IDS_PER_FRAME`]).
            ids: Vec<WireObjectId>,
            /// Pin, or unpin.
            pin: bool,
            /// The objects must exist (and, to unpin, be pinned); else one
            /// that is gone is skipped.
            strict: bool,
        },
        /// Let a pinned object go back to its ordinary lifetime (freed now
        /// if its job has ended), wherever it is kept; answered with
        /// [`Response::Done`].
        Unpin {
            /// Whose object.
            tenant: String,
            /// Its id (32 hex digits).
            id: String,
        },
        /// Up to `len` bytes of an object from `offset` (fewer at its end,
        /// and at most a host's range limit), waiting until it is ready,
        /// wherever in the cluster it is kept. Answered with
        /// [`Response::ObjectRange`] and the raw bytes, or the error the
        /// object holds.
        ObjectRead {
            /// Whose object.
            tenant: String,
            /// Its id (32 hex digits).
            id: String,
            /// First byte.
            offset: u64,
            /// Bytes wanted.
            len: u64,
        },
        /// Host to host: the deployments changed (a deploy or undeploy
        /// through the sender): read them from the registry now. Answered
        /// with [`Response::Done`] once this host serves what it read.
        PeerDeploymentsChanged,
    }

    /// One thing asked of an actor on a [`Request::PeerActorAsks`] stream.
    /// `job`: the asking job, which a large answer is kept here for
    /// ([`Response::Stored`]); without one (a client's call) every answer
    /// comes inline, up to a frame.
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum ActorAsk {
        /// Call a method.
        Call {
            /// The method.
            method: String,
            /// Encoded arguments.
            args: Vec<u8>,
            /// JSON (from the CLI) rather than binary.
            json: bool,
            /// The asking job.
            job: Option<String>,
        },
        /// A snapshot of its state, after the calls asked before.
        Snapshot {
            /// The asking job.
            job: Option<String>,
        },
    }

    /// A host's response frames.
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Response {
        /// Answer to [`Request::Ping`].
        Pong {
            /// The host's id.
            host: String,
        },
        /// The component was stored (or already there).
        Uploaded,
        /// The host lacks this component: upload it, then submit again.
        NeedComponent,
        /// The job was accepted; log and end frames follow unless detached.
        Accepted {
            /// The new job's id.
            job: String,
        },
        /// A chunk of the job's log.
        Log(Vec<u8>),
        /// The job's record (ends a submit, status, stop or follow).
        Job(JobRecord),
        /// Records, newest first.
        Jobs(Vec<JobRecord>),
        /// End of a non-following log read.
        End,
        /// Actors, oldest first.
        Actors(Vec<ActorInfo>),
        /// A JSON value (an actor call's result).
        Value(String),
        /// Done, nothing to say.
        Done,
        /// Members, by id.
        Hosts(Vec<HostInfo>),
        /// A task's encoded result (ends a [`Request::PeerRun`]).
        Output(Vec<u8>),
        /// Before the end of a [`Request::PeerRun`]: objects of other hosts
        /// the task kept past its end (named in values it made, its result or
        /// tasks it started). Their holders count them no more: kept until
        /// their job ends. What the task only read and dropped is not listed,
        /// so its holder frees it once nothing there refers to it. Sent only
        /// when there are some, in frames of at most [`MAX_IDS_PER_FRAME`].
        Borrowed(Vec<WireObjectId>),
        /// A task's result kept on the host that ran it (ends a
        /// [`Request::PeerRun`] whose result is too large to send inline),
        /// or an actor's answer kept on the actor's host.
        Stored {
            /// The object holding it there.
            id: WireObjectId,
            /// Its size.
            len: u64,
        },
        /// `len` bytes of an object from `offset` follow raw; `checksum` is
        /// their xxh3-64.
        ObjectRange {
            /// The object's whole size.
            total: u64,
            /// Where the bytes start.
            offset: u64,
            /// How many follow.
            len: u64,
            /// xxh3-64 of the bytes that follow.
            checksum: u64,
        },
        /// The object is a task result kept on another host (the one `id`
        /// names): ask it.
        ObjectMoved {
            /// Its id there.
            id: WireObjectId,
        },
        /// The host will not take this work (it is draining): place it
        /// elsewhere.
        Refused(FabricError),
        /// Read the whole object from this host instead, which copied it
        /// (and serves its copy once complete).
        ObjectAt {
            /// The host's id.
            host: String,
        },
        /// Object stores, per host.
        Objects(Vec<HostObjects>),
        /// A deployment's logs, per host that serves it.
        DeploymentLogs(Vec<DeploymentLog>),
        /// A component of `len` bytes follows raw.
        Component {
            /// Its size.
            len: u64,
        },
        /// The deployment as recorded (with its new version).
        Deployed(Deployment),
        /// Deployments with their replicas.
        Deployments(Vec<DeploymentInfo>),
        /// Replicas on one host.
        Replicas(Vec<Replicas>),
        /// The head of a forwarded request's response; its body follows.
        HttpHead {
            /// The status code.
            status: u16,
            /// The end-to-end headers.
            headers: Vec<HttpHeader>,
            /// The deployment's other requests busy or queued on the peer
            /// when this one came: its load, which the forwarder weighs its
            /// next choices by.
            load: u32,
        },
        /// The request failed.
        Error(FabricError),
        /// Part of the answer to [`Request::PeerPin`]: objects the pinned
        /// object names, directly or not, that other hosts keep, in frames
        /// of at most [`MAX_IDS_PER_FRAME`] ids.
        PinParts(Vec<WireObjectId>),
        /// Before the [`Response::Output`] ending a [`Request::PeerRun`]:
        /// objects the inline result names, so its holder lists them (and a
        /// pin of it reaches them). Sent only when there are some, in frames
        /// of at most [`MAX_IDS_PER_FRAME`] ids.
        ResultNames(Vec<WireObjectId>),
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed or ended early.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid archive of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes one message as a frame.
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let bytes = rkyv::to_bytes::<rancor::Error>(message).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| WireError::TooLarge { len: bytes.len(), limit: u32::MAX as usize })?;
    writer.write_all(&len.to_le_bytes()).await?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame and validates it as a `T`; `Ok(None)` at a clean end of
/// stream before any byte of a frame.
pub async fn read_frame<R, T>(reader: &mut R, limit: usize) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    reader.read_exact(&mut len[1..]).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(len);
    buf.resize(len, 0);
    reader.read_exact(&mut buf).await?;
    decode(&buf).map(Some)
}

/// Validates and deserializes an archive of `T`.
pub fn decode<T>(bytes: &[u8]) -> Result<T, WireError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    if !(bytes.as_ptr() as usize).is_multiple_of(16) {
        // rkyv requires aligned input; copy a misaligned caller's bytes once.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        return rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| WireError::Malformed(e.to_string()));
    }
    rkyv::from_bytes::<T, rancor::Error>(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Archives `T` (for storing records, not for the wire).
pub fn encode<T>(value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value).map(|v| v.to_vec()).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let req = Request::Submit {
            tenant: "t".into(),
            job: SubmitRequest {
                component: "ab".into(),
                function: "main".into(),
                args: "{}".into(),
                limits: TaskLimits { timeout_ms: Some(5), ..Default::default() },
                detach: true,
            },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).await.unwrap();
        let mut reader = &buf[..];
        let back: Request = read_frame(&mut reader, MAX_FRAME).await.unwrap().unwrap();
        assert_eq!(back, req);
        let end: Option<Request> = read_frame(&mut reader, MAX_FRAME).await.unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn hostile_frames_are_errors() {
        // Garbage of a plausible length.
        let mut buf = 12u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0xff; 12]);
        let r: Result<Option<Request>, _> = read_frame(&mut &buf[..], MAX_FRAME).await;
        assert!(matches!(r, Err(WireError::Malformed(_))), "{r:?}");
        // An announced length over the limit is refused before allocating.
        let buf = u32::MAX.to_le_bytes();
        let r: Result<Option<Request>, _> = read_frame(&mut &buf[..], MAX_FRAME).await;
        assert!(matches!(r, Err(WireError::TooLarge { .. })), "{r:?}");
        // A frame cut short.
        let mut buf = 100u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 10]);
        let r: Result<Option<Request>, _> = read_frame(&mut &buf[..], MAX_FRAME).await;
        assert!(matches!(r, Err(WireError::Io(_))), "{r:?}");
        // Every truncation of a valid frame fails cleanly.
        let mut good = Vec::new();
        write_frame(&mut good, &Request::Jobs { tenant: "default".into() }).await.unwrap();
        for cut in 1..good.len() {
            let r: Result<Option<Request>, _> = read_frame(&mut &good[..cut], MAX_FRAME).await;
            assert!(r.is_err(), "cut at {cut}");
        }
    }
}

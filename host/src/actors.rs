//! Actors: one live instance each, with a mailbox.
//!
//! - An actor is a dedicated instance (never pooled) hosting one object of a
//!   class its component exports, driven by a tokio task that takes calls
//!   from a bounded mailbox one at a time. Calls from one caller therefore
//!   run in the order sent; different actors run concurrently (each call
//!   takes a CPU slot like a task, and lends it while it waits).
//! - A full mailbox is a `resource-limit` error to the caller, never
//!   unbounded memory.
//! - Each actor runs as a job of its own (`actor-<id>`): what it `put`s and
//!   the sub-tasks it submits belong to it, its output goes to its creator's
//!   log, and killing it cancels them. A call's result object belongs to the
//!   caller's job.
//! - Lifetimes: an actor is owned by the job that created it and killed when
//!   that job ends, unless created detached (then it lives until killed).
//!   Names are per tenant; `get-or-create` is atomic under the registry lock.
//! - A method that traps fails that call; the instance is dropped and the
//!   next call runs on a new one restored from the last snapshot (or rebuilt
//!   by the constructor if none was taken), up to `max_restarts`. Past that
//!   the actor is dead: queued and later calls get `actor-dead` with the
//!   cause. Snapshots are taken every `snapshot_every` calls, after a call
//!   when the last is older than `snapshot_interval`, and on request; the
//!   latest is kept in the object store (owned by the actor's job).

use crate::components::LoadedComponent;
use crate::hostfns::{Encoding, TaskContext};
use crate::instances::Warm;
use crate::jobs::Job;
use crate::objects::{Cell, ObjectId};
use crate::HostInner;
use fabric_proto::{ErrorKind, FabricError, TaskLimits};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// Calls that may wait in a mailbox unless the actor says otherwise.
pub const DEFAULT_MAX_PENDING: u32 = 10_000;

/// An actor's id: the creating host's id and a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActorId {
    /// The creating host's random id.
    pub hi: u64,
    /// A per-host counter.
    pub lo: u64,
}

impl std::fmt::Display for ActorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

/// How an actor lives.
#[derive(Clone, Debug, Default)]
pub struct ActorOptions {
    /// Unique within the tenant.
    pub name: Option<String>,
    /// Outlives its creating job.
    pub detached: bool,
    /// Restarts after traps before it is dead (default 0).
    pub max_restarts: u32,
    /// Mailbox bound.
    pub max_pending: Option<u32>,
    /// Snapshot every this many calls (0: not by count).
    pub snapshot_every: u32,
    /// Snapshot after a call when the last is older than this.
    pub snapshot_interval: Option<Duration>,
    /// Memory cap of its instance.
    pub memory_bytes: Option<u64>,
    /// What its host must have; it holds the resources (besides `cpu`)
    /// while it lives.
    pub demand: fabric_proto::Demand,
}

/// Where an actor is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum ActorStatus {
    /// Running or waiting for calls.
    Alive,
    /// Trapped past its restarts, or its constructor failed.
    Dead(FabricError),
    /// Killed by request or with its job.
    Killed,
}

enum Message {
    Call { method: String, args: Vec<u8>, encoding: Encoding, result: Arc<Cell> },
    Snapshot { result: Arc<Cell> },
}

/// A live (or dead) actor as the registry knows it.
pub struct Actor {
    /// Its id.
    pub id: ActorId,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// Its class.
    pub class: String,
    /// Its name, if any.
    pub name: Option<String>,
    /// The job that owns it (none when detached).
    pub owner: Option<Arc<str>>,
    /// The actor's own job: its objects, sub-tasks and cancellation.
    job: Arc<Job>,
    mailbox: mpsc::Sender<Message>,
    status: Mutex<ActorStatus>,
    /// Calls completed.
    pub calls: AtomicU64,
    /// Restarts after traps.
    pub restarts: AtomicU32,
}

impl Actor {
    fn lock_status(&self) -> MutexGuard<'_, ActorStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the actor is in its life.
    pub fn status(&self) -> ActorStatus {
        self.lock_status().clone()
    }

    /// What `fabric actors` shows.
    pub fn info(&self, host: &str) -> fabric_proto::ActorInfo {
        let (state, cause) = match self.status() {
            ActorStatus::Alive => ("alive", None),
            ActorStatus::Dead(cause) => ("dead", Some(cause)),
            ActorStatus::Killed => ("killed", None),
        };
        fabric_proto::ActorInfo {
            id: self.id.to_string(),
            name: self.name.clone(),
            class: self.class.clone(),
            tenant: self.tenant.to_string(),
            state: state.to_string(),
            cause,
            calls: self.calls.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            owner: self.owner.as_deref().map(str::to_string),
            host: host.to_string(),
        }
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("actor `{name}` ({})", self.id),
            None => format!("actor {} of class `{}`", self.id, self.class),
        }
    }

    fn gone_error(&self) -> Option<FabricError> {
        match &*self.lock_status() {
            ActorStatus::Alive => None,
            ActorStatus::Dead(cause) => {
                Some(FabricError::new(ErrorKind::ActorDead, format!("{} is dead: {}", self.label(), cause)))
            }
            ActorStatus::Killed => Some(FabricError::new(ErrorKind::Cancelled, format!("{} was killed", self.label()))),
        }
    }
}

/// The host's actors.
pub struct Actors {
    node: u64,
    counter: AtomicU64,
    inner: Mutex<Registry>,
    /// Told (tenant, name, id) whenever a name is freed, so the cluster's
    /// record of where that name lives can go too.
    released: Mutex<Option<ReleasedNames>>,
}

/// Where freed names go: (tenant, name, id).
pub type ReleasedNames = mpsc::UnboundedSender<(Arc<str>, String, ActorId)>;

/// Actors by tenant; nested so lookups by `&str` need no allocation and a
/// tenant's work never scans another's actors.
type Registry = HashMap<Arc<str>, TenantActors>;

#[derive(Default)]
struct TenantActors {
    by_id: HashMap<ActorId, Arc<Actor>>,
    by_name: HashMap<String, ActorId>,
    /// Job-owned actors by owning job, so a job's end finds its actors
    /// without scanning the rest.
    by_owner: HashMap<Arc<str>, Vec<ActorId>>,
}

/// What creating an actor needs beyond its options.
pub struct NewActor {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The creating job (owner unless detached; its log gets the output).
    pub creator: Arc<Job>,
    /// The component exporting the class.
    pub component: Arc<LoadedComponent>,
    /// The class.
    pub class: String,
    /// Constructor arguments.
    pub args: Vec<u8>,
    /// How they are encoded.
    pub encoding: Encoding,
}

impl Actors {
    /// No actors yet; ids carry `node`.
    pub fn new(node: u64) -> Self {
        Actors { node, counter: AtomicU64::new(1), inner: Mutex::new(Registry::default()), released: Mutex::new(None) }
    }

    /// Sends every freed name to `tx` from now on.
    pub fn on_release(&self, tx: ReleasedNames) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Every live named actor: (tenant, name, id).
    pub fn named(&self) -> Vec<(Arc<str>, String, ActorId)> {
        let registry = self.lock();
        registry
            .iter()
            .flat_map(|(tenant, actors)| {
                actors.by_name.iter().map(move |(name, id)| (tenant.clone(), name.clone(), *id))
            })
            .collect()
    }

    /// Whether `id` was minted by this host (so the actor lives here).
    pub fn is_local(&self, id: ActorId) -> bool {
        id.hi == self.node
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an actor, or with `get_or_create` returns the live one of that
    /// name; a name taken by a live actor is an error for a plain create.
    pub fn create(
        &self,
        host: &Arc<HostInner>,
        new: NewActor,
        options: ActorOptions,
        get_or_create: bool,
    ) -> Result<ActorId, FabricError> {
        if let Some(name) = &options.name {
            if name.is_empty() || name.len() > 256 {
                return Err(FabricError::new(ErrorKind::InvalidArgument, "actor names have 1 to 256 characters"));
            }
        }
        let mut registry = self.lock();
        let actors = registry.entry(new.tenant.clone()).or_default();
        if let Some(name) = &options.name {
            if let Some(existing) = actors.by_name.get(name) {
                if get_or_create {
                    return Ok(*existing);
                }
                return Err(FabricError::new(
                    ErrorKind::InvalidArgument,
                    format!("tenant `{}` already has an actor named `{name}`", new.tenant),
                ));
            }
        }
        let id = ActorId { hi: self.node, lo: self.counter.fetch_add(1, Ordering::Relaxed) };
        let max_pending = options.max_pending.unwrap_or(DEFAULT_MAX_PENDING).max(1) as usize;
        let (tx, rx) = mpsc::channel(max_pending);
        let limits = TaskLimits { memory_bytes: options.memory_bytes, ..new.creator.limits.clone() };
        let job = Job::new(&format!("actor-{id}"), &new.tenant, limits, new.creator.log.clone());
        let actor = Arc::new(Actor {
            id,
            tenant: new.tenant.clone(),
            class: new.class.clone(),
            name: options.name.clone(),
            owner: (!options.detached).then(|| new.creator.id.clone()),
            job,
            mailbox: tx,
            status: Mutex::new(ActorStatus::Alive),
            calls: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
        });
        actors.by_id.insert(id, actor.clone());
        if let Some(name) = &options.name {
            actors.by_name.insert(name.clone(), id);
        }
        if let Some(owner) = &actor.owner {
            actors.by_owner.entry(owner.clone()).or_default().push(id);
        }
        drop(registry);
        let runner = Runner {
            host: host.clone(),
            actor,
            new,
            options,
            rx,
            warm: None,
            snapshot: None,
            created: std::time::Instant::now(),
        };
        tokio::spawn(runner.run());
        Ok(id)
    }

    /// The live actor named `name`.
    pub fn lookup(&self, tenant: &str, name: &str) -> Result<ActorId, FabricError> {
        self.lock().get(tenant).and_then(|a| a.by_name.get(name)).copied().ok_or_else(|| {
            FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no actor named `{name}`"))
        })
    }

    /// An actor named `name_or_id`, or with that 32-digit hex id.
    pub fn resolve(&self, tenant: &str, name_or_id: &str) -> Result<ActorId, FabricError> {
        if let Ok(id) = self.lookup(tenant, name_or_id) {
            return Ok(id);
        }
        match crate::remote::actors::parse_id(name_or_id).ok() {
            Some(id) => self.get(tenant, id).map(|actor| actor.id),
            None => Err(FabricError::new(
                ErrorKind::NotFound,
                format!("tenant `{tenant}` has no actor named `{name_or_id}`"),
            )),
        }
    }

    /// The actor `id` of `tenant`.
    pub fn get(&self, tenant: &str, id: ActorId) -> Result<Arc<Actor>, FabricError> {
        self.lock()
            .get(tenant)
            .and_then(|a| a.by_id.get(&id))
            .cloned()
            .ok_or_else(|| FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no actor {id}")))
    }

    /// Every actor of `tenant`.
    pub fn list(&self, tenant: &str) -> Vec<Arc<Actor>> {
        let mut actors: Vec<_> =
            self.lock().get(tenant).map(|a| a.by_id.values().cloned().collect()).unwrap_or_default();
        actors.sort_by_key(|a| a.id.lo);
        actors
    }

    fn enqueue(&self, tenant: &str, id: ActorId, message: Message) -> Result<(), FabricError> {
        let actor = self.get(tenant, id)?;
        if let Some(error) = actor.gone_error() {
            return Err(error);
        }
        actor.mailbox.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => FabricError::new(
                ErrorKind::ResourceLimit,
                format!("the mailbox of {} is full ({} calls pending)", actor.label(), actor.mailbox.max_capacity()),
            ),
            mpsc::error::TrySendError::Closed(_) => actor
                .gone_error()
                .unwrap_or_else(|| FabricError::new(ErrorKind::Unavailable, format!("{} stopped", actor.label()))),
        })
    }

    /// Queues a method call whose result fills `result`.
    pub fn call(
        &self,
        tenant: &str,
        id: ActorId,
        method: String,
        args: Vec<u8>,
        encoding: Encoding,
        result: Arc<Cell>,
    ) -> Result<(), FabricError> {
        self.enqueue(tenant, id, Message::Call { method, args, encoding, result })
    }

    /// Queues a snapshot whose bytes fill `result`.
    pub fn snapshot(&self, tenant: &str, id: ActorId, result: Arc<Cell>) -> Result<(), FabricError> {
        self.enqueue(tenant, id, Message::Snapshot { result })
    }

    /// Kills an actor: queued calls fail with `cancelled`.
    pub fn kill(&self, tenant: &str, id: ActorId) -> Result<(), FabricError> {
        let actor = self.get(tenant, id)?;
        self.retire(&actor, ActorStatus::Killed);
        Ok(())
    }

    /// Kills the actors `job` owns (it ended).
    pub fn kill_owned_by(&self, tenant: &str, job: &str) {
        let owned: Vec<_> = {
            let mut registry = self.lock();
            let Some(actors) = registry.get_mut(tenant) else { return };
            let ids = actors.by_owner.remove(job).unwrap_or_default();
            ids.iter().filter_map(|id| actors.by_id.get(id).cloned()).collect()
        };
        for actor in owned {
            self.retire(&actor, ActorStatus::Killed);
        }
    }

    /// Marks an actor gone: frees its name, stops its job. A killed actor
    /// leaves the registry; a dead one stays so callers learn the cause.
    fn retire(&self, actor: &Arc<Actor>, status: ActorStatus) {
        {
            let mut current = actor.lock_status();
            if *current != ActorStatus::Alive {
                return;
            }
            *current = status.clone();
        }
        let mut registry = self.lock();
        if let Some(actors) = registry.get_mut(&actor.tenant) {
            if let Some(name) = &actor.name {
                if actors.by_name.get(name) == Some(&actor.id) {
                    actors.by_name.remove(name);
                    if let Some(tx) = self.released.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                        let _ = tx.send((actor.tenant.clone(), name.clone(), actor.id));
                    }
                }
            }
            if status == ActorStatus::Killed {
                actors.by_id.remove(&actor.id);
                if let Some(owner) = &actor.owner {
                    if let Some(ids) = actors.by_owner.get_mut(owner) {
                        ids.retain(|id| *id != actor.id);
                    }
                }
            }
        }
        drop(registry);
        let reason = actor.gone_error().unwrap_or_else(|| FabricError::new(ErrorKind::Cancelled, "actor stopped"));
        actor.job.cancel(reason);
    }
}

/// The task that drives one actor.
struct Runner {
    host: Arc<HostInner>,
    actor: Arc<Actor>,
    new: NewActor,
    options: ActorOptions,
    rx: mpsc::Receiver<Message>,
    warm: Option<Warm>,
    /// The latest snapshot's object and when it was taken.
    snapshot: Option<(ObjectId, std::time::Instant)>,
    created: std::time::Instant,
}

impl Runner {
    async fn run(mut self) {
        // Hold what the actor demands for as long as it lives; its calls
        // wait in the mailbox meanwhile.
        let needs = crate::cluster::placement::effective_resources(&self.options.demand);
        let _held = tokio::select! {
            biased;
            _ = self.actor.job.cancelled() => None,
            held = self.host.resources.hold(&needs) => match held {
                Ok(held) => Some(held),
                Err(cause) => {
                    self.host.actors.retire(&self.actor, ActorStatus::Dead(cause.clone()));
                    self.rx.close();
                    while let Ok(Message::Call { result, .. } | Message::Snapshot { result }) = self.rx.try_recv() {
                        self.host.objects.fill(&result, Err(cause.clone()));
                    }
                    return;
                }
            },
        };
        loop {
            let message = tokio::select! {
                biased;
                _ = self.actor.job.cancelled() => break,
                message = self.rx.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let actor = self.actor.clone();
            let outcome = tokio::select! {
                biased;
                reason = actor.job.cancelled() => Err(reason),
                outcome = self.handle(&message) => outcome,
            };
            let result = match &message {
                Message::Call { result, .. } | Message::Snapshot { result } => result,
            };
            match outcome {
                Ok(bytes) => self.host.objects.fill(result, Ok(bytes)),
                Err(error) => {
                    self.host.objects.fill(result, Err(error.clone()));
                    if matches!(self.actor.status(), ActorStatus::Alive) && self.warm.is_none() {
                        // The instance was lost to a trap (or never built).
                        let restarts = self.actor.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                        if restarts > self.options.max_restarts {
                            let cause = if self.options.max_restarts == 0 {
                                error.to_string()
                            } else {
                                format!("{error} (after {} restarts)", self.options.max_restarts)
                            };
                            let cause = FabricError::new(error.kind, cause);
                            self.host.actors.retire(&self.actor, ActorStatus::Dead(cause));
                        }
                    }
                }
            }
        }
        // Whatever is still queued learns why the actor is gone.
        self.rx.close();
        let reason = self
            .actor
            .gone_error()
            .unwrap_or_else(|| FabricError::new(ErrorKind::Cancelled, format!("{} stopped", self.actor.label())));
        while let Ok(message) = self.rx.try_recv() {
            let (Message::Call { result, .. } | Message::Snapshot { result }) = &message;
            self.host.objects.fill(result, Err(reason.clone()));
        }
        if let Some(warm) = self.warm.take() {
            self.host.instances.discard(warm);
        }
        self.host.objects.drop_job(&self.actor.tenant, &self.actor.job.id);
    }

    /// Runs one message on the actor's instance, building it first if needed.
    async fn handle(&mut self, message: &Message) -> Result<Vec<u8>, FabricError> {
        let host = self.host.clone();
        let defaults = &host.config.limits;
        let memory_bytes = self.options.memory_bytes.unwrap_or(defaults.memory_bytes);
        let timeout = self.actor.job.limits.timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout);
        let cpu = self.actor.job.limits.cpu_ms.map(Duration::from_millis).unwrap_or(defaults.cpu);
        let slot = host.slots.acquire(&self.actor.tenant).await;
        let mut warm = match self.warm.take() {
            Some(warm) => warm,
            None => crate::runtime::instantiate(&host, &self.new.component, memory_bytes, cpu).await?,
        };
        let context = TaskContext {
            host: host.clone(),
            job: self.actor.job.clone(),
            component: self.new.component.clone(),
            slot: Some(slot),
        };
        warm.store.data_mut().attach(context, memory_bytes, cpu);
        warm.store.set_epoch_deadline(1);
        let outcome = tokio::time::timeout(timeout, self.step(&mut warm, message)).await;
        let outcome = match outcome {
            Ok(Ok(returned)) => {
                warm.store.data_mut().detach();
                self.warm = Some(warm);
                returned
            }
            Ok(Err(trap)) => {
                let error = crate::sandbox::classify(trap, &warm.store.data().stderr_tail());
                host.instances.discard(warm);
                Err(error)
            }
            Err(_) => {
                host.instances.discard(warm);
                Err(FabricError::new(
                    ErrorKind::TimedOut,
                    format!("a call on {} exceeded its wall-clock timeout of {timeout:?}", self.actor.label()),
                ))
            }
        };
        outcome
    }

    /// Builds the actor in a fresh instance if needed (constructor, or restore
    /// from the last snapshot), then runs the message. The outer error is a
    /// trap (the instance is lost); the inner one an error the guest returned.
    async fn step(&mut self, warm: &mut Warm, message: &Message) -> wasmtime::Result<Result<Vec<u8>, FabricError>> {
        let Warm { store, instance, .. } = warm;
        if !store.data().hosts_actor {
            let state = match self.snapshot {
                Some((id, _)) => self.host.objects.get(&self.actor.tenant, id).await.ok(),
                None => None,
            };
            let built = match state {
                Some(state) => instance.call_actor_restore(&mut *store, &self.new.class, &state).await?,
                None => {
                    instance
                        .call_actor_construct(&mut *store, &self.new.class, &self.new.args, self.new.encoding)
                        .await?
                }
            };
            if let Err(error) = built {
                // A constructor that fails leaves nothing to call: the actor is dead.
                let error = FabricError::from(error);
                let cause = FabricError::new(error.kind, format!("its constructor failed: {error}"));
                self.host.actors.retire(&self.actor, ActorStatus::Dead(cause.clone()));
                return Ok(Err(self.actor.gone_error().unwrap_or(cause)));
            }
            store.data_mut().hosts_actor = true;
        }
        Ok(match message {
            Message::Call { method, args, encoding, .. } => {
                let returned = instance.call_actor_dispatch(&mut *store, method, args, *encoding).await?;
                // What the result names is settled now, before a snapshot's
                // own `put` could take it as its contents.
                store.data_mut().holds.settle_declared();
                if returned.is_ok() {
                    let calls = self.actor.calls.fetch_add(1, Ordering::Relaxed) + 1;
                    let every = u64::from(self.options.snapshot_every);
                    let since = self.snapshot.map_or(self.created, |(_, at)| at);
                    let stale = self.options.snapshot_interval.is_some_and(|t| since.elapsed() >= t);
                    if (every > 0 && calls.is_multiple_of(every)) || stale {
                        // Still attached to this call's slot and limits.
                        match instance.call_actor_snapshot(&mut *store).await? {
                            Ok(state) => self.keep_snapshot(state),
                            Err(error) => self.new.creator.log.append(
                                format!(
                                    "[fabric] snapshot of {} failed: {}\n",
                                    self.actor.label(),
                                    FabricError::from(error)
                                )
                                .as_bytes(),
                            ),
                        }
                    }
                }
                returned.map_err(FabricError::from)
            }
            Message::Snapshot { .. } => {
                let state = instance.call_actor_snapshot(&mut *store).await?.map_err(FabricError::from)?;
                self.keep_snapshot(state.clone());
                Ok(state)
            }
        })
    }

    /// Stores `state` as the actor's latest snapshot, freeing the previous one.
    fn keep_snapshot(&mut self, state: Vec<u8>) {
        let objects = &self.host.objects;
        match objects.put(&self.actor.tenant, &self.actor.job.id, state) {
            Ok(id) => {
                if let Some((previous, _)) = self.snapshot.replace((id, std::time::Instant::now())) {
                    objects.release(&self.actor.tenant, &[previous]);
                }
            }
            Err(error) => self
                .new
                .creator
                .log
                .append(format!("[fabric] cannot keep a snapshot of {}: {error}\n", self.actor.label()).as_bytes()),
        }
    }
}

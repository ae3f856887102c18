//! Running one task: take a slot, get an instance (warm from the pool or
//! fresh), call `dispatch`, classify the outcome. The same path serves a
//! job's entry task (JSON) and every sub-task (binary).

use crate::components::LoadedComponent;
use crate::hostfns::{Encoding, TaskContext};
use crate::instances::Warm;
use crate::jobs::Job;
use crate::objects::holds::Declared;
use crate::sandbox::{self, TaskState};
use crate::HostInner;
use fabric_proto::{ErrorKind, FabricError, TaskLimits};
use std::sync::Arc;
use std::time::Duration;

/// One task to run.
#[derive(Clone)]
pub struct TaskSpec {
    /// What to run.
    pub component: Arc<LoadedComponent>,
    /// Which function.
    pub function: String,
    /// Encoded arguments.
    pub args: Vec<u8>,
    /// How `args` and the result are encoded.
    pub encoding: Encoding,
    /// Its limits; unset fields take the host's defaults.
    pub limits: TaskLimits,
}

/// Runs `spec` for `job` to its end: its encoded result or a typed error.
/// What the result names lives until the job ends (it goes where this host
/// does not follow it).
pub async fn run_task(host: &Arc<HostInner>, job: &Arc<Job>, spec: TaskSpec) -> Result<Vec<u8>, FabricError> {
    run_task_naming(host, job, spec).await.map(|(bytes, named)| {
        named.settle();
        bytes
    })
}

/// [`run_task`], with the references the result names (one of each, the
/// caller's to keep with the result or settle).
pub async fn run_task_naming(
    host: &Arc<HostInner>,
    job: &Arc<Job>,
    spec: TaskSpec,
) -> Result<(Vec<u8>, Declared), FabricError> {
    tokio::select! {
        biased;
        reason = job.cancelled() => Err(reason),
        outcome = execute(host, job, spec) => outcome,
    }
}

/// A store for a new instance, armed with limits (instantiation allocates
/// memory and may run start functions: the limits apply already).
pub(crate) fn new_store(host: &HostInner, memory_bytes: u64, cpu: Duration) -> wasmtime::Store<TaskState> {
    let mut state = TaskState::new();
    state.set_limits(memory_bytes, cpu);
    let mut store = wasmtime::Store::new(&host.engine, state);
    sandbox::arm(&mut store);
    // What one host call may copy out of the guest: enough for the largest
    // object, so `put` fails on the object limit with a clear message.
    store
        .set_hostcall_fuel(usize::try_from(host.config.max_object_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20));
    store
}

pub(crate) async fn instantiate(
    host: &Arc<HostInner>,
    component: &LoadedComponent,
    memory_bytes: u64,
    cpu: Duration,
) -> Result<Warm, FabricError> {
    let mut store = new_store(host, memory_bytes, cpu);
    let pre = component.task()?;
    match pre.instantiate_async(&mut store).await {
        Ok(instance) => Ok(Warm::new(store, instance)),
        Err(first) => {
            if first.downcast_ref::<sandbox::MemoryLimitExceeded>().is_some() {
                return Err(sandbox::classify(first, ""));
            }
            // Idle instances hold pooling-allocator slots: free them, retry once.
            host.instances.clear();
            let instance = pre.instantiate_async(&mut store).await.map_err(|_| {
                FabricError::new(ErrorKind::ResourceLimit, format!("cannot start an instance: {first:#}"))
            })?;
            Ok(Warm::new(store, instance))
        }
    }
}

async fn execute(host: &Arc<HostInner>, job: &Arc<Job>, spec: TaskSpec) -> Result<(Vec<u8>, Declared), FabricError> {
    let defaults = &host.config.limits;
    let timeout = spec.limits.timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout);
    let cpu = spec.limits.cpu_ms.map(Duration::from_millis).unwrap_or(defaults.cpu);
    let memory_bytes = spec.limits.memory_bytes.unwrap_or(defaults.memory_bytes);

    let slot = host.slots.acquire(&job.tenant).await;
    let reuse = host.config.reuse_instances && !job.isolated;
    let warm = if reuse { host.instances.take(&job.tenant, &spec.component, memory_bytes) } else { None };
    let mut warm = match warm {
        Some(warm) => warm,
        None => instantiate(host, &spec.component, memory_bytes, cpu).await?,
    };
    let context =
        TaskContext { host: host.clone(), job: job.clone(), component: spec.component.clone(), slot: Some(slot) };
    warm.store.data_mut().attach(context, memory_bytes, cpu);
    warm.store.set_epoch_deadline(1);

    let Warm { store, instance, .. } = &mut warm;
    let call = instance.call_dispatch(&mut *store, &spec.function, &spec.args, spec.encoding);
    let outcome = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(returned)) => returned.map_err(FabricError::from),
        Ok(Err(err)) => {
            let error = sandbox::classify(err, &warm.store.data().stderr_tail());
            host.instances.discard(warm);
            return Err(error);
        }
        Err(_) => {
            host.instances.discard(warm);
            return Err(FabricError::new(
                ErrorKind::TimedOut,
                format!("task `{}` exceeded its wall-clock timeout of {timeout:?}", spec.function),
            ));
        }
    };
    // What the result names, taken before the instance lets go of its
    // references.
    let named = warm.store.data_mut().holds.take_declared();
    // The call returned normally: the instance is sound and can be reused.
    if reuse {
        host.instances.give_back(&job.tenant, &spec.component, memory_bytes, warm);
    } else {
        host.instances.discard(warm);
    }
    outcome.map(|bytes| (bytes, named))
}

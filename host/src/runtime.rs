//! Running one task: take a slot, instantiate, call `dispatch`, classify the
//! outcome. The same path serves a job's entry task (JSON) and every
//! sub-task (binary).

use crate::components::LoadedComponent;
use crate::hostfns::{Encoding, TaskContext};
use crate::joblog::LogStream;
use crate::jobs::Job;
use crate::sandbox::{self, TaskState};
use crate::HostInner;
use fabric_proto::{ErrorKind, FabricError, TaskLimits};
use std::sync::Arc;
use std::time::Duration;

/// One task to run.
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
pub async fn run_task(host: &Arc<HostInner>, job: &Arc<Job>, spec: TaskSpec) -> Result<Vec<u8>, FabricError> {
    tokio::select! {
        biased;
        reason = job.cancelled() => Err(reason),
        outcome = execute(host, job, spec) => outcome,
    }
}

async fn execute(host: &Arc<HostInner>, job: &Arc<Job>, spec: TaskSpec) -> Result<Vec<u8>, FabricError> {
    let defaults = &host.config.limits;
    let timeout = spec.limits.timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout);
    let cpu = spec.limits.cpu_ms.map(Duration::from_millis).unwrap_or(defaults.cpu);
    let memory_bytes = spec.limits.memory_bytes.unwrap_or(defaults.memory_bytes);

    let slot = host.slots.acquire(&job.tenant).await;
    let (stderr, stderr_tail) = LogStream::with_tail(job.log.clone());
    let context =
        TaskContext { host: host.clone(), job: job.clone(), component: spec.component.clone(), slot: Some(slot) };
    let state = TaskState::new(context, memory_bytes, cpu, LogStream::new(job.log.clone()), stderr);
    let mut store = wasmtime::Store::new(&host.engine, state);
    sandbox::arm(&mut store, cpu);
    // What one host call may copy out of the guest: enough for the largest
    // object, so `put` fails on the object limit with a clear message.
    store
        .set_hostcall_fuel(usize::try_from(host.config.max_object_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20));

    let call =
        async {
            let instance =
                spec.component.pre.instantiate_async(&mut store).await.map_err(|e| {
                    FabricError::new(ErrorKind::ResourceLimit, format!("cannot start an instance: {e:#}"))
                })?;
            match instance.call_dispatch(&mut store, &spec.function, &spec.args, spec.encoding).await {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(guest_error)) => Err(FabricError::from(guest_error)),
                Err(err) => Err(sandbox::classify(err, &stderr_tail.text())),
            }
        };
    match tokio::time::timeout(timeout, call).await {
        Ok(outcome) => outcome,
        Err(_) => Err(FabricError::new(
            ErrorKind::TimedOut,
            format!("task `{}` exceeded its wall-clock timeout of {timeout:?}", spec.function),
        )),
    }
}

//! Host functions: the host side of each `fabric:core` interface a guest
//! imports, one module per interface (as in wasmCloud).
//!
//! Every call is scoped by the calling task's [`TaskContext`]: its tenant
//! (objects of other tenants are invisible), its job (objects it creates
//! belong to the job; stopping the job ends the wait) and its slot (lent to
//! other tasks while the call waits on results).

mod actors;
mod log;
mod objects;
mod tasks;

use crate::components::LoadedComponent;
use crate::jobs::Job;
use crate::scheduler::SlotGuard;
use crate::HostInner;
use fabric_proto::{ErrorKind, FabricError};
use std::sync::Arc;

/// Bindings generated from `wit/fabric.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "fabric:core/task",
        imports: {
            "fabric:core/objects.[constructor]writer": async | trappable,
            "fabric:core/objects.retain": async | trappable,
            "fabric:core/objects.declare-refs": async | trappable,
            default: async,
        },
        exports: { default: async },
        with: { "fabric:core/objects.writer": crate::objects::writer::ObjectWriter },
    });
}

pub use bindings::fabric::core::types::{Encoding, Error as WitError, ObjectId as WitObjectId};

/// Who is calling: the task behind an instance.
pub struct TaskContext {
    pub(crate) host: Arc<HostInner>,
    pub(crate) job: Arc<Job>,
    pub(crate) component: Arc<LoadedComponent>,
    pub(crate) slot: Option<SlotGuard>,
}

impl TaskContext {
    /// Runs `wait` with this task's slot lent to others, and ends it early
    /// if the job is stopped. Cheap when the result is already there: call
    /// only when a wait is needed.
    pub(crate) async fn blocking<T>(&mut self, wait: impl std::future::Future<Output = T>) -> Result<T, FabricError> {
        if let Some(slot) = &mut self.slot {
            slot.block();
        }
        let outcome = tokio::select! {
            reason = self.job.cancelled() => Err(reason),
            value = wait => Ok(value),
        };
        if let Some(slot) = &mut self.slot {
            slot.unblock().await;
        }
        outcome
    }
}

impl From<FabricError> for WitError {
    fn from(e: FabricError) -> Self {
        let m = e.message;
        match e.kind {
            ErrorKind::NotFound => WitError::NotFound(m),
            ErrorKind::Trapped => WitError::Trapped(m),
            ErrorKind::TimedOut => WitError::TimedOut(m),
            ErrorKind::ResourceLimit => WitError::ResourceLimit(m),
            ErrorKind::InvalidArgument => WitError::InvalidArgument(m),
            ErrorKind::Unavailable => WitError::Unavailable(m),
            ErrorKind::Cancelled => WitError::Cancelled(m),
            ErrorKind::Failed => WitError::Failed(m),
            ErrorKind::ActorDead => WitError::ActorDead(m),
            ErrorKind::Internal => WitError::Internal(m),
        }
    }
}

impl From<WitError> for FabricError {
    fn from(e: WitError) -> Self {
        let (kind, m) = match e {
            WitError::NotFound(m) => (ErrorKind::NotFound, m),
            WitError::Trapped(m) => (ErrorKind::Trapped, m),
            WitError::TimedOut(m) => (ErrorKind::TimedOut, m),
            WitError::ResourceLimit(m) => (ErrorKind::ResourceLimit, m),
            WitError::InvalidArgument(m) => (ErrorKind::InvalidArgument, m),
            WitError::Unavailable(m) => (ErrorKind::Unavailable, m),
            WitError::Cancelled(m) => (ErrorKind::Cancelled, m),
            WitError::Failed(m) => (ErrorKind::Failed, m),
            WitError::ActorDead(m) => (ErrorKind::ActorDead, m),
            WitError::Internal(m) => (ErrorKind::Internal, m),
        };
        FabricError::new(kind, m)
    }
}

impl From<WitObjectId> for crate::objects::ObjectId {
    fn from(id: WitObjectId) -> Self {
        crate::objects::ObjectId { hi: id.hi, lo: id.lo }
    }
}

impl From<crate::objects::ObjectId> for WitObjectId {
    fn from(id: crate::objects::ObjectId) -> Self {
        WitObjectId { hi: id.hi, lo: id.lo }
    }
}

impl bindings::fabric::core::types::Host for crate::sandbox::TaskState {}

/// Adds the `fabric:core` interfaces and WASI p2 to `linker`.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<crate::sandbox::TaskState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::Task::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |state| state)?;
    objects::add_zero_copy_get(linker)?;
    objects::add_recycling_put(linker)?;
    Ok(())
}

//! Warm instances: a finished task's instance is kept and reused by the next
//! task of the same tenant, component and memory cap.
//!
//! Why: a fresh instance costs little in wasmtime itself, but tearing its
//! memory down costs the kernel far more (madvise, TLB shootdowns between
//! cores), so on a 2-core machine a fresh instance per task caps throughput
//! near 10,000 tasks/s while a warm one is a plain call.
//!
//! Policy (as Ray reuses worker processes across tasks):
//! - Only an instance whose call returned cleanly (a result or an error the
//!   guest returned) is kept; one that trapped, timed out or was stopped is
//!   dropped, so a corrupted instance never runs again.
//! - Guest globals persist between tasks that reuse an instance; tasks must
//!   not rely on fresh globals. A host can turn reuse off
//!   (`HostConfig::reuse_instances`).
//! - The key includes the memory cap, so a task never inherits memory grown
//!   under a larger cap than its own.
//! - Each instance is reused at most `MAX_USES` times, bounding slow leaks in
//!   guest memory; idle instances are bounded per key and in total, since
//!   they hold slots of the pooling allocator.

use crate::components::LoadedComponent;
use crate::hostfns::bindings::Task;
use crate::sandbox::TaskState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::Store;

/// How many tasks one instance may run.
const MAX_USES: u32 = 1000;

/// An instance with its store.
pub struct Warm {
    /// The store, holding the instance's memory and its task state.
    pub store: Store<TaskState>,
    /// The instance's exports.
    pub instance: Task,
    uses: u32,
}

impl Warm {
    /// A new instance's pair.
    pub fn new(store: Store<TaskState>, instance: Task) -> Self {
        Warm { store, instance, uses: 0 }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: Arc<str>,
    component: String,
    memory_bytes: u64,
}

/// Idle instances by key.
pub struct InstancePool {
    idle: Mutex<HashMap<Key, Vec<Warm>>>,
    per_key: usize,
    total: usize,
    reaper: Mutex<Option<std::sync::mpsc::SyncSender<Box<dyn Send>>>>,
}

/// Instances waiting for the reaper at most; beyond that the caller tears
/// down its own (back-pressure: a backlog would hold pooling-allocator slots).
const REAPER_BACKLOG: usize = 16;

/// Tears instances down on a thread of its own: resetting an instance's
/// memory (madvise, TLB shootdowns) costs several times what creating one
/// does, and nobody waits for it.
fn start_reaper() -> Option<std::sync::mpsc::SyncSender<Box<dyn Send>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Box<dyn Send>>(REAPER_BACKLOG);
    let spawned = std::thread::Builder::new().name("fabric-reaper".into()).spawn(move || {
        for warm in rx {
            drop(warm);
        }
    });
    spawned.ok().map(|_| tx)
}

impl InstancePool {
    /// A pool keeping at most `per_key` idle instances of one kind and
    /// `total` in all.
    pub fn new(per_key: usize, total: usize) -> Self {
        InstancePool { idle: Mutex::new(HashMap::new()), per_key, total, reaper: Mutex::new(start_reaper()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Vec<Warm>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle instance for this kind of task, if one is kept.
    pub fn take(&self, tenant: &Arc<str>, component: &LoadedComponent, memory_bytes: u64) -> Option<Warm> {
        let key = Key { tenant: tenant.clone(), component: component.sha256.clone(), memory_bytes };
        self.lock().get_mut(&key).and_then(Vec::pop)
    }

    /// Keeps a cleanly finished instance for reuse, unless it is used up or
    /// the pool is full (then it is torn down).
    pub fn give_back(&self, tenant: &Arc<str>, component: &LoadedComponent, memory_bytes: u64, mut warm: Warm) {
        warm.uses += 1;
        warm.store.data_mut().detach();
        if warm.uses >= MAX_USES {
            return self.discard(warm);
        }
        let key = Key { tenant: tenant.clone(), component: component.sha256.clone(), memory_bytes };
        let mut idle = self.lock();
        let total: usize = idle.values().map(Vec::len).sum();
        let slot = idle.entry(key).or_default();
        if slot.len() < self.per_key && total < self.total {
            slot.push(warm);
        } else {
            drop(idle);
            self.discard(warm);
        }
    }

    /// Tears an instance down off the caller's path, after letting go of its
    /// task (slot, job) at once.
    pub fn discard(&self, mut warm: Warm) {
        warm.store.data_mut().detach();
        self.reap(Box::new(warm));
    }

    /// Tears down any instance (a task's or an HTTP handler's) off the
    /// caller's path.
    pub fn reap(&self, instance: Box<dyn Send>) {
        let reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reaper) = reaper {
            // A full backlog (or a gone reaper) tears down here instead.
            drop(reaper.try_send(instance));
        }
    }

    /// Drops every idle instance now (to free pool slots, or at shutdown).
    pub fn clear(&self) {
        let drained: Vec<_> = self.lock().drain().collect();
        drop(drained);
    }
}

//! One deployment's replicas on one host: the gate that admits requests up
//! to the replicas the autoscaler wants, the queue behind it, and (for a
//! `wasi:http` component) the idle instances kept for reuse.
//!
//! Why a gate and not just a pool: a replica is one wasm instance, which
//! handles one request at a time; the autoscaler's answer caps how many run
//! at once, and the rest wait in a bounded queue (full: 429), as Ray Serve
//! queues at its replicas.
//!
//! Idle instances are reused across requests, the reason fabric beats a
//! store per request: only an instance whose call returned cleanly goes
//! back, each at most [`MAX_USES`] times, and none while the deployment asks
//! for isolation per request.

use super::scaler::{ScalePolicy, Scaler};
use crate::sandbox::TaskState;
use fabric_proto::{ErrorKind, FabricError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

/// Requests one instance may serve before it is replaced.
pub const MAX_USES: u32 = 10_000;

/// An instance of a `wasi:http` component with its store.
pub struct HttpInstance {
    /// Its store.
    pub store: Store<TaskState>,
    /// Its exports.
    pub proxy: Proxy,
    uses: u32,
}

impl HttpInstance {
    /// A new instance's pair.
    pub fn new(store: Store<TaskState>, proxy: Proxy) -> Self {
        HttpInstance { store, proxy, uses: 0 }
    }
}

struct Gate {
    scaler: Scaler,
    busy: u32,
    queued: u32,
    served: u64,
    idle: Vec<HttpInstance>,
}

/// A deployment's replicas on this host.
pub struct Replicas {
    gate: Mutex<Gate>,
    freed: Notify,
    max_queue: u32,
    reuse: bool,
}

/// A request's hold on a replica; let go on drop.
pub struct Turn {
    replicas: Arc<Replicas>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut gate = self.replicas.lock();
        gate.busy = gate.busy.saturating_sub(1);
        gate.served += 1;
        let ongoing = gate.busy + gate.queued;
        gate.scaler.observe(ongoing, Instant::now());
        drop(gate);
        self.replicas.freed.notify_one();
    }
}

/// What [`Replicas::counts`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Replicas wanted.
    pub desired: u32,
    /// Instances there (busy plus idle; for task deployments, busy).
    pub instances: u32,
    /// Requests being handled.
    pub busy: u32,
    /// Requests waiting.
    pub queued: u32,
    /// Requests answered.
    pub served: u64,
}

impl Replicas {
    /// Replicas scaled by `policy`, queueing at most `max_queue` requests;
    /// `reuse` keeps instances between requests.
    pub fn new(policy: ScalePolicy, max_queue: u32, reuse: bool) -> Arc<Self> {
        let gate = Gate { scaler: Scaler::new(policy), busy: 0, queued: 0, served: 0, idle: Vec::new() };
        Arc::new(Replicas { gate: Mutex::new(gate), freed: Notify::new(), max_queue, reuse })
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a replica; refused at once (429) when the queue is full.
    pub async fn acquire(self: &Arc<Self>) -> Result<Turn, FabricError> {
        {
            let mut gate = self.lock();
            gate.queued += 1;
            let before = gate.scaler.desired();
            let ongoing = gate.busy + gate.queued;
            let desired = gate.scaler.observe(ongoing, Instant::now());
            if gate.busy >= desired && gate.queued > self.max_queue {
                gate.queued -= 1;
                return Err(FabricError::new(
                    ErrorKind::ResourceLimit,
                    format!("too many requests: {} already wait for a replica", gate.queued),
                ));
            }
            if gate.busy < desired && gate.queued == 1 {
                // A replica is free and no request waits before this one:
                // take it now (the common case; no waiting set up).
                gate.queued -= 1;
                gate.busy += 1;
                return Ok(Turn { replicas: self.clone() });
            }
            if desired > before {
                // More replicas: wake the requests already waiting.
                self.freed.notify_waiters();
            }
        }
        // Leaves the queue if the request is dropped while it waits.
        let mut waiting = Waiting { replicas: self, done: false };
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut gate = self.lock();
                if gate.busy < gate.scaler.desired() {
                    gate.queued -= 1;
                    gate.busy += 1;
                    waiting.done = true;
                    return Ok(Turn { replicas: self.clone() });
                }
            }
            notified.await;
        }
    }

    /// An idle instance, if one is kept.
    pub fn take_idle(&self) -> Option<HttpInstance> {
        self.lock().idle.pop()
    }

    /// Keeps an instance whose call returned cleanly, unless reuse is off,
    /// it is used up, or the autoscaler wants fewer; otherwise hands it back
    /// to be torn down.
    pub fn give_back(&self, mut instance: HttpInstance) -> Option<HttpInstance> {
        instance.uses += 1;
        let mut gate = self.lock();
        // `busy` still counts the request giving it back.
        let room = gate.idle.len() + (gate.busy as usize).saturating_sub(1) < gate.scaler.desired() as usize;
        if self.reuse && instance.uses < MAX_USES && room {
            gate.idle.push(instance);
            None
        } else {
            Some(instance)
        }
    }

    /// Takes every idle instance (the version is let go).
    pub fn drain_idle(&self) -> Vec<HttpInstance> {
        std::mem::take(&mut self.lock().idle)
    }

    /// Keeps a new idle instance (warming up to `min`).
    pub fn add_idle(&self, instance: HttpInstance) {
        self.lock().idle.push(instance);
    }

    /// Observes the load at `now` (the autoscaler needs ticks to scale
    /// down while nothing happens); returns the idle instances beyond what
    /// it wants, to be torn down.
    pub fn tick(&self, now: Instant) -> Vec<HttpInstance> {
        let mut gate = self.lock();
        let ongoing = gate.busy + gate.queued;
        let desired = gate.scaler.observe(ongoing, now) as usize;
        let keep = desired.saturating_sub(gate.busy as usize);
        if gate.idle.len() > keep {
            gate.idle.split_off(keep)
        } else {
            Vec::new()
        }
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        let gate = self.lock();
        Counts {
            desired: gate.scaler.desired(),
            instances: gate.busy + gate.idle.len() as u32,
            busy: gate.busy,
            queued: gate.queued,
            served: gate.served,
        }
    }
}

struct Waiting<'a> {
    replicas: &'a Arc<Replicas>,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut gate = self.replicas.lock();
            gate.queued = gate.queued.saturating_sub(1);
            drop(gate);
            // It may have been the one woken for a free replica: pass it on.
            self.replicas.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn replicas(min: u32, max: u32, target: u32, queue: u32) -> Arc<Replicas> {
        Replicas::new(ScalePolicy { min, max, target, down_delay: Duration::from_secs(60) }, queue, true)
    }

    #[tokio::test]
    async fn admits_up_to_max_and_queues_the_rest() {
        let r = replicas(0, 2, 1, 10);
        let a = r.acquire().await.unwrap();
        let _b = r.acquire().await.unwrap();
        assert_eq!(r.counts().busy, 2);
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        while r.counts().queued == 0 {
            tokio::task::yield_now().await;
        }
        drop(a);
        waiter.await.unwrap().unwrap();
        assert_eq!(r.counts().queued, 0);
        assert_eq!(r.counts().served, 2);
    }

    #[tokio::test]
    async fn a_full_queue_refuses() {
        let r = replicas(1, 1, 1, 0);
        let _held = r.acquire().await.unwrap();
        let refused = r.acquire().await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::ResourceLimit);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let r = replicas(1, 1, 1, 5);
        let held = r.acquire().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), r.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(r.counts().queued, 0);
        drop(held);
        let _again = r.acquire().await.unwrap();
    }
}

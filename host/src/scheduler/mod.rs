//! The local scheduler: bounds how many tasks run at once on this host.
//!
//! [`core::SlotScheduler`] decides (a pure state machine); this module wakes
//! the futures it grants. A task holds a [`SlotGuard`] while it runs guest
//! code and lends the slot back with [`SlotGuard::block`] while it waits on
//! other tasks, taking it back with [`SlotGuard::unblock`].

pub mod core;

use self::core::{Event, SlotScheduler, WaiterId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The host's CPU slots.
#[derive(Debug)]
pub struct Slots {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    core: SlotScheduler,
    wakers: HashMap<WaiterId, oneshot::Sender<()>>,
}

impl Inner {
    fn apply(&mut self, event: Event) {
        for id in self.core.handle(event) {
            if let Some(waker) = self.wakers.remove(&id) {
                // A dropped receiver is handled by its `Waiter`'s drop, which
                // sees the waker gone and releases the slot.
                let _ = waker.send(());
            }
        }
    }
}

impl Slots {
    /// `slots` concurrent tasks.
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Slots {
            inner: Mutex::new(Inner { core: SlotScheduler::new(slots), wakers: HashMap::new() }),
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panic elsewhere; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// (held, waiting) slots now.
    pub fn load(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.core.held(), inner.core.waiting())
    }

    /// Waits for a slot for a new task of `tenant`.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> SlotGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.wait(id, Event::Request { id, tenant: tenant.to_string() }).await;
        SlotGuard { slots: self.clone(), id, held: true }
    }

    async fn wait(self: &Arc<Self>, id: WaiterId, event: Event) {
        let rx = {
            let mut inner = self.lock();
            if inner.core.try_acquire() {
                return;
            }
            let (tx, rx) = oneshot::channel();
            inner.wakers.insert(id, tx);
            inner.apply(event);
            rx
        };
        let mut waiter = Waiter { slots: self, id, granted: false };
        // The sender lives until granted; an error cannot happen while we wait.
        let _ = rx.await;
        waiter.granted = true;
    }

    fn release(&self) {
        self.lock().apply(Event::Release);
    }
}

/// A pending wait; if dropped before its grant arrives it withdraws, and if
/// the grant raced the drop it gives the slot back.
struct Waiter<'a> {
    slots: &'a Slots,
    id: WaiterId,
    granted: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut inner = self.slots.lock();
        if inner.wakers.remove(&self.id).is_some() {
            inner.apply(Event::Withdraw { id: self.id });
        } else {
            inner.apply(Event::Release);
        }
    }
}

/// A held (or lent) slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<Slots>,
    id: WaiterId,
    held: bool,
}

impl SlotGuard {
    /// Lends the slot to others while this task waits.
    pub fn block(&mut self) {
        if std::mem::take(&mut self.held) {
            self.slots.release();
        }
    }

    /// Takes a slot back after [`block`](Self::block), ahead of queued tasks.
    pub async fn unblock(&mut self) {
        if !self.held {
            self.slots.wait(self.id, Event::Resume { id: self.id }).await;
            self.held = true;
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.held {
            self.slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropped_waiters_do_not_leak_slots() {
        let slots = Slots::new(1);
        let first = slots.acquire("a").await;
        // A waiter that gives up (its job was stopped) must not keep a slot.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire("a")).await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(slots.load(), (0, 0));
        let _again = slots.acquire("a").await;
        assert_eq!(slots.load(), (1, 0));
    }

    #[tokio::test]
    async fn block_lends_and_unblock_takes_back() {
        let slots = Slots::new(1);
        let mut parent = slots.acquire("a").await;
        parent.block();
        let child = slots.acquire("a").await;
        let resumed = {
            let slots = slots.clone();
            tokio::spawn(async move {
                parent.unblock().await;
                assert_eq!(slots.load().0, 1);
            })
        };
        tokio::task::yield_now().await;
        drop(child);
        resumed.await.unwrap();
        assert_eq!(slots.load(), (0, 0));
    }
}

//! Graceful shutdown: a host that is told to stop first drains.
//!
//! Draining, a host stays a member marked `draining` (no peer places new
//! work on it; it keeps its named actors until it leaves), refuses new jobs
//! and peers' new tasks, stops accepting HTTP connections and closes
//! its kept-alive ones after their current request, while what is under way
//! (its own jobs, tasks peers sent it, HTTP requests being answered) runs to
//! its end, up to a deadline (`fabric up/host --drain-timeout`). What is
//! still running at the deadline, or at a second signal, is cancelled: a
//! peer's task then runs again elsewhere, as after a host loss.
//!
//! Why a counter and not a task tracker: the work to wait for lives in
//! several places (QUIC streams, HTTP connections), and each only needs to
//! hold a [`Working`] guard while it runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Whether the host is draining, and the work it waits for.
#[derive(Debug, Clone)]
pub struct Drain(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    draining: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain(Arc::new(Shared {
            draining: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }))
    }
}

impl Drain {
    /// Starts draining.
    pub fn start(&self) {
        self.0.draining.send_replace(true);
    }

    /// Whether the host is draining.
    pub fn is_draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Resolves once the host starts draining.
    pub async fn started(&self) {
        let mut draining = self.0.draining.subscribe();
        // The sender lives as long as `self`: an error cannot happen here.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Marks work the drain waits for, until the guard drops.
    pub fn work(&self) -> Working {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        Working(self.0.clone())
    }

    /// Resolves once no [`Working`] guard is left.
    pub async fn idle(&self) {
        loop {
            let idle = self.0.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.0.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Work under way that a drain waits for.
#[derive(Debug)]
pub struct Working(Arc<Shared>);

impl Drop for Working {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let drain = Drain::default();
        assert!(drain.idle().now_or_never().is_some());
        let (a, b) = (drain.work(), drain.work());
        let mut idle = Box::pin(drain.idle());
        assert!((&mut idle).now_or_never().is_none());
        drop(a);
        assert!((&mut idle).now_or_never().is_none());
        drop(b);
        assert!(idle.now_or_never().is_some());
        assert!(!drain.is_draining());
        drain.start();
        assert!(drain.is_draining());
        assert!(drain.started().now_or_never().is_some());
    }
}

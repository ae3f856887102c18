//! Jobs: a submitted entry task and everything it fans out into.
//!
//! A [`Job`] carries what all its tasks share: tenant, id, limits, log, and a
//! cancellation signal. When the entry task ends, the job is cancelled (any
//! straggling sub-task stops, as Ray kills a finished driver's tasks), its
//! objects are freed, and its record is written in its final state.

use crate::joblog::JobLog;
use fabric_proto::{ErrorKind, FabricError, JobRecord, TaskLimits};
use std::sync::Arc;
use tokio::sync::watch;

/// What the tasks of one job share.
#[derive(Debug)]
pub struct Job {
    /// The job's id.
    pub id: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// Limits its tasks inherit.
    pub limits: TaskLimits,
    /// Its log.
    pub log: Arc<JobLog>,
    cancel: watch::Sender<Option<FabricError>>,
}

impl Job {
    /// A new, running job.
    pub fn new(id: &str, tenant: &str, limits: TaskLimits, log: Arc<JobLog>) -> Arc<Self> {
        Arc::new(Job { id: id.into(), tenant: tenant.into(), limits, log, cancel: watch::channel(None).0 })
    }

    /// Stops every task of the job with `reason` (the first reason wins).
    pub fn cancel(&self, reason: FabricError) {
        self.cancel.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the reason once the job is cancelled.
    pub async fn cancelled(&self) -> FabricError {
        let mut rx = self.cancel.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
        reason.unwrap_or_else(stopped)
    }
}

fn stopped() -> FabricError {
    FabricError::new(ErrorKind::Cancelled, "the job was stopped")
}

/// A live job as its submitter sees it.
pub struct JobHandle {
    /// The job's id.
    pub id: String,
    /// The log so far at submission (empty) and what follows.
    pub log: tokio::sync::broadcast::Receiver<bytes::Bytes>,
    /// Becomes `Some(record)` when the job ends.
    pub done: watch::Receiver<Option<JobRecord>>,
}

impl JobHandle {
    /// Waits for the job's final record.
    pub async fn finished(&mut self) -> Option<JobRecord> {
        self.done.wait_for(Option::is_some).await.ok().and_then(|r| r.clone())
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

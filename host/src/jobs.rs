//! Jobs: a submitted entry task and everything it fans out into.
//!
//! A [`Job`] carries what all its tasks share: tenant, id, limits, log, and a
//! cancellation signal. When the entry task ends, the job is cancelled (any
//! straggling sub-task stops, as Ray kills a finished driver's tasks), its
//! objects are freed, and its record is written in its final state.

use crate::joblog::JobLog;
use crate::objects::ObjectId;
use bytes::Bytes;
use fabric_proto::{ErrorKind, FabricError, JobRecord, TaskLimits};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

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
    /// Its tasks here each get a fresh instance, and none is kept for
    /// reuse (the call of a deployment that isolates requests).
    pub isolated: bool,
    cancel: watch::Sender<Option<FabricError>>,
    /// Peers its tasks ran on or its actors live on: told when it ends.
    peers: std::sync::Mutex<Vec<String>>,
    /// For a task run here for a peer's job: the other hosts' objects its
    /// tasks kept (declared into values, results or further tasks), for the
    /// peer to stop counting.
    borrowed: Option<std::sync::Mutex<std::collections::HashSet<ObjectId>>>,
}

impl Job {
    /// A new, running job.
    pub fn new(id: &str, tenant: &str, limits: TaskLimits, log: Arc<JobLog>) -> Arc<Self> {
        Arc::new(Job::build(id, tenant, limits, log, None))
    }

    /// A new, running job whose tasks here get fresh instances
    /// ([`Job::isolated`]).
    pub fn new_isolated(id: &str, tenant: &str, limits: TaskLimits, log: Arc<JobLog>) -> Arc<Self> {
        Arc::new(Job { isolated: true, ..Job::build(id, tenant, limits, log, None) })
    }

    /// The stand-in for a peer's job while one of its tasks runs here: it
    /// records the other hosts' objects its tasks keep ([`Job::borrowed`]).
    pub fn shadow(id: &str, tenant: &str, limits: TaskLimits, log: Arc<JobLog>) -> Arc<Self> {
        Arc::new(Job::build(id, tenant, limits, log, Some(Default::default())))
    }

    fn build(
        id: &str,
        tenant: &str,
        limits: TaskLimits,
        log: Arc<JobLog>,
        borrowed: Option<std::sync::Mutex<std::collections::HashSet<ObjectId>>>,
    ) -> Job {
        let (cancel, peers) = (watch::channel(None).0, Default::default());
        Job { id: id.into(), tenant: tenant.into(), limits, log, isolated: false, cancel, peers, borrowed }
    }

    /// Notes that a task of this job kept other hosts' objects `ids` (a
    /// shadow's record; other jobs keep none).
    pub fn keep_borrowed(&self, ids: impl IntoIterator<Item = ObjectId>) {
        if let Some(borrowed) = &self.borrowed {
            borrowed.lock().unwrap_or_else(|p| p.into_inner()).extend(ids);
        }
    }

    /// The other hosts' objects this shadow's tasks kept.
    pub fn borrowed(&self) -> Vec<ObjectId> {
        self.borrowed
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect())
            .unwrap_or_default()
    }

    /// Notes that the job sent work to (or owns an actor on) the peer at
    /// `addr`.
    pub fn reached(&self, addr: &str) {
        let mut hosts = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !hosts.iter().any(|h| h == addr) {
            hosts.push(addr.to_string());
        }
    }

    /// The peers the job reached.
    pub fn peers(&self) -> Vec<String> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

/// A live job as a follower sees it: its log as it is written, then its end.
pub struct JobHandle {
    /// The job's id.
    pub id: String,
    log: broadcast::Receiver<Bytes>,
    log_open: bool,
    done: watch::Receiver<Option<JobRecord>>,
    ended: bool,
    record: Option<JobRecord>,
}

/// What happens next to a followed job.
#[derive(Debug)]
pub enum JobEvent {
    /// A chunk of its log.
    Log(Bytes),
    /// The follower fell behind and this many chunks were dropped.
    Dropped(u64),
    /// The job ended (with its final record; `None` if the host stopped
    /// first). Every log chunk written before the end comes before this.
    Done(Option<JobRecord>),
}

impl JobHandle {
    /// Follows job `id` from these receivers.
    pub fn new(id: String, log: broadcast::Receiver<Bytes>, done: watch::Receiver<Option<JobRecord>>) -> Self {
        JobHandle { id, log, log_open: true, done, ended: false, record: None }
    }

    /// The next event; after `Done`, `Done(None)` forever.
    pub async fn next_event(&mut self) -> JobEvent {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            if self.ended {
                // Everything logged before the end is in the channel already.
                return match self.log.try_recv() {
                    Ok(chunk) => JobEvent::Log(chunk),
                    Err(TryRecvError::Lagged(n)) => JobEvent::Dropped(n),
                    Err(_) => JobEvent::Done(self.record.take()),
                };
            }
            let done = &mut self.done;
            tokio::select! {
                chunk = self.log.recv(), if self.log_open => match chunk {
                    Ok(chunk) => return JobEvent::Log(chunk),
                    Err(RecvError::Lagged(n)) => return JobEvent::Dropped(n),
                    Err(RecvError::Closed) => self.log_open = false,
                },
                record = async { done.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()) } => {
                    self.ended = true;
                    self.record = record;
                }
            }
        }
    }

    /// Follows to the end, handing log chunks to `on_log`.
    pub async fn finish(mut self, mut on_log: impl FnMut(&[u8])) -> Option<JobRecord> {
        loop {
            match self.next_event().await {
                JobEvent::Log(chunk) => on_log(&chunk),
                JobEvent::Dropped(n) => on_log(dropped_note(n).as_bytes()),
                JobEvent::Done(record) => return record,
            }
        }
    }
}

/// What a follower is told when it fell behind.
pub fn dropped_note(chunks: u64) -> String {
    format!("\n[fabric: {chunks} log chunks dropped: the reader fell behind]\n")
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

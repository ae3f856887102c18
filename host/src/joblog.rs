//! A job's log: what its tasks print, kept for `fabric logs` and streamed to
//! followers as it is written.
//!
//! Appends go to a file (when the host persists state) and to a bounded
//! in-memory copy, under one lock with the broadcast, so a follower that
//! subscribes gets exactly the bytes before its subscription as a snapshot
//! and every later chunk through the channel, with no gap or repeat.

use bytes::Bytes;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much of a log is kept in memory (all of it goes to the file).
const MEMORY_LIMIT: usize = 8 << 20;

/// How much of a task's stderr is kept to explain a trap.
const TAIL_LIMIT: usize = 1024;

/// One job's log.
#[derive(Debug)]
pub struct JobLog {
    inner: Mutex<Inner>,
    updates: broadcast::Sender<Bytes>,
    id: u64,
}

#[derive(Debug)]
struct Inner {
    memory: Vec<u8>,
    truncated: bool,
    file: Option<(PathBuf, std::fs::File)>,
    echo: bool,
    /// Keep the newest bytes rather than the first (a deployment's log,
    /// which lives as long as the deployment).
    ring: bool,
    /// Bytes appended since the log began (where `memory` ends).
    written: u64,
}

impl JobLog {
    /// A random id of this log, so a follower can tell it from a later log
    /// of the same name (a redeploy after an undeploy, a restarted host).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl JobLog {
    /// A log kept in memory, and in `file` if given; `echo` copies it to
    /// this process's stderr (for `fabric run`).
    pub fn new(file: Option<PathBuf>, echo: bool) -> std::io::Result<Arc<Self>> {
        let file = match file {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                Some((path, f))
            }
            None => None,
        };
        Ok(JobLog::with(file, echo, false))
    }

    /// A log kept in memory only (a call's, or a peer's task's here).
    pub fn in_memory(echo: bool) -> Arc<Self> {
        JobLog::with(None, echo, false)
    }

    /// A log in memory that keeps its newest bytes (up to its limit), for
    /// something that lives long (a deployment).
    pub fn ring(echo: bool) -> Arc<Self> {
        JobLog::with(None, echo, true)
    }

    fn with(file: Option<(PathBuf, std::fs::File)>, echo: bool, ring: bool) -> Arc<Self> {
        Arc::new(JobLog {
            inner: Mutex::new(Inner { memory: Vec::new(), truncated: false, file, echo, ring, written: 0 }),
            updates: broadcast::channel(1024).0,
            id: rand::random(),
        })
    }

    /// What was appended from byte `offset` of the log on, at most its last
    /// `max` bytes (and as far as the log keeps), and where the log ends
    /// now. Bytes skipped are said so in a note.
    pub fn since(&self, offset: u64, max: usize) -> (Vec<u8>, u64) {
        let inner = self.lock();
        let kept_from = inner.written - inner.memory.len() as u64;
        let newest = inner.written - inner.memory.len().min(max) as u64;
        let from = offset.min(inner.written).max(newest);
        let mut out = Vec::new();
        if from > offset {
            out.extend_from_slice(format!("[fabric: {} bytes of log skipped]\n", from - offset).as_bytes());
        }
        out.extend_from_slice(&inner.memory[(from - kept_from) as usize..]);
        (out, inner.written)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `bytes`.
    pub fn append(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if let Some((_, file)) = &mut inner.file {
            // A full disk loses log lines, not the job.
            let _ = file.write_all(bytes);
        }
        if inner.echo {
            let _ = std::io::stderr().write_all(bytes);
        }
        if inner.ring || inner.memory.len() + bytes.len() <= MEMORY_LIMIT {
            inner.memory.extend_from_slice(bytes);
            inner.written += bytes.len() as u64;
            if inner.memory.len() > MEMORY_LIMIT {
                // A ring: drop the oldest quarter at a time, so appends stay
                // cheap.
                let cut = inner.memory.len() - MEMORY_LIMIT / 4 * 3;
                inner.memory.drain(..cut);
            }
        } else {
            inner.truncated = true;
        }
        let _ = self.updates.send(Bytes::copy_from_slice(bytes));
    }

    /// Everything written so far, and a receiver for what comes next.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let inner = self.lock();
        let rx = self.updates.subscribe();
        (snapshot(&inner), rx)
    }

    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        snapshot(&self.lock())
    }
}

fn snapshot(inner: &Inner) -> Vec<u8> {
    if let Some((path, _)) = &inner.file {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
    }
    let mut out = inner.memory.clone();
    if inner.truncated {
        out.extend_from_slice(b"\n[fabric: log truncated in memory]\n");
    }
    out
}

/// A guest's stdout or stderr, writing into the log of the job its instance
/// currently runs for. An instance reused for another job's task is
/// re-attached, so its output always lands in the right log.
#[derive(Clone)]
pub struct LogStream {
    sink: Arc<Mutex<Sink>>,
}

struct Sink {
    log: Option<Arc<JobLog>>,
    /// The end of what was written since the last attach, when kept.
    tail: Option<Vec<u8>>,
}

impl LogStream {
    /// A detached stream; `keep_tail` remembers the last bytes written
    /// (for stderr, to explain a trap).
    pub fn new(keep_tail: bool) -> Self {
        LogStream { sink: Arc::new(Mutex::new(Sink { log: None, tail: keep_tail.then(Vec::new) })) }
    }

    fn lock(&self) -> MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends what follows to `log`, forgetting the remembered tail.
    pub fn attach(&self, log: Arc<JobLog>) {
        let mut sink = self.lock();
        sink.log = Some(log);
        if let Some(tail) = &mut sink.tail {
            tail.clear();
        }
    }

    /// Stops writing anywhere (the instance is idle).
    pub fn detach(&self) {
        self.lock().log = None;
    }

    /// The remembered end of the output since the last attach.
    pub fn tail_text(&self) -> String {
        String::from_utf8_lossy(self.lock().tail.as_deref().unwrap_or_default()).into_owned()
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut sink = self.lock();
        if let Some(log) = &sink.log {
            log.append(bytes);
        }
        if let Some(tail) = &mut sink.tail {
            tail.extend_from_slice(bytes);
            if tail.len() > TAIL_LIMIT {
                let cut = tail.len() - TAIL_LIMIT;
                tail.drain(..cut);
            }
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_log_keeps_its_newest_bytes_and_is_followed_by_offset() {
        let log = JobLog::ring(false);
        log.append(b"first\n");
        let (text, end) = log.since(0, usize::MAX);
        assert_eq!((text.as_slice(), end), (&b"first\n"[..], 6));
        log.append(b"second\n");
        assert_eq!(log.since(end, usize::MAX), (b"second\n".to_vec(), 13));
        assert_eq!(log.since(13, usize::MAX), (Vec::new(), 13));
        // At most the last `max` bytes, the rest said skipped.
        assert_eq!(log.since(0, 7), (b"[fabric: 6 bytes of log skipped]\nsecond\n".to_vec(), 13));
        // Past its limit it drops the oldest bytes, and a follower that
        // fell behind is told how much it missed.
        let line = vec![b'x'; 1 << 20];
        for _ in 0..12 {
            log.append(&line);
        }
        let (text, end) = log.since(13, usize::MAX);
        assert_eq!(end, 13 + 12 * (1 << 20));
        assert!(text.len() <= MEMORY_LIMIT + 100, "{}", text.len());
        assert!(text.starts_with(b"[fabric: "), "{:?}", &text[..40]);
        assert!(log.contents().len() <= MEMORY_LIMIT);
        log.append(b"last\n");
        assert_eq!(log.since(end, usize::MAX), (b"last\n".to_vec(), end + 5));
    }
}

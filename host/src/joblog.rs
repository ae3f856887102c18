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
}

#[derive(Debug)]
struct Inner {
    memory: Vec<u8>,
    truncated: bool,
    file: Option<(PathBuf, std::fs::File)>,
    echo: bool,
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
        Ok(Arc::new(JobLog {
            inner: Mutex::new(Inner { memory: Vec::new(), truncated: false, file, echo }),
            updates: broadcast::channel(1024).0,
        }))
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
        if inner.memory.len() + bytes.len() <= MEMORY_LIMIT {
            inner.memory.extend_from_slice(bytes);
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

/// A guest's stdout or stderr, writing into its job's log.
#[derive(Clone)]
pub struct LogStream {
    log: Arc<JobLog>,
    tail: Option<Arc<Mutex<Vec<u8>>>>,
}

impl LogStream {
    /// A stream into `log`.
    pub fn new(log: Arc<JobLog>) -> Self {
        LogStream { log, tail: None }
    }

    /// A stream into `log` that also remembers its last bytes, read back with
    /// [`StderrTail::text`].
    pub fn with_tail(log: Arc<JobLog>) -> (Self, StderrTail) {
        let tail = Arc::new(Mutex::new(Vec::new()));
        (LogStream { log, tail: Some(tail.clone()) }, StderrTail(tail))
    }

    fn write_bytes(&self, bytes: &[u8]) {
        self.log.append(bytes);
        if let Some(tail) = &self.tail {
            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.extend_from_slice(bytes);
            if tail.len() > TAIL_LIMIT {
                let cut = tail.len() - TAIL_LIMIT;
                tail.drain(..cut);
            }
        }
    }
}

/// The end of a task's stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    /// The remembered bytes as text.
    pub fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
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

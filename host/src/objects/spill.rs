//! Spilling: keeping a host's objects within its memory budget by moving the
//! least recently used ones to local disk (or, for copies of other hosts'
//! objects, dropping them: their holders have them).
//!
//! Why a thread of its own: disk writes block, and the producers that push
//! the store over its budget (a task's `put`, a result coming back, a pulled
//! copy) run on the async workers, which must not stall on a disk. The
//! spiller wakes when memory goes over the budget and writes objects out,
//! least recently used first, until memory is back to seven eighths of the
//! budget (so it does not wake for every put). An object a reader holds
//! right now (its bytes are being lowered into a guest or sent to a peer)
//! is skipped: dropping the store's reference would free nothing.
//!
//! Each spilled object is one unnamed file (`O_TMPFILE`): the kernel frees
//! it when its last handle closes, so a freed object, a restarted host or a
//! `kill -9` leaves nothing behind on disk.

use super::{Local, ObjectBytes, Shared};
use fabric_proto::{ErrorKind, FabricError};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// One spilled object's bytes on disk.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
}

impl SpillFile {
    /// A new, empty, unnamed file under `dir` (created if missing).
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(SpillFile { file: tempfile::tempfile_in(dir)? })
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Reads exactly `len` bytes at `offset` into `buffer` (emptied first;
    /// a new one when it has too little room).
    pub fn read_at(&self, offset: u64, len: usize, mut buffer: Vec<u8>) -> io::Result<Vec<u8>> {
        if buffer.capacity() < len {
            // Zeroed by the OS as its pages are first touched, not here.
            buffer = vec![0u8; len];
        } else {
            buffer.clear();
            buffer.resize(len, 0);
        }
        self.file.read_exact_at(&mut buffer, offset)?;
        Ok(buffer)
    }
}

/// Runs disk IO off the async workers; a failure is a resource-limit error
/// (a full disk, mostly) saying `what` failed.
pub(super) async fn blocking<T: Send + 'static>(
    what: &'static str,
    io: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, FabricError> {
    match tokio::task::spawn_blocking(io).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(FabricError::new(ErrorKind::ResourceLimit, format!("{what}: {e}"))),
        Err(e) => Err(FabricError::new(ErrorKind::Internal, format!("{what}: {e}"))),
    }
}

/// Wakes the spiller thread (or stops it).
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<(Mutex<Signal>, Condvar)>);

#[derive(Debug, Default)]
struct Signal {
    pending: bool,
    stop: bool,
}

impl Wake {
    /// Asks for a spill round.
    pub fn wake(&self) {
        let (signal, condvar) = &*self.0;
        signal.lock().unwrap_or_else(|p| p.into_inner()).pending = true;
        condvar.notify_one();
    }

    /// Ends the thread.
    pub fn stop(&self) {
        let (signal, condvar) = &*self.0;
        signal.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        condvar.notify_one();
    }

    /// Waits for a wake-up, or at most `limit`; `false` once stopped.
    fn wait(&self, limit: Duration) -> bool {
        let (signal, condvar) = &*self.0;
        let deadline = std::time::Instant::now() + limit;
        let mut state = signal.lock().unwrap_or_else(|p| p.into_inner());
        while !state.pending && !state.stop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            state = match condvar.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.pending = false;
        !state.stop
    }
}

/// How soon a spiller that could not get under the budget looks again.
const STUCK_RETRY: Duration = Duration::from_millis(50);

/// How often an idle spiller checks that its store still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Starts the spiller thread of a store; it ends when the store is dropped.
/// An error says why it could not start (objects then stay in memory, and
/// producers over the budget are refused rather than left waiting).
pub(super) fn start(shared: Weak<Shared>, wake: Wake) -> io::Result<()> {
    std::thread::Builder::new().name("fabric-spiller".into()).spawn(move || {
        // Over the budget with every object in memory being read: look
        // again soon, as readers let go.
        let mut over = false;
        while wake.wait(if over { STUCK_RETRY } else { IDLE_CHECK }) {
            let Some(shared) = shared.upgrade() else { return };
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.spill_round()));
            let unused = {
                let mut inner = shared.lock();
                over = inner.stuck;
                let resident = inner.resident;
                inner.recycler.trim(resident, std::time::Instant::now())
            };
            drop(unused);
            if round.is_err() {
                // Producers over the budget get an error rather than wait
                // for a spiller that is gone.
                tracing::error!("the object spiller failed; objects stay in memory from now on");
                shared.lock().spill_error = Some("the spiller thread failed".into());
                shared.room.notify_waiters();
                return;
            }
        }
    })?;
    Ok(())
}

impl Shared {
    /// Spills until memory is back under the low-water mark, nothing more
    /// can go, or a write fails.
    fn spill_round(&self) {
        loop {
            let victims = self.pick_victims();
            if victims.is_empty() {
                self.room.notify_waiters();
                return;
            }
            let mut victims = victims.into_iter();
            while let Some((local, bytes)) = victims.next() {
                let room = self.lock().make_disk_room(&self.limits, local.len);
                let written = room.and_then(|()| SpillFile::create(&self.limits.spill_dir)).and_then(|file| {
                    file.write_at(&bytes, 0)?;
                    Ok(file)
                });
                drop(bytes);
                if !self.record_spill(&local, written) {
                    // The rest stay in memory, back in the spill order.
                    let mut inner = self.lock();
                    for (local, _) in victims {
                        let mut place = local.place();
                        inner.touch(&local, &mut place);
                    }
                    drop(inner);
                    self.room.notify_waiters();
                    return;
                }
            }
            self.room.notify_waiters();
        }
    }

    /// Takes the least recently used unpinned objects off the spill order
    /// until enough would leave memory, and pinned ones after them only if
    /// that is not enough (kept in memory past the budget, they could take
    /// the host down). Those already on disk leave memory at once; the
    /// others are returned to be written (their bytes stay readable in
    /// memory meanwhile).
    fn pick_victims(&self) -> Vec<(Arc<Local>, ObjectBytes)> {
        let mut inner = self.lock();
        let budget = self.limits.memory_budget;
        if inner.resident <= budget {
            inner.stuck = false;
            return Vec::new();
        }
        let low_water = budget / 8 * 7;
        let mut to_free = inner.resident - low_water;
        let mut chosen = Vec::new();
        for pinned in [false, true] {
            for (tick, local) in &inner.lru {
                if to_free == 0 {
                    break;
                }
                if inner.pinned(&local.tenant, local.id) != pinned {
                    continue;
                }
                let place = local.place();
                // Held by a reader now: spilling it would free nothing.
                if place.memory.as_ref().is_none_or(|bytes| Arc::strong_count(bytes) > 1) {
                    continue;
                }
                chosen.push(*tick);
                to_free = to_free.saturating_sub(local.len);
            }
        }
        inner.stuck = chosen.is_empty();
        let mut victims = Vec::new();
        for tick in chosen {
            let Some(local) = inner.lru.remove(&tick) else { continue };
            let mut place = local.place();
            place.tick = 0;
            if let Some(job) = local.copy_for.as_ref().filter(|_| place.read && !place.only_copy) {
                // A copy of another host's object, read already: its holder
                // has it, so it goes rather than costing a write (read
                // again, it is pulled again).
                drop(place);
                inner.drop_copy(&local, job);
            } else if place.disk.is_some() {
                if let Some(bytes) = place.memory.take() {
                    inner.leave_memory(local.len, bytes);
                }
            } else if let Some(bytes) = place.memory.clone() {
                drop(place);
                victims.push((local, bytes));
            }
        }
        victims
    }

    /// Records a spill's outcome; `false` when it failed (the object stays
    /// in memory and spilling pauses until the next wake-up).
    fn record_spill(&self, local: &Arc<Local>, written: io::Result<SpillFile>) -> bool {
        let mut inner = self.lock();
        let mut place = local.place();
        match written {
            Ok(file) => {
                if place.freed {
                    return true;
                }
                place.disk = Some(Arc::new(file));
                inner.spilled += local.len;
                inner.spills += 1;
                inner.spill_error = None;
                // Read again while being written: it stays in memory.
                if place.tick == 0 {
                    if let Some(bytes) = place.memory.take() {
                        inner.leave_memory(local.len, bytes);
                    }
                }
                true
            }
            Err(e) => {
                let why = format!("writing to {} failed: {e}", self.limits.spill_dir.display());
                tracing::warn!("cannot spill an object of {} bytes: {why}", local.len);
                inner.spill_error = Some(why);
                inner.touch(local, &mut place);
                false
            }
        }
    }
}

//! Building one object from parts (`fabric:core/objects.writer`), for
//! objects too large to hold in a task's memory at once.
//!
//! Parts gather in memory until the object outgrows [`WRITER_MEMORY`] (or a
//! quarter of the host's object memory, if less); then what was gathered
//! and every later part go straight to a spill file, so an object larger
//! than the whole budget passes through memory a part at a time. Every part
//! counts against the tenant's limit as it is written (given back if the
//! writer is dropped unfinished), and the object's size limit is checked at
//! every part, so a writer that would go over fails at the part that
//! crosses, not after writing gigabytes. A task may hold at most
//! [`MAX_OPEN_WRITERS`] at once (see `hostfns::objects`), which bounds what
//! open writers keep in memory.
//!
//! A copy pulled from another host that is larger than half the memory
//! budget goes to disk the same way ([`DiskCopy`]): its ranges are written
//! to a spill file as they arrive, so pulling an object larger than the
//! budget never holds it whole in the store's memory (each reader reads it
//! from there, as it would a spilled object of that size).

use super::spill::{blocking, SpillFile};
use super::{Local, ObjectId, ObjectStore, Shared};
use fabric_proto::{ErrorKind, FabricError};
use std::sync::Arc;

/// Bytes a writer keeps in memory at most before it goes to disk.
pub const WRITER_MEMORY: u64 = 16 << 20;

/// Writers one task instance may hold open at once.
pub const MAX_OPEN_WRITERS: u32 = 16;

/// An object being written.
#[derive(Debug)]
pub struct ObjectWriter {
    store: Arc<Shared>,
    tenant: Arc<str>,
    job: Arc<str>,
    len: u64,
    /// Bytes counted against the tenant's limit for this writer.
    reserved: u64,
    /// Bytes of it on disk, counted against the host's disk quota.
    on_disk: u64,
    memory: Vec<u8>,
    disk: Option<Arc<SpillFile>>,
    /// Sealed, or broken by a failed (or abandoned) write: takes no more.
    done: Option<FabricError>,
}

impl ObjectWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The job the object will belong to.
    pub fn job(&self) -> &Arc<str> {
        &self.job
    }

    fn usable(&self) -> Result<(), FabricError> {
        match &self.done {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Gives the writer's reservations back (its tenant's, the disk's).
    fn release(&mut self) {
        if self.reserved > 0 || self.on_disk > 0 {
            let mut inner = self.store.lock();
            inner.unreserve(&self.tenant, self.reserved);
            inner.disk_reserved = inner.disk_reserved.saturating_sub(self.on_disk);
            self.reserved = 0;
            self.on_disk = 0;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        self.release();
    }
}

impl ObjectStore {
    /// A writer for a new object of `tenant`'s job `job`.
    pub fn writer(&self, tenant: Arc<str>, job: Arc<str>) -> ObjectWriter {
        ObjectWriter {
            store: self.shared.clone(),
            tenant,
            job,
            len: 0,
            reserved: 0,
            on_disk: 0,
            memory: Vec::new(),
            disk: None,
            done: None,
        }
    }

    /// Appends `data` to `writer`'s object. A failed write breaks the
    /// writer (so does a write abandoned midway).
    pub async fn write(&self, writer: &mut ObjectWriter, data: Vec<u8>) -> Result<(), FabricError> {
        writer.usable()?;
        let more = data.len() as u64;
        let len = writer.len.saturating_add(more);
        if let Err(error) = self.check_len(len).and_then(|()| self.reserve_for(&writer.tenant, more)) {
            return Err(self.break_writer(writer, error));
        }
        writer.reserved += more;
        // Until this write is done: a caller that gives up on it midway
        // leaves a writer that refuses more rather than one with a hole.
        writer.done = Some(FabricError::new(ErrorKind::Cancelled, "an earlier write to this writer did not finish"));
        let threshold = WRITER_MEMORY.min(self.limits().stream_threshold());
        if writer.disk.is_some() || len > threshold {
            // What goes to disk now: this part, or all gathered so far.
            let to_disk = if writer.disk.is_some() { more } else { len };
            let room = {
                let mut inner = self.lock();
                let room = inner.make_disk_room(self.limits(), to_disk);
                if room.is_ok() {
                    inner.disk_reserved += to_disk;
                }
                room
            };
            match room {
                Ok(()) => writer.on_disk += to_disk,
                Err(e) => {
                    let error = FabricError::new(ErrorKind::ResourceLimit, format!("{WRITE_FAILED}: {e}"));
                    return Err(self.break_writer(writer, error));
                }
            }
        }
        if writer.disk.is_none() && len > threshold {
            let gathered = std::mem::take(&mut writer.memory);
            let dir = self.limits().spill_dir.clone();
            let created = blocking(WRITE_FAILED, move || {
                let file = SpillFile::create(&dir)?;
                file.write_at(&gathered, 0)?;
                Ok(file)
            })
            .await;
            match created {
                Ok(file) => writer.disk = Some(Arc::new(file)),
                Err(error) => return Err(self.break_writer(writer, error)),
            }
        }
        match &writer.disk {
            Some(file) => {
                let (file, offset) = (file.clone(), writer.len);
                if let Err(error) = blocking(WRITE_FAILED, move || file.write_at(&data, offset)).await {
                    return Err(self.break_writer(writer, error));
                }
            }
            None if writer.memory.is_empty() => writer.memory = data,
            None => writer.memory.extend_from_slice(&data),
        }
        writer.len = len;
        writer.done = None;
        Ok(())
    }

    /// Seals `writer`'s object and stores it, owned by the writer's job.
    pub fn finish(&self, writer: &mut ObjectWriter) -> Result<ObjectId, FabricError> {
        writer.usable()?;
        writer.done =
            Some(FabricError::new(ErrorKind::InvalidArgument, "this object writer has already finished its object"));
        let (memory, disk) = match writer.disk.take() {
            Some(file) => (None, Some(file)),
            None => (Some(super::aligned(std::mem::take(&mut writer.memory))), None),
        };
        let (id, cell) = self.reserve(&writer.tenant, &writer.job);
        let local = Arc::new(Local::new(&cell, writer.len, memory, disk));
        // Its bytes on disk now count as spilled (added as it is stored).
        let on_disk = std::mem::take(&mut writer.on_disk);
        {
            let mut inner = self.lock();
            inner.disk_reserved = inner.disk_reserved.saturating_sub(on_disk);
        }
        // The object's bytes were counted for the tenant as they came.
        self.fill_local(&cell, local, true);
        writer.reserved = 0;
        Ok(id)
    }

    /// Fails `writer` for good with `error`; its parts and reservation go.
    fn break_writer(&self, writer: &mut ObjectWriter, error: FabricError) -> FabricError {
        writer.memory = Vec::new();
        writer.disk = None;
        writer.done = Some(error.clone());
        writer.release();
        error
    }
}

const WRITE_FAILED: &str = "cannot write the object to disk";

/// A spill file a pulled copy is written into as it arrives, its room on
/// disk reserved until the copy is stored ([`ObjectStore::fill_copy`]) or
/// this is dropped (the pull failed).
#[derive(Debug)]
pub struct DiskCopy {
    store: Arc<Shared>,
    file: Arc<SpillFile>,
    len: u64,
    /// Bytes of the disk quota reserved for it.
    reserved: u64,
}

impl DiskCopy {
    /// The copy's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the copy is empty (never: only large copies go to disk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `data` at `offset` (off the async workers) and hands the
    /// buffer back for the next range.
    pub async fn write_at(&self, data: Vec<u8>, offset: u64) -> Result<Vec<u8>, FabricError> {
        let file = self.file.clone();
        blocking(WRITE_FAILED, move || file.write_at(&data, offset).map(|()| data)).await
    }

    /// Its file, its reservation given back (the store counts the file as
    /// spilled once it holds the copy).
    pub(super) fn into_file(mut self) -> Arc<SpillFile> {
        self.release();
        self.file.clone()
    }

    fn release(&mut self) {
        if self.reserved > 0 {
            let mut inner = self.store.lock();
            inner.disk_reserved = inner.disk_reserved.saturating_sub(self.reserved);
            self.reserved = 0;
        }
    }
}

impl Drop for DiskCopy {
    fn drop(&mut self) {
        self.release();
    }
}

impl ObjectStore {
    /// A spill file for a pulled copy of `len` bytes, when the copy is too
    /// large to keep in memory (over half the budget: read back from disk,
    /// it would be read for each reader alone) and the disk quota has room;
    /// `None`: it lands in memory.
    pub async fn disk_copy(&self, len: u64) -> Option<DiskCopy> {
        if self.limits().stays_in_memory(len) {
            return None;
        }
        {
            let mut inner = self.lock();
            if let Err(e) = inner.make_disk_room(self.limits(), len) {
                tracing::debug!("a copy of {len} bytes lands in memory: {e}");
                return None;
            }
            inner.disk_reserved += len;
        }
        let dir = self.limits().spill_dir.clone();
        match blocking(WRITE_FAILED, move || SpillFile::create(&dir)).await {
            Ok(file) => Some(DiskCopy { store: self.shared.clone(), file: Arc::new(file), len, reserved: len }),
            Err(e) => {
                let mut inner = self.lock();
                inner.disk_reserved = inner.disk_reserved.saturating_sub(len);
                tracing::warn!("a copy of {len} bytes lands in memory: {e}");
                None
            }
        }
    }
}

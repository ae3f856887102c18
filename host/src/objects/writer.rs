//! Building one object from parts (`fabric:core/objects.writer`), for
//! objects too large to hold in a task's memory at once.
//!
//! Parts gather in memory until the object outgrows a quarter of the host's
//! memory budget; then what was gathered and every later part go straight
//! to a spill file, so an object larger than the whole budget passes
//! through memory a part at a time. The object's size and its tenant's
//! limit are checked at every part, so a writer that would go over fails at
//! the part that crosses, not after writing gigabytes.

use super::spill::{blocking, SpillFile};
use super::{Local, ObjectId, ObjectStore};
use fabric_proto::{ErrorKind, FabricError};
use std::sync::Arc;

/// An object being written.
#[derive(Debug)]
pub struct ObjectWriter {
    tenant: Arc<str>,
    job: Arc<str>,
    len: u64,
    memory: Vec<u8>,
    disk: Option<Arc<SpillFile>>,
    /// Sealed, or broken by a failed write: takes no more.
    done: Option<FabricError>,
}

impl ObjectWriter {
    /// An empty writer for an object of `tenant`'s job `job`.
    pub fn new(tenant: Arc<str>, job: Arc<str>) -> Self {
        ObjectWriter { tenant, job, len: 0, memory: Vec::new(), disk: None, done: None }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn usable(&self) -> Result<(), FabricError> {
        match &self.done {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

impl ObjectStore {
    /// Appends `data` to `writer`'s object.
    pub async fn write(&self, writer: &mut ObjectWriter, data: Vec<u8>) -> Result<(), FabricError> {
        writer.usable()?;
        let len = writer.len.saturating_add(data.len() as u64);
        if let Err(error) = self.check_len(len).and_then(|()| self.check_tenant(&writer.tenant, len)) {
            return Err(self.break_writer(writer, error));
        }
        if writer.disk.is_none() && len > self.limits().stream_threshold() {
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
        let local = Arc::new(Local::new(writer.tenant.clone(), writer.len, memory, disk));
        let (id, cell) = self.reserve(&writer.tenant, &writer.job);
        if let Err(error) = self.fill_local(&cell, local) {
            self.remove(&writer.tenant, &writer.job, id);
            return Err(error);
        }
        Ok(id)
    }

    /// Fails `writer` for good with `error` (its parts are let go).
    fn break_writer(&self, writer: &mut ObjectWriter, error: FabricError) -> FabricError {
        writer.memory = Vec::new();
        writer.disk = None;
        writer.done = Some(error.clone());
        error
    }
}

const WRITE_FAILED: &str = "cannot write the object to disk";

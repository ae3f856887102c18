//! `fabric:core/objects`: put, get and slice reads against the host's store,
//! in the calling task's tenant.

use super::bindings::fabric::core::objects::Host;
use super::{WitError, WitObjectId};
use crate::objects::{Cell, ObjectResult};
use crate::sandbox::TaskState;
use bytes::Bytes;
use fabric_proto::{ErrorKind, FabricError};
use std::sync::Arc;

impl TaskState {
    /// The object's bytes, waiting (with the slot lent out) if it is pending.
    async fn object(&mut self, id: WitObjectId) -> Result<Bytes, FabricError> {
        let task = self.task()?;
        let cell: Arc<Cell> = task.host.objects.cell(&task.job.tenant, id.into())?;
        let value: ObjectResult = match cell.peek() {
            Some(value) => value.clone(),
            None => task.blocking(cell.ready()).await?.clone(),
        };
        value
    }
}

impl Host for TaskState {
    async fn put(&mut self, data: Vec<u8>) -> Result<WitObjectId, WitError> {
        let task = self.task()?;
        Ok(task.host.objects.put(&task.job.tenant, &task.job.id, data)?.into())
    }

    async fn get(&mut self, id: WitObjectId) -> Result<Vec<u8>, WitError> {
        Ok(self.object(id).await?.to_vec())
    }

    async fn size(&mut self, id: WitObjectId) -> Result<u64, WitError> {
        Ok(self.object(id).await?.len() as u64)
    }

    async fn read(&mut self, id: WitObjectId, offset: u64, len: u64) -> Result<Vec<u8>, WitError> {
        let bytes = self.object(id).await?;
        let end = offset.checked_add(len).filter(|end| *end <= bytes.len() as u64).ok_or_else(|| {
            FabricError::new(
                ErrorKind::InvalidArgument,
                format!("read of {len} bytes at offset {offset} is past the end of a {}-byte object", bytes.len()),
            )
        })?;
        Ok(bytes[offset as usize..end as usize].to_vec())
    }
}

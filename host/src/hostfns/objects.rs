//! `fabric:core/objects`: put, get and slice reads against the host's store,
//! in the calling task's tenant.

use super::bindings::fabric::core::objects::Host;
use super::{WitError, WitObjectId};
use crate::objects::{Cell, ObjectBytes, ObjectResult};
use crate::sandbox::TaskState;
use fabric_proto::{ErrorKind, FabricError};
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime::StoreContextMut;

impl TaskState {
    /// The object's bytes, waiting (with the slot lent out) if it is pending.
    async fn object(&mut self, id: WitObjectId) -> Result<ObjectBytes, FabricError> {
        let task = self.task()?;
        let cell: Arc<Cell> = task.host.objects.cell(&task.job.tenant, id.into())?;
        let value: ObjectResult = match cell.peek() {
            Some(value) => value.clone(),
            None => task.blocking(cell.ready()).await?.clone(),
        };
        value
    }
}

/// Redefines `objects.get` to lower the stored bytes straight into guest
/// memory. The generated binding must return a fresh `Vec<u8>`, which would
/// copy a large object once more on the host (and fault in fresh pages for
/// it); wasmtime lowers an `Arc<Vec<u8>>` as a `list<u8>` directly.
pub(crate) fn add_zero_copy_get(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut objects = linker.instance("fabric:core/objects@0.1.0")?;
    objects.func_wrap_async("get", |mut store: StoreContextMut<'_, TaskState>, (id,): (WitObjectId,)| {
        Box::new(async move {
            let result: Result<ObjectBytes, WitError> = store.data_mut().object(id).await.map_err(WitError::from);
            Ok((result,))
        })
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

impl Host for TaskState {
    async fn put(&mut self, data: Vec<u8>) -> Result<WitObjectId, WitError> {
        let task = self.task()?;
        Ok(task.host.objects.put(&task.job.tenant, &task.job.id, data)?.into())
    }

    /// Shadowed by [`add_zero_copy_get`], which avoids this copy; kept for
    /// the generated trait.
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

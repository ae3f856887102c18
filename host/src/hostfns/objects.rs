//! `fabric:core/objects`: put, get, slice reads and writers against the
//! host's store, in the calling task's tenant.

use super::bindings::fabric::core::objects::{Host, HostWriter};
use super::{WitError, WitObjectId};
use crate::objects::holds::Holds;
use crate::objects::writer::{ObjectWriter, MAX_OPEN_WRITERS};
use crate::objects::{transfer, Cell, ObjectBytes, ObjectId, Value};
use crate::sandbox::TaskState;
use crate::HostInner;
use fabric_proto::FabricError;
use std::sync::Arc;
use wasmtime::component::{Linker, Resource, WasmList};
use wasmtime::StoreContextMut;

impl TaskState {
    /// The object if it is ready here (no wait, no slot lent out).
    fn ready_here(&mut self, id: ObjectId) -> Result<Option<Value>, FabricError> {
        let task = self.task()?;
        let cell = task.host.objects.lookup(&task.job.tenant, id);
        cell.as_deref().and_then(Cell::peek).cloned().transpose()
    }

    /// Runs `wait` (a wait for another task or a pull from another host)
    /// with the task's slot lent out.
    async fn waiting<T, F>(
        &mut self,
        wait: impl FnOnce(Arc<HostInner>, Arc<str>, Arc<str>) -> F,
    ) -> Result<T, FabricError>
    where
        F: std::future::Future<Output = Result<T, FabricError>>,
    {
        let task = self.task()?;
        let future = wait(task.host.clone(), task.job.tenant.clone(), task.job.id.clone());
        task.blocking(future).await?
    }

    /// The object's bytes, waiting if it is pending or must be pulled.
    async fn object(&mut self, id: WitObjectId) -> Result<ObjectBytes, FabricError> {
        let id: ObjectId = id.into();
        let ready = self.ready_here(id)?;
        if let Some(value) = &ready {
            // Here or kept by a peer, its size is known: refuse before
            // reading (or pulling) what the guest cannot take.
            self.fits_in_guest(value.len())?;
        }
        if let Some(Value::Here(local)) = ready {
            let host = self.task()?.host.clone();
            match host.objects.bytes(&local).await {
                // A copy that went (dropped for memory, say): read it again (below).
                Err(_) if local.copy_gone() => {}
                read => return read,
            }
        }
        self.waiting(|host, tenant, job| async move { transfer::bytes(&host, &tenant, &job, id).await }).await
    }

    /// The guest's references (counted in its task's store and tenant,
    /// bound when the task was attached).
    pub(crate) fn holds(&mut self) -> Result<&mut Holds, FabricError> {
        self.task()?;
        Ok(&mut self.holds)
    }

    /// Hands the guest a new object, whose one reference the store counted
    /// for it.
    pub(crate) fn adopt(&mut self, id: ObjectId) -> Result<WitObjectId, FabricError> {
        self.holds()?.adopt(id);
        Ok(id.into())
    }

    /// A read of `len` bytes must fit the task's memory: checked before
    /// the host reads them (from disk, for a spilled object) for nothing.
    fn fits_in_guest(&self, len: u64) -> Result<(), FabricError> {
        let cap = self.cap.memory_bytes;
        if len > cap {
            return Err(FabricError::new(
                fabric_proto::ErrorKind::ResourceLimit,
                format!("a read of {len} bytes does not fit the task's memory limit of {cap} bytes"),
            ));
        }
        Ok(())
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

/// Redefines `objects.put` to copy the guest's bytes straight from its
/// memory into a buffer of the store's: the generated binding would lift
/// them into a new `Vec<u8>`, whose pages are fresh (faulted in one by one
/// as the copy touches them), while the store may have a buffer of that
/// size mapped already ([`crate::objects::recycle`]).
pub(crate) fn add_recycling_put(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut objects = linker.instance("fabric:core/objects@0.1.0")?;
    objects.func_wrap_async("put", |mut store: StoreContextMut<'_, TaskState>, (data,): (WasmList<u8>,)| {
        Box::new(async move {
            let copied = match store.data_mut().task() {
                Ok(task) => task.host.clone().objects.copy_in(data.as_le_slice(&store)),
                Err(e) => Err(e),
            };
            let result = match copied {
                Ok(data) => store.data_mut().put_object(data).await,
                Err(e) => {
                    // The references declared for this value go with it, as
                    // when a put fails later.
                    if let Ok(holds) = store.data_mut().holds() {
                        drop(holds.take_declared());
                    }
                    Err(e)
                }
            };
            Ok((result.map_err(WitError::from),))
        })
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

impl TaskState {
    /// Stores `data` as a new object of the task's job, naming what the
    /// guest declared, and hands it to the guest.
    async fn put_object(&mut self, data: Vec<u8>) -> Result<WitObjectId, FabricError> {
        let named = self.holds()?.take_declared();
        let task = self.task()?;
        let (host, tenant, job) = (task.host.clone(), task.job.tenant.clone(), task.job.id.clone());
        // A task putting faster than the host can spill waits here: before
        // (a failure then stores nothing) and after, for the spill its own
        // put set off.
        host.objects.room().await?;
        let id = host.objects.put_naming(&tenant, &job, data, named.hand_over())?;
        let id = self.adopt(id)?;
        let _ = host.objects.room().await;
        Ok(id)
    }
}

impl Host for TaskState {
    /// Shadowed by [`add_recycling_put`]; kept for the generated trait.
    async fn put(&mut self, data: Vec<u8>) -> Result<WitObjectId, WitError> {
        Ok(self.put_object(data).await?)
    }

    async fn pin(&mut self, id: WitObjectId) -> Result<(), WitError> {
        let id: ObjectId = id.into();
        // Pinned once ready, so a result kept on a peer is pinned there.
        let (cell, _watch) = {
            let task = self.task()?;
            transfer::watch(&task.host, &task.job.tenant, id)?
        };
        if cell.peek().is_none() {
            self.waiting(|_, _, _| async move {
                cell.ready().await;
                Ok(())
            })
            .await?;
        }
        let task = self.task()?;
        transfer::set_pinned(&task.host, &task.job.tenant, id, true, true).await?;
        Ok(())
    }

    async fn retain(&mut self, id: WitObjectId) -> wasmtime::Result<()> {
        self.holds()?.retain(id.into())?;
        Ok(())
    }

    async fn release(&mut self, id: WitObjectId) {
        if let Ok(holds) = self.holds() {
            holds.release(id.into());
        }
    }

    async fn declare_refs(&mut self, ids: Vec<WitObjectId>) -> wasmtime::Result<()> {
        let ids: Vec<ObjectId> = ids.into_iter().map(ObjectId::from).collect();
        let task = self.task()?;
        // Another host's objects kept here: that host cannot count them.
        task.job.keep_borrowed(ids.iter().copied().filter(|id| !task.host.objects.minted_here(*id)));
        self.holds()?.declare(ids)?;
        Ok(())
    }

    /// Shadowed by [`add_zero_copy_get`], which avoids this copy; kept for
    /// the generated trait.
    async fn get(&mut self, id: WitObjectId) -> Result<Vec<u8>, WitError> {
        Ok(self.object(id).await?.to_vec())
    }

    async fn size(&mut self, id: WitObjectId) -> Result<u64, WitError> {
        let id: ObjectId = id.into();
        if let Some(value) = self.ready_here(id)? {
            return Ok(value.len());
        }
        Ok(self.waiting(|host, tenant, _| async move { transfer::size(&host, &tenant, id).await }).await?)
    }

    /// Reads only the range, pulling only it when another host holds the
    /// object and this one has no copy.
    async fn read(&mut self, id: WitObjectId, offset: u64, len: u64) -> Result<Vec<u8>, WitError> {
        let id: ObjectId = id.into();
        self.fits_in_guest(len)?;
        if let Some(Value::Here(local)) = self.ready_here(id)? {
            let range = transfer::range_of(local.len(), offset, len)?;
            let host = self.task()?.host.clone();
            match host.objects.slice(&local, range).await {
                Ok(bytes) => return Ok(Vec::from(bytes)),
                // A copy that went (dropped for memory, say): read the range off its holder.
                Err(_) if local.copy_gone() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.waiting(|host, tenant, _| async move { transfer::read(&host, &tenant, id, offset, len).await }).await?)
    }
}

impl HostWriter for TaskState {
    async fn new(&mut self) -> wasmtime::Result<Resource<ObjectWriter>> {
        if self.open_writers >= MAX_OPEN_WRITERS {
            wasmtime::bail!("a task may hold at most {MAX_OPEN_WRITERS} object writers at once");
        }
        let task = self.task()?;
        let writer = task.host.objects.writer(task.job.tenant.clone(), task.job.id.clone());
        let handle = self.table.push(writer)?;
        self.open_writers += 1;
        Ok(handle)
    }

    async fn write(&mut self, writer: Resource<ObjectWriter>, data: Vec<u8>) -> Result<(), WitError> {
        let host = self.writers_host(&writer)?;
        // A task writing faster than the host can spill waits here.
        host.objects.room().await?;
        let writer = self.table.get_mut(&writer).map_err(no_writer)?;
        host.objects.write(writer, data).await?;
        Ok(())
    }

    async fn finish(&mut self, writer: Resource<ObjectWriter>) -> Result<WitObjectId, WitError> {
        let host = self.writers_host(&writer)?;
        let writer = self.table.get_mut(&writer).map_err(no_writer)?;
        let id = host.objects.finish(writer)?;
        Ok(self.adopt(id)?)
    }

    async fn drop(&mut self, writer: Resource<ObjectWriter>) -> wasmtime::Result<()> {
        self.table.delete(writer)?;
        self.open_writers = self.open_writers.saturating_sub(1);
        Ok(())
    }
}

impl TaskState {
    /// The host of the task calling with `writer`, which must be its job's
    /// (an instance reused by a later job may still hold an old writer).
    fn writers_host(&mut self, writer: &Resource<ObjectWriter>) -> Result<Arc<HostInner>, FabricError> {
        let task = self.task()?;
        let (host, job) = (task.host.clone(), task.job.id.clone());
        if self.table.get(writer).map_err(no_writer)?.job() != &job {
            return Err(FabricError::new(
                fabric_proto::ErrorKind::InvalidArgument,
                "this object writer belongs to an earlier job's task",
            ));
        }
        Ok(host)
    }
}

fn no_writer(error: wasmtime::component::ResourceTableError) -> WitError {
    WitError::from(FabricError::new(
        fabric_proto::ErrorKind::InvalidArgument,
        format!("no such object writer: {error}"),
    ))
}

//! The object store: immutable byte objects keyed by tenant and id.
//!
//! An object is either a value a task `put`, or the result slot of a task,
//! which is created pending when the task is submitted and filled with the
//! task's encoded result or its error when it ends. Readers wait on the slot.
//!
//! Bytes are kept as [`ObjectBytes`] (a shared `Vec<u8>`) whose start is
//! 16-byte aligned, so an rkyv archive stored as an object can be accessed in
//! place; host-side reads hand out a reference and never copy, and a guest's
//! `get` is lowered straight from it into guest memory (one copy in all).
//! A `put` keeps the vector wasmtime lifted from the guest: one copy too.
//!
//! An object lives on the host that created it: its id carries that host's
//! id in the high half. A task that ran on a peer leaves a large result
//! there, and its result slot here says where ([`Value::Elsewhere`]); a
//! reader elsewhere pulls the bytes over QUIC ([`transfer`]) into a local
//! copy that every reader on its host shares. Objects belong to the job that
//! created them (a peer keeps a visiting job's objects until the job's own
//! host says it ended) and are freed when it ends.

pub mod transfer;

use fabric_proto::{ErrorKind, FabricError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;

/// Alignment guaranteed for the start of every object's bytes.
pub const OBJECT_ALIGN: usize = 16;

/// An object's id: the host that minted it in the high half, a counter in
/// the low half, so ids are unique across a cluster without coordination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    /// The minting host's random id.
    pub hi: u64,
    /// A per-host counter.
    pub lo: u64,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

impl ObjectId {
    /// The id of the host that minted the object, as membership names it.
    pub fn holder(&self) -> String {
        host_id(self.hi)
    }
}

/// A host's id as membership names it, from the number ids carry.
pub fn host_id(node: u64) -> String {
    format!("{node:016x}")
}

impl From<ObjectId> for fabric_proto::WireObjectId {
    fn from(id: ObjectId) -> Self {
        fabric_proto::WireObjectId { hi: id.hi, lo: id.lo }
    }
}

impl From<fabric_proto::WireObjectId> for ObjectId {
    fn from(id: fabric_proto::WireObjectId) -> Self {
        ObjectId { hi: id.hi, lo: id.lo }
    }
}

/// A ready object.
#[derive(Clone, Debug)]
pub enum Value {
    /// Its bytes, here.
    Here(ObjectBytes),
    /// A task result kept by the peer that ran it, as object `id` there
    /// (`id.hi` names the peer), `len` bytes long.
    Elsewhere {
        /// Its id on the holder.
        id: ObjectId,
        /// Its size.
        len: u64,
        /// How to make it again if the holder is lost.
        lineage: Option<Arc<crate::remote::Lineage>>,
    },
}

impl Value {
    /// Its size in bytes, wherever it is.
    pub fn len(&self) -> u64 {
        match self {
            Value::Here(bytes) => bytes.len() as u64,
            Value::Elsewhere { len, .. } => *len,
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes_here(&self) -> u64 {
        match self {
            Value::Here(bytes) => bytes.len() as u64,
            Value::Elsewhere { .. } => 0,
        }
    }
}

/// What reading an object yields: the object, or the error of the task that
/// was to produce it.
pub type ObjectResult = Result<Value, FabricError>;

/// An object's bytes, shared by every reader. `Arc<Vec<u8>>` rather than a
/// `Bytes` because wasmtime lowers it into guest memory as a `list<u8>`
/// directly.
pub type ObjectBytes = Arc<Vec<u8>>;

/// One object: pending until filled once.
#[derive(Debug, Default)]
pub struct Cell {
    value: OnceLock<ObjectResult>,
    filled: Notify,
}

impl Cell {
    /// The value if it is there.
    pub fn peek(&self) -> Option<&ObjectResult> {
        self.value.get()
    }

    /// Waits until the object is filled.
    pub async fn ready(&self) -> &ObjectResult {
        loop {
            if let Some(value) = self.value.get() {
                return value;
            }
            let notified = self.filled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = self.value.get() {
                return value;
            }
            notified.await;
        }
    }

    /// Sets the value unless already set; says whether it was set.
    fn fill(&self, value: ObjectResult) -> bool {
        let set = self.value.set(value).is_ok();
        if set {
            self.filled.notify_waiters();
        }
        set
    }
}

type JobKey = (Arc<str>, Arc<str>);

/// A host's objects.
#[derive(Debug)]
pub struct ObjectStore {
    node: u64,
    counter: AtomicU64,
    max_object_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// tenant -> id -> object; nested so a lookup by `&str` needs no allocation.
    objects: HashMap<Arc<str>, HashMap<ObjectId, Arc<Cell>>>,
    count: usize,
    by_job: HashMap<JobKey, Vec<ObjectId>>,
    bytes: u64,
}

impl ObjectStore {
    /// A store whose ids carry `node` in their high half.
    pub fn new(node: u64, max_object_bytes: u64) -> Self {
        ObjectStore { node, counter: AtomicU64::new(1), max_object_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a pending object owned by `job` (a task's result slot).
    pub fn reserve(&self, tenant: &Arc<str>, job: &Arc<str>) -> (ObjectId, Arc<Cell>) {
        let id = ObjectId { hi: self.node, lo: self.counter.fetch_add(1, Ordering::Relaxed) };
        let cell = Arc::new(Cell::default());
        let mut inner = self.lock();
        inner.objects.entry(tenant.clone()).or_default().insert(id, cell.clone());
        inner.count += 1;
        inner.by_job.entry((tenant.clone(), job.clone())).or_default().push(id);
        (id, cell)
    }

    /// Stores `data` as a new object owned by `job`.
    pub fn put(&self, tenant: &Arc<str>, job: &Arc<str>, data: Vec<u8>) -> Result<ObjectId, FabricError> {
        let data = self.check_size(data)?;
        let (id, cell) = self.reserve(tenant, job);
        self.fill_ok(&cell, data);
        Ok(id)
    }

    /// Fills a reserved object with a task's outcome. Filling twice keeps the
    /// first outcome; filling a freed object does nothing.
    pub fn fill(&self, cell: &Cell, outcome: Result<Vec<u8>, FabricError>) {
        match outcome.and_then(|data| self.check_size(data)) {
            Ok(data) => self.fill_ok(cell, data),
            Err(err) => {
                cell.fill(Err(err));
            }
        }
    }

    /// Fills a reserved object with a pointer to where its bytes are kept
    /// (and how to make them again).
    pub fn fill_elsewhere(&self, cell: &Cell, id: ObjectId, len: u64, lineage: Option<Arc<crate::remote::Lineage>>) {
        cell.fill(Ok(Value::Elsewhere { id, len, lineage }));
    }

    /// Fills under the lock, so a concurrent `drop_job` either sees the bytes
    /// (and uncounts them) or has already filled the cell (and they are never
    /// counted).
    fn fill_ok(&self, cell: &Cell, data: ObjectBytes) {
        let mut inner = self.lock();
        let len = data.len() as u64;
        if cell.fill(Ok(Value::Here(data))) {
            inner.bytes += len;
        }
    }

    /// The object `id` of `tenant`, ready or not.
    pub fn cell(&self, tenant: &str, id: ObjectId) -> Result<Arc<Cell>, FabricError> {
        self.lookup(tenant, id).ok_or_else(|| not_found(tenant, id))
    }

    /// The object `id` of `tenant` if this host has it (or a copy).
    pub fn lookup(&self, tenant: &str, id: ObjectId) -> Option<Arc<Cell>> {
        self.lock().objects.get(tenant).and_then(|objects| objects.get(&id)).cloned()
    }

    /// Whether `id` was minted here (else another host holds it).
    pub fn minted_here(&self, id: ObjectId) -> bool {
        id.hi == self.node
    }

    /// The slot for a local copy of another host's object `id`, owned by
    /// `job`; `true` when it is new (the caller must fill it), `false` when
    /// another reader made it first (wait on it).
    pub fn copy_slot(&self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId) -> (Arc<Cell>, bool) {
        let mut inner = self.lock();
        let objects = inner.objects.entry(tenant.clone()).or_default();
        if let Some(cell) = objects.get(&id) {
            return (cell.clone(), false);
        }
        let cell = Arc::new(Cell::default());
        objects.insert(id, cell.clone());
        inner.count += 1;
        inner.by_job.entry((tenant.clone(), job.clone())).or_default().push(id);
        (cell, true)
    }

    /// Fills a copy slot with the pulled bytes.
    pub fn fill_copy(&self, cell: &Cell, data: Vec<u8>) -> ObjectBytes {
        let data = aligned(data);
        self.fill_ok(cell, data.clone());
        data
    }

    /// Gives up a copy slot whose pull failed: its waiters get `error`, and
    /// the next reader tries again.
    pub fn abandon_copy(&self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId, cell: &Arc<Cell>, error: FabricError) {
        let mut inner = self.lock();
        let Inner { objects, count, by_job, .. } = &mut *inner;
        if let Some(objects) = objects.get_mut(tenant) {
            if objects.get(&id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                objects.remove(&id);
                *count -= 1;
                forget_owned(by_job, tenant, job, id);
            }
        }
        cell.fill(Err(error));
    }

    /// Waits for object `id`, which must be here, and returns its bytes
    /// without copying them.
    pub async fn get(&self, tenant: &str, id: ObjectId) -> Result<ObjectBytes, FabricError> {
        let cell = self.cell(tenant, id)?;
        match cell.ready().await.clone()? {
            Value::Here(bytes) => Ok(bytes),
            Value::Elsewhere { id: held, .. } => {
                Err(FabricError::new(ErrorKind::Unavailable, format!("object {id} is kept on host {}", held.holder())))
            }
        }
    }

    /// What each of `tenant`'s jobs holds here.
    pub fn usage_by_job(&self, tenant: &str) -> Vec<fabric_proto::JobObjects> {
        let inner = self.lock();
        let Some(objects) = inner.objects.get(tenant) else {
            return Vec::new();
        };
        let mut jobs: Vec<fabric_proto::JobObjects> = inner
            .by_job
            .iter()
            .filter(|((t, _), _)| &**t == tenant)
            .map(|((_, job), ids)| {
                let cells = ids.iter().filter_map(|id| objects.get(id));
                let (count, bytes) = cells.fold((0, 0), |(n, b), cell| {
                    let size = match cell.peek() {
                        Some(Ok(value)) => value.bytes_here(),
                        _ => 0,
                    };
                    (n + 1, b + size)
                });
                fabric_proto::JobObjects { job: job.to_string(), objects: count, bytes }
            })
            .filter(|j| j.objects > 0)
            .collect();
        jobs.sort_by(|a, b| a.job.cmp(&b.job));
        jobs
    }

    /// Frees one object of `job` now.
    pub fn remove(&self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId) {
        let mut inner = self.lock();
        let Inner { objects, count, bytes, by_job } = &mut *inner;
        if let Some(cell) = objects.get_mut(tenant).and_then(|o| o.remove(&id)) {
            *count -= 1;
            forget_owned(by_job, tenant, job, id);
            if let Some(Ok(value)) = cell.peek() {
                *bytes = bytes.saturating_sub(value.bytes_here());
            }
            cell.fill(Err(FabricError::new(ErrorKind::NotFound, format!("object {id} was freed"))));
        }
    }

    /// Frees every object `job` created.
    pub fn drop_job(&self, tenant: &Arc<str>, job: &Arc<str>) {
        let mut inner = self.lock();
        let Some(ids) = inner.by_job.remove(&(tenant.clone(), job.clone())) else {
            return;
        };
        let Inner { objects, count, bytes, .. } = &mut *inner;
        let Some(tenant_objects) = objects.get_mut(tenant) else {
            return;
        };
        for id in ids {
            if let Some(cell) = tenant_objects.remove(&id) {
                *count -= 1;
                if let Some(Ok(value)) = cell.peek() {
                    *bytes = bytes.saturating_sub(value.bytes_here());
                }
                // Wake anyone still waiting: the object is gone for good.
                cell.fill(Err(FabricError::new(ErrorKind::Cancelled, format!("object {id} was freed: its job ended"))));
            }
        }
    }

    /// (objects, bytes) held now.
    pub fn usage(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.count, inner.bytes)
    }

    fn check_size(&self, data: Vec<u8>) -> Result<ObjectBytes, FabricError> {
        if data.len() as u64 > self.max_object_bytes {
            return Err(FabricError::new(
                ErrorKind::ResourceLimit,
                format!("object of {} bytes exceeds the limit of {} bytes", data.len(), self.max_object_bytes),
            ));
        }
        Ok(aligned(data))
    }
}

/// Takes `id` off `job`'s list, so the job's end does not free whatever
/// later takes that id (another job's copy of the same remote object).
fn forget_owned(by_job: &mut HashMap<JobKey, Vec<ObjectId>>, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId) {
    if let Some(ids) = by_job.get_mut(&(tenant.clone(), job.clone())) {
        ids.retain(|owned| *owned != id);
    }
}

fn not_found(tenant: &str, id: ObjectId) -> FabricError {
    FabricError::new(ErrorKind::NotFound, format!("no object {id} for tenant `{tenant}`"))
}

/// Takes ownership of `data` without copying when its start is aligned (the
/// system allocator gives 16-byte alignment on the platforms fabric runs on),
/// and copies once into an aligned buffer otherwise.
fn aligned(data: Vec<u8>) -> ObjectBytes {
    if (data.as_ptr() as usize).is_multiple_of(OBJECT_ALIGN) {
        return Arc::new(data);
    }
    // Only tiny allocations can start misaligned: a buffer of at least the
    // alignment's size is aligned by the allocators fabric uses.
    let mut copy = Vec::with_capacity(data.len().max(OBJECT_ALIGN));
    copy.extend_from_slice(&data);
    Arc::new(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_tenant_scoped_and_freed_with_their_job() {
        let store = ObjectStore::new(7, 1 << 20);
        let (a, b, job): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "j".into());
        let id = store.put(&a, &job, vec![1, 2, 3]).unwrap();
        assert_eq!(&store.get("a", id).await.unwrap()[..], &[1, 2, 3]);
        assert_eq!(store.get("b", id).await.unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(store.usage(), (1, 3));
        store.drop_job(&b, &job);
        assert_eq!(store.usage(), (1, 3));
        store.drop_job(&a, &job);
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(store.get("a", id).await.unwrap_err().kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn readers_wait_for_a_pending_object() {
        let store = Arc::new(ObjectStore::new(1, 1 << 20));
        let (t, j): (Arc<str>, Arc<str>) = ("t".into(), "j".into());
        let (id, cell) = store.reserve(&t, &j);
        let reader = {
            let store = store.clone();
            tokio::spawn(async move { store.get("t", id).await })
        };
        tokio::task::yield_now().await;
        store.fill(&cell, Ok(vec![9; 100]));
        let bytes = reader.await.unwrap().unwrap();
        assert_eq!(bytes.len(), 100);
        assert_eq!(bytes.as_ptr() as usize % OBJECT_ALIGN, 0);
    }

    #[test]
    fn oversized_objects_are_refused() {
        let store = ObjectStore::new(1, 10);
        let err = store.put(&"t".into(), &"j".into(), vec![0; 11]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceLimit);
    }
}

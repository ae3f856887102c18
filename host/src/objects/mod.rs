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
//! A `put` copies the guest's bytes into a buffer of the store's, one kept
//! from a freed object of about that size when there is one ([`recycle`]):
//! one copy too.
//!
//! An object lives on the host that created it: its id carries that host's
//! id in the high half. A task that ran on a peer leaves a large result
//! there, and its result slot here says where ([`Value::Elsewhere`]); a
//! reader elsewhere pulls the bytes over QUIC ([`transfer`]) into a local
//! copy that every reader on its host shares. Objects belong to the job that
//! created them (a peer keeps a visiting job's objects until the job's own
//! host says it ended) and are freed when it ends.
//!
//! Memory: each host keeps its objects' bytes within a memory budget. Past
//! it, the least recently used objects that no reader holds right now go to
//! local disk ([`spill`]), pinned ones only when nothing else can, and come
//! back on the next whole read (copies of other hosts' objects are dropped
//! instead: their holders have them, and the next read pulls them again);
//! a slice read
//! of a spilled object reads only that range from disk. An object built with
//! a [`writer::ObjectWriter`] larger than a quarter of the budget goes to
//! disk as it is written, so an object larger than the whole budget streams
//! through. Producers that outrun the disk wait ([`ObjectStore::room`]), so
//! a working set larger than memory finishes, slower, instead of the host
//! running out of memory. Limits per object and per tenant (on this host)
//! give resource-limit errors naming them.
//!
//! Locks: the store's `inner` before an object's `place`, never the other
//! way round; no lock is held across disk IO.

pub mod copy;
pub mod holds;
pub mod recycle;
pub mod spill;
pub mod transfer;
pub mod writer;

use fabric_proto::{ErrorKind, FabricError};
use recycle::Recycler;
use spill::SpillFile;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;

/// The job pinned objects are listed under once their own job has ended.
pub const PINNED_JOB: &str = "(pinned)";

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

/// `ids` as frames of at most [`MAX_IDS_PER_FRAME`](fabric_proto::MAX_IDS_PER_FRAME)
/// ids each, made by `frame` (`Response::Borrowed`, say).
pub(crate) fn id_frames(
    ids: impl IntoIterator<Item = ObjectId>,
    frame: fn(Vec<fabric_proto::WireObjectId>) -> fabric_proto::Response,
) -> Vec<fabric_proto::Response> {
    let ids: Vec<fabric_proto::WireObjectId> = ids.into_iter().map(Into::into).collect();
    ids.chunks(fabric_proto::MAX_IDS_PER_FRAME).map(|part| frame(part.to_vec())).collect()
}

/// A ready object.
#[derive(Clone, Debug)]
pub enum Value {
    /// Its bytes, on this host (in memory or spilled to its disk).
    Here(Arc<Local>),
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
            Value::Here(local) => local.len,
            Value::Elsewhere { len, .. } => *len,
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes_here(&self) -> u64 {
        match self {
            Value::Here(local) => local.len,
            Value::Elsewhere { .. } => 0,
        }
    }
}

/// What reading an object yields: the object, or the error of the task that
/// was to produce it.
pub type ObjectResult = Result<Value, FabricError>;

/// An object's bytes in memory, shared by every reader. `Arc<Vec<u8>>`
/// rather than a `Bytes` because wasmtime lowers it into guest memory as a
/// `list<u8>` directly.
pub type ObjectBytes = Arc<Vec<u8>>;

/// An object's bytes on this host: in memory, in a spill file on local
/// disk, or both (one read back keeps its file, so spilling it again costs
/// no write).
#[derive(Debug)]
pub struct Local {
    len: u64,
    tenant: Arc<str>,
    /// Its id, to find its references (pinned objects spill last).
    id: ObjectId,
    /// For a copy of another host's object, the job it is listed under.
    copy_for: Option<Arc<str>>,
    place: Mutex<Place>,
}

/// Where an object's bytes are. `tick != 0` only while the bytes are in
/// memory, the object is not freed, and it is listed in the spill order.
#[derive(Debug, Default)]
struct Place {
    memory: Option<ObjectBytes>,
    disk: Option<Arc<SpillFile>>,
    /// Its key in the store's least-recently-used order while it is in
    /// memory and may be spilled (0: not listed).
    tick: u64,
    /// Freed: a spill finishing after this throws its file away.
    freed: bool,
    /// Read at least once (a copy is dropped for memory only once read,
    /// so the reader that pulled it cannot lose it before it gets it).
    read: bool,
    /// A copy that is the only one left (rebuilt through lineage, or its
    /// holder left the cluster): it spills rather than being dropped.
    only_copy: bool,
}

impl Local {
    fn new(cell: &Cell, len: u64, memory: Option<ObjectBytes>, disk: Option<Arc<SpillFile>>) -> Self {
        let place = Mutex::new(Place { memory, disk, ..Place::default() });
        Local { len, tenant: cell.tenant.clone(), id: cell.id, copy_for: None, place }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn place(&self) -> MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether its bytes are in memory now.
    pub fn in_memory(&self) -> bool {
        self.place().memory.is_some()
    }

    /// Whether it is a copy of another host's object that left the store
    /// (dropped for memory, or its job ended): read the object again.
    pub fn copy_gone(&self) -> bool {
        self.copy_for.is_some() && self.place().freed
    }
}

/// One object: pending until filled once.
#[derive(Debug)]
pub struct Cell {
    tenant: Arc<str>,
    id: ObjectId,
    value: OnceLock<ObjectResult>,
    filled: Notify,
}

impl Cell {
    /// An empty slot for `tenant`'s object `id`.
    pub fn new(tenant: Arc<str>, id: ObjectId) -> Self {
        Cell { tenant, id, value: OnceLock::new(), filled: Notify::new() }
    }

    /// Whose object it is.
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// Its id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

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

/// What keeps one object alive before its job ends: Ray's reference
/// counting, for the references this host can see.
#[derive(Debug)]
struct Refs {
    /// Holders: a task's handles (however many copies the guest has, one),
    /// a pending task whose arguments name it, an object whose value names
    /// it, a peer that was handed it as a task result it keeps.
    count: u32,
    /// Its id went to another host (in a task's arguments or result, or
    /// inside an object a peer read), where this host cannot count it: it
    /// lives until its job ends.
    escaped: bool,
    /// Pins on it (its own, and those of pinned objects naming it): kept
    /// after its job ends while any remains.
    pins: u32,
    /// Whole pulls of it this host served itself, and the peers that made
    /// them with the pulls sent to each since (see
    /// [`ObjectStore::copy_source`]).
    served_here: u32,
    copies: Vec<(Arc<str>, u32)>,
    /// The objects its value names: each of this host's holds a reference
    /// of this one; another host's are listed uncounted, for pins to reach.
    contains: Vec<ObjectId>,
    /// The job it belongs to.
    job: Arc<str>,
}

/// Where a pulled copy's bytes landed.
#[derive(Debug)]
pub enum Landed {
    /// In memory.
    Memory(Vec<u8>),
    /// In a spill file (too large to hold in memory).
    Disk(writer::DiskCopy),
}

impl Landed {
    /// The copy's size.
    pub fn len(&self) -> u64 {
        match self {
            Landed::Memory(data) => data.len() as u64,
            Landed::Disk(copy) => copy.len(),
        }
    }

    /// Whether the copy is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What bounds a host's objects.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Largest single object, in bytes.
    pub max_object_bytes: u64,
    /// Bytes of objects kept in memory; the rest spill to disk.
    pub memory_budget: u64,
    /// Bytes of objects (in memory and spilled) one tenant may hold on this
    /// host.
    pub max_tenant_bytes: u64,
    /// Where spilled objects go (as unnamed files: nothing is left behind,
    /// even when the host is killed).
    pub spill_dir: PathBuf,
    /// Bytes of objects this host may keep on disk (spilled, or written
    /// there by writers); past it, spilling stops and producers over the
    /// memory budget get a resource-limit error.
    pub max_spill_bytes: u64,
}

impl StoreLimits {
    /// An object built by a writer goes to disk once it is larger than this.
    fn stream_threshold(&self) -> u64 {
        (self.memory_budget / 4).max(1)
    }

    /// Whether an object of `len` bytes read back from disk (or pulled
    /// from a peer) stays in memory for the next reader; a larger one is
    /// read for each reader alone.
    fn stays_in_memory(&self, len: u64) -> bool {
        len <= self.memory_budget / 2
    }
}

impl Inner {
    /// [`Self::disk_room`], after giving up, if need be, copies of other
    /// hosts' objects kept here on disk (`writer::DiskCopy`) that were read
    /// already: their holders have them, and a later read pulls them again,
    /// as for a copy dropped from memory. So copies never keep the host's
    /// own objects off the disk.
    fn make_disk_room(&mut self, limits: &StoreLimits, more: u64) -> Result<(), std::io::Error> {
        if self.disk_room(limits, more).is_ok() {
            return Ok(());
        }
        let copies: Vec<(Arc<Local>, Arc<str>)> = self
            .objects
            .values()
            .flat_map(|objects| objects.values())
            .filter_map(|cell| match cell.peek() {
                Some(Ok(Value::Here(local))) => Some(local.clone()),
                _ => None,
            })
            .filter_map(|local| {
                let job = local.copy_for.clone()?;
                let place = local.place();
                let droppable = place.read && !place.only_copy && place.memory.is_none() && place.disk.is_some();
                drop(place);
                droppable.then_some((local, job))
            })
            .collect();
        for (local, job) in copies {
            if self.disk_room(limits, more).is_ok() {
                break;
            }
            self.drop_copy(&local, &job);
        }
        self.disk_room(limits, more)
    }

    /// Whether `more` bytes fit on disk beside what is there (spilled, and
    /// what unfinished writers wrote).
    fn disk_room(&self, limits: &StoreLimits, more: u64) -> Result<(), std::io::Error> {
        let used = self.spilled.saturating_add(self.disk_reserved);
        if used.saturating_add(more) > limits.max_spill_bytes {
            return Err(std::io::Error::other(format!(
                "its disk quota of {} bytes is full ({used} bytes on disk, {more} more asked)",
                limits.max_spill_bytes
            )));
        }
        Ok(())
    }
}

/// 30% of the memory this process may use (the machine's, or its cgroup's
/// limit when lower: a container's), or 2 GiB when neither can be read.
pub fn default_memory_budget() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // cgroup v2 says `max` when unlimited, which does not parse: ignored.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|max| max.trim().parse().ok());
    let total = match (machine, cgroup) {
        (Some(machine), Some(cgroup)) => Some(machine.min(cgroup)),
        (machine, cgroup) => machine.or(cgroup),
    };
    total.map_or(2 << 30, |bytes: u64| bytes / 10 * 3)
}

/// A host's objects.
#[derive(Debug)]
pub struct ObjectStore {
    node: u64,
    counter: AtomicU64,
    shared: Arc<Shared>,
}

/// What the store and its spiller thread share.
#[derive(Debug)]
struct Shared {
    limits: StoreLimits,
    inner: Mutex<Inner>,
    /// Woken when bytes leave memory (or spilling gives up).
    room: Notify,
    /// Woken when results kept elsewhere are to be released there.
    released: Notify,
    spiller: spill::Wake,
}

#[derive(Debug, Default)]
struct Inner {
    /// tenant -> id -> object; nested so a lookup by `&str` needs no allocation.
    objects: HashMap<Arc<str>, HashMap<ObjectId, Arc<Cell>>>,
    count: usize,
    by_job: HashMap<JobKey, HashSet<ObjectId>>,
    /// What keeps each object made here alive before its job ends (tenant
    /// -> id). Copies of other hosts' objects have none: they go with
    /// their job, or sooner when dropped for memory.
    refs: HashMap<Arc<str>, HashMap<ObjectId, Refs>>,
    /// Objects freed here whose bytes another host keeps for them (a task
    /// result left on the peer that ran it): to be released there.
    released_elsewhere: Vec<(Arc<str>, ObjectId)>,
    /// Results kept on a peer for objects pinned here before they were
    /// ready: to be pinned there.
    pinned_elsewhere: Vec<(Arc<str>, ObjectId)>,
    /// Bytes of ready objects here, in memory or not.
    bytes: u64,
    /// Of which in memory.
    resident: u64,
    /// Bytes in spill files.
    spilled: u64,
    /// Bytes unfinished writers wrote to disk (counted against the disk
    /// quota until their object is sealed into `spilled`).
    disk_reserved: u64,
    /// `bytes` per tenant.
    tenant_bytes: HashMap<Arc<str>, u64>,
    /// Objects in memory that may spill, least recently used first.
    lru: BTreeMap<u64, Arc<Local>>,
    tick: u64,
    /// Objects spilled since the host started.
    spills: u64,
    /// Copies of other hosts' objects dropped for memory since it started.
    dropped_copies: u64,
    /// Copies of other hosts' objects written to disk as they arrived (too
    /// large to keep in memory) since it started.
    disk_copies: u64,
    /// Why the last spill failed, until one succeeds.
    spill_error: Option<String>,
    /// Over budget with nothing that can spill now (every object in memory
    /// is being read): producers go on rather than wait.
    stuck: bool,
    /// Buffers of large objects that left memory, for the next puts.
    recycler: Recycler,
}

impl Inner {
    /// Gives `bytes` counted for `tenant` back.
    fn unreserve(&mut self, tenant: &str, bytes: u64) {
        if let Some(held) = self.tenant_bytes.get_mut(tenant) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.tenant_bytes.remove(tenant);
            }
        }
    }

    /// Puts `local` last in the spill order (it was just used).
    fn touch(&mut self, local: &Arc<Local>, place: &mut Place) {
        if place.freed || place.memory.is_none() {
            return;
        }
        if place.tick != 0 {
            self.lru.remove(&place.tick);
        }
        self.tick += 1;
        place.tick = self.tick;
        self.lru.insert(self.tick, local.clone());
    }

    /// Uncounts a freed object's bytes and lets its memory and file go.
    fn release(&mut self, local: &Local) {
        let mut place = local.place();
        if place.freed {
            return;
        }
        place.freed = true;
        if place.tick != 0 {
            self.lru.remove(&place.tick);
            place.tick = 0;
        }
        if let Some(bytes) = place.memory.take() {
            self.leave_memory(local.len, bytes);
        }
        if place.disk.take().is_some() {
            self.spilled -= local.len;
            // A spill refused for want of disk may fit now.
            self.spill_error = None;
        }
        self.bytes -= local.len;
        self.unreserve(&local.tenant, local.len);
    }

    /// Uncounts the `len` bytes of memory an object no longer holds, and
    /// keeps its buffer for a later put when no reader shares it.
    fn leave_memory(&mut self, len: u64, bytes: ObjectBytes) {
        self.resident -= len;
        if let Ok(buffer) = Arc::try_unwrap(bytes) {
            drop(self.recycler.keep(buffer, self.resident, std::time::Instant::now()));
        }
    }

    /// Counts `len` more bytes of objects in memory; returns the kept
    /// buffers that no longer fit beside them, to be dropped once the lock
    /// is let go.
    #[must_use = "the buffers are to be dropped outside the store's lock"]
    fn enter_memory(&mut self, len: u64) -> Vec<Vec<u8>> {
        self.resident += len;
        self.recycler.trim(self.resident, std::time::Instant::now())
    }

    /// Drops copy `local` (listed under `job`) to bring memory back under
    /// the budget: it leaves the store, and its readers read the object
    /// again from its holder.
    fn drop_copy(&mut self, local: &Arc<Local>, job: &Arc<str>) {
        let listed = self
            .objects
            .get(&local.tenant)
            .and_then(|objects| objects.get(&local.id))
            .is_some_and(|cell| matches!(cell.peek(), Some(Ok(Value::Here(listed))) if Arc::ptr_eq(listed, local)));
        if listed {
            self.unlist(&local.tenant, job, local.id);
        }
        self.release(local);
        self.dropped_copies += 1;
    }

    /// Frees the object in `cell` (if it holds bytes here) and fills it with
    /// `error` for anyone still waiting.
    fn free(&mut self, cell: &Cell, error: FabricError) {
        if let Some(Ok(Value::Here(local))) = cell.peek() {
            self.release(local);
        }
        cell.fill(Err(error));
    }

    /// Drops one reference to `id`; with none left (and never sent to
    /// another host, and not pinned) the object is freed, then in turn what
    /// it named.
    fn unref(&mut self, tenant: &Arc<str>, id: ObjectId) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            let Some(refs) = self.refs_mut(tenant, id) else { continue };
            refs.count = refs.count.saturating_sub(1);
            if refs.count > 0 || refs.escaped || refs.pins > 0 {
                continue;
            }
            work.extend(self.discard(tenant, id));
        }
    }

    /// Frees counted object `id` now, whatever refers to it; returns the
    /// objects it named (each still counting it).
    fn discard(&mut self, tenant: &Arc<str>, id: ObjectId) -> Vec<ObjectId> {
        let Some(refs) = self.take_refs(tenant, id) else { return Vec::new() };
        let Some(cell) = self.unlist(tenant, &refs.job, id) else {
            return refs.contains;
        };
        if let Some(Ok(Value::Elsewhere { id: kept, .. })) = cell.peek() {
            // The copy pulled here and the bytes on the peer go with it.
            self.released_elsewhere.push((tenant.clone(), *kept));
            if let Some(copy) = self.unlist(tenant, &refs.job, *kept) {
                self.free(&copy, freed(*kept));
            }
        }
        self.free(&cell, freed(id));
        refs.contains
    }

    /// Lists `cell` as `tenant`'s object `id`, owned by `job`.
    fn list(&mut self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId, cell: Arc<Cell>) {
        self.objects.entry(tenant.clone()).or_default().insert(id, cell);
        self.count += 1;
        self.by_job.entry((tenant.clone(), job.clone())).or_default().insert(id);
    }

    /// Takes `tenant`'s object `id`, owned by `job`, off the lists.
    fn unlist(&mut self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId) -> Option<Arc<Cell>> {
        let cell = self.objects.get_mut(tenant).and_then(|o| o.remove(&id))?;
        self.count -= 1;
        forget_owned(&mut self.by_job, tenant, job, id);
        Some(cell)
    }

    /// Takes the counts of `tenant`'s object `id` away.
    fn take_refs(&mut self, tenant: &str, id: ObjectId) -> Option<Refs> {
        let counted = self.refs.get_mut(tenant)?;
        let refs = counted.remove(&id);
        if counted.is_empty() {
            self.refs.remove(tenant);
        }
        refs
    }

    /// `id` and every object it names, directly or not, each once.
    fn reachable(&mut self, tenant: &str, id: ObjectId) -> Vec<ObjectId> {
        let mut seen = HashSet::new();
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(refs) = self.refs_mut(tenant, id) {
                work.extend(refs.contains.iter().copied());
            }
        }
        seen.into_iter().collect()
    }

    /// Where another host keeps `tenant`'s object `id` for it, if it does.
    fn kept_elsewhere(&self, tenant: &str, id: ObjectId) -> Option<ObjectId> {
        let cell = self.objects.get(tenant)?.get(&id)?;
        match cell.peek() {
            Some(Ok(Value::Elsewhere { id: kept, .. })) => Some(*kept),
            _ => None,
        }
    }

    /// Marks `ids` as gone where this host cannot count them.
    fn mark_escaped(&mut self, tenant: &str, ids: &[ObjectId]) {
        for id in ids {
            if let Some(refs) = self.refs_mut(tenant, *id) {
                refs.escaped = true;
            }
        }
    }

    /// The reference counts of `tenant`'s object `id`, if this host counts it.
    fn pinned(&self, tenant: &str, id: ObjectId) -> bool {
        self.refs.get(tenant).and_then(|counted| counted.get(&id)).is_some_and(|refs| refs.pins > 0)
    }

    fn refs_mut(&mut self, tenant: &str, id: ObjectId) -> Option<&mut Refs> {
        self.refs.get_mut(tenant).and_then(|counted| counted.get_mut(&id))
    }

    /// Creates `id` of `job` as a pending object, held once (by its creator).
    fn insert(&mut self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId, cell: Arc<Cell>) {
        self.list(tenant, job, id, cell);
        let refs = Refs {
            count: 1,
            escaped: false,
            pins: 0,
            served_here: 0,
            copies: Vec::new(),
            contains: Vec::new(),
            job: job.clone(),
        };
        self.refs.entry(tenant.clone()).or_default().insert(id, refs);
    }

    /// Forgets `tenant`'s object `id` (not freeing what it names: its job
    /// is ending, or it never held anything).
    fn forget(&mut self, tenant: &Arc<str>, id: ObjectId) -> Option<(Arc<Cell>, Vec<ObjectId>)> {
        let cell = self.objects.get_mut(tenant).and_then(|o| o.remove(&id))?;
        self.count -= 1;
        let contains = self.take_refs(tenant, id).map(|refs| refs.contains).unwrap_or_default();
        Some((cell, contains))
    }
}

/// Objects other hosts keep that this host's store has news for.
#[derive(Debug)]
pub struct Elsewhere {
    /// No longer needed here.
    pub released: Vec<(Arc<str>, ObjectId)>,
    /// Pinned here.
    pub pinned: Vec<(Arc<str>, ObjectId)>,
}

/// How much of its memory and disk a host's store uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Objects (ready or pending).
    pub objects: usize,
    /// Bytes of ready objects, wherever they are.
    pub bytes: u64,
    /// Of which in memory.
    pub memory_bytes: u64,
    /// Bytes in spill files.
    pub spilled_bytes: u64,
    /// The memory budget.
    pub memory_budget: u64,
    /// Objects spilled since the host started.
    pub spills: u64,
    /// Copies of other hosts' objects dropped for memory since it started.
    pub dropped_copies: u64,
    /// Copies of other hosts' objects written to disk as they arrived
    /// since it started.
    pub disk_copies: u64,
}

impl ObjectStore {
    /// A store whose ids carry `node` in their high half.
    pub fn new(node: u64, limits: StoreLimits) -> Self {
        let inner = Inner { recycler: Recycler::new(limits.memory_budget), ..Inner::default() };
        let shared = Arc::new(Shared {
            limits,
            inner: Mutex::new(inner),
            room: Notify::new(),
            released: Notify::new(),
            spiller: spill::Wake::default(),
        });
        if let Err(e) = spill::start(Arc::downgrade(&shared), shared.spiller.clone()) {
            tracing::error!("cannot start the object spiller, objects will stay in memory: {e}");
            shared.lock().spill_error = Some(format!("the spiller thread could not start: {e}"));
        }
        ObjectStore { node, counter: AtomicU64::new(1), shared }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// What bounds this store.
    pub fn limits(&self) -> &StoreLimits {
        &self.shared.limits
    }

    /// Creates a pending object owned by `job` (a task's result slot).
    pub fn reserve(&self, tenant: &Arc<str>, job: &Arc<str>) -> (ObjectId, Arc<Cell>) {
        let id = ObjectId { hi: self.node, lo: self.counter.fetch_add(1, Ordering::Relaxed) };
        let cell = Arc::new(Cell::new(tenant.clone(), id));
        self.lock().insert(tenant, job, id, cell.clone());
        (id, cell)
    }

    /// Stores `data` as a new object owned by `job`, held once (by its
    /// creator). Async callers then wait for [`room`](Self::room).
    pub fn put(&self, tenant: &Arc<str>, job: &Arc<str>, data: Vec<u8>) -> Result<ObjectId, FabricError> {
        self.put_naming(tenant, job, data, Vec::new())
    }

    /// A copy of `data` to [`put`](Self::put), in a recycled buffer when one
    /// of about its size is kept (its pages are mapped already: see
    /// [`recycle`]). Refused before any copy when it is over the object
    /// size limit.
    pub fn copy_in(&self, data: &[u8]) -> Result<Vec<u8>, FabricError> {
        self.check_len(data.len() as u64)?;
        let mut buffer = self.lock().recycler.take(data.len()).unwrap_or_default();
        if buffer.capacity() < data.len() {
            // At least the alignment's size, so it starts aligned.
            buffer = Vec::with_capacity(data.len().max(OBJECT_ALIGN));
        }
        copy::append(&mut buffer, data);
        Ok(buffer)
    }

    /// [`put`](Self::put) of a value that names the objects `contains`,
    /// each with a reference already counted that passes to the new object
    /// (and is dropped if the put fails).
    pub fn put_naming(
        &self,
        tenant: &Arc<str>,
        job: &Arc<str>,
        data: Vec<u8>,
        contains: Vec<ObjectId>,
    ) -> Result<ObjectId, FabricError> {
        let data = match self.check_size(data) {
            Ok(data) => data,
            Err(error) => {
                self.release(tenant, &contains);
                return Err(error);
            }
        };
        let (id, cell) = self.reserve(tenant, job);
        if !contains.is_empty() {
            if let Some(refs) = self.lock().refs_mut(tenant, id) {
                refs.contains = contains;
            }
        }
        self.fill_ok(&cell, data);
        if let Some(Err(error)) = cell.peek() {
            // Over the tenant's limit: nothing is kept.
            let error = error.clone();
            self.release(tenant, &[id]);
            return Err(error);
        }
        Ok(id)
    }

    /// One more reference to `tenant`'s object `id`. Nothing for an object
    /// this host does not count (another host's, or one already freed).
    /// Says whether it counted one.
    pub fn retain(&self, tenant: &str, id: ObjectId) -> bool {
        match self.lock().refs_mut(tenant, id) {
            Some(refs) => {
                refs.count = refs.count.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Where peer `reader`, about to pull all of `tenant`'s object `id`,
    /// should read it: here (`None`), or a peer that pulled it from here
    /// before (it serves its copy once complete), so the object is not
    /// sent from here once per reader. The peer chosen is the one with the
    /// fewest pulls sent its way, and only while that is fewer than this
    /// host served itself: each copy serves as many as the holder, and no
    /// reader is sent more than one hop from it.
    pub fn copy_source(&self, tenant: &str, id: ObjectId, reader: &str) -> Option<Arc<str>> {
        const MAX_COPIES: usize = 64;
        let mut inner = self.lock();
        let refs = inner.refs_mut(tenant, id)?;
        let served_here = refs.served_here;
        // A reader that copied it before is served here: a copy target's
        // own pull then never waits on another copy, so no two hosts can
        // wait on each other.
        let known = refs.copies.iter().any(|(peer, _)| &**peer == reader);
        if !known {
            if let Some((peer, sent)) = refs.copies.iter_mut().min_by_key(|(_, sent)| *sent) {
                if *sent < served_here {
                    *sent += 1;
                    return Some(peer.clone());
                }
            }
        }
        refs.served_here = served_here.saturating_add(1);
        if !known && refs.copies.len() < MAX_COPIES {
            refs.copies.push((reader.into(), 0));
        }
        None
    }

    /// Sends no more readers of `tenant`'s object `id` to `peer`: a reader
    /// sent there found its copy gone (dropped for memory, or its job
    /// ended) or could not read it.
    pub fn forget_copy(&self, tenant: &str, id: ObjectId, peer: &str) {
        if let Some(refs) = self.lock().refs_mut(tenant, id) {
            refs.copies.retain(|(copy, _)| &**copy != peer);
        }
    }

    /// Lets the copy a peer keeps of `tenant`'s object `kept` go (a result
    /// this host no longer needs it for).
    pub fn release_kept(&self, tenant: &Arc<str>, kept: ObjectId) {
        self.lock().released_elsewhere.push((tenant.clone(), kept));
        self.shared.released.notify_one();
    }

    /// Drops one reference to each of `ids`. An object left with none, and
    /// whose id never went to another host, is freed now (waiters get a
    /// not-found error), and so in turn are the objects it named.
    pub fn release(&self, tenant: &Arc<str>, ids: &[ObjectId]) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for id in ids {
            inner.unref(tenant, *id);
        }
        if !inner.released_elsewhere.is_empty() {
            self.shared.released.notify_one();
        }
    }

    /// Notes that `ids` went to another host, which this host cannot
    /// count: they live until their job ends.
    pub fn escape(&self, tenant: &str, ids: &[ObjectId]) {
        self.lock().mark_escaped(tenant, ids);
    }

    /// Notes that object `id`'s value went to another host: what it names
    /// lives until its job ends.
    pub fn escape_contents(&self, tenant: &str, id: ObjectId) {
        let mut inner = self.lock();
        let contains = match inner.refs_mut(tenant, id) {
            Some(refs) if !refs.contains.is_empty() => refs.contains.clone(),
            _ => return,
        };
        inner.mark_escaped(tenant, &contains);
    }

    /// Waits for, then takes, the objects other hosts keep for results
    /// freed here (the caller tells those hosts to release them) and for
    /// results pinned here (to pin there).
    pub async fn elsewhere(&self) -> Elsewhere {
        loop {
            {
                let mut inner = self.lock();
                let released = std::mem::take(&mut inner.released_elsewhere);
                let pinned = std::mem::take(&mut inner.pinned_elsewhere);
                if !released.is_empty() || !pinned.is_empty() {
                    return Elsewhere { released, pinned };
                }
            }
            self.shared.released.notified().await;
        }
    }

    /// Sets the objects the value of the task result in `cell` (object
    /// `id`) names, one reference of each passed in; then fills it.
    pub fn fill_naming(
        &self,
        tenant: &Arc<str>,
        id: ObjectId,
        cell: &Cell,
        outcome: Result<Vec<u8>, FabricError>,
        named: Vec<ObjectId>,
    ) {
        if !named.is_empty() {
            let kept = match self.lock().refs_mut(tenant, id) {
                Some(refs) => {
                    refs.contains.extend_from_slice(&named);
                    true
                }
                None => false,
            };
            if !kept {
                // Freed already: nothing will read it.
                self.release(tenant, &named);
            }
        }
        self.fill(cell, outcome);
    }

    /// References counted here to `tenant`'s object `id`, and whether its
    /// id went to another host.
    #[cfg(test)]
    pub fn references(&self, tenant: &str, id: ObjectId) -> Option<(u32, bool)> {
        self.lock().refs_mut(tenant, id).map(|refs| (refs.count, refs.escaped))
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
    /// If the object was freed before its result came, the peer is told to
    /// let its copy go.
    pub fn fill_elsewhere(
        &self,
        slot: Option<ObjectId>,
        cell: &Cell,
        kept: ObjectId,
        len: u64,
        lineage: Option<Arc<crate::remote::Lineage>>,
    ) {
        // Under the lock, so a concurrent free either sees where the bytes
        // are (and releases them) or has filled the cell first.
        let mut inner = self.lock();
        if !cell.fill(Ok(Value::Elsewhere { id: kept, len, lineage })) {
            inner.released_elsewhere.push((cell.tenant.clone(), kept));
            self.shared.released.notify_one();
        } else if slot.and_then(|slot| inner.refs_mut(&cell.tenant, slot)).is_some_and(|refs| refs.pins > 0) {
            // Pinned while pending: the peer's copy is pinned too.
            inner.pinned_elsewhere.push((cell.tenant.clone(), kept));
            self.shared.released.notify_one();
        }
    }

    /// Fills `cell` with bytes in memory, counting them for its tenant (over
    /// the tenant's limit the object is that error instead).
    fn fill_ok(&self, cell: &Cell, data: ObjectBytes) {
        let local = Local::new(cell, data.len() as u64, Some(data), None);
        self.fill_local(cell, Arc::new(local), false);
    }

    /// Fills `cell` with `local` (in memory, on disk or both) under the
    /// lock, so a concurrent `drop_job` either sees the bytes (and uncounts
    /// them) or has already filled the cell (and they are never counted).
    /// `reserved`: its bytes were already counted for its tenant (a
    /// writer's, part by part); otherwise they are counted now, if the
    /// tenant's limit allows.
    fn fill_local(&self, cell: &Cell, local: Arc<Local>, reserved: bool) {
        let len = local.len;
        let mut unkept = Vec::new();
        let over = {
            let mut inner = self.lock();
            if !reserved {
                if let Err(error) = self.shared.tenant_room(&inner, &cell.tenant, len) {
                    cell.fill(Err(error));
                    return;
                }
            }
            if !cell.fill(Ok(Value::Here(local.clone()))) {
                if reserved {
                    inner.unreserve(&local.tenant, len);
                }
                return;
            }
            inner.bytes += len;
            if !reserved {
                *inner.tenant_bytes.entry(local.tenant.clone()).or_default() += len;
            }
            let mut place = local.place();
            if place.disk.is_some() {
                inner.spilled += len;
            }
            if place.memory.is_some() {
                unkept = inner.enter_memory(len);
                inner.touch(&local, &mut place);
            }
            inner.resident > self.shared.limits.memory_budget
        };
        drop(unkept);
        if over {
            self.shared.spiller.wake();
        }
    }

    /// Counts `more` bytes for `tenant` ahead of storing them, if its limit
    /// allows.
    fn reserve_for(&self, tenant: &Arc<str>, more: u64) -> Result<(), FabricError> {
        let mut inner = self.lock();
        self.shared.tenant_room(&inner, tenant, more)?;
        *inner.tenant_bytes.entry(tenant.clone()).or_default() += more;
        Ok(())
    }

    /// The object `id` of `tenant`, ready or not.
    pub fn cell(&self, tenant: &str, id: ObjectId) -> Result<Arc<Cell>, FabricError> {
        self.lookup(tenant, id).ok_or_else(|| self.missing(tenant, id))
    }

    /// The error for `tenant`'s object `id` that is not here: one minted
    /// here existed once.
    pub fn missing(&self, tenant: &str, id: ObjectId) -> FabricError {
        let mut error = not_found(tenant, id);
        if self.minted_here(id) && id.lo < self.counter.load(Ordering::Relaxed) {
            error
                .message
                .push_str(": it was freed (nothing referred to it any more, or its job ended), or is another tenant's");
        }
        error
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
        if let Some(cell) = inner.objects.get(&**tenant).and_then(|objects| objects.get(&id)) {
            return (cell.clone(), false);
        }
        let cell = Arc::new(Cell::new(tenant.clone(), id));
        inner.list(tenant, job, id, cell.clone());
        (cell, true)
    }

    /// Fills a copy slot with the pulled bytes; over the tenant's limit the
    /// copy is given up (its readers get the error, the next one tries
    /// again).
    /// `held_elsewhere`: its holder still has it, so under memory pressure
    /// the copy (once read) may be dropped rather than spilled.
    pub fn fill_copy(&self, job: &Arc<str>, id: ObjectId, cell: &Arc<Cell>, landed: Landed, held_elsewhere: bool) {
        let local = match landed {
            Landed::Memory(data) => {
                let data = aligned(data);
                Local::new(cell, data.len() as u64, Some(data), None)
            }
            Landed::Disk(copy) => {
                let len = copy.len();
                Local::new(cell, len, None, Some(copy.into_file()))
            }
        };
        let local = Local { copy_for: Some(job.clone()), ..local };
        local.place().only_copy = !held_elsewhere;
        let on_disk = local.place().disk.is_some();
        self.fill_local(cell, Arc::new(local), false);
        if let Some(Err(error)) = cell.peek() {
            let error = error.clone();
            self.abandon_copy(&cell.tenant.clone(), job, id, cell, error);
        } else if on_disk {
            self.lock().disk_copies += 1;
        }
    }

    /// Gives up a copy slot whose pull failed: its waiters get `error`, and
    /// the next reader tries again.
    pub fn abandon_copy(&self, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId, cell: &Arc<Cell>, error: FabricError) {
        let mut inner = self.lock();
        if inner.objects.get(&**tenant).and_then(|objects| objects.get(&id)).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            inner.unlist(tenant, job, id);
        }
        cell.fill(Err(error));
    }

    /// Marks the copies here of objects host `node` made as the only ones
    /// left (it left the cluster): they spill rather than being dropped.
    pub fn keep_copies_of(&self, node: u64) {
        let inner = self.lock();
        for cell in inner.objects.values().flat_map(|objects| objects.values()) {
            if let Some(Ok(Value::Here(local))) = cell.peek() {
                if local.id.hi == node && local.copy_for.is_some() {
                    local.place().only_copy = true;
                }
            }
        }
    }

    /// Waits for object `id`, which must be here, and returns its bytes
    /// (read back from disk if it was spilled).
    pub async fn get(&self, tenant: &str, id: ObjectId) -> Result<ObjectBytes, FabricError> {
        let cell = self.cell(tenant, id)?;
        match cell.ready().await.clone()? {
            Value::Here(local) => self.bytes(&local).await,
            Value::Elsewhere { id: held, .. } => {
                Err(FabricError::new(ErrorKind::Unavailable, format!("object {id} is kept on host {}", held.holder())))
            }
        }
    }

    /// An object's whole bytes: shared when in memory; read back from disk
    /// when spilled, and kept in memory again when it takes at most half
    /// the budget (larger ones are read for this reader alone).
    pub async fn bytes(&self, local: &Arc<Local>) -> Result<ObjectBytes, FabricError> {
        let file = {
            let mut inner = self.lock();
            let mut place = local.place();
            place.read = true;
            if let Some(bytes) = place.memory.clone() {
                inner.touch(local, &mut place);
                return Ok(bytes);
            }
            place.disk.clone().ok_or_else(|| freed_while_read(local))?
        };
        let len = usize::try_from(local.len).map_err(|_| too_big_here(local.len))?;
        let buffer = self.lock().recycler.take(len).unwrap_or_default();
        let bytes = read_spilled(file, 0, len, buffer).await?;
        let bytes = aligned(bytes);
        if self.limits().stays_in_memory(local.len) {
            let (over, unkept) = {
                let mut inner = self.lock();
                let mut place = local.place();
                if place.freed {
                    return Ok(bytes);
                }
                if let Some(theirs) = &place.memory {
                    // Another reader brought it back first: share theirs.
                    return Ok(theirs.clone());
                }
                place.memory = Some(bytes.clone());
                let unkept = inner.enter_memory(local.len);
                inner.touch(local, &mut place);
                (inner.resident > self.shared.limits.memory_budget, unkept)
            };
            drop(unkept);
            if over {
                self.shared.spiller.wake();
            }
        }
        Ok(bytes)
    }

    /// The bytes `range` of an object: shared with memory when it is there,
    /// else read from its spill file (only that range).
    pub async fn slice(&self, local: &Arc<Local>, range: std::ops::Range<usize>) -> Result<bytes::Bytes, FabricError> {
        let file = {
            let mut inner = self.lock();
            let mut place = local.place();
            place.read = true;
            if let Some(bytes) = place.memory.clone() {
                inner.touch(local, &mut place);
                return Ok(bytes::Bytes::from_owner(SharedBytes(bytes)).slice(range));
            }
            place.disk.clone().ok_or_else(|| freed_while_read(local))?
        };
        let len = range.len();
        read_spilled(file, range.start as u64, len, Vec::new()).await.map(bytes::Bytes::from)
    }

    /// Waits while this host's objects take more memory than the budget and
    /// spilling is under way: producers (a guest's `put`) slow down to what
    /// the disk takes rather than run the host out of memory. An error when
    /// spilling fails (a full disk).
    pub async fn room(&self) -> Result<(), FabricError> {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                if inner.resident <= self.shared.limits.memory_budget || inner.stuck {
                    return Ok(());
                }
                if let Some(why) = &inner.spill_error {
                    return Err(FabricError::new(
                        ErrorKind::ResourceLimit,
                        format!(
                            "objects on this host take {} bytes, over its memory budget of {} bytes, and cannot spill to disk: {why}",
                            inner.resident, self.shared.limits.memory_budget
                        ),
                    ));
                }
            }
            self.shared.spiller.wake();
            // Bounded, in case a wake-up is missed: the check above decides.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), notified).await;
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

    /// Frees every object `job` created, but those pinned: they outlive
    /// it, listed under the job [`PINNED_JOB`].
    pub fn drop_job(&self, tenant: &Arc<str>, job: &Arc<str>) {
        let mut inner = self.lock();
        let Some(ids) = inner.by_job.remove(&(tenant.clone(), job.clone())) else {
            return;
        };
        let mut named = Vec::new();
        for id in ids {
            if let Some(refs) = inner.refs_mut(tenant, id).filter(|refs| refs.pins > 0) {
                refs.job = PINNED_JOB.into();
                inner.by_job.entry((tenant.clone(), PINNED_JOB.into())).or_default().insert(id);
                continue;
            }
            let Some((cell, contains)) = inner.forget(tenant, id) else {
                continue;
            };
            named.extend(contains);
            // Wake anyone still waiting: the object is gone for good.
            let gone = FabricError::new(ErrorKind::Cancelled, format!("object {id} was freed: its job ended"));
            inner.free(&cell, gone);
        }
        // What the job's objects named of other jobs' (a detached actor's)
        // is held by one less.
        for id in named {
            inner.unref(tenant, id);
        }
        if !inner.released_elsewhere.is_empty() {
            self.shared.released.notify_one();
        }
    }

    /// Keeps `tenant`'s object `id`, and the objects it names, after their
    /// job ends, until unpinned (pins count: an object two pinned objects
    /// name stays until both are unpinned). Returns the objects involved
    /// that other hosts keep (a result left on the peer that made it, an
    /// object another host made): the caller pins those where they are.
    pub fn pin(&self, tenant: &str, id: ObjectId) -> Result<Vec<ObjectId>, FabricError> {
        let mut inner = self.lock();
        if inner.refs_mut(tenant, id).is_none() {
            return Err(self.missing(tenant, id));
        }
        let mut elsewhere = Vec::new();
        for id in inner.reachable(tenant, id) {
            if !self.minted_here(id) {
                elsewhere.push(id);
                continue;
            }
            if let Some(refs) = inner.refs_mut(tenant, id) {
                refs.pins = refs.pins.saturating_add(1);
            }
            elsewhere.extend(inner.kept_elsewhere(tenant, id));
        }
        Ok(elsewhere)
    }

    /// Takes back one pin of `tenant`'s object `id` and of what it names:
    /// one left with none goes back to its ordinary lifetime, freed now if
    /// nothing refers to it (its job's end no longer keeps it once that job
    /// has ended). Returns the objects involved that other hosts keep, to
    /// unpin there. `strict`: an object not pinned is an error (else,
    /// nothing to do: a part of an unpin already done).
    pub fn unpin(&self, tenant: &Arc<str>, id: ObjectId, strict: bool) -> Result<Vec<ObjectId>, FabricError> {
        let mut inner = self.lock();
        match inner.refs_mut(tenant, id) {
            None if strict => return Err(self.missing(tenant, id)),
            Some(refs) if refs.pins == 0 && strict => {
                return Err(FabricError::new(ErrorKind::InvalidArgument, format!("object {id} is not pinned")))
            }
            None => return Ok(Vec::new()),
            Some(refs) if refs.pins == 0 => return Ok(Vec::new()),
            Some(_) => {}
        }
        let mut elsewhere = Vec::new();
        let mut loose = Vec::new();
        for id in inner.reachable(tenant, id) {
            if !self.minted_here(id) {
                elsewhere.push(id);
                continue;
            }
            elsewhere.extend(inner.kept_elsewhere(tenant, id));
            let Some(refs) = inner.refs_mut(tenant, id).filter(|refs| refs.pins > 0) else { continue };
            refs.pins -= 1;
            if refs.pins > 0 {
                continue;
            }
            if &*refs.job == PINNED_JOB {
                // Its job is over: nothing but references keep it now.
                refs.escaped = false;
            }
            if refs.count == 0 && !refs.escaped {
                loose.push(id);
            }
        }
        for id in loose {
            for named in inner.discard(tenant, id) {
                inner.unref(tenant, named);
            }
        }
        if !inner.released_elsewhere.is_empty() {
            self.shared.released.notify_one();
        }
        Ok(elsewhere)
    }

    /// How much the store holds, where.
    pub fn footprint(&self) -> Footprint {
        let inner = self.lock();
        Footprint {
            objects: inner.count,
            bytes: inner.bytes,
            memory_bytes: inner.resident,
            spilled_bytes: inner.spilled,
            memory_budget: self.shared.limits.memory_budget,
            spills: inner.spills,
            dropped_copies: inner.dropped_copies,
            disk_copies: inner.disk_copies,
        }
    }

    fn check_size(&self, data: Vec<u8>) -> Result<ObjectBytes, FabricError> {
        self.check_len(data.len() as u64)?;
        Ok(aligned(data))
    }

    fn check_len(&self, len: u64) -> Result<(), FabricError> {
        let limit = self.shared.limits.max_object_bytes;
        if len > limit {
            return Err(FabricError::new(
                ErrorKind::ResourceLimit,
                format!("object of {len} bytes exceeds the limit of {limit} bytes"),
            ));
        }
        Ok(())
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.shared.spiller.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tenant_room(&self, inner: &Inner, tenant: &str, more: u64) -> Result<(), FabricError> {
        let limit = self.limits.max_tenant_bytes;
        let held = inner.tenant_bytes.get(tenant).copied().unwrap_or(0);
        if held.saturating_add(more) > limit {
            return Err(FabricError::new(
                ErrorKind::ResourceLimit,
                format!(
                    "tenant `{tenant}` holds {held} bytes of objects on this host; {more} more would exceed its limit of {limit} bytes"
                ),
            ));
        }
        Ok(())
    }
}

/// Takes `id` off `job`'s list, so the job's end does not free whatever
/// later takes that id (another job's copy of the same remote object).
fn forget_owned(by_job: &mut HashMap<JobKey, HashSet<ObjectId>>, tenant: &Arc<str>, job: &Arc<str>, id: ObjectId) {
    if let Some(ids) = by_job.get_mut(&(tenant.clone(), job.clone())) {
        ids.remove(&id);
    }
}

fn freed(id: ObjectId) -> FabricError {
    FabricError::new(ErrorKind::NotFound, format!("object {id} was freed: nothing refers to it any more"))
}

fn not_found(tenant: &str, id: ObjectId) -> FabricError {
    FabricError::new(ErrorKind::NotFound, format!("no object {id} for tenant `{tenant}`"))
}

fn freed_while_read(local: &Local) -> FabricError {
    FabricError::new(ErrorKind::NotFound, format!("an object of {} bytes was freed while being read", local.len))
}

fn too_big_here(len: u64) -> FabricError {
    FabricError::new(ErrorKind::ResourceLimit, format!("object of {len} bytes does not fit this host's address space"))
}

/// Reads `len` bytes at `offset` of a spill file into `buffer` (a recycled
/// one, or an empty one) off the async workers.
async fn read_spilled(file: Arc<SpillFile>, offset: u64, len: usize, buffer: Vec<u8>) -> Result<Vec<u8>, FabricError> {
    spill::blocking("cannot read a spilled object back", move || file.read_at(offset, len, buffer)).await
}

/// An object's bytes as a `Bytes` that shares them (quinn sends it without
/// a copy).
struct SharedBytes(ObjectBytes);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
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

    /// Tenant `t`, job `j`.
    fn tenant_and_job() -> (Arc<str>, Arc<str>) {
        ("t".into(), "j".into())
    }

    /// Ends `j`'s job and checks its store holds nothing anywhere after.
    fn assert_job_end_frees_all(store: &ObjectStore, t: &Arc<str>, j: &Arc<str>) {
        store.drop_job(t, j);
        let footprint = store.footprint();
        assert_eq!((footprint.bytes, footprint.memory_bytes, footprint.spilled_bytes), (0, 0, 0));
    }

    /// The object memory of [`budgeted`] stores.
    const BUDGET: u64 = 64 << 10;

    /// Host `node`'s store with objects up to 1 MiB and [`BUDGET`] of memory.
    fn budgeted(node: u64, spill_dir: &std::path::Path) -> ObjectStore {
        store(node, 1 << 20, BUDGET, spill_dir)
    }

    fn store(node: u64, max_object_bytes: u64, memory_budget: u64, spill_dir: &std::path::Path) -> ObjectStore {
        let limits = StoreLimits {
            max_object_bytes,
            memory_budget,
            max_tenant_bytes: u64::MAX,
            spill_dir: spill_dir.to_path_buf(),
            max_spill_bytes: u64::MAX,
        };
        ObjectStore::new(node, limits)
    }

    #[tokio::test]
    async fn a_freed_objects_buffer_serves_the_next_put_of_its_size_unless_a_reader_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(3, 1 << 30, 64 << 20, dir.path());
        let (t, j) = tenant_and_job();
        let first = store.put(&t, &j, store.copy_in(&[1; 4 << 20]).unwrap()).unwrap();
        let address = store.get("t", first).await.unwrap().as_ptr();
        store.release(&t, &[first]);
        assert_eq!(store.footprint().memory_bytes, 0);
        assert_eq!(store.lock().recycler.bytes(), 4 << 20, "the freed object's buffer is kept");
        let data = store.copy_in(&[2; (4 << 20) - 100]).unwrap();
        assert_eq!(store.lock().recycler.bytes(), 0);
        assert_eq!(data.as_ptr(), address, "the freed object's buffer is used again");
        assert!(data.iter().all(|byte| *byte == 2) && data.len() == (4 << 20) - 100);
        let second = store.put(&t, &j, data).unwrap();
        // A reader holds the bytes as the object is freed: they are not
        // handed to the next put, and stay as they were for the reader.
        let held = store.get("t", second).await.unwrap();
        store.release(&t, &[second]);
        assert_eq!(store.lock().recycler.bytes(), 0, "a buffer a reader holds is not kept");
        let third = store.copy_in(&[3; (4 << 20) - 100]).unwrap();
        assert_ne!(third.as_ptr(), held.as_ptr());
        assert!(held.iter().all(|byte| *byte == 2));
        // Over the object size limit: refused before any copy.
        let limited = self::store(4, 10, 1 << 20, dir.path());
        let error = limited.copy_in(&[0; 11]).unwrap_err();
        assert_eq!(error.kind, ErrorKind::ResourceLimit);
    }

    #[tokio::test]
    async fn objects_are_tenant_scoped_and_freed_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(7, 1 << 20, 1 << 20, dir.path());
        let (a, b, job): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "j".into());
        let id = store.put(&a, &job, vec![1, 2, 3]).unwrap();
        assert_eq!(&store.get("a", id).await.unwrap()[..], &[1, 2, 3]);
        assert_eq!(store.get("b", id).await.unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!((store.footprint().objects, store.footprint().bytes), (1, 3));
        store.drop_job(&b, &job);
        assert_eq!((store.footprint().objects, store.footprint().bytes), (1, 3));
        store.drop_job(&a, &job);
        assert_eq!(store.footprint(), Footprint { memory_budget: 1 << 20, ..Footprint::default() });
        assert_eq!(store.get("a", id).await.unwrap_err().kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn objects_are_freed_when_their_last_reference_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(9, 1 << 20, 1 << 20, dir.path());
        let (t, j, other): (Arc<str>, Arc<str>, Arc<str>) = ("t".into(), "j".into(), "other".into());
        // An object named inside another lives while that one does.
        let big = store.put(&t, &j, vec![1; 100]).unwrap();
        store.retain("t", big);
        let holder = store.put_naming(&t, &j, vec![2; 10], vec![big]).unwrap();
        assert_eq!(store.references("t", big), Some((2, false)));
        store.release(&t, &[big]);
        assert_eq!(store.get("t", big).await.unwrap().len(), 100);
        store.release(&t, &[holder]);
        assert_eq!((store.footprint().objects, store.footprint().bytes), (0, 0));
        let error = store.get("t", big).await.unwrap_err();
        assert!(error.message.contains("it was freed"), "{}", error.message);

        // One whose id went to another host stays until its job ends.
        let sent = store.put(&t, &j, vec![3; 10]).unwrap();
        store.escape("t", &[sent]);
        store.release(&t, &[sent]);
        assert_eq!(store.references("t", sent), Some((0, true)));
        store.drop_job(&t, &j);
        assert_eq!(store.footprint().objects, 0);

        // A result kept on a peer is released there when freed here, also
        // when it is freed before the peer's answer comes.
        let kept = ObjectId { hi: 1, lo: 1 };
        let (slot, cell) = store.reserve(&t, &j);
        store.fill_elsewhere(Some(slot), &cell, kept, 1 << 20, None);
        store.release(&t, &[slot]);
        assert_eq!(store.elsewhere().await.released, vec![(t.clone(), kept)]);
        let late = ObjectId { hi: 1, lo: 2 };
        let (slot, cell) = store.reserve(&t, &j);
        store.release(&t, &[slot]);
        store.fill_elsewhere(Some(slot), &cell, late, 1 << 20, None);
        assert_eq!(store.elsewhere().await.released, vec![(t.clone(), late)]);

        // A job's end drops what its objects named of another job's.
        let kept_by_other = store.put(&t, &other, vec![4; 10]).unwrap();
        store.retain("t", kept_by_other);
        store.put_naming(&t, &j, vec![5; 10], vec![kept_by_other]).unwrap();
        store.drop_job(&t, &j);
        assert_eq!(store.references("t", kept_by_other), Some((1, false)));
        // Releasing what is not counted does nothing.
        store.release(&t, &[ObjectId { hi: 1, lo: 3 }]);
        store.release(&t, &[kept_by_other]);
        assert_eq!(store.footprint().objects, 0);
    }

    #[tokio::test]
    async fn pins_count_and_outlive_the_job_until_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(11, 1 << 20, 1 << 20, dir.path());
        let (t, j) = tenant_and_job();
        // Two pinned pairs name one array.
        let array = store.put(&t, &j, vec![1; 100]).unwrap();
        store.retain("t", array);
        let first = store.put_naming(&t, &j, vec![2; 10], vec![array]).unwrap();
        store.retain("t", array);
        // The second also names another host's object: the pin's caller
        // pins that one there, and is told to unpin it there too.
        let foreign = ObjectId { hi: 12, lo: 1 };
        let second = store.put_naming(&t, &j, vec![3; 10], vec![array, foreign]).unwrap();
        assert!(store.pin("t", first).unwrap().is_empty());
        assert_eq!(store.pin("t", second).unwrap(), vec![foreign]);
        store.release(&t, &[array, first, second]);
        store.drop_job(&t, &j);
        let listed = store.usage_by_job("t");
        assert_eq!((listed[0].job.as_str(), listed[0].objects), (PINNED_JOB, 3), "{listed:?}");
        // Unpinning one pair keeps what the other still names.
        store.unpin(&t, first, true).unwrap();
        assert_eq!(store.get("t", array).await.unwrap().len(), 100);
        assert!(store.get("t", first).await.is_err());
        let error = store.unpin(&t, first, true).unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotFound, "{}", error.message);
        assert!(store.unpin(&t, first, false).unwrap().is_empty());
        assert_eq!(store.unpin(&t, second, true).unwrap(), vec![foreign]);
        assert_eq!(store.footprint().objects, 0);
    }

    /// A store holding one object that readers r1 to r4 read in turn: r1
    /// and r3 were served by the holder, r2 and r4 sent to their copies.
    fn read_by_four(node: u64, dir: &std::path::Path) -> (ObjectStore, ObjectId) {
        let store = store(node, 1 << 20, 1 << 20, dir);
        let (t, j) = tenant_and_job();
        let id = store.put(&t, &j, vec![1; 100]).unwrap();
        let sources: Vec<Option<Arc<str>>> =
            ["r1", "r2", "r3", "r4"].iter().map(|reader| store.copy_source("t", id, reader)).collect();
        assert_eq!(sources, vec![None, Some("r1".into()), None, Some("r3".into())]);
        (store, id)
    }

    #[tokio::test]
    async fn readers_are_sent_to_earlier_readers_copies_one_hop_away() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = read_by_four(12, dir.path());
        // A reader that copied it before is served by the holder (so a
        // copy's own pull never waits on another copy).
        assert_eq!(store.copy_source("t", id, "r1"), None);
        assert_eq!(store.copy_source("t", id, "r3"), None);
    }

    #[tokio::test]
    async fn a_copy_a_reader_found_gone_gets_no_more_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = read_by_four(13, dir.path());
        // r1 and r3 have served one reader each: the next goes to r1 ...
        store.forget_copy("t", id, "r1");
        store.forget_copy("t", id, "unknown");
        // ... unless a reader found r1's copy gone.
        assert_eq!(store.copy_source("t", id, "r5"), Some("r3".into()));
        assert_eq!(store.copy_source("t", id, "r6"), None);
    }

    #[tokio::test]
    async fn a_tasks_references_are_counted_once_and_end_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(10, 1 << 20, 1 << 20, dir.path()));
        let (t, j) = tenant_and_job();
        let mut holds = holds::Holds::default();
        holds.bind(&store, &t);
        let id = store.put(&t, &j, vec![1; 10]).unwrap();
        holds.adopt(id);
        // Copies in the guest are one reference in the store.
        holds.retain(id).unwrap();
        holds.retain(id).unwrap();
        assert_eq!(store.references("t", id), Some((1, false)));
        holds.release(id);
        holds.release(id);
        assert_eq!(store.references("t", id), Some((1, false)));
        // A declared reference keeps it after the guest's last one drops,
        // and passes to the call that takes it.
        holds.declare(vec![id]).unwrap();
        holds.release(id);
        holds.release(id);
        assert_eq!(store.references("t", id), Some((1, false)));
        let named = holds.take_declared().hand_over();
        let holder = store.put_naming(&t, &j, vec![2; 10], named).unwrap();
        holds.adopt(holder);
        // Declared and not taken (a result): kept until the job ends.
        holds.declare(vec![holder]).unwrap();
        // An id the store did not count when the guest took it (one it
        // guessed before it was made) never drops another holder's count.
        let guessed = ObjectId { hi: holder.hi, lo: holder.lo + 1 };
        holds.retain(guessed).unwrap();
        let victim = store.put(&t, &j, vec![6; 10]).unwrap();
        assert_eq!(victim, guessed);
        holds.release(guessed);
        assert_eq!(store.references("t", victim), Some((1, false)));
        holds.release_all();
        assert_eq!(store.references("t", victim), Some((1, false)));
        assert_eq!(store.references("t", holder), Some((0, true)));
        assert_eq!(store.references("t", id), Some((1, false)));
        store.drop_job(&t, &j);
        assert_eq!(store.footprint().objects, 0);
    }

    #[tokio::test]
    async fn readers_wait_for_a_pending_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(1, 1 << 20, 1 << 20, dir.path()));
        let (t, j) = tenant_and_job();
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

    #[tokio::test]
    async fn oversized_objects_and_tenants_over_their_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(1, 10, 1 << 20, dir.path());
        let err = store.put(&"t".into(), &"j".into(), vec![0; 11]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceLimit);

        let mut limits = store.limits().clone();
        limits.max_tenant_bytes = 25;
        let store = ObjectStore::new(2, limits);
        let (t, u, j): (Arc<str>, Arc<str>, Arc<str>) = ("t".into(), "u".into(), "j".into());
        store.put(&t, &j, vec![0; 10]).unwrap();
        store.put(&t, &j, vec![0; 10]).unwrap();
        let err = store.put(&t, &j, vec![0; 10]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceLimit);
        assert!(err.message.contains("tenant `t` holds 20 bytes"), "{}", err.message);
        // Another tenant has its own allowance; a task result over the
        // limit becomes that error.
        store.put(&u, &j, vec![0; 10]).unwrap();
        let (id, cell) = store.reserve(&t, &j);
        store.fill(&cell, Ok(vec![0; 10]));
        assert_eq!(store.get("t", id).await.unwrap_err().kind, ErrorKind::ResourceLimit);
        // A writer's parts count as they are written, and come back when
        // it is dropped unfinished.
        store.drop_job(&t, &j);
        let mut writers: Vec<_> = (0..3).map(|_| store.writer(t.clone(), j.clone())).collect();
        store.write(&mut writers[0], vec![0; 10]).await.unwrap();
        store.write(&mut writers[1], vec![0; 10]).await.unwrap();
        let err = store.write(&mut writers[2], vec![0; 10]).await.unwrap_err();
        assert!(err.message.contains("tenant `t` holds 20 bytes"), "{}", err.message);
        drop(writers);
        // Freed bytes count no more.
        store.drop_job(&t, &j);
        store.put(&t, &j, vec![0; 10]).unwrap();
        store.put(&t, &j, vec![0; 10]).unwrap();
    }

    /// Each object's bytes are its index, repeated.
    fn pattern(index: usize, len: usize) -> Vec<u8> {
        vec![index as u8; len]
    }

    #[tokio::test]
    async fn a_working_set_four_times_the_budget_spills_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = budgeted(3, dir.path());
        let (t, j) = tenant_and_job();
        let mut ids = Vec::new();
        for i in 0..32 {
            ids.push(store.put(&t, &j, pattern(i, 8 << 10)).unwrap());
            store.room().await.unwrap();
            assert!(store.footprint().memory_bytes <= BUDGET, "{:?}", store.footprint());
        }
        let footprint = store.footprint();
        assert_eq!(footprint.bytes, 32 * (8 << 10));
        assert!(footprint.spilled_bytes >= footprint.bytes - BUDGET, "{footprint:?}");
        // Every object reads back whole, and any slice of it.
        for (i, id) in ids.iter().enumerate() {
            let Some(Ok(Value::Here(local))) = store.cell("t", *id).unwrap().peek().cloned() else { panic!() };
            assert_eq!(&store.slice(&local, 100..200).await.unwrap()[..], &pattern(i, 100)[..]);
            assert_eq!(&store.get("t", *id).await.unwrap()[..], &pattern(i, 8 << 10)[..]);
            store.room().await.unwrap();
        }
        assert!(store.footprint().memory_bytes <= BUDGET);
        // Freeing them lets their files go.
        assert_job_end_frees_all(&store, &t, &j);
    }

    #[tokio::test]
    async fn copies_kept_on_disk_give_way_when_the_disk_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = budgeted(3, dir.path()).limits().clone();
        limits.max_spill_bytes = 4 * BUDGET;
        let store = ObjectStore::new(3, limits);
        let (t, j) = tenant_and_job();
        // Three copies of host 4's objects, each larger than half the
        // budget: they go to disk and take three quarters of the quota.
        let mut copies = Vec::new();
        for i in 0..3u64 {
            let id = ObjectId { hi: 4, lo: i };
            let (cell, _) = store.copy_slot(&t, &j, id);
            let copy = store.disk_copy(BUDGET).await.expect("room for a copy on disk");
            let data = pattern(i as usize, BUDGET as usize);
            drop(copy.write_at(data, 0).await.unwrap());
            store.fill_copy(&j, id, &cell, Landed::Disk(copy), true);
            let Some(Ok(Value::Here(local))) = cell.peek().cloned() else { panic!() };
            // Read once, as its reader would (an unread copy stays).
            assert_eq!(&store.bytes(&local).await.unwrap()[..], &pattern(i as usize, BUDGET as usize)[..]);
            copies.push(local);
        }
        let footprint = store.footprint();
        assert_eq!((footprint.disk_copies, footprint.spilled_bytes, footprint.memory_bytes), (3, 3 * BUDGET, 0));
        // The host's own objects need the disk: copies give way, they spill.
        for i in 0..32 {
            store.put(&t, &j, pattern(i, 8 << 10)).unwrap();
            store.room().await.unwrap();
        }
        let after = store.footprint();
        assert!(after.dropped_copies >= 1, "{after:?}");
        assert!(after.spills > 0 && after.spilled_bytes <= 4 * BUDGET, "{after:?}");
        assert!(after.memory_bytes <= BUDGET, "{after:?}");
        // A copy that gave way says so to a reader that held it.
        let gone = copies.iter().find(|local| local.place().freed).expect("a dropped copy");
        assert!(store.bytes(gone).await.is_err());
        assert_job_end_frees_all(&store, &t, &j);
    }

    #[tokio::test]
    async fn copies_of_other_hosts_objects_are_dropped_for_memory_not_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let store = budgeted(3, dir.path());
        let (t, j) = tenant_and_job();
        // 32 copies of host 4's objects and one the holder is gone for
        // (rebuilt here: it must spill instead).
        let mut locals = Vec::new();
        for i in 0..33u64 {
            let id = ObjectId { hi: 4, lo: i };
            let (cell, new) = store.copy_slot(&t, &j, id);
            assert!(new);
            store.fill_copy(&j, id, &cell, Landed::Memory(pattern(i as usize, 8 << 10)), i != 0);
            // Read once, as its reader would (an unread copy is not dropped).
            let Some(Ok(Value::Here(local))) = cell.peek().cloned() else { panic!() };
            assert_eq!(store.bytes(&local).await.unwrap().len(), 8 << 10);
            store.room().await.unwrap();
            assert!(store.footprint().memory_bytes <= BUDGET, "{:?}", store.footprint());
            locals.push((id, local));
        }
        let footprint = store.footprint();
        assert!(footprint.dropped_copies >= 32 - 8, "{footprint:?}");
        assert_eq!(footprint.spilled_bytes, 8 << 10, "only the rebuilt copy spilled: {footprint:?}");
        // Host 4 left: the copies of its objects still here are the only
        // ones left, and spill from now on.
        store.keep_copies_of(4);
        for i in 0..16 {
            store.put(&t, &j, pattern(i, 8 << 10)).unwrap();
            store.room().await.unwrap();
        }
        let after = store.footprint();
        assert_eq!(after.dropped_copies, footprint.dropped_copies, "{after:?}");
        assert!(after.spilled_bytes >= footprint.spilled_bytes + (8 << 10), "{after:?}");
        // A dropped copy is gone from the store (the next read pulls it
        // again) and says so to a reader that held it; the rest read back.
        for (id, local) in &locals {
            match store.bytes(local).await {
                Ok(bytes) => assert_eq!(&bytes[..], &pattern(id.lo as usize, 8 << 10)[..]),
                Err(_) => assert!(local.copy_gone() && store.lookup("t", *id).is_none()),
            }
        }
        assert_job_end_frees_all(&store, &t, &j);
    }

    #[tokio::test]
    async fn an_object_read_by_a_reader_is_not_spilled_from_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(4, 1 << 20, 10 << 10, dir.path());
        let (t, j) = tenant_and_job();
        let held = store.put(&t, &j, pattern(1, 8 << 10)).unwrap();
        let reading = store.get("t", held).await.unwrap();
        for i in 2..6 {
            store.put(&t, &j, pattern(i, 8 << 10)).unwrap();
            store.room().await.unwrap();
        }
        let Some(Ok(Value::Here(local))) = store.cell("t", held).unwrap().peek().cloned() else { panic!() };
        assert!(local.in_memory());
        assert_eq!(&reading[..], &pattern(1, 8 << 10)[..]);
    }

    #[tokio::test]
    async fn pinned_objects_spill_only_when_nothing_else_can() {
        let dir = tempfile::tempdir().unwrap();
        let store = budgeted(6, dir.path());
        let (t, j) = tenant_and_job();
        let in_memory = |id| {
            let Some(Ok(Value::Here(local))) = store.cell("t", id).unwrap().peek().cloned() else { panic!() };
            local.in_memory()
        };
        // The oldest object, pinned, stays while 31 newer ones spill past it.
        let pinned = store.put(&t, &j, pattern(0, 8 << 10)).unwrap();
        store.pin("t", pinned).unwrap();
        let mut others = Vec::new();
        for i in 1..32 {
            others.push(store.put(&t, &j, pattern(i, 8 << 10)).unwrap());
            store.room().await.unwrap();
        }
        assert!(in_memory(pinned));
        assert!(!in_memory(others[0]));
        assert!(store.footprint().memory_bytes <= BUDGET, "{:?}", store.footprint());
        // Pinned objects beyond the budget spill too, rather than outgrow it.
        for &id in &others {
            store.pin("t", id).unwrap();
            store.get("t", id).await.unwrap();
            store.room().await.unwrap();
            assert!(store.footprint().memory_bytes <= BUDGET, "{:?}", store.footprint());
        }
        assert_eq!(&store.get("t", pinned).await.unwrap()[..], &pattern(0, 8 << 10)[..]);
    }

    #[tokio::test]
    async fn a_writer_larger_than_the_budget_goes_to_disk_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 16 << 10;
        let store = store(5, 1 << 20, budget, dir.path());
        let (t, j) = tenant_and_job();
        let mut writer = store.writer(t.clone(), j.clone());
        for i in 0..16 {
            store.write(&mut writer, pattern(i, 4 << 10)).await.unwrap();
            assert!(store.footprint().memory_bytes <= budget);
        }
        let id = store.finish(&mut writer).unwrap();
        assert_eq!(store.finish(&mut writer).unwrap_err().kind, ErrorKind::InvalidArgument);
        let footprint = store.footprint();
        assert_eq!((footprint.bytes, footprint.memory_bytes, footprint.spilled_bytes), (64 << 10, 0, 64 << 10));
        let Some(Ok(Value::Here(local))) = store.cell("t", id).unwrap().peek().cloned() else { panic!() };
        for i in 0..16 {
            let part = store.slice(&local, i * (4 << 10)..(i + 1) * (4 << 10)).await.unwrap();
            assert_eq!(&part[..], &pattern(i, 4 << 10)[..]);
        }
        // Larger than half the budget: read whole for this reader alone.
        assert_eq!(store.get("t", id).await.unwrap().len(), 64 << 10);
        assert!(!local.in_memory());

        // A writer crossing the object size limit fails at that part.
        let mut writer = store.writer(t.clone(), j.clone());
        store.write(&mut writer, vec![0; 1 << 20]).await.unwrap();
        assert_eq!(store.write(&mut writer, vec![0; 1]).await.unwrap_err().kind, ErrorKind::ResourceLimit);
        assert_eq!(store.finish(&mut writer).unwrap_err().kind, ErrorKind::ResourceLimit);
    }
}

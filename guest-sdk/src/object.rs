//! Typed references to objects in the fabric's store.

use crate::bindings::fabric::core::{objects, tasks, types::ObjectId as WitObjectId};
use crate::{Error, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::marker::PhantomData;
use std::time::Duration;

/// The id of an object: 128 bits, unique across a cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct ObjectId {
    /// High 64 bits.
    pub hi: u64,
    /// Low 64 bits.
    pub lo: u64,
}

impl From<WitObjectId> for ObjectId {
    fn from(id: WitObjectId) -> Self {
        ObjectId { hi: id.hi, lo: id.lo }
    }
}

impl From<ObjectId> for WitObjectId {
    fn from(id: ObjectId) -> Self {
        WitObjectId { hi: id.hi, lo: id.lo }
    }
}

impl From<&ArchivedObjectId> for ObjectId {
    fn from(id: &ArchivedObjectId) -> Self {
        ObjectId { hi: id.hi.to_native(), lo: id.lo.to_native() }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

/// One counted reference to an object: the host knows how many a task
/// holds, so an object lives exactly while something refers to it. Cloning
/// or decoding one adds a reference, dropping one lets it go; encoding one
/// (into a task's arguments, a `put` value, a result) records it, so the
/// host keeps the object alive for the value that names it.
pub(crate) struct Handle {
    id: ObjectId,
    /// The task it was counted for: one kept (in a static) past its task
    /// was released with that task, so dropping it later does nothing.
    task: u64,
}

thread_local! {
    /// While a value is being encoded: the objects it names.
    static NAMED: std::cell::RefCell<Option<Vec<ObjectId>>> = const { std::cell::RefCell::new(None) };
    /// Counts the tasks this instance has run.
    static TASK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A new task begins in this instance: the host let go of every reference
/// the last one held.
pub(crate) fn next_task() {
    TASK.with(|task| task.set(task.get().wrapping_add(1)));
}

fn this_task() -> u64 {
    TASK.with(|task| task.get())
}

impl Handle {
    /// The reference the host counted for this task when it made `id`.
    pub(crate) fn adopt(id: ObjectId) -> Self {
        Handle { id, task: this_task() }
    }

    /// A new reference to `id`.
    pub(crate) fn retain(id: ObjectId) -> Self {
        objects::retain(id.into());
        Handle { id, task: this_task() }
    }

    /// The object's id.
    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        Handle::retain(self.id)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.task == this_task() {
            objects::release(self.id.into());
        }
    }
}

impl Serialize for Handle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        record_named(self.id);
        self.id.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        ObjectId::deserialize(deserializer).map(Handle::retain)
    }
}

// In an rkyv archive a reference is its id, recorded and counted as in the
// serde encoding above, so archived values keep what they name alive too.
impl rkyv::Archive for Handle {
    type Archived = ArchivedObjectId;
    type Resolver = <ObjectId as rkyv::Archive>::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        self.id.resolve(resolver, out);
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for Handle {
    fn serialize(&self, serializer: &mut S) -> std::result::Result<Self::Resolver, S::Error> {
        record_named(self.id);
        rkyv::Serialize::serialize(&self.id, serializer)
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<Handle, D> for ArchivedObjectId {
    fn deserialize(&self, _: &mut D) -> std::result::Result<Handle, D::Error> {
        Ok(Handle::retain(self.into()))
    }
}

/// Notes that the value being encoded names `id`.
fn record_named(id: ObjectId) {
    NAMED.with(|named| {
        if let Some(named) = named.borrow_mut().as_mut() {
            named.push(id);
        }
    });
}

/// Runs `encode` and returns what it gave with the objects the encoded
/// value names (each [`Handle`] it encoded).
pub(crate) fn naming<R>(encode: impl FnOnce() -> R) -> (R, Vec<ObjectId>) {
    let outer = NAMED.with(|named| named.replace(Some(Vec::new())));
    let encoded = encode();
    let named = NAMED.with(|named| named.replace(outer)).unwrap_or_default();
    // An encoding inside another's: the outer value names these too.
    NAMED.with(|outer| {
        if let Some(outer) = outer.borrow_mut().as_mut() {
            outer.extend_from_slice(&named);
        }
    });
    (encoded, named)
}

/// Tells the host which objects the value it is handed next names, so they
/// live as long as that value needs them.
pub(crate) fn declare(named: &[ObjectId]) {
    if !named.is_empty() {
        let ids: Vec<WitObjectId> = named.iter().map(|id| (*id).into()).collect();
        objects::declare_refs(&ids);
    }
}

/// Encodes `value` in the binary encoding and declares the objects it
/// names, for the host call that follows at once.
pub(crate) fn encode_declared<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Vec<u8>, postcard::Error> {
    declared(|| postcard::to_stdvec(value))
}

/// Runs `encode` and, if it succeeds, declares the objects the encoded
/// value names, for the host call that follows at once.
pub(crate) fn declared<B, E>(encode: impl FnOnce() -> std::result::Result<B, E>) -> std::result::Result<B, E> {
    let (bytes, named) = naming(encode);
    let bytes = bytes?;
    declare(&named);
    Ok(bytes)
}

/// A typed reference to an object: a task's (future) result or a [`put`] value.
/// It serializes as its id, so it can be passed to tasks and stored in objects.
/// The object lives while any reference to it does (here, in a pending
/// task's arguments, or inside another object), and at most until its job
/// ends. It archives with rkyv as its id too ([`ArchivedObjectRef`]), so a
/// value stored with [`put_archived`](crate::put_archived) can name objects.
#[derive(Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[serde(transparent)]
pub struct ObjectRef<T> {
    handle: Handle,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef { handle: self.handle.clone(), _type: PhantomData }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.handle.id)
    }
}

impl<T> ObjectRef<T> {
    /// A new reference from a raw id; the caller vouches for the type.
    pub fn from_id(id: ObjectId) -> Self {
        ObjectRef { handle: Handle::retain(id), _type: PhantomData }
    }
    /// Takes over the reference the host counted for a new object.
    pub(crate) fn adopt(id: ObjectId) -> Self {
        ObjectRef { handle: Handle::adopt(id), _type: PhantomData }
    }
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }
    /// The object's size in bytes, waiting until it is ready.
    pub fn size(&self) -> Result<u64> {
        Ok(objects::size(self.id().into())?)
    }
    /// The object's raw bytes, waiting until it is ready.
    pub fn get_bytes(&self) -> Result<Vec<u8>> {
        Ok(objects::get(self.id().into())?)
    }
    /// Keeps the object (and what it names) after this job ends, until
    /// `fabric unpin ID`; later jobs of the tenant read it with
    /// [`ObjectRef::from_id`]. Waits until it is ready.
    pub fn pin(&self) -> Result<()> {
        Ok(objects::pin(self.id().into())?)
    }
}

impl<T> ArchivedObjectRef<T> {
    /// The object's id, read in place.
    pub fn id(&self) -> ObjectId {
        (&self.handle).into()
    }
    /// A counted reference to the object, as decoding the value would give.
    pub fn to_ref(&self) -> ObjectRef<T> {
        ObjectRef::from_id(self.id())
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// The value, waiting until it is ready; a failed task gives its error.
    pub fn get(&self) -> Result<T> {
        let bytes = self.get_bytes()?;
        postcard::from_bytes(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("object {} does not decode as the expected type: {e}", self.id()))
        })
    }
}

/// Stores a value in the object store and returns a reference to it. The
/// references inside `value` keep their objects alive while it lives.
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>> {
    let bytes = encode_declared(value).map_err(|e| Error::InvalidArgument(format!("cannot encode the value: {e}")))?;
    Ok(ObjectRef::adopt(objects::put(&bytes)?.into()))
}

/// Waits for every reference and returns their values in order.
pub fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    refs.iter().map(ObjectRef::get).collect()
}

/// What [`wait`] returns: `(ready, pending)`.
pub type ReadyAndPending<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_ready` of `refs` are ready or `timeout` passes; returns
/// `(ready, pending)`, each in the order given.
pub fn wait<T>(refs: &[ObjectRef<T>], num_ready: usize, timeout: Option<Duration>) -> Result<ReadyAndPending<T>> {
    let ids: Vec<WitObjectId> = refs.iter().map(|r| r.id().into()).collect();
    let ready = tasks::wait(&ids, num_ready.min(u32::MAX as usize) as u32, timeout.map(|d| d.as_millis() as u64))?;
    let ready: std::collections::HashSet<ObjectId> = ready.into_iter().map(ObjectId::from).collect();
    Ok(refs.iter().cloned().partition(|r| ready.contains(&r.id())))
}

/// A number type an [`ArrayRef`] can hold: stored raw, little-endian.
pub trait Element: Copy + 'static {
    /// Bytes per element.
    const SIZE: usize;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `SIZE` bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
        }
    )*};
}
element!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// A reference to an array of numbers stored raw, so a task can read any
/// sub-range without the rest crossing into its memory. It archives with
/// rkyv too ([`ArchivedArrayRef`]).
#[derive(Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ArrayRef<T> {
    #[serde(rename = "id")]
    handle: Handle,
    len: u64,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ArrayRef<T> {
    fn clone(&self) -> Self {
        ArrayRef { handle: self.handle.clone(), len: self.len, _type: PhantomData }
    }
}

impl<T> std::fmt::Debug for ArrayRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArrayRef({}, len {})", self.handle.id, self.len)
    }
}

/// Stores raw bytes as an object, without copying them first.
pub fn put_bytes(bytes: &[u8]) -> Result<ArrayRef<u8>> {
    let handle = Handle::adopt(objects::put(bytes)?.into());
    Ok(ArrayRef { handle, len: bytes.len() as u64, _type: PhantomData })
}

/// Stores `values` as a raw array object.
pub fn put_array<T: Element>(values: &[T]) -> Result<ArrayRef<T>> {
    let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
    for v in values {
        v.write_le(&mut bytes);
    }
    let handle = Handle::adopt(objects::put(&bytes)?.into());
    Ok(ArrayRef { handle, len: values.len() as u64, _type: PhantomData })
}

/// Builds one raw byte object from parts, for objects larger than the task
/// wants to hold in its memory at once: write parts in any sizes, then
/// `finish`. The host keeps small objects in memory and sends large ones
/// to its disk as they are written, so an object may be larger than the
/// host's object memory. Read it back a slice at a time with
/// [`ArrayRef::slice`].
///
/// ```ignore
/// let mut writer = fabric::ObjectWriter::new();
/// for part in parts {
///     writer.write(&part)?;
/// }
/// let object: fabric::ArrayRef<u8> = writer.finish()?;
/// ```
pub struct ObjectWriter {
    inner: objects::Writer,
    len: u64,
}

impl ObjectWriter {
    /// A writer for a new object owned by this task's job.
    pub fn new() -> Self {
        ObjectWriter { inner: objects::Writer::new(), len: 0 }
    }

    /// Appends `bytes`. Past the object size limit or the tenant's limit
    /// this fails, and so does every later write.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seals the object.
    pub fn finish(self) -> Result<ArrayRef<u8>> {
        let handle = Handle::adopt(self.inner.finish()?.into());
        Ok(ArrayRef { handle, len: self.len, _type: PhantomData })
    }
}

impl Default for ObjectWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ArrayRef<T> {
    pub(crate) fn from_parts(id: ObjectId, len: u64) -> Self {
        ArrayRef { handle: Handle::retain(id), len, _type: PhantomData }
    }
}

impl<T> ArchivedArrayRef<T> {
    /// The array's id, read in place.
    pub fn id(&self) -> ObjectId {
        (&self.handle).into()
    }
    /// Number of elements, read in place.
    pub fn len(&self) -> u64 {
        self.len.to_native()
    }
    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A counted reference to the array, as decoding the value would give.
    pub fn to_ref(&self) -> ArrayRef<T> {
        ArrayRef::from_parts(self.id(), self.len())
    }
}

impl<T: Element> ArrayRef<T> {
    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }
    /// Keeps the array after this job ends, until `fabric unpin ID`.
    pub fn pin(&self) -> Result<()> {
        Ok(objects::pin(self.id().into())?)
    }
    /// Reads elements `range`; only those bytes cross into this instance.
    pub fn slice(&self, range: std::ops::Range<u64>) -> Result<Vec<T>> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::InvalidArgument(format!(
                "slice {}..{} is out of bounds for an array of {} elements",
                range.start, range.end, self.len
            )));
        }
        let size = T::SIZE as u64;
        let bytes = objects::read(self.id().into(), range.start * size, (range.end - range.start) * size)?;
        // Bytes are already what an `ArrayRef<u8>` holds: hand them over
        // rather than build a second buffer as large.
        let mut raw = Some(bytes);
        if let Some(same) = (&mut raw as &mut dyn std::any::Any).downcast_mut::<Option<Vec<T>>>() {
            return Ok(same.take().unwrap_or_default());
        }
        let bytes = raw.unwrap_or_default();
        Ok(bytes.chunks_exact(T::SIZE).map(T::read_le).collect())
    }
    /// Reads the whole array.
    pub fn get(&self) -> Result<Vec<T>> {
        self.slice(0..self.len)
    }
}

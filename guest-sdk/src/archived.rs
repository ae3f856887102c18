//! Values archived with rkyv, read in place without decoding.
//!
//! [`put`](crate::put) encodes a value with postcard (serde) and every read
//! decodes all of it. [`put_archived`] stores the value as an rkyv archive
//! instead: a reader checks the bytes once (bytecheck, so a corrupt or
//! hostile object is an error, never undefined behaviour) and then reads any
//! field where it lies. A task that needs a few fields of a large record pays
//! for one copy into its memory and one validation pass, not for decoding
//! and allocating every string and vector in it.
//!
//! The archive format is the same on every target (rkyv's defaults:
//! little-endian, aligned, 32-bit relative pointers) and the host keeps every
//! object 16-byte aligned, so what a wasm32 guest archived is read in place by
//! another guest, by the host, and by native Rust programs built with the
//! same type (`fabric get` fetches an object's bytes).
//!
//! Why a second kind of reference rather than rkyv everywhere: task
//! arguments and results also travel as JSON (from the command line and
//! HTTP), which serde gives every type for free; archived values are for
//! data read more often, or more partially, than it is written.

use crate::bindings::fabric::core::objects;
use crate::object::{declared, ObjectId};
use crate::ObjectRef;
use crate::{Error, Result};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// A type [`put_archived`] can store and [`ArchivedRef::get`] can read in
/// place: derive `rkyv::Archive`, `rkyv::Serialize` and `rkyv::Deserialize`
/// (re-exported as [`fabric::rkyv`](crate::rkyv); add
/// `#[rkyv(crate = fabric::rkyv)]`) and this is implemented for it.
pub trait Archivable:
    Sized
    + rkyv::Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                      + rkyv::Deserialize<Self, HighDeserializer<rancor::Error>>,
    > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Archivable for T where
    T: rkyv::Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                          + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
        > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// The alignment rkyv's archives may need (its `AlignedVec` default).
const ARCHIVE_ALIGN: usize = 16;

/// Stores `value` archived with rkyv and returns a reference to it. The
/// references inside `value` keep their objects alive while it lives.
pub fn put_archived<T: Archivable>(value: &T) -> Result<ArchivedRef<T>> {
    let bytes = declared(|| rkyv::to_bytes::<rancor::Error>(value))
        .map_err(|e| Error::InvalidArgument(format!("cannot archive the value: {e}")))?;
    Ok(ArchivedRef(ObjectRef::adopt(objects::put(&bytes)?.into())))
}

/// A reference to an object holding a `T` archived with rkyv: [`get`] reads
/// it in place. An [`ObjectRef`] underneath (counted, passed to tasks and
/// encoded the same way), read the rkyv way; archivable inside other
/// archived values ([`ArchivedArchivedRef`]).
///
/// [`get`]: ArchivedRef::get
#[derive(Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[serde(transparent, bound = "")]
pub struct ArchivedRef<T>(ObjectRef<T>);

impl<T> Clone for ArchivedRef<T> {
    fn clone(&self) -> Self {
        ArchivedRef(self.0.clone())
    }
}

impl<T> std::fmt::Debug for ArchivedRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchivedRef({})", self.id())
    }
}

impl<T> ArchivedRef<T> {
    /// A new reference from a raw id; the caller vouches for the type (a
    /// wrong one is caught when the bytes are checked).
    pub fn from_id(id: ObjectId) -> Self {
        ArchivedRef(ObjectRef::from_id(id))
    }
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.0.id()
    }
    /// The archive's size in bytes, waiting until it is ready.
    pub fn size(&self) -> Result<u64> {
        self.0.size()
    }
    /// Keeps the object (and what it names) after this job ends, until
    /// `fabric unpin ID`. Waits until it is ready.
    pub fn pin(&self) -> Result<()> {
        self.0.pin()
    }
}

impl<T: Archivable> ArchivedRef<T> {
    /// The archived value, waiting until it is ready: its bytes are copied
    /// into this task once and checked, then read in place.
    pub fn get(&self) -> Result<ArchivedValue<T>> {
        ArchivedValue::checked(self.0.get_bytes()?, Some(self.0.clone())).map_err(|e| {
            Error::InvalidArgument(format!("object {} is not an archived value of the expected type: {e}", self.id()))
        })
    }
    /// The value decoded into its own type (what [`get`](Self::get) then
    /// [`ArchivedValue::deserialize`] give).
    pub fn get_owned(&self) -> Result<T> {
        self.get()?.deserialize()
    }
}

impl<T> ArchivedArchivedRef<T> {
    /// The object's id, read in place.
    pub fn id(&self) -> ObjectId {
        self.0.id()
    }
    /// A counted reference to the object, as decoding the value would give.
    pub fn to_ref(&self) -> ArchivedRef<T> {
        ArchivedRef(self.0.to_ref())
    }
}

/// Archived bytes that passed validation as a `T`: dereferences to
/// `T::Archived`, whose fields are read where they lie. One read from the
/// store holds a reference to its object, so the objects its archived
/// references name (turned into counted ones with `to_ref`) live as long.
pub struct ArchivedValue<T: Archivable> {
    bytes: Bytes,
    _object: Option<ObjectRef<T>>,
    _type: PhantomData<fn() -> T>,
}

/// Where the bytes of an [`ArchivedValue`] live.
enum Bytes {
    /// As read: aligned enough for the archive (a guest's allocator places
    /// a buffer of any size at 8 bytes or more, which most archives need).
    Read(Vec<u8>),
    /// Copied once into a buffer aligned for any archive, when they were not.
    Aligned(AlignedVec<ARCHIVE_ALIGN>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Read(bytes) => bytes,
            Bytes::Aligned(bytes) => bytes,
        }
    }
}

impl<T: Archivable> ArchivedValue<T> {
    /// Checks `bytes` as an archived `T` (copying them only if they are not
    /// aligned enough for it).
    pub fn check(bytes: Vec<u8>) -> std::result::Result<Self, rancor::Error> {
        Self::checked(bytes, None)
    }

    /// [`check`](Self::check), holding a reference to the object read.
    fn checked(bytes: Vec<u8>, object: Option<ObjectRef<T>>) -> std::result::Result<Self, rancor::Error> {
        // The validator checks each part's real address, so bytes aligned
        // too loosely for this archive fail here rather than misread.
        let bytes = match rkyv::access::<T::Archived, rancor::Error>(&bytes) {
            Ok(_) => Bytes::Read(bytes),
            Err(error) if (bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) => return Err(error),
            Err(_) => {
                let mut aligned = AlignedVec::<ARCHIVE_ALIGN>::with_capacity(bytes.len());
                aligned.extend_from_slice(&bytes);
                rkyv::access::<T::Archived, rancor::Error>(&aligned)?;
                Bytes::Aligned(aligned)
            }
        };
        Ok(ArchivedValue { bytes, _object: object, _type: PhantomData })
    }

    /// The value decoded into its own type.
    pub fn deserialize(&self) -> Result<T> {
        rkyv::deserialize::<T, rancor::Error>(&**self)
            .map_err(|e| Error::InvalidArgument(format!("cannot decode the archived value: {e}")))
    }

    /// The archive's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

impl<T: Archivable> std::ops::Deref for ArchivedValue<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `check` validated these bytes as a `T::Archived` when the
        // value was made, and they are never changed or moved since (a
        // vector's heap buffer stays put when the vector moves).
        unsafe { rkyv::access_unchecked::<T::Archived>(self.bytes.as_slice()) }
    }
}

impl<T: Archivable> std::fmt::Debug for ArchivedValue<T>
where
    T::Archived: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

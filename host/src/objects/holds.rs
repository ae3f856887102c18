//! The references one task (or one actor) holds.
//!
//! A guest's `ObjectRef` counts itself: cloning or decoding one calls
//! `objects.retain`, dropping one calls `objects.release`. The host keeps
//! those counts per task here and holds *one* store reference per object
//! while the task has any, so a guest's own bookkeeping never reaches the
//! store's lock, and a guest cannot release what it never held (a hostile
//! or buggy `release` only ever drops the caller's own references).
//!
//! Before a guest hands the host a value that names objects (the data of a
//! `put`, a task's arguments, its result), it declares them
//! (`objects.declare-refs`): each gets a reference at once, so the guest
//! may drop its own while the host works, and the call that takes the
//! value takes those references over: a `put` keeps them inside the new
//! object, a sub-task for as long as it runs. Declared references no call
//! takes (a result, an actor's arguments) are kept until the job ends,
//! since the value went where this host cannot count.
//!
//! When the task ends, what it still holds is released; an actor's
//! instance keeps its references between calls and releases them when it
//! is dropped.

use super::{ObjectId, ObjectStore};
use fabric_proto::{ErrorKind, FabricError};
use std::collections::HashMap;
use std::sync::Arc;

/// Most distinct objects one task may hold references to at once.
pub const MAX_HELD: usize = 1 << 20;

/// A task's references, counted per object.
#[derive(Default)]
pub struct Holds {
    /// The store counted in, and the tenant (set on first use).
    store: Option<(Arc<ObjectStore>, Arc<str>)>,
    /// The guest's count per object, and whether the store counts one
    /// reference for it (not for another host's objects, nor for ids the
    /// store did not know when the guest took them: releasing those must
    /// never drop a count someone else holds).
    counts: HashMap<ObjectId, (u32, bool)>,
    /// Declared for the next value handed over, one store reference each
    /// (none for another host's objects).
    declared: Vec<ObjectId>,
}

impl Holds {
    /// Counts in `store` for `tenant` from now on (what was held in
    /// another is released first).
    pub fn bind(&mut self, store: &Arc<ObjectStore>, tenant: &Arc<str>) {
        if let Some((bound, bound_tenant)) = &self.store {
            if Arc::ptr_eq(bound, store) && bound_tenant == tenant {
                return;
            }
        }
        self.release_all();
        self.store = Some((store.clone(), tenant.clone()));
    }

    /// Takes over the reference the store counted for a new object made
    /// for this task.
    pub fn adopt(&mut self, id: ObjectId) {
        let (count, counted) = self.counts.entry(id).or_default();
        *count = count.saturating_add(1);
        if *counted {
            // Already held: the store needs only one reference for us.
            if let Some((store, tenant)) = &self.store {
                store.release(tenant, &[id]);
            }
        }
        *counted = true;
    }

    /// One more reference to `id` (the guest cloned or decoded one).
    pub fn retain(&mut self, id: ObjectId) -> Result<(), FabricError> {
        let room = self.check_room(1);
        let (count, _) = match self.counts.entry(id) {
            std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                room?;
                let counted = self.store.as_ref().is_some_and(|(store, tenant)| store.retain(tenant, id));
                new.insert((0, counted))
            }
        };
        *count = count.saturating_add(1);
        Ok(())
    }

    /// One reference fewer to `id`; the last one lets the store's go.
    pub fn release(&mut self, id: ObjectId) {
        let Some((count, counted)) = self.counts.get_mut(&id) else { return };
        *count -= 1;
        if *count == 0 {
            let counted = *counted;
            self.counts.remove(&id);
            if counted {
                self.store_release(&[id]);
            }
        }
    }

    /// Declares `ids` as named by the next value handed to the host (see
    /// [`name`]).
    pub fn declare(&mut self, ids: Vec<ObjectId>) -> Result<(), FabricError> {
        self.check_room(ids.len())?;
        if let Some((store, tenant)) = &self.store {
            self.declared.extend(ids.into_iter().filter(|id| name(store, tenant, *id)));
        }
        Ok(())
    }

    /// The references declared for the value being handed over: given
    /// back if the guard drops, or passed on with [`Declared::hand_over`].
    pub fn take_declared(&mut self) -> Declared {
        let ids = std::mem::take(&mut self.declared);
        Declared { ids, store: self.store.clone() }
    }

    /// Declared references no call took: the value went where this host
    /// cannot count, so the objects live until their job ends.
    pub fn settle_declared(&mut self) {
        self.take_declared().settle();
    }

    /// Lets every reference go (the task ended).
    pub fn release_all(&mut self) {
        self.settle_declared();
        let held: Vec<ObjectId> = self.counts.drain().filter(|(_, (_, counted))| *counted).map(|(id, _)| id).collect();
        self.store_release(&held);
    }

    fn store_release(&self, ids: &[ObjectId]) {
        if let Some((store, tenant)) = &self.store {
            store.release(tenant, ids);
        }
    }

    fn check_room(&self, more: usize) -> Result<(), FabricError> {
        if self.counts.len() + self.declared.len() + more > MAX_HELD {
            return Err(FabricError::new(
                ErrorKind::ResourceLimit,
                format!("a task may hold references to at most {MAX_HELD} objects at once"),
            ));
        }
        Ok(())
    }
}

/// Takes the reference a value naming `tenant`'s object `id` holds; says
/// whether the value lists it. Another host's objects are listed without a
/// count (this host does not count them), so that a value names them and a
/// pin of it reaches them; ids of this host's that the store does not know
/// (freed, or guessed) are left out, lest the value release a count it
/// never took.
fn name(store: &ObjectStore, tenant: &str, id: ObjectId) -> bool {
    store.retain(tenant, id) || !store.minted_here(id)
}

/// Declared references on their way to the call that takes them: released
/// if that call fails or is abandoned before taking them.
pub struct Declared {
    ids: Vec<ObjectId>,
    store: Option<(Arc<ObjectStore>, Arc<str>)>,
}

impl Declared {
    /// Nothing declared.
    pub fn none() -> Self {
        Declared { ids: Vec::new(), store: None }
    }

    /// The objects a value made elsewhere names (a task result a peer sent
    /// back), each of this host's with a reference taken now.
    pub fn naming(store: &Arc<ObjectStore>, tenant: &Arc<str>, ids: impl IntoIterator<Item = ObjectId>) -> Self {
        let ids = ids.into_iter().filter(|id| name(store, tenant, *id)).collect();
        Declared { ids, store: Some((store.clone(), tenant.clone())) }
    }

    /// The objects declared.
    pub fn ids(&self) -> &[ObjectId] {
        &self.ids
    }

    /// The references, now the caller's to hold and release.
    pub fn hand_over(mut self) -> Vec<ObjectId> {
        self.store = None;
        std::mem::take(&mut self.ids)
    }

    /// The value went where this host cannot count: what it names lives
    /// until its job ends.
    pub fn settle(self) {
        if let Some((store, tenant)) = &self.store {
            store.escape(tenant, &self.ids);
        }
    }
}

impl std::fmt::Debug for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Declared({} objects)", self.ids.len())
    }
}

impl Drop for Declared {
    fn drop(&mut self) {
        if let Some((store, tenant)) = &self.store {
            store.release(tenant, &self.ids);
        }
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Holds({} objects, {} declared)", self.counts.len(), self.declared.len())
    }
}

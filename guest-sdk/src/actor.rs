//! Actors from the guest's side: handles, the builder, and the one actor an
//! instance hosts.

use crate::bindings::fabric::core::actors as wit;
use crate::{Error, ObjectRef, Result};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// An actor's id: 128 bits, unique across a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActorId {
    /// High 64 bits.
    pub hi: u64,
    /// Low 64 bits.
    pub lo: u64,
}

impl std::fmt::Display for ActorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

impl From<wit::ActorId> for ActorId {
    fn from(id: wit::ActorId) -> Self {
        ActorId { hi: id.hi, lo: id.lo }
    }
}

impl From<ActorId> for wit::ActorId {
    fn from(id: ActorId) -> Self {
        wit::ActorId { hi: id.hi, lo: id.lo }
    }
}

/// What `#[fabric::actor]` generates for a class's handle (`CounterHandle`).
pub trait ActorHandle: Sized + Copy {
    /// The class name actors of this handle are created with.
    const CLASS: &'static str;
    /// A handle for an existing actor.
    fn from_id(id: ActorId) -> Self;
    /// The actor's id.
    fn id(&self) -> ActorId;

    /// The live actor of this class named `name`.
    fn lookup(name: &str) -> Result<Self> {
        Ok(Self::from_id(wit::lookup(name)?.into()))
    }

    /// Kills the actor; queued calls fail with `Cancelled`.
    fn kill(&self) -> Result<()> {
        Ok(wit::kill(self.id().into())?)
    }

    /// Takes a snapshot of the actor's state now (after calls queued before).
    fn snapshot(&self) -> Result<ObjectRef<()>> {
        Ok(ObjectRef::adopt(wit::snapshot(self.id().into())?.into()))
    }
}

/// Builds an actor: `Counter::new(0).name("c").remote()?`.
pub struct ActorBuilder<H> {
    args: Result<Vec<u8>>,
    /// What the arguments name, held until the actor is created.
    named: Vec<crate::object::Handle>,
    options: wit::ActorOptions,
    _handle: PhantomData<fn() -> H>,
}

impl<H: ActorHandle> ActorBuilder<H> {
    /// A builder for the class of `H` with constructor arguments `args`.
    pub fn new<A: Serialize>(args: &A) -> Self {
        let (args, named) = crate::object::naming(|| postcard::to_stdvec(args));
        let args =
            args.map_err(|e| Error::InvalidArgument(format!("cannot encode arguments of `{}.new`: {e}", H::CLASS)));
        ActorBuilder {
            args,
            named: named.into_iter().map(crate::object::Handle::retain).collect(),
            options: wit::ActorOptions {
                name: None,
                detached: false,
                max_restarts: None,
                max_pending: None,
                snapshot_every: None,
                snapshot_interval_ms: None,
                memory_bytes: None,
                resources: Vec::new(),
                pool: None,
                labels: Vec::new(),
            },
            _handle: PhantomData,
        }
    }

    /// Names the actor (unique within the tenant).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into());
        self
    }

    /// Lets the actor outlive the job that creates it (until killed).
    pub fn detached(mut self) -> Self {
        self.options.detached = true;
        self
    }

    /// Restarts allowed after trapping methods before the actor is dead.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.options.max_restarts = Some(n);
        self
    }

    /// Calls that may wait in the mailbox.
    pub fn max_pending(mut self, n: u32) -> Self {
        self.options.max_pending = Some(n);
        self
    }

    /// Snapshot the state every `n` calls (0: only on request).
    pub fn snapshot_every(mut self, n: u32) -> Self {
        self.options.snapshot_every = Some(n);
        self
    }

    /// Also snapshot after a call when the last snapshot is older than `every`.
    pub fn snapshot_interval(mut self, every: std::time::Duration) -> Self {
        self.options.snapshot_interval_ms = Some(every.as_millis().min(u64::MAX as u128) as u64);
        self
    }

    /// Linear memory cap of the actor's instance.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.options.memory_bytes = Some(bytes);
        self
    }

    /// Places the actor on a host with `amount` of resource `name` (`gpu`,
    /// `memory` in bytes, or a custom name), which it holds while it lives.
    pub fn resource(mut self, name: impl Into<String>, amount: u64) -> Self {
        self.options.resources.push((name.into(), amount));
        self
    }

    /// Places the actor on a host of pool `name`.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.options.pool = Some(name.into());
        self
    }

    /// Places the actor on a host labelled `key=value`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.labels.push((key.into(), value.into()));
        self
    }

    /// Creates the actor.
    pub fn remote(self) -> Result<H> {
        let args = self.args?;
        declare_held(&self.named);
        Ok(H::from_id(wit::create(H::CLASS, &args, &self.options)?.into()))
    }

    /// The named actor if it exists, else a new one; racing callers all get
    /// the same actor.
    pub fn get_or_create(self) -> Result<H> {
        if self.options.name.is_none() {
            return Err(Error::InvalidArgument("get_or_create needs a name".into()));
        }
        let args = self.args?;
        declare_held(&self.named);
        Ok(H::from_id(wit::get_or_create(H::CLASS, &args, &self.options)?.into()))
    }
}

fn declare_held(named: &[crate::object::Handle]) {
    let ids: Vec<crate::ObjectId> = named.iter().map(|handle| handle.id()).collect();
    crate::object::declare(&ids);
}

/// An actor as its instance holds it.
pub trait ActorObject {
    /// Runs a method.
    fn dispatch(&mut self, method: &str, args: &[u8], encoding: crate::__private::Encoding) -> Result<Vec<u8>>;
    /// The state, encoded.
    fn snapshot(&self) -> Result<Vec<u8>>;
}

/// Builds an actor from encoded constructor arguments.
pub type Construct = fn(&[u8], crate::__private::Encoding) -> Result<Box<dyn ActorObject>>;

/// Rebuilds an actor from a snapshot.
pub type Restore = fn(&[u8]) -> Result<Box<dyn ActorObject>>;

/// One registered actor class.
pub struct ActorClass {
    /// The class name.
    pub name: &'static str,
    /// Builds an actor from encoded constructor arguments.
    pub construct: Construct,
    /// Rebuilds an actor from a snapshot.
    pub restore: Restore,
}
inventory::collect!(ActorClass);

thread_local! {
    /// The actor this instance hosts, if any.
    static HOSTED: std::cell::RefCell<Option<Box<dyn ActorObject>>> = const { std::cell::RefCell::new(None) };
}

fn class(name: &str) -> Result<&'static ActorClass> {
    inventory::iter::<ActorClass>.into_iter().find(|c| c.name == name).ok_or_else(|| {
        let mut known: Vec<&str> = inventory::iter::<ActorClass>.into_iter().map(|c| c.name).collect();
        known.sort_unstable();
        Error::NotFound(format!("this component has no actor class `{name}` (it has: {})", known.join(", ")))
    })
}

pub(crate) fn construct(name: &str, args: &[u8], encoding: crate::__private::Encoding) -> Result<()> {
    let actor = (class(name)?.construct)(args, encoding)?;
    HOSTED.with(|hosted| *hosted.borrow_mut() = Some(actor));
    Ok(())
}

pub(crate) fn restore(name: &str, state: &[u8]) -> Result<()> {
    let actor = (class(name)?.restore)(state)?;
    HOSTED.with(|hosted| *hosted.borrow_mut() = Some(actor));
    Ok(())
}

fn with_hosted<R>(f: impl FnOnce(&mut dyn ActorObject) -> Result<R>) -> Result<R> {
    HOSTED.with(|hosted| match hosted.borrow_mut().as_deref_mut() {
        Some(actor) => f(actor),
        None => Err(Error::Internal("this instance hosts no actor".into())),
    })
}

pub(crate) fn dispatch(method: &str, args: &[u8], encoding: crate::__private::Encoding) -> Result<Vec<u8>> {
    with_hosted(|actor| actor.dispatch(method, args, encoding))
}

pub(crate) fn snapshot() -> Result<Vec<u8>> {
    with_hosted(|actor| actor.snapshot())
}

//! The fabric guest SDK: write tasks in Rust, build them to a WebAssembly
//! component with `cargo build --target wasm32-wasip2 --release`, and run them
//! with `fabric submit`.
//!
//! ```ignore
//! #[fabric::task]
//! fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! #[fabric::task]
//! fn main(n: i64) -> fabric::Result<i64> {
//!     let refs = (0..n).map(|i| add.remote(i, i)).collect::<fabric::Result<Vec<_>>>()?;
//!     Ok(fabric::get_all(&refs)?.into_iter().sum())
//! }
//! ```
//!
//! - [`task`] turns a function into a task with `remote`, `remote_with` and
//!   `local` handles, and registers it in this component's dispatch table.
//! - [`ObjectRef`] is a typed reference to an object in the fabric's store: a
//!   task's future result, or a value [`put`] there. References serialize, so
//!   they can be passed to other tasks or stored inside objects. They are
//!   counted: an object lives while a reference to it does (in a task, a
//!   pending task's arguments or another object) and at most until its job
//!   ends.
//! - [`ArrayRef`] stores a slice of numbers as raw little-endian bytes, so a
//!   task can read a sub-range without copying the whole array in.
//! - [`put_archived`] stores a value archived with rkyv; [`ArchivedRef::get`]
//!   checks it once and reads its fields in place, without decoding it.
//! - Arguments from the command line or HTTP are JSON; between tasks they use
//!   postcard, a compact binary encoding.
#![warn(missing_docs)]

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "fabric:core/task",
        generate_all,
    });
}

mod actor;
mod archived;
mod error;
mod object;

pub use actor::{ActorBuilder, ActorHandle, ActorId};
pub use archived::{put_archived, Archivable, ArchivedArchivedRef, ArchivedRef, ArchivedValue};
pub use error::{Error, Result};
pub use fabric_sdk_macros::{actor, task};
pub use object::{
    get_all, put, put_array, put_bytes, wait, ArchivedArrayRef, ArchivedObjectId, ArchivedObjectRef, ArrayRef, Element,
    ObjectId, ObjectRef, ObjectWriter, ReadyAndPending,
};
/// The rkyv version values for [`put_archived`] derive with:
/// `#[derive(fabric::rkyv::Archive, fabric::rkyv::Serialize, fabric::rkyv::Deserialize)]`
/// and `#[rkyv(crate = fabric::rkyv)]`.
pub use rkyv;

use bindings::fabric::core::{log as wit_log, tasks as wit_tasks};
use std::time::Duration;

/// Options for one submitted task; unset fields take the host's defaults.
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// Run a function of another component (sha256 hex) instead of this one.
    pub component: Option<String>,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// CPU budget of guest execution.
    pub cpu: Option<Duration>,
    /// Linear memory cap in bytes.
    pub memory_bytes: Option<u64>,
    /// Resources held while the task runs; none holds one `cpu`.
    pub resources: Vec<(String, u64)>,
    /// The pool the task's host must belong to.
    pub pool: Option<String>,
    /// Labels the task's host must carry.
    pub labels: Vec<(String, String)>,
    /// How to choose among hosts that fit.
    pub strategy: Option<Strategy>,
    /// Runs elsewhere if the host is lost, this many times (default 3).
    pub retries: Option<u32>,
}

/// How a task is spread over the hosts that can take it.
pub use bindings::fabric::core::tasks::Strategy;

impl TaskOptions {
    /// Sets the wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the CPU budget.
    pub fn cpu(mut self, cpu: Duration) -> Self {
        self.cpu = Some(cpu);
        self
    }
    /// Sets the memory cap.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }
    /// Runs the function from another component, named by its sha256 hex.
    pub fn component(mut self, sha256: impl Into<String>) -> Self {
        self.component = Some(sha256.into());
        self
    }
    /// Holds `amount` of resource `name` (`cpu`, `gpu`, `memory`, custom).
    pub fn resource(mut self, name: impl Into<String>, amount: u64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }
    /// Runs on a host of pool `name`.
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = Some(name.into());
        self
    }
    /// Runs on a host labelled `key=value`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
    /// Chooses among fitting hosts this way.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }
    /// Runs elsewhere up to `n` times if its host is lost.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }
}

/// What the calling task is part of.
#[derive(Clone, Debug)]
pub struct Context {
    /// The tenant the job runs for.
    pub tenant: String,
    /// The job's id.
    pub job: String,
    /// sha256 hex of this component.
    pub component: String,
    /// The id of the host running this task.
    pub host: String,
}

/// The tenant, job, component and host of the calling task.
pub fn context() -> Context {
    let c = wit_tasks::context();
    Context { tenant: c.tenant, job: c.job, component: c.component, host: c.host }
}

/// A task deployment of the caller's tenant, called through the fabric
/// rather than over HTTP (see [`deployment`]).
#[derive(Clone, Debug)]
pub struct Deployment {
    name: String,
}

/// The task deployment `name` of the caller's tenant: how one deployment
/// calls another in a deployment graph.
///
/// ```ignore
/// let tokens: Vec<String> = fabric::deployment("preprocess").call("clean", &(text,))?.get()?;
/// ```
pub fn deployment(name: impl Into<String>) -> Deployment {
    Deployment { name: name.into() }
}

impl Deployment {
    /// Queues `function` of the deployment (its version serving now, under
    /// its limits and resource demand) and returns at once a reference to
    /// its result. `args` encode as the function's parameters in order: a
    /// tuple `(a, b)` for `fn f(a: A, b: B)`, or a struct with the same
    /// fields in the same order.
    pub fn call<A: serde::Serialize, T>(&self, function: &str, args: &A) -> Result<ObjectRef<T>> {
        let bytes = crate::object::encode_declared(args).map_err(|e| {
            Error::InvalidArgument(format!("cannot encode arguments of `{}/{function}`: {e}", self.name))
        })?;
        let id = bindings::fabric::core::tasks::call_deployment(&self.name, function, &bytes)?;
        Ok(ObjectRef::adopt(id.into()))
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Log levels for [`log`].
pub use wit_log::Level;

/// Writes a line to the job's log. (`println!` goes there too.)
pub fn log(level: Level, message: impl AsRef<str>) {
    wit_log::log(level, message.as_ref());
}

/// Machinery the `#[task]` macro expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{ActorClass, ActorObject};
    pub use crate::bindings::fabric::core::types::Encoding;
    pub use inventory;
    pub use serde;

    use crate::{bindings, Error, ObjectRef, Result, TaskOptions};
    use serde::{de::DeserializeOwned, Serialize};

    /// One registered task.
    pub struct TaskEntry {
        /// The name it is dispatched by.
        pub name: &'static str,
        /// Decodes arguments, runs, encodes the result.
        pub dispatch: fn(&[u8], Encoding) -> Result<Vec<u8>>,
    }
    inventory::collect!(TaskEntry);

    /// Decodes a task's argument struct from either encoding.
    pub fn decode_args<A: DeserializeOwned>(task: &str, bytes: &[u8], encoding: Encoding) -> Result<A> {
        let decoded = match encoding {
            Encoding::Json => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| Error::InvalidArgument(format!("arguments of `{task}` are not UTF-8: {e}")))?;
                let text = text.trim();
                // No arguments at all means "no parameters".
                let text = if text.is_empty() || text == "null" { "{}" } else { text };
                serde_json::from_str(text).map_err(|e| e.to_string())
            }
            Encoding::Binary => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        };
        decoded.map_err(|e| Error::InvalidArgument(format!("bad arguments for `{task}`: {e}")))
    }

    /// Encodes a task's result in the encoding its arguments came in.
    /// The objects the result names are declared: they live until the job
    /// ends, since the result goes where the host cannot count them.
    pub fn encode_result<T: Serialize>(value: &T, encoding: Encoding) -> Result<Vec<u8>> {
        declaring(|| {
            match encoding {
                Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
                Encoding::Binary => postcard::to_stdvec(value).map_err(|e| e.to_string()),
            }
            .map_err(|e| Error::Internal(format!("cannot encode the result: {e}")))
        })
    }

    /// Submits a registered task of this (or another) component.
    pub fn submit<A: Serialize, T>(name: &str, args: &A, options: &TaskOptions) -> Result<ObjectRef<T>> {
        let bytes = crate::object::encode_declared(args)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode arguments of `{name}`: {e}")))?;
        let wit_options = bindings::fabric::core::tasks::TaskOptions {
            component: options.component.clone(),
            timeout_ms: options.timeout.map(|d| d.as_millis() as u64),
            cpu_ms: options.cpu.map(|d| d.as_millis() as u64),
            memory_bytes: options.memory_bytes,
            resources: options.resources.clone(),
            pool: options.pool.clone(),
            labels: options.labels.clone(),
            strategy: options.strategy,
            retries: options.retries,
        };
        let id = bindings::fabric::core::tasks::submit(name, &bytes, &wit_options)?;
        Ok(ObjectRef::adopt(id.into()))
    }

    /// Queues a call of an actor's method.
    pub fn actor_call<A: Serialize, T>(actor: crate::ActorId, method: &str, args: &A) -> Result<ObjectRef<T>> {
        let bytes = crate::object::encode_declared(args)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode arguments of `{method}`: {e}")))?;
        let id = bindings::fabric::core::actors::call(actor.into(), method, &bytes)?;
        Ok(ObjectRef::adopt(id.into()))
    }

    /// An actor's state as a snapshot: its serde serialization (postcard).
    /// What the state names lives until the job ends (the snapshot may
    /// restart the actor).
    pub fn snapshot_state<S: Serialize>(state: &S) -> Result<Vec<u8>> {
        declaring(|| {
            postcard::to_stdvec(state).map_err(|e| Error::Internal(format!("cannot encode the actor's state: {e}")))
        })
    }

    /// Runs a custom snapshot and declares what its encoding names (as
    /// [`snapshot_state`] does).
    pub fn declaring(snapshot: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        crate::object::declared(snapshot)
    }

    /// An actor's state from a snapshot.
    pub fn restore_state<S: DeserializeOwned>(snapshot: &[u8]) -> Result<S> {
        postcard::from_bytes(snapshot)
            .map_err(|e| Error::InvalidArgument(format!("the snapshot does not decode as the actor's state: {e}")))
    }

    /// An array reference with a claimed length (tests use it to reach the
    /// host's own bounds checks).
    pub fn array_ref<T>(id: crate::ObjectId, len: u64) -> crate::ArrayRef<T> {
        crate::object::ArrayRef::from_parts(id, len)
    }

    /// Turns what a task returned as its error into a fabric error: an
    /// [`Error`] passes through unchanged (a child's trap stays a trap), any
    /// other error becomes [`Error::Failed`] with its message.
    pub fn to_error<E: std::fmt::Display + 'static>(err: E) -> Error {
        match (&err as &dyn std::any::Any).downcast_ref::<Error>() {
            Some(fabric_error) => fabric_error.clone(),
            None => Error::Failed(err.to_string()),
        }
    }
}

struct Dispatcher;

impl bindings::Guest for Dispatcher {
    fn dispatch(
        name: String,
        args: Vec<u8>,
        encoding: bindings::fabric::core::types::Encoding,
    ) -> std::result::Result<Vec<u8>, bindings::fabric::core::types::Error> {
        // References a reused instance kept from an earlier task were let go
        // when that task ended.
        object::next_task();
        let entry = inventory::iter::<__private::TaskEntry>.into_iter().find(|entry| entry.name == name);
        match entry {
            Some(entry) => (entry.dispatch)(&args, encoding).map_err(Into::into),
            None => {
                let mut known: Vec<&str> =
                    inventory::iter::<__private::TaskEntry>.into_iter().map(|e| e.name).collect();
                known.sort_unstable();
                Err(Error::NotFound(format!("this component has no task `{name}` (it has: {})", known.join(", ")))
                    .into())
            }
        }
    }

    fn functions() -> Vec<String> {
        inventory::iter::<__private::TaskEntry>.into_iter().map(|e| e.name.to_string()).collect()
    }

    fn actor_construct(
        class: String,
        args: Vec<u8>,
        encoding: bindings::fabric::core::types::Encoding,
    ) -> std::result::Result<(), bindings::fabric::core::types::Error> {
        actor::construct(&class, &args, encoding).map_err(Into::into)
    }

    fn actor_dispatch(
        method: String,
        args: Vec<u8>,
        encoding: bindings::fabric::core::types::Encoding,
    ) -> std::result::Result<Vec<u8>, bindings::fabric::core::types::Error> {
        actor::dispatch(&method, &args, encoding).map_err(Into::into)
    }

    fn actor_snapshot() -> std::result::Result<Vec<u8>, bindings::fabric::core::types::Error> {
        actor::snapshot().map_err(Into::into)
    }

    fn actor_restore(class: String, state: Vec<u8>) -> std::result::Result<(), bindings::fabric::core::types::Error> {
        actor::restore(&class, &state).map_err(Into::into)
    }
}

bindings::export!(Dispatcher with_types_in bindings);

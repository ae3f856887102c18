//! Components: stored content-addressed, compiled once per host.
//!
//! - A component is named by the sha256 of its bytes. Uploads are verified
//!   against the name the client claims, and checked (header, compile, link)
//!   before they are accepted, so a bad `.wasm` is refused at submit time
//!   with a message saying what is wrong with it.
//! - Each tenant sees only components it uploaded (the same bytes uploaded by
//!   two tenants are stored once per tenant but compiled once).
//! - Compiled artifacts are cached on disk under a directory named for the
//!   engine's compatibility hash, so an upgrade of wasmtime or a change of
//!   engine settings never loads a stale artifact; loading one costs well
//!   under a millisecond against ~100 ms to compile.
//! - In memory each component is kept pre-linked ([`World`]): imports
//!   resolved once, so instantiating costs microseconds. A component is
//!   either a fabric task component (the `fabric:core/task` world) or a
//!   standard `wasi:http/proxy` one, told apart by its exports at load.

use crate::hostfns::bindings::TaskPre;
use crate::sandbox::TaskState;
use fabric_proto::{DeploymentKind, ErrorKind, FabricError};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A component ready to instantiate.
pub struct LoadedComponent {
    /// sha256 hex of its bytes.
    pub sha256: String,
    /// Pre-linked: instantiation only allocates and initializes.
    pub world: World,
}

/// Which world a component targets, pre-linked for it.
pub enum World {
    /// Built with the fabric SDK: tasks and actors.
    Task(TaskPre<TaskState>),
    /// Exports `wasi:http/incoming-handler`.
    Http(ProxyPre<TaskState>),
}

impl LoadedComponent {
    /// The task world's pre-instance; an error for an HTTP handler, which
    /// runs only behind the gateway.
    pub fn task(&self) -> Result<&TaskPre<TaskState>, FabricError> {
        match &self.world {
            World::Task(pre) => Ok(pre),
            World::Http(_) => Err(FabricError::new(
                ErrorKind::InvalidArgument,
                "this component is a wasi:http handler, not a task component: serve it with `fabric deploy`",
            )),
        }
    }

    /// How a deployment of this component is called.
    pub fn kind(&self) -> DeploymentKind {
        match &self.world {
            World::Task(_) => DeploymentKind::Tasks,
            World::Http(_) => DeploymentKind::Http,
        }
    }
}

/// The host's components.
pub struct Components {
    engine: Engine,
    linker: Linker<TaskState>,
    /// `<data>/components/<tenant>/<sha256>.wasm`, or none when not persisting.
    store_dir: Option<PathBuf>,
    /// `<data>/cache/<engine hash>/<sha256>.cwasm`.
    cache_dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loaded: HashMap<String, Arc<LoadedComponent>>,
    owners: HashSet<(String, String)>,
}

/// sha256 hex of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Components {
    /// Components for `engine`, stored under `data_dir` when `persist`.
    pub fn new(engine: Engine, linker: Linker<TaskState>, data_dir: &Path, persist: bool) -> std::io::Result<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_dir = data_dir.join("cache").join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&cache_dir)?;
        let store_dir = persist.then(|| data_dir.join("components"));
        Ok(Components { engine, linker, store_dir, cache_dir, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stored_path(&self, tenant: &str, sha256: &str) -> Option<PathBuf> {
        self.store_dir.as_ref().map(|dir| dir.join(tenant).join(format!("{sha256}.wasm")))
    }

    /// Whether `tenant` has component `sha256`.
    pub fn has(&self, tenant: &str, sha256: &str) -> bool {
        if !is_sha256(sha256) {
            return false;
        }
        if self.lock().owners.contains(&(tenant.to_string(), sha256.to_string())) {
            return true;
        }
        self.stored_path(tenant, sha256).is_some_and(|p| p.exists())
    }

    /// Checks, compiles and stores `bytes` for `tenant`; `claimed` is the
    /// sha256 the uploader says they hash to.
    pub async fn add(
        &self,
        tenant: &str,
        bytes: Vec<u8>,
        claimed: Option<&str>,
    ) -> Result<Arc<LoadedComponent>, FabricError> {
        let sha256 = sha256_hex(&bytes);
        if let Some(claimed) = claimed {
            if claimed != sha256 {
                return Err(FabricError::new(
                    ErrorKind::InvalidArgument,
                    format!("upload corrupted: bytes hash to {sha256}, not {claimed}"),
                ));
            }
        }
        check_header(&bytes)?;
        let loaded = self.load(&sha256, Some(&bytes)).await?;
        if let Some(path) = self.stored_path(tenant, &sha256) {
            write_atomic(&path, &bytes).map_err(|e| internal(format!("cannot store component: {e}")))?;
        }
        self.lock().owners.insert((tenant.to_string(), sha256));
        Ok(loaded)
    }

    /// The bytes of component `sha256` of `tenant` (for a peer that lacks it).
    pub async fn bytes(&self, tenant: &str, sha256: &str) -> Result<Vec<u8>, FabricError> {
        let missing = || FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no component {sha256}"));
        if !self.has(tenant, sha256) {
            return Err(missing());
        }
        let path = self.stored_path(tenant, sha256).ok_or_else(missing)?;
        tokio::fs::read(&path).await.map_err(|e| internal(format!("cannot read component: {e}")))
    }

    /// Component `sha256` of `tenant`, loading it if needed.
    pub async fn get(&self, tenant: &str, sha256: &str) -> Result<Arc<LoadedComponent>, FabricError> {
        if !self.has(tenant, sha256) {
            return Err(FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no component {sha256}")));
        }
        if let Some(loaded) = self.lock().loaded.get(sha256) {
            return Ok(loaded.clone());
        }
        let bytes = match self.stored_path(tenant, sha256) {
            Some(path) => Some(std::fs::read(&path).map_err(|e| internal(format!("cannot read component: {e}")))?),
            None => None,
        };
        self.load(sha256, bytes.as_deref()).await
    }

    /// From memory, the disk cache, or by compiling `bytes`.
    async fn load(&self, sha256: &str, bytes: Option<&[u8]>) -> Result<Arc<LoadedComponent>, FabricError> {
        if let Some(loaded) = self.lock().loaded.get(sha256) {
            return Ok(loaded.clone());
        }
        let cached = self.cache_dir.join(format!("{sha256}.cwasm"));
        let component = match self.deserialize(&cached).await {
            Some(component) => component,
            None => {
                let bytes =
                    bytes.ok_or_else(|| internal(format!("component {sha256} is neither cached nor stored")))?;
                let component = self.compile(bytes.to_vec()).await?;
                if let Ok(artifact) = component.serialize() {
                    // A failed cache write only costs a recompile next time.
                    let _ = write_atomic(&cached, &artifact);
                }
                component
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            FabricError::new(
                ErrorKind::InvalidArgument,
                format!("the component imports something fabric does not provide: {e:#}"),
            )
        })?;
        let world = match TaskPre::new(pre.clone()) {
            Ok(task) => World::Task(task),
            Err(task_error) => match ProxyPre::new(pre) {
                Ok(proxy) => World::Http(proxy),
                Err(_) => {
                    return Err(FabricError::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "the component targets neither the fabric:core/task world (build it with the fabric \
                             SDK) nor wasi:http/proxy (export wasi:http/incoming-handler): {task_error:#}"
                        ),
                    ))
                }
            },
        };
        let loaded = Arc::new(LoadedComponent { sha256: sha256.to_string(), world });
        self.lock().loaded.insert(sha256.to_string(), loaded.clone());
        Ok(loaded)
    }

    async fn deserialize(&self, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        let engine = self.engine.clone();
        let path = path.to_path_buf();
        // SAFETY: the cache directory holds only artifacts this host wrote
        // with `Component::serialize`, under a directory keyed by the engine's
        // compatibility hash; a damaged file fails to deserialize and is
        // recompiled.
        let result = tokio::task::spawn_blocking(move || unsafe { Component::deserialize_file(&engine, &path) }).await;
        result.ok().and_then(Result::ok)
    }

    async fn compile(&self, bytes: Vec<u8>) -> Result<Component, FabricError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| internal(format!("compiler task failed: {e}")))?
            .map_err(|e| FabricError::new(ErrorKind::InvalidArgument, format!("invalid WebAssembly component: {e:#}")))
    }
}

/// Refuses what is plainly not a component, with a message that says why.
fn check_header(bytes: &[u8]) -> Result<(), FabricError> {
    let invalid = |m: &str| Err(FabricError::new(ErrorKind::InvalidArgument, m.to_string()));
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return invalid("not a WebAssembly file (it does not start with the \\0asm header)");
    }
    match &bytes[4..8] {
        [1, 0, 0, 0] => invalid(
            "this is a core WebAssembly module, not a component: build it with \
             `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)",
        ),
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        _ => invalid("unsupported WebAssembly binary version (expected a component, layer 1)"),
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn internal(message: String) -> FabricError {
    FabricError::new(ErrorKind::Internal, message)
}

/// Writes via a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A name unique to this write: concurrent uploads of the same component
    // each write their own file, and the last rename wins with equal bytes.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

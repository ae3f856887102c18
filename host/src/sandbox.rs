//! The wasmtime sandbox every task runs in.
//!
//! - One [`Engine`] per host: component model, async (guests suspend while a
//!   host call waits, without holding an OS thread), the pooling allocator
//!   (an instance costs microseconds: its memory slot is reused), and epoch
//!   interruption for CPU bounds.
//! - An epoch ticker on a dedicated OS thread: as a tokio task it would never
//!   run once every worker is inside guest code.
//! - Per instance ([`TaskState`]): a memory cap enforced by [`MemoryCap`], a
//!   CPU budget counted in epoch ticks in which the guest actually ran (the
//!   deadline callback fires only while guest code executes, so time spent
//!   suspended in host calls is not charged), and a yield at every tick so a
//!   spinning guest cannot hog a tokio worker or ignore cancellation.
//! - WASI p2 with nothing granted: no preopened directories, no network, no
//!   environment or arguments. Stdout and stderr go to the job's log.
//!
//! [`classify`] turns whatever a call failed with into a typed
//! [`FabricError`] for the caller.

use crate::hostfns::TaskContext;
use crate::joblog::LogStream;
use fabric_proto::{ErrorKind, FabricError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How often the epoch advances: the granularity of CPU budgets and of
/// yielding to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The largest linear memory any instance may have (the wasm32 maximum).
const MAX_MEMORY: usize = 4 << 30;

/// Builds the host's engine.
pub fn engine(max_instances: u32) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = max_instances.max(16);
    pool.total_component_instances(instances)
        // A Rust component has a few core instances (its module, WASI adapter
        // shims); leave room for more.
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(MAX_MEMORY)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        // Reset the first 2 MiB of a freed memory with memset instead of
        // madvise: a Rust guest's stack and data live there, and faulting
        // them back in costs the next instance more than the memset (which
        // runs on the reaper thread when it keeps up).
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(16 << 10)
        // Batch the madvise calls that reset freed memories: one syscall
        // (and TLB shootdown) per batch instead of per instance.
        .decommit_batch_size(64);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20);
    Engine::new(&config)
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread.
    pub fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("fabric-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?
        };
        Ok(EpochTicker { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Caps an instance's linear memory (and table) growth.
pub struct MemoryCap {
    /// Bytes any one memory may grow to.
    pub memory_bytes: u64,
}

/// Raised when a guest tries to grow past its memory cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: the task tried to grow its memory to {desired} bytes; its cap is {cap} bytes")]
pub struct MemoryLimitExceeded {
    desired: usize,
    cap: u64,
}

/// Raised from the epoch callback when a task's CPU budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("CPU budget of {budget:?} exhausted")]
pub struct CpuBudgetExhausted {
    /// The budget that ran out.
    pub budget: Duration,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            // An error (not `Ok(false)`) traps at once with this message,
            // instead of the guest's allocator aborting with `unreachable`.
            return Err(MemoryLimitExceeded { desired, cap: self.memory_bytes }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The data of one instance's store.
pub struct TaskState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// Object writers the guest holds (`objects.writer`), at most
    /// `objects::writer::MAX_OPEN_WRITERS`.
    pub(crate) open_writers: u32,
    /// The object references the guest holds.
    pub(crate) holds: crate::objects::holds::Holds,
    pub(crate) cap: MemoryCap,
    pub(crate) cpu_ticks: u64,
    pub(crate) cpu_budget_ticks: u64,
    /// The task the instance runs now; `None` while it idles in the pool.
    pub(crate) task: Option<TaskContext>,
    pub(crate) stdout: LogStream,
    pub(crate) stderr: LogStream,
    /// Whether the guest has constructed (or restored) its actor.
    pub(crate) hosts_actor: bool,
    /// `wasi:http` state, for components behind the gateway.
    pub(crate) http: WasiHttpCtx,
    http_hooks: NoOutgoingHttp,
}

/// `wasi:http` hooks that refuse outgoing requests: a guest gets no
/// network unless it is granted one (nothing grants it yet).
struct NoOutgoingHttp;

impl WasiHttpHooks for NoOutgoingHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> OutgoingResponse {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// What [`WasiHttpHooks::send_request`] answers.
type OutgoingResponse = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Default for TaskState {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskState {
    /// A store's data for a new instance (attached to a task before use).
    pub fn new() -> Self {
        let (stdout, stderr) = (LogStream::new(false), LogStream::new(true));
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        TaskState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            open_writers: 0,
            holds: Default::default(),
            cap: MemoryCap { memory_bytes: 0 },
            cpu_ticks: 0,
            cpu_budget_ticks: 0,
            task: None,
            stdout,
            stderr,
            hosts_actor: false,
            http: WasiHttpCtx::new(),
            http_hooks: NoOutgoingHttp,
        }
    }

    /// Points the instance at `task` with fresh limits: output to its job's
    /// log, a full CPU budget, its memory cap.
    pub fn attach(&mut self, task: TaskContext, memory_bytes: u64, cpu: Duration) {
        self.stdout.attach(task.job.log.clone());
        self.stderr.attach(task.job.log.clone());
        // The guest's references count in this task's store and tenant (an
        // actor's calls keep the same, so its references stay).
        self.holds.bind(&task.host.objects, &task.job.tenant);
        self.task = Some(task);
        self.set_limits(memory_bytes, cpu);
    }

    /// Sets the memory cap and a full CPU budget (also before instantiation,
    /// which allocates memory and may run start functions).
    pub fn set_limits(&mut self, memory_bytes: u64, cpu: Duration) {
        self.cap.memory_bytes = memory_bytes;
        self.cpu_ticks = 0;
        self.cpu_budget_ticks = (cpu.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64;
    }

    /// Lets go of the task (its slot, its job) while the instance idles.
    pub fn detach(&mut self) {
        // A task's references end with it; an actor keeps its own between
        // calls (they go when its instance does).
        if self.hosts_actor {
            self.holds.settle_declared();
        } else {
            self.holds.release_all();
        }
        self.task = None;
        self.stdout.detach();
        self.stderr.detach();
    }

    /// The task being run; an error if called on an idle instance, which
    /// cannot happen since idle instances run no guest code.
    pub(crate) fn task(&mut self) -> Result<&mut TaskContext, FabricError> {
        self.task.as_mut().ok_or_else(|| FabricError::new(ErrorKind::Internal, "host call from an idle instance"))
    }

    /// The end of what the current task wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.tail_text()
    }
}

/// Configures a new `store`: the memory limiter, CPU accounting and yielding.
/// Per-task values live in [`TaskState`] and are reset by [`TaskState::attach`].
pub fn arm(store: &mut wasmtime::Store<TaskState>) {
    store.limiter(|state| &mut state.cap);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        state.cpu_ticks += 1;
        if state.cpu_ticks > state.cpu_budget_ticks {
            let budget = EPOCH_TICK * u32::try_from(state.cpu_budget_ticks).unwrap_or(u32::MAX);
            return Err(CpuBudgetExhausted { budget }.into());
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    });
}

/// Turns the error a guest call failed with into a typed error. `stderr_tail`
/// is the end of what the task wrote to stderr (a panic message).
pub fn classify(err: wasmtime::Error, stderr_tail: &str) -> FabricError {
    if let Some(e) = err.downcast_ref::<MemoryLimitExceeded>() {
        return FabricError::new(ErrorKind::ResourceLimit, e.to_string());
    }
    if let Some(e) = err.downcast_ref::<CpuBudgetExhausted>() {
        return FabricError::new(ErrorKind::TimedOut, e.to_string());
    }
    if let Some(e) = err.downcast_ref::<FabricError>() {
        return e.clone();
    }
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        let what = match trap {
            wasmtime::Trap::StackOverflow => "stack overflow".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "the guest aborted (unreachable; a Rust panic ends here)".to_string()
            }
            wasmtime::Trap::MemoryOutOfBounds => "out-of-bounds memory access".to_string(),
            wasmtime::Trap::IntegerDivisionByZero => "integer division by zero".to_string(),
            other => other.to_string(),
        };
        let tail = stderr_tail.trim();
        let message = if tail.is_empty() { what } else { format!("{what}; stderr: {tail}") };
        return FabricError::new(ErrorKind::Trapped, message);
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return FabricError::new(ErrorKind::Trapped, format!("the guest called exit({})", exit.0));
    }
    let message = format!("{err:#}");
    if message.contains("fuel allocated for hostcalls") {
        return FabricError::new(
            ErrorKind::ResourceLimit,
            "a host call tried to copy more data out of the guest than the host allows for one object",
        );
    }
    FabricError::new(ErrorKind::Trapped, message)
}

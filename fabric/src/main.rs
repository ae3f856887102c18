//! `fabric`: run a node, submit jobs, inspect them.

/// glibc's allocator serializes the host's many small allocations across
/// threads on its arena locks (the largest cost in a task-throughput
/// profile); mimalloc keeps them thread-local.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fabric::client::{addr_file, http_addr_file, resolve_addr, Client, HostError, SubmitEvent, Submitted};
use fabric::output::{error_json, job_json, job_line, result_text};
use fabric_host::{Host, HostConfig, JobRecord, JobState, SubmitRequest, TaskLimits};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fabric", version, about = "A WebAssembly-sandboxed compute fabric")]
struct Cli {
    /// Where hosts keep their state and clients find them.
    #[arg(long, global = true, env = "FABRIC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The tenant to act for.
    #[arg(long, global = true, env = "FABRIC_TENANT", default_value = fabric_proto::DEFAULT_TENANT)]
    tenant: String,
    /// The host to talk to (default: the one `fabric up` recorded in the data dir).
    #[arg(long, global = true, env = "FABRIC_HOST")]
    host: Option<String>,
    /// etcd endpoints (comma-separated `http://host:port`): hosts keep the
    /// registry there; clients find a host and the cluster's certificate there.
    #[arg(long, global = true, env = "FABRIC_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a one-host fabric with the embedded registry, serving clients over QUIC.
    Up(UpArgs),
    /// Run a host that joins the cluster registered in etcd (`--etcd`).
    Host(HostArgs),
    /// List the cluster's hosts: resources, load, pool and labels.
    Hosts(OutputArgs),
    /// Submit a job to a running host; stream its log and print its result.
    Submit(SubmitArgs),
    /// Run a job in this process, with no daemon (same code path as a host).
    Run(JobArgs),
    /// List the tenant's jobs.
    Jobs(OutputArgs),
    /// Show one job.
    Status {
        /// The job's id.
        job: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print a job's log.
    Logs {
        /// The job's id.
        #[arg(required_unless_present = "deployment")]
        job: Option<String>,
        /// Keep printing until the job ends (for a deployment: until it is
        /// removed, or interrupted).
        #[arg(long, short)]
        follow: bool,
        /// Show a deployment's log instead (its instances' output, or what
        /// its /v1/call calls printed, and failed requests): the last MiB of
        /// each host's, under a line naming it.
        #[arg(long, conflicts_with = "job")]
        deployment: Option<String>,
    },
    /// Stop a job.
    Stop {
        /// The job's id.
        job: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the tenant's actors.
    Actors(OutputArgs),
    /// Show the tenant's objects on every host: count and bytes per job
    /// (pinned objects whose job ended under `(pinned)`).
    Objects(OutputArgs),
    /// Let a pinned object go: freed now if its job has ended (and what it
    /// names with it), else when nothing refers to it any more.
    Unpin {
        /// The object's id (32 hex digits).
        id: String,
    },
    /// Write an object's bytes (32 hex digits of id) to a file or stdout,
    /// waiting until it is ready; any host reads any host's object. An
    /// object outlives its job only if pinned.
    Get {
        /// The object's id (32 hex digits).
        id: String,
        /// Where to write the bytes (`-`: stdout, the default unless it is
        /// a terminal).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Call or kill a named actor.
    Actor {
        #[command(subcommand)]
        command: ActorCommand,
    },
    /// Serve a component over HTTP on every host: a wasi:http handler under
    /// a route, or SDK tasks as POST /v1/call/NAME/FUNCTION. Deploying a
    /// name again rolls out a new version with no failed request.
    Deploy(DeployArgs),
    /// List the tenant's deployments and their replicas on every host.
    Deployments(OutputArgs),
    /// Remove a deployment; requests in flight finish.
    Undeploy {
        /// The deployment's name.
        name: String,
    },
    /// Send a request through a host's HTTP gateway and print the answer.
    Call(CallArgs),
}

#[derive(Args)]
struct DeployArgs {
    /// The component (.wasm).
    wasm: PathBuf,
    /// The deployment's name (default: the file's name without .wasm).
    #[arg(long)]
    name: Option<String>,
    /// The path prefix a wasi:http component serves under, like /hello.
    #[arg(long)]
    route: Option<String>,
    /// Replicas kept warm on each host, even when idle.
    #[arg(long, default_value_t = fabric_host::deployments::defaults::MIN)]
    min: u32,
    /// Replicas at most on each host.
    #[arg(long, default_value_t = fabric_host::deployments::defaults::MAX)]
    max: u32,
    /// Requests in flight per replica the autoscaler aims for.
    #[arg(long, default_value_t = fabric_host::deployments::defaults::TARGET_CONCURRENCY)]
    target_concurrency: u32,
    /// Seconds of lower load before replicas are let go.
    #[arg(long, default_value_t = fabric_host::deployments::defaults::SCALE_DOWN_DELAY_MS as f64 / 1000.0)]
    scale_down_delay: f64,
    /// A fresh instance for every request (no state survives a request).
    #[arg(long)]
    isolate: bool,
    /// Largest request body accepted, in KiB (larger gets 413).
    #[arg(long, default_value_t = fabric_host::deployments::defaults::MAX_BODY_BYTES >> 10)]
    max_body_kib: u64,
    /// Seconds a request may take (then 504).
    #[arg(long, default_value_t = fabric_host::deployments::defaults::TIMEOUT_MS as f64 / 1000.0)]
    timeout: f64,
    /// CPU seconds one request may use (default: the timeout).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory cap per instance, in MiB.
    #[arg(long, default_value_t = fabric_host::deployments::defaults::MEMORY_BYTES >> 20)]
    memory: u64,
    /// What each replica needs from its host, like gpu=1 or cpu=2,memory=4G
    /// (hosts without it forward the deployment's requests to hosts with it).
    #[arg(long, default_value = "")]
    resources: String,
    /// A task deployment's batch function: /v1/call requests to it are
    /// gathered into one call that takes their arguments as a list.
    #[arg(long = "batch")]
    batch_function: Option<String>,
    /// Requests in one batch at most.
    #[arg(long, default_value_t = 16, requires = "batch_function")]
    max_batch_size: u32,
    /// Milliseconds the first request of a batch waits for more.
    #[arg(long, default_value_t = 10, requires = "batch_function")]
    batch_wait_ms: u64,
    /// The pool replicas' hosts must belong to.
    #[arg(long)]
    pool: Option<String>,
    /// A `key=value` label replicas' hosts must carry (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct CallArgs {
    /// A deployment's name, or a path on the gateway (/hello/world).
    target: String,
    /// The request body: JSON arguments for a task deployment.
    #[arg(long)]
    data: Option<String>,
    /// The task to call, for a task deployment.
    #[arg(long = "fn", default_value = "main")]
    function: String,
    /// The HTTP method (default: POST with --data or for a task, else GET).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// Print the status line and headers before the body.
    #[arg(long, short)]
    include: bool,
}

#[derive(Subcommand)]
enum ActorCommand {
    /// Call a method with JSON arguments and print its JSON result.
    Call {
        /// The actor's name (or id).
        name: String,
        /// The method.
        method: String,
        /// JSON arguments: an object keyed by parameter name, or an array.
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// Kill the actor; its queued calls fail.
    Kill {
        /// The actor's name (or id).
        name: String,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Address to serve clients on.
    #[arg(long, default_value = fabric::client::DEFAULT_ADDR)]
    listen: String,
    /// Tasks that may run at once (default: CPU count).
    #[arg(long)]
    slots: Option<usize>,
    /// Threads that run the host's work, guest code included (default: CPU
    /// count). Hosts sharing a machine do better with a share of its cores
    /// each: their threads then wake each other less.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Largest object a task may create, in MiB.
    #[arg(long)]
    max_object_mib: Option<u64>,
    /// Object memory budget in MiB; past it the least recently used objects
    /// spill to disk (default: 30% of the machine's memory).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    object_memory_mib: Option<u64>,
    /// Objects one tenant may hold on this host, in MiB (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_tenant_object_mib: Option<u64>,
    /// Where objects spill (default: `spill` under the data directory).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Objects this host may keep on disk, in MiB (default: no limit); past
    /// it, puts over the memory budget fail with a resource-limit error.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_spill_mib: Option<u64>,
    /// Address of the HTTP gateway, or `off`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Seconds a stopping host lets running jobs, peers' tasks and HTTP
    /// requests finish before it cancels them (a second signal cuts it short).
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    drain_timeout: f64,
}

#[derive(Args)]
struct HostArgs {
    #[command(flatten)]
    serve: UpArgs,
    /// The address peers and clients dial (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Resources offered besides the slots: `gpu=1,memory=16G,NAME=N`
    /// (`cpu` overrides the slot count as declared to the cluster).
    #[arg(long, default_value = "")]
    resources: String,
    /// The pool this host belongs to.
    #[arg(long)]
    pool: Option<String>,
    /// A `key=value` label (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Seconds the membership outlives the host's last renewal.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    lease_ttl: f64,
    /// Seconds to wait at start for etcd to answer.
    #[arg(long, default_value_t = 60)]
    etcd_wait: u64,
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Args)]
struct OutputArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
struct JobArgs {
    /// The component (.wasm) to run.
    wasm: PathBuf,
    /// The function to call.
    #[arg(long = "fn", default_value = "main")]
    function: String,
    /// JSON arguments: an object keyed by parameter name, or an array.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Wall-clock limit per task, in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// CPU budget per task, in seconds.
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory cap per task instance, in MiB.
    #[arg(long)]
    memory: Option<u64>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Return once the job is accepted.
    #[arg(long)]
    detach: bool,
}

impl JobArgs {
    fn limits(&self) -> TaskLimits {
        let ms = |s: f64| (s * 1000.0).round().max(1.0) as u64;
        TaskLimits {
            timeout_ms: self.timeout.map(ms),
            cpu_ms: self.cpu.map(ms),
            memory_bytes: self.memory.map(|mib| mib << 20),
        }
    }

    fn read_wasm(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.wasm).with_context(|| format!("cannot read {}", self.wasm.display()))
    }
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("fabric")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FABRIC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let workers = match &cli.command {
        Command::Up(serve) | Command::Host(HostArgs { serve, .. }) => serve.workers,
        _ => None,
    };
    if let Some(workers) = workers {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let output = match &cli.command {
        Command::Submit(a) => a.job.output.output,
        Command::Run(a) => a.output.output,
        Command::Deploy(a) => a.output.output,
        Command::Jobs(o)
        | Command::Deployments(o)
        | Command::Actors(o)
        | Command::Objects(o)
        | Command::Hosts(o)
        | Command::Status { output: o, .. }
        | Command::Stop { output: o, .. } => o.output,
        _ => Output::Text,
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // A job that never started still answers in the promised shape.
            let host_error = err.downcast_ref::<HostError>().map(|e| e.0.clone());
            match (output, host_error) {
                (Output::Json, Some(e)) => {
                    println!("{}", serde_json::json!({ "job": null, "state": "rejected", "error": error_json(&e) }))
                }
                (Output::Json, None) => println!(
                    "{}",
                    serde_json::json!({ "job": null, "state": "rejected", "error": { "kind": "client", "message": format!("{err:#}") } })
                ),
                (Output::Text, _) => eprintln!("error: {err:#}"),
            }
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Up(args) => serve(&data_dir, &cli.etcd, args, None).await,
        Command::Host(args) => {
            if cli.etcd.is_empty() {
                anyhow::bail!("`fabric host` joins a cluster: give its etcd with --etcd URLS (or use `fabric up`)");
            }
            let membership = args.membership()?;
            serve(&data_dir, &cli.etcd, args.serve, Some(membership)).await
        }
        Command::Run(args) => run_local(&data_dir, &cli.tenant, args).await,
        command => {
            let client = if cli.etcd.is_empty() {
                let addr = resolve_addr(cli.host.as_deref(), &data_dir)?;
                Client::connect(&data_dir, addr, &cli.tenant).await?
            } else {
                Client::discover(&cli.etcd, cli.host.as_deref(), &cli.tenant).await?
            };
            remote(&client, command).await
        }
    }
}

/// `--resources`, `--pool` and `--label` flags as one demand.
fn demand(resources: &str, pool: Option<String>, labels: &[String]) -> anyhow::Result<fabric_proto::Demand> {
    use fabric_host::cluster::placement::{parse_label, parse_resources};
    let resources = parse_resources(resources).map_err(|e| anyhow::anyhow!("--resources: {}", e.message))?;
    let labels = labels
        .iter()
        .map(|l| parse_label(l).map_err(|e| anyhow::anyhow!("--label: {}", e.message)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(fabric_proto::Demand { resources, pool, labels, strategy: Default::default() })
}

/// What `fabric host` adds to `fabric up`'s settings.
struct Membership {
    advertise: Option<String>,
    etcd_wait: std::time::Duration,
    declared: fabric_host::cluster::Declared,
    lease_ttl: std::time::Duration,
}

impl HostArgs {
    fn membership(&self) -> anyhow::Result<Membership> {
        let fabric_proto::Demand { resources, labels, .. } = demand(&self.resources, None, &self.labels)?;
        if !(self.lease_ttl >= 1.0 && self.lease_ttl <= 3600.0) {
            anyhow::bail!("--lease-ttl must be between 1 and 3600 seconds");
        }
        Ok(Membership {
            advertise: self.advertise.clone(),
            etcd_wait: std::time::Duration::from_secs(self.etcd_wait),
            declared: fabric_host::cluster::Declared { resources, pool: self.pool.clone(), labels },
            lease_ttl: std::time::Duration::from_secs_f64(self.lease_ttl),
        })
    }
}

/// Runs a host until SIGINT/SIGTERM: `fabric up`, or with cluster settings
/// `fabric host`.
async fn serve(
    data_dir: &Path,
    etcd: &[String],
    args: UpArgs,
    membership: Option<Membership>,
) -> anyhow::Result<ExitCode> {
    let addr: std::net::SocketAddr =
        args.listen.parse().with_context(|| format!("invalid --listen address `{}`", args.listen))?;
    let mut config = HostConfig::new(data_dir);
    if let Some(slots) = args.slots {
        config.slots = slots.max(1);
    }
    if let Some(mib) = args.max_object_mib {
        config.max_object_bytes = mib_to_bytes("--max-object-mib", mib)?;
    }
    if let Some(mib) = args.object_memory_mib {
        config.object_memory_bytes = mib_to_bytes("--object-memory-mib", mib)?;
    }
    if let Some(mib) = args.max_tenant_object_mib {
        config.max_tenant_object_bytes = mib_to_bytes("--max-tenant-object-mib", mib)?;
    }
    if let Some(mib) = args.max_spill_mib {
        config.max_spill_bytes = mib_to_bytes("--max-spill-mib", mib)?;
    }
    config.spill_dir = args.spill_dir;
    config.etcd = etcd.to_vec();
    let mut advertise = None;
    let joins_cluster = membership.is_some();
    if let Some(m) = membership {
        if let Some(a) = &m.advertise {
            let parsed: std::net::SocketAddr =
                a.parse().with_context(|| format!("invalid --advertise address `{a}`"))?;
            config.advertise_names.push(parsed.ip().to_string());
            advertise = Some(parsed);
        }
        if let Some(cpu) = m.declared.resources.iter().find(|r| r.name == "cpu") {
            config.slots = (cpu.amount as usize).max(1);
        }
        config.declared = m.declared;
        config.lease_ttl = m.lease_ttl;
        config.etcd_wait = m.etcd_wait;
    }
    if addr.ip().is_unspecified() && joins_cluster && advertise.is_none() {
        anyhow::bail!("listening on {addr}: give the address peers should dial with --advertise");
    }
    if !addr.ip().is_unspecified() {
        config.advertise_names.push(addr.ip().to_string());
    }
    let host =
        Host::new(config).await.map_err(|e| e.context(format!("cannot start a host on {}", data_dir.display())))?;
    let endpoint = fabric_host::server::bind(&host, addr)?;
    let gateway = match args.http.as_str() {
        "off" => None,
        http => {
            let http_addr: std::net::SocketAddr =
                http.parse().with_context(|| format!("invalid --http address `{http}` (or `off`)"))?;
            let listener = fabric_host::gateway::bind(http_addr).await.with_context(|| {
                format!("cannot serve HTTP on {http_addr} (give another with --http ADDR, or --http off)")
            })?;
            let local = listener.local_addr()?;
            fabric_host::components::write_atomic(&http_addr_file(data_dir), local.to_string().as_bytes())?;
            eprintln!("fabric: HTTP gateway on http://{local}");
            Some(tokio::spawn(fabric_host::gateway::serve(host.clone(), listener)))
        }
    };
    let local = endpoint.local_addr()?;
    let mut reachable = advertise.unwrap_or(local);
    if reachable.ip().is_unspecified() {
        // A lone host (the only kind that gets here so) has no peers to dial
        // it: record the loopback address.
        let loopback: std::net::IpAddr =
            if local.is_ipv6() { std::net::Ipv6Addr::LOCALHOST.into() } else { std::net::Ipv4Addr::LOCALHOST.into() };
        reachable.set_ip(loopback);
    }
    fabric_host::components::write_atomic(&addr_file(data_dir), local.to_string().as_bytes())?;
    host.join(endpoint.clone(), &reachable.to_string());
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    eprintln!(
        "fabric: host {} listening on {local} with {workers} workers (data dir {})",
        host.id(),
        data_dir.display()
    );
    let server = tokio::spawn(fabric_host::server::serve(host.clone(), endpoint.clone()));
    let mut signals = Signals::new()?;
    signals.next().await;
    // The second signal cuts the drain short; a third exits at once.
    let cut_short = std::sync::Arc::new(tokio::sync::Notify::new());
    let cut = cut_short.clone();
    tokio::spawn(async move {
        signals.next().await;
        cut.notify_one();
        signals.next().await;
        eprintln!("fabric: stopping now");
        std::process::exit(130);
    });
    eprintln!("fabric: shutting down: draining for up to {}s (signal again to stop now)", args.drain_timeout);
    host.shutdown(std::time::Duration::from_secs_f64(args.drain_timeout), cut_short.notified()).await;
    endpoint.close(0u32.into(), b"host shutting down");
    // Let the peers hear it, rather than time the connections out.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    server.abort();
    if let Some(gateway) = gateway {
        gateway.abort();
    }
    let _ = std::fs::remove_file(addr_file(data_dir));
    let _ = std::fs::remove_file(http_addr_file(data_dir));
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for from the moment this is made (so a
/// signal that comes while the host is busy is not missed).
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `fabric run`: a host in this process, in memory but for the compile cache.
async fn run_local(data_dir: &Path, tenant: &str, args: JobArgs) -> anyhow::Result<ExitCode> {
    let wasm = args.read_wasm()?;
    let mut config = HostConfig::new(data_dir);
    config.persist = false;
    let host = Host::new(config).await?;
    let sha256 = host.add_component(tenant, wasm, None).await.map_err(HostError)?;
    let request = SubmitRequest {
        component: sha256,
        function: args.function.clone(),
        args: args.args.clone(),
        limits: args.limits(),
        detach: false,
    };
    let handle = host.submit(tenant, request).await.map_err(HostError)?;
    let record = handle.finish(print_log).await.context("the job ended without a record")?;
    Ok(finish(&record, args.output.output))
}

fn print_log(chunk: &[u8]) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(chunk);
    let _ = stderr.flush();
}

/// Prints a finished job; a failed one exits non-zero.
fn finish(record: &JobRecord, output: Output) -> ExitCode {
    match output {
        Output::Json => println!("{}", job_json(record)),
        Output::Text => match (&record.state, result_text(record), &record.error) {
            (JobState::Succeeded, Some(result), _) => println!("{result}"),
            (_, _, Some(error)) => {
                eprintln!("job {} {}: {error}", record.id, record.state.as_str())
            }
            _ => eprintln!("job {} {}", record.id, record.state.as_str()),
        },
    }
    match record.state {
        JobState::Succeeded => ExitCode::SUCCESS,
        JobState::Queued | JobState::Running => ExitCode::SUCCESS,
        JobState::Failed | JobState::Stopped => ExitCode::from(1),
    }
}

async fn remote(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Submit(args) => {
            let wasm = args.job.read_wasm()?;
            let submitted =
                client
                    .submit(&wasm, &args.job.function, &args.job.args, args.job.limits(), args.detach, |event| {
                        match event {
                            SubmitEvent::Uploaded(bytes) => eprintln!("fabric: uploaded component ({bytes} bytes)"),
                            SubmitEvent::Log(chunk) => print_log(chunk),
                        }
                    })
                    .await?;
            match submitted {
                Submitted::Accepted(job) => {
                    match args.job.output.output {
                        Output::Json => {
                            println!("{}", serde_json::json!({ "job": job, "state": "queued" }))
                        }
                        Output::Text => println!("{job}"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Submitted::Finished(record) => Ok(finish(&record, args.job.output.output)),
            }
        }
        Command::Jobs(output) => {
            let jobs = client.jobs().await?;
            match output.output {
                Output::Json => {
                    println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect()))
                }
                Output::Text => {
                    println!("{:<18} {:<10} {:<16} {:<12} {:>9}", "JOB", "STATE", "FUNCTION", "COMPONENT", "TOOK");
                    for job in &jobs {
                        println!("{}", job_line(job));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { job, output } => {
            let record = client.status(&job).await?;
            print_record(&record, output.output);
            Ok(ExitCode::from(if record.state == JobState::Failed { 1 } else { 0 }))
        }
        Command::Stop { job, output } => {
            let record = client.stop(&job).await?;
            print_record(&record, output.output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Actors(output) => {
            let actors = client.actors().await?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_value(&actors)?),
                Output::Text => {
                    println!(
                        "{:<20} {:<18} {:<8} {:>8} {:>8}  {:<18} {:<16}",
                        "NAME", "CLASS", "STATE", "CALLS", "RESTARTS", "OWNER", "HOST"
                    );
                    for a in &actors {
                        let name = a.name.clone().unwrap_or_else(|| a.id.chars().take(16).collect());
                        let owner = a.owner.clone().unwrap_or_else(|| "detached".to_string());
                        println!(
                            "{:<20} {:<18} {:<8} {:>8} {:>8}  {:<18} {:<16}",
                            name, a.class, a.state, a.calls, a.restarts, owner, a.host
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Objects(output) => {
            let stores = client.objects().await?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_value(&stores)?),
                Output::Text => print_objects(&stores),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unpin { id } => {
            client.unpin(&id).await?;
            println!("unpinned {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { id, out } => {
            let bytes = match out.as_deref() {
                Some(path) if path != Path::new("-") => get_to_file(client, &id, path).await?,
                None if std::io::stdout().is_terminal() => {
                    bail!("object {id} is raw bytes: pass --out FILE (or --out - to write them to the terminal)")
                }
                _ => {
                    let mut stdout = std::io::stdout().lock();
                    let bytes = client.get_object(&id, &mut stdout).await?;
                    stdout.flush().context("writing the object to stdout")?;
                    bytes
                }
            };
            eprintln!("{bytes} bytes of object {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Actor { command: ActorCommand::Call { name, method, args } } => {
            println!("{}", client.actor_call(&name, &method, &args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Actor { command: ActorCommand::Kill { name } } => {
            client.actor_kill(&name).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { deployment: Some(name), follow, .. } => {
            follow_deployment_logs(client, &name, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { job: Some(job), follow, .. } => {
            client
                .logs(&job, follow, |chunk| {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(chunk);
                    let _ = stdout.flush();
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { .. } => anyhow::bail!("give a job id, or --deployment NAME"),
        Command::Hosts(output) => {
            let hosts = client.hosts().await?;
            print_hosts(&hosts, output.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(args) => deploy(client, args).await,
        Command::Deployments(output) => {
            let all = client.deployments().await?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_value(&all)?),
                Output::Text => print_deployments(&all),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Undeploy { name } => {
            client.undeploy(&name).await?;
            eprintln!("fabric: undeployed {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Call(args) => call(client, args).await,
        Command::Up(_) | Command::Host(_) | Command::Run(_) => unreachable!("handled before connecting"),
    }
}

async fn deploy(client: &Client, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(&args.wasm).with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args.wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let seconds = |what: &str, s: f64| -> anyhow::Result<u64> {
        if !(s.is_finite() && s > 0.0) {
            anyhow::bail!("{what} must be a positive number of seconds");
        }
        Ok((s * 1000.0).round().max(1.0) as u64)
    };
    if !(args.scale_down_delay.is_finite() && args.scale_down_delay >= 0.0) {
        anyhow::bail!("--scale-down-delay must be zero or more seconds");
    }
    let spec = fabric_proto::DeploymentSpec {
        name,
        component: String::new(),
        route: args.route.clone(),
        min: args.min,
        max: args.max,
        target_concurrency: args.target_concurrency,
        scale_down_delay_ms: (args.scale_down_delay * 1000.0).round() as u64,
        isolate: args.isolate,
        max_body_bytes: args.max_body_kib.saturating_mul(1024),
        limits: TaskLimits {
            timeout_ms: Some(seconds("--timeout", args.timeout)?),
            cpu_ms: args.cpu.map(|c| seconds("--cpu", c)).transpose()?,
            memory_bytes: Some(args.memory.saturating_mul(1 << 20)),
        },
        demand: demand(&args.resources, args.pool.clone(), &args.labels)?,
        batch: args.batch_function.clone().map(|function| fabric_proto::Batching {
            function,
            max_size: args.max_batch_size,
            max_wait_ms: args.batch_wait_ms,
        }),
    };
    let (deployment, uploaded) = client.deploy(&wasm, spec).await?;
    if uploaded {
        eprintln!("fabric: uploaded component ({} bytes)", wasm.len());
    }
    match args.output.output {
        Output::Json => println!("{}", serde_json::to_value(&deployment)?),
        Output::Text => {
            let at = match &deployment.spec.route {
                Some(route) => route.clone(),
                None => format!("/v1/call/{}/<function>", deployment.spec.name),
            };
            println!(
                "deployed {} v{} ({}) at {at}",
                deployment.spec.name,
                deployment.version,
                deployment.kind.as_str()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn call(client: &Client, args: CallArgs) -> anyhow::Result<ExitCode> {
    let gateway = client.gateway().await?;
    let (path, task) = if args.target.starts_with('/') {
        (args.target.clone(), false)
    } else {
        let all = client.deployments().await?;
        let found = all
            .iter()
            .find(|d| d.deployment.spec.name == args.target)
            .with_context(|| format!("tenant `{}` has no deployment `{}`", client.tenant(), args.target))?;
        match &found.deployment.spec.route {
            Some(route) => (route.clone(), false),
            None => (format!("/v1/call/{}/{}", args.target, args.function), true),
        }
    };
    let method = match &args.method {
        Some(method) => method.to_ascii_uppercase(),
        None if task || args.data.is_some() => "POST".to_string(),
        None => "GET".to_string(),
    };
    let mut headers = vec![(fabric_host::gateway::TENANT_HEADER, client.tenant())];
    if task {
        headers.push(("content-type", "application/json"));
    }
    let body = args.data.clone().unwrap_or_default();
    let answer = fabric::http::request(gateway, &method, &path, &headers, body).await?;
    if args.include {
        println!("HTTP {}", answer.status);
        for (name, value) in &answer.headers {
            println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
        }
        println!();
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&answer.body)?;
    if !answer.body.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    if (200..300).contains(&answer.status) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("fabric: HTTP {}", answer.status);
        Ok(ExitCode::from(1))
    }
}

fn print_deployments(all: &[fabric_proto::DeploymentInfo]) {
    // MIN-MAX is per host, as deployed; CAP is the most replicas the
    // cluster's hosts can run (each host's max, bounded by its resources).
    println!(
        "{:<20} {:>4} {:<6} {:<24} {:>9} {:>5} {:>6} {:>6} {:>10}",
        "NAME", "VER", "KIND", "ROUTE", "MIN-MAX", "CAP", "WANTED", "BUSY", "SERVED"
    );
    for info in all {
        let d = &info.deployment;
        let route = d.spec.route.clone().unwrap_or_else(|| format!("/v1/call/{}", d.spec.name));
        let desired: u32 = info.replicas.iter().map(|r| r.desired).sum();
        let busy: u32 = info.replicas.iter().map(|r| r.busy).sum();
        let served: u64 = info.replicas.iter().map(|r| r.served).sum();
        let cap: u32 = info.replicas.iter().map(|r| r.cap).sum();
        println!(
            "{:<20} {:>4} {:<6} {:<24} {:>9} {:>5} {:>6} {:>6} {:>10}",
            d.spec.name,
            d.version,
            d.kind.as_str(),
            route,
            format!("{}-{}", d.spec.min, d.spec.max),
            cap,
            desired,
            busy,
            served
        );
    }
}

/// A number of seconds from 0 to a week (fractions allowed).
fn seconds(text: &str) -> Result<f64, String> {
    const WEEK: f64 = 7.0 * 24.0 * 3600.0;
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=WEEK).contains(&secs) => Ok(secs),
        Ok(_) => Err(format!("{text} is not between 0 and {WEEK} seconds")),
        Err(e) => Err(format!("{text} is not a number of seconds: {e}")),
    }
}

/// Prints deployment `name`'s log on every host that serves it, under a
/// line naming host and version; `follow` asks again every half second for
/// what came since (a host or version new to the follower starts with the
/// end of its log) until the deployment is gone.
async fn follow_deployment_logs(client: &Client, name: &str, follow: bool) -> anyhow::Result<()> {
    let mut positions: Vec<fabric_proto::LogPosition> = Vec::new();
    let mut current: Option<(String, u64)> = None;
    let mut unserved = 0;
    loop {
        let logs = match client.deployment_logs(name, positions.clone()).await {
            Ok(logs) => logs,
            // Gone while followed (twice in a row: not one missed answer).
            Err(e) if !positions.is_empty() && is_not_found(&e) => {
                unserved += 1;
                if unserved >= 2 {
                    println!("[fabric: deployment {name} is no longer served]");
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        unserved = 0;
        let mut stdout = std::io::stdout().lock();
        for log in &logs {
            let source = (log.host.clone(), log.version);
            let known = positions.iter().any(|p| p.host == log.host && p.version == log.version && p.log == log.log);
            if !log.text.is_empty() || !known {
                if current.as_ref() != Some(&source) {
                    writeln!(stdout, "==> {name} v{} on host {} <==", log.version, log.host)?;
                    current = Some(source);
                }
                stdout.write_all(&log.text)?;
                if !log.text.is_empty() && !log.text.ends_with(b"\n") {
                    writeln!(stdout)?;
                }
            }
        }
        stdout.flush()?;
        drop(stdout);
        if !follow {
            return Ok(());
        }
        // Hosts that did not answer this time keep their place.
        for log in logs {
            positions.retain(|p| !(p.host == log.host && p.version == log.version));
            let position =
                fabric_proto::LogPosition { host: log.host, version: log.version, log: log.log, offset: log.end };
            positions.push(position);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Whether the host answered `not-found`.
fn is_not_found(error: &anyhow::Error) -> bool {
    error.downcast_ref::<HostError>().is_some_and(|e| e.0.kind == fabric_proto::ErrorKind::NotFound)
}

/// `mib` MiB in bytes, or an error naming `flag` when that does not fit.
fn mib_to_bytes(flag: &str, mib: u64) -> anyhow::Result<u64> {
    mib.checked_mul(1 << 20).ok_or_else(|| anyhow::anyhow!("{flag} {mib} is too large"))
}

/// Writes object `id` to `path` whole or not at all: into a file beside it
/// first, renamed into place once every byte has arrived.
async fn get_to_file(client: &Client, id: &str, path: &Path) -> anyhow::Result<u64> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let partial =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    let mut file = std::io::BufWriter::new(partial);
    let bytes = client.get_object(id, &mut file).await?;
    let partial =
        file.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", path.display()))?;
    partial.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes)
}

fn print_objects(stores: &[fabric_proto::HostObjects]) {
    use fabric_host::cluster::placement::binary_units;
    println!("{:<18} {:<28} {:>9} {:>14}", "HOST", "JOB", "OBJECTS", "BYTES");
    for store in stores {
        for job in &store.jobs {
            println!("{:<18} {:<28} {:>9} {:>14}", store.host, job.job, job.objects, job.bytes);
        }
    }
    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>7} {:>10} {:>8} {:>10}",
        "HOST", "MEMORY", "BUDGET", "SPILLED", "SPILLS", "DROPPED", "TO-DISK", "PULLS", "PULLED", "RETRIED", "SENT"
    );
    for store in stores {
        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>7} {:>10} {:>8} {:>10}",
            store.host,
            binary_units(store.memory_bytes),
            binary_units(store.memory_budget),
            binary_units(store.spilled_bytes),
            store.spills,
            store.dropped_copies,
            store.disk_copies,
            store.pulls,
            binary_units(store.pulled_bytes),
            store.retried_ranges,
            binary_units(store.served_bytes)
        );
    }
}

fn print_hosts(hosts: &[fabric_host::HostInfo], output: Output) -> anyhow::Result<()> {
    use fabric_host::cluster::placement::{amount, CPU};
    match output {
        Output::Json => println!("{}", serde_json::to_value(hosts)?),
        Output::Text => {
            println!(
                "{:<18} {:<22} {:>7} {:>7}  {:<12} {:<20} RESOURCES",
                "HOST", "ADDRESS", "CPU", "QUEUED", "POOL", "LABELS"
            );
            for h in hosts {
                let labels: Vec<String> = h.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect();
                let others: Vec<fabric_proto::Resource> =
                    h.capacity.iter().filter(|r| r.name != CPU).cloned().collect();
                println!(
                    "{:<18} {:<22} {:>7} {:>7}  {:<14} {:<20} {}{}",
                    h.id,
                    h.addr,
                    format!("{}/{}", amount(&h.used, CPU), amount(&h.capacity, CPU)),
                    h.queued,
                    h.pool.as_deref().unwrap_or("-"),
                    if labels.is_empty() { "-".to_string() } else { labels.join(",") },
                    fabric_host::cluster::placement::format_resources(&others),
                    if h.draining { "  (draining: takes no new work)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn print_record(record: &JobRecord, output: Output) {
    match output {
        Output::Json => println!("{}", job_json(record)),
        Output::Text => {
            println!("job:       {}", record.id);
            println!("state:     {}", record.state.as_str());
            println!("function:  {}", record.function);
            println!("component: {}", record.component);
            if let Some(result) = result_text(record) {
                println!("result:    {result}");
            }
            if let Some(error) = &record.error {
                println!("error:     {error}");
            }
        }
    }
}

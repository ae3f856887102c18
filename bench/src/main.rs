//! fabric's benchmarks. `fabric-bench [SUITE...] [--json]`; run through
//! `bench/run.sh`, which builds what they need first.
//!
//! Suites:
//! - `core`: instance start, task round trips and throughput, object put/get
//!   against memcpy, `fabric submit` end to end, and `fabric up` start time.
//! - `actors`: actor round trips, creation, throughput, idle memory.
//! - `cluster`: placement over 50 simulated hosts; with etcd and three real
//!   hosts, a remote round trip, a 100,000-task fan-out, failure detection.
//! - `objects`: 1 GiB pulled between hosts against raw quinn bulk throughput,
//!   a guest's 64 MiB slice read, and 256 MiB read on three hosts at once.
//! - `http`: the gateway at 32 connections (wasi:http hello, `/v1/call`
//!   JSON) beside a native hyper server and `wasmtime serve`, each server's
//!   CPU per request, the gateway's own CPU per request with no connection
//!   (also alone as `http-handler`), and the time from a deploy to its
//!   first 200.
//!
//! Every figure prints as a table row, or with `--json` as one JSON line:
//! `{"suite", "name", "unit", "p50", "p99", "n"}` for latencies, or
//! `{"suite", "name", "unit", "value"[, "limit", "limit_name"]}` for rates,
//! where `limit` is a reference measured in the same run.
//! Each measurement bounds its own iteration count and runs on loopback only.

/// The same allocator as the `fabric` binary, so in-process figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use fabric_host::{Host, HostConfig, TaskLimits};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod http;
mod objects;

const SUITES: &[&str] = &["core", "actors", "cluster", "objects", "http"];

#[derive(Clone, Copy)]
struct Report {
    json: bool,
}

impl Report {
    fn latency(&self, suite: &str, name: &str, mut samples: Vec<Duration>, goal: &str) {
        samples.sort_unstable();
        let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
        let (p50, p99) = (pick(0.5), pick(0.99));
        let (unit, scale) = if p50 >= 10_000.0 { ("ms", 1e-3) } else { ("us", 1.0) };
        self.latency_us(suite, name, unit, p50 * scale, p99 * scale, samples.len(), goal);
    }

    #[allow(clippy::too_many_arguments)]
    fn latency_us(&self, suite: &str, name: &str, unit: &str, p50: f64, p99: f64, n: usize, goal: &str) {
        if self.json {
            println!(
                "{}",
                json!({"suite": suite, "name": name, "unit": unit, "p50": round(p50), "p99": round(p99), "n": n})
            );
        } else {
            println!("{suite:<6} {name:<28} p50 {p50:>10.1} {unit:<3} p99 {p99:>10.1} {unit:<3} n={n:<7} {goal}");
        }
    }

    /// A latency a guest measured and returned as `{n, p50_us, p99_us}`.
    fn guest_timing(&self, suite: &str, name: &str, timing: &Value, goal: &str) {
        let field = |key: &str| timing[key].as_f64().unwrap_or(0.0);
        let n = timing["n"].as_u64().unwrap_or(0) as usize;
        self.latency_us(suite, name, "us", field("p50_us"), field("p99_us"), n, goal);
    }

    fn rate(&self, suite: &str, name: &str, unit: &str, value: f64, limit: Option<(f64, &str)>, goal: &str) {
        if self.json {
            let mut line = json!({"suite": suite, "name": name, "unit": unit, "value": round(value)});
            if let Some((limit, limit_name)) = limit {
                line["limit"] = json!(round(limit));
                line["limit_name"] = json!(limit_name);
            }
            println!("{line}");
        } else {
            let reference = limit.map(|(l, n)| format!("vs {n} {l:.2} {unit} ({:.2}x)", value / l)).unwrap_or_default();
            println!("{suite:<6} {name:<28} {value:>14.2} {unit:<8} {reference} {goal}");
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn guest(dir: &str, name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(dir).join("target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    if !path.exists() {
        bail!("{} is missing: run scripts/build-guests.sh", path.display());
    }
    Ok(path)
}

fn fabric_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("fabric");
    if !bin.exists() {
        bail!("{} is missing: build it with `cargo build --release -p fabric`", bin.display());
    }
    Ok(bin)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = Report { json: args.iter().any(|a| a == "--json") };
    let mut suites: Vec<&str> = args.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
    if suites.is_empty() {
        suites = SUITES.to_vec();
    }
    for suite in suites {
        match suite {
            "core" => core(&report)?,
            "actors" => actors(&report)?,
            "cluster" => cluster::run(&report, &fabric_bin()?)?,
            "objects" => objects::run(&report, &fabric_bin()?)?,
            "http" => http::run(&report, &fabric_bin()?)?,
            "http-handler" => http::handler_in_process(&report, &http::hello_wasm())?,
            other => bail!("unknown suite `{other}` (have: {}, http-handler)", SUITES.join(", ")),
        }
    }
    Ok(())
}

fn core(report: &Report) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let data = tempfile::tempdir()?;
    let mut config = HostConfig::new(data.path());
    config.persist = false;
    let testkit = std::fs::read(guest("tests/guests", "testkit")?)?;
    let data_path = data.path().to_path_buf();
    let report_in_task = *report;
    // On a worker thread, so tasks the host spawns run beside the loop
    // instead of across threads from a `block_on` caller.
    runtime.block_on(runtime.spawn(async move {
        let report = &report_in_task;
        // 1. Instantiate a cached component and call a no-op, from the host:
        //    a fresh instance each time (reuse off), then a warm one.
        let mut fresh_config = config.clone();
        fresh_config.reuse_instances = false;
        fresh_config.data_dir = data_path.join("fresh");
        for (name, config, goal) in [
            ("instantiate_call_noop", fresh_config, "(goal <= 10 us)"),
            ("warm_call_noop", config.clone(), "(instance reused)"),
        ] {
            let host = Host::new(config).await?;
            let sha = host.add_component("default", testkit.clone(), None).await?;
            let mut samples = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            for i in 0..21_000 {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                host.call("default", &sha, "noop", "{}", TaskLimits::default()).await?;
                if i >= 1000 {
                    samples.push(t.elapsed());
                }
            }
            report.latency("core", name, samples, goal);
        }

        let host = Host::new(config).await?;
        let sha = host.add_component("default", testkit, None).await?;
        let call = |function: &'static str, args: String, limits: TaskLimits| {
            let host = host.clone();
            let sha = sha.clone();
            async move {
                let out = host.call("default", &sha, function, &args, limits).await?;
                anyhow::Ok(serde_json::from_slice::<Value>(&out)?)
            }
        };

        // 2. Sequential no-op task round trip, submitted and awaited by a guest
        //    (timed inside the guest).
        let rtt = call("bench_rtt", "[20000]".into(), TaskLimits::default()).await?;
        report.guest_timing("core", "task_rtt_seq", &rtt, "(goal <= 20 us; Ray 2.60 ~1900 us)");

        // 3. 100,000 no-ops submitted asynchronously, then all awaited.
        let n = 100_000u64;
        let thr = call("bench_async", format!("[{n}]"), TaskLimits::default()).await?;
        let secs = thr["total_s"].as_f64().unwrap_or(f64::INFINITY);
        report.rate("core", "task_async_throughput", "tasks/s", n as f64 / secs, None, "(goal >= 100000; Ray ~1600)");

        // 4. put/get of 1 GiB from a guest, against memcpy of the same size
        //    (its best before and after: this machine's memory bandwidth
        //    varies from one second to the next).
        let before = memcpy_gbps(1 << 30, 5);
        let limits = TaskLimits { memory_bytes: Some(3 << 30), ..Default::default() };
        let pg = call("bench_put_get", "[1024, 3]".into(), limits).await?;
        let memcpy = before.max(memcpy_gbps(1 << 30, 5));
        let bytes = pg["bytes"].as_f64().unwrap_or(0.0);
        let best = |key: &str| {
            pg[key].as_array().into_iter().flatten().filter_map(Value::as_f64).fold(f64::INFINITY, f64::min)
        };
        for (name, key) in [("put_1gib", "put_s"), ("get_1gib", "get_s")] {
            report.rate("core", name, "GB/s", bytes / best(key) / 1e9, Some((memcpy, "memcpy")), "(goal >= 0.8x)");
        }
        // One field of a 100,000-row table: decoding the postcard value
        // whole, against checking the rkyv archive and reading in place.
        let typed = call("bench_typed_read", "[100000, 50]".into(), TaskLimits::default()).await?;
        report.guest_timing("core", "typed_get_decode_100k", &typed[0], "(fabric::put, postcard)");
        report.guest_timing("core", "typed_get_in_place_100k", &typed[1], "(fabric::put_archived, rkyv)");
        // Host-side reads hand out a view of the stored bytes: no copy, so
        // the time does not grow with the size.
        let tenant: std::sync::Arc<str> = "default".into();
        let job: std::sync::Arc<str> = "bench".into();
        let id = host.objects().put(&tenant, &job, vec![1u8; 1 << 30])?;
        let mut samples = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            let view = host.objects().get("default", id).await?;
            samples.push(t.elapsed());
            std::hint::black_box(view.len());
        }
        report.latency("core", "host_get_1gib", samples, "(a view, not a copy)");
        host.objects().drop_job(&tenant, &job);
        anyhow::Ok(())
    }))??;

    // 5. `fabric submit hello` end to end from a new CLI process.
    let fabric = fabric_bin()?;
    let hello = guest("examples", "hello")?;
    let up_dir = tempfile::tempdir()?;
    let mut up = spawn_up(&fabric, up_dir.path())?;
    let submit_result = (|| {
        wait_for_file(&up_dir.path().join("host.addr"), Duration::from_secs(30))?;
        let submit = || {
            let status = Command::new(&fabric)
                .arg("--data-dir")
                .arg(up_dir.path())
                .args(["submit"])
                .arg(&hello)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("fabric submit failed: {status}");
            }
            anyhow::Ok(())
        };
        submit()?; // uploads and compiles once
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while samples.len() < 200 && Instant::now() < deadline {
            let t = Instant::now();
            submit()?;
            samples.push(t.elapsed());
        }
        report.latency("core", "submit_hello_e2e", samples, "(goal <= 30 ms)");
        anyhow::Ok(())
    })();
    let _ = up.kill();
    let _ = up.wait();
    submit_result?;

    // 6. `fabric up` from process start to answering a client.
    let mut samples = Vec::new();
    for _ in 0..10 {
        samples.push(up_start_time(&fabric)?);
    }
    report.latency("core", "up_start_to_ready", samples, "(goal <= 200 ms; Ray ~3.5 s)");
    Ok(())
}

fn actors(report: &Report) -> anyhow::Result<()> {
    let idle_actors: u64 =
        std::env::var("FABRIC_BENCH_IDLE_ACTORS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let data = tempfile::tempdir()?;
    let mut config = HostConfig::new(data.path());
    config.persist = false;
    config.max_instances = u32::try_from(idle_actors + 512)?;
    let testkit = std::fs::read(guest("tests/guests", "testkit")?)?;
    let report = *report;
    runtime.block_on(runtime.spawn(async move {
        let host = Host::new(config).await?;
        let sha = host.add_component("default", testkit, None).await?;
        let call = |function: &'static str, args: String| {
            let host = host.clone();
            let sha = sha.clone();
            async move {
                let out = host.call("default", &sha, function, &args, TaskLimits::default()).await?;
                anyhow::Ok(serde_json::from_slice::<Value>(&out)?)
            }
        };
        let timing = |v: &Value, key: &str| v[key].as_f64().unwrap_or(0.0);

        let rtt = call("bench_actor_rtt", "[20000]".into()).await?;
        report.guest_timing("actors", "actor_rtt_seq", &rtt, "(goal <= 15 us; Ray ~930 us)");
        let create = call("bench_actor_create", "[1000]".into()).await?;
        report.guest_timing("actors", "actor_create_to_first_result", &create, "(goal <= 1000 us; Ray ~460 ms)");

        let calls = 100_000u64;
        let thr = call("bench_actor_async", format!("[{calls}]")).await?;
        report.rate(
            "actors",
            "actor_async_throughput",
            "calls/s",
            calls as f64 / timing(&thr, "total_s"),
            None,
            "(goal >= 150000; Ray ~5600)",
        );

        let nn = call("bench_actor_nn", "[8, 8, 2000]".into()).await?;
        let total = nn["n"].as_f64().unwrap_or(0.0);
        report.rate(
            "actors",
            "actor_nn_8x8",
            "calls/s",
            total / timing(&nn, "total_s"),
            None,
            "(8 callers x 8 actors)",
        );

        // Idle actors: RSS growth per actor beside the guest's linear memory.
        let before = rss_bytes()?;
        let linear = call("make_idle", format!("[{idle_actors}]")).await?.as_f64().unwrap_or(0.0);
        let after = rss_bytes()?;
        let per_actor = (after.saturating_sub(before)) as f64 / idle_actors as f64 / 1024.0;
        report.rate(
            "actors",
            "idle_actor_rss",
            "KiB/actor",
            per_actor,
            Some((linear / 1024.0, "linear_memory_size")),
            &format!("({idle_actors} idle counters; host RSS {:.0} MiB)", after as f64 / (1 << 20) as f64),
        );
        anyhow::Ok(())
    }))??;
    Ok(())
}

/// This process's resident set, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm has no RSS field")?.parse()?;
    Ok(pages * 4096)
}

/// Best-of-`rounds` memcpy throughput for `size` bytes, in GB/s.
fn memcpy_gbps(size: usize, rounds: usize) -> f64 {
    let src = vec![3u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // fault the pages in first
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    size as f64 / best / 1e9
}

fn wait_for_file(path: &Path, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// `fabric up` on loopback, a free port, state in `data_dir`.
fn spawn_up(fabric: &Path, data_dir: &Path) -> std::io::Result<std::process::Child> {
    Command::new(fabric)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["up", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Starts `fabric up` on a fresh data directory and times until a client's
/// ping is answered.
fn up_start_time(fabric: &Path) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    let mut child = spawn_up(fabric, dir.path())?;
    let outcome = (|| {
        wait_for_file(&dir.path().join("host.addr"), Duration::from_secs(30))?;
        runtime.block_on(async {
            let addr = fabric::client::resolve_addr(None, dir.path())?;
            let client = fabric::client::Client::connect(dir.path(), addr, "default").await?;
            client.ping().await?;
            anyhow::Ok(start.elapsed())
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

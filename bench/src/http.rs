//! Suite `http`: the gateway under load. A `fabric up` process on loopback,
//! driven by `wrk` (2 threads, 32 kept-alive connections, 10 s after 2 s of
//! warm-up) when it is
//! installed, else by a load generator in this process (hyper HTTP/1.1
//! clients on kept-alive connections, slower than wrk): the `http-hello`
//! wasi:http example and a `/v1/call` JSON round trip of the `http-json`
//! example, a native hyper hello server measured the same way as the
//! ceiling, fabric's gateway alone (a route no deployment serves: 404, no
//! wasm), `wasmtime serve` on the same component when a `wasmtime`
//! binary is on the PATH, and the time from a deploy to its first 200.
//! With wrk, each server's CPU per request (user and system, from /proc)
//! is printed beside its rate: on two cores shared with the load generator
//! the rate mixes the server's cost with wrk's and the kernel's, the CPU
//! figure does not. `fabric_hello_in_process` is the gateway's own CPU per
//! request with no connection at all (requests handed to a host in this
//! process), the part of the server's CPU that is fabric's and wasmtime's.
//! `bench/setup.sh` installs wrk and `wasmtime serve`.

use crate::Report;
use bytes::Bytes;
use fabric_proto::DeploymentSpec;
use fabric_tests::{example, Up};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SUITE: &str = "http";
const CONNECTIONS: usize = 32;
const RUN: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(2);

/// What a load run measured.
struct Load {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    answered: usize,
    failed: u64,
    generator: &'static str,
    /// CPU the server spent per answered request (user and system), when
    /// it could be read: with wrk, which runs in a process of its own.
    server_cpu_us: Option<f64>,
}

/// Whose CPU a load run counts as the server's.
#[derive(Clone, Copy)]
enum Server {
    /// Another process.
    Process(u32),
    /// This process (a server on its own threads here).
    ThisProcess,
}

/// The CPU `server` has used so far (user and system), from /proc.
fn cpu_time(server: Server) -> Option<Duration> {
    let path = match server {
        Server::Process(pid) => format!("/proc/{pid}/stat"),
        Server::ThisProcess => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces), from the third on:
    // utime and stime are the 14th and 15th, in USER_HZ (100 a second).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Drives `CONNECTIONS` connections at `addr` for `RUN`: with wrk when it is
/// installed, else in this process.
fn load(
    server: Server,
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) -> anyhow::Result<Load> {
    if wrk_installed() {
        wrk(server, addr, method, path, body)
    } else {
        in_process(addr, method, path, body)
    }
}

fn wrk_installed() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// One wrk run; a POST's body and header go in a Lua script.
fn wrk(server: Server, addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<Load> {
    let script = tempfile::NamedTempFile::new()?;
    let lua_string = |s: &str| format!("{s:?}");
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = {}\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            lua_string(method),
            lua_string(body)
        ),
    )?;
    // A warm-up run first (replicas scale up, instances start), as the
    // in-process generator does.
    let mut text = String::new();
    let mut cpu = None;
    for duration in [WARM_UP, RUN] {
        let before = cpu_time(server);
        let out = std::process::Command::new("wrk")
            .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{}s", duration.as_secs()), "--latency", "-s"])
            .arg(script.path())
            .arg(format!("http://{addr}{path}"))
            .output()?;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        cpu = before.zip(cpu_time(server)).map(|(before, after)| after.saturating_sub(before));
    }
    let mut load = parse_wrk(&text).ok_or_else(|| anyhow::anyhow!("cannot read wrk's output:\n{text}"))?;
    load.server_cpu_us = cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / load.answered.max(1) as f64);
    Ok(load)
}

/// Reads requests/s, p50, p99, the request count and the non-2xx count
/// from wrk's `--latency` report.
fn parse_wrk(text: &str) -> Option<Load> {
    let duration_us = |value: &str| -> Option<f64> {
        let split = value.find(|c: char| c.is_ascii_alphabetic())?;
        let number: f64 = value[..split].parse().ok()?;
        Some(match &value[split..] {
            "us" => number,
            "ms" => number * 1e3,
            "s" => number * 1e6,
            "m" => number * 60e6,
            _ => return None,
        })
    };
    let field = |prefix: &str| -> Option<&str> {
        text.lines().map(str::trim).find_map(|line| line.strip_prefix(prefix)).map(str::trim)
    };
    let per_second: f64 = field("Requests/sec:")?.parse().ok()?;
    let p50_us = duration_us(field("50%")?)?;
    let p99_us = duration_us(field("99%")?)?;
    let answered = text.lines().find(|line| line.contains(" requests in "))?.split_whitespace().next()?.parse().ok()?;
    let failed = field("Non-2xx or 3xx responses:").and_then(|n| n.parse().ok()).unwrap_or(0);
    Some(Load { per_second, p50_us, p99_us, answered, failed, generator: "wrk", server_cpu_us: None })
}

/// `CONNECTIONS` clients in this process, each sending requests back to
/// back for `RUN`.
fn in_process(addr: SocketAddr, method: &'static str, path: &'static str, body: &'static str) -> anyhow::Result<Load> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let start = Instant::now();
        let measure_from = start + WARM_UP;
        let end = measure_from + RUN;
        let clients = (0..CONNECTIONS).map(|_| {
            tokio::spawn(async move {
                let mut connection = fabric::http::Connection::open(addr).await?;
                let mut latencies = Vec::new();
                let mut failed = 0u64;
                let headers: &[(&str, &str)] =
                    if method == "POST" { &[("content-type", "application/json")] } else { &[] };
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let answer = connection.send(method, path, headers, Bytes::from_static(body.as_bytes())).await?;
                    if sent >= measure_from {
                        if answer.status == 200 {
                            latencies.push(sent.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                }
                anyhow::Ok((latencies, failed))
            })
        });
        let (mut all, mut failed) = (Vec::new(), 0);
        for client in futures_util::future::join_all(clients).await {
            let (latencies, client_failed) = client??;
            all.extend(latencies);
            failed += client_failed;
        }
        anyhow::ensure!(!all.is_empty(), "no request was answered");
        all.sort_unstable();
        let pick = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
        Ok(Load {
            per_second: all.len() as f64 / RUN.as_secs_f64(),
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            answered: all.len(),
            failed,
            generator: "in-process",
            server_cpu_us: None,
        })
    })
}

/// A plain hyper server answering every request with a short text, on a
/// runtime of its own: the ceiling for any server on this machine.
fn native_hello() -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let serve = async {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_request| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"Hello from hyper!\n"),
                            )))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        });
    });
    Ok((addr, thread, stop))
}

/// `wasmtime serve` on `wasm` in its fastest configuration, if installed.
fn wasmtime_serve(wasm: &std::path::Path) -> Option<(SocketAddr, std::process::Child)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let child = std::process::Command::new("wasmtime")
        .args(["serve", "-O", "pooling-allocator", "-S", "cli", "--max-instance-reuse-count", "128"])
        .arg(format!("--addr={addr}"))
        .arg(wasm)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((addr, child))
}

/// A load run's rate against `limit`, its latency, and the server's CPU per
/// request against `cpu_limit` (that of the peer, lower is better).
fn rate_and_latency(
    report: &Report,
    name: &str,
    load: &Load,
    limit: Option<(f64, &str)>,
    cpu_limit: Option<(f64, &str)>,
    goal: &str,
) {
    report.rate(SUITE, &format!("{name}_rps"), "req/s", load.per_second, limit, goal);
    let note = format!("(goal p99 <= 2 ms; load by {})", load.generator);
    report.latency_us(SUITE, &format!("{name}_latency"), "us", load.p50_us, load.p99_us, load.answered, &note);
    if let Some(cpu) = load.server_cpu_us {
        let name = format!("{name}_server_cpu");
        report.rate(SUITE, &name, "us/req", cpu, cpu_limit, "(the server's CPU per request, user and system)");
    }
    if load.failed > 0 {
        eprintln!("http: {name}: {} requests did not answer 200", load.failed);
    }
}

/// The `http-hello` example's component.
pub fn hello_wasm() -> std::path::PathBuf {
    example("http_hello")
}

pub fn run(report: &Report, fabric: &std::path::Path) -> anyhow::Result<()> {
    // The harness starts hosts with this binary.
    std::env::set_var("FABRIC_BIN", fabric);
    let hello_wasm = hello_wasm();
    let json_wasm = example("http_json");

    let (native_addr, native, stop_native) = native_hello()?;
    let native_load = load(Server::ThisProcess, native_addr, "GET", "/hello", "")?;
    let _ = stop_native.send(());
    let _ = native.join();
    let ceiling = (native_load.per_second, "native hyper");
    rate_and_latency(report, "native_hyper_hello_32c", &native_load, None, None, "(the ceiling)");

    let peer = match wasmtime_serve(&hello_wasm) {
        Some((addr, mut child)) => {
            let peer = load(Server::Process(child.id()), addr, "GET", "/hello", "");
            let _ = child.kill();
            let _ = child.wait();
            let peer = peer?;
            rate_and_latency(report, "wasmtime_serve_hello_32c", &peer, Some(ceiling), None, "(peer, instance reuse)");
            Some(peer)
        }
        None => {
            eprintln!("http: no `wasmtime` 48 on the PATH (bench/setup.sh installs it): `wasmtime serve` not measured");
            None
        }
    };

    let cpu_reference = match &peer {
        Some(peer) => peer.server_cpu_us.map(|cpu| (cpu, "wasmtime serve")),
        None => native_load.server_cpu_us.map(|cpu| (cpu, "native hyper")),
    };
    let peer = peer.map(|peer| (peer.per_second, "wasmtime serve"));
    handler_in_process(report, &hello_wasm)?;

    let host = Up::start_with(&["--slots", "2"]);
    let deploy = |wasm: &std::path::Path, args: &[&str]| -> anyhow::Result<()> {
        let wasm = wasm.to_string_lossy().into_owned();
        let mut all = vec!["deploy", wasm.as_str()];
        all.extend_from_slice(args);
        let out = host.fabric(&all);
        anyhow::ensure!(out.code == 0, "deploy failed: {}", out.stderr);
        Ok(())
    };
    deploy(&hello_wasm, &["--name", "hello", "--route", "/hello"])?;
    deploy(&json_wasm, &["--name", "stats"])?;
    let gateway = host.gateway();

    let fabric = Server::Process(host.pid());
    let hello = load(fabric, gateway, "GET", "/hello", "")?;
    rate_and_latency(
        report,
        "fabric_hello_32c",
        &hello,
        Some(peer.unwrap_or(ceiling)),
        cpu_reference,
        "(goal >= 1.5x wasmtime serve)",
    );
    if peer.is_some() {
        report.rate(SUITE, "fabric_hello_32c_of_native", "req/s", hello.per_second, Some(ceiling), "(the ceiling)");
    }
    // The gateway alone on the same connections: a route no deployment
    // serves (404, no wasm runs). What `http-hello` would reach if its
    // handler cost nothing, so the share of the time that goes to wasm.
    let routing = load(fabric, gateway, "GET", "/no-such-route", "")?;
    report.rate(
        SUITE,
        "fabric_gateway_404_32c",
        "req/s",
        routing.per_second,
        Some(peer.unwrap_or(ceiling)),
        "(no wasm: the gateway's own ceiling)",
    );
    if let Some(cpu) = routing.server_cpu_us {
        report.rate(SUITE, "fabric_gateway_404_server_cpu", "us/req", cpu, cpu_reference, "(no wasm)");
    }
    let call = load(fabric, gateway, "POST", "/v1/call/stats/summarize", r#"{"values": [3, 1, 4, 1, 5, 9, 2, 6]}"#)?;
    rate_and_latency(report, "fabric_v1_call_json_32c", &call, Some(ceiling), None, "");

    // From a deploy (the component already uploaded and compiled, as for
    // any redeploy) to the first 200 through the gateway: through a client
    // in this process, then through the `fabric deploy` command.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let wasm = std::fs::read(&hello_wasm)?;
    let client = runtime.block_on(fabric::client::Client::connect(
        host.data_dir(),
        fabric::client::resolve_addr(None, host.data_dir())?,
        "default",
    ))?;
    let mut samples = Vec::new();
    for i in 0..30 {
        let route = format!("/d{i}");
        // The client fills in the component's hash.
        let spec = DeploymentSpec { max: 4, ..route_spec(&format!("d{i}"), String::new(), &route) };
        let t = Instant::now();
        runtime.block_on(async {
            client.deploy(&wasm, spec).await?;
            first_200(gateway, &route).await
        })?;
        samples.push(t.elapsed());
    }
    report.latency(SUITE, "deploy_to_first_200", samples, "(goal <= 50 ms; Ray Serve ~1.2 s)");

    // The same from the command line: a `fabric deploy` process (start,
    // connect, hash and offer the component, which the host already has
    // compiled) to the first 200.
    let mut samples = Vec::new();
    for i in 0..20 {
        let route = format!("/cli{i}");
        let t = Instant::now();
        deploy(&hello_wasm, &["--name", &format!("cli{i}"), "--route", &route])?;
        runtime.block_on(first_200(gateway, &route))?;
        samples.push(t.elapsed());
    }
    report.latency(SUITE, "deploy_cli_to_first_200", samples, "(goal <= 50 ms: the CLI process included)");
    Ok(())
}

/// The gateway's own CPU per `http-hello` request, with no connection and
/// no kernel: requests handed straight to a host in this process, one at a
/// time on one thread (so wall time is CPU time), through routing, the
/// replica gate, the pooled instance and the handler, to the collected body.
pub fn handler_in_process(report: &Report, wasm: &std::path::Path) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let data = tempfile::tempdir()?;
    let mut config = fabric_host::HostConfig::new(data.path());
    config.persist = false;
    let bytes = std::fs::read(wasm)?;
    let samples = runtime.block_on(runtime.spawn(async move {
        let host = fabric_host::Host::new(config).await?;
        let sha = host.add_component("default", bytes, None).await?;
        let limits = fabric_host::TaskLimits { timeout_ms: Some(30_000), cpu_ms: None, memory_bytes: Some(64 << 20) };
        let spec = DeploymentSpec { limits, ..route_spec("hello", sha, "/hello") };
        host.deploy("default", spec).await?;
        let mut samples = Vec::with_capacity(200_000);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut i = 0u64;
        while Instant::now() < deadline {
            let request = hyper::Request::get("/hello/x")
                .header("host", "localhost")
                .body(fabric_host::gateway::full(Bytes::new()))?;
            let t = Instant::now();
            let response = host.answer_http(request).await;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e}"))?.to_bytes();
            let took = t.elapsed();
            anyhow::ensure!(status == 200 && body.starts_with(b"Hello"), "in-process request answered {status}");
            i += 1;
            if i > 10_000 {
                samples.push(took);
            }
        }
        anyhow::Ok(samples)
    }))??;
    report.latency(SUITE, "fabric_hello_in_process", samples, "(the gateway's CPU per request, no kernel)");
    Ok(())
}

/// A deployment `name` of `component` under `route`: one replica, bodies up
/// to 1 MiB, the host's default limits.
fn route_spec(name: &str, component: String, route: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        component,
        route: Some(route.into()),
        min: 1,
        max: 1,
        target_concurrency: 1,
        scale_down_delay_ms: 30_000,
        isolate: false,
        max_body_bytes: 1 << 20,
        limits: Default::default(),
        demand: Default::default(),
        batch: None,
    }
}

/// Asks `route` until it answers 200 (an error after 10 s).
async fn first_200(gateway: SocketAddr, route: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = fabric::http::request(gateway, "GET", route, &[], Bytes::new()).await?;
        if answer.status == 200 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{route} still answers {} after a deploy", answer.status);
    }
}

//! Suite `http`: the gateway under load. A `fabric up` process on loopback,
//! driven by a load generator in this process (hyper HTTP/1.1 clients on
//! kept-alive connections, like wrk's): the `http-hello` wasi:http example
//! and a `/v1/call` JSON round trip of the `http-json` example at 32
//! connections, a native hyper hello server measured the same way as the
//! ceiling, `wasmtime serve` on the same component when a `wasmtime` binary
//! is on the PATH, and the time from a deploy to its first 200.

use crate::Report;
use bytes::Bytes;
use fabric_tests::{example, Up};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SUITE: &str = "http";
const CONNECTIONS: usize = 32;
const RUN: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(1);

/// What a load run measured.
struct Load {
    per_second: f64,
    latencies: Vec<Duration>,
    failed: u64,
}

/// `CONNECTIONS` clients each sending requests back to back for `RUN`.
fn load(addr: SocketAddr, method: &'static str, path: &'static str, body: &'static str) -> anyhow::Result<Load> {
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
        let mut all = Load { per_second: 0.0, latencies: Vec::new(), failed: 0 };
        for client in futures_util::future::join_all(clients).await {
            let (latencies, failed) = client??;
            all.latencies.extend(latencies);
            all.failed += failed;
        }
        all.per_second = all.latencies.len() as f64 / RUN.as_secs_f64();
        Ok(all)
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

fn rate_and_latency(report: &Report, name: &str, load: &Load, limit: Option<(f64, &str)>, goal: &str) {
    report.rate(SUITE, &format!("{name}_rps"), "req/s", load.per_second, limit, goal);
    report.latency(SUITE, &format!("{name}_latency"), load.latencies.clone(), "(goal p99 <= 2 ms)");
    if load.failed > 0 {
        eprintln!("http: {name}: {} requests did not answer 200", load.failed);
    }
}

pub fn run(report: &Report, fabric: &std::path::Path) -> anyhow::Result<()> {
    // The harness starts hosts with this binary.
    std::env::set_var("FABRIC_BIN", fabric);
    let hello_wasm = example("http_hello");
    let json_wasm = example("http_json");

    let (native_addr, native, stop_native) = native_hello()?;
    let native_load = load(native_addr, "GET", "/hello", "")?;
    let _ = stop_native.send(());
    let _ = native.join();
    let ceiling = (native_load.per_second, "native hyper");
    rate_and_latency(report, "native_hyper_hello_32c", &native_load, None, "(the ceiling)");

    match wasmtime_serve(&hello_wasm) {
        Some((addr, mut child)) => {
            let peer = load(addr, "GET", "/hello", "")?;
            let _ = child.kill();
            let _ = child.wait();
            rate_and_latency(report, "wasmtime_serve_hello_32c", &peer, Some(ceiling), "(peer, instance reuse)");
        }
        None => eprintln!("http: no `wasmtime` on the PATH: `wasmtime serve` not measured"),
    }

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

    let hello = load(gateway, "GET", "/hello", "")?;
    rate_and_latency(report, "fabric_hello_32c", &hello, Some(ceiling), "(goal >= 1.5x wasmtime serve)");
    let call = load(gateway, "POST", "/v1/call/stats/summarize", r#"{"values": [3, 1, 4, 1, 5, 9, 2, 6]}"#)?;
    rate_and_latency(report, "fabric_v1_call_json_32c", &call, Some(ceiling), "");

    // From `fabric deploy` (the component already uploaded and compiled, as
    // for any redeploy) to the first 200 through the gateway.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let wasm = std::fs::read(&hello_wasm)?;
    let client = runtime.block_on(fabric::client::Client::connect(
        host.data_dir(),
        fabric::client::resolve_addr(None, host.data_dir())?,
        "default",
    ))?;
    let mut samples = Vec::new();
    for i in 0..30 {
        let name = format!("d{i}");
        let route: &'static str = Box::leak(format!("/d{i}").into_boxed_str());
        let spec = fabric_proto::DeploymentSpec {
            name,
            component: String::new(),
            route: Some(route.to_string()),
            min: 1,
            max: 4,
            target_concurrency: 1,
            scale_down_delay_ms: 30_000,
            isolate: false,
            max_body_bytes: 1 << 20,
            demand: Default::default(),
            batch: None,
            limits: Default::default(),
        };
        let t = Instant::now();
        runtime.block_on(async {
            client.deploy(&wasm, spec).await?;
            loop {
                let answer = fabric::http::request(gateway, "GET", route, &[], Bytes::new()).await?;
                if answer.status == 200 {
                    return anyhow::Ok(());
                }
            }
        })?;
        samples.push(t.elapsed());
    }
    report.latency(SUITE, "deploy_to_first_200", samples, "(goal <= 50 ms; Ray Serve ~1.2 s)");
    Ok(())
}

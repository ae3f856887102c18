//! Suite `cluster`: placement decisions over 50 simulated hosts (IO-free),
//! then a real etcd and three `fabric host` processes on loopback: a remote
//! no-op round trip, calls of an actor on another host (sequential and
//! pipelined), a 100,000-task fan-out over the three, and failure detection
//! after `kill -9`.

use crate::Report;
use fabric_host::cluster::placement::Placer;
use fabric_host::cluster::view::{MemberEvent, View};
use fabric_host::{Demand, HostInfo, Resource};
use fabric_proto::{Label, Strategy};
use fabric_tests::{eventually, Etcd, Up};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SUITE: &str = "cluster";

pub fn run(report: &Report, fabric: &std::path::Path) -> anyhow::Result<()> {
    placement(report);
    // The harness starts hosts with this binary.
    std::env::set_var("FABRIC_BIN", fabric);
    remote(report)?;
    remote_one_worker(report)
}

fn resource(name: &str, amount: u64) -> Resource {
    Resource { name: name.into(), amount }
}

/// 50 hosts of mixed shapes and loads, and a stream of mixed demands.
fn placement(report: &Report) {
    let hosts: Vec<HostInfo> = (0..50u64)
        .map(|i| HostInfo {
            id: format!("host-{i:02}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
            capacity: {
                let mut c = vec![resource("cpu", 16), resource("memory", 64 << 30)];
                if i % 10 == 0 {
                    c.push(resource("gpu", 4));
                }
                c
            },
            used: vec![resource("cpu", (i * 7) % 17)],
            queued: i % 3,
            pool: (i % 10 == 0).then(|| "gpu-intensive".to_string()),
            labels: vec![Label { key: "zone".into(), value: format!("z{}", i % 4) }],
            started_ms: 0,
            draining: false,
        })
        .collect();
    let mut view = View::new();
    view.apply(MemberEvent::Reset(hosts.clone()));
    let local = hosts[7].clone();
    let demands = [
        Demand::default(),
        Demand { strategy: Strategy::Spread, ..Demand::default() },
        Demand { resources: vec![resource("gpu", 1)], pool: Some("gpu-intensive".into()), ..Demand::default() },
        Demand {
            resources: vec![resource("cpu", 2)],
            labels: vec![Label { key: "zone".into(), value: "z1".into() }],
            strategy: Strategy::Pack,
            ..Demand::default()
        },
    ];
    let mut placer = Placer::new();
    let mut samples = Vec::with_capacity(100_000);
    for i in 0..100_000usize {
        let demand = &demands[i % demands.len()];
        let t = Instant::now();
        let target = placer.place(&view, &local, demand, &[]);
        samples.push(t.elapsed());
        // Keep the in-flight book moving as a real host's would.
        if let Ok(target) = target {
            placer.dispatched(&target, &[resource("cpu", 1)]);
            if i % 2 == 0 {
                placer.finished(&target, &[resource("cpu", 1)]);
            }
        }
    }
    report.latency(SUITE, "placement_50_hosts", samples, "(goal p99 <= 50 us)");
}

fn member_ids(host: &Up) -> Option<BTreeSet<String>> {
    let out = host.fabric(&["hosts", "--output", "json"]);
    (out.code == 0)
        .then(|| out.json().as_array().map(|a| a.iter().filter_map(|h| h["id"].as_str().map(String::from)).collect()))?
}

fn settle(hosts: &[&Up], expected: &BTreeSet<String>) {
    for host in hosts {
        eventually(Duration::from_secs(30), "the hosts to see each other", || {
            (member_ids(host).as_ref() == Some(expected)).then_some(())
        });
    }
}

fn result_of(host: &Up, function: &str, args: &str) -> anyhow::Result<Value> {
    let testkit = fabric_tests::testkit();
    let out = host.submit(&testkit, &["--fn", function, "--args", args]);
    let v = out.json();
    if v["state"] != "succeeded" {
        anyhow::bail!("{function} failed: {v}");
    }
    Ok(v["result"].clone())
}

/// The no-op round trip between two hosts that each run one worker thread
/// (`--workers 1`): with every host on the same two vCPUs, a share of the
/// cores each is how co-located hosts should run.
fn remote_one_worker(report: &Report) -> anyhow::Result<()> {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &["--workers", "1", "--label", "role=a1"]);
    let b = Up::host(etcd.endpoint(), &["--workers", "1", "--label", "role=b1"]);
    eventually(Duration::from_secs(30), "the one-worker hosts to join", || {
        let ids = member_ids(&a)?;
        (ids.contains(&a.id()) && ids.contains(&b.id())).then_some(())
    });
    let args = |n: u32| format!(r#"{{"n": {n}, "key": "role", "value": "b1"}}"#);
    result_of(&a, "bench_remote_rtt", &args(100))?;
    let timing = result_of(&a, "bench_remote_rtt", &args(5000))?;
    report.guest_timing(
        SUITE,
        "remote_noop_rtt_1_worker",
        &timing,
        "(goal <= 100 us; the same, two hosts with --workers 1: a vCPU each)",
    );
    drop((a, b, etcd));
    Ok(())
}

fn remote(report: &Report) -> anyhow::Result<()> {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &["--label", "role=b"]);
    let mut c = Up::host(etcd.endpoint(), &[]);
    let all: BTreeSet<String> = [&a, &b, &c].iter().map(|h| h.id()).collect();
    settle(&[&a, &b, &c], &all);

    // Warm up: every host fetches and compiles the component once.
    result_of(&a, "bench_spread_async", r#"{"n": 300}"#)?;
    result_of(&a, "bench_remote_rtt", r#"{"n": 100, "key": "role", "value": "b"}"#)?;

    // The transport's floor: a client's ping to host b (one stream each).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pings = runtime.block_on(async {
        let addr = b.addr().parse()?;
        let client = fabric::client::Client::connect(b.data_dir(), addr, "default").await?;
        let mut samples = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            client.ping().await?;
            samples.push(t.elapsed());
        }
        anyhow::Ok(samples)
    })?;
    report.latency(SUITE, "client_ping_rtt", pings, "(reference: one QUIC stream, request and answer)");

    let timing = result_of(&a, "bench_remote_rtt", r#"{"n": 5000, "key": "role", "value": "b"}"#)?;
    report.guest_timing(
        SUITE,
        "remote_noop_rtt",
        &timing,
        "(host a -> host b, loopback; three hosts with a worker per vCPU each on 2 vCPUs)",
    );

    let args = r#"{"n": 5000, "key": "role", "value": "b", "pipelined": false}"#;
    let timing = result_of(&a, "bench_remote_actor", args)?;
    report.guest_timing(SUITE, "remote_actor_call_rtt", &timing, "(host a -> an actor on host b, sequential)");
    let args = r#"{"n": 20000, "key": "role", "value": "b", "pipelined": true}"#;
    let timing = result_of(&a, "bench_remote_actor", args)?;
    let seconds = timing["total_s"].as_f64().unwrap_or(f64::NAN);
    report.rate(SUITE, "remote_actor_calls_pipelined", "calls/s", 20_000.0 / seconds, None, "(one caller, in order)");

    let timing = result_of(&a, "bench_spread_async", r#"{"n": 100000}"#)?;
    let seconds = timing["total_s"].as_f64().unwrap_or(f64::NAN);
    report.rate(SUITE, "fanout_100k_3_hosts", "tasks/s", 100_000.0 / seconds, None, "(spread over 3 hosts)");

    // Failure detection: kill -9 a busy host; time until it leaves both
    // other views, and until the job whose tasks it held completes (its
    // tasks rerun elsewhere; each takes 1 s).
    let mut leave = Vec::new();
    let mut retried = Vec::new();
    for _ in 0..3 {
        let all: BTreeSet<String> = [&a, &b, &c].iter().map(|h| h.id()).collect();
        settle(&[&a, &b, &c], &all);
        let testkit = fabric_tests::testkit();
        let out = a.submit(&testkit, &["--fn", "spread_sleep", "--args", r#"{"n": 6, "ms": 1000}"#, "--detach"]);
        let job = out.json()["job"].as_str().unwrap_or_default().to_string();
        let c_id = c.id();
        eventually(Duration::from_secs(30), "c to be busy", || {
            let hosts = a.fabric(&["hosts", "--output", "json"]).json();
            hosts
                .as_array()?
                .iter()
                .any(|h| h["id"] == c_id.as_str() && h["used"][0]["amount"].as_u64() > Some(0))
                .then_some(())
        });
        let killed = Instant::now();
        c.kill9();
        let survivors: BTreeSet<String> = [&a, &b].iter().map(|h| h.id()).collect();
        for host in [&a, &b] {
            eventually(Duration::from_secs(30), "c to leave", || {
                (member_ids(host).as_ref() == Some(&survivors)).then_some(())
            });
        }
        leave.push(killed.elapsed());
        eventually(Duration::from_secs(60), "the job to end", || {
            let v = a.fabric(&["status", &job, "--output", "json"]).json();
            (v["state"] != "running" && v["state"] != "queued").then_some(())
        });
        retried.push(killed.elapsed());
        c.start_again();
    }
    report.latency(SUITE, "kill9_to_left_all_views", leave, "(lease TTL 2 s)");
    report.latency(SUITE, "kill9_to_retried_task_done", retried, "(includes the 1 s task)");
    drop(etcd);
    Ok(())
}

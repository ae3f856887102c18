//! Suite `objects`: objects between hosts. A real etcd and four `fabric
//! host` processes on loopback: a 1 GiB object pulled from one host by
//! another, beside raw quinn bulk throughput measured here with the same TLS
//! setup and stream count; a guest reading a 64 MiB slice of a 1 GiB object;
//! 256 MiB put on one host and read on three others at once; and a working
//! set four times a host's object memory put and read back (spilling),
//! beside the same on a host whose memory holds it all.

use crate::Report;
use fabric_host::objects::transfer::STREAMS;
use fabric_tests::{all_see, ids, Etcd, Up};
use serde_json::Value;
use std::time::Instant;

const SUITE: &str = "objects";
const GIB: usize = 1 << 30;

pub fn run(report: &Report, fabric: &std::path::Path) -> anyhow::Result<()> {
    // The harness starts hosts with this binary.
    std::env::set_var("FABRIC_BIN", fabric);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let raw = (0..3).map(|_| runtime.block_on(quinn_bulk_gbps(GIB, STREAMS))).collect::<anyhow::Result<Vec<f64>>>()?;
    let raw = raw.into_iter().fold(0.0, f64::max);
    drop(runtime);

    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &["--label", "role=maker", "--label", "n=1"]);
    let c = Up::host(etcd.endpoint(), &["--label", "n=2"]);
    let d = Up::host(etcd.endpoint(), &["--label", "n=3"]);
    all_see(&[&a, &b, &c, &d], &ids(&[&a, &b, &c, &d]), "the hosts to see each other");

    // Warm up: every host fetches and compiles the component.
    result_of(&a, "bench_pull", r#"{"mib": 16, "rounds": 1, "key": "role", "value": "maker"}"#)?;
    result_of(&a, "bench_broadcast", r#"{"mib": 1, "key": "n", "n": 3}"#)?;

    let rounds =
        seconds(&result_of(&a, "bench_pull", r#"{"mib": 1024, "rounds": 3, "key": "role", "value": "maker"}"#)?);
    let best = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    report.rate(
        SUITE,
        "pull_1gib_2_hosts",
        "GB/s",
        GIB as f64 / best / 1e9,
        Some((raw, "raw_quinn")),
        "(goal >= 0.8x)",
    );

    let reads = seconds(&result_of(&a, "bench_slice", r#"{"total_mib": 1024, "slice_mib": 64, "rounds": 10}"#)?);
    let slice_s = median(reads);
    report.rate(
        SUITE,
        "guest_slice_64mib",
        "GB/s",
        (64 << 20) as f64 / slice_s / 1e9,
        None,
        "(a 64 MiB slice of a 1 GiB object)",
    );

    // What the holder sent to peers, read from its listing.
    let sent_by_a = || -> anyhow::Result<u64> {
        let out = a.fabric(&["objects", "--output", "json"]);
        let stores: Value = serde_json::from_str(&out.stdout)?;
        let mine = stores.as_array().and_then(|all| all.iter().find(|s| s["host"] == a.id().as_str()));
        mine.and_then(|s| s["served_bytes"].as_u64()).ok_or_else(|| anyhow::anyhow!("no store of a: {stores}"))
    };
    let sent_before = sent_by_a()?;
    let mut broadcast = Vec::new();
    for _ in 0..3 {
        let v = result_of(&a, "bench_broadcast", r#"{"mib": 256, "key": "n", "n": 3}"#)?;
        broadcast.push(v[0].as_f64().unwrap_or(f64::NAN));
    }
    let sent = (sent_by_a()? - sent_before) as f64 / 3.0 / (1 << 20) as f64;
    report.rate(
        SUITE,
        "broadcast_256mib_3_hosts",
        "s",
        median(broadcast),
        None,
        "(read on 3 hosts at once, median of 3)",
    );
    report.rate(
        SUITE,
        "broadcast_holder_sent",
        "MiB",
        sent,
        Some((3.0 * 256.0, "once_per_reader")),
        "(per broadcast; the rest came from readers' copies)",
    );
    drop(etcd);
    spilling(report)
}

/// 1 GiB of 16 MiB objects put and read back on a host with 256 MiB of
/// object memory, beside a host that keeps it all in memory. Each round is
/// a job of its own (its objects go when it ends), after one unmeasured
/// round, so both hosts reuse memory the kernel has already handed them.
fn spilling(report: &Report) -> anyhow::Result<()> {
    const ROUND: &str = r#"{"mib": 16, "count": 64, "rounds": 1}"#;
    let mut rates = Vec::new();
    for memory_mib in ["4096", "256"] {
        let up = Up::start_with(&["--object-memory-mib", memory_mib]);
        result_of(&up, "bench_spill", ROUND)?;
        let mut phases = Vec::new();
        for _ in 0..3 {
            phases.push(result_of(&up, "bench_spill", ROUND)?[0].clone());
        }
        let phase = |i: usize| GIB as f64 / median(phases.iter().filter_map(|p| p[i].as_f64()).collect()) / 1e9;
        rates.push((phase(0), phase(1)));
    }
    let [(put_memory, get_memory), (put_spilled, get_spilled)] = rates[..] else {
        anyhow::bail!("two runs expected");
    };
    let note = "(1 GiB working set, 256 MiB object memory: 4x)";
    report.rate(SUITE, "spill_put_4x_budget", "GB/s", put_spilled, Some((put_memory, "in_memory")), note);
    report.rate(SUITE, "spill_get_4x_budget", "GB/s", get_spilled, Some((get_memory, "in_memory")), note);
    Ok(())
}

fn result_of(host: &Up, function: &str, args: &str) -> anyhow::Result<Value> {
    let out = host.submit(&fabric_tests::testkit(), &["--fn", function, "--args", args]);
    let v = out.json();
    if v["state"] != "succeeded" {
        anyhow::bail!("{function} failed: {v}");
    }
    Ok(v["result"].clone())
}

fn seconds(v: &Value) -> Vec<f64> {
    v.as_array().into_iter().flatten().filter_map(Value::as_f64).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Sends `bytes` from a quinn server to a client over `streams` streams at
/// once, on loopback, with the hosts' TLS setup; the client writes each
/// stream's bytes straight into its part of one buffer. GB/s.
async fn quinn_bulk_gbps(bytes: usize, streams: usize) -> anyhow::Result<f64> {
    let ca = fabric_host::tls::new_ca()?;
    let identity = fabric_host::tls::Identity::issue(&ca, &[])?;
    let server = quinn::Endpoint::server(identity.server_config()?, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let data = bytes::Bytes::from(vec![7u8; bytes]);
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.ok_or_else(|| anyhow::anyhow!("no connection"))?.await?;
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut range = [0u8; 16];
                recv.read_exact(&mut range).await?;
                let start = u64::from_le_bytes(range[..8].try_into()?) as usize;
                let end = u64::from_le_bytes(range[8..].try_into()?) as usize;
                send.write_chunk(data.slice(start..end)).await?;
                send.finish()?;
                send.stopped().await?;
                anyhow::Ok(())
            });
        }
        anyhow::Ok(())
    });
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let connection = client.connect_with(identity.peer_client_config()?, addr, fabric_host::tls::SERVER_NAME)?.await?;
    // Warm the connection as the hosts' connections are warm (congestion
    // window open, path MTU found), then time the whole transfer.
    let mut warm = vec![0u8; 64 << 20];
    fetch(&connection, &mut warm, 0, streams).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut buffer = vec![0u8; bytes];
    let started = Instant::now();
    fetch(&connection, &mut buffer, 0, streams).await?;
    let elapsed = started.elapsed();
    connection.close(0u32.into(), b"done");
    serving.abort();
    anyhow::ensure!(buffer.iter().step_by(4096).all(|b| *b == 7), "raw quinn delivered wrong bytes");
    Ok(bytes as f64 / elapsed.as_secs_f64() / 1e9)
}

/// Reads `dest.len()` bytes from `offset` of the server's data over
/// `streams` streams at once, each straight into its part of `dest`.
async fn fetch(connection: &quinn::Connection, dest: &mut [u8], offset: u64, streams: usize) -> anyhow::Result<()> {
    let part = dest.len().div_ceil(streams);
    let reads = dest.chunks_mut(part).enumerate().map(|(i, dest)| async move {
        let (mut send, mut recv) = connection.open_bi().await?;
        let start = offset + (i * part) as u64;
        let mut range = start.to_le_bytes().to_vec();
        range.extend_from_slice(&(start + dest.len() as u64).to_le_bytes());
        send.write_all(&range).await?;
        send.finish()?;
        recv.read_exact(dest).await?;
        anyhow::Ok(())
    });
    futures_util::future::try_join_all(reads).await.map(|_| ())
}

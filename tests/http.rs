//! The HTTP gateway end to end: real `fabric up` processes, deployments made
//! with the CLI, requests over real HTTP on loopback.

use fabric_tests::{all_see, cluster, eventually, example, http_kit, ids, testkit, Etcd, Up};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

/// `fabric deploy WASM ARGS... -o json`, asserting it worked.
fn deploy(host: &Up, wasm: &std::path::Path, args: &[&str]) -> Value {
    let wasm = wasm.to_string_lossy().into_owned();
    let mut all = vec!["deploy", wasm.as_str(), "--output", "json"];
    all.extend_from_slice(args);
    let out = host.fabric(&all);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

/// `fabric deploy` that must fail; its error text.
fn deploy_refused(host: &Up, wasm: &std::path::Path, args: &[&str]) -> String {
    let wasm = wasm.to_string_lossy().into_owned();
    let mut all = vec!["deploy", wasm.as_str()];
    all.extend_from_slice(args);
    let out = host.fabric(&all);
    assert_ne!(out.code, 0, "{out:?}");
    out.stderr
}

/// `method path` with `body` from `gateway` on a thread of its own: the
/// answer once it comes (for requests a test runs something beside).
fn in_background(
    gateway: std::net::SocketAddr,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) -> std::thread::JoinHandle<anyhow::Result<fabric::http::Answer>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(fabric::http::request(gateway, method, path, &[], body))
    })
}

/// The deployment `name` as `fabric deployments -o json` shows it.
fn listed(host: &Up, name: &str) -> Option<Value> {
    let out = host.fabric(&["deployments", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json().as_array()?.iter().find(|d| d["deployment"]["spec"]["name"] == name).cloned()
}

/// A POST to `/kit/echo` that announces 100 bytes of body and sends 10:
/// the whole answer.
fn stalled_body(host: &Up) -> String {
    let mut stream = std::net::TcpStream::connect(host.gateway()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = "POST /kit/echo HTTP/1.1\r\nHost: fabric\r\nContent-Length: 100\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b'x'; 10]).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn wasi_http_and_task_components_are_served_over_http() {
    let host = Up::start();
    let hello = deploy(&host, &example("http_hello"), &["--name", "hello", "--route", "/hello"]);
    assert_eq!(hello["version"], 1);
    assert_eq!(hello["kind"], "http");

    let answer = host.http("GET", "/hello/world?x=1", "");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "Hello from fabric! You asked for /hello/world?x=1\n");
    assert_eq!(answer.header("x-fabric-version").as_deref(), Some("1"));
    assert_eq!(answer.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    // The same over HTTP/2 (cleartext), requests multiplexed on one
    // connection.
    let over_h2 = http2(&host, &[("GET", "/hello/h2", ""), ("GET", "/hello/again", ""), ("GET", "/nowhere", "")]);
    let statuses: Vec<_> = over_h2.iter().map(|(status, version, ..)| (*status, *version)).collect();
    assert_eq!(statuses, [(200, hyper::Version::HTTP_2), (200, hyper::Version::HTTP_2), (404, hyper::Version::HTTP_2)]);
    assert_eq!(over_h2[0].3, "Hello from fabric! You asked for /hello/h2\n");
    assert_eq!(over_h2[1].3, "Hello from fabric! You asked for /hello/again\n");
    // A route matches whole path segments only.
    let elsewhere = host.http("GET", "/helloworld", "");
    assert_eq!(elsewhere.status, 404);
    assert!(elsewhere.text().contains("no deployment serves /helloworld"), "{}", elsewhere.text());

    deploy(&host, &example("http_json"), &["--name", "stats"]);
    let summary = host.http("POST", "/v1/call/stats/summarize", r#"{"values": [3, 1, 4, 1, 5]}"#);
    assert_eq!(summary.status, 200, "{}", summary.text());
    let summary: Value = serde_json::from_slice(&summary.body).unwrap();
    assert_eq!(summary, serde_json::json!({"count": 5, "mean": 2.8, "min": 1.0, "max": 5.0}));
    // Sub-tasks work from a call too.
    let squares = host.http("POST", "/v1/call/stats/squares", r#"{"values": [2, 3]}"#);
    assert_eq!(squares.text(), "[4,9]");

    // The CLI's call goes through the same gateway.
    let out = host.fabric(&["call", "stats", "--fn", "summarize", "--data", r#"{"values": [2]}"#]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), r#"{"count":1,"mean":2.0,"min":2.0,"max":2.0}"#);
    let out = host.fabric(&["call", "hello"]);
    assert_eq!(out.stdout, "Hello from fabric! You asked for /hello\n", "{out:?}");

    // Bad calls say what is wrong, with the status that fits.
    let failed = host.http("POST", "/v1/call/stats/summarize", r#"{"values": []}"#);
    assert_eq!(failed.status, 500);
    let error: Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(error["error"]["kind"], "failed");
    assert_eq!(error["error"]["message"], "no values to summarize");
    assert_eq!(host.http("POST", "/v1/call/stats/summarize", "{not json").status, 400);
    assert_eq!(host.http("GET", "/v1/call/stats/summarize", "").status, 405);
    let missing = host.http("POST", "/v1/call/nothing/main", "{}");
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("no deployment `nothing`"), "{}", missing.text());
    let other_tenant = host.http_with("POST", "/v1/call/stats/summarize", &[("x-fabric-tenant", "other")], "{}");
    assert_eq!(other_tenant.status, 404, "deployments are tenant-scoped: {}", other_tenant.text());
    let wrong_kind = host.http("POST", "/v1/call/hello/main", "{}");
    assert_eq!(wrong_kind.status, 400);
    assert!(wrong_kind.text().contains("send requests to its route /hello"), "{}", wrong_kind.text());

    // Deploys that cannot work are refused with the reason.
    let hello_wasm = example("http_hello");
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "bare"]).contains("give it a route"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "twin", "--route", "/hello"])
        .contains("route /hello is already served by deployment default/hello"));
    let hello_path = hello_wasm.to_string_lossy().into_owned();
    let nested = ["--tenant", "other", "deploy", &hello_path, "--name", "under", "--route", "/hello/admin"];
    let nested = host.fabric(&nested);
    assert_ne!(nested.code, 0, "{nested:?}");
    assert!(nested.stderr.contains("lies under route /hello, which another tenant's deployment serves"), "{nested:?}");
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/v1/x"]).contains("/v1/"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "no-slash"]).contains("invalid route"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/x", "--min", "5", "--max", "2"])
        .contains("--min (5) is above --max (2)"));
    assert!(deploy_refused(&host, &example("http_json"), &["--name", "x", "--route", "/x"]).contains("takes no route"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/x", "--max", "1025"])
        .contains("--max is at most 1024"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/x", "--timeout", "86401"])
        .contains("at most a day"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/x", "--scale-down-delay", "90000"])
        .contains("--scale-down-delay is at most a day"));
    assert!(deploy_refused(&host, &hello_wasm, &["--name", "x", "--route", "/x", "--resources", "gpu=1"])
        .contains("no host in the cluster can run a replica"));
    let garbage = host.data_dir().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0").unwrap();
    assert!(deploy_refused(&host, &garbage, &["--name", "x", "--route", "/x"]).contains("core WebAssembly module"));

    let listed_hello = listed(&host, "hello").expect("hello is listed");
    assert_eq!(listed_hello["deployment"]["spec"]["route"], "/hello");
    // Two requests over HTTP/1.1, two over HTTP/2.
    assert_eq!(listed_hello["replicas"][0]["served"], 4);

    let out = host.fabric(&["undeploy", "hello"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(host.http("GET", "/hello", "").status, 404);
    assert!(listed(&host, "hello").is_none());
    assert_ne!(host.fabric(&["undeploy", "hello"]).code, 0, "already gone");
}

/// What came back to one HTTP/2 request: status, protocol version, the
/// `x-fabric-host` header, and the body as text.
type Http2Answer = (u16, hyper::Version, Option<String>, String);

/// Sends `requests` (method, path, body) all at once over one HTTP/2
/// connection to `host`'s gateway (cleartext, prior knowledge: no upgrade)
/// and returns the answers in order.
fn http2(host: &Up, requests: &[(&str, &str, &str)]) -> Vec<Http2Answer> {
    use http_body_util::{BodyExt, Full};
    let gateway = host.gateway();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        let sent = requests.iter().map(|(method, path, body)| {
            let mut sender = sender.clone();
            let request = hyper::Request::builder()
                .method(*method)
                .uri(format!("http://{gateway}{path}"))
                .body(Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap();
            async move {
                let response = sender.send_request(request).await.unwrap();
                let (status, version) = (response.status().as_u16(), response.version());
                let served_by = response.headers().get("x-fabric-host").map(|v| v.to_str().unwrap().to_string());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, version, served_by, String::from_utf8_lossy(&body).into_owned())
            }
        });
        futures_util::future::join_all(sent).await
    })
}

/// Sends a chunked request (no length up front) of `len` bytes to
/// `/kit/echo` and returns the status.
fn chunked_echo(host: &Up, len: usize) -> u16 {
    let mut stream = std::net::TcpStream::connect(host.gateway()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = "POST /kit/echo HTTP/1.1\r\nHost: fabric\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 8192];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        // The gateway may answer 413 and close before the rest is sent.
        if stream.write_all(format!("{n:x}\r\n").as_bytes()).is_err()
            || stream.write_all(&chunk[..n]).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
        left -= n;
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    status.parse().unwrap_or_else(|_| panic!("no status in {answer:?}"))
}

#[test]
fn misbehaving_requests_get_statuses_and_the_host_keeps_serving() {
    let host = Up::start();
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit", "--timeout", "1", "--max-body-kib", "64"]);

    // A handler that loops forever times out with 504, while other
    // requests keep being served meanwhile.
    let looping = {
        let gateway = host.gateway();
        in_background(gateway, "GET", "/kit/loop", "")
    };
    for _ in 0..20 {
        assert_eq!(host.http("GET", "/kit/other", "").status, 200);
    }
    let looped = looping.join().unwrap().expect("an answer");
    assert_eq!(looped.status, 504, "{}", looped.text());
    assert!(looped.text().contains("timeout"), "{}", looped.text());

    // A trap is a 500 saying so; the next request is served.
    let trapped = host.http("GET", "/kit/trap", "");
    assert_eq!(trapped.status, 500);
    assert!(trapped.text().contains("trapped") || trapped.text().contains("aborted"), "{}", trapped.text());
    assert_eq!(host.http("GET", "/kit/after-trap", "").text(), "kit /kit/after-trap");

    // Bodies stream through; over the limit is 413, whether the length is
    // declared or only found while reading.
    let small = "y".repeat(10_000);
    assert_eq!(host.http("POST", "/kit/echo", &small).text(), small);
    let big = "z".repeat(100 << 10);
    let declared = host.http("POST", "/kit/echo", &big);
    assert_eq!(declared.status, 413, "{}", declared.text());
    assert!(declared.text().contains("65536 bytes"), "{}", declared.text());
    assert_eq!(chunked_echo(&host, 8 << 10), 200);
    assert_eq!(chunked_echo(&host, 100 << 10), 413);
    // A body the handler goes on writing after its head arrives all the same.
    let dripped = host.http("GET", "/kit/drip", "");
    assert_eq!((dripped.status, dripped.text()), (200, "first second third".to_string()));

    // None of it hurt the host or the deployment.
    assert_eq!(host.http("GET", "/kit/still-here", "").status, 200);
    assert_eq!(host.http("GET", "/nowhere", "").status, 404);
    assert!(host.up_log().contains("listening"), "the host is up");
}

#[test]
fn requests_beyond_the_replicas_queue_get_429_and_the_rest_are_served() {
    let host = Up::start();
    // One replica; 64 requests may wait behind it.
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit", "--max", "1", "--timeout", "60"]);
    let gateway = host.gateway();
    // The replica is held by a long request (long enough for the rest to
    // arrive on a loaded machine) while 79 short ones arrive.
    let held = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(fabric::http::request(gateway, "GET", "/kit/sleep?ms=8000", &[], "")).unwrap().status
    });
    eventually(Duration::from_secs(10), "the long request to hold the replica", || {
        (listed(&host, "kit")?["replicas"][0]["busy"] == 1).then_some(())
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers = runtime.block_on(async {
        let sent = (0..79).map(|_| async move {
            let answer = fabric::http::request(gateway, "GET", "/kit/sleep?ms=1", &[], "").await.unwrap();
            (answer.status, answer.text())
        });
        futures_util::future::join_all(sent).await
    });
    assert_eq!(held.join().unwrap(), 200);
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    // 64 wait their turn; the other 15 are refused at once.
    assert_eq!(refused.len(), 15, "{answers:?}");
    assert_eq!(served + refused.len(), answers.len(), "{answers:?}");
    assert!(refused[0].1.contains("too many requests"), "{}", refused[0].1);
    assert_eq!(host.http("GET", "/kit/after", "").status, 200);
}

#[test]
fn instances_are_reused_unless_the_deployment_isolates_requests() {
    let host = Up::start();
    deploy(&host, &http_kit(), &["--name", "pooled", "--route", "/kit", "--max", "1"]);
    let counts: Vec<String> = (0..3).map(|_| host.http("GET", "/kit/count", "").text()).collect();
    assert_eq!(counts, ["1", "2", "3"], "one warm instance served all three");

    deploy(&host, &http_kit(), &["--name", "pooled", "--route", "/kit", "--max", "1", "--isolate"]);
    let counts: Vec<String> = (0..3).map(|_| host.http("GET", "/kit/count", "").text()).collect();
    assert_eq!(counts, ["1", "1", "1"], "a fresh instance per request");

    // The same for task functions called through `/v1/call`.
    let calls = |host: &Up| -> Vec<String> {
        (0..3).map(|_| host.http("POST", "/v1/call/tasks/instance_calls", "[]").text()).collect()
    };
    deploy(&host, &testkit(), &["--name", "tasks", "--max", "1"]);
    assert_eq!(calls(&host), ["1", "2", "3"], "one warm instance served all three calls");
    deploy(&host, &testkit(), &["--name", "tasks", "--max", "1", "--isolate"]);
    assert_eq!(calls(&host), ["1", "1", "1"], "a fresh instance per call");
}

#[test]
fn a_rolling_redeploy_under_load_fails_no_request() {
    let host = Up::start();
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit"]);
    let gateway = host.gateway();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let mut connection = fabric::http::Connection::open(gateway).await.unwrap();
                    let mut versions = Vec::new();
                    for _ in 0..400 {
                        let answer = connection.send("GET", "/kit/sleep?ms=2", &[], bytes::Bytes::new()).await.unwrap();
                        assert_eq!(answer.status, 200, "{}", answer.text());
                        versions.push(answer.header("x-fabric-version").unwrap().parse::<u64>().unwrap());
                    }
                    versions
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit", "--min", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let last = deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit"]);
    assert_eq!(last["version"], 3);
    let mut seen = std::collections::BTreeSet::new();
    for client in clients {
        let versions = client.join().expect("every request succeeded");
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "a client never goes back a version: {versions:?}");
        seen.extend(versions);
    }
    assert!(seen.contains(&1) && seen.contains(&3), "traffic switched versions: {seen:?}");
}

#[test]
fn replicas_scale_up_under_load_and_down_after_the_delay() {
    let host = Up::start();
    deploy(
        &host,
        &http_kit(),
        &["--name", "kit", "--route", "/kit", "--min", "1", "--max", "8", "--scale-down-delay", "1"],
    );
    let desired = |host: &Up| listed(host, "kit").unwrap()["replicas"][0]["desired"].as_u64().unwrap();
    assert_eq!(desired(&host), 1);
    let gateway = host.gateway();
    let load: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(fabric::http::request(gateway, "GET", "/kit/sleep?ms=2000", &[], "")).unwrap().status
            })
        })
        .collect();
    let peak = eventually(Duration::from_secs(10), "six replicas wanted under load", || {
        let busy = listed(&host, "kit").unwrap()["replicas"][0].clone();
        (busy["busy"].as_u64() == Some(6)).then_some(busy)
    });
    assert_eq!(peak["desired"], 6, "{peak}");
    assert_eq!(peak["queued"], 0, "{peak}");
    for request in load {
        assert_eq!(request.join().unwrap(), 200);
    }
    assert_eq!(desired(&host), 6, "replicas stay right after the load ends");
    eventually(Duration::from_secs(15), "replicas back to min after the delay", || (desired(&host) == 1).then_some(()));
    let after = listed(&host, "kit").unwrap()["replicas"][0].clone();
    assert_eq!(after["instances"], 1, "idle instances beyond min went: {after}");
}

#[test]
fn any_host_serves_a_deployment_made_through_another() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");
    deploy(&a, &example("http_hello"), &["--name", "hello", "--route", "/hello"]);
    deploy(&a, &example("http_json"), &["--name", "stats"]);
    // A deploy returns once B has read it from the registry (and fetched
    // the component from A): B serves it at once.
    let answer = b.http("GET", "/hello/from-b", "");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "Hello from fabric! You asked for /hello/from-b\n");
    let summary = b.http("POST", "/v1/call/stats/summarize", r#"{"values": [1, 2]}"#);
    assert_eq!(summary.text(), r#"{"count":2,"mean":1.5,"min":1.0,"max":2.0}"#);
    // Both hosts' replicas show in the listing, from either host.
    let hello = listed(&b, "hello").unwrap();
    let hosts: Vec<&str> = hello["replicas"].as_array().unwrap().iter().map(|r| r["host"].as_str().unwrap()).collect();
    let mut expected = vec![a.id(), b.id()];
    expected.sort();
    assert_eq!(hosts, expected);
    // An undeploy through B reaches A before it returns.
    assert_eq!(b.fabric(&["undeploy", "hello"]).code, 0);
    assert_eq!(a.http("GET", "/hello", "").status, 404);
}

/// The replicas `host` reports for deployment `name` on host `on`.
fn replicas_on(host: &Up, name: &str, on: &str) -> Value {
    let listed = listed(host, name).unwrap_or_else(|| panic!("{name} is listed"));
    let replicas = listed["replicas"].as_array().unwrap();
    replicas.iter().find(|r| r["host"] == on).cloned().unwrap_or_else(|| panic!("no replicas on {on}: {listed}"))
}

#[test]
fn a_host_forwards_requests_to_the_hosts_that_can_run_replicas() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], &["--resources", "special=2"]]);

    // What no host has is refused at deploy, saying what is missing.
    let refused = deploy_refused(&a, &http_kit(), &["--name", "kit", "--route", "/kit", "--resources", "special=3"]);
    assert!(refused.contains("no host in the cluster can run a replica") && refused.contains("special=3"), "{refused}");

    let kit =
        ["--name", "kit", "--route", "/kit", "--resources", "special=1", "--max-body-kib", "64", "--timeout", "2"];
    deploy(&a, &http_kit(), &kit);
    // A cannot run a replica and forwards; B runs them.
    let answer = a.http("GET", "/kit/hi?x=1", "");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "kit /kit/hi");
    assert_eq!(answer.header("x-fabric-host"), Some(b.id()));
    assert_eq!(answer.header("x-fabric-version").as_deref(), Some("1"));
    // Bodies stream through the hop both ways.
    let body: String = (0..60_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let echoed = a.http("POST", "/kit/echo", &body);
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.text(), body);
    assert_eq!(chunked_echo(&a, 8 << 10), 200);
    // The peer's limits and failures come back as they are.
    assert_eq!(a.http("POST", "/kit/echo", &"z".repeat(100 << 10)).status, 413);
    assert_eq!(chunked_echo(&a, 100 << 10), 413);
    let trapped = a.http("GET", "/kit/trap", "");
    assert_eq!(trapped.status, 500, "{}", trapped.text());
    let looped = a.http("GET", "/kit/loop", "");
    assert_eq!(looped.status, 504, "{}", looped.text());
    assert_eq!(a.http("GET", "/kit/after", "").text(), "kit /kit/after");
    // A small body A reads whole before forwarding that stops coming is a
    // 504 within the deployment's timeout.
    let stalled = stalled_body(&a);
    assert!(stalled.starts_with("HTTP/1.1 504") && stalled.contains("did not arrive within"), "{stalled}");
    // Only B holds replicas: A's cap is zero.
    let on_a = replicas_on(&a, "kit", &a.id());
    assert_eq!((on_a["desired"].as_u64(), on_a["instances"].as_u64()), (Some(0), Some(0)), "{on_a}");
    assert!(replicas_on(&a, "kit", &b.id())["instances"].as_u64().unwrap() >= 1);
    // B's two `special` hold two replicas of one each, whatever `--max` says.
    assert_eq!((on_a["cap"].as_u64(), replicas_on(&a, "kit", &b.id())["cap"].as_u64()), (Some(0), Some(2)));
    let listing = a.fabric(&["deployments"]).stdout;
    let kit = listing.lines().find(|l| l.starts_with("kit ")).unwrap_or_default();
    assert!(kit.split_whitespace().nth(5) == Some("2"), "the CAP column: {listing}");

    // Task deployments forward too.
    deploy(&a, &example("http_json"), &["--name", "stats", "--resources", "special=1"]);
    let summary = a.http("POST", "/v1/call/stats/summarize", r#"{"values": [1, 2]}"#);
    assert_eq!(summary.status, 200, "{}", summary.text());
    assert_eq!(summary.text(), r#"{"count":2,"mean":1.5,"min":1.0,"max":2.0}"#);
    assert_eq!(summary.header("x-fabric-host"), Some(b.id()));
    // Unknown names are still the forwarder's own 404.
    assert_eq!(a.http("POST", "/v1/call/nothing/here", "{}").status, 404);
    // HTTP/2 requests are forwarded as well (the peer gets the authority
    // as the host).
    let body = r#"{"values": [1, 2]}"#;
    let over_h2 =
        http2(&a, &[("GET", "/kit/h2", ""), ("POST", "/v1/call/stats/summarize", body), ("POST", "/kit/echo", "h2")]);
    let b_id = Some(b.id());
    assert_eq!(over_h2[0], (200, hyper::Version::HTTP_2, b_id.clone(), "kit /kit/h2".to_string()));
    let summary = r#"{"count":2,"mean":1.5,"min":1.0,"max":2.0}"#.to_string();
    assert_eq!(over_h2[1], (200, hyper::Version::HTTP_2, b_id.clone(), summary));
    assert_eq!(over_h2[2], (200, hyper::Version::HTTP_2, b_id, "h2".to_string()));

    // With B gone, A has nowhere to send them: 503 saying why.
    drop(b);
    let gone = eventually(Duration::from_secs(20), "A answers 503 once B is gone", || {
        let answer = a.http("GET", "/kit/hi", "");
        (answer.status == 503).then_some(answer)
    });
    assert!(gone.text().contains("no host in the cluster can run a replica"), "{}", gone.text());
    // A `/v1/call` caller gets the JSON error shape for it.
    let call = a.http("POST", "/v1/call/stats/summarize", r#"{"values": [1, 2]}"#);
    assert_eq!(call.status, 503, "{}", call.text());
    let error: Value = serde_json::from_slice(&call.body).expect("a JSON error");
    assert_eq!(error["error"]["kind"], "unavailable", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("no host in the cluster"), "{error}");
}

#[test]
fn a_full_host_sends_its_overflow_to_a_peer() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let mut b = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b], &ids(&[&a, &b]), "both hosts to be members");
    deploy(&a, &http_kit(), &["--name", "kit", "--route", "/kit", "--max", "1"]);

    // A's one replica is busy...
    let gateway = a.gateway();
    let slow = in_background(gateway, "GET", "/kit/sleep?ms=3000", "");
    eventually(Duration::from_secs(10), "A's replica to be busy", || {
        (replicas_on(&a, "kit", &a.id())["busy"].as_u64() == Some(1)).then_some(())
    });
    // ...so the next request to A is served by B, at once.
    let quick = a.http("GET", "/kit/quick", "");
    assert_eq!(quick.status, 200, "{}", quick.text());
    assert_eq!(quick.header("x-fabric-host"), Some(b.id()));
    let slow = slow.join().unwrap().expect("an answer");
    assert_eq!(slow.status, 200);
    assert_eq!(slow.header("x-fabric-host"), Some(a.id()));
    // Free again, A serves its own requests.
    assert_eq!(a.http("GET", "/kit/again", "").header("x-fabric-host"), Some(a.id()));

    // A peer that died is still in A's view until its lease runs out: A
    // gives up on reaching it before reading the body and serves the
    // request itself once its replica is free.
    b.kill9();
    let slow = in_background(gateway, "GET", "/kit/sleep?ms=1500", "");
    std::thread::sleep(Duration::from_millis(300));
    let fallback = a.http("GET", "/kit/fallback", "");
    assert_eq!(fallback.status, 200, "{}", fallback.text());
    assert_eq!(fallback.header("x-fabric-host"), Some(a.id()));
    assert_eq!(slow.join().unwrap().expect("an answer").status, 200);
}

#[test]
fn forwarding_passes_over_a_peer_whose_answer_said_it_is_busy() {
    let etcd = Etcd::start();
    let [a, b, c] = cluster(&etcd, [&[], &[], &[]]);
    deploy(&a, &http_kit(), &["--name", "kit", "--route", "/kit", "--max", "2"]);
    // A breaks ties between peers it knows nothing of by id.
    let (first, second) = if b.id() < c.id() { (&b, &c) } else { (&c, &b) };
    eventually(Duration::from_secs(10), "the first peer to serve the route", || {
        (first.http("GET", "/kit/ready", "").status == 200).then_some(())
    });
    // One of its two replicas is busy with its own client's request; both of A's are busy.
    let own = in_background(first.gateway(), "GET", "/kit/sleep?ms=5000", "");
    eventually(Duration::from_secs(10), "the first peer's replica to be busy", || {
        (replicas_on(first, "kit", &first.id())["busy"].as_u64() == Some(1)).then_some(())
    });
    let a_busy = [
        in_background(a.gateway(), "GET", "/kit/sleep?ms=5000", ""),
        in_background(a.gateway(), "GET", "/kit/sleep?ms=5000", ""),
    ];
    eventually(Duration::from_secs(10), "A's replicas to be busy", || {
        (replicas_on(&a, "kit", &a.id())["busy"].as_u64() == Some(2)).then_some(())
    });
    // A forwards to the first peer, whose answer says it has a request
    // besides; so A sends the next to the other (counting only what it
    // forwarded itself, it would pick the first again).
    let one = a.http("GET", "/kit/one", "");
    assert_eq!((one.status, one.header("x-fabric-host")), (200, Some(first.id())), "{}", one.text());
    let two = a.http("GET", "/kit/two", "");
    assert_eq!((two.status, two.header("x-fabric-host")), (200, Some(second.id())), "{}", two.text());
    for slow in a_busy.into_iter().chain([own]) {
        assert_eq!(slow.join().unwrap().expect("an answer").status, 200);
    }
}

/// The host among `hosts` that `a` lists as busy with a request of `kit`.
fn busy_host(a: &Up, hosts: &[&Up]) -> String {
    let ids: Vec<String> = hosts.iter().map(|h| h.id()).collect();
    eventually(Duration::from_secs(10), "a request to be under way on a peer", || {
        let replicas = listed(a, "kit")?["replicas"].as_array()?.clone();
        replicas
            .iter()
            .filter(|r| r["busy"] == 1)
            .filter_map(|r| r["host"].as_str())
            .find(|host| ids.iter().any(|id| id == host))
            .map(String::from)
    })
}

#[test]
fn a_request_whose_peer_is_lost_before_answering_is_served_by_another() {
    let etcd = Etcd::start();
    let special: &[&str] = &["--resources", "special=1"];
    let [a, b, c, d] = cluster(&etcd, [&[], special, special, special]);
    deploy(&a, &http_kit(), &["--name", "kit", "--route", "/kit", "--resources", "special=1"]);
    let mut peers = vec![b, c, d];
    let kill_busy = |peers: &mut Vec<Up>| {
        let busy = busy_host(&a, &peers.iter().collect::<Vec<_>>());
        let at = peers.iter().position(|p| p.id() == busy).expect("a peer");
        peers.remove(at).kill9();
        busy
    };

    // A runs no replica: it forwards a body too large to keep (it streams
    // through A) to a peer, which dies before answering: the body cannot
    // be sent again, so the answer is 502, naming the host, although two
    // other hosts could have served it.
    let large: &'static str = "x".repeat(200 << 10).leak();
    let streamed = in_background(a.gateway(), "POST", "/kit/sleep?ms=3000", large);
    let lost = kill_busy(&mut peers);
    let answer = streamed.join().unwrap().expect("an answer");
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.text().contains(&format!("host {lost}")), "{}", answer.text());

    // A small body is kept: its request, lost the same way, is served by
    // the host left.
    let slow = in_background(a.gateway(), "POST", "/kit/sleep?ms=2000", "a small body");
    kill_busy(&mut peers);
    let answer = slow.join().unwrap().expect("an answer");
    assert_eq!((answer.status, answer.text()), (200, "slept 2000 ms".to_string()));
    assert_eq!(answer.header("x-fabric-host"), Some(peers[0].id()));
}

#[test]
fn what_a_calls_actor_prints_on_a_peer_reaches_the_deployments_log() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], &["--label", "role=b"]]);
    deploy(&a, &testkit(), &["--name", "tk"]);
    // Served on a; the actor it creates lives on b and prints there.
    let args = r#"{"key": "role", "value": "b", "text": "a probe on b speaks", "hold_ms": 1000}"#;
    let called = a.http("POST", "/v1/call/tk/actor_says", args);
    assert_eq!(called.status, 200, "{}", called.text());
    let placed: Value = serde_json::from_str(&called.text()).expect("a JSON result");
    assert_eq!(placed, serde_json::json!(b.id()));
    let out = a.fabric(&["logs", "--deployment", "tk"]);
    assert!(out.stdout.contains("a probe on b speaks"), "the actor's output: {}", out.stdout);
    assert!(out.stdout.contains(&format!("the probe lives on {}", b.id())), "the call's own: {}", out.stdout);
}

#[test]
fn a_pipeline_of_deployments_calls_its_stages_through_the_fabric() {
    let host = Up::start();
    deploy(&host, &example("pipeline_router"), &["--name", "router"]);
    // Before its stages exist, the router says which one is missing.
    let missing = host.http("POST", "/v1/call/router/classify", r#"{"text": "good"}"#);
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(missing.text().contains("no deployment `preprocess`"), "{}", missing.text());

    deploy(&host, &example("pipeline_preprocess"), &["--name", "preprocess"]);
    deploy(&host, &example("pipeline_classify"), &["--name", "classify"]);
    let one = host.http("POST", "/v1/call/router/classify", r#"{"text": "I love this fast, wonderful fabric!"}"#);
    assert_eq!(one.status, 200, "{}", one.text());
    let one: Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(
        one,
        serde_json::json!({"label": "positive", "score": 1.0, "tokens": ["love", "fast", "wonderful", "fabric"]})
    );
    let many = host.http(
        "POST",
        "/v1/call/router/classify_many",
        r#"{"texts": ["what a terrible, slow day", "the sky is blue", "good but broken"]}"#,
    );
    assert_eq!(many.status, 200, "{}", many.text());
    let labels: Vec<Value> =
        serde_json::from_slice::<Vec<Value>>(&many.body).unwrap().iter().map(|r| r["label"].clone()).collect();
    assert_eq!(labels, ["negative", "neutral", "neutral"]);

    // A stage's own error reaches the caller with its kind.
    let empty = host.http("POST", "/v1/call/router/classify", r#"{"text": "?!"}"#);
    assert_eq!(empty.status, 500, "{}", empty.text());
    let empty: Value = serde_json::from_slice(&empty.body).unwrap();
    assert_eq!(empty["error"]["kind"], "failed");
    assert!(empty["error"]["message"].as_str().unwrap().contains("no words"), "{empty}");

    // A stage rolls out on its own: the router calls the version serving now.
    deploy(&host, &example("http_json"), &["--name", "classify"]);
    let rolled = host.http("POST", "/v1/call/router/classify", r#"{"text": "good"}"#);
    assert_eq!(rolled.status, 404, "{}", rolled.text());
    assert!(rolled.text().contains("no task `predict`"), "{}", rolled.text());
    // Only task deployments are called as tasks.
    deploy(&host, &example("http_hello"), &["--name", "preprocess", "--route", "/pre"]);
    let wrong = host.http("POST", "/v1/call/router/classify", r#"{"text": "good"}"#);
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert!(wrong.text().contains("wasi:http component"), "{}", wrong.text());
}

/// `POST /v1/call/{path}` with `body` from `n` threads at once; the answers
/// in order.
fn concurrent_calls(host: &Up, path: &str, bodies: Vec<String>) -> Vec<fabric::http::Answer> {
    let gateway = host.gateway();
    let calls: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(fabric::http::request(gateway, "POST", &path, &[], body)).unwrap()
            })
        })
        .collect();
    calls.into_iter().map(|call| call.join().unwrap()).collect()
}

#[test]
fn batched_calls_share_one_call_of_the_batch_function() {
    let host = Up::start();
    let batched = ["--batch", "batch_double", "--max-batch-size", "4", "--batch-wait-ms", "3000"];
    deploy(&host, &testkit(), &[&["--name", "kit"][..], &batched[..]].concat());

    // Eight requests at once: two full batches of four, each answered with
    // its own item.
    let bodies = (0..8).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    for (n, answer) in concurrent_calls(&host, "/v1/call/kit/batch_double", bodies).into_iter().enumerate() {
        assert_eq!(answer.status, 200, "{}", answer.text());
        let item: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(item, serde_json::json!({"n": n, "doubled": 2 * n, "batch": 4}));
    }
    // The other functions are called one request at a time.
    assert_eq!(host.http("POST", "/v1/call/kit/add", r#"{"a": 2, "b": 3}"#).text(), "5");

    // A lone request waits out the batch window, then runs alone.
    deploy(&host, &testkit(), &["--name", "quick", "--batch", "batch_double", "--batch-wait-ms", "20"]);
    let alone: Value =
        serde_json::from_slice(&host.http("POST", "/v1/call/quick/batch_double", r#"{"n": 7}"#).body).unwrap();
    assert_eq!(alone, serde_json::json!({"n": 7, "doubled": 14, "batch": 1}));

    // A batch function that answers a list of the wrong length fails every
    // request of its batch, saying so.
    deploy(
        &host,
        &testkit(),
        &["--name", "short", "--batch", "batch_short", "--max-batch-size", "2", "--batch-wait-ms", "3000"],
    );
    let bodies = (0..2).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    for answer in concurrent_calls(&host, "/v1/call/short/batch_short", bodies) {
        assert_eq!(answer.status, 500, "{}", answer.text());
        assert!(answer.text().contains("answered 1 results for a batch of 2"), "{}", answer.text());
    }

    // Batching is for task deployments, within bounds.
    let refused = deploy_refused(&host, &http_kit(), &["--name", "web", "--route", "/web", "--batch", "handle"]);
    assert!(refused.contains("batching is for task deployments"), "{refused}");
    let refused =
        deploy_refused(&host, &testkit(), &["--name", "zero", "--batch", "batch_double", "--max-batch-size", "0"]);
    assert!(refused.contains("--max-batch-size is 1 to"), "{refused}");
    let refused =
        deploy_refused(&host, &testkit(), &["--name", "slow", "--batch", "batch_double", "--batch-wait-ms", "60001"]);
    assert!(refused.contains("--batch-wait-ms is at most 60000"), "{refused}");
    let refused = deploy_refused(&host, &testkit(), &["--name", "nofn", "--batch-wait-ms", "5"]);
    assert!(refused.contains("--batch"), "{refused}");
}

#[test]
fn a_stopping_host_answers_the_requests_it_has_begun() {
    let mut host = Up::start();
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit"]);
    let gateway = host.gateway();
    let slow = in_background(gateway, "GET", "/kit/sleep?ms=1500", "");
    eventually(Duration::from_secs(10), "the request to be under way", || {
        (listed(&host, "kit")?["replicas"][0]["busy"].as_u64() == Some(1)).then_some(())
    });
    host.terminate();
    let answer = slow.join().unwrap().expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(host.wait_exit(Duration::from_secs(20)), "the host exits once the request is answered");
    // The gateway is gone: a new connection is refused.
    assert!(std::net::TcpStream::connect(gateway).is_err());
}

#[test]
fn a_handler_runs_to_its_end_when_its_client_goes_away() {
    let host = Up::start();
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit", "--max", "1"]);
    assert_eq!(host.http("GET", "/kit/count", "").text(), "1");
    // A client asks for a slow answer and hangs up before it comes.
    let mut client = std::net::TcpStream::connect(host.gateway()).unwrap();
    client.write_all(b"GET /kit/sleep?ms=300 HTTP/1.1\r\nhost: kit\r\n\r\n").unwrap();
    eventually(Duration::from_secs(10), "the request to be under way", || {
        (listed(&host, "kit")?["replicas"][0]["busy"].as_u64() == Some(1)).then_some(())
    });
    drop(client);
    eventually(Duration::from_secs(10), "the handler to end", || {
        (listed(&host, "kit")?["replicas"][0]["busy"].as_u64() == Some(0)).then_some(())
    });
    // The handler finished cleanly, so its instance was kept: the same one
    // answers next, having served all three requests.
    assert_eq!(host.http("GET", "/kit/count", "").text(), "3");
}

#[test]
fn a_deployments_log_shows_its_instances_output_and_failed_requests() {
    let host = Up::start();
    deploy(&host, &http_kit(), &["--name", "kit", "--route", "/kit", "--timeout", "1"]);
    assert_eq!(host.http("GET", "/kit/trap", "").status, 500);
    let out = host.fabric(&["logs", "--deployment", "kit"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("==> kit v1 on host {} <==", host.id())), "{}", out.stdout);
    assert!(out.stdout.contains("the kit was asked to trap"), "the guest's own output: {}", out.stdout);
    assert!(out.stdout.contains("[fabric] request failed"), "the gateway's note: {}", out.stdout);
    let missing = host.fabric(&["logs", "--deployment", "nothing"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("no host serves a deployment named nothing"), "{missing:?}");
    let neither = host.fabric(&["logs"]);
    assert_ne!(neither.code, 0, "{neither:?}");

    // A task deployment's log has what its calls print, and why they failed.
    deploy(&host, &fabric_tests::testkit(), &["--name", "tk"]);
    let called = host.http("POST", "/v1/call/tk/trap", r#"{"message": "a call that fails"}"#);
    assert_eq!(called.status, 500, "{}", called.text());
    let out = host.fabric(&["logs", "--deployment", "tk"]);
    assert!(out.stdout.contains("about to fail: a call that fails"), "the call's own output: {}", out.stdout);
    assert!(out.stdout.contains("[fabric] call of `trap` failed"), "the gateway's note: {}", out.stdout);

    // Followed, it prints what comes next as it comes, until the
    // deployment is removed.
    let printed = host.data_dir().join("follow.out");
    let data_dir = host.data_dir().to_string_lossy().into_owned();
    let mut follower =
        fabric_tests::fabric_command(&["--data-dir", &data_dir, "logs", "--deployment", "kit", "--follow"])
            .stdout(std::fs::File::create(&printed).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let traps = || std::fs::read_to_string(&printed).unwrap_or_default().matches("the kit was asked to trap").count();
    let so_far = eventually(Duration::from_secs(10), "the follower to print the log so far", || {
        let n = traps();
        (n > 0).then_some(n)
    });
    assert_eq!(host.http("GET", "/kit/trap", "").status, 500);
    eventually(Duration::from_secs(10), "the follower to print the new failure", || {
        (traps() == 2 * so_far).then_some(())
    });
    assert_eq!(host.fabric(&["undeploy", "kit"]).code, 0);
    let ended = eventually(Duration::from_secs(10), "the follower to end", || follower.try_wait().ok().flatten());
    assert!(ended.success(), "{ended:?}");
    let text = std::fs::read_to_string(&printed).unwrap();
    assert!(text.contains("deployment kit is no longer served"), "{text}");
}

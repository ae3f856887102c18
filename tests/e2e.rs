//! End to end: a real `fabric up` on loopback, the real CLI, real components.

use fabric_tests::{example, fabric, testkit, Up};
use serde_json::{json, Value};

/// Submits `hello` and checks it still works: the host kept serving.
fn assert_serving(up: &Up) {
    let out = up.submit(&example("hello"), &["--args", r#"{"name": "again"}"#]);
    assert_eq!(out.code, 0, "host stopped serving: {out:?}\n{}", up.up_log());
    assert_eq!(out.json()["result"], "Hello, again!");
}

/// Runs a testkit function expected to fail; returns the error object.
fn expect_failure(up: &Up, args: &[&str]) -> Value {
    let out = up.submit(&testkit(), args);
    assert_eq!(out.code, 1, "expected a failed job: {out:?}");
    let v = out.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["job"].as_str().is_some_and(|j| j.starts_with("job-")), "{v}");
    v["error"].clone()
}

#[test]
fn hello_runs_and_prints_its_log() {
    let up = Up::start();
    let out = up.fabric(&["submit", example("hello").to_str().unwrap(), "--args", r#"{"name": "fabric"}"#]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "Hello, fabric!");
    assert!(out.stderr.contains("saying hello to fabric"), "log not streamed: {}", out.stderr);

    let v = up.submit(&example("hello"), &[]).json();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["result"], "Hello, world!");
}

#[test]
fn a_host_runs_on_as_many_worker_threads_as_asked() {
    let one = Up::start_with(&["--workers", "1"]);
    assert_serving(&one);
    assert!(one.up_log().contains("with 1 workers"), "{}", one.up_log());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = Up::start();
    assert!(default.up_log().contains(&format!("with {cores} workers")), "{}", default.up_log());
    let refused = fabric(&["up", "--workers", "0"]);
    assert!(refused.code != 0 && refused.stderr.contains("--workers"), "{refused:?}");
}

#[test]
fn fanout_estimates_pi_with_a_thousand_tasks() {
    let up = Up::start();
    let v = up.submit(&example("fanout"), &["--args", r#"{"tasks": 1000, "samples": 2000}"#]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = &v["result"];
    assert_eq!(r["tasks"], 1000);
    assert_eq!(r["samples"], 2_000_000);
    let pi = r["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi estimate {pi}");
    // The same seeds give the same count: the reduction saw every task.
    let again = up.submit(&example("fanout"), &["--args", r#"{"tasks": 1000, "samples": 2000}"#]).json();
    assert_eq!(again["result"]["inside"], r["inside"]);
}

#[test]
fn objects_example_shares_an_array_by_reference() {
    let up = Up::start();
    let v = up.submit(&example("objects"), &["--args", r#"{"mib": 64, "slices": 64}"#]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = &v["result"];
    assert_eq!(r["elements"], 8 * 1024 * 1024);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["sum"], r["expected"]);
}

#[test]
fn resubmitting_the_same_component_uploads_nothing() {
    let up = Up::start();
    let first = up.submit(&example("hello"), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stderr.contains("uploaded component"), "{}", first.stderr);
    let second = up.submit(&example("hello"), &[]);
    assert_eq!(second.code, 0);
    assert!(!second.stderr.contains("uploaded component"), "uploaded twice: {}", second.stderr);
    assert_eq!(first.json()["component"], second.json()["component"]);
    // Another tenant does not see the first tenant's component: it uploads.
    let other = up.fabric(&["--tenant", "other", "submit", example("hello").to_str().unwrap()]);
    assert!(other.stderr.contains("uploaded component"), "{}", other.stderr);
}

#[test]
fn a_guest_trap_is_a_clear_error() {
    let up = Up::start();
    let err = expect_failure(&up, &["--fn", "trap", "--args", r#"{"message": "kaboom"}"#]);
    assert_eq!(err["kind"], "trapped");
    assert!(err["message"].as_str().unwrap().contains("kaboom"), "panic message missing: {err}");
    // A child's trap reaches its parent as the same typed error.
    let err = expect_failure(&up, &["--fn", "child_trap"]);
    assert_eq!(err["kind"], "trapped");
    assert!(err["message"].as_str().unwrap().contains("child boom"), "{err}");
    // A task's own error is `failed`, with its message.
    let err = expect_failure(&up, &["--fn", "fail", "--args", r#"["bad input"]"#]);
    assert_eq!(err, json!({"kind": "failed", "message": "bad input"}));
    assert_serving(&up);
}

#[test]
fn an_infinite_loop_hits_the_cpu_budget_or_the_timeout() {
    let up = Up::start();
    let err = expect_failure(&up, &["--fn", "spin", "--cpu", "0.5"]);
    assert_eq!(err["kind"], "timed-out");
    assert!(err["message"].as_str().unwrap().contains("CPU budget"), "{err}");
    let err = expect_failure(&up, &["--fn", "spin", "--timeout", "0.5"]);
    assert_eq!(err["kind"], "timed-out");
    assert!(err["message"].as_str().unwrap().contains("wall-clock"), "{err}");
    assert_serving(&up);
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    let up = Up::start();
    let err = expect_failure(&up, &["--fn", "membomb", "--memory", "64"]);
    assert_eq!(err["kind"], "resource-limit");
    assert!(err["message"].as_str().unwrap().contains("memory limit"), "{err}");
    // With the default cap too.
    let err = expect_failure(&up, &["--fn", "membomb"]);
    assert_eq!(err["kind"], "resource-limit");
    assert_serving(&up);
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let up = Up::start();
    let err = expect_failure(&up, &["--fn", "recurse", "--args", r#"{"depth": 100000000}"#]);
    assert_eq!(err["kind"], "trapped");
    assert!(err["message"].as_str().unwrap().contains("stack overflow"), "{err}");
    let ok = up.submit(&testkit(), &["--fn", "recurse", "--args", r#"{"depth": 1000}"#]);
    assert_eq!(ok.json()["result"], 1000);
    assert_serving(&up);
}

#[test]
fn bad_wasm_is_refused_with_a_reason() {
    let up = Up::start();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        ("text.wasm", b"hello, I am not wasm".to_vec(), "not a WebAssembly file"),
        ("empty.wasm", Vec::new(), "not a WebAssembly file"),
        ("truncated.wasm", std::fs::read(example("hello")).unwrap()[..4000].to_vec(), "invalid WebAssembly component"),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = up.submit(&path, &[]);
        assert_eq!(out.code, 2, "{name}: {out:?}");
        let v = out.json();
        assert_eq!(v["state"], "rejected", "{name}: {v}");
        assert_eq!(v["error"]["kind"], "invalid-argument", "{name}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(reason), "{name}: {v}");
        // `fabric run` refuses it the same way.
        let run = fabric(&["--data-dir", up.data_dir().to_str().unwrap(), "run", path.to_str().unwrap()]);
        assert_eq!(run.code, 2, "{name}: {run:?}");
        assert!(run.stderr.contains(reason), "{name}: {}", run.stderr);
    }
    let missing = up.submit(&dir.path().join("nope.wasm"), &[]);
    assert_eq!(missing.code, 2);
    assert!(missing.json()["error"]["message"].as_str().unwrap().contains("cannot read"));
    assert_serving(&up);
}

#[test]
fn a_missing_function_and_bad_arguments_are_clear_errors() {
    let up = Up::start();
    let err = expect_failure(&up, &["--fn", "nope"]);
    assert_eq!(err["kind"], "not-found");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("no task `nope`") && message.contains("add"), "{err}");

    let err = expect_failure(&up, &["--fn", "add", "--args", "{not json"]);
    assert_eq!(err["kind"], "invalid-argument");
    let err = expect_failure(&up, &["--fn", "add", "--args", r#"{"a": 1}"#]);
    assert_eq!(err["kind"], "invalid-argument");
    assert!(err["message"].as_str().unwrap().contains("missing field `b`"), "{err}");
    let err = expect_failure(&up, &["--fn", "add", "--args", r#"{"a": 1, "b": "two"}"#]);
    assert_eq!(err["kind"], "invalid-argument");
    let err = expect_failure(&up, &["--fn", "add", "--args", r#"{"a": 1, "b": 2, "c": 3}"#]);
    assert!(err["message"].as_str().unwrap().contains("unknown field `c`"), "{err}");
    // Positional arguments work too.
    let ok = up.submit(&testkit(), &["--fn", "add", "--args", "[40, 2]"]).json();
    assert_eq!(ok["result"], 42);
    assert_serving(&up);
}

#[test]
fn job_records_survive_a_restart() {
    let mut up = Up::start();
    let v = up.submit(&example("hello"), &["--args", r#"{"name": "disk"}"#]).json();
    let job = v["job"].as_str().unwrap().to_string();
    // A job still running when the host stops is recorded as interrupted.
    let detached = up.submit(&testkit(), &["--fn", "sleep", "--args", "[60000]", "--detach"]).json();
    let running = detached["job"].as_str().unwrap().to_string();
    up.restart();

    let status = up.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["result"], "Hello, disk!");
    let interrupted = up.fabric(&["status", &running, "--output", "json"]).json();
    assert_eq!(interrupted["state"], "failed", "{interrupted}");
    let jobs = up.fabric(&["jobs", "--output", "json"]).json();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    let logs = up.fabric(&["logs", &job]);
    assert!(logs.stdout.contains("saying hello to disk") || logs.stderr.contains("saying hello to disk"), "{logs:?}");
    // The component survived too: no upload needed after the restart.
    let again = up.submit(&example("hello"), &[]);
    assert!(!again.stderr.contains("uploaded component"), "{}", again.stderr);
    assert_eq!(again.json()["state"], "succeeded");
}

#[test]
fn concurrent_jobs_all_complete() {
    let up = Up::start();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let up = &up;
                s.spawn(move || {
                    let args = format!("[{i}, 100]");
                    up.submit(&testkit(), &["--fn", "add", "--args", &args]).json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, v) in results.iter().enumerate() {
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(v["result"], i as i64 + 100);
    }
    let jobs = up.fabric(&["jobs", "--output", "json"]).json();
    assert_eq!(jobs.as_array().unwrap().len(), 8);
}

#[test]
fn waiting_parents_lend_their_slot_so_nested_tasks_finish_on_one_slot() {
    let up = Up::start_with(&["--slots", "1"]);
    let v = up.submit(&testkit(), &["--fn", "nested", "--args", "[30]"]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"], 30);
    let v = up.submit(&testkit(), &["--fn", "wait_all", "--args", "[200]"]).json();
    assert_eq!(v["result"], (0..200).map(|i| i + 1).sum::<i64>());
}

#[test]
fn stop_ends_a_running_job_and_logs_follow_it() {
    let up = Up::start();
    let v = up.submit(&testkit(), &["--fn", "sleep", "--args", "[60000]", "--detach"]).json();
    let job = v["job"].as_str().unwrap().to_string();
    let status = up.fabric(&["status", &job, "--output", "json"]).json();
    assert!(matches!(status["state"].as_str(), Some("queued" | "running")), "{status}");
    let stopped = up.fabric(&["stop", &job, "--output", "json"]).json();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["error"]["kind"], "cancelled");
    let jobs = up.fabric(&["jobs"]);
    assert!(jobs.stdout.contains(&job) && jobs.stdout.contains("stopped"), "{}", jobs.stdout);
    assert_eq!(up.fabric(&["status", "job-000000000000"]).code, 2);
    assert_serving(&up);
}

#[test]
fn tenants_see_only_their_own_jobs_and_objects() {
    let up = Up::start();
    // The holder keeps its object alive until it is stopped at the end.
    let holder = up.submit(&testkit(), &["--fn", "put_and_hold", "--args", "[600000]", "--detach"]).json();
    let holder_job = holder["job"].as_str().unwrap().to_string();
    // Find the object id the holder logged.
    let mut id = String::new();
    for _ in 0..200 {
        let logs = up.fabric(&["logs", &holder_job]);
        if let Some(line) = logs.stdout.lines().chain(logs.stderr.lines()).find(|l| l.starts_with("object ")) {
            id = line["object ".len()..].trim().to_string();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(id.len(), 32, "object id not logged");
    let args = json!([id]).to_string();
    let wasm = testkit();
    let theirs = up.fabric(&[
        "--tenant",
        "mallory",
        "submit",
        wasm.to_str().unwrap(),
        "--fn",
        "read_object",
        "--args",
        &args,
        "--output",
        "json",
    ]);
    let v = theirs.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "not-found", "{v}");
    // Same tenant, another job: visible while the owning job lives.
    let ours = up.submit(&wasm, &["--fn", "read_object", "--args", &args]).json();
    assert_eq!(ours["result"], "secret", "{ours}");
    // Jobs are per tenant.
    let mallory_jobs = up.fabric(&["--tenant", "mallory", "jobs", "--output", "json"]).json();
    assert_eq!(mallory_jobs.as_array().unwrap().len(), 1);
    assert!(!mallory_jobs.to_string().contains(&holder_job));
    assert_eq!(up.fabric(&["--tenant", "mallory", "status", &holder_job]).code, 2);
    let who = up
        .fabric(&["--tenant", "team-a", "submit", wasm.to_str().unwrap(), "--fn", "whoami", "--output", "json"])
        .json();
    assert_eq!(who["result"][0], "team-a");
    let bad = up.fabric(&["--tenant", "../etc", "jobs"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("invalid tenant"), "{}", bad.stderr);
    // Mallory cannot stop it either; its owner can.
    assert_eq!(up.fabric(&["--tenant", "mallory", "stop", &holder_job]).code, 2);
    assert_eq!(up.fabric(&["stop", &holder_job, "--output", "json"]).json()["state"], "stopped");
}

#[test]
fn run_executes_in_process_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = fabric(&["--data-dir", data, "run", example("hello").to_str().unwrap(), "--args", r#"["run"]"#]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "Hello, run!");
    assert!(out.stderr.contains("saying hello to run"));
    let out = fabric(&[
        "--data-dir",
        data,
        "run",
        testkit().to_str().unwrap(),
        "--fn",
        "trap",
        "--args",
        r#"["x"]"#,
        "--output",
        "json",
    ]);
    assert_eq!(out.code, 1);
    assert_eq!(out.json()["error"]["kind"], "trapped");
}

#[test]
fn hostile_frames_do_not_take_the_host_down() {
    use std::net::UdpSocket;
    let up = Up::start();
    let addr = std::fs::read_to_string(up.data_dir().join("host.addr")).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..1200u32).map(|j| (i.wrapping_mul(31).wrapping_add(j * 7)) as u8).collect();
        socket.send_to(&junk, addr.trim()).unwrap();
    }
    assert_serving(&up);
}

#[test]
fn malformed_protocol_frames_get_errors_and_the_host_keeps_serving() {
    use fabric_proto::{read_frame, ErrorKind, Response, MAX_FRAME};
    let up = Up::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let addr = fabric::client::resolve_addr(None, up.data_dir()).unwrap();
        let client = fabric::client::Client::connect(up.data_dir(), addr, "default").await.unwrap();
        let frames: [Vec<u8>; 3] = [
            [12u32.to_le_bytes().to_vec(), vec![0xff; 12]].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [64u32.to_le_bytes().to_vec(), vec![0u8; 10]].concat(),
        ];
        for frame in frames {
            let (mut send, mut recv) = client.open_raw().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                Ok(Some(Response::Error(e))) => assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}"),
                other => panic!("expected an error frame, got {other:?}"),
            }
        }
        // An upload that claims the wrong hash is refused, and stored nowhere.
        let wasm = std::fs::read(example("hello")).unwrap();
        let err = client.upload(&wasm, &"0".repeat(64)).await.unwrap_err();
        assert!(format!("{err}").contains("upload corrupted"), "{err}");
        assert_eq!(client.ping().await.unwrap().len(), 16);
    });
    assert_serving(&up);
}

#[test]
fn instances_are_reused_only_after_clean_calls_and_only_within_a_tenant() {
    // One slot, so exactly one warm instance per (tenant, component, cap).
    let up = Up::start_with(&["--slots", "1"]);
    let calls = |tenant: &str| {
        let wasm = testkit();
        let out = up.fabric(&[
            "--tenant",
            tenant,
            "submit",
            wasm.to_str().unwrap(),
            "--fn",
            "instance_calls",
            "--output",
            "json",
        ]);
        out.json()["result"].as_u64().unwrap_or_else(|| panic!("{out:?}"))
    };
    assert_eq!(calls("default"), 1);
    assert_eq!(calls("default"), 2, "a clean instance is reused");
    assert_eq!(calls("other"), 1, "another tenant never gets this tenant's instance");
    expect_failure(&up, &["--fn", "trap", "--args", r#"["x"]"#]);
    assert_eq!(calls("default"), 1, "a trapped instance is never reused");
    // A different memory cap gets its own instance.
    let capped = up.submit(&testkit(), &["--fn", "instance_calls", "--memory", "32"]).json();
    assert_eq!(capped["result"], 1);
}

#[test]
fn large_objects_round_trip_intact_and_bad_reads_are_refused() {
    let up = Up::start();
    let v = up.submit(&testkit(), &["--fn", "roundtrip", "--args", "[48]"]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"], 48u64 << 20);
    let err = expect_failure(&up, &["--fn", "read_past_end"]);
    assert_eq!(err["kind"], "invalid-argument", "{err}");
    assert!(err["message"].as_str().unwrap().contains("past the end"), "{err}");
    assert_serving(&up);
}

#[test]
fn an_object_over_the_hosts_limit_is_a_resource_limit_error() {
    let up = Up::start_with(&["--max-object-mib", "1"]);
    let err = expect_failure(&up, &["--fn", "roundtrip", "--args", "[8]"]);
    assert_eq!(err["kind"], "resource-limit", "{err}");
    let ok = up.submit(&testkit(), &["--fn", "add", "--args", "[1, 2]"]).json();
    assert_eq!(ok["result"], 3);
}

/// Runs a testkit function that must succeed; returns its result.
fn result_of(up: &Up, function: &str, args: &str) -> Value {
    let out = up.submit(&testkit(), &["--fn", function, "--args", args]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{function}: {v}\n{}", out.stderr);
    v["result"].clone()
}

#[test]
fn actor_calls_run_in_order_and_actors_run_in_parallel() {
    let up = Up::start();
    assert_eq!(result_of(&up, "actor_ordering", "[1000]"), true);
    assert_eq!(result_of(&up, "actor_order_from_tasks", "[8, 100]"), true);
    let values = result_of(&up, "many_actors", "[40, 10]");
    let expected: Vec<i64> = (0..40).map(|i| i + 10).collect();
    assert_eq!(values, json!(expected));
}

#[test]
fn fifty_racing_get_or_creates_make_one_actor() {
    let up = Up::start();
    assert_eq!(result_of(&up, "named_race", "[50]"), json!([1, 50]));
}

#[test]
fn actor_handles_travel_through_tasks_and_objects() {
    let up = Up::start();
    assert_eq!(result_of(&up, "handle_travels", "[]"), 12);
}

#[test]
fn a_trapped_actor_restarts_from_its_snapshot_until_it_runs_out_of_restarts() {
    let up = Up::start();
    assert_eq!(result_of(&up, "trap_then_restore", "[]"), json!(["Trapped", 6]));
    assert_eq!(result_of(&up, "trap_then_restore_by_age", "[]"), json!(["Trapped", 6]));
    assert_eq!(result_of(&up, "custom_snapshot_restores", "[]"), 3);
    assert_eq!(result_of(&up, "restarts_exhausted", "[]"), json!(["Trapped", "Trapped", "ActorDead", "ActorDead"]));
    assert_serving(&up);
}

#[test]
fn a_full_mailbox_and_bad_calls_are_clear_errors() {
    let up = Up::start();
    let full = result_of(&up, "mailbox_full", "[]");
    assert!(full[0].as_u64().unwrap() >= 1, "{full}");
    assert_eq!(full[1], "ResourceLimit");
    let bad = result_of(&up, "actor_bad_calls", "[]");
    assert!(bad[0].as_str().unwrap().starts_with("NotFound") && bad[0].as_str().unwrap().contains("nope"), "{bad}");
    assert!(bad[1].as_str().unwrap().starts_with("InvalidArgument"), "{bad}");
    assert_serving(&up);
}

#[test]
fn job_owned_actors_end_with_their_job_and_detached_ones_stay() {
    let up = Up::start();
    result_of(&up, "make_actors", r#"["p"]"#);
    assert_eq!(result_of(&up, "find_actors", r#"["p"]"#), json!([false, 3]));
    // Another tenant sees neither.
    let wasm = testkit();
    let theirs = up.fabric(&[
        "--tenant",
        "other",
        "submit",
        wasm.to_str().unwrap(),
        "--fn",
        "find_actors",
        "--args",
        r#"["p"]"#,
        "--output",
        "json",
    ]);
    assert_eq!(theirs.json()["result"], json!([false, null]));
}

#[test]
fn actor_examples_give_their_checked_results() {
    let up = Up::start();
    let v = up.submit(&example("counter"), &["--args", r#"{"n": 500}"#]).json();
    assert_eq!(v["result"], json!({"value": 125250, "expected": 125250, "in_order": true}), "{v}");
    let v = up.submit(&example("parameter_server"), &["--args", r#"{"workers": 4, "steps": 25}"#]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"]["pushes"], 100);
    assert_eq!(v["result"]["updates"], 100);
    assert_eq!(v["result"]["ok"], true);
}

#[test]
fn named_actors_are_listed_called_and_killed_from_the_cli() {
    let up = Up::start();
    let counter = example("counter");
    let visit = |by: i64| {
        let args = json!({"name": "visits", "by": by}).to_string();
        up.submit(&counter, &["--fn", "visit", "--args", &args]).json()["result"].clone()
    };
    assert_eq!(visit(1), 1);
    assert_eq!(visit(2), 3, "a detached actor outlives the job that made it");
    assert_eq!(up.fabric(&["actor", "call", "visits", "get"]).stdout.trim(), "3");
    assert_eq!(up.fabric(&["actor", "call", "visits", "incr", "--args", r#"{"by": 4}"#]).stdout.trim(), "7");
    let listed = up.fabric(&["actors", "--output", "json"]).json();
    let visits = &listed.as_array().unwrap()[0];
    assert_eq!(visits["name"], "visits");
    assert_eq!(visits["class"], "Counter");
    assert_eq!(visits["state"], "alive");
    assert_eq!(visits["calls"], 4);
    assert!(visits["owner"].is_null(), "{visits}");
    let text = up.fabric(&["actors"]);
    assert!(text.stdout.contains("visits") && text.stdout.contains("Counter"), "{}", text.stdout);

    let bad = up.fabric(&["actor", "call", "visits", "nope"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("no method `nope`"), "{}", bad.stderr);
    let bad = up.fabric(&["actor", "call", "visits", "incr", "--args", r#"{"by": "x"}"#]);
    assert!(bad.stderr.contains("invalid-argument"), "{}", bad.stderr);
    let other = up.fabric(&["--tenant", "other", "actor", "call", "visits", "get"]);
    assert!(other.stderr.contains("no actor named `visits`"), "{}", other.stderr);
    // 32 bytes that are not 32 hex digits (a multi-byte character where an
    // id's halves meet): a plain "no such actor", and the host serves on.
    let odd = format!("{}é{}", "a".repeat(15), "b".repeat(15));
    let bad = up.fabric(&["actor", "call", &odd, "get"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("no actor named"), "{}", bad.stderr);

    assert_eq!(up.fabric(&["actor", "kill", "visits"]).code, 0);
    let gone = up.fabric(&["actor", "call", "visits", "get"]);
    assert_eq!(gone.code, 2);
    assert!(gone.stderr.contains("no actor named `visits`"), "{}", gone.stderr);
    assert_eq!(up.fabric(&["actors", "--output", "json"]).json(), json!([]));
}

#[test]
fn an_upload_that_claims_more_than_it_sends_is_refused() {
    use fabric_proto::{read_frame, write_frame, ErrorKind, Request, Response, MAX_FRAME};
    let up = Up::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let addr = fabric::client::resolve_addr(None, up.data_dir()).unwrap();
        let client = fabric::client::Client::connect(up.data_dir(), addr, "default").await.unwrap();
        let (mut send, mut recv) = client.open_raw().await.unwrap();
        let claim = Request::Upload { tenant: "default".into(), sha256: "0".repeat(64), len: 200 << 20 };
        write_frame(&mut send, &claim).await.unwrap();
        send.write_all(&[0u8; 1000]).await.unwrap();
        send.finish().unwrap();
        match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
            Ok(Some(Response::Error(e))) => {
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
                assert!(e.message.contains("1000 of"), "{e}");
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    });
    assert_serving(&up);
}

#[test]
fn host_to_host_requests_without_a_cluster_certificate_are_refused() {
    use fabric_proto::{read_frame, write_frame, ErrorKind, Request, Response, MAX_FRAME};
    let up = Up::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let addr = fabric::client::resolve_addr(None, up.data_dir()).unwrap();
        let client = fabric::client::Client::connect(up.data_dir(), addr, "default").await.unwrap();
        let peer_only = [
            Request::PeerRun {
                origin: addr.to_string(),
                tenant: "default".into(),
                job: "job-x".into(),
                component: "0".repeat(64),
                function: "main".into(),
                args: Vec::new(),
                limits: Default::default(),
                resources: Vec::new(),
            },
            Request::FetchComponent { tenant: "default".into(), sha256: "0".repeat(64) },
            Request::PeerActorAsks { tenant: "default".into(), actor: "0".repeat(32), origin: "127.0.0.1:1".into() },
            Request::PeerPin {
                tenant: "default".into(),
                ids: vec![fabric_proto::WireObjectId { hi: 1, lo: 1 }],
                pin: true,
                strict: true,
            },
            Request::PeerActorKill { tenant: "default".into(), actor: "0".repeat(32) },
            Request::PeerJobEnded { tenant: "default".into(), job: "job-x".into() },
            Request::PeerActors { tenant: "default".into() },
            Request::PeerDeploymentsChanged,
        ];
        for request in peer_only {
            let (mut send, mut recv) = client.open_raw().await.unwrap();
            write_frame(&mut send, &request).await.unwrap();
            send.finish().unwrap();
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                Ok(Some(Response::Error(e))) => {
                    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
                    assert!(e.message.contains("certificate from the cluster's CA"), "{e}");
                }
                other => panic!("expected an error frame for {request:?}, got {other:?}"),
            }
        }
    });
    assert_serving(&up);
}

#[test]
fn with_etcd_job_records_outlive_the_host_that_ran_them() {
    let etcd = fabric_tests::Etcd::start();
    let first = Up::start_with(&["--etcd", etcd.endpoint()]);
    let v = first.submit(&example("hello"), &["--args", r#"{"name": "etcd"}"#]).json();
    assert_eq!(v["state"], "succeeded", "{v}\n{}", first.up_log());
    let job = v["job"].as_str().unwrap().to_string();
    drop(first);
    // A new host with nothing on disk reads the record from etcd.
    let second = Up::start_with(&["--etcd", etcd.endpoint()]);
    let status = second.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(status["result"], "Hello, etcd!", "{status}");
    assert_eq!(second.fabric(&["jobs", "--output", "json"]).json().as_array().unwrap().len(), 1);
}

#[test]
fn fabric_up_with_an_unreachable_etcd_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let etcd = format!("http://127.0.0.1:{port}");
    let out = fabric(&["--data-dir", dir.path().to_str().unwrap(), "up", "--listen", "127.0.0.1:0", "--etcd", &etcd]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("etcd") && out.stderr.contains(&etcd[7..]), "{}", out.stderr);
}

#[test]
fn concurrent_first_submits_of_one_component_all_upload_cleanly() {
    let up = Up::start();
    let outs: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> =
            (0..8).map(|_| s.spawn(|| up.submit(&example("fanout"), &["--args", r#"{"tasks": 4}"#]).json())).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for v in outs {
        assert_eq!(v["state"], "succeeded", "{v}");
    }
}

#[test]
fn a_stopping_host_finishes_its_running_jobs_first_and_refuses_new_ones() {
    let mut up = Up::start();
    let job = up.submit_detached(&testkit(), "sleep", "[2000]");
    up.terminate();
    fabric_tests::eventually(fabric_tests::SETTLE, "the host to drain", || {
        up.up_log().contains("draining").then_some(())
    });
    let refused = up.submit(&example("hello"), &[]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert_eq!(refused.json()["error"]["kind"], "unavailable", "{refused:?}");
    assert!(refused.stdout.contains("is shutting down"), "{refused:?}");
    assert!(up.wait_exit(std::time::Duration::from_secs(20)), "the host exits once its job is done");
    up.start_stopped();
    let status = up.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["result"], 2000);
}

#[test]
fn a_second_signal_stops_a_draining_host_at_once() {
    let mut up = Up::start();
    let job = up.submit_detached(&testkit(), "sleep", "[600000]");
    // Two SIGTERMs: the ten-minute job is cancelled rather than waited for.
    up.stop();
    assert!(!up.running());
    up.start_stopped();
    let status = up.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(status["state"], "failed", "{status}");
}

#[test]
fn bad_object_and_drain_settings_and_too_many_writers_are_refused() {
    for (flag, value, says) in [
        ("--object-memory-mib", "0", "0 is not in 1.."),
        ("--max-tenant-object-mib", "0", "0 is not in 1.."),
        ("--max-spill-mib", "0", "0 is not in 1.."),
        ("--max-spill-mib", "99999999999999999", "--max-spill-mib 99999999999999999 is too large"),
        ("--max-object-mib", "99999999999999999", "--max-object-mib 99999999999999999 is too large"),
        ("--drain-timeout=-1", "", "-1 is not between 0 and"),
        ("--drain-timeout", "soon", "soon is not a number of seconds"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let mut args = vec!["--data-dir", data_dir, "up", "--listen", "127.0.0.1:0", "--http", "off", flag];
        args.extend((!value.is_empty()).then_some(value));
        let out = fabric(&args);
        assert_ne!(out.code, 0, "{flag} {value}: {out:?}");
        assert!(out.stderr.contains(says), "{flag} {value}: {}", out.stderr);
    }
    let up = Up::start();
    assert_eq!(up.submit(&testkit(), &["--fn", "open_writers", "--args", "[16]"]).json()["result"], 16);
    let err = expect_failure(&up, &["--fn", "open_writers", "--args", "[17]"]);
    assert!(err["message"].as_str().unwrap().contains("at most 16 object writers at once"), "{err}");
    assert_serving(&up);
}

//! The cluster, end to end: a real etcd and real `fabric host` processes on
//! loopback, driven with the real CLI.

use fabric_tests::{all_see, cluster, eventually, example, fabric, ids, view_of, Etcd, Up, SETTLE};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Waits until `observer` lists host `id` as holding some resource.
fn wait_until_busy(observer: &Up, id: &str, what: &str) {
    eventually(SETTLE, what, || {
        let hosts = observer.fabric(&["hosts", "--output", "json"]).json();
        let busy = hosts.as_array()?.iter().any(|h| {
            h["id"] == id && h["used"].as_array().is_some_and(|u| u.iter().any(|r| r["amount"].as_u64() > Some(0)))
        });
        busy.then_some(())
    });
}

#[test]
fn hosts_join_see_each_other_leave_when_killed_and_rejoin() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &["--pool", "gpu-intensive", "--resources", "gpu=1", "--label", "zone=eu"]);
    let mut c = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");

    // What b declared reaches the others' views.
    let listed = a.fabric(&["hosts", "--output", "json"]).json();
    let b_record = listed.as_array().unwrap().iter().find(|h| h["id"] == b.id()).unwrap().clone();
    assert_eq!(b_record["pool"], "gpu-intensive");
    assert_eq!(b_record["labels"][0], serde_json::json!({ "key": "zone", "value": "eu" }));
    let gpu = b_record["capacity"].as_array().unwrap().iter().find(|r| r["name"] == "gpu").unwrap().clone();
    assert_eq!(gpu["amount"], 1);
    assert_eq!(b_record["addr"], Value::String(b.addr()));

    // kill -9: no goodbye; the lease runs out and every view drops it.
    let c_old = c.id();
    c.kill9();
    all_see(&[&a, &b], &ids(&[&a, &b]), "the killed host to leave every view");

    // Restarted on its data dir, it joins again (a new process, a new id).
    c.start_again();
    let c_new = c.id();
    assert_ne!(c_old, c_new);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "the restarted host to rejoin");
}

#[test]
fn a_graceful_stop_leaves_at_once_and_clients_find_hosts_through_etcd() {
    let etcd = Etcd::start();
    let [a, mut b] = cluster(&etcd, [&[], &[]]);

    // A client that knows only etcd finds a host and trusts the cluster CA.
    let hello = example("hello").to_string_lossy().into_owned();
    let out = fabric(&["--etcd", etcd.endpoint(), "submit", &hello, "--args", r#"{"name":"etcd"}"#]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "Hello, etcd!");
    let out = fabric(&["--etcd", etcd.endpoint(), "hosts", "--output", "json"]);
    assert_eq!(out.json().as_array().unwrap().len(), 2, "{out:?}");
    // `--host` with `--etcd` talks to that host, still trusting the CA.
    let out = fabric(&["--etcd", etcd.endpoint(), "--host", &b.addr(), "hosts", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");

    // SIGTERM: the host revokes its lease on the way out.
    b.stop();
    all_see(&[&a], &ids(&[&a]), "the stopped host to leave");
}

#[test]
fn hosts_keep_working_through_an_etcd_outage_and_membership_recovers() {
    let mut etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");

    etcd.stop();
    // Work runs while etcd is away, and the last view is kept.
    let fanout = example("fanout");
    let mut outage_jobs = BTreeSet::new();
    for host in [&a, &b] {
        let out = host.submit(&fanout, &["--args", r#"{"tasks":50,"samples":1000}"#]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.json()["state"], "succeeded");
        outage_jobs.insert(out.json()["job"].as_str().unwrap().to_string());
        // Its record is served from the host while etcd cannot take it.
        let job = out.json()["job"].as_str().unwrap().to_string();
        assert_eq!(host.fabric(&["status", &job, "--output", "json"]).json()["state"], "succeeded");
    }
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(view_of(&a), Some(ids(&[&a, &b])));
    etcd.restart();

    // Membership recovers: both are members, and a host that joins now is
    // seen by both.
    let c = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "membership to recover after etcd returns");

    // The records of jobs run during the outage reach etcd: any host lists them.
    eventually(SETTLE, "the outage's job records to reach etcd", || {
        let listed = c.fabric(&["jobs", "--output", "json"]).json();
        let succeeded: BTreeSet<String> = listed
            .as_array()?
            .iter()
            .filter(|j| j["state"] == "succeeded")
            .filter_map(|j| j["job"].as_str().map(String::from))
            .collect();
        outage_jobs.is_subset(&succeeded).then_some(())
    });
}

#[test]
fn hosts_started_before_etcd_wait_for_it_and_join() {
    let mut etcd = Etcd::unstarted();
    let endpoint = etcd.endpoint().to_string();
    let early: Vec<_> = (0..2)
        .map(|_| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || Up::host(&endpoint, &[]))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart();
    let hosts: Vec<Up> = early.into_iter().map(|h| h.join().expect("host started")).collect();
    assert!(hosts[0].up_log().contains("waiting up to"), "{}", hosts[0].up_log());
    all_see(&[&hosts[0], &hosts[1]], &ids(&[&hosts[0], &hosts[1]]), "hosts that waited for etcd to join");
}

#[test]
fn bad_host_settings_are_refused_with_a_reason() {
    let out = fabric(&["host", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--etcd"), "{}", out.stderr);
    let etcd = Etcd::start();
    for (flags, says) in [
        (&["--resources", "gpu=lots"][..], "--resources"),
        (&["--label", "novalue"][..], "--label"),
        (&["--lease-ttl", "0"][..], "--lease-ttl"),
        (&["--advertise", "not-an-address"][..], "--advertise"),
    ] {
        let mut args = vec!["--etcd", etcd.endpoint(), "host", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let out = fabric(&args);
        assert_eq!(out.code, 2, "{flags:?}: {out:?}");
        assert!(out.stderr.contains(says), "{flags:?}: {}", out.stderr);
    }
    // Listening on every interface, peers need to be told where to dial.
    let out = fabric(&["--etcd", etcd.endpoint(), "host", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--advertise"), "{}", out.stderr);
    // A client pointed at an etcd no cluster used says so.
    let out = fabric(&["--etcd", etcd.endpoint(), "hosts"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no fabric cluster has started"), "{}", out.stderr);
}

/// `fabric submit --detach`: the job id.
#[test]
fn fanout_runs_on_every_host_with_the_component_fetched_from_the_first() {
    let etcd = Etcd::start();
    let [a, b, c] = cluster(&etcd, [&[], &[], &[]]);

    // Uploaded to a only; b and c fetch it from a, and a reads every result
    // b and c produce.
    let out = a.submit(&example("fanout"), &["--args", r#"{"tasks": 300, "samples": 20000, "spread": true}"#]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let result = &v["result"];
    assert_eq!(result["tasks"], 300);
    let pi = result["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "{pi}");
    let ran_on: BTreeSet<String> = result["hosts"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(ran_on, ids(&[&a, &b, &c]), "tasks ran on every host: {result}");
    let total: u64 = result["hosts"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 300);
    // The objects example: slices of one array put on a, summed on all
    // three hosts (b and c pull just their slices).
    let v = a.submit(&example("objects"), &["--args", r#"{"mib": 16, "slices": 60, "spread": true}"#]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"]["ok"], true, "{v}");
    let summed_on: BTreeSet<String> = v["result"]["hosts"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(summed_on, ids(&[&a, &b, &c]), "slices were summed on every host: {v}");
    for other in [&b, &c] {
        assert!(!other
            .data_dir()
            .join("components/default")
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(true));
    }
}

#[test]
fn demands_land_where_they_fit_and_impossible_ones_fail_at_once() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let gpu = Up::host(etcd.endpoint(), &["--resources", "gpu=1", "--pool", "gpu-intensive", "--label", "zone=eu"]);
    let c = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &gpu, &c], &ids(&[&a, &gpu, &c]), "three hosts to see each other");

    let testkit = fabric_tests::testkit();
    let placed = |args: &str| {
        let out = a.submit(&testkit, &["--fn", "placed", "--args", args]);
        out.json()
    };
    for args in [
        r#"{"resources": [["gpu", 1]], "pool": null, "labels": []}"#,
        r#"{"resources": [], "pool": "gpu-intensive", "labels": []}"#,
        r#"{"resources": [], "pool": null, "labels": [["zone", "eu"]]}"#,
    ] {
        let v = placed(args);
        assert_eq!(v["state"], "succeeded", "{args}: {v}");
        assert_eq!(v["result"], Value::String(gpu.id()), "{args}");
    }
    // Nobody has two GPUs, or is in pool `tpu`: the submit fails at once
    // with what is missing.
    let v = placed(r#"{"resources": [["gpu", 2]], "pool": null, "labels": []}"#);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["error"]["kind"], "resource-limit");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("gpu (the most any matching member has is 1)"), "{message}");
    let v = placed(r#"{"resources": [], "pool": "tpu", "labels": []}"#);
    assert_eq!(v["error"]["kind"], "resource-limit", "{v}");

    // Actors are placed by the same rules: unnamed or named, they land on
    // the one host that meets their demand, and an impossible one fails at
    // once.
    let actor = |args: &str| a.submit(&testkit, &["--fn", "actor_placed", "--args", args]).json();
    for args in [
        r#"{"name": null, "resources": [["gpu", 1]], "pool": null, "labels": []}"#,
        r#"{"name": "in-the-pool", "resources": [], "pool": "gpu-intensive", "labels": []}"#,
        r#"{"name": null, "resources": [], "pool": null, "labels": [["zone", "eu"]]}"#,
    ] {
        let v = actor(args);
        assert_eq!(v["state"], "succeeded", "{args}: {v}");
        assert_eq!(v["result"], Value::String(gpu.id()), "{args}");
    }
    let v = actor(r#"{"name": "greedy", "resources": [["gpu", 2]], "pool": null, "labels": []}"#);
    assert_eq!(v["error"]["kind"], "resource-limit", "{v}");
    let v = actor(r#"{"name": null, "resources": [], "pool": null, "labels": []}"#);
    assert_eq!(v["result"], Value::String(a.id()), "an actor with no demand stays where it was created: {v}");

    // Three gpu=1 tasks on the one-GPU host run one after another, although
    // it has two slots.
    let out = a.submit(&testkit, &["--fn", "gpu_tasks", "--args", r#"{"n": 3, "ms": 300}"#]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let mut spans: Vec<(u64, u64)> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t[2], Value::String(gpu.id()), "gpu work runs on the gpu host");
            (t[0].as_u64().unwrap(), t[1].as_u64().unwrap())
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "gpu tasks overlapped: {spans:?}");
    }
}

#[test]
fn tasks_of_a_killed_host_are_retried_elsewhere_and_the_job_completes() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &[]);
    let mut c = Up::host(etcd.endpoint(), &[]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");

    let testkit = fabric_tests::testkit();
    let job = a.submit_detached(&testkit, "spread_sleep", r#"{"n": 60, "ms": 300}"#);
    // Kill c once it is running some of the job's tasks.
    wait_until_busy(&a, &c.id(), "c to be busy with the job");
    c.kill9();

    let out = a.fabric(&["logs", "--follow", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("running it again elsewhere"), "{}", out.stdout);

    // A job whose own host is killed is recorded as failed by the others.
    let mut b = b;
    let lost = b.submit_detached(&testkit, "sleep", r#"{"ms": 60000}"#);
    let b_id = b.id();
    b.kill9();
    eventually(SETTLE, "the lost host's job to be recorded as failed", || {
        let v = a.fabric(&["status", &lost, "--output", "json"]).json();
        (v["state"] == "failed").then_some(v)
    });
    let v = a.fabric(&["status", &lost, "--output", "json"]).json();
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&b_id), "{v}");
    let v = a.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"][0], 60 * 59 / 2, "every task completed exactly once: {v}");
    assert_eq!(v["result"][1].as_array().unwrap().len(), 60);
}

#[test]
fn a_named_actor_resolves_to_the_same_host_from_every_host() {
    let etcd = Etcd::start();
    let hosts = cluster(&etcd, [&[], &[], &[]]);
    let a = &hosts[0];
    let counter = example("counter");

    // Jobs on every host get-or-create the same named counter and bump it.
    for (i, host) in hosts.iter().enumerate() {
        let out = host.submit(&counter, &["--fn", "visit", "--args", r#"{"name": "visits"}"#]);
        assert_eq!(out.json()["result"], i as u64 + 1, "one actor counts every visit: {out:?}");
    }
    // It lives on exactly one host: every host lists it once, on that host,
    // and reaches it by name.
    let holder_of = |host: &Up| {
        let listed = host.fabric(&["actors", "--output", "json"]).json();
        let named: Vec<Value> =
            listed.as_array().unwrap().iter().filter(|actor| actor["name"] == "visits").cloned().collect();
        assert_eq!(named.len(), 1, "one actor named visits in the cluster: {listed}");
        named[0]["host"].as_str().unwrap().to_string()
    };
    let holder_id = holder_of(a);
    assert!(hosts.iter().all(|h| holder_of(h) == holder_id));
    let holders: Vec<&Up> = hosts.iter().filter(|h| h.id() == holder_id).collect();
    assert_eq!(holders.len(), 1, "the holder is a member");
    for host in &hosts {
        let out = host.fabric(&["actor", "call", "visits", "get"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout.trim(), "3");
    }

    // Killed by name from a host that does not hold it, it is gone everywhere.
    let other = hosts.iter().find(|h| h.id() != holders[0].id()).unwrap();
    assert_eq!(other.fabric(&["actor", "kill", "visits"]).code, 0);
    for host in &hosts {
        eventually(SETTLE, "the name to be free everywhere", || {
            let out = host.fabric(&["actor", "call", "visits", "get"]);
            (out.code != 0 && out.stderr.contains("visits")).then_some(())
        });
    }
    // A new actor of that name starts from zero.
    let out = a.submit(&counter, &["--fn", "visit", "--args", r#"{"name": "visits"}"#]);
    assert_eq!(out.json()["result"], 1);

    // Its host killed, callers are told it is lost (or, once the host's
    // lease is gone, that there is no such actor), and the name is free again.
    let holder_id = holder_of(a);
    let holder = hosts.iter().position(|h| h.id() == holder_id);
    let mut hosts = hosts;
    let holder = holder.expect("a holder");
    hosts[holder].kill9();
    let survivor = &hosts[(holder + 1) % 3];
    let out = survivor.fabric(&["actor", "call", "visits", "get"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("lost") || out.stderr.contains("no actor named"), "{}", out.stderr);
    eventually(SETTLE, "a new `visits` on the surviving hosts", || {
        let out = survivor.submit(&counter, &["--fn", "visit", "--args", r#"{"name": "visits"}"#]);
        (out.json()["result"] == 1).then_some(())
    });
}

#[test]
fn a_stopping_host_takes_no_new_work_and_finishes_its_peers_tasks() {
    let etcd = Etcd::start();
    let [a, mut b] = cluster(&etcd, [&[], &["--label", "role=sleeper"]]);

    // A detached actor lives on b; a's job runs an eight-second task on b
    // (the only host with the label, and the task may not run again).
    let testkit = fabric_tests::testkit();
    let b_id = b.id();
    let args = r#"{"name": "drainee", "key": "role", "value": "sleeper"}"#;
    let placed = a.submit(&testkit, &["--fn", "place_named_probe", "--args", args]);
    assert_eq!(placed.json()["result"], b_id.as_str(), "{placed:?}");
    let job = a.submit_detached(&testkit, "sleep_on", r#"{"key": "role", "value": "sleeper", "ms": 8000}"#);
    wait_until_busy(&a, &b_id, "b to run the task");
    b.terminate();
    // At once every member sees b draining, so no new work goes there...
    eventually(SETTLE, "a to see b draining", || {
        let hosts = a.fabric(&["hosts", "--output", "json"]).json();
        hosts.as_array()?.iter().any(|h| h["id"] == b_id.as_str() && h["draining"] == true).then_some(())
    });
    assert!(b.running(), "b drains before it exits: {}", b.up_log());
    let refused =
        a.submit(&testkit, &["--fn", "sleep_on", "--args", r#"{"key": "role", "value": "sleeper", "ms": 1}"#]);
    assert_eq!(refused.json()["error"]["kind"], "unavailable", "{refused:?}");
    assert!(refused.stdout.contains("shutting down"), "{refused:?}");
    // Its actor still answers while b drains (the stream a had open to it
    // was closed when the drain began; a asks on a new one).
    let args = r#"{"name": "drainee", "n": 50}"#;
    let added = a.submit(&testkit, &["--fn", "add_to_named", "--args", args]);
    assert_eq!(added.json()["result"], 50, "{added:?}");
    // ...but b finishes the task it has and hands the result back, then
    // leaves.
    let out = a.fabric(&["logs", "--follow", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = a.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["result"], b_id.as_str(), "{v}");
    assert!(b.wait_exit(Duration::from_secs(20)), "b exits once its task is done");
    let only_a: BTreeSet<String> = ids(&[&a]);
    eventually(SETTLE, "b to leave a's view", || (view_of(&a)? == only_a).then_some(()));
}

#[test]
fn an_actor_on_another_host_writes_to_its_jobs_log() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], &["--label", "role=speaker"]]);
    let testkit = fabric_tests::testkit();
    let args = r#"{"key": "role", "value": "speaker", "text": "hello from the probe", "hold_ms": 60000}"#;
    let job = a.submit_detached(&testkit, "actor_says", args);
    let b_id = b.id();
    let log = eventually(SETTLE, "the actor's output in its job's log", || {
        let out = a.fabric(&["logs", &job]);
        let log = out.stdout + &out.stderr;
        (log.contains("hello from the probe") && log.contains(&format!("the probe lives on {b_id}"))).then_some(log)
    });
    assert_eq!(log.matches("hello from the probe").count(), 1, "{log}");
    assert_eq!(a.fabric(&["stop", &job]).code, 0);
}

#[test]
fn an_actor_on_another_host_takes_asks_in_order_and_keeps_a_large_answer_for_its_caller() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], &["--label", "role=b"]]);
    // 200 records and a snapshot asked without waiting: each runs after the
    // asks before it, as on the caller's own host.
    let args = r#"{"key": "role", "value": "b", "n": 200}"#;
    let out = a.submit(&fabric_tests::testkit(), &["--fn", "snapshot_across", "--args", args]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{out:?}");
    let [host, value, history, lengths, large, after] = [0, 1, 2, 3, 4, 5].map(|i| v["result"][i].clone());
    assert_eq!(host, b.id().as_str(), "{v}");
    let in_order: Vec<u64> = (1..=200).collect();
    assert_eq!(
        (value, &history, &lengths),
        (Value::from(5), &serde_json::json!(in_order), &serde_json::json!(in_order))
    );
    // An answer over one frame is kept on b for the job and read from
    // there; the actor goes on, and once the job ended b keeps nothing.
    assert_eq!(large, "20 MiB of zeros", "{v}");
    assert_eq!(after, 6, "the actor keeps serving: {v}");
    eventually(SETTLE, "b to free what it kept for the job", || {
        let out = a.fabric(&["objects", "--output", "json"]);
        let stores = out.json();
        let b_store = stores.as_array()?.iter().find(|s| s["host"] == b.id().as_str())?.clone();
        (b_store["jobs"] == serde_json::json!([]) && b_store["memory_bytes"] == 0).then_some(())
    });
}

#[test]
fn a_new_actor_a_draining_peer_refuses_goes_to_the_next_host_of_its_ring() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &["--label", "n=a"]);
    // b refuses the first new actor it is asked for, as a draining host
    // does when the asking host's view does not show the drain yet.
    let b = Up::host_with_env(etcd.endpoint(), &["--label", "n=b"], &[("FABRIC_INJECT_FAULTS", "refuse-runs:1")]);
    let c = Up::host(etcd.endpoint(), &["--label", "n=c"]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");
    // 24 names: some fall to b (all but surely), the first of which b
    // refuses; that one lives elsewhere, and every host finds every name
    // where it lives.
    let args = r#"{"prefix": "ring", "count": 24, "key": "n", "values": ["a", "b", "c"]}"#;
    let v = a.submit(&fabric_tests::testkit(), &["--fn", "named_probes", "--args", args]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let created = &v["result"][0];
    assert_eq!(created.as_array().map(Vec::len), Some(24), "{v}");
    for seen in v["result"][1].as_array().unwrap() {
        assert_eq!(seen, created, "every host finds each name where it was created: {v}");
    }
    let log = a.fabric(&["logs", v["job"].as_str().unwrap()]).stdout;
    assert_eq!(log.matches(&format!("host {} would not take actor", b.id())).count(), 1, "{log}");
    assert!(log.contains(&format!("host {} is draining", b.id())), "{log}");
}

#[test]
fn a_task_a_peer_refuses_while_draining_is_placed_elsewhere_at_once() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    // b refuses its first peer's task as a draining host does when the
    // sender's view does not show the drain yet.
    let b = Up::host_with_env(etcd.endpoint(), &["--label", "zone=x"], &[("FABRIC_INJECT_FAULTS", "refuse-runs:1")]);
    let c = Up::host(etcd.endpoint(), &["--label", "zone=x"]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");
    // Tasks that may not run again (retries 0), spread over b and c: the
    // one b refuses runs on c, spending no retry; the rest run where sent.
    let args = r#"{"n": 6, "key": "zone", "value": "x"}"#;
    let out = a.submit(&fabric_tests::testkit(), &["--fn", "spread_on_label", "--args", args]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let hosts: Vec<&str> = v["result"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert!(hosts.iter().all(|h| *h == b.id() || *h == c.id()), "{hosts:?}");
    let log = a.fabric(&["logs", v["job"].as_str().unwrap()]).stdout;
    assert_eq!(log.matches(&format!("host {} would not take task `where_am_i`", b.id())).count(), 1, "{log}");
    assert!(log.contains(&format!("host {} is draining", b.id())), "{log}");
}

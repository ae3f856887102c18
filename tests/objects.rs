//! Objects across hosts, end to end: real etcd, real `fabric host`
//! processes on loopback, guests that make objects on one host and read them
//! on another.

use fabric_tests::{all_see, cluster, eventually, ids, testkit, Etcd, Up, SETTLE};
use serde_json::Value;

/// A host labelled `role=maker`, where the tests' objects are made.
const MAKER: &[&str] = &["--label", "role=maker"];

fn args(len: u64, seed: u64) -> String {
    format!(r#"{{"len": {len}, "seed": {seed}, "key": "role", "value": "maker"}}"#)
}

/// Runs `function` on `host` and returns its result, asserting it succeeded.
fn result_of(host: &Up, function: &str, args: &str) -> Value {
    let out = host.submit(&testkit(), &["--fn", function, "--args", args]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{function}: {v}");
    v["result"].clone()
}

/// `tenant`'s object stores, by host id.
fn stores(host: &Up, tenant: &str) -> Vec<Value> {
    let out = host.fabric(&["--tenant", tenant, "objects", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json().as_array().expect("a list of stores").clone()
}

fn store_of<'a>(stores: &'a [Value], host: &Up) -> &'a Value {
    let id = host.id();
    stores.iter().find(|s| s["host"] == id.as_str()).unwrap_or_else(|| panic!("no store of {id}: {stores:?}"))
}

#[test]
fn results_and_objects_stay_where_they_were_made_and_are_read_from_anywhere() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], MAKER]);

    // A result too large to travel back with its task stays on b; a reads
    // its size, a slice and the whole from there.
    let v = result_of(&a, "result_elsewhere", &args(8 << 20, 1));
    assert_eq!(v, serde_json::json!([b.id(), a.id(), true]));

    // An object b's task put is read whole on a.
    let v = result_of(&a, "pull_elsewhere", &args(64 << 20, 2));
    assert_eq!((&v[0], &v[1]), (&Value::String(b.id()), &Value::String(a.id())), "{v}");
    assert_eq!(v[2], v[3], "a read what b put: {v}");

    // Slices of b's object are read without pulling the rest.
    let pulled_before = store_of(&stores(&a, "default"), &a)["pulled_bytes"].as_u64().unwrap();
    let slices = r#"{"len": 33554432, "seed": 3, "key": "role", "value": "maker", "slice": 1000, "count": 5}"#;
    assert_eq!(result_of(&a, "slices_elsewhere", slices), Value::Bool(true));
    let pulled = store_of(&stores(&a, "default"), &a)["pulled_bytes"].as_u64().unwrap() - pulled_before;
    assert!(pulled < 1 << 20, "five 1000-byte slices pulled {pulled} bytes");

    // A value archived with rkyv on a, naming another archived value and
    // objects, is read in place on b, which follows what it names back to a.
    let v = result_of(&a, "archived_catalog", r#"{"entries": 5000, "key": "role", "value": "maker"}"#);
    assert_catalog(&v, 5000, &b.id());

    // A native program reads an archived value in place: 12 MB of scores
    // pinned on a, fetched through b in several ranges, then the catalog it
    // names fetched from a by the id read out of the first.
    let id = result_of(&a, "pinned_catalog", r#"{"entries": 3000000}"#);
    let id = id.as_str().expect("an object id");
    let dir = tempfile::tempdir().expect("temp dir");
    let outer = fetched(&b, id, dir.path());
    let catalog = rkyv::access::<ArchivedCatalog, rkyv::rancor::Error>(&outer).expect("an archived catalog");
    assert_eq!((catalog.name.as_str(), catalog.scores.len(), catalog.bytes.len.to_native()), ("outer", 3000000, 1000));
    assert!(catalog.scores.iter().enumerate().all(|(i, s)| s.to_native() as usize == i), "scores 0, 1, 2, ...");
    let inner_id = catalog.part.as_ref().expect("an inner catalog").hex();
    let inner = fetched(&a, &inner_id, dir.path());
    let inner = rkyv::access::<ArchivedCatalog, rkyv::rancor::Error>(&inner).expect("an archived catalog");
    assert_eq!((inner.name.as_str(), inner.scores.as_slice()), ("inner", &[7.into(), 7.into(), 7.into()][..]));
    // Another tenant's, a malformed and an unpinned id are clear errors.
    let path = dir.path().join("refused").to_string_lossy().into_owned();
    let other = b.fabric(&["--tenant", "other", "get", id, "--out", &path]);
    assert!(other.code != 0 && other.stderr.contains("no object"), "{other:?}");
    let malformed = b.fabric(&["get", "xyz", "--out", &path]);
    assert!(malformed.code != 0 && malformed.stderr.contains("`xyz` is not an object id"), "{malformed:?}");
    assert_eq!(a.fabric(&["unpin", id]).code, 0);
    let freed = b.fabric(&["get", &inner_id, "--out", &path]);
    assert!(freed.code != 0 && freed.stderr.contains("freed"), "{freed:?}");
    assert!(!std::path::Path::new(&path).exists(), "a failed get leaves no file");
    // An empty object is an empty file.
    let empty = result_of(&a, "pinned_empty", "{}");
    let empty = empty.as_str().expect("an object id");
    assert!(fetched(&b, empty, dir.path()).is_empty());
    assert_eq!(a.fabric(&["unpin", empty]).code, 0);

    // The jobs ended: what they left on b and the copies on a are freed.
    eventually(SETTLE, "the ended jobs' objects to be freed on every host", || {
        let stores = stores(&a, "default");
        stores.iter().all(|s| s["jobs"].as_array().is_some_and(|j| j.is_empty())).then_some(())
    });
}

/// The guest's `Catalog` as a native program declares it to read one in
/// place: a reference archives as its id (and an array's length).
#[derive(rkyv::Archive)]
#[allow(dead_code)] // only its archived form is read
struct Catalog {
    name: String,
    scores: Vec<u32>,
    note: Id,
    bytes: Array,
    part: Option<Id>,
}

#[derive(rkyv::Archive)]
#[allow(dead_code)] // only its archived form is read
struct Id {
    hi: u64,
    lo: u64,
}

#[derive(rkyv::Archive)]
#[allow(dead_code)] // only its archived form is read
struct Array {
    id: Id,
    len: u64,
}

impl ArchivedId {
    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.hi.to_native(), self.lo.to_native())
    }
}

/// Object `id`'s bytes fetched with `fabric get` through `host`, in an
/// aligned buffer.
fn fetched(host: &Up, id: &str, dir: &std::path::Path) -> rkyv::util::AlignedVec {
    let path = dir.join(id);
    let out = host.fabric(&["get", id, "--out", &path.to_string_lossy()]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut bytes = rkyv::util::AlignedVec::new();
    bytes.extend_from_slice(&std::fs::read(&path).expect("the fetched object"));
    bytes
}

/// Checks `archived_catalog`'s answer: what the reader on `host` found in
/// place, and the value decoded where it was made.
fn assert_catalog(v: &Value, entries: u64, host: &str) {
    let sum = entries * (entries - 1) / 2;
    let read = serde_json::json!({
        "name": "outer", "scores": entries, "sum": sum, "note": "outer note", "bytes": 1000,
        "part": "inner", "part_note": "inner note", "host": host,
    });
    assert_eq!(v[0], read, "{v}");
    assert_eq!(v[1], serde_json::json!(["outer", sum, 3]), "{v}");
}

#[test]
fn a_1_gib_object_crosses_hosts_intact() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], MAKER]);
    let v = result_of(&a, "pull_elsewhere", &args(1 << 30, 4));
    assert_eq!(v[0], Value::String(b.id()), "{v}");
    assert_eq!(v[2], v[3], "a read the gibibyte b put: {v}");
    let a_store = store_of(&stores(&a, "default"), &a).clone();
    assert!(a_store["pulled_bytes"].as_u64().unwrap() >= 1 << 30, "{a_store}");
}

#[test]
fn corrupted_and_truncated_transfers_are_detected_and_retried() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    // b serves its first range corrupted and its second cut short; c cuts
    // every range short.
    let b = Up::host_with_env(
        etcd.endpoint(),
        MAKER,
        &[("FABRIC_INJECT_FAULTS", "corrupt-transfers:1,truncate-transfers:1")],
    );
    let c = Up::host_with_env(
        etcd.endpoint(),
        &["--label", "role=broken"],
        &[("FABRIC_INJECT_FAULTS", "truncate-transfers:1000")],
    );
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");

    let v = result_of(&a, "pull_elsewhere", &args(64 << 20, 5));
    assert_eq!(v[2], v[3], "the bytes a kept are the bytes b put: {v}");
    let retried = store_of(&stores(&a, "default"), &a)["retried_ranges"].as_u64().unwrap();
    assert!(retried >= 2, "both bad ranges were asked again: {retried}");

    // A host that never sends a whole range: the reader gets a clear error.
    let broken = r#"{"len": 1048576, "seed": 6, "key": "role", "value": "broken"}"#;
    let out = a.submit(&testkit(), &["--fn", "pull_elsewhere", "--args", broken]);
    let v = out.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("after 3 attempts") && message.contains("cut short"), "{message}");
    // Both hosts still serve.
    assert_eq!(result_of(&a, "pull_elsewhere", &args(1 << 20, 7))[0], Value::String(b.id()));
}

#[test]
fn an_object_whose_host_died_is_reported_lost() {
    let etcd = Etcd::start();
    let [a, mut b] = cluster(&etcd, [&[], MAKER]);
    let job = a.submit_detached(&testkit(), "read_after_loss", r#"{"key": "role", "value": "maker", "ms": 8000}"#);
    let b_id = b.id();
    eventually(SETTLE, "the object to be made", || a.fabric(&["logs", &job]).stdout.contains("made on").then_some(()));
    b.kill9();
    let out = a.fabric(&["logs", "--follow", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = a.fabric(&["status", &job, "--output", "json"]).json();
    assert_eq!(v["state"], "succeeded", "{v}");
    let error = v["result"].as_str().unwrap();
    assert!(error.starts_with("Unavailable") && error.contains("is lost") && error.contains(&b_id), "{error}");
}

#[test]
fn a_lost_result_is_rebuilt_by_running_its_task_again_unless_it_may_not() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let mut makers = [Up::host(etcd.endpoint(), MAKER), Up::host(etcd.endpoint(), MAKER)];
    all_see(&[&a, &makers[0], &makers[1]], &ids(&[&a, &makers[0], &makers[1]]), "three hosts to see each other");

    for retries in [1, 0] {
        let args = format!(r#"{{"len": 1048576, "key": "role", "value": "maker", "ms": 8000, "retries": {retries}}}"#);
        let job = a.submit_detached(&testkit(), "result_after_loss", &args);
        let producer = eventually(SETTLE, "the result to be made", || {
            let log = a.fabric(&["logs", &job]).stdout;
            let producer = log.lines().find_map(|l| l.strip_prefix("made on ").map(str::to_string))?;
            log.contains("result ready").then_some(producer)
        });
        let (dead, alive) = if makers[0].id() == producer { (0, 1) } else { (1, 0) };
        makers[dead].kill9();
        let log = a.fabric(&["logs", "--follow", &job]).stdout;
        let v = a.fabric(&["status", &job, "--output", "json"]).json();
        assert_eq!(v["state"], "succeeded", "{v}");
        if retries > 0 {
            // Rebuilt on the surviving maker, byte for byte.
            assert_eq!(v["result"], serde_json::json!([makers[alive].id(), true]), "{v}");
            assert!(log.contains("running the task again to rebuild it"), "{log}");
        } else {
            let error = v["result"][0].as_str().unwrap();
            assert!(
                error.starts_with("Unavailable") && error.contains("is lost") && error.contains(&producer),
                "{error}"
            );
            assert!(error.contains("may not run again"), "{error}");
        }
        makers[dead].start_again();
        all_see(&[&a], &ids(&[&a, &makers[0], &makers[1]]), "the restarted maker to rejoin");
    }
}

#[test]
fn a_tenant_cannot_read_another_tenants_object_on_another_host() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], &[]]);
    let out = b.fabric(&[
        "--tenant",
        "alpha",
        "submit",
        &testkit().to_string_lossy(),
        "--fn",
        "put_blob_and_hold",
        "--args",
        r#"{"len": 100000, "hold_ms": 30000}"#,
        "--detach",
        "--output",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let job = out.json()["job"].as_str().unwrap().to_string();
    let id = eventually(SETTLE, "alpha's object to be put", || {
        let log = b.fabric(&["--tenant", "alpha", "logs", &job]).stdout;
        log.lines().find_map(|l| l.strip_prefix("object ").map(|id| id.trim().to_string()))
    });

    // Listed for alpha on b, and for no one else.
    let alpha = stores(&a, "alpha");
    assert_eq!(store_of(&alpha, &b)["jobs"][0]["objects"], 1, "{alpha:?}");
    let beta = stores(&a, "beta");
    assert_eq!(beta.len(), 2, "both hosts answer: {beta:?}");
    assert!(beta.iter().all(|s| s["jobs"].as_array().unwrap().is_empty()));

    // beta, on a, names alpha's object on b: not found, as if it did not exist.
    let out = a.fabric(&[
        "--tenant",
        "beta",
        "submit",
        &testkit().to_string_lossy(),
        "--fn",
        "read_object",
        "--args",
        &format!(r#"{{"hex": "{id}"}}"#),
        "--output",
        "json",
    ]);
    let v = out.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "not-found", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("beta"), "{v}");
    let stopped = b.fabric(&["--tenant", "alpha", "stop", &job]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
}

/// The one store of a single host's listing.
fn only_store(host: &Up) -> Value {
    let all = stores(host, "default");
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].clone()
}

#[test]
fn a_working_set_four_times_the_object_memory_spills_and_finishes() {
    let up = Up::start_with(&["--object-memory-mib", "16"]);
    // 64 objects of 1 MiB in one job: four times what may stay in memory.
    let right = result_of(&up, "spill_working_set", r#"{"count": 64, "len": 1048576}"#);
    assert_eq!(right, 128, "every object read back right, whole and sliced");
    let store = only_store(&up);
    assert!(store["spills"].as_u64().unwrap() >= 48, "{store}");
    assert_eq!(store["memory_budget"], 16 << 20, "{store}");
    // The job ended: its objects and their spill files are gone.
    eventually(SETTLE, "the job's objects to be freed", || {
        let store = only_store(&up);
        (store["memory_bytes"] == 0 && store["spilled_bytes"] == 0).then_some(())
    });
    let out = up.fabric(&["objects"]);
    assert!(out.stdout.contains("SPILLED") && out.stdout.contains("16MiB"), "{out:?}");
}

#[test]
fn an_object_four_times_the_object_memory_streams_through_disk() {
    let up = Up::start_with(&["--object-memory-mib", "512", "--max-object-mib", "3072"]);
    let total: u64 = 2 << 30;
    let v = result_of(&up, "stream_object", &format!(r#"{{"total": {total}, "part": {}}}"#, 8 << 20));
    assert_eq!(v[0], v[1], "read back what was written: {v}");
    assert_eq!(v[2], total, "{v}");
    // It went through disk, not memory: the host never held half of it.
    let peak = up.peak_memory_bytes();
    assert!(peak < 1 << 30, "the host's peak memory was {peak} bytes");
}

#[test]
fn a_tenant_over_its_object_limit_gets_a_clear_error() {
    let up = Up::start_with(&["--max-tenant-object-mib", "4"]);
    let v = result_of(&up, "write_until_refused", r#"{"part": 1048576}"#);
    let message = v[0].as_str().unwrap();
    assert!(message.contains("tenant `default`") && message.contains("limit of 4194304 bytes"), "{v}");
    assert_eq!(v[1], 4 << 20, "{v}");
}

#[test]
fn a_spilled_object_is_pulled_from_its_holders_disk() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    let b = Up::host(etcd.endpoint(), &[MAKER, &["--object-memory-mib", "8"]].concat());
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");
    // b puts 32 MiB (four times its object memory): it spills, and a reads
    // it whole and in slices from b's disk.
    let v = result_of(&a, "pull_elsewhere", &args(32 << 20, 5));
    assert_eq!(v[2], v[3], "a read what b put: {v}");
    let v = result_of(
        &a,
        "slices_elsewhere",
        r#"{"len": 33554432, "seed": 6, "key": "role", "value": "maker", "slice": 65536, "count": 16}"#,
    );
    assert_eq!(v, true);
    let b_store = store_of(&stores(&a, "default"), &b).clone();
    assert!(b_store["spills"].as_u64().unwrap() >= 2, "{b_store}");
}

#[test]
fn a_copy_larger_than_the_readers_object_memory_goes_to_its_disk_as_it_arrives() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &["--object-memory-mib", "32"]);
    // b serves its first range corrupted and its second cut short.
    let faults = [("FABRIC_INJECT_FAULTS", "corrupt-transfers:1,truncate-transfers:1")];
    let b = Up::host_with_env(etcd.endpoint(), MAKER, &faults);
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");
    // a reads 96 MiB held on b whole: three times its object memory. The
    // copy is written to a's disk range by range, never held in its store's
    // memory, its bad ranges asked again, and read from there intact.
    let v = result_of(&a, "pull_elsewhere", &args(96 << 20, 8));
    assert_eq!(v[2], v[3], "a read what b put: {v}");
    let a_store = store_of(&stores(&a, "default"), &a).clone();
    assert_eq!(a_store["disk_copies"], 1, "{a_store}");
    assert!(a_store["retried_ranges"].as_u64().unwrap() >= 2, "{a_store}");
    assert!(a_store["pulled_bytes"].as_u64().unwrap() >= 96 << 20, "{a_store}");
    // Smaller copies stay in memory; the large one went with its job.
    assert_eq!(result_of(&a, "pull_elsewhere", &args(4 << 20, 9))[0], Value::String(b.id()));
    let a_store = store_of(&stores(&a, "default"), &a).clone();
    assert_eq!(a_store["disk_copies"], 1, "{a_store}");
    eventually(SETTLE, "the copy's file to go with its job", || {
        let a_store = store_of(&stores(&a, "default"), &a).clone();
        (a_store["spilled_bytes"] == 0).then_some(())
    });

    // A reader whose disk quota has no room for the copy takes it in
    // memory instead, and reads it all the same.
    let c = Up::host(etcd.endpoint(), &["--object-memory-mib", "32", "--max-spill-mib", "8"]);
    all_see(&[&a, &b, &c], &ids(&[&a, &b, &c]), "three hosts to see each other");
    let v = result_of(&c, "pull_elsewhere", &args(96 << 20, 10));
    assert_eq!(v[2], v[3], "c read what b put: {v}");
    let c_store = store_of(&stores(&c, "default"), &c).clone();
    assert_eq!(c_store["disk_copies"], 0, "{c_store}");

    // A reader whose disk fails while the copy arrives pulls it again into
    // memory, and reads it all the same.
    let failing = [("FABRIC_INJECT_FAULTS", "fail-copy-writes:1")];
    let d = Up::host_with_env(etcd.endpoint(), &["--object-memory-mib", "32"], &failing);
    all_see(&[&a, &b, &c, &d], &ids(&[&a, &b, &c, &d]), "four hosts to see each other");
    let v = result_of(&d, "pull_elsewhere", &args(96 << 20, 11));
    assert_eq!(v[2], v[3], "d read what b put: {v}");
    let d_store = store_of(&stores(&d, "default"), &d).clone();
    assert_eq!(d_store["disk_copies"], 0, "{d_store}");
}

#[test]
fn copies_of_another_hosts_objects_are_dropped_for_memory_and_pulled_again() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &["--object-memory-mib", "16"]);
    let b = Up::host(etcd.endpoint(), MAKER);
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");
    // a reads 8 x 8 MiB held on b, whole, three times over: four times its
    // object memory. Its copies are dropped (b has them), never written to
    // a's disk, and read again from b.
    let args = r#"{"n": 8, "len": 8388608, "key": "role", "value": "maker", "rounds": 3}"#;
    assert_eq!(result_of(&a, "reread_elsewhere", args), true);
    let a_store = store_of(&stores(&a, "default"), &a).clone();
    assert_eq!(a_store["spills"], 0, "{a_store}");
    assert!(a_store["dropped_copies"].as_u64().unwrap() >= 8, "{a_store}");
    assert!(a_store["pulls"].as_u64().unwrap() > 8, "dropped copies are pulled again: {a_store}");
}

#[test]
fn an_object_is_freed_when_its_last_reference_drops() {
    // A tenant may hold 6 MiB: 40 objects of 4 MiB made one after another
    // fit only if each goes when nothing refers to it any more.
    let up = Up::start_with(&["--max-tenant-object-mib", "6"]);
    let churn = |holder: bool, pass: bool, from_task: bool| {
        let args = format!(
            r#"{{"rounds": 40, "mib": 4, "through_holder": {holder}, "pass": {pass}, "from_task": {from_task}}}"#
        );
        result_of(&up, "churn", &args)
    };
    // Held only by the task's own reference.
    assert_eq!(churn(false, false, false), 40 * (4 << 20));
    // Named inside another object: it lives while that object does (the
    // task drops its own reference first), then both go.
    assert_eq!(churn(true, false, false), 40 * (4 << 20));
    // Named in a pending task's arguments: it lives until that task read
    // it, although the caller dropped its reference at once.
    assert_eq!(churn(false, true, false), 40 * (4 << 20));
    // Made by a sub-task and named by its result: it lives while the
    // result does.
    assert_eq!(churn(false, false, true), 40 * (4 << 20));
    // Read again by id after the last reference dropped: a clear error.
    let v = result_of(&up, "read_freed", "{}");
    assert!(v.as_str().unwrap().starts_with("NotFound") && v.as_str().unwrap().contains("freed"), "{v}");
    // Nothing is left behind.
    let store = only_store(&up);
    assert_eq!((&store["jobs"], store["memory_bytes"].as_u64()), (&serde_json::json!([]), Some(0)), "{store}");
}

#[test]
fn archived_values_are_read_in_place_keep_what_they_name_and_reject_other_bytes() {
    // As above: 6 MiB per tenant, 40 objects of 4 MiB in turn.
    let up = Up::start_with(&["--max-tenant-object-mib", "6"]);
    let v = result_of(&up, "archived_catalog", r#"{"entries": 100000}"#);
    assert_catalog(&v, 100000, &up.id());
    // Each array is named only by a small archived value: it lives while
    // that value does (the task dropped its own reference), then both go.
    assert_eq!(result_of(&up, "churn_archived", r#"{"rounds": 40, "mib": 4}"#), 40 * (4 << 20));
    // Bytes that are not an archived catalog are an error, not a crash.
    let v = result_of(&up, "archived_wrong_type", "{}");
    let errors = v.as_array().expect("one error per object");
    assert_eq!(errors.len(), 3, "{v}");
    for error in errors {
        let error = error.as_str().unwrap_or_default();
        assert!(
            error.starts_with("InvalidArgument") && error.contains("is not an archived value of the expected type"),
            "{error}"
        );
    }
    let store = only_store(&up);
    assert_eq!((&store["jobs"], store["memory_bytes"].as_u64()), (&serde_json::json!([]), Some(0)), "{store}");
}

#[test]
fn a_result_kept_on_its_producer_is_freed_there_when_its_last_reference_drops() {
    let etcd = Etcd::start();
    let a = Up::host(etcd.endpoint(), &[]);
    // b may hold 10 MiB of the tenant's objects: 20 results of 4 MiB kept
    // there one after another fit only if a lets each go (a's word may
    // arrive after the next result is made: two fit).
    let b = Up::host(etcd.endpoint(), &[MAKER, &["--max-tenant-object-mib", "10"]].concat());
    all_see(&[&a, &b], &ids(&[&a, &b]), "two hosts to see each other");
    let v = result_of(&a, "churn_elsewhere", r#"{"rounds": 20, "len": 4194304, "key": "role", "value": "maker"}"#);
    assert_eq!(v, 20 * (4 << 20));
}

#[test]
fn an_object_a_peer_only_read_is_freed_when_its_last_reference_here_drops() {
    let etcd = Etcd::start();
    // a's tenant may hold 6 MiB: 20 arrays of 4 MiB, each read on b in
    // turn, fit only if each goes once b's reader is done with it.
    let [a, _maker] = cluster(&etcd, [&["--max-tenant-object-mib", "6"], MAKER]);
    let args = r#"{"rounds": 20, "mib": 4, "key": "role", "value": "maker"}"#;
    assert_eq!(result_of(&a, "churn_remote", args), 20 * (4 << 20));
    // What a peer's task kept in a value of its own stays while the job
    // runs, although nothing on a refers to it any more.
    let v = result_of(&a, "kept_by_a_peer", r#"{"key": "role", "value": "maker"}"#);
    assert_eq!(v, serde_json::json!([1000, 42]));
}

#[test]
fn a_pinned_object_outlives_its_job_until_unpinned() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], MAKER]);
    // A pair naming a 1 MiB array, pinned: both outlive the job, listed
    // under `(pinned)`, and a later job on another host reads them.
    let pair = result_of(&a, "put_pinned", r#"{"text": "kept", "mib": 1}"#).as_str().unwrap().to_string();
    let v = result_of(&b, "read_pinned", &format!(r#"{{"hex": "{pair}"}}"#));
    assert_eq!(v, serde_json::json!(["kept", 1 << 20]));
    let jobs = |host: &Up| store_of(&stores(&a, "default"), host)["jobs"].clone();
    assert_eq!(jobs(&a)[0]["job"], "(pinned)", "{}", jobs(&a));
    assert_eq!(jobs(&a)[0]["objects"], 2, "{}", jobs(&a));

    // A result b keeps, pinned from a: kept on b after the job.
    let args = r#"{"len": 4194304, "key": "role", "value": "maker"}"#;
    let kept = result_of(&a, "pin_elsewhere", args).as_str().unwrap().to_string();
    let v = result_of(&a, "read_size", &format!(r#"{{"hex": "{kept}"}}"#));
    assert!(v.as_u64().unwrap() > 4 << 20, "{v}");
    assert_eq!(jobs(&b)[0]["job"], "(pinned)", "{}", jobs(&b));

    // Another tenant cannot unpin them; a bad id is a clear error.
    let out = a.fabric(&["--tenant", "beta", "unpin", &pair]);
    assert!(out.code != 0 && out.stderr.contains("no object"), "{out:?}");
    let out = a.fabric(&["unpin", "nonsense"]);
    assert!(out.code != 0 && out.stderr.contains("is not an object id"), "{out:?}");

    // Unpinned (from either host), they go everywhere.
    for (host, id) in [(&b, &pair), (&a, &kept)] {
        let out = host.fabric(&["unpin", id]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    eventually(SETTLE, "the unpinned objects to be freed on every host", || {
        stores(&a, "default").iter().all(|s| s["jobs"].as_array().is_some_and(|j| j.is_empty())).then_some(())
    });
    let out = a.submit(&testkit(), &["--fn", "read_pinned", "--args", &format!(r#"{{"hex": "{pair}"}}"#)]);
    assert_eq!(out.json()["error"]["kind"], "not-found", "{out:?}");
    let out = a.fabric(&["unpin", &pair]);
    assert!(out.code != 0 && out.stderr.contains("freed"), "{out:?}");
}

#[test]
fn a_pin_keeps_what_a_value_names_on_other_hosts() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], MAKER]);
    // An array made on a, wrapped in a value kept on b: pinning the value
    // (on b), or the task result on a that names it, keeps all of it past
    // the job, on both hosts, and a later job on either reads it.
    let mut pinned = Vec::new();
    for result in [false, true] {
        let args = format!(r#"{{"key": "role", "value": "maker", "result": {result}}}"#);
        let id = result_of(&a, "pin_across", &args).as_str().unwrap().to_string();
        for host in [&a, &b] {
            let v = result_of(host, "read_across", &format!(r#"{{"hex": "{id}", "result": {result}}}"#));
            assert_eq!(v, serde_json::json!([1000, 42]), "pinned result: {result}");
        }
        pinned.push(id);
    }
    for host in [&a, &b] {
        let jobs = store_of(&stores(&a, "default"), host)["jobs"].clone();
        assert_eq!(jobs[0]["job"], "(pinned)", "{jobs}");
    }
    // Unpinned, every part goes on every host.
    for id in &pinned {
        assert_eq!(b.fabric(&["unpin", id]).code, 0);
    }
    eventually(SETTLE, "the unpinned objects to be freed on every host", || {
        stores(&a, "default").iter().all(|s| s["jobs"].as_array().is_some_and(|j| j.is_empty())).then_some(())
    });
}

#[test]
fn a_pin_of_a_value_naming_many_objects_on_another_host_keeps_them_all() {
    let etcd = Etcd::start();
    let [a, b] = cluster(&etcd, [&[], MAKER]);
    // A result on a naming 3000 numbers put on b, pinned a wave at a time:
    // the numbers go to b in one request.
    let pin_requests = |host: &Up| store_of(&stores(&a, "default"), host)["pin_requests"].as_u64().unwrap();
    let before = pin_requests(&b);
    let id = result_of(&a, "pin_numbers_across", r#"{"key": "role", "value": "maker", "n": 3000}"#);
    assert_eq!(pin_requests(&b) - before, 1, "one request pinned all 3000 on b");
    let id = id.as_str().unwrap().to_string();
    let sum = 3000 * 2999 / 2;
    for host in [&a, &b] {
        assert_eq!(result_of(host, "sum_pinned_numbers", &format!(r#"{{"hex": "{id}"}}"#)), sum);
    }
    let b_store = store_of(&stores(&a, "default"), &b).clone();
    assert_eq!((&b_store["jobs"][0]["job"], &b_store["jobs"][0]["objects"]), (&"(pinned)".into(), &3000.into()));
    assert_eq!(a.fabric(&["unpin", &id]).code, 0);
    eventually(SETTLE, "every number to be freed once unpinned", || {
        stores(&a, "default").iter().all(|s| s["jobs"].as_array().is_some_and(|j| j.is_empty())).then_some(())
    });
}

#[test]
fn a_later_reader_pulls_from_an_earlier_readers_copy() {
    let etcd = Etcd::start();
    let holder = Up::host(etcd.endpoint(), &[]);
    let first = Up::host(etcd.endpoint(), &["--label", "n=1"]);
    let second = Up::host(etcd.endpoint(), &["--label", "n=2"]);
    all_see(&[&holder, &first, &second], &ids(&[&holder, &first, &second]), "three hosts to see each other");
    // 32 MiB made on the holder, read whole by `first`, then by `second`:
    // the holder sends it once, `first` sends its copy on.
    let v = result_of(&holder, "read_in_turn", r#"{"mib": 32, "key": "n", "n": 2, "pin": false}"#);
    assert_eq!(v[0], serde_json::json!([first.id(), second.id()]));
    let served = |host: &Up| store_of(&stores(&holder, "default"), host)["served_bytes"].as_u64().unwrap();
    let size = 32 << 20;
    let close_to = |bytes: u64, expected: u64| (expected..expected + (1 << 20)).contains(&bytes);
    assert!(close_to(served(&holder), size), "the holder sent {} bytes", served(&holder));
    assert!(close_to(served(&first), size), "the first reader sent {} bytes", served(&first));
    assert_eq!(served(&second), 0);

    // A pinned object read by `first` in a job that then ended (its copy
    // went with the job): a later reader sent there reads from the holder.
    let v = result_of(&holder, "read_in_turn", r#"{"mib": 32, "key": "n", "n": 1, "pin": true}"#);
    let id = v[1].as_str().unwrap().to_string();
    eventually(SETTLE, "the first reader's copy to go with its job", || {
        store_of(&stores(&holder, "default"), &first)["jobs"].as_array().is_some_and(|j| j.is_empty()).then_some(())
    });
    let v = result_of(&second, "read_size", &format!(r#"{{"hex": "{id}"}}"#));
    assert_eq!(v, size);
    assert!(close_to(served(&holder), 3 * size), "the holder sent {} bytes", served(&holder));
    assert_eq!(served(&second), 0);

    // An earlier reader whose copy went to its disk (larger than half its
    // object memory) sends it on from there. The later reader, sent to that
    // copy, fails to write its own to disk: it reads the copy again into
    // memory, and the copy is not blamed (the holder sends the object once).
    let on_disk = Up::host(etcd.endpoint(), &["--label", "d=1", "--object-memory-mib", "32"]);
    let failing = [("FABRIC_INJECT_FAULTS", "fail-copy-writes:1")];
    let faulty = Up::host_with_env(etcd.endpoint(), &["--label", "d=2", "--object-memory-mib", "32"], &failing);
    let all = [&holder, &first, &second, &on_disk, &faulty];
    all_see(&all, &ids(&all), "five hosts to see each other");
    let v = result_of(&holder, "read_in_turn", r#"{"mib": 32, "key": "d", "n": 2, "pin": false}"#);
    assert_eq!(v[0], serde_json::json!([on_disk.id(), faulty.id()]));
    let all_stores = stores(&holder, "default");
    assert_eq!(store_of(&all_stores, &on_disk)["disk_copies"], 1);
    assert_eq!(store_of(&all_stores, &faulty)["disk_copies"], 0);
    assert!(close_to(served(&holder), 4 * size), "the holder sent {} bytes", served(&holder));
    let sent_on = served(&on_disk);
    assert!(sent_on >= size, "the reader with the copy on disk sent {sent_on} bytes");
}

#[test]
fn a_full_disk_quota_and_reads_larger_than_a_task_are_clear_errors() {
    let up = Up::start_with(&["--object-memory-mib", "16", "--max-spill-mib", "24"]);
    // 64 MiB through 16 MiB of memory needs about 48 MiB on disk.
    let args = r#"{"count": 64, "len": 1048576}"#;
    let v = up.submit(&testkit(), &["--fn", "spill_working_set", "--args", args]).json();
    assert_eq!((&v["state"], &v["error"]["kind"]), (&"failed".into(), &"resource-limit".into()), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("disk quota of 25165824 bytes is full"), "{v}");
    // A writer stops at the quota too.
    let v = result_of(&up, "write_until_refused", r#"{"part": 1048576}"#);
    assert!(v[0].as_str().unwrap().contains("disk quota of 25165824 bytes is full"), "{v}");
    // Within it, the host spills as before.
    assert_eq!(result_of(&up, "spill_working_set", r#"{"count": 32, "len": 1048576}"#), 64);

    // A task with 16 MiB of memory reading 20 MiB, whole or as one slice.
    let out = up.submit(&testkit(), &["--fn", "read_more_than_memory", "--args", r#"{"mib": 20}"#, "--memory", "16"]);
    let v = out.json();
    assert_eq!(v["state"], "succeeded", "{v}");
    for error in v["result"].as_array().unwrap() {
        let error = error.as_str().unwrap();
        assert!(error.starts_with("ResourceLimit") && error.contains("memory limit of 16777216 bytes"), "{error}");
    }
}

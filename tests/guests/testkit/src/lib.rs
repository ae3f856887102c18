//! Tasks for tests and benchmarks: ones that misbehave on purpose, and ones
//! that measure the fabric from inside a guest.

use fabric::{ObjectId, ObjectRef};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Does nothing: the unit of task overhead.
#[fabric::task]
fn noop() {}

/// Adds two numbers.
#[fabric::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Panics with `message`.
#[fabric::task]
fn trap(message: String) -> u32 {
    eprintln!("about to fail: {message}");
    panic!("{message}")
}

/// Returns an error of its own.
#[fabric::task]
fn fail(message: String) -> Result<u32, String> {
    Err(message)
}

/// Never returns.
#[fabric::task]
fn spin() -> u64 {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Allocates (and touches) memory until something stops it.
#[fabric::task]
fn membomb() -> usize {
    let mut hoard = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        black_box(&hoard);
    }
}

/// Recurses `depth` levels (a large depth overflows the stack).
#[fabric::task]
fn recurse(depth: u64) -> u64 {
    fn down(n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            black_box(down(black_box(n - 1)) + 1)
        }
    }
    down(depth)
}

/// Sleeps `ms` milliseconds (suspended in the host, not spinning).
#[fabric::task]
fn sleep(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Submits a task that traps and returns what getting its result gave.
#[fabric::task]
fn child_trap() -> fabric::Result<u32> {
    trap.remote("child boom".to_string())?.get()
}

/// A chain of `depth` tasks each waiting on the next: runs on a host with a
/// single slot only if waiting parents lend their slot.
#[fabric::task]
fn nested(depth: u32) -> fabric::Result<u32> {
    if depth == 0 {
        return Ok(0);
    }
    Ok(nested.remote(depth - 1)?.get()? + 1)
}

/// Fans out `n` adds and sums them through `wait` (in completion order).
#[fabric::task]
fn wait_all(n: i64) -> fabric::Result<i64> {
    let mut pending: Vec<ObjectRef<i64>> = (0..n).map(|i| add.remote(i, 1)).collect::<fabric::Result<_>>()?;
    let mut total = 0;
    while !pending.is_empty() {
        let (ready, rest) = fabric::wait(&pending, 1, Some(Duration::from_secs(30)))?;
        for r in ready {
            total += r.get()?;
        }
        pending = rest;
    }
    Ok(total)
}

/// Puts a value and returns its id, then keeps the job alive `hold_ms`.
#[fabric::task]
fn put_and_hold(hold_ms: u64) -> fabric::Result<String> {
    let r = fabric::put(&"secret".to_string())?;
    println!("object {}", r.id());
    std::thread::sleep(Duration::from_millis(hold_ms));
    Ok(r.id().to_string())
}

/// Tries to read another job's object by its id.
#[fabric::task]
fn read_object(hex: String) -> fabric::Result<String> {
    ObjectRef::<String>::from_id(parse_id(&hex)?).get()
}

fn parse_id(hex: &str) -> fabric::Result<ObjectId> {
    let bad = || fabric::Error::InvalidArgument(format!("not an object id: {hex}"));
    let hi = u64::from_str_radix(hex.get(..16).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(hex.get(16..).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    Ok(ObjectId { hi, lo })
}

/// Puts `text` with a `mib` MiB array it names, pins the pair and returns
/// its id.
#[fabric::task]
fn put_pinned(text: String, mib: u64) -> fabric::Result<String> {
    let array = fabric::put_bytes(&vec![7u8; (mib << 20) as usize])?;
    let pair = fabric::put(&(text, array))?;
    pair.pin()?;
    Ok(pair.id().to_string())
}

/// Reads a pair `put_pinned` made by its id: the text and the array's
/// length, read whole.
#[fabric::task]
fn read_pinned(hex: String) -> fabric::Result<(String, u64)> {
    let (text, array): (String, fabric::ArrayRef<u8>) = ObjectRef::from_id(parse_id(&hex)?).get()?;
    Ok((text, array.get()?.len() as u64))
}

/// Has a host labelled `key=value` make a `len`-byte result, which stays
/// there, pins it from here and returns its id.
#[fabric::task]
fn pin_elsewhere(len: u64, key: String, value: String) -> fabric::Result<String> {
    let made = blob_result.remote_with(&on_label(&key, &value), len, 5)?;
    made.pin()?;
    Ok(made.id().to_string())
}

/// The size of an object read whole by its id.
#[fabric::task]
fn read_size(hex: String) -> fabric::Result<u64> {
    Ok(ObjectRef::<()>::from_id(parse_id(&hex)?).get_bytes()?.len() as u64)
}

/// The tenant and job this task runs in.
#[fabric::task]
fn whoami() -> (String, String) {
    let c = fabric::context();
    (c.tenant, c.job)
}

/// The id of the host running this task.
#[fabric::task]
fn where_am_i() -> String {
    fabric::context().host
}

/// Runs `where_am_i` as a sub-task demanding `resources`, `pool` and
/// `labels`, and returns the host it ran on.
#[fabric::task]
fn placed(
    resources: Vec<(String, u64)>,
    pool: Option<String>,
    labels: Vec<(String, String)>,
) -> fabric::Result<String> {
    let mut options = fabric::TaskOptions::default();
    options.resources = resources;
    options.pool = pool;
    options.labels = labels;
    where_am_i.remote_with(&options)?.get()
}

/// Sleeps `ms`; returns when it started and ended (Unix ms) and where.
#[fabric::task]
fn timed_sleep(ms: u64) -> (u64, u64, String) {
    let now = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    };
    let start = now();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now(), fabric::context().host)
}

/// Runs `n` tasks of `ms` that each hold `gpu=1`; returns their intervals.
#[fabric::task]
fn gpu_tasks(n: u64, ms: u64) -> fabric::Result<Vec<(u64, u64, String)>> {
    let options = fabric::TaskOptions::default().resource("gpu", 1);
    let refs = (0..n).map(|_| timed_sleep.remote_with(&options, ms)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&refs)
}

/// Sleeps `ms`, then returns `index` and the host it ran on.
#[fabric::task]
fn sleep_where(index: u64, ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(ms));
    (index, fabric::context().host)
}

/// Runs `sleep_where` for `ms` on a host labelled `key=value`; prints
/// `sleeping` once it is placed; returns where it ran.
#[fabric::task]
fn sleep_on(key: String, value: String, ms: u64) -> fabric::Result<String> {
    let slept = sleep_where.remote_with(&on_label(&key, &value).retries(0), 0, ms)?;
    println!("sleeping");
    Ok(slept.get()?.1)
}

/// Spreads `n` tasks of `ms` each over the cluster; returns the sum of
/// their indexes (n(n-1)/2 when every one completed) and where each ended.
#[fabric::task]
fn spread_sleep(n: u64, ms: u64) -> fabric::Result<(u64, Vec<String>)> {
    let options = fabric::TaskOptions::default().strategy(fabric::Strategy::Spread);
    let refs = (0..n).map(|i| sleep_where.remote_with(&options, i, ms)).collect::<fabric::Result<Vec<_>>>()?;
    let done = fabric::get_all(&refs)?;
    Ok((done.iter().map(|(i, _)| i).sum(), done.into_iter().map(|(_, host)| host).collect()))
}

/// Percentiles of a set of durations, in microseconds.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Timing {
    pub n: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub total_s: f64,
}

fn timing(mut samples: Vec<Duration>, total: Duration) -> Timing {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Timing { n: samples.len() as u64, p50_us: at(0.5), p99_us: at(0.99), total_s: total.as_secs_f64() }
}

/// Runs `once` `n` times in a row, timing each.
fn sequential(n: u64, mut once: impl FnMut() -> fabric::Result<()>) -> fabric::Result<Timing> {
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        once()?;
        samples.push(t.elapsed());
    }
    Ok(timing(samples, start.elapsed()))
}

/// A throughput's timing: `n` done since `start` (no latencies).
fn throughput(n: u64, start: Instant) -> Timing {
    Timing { n, p50_us: 0.0, p99_us: 0.0, total_s: start.elapsed().as_secs_f64() }
}

/// Sequential round trips: submit a no-op and wait for it, `n` times.
#[fabric::task]
fn bench_rtt(n: u64) -> fabric::Result<Timing> {
    sequential(n, || noop.remote()?.get())
}

/// Sequential round trips to another host: a no-op that must run on a host
/// labelled `key=value`, submitted and awaited `n` times.
#[fabric::task]
fn bench_remote_rtt(n: u64, key: String, value: String) -> fabric::Result<Timing> {
    let options = fabric::TaskOptions::default().label(key, value);
    sequential(n, || noop.remote_with(&options)?.get())
}

/// Calls of an actor on a host labelled `key=value`: `n` sequential round
/// trips, or with `pipelined` `n` calls asked without waiting, then all
/// awaited (the timing's total only).
#[fabric::task]
fn bench_remote_actor(n: u64, key: String, value: String, pipelined: bool) -> fabric::Result<Timing> {
    let probe = Probe::new(0).label(key, value).remote()?;
    probe.get()?.get()?;
    if !pipelined {
        return sequential(n, || probe.get()?.get().map(drop));
    }
    let start = Instant::now();
    let calls = (0..n).map(|_| probe.add(1)).collect::<fabric::Result<Vec<_>>>()?;
    for call in &calls {
        call.get()?;
    }
    Ok(throughput(n, start))
}

/// Throughput across the cluster: `n` no-ops spread over every host, then
/// all awaited.
#[fabric::task]
fn bench_spread_async(n: u64) -> fabric::Result<Timing> {
    let options = fabric::TaskOptions::default().strategy(fabric::Strategy::Spread);
    let start = Instant::now();
    let refs = (0..n).map(|_| noop.remote_with(&options)).collect::<fabric::Result<Vec<_>>>()?;
    for r in &refs {
        r.get()?;
    }
    Ok(throughput(n, start))
}

/// Throughput: submit `n` no-ops, then wait for all.
#[fabric::task]
fn bench_async(n: u64) -> fabric::Result<Timing> {
    let start = Instant::now();
    let refs = (0..n).map(|_| noop.remote()).collect::<fabric::Result<Vec<_>>>()?;
    for r in &refs {
        r.get()?;
    }
    Ok(throughput(n, start))
}

/// Put then get `mib` MiB from inside a guest, `rounds` times.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PutGet {
    pub bytes: u64,
    pub put_s: Vec<f64>,
    pub get_s: Vec<f64>,
}

/// Puts and gets a `mib` MiB object `rounds` times, timing each.
#[fabric::task]
fn bench_put_get(mib: u64, rounds: u32) -> fabric::Result<PutGet> {
    let data = vec![7u8; (mib << 20) as usize];
    let mut out = PutGet { bytes: data.len() as u64, put_s: Vec::new(), get_s: Vec::new() };
    for _ in 0..rounds {
        let t = Instant::now();
        let r = fabric::put_bytes(&data)?;
        out.put_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let back = ObjectRef::<()>::from_id(r.id()).get_bytes()?;
        out.get_s.push(t.elapsed().as_secs_f64());
        if back.len() != data.len() {
            return Err(fabric::Error::Internal("size mismatch".into()));
        }
        drop(back);
    }
    Ok(out)
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts calls into this instance: shows when an instance is reused.
#[fabric::task]
fn instance_calls() -> u64 {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Puts `mib` MiB of a pattern, gets it back whole and in slices, and checks
/// every byte.
#[fabric::task]
fn roundtrip(mib: u64) -> fabric::Result<u64> {
    let data: Vec<u8> = (0..(mib << 20)).map(|i| (i % 251) as u8).collect();
    let array = fabric::put_bytes(&data)?;
    let whole = ObjectRef::<()>::from_id(array.id()).get_bytes()?;
    if whole != data {
        return Err(fabric::Error::Internal("get returned different bytes".into()));
    }
    let len = data.len() as u64;
    for (start, end) in [(0, 1), (len / 3, len / 2), (len - 7, len)] {
        if array.slice(start..end)? != data[start as usize..end as usize] {
            return Err(fabric::Error::Internal(format!("slice {start}..{end} differs")));
        }
    }
    Ok(len)
}

/// Reads past the end of an object: must be an invalid-argument error.
#[fabric::task]
fn read_past_end() -> fabric::Result<Vec<u8>> {
    let array = fabric::put_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])?;
    let id = array.id();
    // Bypass the SDK's own bounds check to reach the host's.
    let forged: fabric::ArrayRef<u8> = fabric::__private::array_ref(id, 100);
    forged.slice(5..20)
}

// ---- objects across hosts ----

/// `len` bytes of a pattern drawn from `seed`: every guest makes the same.
fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let mut x = seed | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// A 64-bit digest of `bytes`, word by word: enough to catch a wrong byte.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]);
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(23);
    }
    for b in words.remainder() {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

fn on_label(key: &str, value: &str) -> fabric::TaskOptions {
    fabric::TaskOptions::default().label(key, value)
}

/// The pattern as this task's result, and where it was made (also printed).
#[fabric::task]
fn blob_result(len: u64, seed: u64) -> (String, Vec<u8>) {
    let host = fabric::context().host;
    println!("made on {host}");
    (host, pattern(len, seed))
}

/// Puts `count` objects of `len` bytes (patterns seeded 1..=count), then
/// reads each back whole, then a slice of each in reverse order. Returns how
/// many read back right (whole and slice).
#[fabric::task]
fn spill_working_set(count: u64, len: u64) -> fabric::Result<u64> {
    let mut arrays = Vec::new();
    for seed in 1..=count {
        arrays.push(fabric::put_bytes(&pattern(len, seed))?);
    }
    let mut right = 0;
    for (seed, array) in (1..=count).zip(&arrays) {
        let bytes = ObjectRef::<()>::from_id(array.id()).get_bytes()?;
        right += u64::from(bytes == pattern(len, seed));
    }
    for (index, array) in arrays.iter().enumerate().rev() {
        let seed = index as u64 + 1;
        let (start, end) = (len / 3, len / 3 + len / 4);
        right += u64::from(array.slice(start..end)? == pattern(len, seed)[start as usize..end as usize]);
    }
    Ok(right)
}

/// The digests of `total` bytes written as one object in parts of `part`
/// bytes (each part a pattern seeded by its index), and of the object read
/// back a part at a time; then its length.
#[fabric::task]
fn stream_object(total: u64, part: u64) -> fabric::Result<(u64, u64, u64)> {
    let mut writer = fabric::ObjectWriter::new();
    let mut written = 0u64;
    let mut offset = 0;
    while offset < total {
        let bytes = pattern(part.min(total - offset), offset / part + 1);
        written = written.rotate_left(5) ^ digest(&bytes);
        writer.write(&bytes)?;
        offset += bytes.len() as u64;
    }
    let array = writer.finish()?;
    let mut read = 0u64;
    let mut offset = 0;
    while offset < array.len() {
        let end = (offset + part).min(array.len());
        read = read.rotate_left(5) ^ digest(&array.slice(offset..end)?);
        offset = end;
    }
    Ok((written, read, array.len()))
}

/// Writes parts of `part` bytes into one object until the host refuses one;
/// returns the error and how much was written.
#[fabric::task]
fn write_until_refused(part: u64) -> fabric::Result<(String, u64)> {
    let mut writer = fabric::ObjectWriter::new();
    let bytes = vec![7u8; part as usize];
    loop {
        if let Err(e) = writer.write(&bytes) {
            return Ok((e.to_string(), writer.len()));
        }
    }
}

/// Holds `n` object writers open at once; returns how many it opened.
#[fabric::task]
fn open_writers(n: u64) -> u64 {
    let writers: Vec<fabric::ObjectWriter> = (0..n).map(|_| fabric::ObjectWriter::new()).collect();
    writers.len() as u64
}

/// Has a host labelled `key=value` return a `len`-byte pattern as its
/// result (run again at most `retries` times), prints `result ready`,
/// sleeps `ms` (the test kills the producer meanwhile), then reads it.
/// Returns who made what it read and whether the bytes matched, or the
/// error it got.
#[fabric::task]
fn result_after_loss(len: u64, key: String, value: String, ms: u64, retries: u32) -> fabric::Result<(String, bool)> {
    let made = blob_result.remote_with(&on_label(&key, &value).retries(retries), len, 11)?;
    fabric::wait(std::slice::from_ref(&made), 1, None)?;
    println!("result ready");
    std::thread::sleep(Duration::from_millis(ms));
    match made.get() {
        Ok((producer, bytes)) => Ok((producer, bytes == pattern(len, 11))),
        Err(e) => Ok((format!("{}: {e}", kind(&e)), false)),
    }
}

/// Puts the pattern; returns it, its digest and where it was made.
#[fabric::task]
fn put_blob(len: u64, seed: u64) -> fabric::Result<(fabric::ArrayRef<u8>, u64, String)> {
    let data = pattern(len, seed);
    Ok((fabric::put_bytes(&data)?, digest(&data), fabric::context().host))
}

/// Has a host labelled `key=value` put `n` patterns of `len` bytes, then
/// reads each whole here, `rounds` times over, and a slice of each; whether
/// every read matched.
#[fabric::task]
fn reread_elsewhere(n: u64, len: u64, key: String, value: String, rounds: u64) -> fabric::Result<bool> {
    // The task results go once read: only the arrays' copies take memory.
    let made = {
        let results = (0..n)
            .map(|seed| put_blob.remote_with(&on_label(&key, &value), len, seed))
            .collect::<fabric::Result<Vec<_>>>()?;
        results.iter().map(|r| r.get()).collect::<fabric::Result<Vec<_>>>()?
    };
    let mut matched = true;
    for _ in 0..rounds {
        for (seed, (array, expected, _)) in made.iter().enumerate() {
            // Read whole as an object (an array's `get` reads a range).
            matched &= digest(&ObjectRef::<()>::from_id(array.id()).get_bytes()?) == *expected;
            matched &= array.slice(8..16)? == pattern(len, seed as u64)[8..16];
        }
    }
    Ok(matched)
}

/// Has a host labelled `key=value` return a `len`-byte pattern as its
/// result, then reads it here: its size, a slice, and the whole. Returns
/// the producer, the reader, and whether every read matched.
#[fabric::task]
fn result_elsewhere(len: u64, seed: u64, key: String, value: String) -> fabric::Result<(String, String, bool)> {
    let made = blob_result.remote_with(&on_label(&key, &value), len, seed)?;
    fabric::wait(std::slice::from_ref(&made), 1, None)?;
    let size = made.size()?;
    let (producer, bytes) = made.get()?;
    let expected = pattern(len, seed);
    let whole = bytes == expected;
    let raw = ObjectRef::<()>::from_id(made.id()).get_bytes()?;
    let sized = size == raw.len() as u64;
    let sliced = fabric::__private::array_ref::<u8>(made.id(), size).slice(size - 100..size)? == raw[raw.len() - 100..];
    Ok((producer, fabric::context().host, whole && sized && sliced))
}

/// Has a host labelled `key=value` put a `len`-byte pattern, then reads it
/// here whole. Returns the producer, the reader, the producer's digest and
/// this one's.
#[fabric::task]
fn pull_elsewhere(len: u64, seed: u64, key: String, value: String) -> fabric::Result<(String, String, u64, u64)> {
    let (array, theirs, producer) = put_blob.remote_with(&on_label(&key, &value), len, seed)?.get()?;
    let bytes = ObjectRef::<()>::from_id(array.id()).get_bytes()?;
    Ok((producer, fabric::context().host, theirs, digest(&bytes)))
}

/// Reads `count` slices of `slice` bytes spread over an object a host
/// labelled `key=value` put, without pulling the whole; whether each matched.
#[fabric::task]
fn slices_elsewhere(len: u64, seed: u64, key: String, value: String, slice: u64, count: u64) -> fabric::Result<bool> {
    let (array, _, _) = put_blob.remote_with(&on_label(&key, &value), len, seed)?.get()?;
    let expected = pattern(len, seed);
    for i in 0..count {
        let start = (len - slice) / count.max(1) * i;
        if array.slice(start..start + slice)? != expected[start as usize..(start + slice) as usize] {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Has a host labelled `key=value` put a pattern, prints `made`, sleeps
/// `ms` (the test kills that host meanwhile), then tries to read it; returns
/// the error it gets.
#[fabric::task]
fn read_after_loss(key: String, value: String, ms: u64) -> fabric::Result<String> {
    let (array, _, producer) = put_blob.remote_with(&on_label(&key, &value), 1 << 20, 7)?.get()?;
    println!("made on {producer}");
    std::thread::sleep(Duration::from_millis(ms));
    match array.get() {
        Ok(_) => Ok("read it".to_string()),
        Err(e) => Ok(format!("{}: {e}", kind(&e))),
    }
}

/// Puts a pattern and keeps the job alive `hold_ms`; prints the id.
#[fabric::task]
fn put_blob_and_hold(len: u64, hold_ms: u64) -> fabric::Result<String> {
    let array = fabric::put_bytes(&pattern(len, 3))?;
    println!("object {}", array.id());
    std::thread::sleep(Duration::from_millis(hold_ms));
    Ok(array.id().to_string())
}

/// Has a host labelled `key=value` put `mib` MiB, then reads it whole
/// `rounds` times as one range (a range read keeps no local copy, so every
/// round pulls it again); the seconds of each round.
#[fabric::task]
fn bench_pull(mib: u64, rounds: u32, key: String, value: String) -> fabric::Result<Vec<f64>> {
    let len = mib << 20;
    let (array, _, _) = put_blob.remote_with(&on_label(&key, &value), len, 9)?.get()?;
    let mut seconds = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let bytes = array.slice(0..len)?;
        seconds.push(t.elapsed().as_secs_f64());
        if bytes.len() as u64 != len {
            return Err(fabric::Error::Internal("short read".into()));
        }
    }
    Ok(seconds)
}

/// Puts `total_mib` MiB here, then reads a `slice_mib` MiB slice of it
/// `rounds` times; the seconds of each read.
#[fabric::task]
fn bench_slice(total_mib: u64, slice_mib: u64, rounds: u32) -> fabric::Result<Vec<f64>> {
    let array = fabric::put_bytes(&vec![5u8; (total_mib << 20) as usize])?;
    let mut seconds = Vec::new();
    for i in 0..rounds as u64 {
        let start = ((i * 7) % (total_mib - slice_mib + 1)) << 20;
        let t = Instant::now();
        let slice = array.slice(start..start + (slice_mib << 20))?;
        seconds.push(t.elapsed().as_secs_f64());
        black_box(slice);
    }
    Ok(seconds)
}

/// Puts `count` objects of `mib` MiB here, then reads each back whole, in
/// the order put; the seconds of each phase, `rounds` times.
#[fabric::task]
fn bench_spill(mib: u64, count: u64, rounds: u32) -> fabric::Result<Vec<(f64, f64)>> {
    let mut phases = Vec::new();
    for round in 0..rounds {
        let data = vec![round as u8; (mib << 20) as usize];
        let t = Instant::now();
        let arrays = (0..count).map(|_| fabric::put_bytes(&data)).collect::<fabric::Result<Vec<_>>>()?;
        let put = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for array in &arrays {
            black_box(ObjectRef::<()>::from_id(array.id()).get_bytes()?);
        }
        phases.push((put, t.elapsed().as_secs_f64()));
    }
    Ok(phases)
}

/// Reads `array` whole here; returns this host and the byte count.
#[fabric::task]
fn read_array(array: fabric::ArrayRef<u8>) -> fabric::Result<(String, u64)> {
    let bytes = ObjectRef::<()>::from_id(array.id()).get_bytes()?;
    Ok((fabric::context().host, bytes.len() as u64))
}

/// Puts `mib` MiB here and has one task on each host labelled `key=1..=n`
/// read it whole; the seconds until all have, and where they ran.
#[fabric::task]
fn bench_broadcast(mib: u64, key: String, n: u64) -> fabric::Result<(f64, Vec<String>)> {
    let array = fabric::put_bytes(&vec![6u8; (mib << 20) as usize])?;
    let t = Instant::now();
    let refs = (1..=n)
        .map(|i| read_array.remote_with(&on_label(&key, &i.to_string()), array.clone()))
        .collect::<fabric::Result<Vec<_>>>()?;
    let done = fabric::get_all(&refs)?;
    let seconds = t.elapsed().as_secs_f64();
    if done.iter().any(|(_, len)| *len != mib << 20) {
        return Err(fabric::Error::Internal("a reader got a short object".into()));
    }
    Ok((seconds, done.into_iter().map(|(host, _)| host).collect()))
}

// ---- actors ----

use fabric::ActorHandle;

/// A test actor: a value, a history of sequence numbers, and ways to fail.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Probe {
    value: i64,
    history: Vec<u64>,
}

#[fabric::actor]
impl Probe {
    /// Starts at `start`.
    pub fn new(start: i64) -> Self {
        Probe { value: start, history: Vec::new() }
    }

    /// Adds `by`; returns the new value.
    pub fn add(&mut self, by: i64) -> i64 {
        self.value += by;
        self.value
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.value
    }

    /// Appends `seq` to the history; returns its length.
    pub fn record(&mut self, seq: u64) -> u64 {
        self.history.push(seq);
        self.history.len() as u64
    }

    /// Every recorded sequence number, in arrival order.
    pub fn history(&self) -> Vec<u64> {
        self.history.clone()
    }

    /// Traps.
    pub fn boom(&mut self) -> i64 {
        panic!("probe boom")
    }

    /// Prints `text`; returns the host the actor lives on.
    pub fn say(&self, text: String) -> String {
        println!("{text}");
        fabric::context().host
    }

    /// `len` zero bytes.
    pub fn zeros(&self, len: u64) -> Vec<u8> {
        vec![0; len as usize]
    }

    /// The instance's linear memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (core::arch::wasm32::memory_size(0) as u64) * 65536
    }

    /// Sleeps `ms` milliseconds.
    pub fn host(&self) -> String {
        fabric::context().host
    }

    pub fn slow(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// `n` calls from one caller without waiting arrive in order.
#[fabric::task]
fn actor_ordering(n: u64) -> fabric::Result<bool> {
    let probe = Probe::new(0).remote()?;
    let refs = (0..n).map(|i| probe.record(i)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&refs)?;
    Ok(probe.history()?.get()? == (0..n).collect::<Vec<_>>())
}

/// Sends `n` records tagged with `caller` to `probe`.
#[fabric::task]
fn record_from(probe: ProbeHandle, caller: u64, n: u64) -> fabric::Result<u64> {
    let refs = (0..n).map(|i| probe.record(caller * 1_000_000 + i)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&refs)?;
    Ok(n)
}

/// `callers` tasks send `n` calls each concurrently: each caller's calls are
/// seen in its order, and none is lost.
#[fabric::task]
fn actor_order_from_tasks(callers: u64, n: u64) -> fabric::Result<bool> {
    let probe = Probe::new(0).remote()?;
    let runs = (0..callers).map(|c| record_from.remote(probe, c, n)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&runs)?;
    let history = probe.history()?.get()?;
    if history.len() as u64 != callers * n {
        return Ok(false);
    }
    Ok((0..callers).all(|c| {
        let mine: Vec<u64> = history.iter().filter(|s| **s / 1_000_000 == c).map(|s| s % 1_000_000).collect();
        mine == (0..n).collect::<Vec<_>>()
    }))
}

/// `k` actors take `n` adds each, all in flight at once.
#[fabric::task]
fn many_actors(k: u64, n: u64) -> fabric::Result<Vec<i64>> {
    let probes = (0..k).map(|i| Probe::new(i as i64).remote()).collect::<fabric::Result<Vec<_>>>()?;
    let mut refs = Vec::new();
    for _ in 0..n {
        for p in &probes {
            refs.push(p.add(1)?);
        }
    }
    fabric::get_all(&refs)?;
    probes.iter().map(|p| p.get()?.get()).collect()
}

/// Gets or creates the probe named `name` and adds 1; returns its id.
#[fabric::task]
fn join_named(name: String) -> fabric::Result<String> {
    let probe = Probe::new(0).name(name).get_or_create()?;
    probe.add(1)?.get()?;
    Ok(probe.id().to_string())
}

/// `tasks` tasks race to get-or-create one named probe.
#[fabric::task]
fn named_race(tasks: u64) -> fabric::Result<(u64, i64)> {
    let name = format!("race-{}", fabric::context().job);
    let runs = (0..tasks).map(|_| join_named.remote(name.clone())).collect::<fabric::Result<Vec<_>>>()?;
    let ids: std::collections::HashSet<String> = fabric::get_all(&runs)?.into_iter().collect();
    let value = ProbeHandle::lookup(&name)?.get()?.get()?;
    Ok((ids.len() as u64, value))
}

/// Adds `by` through a handle passed as an argument.
#[fabric::task]
fn add_via(probe: ProbeHandle, by: i64) -> fabric::Result<i64> {
    probe.add(by)?.get()
}

/// Creates a probe actor (named `name` if given) demanding `resources`,
/// `pool` and `labels`; returns the host it lives on.
#[fabric::task]
fn actor_placed(
    name: Option<String>,
    resources: Vec<(String, u64)>,
    pool: Option<String>,
    labels: Vec<(String, String)>,
) -> fabric::Result<String> {
    let mut builder = Probe::new(0);
    if let Some(name) = name {
        builder = builder.name(name);
    }
    for (resource, amount) in resources {
        builder = builder.resource(resource, amount);
    }
    if let Some(pool) = pool {
        builder = builder.pool(pool);
    }
    for (key, value) in labels {
        builder = builder.label(key, value);
    }
    builder.remote()?.host()?.get()
}

/// Has a probe on a host labelled `key=value` print `text`, prints where
/// it lives, then holds the job open for `hold_ms`.
#[fabric::task]
fn actor_says(key: String, value: String, text: String, hold_ms: u64) -> fabric::Result<String> {
    let probe = Probe::new(0).label(key, value).remote()?;
    let host = probe.say(text)?.get()?;
    println!("the probe lives on {host}");
    std::thread::sleep(Duration::from_millis(hold_ms));
    Ok(host)
}

/// Asks a probe on a host labelled `key=value` to add 5 and record 1 to
/// `n` without waiting for any answer, then snapshots it; asks it for an
/// answer larger than a frame. Returns where it lives, the state read from
/// the snapshot, the answers to the records, what became of the large
/// answer, and its value after.
#[fabric::task]
#[allow(clippy::type_complexity)]
fn snapshot_across(
    key: String,
    value: String,
    n: u64,
) -> fabric::Result<(String, i64, Vec<u64>, Vec<u64>, String, i64)> {
    let probe = Probe::new(0).label(key, value).remote()?;
    probe.add(5)?;
    let records = (1..=n).map(|seq| probe.record(seq)).collect::<fabric::Result<Vec<_>>>()?;
    let snapshot = probe.snapshot()?;
    let state: Probe = ObjectRef::from_id(snapshot.id()).get()?;
    let lengths = records.iter().map(|r| r.get()).collect::<fabric::Result<Vec<_>>>()?;
    let large = match probe.zeros(20 << 20)?.get() {
        Ok(bytes) if bytes.len() == 20 << 20 && bytes.iter().all(|b| *b == 0) => "20 MiB of zeros".to_string(),
        Ok(bytes) => format!("{} bytes came back", bytes.len()),
        Err(error) => error.to_string(),
    };
    Ok((probe.host()?.get()?, state.value, state.history, lengths, large, probe.add(1)?.get()?))
}

/// Makes a detached probe named `name` on a host labelled `key=value`;
/// returns where it lives.
#[fabric::task]
fn place_named_probe(name: String, key: String, value: String) -> fabric::Result<String> {
    Probe::new(0).name(name).label(key, value).detached().remote()?.host()?.get()
}

/// Asks the probe named `name` to add 1 `n` times without waiting, then
/// waits for every answer; returns the last.
#[fabric::task]
fn add_to_named(name: String, n: u64) -> fabric::Result<i64> {
    let probe = ProbeHandle::lookup(&name)?;
    let asked = (0..n).map(|_| probe.add(1)).collect::<fabric::Result<Vec<_>>>()?;
    let mut last = 0;
    for answer in &asked {
        last = answer.get()?;
    }
    Ok(last)
}

/// Adds `by` through a handle stored in an object.
#[fabric::task]
fn add_via_object(stored: ObjectRef<ProbeHandle>, by: i64) -> fabric::Result<i64> {
    stored.get()?.add(by)?.get()
}

/// A handle travels through a task argument and through an object.
#[fabric::task]
fn handle_travels() -> fabric::Result<i64> {
    let probe = Probe::new(0).remote()?;
    add_via.remote(probe, 5)?.get()?;
    let stored = fabric::put(&probe)?;
    add_via_object.remote(stored, 7)?.get()?;
    probe.get()?.get()
}

/// A trapping call fails alone; the next runs on the state restored from the
/// last snapshot. Returns (error kind of the trap, value after).
#[fabric::task]
fn trap_then_restore() -> fabric::Result<(String, i64)> {
    let probe = Probe::new(0).snapshot_every(1).max_restarts(1).remote()?;
    probe.add(5)?.get()?;
    let trapped = probe.boom()?.get().expect_err("boom traps");
    let after = probe.add(1)?.get()?;
    Ok((kind(&trapped), after))
}

fn kind(e: &fabric::Error) -> String {
    format!("{e:?}").split('(').next().unwrap_or_default().to_string()
}

/// Two traps with one restart allowed: queued and later calls see the actor
/// dead. Returns the kinds of: first boom, second boom, a queued get, a later get.
#[fabric::task]
fn restarts_exhausted() -> fabric::Result<Vec<String>> {
    let probe = Probe::new(0).max_restarts(1).remote()?;
    let first = probe.boom()?;
    let second = probe.boom()?;
    let queued = probe.get()?;
    let mut kinds = Vec::new();
    for r in [first, second, queued] {
        kinds.push(match r.get() {
            Ok(_) => "ok".to_string(),
            Err(e) => kind(&e),
        });
    }
    kinds.push(match probe.get().and_then(|r| r.get()) {
        Ok(_) => "ok".to_string(),
        Err(e) => kind(&e),
    });
    Ok(kinds)
}

/// A mailbox of 2 refuses a burst while a slow call runs. Returns how many
/// submits were refused and the error kind.
#[fabric::task]
fn mailbox_full() -> fabric::Result<(u32, String)> {
    let probe = Probe::new(0).max_pending(2).remote()?;
    let slow = probe.slow(300)?;
    let mut refused = 0;
    let mut what = String::new();
    for _ in 0..10 {
        if let Err(e) = probe.add(1) {
            refused += 1;
            what = kind(&e);
        }
    }
    slow.get()?;
    Ok((refused, what))
}

/// Calls an unknown method and a known one with bad arguments.
#[fabric::task]
fn actor_bad_calls() -> fabric::Result<(String, String)> {
    let probe = Probe::new(0).remote()?;
    let unknown: fabric::Result<()> =
        fabric::__private::actor_call::<_, ()>(probe.id(), "nope", &()).and_then(|r| r.get());
    // Postcard is not self-describing: missing bytes are what it can detect.
    let bad: fabric::Result<i64> =
        fabric::__private::actor_call::<_, i64>(probe.id(), "add", &()).and_then(|r| r.get());
    let describe = |r: Result<String, fabric::Error>| match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{}: {e}", kind(&e)),
    };
    Ok((describe(unknown.map(|_| String::new())), describe(bad.map(|v| v.to_string()))))
}

/// Creates an owned and a detached named probe, then returns.
#[fabric::task]
fn make_actors(prefix: String) -> fabric::Result<()> {
    Probe::new(1).name(format!("{prefix}-owned")).remote()?.add(1)?.get()?;
    Probe::new(2).name(format!("{prefix}-kept")).detached().remote()?.add(1)?.get()?;
    Ok(())
}

/// Which of the probes `make_actors` made still exist (and the kept one's value).
#[fabric::task]
fn find_actors(prefix: String) -> fabric::Result<(bool, Option<i64>)> {
    let owned = ProbeHandle::lookup(&format!("{prefix}-owned")).is_ok();
    let kept = match ProbeHandle::lookup(&format!("{prefix}-kept")) {
        Ok(p) => Some(p.get()?.get()?),
        Err(_) => None,
    };
    Ok((owned, kept))
}

// ---- actor benchmarks ----

/// Sequential method round trips to one actor.
#[fabric::task]
fn bench_actor_rtt(n: u64) -> fabric::Result<Timing> {
    let probe = Probe::new(0).remote()?;
    probe.get()?.get()?; // constructed
    sequential(n, || probe.get()?.get().map(drop))
}

/// Creation of an actor to its first method's result, `n` times.
#[fabric::task]
fn bench_actor_create(n: u64) -> fabric::Result<Timing> {
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let probe = Probe::new(0).remote()?;
        probe.get()?.get()?;
        samples.push(t.elapsed());
        probe.kill()?;
    }
    Ok(timing(samples, start.elapsed()))
}

/// `n` calls queued to one actor, then all awaited.
#[fabric::task]
fn bench_actor_async(n: u64) -> fabric::Result<Timing> {
    let probe = Probe::new(0).max_pending(n.min(u32::MAX as u64) as u32).remote()?;
    probe.get()?.get()?;
    let start = Instant::now();
    let refs = (0..n).map(|_| probe.add(1)).collect::<fabric::Result<Vec<_>>>()?;
    for r in &refs {
        r.get()?;
    }
    Ok(throughput(n, start))
}

/// One caller's share of the n:n benchmark: `calls` rounds over all actors.
#[fabric::task]
fn nn_caller(actors: Vec<ProbeHandle>, calls: u64) -> fabric::Result<u64> {
    let mut refs = Vec::with_capacity((calls as usize) * actors.len());
    for _ in 0..calls {
        for a in &actors {
            refs.push(a.add(1)?);
        }
    }
    for r in &refs {
        r.get()?;
    }
    Ok(refs.len() as u64)
}

/// `callers` tasks each call `actors` actors `calls` times.
#[fabric::task]
fn bench_actor_nn(callers: u64, actors: u64, calls: u64) -> fabric::Result<Timing> {
    let pending = (callers * calls).min(u32::MAX as u64) as u32;
    let probes =
        (0..actors).map(|_| Probe::new(0).max_pending(pending).remote()).collect::<fabric::Result<Vec<_>>>()?;
    for p in &probes {
        p.get()?.get()?;
    }
    let start = Instant::now();
    let runs = (0..callers).map(|_| nn_caller.remote(probes.clone(), calls)).collect::<fabric::Result<Vec<_>>>()?;
    let total: u64 = fabric::get_all(&runs)?.into_iter().sum();
    Ok(throughput(total, start))
}

/// Creates `n` detached probes named `idle-<i>`, each constructed by one call;
/// returns the linear memory size of one, in bytes.
#[fabric::task]
fn make_idle(n: u64) -> fabric::Result<u64> {
    let probes = (0..n)
        .map(|i| Probe::new(0).name(format!("idle-{i}")).detached().remote())
        .collect::<fabric::Result<Vec<_>>>()?;
    let refs = probes.iter().map(|p| p.memory_bytes()).collect::<fabric::Result<Vec<_>>>()?;
    let sizes = fabric::get_all(&refs)?;
    Ok(sizes.first().copied().unwrap_or(0))
}

/// As `trap_then_restore`, with snapshots taken by age instead of by count.
#[fabric::task]
fn trap_then_restore_by_age() -> fabric::Result<(String, i64)> {
    let probe = Probe::new(0).snapshot_interval(Duration::ZERO).max_restarts(1).remote()?;
    probe.add(5)?.get()?;
    let trapped = probe.boom()?.get().expect_err("boom traps");
    let after = probe.add(1)?.get()?;
    Ok((kind(&trapped), after))
}

/// An actor whose state has no serde form: it snapshots itself by hand.
pub struct Tally {
    counts: std::collections::BTreeMap<String, u64>,
    /// Not part of the snapshot: rebuilt as empty on restore.
    scratch: std::cell::Cell<u64>,
}

#[fabric::actor(custom_snapshot)]
impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Tally { counts: Default::default(), scratch: std::cell::Cell::new(0) }
    }

    /// Counts `word`; returns its count.
    pub fn count(&mut self, word: String) -> u64 {
        self.scratch.set(self.scratch.get() + 1);
        let n = self.counts.entry(word).or_default();
        *n += 1;
        *n
    }

    /// Traps.
    pub fn boom(&mut self) -> u64 {
        panic!("tally boom")
    }

    /// "word=count" lines.
    fn snapshot_state(&self) -> fabric::Result<Vec<u8>> {
        Ok(self.counts.iter().map(|(w, n)| format!("{w}={n}\n")).collect::<String>().into_bytes())
    }

    fn restore_state(state: &[u8]) -> fabric::Result<Self> {
        let text = std::str::from_utf8(state).map_err(|e| fabric::Error::InvalidArgument(e.to_string()))?;
        let mut counts = std::collections::BTreeMap::new();
        for line in text.lines() {
            let (w, n) = line.split_once('=').ok_or_else(|| fabric::Error::InvalidArgument(line.to_string()))?;
            counts.insert(w.to_string(), n.parse().map_err(|_| fabric::Error::InvalidArgument(line.to_string()))?);
        }
        Ok(Tally { counts, scratch: std::cell::Cell::new(0) })
    }
}

/// A hand-written snapshot restores the state after a trap.
#[fabric::task]
fn custom_snapshot_restores() -> fabric::Result<u64> {
    let tally = Tally::new().snapshot_every(1).max_restarts(1).remote()?;
    tally.count("a".into())?.get()?;
    tally.count("a".into())?.get()?;
    tally.boom()?.get().expect_err("boom traps");
    tally.count("a".into())?.get()
}

/// One item of a batch.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Numbered {
    n: u64,
}

/// What `batch_double` answers per item: the item doubled, and the size of
/// the batch it came in.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Doubled {
    n: u64,
    doubled: u64,
    batch: usize,
}

/// A batch function: one call for many requests.
#[fabric::task]
fn batch_double(batch: Vec<Numbered>) -> Vec<Doubled> {
    let size = batch.len();
    batch.into_iter().map(|item| Doubled { n: item.n, doubled: item.n * 2, batch: size }).collect()
}

/// A batch function that answers one result too few.
#[fabric::task]
fn batch_short(batch: Vec<Numbered>) -> Vec<u64> {
    batch.iter().skip(1).map(|item| item.n).collect()
}

/// Puts `rounds` objects of `mib` MiB one after another, dropping each
/// before the next: with a tenant limit below two objects this only
/// finishes if each is freed as its last reference drops. `through_holder`: each
/// is reached through a small object naming it (the big one lives while
/// the small one does); `pass`: each is handed to a sub-task that reads it
/// after this task has dropped its own reference; `from_task`: each is
/// made by a sub-task and returned in its result. Returns the bytes read.
#[fabric::task]
fn churn(rounds: u64, mib: u64, through_holder: bool, pass: bool, from_task: bool) -> fabric::Result<u64> {
    let mut read = 0;
    for round in 0..rounds {
        if from_task {
            // Made by a sub-task that has ended: its result names it.
            let made = put_and_return.remote(round, mib)?;
            let array = made.get()?;
            drop(made);
            read += array.get()?.len() as u64;
            continue;
        }
        let big = fabric::put_bytes(&vec![round as u8; (mib << 20) as usize])?;
        if through_holder {
            let holder = fabric::put(&(big.clone(), round))?;
            drop(big);
            let (inner, back): (fabric::ArrayRef<u8>, u64) = holder.get()?;
            drop(holder);
            // Held now only by `inner`, decoded from the freed holder.
            let tail = inner.slice(inner.len() - 1..inner.len())?;
            assert_eq!((tail[0], back), (round as u8, round));
            read += inner.len();
        } else if pass {
            let reader = read_late.remote(big.clone(), 20)?;
            drop(big);
            let (len, first) = reader.get()?;
            assert_eq!(first, round as u8);
            read += len;
        } else {
            read += big.get()?.len() as u64;
        }
    }
    Ok(read)
}

/// Puts `mib` MiB of `round` and returns the reference.
#[fabric::task]
fn put_and_return(round: u64, mib: u64) -> fabric::Result<fabric::ArrayRef<u8>> {
    fabric::put_bytes(&vec![round as u8; (mib << 20) as usize])
}

/// Sleeps `ms`, then reads the array: its length and first byte.
#[fabric::task]
fn read_late(array: fabric::ArrayRef<u8>, ms: u64) -> fabric::Result<(u64, u8)> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok((array.len(), array.slice(0..1)?[0]))
}

/// Has a host labelled `key=value` make `rounds` results of `len` bytes,
/// one after another, each read here and dropped before the next: each
/// result stays on its producer until the reference here drops.
#[fabric::task]
fn churn_elsewhere(rounds: u64, len: u64, key: String, value: String) -> fabric::Result<u64> {
    let mut read = 0;
    for round in 0..rounds {
        let made = blob_result.remote_with(&on_label(&key, &value), len, round)?;
        let (_, bytes) = made.get()?;
        read += bytes.len() as u64;
    }
    Ok(read)
}

/// Puts a value, drops the reference, then reads it again by its id: the
/// error says it was freed.
#[fabric::task]
fn read_freed() -> String {
    let made = match fabric::put(&7u32) {
        Ok(made) => made,
        Err(e) => return format!("put failed: {e}"),
    };
    let id = made.id();
    drop(made);
    match ObjectRef::<u32>::from_id(id).get() {
        Ok(value) => format!("still there: {value}"),
        Err(e) => format!("{}: {e}", kind(&e)),
    }
}

/// Puts a `mib` MiB array here (pinned if asked), then has the hosts
/// labelled `key=1` to `key=n` read it whole, one after another. Returns
/// the readers' hosts and the array's id.
#[fabric::task]
fn read_in_turn(mib: u64, key: String, n: u64, pin: bool) -> fabric::Result<(Vec<String>, String)> {
    let array = fabric::put_bytes(&vec![3u8; (mib << 20) as usize])?;
    if pin {
        array.pin()?;
    }
    let mut hosts = Vec::new();
    for i in 1..=n {
        let (host, len) = read_array.remote_with(&on_label(&key, &i.to_string()), array.clone())?.get()?;
        if len != mib << 20 {
            return Err(fabric::Error::Internal(format!("{host} read {len} bytes")));
        }
        hosts.push(host);
    }
    Ok((hosts, array.id().to_string()))
}

/// Writes a `mib` MiB object, then reads it whole and as one slice: more
/// than a task with a smaller memory limit can take. Returns both errors.
#[fabric::task]
fn read_more_than_memory(mib: u64) -> fabric::Result<(String, String)> {
    let mut writer = fabric::ObjectWriter::new();
    let part = vec![1u8; 1 << 20];
    for _ in 0..mib {
        writer.write(&part)?;
    }
    let array = writer.finish()?;
    let whole = match ObjectRef::<()>::from_id(array.id()).get_bytes() {
        Ok(bytes) => format!("read {} bytes", bytes.len()),
        Err(e) => format!("{}: {e}", kind(&e)),
    };
    let sliced = match array.slice(0..array.len()) {
        Ok(bytes) => format!("read {} bytes", bytes.len()),
        Err(e) => format!("{}: {e}", kind(&e)),
    };
    Ok((whole, sliced))
}

/// Runs `n` tasks spread over the hosts labelled `key=value`, none allowed
/// to run again (`retries(0)`); returns where each ran.
#[fabric::task]
fn spread_on_label(n: u32, key: String, value: String) -> fabric::Result<Vec<String>> {
    let options = on_label(&key, &value).strategy(fabric::Strategy::Spread).retries(0);
    let runs = (0..n).map(|_| where_am_i.remote_with(&options)).collect::<fabric::Result<Vec<_>>>()?;
    fabric::get_all(&runs)
}

/// A record stored archived with rkyv: read in place, naming objects of
/// every kind.
#[derive(fabric::rkyv::Archive, fabric::rkyv::Serialize, fabric::rkyv::Deserialize)]
#[rkyv(crate = fabric::rkyv)]
struct Catalog {
    name: String,
    scores: Vec<u32>,
    note: ObjectRef<String>,
    bytes: fabric::ArrayRef<u8>,
    part: Option<fabric::ArchivedRef<Catalog>>,
}

/// What [`read_catalog`] found, read in place.
#[derive(serde::Serialize, serde::Deserialize)]
struct CatalogSummary {
    name: String,
    scores: u64,
    sum: u64,
    note: String,
    bytes: u64,
    part: Option<String>,
    part_note: Option<String>,
    host: String,
}

/// Archives a catalog of `entries` scores naming an inner catalog, two
/// objects and an array, drops every reference but the outer one's, and
/// has a sub-task (on a host labelled `key=value`, when given) read it in
/// place. Returns that task's summary and this one's of the decoded value.
#[fabric::task]
fn archived_catalog(
    entries: u32,
    key: Option<String>,
    value: Option<String>,
) -> fabric::Result<(CatalogSummary, (String, u64, usize))> {
    let outer = put_catalog(entries)?;
    let options = match (key, value) {
        (Some(key), Some(value)) => on_label(&key, &value),
        _ => fabric::TaskOptions::default(),
    };
    let summary = read_catalog.remote_with(&options, outer.clone())?.get()?;
    let owned = outer.get_owned()?;
    let part = owned.part.map(|p| p.get_owned()).transpose()?;
    Ok((summary, (owned.name, owned.scores.iter().map(|s| u64::from(*s)).sum(), part.map_or(0, |p| p.scores.len()))))
}

/// Archives a catalog named "outer" of scores `0..entries`, naming an inner
/// catalog, two notes and two byte arrays; only the returned reference is
/// left.
fn put_catalog(entries: u32) -> fabric::Result<fabric::ArchivedRef<Catalog>> {
    let inner = fabric::put_archived(&Catalog {
        name: "inner".into(),
        scores: vec![7; 3],
        note: fabric::put(&"inner note".to_string())?,
        bytes: fabric::put_bytes(&[1, 2, 3])?,
        part: None,
    })?;
    fabric::put_archived(&Catalog {
        name: "outer".into(),
        scores: (0..entries).collect(),
        note: fabric::put(&"outer note".to_string())?,
        bytes: fabric::put_bytes(&vec![9; 1000])?,
        part: Some(inner),
    })
}

/// [`put_catalog`], pinned: its id, for `fabric get`.
#[fabric::task]
fn pinned_catalog(entries: u32) -> fabric::Result<String> {
    let catalog = put_catalog(entries)?;
    catalog.pin()?;
    Ok(catalog.id().to_string())
}

/// Reads an archived catalog in place and follows what it names.
#[fabric::task]
fn read_catalog(catalog: fabric::ArchivedRef<Catalog>) -> fabric::Result<CatalogSummary> {
    let view = catalog.get()?;
    let part = view.part.as_ref().map(|part| part.to_ref().get()).transpose()?;
    Ok(CatalogSummary {
        name: view.name.to_string(),
        scores: view.scores.len() as u64,
        sum: view.scores.iter().map(|s| u64::from(s.to_native())).sum(),
        note: view.note.to_ref().get()?,
        bytes: view.bytes.len(),
        part: part.as_ref().map(|p| p.name.to_string()),
        part_note: part.map(|p| p.note.to_ref().get()).transpose()?,
        host: fabric::context().host,
    })
}

/// Reads objects that are not archived catalogs as if they were: raw
/// bytes, a postcard value, and an empty object. Returns each error.
#[fabric::task]
fn archived_wrong_type() -> fabric::Result<Vec<String>> {
    let raw = fabric::put_bytes(b"certainly not an archive")?;
    let postcard = fabric::put(&("a", 1u64, vec![2u32; 40]))?;
    let empty = fabric::put_bytes(&[])?;
    Ok([raw.id(), postcard.id(), empty.id()]
        .into_iter()
        .map(|id| match fabric::ArchivedRef::<Catalog>::from_id(id).get() {
            Ok(view) => format!("read as a catalog named {:?}", view.name.as_str()),
            Err(e) => format!("{}: {e}", kind(&e)),
        })
        .collect())
}

/// A small archived value naming a large array.
#[derive(fabric::rkyv::Archive, fabric::rkyv::Serialize, fabric::rkyv::Deserialize)]
#[rkyv(crate = fabric::rkyv)]
struct Holder {
    array: fabric::ArrayRef<u8>,
    round: u64,
}

/// `churn`'s holder rounds with an archived holder: each `mib` MiB array
/// lives while the archived value naming it does, then both go.
#[fabric::task]
fn churn_archived(rounds: u64, mib: u64) -> fabric::Result<u64> {
    let mut read = 0;
    for round in 0..rounds {
        let big = fabric::put_bytes(&vec![round as u8; (mib << 20) as usize])?;
        let holder = fabric::put_archived(&Holder { array: big.clone(), round })?;
        drop(big);
        let view = holder.get()?;
        drop(holder);
        // The read keeps the holder, so what it names, alive.
        let inner = view.array.to_ref();
        assert_eq!(view.round.to_native(), round);
        // The holder goes; `inner` keeps the array.
        drop(view);
        let tail = inner.slice(inner.len() - 1..inner.len())?;
        assert_eq!(tail[0], round as u8);
        read += inner.len();
    }
    Ok(read)
}

/// One row of [`bench_typed_read`]'s table, in both encodings.
#[derive(
    serde::Serialize, serde::Deserialize, fabric::rkyv::Archive, fabric::rkyv::Serialize, fabric::rkyv::Deserialize,
)]
#[rkyv(crate = fabric::rkyv)]
struct Row {
    id: u64,
    name: String,
    score: f64,
    tags: Vec<u32>,
}

/// A table of `rows` rows stored twice, with postcard (`put`) and archived
/// (`put_archived`); each round a reader wants one row's score: decoding
/// the postcard value whole, against checking the archive and reading the
/// row in place. Times the reads, `rounds` times each.
#[fabric::task]
fn bench_typed_read(rows: u64, rounds: u32) -> fabric::Result<(Timing, Timing)> {
    let table: Vec<Row> = (0..rows)
        .map(|id| Row { id, name: format!("row {id}"), score: id as f64 / 2.0, tags: vec![id as u32; 4] })
        .collect();
    let decoded = fabric::put(&table)?;
    let archived = fabric::put_archived(&table)?;
    drop(table);
    let want = (rows / 2) as usize;
    let expected = want as f64 / 2.0;
    let (mut by_decoding, mut in_place) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let score = decoded.get()?[want].score;
        by_decoding.push(t.elapsed());
        let t = Instant::now();
        let in_place_score = archived.get()?[want].score.to_native();
        in_place.push(t.elapsed());
        if (score, in_place_score) != (expected, expected) {
            return Err(fabric::Error::Internal(format!("read {score} and {in_place_score}, not {expected}")));
        }
    }
    let total = start.elapsed();
    Ok((timing(by_decoding, total), timing(in_place, total)))
}

/// A pinned empty object: its id, for `fabric get`.
#[fabric::task]
fn pinned_empty() -> fabric::Result<String> {
    let empty = fabric::put_bytes(&[])?;
    empty.pin()?;
    Ok(empty.id().to_string())
}

/// Gets or creates the probes named `prefix-0` to `prefix-{count-1}` and
/// returns the host each lives on, then what tasks on the hosts labelled
/// `key=v`, for each of `values`, find when they look each name up.
#[fabric::task]
fn named_probes(
    prefix: String,
    count: u64,
    key: String,
    values: Vec<String>,
) -> fabric::Result<(Vec<String>, Vec<Vec<String>>)> {
    let probes = (0..count)
        .map(|i| Probe::new(0).name(format!("{prefix}-{i}")).get_or_create())
        .collect::<fabric::Result<Vec<_>>>()?;
    let hosts = probes.iter().map(|probe| probe.host()?.get()).collect::<fabric::Result<Vec<_>>>()?;
    let seen = values
        .iter()
        .map(|value| probe_hosts.remote_with(&on_label(&key, value), prefix.clone(), count))
        .collect::<fabric::Result<Vec<_>>>()?;
    Ok((hosts, fabric::get_all(&seen)?))
}

/// The host each probe named `prefix-0` to `prefix-{count-1}` lives on.
#[fabric::task]
fn probe_hosts(prefix: String, count: u64) -> fabric::Result<Vec<String>> {
    (0..count).map(|i| ProbeHandle::lookup(&format!("{prefix}-{i}"))?.host()?.get()).collect()
}

/// Puts `rounds` arrays of `mib` MiB one after another, each read by a
/// task on a host labelled `key=value` and dropped here after: with a
/// tenant limit below two arrays this only finishes if each is freed once
/// the remote reader is done with it. Returns the bytes read.
#[fabric::task]
fn churn_remote(rounds: u64, mib: u64, key: String, value: String) -> fabric::Result<u64> {
    let mut read = 0;
    for round in 0..rounds {
        let big = fabric::put_bytes(&vec![round as u8; (mib << 20) as usize])?;
        let (len, first) = read_late.remote_with(&on_label(&key, &value), big.clone(), 0)?.get()?;
        assert_eq!(first, round as u8);
        read += len;
    }
    Ok(read)
}

/// Has a task on a host labelled `key=value` keep an array made here in a
/// value of its own, drops every reference here, then reads the array
/// through that value: the peer said it kept it, so it lives.
#[fabric::task]
fn kept_by_a_peer(key: String, value: String) -> fabric::Result<(u64, u8)> {
    let array = fabric::put_bytes(&[42; 1000])?;
    let holder = wrap_array.remote_with(&on_label(&key, &value), array)?.get()?;
    let inner = holder.get()?;
    Ok((inner.len(), inner.slice(0..1)?[0]))
}

/// Stores `array` inside a value of its own.
#[fabric::task]
fn wrap_array(array: fabric::ArrayRef<u8>) -> fabric::Result<ObjectRef<fabric::ArrayRef<u8>>> {
    fabric::put(&array)
}

/// Makes a 1000-byte array here and has a host labelled `key=value` wrap
/// it in a value of its own (kept there); pins the task's result (which
/// names that value) when `result`, else the value, and returns the id
/// pinned. What is pinned is here, there, and names the other host's.
#[fabric::task]
fn pin_across(key: String, value: String, result: bool) -> fabric::Result<String> {
    let array = fabric::put_bytes(&[42; 1000])?;
    let made = wrap_array.remote_with(&on_label(&key, &value), array)?;
    if result {
        made.pin()?;
        return Ok(made.id().to_string());
    }
    let wrapped = made.get()?;
    wrapped.pin()?;
    Ok(wrapped.id().to_string())
}

/// Puts the numbers `0..n` here; returns references to them.
#[fabric::task]
fn put_numbers(n: u64) -> fabric::Result<Vec<ObjectRef<u64>>> {
    (0..n).map(|i| fabric::put(&i)).collect()
}

/// Has a host labelled `key=value` put `n` numbers, pins the task's result
/// (here, naming the `n` objects there) and returns its id.
#[fabric::task]
fn pin_numbers_across(key: String, value: String, n: u64) -> fabric::Result<String> {
    let made = put_numbers.remote_with(&on_label(&key, &value), n)?;
    made.pin()?;
    Ok(made.id().to_string())
}

/// The sum of the numbers the result [`pin_numbers_across`] pinned names.
#[fabric::task]
fn sum_pinned_numbers(hex: String) -> fabric::Result<u64> {
    let refs = ObjectRef::<Vec<ObjectRef<u64>>>::from_id(parse_id(&hex)?).get()?;
    refs.iter().map(|number| number.get()).sum()
}

/// Reads what [`pin_across`] pinned, by its id: the array's length and
/// first byte.
#[fabric::task]
fn read_across(hex: String, result: bool) -> fabric::Result<(u64, u8)> {
    let id = parse_id(&hex)?;
    let wrapped = match result {
        true => ObjectRef::<ObjectRef<fabric::ArrayRef<u8>>>::from_id(id).get()?,
        false => ObjectRef::from_id(id),
    };
    let array = wrapped.get()?;
    Ok((array.len(), array.get()?[0]))
}

//! Fan-out / reduce: estimate pi with Monte Carlo sampling spread over many
//! sub-tasks, each returning an object reference the driver gathers. On a
//! cluster the tasks spill over to other hosts; the result counts how many
//! ran on each.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/fanout.wasm --args '{"tasks": 1000, "samples": 10000}'
//! ```

use std::collections::BTreeMap;

/// The reduced result of the job.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    pub pi: f64,
    pub tasks: u64,
    pub samples: u64,
    pub inside: u64,
    /// Tasks run per host id.
    pub hosts: BTreeMap<String, u64>,
}

/// One sampling task's count, and where it ran.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Count {
    pub inside: u64,
    pub host: String,
}

/// Counts how many of `samples` pseudo-random points in the unit square fall
/// inside the quarter circle. Deterministic for a given `seed`.
#[fabric::task]
fn sample(seed: u64, samples: u64) -> Count {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: small, fast, good enough for an estimate.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let inside = (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64;
    Count { inside, host: fabric::context().host }
}

/// Submits `tasks` sampling tasks (default 1000) of `samples` points each
/// (default 10000) and reduces their counts into an estimate of pi. With
/// `spread`, tasks go to the least loaded hosts rather than filling the
/// submitting host first.
#[fabric::task]
fn main(tasks: Option<u64>, samples: Option<u64>, spread: Option<bool>) -> fabric::Result<Estimate> {
    let tasks = tasks.unwrap_or(1000);
    let samples = samples.unwrap_or(10_000);
    let mut options = fabric::TaskOptions::default();
    if spread.unwrap_or(false) {
        options = options.strategy(fabric::Strategy::Spread);
    }
    let refs = (0..tasks).map(|seed| sample.remote_with(&options, seed, samples)).collect::<fabric::Result<Vec<_>>>()?;
    let mut inside = 0;
    let mut hosts = BTreeMap::new();
    for count in fabric::get_all(&refs)? {
        inside += count.inside;
        *hosts.entry(count.host).or_insert(0) += 1;
    }
    let total = tasks * samples;
    println!("{tasks} tasks sampled {total} points on {} host(s)", hosts.len());
    Ok(Estimate { pi: 4.0 * inside as f64 / total.max(1) as f64, tasks, samples: total, inside, hosts })
}

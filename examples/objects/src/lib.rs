//! Share one large array between many tasks by reference: the driver puts a
//! 64 MiB array of f64 once, and each `process_slice` task reads only its own
//! slice of it from the object store. On a cluster, with `"spread": true`,
//! the tasks run on every host and those elsewhere pull just their slice
//! from the driver's host.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/objects.wasm --args '{"slices": 64}'
//! ```

use fabric::ArrayRef;
use std::collections::BTreeMap;

/// The reduced result: the slices' sums added up, and the sum expected.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub elements: u64,
    pub slices: u64,
    pub sum: f64,
    pub expected: f64,
    pub ok: bool,
    /// How many slices each host summed, by host id.
    pub hosts: BTreeMap<String, u64>,
}

/// Sums elements `start..end` of the shared array; returns the sum and the
/// host that computed it.
#[fabric::task]
fn process_slice(data: ArrayRef<f64>, start: u64, end: u64) -> fabric::Result<(f64, String)> {
    Ok((data.slice(start..end)?.iter().sum(), fabric::context().host))
}

/// Puts `mib` MiB (default 64) of f64 values 0, 1, 2, ... once and sums it in
/// `slices` tasks (default 64) that each read one slice by reference. With
/// `spread`, the tasks go to the least loaded hosts.
#[fabric::task]
fn main(mib: Option<u64>, slices: Option<u64>, spread: Option<bool>) -> fabric::Result<Summary> {
    let elements = mib.unwrap_or(64) * 1024 * 1024 / 8;
    let slices = slices.unwrap_or(64).clamp(1, elements.max(1));
    let values: Vec<f64> = (0..elements).map(|i| i as f64).collect();
    let data = fabric::put_array(&values)?;
    drop(values);
    let per_slice = elements.div_ceil(slices);
    let mut options = fabric::TaskOptions::default();
    if spread.unwrap_or(false) {
        options = options.strategy(fabric::Strategy::Spread);
    }
    let refs = (0..slices)
        .map(|i| {
            let start = (i * per_slice).min(elements);
            let end = ((i + 1) * per_slice).min(elements);
            process_slice.remote_with(&options, data.clone(), start, end)
        })
        .collect::<fabric::Result<Vec<_>>>()?;
    let mut sum = 0.0;
    let mut hosts = BTreeMap::new();
    for (part, host) in fabric::get_all(&refs)? {
        sum += part;
        *hosts.entry(host).or_insert(0) += 1;
    }
    // 0 + 1 + ... + (n-1), exact in f64 for the sizes used here.
    let expected = (elements as f64) * (elements as f64 - 1.0) / 2.0;
    println!("{slices} tasks summed {elements} elements on {} host(s)", hosts.len());
    Ok(Summary { elements, slices, sum, expected, ok: sum == expected, hosts })
}

//! Share one large array between many tasks by reference: the driver puts a
//! 64 MiB array of f64 once, and each `process_slice` task reads only its own
//! slice of it from the object store. The tasks find their slice in a
//! manifest archived with rkyv, which each reads in place without decoding
//! it. On a cluster, with `"spread": true`, the tasks run on every host and
//! those elsewhere pull just their slice from the driver's host.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/objects.wasm --args '{"slices": 64}'
//! ```

use fabric::{ArchivedRef, ArrayRef};
use std::collections::BTreeMap;

/// Which part of the data each task sums: archived, so a task reads its own
/// entry in place. It names the array, which lives as long as it does.
#[derive(fabric::rkyv::Archive, fabric::rkyv::Serialize, fabric::rkyv::Deserialize)]
#[rkyv(crate = fabric::rkyv)]
pub struct Manifest {
    pub data: ArrayRef<f64>,
    /// Element ranges, one per task.
    pub slices: Vec<(u64, u64)>,
}

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

/// Sums slice `index` of the manifest's array; returns the sum and the host
/// that computed it.
#[fabric::task]
fn process_slice(manifest: ArchivedRef<Manifest>, index: u64) -> fabric::Result<(f64, String)> {
    let manifest = manifest.get()?;
    let Some(slice) = usize::try_from(index).ok().and_then(|i| manifest.slices.get(i)) else {
        return Err(fabric::Error::InvalidArgument(format!("the manifest has no slice {index}")));
    };
    let (start, end) = (slice.0.to_native(), slice.1.to_native());
    let data = manifest.data.to_ref();
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
    let bounds = (0..slices).map(|i| ((i * per_slice).min(elements), ((i + 1) * per_slice).min(elements))).collect();
    let manifest = fabric::put_archived(&Manifest { data, slices: bounds })?;
    let mut options = fabric::TaskOptions::default();
    if spread.unwrap_or(false) {
        options = options.strategy(fabric::Strategy::Spread);
    }
    let refs = (0..slices)
        .map(|i| process_slice.remote_with(&options, manifest.clone(), i))
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

//! Placement: which host runs a piece of work. An IO-free state machine: it
//! reads the membership [`View`] and what this host has already sent to
//! each peer, and answers with a host id or an error, so every rule is
//! tested deterministically and benchmarked with simulated clusters.
//!
//! The rules, in order:
//! 1. A host is *eligible* when it is in the demanded pool, carries every
//!    demanded label and its capacity covers every demanded resource. No
//!    eligible host anywhere means the work can never run: the caller gets
//!    an immediate `resource-limit` error naming what nobody has, not a hang.
//! 2. A host *fits now* when what its load report says is used, plus what
//!    this host sent it since, leaves room for the demand. (Reports lag; the
//!    in-flight count keeps a burst from landing on one host.)
//! 3. [`Strategy::Local`] keeps work on the submitting host while it fits
//!    now; otherwise, and for [`Strategy::Spread`], the eligible host that
//!    fits now with the lowest dominant share (the largest used/capacity
//!    ratio over the demanded resources) wins; [`Strategy::Pack`] takes the
//!    highest share that still fits.
//! 4. When nothing fits now the work queues on the eligible host with the
//!    lowest share counting its queue, the submitting host on ties.
//!
//! A task that names no resources holds one `cpu` (a slot), as in Ray.

use super::view::View;
use fabric_proto::{Demand, ErrorKind, FabricError, HostInfo, Resource, Strategy};
use std::collections::HashMap;

/// The resource every task holds unless it says otherwise.
pub const CPU: &str = "cpu";

/// What a demand holds, with the default `cpu=1` filled in.
pub fn effective_resources(demand: &Demand) -> Vec<Resource> {
    let mut resources: Vec<Resource> = demand.resources.iter().filter(|r| r.amount > 0).cloned().collect();
    if !demand.resources.iter().any(|r| r.name == CPU) {
        resources.push(Resource { name: CPU.into(), amount: 1 });
    }
    resources
}

/// The amount of `name` in `list` (0 if absent).
pub fn amount(list: &[Resource], name: &str) -> u64 {
    // Saturating: amounts come from peers' reports and guests' demands.
    list.iter().filter(|r| r.name == name).fold(0u64, |sum, r| sum.saturating_add(r.amount))
}

/// Adds (or, with `sign` false, removes) `delta` to `list`.
pub fn adjust(list: &mut Vec<Resource>, delta: &[Resource], add: bool) {
    for d in delta {
        match list.iter_mut().find(|r| r.name == d.name) {
            Some(r) if add => r.amount = r.amount.saturating_add(d.amount),
            Some(r) => r.amount = r.amount.saturating_sub(d.amount),
            None if add => list.push(d.clone()),
            None => {}
        }
    }
}

/// Sets each of `values` in `list`, replacing an amount already there.
pub fn adjust_set(list: &mut Vec<Resource>, values: &[Resource]) {
    for v in values {
        match list.iter_mut().find(|r| r.name == v.name) {
            Some(r) => r.amount = v.amount,
            None => list.push(v.clone()),
        }
    }
}

/// Parses `cpu=4,gpu=1,memory=16G` (memory takes K/M/G/T suffixes).
pub fn parse_resources(spec: &str) -> Result<Vec<Resource>, FabricError> {
    let bad = |why: String| FabricError::new(ErrorKind::InvalidArgument, why);
    let mut out: Vec<Resource> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item.split_once('=').ok_or_else(|| bad(format!("resource `{item}` is not NAME=AMOUNT")))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(bad(format!("resource name `{name}` must be letters, digits, '-', '_' or '.'")));
        }
        let value = value.trim();
        let (digits, scale) = match value.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
            Some((at, _)) => {
                let scale = match value[at..].to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                    "K" => 1u64 << 10,
                    "M" => 1 << 20,
                    "G" => 1 << 30,
                    "T" => 1 << 40,
                    "" => 1,
                    other => return Err(bad(format!("unknown unit `{other}` in `{item}`"))),
                };
                (&value[..at], scale)
            }
            None => (value, 1),
        };
        let amount = digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| bad(format!("amount in `{item}` is not a whole number")))?;
        if out.iter().any(|r| r.name == name) {
            return Err(bad(format!("resource `{name}` is given twice")));
        }
        out.push(Resource { name: name.to_string(), amount });
    }
    Ok(out)
}

/// Parses `k=v` labels.
pub fn parse_label(spec: &str) -> Result<fabric_proto::Label, FabricError> {
    match spec.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            Ok(fabric_proto::Label { key: k.trim().to_string(), value: v.trim().to_string() })
        }
        _ => Err(FabricError::new(ErrorKind::InvalidArgument, format!("label `{spec}` is not KEY=VALUE"))),
    }
}

/// Formats resources as `cpu=1,gpu=2,memory=1.5GiB` (memory in binary
/// units, for people to read).
pub fn format_resources(list: &[Resource]) -> String {
    list.iter()
        .map(|r| match r.name.as_str() {
            "memory" => format!("memory={}", binary_units(r.amount)),
            _ => format!("{}={}", r.name, r.amount),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `bytes` in the largest binary unit that keeps it at least 1 (`1.5GiB`).
pub fn binary_units(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{}{}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

/// Placement state: what this host has running on each peer.
#[derive(Debug, Default)]
pub struct Placer {
    inflight: HashMap<String, Vec<Resource>>,
}

impl Placer {
    /// No work in flight.
    pub fn new() -> Self {
        Placer::default()
    }

    /// Records that work holding `resources` was sent to `host`.
    pub fn dispatched(&mut self, host: &str, resources: &[Resource]) {
        adjust(self.inflight.entry(host.to_string()).or_default(), resources, true);
    }

    /// Records that work sent to `host` ended.
    pub fn finished(&mut self, host: &str, resources: &[Resource]) {
        if let Some(list) = self.inflight.get_mut(host) {
            adjust(list, resources, false);
            if list.iter().all(|r| r.amount == 0) {
                self.inflight.remove(host);
            }
        }
    }

    /// Forgets a host that left.
    pub fn forget(&mut self, host: &str) {
        self.inflight.remove(host);
    }

    /// Chooses the host for `demand`, submitted on `local` (whose live
    /// record stands in for its entry in `view`), never one in `avoid`
    /// (hosts already lost while running this work).
    pub fn place(
        &self,
        view: &View,
        local: &HostInfo,
        demand: &Demand,
        avoid: &[String],
    ) -> Result<String, FabricError> {
        let needs = effective_resources(demand);
        let mut best_now: Option<(f64, bool, &str)> = None;
        let mut best_queue: Option<(f64, bool, &str)> = None;
        let mut avoided = 0;
        let mut draining = 0;
        let others = view.hosts().filter(|h| h.id != local.id);
        for host in std::iter::once(local).chain(others) {
            if !eligible(host, demand, &needs) {
                continue;
            }
            if avoid.contains(&host.id) {
                avoided += 1;
                continue;
            }
            let is_local = host.id == local.id;
            // A host shutting down takes nothing new; its own jobs' work
            // goes elsewhere too, and stays with it only when no other host
            // can run it.
            if host.draining {
                draining += 1;
                continue;
            }
            let inflight = self.inflight.get(&host.id).map_or(&[][..], Vec::as_slice);
            // The local record is live: its held slots already include the
            // placed tasks that started, so count whichever is larger.
            let used = |name: &str| {
                if is_local && name == CPU {
                    amount(&host.used, name).max(amount(inflight, name))
                } else {
                    amount(&host.used, name).saturating_add(amount(inflight, name))
                }
            };
            let fits_now =
                needs.iter().all(|r| used(&r.name).saturating_add(r.amount) <= amount(&host.capacity, &r.name));
            if fits_now && is_local && demand.strategy == Strategy::Local {
                return Ok(host.id.clone());
            }
            let share = |queued: u64| {
                needs
                    .iter()
                    .map(|r| {
                        let backlog = if r.name == CPU { queued } else { 0 };
                        used(&r.name).saturating_add(backlog) as f64 / amount(&host.capacity, &r.name).max(1) as f64
                    })
                    .fold(0.0, f64::max)
            };
            if fits_now {
                let candidate = (share(0), is_local, host.id.as_str());
                let better = match (&best_now, demand.strategy) {
                    (None, _) => true,
                    (Some(best), Strategy::Pack) => higher(&candidate, best),
                    (Some(best), _) => lower(&candidate, best),
                };
                if better {
                    best_now = Some(candidate);
                }
            }
            let candidate = (share(host.queued), is_local, host.id.as_str());
            if best_queue.as_ref().is_none_or(|best| lower(&candidate, best)) {
                best_queue = Some(candidate);
            }
        }
        match best_now.or(best_queue) {
            Some((_, _, id)) => Ok(id.to_string()),
            None if local.draining && eligible(local, demand, &needs) && !avoid.contains(&local.id) => {
                Ok(local.id.clone())
            }
            None if draining > 0 => Err(FabricError::new(
                ErrorKind::Unavailable,
                format!("every host that can run this ({draining}) is shutting down"),
            )),
            None if avoided > 0 => Err(FabricError::new(
                ErrorKind::Unavailable,
                format!("every host that can run this ({avoided}) was lost while running it"),
            )),
            None => Err(impossible(view, local, demand, &needs)),
        }
    }
}

/// `a` has the lower share; the local host wins ties.
fn lower(a: &(f64, bool, &str), b: &(f64, bool, &str)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 && !b.1)
}

/// `a` has the higher share; the local host wins ties.
fn higher(a: &(f64, bool, &str), b: &(f64, bool, &str)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 && !b.1)
}

fn in_pool_with_labels(host: &HostInfo, demand: &Demand) -> bool {
    let pool_ok = demand.pool.as_ref().is_none_or(|pool| host.pool.as_ref() == Some(pool));
    pool_ok && demand.labels.iter().all(|label| host.labels.contains(label))
}

/// Whether `host` could run new work with `demand` (pool, labels,
/// capacity, and not shutting down), however busy it is now.
pub fn can_host(host: &HostInfo, demand: &Demand) -> bool {
    !host.draining && could_host(host, demand)
}

/// Whether `host` meets `demand` at all (pool, labels, capacity), shutting
/// down or not.
pub fn could_host(host: &HostInfo, demand: &Demand) -> bool {
    eligible(host, demand, &effective_resources(demand))
}

fn eligible(host: &HostInfo, demand: &Demand, needs: &[Resource]) -> bool {
    in_pool_with_labels(host, demand) && needs.iter().all(|r| amount(&host.capacity, &r.name) >= r.amount)
}

/// Says which part of the demand no member can meet.
fn impossible(view: &View, local: &HostInfo, demand: &Demand, needs: &[Resource]) -> FabricError {
    let members: Vec<&HostInfo> = std::iter::once(local).chain(view.hosts().filter(|h| h.id != local.id)).collect();
    let mut wants = vec![format_resources(needs)];
    if let Some(pool) = &demand.pool {
        wants.push(format!("pool `{pool}`"));
    }
    for label in &demand.labels {
        wants.push(format!("label {}={}", label.key, label.value));
    }
    let matching: Vec<&&HostInfo> = members.iter().filter(|h| in_pool_with_labels(h, demand)).collect();
    let why = if matching.is_empty() {
        "no member is in that pool with those labels".to_string()
    } else {
        let short: Vec<String> = needs
            .iter()
            .filter(|r| !matching.iter().any(|h| amount(&h.capacity, &r.name) >= r.amount))
            .map(|r| {
                let most = matching.iter().map(|h| amount(&h.capacity, &r.name)).max().unwrap_or(0);
                format!("{} (the most any matching member has is {most})", r.name)
            })
            .collect();
        format!("no matching member has enough {}", short.join(", "))
    };
    FabricError::new(
        ErrorKind::ResourceLimit,
        format!(
            "no host of the {} in the cluster can ever run this (it needs {}): {why}",
            members.len(),
            wants.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::MemberEvent;
    use fabric_proto::Label;

    fn res(spec: &str) -> Vec<Resource> {
        spec.split(',')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                Resource { name: k.into(), amount: v.parse().unwrap() }
            })
            .collect()
    }

    fn host(id: &str, capacity: &str, used: &str) -> HostInfo {
        HostInfo {
            id: id.into(),
            addr: String::new(),
            capacity: res(capacity),
            used: res(used),
            queued: 0,
            pool: None,
            labels: Vec::new(),
            started_ms: 0,
            draining: false,
        }
    }

    fn view(hosts: &[HostInfo]) -> View {
        let mut view = View::new();
        view.apply(MemberEvent::Reset(hosts.to_vec()));
        view
    }

    fn demand(resources: &str, strategy: Strategy) -> Demand {
        Demand { resources: res(resources), strategy, ..Demand::default() }
    }

    #[test]
    fn local_work_stays_local_while_it_fits_then_spills_to_the_least_loaded() {
        let a = host("a", "cpu=2", "cpu=1");
        let v = view(&[a.clone(), host("b", "cpu=4", "cpu=3"), host("c", "cpu=4", "cpu=1")]);
        let placer = Placer::new();
        assert_eq!(placer.place(&v, &a, &demand("", Strategy::Local), &[]).unwrap(), "a");
        let full = host("a", "cpu=2", "cpu=2");
        assert_eq!(placer.place(&v, &full, &demand("", Strategy::Local), &[]).unwrap(), "c");
    }

    #[test]
    fn spread_and_pack_choose_opposite_ends() {
        let a = host("a", "cpu=4", "cpu=2");
        let v = view(&[a.clone(), host("b", "cpu=4", "cpu=3"), host("c", "cpu=4", "cpu=0")]);
        let placer = Placer::new();
        assert_eq!(placer.place(&v, &a, &demand("", Strategy::Spread), &[]).unwrap(), "c");
        assert_eq!(placer.place(&v, &a, &demand("", Strategy::Pack), &[]).unwrap(), "b");
    }

    #[test]
    fn in_flight_work_spreads_a_burst() {
        let a = host("a", "cpu=1", "cpu=1");
        let v = view(&[a.clone(), host("b", "cpu=2", ""), host("c", "cpu=2", "")]);
        let mut placer = Placer::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..4 {
            let target = placer.place(&v, &a, &demand("", Strategy::Local), &[]).unwrap();
            placer.dispatched(&target, &res("cpu=1"));
            *counts.entry(target).or_default() += 1;
        }
        assert_eq!(counts.get("b"), Some(&2));
        assert_eq!(counts.get("c"), Some(&2));
        // Everything is full now: the next one queues where the backlog per
        // cpu is lowest, and finishing work frees room again.
        placer.finished("c", &res("cpu=1"));
        assert_eq!(placer.place(&v, &a, &demand("", Strategy::Local), &[]).unwrap(), "c");
    }

    #[test]
    fn when_nothing_fits_work_queues_on_the_shortest_backlog() {
        let mut a = host("a", "cpu=2", "cpu=2");
        a.queued = 10;
        let mut b = host("b", "cpu=2", "cpu=2");
        b.queued = 1;
        let v = view(&[a.clone(), b]);
        assert_eq!(Placer::new().place(&v, &a, &demand("", Strategy::Local), &[]).unwrap(), "b");
    }

    #[test]
    fn custom_resources_pools_and_labels_restrict_the_hosts() {
        let a = host("a", "cpu=8", "");
        let mut gpu = host("g", "cpu=2,gpu=1", "");
        gpu.pool = Some("gpu-intensive".into());
        gpu.labels = vec![Label { key: "zone".into(), value: "eu".into() }];
        let v = view(&[a.clone(), gpu]);
        let placer = Placer::new();
        assert_eq!(placer.place(&v, &a, &demand("gpu=1", Strategy::Local), &[]).unwrap(), "g");
        let pooled = Demand { pool: Some("gpu-intensive".into()), ..Demand::default() };
        assert_eq!(placer.place(&v, &a, &pooled, &[]).unwrap(), "g");
        let labelled = Demand { labels: vec![Label { key: "zone".into(), value: "eu".into() }], ..Demand::default() };
        assert_eq!(placer.place(&v, &a, &labelled, &[]).unwrap(), "g");
        // A busy gpu host still takes gpu work: it queues there.
        let busy = view(&[a.clone(), {
            let mut g = host("g", "cpu=2,gpu=1", "cpu=2,gpu=1");
            g.pool = Some("gpu-intensive".into());
            g
        }]);
        assert_eq!(placer.place(&busy, &a, &demand("gpu=1", Strategy::Local), &[]).unwrap(), "g");
    }

    #[test]
    fn impossible_demands_fail_at_once_naming_what_is_missing() {
        let a = host("a", "cpu=8,gpu=1", "");
        let v = view(&[a.clone(), host("b", "cpu=2", "")]);
        let placer = Placer::new();
        let err = placer.place(&v, &a, &demand("gpu=2", Strategy::Local), &[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceLimit);
        assert!(err.message.contains("gpu (the most any matching member has is 1)"), "{}", err.message);
        assert!(err.message.contains("of the 2 in the cluster"), "{}", err.message);
        let err = placer.place(&v, &a, &demand("cpu=9", Strategy::Spread), &[]).unwrap_err();
        assert!(err.message.contains("cpu (the most any matching member has is 8)"), "{}", err.message);
        let nowhere = Demand { pool: Some("tpu".into()), ..Demand::default() };
        let err = placer.place(&v, &a, &nowhere, &[]).unwrap_err();
        assert!(err.message.contains("no member is in that pool"), "{}", err.message);
    }

    #[test]
    fn resource_specs_parse_with_units_and_bad_ones_say_why() {
        let parsed = parse_resources("cpu=4, gpu=1,memory=16G,shards=3").unwrap();
        assert_eq!(parsed, res(&format!("cpu=4,gpu=1,memory={},shards=3", 16u64 << 30)));
        assert_eq!(parse_resources("memory=512MiB").unwrap(), res(&format!("memory={}", 512u64 << 20)));
        let shown = format_resources(&res(&format!("cpu=2,memory={},gpu=1", (3u64 << 30) / 2)));
        assert_eq!(shown, "cpu=2,memory=1.5GiB,gpu=1");
        assert_eq!(format_resources(&res("memory=512")), "memory=512B");
        assert_eq!(format_resources(&res(&format!("memory={}", 16u64 << 30))), "memory=16GiB");
        for bad in ["cpu", "cpu=x", "=3", "cpu=1,cpu=2", "mem=3Q", "a b=1", "cpu=-1"] {
            let err = parse_resources(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{bad}");
        }
        assert_eq!(parse_label("zone=eu").unwrap(), Label { key: "zone".into(), value: "eu".into() });
        assert!(parse_label("zone").is_err());
    }

    #[test]
    fn lost_hosts_are_avoided_and_losing_all_is_unavailable() {
        let a = host("a", "cpu=1", "cpu=1");
        let v = view(&[a.clone(), host("b", "cpu=2", ""), host("c", "cpu=2", "cpu=1")]);
        let placer = Placer::new();
        let d = demand("", Strategy::Local);
        assert_eq!(placer.place(&v, &a, &d, &[]).unwrap(), "b");
        assert_eq!(placer.place(&v, &a, &d, &["b".into()]).unwrap(), "c");
        let gpu = host("g", "cpu=1,gpu=1", "");
        let v = view(&[a.clone(), gpu]);
        let err = placer.place(&v, &a, &demand("gpu=1", Strategy::Local), &["g".into()]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{}", err.message);
    }

    #[test]
    fn zero_cpu_work_fits_anywhere_and_hosts_that_left_are_forgotten() {
        let a = host("a", "cpu=1", "cpu=1");
        let v = view(std::slice::from_ref(&a));
        let mut placer = Placer::new();
        assert_eq!(placer.place(&v, &a, &demand("cpu=0", Strategy::Local), &[]).unwrap(), "a");
        placer.dispatched("gone", &res("cpu=3"));
        placer.forget("gone");
        assert!(placer.inflight.is_empty());
    }

    #[test]
    fn hosts_shutting_down_take_no_new_work() {
        let mut b = host("b", "cpu=4", "");
        b.draining = true;
        let local = host("a", "cpu=4", "cpu=4");
        let placer = Placer::new();
        // A busy local host queues its work rather than send it to b.
        let v = view(&[local.clone(), b.clone()]);
        assert_eq!(placer.place(&v, &local, &demand("", Strategy::Spread), &[]).unwrap(), "a");
        assert!(!can_host(&b, &demand("", Strategy::Local)));
        // A draining local host sends its jobs' work elsewhere...
        let mut draining_local = host("a", "cpu=4", "");
        draining_local.draining = true;
        let c = host("c", "cpu=4", "cpu=3");
        let v = view(&[draining_local.clone(), c]);
        assert_eq!(placer.place(&v, &draining_local, &demand("", Strategy::Local), &[]).unwrap(), "c");
        // ...and keeps it only when no other host can run it.
        let v = view(&[draining_local.clone(), b.clone()]);
        assert_eq!(placer.place(&v, &draining_local, &demand("", Strategy::Local), &[]).unwrap(), "a");
        // Work only a draining peer could run is unavailable, not impossible.
        let mut big = host("big", "cpu=8", "");
        big.draining = true;
        let err = placer.place(&view(&[local.clone(), big]), &local, &demand("cpu=8", Strategy::Local), &[]);
        let err = err.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err:?}");
        assert!(err.message.contains("shutting down"), "{err:?}");
    }
}

//! Faults injected for tests: `FABRIC_INJECT_FAULTS=NAME:N,...` makes this
//! host misbehave the next N times at one point, so the tests can show what
//! peers do about it without racing real failures.
//!
//! - `truncate-transfers:N`, `corrupt-transfers:N`: serve the next N object
//!   ranges cut short or with a flipped byte (readers detect and retry).
//! - `fail-copy-writes:N`: fail the next N writes of copies pulled from
//!   peers to this host's disk, as a failing disk would (the pull lands in
//!   memory instead, and the peer is not blamed).
//! - `refuse-runs:N`: refuse the next N peers' tasks and new actors as a
//!   draining host does, which a peer's stale view otherwise only rarely
//!   shows (the sender places them elsewhere).

use std::sync::atomic::{AtomicU64, Ordering};

/// One fault: how many more times it happens.
#[derive(Debug, Default)]
pub struct Fault(AtomicU64);

impl Fault {
    /// Whether it happens now (using one of its times up).
    pub fn strikes(&self) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }
}

/// Every fault this host was told to inject.
#[derive(Debug, Default)]
pub struct Faults {
    /// Object ranges served cut short.
    pub truncate_transfers: Fault,
    /// Object ranges served with a flipped byte.
    pub corrupt_transfers: Fault,
    /// Peers' tasks and new actors refused as if draining.
    pub refuse_runs: Fault,
    /// Writes of pulled copies to this host's disk failed.
    pub fail_copy_writes: Fault,
}

impl Faults {
    /// The faults `FABRIC_INJECT_FAULTS` names (none when it is unset; an
    /// unknown name is logged and skipped).
    pub fn from_env() -> Self {
        let faults = Faults::default();
        let Ok(spec) = std::env::var("FABRIC_INJECT_FAULTS") else { return faults };
        for part in spec.split(',') {
            let Some((name, count)) = part.split_once(':') else { continue };
            let Ok(count) = count.trim().parse::<u64>() else { continue };
            let fault = match name.trim() {
                "truncate-transfers" => &faults.truncate_transfers,
                "corrupt-transfers" => &faults.corrupt_transfers,
                "refuse-runs" => &faults.refuse_runs,
                "fail-copy-writes" => &faults.fail_copy_writes,
                other => {
                    tracing::warn!("unknown fault `{other}` in FABRIC_INJECT_FAULTS");
                    continue;
                }
            };
            fault.0.store(count, Ordering::Relaxed);
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_strikes_as_many_times_as_asked() {
        let fault = Fault::default();
        assert!(!fault.strikes());
        fault.0.store(2, Ordering::Relaxed);
        assert!(fault.strikes() && fault.strikes() && !fault.strikes());
    }
}

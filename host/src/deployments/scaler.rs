//! The autoscaler: how many replicas a deployment wants on a host, from the
//! requests it has in flight or queued there.
//!
//! A pure state machine fed with observations and the time they were made,
//! so it is tested without sleeps. Policy (Ray Serve's, with a wasm
//! instance as the replica):
//! - a replica serves one request at a time on its own, and the scaler aims
//!   for `target` requests (in flight plus queued) per replica: wanted =
//!   ⌈ongoing / target⌉, kept within `min..=max`;
//! - scaling up is immediate: a warm wasm instance costs microseconds, so
//!   there is no reason to let a queue build;
//! - scaling down waits until fewer replicas have been wanted for a whole
//!   `down_delay`, then goes to the most wanted during that window, so a
//!   burst that comes and goes does not make replicas churn.

use std::time::{Duration, Instant};

/// A deployment's scaling settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Replicas kept even when idle.
    pub min: u32,
    /// Replicas at most.
    pub max: u32,
    /// Requests per replica aimed for (at least 1).
    pub target: u32,
    /// How long load must stay lower before replicas go.
    pub down_delay: Duration,
}

/// The autoscaler of one deployment on one host.
#[derive(Clone, Debug)]
pub struct Scaler {
    policy: ScalePolicy,
    desired: u32,
    /// Since when fewer replicas are wanted, and the most wanted since.
    lower: Option<(Instant, u32)>,
}

impl Scaler {
    /// A scaler starting at `min` replicas.
    pub fn new(policy: ScalePolicy) -> Self {
        Scaler { desired: policy.min, policy, lower: None }
    }

    /// Replicas wanted for `ongoing` requests, ignoring the delay.
    pub fn wanted(&self, ongoing: u32) -> u32 {
        let target = self.policy.target.max(1);
        ongoing.div_ceil(target).clamp(self.policy.min, self.policy.max.max(self.policy.min))
    }

    /// Replicas wanted now.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Takes in that `ongoing` requests are in flight or queued at `now`;
    /// returns the replicas wanted.
    pub fn observe(&mut self, ongoing: u32, now: Instant) -> u32 {
        let wanted = self.wanted(ongoing);
        if wanted >= self.desired {
            self.desired = wanted;
            self.lower = None;
            return self.desired;
        }
        let (since, peak) = match self.lower {
            Some((since, peak)) => (since, peak.max(wanted)),
            None => (now, wanted),
        };
        if now.saturating_duration_since(since) >= self.policy.down_delay {
            self.desired = peak;
            self.lower = None;
        } else {
            self.lower = Some((since, peak));
        }
        self.desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32, target: u32) -> ScalePolicy {
        ScalePolicy { min, max, target, down_delay: Duration::from_secs(10) }
    }

    #[test]
    fn scales_up_at_once_within_bounds() {
        let t0 = Instant::now();
        let mut s = Scaler::new(policy(1, 8, 2));
        assert_eq!(s.desired(), 1);
        assert_eq!(s.observe(5, t0), 3, "5 requests at 2 per replica");
        assert_eq!(s.observe(100, t0), 8, "capped at max");
        assert_eq!(s.observe(0, t0), 8, "no drop before the delay");
    }

    #[test]
    fn scales_down_only_after_the_delay_to_the_window_peak() {
        let t0 = Instant::now();
        let mut s = Scaler::new(policy(0, 10, 1));
        s.observe(10, t0);
        assert_eq!(s.observe(2, t0 + Duration::from_secs(1)), 10);
        assert_eq!(s.observe(4, t0 + Duration::from_secs(5)), 10);
        assert_eq!(s.observe(1, t0 + Duration::from_secs(10)), 10, "window opened at 1 s");
        assert_eq!(s.observe(1, t0 + Duration::from_secs(11)), 4, "the peak wanted in the window");
        assert_eq!(s.observe(0, t0 + Duration::from_secs(12)), 4);
        assert_eq!(s.observe(0, t0 + Duration::from_secs(22)), 0, "to zero when min is 0");
    }

    #[test]
    fn a_burst_inside_the_window_restarts_it() {
        let t0 = Instant::now();
        let mut s = Scaler::new(policy(1, 10, 1));
        s.observe(6, t0);
        s.observe(1, t0 + Duration::from_secs(1));
        assert_eq!(s.observe(6, t0 + Duration::from_secs(9)), 6, "back up: the window closes");
        assert_eq!(s.observe(1, t0 + Duration::from_secs(12)), 6, "a new window starts here");
        assert_eq!(s.observe(1, t0 + Duration::from_secs(22)), 1);
    }

    #[test]
    fn min_above_max_is_held_at_min() {
        let mut s = Scaler::new(policy(3, 2, 1));
        assert_eq!(s.observe(0, Instant::now()), 3);
    }
}

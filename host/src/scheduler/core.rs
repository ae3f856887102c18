//! The slot scheduler as a pure state machine: events in, grants out.
//!
//! It knows nothing of tasks beyond an id and a tenant, and does no IO, so
//! its tests are deterministic (as in quinn-proto). The async layer in
//! [`super`] turns grants into wake-ups.
//!
//! Policy:
//! - At most `slots` tasks hold a slot at once.
//! - A task blocked on other tasks' results gives its slot back (as Ray
//!   does), so a parent waiting on children never starves them.
//! - An unblocked task gets the next free slot before any queued task: it
//!   already holds an instance and memory, so finishing it frees most.
//! - Queued tasks are served round-robin across tenants, FIFO within one, so
//!   one tenant's thousand-task fan-out does not starve another's job.

use std::collections::{HashMap, VecDeque};

/// Identifies a waiter for a slot.
pub type WaiterId = u64;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A task wants a slot.
    Request {
        /// The waiter.
        id: WaiterId,
        /// Its tenant, for fairness.
        tenant: String,
    },
    /// A task that held a slot let it go: finished, or blocked on others.
    Release,
    /// A blocked task is ready to continue and wants its slot back.
    Resume {
        /// The waiter.
        id: WaiterId,
    },
    /// A waiter gave up before it was granted (its job stopped).
    Withdraw {
        /// The waiter.
        id: WaiterId,
    },
}

/// Grants a slot to tasks, by policy.
#[derive(Debug)]
pub struct SlotScheduler {
    slots: usize,
    held: usize,
    resumes: VecDeque<WaiterId>,
    queues: HashMap<String, VecDeque<WaiterId>>,
    /// Tenants with queued work, in round-robin order.
    turn: VecDeque<String>,
}

impl SlotScheduler {
    /// A scheduler for `slots` concurrent tasks (at least one).
    pub fn new(slots: usize) -> Self {
        SlotScheduler {
            slots: slots.max(1),
            held: 0,
            resumes: VecDeque::new(),
            queues: HashMap::new(),
            turn: VecDeque::new(),
        }
    }

    /// Slots currently held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Waiters not yet granted.
    pub fn waiting(&self) -> usize {
        self.resumes.len() + self.queues.values().map(VecDeque::len).sum::<usize>()
    }

    /// Applies `event`; returns the waiters granted a slot, in order.
    pub fn handle(&mut self, event: Event) -> Vec<WaiterId> {
        match event {
            Event::Request { id, tenant } => {
                let queue = self.queues.entry(tenant.clone()).or_default();
                if queue.is_empty() {
                    self.turn.push_back(tenant);
                }
                queue.push_back(id);
            }
            Event::Release => self.held = self.held.saturating_sub(1),
            Event::Resume { id } => self.resumes.push_back(id),
            Event::Withdraw { id } => self.withdraw(id),
        }
        self.grant()
    }

    /// Grants a slot at once if one is free and nobody waits; the fast path
    /// for the common case, with no queueing.
    pub fn try_acquire(&mut self) -> bool {
        if self.held < self.slots && self.waiting() == 0 {
            self.held += 1;
            true
        } else {
            false
        }
    }

    fn withdraw(&mut self, id: WaiterId) {
        self.resumes.retain(|w| *w != id);
        let mut emptied = None;
        for (tenant, queue) in &mut self.queues {
            if let Some(pos) = queue.iter().position(|w| *w == id) {
                queue.remove(pos);
                if queue.is_empty() {
                    emptied = Some(tenant.clone());
                }
                break;
            }
        }
        if let Some(tenant) = emptied {
            self.queues.remove(&tenant);
            self.turn.retain(|t| *t != tenant);
        }
    }

    fn grant(&mut self) -> Vec<WaiterId> {
        let mut granted = Vec::new();
        while self.held < self.slots {
            let next = match self.resumes.pop_front() {
                Some(id) => Some(id),
                None => self.next_queued(),
            };
            let Some(id) = next else { break };
            self.held += 1;
            granted.push(id);
        }
        granted
    }

    fn next_queued(&mut self) -> Option<WaiterId> {
        let tenant = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&tenant)?;
        let id = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(s: &mut SlotScheduler, id: WaiterId, tenant: &str) -> Vec<WaiterId> {
        s.handle(Event::Request { id, tenant: tenant.into() })
    }

    #[test]
    fn bounds_concurrency_and_queues_the_rest() {
        let mut s = SlotScheduler::new(2);
        assert_eq!(request(&mut s, 1, "a"), vec![1]);
        assert_eq!(request(&mut s, 2, "a"), vec![2]);
        assert_eq!(request(&mut s, 3, "a"), Vec::<u64>::new());
        assert_eq!(s.held(), 2);
        assert_eq!(s.handle(Event::Release), vec![3]);
        assert_eq!(s.handle(Event::Release), Vec::<u64>::new());
        assert_eq!(s.held(), 1);
    }

    #[test]
    fn a_blocked_parent_lends_its_slot_to_its_children() {
        // One slot: a parent that waits on a child would deadlock without
        // giving its slot back while blocked.
        let mut s = SlotScheduler::new(1);
        assert_eq!(request(&mut s, 1, "a"), vec![1]);
        assert_eq!(request(&mut s, 2, "a"), Vec::<u64>::new()); // the child queues
        assert_eq!(s.handle(Event::Release), vec![2]); // parent blocks: child runs
        assert_eq!(s.handle(Event::Resume { id: 1 }), Vec::<u64>::new()); // child still holds it
        assert_eq!(s.handle(Event::Release), vec![1]); // child done: parent resumes
    }

    #[test]
    fn resumed_tasks_go_before_queued_ones() {
        let mut s = SlotScheduler::new(1);
        request(&mut s, 1, "a");
        request(&mut s, 2, "a");
        assert_eq!(s.handle(Event::Release), vec![2]); // 1 blocks
        request(&mut s, 3, "a");
        s.handle(Event::Resume { id: 1 });
        assert_eq!(s.handle(Event::Release), vec![1]);
        assert_eq!(s.handle(Event::Release), vec![3]);
    }

    #[test]
    fn tenants_take_turns() {
        let mut s = SlotScheduler::new(1);
        request(&mut s, 100, "a");
        for id in 1..=3 {
            request(&mut s, id, "a");
        }
        request(&mut s, 10, "b");
        let mut order = Vec::new();
        for _ in 0..4 {
            order.extend(s.handle(Event::Release));
        }
        assert_eq!(order, vec![1, 10, 2, 3]);
    }

    #[test]
    fn withdrawn_waiters_are_never_granted() {
        let mut s = SlotScheduler::new(1);
        request(&mut s, 1, "a");
        request(&mut s, 2, "a");
        request(&mut s, 3, "b");
        s.handle(Event::Withdraw { id: 2 });
        s.handle(Event::Withdraw { id: 3 });
        assert_eq!(s.waiting(), 0);
        assert_eq!(s.handle(Event::Release), Vec::<u64>::new());
        assert!(s.try_acquire());
    }

    #[test]
    fn fast_path_only_when_nobody_waits() {
        let mut s = SlotScheduler::new(1);
        assert!(s.try_acquire());
        assert!(!s.try_acquire());
        request(&mut s, 1, "a");
        assert_eq!(s.handle(Event::Release), vec![1]);
        assert!(!s.try_acquire());
    }
}

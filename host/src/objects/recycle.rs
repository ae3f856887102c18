//! Buffers of large freed objects, kept a short while for the next puts.
//!
//! Why: a put copies the guest's bytes into a buffer of the store's. A new
//! buffer that large comes from the OS as untouched pages, and the first
//! touch of each costs a page fault and zeroing (in a VM, where the
//! hypervisor backs a page on its first touch, several times the copy
//! itself). Ray's Plasma store avoids that by carving objects out of one
//! arena mapped up front; fabric instead keeps the buffers of objects that
//! leave memory (freed, or spilled) and hands them to puts of about the same
//! size, so a job that puts, frees and puts again writes into pages already
//! mapped. What is kept counts against the memory budget: it takes at most a
//! quarter of it, and only what objects leave free, and it goes back to the
//! allocator after [`KEEP_FOR`] unused or as soon as objects need the room.
//! Small buffers are not kept: the allocator's own caches serve them.

use std::time::{Duration, Instant};

/// Buffers smaller than this go back to the allocator at once.
pub const RECYCLE_MIN: usize = 1 << 20;

/// How long a buffer is kept unused before it goes back to the allocator.
pub const KEEP_FOR: Duration = Duration::from_secs(5);

/// Kept buffers of a store; the store's lock guards it.
#[derive(Debug, Default)]
pub struct Recycler {
    /// The store's memory budget.
    budget: u64,
    kept: Vec<Kept>,
    /// Capacity of the kept buffers, in bytes.
    bytes: u64,
}

#[derive(Debug)]
struct Kept {
    buffer: Vec<u8>,
    since: Instant,
}

impl Recycler {
    /// Keeps buffers for a store whose objects may hold `budget` bytes of memory.
    pub fn new(budget: u64) -> Self {
        Recycler { budget, ..Recycler::default() }
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many bytes may be kept while objects hold `resident` bytes.
    fn room(&self, resident: u64) -> u64 {
        (self.budget / 4).min(self.budget.saturating_sub(resident))
    }

    /// An empty buffer with room for `len` bytes: the smallest kept one
    /// whose capacity is at most an eighth over `len` (the slack is not
    /// counted against the budget, so it stays small), else none.
    pub fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        if len < RECYCLE_MIN {
            return None;
        }
        let fits = |capacity: usize| capacity >= len && capacity - len <= len / 8;
        let (index, _) = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, kept)| fits(kept.buffer.capacity()))
            .min_by_key(|(_, kept)| kept.buffer.capacity())?;
        let mut buffer = self.kept.swap_remove(index).buffer;
        self.bytes -= buffer.capacity() as u64;
        buffer.clear();
        Some(buffer)
    }

    /// Keeps `buffer` (an object's bytes that left memory, objects now
    /// holding `resident` bytes) when it is large and there is room;
    /// otherwise hands it back to the caller, which drops it.
    pub fn keep(&mut self, buffer: Vec<u8>, resident: u64, now: Instant) -> Option<Vec<u8>> {
        let capacity = buffer.capacity() as u64;
        if buffer.capacity() < RECYCLE_MIN || self.bytes + capacity > self.room(resident) {
            return Some(buffer);
        }
        self.bytes += capacity;
        self.kept.push(Kept { buffer, since: now });
        None
    }

    /// Lets go of buffers kept longer than [`KEEP_FOR`], and of the oldest
    /// while objects holding `resident` bytes leave too little room; returns
    /// them, to be dropped outside the store's lock.
    #[must_use = "the buffers are to be dropped outside the store's lock"]
    pub fn trim(&mut self, resident: u64, now: Instant) -> Vec<Vec<u8>> {
        let room = self.room(resident);
        if self.bytes <= room && self.kept.iter().all(|kept| now.duration_since(kept.since) < KEEP_FOR) {
            return Vec::new();
        }
        self.kept.sort_by_key(|kept| std::cmp::Reverse(kept.since));
        let mut left = Vec::new();
        let mut bytes = 0;
        let mut gone = Vec::new();
        for kept in self.kept.drain(..) {
            let capacity = kept.buffer.capacity() as u64;
            if now.duration_since(kept.since) < KEEP_FOR && bytes + capacity <= room {
                bytes += capacity;
                left.push(kept);
            } else {
                gone.push(kept.buffer);
            }
        }
        self.kept = left;
        self.bytes = bytes;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_kept_buffer_serves_a_put_of_about_its_size_only() {
        let now = Instant::now();
        let mut recycler = Recycler::new(64 * MIB as u64);
        assert!(recycler.keep(Vec::with_capacity(8 * MIB), 0, now).is_none());
        assert_eq!(recycler.bytes(), 8 * MIB as u64);
        // Larger than kept, or so much smaller that the slack would be
        // more than an eighth: a new buffer.
        assert!(recycler.take(9 * MIB).is_none());
        assert!(recycler.take(7 * MIB).is_none());
        assert!(recycler.take(MIB / 2).is_none());
        let buffer = recycler.take(8 * MIB - 1000).expect("the kept buffer fits");
        assert!(buffer.is_empty() && buffer.capacity() >= 8 * MIB);
        assert_eq!(recycler.bytes(), 0);
        assert!(recycler.take(8 * MIB).is_none(), "a buffer is handed out once");
    }

    #[test]
    fn what_is_kept_stays_within_a_quarter_of_the_budget_and_what_objects_leave() {
        let now = Instant::now();
        let mut recycler = Recycler::new(64 * MIB as u64);
        // Small buffers are not kept.
        assert!(recycler.keep(Vec::with_capacity(MIB / 2), 0, now).is_some());
        assert!(recycler.keep(Vec::with_capacity(10 * MIB), 0, now).is_none());
        assert!(recycler.keep(Vec::with_capacity(6 * MIB), 0, now).is_none());
        // 16 MiB is a quarter of the budget.
        assert!(recycler.keep(Vec::with_capacity(MIB), 0, now).is_some());
        // Objects filling the budget but 12 MiB leave room for 12 MiB: the
        // oldest go first.
        let later = now + Duration::from_millis(1);
        let mut recycler = Recycler::new(64 * MIB as u64);
        assert!(recycler.keep(Vec::with_capacity(10 * MIB), 0, now).is_none());
        assert!(recycler.keep(Vec::with_capacity(6 * MIB), 0, later).is_none());
        let gone = recycler.trim(52 * MIB as u64, later);
        assert_eq!(gone.iter().map(Vec::capacity).collect::<Vec<_>>(), [10 * MIB]);
        assert_eq!(recycler.bytes(), 6 * MIB as u64);
        // With objects over the budget nothing is kept.
        assert!(recycler.keep(Vec::with_capacity(2 * MIB), 70 * MIB as u64, later).is_some());
    }

    #[test]
    fn buffers_unused_for_a_while_go_back() {
        let now = Instant::now();
        let mut recycler = Recycler::new(64 * MIB as u64);
        assert!(recycler.keep(Vec::with_capacity(2 * MIB), 0, now).is_none());
        assert!(recycler.keep(Vec::with_capacity(3 * MIB), 0, now + KEEP_FOR / 2).is_none());
        assert!(recycler.trim(0, now + KEEP_FOR / 2).is_empty());
        let gone = recycler.trim(0, now + KEEP_FOR);
        assert_eq!(gone.iter().map(Vec::capacity).collect::<Vec<_>>(), [2 * MIB]);
        assert_eq!(recycler.bytes(), 3 * MIB as u64);
        assert_eq!(recycler.trim(0, now + KEEP_FOR * 2).len(), 1);
        assert_eq!(recycler.bytes(), 0);
    }
}

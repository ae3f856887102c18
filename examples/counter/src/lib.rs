//! A counter actor: state that lives between calls, one call at a time.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/counter.wasm --args '{"n": 100}'
//! ```

use fabric::ActorHandle;

/// The actor's state; its serde form is its snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i64,
}

#[fabric::actor]
impl Counter {
    /// A counter starting at `start`.
    pub fn new(start: i64) -> Self {
        Counter { value: start }
    }

    /// Adds `by`; returns the new value.
    pub fn incr(&mut self, by: i64) -> i64 {
        self.value += by;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value
    }
}

/// What the driver saw.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub value: i64,
    pub expected: i64,
    pub in_order: bool,
}

/// Sends `n` increments (1, 2, ..., n) to a new counter without waiting,
/// then checks every reply came back in order and the final value.
#[fabric::task]
fn main(n: Option<i64>) -> fabric::Result<Report> {
    let n = n.unwrap_or(100);
    let counter = Counter::new(0).remote()?;
    let replies = (1..=n).map(|i| counter.incr(i)).collect::<fabric::Result<Vec<_>>>()?;
    let values = fabric::get_all(&replies)?;
    let in_order = values.iter().enumerate().all(|(i, v)| *v == (1..=i as i64 + 1).sum::<i64>());
    let value = counter.get()?.get()?;
    counter.kill()?;
    Ok(Report { value, expected: n * (n + 1) / 2, in_order })
}

/// Adds `by` to the detached counter named `name` (created on first use), so
/// it keeps counting across jobs: `fabric actor call NAME get` reads it.
#[fabric::task]
fn visit(name: String, by: Option<i64>) -> fabric::Result<i64> {
    let counter = Counter::new(0).name(name).detached().get_or_create()?;
    counter.incr(by.unwrap_or(1))?.get()
}

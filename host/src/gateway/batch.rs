//! Request batching for task deployments (Ray Serve's `@serve.batch`):
//! `/v1/call` requests to a deployment's batch function (`--batch FN
//! --max-batch-size N --batch-wait-ms MS`) are gathered until there are `N`
//! or the first has waited `MS`, then the function is called once with
//! their arguments as one list, and its answer, a list as long, is split
//! back: item `i` to request `i`. The deployment's other functions are
//! called one request at a time as usual.
//!
//! The function takes the list as its one parameter (`fn f(batch:
//! Vec<Args>) -> Vec<R>`), each request's JSON body being one `Args`. Why
//! batch: a model that scores 32 inputs in one pass costs little more than
//! one, so a batch trades a few milliseconds of waiting for throughput.
//!
//! A batch takes one replica turn, so the autoscaler sees batches, not
//! requests; a failed call fails every request in it with the same error,
//! and an answer that is not a list of the right length is a 500 for all.

use super::call::{invoke, CallError};
use crate::deployments::Deployed;
use crate::HostInner;
use fabric_proto::{Batching, ErrorKind, FabricError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// One request's place in a batch: its JSON arguments and where its answer
/// goes.
struct Item {
    args: String,
    reply: oneshot::Sender<Result<String, CallError>>,
}

/// The batch gathering for one function.
struct Open {
    /// Tells this batch from later ones (the timer of a batch that left
    /// full must not take the next).
    generation: u64,
    items: Vec<Item>,
}

/// The batches a deployment version is gathering, by function.
#[derive(Default)]
pub struct Batcher {
    open: Mutex<HashMap<String, Open>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Batcher {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a request with JSON `args` to `function`'s batch; the answer
    /// (this request's item of the function's JSON list) comes on the
    /// returned channel.
    pub fn add(
        host: &Arc<HostInner>,
        deployed: &Arc<Deployed>,
        batching: &Batching,
        function: &str,
        args: String,
    ) -> oneshot::Receiver<Result<String, CallError>> {
        let batcher = &deployed.batcher;
        let (reply, answer) = oneshot::channel();
        let mut open = batcher.lock();
        let batch = open.entry(function.to_string()).or_insert_with(|| Open {
            generation: batcher.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            items: Vec::new(),
        });
        batch.items.push(Item { args, reply });
        if batch.items.len() >= batching.max_size as usize {
            let full = open.remove(function).map(|b| b.items).unwrap_or_default();
            drop(open);
            tokio::spawn(call(host.clone(), deployed.clone(), function.to_string(), full));
        } else if batch.items.len() == 1 {
            // The first request starts the wait.
            let generation = batch.generation;
            drop(open);
            let (host, deployed, function) = (host.clone(), deployed.clone(), function.to_string());
            let wait = Duration::from_millis(batching.max_wait_ms);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let due = {
                    let mut open = deployed.batcher.lock();
                    match open.get(&function) {
                        Some(batch) if batch.generation == generation => open.remove(&function).map(|b| b.items),
                        _ => None,
                    }
                };
                if let Some(items) = due {
                    call(host, deployed, function, items).await;
                }
            });
        }
        answer
    }
}

/// Calls `function` once for `items` and answers each.
async fn call(host: Arc<HostInner>, deployed: Arc<Deployed>, function: String, items: Vec<Item>) {
    let (args, replies): (Vec<String>, Vec<_>) = items.into_iter().map(|item| (item.args, item.reply)).unzip();
    let outcome = run(&host, &deployed, &function, &args).await;
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

async fn run(
    host: &Arc<HostInner>,
    deployed: &Deployed,
    function: &str,
    args: &[String],
) -> Result<Vec<String>, CallError> {
    let timeout = deployed.timeout();
    let deadline = tokio::time::Instant::now().checked_add(timeout).unwrap_or_else(tokio::time::Instant::now);
    // The function's one parameter, given positionally: the list.
    let batch = format!("[[{}]]", args.join(","));
    let answer = invoke(host, deployed, function, &batch, deadline).await?;
    let failed = |message: String| CallError::Failed(FabricError::new(ErrorKind::Failed, message));
    let results: Vec<serde_json::Value> = serde_json::from_slice(&answer)
        .map_err(|e| failed(format!("batch function `{function}` did not answer with a list: {e}")))?;
    if results.len() != args.len() {
        return Err(failed(format!(
            "batch function `{function}` answered {} results for a batch of {} requests",
            results.len(),
            args.len()
        )));
    }
    Ok(results.iter().map(serde_json::Value::to_string).collect())
}

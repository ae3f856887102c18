//! A host's countable resources other than `cpu` (which the slot scheduler
//! holds): `gpu`, `memory` and custom names, each a semaphore of its
//! declared capacity. A task placed here with a demand holds its amounts
//! while it runs and waits (without holding a slot) until they are free, so
//! a one-GPU host never runs two `gpu=1` tasks at once however many were
//! queued on it. `memory` counts MiB, so capacities beyond 4 GiB fit.

use crate::cluster::placement::CPU;
use fabric_proto::{ErrorKind, FabricError, Resource};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Resources in bytes that are counted in MiB.
const MEMORY: &str = "memory";

fn units(resource: &Resource) -> u64 {
    if resource.name == MEMORY {
        resource.amount.div_ceil(1 << 20)
    } else {
        resource.amount
    }
}

/// The host's resources besides `cpu`.
#[derive(Debug, Default)]
pub struct Resources {
    pools: HashMap<String, (u64, Arc<Semaphore>)>,
}

/// Amounts held by a running task; released on drop.
#[derive(Debug)]
pub struct Held {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Resources {
    /// Semaphores for everything in `capacity` but `cpu`.
    pub fn new(capacity: &[Resource]) -> Self {
        let pools = capacity
            .iter()
            .filter(|r| r.name != CPU)
            .map(|r| {
                let permits = units(r).min(Semaphore::MAX_PERMITS as u64);
                (r.name.clone(), (permits, Arc::new(Semaphore::new(permits as usize))))
            })
            .collect();
        Resources { pools }
    }

    /// Waits until every amount in `needs` (but `cpu`) is free and holds it.
    pub async fn hold(&self, needs: &[Resource]) -> Result<Held, FabricError> {
        let mut permits = Vec::new();
        for need in needs.iter().filter(|r| r.name != CPU && r.amount > 0) {
            let (capacity, semaphore) = self.pools.get(&need.name).ok_or_else(|| {
                FabricError::new(ErrorKind::ResourceLimit, format!("this host has no `{}`", need.name))
            })?;
            let wanted = units(need);
            if wanted > *capacity {
                return Err(FabricError::new(
                    ErrorKind::ResourceLimit,
                    format!("this host has {capacity} `{}`, the task needs {wanted}", need.name),
                ));
            }
            let wanted = u32::try_from(wanted)
                .map_err(|_| FabricError::new(ErrorKind::ResourceLimit, format!("`{}` demand too large", need.name)))?;
            let permit = semaphore
                .clone()
                .acquire_many_owned(wanted)
                .await
                .map_err(|_| FabricError::new(ErrorKind::Unavailable, "the host is shutting down"))?;
            permits.push(permit);
        }
        Ok(Held { _permits: permits })
    }

    /// What is held now, in the units declared (memory in bytes).
    pub fn used(&self) -> Vec<Resource> {
        self.pools
            .iter()
            .map(|(name, (capacity, semaphore))| {
                let held = capacity.saturating_sub(semaphore.available_permits() as u64);
                let amount = if name == MEMORY { held << 20 } else { held };
                Resource { name: name.clone(), amount }
            })
            .filter(|r| r.amount > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, amount: u64) -> Resource {
        Resource { name: name.into(), amount }
    }

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_releases() {
        let resources = Resources::new(&[r("cpu", 4), r("gpu", 1), r("memory", 8 << 30)]);
        let first = resources.hold(&[r("gpu", 1), r("memory", 3 << 30), r("cpu", 1)]).await.unwrap();
        assert_eq!(resources.used().len(), 2);
        let gpu = [r("gpu", 1)];
        let waiting = resources.hold(&gpu);
        tokio::pin!(waiting);
        assert!(futures_poll_once(waiting.as_mut()).await.is_none(), "the gpu is taken");
        drop(first);
        assert!(waiting.await.is_ok());
        let err = resources.hold(&[r("tpu", 1)]).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceLimit);
        assert!(resources.hold(&[r("gpu", 2)]).await.is_err());
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}

//! `fabric:core/tasks`: sub-tasks submitted from inside a guest, and waits.

use super::bindings::fabric::core::tasks::{Host, Strategy as WitStrategy, TaskContext as WitTaskContext, TaskOptions};
use super::{Encoding, WitError, WitObjectId};
use crate::objects::transfer;
use crate::remote::{Placement, DEFAULT_RETRIES};
use crate::runtime::TaskSpec;
use crate::sandbox::TaskState;
use fabric_proto::{Demand, DeploymentKind, ErrorKind, FabricError, Label, Resource, Strategy, TaskLimits};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

impl Host for TaskState {
    async fn submit(&mut self, function: String, args: Vec<u8>, options: TaskOptions) -> Result<WitObjectId, WitError> {
        let named = self.holds()?.take_declared();
        let task = self.task()?;
        let component = match options.component {
            None => task.component.clone(),
            Some(sha256) => task.host.components.get(&task.job.tenant, &sha256).await?,
        };
        // A child inherits its job's limits unless it asks for its own.
        let inherited = &task.job.limits;
        let limits = TaskLimits {
            timeout_ms: options.timeout_ms.or(inherited.timeout_ms),
            cpu_ms: options.cpu_ms.or(inherited.cpu_ms),
            memory_bytes: options.memory_bytes.or(inherited.memory_bytes),
        };
        let demand = Demand {
            resources: options.resources.into_iter().map(|(name, amount)| Resource { name, amount }).collect(),
            pool: options.pool,
            labels: options.labels.into_iter().map(|(key, value)| Label { key, value }).collect(),
            strategy: match options.strategy {
                None | Some(WitStrategy::Local) => Strategy::Local,
                Some(WitStrategy::Spread) => Strategy::Spread,
                Some(WitStrategy::Pack) => Strategy::Pack,
            },
        };
        if demand != Demand::default() {
            // A demand no member could ever meet fails here, not in a wait.
            task.host.cluster.place(&task.host.local_info(), &demand, &[])?;
        }
        let placement = Placement { demand, retries: options.retries.unwrap_or(DEFAULT_RETRIES) };
        let spec = TaskSpec { component, function, args, encoding: Encoding::Binary, limits };
        let id = task.host.spawn_task(&task.job, spec, placement, named.hand_over());
        Ok(self.adopt(id)?)
    }

    async fn wait(
        &mut self,
        ids: Vec<WitObjectId>,
        num_ready: u32,
        timeout_ms: Option<u64>,
    ) -> Result<Vec<WitObjectId>, WitError> {
        let task = self.task()?;
        let tenant = &task.job.tenant;
        let (cells, _watches): (Vec<_>, Vec<_>) = ids
            .iter()
            .map(|id| transfer::watch(&task.host, tenant, (*id).into()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let wanted = (num_ready as usize).min(cells.len());
        let ready_count = || cells.iter().filter(|c| c.peek().is_some()).count();
        if ready_count() < wanted {
            let mut pending: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = cells
                .iter()
                .filter(|c| c.peek().is_none())
                .map(|c| {
                    let cell = c.clone();
                    Box::pin(async move {
                        cell.ready().await;
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                })
                .collect();
            // Done once `needed` more of the pending objects are ready.
            // (More may have filled since the check above.)
            let needed = wanted.saturating_sub(ready_count());
            let initially_pending = pending.len();
            let enough = std::future::poll_fn(move |cx| {
                pending.retain_mut(|f| f.as_mut().poll(cx).is_pending());
                if initially_pending - pending.len() >= needed {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let timeout = timeout_ms.map(Duration::from_millis).unwrap_or(Duration::MAX);
            let _ = task.blocking(tokio::time::timeout(timeout, enough)).await?;
        }
        Ok(ids.into_iter().zip(&cells).filter(|(_, c)| c.peek().is_some()).map(|(id, _)| id).collect())
    }

    async fn call_deployment(
        &mut self,
        deployment: String,
        function: String,
        args: Vec<u8>,
    ) -> Result<WitObjectId, WitError> {
        let named = self.holds()?.take_declared();
        let task = self.task()?;
        let tenant = &task.job.tenant;
        let deployed = task.host.deployments.named(tenant, &deployment).ok_or_else(|| {
            FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no deployment `{deployment}`"))
        })?;
        if deployed.record.kind != DeploymentKind::Tasks {
            return Err(FabricError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "deployment `{deployment}` is a wasi:http component: only task deployments are called as tasks"
                ),
            )
            .into());
        }
        let spec = &deployed.record.spec;
        if spec.demand != Demand::default() {
            task.host.cluster.place(&task.host.local_info(), &spec.demand, &[])?;
        }
        let placement = Placement { demand: spec.demand.clone(), retries: DEFAULT_RETRIES };
        let spec = TaskSpec {
            component: deployed.component.clone(),
            function,
            args,
            encoding: Encoding::Binary,
            limits: spec.limits.clone(),
        };
        let id = task.host.spawn_task(&task.job, spec, placement, named.hand_over());
        Ok(self.adopt(id)?)
    }

    async fn context(&mut self) -> WitTaskContext {
        match self.task() {
            Ok(task) => WitTaskContext {
                tenant: task.job.tenant.to_string(),
                job: task.job.id.to_string(),
                component: task.component.sha256.clone(),
                host: task.host.id.clone(),
            },
            Err(_) => WitTaskContext {
                tenant: String::new(),
                job: String::new(),
                component: String::new(),
                host: String::new(),
            },
        }
    }
}

//! `fabric:core/actors`: create, look up, call and kill actors of the
//! caller's tenant. Actors are created from the caller's own component.

use super::bindings::fabric::core::actors::{ActorId as WitActorId, ActorOptions as WitActorOptions, Host};
use super::{Encoding, WitError, WitObjectId};
use crate::actors::{ActorId, ActorOptions, NewActor};
use crate::remote::actors::Ask;
use crate::sandbox::TaskState;

impl From<WitActorId> for ActorId {
    fn from(id: WitActorId) -> Self {
        ActorId { hi: id.hi, lo: id.lo }
    }
}

impl From<ActorId> for WitActorId {
    fn from(id: ActorId) -> Self {
        WitActorId { hi: id.hi, lo: id.lo }
    }
}

impl From<WitActorOptions> for ActorOptions {
    fn from(o: WitActorOptions) -> Self {
        ActorOptions {
            name: o.name,
            detached: o.detached,
            max_restarts: o.max_restarts.unwrap_or(0),
            max_pending: o.max_pending,
            snapshot_every: o.snapshot_every.unwrap_or(0),
            snapshot_interval: o.snapshot_interval_ms.map(std::time::Duration::from_millis),
            memory_bytes: o.memory_bytes,
            demand: fabric_proto::Demand {
                resources: o
                    .resources
                    .into_iter()
                    .map(|(name, amount)| fabric_proto::Resource { name, amount })
                    .collect(),
                pool: o.pool,
                labels: o.labels.into_iter().map(|(key, value)| fabric_proto::Label { key, value }).collect(),
                strategy: fabric_proto::Strategy::Local,
            },
        }
    }
}

impl TaskState {
    async fn create_actor(
        &mut self,
        class: String,
        args: Vec<u8>,
        options: WitActorOptions,
        get_or_create: bool,
    ) -> Result<WitActorId, WitError> {
        // An actor may keep what its arguments name for as long as it
        // lives, wherever that is: they live until the job ends.
        self.holds()?.settle_declared();
        let task = self.task()?;
        let new = NewActor {
            tenant: task.job.tenant.clone(),
            creator: task.job.clone(),
            component: task.component.clone(),
            class,
            args,
            encoding: Encoding::Binary,
        };
        Ok(crate::remote::actors::create(&task.host, new, options.into(), get_or_create).await?.into())
    }

    /// Asks `ask` of `actor` wherever it lives; its result is a new object
    /// of the task's job, held by the task.
    fn ask_actor(&mut self, actor: WitActorId, ask: Ask) -> Result<WitObjectId, WitError> {
        let task = self.task()?;
        let (host, tenant) = (&task.host, &task.job.tenant);
        let (id, cell) = host.objects.reserve(tenant, &task.job.id);
        if let Err(error) = crate::remote::actors::ask(host, Some(&task.job), actor.into(), ask, cell.clone()) {
            host.objects.fill(&cell, Err(error.clone()));
            host.objects.release(tenant, &[id]);
            return Err(error.into());
        }
        Ok(self.adopt(id)?)
    }
}

impl Host for TaskState {
    async fn create(&mut self, class: String, args: Vec<u8>, options: WitActorOptions) -> Result<WitActorId, WitError> {
        self.create_actor(class, args, options, false).await
    }

    async fn get_or_create(
        &mut self,
        class: String,
        args: Vec<u8>,
        options: WitActorOptions,
    ) -> Result<WitActorId, WitError> {
        self.create_actor(class, args, options, true).await
    }

    async fn lookup(&mut self, name: String) -> Result<WitActorId, WitError> {
        let task = self.task()?;
        let id = crate::remote::actors::located(&task.host, &task.job.tenant, &name).await?;
        Ok(id
            .ok_or_else(|| {
                fabric_proto::FabricError::new(
                    fabric_proto::ErrorKind::NotFound,
                    format!("tenant `{}` has no actor named `{name}`", task.job.tenant),
                )
            })?
            .into())
    }

    async fn call(&mut self, actor: WitActorId, method: String, args: Vec<u8>) -> Result<WitObjectId, WitError> {
        self.holds()?.settle_declared();
        self.ask_actor(actor, Ask::Call { method, args, encoding: Encoding::Binary })
    }

    async fn snapshot(&mut self, actor: WitActorId) -> Result<WitObjectId, WitError> {
        self.ask_actor(actor, Ask::Snapshot)
    }

    async fn kill(&mut self, actor: WitActorId) -> Result<(), WitError> {
        let task = self.task()?;
        Ok(crate::remote::actors::kill(&task.host, &task.job.tenant, actor.into()).await?)
    }
}

//! What a host is configured with; every field has a default that suits one
//! machine, so `fabric up` needs no flags.

use std::path::PathBuf;
use std::time::Duration;

/// Limits applied to every task unless the job or task asks for less.
#[derive(Clone, Debug)]
pub struct DefaultLimits {
    /// Wall-clock limit per task.
    pub timeout: Duration,
    /// CPU budget per task (guest execution time, counted in epoch ticks).
    pub cpu: Duration,
    /// Linear memory cap per instance.
    pub memory_bytes: u64,
}

impl Default for DefaultLimits {
    fn default() -> Self {
        DefaultLimits {
            timeout: Duration::from_secs(15 * 60),
            cpu: Duration::from_secs(15 * 60),
            memory_bytes: 2 << 30,
        }
    }
}

/// A host's configuration.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where components, the compile cache, logs and the registry live.
    pub data_dir: PathBuf,
    /// Keep job records and logs on disk (`fabric up`); off for `fabric run`,
    /// which keeps them in memory and shares only the compile cache.
    pub persist: bool,
    /// Tasks that may run at once; the rest queue. Defaults to the CPU count.
    pub slots: usize,
    /// Instances that may exist at once (running or blocked on children).
    pub max_instances: u32,
    /// Limits for tasks that do not set their own.
    pub limits: DefaultLimits,
    /// Largest single object, in bytes.
    pub max_object_bytes: u64,
    /// Bytes of objects kept in memory before the least recently used spill
    /// to disk (default: 30% of the machine's memory).
    pub object_memory_bytes: u64,
    /// Bytes of objects one tenant may hold on this host (default: no limit).
    pub max_tenant_object_bytes: u64,
    /// Where objects spill (default: `spill` under the data directory).
    pub spill_dir: Option<PathBuf>,
    /// Bytes of objects the host may keep on disk (default: no limit).
    pub max_spill_bytes: u64,
    /// Reuse a cleanly finished task's instance for the next task of the same
    /// tenant and component (see `instances`); off gives every task a fresh
    /// instance.
    pub reuse_instances: bool,
    /// etcd endpoints for the shared registry; empty uses the embedded one.
    pub etcd: Vec<String>,
    /// How long to wait at start for etcd to answer (hosts may start before
    /// it); zero fails at once.
    pub etcd_wait: Duration,
    /// Copy guest stdout/stderr to this process's stderr as well as the job log.
    pub echo_logs: bool,
    /// What the host declares to the cluster: resources, pool, labels.
    pub declared: crate::cluster::Declared,
    /// How long the host's membership outlives its last renewal.
    pub lease_ttl: Duration,
    /// Names or addresses (besides localhost and loopback) the host's
    /// certificate must carry: what peers and clients dial.
    pub advertise_names: Vec<String>,
}

impl HostConfig {
    /// Defaults for a host whose state lives in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        HostConfig {
            data_dir: data_dir.into(),
            persist: true,
            slots: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            max_instances: 1000,
            limits: DefaultLimits::default(),
            max_object_bytes: 3 << 30,
            object_memory_bytes: crate::objects::default_memory_budget(),
            max_tenant_object_bytes: u64::MAX,
            max_spill_bytes: u64::MAX,
            spill_dir: None,
            reuse_instances: true,
            etcd: Vec::new(),
            etcd_wait: Duration::ZERO,
            echo_logs: false,
            declared: crate::cluster::Declared::default(),
            lease_ttl: Duration::from_secs(3),
            advertise_names: Vec::new(),
        }
    }
}

impl HostConfig {
    /// What bounds the host's object store.
    pub fn store_limits(&self) -> crate::objects::StoreLimits {
        crate::objects::StoreLimits {
            max_object_bytes: self.max_object_bytes,
            memory_budget: self.object_memory_bytes,
            max_tenant_bytes: self.max_tenant_object_bytes,
            spill_dir: self.spill_dir.clone().unwrap_or_else(|| self.data_dir.join("spill")),
            max_spill_bytes: self.max_spill_bytes,
        }
    }
}

//! The membership loop: join under a lease, keep it alive, report load,
//! watch the members, leave on shutdown.
//!
//! Losing the registry is not fatal: the host keeps running what it has,
//! keeps its last view (peers it cannot confirm are not presumed dead), and
//! retries. When the registry answers again the lease is renewed if it
//! survived, and otherwise the host joins again under a new lease; the
//! watch is re-established, and its opening member list repairs the view.

use crate::registry::LeaseId;
use crate::HostInner;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often load is reported at most.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true, then leaves.
pub(crate) async fn run(host: Arc<HostInner>, mut stop: watch::Receiver<bool>) {
    let ttl = host.config.lease_ttl;
    // Renew three times per TTL: one lost renewal does not cost the lease.
    let renew_every = ttl / 3;
    let mut retry = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let info = host.local_info();
        let lease = tokio::select! {
            _ = stopped(&mut stop) => return,
            joined = within(ttl, host.registry.join(&info, ttl)) => joined,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => {
                if !warned {
                    tracing::warn!("cannot join the cluster (will keep trying): {e}");
                    warned = true;
                }
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(renew_every.max(Duration::from_millis(100)));
                continue;
            }
        };
        if warned {
            tracing::warn!("joined the cluster again");
        }
        host.cluster.set_lease(Some(lease));
        // Records made under an expired lease went with it: make them again.
        crate::remote::actors::republish(&host, lease).await;
        warned = false;
        retry = Duration::from_millis(100);
        if serve_lease(&host, lease, info, renew_every, &mut stop).await {
            // Stopping: leave at once rather than waiting out the TTL.
            host.cluster.set_lease(None);
            let _ = within(Duration::from_secs(2), host.registry.leave(lease)).await;
            return;
        }
    }
}

/// Keeps `lease` alive, reports load and follows the watch; returns true
/// when stopping, false when the lease is gone and the host must rejoin.
async fn serve_lease(
    host: &Arc<HostInner>,
    lease: LeaseId,
    mut reported: fabric_proto::HostInfo,
    renew_every: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let ttl = host.config.lease_ttl;
    let mut watch = None;
    let mut tick = tokio::time::interval(REPORT_EVERY.min(renew_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    let mut unreachable = false;
    // Whether the drain was announced (or tried): later ticks retry it.
    let mut announced = false;
    loop {
        if watch.is_none() {
            match within(ttl, host.registry.watch_members()).await {
                Ok(w) => watch = Some(w),
                Err(e) => {
                    if !unreachable {
                        tracing::warn!("cannot watch the cluster's members (keeping the last view): {e}");
                        unreachable = true;
                    }
                }
            }
        }
        let event = async {
            match watch.as_mut() {
                Some(w) => w.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped(stop) => return true,
            // Say at once that this host is shutting down, so peers place
            // nothing new here while it drains.
            _ = host.drain.started(), if !announced => {
                announced = true;
                let now = host.local_info();
                if within(renew_every, host.registry.report(&now, lease)).await.is_ok() {
                    reported = now;
                }
            }
            event = event => match event {
                Some(Ok(event)) => {
                    for (id, addr) in host.cluster.apply(event) {
                        host.peers.disconnect(&addr);
                        // Its objects' copies here are the only ones left.
                        if let Ok(node) = u64::from_str_radix(&id, 16) {
                            host.objects.keep_copies_of(node);
                        }
                        crate::remote::origin_left(host, &addr);
                        tokio::spawn(sweep_jobs_of(host.clone(), id));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("the membership watch broke: {e}");
                    watch = None;
                }
                None => watch = None,
            },
            _ = tick.tick() => {
                if renewed.elapsed() >= renew_every {
                    match within(renew_every, host.registry.keep_alive(lease)).await {
                        Ok(true) => {
                            renewed = Instant::now();
                            if unreachable {
                                tracing::warn!("the registry answers again");
                                unreachable = false;
                            }
                        }
                        Ok(false) => {
                            tracing::warn!("the membership lease expired; joining again");
                            return false;
                        }
                        Err(e) => {
                            if !unreachable {
                                tracing::warn!("cannot renew the membership lease (still serving): {e}");
                                unreachable = true;
                            }
                        }
                    }
                }
                let now = host.local_info();
                if now != reported && !unreachable && within(renew_every, host.registry.report(&now, lease)).await.is_ok() {
                    reported = now;
                }
            }
        }
    }
}

/// Marks the jobs a host that left was running as failed, once it has
/// stayed away for two lease TTLs (a host that only lost etcd for a while
/// rejoins under the same id and keeps its jobs). Every host that saw it
/// leave does this; the writes are the same, so that is harmless.
async fn sweep_jobs_of(host: Arc<HostInner>, gone: String) {
    tokio::time::sleep(host.config.lease_ttl * 2).await;
    if host.cluster.addr_of(&gone).is_some() {
        return;
    }
    let jobs = match host.registry.running_on(&gone).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(host = %gone, "cannot list the jobs of a host that left: {e}");
            return;
        }
    };
    for (tenant, job) in jobs {
        if let Ok(Some(mut record)) = host.registry.job(&tenant, &job).await {
            if !record.state.is_terminal() {
                record.state = fabric_proto::JobState::Failed;
                record.finished_ms = Some(crate::jobs::now_ms());
                record.error = Some(fabric_proto::FabricError::new(
                    fabric_proto::ErrorKind::Unavailable,
                    format!("host {gone}, which ran the job, left the cluster"),
                ));
                if host.registry.put_job(&record).await.is_err() {
                    continue;
                }
                tracing::warn!(job = %job, host = %gone, "recorded a lost host's job as failed");
            }
        }
        let _ = host.registry.clear_running(&gone, &tenant, &job).await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `future`, or an `unavailable` error after `limit`.
async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = Result<T, fabric_proto::FabricError>>,
) -> Result<T, fabric_proto::FabricError> {
    match tokio::time::timeout(limit, future).await {
        Ok(outcome) => outcome,
        Err(_) => Err(fabric_proto::FabricError::new(
            fabric_proto::ErrorKind::Unavailable,
            format!("the registry did not answer within {limit:?}"),
        )),
    }
}

//! One behavioural suite for the registry, run against both backends: the
//! embedded one (redb) and a real etcd on loopback.

use fabric_host::cluster::view::MemberEvent;
use fabric_host::registry::{embedded::Embedded, etcd::Etcd, CaPem, MemberWatch, Registry};
use fabric_host::{Deployment, DeploymentSpec, FabricError, HostInfo, JobRecord, JobState};
use fabric_proto::DeploymentKind;
use fabric_tests::Etcd as EtcdServer;
use std::time::Duration;

fn member(id: &str, queued: u64) -> HostInfo {
    HostInfo {
        id: id.into(),
        addr: "127.0.0.1:7480".into(),
        capacity: Vec::new(),
        used: Vec::new(),
        queued,
        pool: None,
        labels: Vec::new(),
        started_ms: 1,
        draining: false,
    }
}

/// The next membership event, failing the test if none comes in 20 s.
async fn next(watch: &mut MemberWatch) -> MemberEvent {
    let event = tokio::time::timeout(Duration::from_secs(20), watch.recv()).await;
    event.expect("a membership event").expect("the watch is open").expect("the watch works")
}

/// What every backend must do about membership and the cluster CA.
async fn membership_behaves(registry: &dyn Registry) {
    let mut watch = registry.watch_members().await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Reset(vec![]));

    let a = registry.join(&member("a", 0), Duration::from_secs(2)).await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Put(member("a", 0)));
    registry.report(&member("a", 4), a).await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Put(member("a", 4)));
    let b = registry.join(&member("b", 0), Duration::from_secs(60)).await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Put(member("b", 0)));
    assert_eq!(registry.members().await.unwrap(), vec![member("a", 4), member("b", 0)]);

    // A new watch starts from the whole list.
    let mut second = registry.watch_members().await.unwrap();
    assert_eq!(next(&mut second).await, MemberEvent::Reset(vec![member("a", 4), member("b", 0)]));

    // Leaving removes the record at once.
    registry.leave(b).await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Gone("b".into()));

    // Renewed, a lease lives on; left alone, it expires and its member goes.
    assert!(registry.keep_alive(a).await.unwrap());
    assert_eq!(next(&mut watch).await, MemberEvent::Gone("a".into()));
    assert!(!registry.keep_alive(a).await.unwrap(), "an expired lease cannot be renewed");
    assert!(registry.report(&member("a", 1), a).await.is_err(), "no writes under an expired lease");
    assert!(registry.members().await.unwrap().is_empty());

    // Named actors' locations live under a lease and can be removed only
    // by who they still name.
    let lease = registry.join(&member("c", 0), Duration::from_secs(2)).await.unwrap();
    let here = fabric_proto::ActorLocation { host: "c".into(), id: "00".repeat(16) };
    let newer = fabric_proto::ActorLocation { host: "c".into(), id: "11".repeat(16) };
    assert_eq!(registry.actor("t", "counter").await.unwrap(), None);
    registry.put_actor("t", "counter", &here, lease).await.unwrap();
    assert_eq!(registry.actor("t", "counter").await.unwrap(), Some(here.clone()));
    assert_eq!(registry.actor("u", "counter").await.unwrap(), None, "tenant-scoped");
    registry.put_actor("t", "counter", &newer, lease).await.unwrap();
    registry.remove_actor("t", "counter", &here).await.unwrap();
    assert_eq!(registry.actor("t", "counter").await.unwrap(), Some(newer.clone()), "a stale remove keeps it");
    registry.remove_actor("t", "counter", &newer).await.unwrap();
    assert_eq!(registry.actor("t", "counter").await.unwrap(), None);
    registry.put_actor("t", "gauge", &here, lease).await.unwrap();
    // Left alone, the lease expires and takes the record with it.
    tokio::time::timeout(Duration::from_secs(20), async {
        while registry.actor("t", "gauge").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the actor's record goes with its host's lease");
    assert!(registry.put_actor("t", "gauge", &here, lease).await.is_err(), "no records under an expired lease");

    // Which jobs each host runs, for sweeping a lost host's.
    registry.mark_running("h1", "t", "j1").await.unwrap();
    registry.mark_running("h1", "u", "j2").await.unwrap();
    registry.mark_running("h10", "t", "j3").await.unwrap();
    let mut on_h1 = registry.running_on("h1").await.unwrap();
    on_h1.sort();
    assert_eq!(on_h1, vec![("t".to_string(), "j1".to_string()), ("u".to_string(), "j2".to_string())]);
    registry.clear_running("h1", "t", "j1").await.unwrap();
    assert_eq!(registry.running_on("h1").await.unwrap(), vec![("u".to_string(), "j2".to_string())]);
    assert_eq!(registry.running_on("h10").await.unwrap().len(), 1, "host ids that share a prefix stay apart");

    // The first CA proposed is the cluster's; later proposals adopt it.
    let first = CaPem { cert: "cert-1".into(), key: "key-1".into() };
    let second_ca = CaPem { cert: "cert-2".into(), key: "key-2".into() };
    assert_eq!(registry.ca_cert().await.unwrap(), None);
    assert_eq!(registry.cluster_ca(&first).await.unwrap(), first);
    assert_eq!(registry.cluster_ca(&second_ca).await.unwrap(), first);
    assert_eq!(registry.ca_cert().await.unwrap(), Some("cert-1".into()));
}

fn record(tenant: &str, id: &str, at: u64, state: JobState) -> JobRecord {
    JobRecord {
        id: id.into(),
        tenant: tenant.into(),
        component: "c0ffee".into(),
        function: "main".into(),
        state,
        submitted_ms: at,
        started_ms: Some(at + 1),
        finished_ms: None,
        result: None,
        error: None,
    }
}

/// What every backend must do.
async fn behaves(registry: &dyn Registry) {
    assert!(registry.jobs(Some("a")).await.unwrap().is_empty());
    assert_eq!(registry.job("a", "j1").await.unwrap(), None);

    registry.put_job(&record("a", "j1", 10, JobState::Running)).await.unwrap();
    registry.put_job(&record("a", "j2", 30, JobState::Queued)).await.unwrap();
    registry.put_job(&record("a", "j3", 20, JobState::Queued)).await.unwrap();
    // A tenant whose name extends another's must not leak into it.
    registry.put_job(&record("ab", "j4", 40, JobState::Queued)).await.unwrap();

    let ids: Vec<String> = registry.jobs(Some("a")).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["j2", "j3", "j1"], "newest first, one tenant only");
    assert_eq!(registry.jobs(None).await.unwrap().len(), 4);
    assert_eq!(registry.job("ab", "j1").await.unwrap(), None, "tenant-scoped by key");

    // Replacing a record keeps one record with the new content.
    let mut done = record("a", "j1", 10, JobState::Failed);
    done.finished_ms = Some(99);
    done.error = Some(FabricError::new(fabric_host::ErrorKind::Trapped, "boom"));
    registry.put_job(&done).await.unwrap();
    assert_eq!(registry.job("a", "j1").await.unwrap(), Some(done));
    assert_eq!(registry.jobs(Some("a")).await.unwrap().len(), 3);
}

fn deployment(tenant: &str, name: &str, route: Option<&str>) -> Deployment {
    Deployment {
        tenant: tenant.into(),
        spec: DeploymentSpec {
            name: name.into(),
            component: "c0ffee".into(),
            route: route.map(str::to_string),
            min: 1,
            max: 4,
            target_concurrency: 1,
            scale_down_delay_ms: 1000,
            isolate: false,
            max_body_bytes: 1 << 20,
            demand: Default::default(),
            batch: None,
            limits: Default::default(),
        },
        kind: DeploymentKind::Http,
        version: 0,
        deployed_ms: 5,
        origin: "127.0.0.1:7480".into(),
    }
}

/// What every backend must do with deployments: versions count up per
/// name, routes are unique and tenants' routes do not nest, removal frees
/// the route.
async fn deployments_behave(registry: &dyn Registry) {
    assert!(registry.deployments(None).await.unwrap().is_empty());
    let first = registry.put_deployment(&deployment("a", "web", Some("/web"))).await.unwrap();
    assert_eq!(first.version, 1);
    let again = registry.put_deployment(&deployment("a", "web", Some("/web"))).await.unwrap();
    assert_eq!(again.version, 2, "a redeploy is the next version");
    registry.put_deployment(&deployment("a", "api", None)).await.unwrap();
    registry.put_deployment(&deployment("ab", "web", Some("/ab"))).await.unwrap();

    let taken = registry.put_deployment(&deployment("b", "other", Some("/web"))).await.unwrap_err();
    assert_eq!(taken.kind, fabric_host::ErrorKind::InvalidArgument);
    assert!(taken.message.contains("another tenant's deployment"), "{taken}");
    assert!(!taken.message.contains("a/web"), "another tenant's deployment is not named: {taken}");
    let twin = registry.put_deployment(&deployment("a", "twin", Some("/web"))).await.unwrap_err();
    assert!(twin.message.contains("already served by deployment a/web"), "{twin}");

    // One tenant's routes never nest in another's, either way round; a
    // tenant nests its own, and routes that only share letters are apart.
    let under = registry.put_deployment(&deployment("b", "under", Some("/web/admin"))).await.unwrap_err();
    assert!(under.message.contains("lies under route /web"), "{under}");
    let over = registry.put_deployment(&deployment("b", "root", Some("/"))).await.unwrap_err();
    assert!(over.message.contains("would take the paths of route"), "{over}");
    registry.put_deployment(&deployment("a", "admin", Some("/web/admin"))).await.unwrap();
    registry.put_deployment(&deployment("b", "webby", Some("/webby"))).await.unwrap();
    assert!(registry.remove_deployment("a", "admin").await.unwrap());
    assert!(registry.remove_deployment("b", "webby").await.unwrap());

    let names: Vec<String> = registry.deployments(Some("a")).await.unwrap().into_iter().map(|d| d.spec.name).collect();
    assert_eq!(names, ["api", "web"], "one tenant, by name");
    assert_eq!(registry.deployments(None).await.unwrap().len(), 3);

    // Moving a deployment to another route frees the old one.
    let moved = registry.put_deployment(&deployment("a", "web", Some("/web2"))).await.unwrap();
    assert_eq!(moved.version, 3);
    registry.put_deployment(&deployment("b", "other", Some("/web"))).await.unwrap();

    assert!(registry.remove_deployment("a", "web").await.unwrap());
    assert!(!registry.remove_deployment("a", "web").await.unwrap(), "gone already");
    registry.put_deployment(&deployment("b", "third", Some("/web2"))).await.unwrap();
    let fresh = registry.put_deployment(&deployment("a", "web", Some("/web3"))).await.unwrap();
    assert_eq!(fresh.version, 1, "a removed name starts again");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn embedded_registry_behaves_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    runtime().block_on(async {
        behaves(&Embedded::open(&path).unwrap()).await;
        let reopened = Embedded::open(&path).unwrap();
        assert_eq!(reopened.jobs(None).await.unwrap().len(), 4, "records survive a reopen");
        behaves(&Embedded::in_memory().unwrap()).await;
        deployments_behave(&Embedded::in_memory().unwrap()).await;
        membership_behaves(&reopened).await;
        drop(reopened);
        let again = Embedded::open(&path).unwrap();
        assert_eq!(again.ca_cert().await.unwrap(), Some("cert-1".into()), "the CA survives a reopen");
    });
}

#[test]
fn etcd_registry_behaves_and_is_shared() {
    let server = EtcdServer::start();
    let endpoints = vec![server.endpoint().to_string()];
    runtime().block_on(async {
        let first = Etcd::connect(&endpoints).await.unwrap();
        behaves(&first).await;
        membership_behaves(&first).await;
        deployments_behave(&first).await;
        // A second client (another host) sees the same records.
        let second = Etcd::connect(&endpoints).await.unwrap();
        assert_eq!(second.jobs(None).await.unwrap().len(), 4);
        assert_eq!(second.job("a", "j1").await.unwrap().unwrap().state, JobState::Failed);
        // Two hosts deploying nested routes of two tenants at once: exactly
        // one wins, whichever reads first.
        for i in 0..5 {
            let outer = deployment("x", &format!("r{i}"), Some(&format!("/race{i}")));
            let inner = deployment("y", &format!("r{i}"), Some(&format!("/race{i}/in")));
            let (a, b) = tokio::join!(first.put_deployment(&outer), second.put_deployment(&inner));
            assert!(a.is_ok() != b.is_ok(), "race {i}: {a:?} / {b:?}");
        }
    });
}

#[test]
fn an_unreachable_etcd_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoints = vec![format!("http://127.0.0.1:{port}")];
    let err = runtime().block_on(Etcd::connect(&endpoints)).err().expect("nothing listens there");
    assert_eq!(err.kind, fabric_host::ErrorKind::Unavailable);
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
}

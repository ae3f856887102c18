//! One behavioural suite for the registry, run against both backends: the
//! embedded one (redb) and a real etcd on loopback.

use fabric_host::registry::{embedded::Embedded, etcd::Etcd, Registry};
use fabric_host::{FabricError, JobRecord, JobState};
use fabric_tests::Etcd as EtcdServer;

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
    });
}

#[test]
fn etcd_registry_behaves_and_is_shared() {
    let server = EtcdServer::start();
    let endpoints = vec![server.endpoint().to_string()];
    runtime().block_on(async {
        let first = Etcd::connect(&endpoints).await.unwrap();
        behaves(&first).await;
        // A second client (another host) sees the same records.
        let second = Etcd::connect(&endpoints).await.unwrap();
        assert_eq!(second.jobs(None).await.unwrap().len(), 4);
        assert_eq!(second.job("a", "j1").await.unwrap().unwrap().state, JobState::Failed);
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

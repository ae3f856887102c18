//! The etcd registry: records under `/fabric/` in etcd's v3 key space,
//! shared by every host of a cluster.
//!
//! Keys: `/fabric/jobs/<tenant>/<id>`. Values are rkyv archives of the
//! protocol's records, validated when read, as in the embedded backend. The
//! client is cloned per call (it is a cheap handle over one channel).

use super::{sort_newest_first, BoxFuture, Registry};
use etcd_client::{Client, GetOptions};
use fabric_proto::{ErrorKind, FabricError, JobRecord};

/// Where fabric's keys live.
const ROOT: &str = "/fabric";

/// An etcd-backed registry.
pub struct Etcd {
    client: Client,
}

fn unavailable(e: impl std::fmt::Display) -> FabricError {
    FabricError::new(ErrorKind::Unavailable, format!("etcd: {e}"))
}

fn job_key(tenant: &str, id: &str) -> String {
    format!("{ROOT}/jobs/{tenant}/{id}")
}

impl Etcd {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, FabricError> {
        if endpoints.is_empty() {
            return Err(FabricError::new(ErrorKind::InvalidArgument, "no etcd endpoints given"));
        }
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(format!("cannot connect to {}: {e}", endpoints.join(","))))?;
        // Fail now, not on the first job, if nobody answers.
        client.status().await.map_err(|e| unavailable(format!("{} does not answer: {e}", endpoints.join(","))))?;
        Ok(Etcd { client })
    }
}

impl Registry for Etcd {
    fn put_job<'a>(&'a self, record: &'a JobRecord) -> BoxFuture<'a, Result<(), FabricError>> {
        Box::pin(async move {
            let value = fabric_proto::encode(record).map_err(unavailable)?;
            let mut client = self.client.clone();
            client.put(job_key(&record.tenant, &record.id), value, None).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn job<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<JobRecord>, FabricError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = client.get(job_key(tenant, id), None).await.map_err(unavailable)?;
            match response.kvs().first() {
                Some(kv) => fabric_proto::decode(kv.value()).map(Some).map_err(unavailable),
                None => Ok(None),
            }
        })
    }

    fn jobs<'a>(&'a self, tenant: Option<&'a str>) -> BoxFuture<'a, Result<Vec<JobRecord>, FabricError>> {
        Box::pin(async move {
            let prefix = match tenant {
                Some(tenant) => format!("{ROOT}/jobs/{tenant}/"),
                None => format!("{ROOT}/jobs/"),
            };
            let mut client = self.client.clone();
            let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
            let mut jobs = response
                .kvs()
                .iter()
                .map(|kv| fabric_proto::decode::<JobRecord>(kv.value()).map_err(unavailable))
                .collect::<Result<Vec<_>, _>>()?;
            sort_newest_first(&mut jobs);
            Ok(jobs)
        })
    }
}

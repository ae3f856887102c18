//! A client of a fabric host over QUIC: what every CLI command (but `up` and
//! `run`) uses, and what tests and benchmarks drive hosts with.

use anyhow::{bail, Context};
use fabric_proto::{
    read_frame, write_frame, FabricError, JobRecord, Request, Response, SubmitRequest, TaskLimits, MAX_FRAME,
};
use std::net::SocketAddr;
use std::path::Path;

/// The address `fabric up` listens on by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7480";

/// The file in which `fabric up` records the address it listens on.
pub fn addr_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("host.addr")
}

/// The host to talk to: `explicit`, else the one recorded in `data_dir`,
/// else the default address.
pub fn resolve_addr(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<SocketAddr> {
    let text = match explicit {
        Some(addr) => addr.to_string(),
        None => std::fs::read_to_string(addr_file(data_dir)).unwrap_or_else(|_| DEFAULT_ADDR.to_string()),
    };
    text.trim().parse().with_context(|| format!("invalid host address `{}`", text.trim()))
}

/// The file in which a host records where its HTTP gateway listens.
pub fn http_addr_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("http.addr")
}

/// How a submission ended, from the client's side.
#[derive(Debug)]
pub enum Submitted {
    /// Detached: the job's id.
    Accepted(String),
    /// The job ran to its end.
    Finished(JobRecord),
}

/// What happens while a submission runs, in order.
#[derive(Debug)]
pub enum SubmitEvent<'a> {
    /// The host lacked the component; it was uploaded (this many bytes).
    Uploaded(usize),
    /// A chunk of the job's log.
    Log(&'a [u8]),
}

/// A connection to one host, for one tenant.
pub struct Client {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    tenant: String,
}

/// An error the host answered with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub FabricError);

impl Client {
    /// Connects to the host at `addr`, trusting the cluster CA recorded in
    /// `data_dir`.
    pub async fn connect(data_dir: &Path, addr: SocketAddr, tenant: &str) -> anyhow::Result<Client> {
        Self::connect_with(fabric_host::tls::client_config(data_dir)?, addr, tenant).await
    }

    /// Finds a host through the etcd at `endpoints` (or talks to `host` if
    /// given), trusting the cluster CA recorded there.
    pub async fn discover(endpoints: &[String], host: Option<&str>, tenant: &str) -> anyhow::Result<Client> {
        use fabric_host::registry::Registry;
        let registry = fabric_host::registry::etcd::Etcd::connect(endpoints).await.map_err(HostError)?;
        let ca =
            registry.ca_cert().await.map_err(HostError)?.with_context(|| {
                format!("no fabric cluster has started against etcd at {} yet", endpoints.join(","))
            })?;
        let config = fabric_host::tls::client_config_for(&ca)?;
        if let Some(addr) = host {
            let addr = addr.parse().with_context(|| format!("invalid host address `{addr}`"))?;
            return Self::connect_with(config, addr, tenant).await;
        }
        let mut members = registry.members().await.map_err(HostError)?;
        if members.is_empty() {
            bail!("no fabric host is registered in etcd at {}", endpoints.join(","));
        }
        // Any host serves any request: start at a random one, try the rest.
        let start = rand::random_range(0..members.len());
        members.rotate_left(start);
        let mut last = None;
        for member in &members {
            let Ok(addr) = member.addr.parse::<SocketAddr>() else { continue };
            match Self::connect_with(config.clone(), addr, tenant).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no registered host has a usable address")))
    }

    /// Connects to the host at `addr` with TLS settings `config`.
    pub async fn connect_with(config: quinn::ClientConfig, addr: SocketAddr, tenant: &str) -> anyhow::Result<Client> {
        let bind: SocketAddr = if addr.is_ipv6() { "[::1]:0".parse()? } else { "127.0.0.1:0".parse()? };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, fabric_host::tls::SERVER_NAME)?.await.with_context(|| {
            format!("cannot reach a fabric host at {addr} (is `fabric up` or `fabric host` running?)")
        })?;
        Ok(Client { _endpoint: endpoint, connection, tenant: tenant.to_string() })
    }

    /// The tenant this client acts for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// A bare request stream, for tools and tests that speak the protocol
    /// themselves.
    pub async fn open_raw(&self) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        Ok(self.connection.open_bi().await?)
    }

    async fn open(&self, request: &Request) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.connection.open_bi().await.context("opening a stream to the host")?;
        write_frame(&mut send, request).await?;
        Ok((send, recv))
    }

    async fn next(recv: &mut quinn::RecvStream) -> anyhow::Result<Response> {
        match read_frame::<_, Response>(recv, MAX_FRAME).await? {
            Some(Response::Error(e)) => Err(HostError(e).into()),
            Some(response) => Ok(response),
            None => bail!("the host closed the stream without answering"),
        }
    }

    async fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let (mut send, mut recv) = self.open(request).await?;
        let _ = send.finish();
        Self::next(&mut recv).await
    }

    /// The host's id, if it answers.
    pub async fn ping(&self) -> anyhow::Result<String> {
        match self.call(&Request::Ping).await? {
            Response::Pong { host } => Ok(host),
            other => bail!("unexpected answer to ping: {other:?}"),
        }
    }

    /// Uploads a component whose sha256 is `sha256`.
    pub async fn upload(&self, wasm: &[u8], sha256: &str) -> anyhow::Result<()> {
        let request =
            Request::Upload { tenant: self.tenant.clone(), sha256: sha256.to_string(), len: wasm.len() as u64 };
        let (mut send, mut recv) = self.open(&request).await?;
        send.write_all(wasm).await.context("uploading the component")?;
        let _ = send.finish();
        match Self::next(&mut recv).await? {
            Response::Uploaded => Ok(()),
            other => bail!("unexpected answer to an upload: {other:?}"),
        }
    }

    /// Runs `function` of `wasm` with JSON `args`. The component is uploaded
    /// only if the host lacks it. Events (the upload, log chunks) go to
    /// `on_event` as they happen.
    pub async fn submit(
        &self,
        wasm: &[u8],
        function: &str,
        args: &str,
        limits: TaskLimits,
        detach: bool,
        mut on_event: impl FnMut(SubmitEvent<'_>),
    ) -> anyhow::Result<Submitted> {
        let sha256 = fabric_host::components::sha256_hex(wasm);
        let request = Request::Submit {
            tenant: self.tenant.clone(),
            job: SubmitRequest {
                component: sha256.clone(),
                function: function.to_string(),
                args: args.to_string(),
                limits,
                detach,
            },
        };
        let mut uploaded = false;
        loop {
            let (mut send, mut recv) = self.open(&request).await?;
            let _ = send.finish();
            match Self::next(&mut recv).await? {
                Response::NeedComponent if !uploaded => {
                    self.upload(wasm, &sha256).await?;
                    uploaded = true;
                    on_event(SubmitEvent::Uploaded(wasm.len()));
                }
                Response::Accepted { job } if detach => return Ok(Submitted::Accepted(job)),
                Response::Accepted { .. } => {
                    let record = Self::follow(&mut recv, &mut |chunk| on_event(SubmitEvent::Log(chunk))).await?;
                    return Ok(Submitted::Finished(record));
                }
                other => bail!("unexpected answer to a submit: {other:?}"),
            }
        }
    }

    async fn follow(recv: &mut quinn::RecvStream, on_log: &mut impl FnMut(&[u8])) -> anyhow::Result<JobRecord> {
        loop {
            match Self::next(recv).await? {
                Response::Log(chunk) => on_log(&chunk),
                Response::Job(record) => return Ok(record),
                other => bail!("unexpected frame while following a job: {other:?}"),
            }
        }
    }

    /// The tenant's jobs, newest first.
    pub async fn jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        match self.call(&Request::Jobs { tenant: self.tenant.clone() }).await? {
            Response::Jobs(jobs) => Ok(jobs),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// One job's record.
    pub async fn status(&self, job: &str) -> anyhow::Result<JobRecord> {
        match self.call(&Request::Status { tenant: self.tenant.clone(), job: job.to_string() }).await? {
            Response::Job(record) => Ok(record),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Stops a job; returns its final record.
    pub async fn stop(&self, job: &str) -> anyhow::Result<JobRecord> {
        match self.call(&Request::Stop { tenant: self.tenant.clone(), job: job.to_string() }).await? {
            Response::Job(record) => Ok(record),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// The tenant's actors.
    pub async fn actors(&self) -> anyhow::Result<Vec<fabric_proto::ActorInfo>> {
        match self.call(&Request::Actors { tenant: self.tenant.clone() }).await? {
            Response::Actors(actors) => Ok(actors),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// The tenant's objects on every host.
    pub async fn objects(&self) -> anyhow::Result<Vec<fabric_proto::HostObjects>> {
        match self.call(&Request::Objects { tenant: self.tenant.clone() }).await? {
            Response::Objects(stores) => Ok(stores),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Unpins object `id`, wherever it is kept.
    pub async fn unpin(&self, id: &str) -> anyhow::Result<()> {
        match self.call(&Request::Unpin { tenant: self.tenant.clone(), id: id.to_string() }).await? {
            Response::Done => Ok(()),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Writes object `id`'s bytes to `out`, waiting until it is ready,
    /// wherever in the cluster it is kept; returns how many there were.
    /// The bytes come range by range, each checked against its checksum.
    pub async fn get_object(&self, id: &str, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
        let (mut offset, mut total) = (0, None);
        loop {
            // The first answer says the size; later ranges ask only for what is left.
            let len = total
                .map_or(fabric_proto::MAX_OBJECT_READ, |total: u64| fabric_proto::MAX_OBJECT_READ.min(total - offset));
            let request = Request::ObjectRead { tenant: self.tenant.clone(), id: id.to_string(), offset, len };
            let (mut send, mut recv) = self.open(&request).await?;
            let _ = send.finish();
            let (size, got, checksum) = match Self::next(&mut recv).await? {
                Response::ObjectRange { total, offset: at, len, checksum } if at == offset => (total, len, checksum),
                other => bail!("unexpected answer to an object read: {other:?}"),
            };
            if got > len || offset + got > size || (got == 0 && offset < size) || total.is_some_and(|t| t != size) {
                bail!("the host answered {got} bytes at {offset} of a {size}-byte object");
            }
            total = Some(size);
            let len = got;
            let mut chunk = vec![0; len as usize];
            recv.read_exact(&mut chunk).await.context("reading the object's bytes")?;
            if xxhash_rust::xxh3::xxh3_64(&chunk) != checksum {
                bail!("{len} bytes of object {id} at {offset} arrived corrupted (checksum mismatch)");
            }
            out.write_all(&chunk).context("writing the object's bytes")?;
            offset += len;
            if offset >= size {
                return Ok(size);
            }
        }
    }

    /// The end of deployment `name`'s log on every host that serves it, or
    /// what followed the positions in `since`.
    pub async fn deployment_logs(
        &self,
        name: &str,
        since: Vec<fabric_proto::LogPosition>,
    ) -> anyhow::Result<Vec<fabric_proto::DeploymentLog>> {
        let request = Request::DeploymentLogs { tenant: self.tenant.clone(), name: name.to_string(), since };
        match self.call(&request).await? {
            Response::DeploymentLogs(logs) => Ok(logs),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Calls a method of a named actor with JSON arguments; its JSON result.
    pub async fn actor_call(&self, actor: &str, method: &str, args: &str) -> anyhow::Result<String> {
        let request = Request::ActorCall {
            tenant: self.tenant.clone(),
            actor: actor.to_string(),
            method: method.to_string(),
            args: args.to_string(),
        };
        match self.call(&request).await? {
            Response::Value(json) => Ok(json),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Kills a named actor.
    pub async fn actor_kill(&self, actor: &str) -> anyhow::Result<()> {
        match self.call(&Request::ActorKill { tenant: self.tenant.clone(), actor: actor.to_string() }).await? {
            Response::Done => Ok(()),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// The cluster's members as the host sees them.
    pub async fn hosts(&self) -> anyhow::Result<Vec<fabric_proto::HostInfo>> {
        match self.call(&Request::Hosts).await? {
            Response::Hosts(hosts) => Ok(hosts),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Deploys `wasm` as `spec` says (its `component` is filled in here),
    /// uploading the component only if the host lacks it; returns the
    /// recorded deployment and whether an upload happened.
    pub async fn deploy(
        &self,
        wasm: &[u8],
        mut spec: fabric_proto::DeploymentSpec,
    ) -> anyhow::Result<(fabric_proto::Deployment, bool)> {
        spec.component = fabric_host::components::sha256_hex(wasm);
        let request = Request::Deploy { tenant: self.tenant.clone(), spec };
        let mut uploaded = false;
        loop {
            match self.call(&request).await? {
                Response::NeedComponent if !uploaded => {
                    let Request::Deploy { spec, .. } = &request else { unreachable!("built above") };
                    self.upload(wasm, &spec.component).await?;
                    uploaded = true;
                }
                Response::Deployed(deployment) => return Ok((deployment, uploaded)),
                other => bail!("unexpected answer to a deploy: {other:?}"),
            }
        }
    }

    /// The tenant's deployments with their replicas on every host.
    pub async fn deployments(&self) -> anyhow::Result<Vec<fabric_proto::DeploymentInfo>> {
        match self.call(&Request::Deployments { tenant: self.tenant.clone() }).await? {
            Response::Deployments(all) => Ok(all),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Removes a deployment.
    pub async fn undeploy(&self, name: &str) -> anyhow::Result<()> {
        match self.call(&Request::Undeploy { tenant: self.tenant.clone(), name: name.to_string() }).await? {
            Response::Done => Ok(()),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Where the host's HTTP gateway listens, as reached from here: a
    /// gateway bound to every address (`0.0.0.0:8080`) is reached at the
    /// address this client reached the host at.
    pub async fn gateway(&self) -> anyhow::Result<SocketAddr> {
        let mut gateway: SocketAddr = match self.call(&Request::Gateway).await? {
            Response::Value(addr) => {
                addr.parse().with_context(|| format!("the host named a bad gateway address {addr}"))?
            }
            other => bail!("unexpected answer: {other:?}"),
        };
        let host = self.connection.remote_address().ip();
        if gateway.ip().is_unspecified() {
            gateway.set_ip(host);
        } else if gateway.ip().is_loopback() && !host.is_loopback() {
            bail!(
                "the host at {host} serves HTTP on {gateway} only, which cannot be reached from here \
                 (start it with `--http 0.0.0.0:PORT` to serve other machines)"
            );
        }
        Ok(gateway)
    }

    /// A job's log into `on_log`; with `follow`, until the job ends (then its
    /// final record is returned).
    pub async fn logs(
        &self,
        job: &str,
        follow: bool,
        mut on_log: impl FnMut(&[u8]),
    ) -> anyhow::Result<Option<JobRecord>> {
        let request = Request::Logs { tenant: self.tenant.clone(), job: job.to_string(), follow };
        let (mut send, mut recv) = self.open(&request).await?;
        let _ = send.finish();
        loop {
            match Self::next(&mut recv).await? {
                Response::Log(chunk) => on_log(&chunk),
                Response::End => return Ok(None),
                Response::Job(record) => return Ok(Some(record)),
                other => bail!("unexpected frame in a log: {other:?}"),
            }
        }
    }
}

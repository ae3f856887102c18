//! The client-facing QUIC server: one bidirectional stream per request.
//!
//! A malformed frame, an oversized upload or a client that vanishes ends
//! that stream with an error (when the client can still hear it); the
//! connection and the host carry on.

use crate::jobs::{dropped_note, JobEvent, JobHandle};
use crate::Host;
use fabric_proto::{
    read_frame, write_frame, ErrorKind, FabricError, Request, Response, MAX_COMPONENT_BYTES, MAX_FRAME,
};
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;

/// Binds a QUIC endpoint for `host` at `addr`, with the host's certificate.
pub fn bind(host: &Host, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::server(host.server_config()?, addr)?)
}

/// Serves clients on `endpoint` until it is closed.
pub async fn serve(host: Host, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let host = host.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            // A member presents a certificate from the cluster CA (the
            // verifier refused any other); CLI clients present none.
            let peer = connection.peer_identity().is_some();
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(handle_stream(host.clone(), peer, send, recv));
            }
        });
    }
}

/// How long a draining host waits for an answer to reach its reader.
const FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

async fn handle_stream(host: Host, peer: bool, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let request = read_frame::<_, Request>(&mut recv, MAX_FRAME).await;
    // A shutdown lets every request under way finish and its answer arrive.
    let _working = host.0.drain.work();
    let outcome = match request {
        // A forwarded HTTP request keeps both halves of the stream for its
        // bodies.
        Ok(Some(Request::PeerHttp { tenant, name, method, uri, headers })) if peer => {
            let head = crate::gateway::forward::PeerRequest { tenant, name, method, uri, headers };
            return crate::gateway::forward::serve(&host.0, head, send, recv).await;
        }
        Ok(Some(request)) => respond(&host, peer, request, &mut send, &mut recv).await,
        Ok(None) => Ok(()),
        Err(e) => Err(FabricError::new(ErrorKind::InvalidArgument, format!("bad request frame: {e}"))),
    };
    if let Err(error) = outcome {
        let _ = write_frame(&mut send, &Response::Error(error)).await;
    }
    let _ = send.finish();
    if host.0.drain.is_draining() {
        // The host is about to go: wait until the reader has it all.
        let _ = tokio::time::timeout(FLUSH, send.stopped()).await;
    }
}

fn gone(e: fabric_proto::WireError) -> FabricError {
    FabricError::new(ErrorKind::Unavailable, format!("client stream failed: {e}"))
}

async fn reply(send: &mut quinn::SendStream, response: &Response) -> Result<(), FabricError> {
    write_frame(send, response).await.map_err(gone)
}

async fn respond(
    host: &Host,
    peer: bool,
    request: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FabricError> {
    match request {
        Request::Ping => reply(send, &Response::Pong { host: host.id().to_string() }).await,
        Request::Upload { tenant, sha256, len } => {
            if len > MAX_COMPONENT_BYTES {
                return Err(FabricError::new(
                    ErrorKind::ResourceLimit,
                    format!("component of {len} bytes exceeds the limit of {MAX_COMPONENT_BYTES} bytes"),
                ));
            }
            // Grow with the bytes that actually arrive: a claimed length alone
            // must not make the host allocate.
            let mut bytes = Vec::new();
            (&mut *recv)
                .take(len)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| FabricError::new(ErrorKind::InvalidArgument, format!("upload failed: {e}")))?;
            if bytes.len() as u64 != len {
                return Err(FabricError::new(
                    ErrorKind::InvalidArgument,
                    format!("upload ended early: {} of {len} bytes arrived", bytes.len()),
                ));
            }
            host.add_component(&tenant, bytes, Some(&sha256)).await?;
            reply(send, &Response::Uploaded).await
        }
        Request::Submit { tenant, job } => {
            if !host.has_component(&tenant, &job.component) {
                return reply(send, &Response::NeedComponent).await;
            }
            let detach = job.detach;
            let mut handle = host.submit(&tenant, job).await?;
            reply(send, &Response::Accepted { job: handle.id.clone() }).await?;
            if detach {
                return Ok(());
            }
            stream_until_done(send, &mut handle).await
        }
        Request::Jobs { tenant } => reply(send, &Response::Jobs(host.jobs(&tenant).await?)).await,
        Request::Status { tenant, job } => reply(send, &Response::Job(host.status(&tenant, &job).await?)).await,
        Request::Stop { tenant, job } => reply(send, &Response::Job(host.stop(&tenant, &job).await?)).await,
        Request::Actors { tenant } => reply(send, &Response::Actors(host.actors(&tenant).await?)).await,
        Request::ActorCall { tenant, actor, method, args } => {
            reply(send, &Response::Value(host.actor_call(&tenant, &actor, &method, &args).await?)).await
        }
        Request::ActorKill { tenant, actor } => {
            host.actor_kill(&tenant, &actor).await?;
            reply(send, &Response::Done).await
        }
        Request::Hosts => reply(send, &Response::Hosts(host.hosts())).await,
        Request::Deploy { tenant, spec } => {
            if !host.has_component(&tenant, &spec.component) {
                return reply(send, &Response::NeedComponent).await;
            }
            reply(send, &Response::Deployed(host.deploy(&tenant, spec).await?)).await
        }
        Request::Deployments { tenant } => reply(send, &Response::Deployments(host.deployments(&tenant).await?)).await,
        Request::Undeploy { tenant, name } => {
            host.undeploy(&tenant, &name).await?;
            reply(send, &Response::Done).await
        }
        Request::Gateway => match host.gateway() {
            Some(addr) => reply(send, &Response::Value(addr.to_string())).await,
            None => Err(FabricError::new(ErrorKind::Unavailable, "this host serves no HTTP gateway")),
        },
        Request::PeerRun { .. }
        | Request::FetchComponent { .. }
        | Request::PeerActorCreate { .. }
        | Request::PeerActorAsks { .. }
        | Request::PeerActorKill { .. }
        | Request::PeerJobEnded { .. }
        | Request::PeerDeploymentsChanged
        | Request::PeerLog { .. }
        | Request::PeerActors { .. }
        | Request::PeerObjectRead { .. }
        | Request::PeerObjects { .. }
        | Request::PeerDeploymentLogs { .. }
        | Request::PeerReplicas { .. }
        | Request::PeerHttp { .. }
        | Request::PeerRelease { .. }
        | Request::PeerPin { .. }
            if !peer =>
        {
            Err(FabricError::new(
                ErrorKind::InvalidArgument,
                "host-to-host requests need a certificate from the cluster's CA",
            ))
        }
        Request::PeerActorCreate { origin, tenant, job, component, class, args, spec, get_or_create } => {
            crate::validate_name("tenant", &tenant)?;
            let answer = crate::remote::actors::serve_create(
                &host.0,
                &origin,
                &tenant,
                &job,
                &component,
                class,
                args,
                spec,
                get_or_create,
            )
            .await?;
            reply(send, &answer).await
        }
        Request::PeerActorAsks { tenant, actor, origin } => {
            let id = crate::remote::actors::parse_id(&actor)?;
            crate::remote::asks::serve(&host.0, &tenant, id, &origin, send, recv).await
        }
        Request::PeerActorKill { tenant, actor } => {
            crate::validate_name("tenant", &tenant)?;
            crate::remote::actors::kill(&host.0, &tenant, crate::remote::actors::parse_id(&actor)?).await?;
            reply(send, &Response::Done).await
        }
        Request::PeerActors { tenant } => reply(send, &Response::Actors(host.local_actors(&tenant)?)).await,
        Request::PeerReplicas { tenant } => reply(send, &Response::Replicas(host.local_replicas(&tenant)?)).await,
        Request::PeerDeploymentLogs { tenant, name, since } => {
            reply(send, &Response::DeploymentLogs(host.local_deployment_logs(&tenant, &name, &since)?)).await
        }
        Request::DeploymentLogs { tenant, name, since } => {
            reply(send, &Response::DeploymentLogs(host.deployment_logs(&tenant, &name, since).await?)).await
        }
        Request::PeerHttp { .. } => {
            Err(FabricError::new(ErrorKind::Internal, "a forwarded request reached the wrong handler"))
        }
        Request::PeerRelease { tenant, ids } => {
            crate::validate_name("tenant", &tenant)?;
            let ids: Vec<crate::objects::ObjectId> = ids.into_iter().map(Into::into).collect();
            host.0.objects.release(&tenant.into(), &ids);
            reply(send, &Response::Done).await
        }
        Request::PeerPin { tenant, ids, pin, strict } => {
            crate::validate_name("tenant", &tenant)?;
            if ids.len() > fabric_proto::MAX_IDS_PER_FRAME {
                return Err(FabricError::new(
                    ErrorKind::InvalidArgument,
                    format!("a pin names at most {} objects", fabric_proto::MAX_IDS_PER_FRAME),
                ));
            }
            let ids: Vec<crate::objects::ObjectId> = ids.into_iter().map(Into::into).collect();
            let group = crate::objects::transfer::serve_pin(&host.0, &tenant.into(), &ids, pin, strict);
            for frame in crate::objects::id_frames(group.parts, Response::PinParts) {
                reply(send, &frame).await?;
            }
            match group.error {
                Some(error) => Err(error),
                None => reply(send, &Response::Done).await,
            }
        }
        Request::Unpin { tenant, id } => {
            crate::validate_name("tenant", &tenant)?;
            let id = crate::objects::transfer::parse_id(&id)?;
            crate::objects::transfer::set_pinned(&host.0, &tenant.into(), id, false, true).await?;
            reply(send, &Response::Done).await
        }
        Request::ObjectRead { tenant, id, offset, len } => {
            crate::objects::transfer::serve_client_read(&host.0, &tenant, &id, offset, len, send).await
        }
        Request::PeerDeploymentsChanged => {
            crate::deployments::sync(&host.0).await?;
            reply(send, &Response::Done).await
        }
        Request::PeerJobEnded { tenant, job } => {
            crate::remote::visit_ended(&host.0, &tenant, &job);
            reply(send, &Response::Done).await
        }
        Request::PeerLog { tenant, job, chunk } => {
            host.0.append_to_log(&tenant, &job, &chunk)?;
            reply(send, &Response::Done).await
        }
        Request::PeerObjectRead { tenant, id, offset, len, reader, no_copy_at } => {
            let asker = crate::objects::transfer::Asker { reader: &reader, no_copy_at: &no_copy_at };
            crate::objects::transfer::serve_read(&host.0, &tenant, id, offset, len, asker, send).await
        }
        Request::PeerObjects { tenant } => {
            crate::validate_name("tenant", &tenant)?;
            reply(send, &Response::Objects(vec![crate::objects::transfer::local_usage(&host.0, &tenant)])).await
        }
        Request::Objects { tenant } => {
            reply(send, &Response::Objects(crate::objects::transfer::cluster_usage(&host.0, &tenant).await?)).await
        }
        Request::PeerRun { origin, tenant, job, component, function, args, limits, resources } => {
            let request = crate::remote::PeerRun { origin, tenant, job, component, function, args, limits, resources };
            crate::remote::serve_run(host, request, send).await
        }
        Request::FetchComponent { tenant, sha256 } => {
            let bytes = host.component_bytes(&tenant, &sha256).await?;
            reply(send, &Response::Component { len: bytes.len() as u64 }).await?;
            send.write_all(&bytes).await.map_err(|e| gone(fabric_proto::WireError::Io(e.into())))
        }
        Request::Logs { tenant, job, follow } => {
            let follow_state = host.logs(&tenant, &job).await?;
            reply(send, &Response::Log(follow_state.snapshot)).await?;
            match (follow, follow_state.live) {
                (true, Some(mut job)) => stream_until_done(send, &mut job).await,
                _ => reply(send, &Response::End).await,
            }
        }
    }
}

/// Forwards log chunks until the job ends, then its final record.
async fn stream_until_done(send: &mut quinn::SendStream, job: &mut JobHandle) -> Result<(), FabricError> {
    loop {
        match job.next_event().await {
            JobEvent::Log(chunk) => reply(send, &Response::Log(chunk.to_vec())).await?,
            JobEvent::Dropped(n) => reply(send, &Response::Log(dropped_note(n).into_bytes())).await?,
            JobEvent::Done(Some(record)) => return reply(send, &Response::Job(record)).await,
            JobEvent::Done(None) => {
                return Err(FabricError::new(ErrorKind::Unavailable, "the host stopped before the job ended"))
            }
        }
    }
}

//! The HTTP gateway every host serves (hyper; HTTP/1.1 and HTTP/2 over
//! cleartext, told apart per connection).
//!
//! Any host takes any request: it finds the deployment by the longest route
//! that prefixes the path in its copy of the deployments table, and runs
//! the request on one of that deployment's replicas here, or, when it has
//! none free, on a peer's ([`forward`]).
//!
//! - `wasi:http` components get the request as it came, body streaming in
//!   and out ([`wasi_http`]).
//! - Task components built with the SDK are called as
//!   `POST /v1/call/<deployment>/<function>` with JSON arguments, and their
//!   JSON result comes back ([`call`]).
//! - Failures are HTTP statuses with a short plain-text body saying why:
//!   404 no such route or deployment, 413 body over the deployment's limit,
//!   429 the replicas' queue is full, 500 the handler trapped, 502 the
//!   peer serving it was lost, 503 no instance could be started (or no host
//!   can run one), 504 the handler ran past its timeout.
//! - Every answer from a replica names the host that served it in
//!   `x-fabric-host` and the deployment's version in `x-fabric-version`.
//!
//! The tenant of a `/v1/call` request is its `x-fabric-tenant` header
//! (`default` when absent); a route belongs to the tenant that deployed it.

pub mod batch;
pub mod call;
pub mod forward;
pub mod wasi_http;

use crate::deployments::Deployed;
use crate::{Host, HostInner};
use bytes::Bytes;
use fabric_proto::{DeploymentKind, ErrorKind, FabricError};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;

/// The body of every gateway request and response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// The header naming a `/v1/call` request's tenant.
pub const TENANT_HEADER: &str = "x-fabric-tenant";

/// The header carrying the version of the deployment that answered.
pub const VERSION_HEADER: &str = "x-fabric-version";

/// The header naming the host whose replica answered.
pub const HOST_HEADER: &str = "x-fabric-host";

/// Binds the gateway's listener.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves HTTP on `listener` until the task is dropped or the host drains:
/// then it stops accepting (the listener closes, so new connections are
/// refused rather than left waiting) and each connection closes after the
/// request it is answering (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY).
pub async fn serve(host: Host, listener: tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        host.0.set_gateway(addr);
    }
    let drain = host.0.drain.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("gateway accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let host = host.0.clone();
        let working = drain.work();
        let drain = drain.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let host = host.clone();
                let request = request.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
                async move { Ok::<_, Infallible>(handle(&host, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            // A client that goes away mid-request is its own business.
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = drain.started() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(working);
        });
    }
}

/// Answers one request that came to this host's gateway.
pub async fn handle(host: &Arc<HostInner>, request: Request<Body>) -> Response<Body> {
    let path = request.uri().path();
    let deployed = if call::is_call_path(path) {
        match call::target(host, &request) {
            Ok(deployed) => deployed,
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        match host.deployments.route(path) {
            Some(deployed) => deployed,
            None => return text(StatusCode::NOT_FOUND, format!("no deployment serves {path}")),
        }
    };
    match forward::choose(host, &deployed) {
        forward::Route::Here => serve_here(host, deployed, request).await,
        forward::Route::Peer(peer) => forward::to_peer(host, &deployed, peer, request).await,
        forward::Route::Nowhere => forward::nowhere(&deployed),
    }
}

/// Serves `request` with `deployed`'s replicas on this host.
pub async fn serve_here(host: &Arc<HostInner>, deployed: Arc<Deployed>, request: Request<Body>) -> Response<Body> {
    let mut response = match deployed.record.kind {
        DeploymentKind::Http => wasi_http::handle(host, deployed.clone(), request).await,
        DeploymentKind::Tasks => call::handle(host, deployed.clone(), request).await,
    };
    let version = hyper::header::HeaderValue::from(deployed.record.version);
    let headers = response.headers_mut();
    headers.insert(VERSION_HEADER, version);
    headers.insert(HOST_HEADER, host.host_header.clone());
    response
}

/// Waits until `deadline` for a turn on one of `deployed`'s replicas here,
/// then for the resources a request holds while it runs.
pub async fn admit(
    host: &HostInner,
    deployed: &Deployed,
    deadline: tokio::time::Instant,
) -> Result<(crate::deployments::replicas::Turn, crate::resources::Held), FabricError> {
    let late = || {
        FabricError::new(
            ErrorKind::TimedOut,
            format!("no replica was free within the timeout of {:?}", deployed.timeout()),
        )
    };
    let turn = tokio::time::timeout_at(deadline, deployed.replicas.acquire()).await.map_err(|_| late())??;
    let needs = &deployed.record.spec.demand.resources;
    let held = tokio::time::timeout_at(deadline, host.resources.hold(needs)).await.map_err(|_| late())??;
    Ok((turn, held))
}

/// A failure in the shape `deployed`'s callers expect: JSON
/// `{"error": {"kind", "message"}}` for task deployments (`/v1/call`), plain
/// text for `wasi:http` ones.
pub fn failure(deployed: &Deployed, status: StatusCode, error: &FabricError) -> Response<Body> {
    match deployed.record.kind {
        DeploymentKind::Tasks => call::error_json(status, error),
        DeploymentKind::Http => text(status, error.message.clone()),
    }
}

/// A plain-text response (a newline is added).
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A body of `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// The status that says what went wrong with a request's handling.
pub fn status_of(error: &FabricError) -> StatusCode {
    match error.kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable | ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Trapped
        | ErrorKind::Failed
        | ErrorKind::ActorDead
        | ErrorKind::Internal
        | ErrorKind::ResourceLimit => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A request over the deployment's body limit, told by its length.
pub fn declared_too_large<B>(request: &Request<B>, limit: u64) -> Option<Response<Body>> {
    let length = request.headers().get(hyper::header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    (length > limit).then(|| too_large(limit))
}

/// 413 for a body over `limit`.
pub fn too_large(limit: u64) -> Response<Body> {
    text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds this deployment's limit of {limit} bytes"))
}

/// The status for a replica that could not be had: 429 when the queue is
/// full, 504 when none came free in time, 503 otherwise.
pub fn refused_status(error: &FabricError) -> StatusCode {
    if error.kind == ErrorKind::ResourceLimit {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        status_of(error)
    }
}

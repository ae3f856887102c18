//! `POST /v1/call/<deployment>/<function>`: a task of a deployed SDK
//! component called over HTTP, so a service reaches any task without
//! writing HTTP code. The body is the JSON arguments (an object keyed by
//! parameter name, or an array; empty means `{}`), the answer the task's
//! JSON result, or `{"error": {"kind", "message"}}` with the status that
//! fits. `<function>` may be left out for `main`.
//!
//! The call runs as [`crate::Host::call`] does (a job of its own, without a
//! record, whose sub-tasks and objects end with it), admitted by the
//! deployment's replicas like any request; what it prints, and why it
//! failed, go to the deployment's log (`fabric logs --deployment`).

use super::{admit, declared_too_large, refused_status, status_of, too_large, Body, TENANT_HEADER};
use crate::deployments::Deployed;
use crate::HostInner;
use bytes::Bytes;
use fabric_proto::{DeploymentKind, ErrorKind, FabricError, DEFAULT_TENANT};
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// Whether `path` is under `/v1/call`, answered by this module (errors
/// as JSON) rather than by a route.
pub fn is_call_path(path: &str) -> bool {
    path == "/v1/call" || path.starts_with("/v1/call/")
}

/// The deployment a `/v1/call/...` request names, or the answer that
/// refuses it.
pub fn target(host: &HostInner, request: &Request<Body>) -> Result<Arc<Deployed>, Refusal> {
    let (tenant, name, _) = parse(request)?;
    let deployed = host.deployments.named(&tenant, &name).ok_or_else(|| {
        FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no deployment `{name}`"))
    })?;
    if deployed.record.kind != DeploymentKind::Tasks {
        let route = deployed.record.spec.route.clone().unwrap_or_default();
        return Err(invalid(format!(
            "deployment `{name}` is a wasi:http component: send requests to its route {route}"
        )));
    }
    Ok(deployed)
}

/// Answers a `/v1/call/...` request with `deployed` (its [`target`]) here.
pub async fn handle(host: &Arc<HostInner>, deployed: Arc<Deployed>, request: Request<Body>) -> Response<Body> {
    call(host, deployed, request).await.unwrap_or_else(Refusal::into_response)
}

/// Why a call is not made.
pub enum Refusal {
    /// An error, answered as JSON with the status that fits.
    Error(FabricError),
    /// The answer itself.
    Response(Box<Response<Body>>),
}

impl Refusal {
    /// The answer that says so.
    pub fn into_response(self) -> Response<Body> {
        match self {
            Refusal::Error(error) => error_json(status_of(&error), &error),
            Refusal::Response(response) => *response,
        }
    }
}

impl From<FabricError> for Refusal {
    fn from(error: FabricError) -> Self {
        Refusal::Error(error)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Error(FabricError::new(ErrorKind::InvalidArgument, message))
}

/// The tenant, deployment and function a call names.
fn parse(request: &Request<Body>) -> Result<(String, String, String), Refusal> {
    if request.method() != Method::POST {
        let mut response =
            error_json(StatusCode::METHOD_NOT_ALLOWED, &FabricError::new(ErrorKind::InvalidArgument, "call with POST"));
        response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("POST"));
        return Err(Refusal::Response(Box::new(response)));
    }
    let tenant = match request.headers().get(TENANT_HEADER) {
        Some(value) => value.to_str().map_err(|_| invalid("the tenant header is not text"))?.to_string(),
        None => DEFAULT_TENANT.to_string(),
    };
    crate::validate_name("tenant", &tenant)?;
    let rest = request.uri().path().strip_prefix("/v1/call/").unwrap_or("");
    let (name, function) = rest.split_once('/').unwrap_or((rest, "main"));
    if name.is_empty() || function.is_empty() || function.contains('/') {
        return Err(invalid("call a task as POST /v1/call/<deployment>/<function>"));
    }
    Ok((tenant, name.to_string(), function.to_string()))
}

async fn call(
    host: &Arc<HostInner>,
    deployed: Arc<Deployed>,
    request: Request<Body>,
) -> Result<Response<Body>, Refusal> {
    let (_, _, function) = parse(&request)?;
    let limit = deployed.record.spec.max_body_bytes;
    if let Some(response) = declared_too_large(&request, limit) {
        return Err(Refusal::Response(Box::new(response)));
    }
    // One deadline for reading the body, waiting for a replica and the
    // call; the body is read before a replica is taken, so a slow upload
    // holds no replica.
    let timeout = deployed.timeout();
    let started = tokio::time::Instant::now();
    let deadline = started.checked_add(timeout).unwrap_or(started);
    let late =
        || FabricError::new(ErrorKind::TimedOut, format!("the call did not finish within its timeout of {timeout:?}"));
    let read = http_body_util::Limited::new(request.into_body(), limit as usize).collect();
    let body = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal::Response(Box::new(too_large(limit))))
        }
        Ok(Err(e)) => return Err(invalid(format!("cannot read the request body: {e}"))),
        Err(_) => return Err(late().into()),
    };
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| invalid("the body is not UTF-8 JSON"))?;
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
        text.to_string()
    };
    let result = match &deployed.record.spec.batch {
        Some(batching) if batching.function == function => {
            let answer = super::batch::Batcher::add(host, &deployed, batching, &function, args);
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result.map_err(Refusal::from)?.into_bytes(),
                Ok(Err(_)) => return Err(FabricError::new(ErrorKind::Internal, "the batch was dropped").into()),
                Err(_) => return Err(late().into()),
            }
        }
        _ => invoke(host, &deployed, &function, &args, deadline).await?,
    };
    let mut response = Response::new(super::full(Bytes::from(result)));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

/// How a call through a deployment's replicas failed.
#[derive(Clone, Debug)]
pub enum CallError {
    /// No replica could be had (429 for a full queue, 504 past the deadline).
    Refused(FabricError),
    /// The call itself failed.
    Failed(FabricError),
}

impl From<CallError> for Refusal {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Refused(e) => Refusal::Response(Box::new(error_json(refused_status(&e), &e))),
            CallError::Failed(e) => Refusal::Error(e),
        }
    }
}

/// Calls `function` of `deployed` with JSON `args` on one of its replicas,
/// all by `deadline`: the task's JSON result. What the call prints goes to
/// the deployment's log, and so does why it failed.
pub async fn invoke(
    host: &Arc<HostInner>,
    deployed: &Deployed,
    function: &str,
    args: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, CallError> {
    let turn = admit(host, deployed, deadline).await.map_err(CallError::Refused)?;
    let mut limits = deployed.record.spec.limits.clone();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    limits.timeout_ms = Some((left.as_millis() as u64).max(1));
    let host = crate::Host(host.clone());
    let (tenant, sha256, log) = (&deployed.record.tenant, &deployed.component.sha256, deployed.log.clone());
    let isolated = deployed.record.spec.isolate;
    let outcome = host.call_logged(tenant, sha256, function, args, limits, log, isolated).await;
    drop(turn);
    if let Err(error) = &outcome {
        deployed.log.append(format!("[fabric] call of `{function}` failed: {error}\n").as_bytes());
    }
    outcome.map_err(CallError::Failed)
}

/// `{"error": {"kind", "message"}}` with `status`.
pub(crate) fn error_json(status: StatusCode, error: &FabricError) -> Response<Body> {
    let body = serde_json::json!({ "error": { "kind": error.kind.as_str(), "message": error.message } });
    let mut response = Response::new(super::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

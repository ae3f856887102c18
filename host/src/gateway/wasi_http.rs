//! Serving a request with a `wasi:http/incoming-handler` component.
//!
//! The request waits for a replica (bounded by the request's timeout), then
//! takes an idle instance or starts one, and the handler runs on a task of
//! its own: the response head comes back as soon as the guest sets it,
//! while the guest may go on writing the body. When the call returns
//! cleanly the instance goes back to the deployment's idle set; one that
//! trapped or ran out of time is torn down, so a bad request never leaves a
//! broken instance behind for the next.

use super::{admit, declared_too_large, refused_status, status_of, text, too_large, Body, VERSION_HEADER};
use crate::deployments::replicas::{HttpInstance, Turn};
use crate::deployments::Deployed;
use crate::resources::Held;
use crate::sandbox;
use crate::HostInner;
use bytes::Bytes;
use fabric_proto::FabricError;
use hyper::body::{Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::WasiHttpView;

/// How a handler's call ended.
enum Ended {
    /// It returned.
    Returned,
    /// It trapped or ran out of CPU.
    Failed(FabricError),
    /// It ran past the request's timeout.
    TimedOut,
}

/// Answers `request` with `deployed`.
pub async fn handle(host: &Arc<HostInner>, deployed: Arc<Deployed>, request: Request<Body>) -> Response<Body> {
    let limit = deployed.record.spec.max_body_bytes;
    if let Some(response) = declared_too_large(&request, limit) {
        return response;
    }
    let timeout = deployed.timeout();
    let deadline = Instant::now().checked_add(timeout).unwrap_or_else(Instant::now);
    let turn = match admit(host, &deployed, deadline).await {
        Ok(turn) => turn,
        Err(e) => return text(refused_status(&e), e.message),
    };
    let mut instance = match deployed.replicas.take_idle() {
        Some(instance) => instance,
        None => match deployed.instantiate(host).await {
            Ok(instance) => instance,
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, e.message),
        },
    };
    instance.store.data_mut().set_limits(deployed.memory_bytes(), deployed.cpu());
    instance.store.set_epoch_deadline(1);

    let exceeded = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = Limited { inner: body, left: limit, limit, exceeded: exceeded.clone() };
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let resources = {
        let mut http = instance.store.data_mut().http();
        http.new_incoming_request(Scheme::Http, Request::from_parts(parts, body))
            .and_then(|req| Ok((req, http.new_response_outparam(head_tx)?)))
    };
    let (req, out) = match resources {
        Ok(pair) => pair,
        Err(e) => {
            // Whatever it pushed into the instance's table stays there: let
            // the instance go rather than reuse it.
            host.instances.reap(Box::new(instance));
            return text(StatusCode::BAD_REQUEST, format!("cannot hand the request to the handler: {e:#}"));
        }
    };
    let call = tokio::spawn(run(host.clone(), deployed.clone(), instance, req, out, deadline, turn));

    let response = tokio::select! {
        head = head_rx => match head {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, format!("the handler answered with an error: {code:?}"))),
            Err(_) => Err(match call.await {
                Ok(Ended::Returned) => text(StatusCode::INTERNAL_SERVER_ERROR, "the handler returned without a response"),
                Ok(Ended::Failed(e)) => text(status_of(&e), format!("the handler failed: {e}")),
                Ok(Ended::TimedOut) => timed_out(timeout),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("the handler's task failed: {e}")),
            }),
        },
        _ = tokio::time::sleep_until(deadline) => Err(timed_out(timeout)),
    };
    if exceeded.load(Ordering::Relaxed) {
        return too_large(limit);
    }
    match response {
        Ok(mut response) => {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&deployed.record.version.to_string()) {
                response.headers_mut().insert(VERSION_HEADER, value);
            }
            response
        }
        Err(response) => response,
    }
}

fn timed_out(timeout: std::time::Duration) -> Response<Body> {
    text(StatusCode::GATEWAY_TIMEOUT, format!("the handler did not answer within its timeout of {timeout:?}"))
}

/// Runs the handler to its end, then keeps or tears down the instance and
/// lets the replica go.
async fn run(
    host: Arc<HostInner>,
    deployed: Arc<Deployed>,
    mut instance: HttpInstance,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    deadline: Instant,
    turn: (Turn, Held),
) -> Ended {
    let HttpInstance { store, proxy, .. } = &mut instance;
    let call = proxy.wasi_http_incoming_handler().call_handle(&mut *store, req, out);
    let outcome = tokio::time::timeout_at(deadline, call).await;
    let ended = match outcome {
        Ok(Ok(())) => {
            keep_or_reap(&host, &deployed, instance);
            Ended::Returned
        }
        Ok(Err(err)) => {
            let error = sandbox::classify(err, &instance.store.data().stderr_tail());
            deployed.log.append(format!("[fabric] request failed: {error}\n").as_bytes());
            host.instances.reap(Box::new(instance));
            Ended::Failed(error)
        }
        Err(_) => {
            deployed.log.append(b"[fabric] request ran past its timeout; its instance was stopped\n");
            host.instances.reap(Box::new(instance));
            Ended::TimedOut
        }
    };
    drop(turn);
    ended
}

fn keep_or_reap(host: &HostInner, deployed: &Deployed, instance: HttpInstance) {
    if let Some(spent) = deployed.replicas.give_back(instance) {
        host.instances.reap(Box::new(spent));
    }
}

/// The request body, cut off with an error past the deployment's limit
/// (the gateway then answers 413 whatever the guest did with the error).
struct Limited {
    inner: Body,
    left: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.left {
                        this.left = 0;
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(
                            this.limit,
                        )))));
                    }
                    this.left -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

//! Serving a request with a `wasi:http/incoming-handler` component.
//!
//! The request waits for a replica (bounded by the request's timeout), then
//! takes an idle instance or starts one, and the handler is called inline:
//! most handlers set their response and finish their body without waiting,
//! so by the time the head is read the call is over, the body goes out
//! whole with its length (one write), and nothing is spawned. A handler
//! still running when its head arrives goes on on a task of its own while
//! its body streams. When the call returns cleanly the instance goes back
//! to the deployment's idle set; one that trapped or ran out of time is
//! torn down, so a bad request never leaves a broken instance behind for
//! the next.

use super::{admit, declared_too_large, refused_status, status_of, text, too_large, Body};
use crate::deployments::replicas::{HttpInstance, Turn};
use crate::deployments::Deployed;
use crate::resources::Held;
use crate::sandbox;
use crate::HostInner;
use bytes::Bytes;
use fabric_proto::FabricError;
use futures_util::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::Error as HttpError;
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
    let (head_tx, mut head_rx) = tokio::sync::oneshot::channel();
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
    // The call runs inline first: a handler that answers without waiting
    // (most do) has finished by the time its head is read, so its whole
    // body is sent in one write with a length, and no task is spawned.
    // One still running after that goes on on a task of its own while its
    // body streams.
    let mut call = RunToEnd(Some(Box::pin(run(host.clone(), deployed.clone(), instance, req, out, deadline, turn))));
    let first = tokio::select! {
        biased;
        head = &mut head_rx => First::Head(head.ok()),
        ended = &mut call => First::Ended(ended),
        _ = tokio::time::sleep_until(deadline) => First::Late,
    };
    let (head, ended) = match first {
        First::Late => {
            // It stops at the same deadline and tears its instance down.
            drop(call);
            return timed_out(timeout);
        }
        First::Ended(ended) => (head_rx.try_recv().ok(), Some(ended)),
        First::Head(head) => (head, (&mut call).now_or_never()),
    };
    let response = match (head, ended) {
        (Some(Ok(response)), Some(_)) => Ok(buffered(response)),
        // Still running: it goes on on a task of its own (see `RunToEnd`).
        (Some(Ok(response)), None) => {
            drop(call);
            Ok(response)
        }
        (Some(Err(code)), _) => {
            drop(call);
            Err(text(StatusCode::INTERNAL_SERVER_ERROR, format!("the handler answered with an error: {code:?}")))
        }
        (None, ended) => Err(match ended {
            Some(ended) => failed(ended, timeout),
            None => failed(call.await, timeout),
        }),
    };
    if exceeded.load(Ordering::Relaxed) {
        return too_large(limit);
    }
    match response {
        Ok(response) => response,
        Err(response) => response,
    }
}

/// A handler's call that runs to its end whatever happens to the request:
/// dropped unfinished (the response goes on streaming, the deadline passed,
/// or the client went away and hyper dropped the request), it goes on on a
/// task of its own, so its instance is kept or reaped as after any call
/// rather than dropped mid-call on this task.
struct RunToEnd<F: Future<Output = Ended> + Send + 'static>(Option<Pin<Box<F>>>);

impl<F: Future<Output = Ended> + Send + 'static> Future for RunToEnd<F> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let Some(call) = self.0.as_mut() else {
            debug_assert!(false, "a finished call was polled again");
            return Poll::Pending;
        };
        let ended = std::task::ready!(call.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(ended)
    }
}

impl<F: Future<Output = Ended> + Send + 'static> Drop for RunToEnd<F> {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(call);
            }
        }
    }
}

/// What came first while a handler ran.
enum First {
    /// Its response head (none: it dropped the outparam).
    Head(Option<Result<Response<Body>, wasmtime_wasi_http::p2::bindings::http::types::ErrorCode>>),
    /// Its end.
    Ended(Ended),
    /// The deadline.
    Late,
}

/// The answer for a handler that ended without a response.
fn failed(ended: Ended, timeout: std::time::Duration) -> Response<Body> {
    match ended {
        Ended::Returned => text(StatusCode::INTERNAL_SERVER_ERROR, "the handler returned without a response"),
        Ended::Failed(e) => text(status_of(&e), format!("the handler failed: {e}")),
        Ended::TimedOut => timed_out(timeout),
    }
}

/// The response of a handler that has returned: its body is all written,
/// so it goes out whole with its length (one write instead of chunks).
/// Whatever is not ready at once (it should all be) still streams.
fn buffered(response: Response<Body>) -> Response<Body> {
    let (mut parts, mut body) = response.into_parts();
    let mut data = bytes::BytesMut::new();
    loop {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(trailers) => {
                    return streamed(parts, vec![Ok(Frame::data(data.freeze())), Ok(trailers)], Some(body))
                }
            },
            Some(Some(Err(e))) => return streamed(parts, vec![Ok(Frame::data(data.freeze())), Err(e)], None),
            Some(None) => break,
            None => return streamed(parts, vec![Ok(Frame::data(data.freeze()))], Some(body)),
        }
    }
    parts.headers.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(data.len()));
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    Response::from_parts(parts, super::full(data.freeze()))
}

/// A response whose body is `first`, then what is left of `rest`.
fn streamed(
    parts: hyper::http::response::Parts,
    first: Vec<Result<Frame<Bytes>, HttpError>>,
    rest: Option<Body>,
) -> Response<Body> {
    let first = futures_util::stream::iter(first);
    let body = match rest {
        Some(rest) => {
            http_body_util::StreamBody::new(first.chain(http_body_util::BodyStream::new(rest))).boxed_unsync()
        }
        None => http_body_util::StreamBody::new(first).boxed_unsync(),
    };
    Response::from_parts(parts, body)
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

//! Forwarding: a request this host has no free replica for goes to a peer
//! that has one, so any host takes any request and load spreads over the
//! cluster.
//!
//! - **When.** A host serves a request itself while its replicas of the
//!   deployment have room (busy plus queued below this host's cap, see
//!   [`crate::deployments::replica_cap`]). A host whose cap is zero (it
//!   cannot meet the deployment's demand: resources, pool, labels) forwards
//!   every request; one that is full forwards its overflow, which makes the
//!   peer's autoscaler add replicas there: scaling spreads across hosts.
//! - **Where.** Among the members that can run replicas, the one with the
//!   lowest share of its cap taken, as this host knows it: what it has
//!   forwarded there and not yet seen answered, plus the rest of the load
//!   the peer reported with its last answer to this host (every forwarded
//!   answer's head carries the peer's busy and queued requests of the
//!   deployment besides that one, as it found them), for [`REPORT_FRESH`]
//!   after it. So a peer busy with its own
//!   clients' requests, or another host's, is passed over once it has said
//!   so, without a round trip to ask (membership's load reports are
//!   per-host resources, and lag). When every peer is as full as this host
//!   knows, the request queues here instead (or, with no replica here at
//!   all, on the least loaded peer).
//! - **How.** One QUIC stream per request ([`Request::PeerHttp`]): the head
//!   as a frame, then the request body raw until the stream's end; back
//!   comes [`Response::HttpHead`] and the response body raw. Both bodies
//!   stream: neither side buffers a whole body. A forwarded request is
//!   served on the peer and never forwarded again, so a request crosses at
//!   most one hop. The peer applies the deployment's limits as if the
//!   request came to it (413, 429, 504 travel back as they are).
//! - **Loss.** A request whose peer cannot be reached, or is lost before its
//!   answer's head comes, is served by another host (here, or the next
//!   peer chosen without the lost ones) when it can be sent again: nothing
//!   of it was sent, or its body was small enough ([`REPLAYABLE_BODY`]) to
//!   be read whole before it went (a handler may thus run twice for one
//!   request, as with any retry after a lost host). A larger, streaming
//!   body is not kept: a peer lost before answering it gives 502 (one lost
//!   once its answer has begun leaves the client a body cut short).

use super::{failure, status_of, text, Body};
use crate::deployments::{replica_cap, Deployed};
use crate::HostInner;
use fabric_proto::{
    read_frame, write_frame, ErrorKind, FabricError, HostInfo, HttpHeader, Request, Response, MAX_FRAME,
};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long past the deployment's timeout a forwarder waits for the peer's
/// answer before it gives up on the peer (the peer answers 504 itself first).
const PEER_SLACK: Duration = Duration::from_secs(5);

/// How long a forwarder waits for a stream to a peer before it gives up on
/// it (and serves the request itself when it can).
const PEER_CONNECT: Duration = Duration::from_secs(1);

/// The application error code a stream is reset with when a body broke off.
const BODY_BROKEN: u32 = 1;

/// Largest chunk read from a stream at once.
const CHUNK: usize = 64 << 10;

/// Where a request is served.
pub enum Route {
    /// On this host's replicas.
    Here,
    /// On this peer's.
    Peer(HostInfo),
    /// Nowhere: no host can run a replica.
    Nowhere,
}

/// How long a load a peer reported counts in this host's choices.
pub const REPORT_FRESH: Duration = Duration::from_secs(1);

/// What this host knows of peers' load, by peer id and deployment (each
/// deployment has its own cap there): the requests it forwarded and has not
/// yet seen answered, and the rest of the load each peer last reported.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<PeerDeployment, PeerLoad>>>);

/// A peer's id, a tenant and a deployment name.
type PeerDeployment = (String, String, String);

/// One peer's load of one deployment, as this host knows it.
#[derive(Clone, Copy, Default)]
struct PeerLoad {
    /// Forwarded by this host, not yet answered.
    sent: u32,
    /// The requests besides this host's that the peer last reported busy
    /// or queued, and when.
    others: Option<(u32, Instant)>,
}

impl PeerLoad {
    /// The requests the peer has, as far as this host knows at `now`.
    fn estimate(&self, now: Instant) -> u32 {
        let others = self.others.filter(|(_, at)| now.duration_since(*at) < REPORT_FRESH).map_or(0, |(n, _)| n);
        self.sent.saturating_add(others)
    }

    /// Whether it says nothing any more (nothing sent, no fresh report).
    fn spent(&self, now: Instant) -> bool {
        self.estimate(now) == 0
    }
}

/// One forwarded request, counted until dropped (when its response body
/// ended).
struct Counted {
    inflight: InFlight,
    key: PeerDeployment,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.inflight.lock();
        if let Some(load) = map.get_mut(&self.key) {
            load.sent = load.sent.saturating_sub(1);
            if load.spent(Instant::now()) {
                map.remove(&self.key);
            }
        }
    }
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerDeployment, PeerLoad>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(peer: &str, deployed: &Deployed) -> PeerDeployment {
        (peer.to_string(), deployed.record.tenant.clone(), deployed.record.spec.name.clone())
    }

    /// Counts a request forwarded to `peer` until the returned guard drops.
    /// A pair counted for the first time (since its last went) first drops
    /// the pairs that say nothing any more (stale reports of idle pairs),
    /// so the map stays as small as what is in use, without a walk per
    /// request.
    fn count(&self, peer: &str, deployed: &Deployed) -> Counted {
        let key = Self::key(peer, deployed);
        let mut map = self.lock();
        if !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, load| !load.spent(now));
        }
        map.entry(key.clone()).or_default().sent += 1;
        drop(map);
        Counted { inflight: self.clone(), key }
    }

    /// The requests of `deployed` that `peer` has, as far as this host knows.
    fn estimate(&self, peer: &str, deployed: &Deployed) -> u32 {
        self.lock().get(&Self::key(peer, deployed)).map_or(0, |load| load.estimate(Instant::now()))
    }

    /// Takes in the `load` `peer` reported with an answer to a request this
    /// host forwarded (the requests it had besides that one when it came;
    /// that one is still counted in what this host sent): what this host's
    /// other requests there do not account for is the rest of the peer's
    /// load.
    fn report(&self, peer: &str, deployed: &Deployed, load: u32) {
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.entry(Self::key(peer, deployed)).or_default();
        let ours = entry.sent.saturating_sub(1);
        entry.others = Some((load.saturating_sub(ours), now));
    }
}

/// Where `deployed`'s next request should be served.
pub fn choose(host: &HostInner, deployed: &Deployed) -> Route {
    choose_avoiding(host, deployed, &[])
}

/// [`choose`] among peers other than `avoid` (hosts a request was lost on).
fn choose_avoiding(host: &HostInner, deployed: &Deployed, avoid: &[String]) -> Route {
    let counts = deployed.replicas.counts();
    if deployed.cap > 0 && counts.busy + counts.queued < deployed.cap {
        return Route::Here;
    }
    let local = host.local_info();
    let peers: Vec<(HostInfo, u32, u32)> = host
        .cluster
        .members(&local)
        .into_iter()
        .filter(|member| member.id != local.id && !avoid.contains(&member.id))
        .filter_map(|member| {
            let cap = replica_cap(&deployed.record.spec, &member);
            let load = host.forwarded.estimate(&member.id, deployed);
            (cap > 0).then_some((member, cap, load))
        })
        .collect();
    // Lowest share load/cap first (compared without division), then id.
    let best = peers.into_iter().min_by(|a, b| {
        (u64::from(a.2) * u64::from(b.1)).cmp(&(u64::from(b.2) * u64::from(a.1))).then_with(|| a.0.id.cmp(&b.0.id))
    });
    match best {
        Some((peer, cap, load)) if deployed.cap == 0 || load < cap => Route::Peer(peer),
        _ if deployed.cap > 0 => Route::Here,
        _ => Route::Nowhere,
    }
}

/// 503 for a deployment no member can run.
pub fn nowhere(deployed: &Deployed) -> hyper::Response<Body> {
    let why = format!(
        "no host in the cluster can run a replica of {} (it needs {})",
        deployed.describe(),
        crate::deployments::describe_demand(&deployed.record.spec.demand)
    );
    failure(deployed, StatusCode::SERVICE_UNAVAILABLE, &FabricError::new(ErrorKind::Unavailable, why))
}

/// 502 saying why the hop to a peer failed, in the caller's shape.
fn bad_gateway(deployed: &Deployed, why: String) -> hyper::Response<Body> {
    failure(deployed, StatusCode::BAD_GATEWAY, &FabricError::new(ErrorKind::Unavailable, why))
}

/// Request bodies up to this size are read whole before they are
/// forwarded, so that a request whose peer is lost before answering can be
/// served elsewhere (as one without a body always can).
pub const REPLAYABLE_BODY: u64 = 64 << 10;

/// Serves `request` on `peer` and streams its answer back. A peer lost
/// before it answers (or that cannot be reached) leaves the request to
/// another host, chosen as at first but never a host it was lost on, when
/// nothing of its body was sent or the body was small enough to keep
/// ([`REPLAYABLE_BODY`]); otherwise the answer is 502.
pub async fn to_peer(
    host: &Arc<HostInner>,
    deployed: &Arc<Deployed>,
    peer: HostInfo,
    request: hyper::Request<Body>,
) -> hyper::Response<Body> {
    // One deadline for reading a kept body and for the answer.
    let deadline =
        tokio::time::Instant::now().checked_add(deployed.timeout()).unwrap_or_else(tokio::time::Instant::now);
    let replayable = hyper::body::Body::size_hint(request.body()).upper().is_some_and(|n| n <= REPLAYABLE_BODY);
    let (mut request, kept) = if replayable {
        let (parts, body) = request.into_parts();
        let collected = tokio::time::timeout_at(deadline, body.collect()).await;
        let bytes = match collected {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                let why = FabricError::new(ErrorKind::InvalidArgument, format!("the request body broke off: {e}"));
                return failure(deployed, StatusCode::BAD_REQUEST, &why);
            }
            Err(_) => {
                let why = format!("the request body did not arrive within the timeout of {:?}", deployed.timeout());
                return failure(deployed, StatusCode::GATEWAY_TIMEOUT, &FabricError::new(ErrorKind::TimedOut, why));
            }
        };
        let head = hyper::Request::from_parts(parts, ());
        (with_body(&head, bytes.clone()), Some((head, bytes)))
    } else {
        (request, None)
    };
    let mut peer = peer;
    let mut lost_on: Vec<String> = Vec::new();
    loop {
        let (again, why) = match forward_once(host, deployed, &peer, request, deadline).await {
            Forwarded::Answered(response) => return response,
            Forwarded::Unsent(request, why) => (Some(request), why),
            Forwarded::Lost(why) => (kept.as_ref().map(|(head, bytes)| with_body(head, bytes.clone())), why),
        };
        let Some(again) = again else {
            return bad_gateway(deployed, why);
        };
        tracing::debug!(host = %peer.id, "serving a forwarded request elsewhere: {why}");
        lost_on.push(peer.id.clone());
        match choose_avoiding(host, deployed, &lost_on) {
            Route::Here => return super::serve_here(host, deployed.clone(), again).await,
            Route::Peer(next) => (peer, request) = (next, again),
            Route::Nowhere => return bad_gateway(deployed, why),
        }
    }
}

/// How one forwarding of a request went.
enum Forwarded {
    /// The peer answered (or this host answers for it: a timeout, an
    /// unexpected frame).
    Answered(hyper::Response<Body>),
    /// No stream to the peer: nothing of the request was sent.
    Unsent(hyper::Request<Body>, String),
    /// The peer was lost before its answer's head came.
    Lost(String),
}

/// Sends `request` to `peer` once and streams its answer back, waiting for
/// its head until `deadline` and [`PEER_SLACK`] after (the peer answers 504
/// itself first).
async fn forward_once(
    host: &Arc<HostInner>,
    deployed: &Arc<Deployed>,
    peer: &HostInfo,
    request: hyper::Request<Body>,
    deadline: tokio::time::Instant,
) -> Forwarded {
    let head = Request::PeerHttp {
        tenant: deployed.record.tenant.clone(),
        name: deployed.record.spec.name.clone(),
        method: request.method().to_string(),
        uri: request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
        headers: with_host(request.headers(), request.uri()),
    };
    let broke =
        |e: &dyn std::fmt::Display| format!("host {} (serving {}) broke off: {e}", peer.id, deployed.describe());
    let (send, mut recv) = match tokio::time::timeout(PEER_CONNECT, host.peers.open_stream(&peer.addr, &head)).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return Forwarded::Unsent(request, broke(&e.into_error())),
        Err(_) => return Forwarded::Unsent(request, broke(&format!("no stream to it within {PEER_CONNECT:?}"))),
    };
    let counted = host.forwarded.count(&peer.id, deployed);
    // The request body goes out while the answer comes back.
    let pump = tokio::spawn(pump(request.into_body(), send));
    let pump = AbortOnDrop(pump);
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_add(PEER_SLACK);
    match tokio::time::timeout(wait, read_frame::<_, Response>(&mut recv, MAX_FRAME)).await {
        Ok(Ok(Some(Response::HttpHead { status, headers, load }))) => {
            host.forwarded.report(&peer.id, deployed, load);
            let mut response = hyper::Response::new(quic_body(recv, (counted, pump)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            restore(&headers, response.headers_mut());
            Forwarded::Answered(response)
        }
        Ok(Ok(Some(Response::Error(e)))) => Forwarded::Answered(failure(deployed, status_of(&e), &e)),
        Ok(Ok(Some(other))) => {
            let why = broke(&format!("unexpected answer {other:?}"));
            Forwarded::Answered(bad_gateway(deployed, why))
        }
        Ok(Ok(None)) => Forwarded::Lost(broke(&"the stream ended without an answer")),
        Ok(Err(e @ fabric_proto::WireError::Io(_))) => Forwarded::Lost(broke(&e)),
        // It answered, with a head this host cannot read: the request ran
        // there, so it is not sent again.
        Ok(Err(e)) => {
            let why = broke(&format!("its answer cannot be read: {e}"));
            Forwarded::Answered(bad_gateway(deployed, why))
        }
        Err(_) => {
            let why = format!("host {} did not answer for {} within {wait:?}", peer.id, deployed.describe());
            Forwarded::Answered(failure(
                deployed,
                StatusCode::GATEWAY_TIMEOUT,
                &FabricError::new(ErrorKind::TimedOut, why),
            ))
        }
    }
}

/// The head of a request a peer forwarded ([`Request::PeerHttp`]).
pub struct PeerRequest {
    /// The deployment's tenant.
    pub tenant: String,
    /// The deployment.
    pub name: String,
    /// The method.
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// The end-to-end headers.
    pub headers: Vec<HttpHeader>,
}

/// Serves a request a peer forwarded (never forwarding it again): the
/// answer's head as a frame, then its body raw.
pub async fn serve(host: &Arc<HostInner>, head: PeerRequest, mut send: quinn::SendStream, recv: quinn::RecvStream) {
    let PeerRequest { tenant, name, method, uri, headers } = head;
    // Before a deployment is found, the path says which shape of error the
    // caller expects.
    let refuse = |status: StatusCode, error: FabricError| {
        if super::call::is_call_path(uri.split('?').next().unwrap_or_default()) {
            super::call::error_json(status, &error)
        } else {
            text(status, error.message)
        }
    };
    let (response, load) = match request_from(&method, &uri, &headers, recv) {
        Ok(request) => match deployed_here(host, &tenant, &name).await {
            // Its view of the deployment or of this host differs: say so
            // rather than queue where no replica can run.
            Ok(deployed) if deployed.cap == 0 => (nowhere(&deployed), 0),
            Ok(deployed) => {
                // Its load besides this request, as the request found it
                // (measured after, a request still streaming its answer
                // would count itself).
                let counts = deployed.replicas.counts();
                let response = super::serve_here(host, deployed.clone(), request).await;
                (response, counts.busy.saturating_add(counts.queued))
            }
            Err(e) => (refuse(status_of(&e), e), 0),
        },
        Err(e) => (refuse(StatusCode::BAD_REQUEST, e), 0),
    };
    let (parts, body) = response.into_parts();
    let head = Response::HttpHead { status: parts.status.as_u16(), headers: end_to_end(&parts.headers), load };
    if write_frame(&mut send, &head).await.is_err() {
        return;
    }
    pump(body, send).await;
}

/// A request with `head`'s method, URI, version and headers, and `body`.
fn with_body(head: &hyper::Request<()>, body: bytes::Bytes) -> hyper::Request<Body> {
    let mut copy = hyper::Request::new(super::full(body));
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// Writes `body` raw to `send` and finishes the stream; a body that breaks
/// off resets it instead. Stops when the other side stops reading (it has
/// answered, or gone).
async fn pump(mut body: Body, send: quinn::SendStream) {
    let mut sending = Sending { send, finished: false };
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if sending.send.write_chunk(data).await.is_err() {
                        return;
                    }
                }
            }
            // Reset when dropped.
            Err(_) => return,
        }
    }
    sending.finished = true;
    let _ = sending.send.finish();
}

/// A stream a body is written to: reset unless the body was all written,
/// so a body cut short (its sender gone, the exchange dropped) is never
/// taken for a whole one (quinn finishes a stream dropped as it is).
struct Sending {
    send: quinn::SendStream,
    finished: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(BODY_BROKEN.into());
        }
    }
}

/// The deployment a forwarded request names; a host that has not seen it
/// (its last sync was before the deploy) reads the registry first, at most
/// once per [`ON_DEMAND_GAP`](crate::deployments::ON_DEMAND_GAP) however
/// many requests ask.
async fn deployed_here(host: &Arc<HostInner>, tenant: &str, name: &str) -> Result<Arc<Deployed>, FabricError> {
    crate::validate_name("tenant", tenant)?;
    let asked = Instant::now();
    if let Some(deployed) = host.deployments.named(tenant, name) {
        return Ok(deployed);
    }
    crate::deployments::sync_after(host, asked).await?;
    host.deployments
        .named(tenant, name)
        .ok_or_else(|| FabricError::new(ErrorKind::NotFound, format!("tenant `{tenant}` has no deployment `{name}`")))
}

fn request_from(
    method: &str,
    uri: &str,
    headers: &[HttpHeader],
    recv: quinn::RecvStream,
) -> Result<hyper::Request<Body>, FabricError> {
    let bad = |what: &str| FabricError::new(ErrorKind::InvalidArgument, format!("forwarded request has a bad {what}"));
    let mut request = hyper::Request::new(quic_body(recv, ()));
    *request.method_mut() = hyper::Method::from_bytes(method.as_bytes()).map_err(|_| bad("method"))?;
    *request.uri_mut() = uri.parse().map_err(|_| bad("path"))?;
    restore(headers, request.headers_mut());
    Ok(request)
}

/// Headers that describe one connection, not the message: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// The end-to-end headers of a request, with a `host` header from the URI's
/// authority when there is none (HTTP/2 carries it in the URI alone).
fn with_host(map: &HeaderMap, uri: &hyper::Uri) -> Vec<HttpHeader> {
    let mut headers = end_to_end(map);
    if !map.contains_key(hyper::header::HOST) {
        if let Some(authority) = uri.authority() {
            headers.push(HttpHeader { name: "host".into(), value: authority.as_str().as_bytes().to_vec() });
        }
    }
    headers
}

fn end_to_end(headers: &HeaderMap) -> Vec<HttpHeader> {
    headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| HttpHeader { name: name.as_str().to_string(), value: value.as_bytes().to_vec() })
        .collect()
}

/// Adds `headers` to `map`, skipping any a peer should not have sent.
fn restore(headers: &[HttpHeader], map: &mut HeaderMap) {
    for header in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_bytes(&header.value))
        {
            if !hop_by_hop(&name) {
                map.append(name, value);
            }
        }
    }
}

/// A body read from a QUIC stream until its end; `keep` lives as long as
/// the body is read (what must outlast the exchange).
fn quic_body<K: Send + 'static>(recv: quinn::RecvStream, keep: K) -> Body {
    let stream = futures_util::stream::unfold(Some((recv, keep)), |state| async move {
        let (mut recv, keep) = state?;
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk.bytes)), Some((recv, keep)))),
            Ok(None) => None,
            Err(_) => Some((Err(wasmtime_wasi_http::Error::ConnectionTerminated), None)),
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// Stops the request body's pump when the exchange ends early.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

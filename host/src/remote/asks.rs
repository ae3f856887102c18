//! Calls and snapshots of an actor on another host, in the order they were
//! asked.
//!
//! Why one stream per (tenant, actor) rather than one per call: a caller
//! that asks `add(5)` and then `snapshot()` without waiting in between must
//! find the snapshot after the add, as it would with a local actor (and as
//! Ray orders an actor's calls from one caller). Streams opened one after
//! another are served by the peer in any order, so separate streams would
//! let later asks overtake earlier ones. Here every ask of this host to one
//! remote actor goes, in order, down one long-lived stream
//! ([`Request::PeerActorAsks`]); the peer enqueues each in the actor's
//! mailbox as it reads it, and answers in the same order, so asks stay
//! pipelined (the caller never waits for an answer before sending the next).
//!
//! A stream idle for [`IDLE`] with no answer outstanding is closed (a host
//! may call many actors over its life; each open stream counts against the
//! connection's stream limit). It is retired under the map's lock, and asks
//! are queued under that lock too, so no ask can land on a stream being
//! retired: the next ask opens a new stream, and every earlier ask has its
//! answer by then.
//!
//! A peer finishes a stream only after answering every ask it took (it
//! does so when it starts draining, and while draining once the stream is
//! idle for 100 ms, so streams do not hold up its shutdown while its
//! actors still serve): the asks outstanding then were never taken, and are
//! asked again, in order, on a new stream. If the stream fails instead (the
//! peer is lost, a frame does not decode), it is reset so the peer takes
//! nothing more from it, the asks outstanding on it fail with `actor-dead`
//! saying why, and the next ask opens a new stream.
//!
//! Answers up to [`INLINE_MAX`] come inline; a larger one is kept on the
//! actor's host for the asking job ([`Response::Stored`], as a large task
//! result is) and read from there when the caller reads it, so a large
//! answer neither holds up the answers behind it on the stream nor is
//! bounded by a frame. The actor's host keeps it until the caller lets it
//! go or the job ends (the job notes that it reached that host).

use super::actors::{ask_here, home_of, lost, too_large, Ask, MAX_INLINE_ANSWER};
use crate::actors::ActorId;
use crate::hostfns::Encoding;
use crate::objects::transfer::AbortOnDrop;
use crate::objects::transfer::INLINE_MAX;
use crate::objects::{Cell, ObjectId};
use crate::HostInner;
use fabric_proto::{read_frame, write_frame, ActorAsk, ErrorKind, FabricError, Request, Response, MAX_FRAME};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a stream to an actor stays open with nothing asked.
pub const IDLE: Duration = Duration::from_secs(10);

/// How long a draining host keeps a stream open with nothing asked: its
/// actors serve until it leaves, but an idle stream must not hold up its
/// shutdown.
const DRAINING_IDLE: Duration = Duration::from_millis(100);

/// An ask, the cell its answer fills, and the job it is for.
type Queued = (Ask, Arc<Cell>, Option<Arc<str>>);
type Key = (Arc<str>, ActorId);
type Streams = HashMap<Key, mpsc::UnboundedSender<Queued>>;

/// This host's open ask streams, by tenant and actor.
#[derive(Default)]
pub struct AskStreams {
    streams: Mutex<Streams>,
}

impl std::fmt::Debug for AskStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AskStreams({} open)", self.lock().len())
    }
}

impl AskStreams {
    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues `ask` of `tenant`'s actor `id` on another host for `job`, after
/// every ask this host made of it before; its answer fills `cell`.
pub(crate) fn ask_remote(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    id: ActorId,
    ask: Ask,
    cell: Arc<Cell>,
    job: Option<Arc<str>>,
) {
    let key = (tenant.clone(), id);
    let mut streams = host.actor_asks.lock();
    let mut queued = (ask, cell, job);
    if let Some(sender) = streams.get(&key) {
        match sender.send(queued) {
            Ok(()) => return,
            // That stream failed and closed its queue: open another.
            Err(mpsc::error::SendError(back)) => queued = back,
        }
    }
    let (sender, queue) = mpsc::unbounded_channel();
    // Cannot fail: the queue is alive (it goes to the stream's task).
    let _ = sender.send(queued);
    tokio::spawn(run_stream(Arc::downgrade(host), key.clone(), sender.clone(), queue));
    streams.insert(key, sender);
}

/// Why a stream ended.
enum End {
    /// Nothing asked for [`IDLE`]: retired.
    Idle,
    /// The host finished the stream, having answered every ask it took
    /// (it is draining, say): those outstanding were never taken, so they
    /// can be asked again, in order, on a new stream.
    Closed,
    /// It failed; what is outstanding fails with this.
    Failed(String),
}

/// Times in a row a host may finish a stream without answering anything
/// before the asks outstanding on it fail.
const REOPENS: u32 = 3;

/// Sends the asks queued for one actor down one stream and fills their
/// cells with the answers, in order, until the stream idles out or fails.
async fn run_stream(
    host: std::sync::Weak<HostInner>,
    key: Key,
    sender: mpsc::UnboundedSender<Queued>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
) {
    let Some(strong) = host.upgrade() else { return };
    // The answers fill their objects through the store (which counts them).
    let objects = strong.objects.clone();
    drop(strong);
    let (tenant, id) = (key.0.clone(), key.1);
    // Asked and not answered yet, in order, with their frames to ask again.
    let mut outstanding: VecDeque<(ActorAsk, Arc<Cell>)> = VecDeque::new();
    let mut reopens = 0;
    let why = loop {
        // Only the open holds the host: a stream idling must not keep it.
        let opened = match host.upgrade() {
            Some(strong) => open(&strong, &tenant, id).await,
            None => return,
        };
        let end = match opened {
            Ok(stream) => serve_stream(stream, &host, &key, &sender, &mut queue, &mut outstanding, &objects).await,
            Err(why) => End::Failed(why),
        };
        match end {
            End::Idle => return,
            End::Failed(why) => break why,
            End::Closed if outstanding.is_empty() => reopens = 0,
            End::Closed if reopens < REOPENS => reopens += 1,
            End::Closed => break format!("its host closed {REOPENS} streams in a row without taking an ask"),
        }
        if outstanding.is_empty() && retire(&host, &key, &sender, &mut queue) {
            return;
        }
        tracing::debug!(actor = %id, tenant = %tenant, "asking again on a new stream");
    };
    if let Some(host) = host.upgrade() {
        let mut streams = host.actor_asks.lock();
        if streams.get(&key).is_some_and(|queued| queued.same_channel(&sender)) {
            streams.remove(&key);
        }
    }
    // No ask can join the queue once closed: fail what is in it.
    queue.close();
    while let Ok((_, cell, _)) = queue.try_recv() {
        objects.fill(&cell, Err(lost(id, &why)));
    }
    for (_, cell) in outstanding {
        objects.fill(&cell, Err(lost(id, &why)));
    }
}

/// One open stream of [`run_stream`]: asks again what is outstanding,
/// then what is queued.
async fn serve_stream(
    (mut send, recv): (quinn::SendStream, quinn::RecvStream),
    host: &std::sync::Weak<HostInner>,
    key: &Key,
    sender: &mpsc::UnboundedSender<Queued>,
    queue: &mut mpsc::UnboundedReceiver<Queued>,
    outstanding: &mut VecDeque<(ActorAsk, Arc<Cell>)>,
    objects: &crate::objects::ObjectStore,
) -> End {
    // Answers are read on a task of their own: reading a frame is not safe
    // to abandon midway, as a `select!` branch would.
    let (answers_in, mut answers) = mpsc::unbounded_channel();
    let reader = AbortOnDrop(tokio::spawn(read_answers(recv, answers_in)).abort_handle());
    for (frame, _) in outstanding.iter() {
        if let Err(e) = write_frame(&mut send, frame).await {
            return failed(&mut send, format!("the stream to its host failed: {e}"));
        }
    }
    let end = loop {
        tokio::select! {
            queued = queue.recv() => {
                let Some((ask, cell, job)) = queued else { break End::Idle };
                let frame = frame(ask, job.as_deref());
                let written = write_frame(&mut send, &frame).await;
                outstanding.push_back((frame, cell));
                if let Err(e) = written {
                    return failed(&mut send, format!("the stream to its host failed: {e}"));
                }
            }
            answer = answers.recv() => match answer {
                Some(Ok(outcome)) => match outstanding.pop_front() {
                    Some((_, cell)) => match outcome {
                        Ok(Answered::Inline(bytes)) => objects.fill(&cell, Ok(bytes)),
                        Ok(Answered::Kept { id: kept, len }) => {
                            objects.fill_elsewhere(Some(cell.id()), &cell, kept.into(), len, None)
                        }
                        Err(error) => objects.fill(&cell, Err(error)),
                    },
                    None => return failed(&mut send, "its host answered an ask never made".into()),
                },
                Some(Err(why)) => return failed(&mut send, why),
                None => break End::Closed,
            },
            _ = tokio::time::sleep(IDLE), if outstanding.is_empty() => {
                if retire(host, key, sender, queue) {
                    break End::Idle;
                }
            }
        }
    };
    let _ = send.finish();
    drop(reader);
    end
}

/// Ends a stream that failed: reset, so the host takes no more asks from it
/// (they fail here, and must not run later).
fn failed(send: &mut quinn::SendStream, why: String) -> End {
    let _ = send.reset(0u32.into());
    End::Failed(why)
}

/// Takes the stream out of the map if nothing is queued on it; `false` if
/// an ask came in meanwhile.
fn retire(
    host: &std::sync::Weak<HostInner>,
    key: &Key,
    sender: &mpsc::UnboundedSender<Queued>,
    queue: &mut mpsc::UnboundedReceiver<Queued>,
) -> bool {
    let Some(host) = host.upgrade() else { return true };
    let mut streams = host.actor_asks.lock();
    if !queue.is_empty() {
        return false;
    }
    if streams.get(key).is_some_and(|queued| queued.same_channel(sender)) {
        streams.remove(key);
    }
    queue.close();
    true
}

async fn open(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ActorId,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let addr = host.cluster.addr_of(&home_of(id)).ok_or("its host is not in the cluster")?;
    let request =
        Request::PeerActorAsks { tenant: tenant.to_string(), actor: id.to_string(), origin: host.local_addr() };
    host.peers.open_stream(&addr, &request).await.map_err(|e| e.into_error().message)
}

fn frame(ask: Ask, job: Option<&str>) -> ActorAsk {
    let job = job.map(str::to_string);
    match ask {
        Ask::Call { method, args, encoding } => ActorAsk::Call { method, args, json: encoding == Encoding::Json, job },
        Ask::Snapshot => ActorAsk::Snapshot { job },
    }
}

/// An answer that came.
enum Answered {
    /// Its bytes.
    Inline(Vec<u8>),
    /// Kept on the actor's host as object `id` there, `len` bytes.
    Kept { id: fabric_proto::WireObjectId, len: u64 },
}

type Answer = Result<Result<Answered, FabricError>, String>;

/// Reads the answers of a stream until it ends or a frame is not one.
async fn read_answers(mut recv: quinn::RecvStream, answers: mpsc::UnboundedSender<Answer>) {
    loop {
        let answer = match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
            Ok(Some(Response::Output(bytes))) => Ok(Ok(Answered::Inline(bytes))),
            Ok(Some(Response::Stored { id, len })) => Ok(Ok(Answered::Kept { id, len })),
            Ok(Some(Response::Error(error))) => Ok(Err(error)),
            Ok(Some(other)) => Err(format!("its host sent an answer that is none: {other:?}")),
            Ok(None) => return,
            Err(e) => Err(format!("the stream to its host failed: {e}")),
        };
        let failed = answer.is_err();
        if answers.send(answer).is_err() || failed {
            return;
        }
    }
}

/// Serves a [`Request::PeerActorAsks`] stream from the host at `origin`:
/// enqueues each ask in the actor's mailbox as it arrives and answers each,
/// in order, once done.
pub(crate) async fn serve(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ActorId,
    origin: &str,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), FabricError> {
    crate::validate_name("tenant", tenant)?;
    let tenant: Arc<str> = tenant.into();
    // The answers of asks without a job belong to the stream, and go with
    // it; those of a job belong to it here (a visiting job), so an answer
    // kept for it lasts until the job ends or its caller lets it go.
    let stream_job: Arc<str> = format!("asks-{:012x}", rand::random::<u64>() >> 16).into();
    let (asked, mut answering) = mpsc::unbounded_channel::<(ObjectId, Arc<Cell>, bool)>();
    let (tenant_here, stream_job_here) = (&tenant, &stream_job);
    // Ends when the caller finishes the stream or sends a bad frame, when
    // this host starts draining, and while it drains once no ask came for
    // DRAINING_IDLE; then drops `asked`, so the answers to what it took go
    // out and the stream finishes. The caller asks again on a new stream
    // whatever this one did not take (a frame cut off here included).
    let enqueue = async move {
        let mut visiting: Option<Arc<str>> = None;
        let outcome = loop {
            let read = read_frame::<_, ActorAsk>(recv, MAX_FRAME);
            let frame = if host.drain.is_draining() {
                match tokio::time::timeout(DRAINING_IDLE, read).await {
                    Ok(frame) => frame,
                    Err(_) => break Ok(()),
                }
            } else {
                tokio::select! {
                    frame = read => frame,
                    _ = host.drain.started() => break Ok(()),
                }
            };
            let ask = match frame {
                Ok(Some(ask)) => ask,
                Ok(None) => break Ok(()),
                Err(e) => break Err(FabricError::new(ErrorKind::InvalidArgument, format!("bad ask frame: {e}"))),
            };
            let (ask, job) = match ask {
                ActorAsk::Call { method, args, json, job } => {
                    let encoding = if json { Encoding::Json } else { Encoding::Binary };
                    (Ask::Call { method, args, encoding }, job)
                }
                ActorAsk::Snapshot { job } => (Ask::Snapshot, job),
            };
            let (owner, refused) = match answer_owner(host, tenant_here, origin, job, &mut visiting) {
                Ok(owner) => (owner, None),
                Err(error) => (None, Some(error)),
            };
            let keeps = owner.is_some();
            let (result, cell) = host.objects.reserve(tenant_here, owner.as_ref().unwrap_or(stream_job_here));
            let taken = match refused {
                Some(error) => Err(error),
                None => ask_here(host, tenant_here, id, ask, cell.clone()),
            };
            if let Err(error) = taken {
                host.objects.fill(&cell, Err(error));
            }
            if let Some(job) = &owner {
                // Its job ended as it came: the answer it was to keep is
                // freed now (and the caller told so) rather than kept for
                // no one.
                super::after_arrival(host, tenant_here, job);
            }
            if asked.send((result, cell, keeps)).is_err() {
                break Ok(());
            }
        };
        drop(asked);
        outcome
    };
    let answer = async {
        while let Some((result, _cell, keeps)) = answering.recv().await {
            let outcome = crate::objects::transfer::bytes(host, &tenant, &stream_job, result).await;
            let response = match outcome {
                // Kept for the asking job: its caller reads it from here
                // (not on a host about to leave: it goes back inline, as far
                // as a frame carries, as a draining host's task results do).
                Ok(bytes) if bytes.len() > INLINE_MAX && keeps && !host.drain.is_draining() => {
                    Response::Stored { id: result.into(), len: bytes.len() as u64 }
                }
                Ok(bytes) if bytes.len() > MAX_INLINE_ANSWER => Response::Error(too_large(id, bytes.len())),
                Ok(bytes) => Response::Output(bytes.to_vec()),
                Err(error) => Response::Error(error),
            };
            if !matches!(response, Response::Stored { .. }) {
                host.objects.release(&tenant, &[result]);
            }
            write_frame(send, &response)
                .await
                .map_err(|e| FabricError::new(ErrorKind::Unavailable, format!("ask stream failed: {e}")))?;
        }
        Ok::<(), FabricError>(())
    };
    let (enqueued, answered) = tokio::join!(enqueue, answer);
    host.objects.drop_job(&tenant, &stream_job);
    answered.and(enqueued)
}

/// The job an ask's answer belongs to here: the asking job, a visiting job
/// of the host at `origin` (noted once per run of asks of one job, which
/// `visiting` remembers), or none for a client's call or a job that ended.
fn answer_owner(
    host: &HostInner,
    tenant: &str,
    origin: &str,
    job: Option<String>,
    visiting: &mut Option<Arc<str>>,
) -> Result<Option<Arc<str>>, FabricError> {
    let Some(job) = job else { return Ok(None) };
    crate::validate_name("job", &job)?;
    if visiting.as_deref() != Some(job.as_str()) {
        if host.visiting.note(tenant, &job, origin).is_err() {
            // Its job ended: answered as a client's call is, inline, since
            // nothing would ever free an answer kept for it.
            return Ok(None);
        }
        *visiting = Some(job.into());
    }
    Ok(visiting.clone())
}

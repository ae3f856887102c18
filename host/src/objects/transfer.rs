//! Objects across hosts: finding an object's bytes wherever they are, and
//! serving this host's objects to peers.
//!
//! A reader here that needs another host's object (its id names the host
//! that minted it, or a result slot here points at the peer that kept it)
//! pulls it with [`Request::PeerObjectRead`] range requests: the first asks
//! for up to [`FIRST_RANGE`] bytes and learns the size; the rest is split
//! over up to [`STREAMS`] streams on the one connection to that peer, each
//! reading straight into its part of the final, aligned buffer (or, for a
//! copy larger than half the memory budget, writing its part of a spill
//! file as it arrives, see `writer::DiskCopy`). Each range
//! carries an xxh3-64 checksum; a range cut short or whose bytes do not match
//! is asked for again ([`RANGE_ATTEMPTS`] attempts in all), so a bad transfer is
//! detected and repaired, never handed to a guest. The copy lands in this
//! host's store under the object's id, owned by the reader's job: every
//! reader here shares one pull and later reads are local (until the copy is
//! dropped for memory: see `spill`).
//!
//! The holder is found from the id, so no lookup service is involved; when
//! membership no longer lists it, the object is lost and readers are told
//! which host it was on.

use super::writer::DiskCopy;
use super::{Cell, Landed, ObjectBytes, ObjectId, Value, OBJECT_ALIGN};
use crate::peers::PeerError;
use crate::HostInner;
use fabric_proto::{read_frame, ErrorKind, FabricError, Request, Response, WireObjectId, MAX_FRAME};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Task results up to this size travel back with the task's end; larger ones
/// stay on the host that produced them until read.
pub const INLINE_MAX: usize = 64 * 1024;
/// Bytes asked for by the first request of a pull (which learns the size).
pub const FIRST_RANGE: u64 = 4 << 20;
/// Streams a large pull spreads over.
pub const STREAMS: usize = 4;
/// Smallest range worth a stream of its own.
const MIN_PART: u64 = 8 << 20;
/// Bytes of a range that goes to disk read before they are written.
const DISK_CHUNK: u64 = 4 << 20;
/// Times one range is asked for before the pull fails.
pub const RANGE_ATTEMPTS: u32 = 3;
/// Redirections followed before giving up (a result kept on a peer that
/// itself points elsewhere).
const MAX_HOPS: usize = 4;
/// Objects at least this large are shared between readers' hosts: a whole
/// pull may be sent to a host that copied the object before (broadcast
/// without the holder sending it once per reader).
pub const SHARE_COPIES_FROM: u64 = 16 << 20;

/// Who asks a holder for a range, as far as the holder's copies go.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asker<'a> {
    /// The reading host's id when it pulls the whole object and may be
    /// sent to a host that copied it (empty otherwise).
    pub reader: &'a str,
    /// A host the reader was sent to whose copy was gone or could not be
    /// read (empty: none): the holder sends no more readers there.
    pub no_copy_at: &'a str,
}

/// Counters of what this host pulled and served.
#[derive(Debug, Default)]
pub struct Transfers {
    pulls: AtomicU64,
    pulled_bytes: AtomicU64,
    served_bytes: AtomicU64,
    retried_ranges: AtomicU64,
    pin_requests: AtomicU64,
}

impl Transfers {
    /// (pulls, bytes pulled, ranges asked again).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.pulls.load(Ordering::Relaxed),
            self.pulled_bytes.load(Ordering::Relaxed),
            self.retried_ranges.load(Ordering::Relaxed),
        )
    }
}

fn lost_object(id: ObjectId, holder: &str) -> FabricError {
    FabricError::new(
        ErrorKind::Unavailable,
        format!("object {id} is lost: host {holder}, which held it, is not in the cluster"),
    )
}

fn broken(addr: &str, what: impl std::fmt::Display) -> PeerError {
    PeerError::Lost(FabricError::new(ErrorKind::Unavailable, format!("object transfer from {addr}: {what}")))
}

/// The bytes of object `id` for a reader of `tenant`'s job `job` on this
/// host: local ones without a copy; another host's pulled once into a local
/// copy that `job` owns (pulled again if that copy went before it was
/// read: dropped for memory, or its job ended).
pub async fn bytes(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    job: &Arc<str>,
    id: ObjectId,
) -> Result<ObjectBytes, FabricError> {
    let (mut id, mut lineage, mut hops, mut drops) = (id, None, 0, 0);
    loop {
        let cell = match host.objects.lookup(tenant, id) {
            Some(cell) => cell,
            None if host.objects.minted_here(id) => return Err(host.objects.missing(tenant, id)),
            None => copy_slot(host, tenant, job, id, lineage.clone()),
        };
        match cell.ready().await {
            Ok(Value::Here(local)) => match host.objects.bytes(local).await {
                Err(_) if local.copy_gone() && drops < MAX_DROPS => drops += 1,
                read => return read,
            },
            Ok(Value::Elsewhere { id: held, lineage: how, .. }) if hops < MAX_HOPS => {
                hops += 1;
                id = *held;
                lineage = how.clone();
            }
            Ok(Value::Elsewhere { .. }) => {
                return Err(FabricError::new(
                    ErrorKind::Internal,
                    format!("object {id} was redirected more than {MAX_HOPS} times"),
                ))
            }
            Err(error) => return Err(error.clone()),
        }
    }
}

/// Times a reader pulls an object again whose copy went (dropped for
/// memory, or its job ended) before it could read it, before giving up.
const MAX_DROPS: u32 = 8;

/// The slot of a local copy of another host's object, its pull started if
/// it is new: once however many readers ask at the same time; if its holder
/// is gone and `lineage` says how, the copy is made by running its task
/// again instead. The pull runs on its own task, so a reader that gives up
/// does not strand the others.
fn copy_slot(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    job: &Arc<str>,
    id: ObjectId,
    lineage: Option<Arc<crate::remote::Lineage>>,
) -> Arc<Cell> {
    let (cell, new) = host.objects.copy_slot(tenant, job, id);
    if new {
        let (host, tenant, job, cell) = (host.clone(), tenant.clone(), job.clone(), cell.clone());
        tokio::spawn(async move {
            // A rebuilt copy is the only one left: it spills rather than
            // being dropped for memory.
            let pulled = match pull_copy(&host, &tenant, id).await {
                Ok(landed) => Ok((landed, true)),
                Err(error) => match lineage {
                    Some(lineage) if host.cluster.addr_of(&id.holder()).is_none() => {
                        crate::remote::rebuild(&host, &lineage, id, error)
                            .await
                            .map(|data| (Landed::Memory(data), false))
                    }
                    _ => Err(error),
                },
            };
            match pulled {
                Ok((data, held_elsewhere)) => host.objects.fill_copy(&job, id, &cell, data, held_elsewhere),
                Err(error) => host.objects.abandon_copy(&tenant, &job, id, &cell, error),
            }
        });
    }
    cell
}

/// The size of object `id`, waiting until it is ready, without moving its
/// bytes.
pub async fn size(host: &Arc<HostInner>, tenant: &str, id: ObjectId) -> Result<u64, FabricError> {
    match host.objects.lookup(tenant, id) {
        Some(cell) => Ok(cell.ready().await.clone()?.len()),
        None if host.objects.minted_here(id) => Err(host.objects.missing(tenant, id)),
        None => pull(host, tenant, id, 0, Want::SIZE).await.map(|(_, total)| total),
    }
}

/// `len` bytes of object `id` from `offset`: from the local object or copy
/// when there is one, else only that range from the holder.
pub async fn read(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, FabricError> {
    read_at(host, tenant, id, offset, Want::Exactly(len)).await.map(|(data, _)| Vec::from(data))
}

/// [`read`] of what `want` says, without copying a local range, with the
/// object's whole size (a range starting past the end is an error).
async fn read_at(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    want: Want,
) -> Result<(bytes::Bytes, u64), FabricError> {
    let mut at = id;
    if let Some(cell) = host.objects.lookup(tenant, id) {
        match cell.ready().await.clone()? {
            Value::Here(local) => {
                let range = range_of(local.len(), offset, want.len_within(local.len(), offset))?;
                match host.objects.slice(&local, range).await {
                    Ok(bytes) => return Ok((bytes, local.len())),
                    // A copy that went (dropped for memory, say): read the range off its holder.
                    Err(_) if local.copy_gone() => {}
                    Err(error) => return Err(error),
                }
            }
            Value::Elsewhere { id: held, .. } => at = held,
        }
    } else if host.objects.minted_here(id) {
        return Err(host.objects.missing(tenant, id));
    }
    pull(host, tenant, at, offset, want).await.map(|(data, total)| (data.into(), total))
}

/// Serves [`Request::ObjectRead`]: a client's read of up to
/// [`MAX_OBJECT_READ`](fabric_proto::MAX_OBJECT_READ) bytes of object `id`
/// from `offset`, waiting until it is ready, wherever in the cluster it is
/// kept (another host's object is read from its holder range by range,
/// leaving no copy here).
pub async fn serve_client_read(
    host: &Arc<HostInner>,
    tenant: &str,
    id: &str,
    offset: u64,
    len: u64,
    send: &mut quinn::SendStream,
) -> Result<(), FabricError> {
    crate::validate_name("tenant", tenant)?;
    let id = parse_id(id)?;
    let len = len.min(fabric_proto::MAX_OBJECT_READ);
    let (chunk, total) = tokio::select! {
        read = read_at(host, tenant, id, offset, Want::UpTo(len)) => read?,
        _ = send.stopped() => return Ok(()),
    };
    let len = chunk.len() as u64;
    reply(send, &Response::ObjectRange { total, offset, len, checksum: xxh3_64(&chunk) }).await?;
    send.write_chunk(chunk)
        .await
        .map_err(|e| FabricError::new(ErrorKind::Unavailable, format!("object stream failed: {e}")))
}

/// The slot to wait on for object `id`: its own, or for another host's
/// object a stand-in filled when that host says the object is ready (or
/// failed), without moving its bytes. The stand-in's watch stops when the
/// returned guard drops.
pub fn watch(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    id: ObjectId,
) -> Result<(Arc<Cell>, Option<AbortOnDrop>), FabricError> {
    if let Some(cell) = host.objects.lookup(tenant, id) {
        return Ok((cell, None));
    }
    if host.objects.minted_here(id) {
        return Err(host.objects.missing(tenant, id));
    }
    let cell = Arc::new(Cell::new(tenant.clone(), id));
    let (host, tenant, standin) = (host.clone(), tenant.clone(), cell.clone());
    let task = tokio::spawn(async move {
        match pull(&host, &tenant, id, 0, Want::SIZE).await {
            // A stand-in is not in the store: nothing to count or release.
            Ok((_, len)) => standin.fill(Ok(Value::Elsewhere { id, len, lineage: None })),
            Err(error) => standin.fill(Err(error)),
        }
    });
    Ok((cell, Some(AbortOnDrop(task.abort_handle()))))
}

/// Stops a spawned task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The byte range `offset..offset + len` of an object of `total` bytes.
pub(crate) fn range_of(total: u64, offset: u64, len: u64) -> Result<std::ops::Range<usize>, FabricError> {
    match offset.checked_add(len) {
        Some(end) if end <= total => Ok(offset as usize..end as usize),
        _ => Err(FabricError::new(
            ErrorKind::InvalidArgument,
            format!("read of {len} bytes at offset {offset} is past the end of a {total}-byte object"),
        )),
    }
}

/// How much of an object a pull reads, from its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Everything to the end.
    Rest,
    /// Exactly this many bytes: the range must lie within the object.
    Exactly(u64),
    /// This many bytes, or what there is up to the end if fewer.
    UpTo(u64),
}

impl Want {
    /// No bytes: only the object's size.
    pub const SIZE: Want = Want::Exactly(0);

    /// The bytes it reads of an object of `total` bytes from `offset`.
    fn len_within(self, total: u64, offset: u64) -> u64 {
        match self {
            Want::Rest => total.saturating_sub(offset),
            Want::Exactly(len) => len,
            Want::UpTo(len) => len.min(total.saturating_sub(offset)),
        }
    }
}

/// Reads what `want` says of object `id` from `offset` off the host
/// holding it; returns those bytes and the object's whole size.
pub async fn pull(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    want: Want,
) -> Result<(Vec<u8>, u64), FabricError> {
    match pull_landing(host, tenant, id, offset, want, false).await? {
        (Landed::Memory(data), total) => Ok((data, total)),
        (Landed::Disk(_), _) => {
            Err(FabricError::new(ErrorKind::Internal, format!("a read of object {id} into memory landed on disk")))
        }
    }
}

/// Pulls all of object `id` for a copy here: one too large to keep in
/// memory (see [`ObjectStore::disk_copy`](super::ObjectStore::disk_copy))
/// is written to a spill file as it arrives.
pub async fn pull_copy(host: &Arc<HostInner>, tenant: &str, id: ObjectId) -> Result<Landed, FabricError> {
    pull_landing(host, tenant, id, 0, Want::Rest, true).await.map(|(landed, _)| landed)
}

/// [`pull`], landing on disk when `may_spill` and the object is large.
/// When writing the copy to this host's disk fails, the pull starts again
/// into memory (as for a disk with no room), and the peer it read from is
/// not blamed.
async fn pull_landing(
    host: &Arc<HostInner>,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    want: Want,
    mut may_spill: bool,
) -> Result<(Landed, u64), FabricError> {
    // A whole pull may be sent on to a host that copied the object.
    let whole = offset == 0 && want == Want::Rest;
    let mut id = id;
    let mut may_redirect = whole;
    // A copy this pull was sent to that failed: the holder hears of it.
    let mut no_copy_at = String::new();
    for _ in 0..MAX_HOPS {
        let holder = id.holder();
        if holder == host.id {
            return Err(host.objects.missing(tenant, id));
        }
        let reader = if std::mem::take(&mut may_redirect) { host.id.as_str() } else { "" };
        let asker = Asker { reader, no_copy_at: &no_copy_at };
        let ask = Ask { tenant, id, offset, want, may_spill };
        let from_holder = match pull_from(host, &holder, ask, asker, RANGE_ATTEMPTS).await {
            Ok(pulled) => pulled,
            Err(PullFailed::Here(error)) if may_spill => {
                in_memory_instead(id, &holder, &error);
                may_spill = false;
                may_redirect = whole;
                continue;
            }
            Err(failed) => return Err(failed.into_error()),
        };
        let pulled = match from_holder {
            Pulled::Moved(held) => {
                id = held;
                may_redirect = whole;
                continue;
            }
            // Never from itself (a copy here would have been read locally).
            Pulled::At(peer) if peer == host.id => continue,
            Pulled::At(peer) => match from_copy(host, &peer, ask).await {
                Ok(Pulled::Bytes(buffer, total)) => (buffer, total),
                // That copy is gone or failed: read from the holder itself,
                // and tell it, so it sends no more readers there.
                Ok(_) => {
                    no_copy_at = peer;
                    continue;
                }
                Err(failed) => {
                    let error = failed.into_error();
                    tracing::debug!(object = %id, host = %peer, "reading from the holder instead of a copy: {error}");
                    no_copy_at = peer;
                    continue;
                }
            },
            Pulled::Bytes(buffer, total) => (buffer, total),
        };
        if want != Want::SIZE {
            host.transfers.pulls.fetch_add(1, Ordering::Relaxed);
            host.transfers.pulled_bytes.fetch_add(pulled.0.len(), Ordering::Relaxed);
        }
        return Ok(pulled);
    }
    Err(FabricError::new(ErrorKind::Internal, format!("object {id} was redirected more than {MAX_HOPS} times")))
}

/// Logs that a copy of `id` pulled from `source` could not be written to
/// this host's disk (it is pulled again into memory).
fn in_memory_instead(id: ObjectId, source: &str, error: &FabricError) {
    tracing::warn!(object = %id, host = %source, "pulling the copy into memory instead: {error}");
}

/// Pulls from `peer`, which holds a copy; when writing it to this host's
/// disk fails, pulls it from there again into memory (the copy is not to
/// blame).
async fn from_copy(host: &Arc<HostInner>, peer: &str, ask: Ask<'_>) -> Result<Pulled, PullFailed> {
    match pull_from(host, peer, ask, Asker::default(), 1).await {
        Err(PullFailed::Here(error)) if ask.may_spill => {
            in_memory_instead(ask.id, peer, &error);
            pull_from(host, peer, Ask { may_spill: false, ..ask }, Asker::default(), 1).await
        }
        pulled => pulled,
    }
}

/// How a pull from one host failed.
enum PullFailed {
    /// There: the host answered with an error, or could not be read.
    There(FabricError),
    /// Here: what arrived could not be written to this host's disk.
    Here(FabricError),
}

impl PullFailed {
    fn into_error(self) -> FabricError {
        match self {
            PullFailed::There(error) | PullFailed::Here(error) => error,
        }
    }
}

impl From<FabricError> for PullFailed {
    fn from(error: FabricError) -> Self {
        PullFailed::There(error)
    }
}

/// How reading one range failed.
enum RangeError {
    /// The request to the peer failed (as any request to a peer can).
    Peer(PeerError),
    /// Writing what arrived to this host's disk failed.
    Here(FabricError),
}

impl From<PeerError> for RangeError {
    fn from(error: PeerError) -> Self {
        RangeError::Peer(error)
    }
}

/// What a pull asks for.
#[derive(Clone, Copy)]
struct Ask<'a> {
    tenant: &'a str,
    id: ObjectId,
    offset: u64,
    want: Want,
    /// A large object may land on disk.
    may_spill: bool,
}

/// What one host answered to a pull.
enum Pulled {
    /// The bytes asked for, and the object's whole size.
    Bytes(Landed, u64),
    /// Another host holds the object, under this id.
    Moved(ObjectId),
    /// Read it from this host, which copied it.
    At(String),
}

/// Pulls from host `source` (the holder, or a host with a copy), asking
/// for each range up to `attempts` times.
async fn pull_from(
    host: &Arc<HostInner>,
    source: &str,
    ask: Ask<'_>,
    asker: Asker<'_>,
    attempts: u32,
) -> Result<Pulled, PullFailed> {
    let mut attempt = 1;
    let (addr, first) = loop {
        let addr = host.cluster.addr_of(source).ok_or_else(|| lost_object(ask.id, source))?;
        match first_range(host, &addr, ask, asker).await {
            Ok(first) => break (addr, first),
            Err(error) => retry_or_fail(host, source, ask.id, &mut attempt, attempts, error)?,
        }
    };
    let (mut landed, total, got) = match first {
        First::Moved(held) => return Ok(Pulled::Moved(held)),
        First::At(peer) => return Ok(Pulled::At(peer)),
        First::Bytes { landed, total, got } => (landed, total, got),
    };
    if got < landed.len() {
        let from = Source { addr: &addr, id: source, attempts };
        let rest = match &mut landed {
            Landed::Memory(buffer) => Part::Memory(&mut buffer[got as usize..]),
            Landed::Disk(copy) => Part::Disk { copy, at: got, len: copy.len() - got },
        };
        fill_rest(host, from, ask, rest, got).await?;
    }
    Ok(Pulled::Bytes(landed, total))
}

/// Decides after a failed range: `Ok` to ask again, or the error to give.
fn retry_or_fail(
    host: &HostInner,
    holder: &str,
    id: ObjectId,
    attempt: &mut u32,
    attempts: u32,
    error: RangeError,
) -> Result<(), PullFailed> {
    let error = match error {
        RangeError::Here(error) => return Err(PullFailed::Here(error)),
        RangeError::Peer(error) => error,
    };
    match error {
        PeerError::Answered(error) | PeerError::Refused(error) => Err(error.into()),
        PeerError::Lost(_) if host.cluster.addr_of(holder).is_none() => Err(lost_object(id, holder).into()),
        PeerError::Lost(error) if *attempt >= attempts => Err(FabricError::new(
            ErrorKind::Unavailable,
            format!("object {id} could not be read from host {holder} after {attempts} attempts: {}", error.message),
        )
        .into()),
        PeerError::Lost(error) => {
            tracing::warn!(object = %id, host = %holder, "asking again for a range: {}", error.message);
            host.transfers.retried_ranges.fetch_add(1, Ordering::Relaxed);
            *attempt += 1;
            Ok(())
        }
    }
}

/// What the first request of a pull learns.
enum First {
    /// Another host holds the object, under this id.
    Moved(ObjectId),
    /// Read it from this host, which copied it.
    At(String),
    /// The destination, sized for the whole read, with its first `got`
    /// bytes filled; `total` is the object's size.
    Bytes { landed: Landed, total: u64, got: u64 },
}

/// Asks for the first range of a read and makes the final destination: a
/// buffer, or a spill file for a large copy.
async fn first_range(host: &HostInner, addr: &str, ask: Ask<'_>, asker: Asker<'_>) -> Result<First, RangeError> {
    let Ask { tenant, id, offset, want, may_spill } = ask;
    let ask = match want {
        Want::Rest => FIRST_RANGE,
        Want::Exactly(len) | Want::UpTo(len) => len.min(FIRST_RANGE),
    };
    let (mut recv, header) = open_range(host, addr, tenant, id, offset, ask, asker).await?;
    let (total, got, checksum) = match header {
        Header::Moved(held) => return Ok(First::Moved(held)),
        Header::At(peer) => return Ok(First::At(peer)),
        Header::Range { total, len, checksum } => (total, len, checksum),
    };
    let wanted = want.len_within(total, offset);
    range_of(total, offset, wanted).map_err(PeerError::Answered)?;
    if wanted > host.config.max_object_bytes {
        return Err(PeerError::Answered(FabricError::new(
            ErrorKind::ResourceLimit,
            format!(
                "object {id} of {wanted} bytes exceeds this host's limit of {} bytes",
                host.config.max_object_bytes
            ),
        ))
        .into());
    }
    if got != wanted.min(ask) {
        let offered = format!("asked for {} bytes at {offset}, was offered {got}", wanted.min(ask));
        return Err(broken(addr, offered).into());
    }
    if may_spill {
        if let Some(copy) = host.objects.disk_copy(wanted).await {
            let part = Part::Disk { copy: &copy, at: 0, len: got };
            receive(host, addr, &mut recv, part, checksum).await?;
            return Ok(First::Bytes { landed: Landed::Disk(copy), total, got });
        }
    }
    // Zeroed pages come from the kernel untouched, and a buffer this size is
    // aligned by the allocator: the bytes land in their final place.
    let mut buffer = vec![0u8; wanted as usize];
    debug_assert!(buffer.len() < OBJECT_ALIGN || (buffer.as_ptr() as usize).is_multiple_of(OBJECT_ALIGN));
    receive(host, addr, &mut recv, Part::Memory(&mut buffer[..got as usize]), checksum).await?;
    Ok(First::Bytes { landed: Landed::Memory(buffer), total, got })
}

/// The host a pull reads from.
#[derive(Clone, Copy)]
struct Source<'a> {
    /// Its address.
    addr: &'a str,
    /// Its id.
    id: &'a str,
    /// Times each range is asked for.
    attempts: u32,
}

/// Where one range's bytes go (or, split into ranges, the rest of a pull's).
enum Part<'a> {
    /// Into this slice.
    Memory(&'a mut [u8]),
    /// Into the copy's file, `len` bytes at `at`.
    Disk { copy: &'a DiskCopy, at: u64, len: u64 },
}

impl Part<'_> {
    fn len(&self) -> u64 {
        match self {
            Part::Memory(dest) => dest.len() as u64,
            Part::Disk { len, .. } => *len,
        }
    }

    /// The same destination, borrowed again (for a range asked again).
    fn again(&mut self) -> Part<'_> {
        match self {
            Part::Memory(dest) => Part::Memory(dest),
            Part::Disk { copy, at, len } => Part::Disk { copy, at: *at, len: *len },
        }
    }
}

/// Reads the rest of a pull into `rest` (which starts `start` bytes into the
/// read, itself at the ask's offset in the object), over up to [`STREAMS`]
/// streams at once, each range asked again when it arrives short or
/// corrupted.
async fn fill_rest(
    host: &Arc<HostInner>,
    from: Source<'_>,
    ask: Ask<'_>,
    rest: Part<'_>,
    start: u64,
) -> Result<(), PullFailed> {
    let len = rest.len();
    let part_len = len.div_ceil((len / MIN_PART).clamp(1, STREAMS as u64));
    let parts: Vec<(u64, Part<'_>)> = match rest {
        Part::Memory(dest) => dest
            .chunks_mut(part_len as usize)
            .enumerate()
            .map(|(i, part)| (start + i as u64 * part_len, Part::Memory(part)))
            .collect(),
        // `at` is `start`: the file holds the read from its first byte.
        Part::Disk { copy, at, len } => (0..len)
            .step_by(part_len as usize)
            .map(|skip| (at + skip, Part::Disk { copy, at: at + skip, len: part_len.min(len - skip) }))
            .collect(),
    };
    let reads = parts.into_iter().map(|(at, mut part)| async move {
        let mut attempt = 1;
        loop {
            match read_range(host, from.addr, ask.tenant, ask.id, ask.offset + at, part.again()).await {
                Ok(()) => return Ok(()),
                Err(error) => retry_or_fail(host, from.id, ask.id, &mut attempt, from.attempts, error)?,
            }
        }
    });
    futures_util::future::try_join_all(reads).await.map(|_| ())
}

/// Reads exactly `part.len()` bytes of object `id` from `offset`.
async fn read_range(
    host: &HostInner,
    addr: &str,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    part: Part<'_>,
) -> Result<(), RangeError> {
    let want = part.len();
    let (mut recv, header) = open_range(host, addr, tenant, id, offset, want, Asker::default()).await?;
    match header {
        Header::Range { len, checksum, .. } if len == want => receive(host, addr, &mut recv, part, checksum).await,
        Header::Range { len, .. } => Err(broken(addr, format!("asked for {want} bytes, was offered {len}")).into()),
        Header::Moved(_) | Header::At(_) => Err(broken(addr, "the object moved during the transfer").into()),
    }
}

/// A range request's answer, before its bytes.
enum Header {
    Moved(ObjectId),
    At(String),
    Range { total: u64, len: u64, checksum: u64 },
}

async fn open_range(
    host: &HostInner,
    addr: &str,
    tenant: &str,
    id: ObjectId,
    offset: u64,
    len: u64,
    asker: Asker<'_>,
) -> Result<(quinn::RecvStream, Header), PeerError> {
    let request = Request::PeerObjectRead {
        tenant: tenant.to_string(),
        id: id.into(),
        offset,
        len,
        reader: asker.reader.to_string(),
        no_copy_at: asker.no_copy_at.to_string(),
    };
    let (_send, mut recv) = host.peers.open(addr, &request).await?;
    let header = match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
        Ok(Some(Response::ObjectMoved { id })) => Header::Moved(id.into()),
        Ok(Some(Response::ObjectAt { host })) => Header::At(host),
        Ok(Some(Response::ObjectRange { total, offset: at, len, checksum })) if at == offset => {
            Header::Range { total, len, checksum }
        }
        Ok(Some(Response::Error(e))) => return Err(PeerError::Answered(e)),
        Ok(Some(other)) => return Err(broken(addr, format!("unexpected answer to a read: {other:?}"))),
        Ok(None) => return Err(broken(addr, "the stream ended without an answer")),
        Err(e) => return Err(broken(addr, e)),
    };
    Ok((recv, header))
}

/// Reads a range's bytes into `part` and checks them against `checksum`.
/// On disk, they go through a buffer of at most [`DISK_CHUNK`] bytes.
async fn receive(
    host: &HostInner,
    addr: &str,
    recv: &mut quinn::RecvStream,
    part: Part<'_>,
    checksum: u64,
) -> Result<(), RangeError> {
    let len = part.len();
    let cut_short = |e: quinn::ReadExactError| broken(addr, format!("range of {len} bytes cut short: {e}"));
    let arrived = match part {
        Part::Memory(dest) => {
            recv.read_exact(dest).await.map_err(cut_short)?;
            xxh3_64(dest)
        }
        Part::Disk { copy, at, len } => {
            let mut hasher = Xxh3::new();
            let mut buffer = Vec::new();
            let mut done = 0;
            while done < len {
                buffer.resize((len - done).min(DISK_CHUNK) as usize, 0);
                recv.read_exact(&mut buffer).await.map_err(cut_short)?;
                hasher.update(&buffer);
                let written = buffer.len() as u64;
                let written_here = if host.faults.fail_copy_writes.strikes() {
                    Err(FabricError::new(ErrorKind::ResourceLimit, "cannot write the copy to disk: injected fault"))
                } else {
                    copy.write_at(buffer, at + done).await
                };
                buffer = written_here.map_err(RangeError::Here)?;
                done += written;
            }
            hasher.digest()
        }
    };
    if arrived != checksum {
        return Err(broken(addr, format!("range of {len} bytes arrived corrupted (checksum mismatch)")).into());
    }
    Ok(())
}

/// Serves [`Request::PeerObjectRead`]: waits for the object, then sends the
/// range (or where the object is, or the error it holds).
pub async fn serve_read(
    host: &Arc<HostInner>,
    tenant: &str,
    id: WireObjectId,
    offset: u64,
    len: u64,
    asker: Asker<'_>,
    send: &mut quinn::SendStream,
) -> Result<(), FabricError> {
    crate::validate_name("tenant", tenant)?;
    let id = ObjectId::from(id);
    let cell = host.objects.cell(tenant, id)?;
    // The objects its value names go with it, where they cannot be counted.
    host.objects.escape_contents(tenant, id);
    let value = tokio::select! {
        value = cell.ready() => value.clone()?,
        _ = send.stopped() => return Ok(()),
    };
    let local = match value {
        Value::Here(local) => local,
        Value::Elsewhere { id: held, .. } => return reply(send, &Response::ObjectMoved { id: held.into() }).await,
    };
    let total = local.len();
    if !asker.no_copy_at.is_empty() {
        host.objects.forget_copy(tenant, id, asker.no_copy_at);
    }
    if offset == 0 && !asker.reader.is_empty() && total >= SHARE_COPIES_FROM {
        if let Some(peer) = host.objects.copy_source(tenant, id, asker.reader) {
            return reply(send, &Response::ObjectAt { host: peer.to_string() }).await;
        }
    }
    // Up to `len`: the first request of a pull does not know the size yet.
    let len = len.min(total.saturating_sub(offset));
    let range = range_of(total, offset, len)?;
    let mut chunk = host.objects.slice(&local, range).await?;
    let checksum = xxh3_64(&chunk);
    if !chunk.is_empty() && host.faults.corrupt_transfers.strikes() {
        let mut corrupted = chunk.to_vec();
        corrupted[0] ^= 0xff;
        chunk = corrupted.into();
    } else if !chunk.is_empty() && host.faults.truncate_transfers.strikes() {
        chunk.truncate(chunk.len() / 2);
    }
    host.transfers.served_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    reply(send, &Response::ObjectRange { total, offset, len, checksum }).await?;
    send.write_chunk(chunk)
        .await
        .map_err(|e| FabricError::new(ErrorKind::Unavailable, format!("object stream failed: {e}")))
}

async fn reply(send: &mut quinn::SendStream, response: &Response) -> Result<(), FabricError> {
    fabric_proto::write_frame(send, response)
        .await
        .map_err(|e| FabricError::new(ErrorKind::Unavailable, format!("object stream failed: {e}")))
}

/// This host's objects of `tenant`, with its transfer counters.
pub fn local_usage(host: &HostInner, tenant: &str) -> fabric_proto::HostObjects {
    let (pulls, pulled_bytes, retried_ranges) = host.transfers.counts();
    let footprint = host.objects.footprint();
    fabric_proto::HostObjects {
        host: host.id.clone(),
        jobs: host.objects.usage_by_job(tenant),
        pulls,
        pulled_bytes,
        retried_ranges,
        memory_bytes: footprint.memory_bytes,
        memory_budget: footprint.memory_budget,
        spilled_bytes: footprint.spilled_bytes,
        spills: footprint.spills,
        dropped_copies: footprint.dropped_copies,
        disk_copies: footprint.disk_copies,
        served_bytes: host.transfers.served_bytes.load(Ordering::Relaxed),
        pin_requests: host.transfers.pin_requests.load(Ordering::Relaxed),
    }
}

/// `tenant`'s objects on every member.
pub async fn cluster_usage(host: &Arc<HostInner>, tenant: &str) -> Result<Vec<fabric_proto::HostObjects>, FabricError> {
    crate::validate_name("tenant", tenant)?;
    let mut all = vec![local_usage(host, tenant)];
    let request = Request::PeerObjects { tenant: tenant.to_string() };
    all.extend(
        crate::remote::gather_from_members(host, &request, "a list of objects", |answer| match answer {
            Response::Objects(usage) => Ok(usage),
            other => Err(format!("{other:?}")),
        })
        .await,
    );
    all.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(all)
}

/// Tells the hosts that keep results for objects freed here to let them go,
/// for as long as the host lives.
pub(crate) fn release_elsewhere(host: &Arc<HostInner>) {
    let weak = Arc::downgrade(host);
    let store = Arc::downgrade(&host.objects);
    tokio::spawn(async move {
        loop {
            let Some(objects) = store.upgrade() else { return };
            // Bounded, so a host that is dropped lets its store go.
            let news = tokio::time::timeout(std::time::Duration::from_secs(1), objects.elsewhere()).await;
            drop(objects);
            let Ok(news) = news else { continue };
            let Some(host) = weak.upgrade() else { return };
            let mut by_holder: std::collections::HashMap<(String, Arc<str>), Vec<WireObjectId>> = Default::default();
            for (tenant, id) in news.released {
                by_holder.entry((id.holder(), tenant)).or_default().push(id.into());
            }
            for ((holder, tenant), ids) in by_holder {
                // A holder that left took its objects with it.
                let Some(addr) = host.cluster.addr_of(&holder) else { continue };
                let request = Request::PeerRelease { tenant: tenant.to_string(), ids };
                crate::remote::tell(&host, addr, request, "to release objects");
            }
            for (tenant, id) in news.pinned {
                let host = host.clone();
                tokio::spawn(async move { set_pinned(&host, &tenant, id, true, false).await });
            }
        }
    });
}

/// Pins `tenant`'s object `id` wherever it is kept, and what it names
/// wherever that is (see [`super::ObjectStore::pin`]); `unpin` undoes it.
/// `strict`: the object must exist and (to unpin) be pinned. A part that is
/// gone (freed, or its host left: `not-found`) is skipped; any other
/// failure fails a pin, taking back the pins it made, so that nothing is
/// left half pinned (an unpin goes on with the other parts and then fails).
///
/// This host walks the whole graph, each object once, a wave at a time: the
/// parts of a wave are grouped by the host keeping them, each host pins its
/// own (one [`Request::PeerPin`] per host and up to
/// [`MAX_IDS_PER_FRAME`](fabric_proto::MAX_IDS_PER_FRAME) parts) and answers
/// with what they name on other hosts, the next wave. So a value naming
/// thousands of objects on one host costs one round trip there, not one
/// per object, and ids naming each other across hosts cannot make pins
/// bounce between hosts.
pub async fn set_pinned(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    id: ObjectId,
    pin: bool,
    strict: bool,
) -> Result<(), FabricError> {
    let mut seen = std::collections::HashSet::from([id]);
    let (mut wave, mut strict) = (vec![id], strict);
    let mut done = Vec::new();
    let mut failure = None;
    'walk: while !wave.is_empty() {
        let mut next = Vec::new();
        for (holder, ids) in by_holder(std::mem::take(&mut wave)) {
            let group = pin_group(host, tenant, &holder, ids, pin, strict).await;
            done.extend(group.done);
            next.extend(group.parts.into_iter().filter(|part| seen.insert(*part)));
            if let Some(error) = group.error {
                failure.get_or_insert(error);
                if pin {
                    break 'walk;
                }
            }
        }
        // Only the object asked for must exist.
        (wave, strict) = (next, false);
    }
    let Some(error) = failure else { return Ok(()) };
    if pin {
        for (holder, ids) in by_holder(done) {
            if let Some(undo) = pin_group(host, tenant, &holder, ids, false, false).await.error {
                tracing::warn!(host = %holder, "a pin that failed could not be taken back: {}", undo.message);
            }
        }
    }
    Err(error)
}

/// `ids` grouped by the host that keeps them.
fn by_holder(ids: Vec<ObjectId>) -> std::collections::BTreeMap<String, Vec<ObjectId>> {
    let mut groups: std::collections::BTreeMap<String, Vec<ObjectId>> = Default::default();
    for id in ids {
        groups.entry(id.holder()).or_default().push(id);
    }
    groups
}

/// What pinning (or unpinning) a group of parts on one host did.
#[derive(Debug, Default)]
pub struct PinGroup {
    /// The parts it pinned (a failed pin takes its own back: none).
    pub done: Vec<ObjectId>,
    /// What they name that other hosts keep.
    pub parts: Vec<ObjectId>,
    /// Why it failed, if it did.
    pub error: Option<FabricError>,
}

/// Pins (or unpins) `ids`, all kept by host `holder`, there: here, or with
/// one request per [`MAX_IDS_PER_FRAME`](fabric_proto::MAX_IDS_PER_FRAME)
/// of them to that host.
async fn pin_group(
    host: &Arc<HostInner>,
    tenant: &Arc<str>,
    holder: &str,
    ids: Vec<ObjectId>,
    pin: bool,
    strict: bool,
) -> PinGroup {
    if holder == host.id {
        return pin_here(host, tenant, &ids, pin, strict);
    }
    let Some(addr) = host.cluster.addr_of(holder) else {
        // No member minted them: as good as never existed.
        let error = strict.then(|| ids.first().map(|id| host.objects.missing(tenant, *id))).flatten();
        return PinGroup { error, ..PinGroup::default() };
    };
    let mut group = PinGroup::default();
    for chunk in ids.chunks(fabric_proto::MAX_IDS_PER_FRAME) {
        let request = Request::PeerPin {
            tenant: tenant.to_string(),
            ids: chunk.iter().copied().map(Into::into).collect(),
            pin,
            strict,
        };
        match host.peers.pin(&addr, &request).await {
            Ok((parts, error)) => {
                group.parts.extend(parts.into_iter().map(ObjectId::from));
                match error {
                    // Nothing of a failed pin stays pinned there.
                    Some(error) if pin => group.error = Some(error),
                    error => {
                        group.done.extend_from_slice(chunk);
                        group.error = group.error.or(error);
                    }
                }
            }
            Err(error) => group.error = Some(error.into_error()),
        }
        if pin && group.error.is_some() {
            break;
        }
    }
    group
}

/// Serves a peer's [`Request::PeerPin`]: [`pin_here`], counted.
pub fn serve_pin(host: &HostInner, tenant: &Arc<str>, ids: &[ObjectId], pin: bool, strict: bool) -> PinGroup {
    host.transfers.pin_requests.fetch_add(1, Ordering::Relaxed);
    pin_here(host, tenant, ids, pin, strict)
}

/// [`pin_group`] of objects this host minted: a part that is gone is
/// skipped unless `strict`; a pin that fails takes back what it pinned of
/// the group, an unpin goes on and fails after.
pub fn pin_here(host: &HostInner, tenant: &Arc<str>, ids: &[ObjectId], pin: bool, strict: bool) -> PinGroup {
    let mut group = PinGroup::default();
    for &id in ids {
        let outcome = if pin { host.objects.pin(tenant, id) } else { host.objects.unpin(tenant, id, strict) };
        match outcome {
            Ok(parts) => {
                group.done.push(id);
                group.parts.extend(parts);
            }
            Err(error) if !strict && error.kind == ErrorKind::NotFound => {
                tracing::debug!(object = %id, "a part of a pinned object is gone: {}", error.message);
            }
            Err(error) if pin => {
                for &pinned in &group.done {
                    // Cannot fail: not strict.
                    let _ = host.objects.unpin(tenant, pinned, false);
                }
                return PinGroup { error: Some(error), ..PinGroup::default() };
            }
            Err(error) => {
                group.error.get_or_insert(error);
            }
        }
    }
    group
}

/// An object id from its 32 hex digits.
pub fn parse_id(hex: &str) -> Result<ObjectId, FabricError> {
    crate::parse_id128("object", hex).map(|(hi, lo)| ObjectId { hi, lo })
}

//! Host-to-host RPC over QUIC: run a task on a peer, fetch a component from
//! one.
//!
//! One connection per peer, made on first use and reused; a stream per
//! request; a component travels raw on its own stream after a header frame.
//! Connections go out from the host's own endpoint (the socket it serves
//! on) and present the host's certificate, so the peer can tell a member
//! (signed by the cluster CA) from a CLI client and refuse peer requests
//! from the latter. When membership says a peer left, its connection is
//! closed, which fails the streams on it at once: the tasks that were
//! running there are retried elsewhere (see `remote`).

use fabric_proto::{
    read_frame, write_frame, ErrorKind, FabricError, Request, Response, WireObjectId, MAX_COMPONENT_BYTES, MAX_FRAME,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::io::AsyncReadExt;

/// How a request to a peer failed.
#[derive(Debug)]
pub enum PeerError {
    /// The peer or the path to it failed: the request may be retried
    /// elsewhere.
    Lost(FabricError),
    /// The peer answered with an error (the task's own outcome).
    Answered(FabricError),
    /// The peer would not take the work (it is draining, which the sender's
    /// view did not show yet): place it elsewhere, no retry spent.
    Refused(FabricError),
}

impl PeerError {
    /// The error, whichever way it failed.
    pub fn into_error(self) -> FabricError {
        match self {
            PeerError::Lost(e) | PeerError::Answered(e) | PeerError::Refused(e) => e,
        }
    }
}

fn lost(addr: &str, e: impl std::fmt::Display) -> PeerError {
    PeerError::Lost(FabricError::new(ErrorKind::Unavailable, format!("host at {addr}: {e}")))
}

/// How a task run on a peer ended well.
#[derive(Debug)]
pub enum RunOutput {
    /// Its result came back with it.
    Inline {
        /// The result.
        bytes: Vec<u8>,
        /// The objects it names.
        names: Vec<WireObjectId>,
    },
    /// Its result stays on the peer as object `id`, `len` bytes.
    Kept {
        /// The object there.
        id: fabric_proto::WireObjectId,
        /// Its size.
        len: u64,
    },
}

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Connections to peers, by address.
pub struct Peers {
    endpoint: OnceLock<quinn::Endpoint>,
    config: quinn::ClientConfig,
    connections: Mutex<HashMap<String, Slot>>,
}

impl Peers {
    /// Peers reached with `config` (which presents this host's certificate).
    pub fn new(config: quinn::ClientConfig) -> Self {
        Peers { endpoint: OnceLock::new(), config, connections: Mutex::new(HashMap::new()) }
    }

    /// Sends from `endpoint` (the host's serving socket) from now on.
    pub fn set_endpoint(&self, endpoint: quinn::Endpoint) {
        let _ = self.endpoint.set(endpoint);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open connection to `addr`, connecting if there is none.
    async fn connection(&self, addr: &str) -> Result<quinn::Connection, PeerError> {
        let slot = self.lock().entry(addr.to_string()).or_default().clone();
        // One connect per peer at a time; the others wait and reuse it.
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let endpoint = self.endpoint.get().ok_or_else(|| lost(addr, "this host is not serving yet"))?;
        let socket: SocketAddr = addr.parse().map_err(|e| lost(addr, format!("bad address: {e}")))?;
        let connecting =
            endpoint.connect_with(self.config.clone(), socket, crate::tls::SERVER_NAME).map_err(|e| lost(addr, e))?;
        let connection = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
            .map_err(|_| lost(addr, "connecting timed out"))?
            .map_err(|e| lost(addr, e))?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    /// Closes the connection to `addr` (the peer left): requests on it fail
    /// with [`PeerError::Lost`].
    pub fn disconnect(&self, addr: &str) {
        if let Some(slot) = self.lock().remove(addr) {
            if let Ok(guard) = slot.try_lock() {
                if let Some(connection) = guard.as_ref() {
                    connection.close(0u32.into(), b"the host left the cluster");
                }
            } else {
                // A connect is in progress; it will be dropped with its slot.
                let slot = slot.clone();
                tokio::spawn(async move {
                    if let Some(connection) = slot.lock().await.as_ref() {
                        connection.close(0u32.into(), b"the host left the cluster");
                    }
                });
            }
        }
    }

    /// Opens a stream to `addr` and sends `request`, leaving the stream
    /// open for what follows it.
    pub(crate) async fn open_stream(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), PeerError> {
        let connection = self.connection(addr).await?;
        let (mut send, recv) = connection.open_bi().await.map_err(|e| lost(addr, e))?;
        write_frame(&mut send, request).await.map_err(|e| lost(addr, e))?;
        Ok((send, recv))
    }

    /// Opens a stream to `addr` and sends `request`, all there is to send.
    pub(crate) async fn open(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), PeerError> {
        let (mut send, recv) = self.open_stream(addr, request).await?;
        let _ = send.finish();
        Ok((send, recv))
    }

    /// Runs a task on the peer at `addr` (`request` is a
    /// [`Request::PeerRun`]); its log chunks go to `on_log` as they come.
    /// Returns its result and the other hosts' objects it kept
    /// ([`Response::Borrowed`]).
    pub async fn run(
        &self,
        addr: &str,
        request: &Request,
        mut on_log: impl FnMut(&[u8]),
    ) -> Result<(RunOutput, Vec<WireObjectId>), PeerError> {
        let (_send, mut recv) = self.open(addr, request).await?;
        let (mut borrowed, mut names) = (Vec::new(), Vec::new());
        loop {
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                Ok(Some(Response::Log(chunk))) => on_log(&chunk),
                Ok(Some(Response::Borrowed(ids))) => borrowed.extend(ids),
                Ok(Some(Response::ResultNames(ids))) => names.extend(ids),
                Ok(Some(Response::Output(bytes))) => return Ok((RunOutput::Inline { bytes, names }, borrowed)),
                Ok(Some(Response::Stored { id, len })) => return Ok((RunOutput::Kept { id, len }, borrowed)),
                Ok(Some(Response::Error(e))) => return Err(PeerError::Answered(e)),
                Ok(Some(Response::Refused(e))) => return Err(PeerError::Refused(e)),
                Ok(Some(other)) => return Err(lost(addr, format!("unexpected answer to a task: {other:?}"))),
                Ok(None) => return Err(lost(addr, "the stream ended before the task did")),
                Err(e) => return Err(lost(addr, e)),
            }
        }
    }

    /// Sends `request` to the peer at `addr` and returns its one answer.
    pub async fn ask(&self, addr: &str, request: &Request) -> Result<Response, PeerError> {
        let (_send, mut recv) = self.open(addr, request).await?;
        match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
            Ok(Some(Response::Error(e))) => Err(PeerError::Answered(e)),
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(lost(addr, "the stream ended without an answer")),
            Err(e) => Err(lost(addr, e)),
        }
    }

    /// Sends [`Request::PeerPin`] to the peer at `addr`; returns the ids its
    /// [`Response::PinParts`] frames list, and the error it ended with
    /// instead of [`Response::Done`], if any.
    pub async fn pin(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<(Vec<WireObjectId>, Option<FabricError>), PeerError> {
        let (_send, mut recv) = self.open(addr, request).await?;
        let mut parts = Vec::new();
        loop {
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                Ok(Some(Response::PinParts(ids))) => parts.extend(ids),
                Ok(Some(Response::Done)) => return Ok((parts, None)),
                Ok(Some(Response::Error(e))) => return Ok((parts, Some(e))),
                Ok(Some(other)) => return Err(lost(addr, format!("unexpected answer to a pin: {other:?}"))),
                Ok(None) => return Err(lost(addr, "the stream ended without an answer")),
                Err(e) => return Err(lost(addr, e)),
            }
        }
    }

    /// Fetches component `sha256` of `tenant` from the peer at `addr`.
    pub async fn fetch_component(&self, addr: &str, tenant: &str, sha256: &str) -> Result<Vec<u8>, FabricError> {
        let request = Request::FetchComponent { tenant: tenant.to_string(), sha256: sha256.to_string() };
        let (_send, mut recv) = self.open(addr, &request).await.map_err(PeerError::into_error)?;
        let len = match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
            Ok(Some(Response::Component { len })) if len <= MAX_COMPONENT_BYTES => len,
            Ok(Some(Response::Error(e))) => return Err(e),
            Ok(other) => return Err(lost(addr, format!("unexpected answer to a fetch: {other:?}")).into_error()),
            Err(e) => return Err(lost(addr, e).into_error()),
        };
        let mut bytes = Vec::new();
        (&mut recv).take(len).read_to_end(&mut bytes).await.map_err(|e| lost(addr, e).into_error())?;
        if bytes.len() as u64 != len {
            return Err(
                lost(addr, format!("component transfer ended after {} of {len} bytes", bytes.len())).into_error()
            );
        }
        Ok(bytes)
    }
}

//! The error every fabric call returns, mirroring `fabric:core/types.error`.

use crate::bindings::fabric::core::types::Error as WitError;
use serde::{Deserialize, Serialize};

/// What went wrong in a fabric call; match on the case, print the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    /// The object, function, component or job does not exist for this tenant.
    NotFound(String),
    /// Guest code trapped (panic, unreachable, stack overflow).
    Trapped(String),
    /// A wall-clock timeout or CPU budget ran out.
    TimedOut(String),
    /// A memory cap, size limit or quota was hit.
    ResourceLimit(String),
    /// Arguments could not be decoded or were out of range.
    InvalidArgument(String),
    /// The host cannot serve this now.
    Unavailable(String),
    /// The job was stopped.
    Cancelled(String),
    /// The task returned an error of its own.
    Failed(String),
    /// The actor is dead; the message says why.
    ActorDead(String),
    /// A failure inside the host.
    Internal(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, message) = match self {
            Error::NotFound(m) => ("not found", m),
            Error::Trapped(m) => ("trapped", m),
            Error::TimedOut(m) => ("timed out", m),
            Error::ResourceLimit(m) => ("resource limit", m),
            Error::InvalidArgument(m) => ("invalid argument", m),
            Error::Unavailable(m) => ("unavailable", m),
            Error::Cancelled(m) => ("cancelled", m),
            Error::Failed(m) => ("failed", m),
            Error::ActorDead(m) => ("actor dead", m),
            Error::Internal(m) => ("internal error", m),
        };
        write!(f, "{kind}: {message}")
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(e: WitError) -> Self {
        match e {
            WitError::NotFound(m) => Error::NotFound(m),
            WitError::Trapped(m) => Error::Trapped(m),
            WitError::TimedOut(m) => Error::TimedOut(m),
            WitError::ResourceLimit(m) => Error::ResourceLimit(m),
            WitError::InvalidArgument(m) => Error::InvalidArgument(m),
            WitError::Unavailable(m) => Error::Unavailable(m),
            WitError::Cancelled(m) => Error::Cancelled(m),
            WitError::Failed(m) => Error::Failed(m),
            WitError::ActorDead(m) => Error::ActorDead(m),
            WitError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => WitError::NotFound(m),
            Error::Trapped(m) => WitError::Trapped(m),
            Error::TimedOut(m) => WitError::TimedOut(m),
            Error::ResourceLimit(m) => WitError::ResourceLimit(m),
            Error::InvalidArgument(m) => WitError::InvalidArgument(m),
            Error::Unavailable(m) => WitError::Unavailable(m),
            Error::Cancelled(m) => WitError::Cancelled(m),
            Error::Failed(m) => WitError::Failed(m),
            Error::ActorDead(m) => WitError::ActorDead(m),
            Error::Internal(m) => WitError::Internal(m),
        }
    }
}

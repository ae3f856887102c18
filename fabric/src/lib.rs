//! The `fabric` command as a library: the QUIC [`client`] every command uses,
//! and the [`output`] shapes they print, shared with tests and benchmarks.
#![warn(missing_docs)]

pub mod client;
pub mod output;

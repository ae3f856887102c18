//! The `fabric` command as a library: the QUIC [`client`] every command uses,
//! a small HTTP client for the gateway ([`http`], behind `fabric call`), and
//! the [`output`] shapes they print, shared with tests and benchmarks.
#![warn(missing_docs)]

pub mod client;
pub mod http;
pub mod output;

//! The WebSocket transport: which endpoint a request names, whether its parameters are valid,
//! and the per-connection loop.

pub mod admission;
pub mod connection;
pub mod deflate;
pub mod endpoint;
mod fragments;
pub mod upgrade;
mod wake_source;

pub use connection::{close, ConnectionSettings};
pub use endpoint::{Endpoint, InvalidRequest, Watch};

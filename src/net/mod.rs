//! TCP networking: the server side of the wire protocol, the node-to-node
//! [`Transport`](paytx_protocol::Transport) over TCP, and the multiplexed
//! connection both it and the [`Client`](crate::client::Client) use.
//!
//! Wire format: see [`paytx_protocol::frame`] (u32 big-endian length, u8
//! version, bincode body) and [`paytx_protocol::messages`] (an `Envelope` id
//! pairs each reply with its request; id 0 carries connection-level errors).

pub mod connection;
pub mod counters;
pub mod server;
pub mod tcp_transport;

pub use connection::{Connection, ConnectionError, ConnectionLimits};
pub use counters::{Refusal, ServerCounters, ServerCountersView};
pub use server::{serve, Handler, ServerLimits};
pub use tcp_transport::{PeerCredentials, TcpTransport, TransportLimits};

#[cfg(test)]
pub(crate) mod test_support;

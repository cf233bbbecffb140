//! [`ServerCounters`]: what a server's limits did, for the admin listener's
//! `/metrics` — open connections and every refusal by the limit that made
//! it. Relaxed atomics: a scrape needs no ordering with the requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Inner {
    open_connections: AtomicU64,
    accepted_connections: AtomicU64,
    refused_max_connections: AtomicU64,
    dropped_max_connections: AtomicU64,
    refused_max_in_flight_per_connection: AtomicU64,
    refused_max_in_flight_per_node: AtomicU64,
    idle_closed: AtomicU64,
}

/// Shared counters of one server (clones count into the same atomics).
#[derive(Debug, Clone, Default)]
pub struct ServerCounters(Arc<Inner>);

/// Which limit turned a connection or a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `max_connections`: answered `Overloaded`, closed.
    MaxConnections,
    /// Over `max_connections` with too many rejections in flight: dropped.
    MaxConnectionsDropped,
    MaxInFlightPerConnection,
    MaxInFlightPerNode,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsDropped,
        Refusal::MaxInFlightPerConnection,
        Refusal::MaxInFlightPerNode,
    ];

    /// The `limit` label of `paytx_net_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsDropped => "max_connections_dropped",
            Refusal::MaxInFlightPerConnection => "max_in_flight_per_connection",
            Refusal::MaxInFlightPerNode => "max_in_flight_per_node",
        }
    }
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerCountersView {
    pub open_connections: u64,
    pub accepted_connections: u64,
    pub idle_closed: u64,
    /// Indexed like [`Refusal::ALL`].
    pub refusals: [u64; 4],
}

impl ServerCounters {
    pub(crate) fn connection_opened(&self) {
        self.0.accepted_connections.fetch_add(1, Ordering::Relaxed);
        self.0.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn idle_closed(&self) {
        self.0.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::MaxConnections => &self.0.refused_max_connections,
            Refusal::MaxConnectionsDropped => &self.0.dropped_max_connections,
            Refusal::MaxInFlightPerConnection => &self.0.refused_max_in_flight_per_connection,
            Refusal::MaxInFlightPerNode => &self.0.refused_max_in_flight_per_node,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn view(&self) -> ServerCountersView {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerCountersView {
            open_connections: read(&self.0.open_connections),
            accepted_connections: read(&self.0.accepted_connections),
            idle_closed: read(&self.0.idle_closed),
            refusals: [
                read(&self.0.refused_max_connections),
                read(&self.0.dropped_max_connections),
                read(&self.0.refused_max_in_flight_per_connection),
                read(&self.0.refused_max_in_flight_per_node),
            ],
        }
    }
}

/// Counters compare equal when they are the same counters (so the limits
/// holding them stay comparable).
impl PartialEq for ServerCounters {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ServerCounters {}

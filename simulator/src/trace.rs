//! The run's trace: every delivered message, disk sync, crash, decision and
//! reply, with its virtual timestamp, folded into one hash. Same seed, same
//! hash — that is the determinism check. The last events are kept for
//! failure reports; all of them are kept when a trace file is asked for.

use std::collections::VecDeque;

/// Events kept for a failure report.
pub const RECENT_EVENTS: usize = 40;

/// FNV-1a 64 over everything recorded.
#[derive(Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    recent: VecDeque<String>,
    /// Every event line, when a full trace was requested.
    full: Option<Vec<String>>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over 8-byte words (then the tail byte by byte): as sensitive to
/// any changed byte as the byte-wise hash, an eighth of the multiplies.
/// The trace only needs "same events, same hash".
fn mix(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks_exact yields 8 bytes");
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(FNV_PRIME);
    }
    for byte in words.remainder() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Trace {
    pub fn new(keep_full: bool) -> Self {
        Trace { hash: FNV_OFFSET, events: 0, recent: VecDeque::new(), full: keep_full.then(Vec::new) }
    }

    fn mix(&mut self, bytes: &[u8]) {
        self.hash = mix(self.hash, bytes);
    }

    /// [`Trace::record`] with the encoding of `value` as its identity,
    /// hashed as it is encoded (never built: a delivery's request can be a
    /// whole Raft append).
    pub fn record_encoded<T: serde::Serialize>(&mut self, at_ms: u64, label: impl FnOnce() -> String, value: &T) {
        let mut hash = self.hash;
        // A value that cannot be encoded is identified by what it got to.
        let _ = paytx_protocol::encode_to_sink(value, &mut |bytes| hash = mix(hash, bytes));
        self.hash = hash;
        self.record(at_ms, label, &[]);
    }

    /// Records an event: `at_ms` virtual time, a short label, and the bytes
    /// that identify it (hashed, not kept).
    pub fn record(&mut self, at_ms: u64, label: impl FnOnce() -> String, identity: &[u8]) {
        self.events += 1;
        self.mix(&at_ms.to_le_bytes());
        self.mix(identity);
        // Labels cost a format!: build them only when someone will read them.
        let line = format!("{at_ms:>8} ms  {}", label());
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        if let Some(full) = &mut self.full {
            full.push(line.clone());
        }
        self.recent.push_back(line);
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn recent(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }

    pub fn take_full(&mut self) -> Option<Vec<String>> {
        self.full.take()
    }
}

//! Hostile bytes through every decoder of the coordinator: the Raft RPC
//! payloads and replies that arrive from the network (the receiving side of
//! `network.rs` decodes exactly these types with `paytx_protocol::decode`),
//! and the disk records of the Raft log store and the snapshot store.
//! Arbitrary bytes — and, for the disk, arbitrary payloads *behind a valid
//! checksum*, so the decoder itself is reached — never panic: each is a
//! value or a typed error.

#[path = "../../protocol/tests/damage/mod.rs"]
mod damage;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, SnapshotMeta, StoredMembership, Vote};
use paytx_coordinator::archive::{DiskArchive, KeyArchive, Version, KEYS_SPACE, TIMES_SPACE};
use paytx_coordinator::state_machine::StateMachineStore;
use paytx_coordinator::table::{Command, Proposal};
use paytx_coordinator::types::LogStore;
use paytx_coordinator::{NodeId, TypeConfig};
use paytx_protocol::{decode, encode, IdempotencyKey, Outcome, TxnId};
use paytx_storage::record::seal_bytes;
use paytx_storage::{Batch, Disk, MemDisk};
use proptest::prelude::*;
use std::sync::Arc;

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Valid encodings of every Raft RPC and reply, to damage.
fn samples() -> Vec<Vec<u8>> {
    let txn = TxnId { term: 2, node: 1, seq: 5 };
    let entries = vec![
        Entry::<TypeConfig> { log_id: log_id(2, 7), payload: EntryPayload::Blank },
        Entry::<TypeConfig> {
            log_id: log_id(2, 8),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![
                    Command::Decide { txn, key: None, outcome: Outcome::Committed },
                    Command::PresumeAbort { txn },
                ],
            }),
        },
        Entry::<TypeConfig> {
            log_id: log_id(2, 9),
            payload: EntryPayload::Normal(Proposal { commands: vec![Command::Forget { txns: vec![txn] }] }),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(2, 6)),
        entries,
        leader_commit: Some(log_id(2, 6)),
    };
    let vote = VoteRequest::<NodeId> { vote: Vote::new(3, 2), last_log_id: Some(log_id(2, 9)) };
    let meta = SnapshotMeta::<NodeId, openraft::BasicNode> {
        last_log_id: Some(log_id(2, 9)),
        last_membership: StoredMembership::default(),
        snapshot_id: "2-9-1".into(),
    };
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        meta,
        offset: 0,
        data: vec![1, 2, 3],
        done: true,
    };
    let append_ok: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = Ok(AppendEntriesResponse::Success);
    let vote_ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
        Ok(VoteResponse { vote: Vote::new(3, 2), vote_granted: true, last_log_id: None });
    let install_ok: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
        Ok(InstallSnapshotResponse { vote: Vote::new_committed(2, 1) });
    vec![
        encode(&append).expect("encodes"),
        encode(&vote).expect("encodes"),
        encode(&install).expect("encodes"),
        encode(&append_ok).expect("encodes"),
        encode(&vote_ok).expect("encodes"),
        encode(&install_ok).expect("encodes"),
    ]
}

/// Every type a Raft RPC payload or reply is decoded as.
fn decode_every_raft_type(bytes: &[u8]) {
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode::<VoteRequest<NodeId>>(bytes);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes);
    let _ = decode::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(bytes);
}

/// Stores `value` (raw or behind a valid checksum) in the log store's,
/// snapshot store's and key archive's keyspaces, then reads everything
/// back through them.
fn read_back_stores(payload: &[u8], sealed: bool) {
    let value = if sealed { seal_bytes(payload) } else { payload.to_vec() };
    let disk = MemDisk::new();
    let mut log = Batch::new();
    log.put(5u64.to_be_bytes().to_vec(), value.clone());
    log.put(b"short".to_vec(), value.clone());
    disk.apply("raft-log", log).expect("memory");
    let mut meta = Batch::new();
    for key in [&b"vote"[..], b"committed", b"purged"] {
        meta.put(key.to_vec(), value.clone());
    }
    disk.apply("raft-meta", meta).expect("memory");
    let mut snapshot = Batch::new();
    // The snapshot as stored before chunking, and the chunked layout's
    // manifest and a chunk of generation 1 (raft/src/snapshot.rs).
    snapshot.put(b"current".to_vec(), value.clone());
    snapshot.put(b"manifest".to_vec(), value.clone());
    let mut chunk_key = vec![0xff];
    chunk_key.extend_from_slice(&1u64.to_be_bytes());
    chunk_key.extend_from_slice(&0u32.to_be_bytes());
    snapshot.put(chunk_key, value);
    disk.apply("raft-snapshot", snapshot).expect("memory");

    let mut store = LogStore::new(Arc::new(disk.clone()));
    futures::executor::block_on(async {
        let _ = store.get_log_state().await;
        let _ = store.read_vote().await;
        let _ = store.read_committed().await;
        let _ = store.try_get_log_entries(0..100).await;
    });
    // The key archive's two spaces, under keys of every shape: a record
    // under a well-formed key, and the payload as a key itself.
    let mut keys = Batch::new();
    let mut well_formed = vec![3u8];
    well_formed.extend_from_slice(b"abc");
    well_formed.extend_from_slice(&[0; 12]);
    let record = if sealed { seal_bytes(payload) } else { payload.to_vec() };
    keys.put(well_formed, record);
    keys.put(payload.to_vec(), payload.to_vec());
    disk.apply(KEYS_SPACE, keys).expect("memory");
    let mut times = Batch::new();
    times.put(payload.to_vec(), Vec::new());
    let listed = if sealed { seal_bytes(payload) } else { payload.to_vec() };
    times.put([0u8; 20].to_vec(), listed);
    disk.apply(TIMES_SPACE, times).expect("memory");
    let archive = DiskArchive::new(Arc::new(disk.clone()));
    let _ = archive.get(&IdempotencyKey::new("abc"), Version::start_of(u64::MAX));
    let _ = archive.scan(Version::start_of(u64::MAX), &|_| true);
    let _ = archive.collect(0, u64::MAX);

    let _ = StateMachineStore::open(Arc::new(disk));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_raft_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_every_raft_type(&bytes);
    }

    #[test]
    fn damaged_raft_messages_never_panic(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        decode_every_raft_type(&damage::mutate(samples()[which].clone(), &edits));
    }

    #[test]
    fn arbitrary_log_and_snapshot_records_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        sealed in any::<bool>(),
    ) {
        read_back_stores(&payload, sealed);
    }

    #[test]
    fn damaged_log_entries_behind_a_valid_checksum_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        // The entries of the AppendEntries sample, as the log store seals them.
        let request: AppendEntriesRequest<TypeConfig> = decode(&samples()[0]).expect("sample decodes");
        let entry = encode(&request.entries[which]).expect("encodes");
        read_back_stores(&damage::mutate(entry, &edits), true);
    }
}

#[test]
fn samples_round_trip() {
    // The damaged-message properties start from valid encodings.
    let samples = samples();
    let append: AppendEntriesRequest<TypeConfig> = decode(&samples[0]).expect("decodes");
    assert_eq!(append.entries.len(), 3);
    let vote: VoteRequest<NodeId> = decode(&samples[1]).expect("decodes");
    assert_eq!(vote.vote, Vote::new(3, 2));
}

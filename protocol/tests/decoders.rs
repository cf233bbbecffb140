//! Hostile input through every network decoder of the protocol crate: the
//! frame reader and the envelope decoder. Arbitrary bytes, and valid frames
//! with bytes flipped, cut or inserted, never panic; each ends in a frame,
//! a clean end, or a typed error. Lengths claimed above the cap are refused
//! before anything is allocated for them.

mod damage;

use paytx_protocol::frame::{decode_body, encode_frame, read_frame, FrameError, FRAME_VERSION, MAX_FRAME_LIMIT_BYTES};
use paytx_protocol::messages::{AccountView, EntryView, RaftGroup, RaftRpcKind, RecordPage, RecordView};
use paytx_protocol::{
    AccountId, Currency, Envelope, Message, Money, Operation, OrderId, PeerRequest, PeerResponse, RecordExpect,
    RecordKey, Request, RequestError, Response, ShardId, TxnId, TxnRequest,
};
use proptest::prelude::*;

const CAP: u32 = 64 * 1024;

fn samples() -> Vec<Envelope> {
    let txn = TxnId { term: 3, node: 2, seq: 99 };
    let shard = ShardId { kind: paytx_protocol::EntityKind::Account, index: 1 };
    let record = RecordKey::new(7, b"username/alice");
    let ops = vec![
        Operation::Debit { account: AccountId(1), amount: Money::new(250, Currency::CNY) },
        Operation::Credit { account: AccountId(2), amount: Money::new(250, Currency::CNY) },
        Operation::PutRecord { key: record, value: Some(b"{\"id\":1}".to_vec()), expect: RecordExpect::Absent },
        Operation::PutRecordAtCommit {
            partition: paytx_protocol::Partition::new(paytx_protocol::ids::FIRST_ORDERED_NS + 4, b"mch_1").unwrap(),
            number: 17,
            value: b"{\"line\":1}".to_vec(),
        },
    ];
    let messages = vec![
        Message::Request(Request::Submit(TxnRequest::new("pay-1", ops.clone()))),
        Message::Request(Request::GetAccount(AccountId(7))),
        Message::Request(Request::GetOrder(OrderId(8))),
        Message::Response(Response::Account(Some(AccountView {
            account: AccountId(7),
            currency: Currency::CNY,
            balance_minor: 10,
            held_minor: 2,
            recent: vec![EntryView { txn, delta_minor: -2, balance_after_minor: 10 }],
        }))),
        Message::Request(Request::GetRecord(record)),
        Message::Request(Request::ScanRecords { shard: 1, ns: 7, after: Some(record), limit: 128 }),
        Message::Request(Request::ScanRange(paytx_protocol::RangeScan {
            partition: paytx_protocol::Partition::new(paytx_protocol::ids::FIRST_ORDERED_NS, b"mch_1").unwrap(),
            from: [0; 16],
            to: [0xff; 16],
            descending: true,
            after: Some([7; 16]),
            limit: 20,
        })),
        Message::Response(Response::Records(RecordPage {
            records: vec![RecordView { key: record, version: 3, value: vec![1, 2, 3] }],
            more: true,
            shard_count: 3,
        })),
        Message::Response(Response::Error(RequestError::Overloaded { what: "x".into() })),
        Message::Peer(PeerRequest::Prepare { txn, shard, ops: ops.clone() }),
        Message::Peer(PeerRequest::Decide { txn, shard, commit: true, at_ms: 1_764_547_200_000 }),
        Message::Peer(PeerRequest::PrepareBatch {
            shard,
            prepares: vec![
                paytx_protocol::messages::PrepareItem { txn, ops: ops.clone() },
                paytx_protocol::messages::PrepareItem { txn: TxnId { seq: 2, ..txn }, ops },
            ],
        }),
        Message::Peer(PeerRequest::DecideBatch {
            shard,
            decisions: vec![paytx_protocol::messages::DecisionItem { txn, commit: false, at_ms: 3 }],
        }),
        Message::PeerReply(PeerResponse::Votes {
            shard,
            votes: vec![
                (txn, paytx_protocol::messages::BatchVote::Voted(paytx_protocol::Vote::Yes)),
                (TxnId { seq: 2, ..txn }, paytx_protocol::messages::BatchVote::Blocked),
                (TxnId { seq: 3, ..txn }, paytx_protocol::messages::BatchVote::Failed(RequestError::ShuttingDown)),
            ],
        }),
        Message::PeerReply(PeerResponse::DecisionsApplied { shard, applied: vec![txn] }),
        Message::PeerReply(PeerResponse::Decision { commit: true, at_ms: 1_764_547_200_000 }),
        Message::Peer(PeerRequest::Raft {
            group: RaftGroup::Coordinator,
            to: 2,
            kind: RaftRpcKind::AppendEntries,
            payload: vec![1, 2, 3, 4, 5],
        }),
        Message::PeerReply(PeerResponse::Raft(Ok(vec![9; 16]))),
    ];
    messages.into_iter().enumerate().map(|(i, message)| Envelope { id: i as u64 + 1, message }).collect()
}

/// Reads every frame in `bytes` until the end or the first error.
fn read_all(bytes: &[u8]) -> Vec<Result<Option<Envelope>, String>> {
    futures::executor::block_on(async {
        let mut reader = bytes;
        let mut out = Vec::new();
        loop {
            match read_frame(&mut reader, CAP).await {
                Ok(Some(envelope)) => out.push(Ok(Some(envelope))),
                Ok(None) => {
                    out.push(Ok(None));
                    break;
                }
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_reader_or_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let _ = read_all(&bytes);
        let _ = decode_body(&bytes);
        let _ = paytx_protocol::decode::<Envelope>(&bytes);
    }

    #[test]
    fn damaged_valid_frames_never_panic_and_valid_ones_round_trip(
        which in 0usize..9,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6),
    ) {
        let sample = samples()[which].clone();
        let frame = encode_frame(&sample, CAP).expect("samples fit");
        if edits.is_empty() {
            prop_assert_eq!(read_all(&frame)[0].clone(), Ok(Some(sample)));
        }
        let damaged = damage::mutate(frame.clone(), &edits);
        let _ = read_all(&damaged);
        if damaged.len() > 5 {
            let _ = decode_body(&damaged[5..]);
        }
    }
}

/// A bincode varint of `n` (the length prefix of a collection).
fn varint(n: u64) -> Vec<u8> {
    let mut out = vec![253];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

#[test]
fn claimed_lengths_above_the_cap_are_refused_without_allocating_them() {
    // A frame header claiming 4 GiB: refused before a byte of body is read.
    let header = [0xff, 0xff, 0xff, 0xff, FRAME_VERSION];
    let result = futures::executor::block_on(read_frame(&mut &header[..], CAP));
    assert!(matches!(result, Err(FrameError::TooLarge { .. })), "{result:?}");

    // A body claiming a huge byte string / string / sequence backed by no
    // bytes: refused, either up front by the decoder's limit (the frame
    // ceiling) or at the end of the input — serde preallocates at most
    // 1 MiB for a claimed length ("cautious" size hints), so the claim
    // itself is never allocated.
    for claim in [MAX_FRAME_LIMIT_BYTES as u64 + 1, 1 << 40, u64::MAX] {
        let bytes = varint(claim);
        for result in [
            paytx_protocol::decode::<Vec<u8>>(&bytes).map(|_| ()),
            paytx_protocol::decode::<String>(&bytes).map(|_| ()),
            paytx_protocol::decode::<Vec<u64>>(&bytes).map(|_| ()),
        ] {
            let error = result.expect_err("a claim above the cap must fail").to_string().to_lowercase();
            assert!(error.contains("limit") || error.contains("unexpectedend"), "claim {claim}: {error}");
        }
    }
    // The same claim inside a Submit's idempotency key: a typed error.
    let mut body = paytx_protocol::encode(&Envelope { id: 1, message: Message::Request(Request::NodeStatus) }).unwrap();
    body.truncate(2); // id, then Message::Request tag
    body.push(0); // Request::Submit
    body.extend(varint(1 << 40)); // the key's length
    assert!(matches!(decode_body(&body), Err(FrameError::Malformed(_))));
}

/// Byte fields are encoded as byte strings (`serde_bytes`): the bytes on
/// the wire must stay exactly those of a sequence of `u8`, so frames,
/// journals and logs written before decode the same.
#[test]
fn byte_fields_keep_the_encoding_of_a_sequence_of_u8() {
    #[derive(serde::Serialize)]
    struct AsSequence {
        group: paytx_protocol::messages::RaftGroup,
        to: u64,
        kind: RaftRpcKind,
        payload: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    enum Old {
        Raft(AsSequence),
    }
    for len in [0usize, 1, 250, 251, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let new = PeerRequest::Raft {
            group: RaftGroup::Coordinator,
            to: 3,
            kind: RaftRpcKind::AppendEntries,
            payload: payload.clone(),
        };
        let old =
            Old::Raft(AsSequence { group: RaftGroup::Coordinator, to: 3, kind: RaftRpcKind::AppendEntries, payload });
        assert_eq!(paytx_protocol::encode(&new).unwrap(), paytx_protocol::encode(&old).unwrap(), "{len} bytes");
        let decoded: PeerRequest = paytx_protocol::decode(&paytx_protocol::encode(&new).unwrap()).unwrap();
        assert_eq!(decoded, new);
    }
}

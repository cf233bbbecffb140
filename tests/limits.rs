//! Bounded resources under a connection flood, against a real `paytx node`
//! process: thousands of idle connections and hundreds of half-sent frames
//! while a normal client keeps committing payments.
//!
//! Asserts: the client keeps committing throughout; connections over
//! `max_connections` get an id-0 `Overloaded` reply (or, past the bounded
//! number of rejections in flight, a bare close) and are closed; half-sent
//! frames are closed after `frame_read_timeout_ms`, freeing their slots; the
//! node's peak resident memory (VmHWM) stays under a generous bound. The
//! measured peak is printed (README, "Faults and limits").
#![cfg(target_os = "linux")]

mod single_node;

use paytx::protocol::frame::{read_frame, DEFAULT_MAX_FRAME_BYTES};
use paytx::protocol::{Envelope, Message, RequestError, Response};
use single_node::{balance, client, commit, config, open_ops, transfer, NodeProcess};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Idle connections and half-sent frames wanted (scaled down to the fd limit).
const IDLE: usize = 2_000;
const HALF_FRAMES: usize = 300;
const OVER_LIMIT: usize = 150;
/// Long enough that no half-sent frame times out (freeing a slot an
/// over-limit connection would then take, unanswered) before the refusals
/// below are counted: on a loaded machine the flood itself has taken 11 s
/// (SYN retries), and a 2 s timeout made the test fail there.
const FRAME_TIMEOUT_MS: u64 = 15_000;
/// Generous: the node holds a few KiB per connection.
const MAX_PEAK_RSS_MIB: u64 = 256;

/// The soft limit on open files of this process (the node inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// What the server did with a connection it could not take.
async fn refusal(mut stream: TcpStream) -> Option<RequestError> {
    match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES)).await {
        Ok(Ok(Some(Envelope { id: 0, message: Message::Response(Response::Error(error)) }))) => Some(error),
        Ok(Ok(Some(other))) => panic!("an over-limit connection got {other:?}"),
        Ok(Ok(None)) | Ok(Err(_)) => None,
        Err(_) => panic!("an over-limit connection was neither answered nor closed within 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_payments_keep_committing() {
    // Each connection costs one fd here and one in the node; keep headroom.
    let budget = open_files_limit().saturating_sub(200);
    let scale = |n: usize| n.min(budget * n / (IDLE + HALF_FRAMES + OVER_LIMIT));
    let (idle, half_frames, over_limit) = (scale(IDLE), scale(HALF_FRAMES), scale(OVER_LIMIT));
    assert!(idle >= 100, "the fd limit ({}) is too low for this test", open_files_limit());

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = config(dir.path());
    // Room for the flood and the client; everything past it is over the limit.
    config.limits.max_connections = idle + half_frames + 1;
    config.limits.frame_read_timeout_ms = FRAME_TIMEOUT_MS;
    config.limits.idle_timeout_ms = 120_000;
    let node = NodeProcess::spawn(dir.path(), &config, "node");
    let addr = node.addr();
    let payer = client(addr).await;
    commit(&payer, "open", open_ops(&[(1, 1_000_000), (2, 0)])).await;

    // The flood: idle connections, then half-sent frames.
    let started = Instant::now();
    let mut idle_streams = Vec::with_capacity(idle);
    for _ in 0..idle {
        idle_streams.push(TcpStream::connect(addr).await.expect("connect an idle connection"));
    }
    let mut half = Vec::with_capacity(half_frames);
    for _ in 0..half_frames {
        let mut stream = TcpStream::connect(addr).await.expect("connect a half-frame connection");
        // Half a length prefix: the frame has started and never finishes.
        stream.write_all(&[0, 0]).await.expect("write half a header");
        half.push(stream);
    }
    println!("{idle} idle + {half_frames} half-frame connections in {:?}", started.elapsed());

    // Payments go on meanwhile, on the client's own connection.
    let mut paid = 0;
    let paying = Instant::now();
    for i in 0..30 {
        commit(&payer, &format!("during-flood-{i}"), transfer(1, 2, 3)).await;
        paid += 3;
    }
    println!("30 payments during the flood in {:?}", paying.elapsed());

    // Over the limit: a typed Overloaded, then a close (or a bare close once
    // too many refusals are in flight). Some of these may still find a slot
    // freed by a half frame timing out; those must not be refused.
    let mut extra = Vec::with_capacity(over_limit);
    for _ in 0..over_limit {
        extra.push(TcpStream::connect(addr).await.expect("connect over the limit"));
    }
    let (mut overloaded, mut closed) = (0, 0);
    let early = Instant::now();
    for stream in extra.drain(..) {
        match refusal(stream).await {
            Some(RequestError::Overloaded { what }) => {
                assert!(what.contains("connections"), "{what}");
                overloaded += 1;
            }
            Some(other) => panic!("over-limit connection got {other:?}"),
            None => closed += 1,
        }
        if early.elapsed() > Duration::from_millis(FRAME_TIMEOUT_MS / 3) {
            break; // half frames may be timing out now: stop counting refusals
        }
    }
    println!("over the limit: {overloaded} Overloaded, {closed} closed without a reply");
    assert!(overloaded > 0, "no over-limit connection got Overloaded");

    // Half-sent frames are closed by the node after the frame timeout.
    let deadline = Instant::now() + Duration::from_millis(FRAME_TIMEOUT_MS * 2);
    for mut stream in half.drain(..) {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let end = tokio::time::timeout(left, read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES)).await;
        assert!(
            matches!(end, Ok(Ok(None)) | Ok(Err(_))),
            "a half-sent frame was not closed within {} ms: {end:?}",
            FRAME_TIMEOUT_MS * 2
        );
    }

    // Their slots are free again: a new client connects and commits, while
    // the idle connections are still open.
    let second = client(addr).await;
    commit(&second, "after-flood", transfer(1, 2, 5)).await;
    paid += 5;
    assert_eq!(balance(&payer, 2).await, Some(paid));
    assert_eq!(balance(&payer, 1).await, Some(1_000_000 - paid));

    let peak_kib = node.peak_rss_kib();
    println!(
        "peak RSS of the node (VmHWM) with {idle} idle + {half_frames} half-frame + {over_limit} refused connections: {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib / 1024 < MAX_PEAK_RSS_MIB, "peak RSS {peak_kib} KiB over {MAX_PEAK_RSS_MIB} MiB");
    drop(idle_streams);
}

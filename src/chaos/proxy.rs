//! A fault-injecting TCP proxy for one directed node-to-node link.
//!
//! Node `a` dials node `b` through the proxy of link `a→b` (its config's
//! `[[peers]]` address for `b` is the proxy's port). The proxy forwards
//! bytes in both directions — `up` (from the dialling node to the target)
//! and `down` (the answers) — and the harness sets each direction's
//! [`Mode`] at any time: pass, delay (a slow link), or drop. Dropping comes
//! in two styles: `Hold` stops moving bytes but keeps every connection open
//! (a silent partition: the kernel buffers fill, nothing arrives, the
//! sender only learns through its timeouts) and delivers them late once
//! healed; `Close` closes every connection through the link and every new
//! one at once (a partition the sender notices).
//!
//! The proxy only moves bytes: nodes still authenticate each other with the
//! cluster secret over the proxied connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes read per chunk; a delay applies per chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks read and not yet written, per direction of a connection (the
/// bound on what a proxy buffers: `QUEUE_CHUNKS × CHUNK_BYTES`).
const QUEUE_CHUNKS: usize = 256;
/// Bound on dialling the target.
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How a dropped direction drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DropStyle {
    /// Keep connections open, move nothing (delivered once healed).
    Hold,
    /// Close every connection through the link, and new ones at once.
    Close,
}

/// What one direction of a link does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Pass,
    /// Each chunk waits this long before it is forwarded (order is kept).
    Delay {
        ms: u64,
    },
    Drop(DropStyle),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot bind the proxy on loopback: {0}")]
    Bind(std::io::Error),
}

/// One proxied link. Dropping it stops the proxy and closes its connections.
pub struct LinkProxy {
    addr: SocketAddr,
    up: watch::Sender<Mode>,
    down: watch::Sender<Mode>,
    acceptor: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    /// Must be called within a tokio runtime.
    pub async fn start(target: SocketAddr) -> Result<LinkProxy, ProxyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let (up, up_rx) = watch::channel(Mode::Pass);
        let (down, down_rx) = watch::channel(Mode::Pass);
        let acceptor = tokio::spawn(accept_loop(listener, target, up_rx, down_rx));
        Ok(LinkProxy { addr, up, down, acceptor })
    }

    /// Where the dialling node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the mode of the dialling node → target direction.
    pub fn set_up(&self, mode: Mode) {
        self.up.send_replace(mode);
    }

    /// Sets the mode of the target → dialling node direction (the answers).
    pub fn set_down(&self, mode: Mode) {
        self.down.send_replace(mode);
    }

    /// Both directions back to `Pass`; held bytes flow again.
    pub fn heal(&self) {
        self.set_up(Mode::Pass);
        self.set_down(Mode::Pass);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Connections see `Close` and end; the acceptor stops listening.
        self.up.send_replace(Mode::Drop(DropStyle::Close));
        self.down.send_replace(Mode::Drop(DropStyle::Close));
        self.acceptor.abort();
    }
}

fn closing(mode: Mode) -> bool {
    mode == Mode::Drop(DropStyle::Close)
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: watch::Receiver<Mode>,
    down: watch::Receiver<Mode>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if closing(*up.borrow()) || closing(*down.borrow()) {
            drop(inbound);
            continue;
        }
        tokio::spawn(connection(inbound, target, up.clone(), down.clone()));
    }
}

/// Forwards one connection until either side closes or a direction turns
/// to `Close`.
async fn connection(inbound: TcpStream, target: SocketAddr, up: watch::Receiver<Mode>, down: watch::Receiver<Mode>) {
    let connect = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect(target));
    let Ok(Ok(outbound)) = connect.await else {
        return; // target down: the dialler sees its connection close
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // Either direction ending ends the connection: node links are
    // request/response streams, a half-open one is useless.
    tokio::select! {
        _ = pump(in_read, out_write, up) => {}
        _ = pump(out_read, in_write, down) => {}
    }
}

/// Moves bytes from `reader` to `writer` as `mode` says. Returns when the
/// stream ends, fails, or the mode turns to `Close`.
async fn pump(reader: OwnedReadHalf, writer: OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    // Reading and writing are decoupled by a queue of time-stamped chunks,
    // so a delay is latency (each chunk leaves `ms` after it arrived), not
    // a throughput cap that compounds under load.
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::join!(read_side(reader, tx, mode.clone()), write_side(rx, writer, mode));
}

async fn read_side(
    mut reader: OwnedReadHalf,
    queue: mpsc::Sender<(Instant, Vec<u8>)>,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        // Read only while bytes may move: a held direction leaves them in
        // the kernel's buffers, so the sender's writes eventually block.
        if !wait_passing(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            // The mode changed while waiting for bytes: look again (reading
            // is cancel-safe, nothing is lost).
            changed = mode.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return, // dropping the queue ends the writer
            Ok(n) => n,
        };
        if queue.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
            return; // the writer is gone
        }
    }
}

async fn write_side(
    mut queue: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut writer: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    while let Some((read_at, chunk)) = queue.recv().await {
        // A chunk already read is delivered under the mode of now.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Delay { ms } => {
                    tokio::time::sleep_until((read_at + Duration::from_millis(ms)).into()).await;
                    break;
                }
                Mode::Drop(DropStyle::Close) => return,
                Mode::Drop(DropStyle::Hold) => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if writer.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Waits until the direction passes bytes (pass or delay); `false` when it
/// closes instead.
async fn wait_passing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Pass | Mode::Delay { .. } => return true,
            Mode::Drop(DropStyle::Close) => return false,
            Mode::Drop(DropStyle::Hold) => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends `message` and reads the echo, within `timeout_ms`.
    async fn round_trip(stream: &mut TcpStream, message: &[u8], timeout_ms: u64) -> Option<Vec<u8>> {
        stream.write_all(message).await.ok()?;
        let mut got = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_millis(timeout_ms), stream.read_exact(&mut got)).await.ok()?.ok()?;
        Some(got)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways() {
        let proxy = LinkProxy::start(echo_server().await).await.expect("proxy starts");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect through the proxy");
        for i in 0..20u8 {
            let message = vec![i; 100 + usize::from(i) * 500];
            assert_eq!(round_trip(&mut stream, &message, 2_000).await, Some(message));
        }
    }

    #[tokio::test]
    async fn hold_blocks_and_heal_delivers_what_was_held() {
        let proxy = LinkProxy::start(echo_server().await).await.expect("proxy starts");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect through the proxy");
        assert_eq!(round_trip(&mut stream, b"before", 2_000).await.as_deref(), Some(&b"before"[..]));

        proxy.set_up(Mode::Drop(DropStyle::Hold));
        assert_eq!(round_trip(&mut stream, b"held", 300).await, None, "nothing passes a held link");
        // Only the answers dropped: the request arrives, its echo does not.
        proxy.set_up(Mode::Pass);
        proxy.set_down(Mode::Drop(DropStyle::Hold));
        let mut got = vec![0u8; 4];
        let late = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut got)).await;
        assert!(late.is_err(), "the echo of the held bytes waits behind the dropped answers");

        proxy.heal();
        // What was held arrives once healed, in order, and the link works.
        let mut got = vec![0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut got))
            .await
            .expect("held bytes arrive after healing")
            .expect("read");
        assert_eq!(&got, b"held");
        assert_eq!(round_trip(&mut stream, b"after", 2_000).await.as_deref(), Some(&b"after"[..]));
    }

    #[tokio::test]
    async fn close_ends_connections_and_refuses_new_ones_until_healed() {
        let proxy = LinkProxy::start(echo_server().await).await.expect("proxy starts");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect through the proxy");
        assert!(round_trip(&mut stream, b"ping", 2_000).await.is_some());

        proxy.set_up(Mode::Drop(DropStyle::Close));
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the open connection is closed: {closed:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("the listener still accepts");
        assert_eq!(round_trip(&mut fresh, b"ping", 500).await, None, "a new connection is closed at once");

        proxy.heal();
        let mut healed = TcpStream::connect(proxy.addr()).await.expect("connect after healing");
        assert_eq!(round_trip(&mut healed, b"ping", 2_000).await.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn delay_slows_every_round_trip() {
        let proxy = LinkProxy::start(echo_server().await).await.expect("proxy starts");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect through the proxy");
        proxy.set_up(Mode::Delay { ms: 150 });
        proxy.set_down(Mode::Delay { ms: 100 });
        let started = Instant::now();
        assert!(round_trip(&mut stream, b"slow", 3_000).await.is_some());
        assert!(started.elapsed() >= Duration::from_millis(250), "took {:?}", started.elapsed());
        // Latency, not a throughput cap: ten messages in flight at once
        // take one delay, not ten.
        let started = Instant::now();
        for i in 0..10u8 {
            stream.write_all(&[i; 100]).await.expect("write");
        }
        let mut got = vec![0u8; 1_000];
        tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut got))
            .await
            .expect("echoes arrive")
            .expect("read");
        assert!(got.chunks(100).enumerate().all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)), "order kept");
        assert!(started.elapsed() < Duration::from_millis(1_000), "took {:?}", started.elapsed());
        proxy.heal();
        let started = Instant::now();
        assert!(round_trip(&mut stream, b"fast", 3_000).await.is_some());
        assert!(started.elapsed() < Duration::from_millis(200), "took {:?}", started.elapsed());
    }
}

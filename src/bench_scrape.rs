//! `paytx bench --scrape-every-ms MS`: while the bench runs, fetch every
//! node's admin `/metrics` and `/console` every `MS` milliseconds — what a
//! Prometheus server and an open console tab do, only more often — so the
//! bench's rows show what operating a cluster costs its commit path.
//! (The embedded nodes run in the bench's process, so the scrapes' CPU is
//! in the `cpu` column as well as in the throughput.)

use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What each round fetches from every node.
pub const PATHS: [&str; 2] = ["/metrics", "/console"];
/// The shortest period accepted: a scrape of three nodes' console takes a
/// few milliseconds, and a period below this would measure the scraper.
pub const MIN_EVERY_MS: u64 = 100;
/// Refuses a period under [`MIN_EVERY_MS`] (checked before the bench
/// starts its cluster, and again by [`Scraper::start`]).
pub fn check_every_ms(every_ms: u64) -> anyhow::Result<()> {
    anyhow::ensure!(every_ms >= MIN_EVERY_MS, "--scrape-every-ms must be at least {MIN_EVERY_MS}");
    Ok(())
}

/// One fetch gives up after this long (it counts as failed).
const FETCH_TIMEOUT_MS: u64 = 10_000;

/// Running totals since the scraper started.
#[derive(Default)]
struct Totals {
    fetches: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
    bytes: AtomicU64,
}

/// The totals at one moment, to take a window's difference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    fetches: u64,
    failures: u64,
    micros: u64,
    bytes: u64,
}

/// The scrapes of one measured window, as the bench reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScrapeWindow {
    pub every_ms: u64,
    /// Successful fetches (of every path on every node) in the window.
    pub fetches: u64,
    pub failures: u64,
    pub mean_fetch_ms: Option<f64>,
    pub mean_bytes: Option<f64>,
}

pub struct Scraper {
    every_ms: u64,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Scraper {
    /// Starts fetching [`PATHS`] from every address of `admin` every
    /// `every_ms`, with `admin_key` as the bearer key (the console needs
    /// it; `/metrics` ignores it).
    pub fn start(admin: Vec<SocketAddr>, admin_key: String, every_ms: u64) -> anyhow::Result<Scraper> {
        check_every_ms(every_ms)?;
        let http = reqwest::Client::builder().timeout(Duration::from_millis(FETCH_TIMEOUT_MS)).build()?;
        let totals = Arc::new(Totals::default());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (totals, stop) = (totals.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(every_ms));
                // A slow round is not followed by a burst of catch-up rounds.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for addr in &admin {
                        for path in PATHS {
                            fetch(&http, &totals, *addr, path, &admin_key).await;
                        }
                    }
                }
            }
        });
        Ok(Scraper { every_ms, totals, stop, task })
    }

    pub fn counts(&self) -> Counts {
        let t = &self.totals;
        Counts {
            fetches: t.fetches.load(Ordering::Relaxed),
            failures: t.failures.load(Ordering::Relaxed),
            micros: t.micros.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
        }
    }

    /// The fetches between two [`Scraper::counts`].
    pub fn window(&self, before: Counts, after: Counts) -> ScrapeWindow {
        let fetches = after.fetches.saturating_sub(before.fetches);
        let per_fetch = |total: u64| (fetches > 0).then(|| total as f64 / fetches as f64);
        ScrapeWindow {
            every_ms: self.every_ms,
            fetches,
            failures: after.failures.saturating_sub(before.failures),
            mean_fetch_ms: per_fetch(after.micros.saturating_sub(before.micros)).map(|us| us / 1_000.0),
            mean_bytes: per_fetch(after.bytes.saturating_sub(before.bytes)),
        }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // At most one round (bounded by the fetch timeout) to finish.
        let _ = self.task.await;
    }
}

async fn fetch(http: &reqwest::Client, totals: &Totals, addr: SocketAddr, path: &str, admin_key: &str) {
    let started = Instant::now();
    let response = http.get(format!("http://{addr}{path}")).bearer_auth(admin_key).send().await;
    let body = match response {
        Ok(r) if r.status().is_success() => r.bytes().await.ok(),
        Ok(r) => {
            tracing::warn!(%addr, path, status = %r.status(), "bench scrape refused");
            None
        }
        Err(e) => {
            tracing::warn!(%addr, path, error = %e, "bench scrape failed");
            None
        }
    };
    match body {
        Some(body) => {
            totals.fetches.fetch_add(1, Ordering::Relaxed);
            totals.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            totals.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        None => {
            totals.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

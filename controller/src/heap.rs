//! Giving freed heap back to the system.
//!
//! A controller's heap grows in bursts: a restarted controller meets the whole fleet at once
//! (10,000 TLS handshakes, hellos and inventory reports decoded, encoded and written within a
//! minute), and most of what a burst allocated is freed when it ends. glibc's malloc keeps freed
//! memory in its arenas for reuse, so the RSS stays at the burst's height. Measured with
//! `certfleet-loadgen` at 10,000 agents × 10 certificates: 1,168 MB RSS once the fleet was in,
//! 907 MB after one `malloc_trim(0)`, with nothing else changed.
//!
//! So the controller trims every [`EVERY`] on the blocking pool, which also gives back, within
//! one interval, what building the inventory index at start decoded. Not only after its RSS
//! grew: the RSS does not fall when a burst's memory is freed, so a trim during the burst (heap
//! in use) followed by the burst's end would leave the freed memory held. A trim walks the
//! arenas: 5–10 ms at 300 MB, once per interval, is noise next to the heartbeat load. Other C
//! libraries (musl) keep no such cache: there it is a no-op.

use std::time::{Duration, Instant};

use certfleet_common::heap::{rss_bytes, trim};

/// How often the heap is trimmed.
pub const EVERY: Duration = Duration::from_secs(5);

/// Trims every [`EVERY`] (see the module's note) until `stop`.
pub async fn trim_periodically(mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // The RSS around it is read only for the debug log.
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let (before, started) = (if debug { rss_bytes() } else { 0 }, Instant::now());
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        if debug {
            tracing::debug!(
                before_mb = before >> 20,
                after_mb = rss_bytes() >> 20,
                released,
                took_ms = started.elapsed().as_millis() as u64,
                "heap trimmed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst's freed memory goes back to the system (glibc keeps it otherwise).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_a_freed_burst_back() {
        // Many small blocks (below the mmap threshold: they live in the arenas), then all freed
        // but the last, which keeps the heap's top from shrinking by itself.
        let mut blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let before = rss_bytes();
        assert!(trim(), "malloc_trim released nothing");
        let after = rss_bytes();
        assert!(
            after + (20 << 20) < before,
            "RSS {} MB before the trim, {} MB after",
            before >> 20,
            after >> 20
        );
        drop(keep);
    }
}

//! The controller's inventory index: the heap it holds for a fleet's certificates (issue 10's
//! target: at most 150 MB per 100,000 tracked certificates).
//!
//! Reports shaped like `certfleet-loadgen`'s (N agents × M distinct certificates, each at its
//! own file path, real DER) are applied through `inventory::apply` to a real store; then a
//! controller is loaded from that store again and the index is built from it, as at start.
//! A counting allocator gives the bytes live before and after the build (the store's documents
//! are read once beforehand, so sled's page cache is already full and not counted), and the
//! peak while building; and the resident memory the build added once freed heap is trimmed
//! (glibc's per-allocation overhead included).
//!
//! `cargo bench -p certfleet-integration-tests --bench index -- [--agents N] [--certs M]`
//! (default 10,000 × 10). Prints a table; asserts nothing.

// A counting global allocator is the one unsafe thing here.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use certfleet_common::proto as pb;
use certfleet_controller::fleet::{AgentRecord, ServeOptions};
use certfleet_controller::inventory::{self, AgentInventory};
use certfleet_integration_tests::loadgen::{bench_ca, make_certificates};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as above.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    let agents = arg("--agents", 10_000);
    let per_agent = arg("--certs", 10);
    let total = agents * per_agent;
    certfleet_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    certfleet_controller::server::init(dir.path(), &[]).unwrap();

    eprintln!("making {total} certificates and applying {agents} reports…");
    let t = Instant::now();
    {
        let (fleet, _) =
            certfleet_controller::server::load(dir.path(), ServeOptions::default(), false).unwrap();
        let ca = bench_ca().unwrap();
        for a in 0..agents {
            let name = format!("vagent-{a:05}");
            let agent: AgentRecord = serde_json::from_value(serde_json::json!({
                "id": name, "name": name, "hostname": format!("{name}.bench.example"),
                "platforms": [], "version": "1", "state": "active", "enrolled_at": 1,
                "last_seen": 0, "cert_not_after": 0, "cert_fingerprint": "", "key_id": "",
                "labels": {}, "cas": [], "renewable": [], "superseded": [],
            }))
            .unwrap();
            fleet.store.put("agents", &name, &agent).unwrap();
            let report = pb::InventoryReport {
                full: true,
                certificates: make_certificates(&ca, &name, per_agent, a).unwrap(),
                scanned_at: certfleet_common::model::now(),
                ..Default::default()
            };
            inventory::apply(&fleet, &name, report, usize::MAX).unwrap();
        }
        fleet.store.flush().unwrap();
    }
    let applied = t.elapsed();

    // A controller starting on that store.
    let (fleet, _) =
        certfleet_controller::server::load(dir.path(), ServeOptions::default(), false).unwrap();
    for _ in 0..2 {
        let docs: Vec<AgentInventory> = fleet.store.list("inventory").unwrap();
        assert_eq!(docs.len(), agents);
    }
    let _ = fleet.agent_directory().unwrap();
    certfleet_common::heap::trim();
    let rss_before = certfleet_common::heap::rss_bytes() as usize;
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = Instant::now();
    fleet.inventory.warm(&fleet).unwrap();
    let built = t.elapsed();
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    certfleet_common::heap::trim();
    let rss_grew = (certfleet_common::heap::rss_bytes() as usize).saturating_sub(rss_before);
    let snap = fleet.inventory.snapshot(&fleet).unwrap();
    assert_eq!(snap.certificates, total);

    println!();
    println!("| inventory index ({agents} agents × {per_agent} certificates) | value | target |");
    println!("|---|---|---|");
    println!(
        "| reports applied to the store (making the certificates included) | {:.1} s | |",
        applied.as_secs_f64()
    );
    println!(
        "| index built from the store at start | {:.2} s | |",
        built.as_secs_f64()
    );
    println!(
        "| heap held by the index | {:.1} MB ({:.0} bytes per certificate) | |",
        mb(held),
        held as f64 / total as f64
    );
    println!(
        "| per 100,000 tracked certificates | {:.1} MB | ≤ 150 MB |",
        mb(held) * 100_000.0 / total as f64
    );
    println!(
        "| resident memory it added (allocator overhead included, freed heap given back) | {:.1} MB | |",
        mb(rss_grew)
    );
    println!(
        "| peak while building, over what was live before | {:.1} MB | |",
        mb(peak)
    );
}

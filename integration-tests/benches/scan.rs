//! Scan benchmark: `certfleet-agent scan` over N certificate files, side by side with the
//! operators' way today (a shell loop of `openssl x509 -noout -enddate -in FILE`), plus the
//! packaged agent's memory (profile `agent`): peak RSS of the local scan, RSS when idle on a live
//! link, and peak RSS of `certfleet-agent run` scanning the same N files and reporting them to a
//! controller (issue 10's targets: idle <= 8 MB, peak <= 20 MB while scanning 10,000 files).
//!
//! Run with `./packaging/bench.sh` (builds release binaries first), or
//! `cargo bench -p certfleet-integration-tests --bench scan -- [--files N] [--no-loop]`
//! (`--no-loop` leaves out the openssl loop, which takes minutes at 10,000 files, to measure
//! only the agent).
//! Prints a table; asserts nothing (targets are read by a person, not a timed test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certfleet_integration_tests::sim::{Lifetime, SimCa, dn};

/// A binary built with `profile` (`release`, or `agent`: what the packages ship, see the
/// workspace's Cargo.toml) next to this benchmark's own `release` directory.
fn built_bin(profile: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/scan-… → target/PROFILE/NAME
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(profile)
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release --bins` and `cargo build --profile agent --bin \
         certfleet-agent` first (packaging/bench.sh does)",
        p.display()
    );
    p
}

/// Peak RSS (KiB) of the largest child reaped so far, from getrusage(RUSAGE_CHILDREN).
fn children_maxrss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(0)
}

fn make_files(dir: &Path, n: usize) {
    let ca = SimCa::new(dn(&[("CN", "bench CA")]), Lifetime::days(10, 3650), false).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let days = (i % 400) as i64 - 30; // some expired, many expiring, most fine
        let c = ca
            .issue(
                dn(&[("CN", &format!("host-{i}.example"))]),
                &[&format!("host-{i}.example")],
                Lifetime::days(1, days),
                false,
                false,
            )
            .unwrap();
        std::fs::write(dir.join(format!("cert-{i:05}.pem")), c.cert_pem).unwrap();
    }
}

/// A process's memory from /proc/PID/status, KiB.
#[derive(Clone, Copy, Default)]
struct Rss {
    now: i64,
    peak: i64,
    /// Heap, stacks and other anonymous pages: what the agent allocated.
    anon: i64,
    /// Pages of the binary and libraries the kernel brought in (text, rodata; shared with any
    /// other process mapping the same file).
    file: i64,
}

fn rss_of(pid: u32) -> Rss {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        now: field("VmRSS:"),
        peak: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// The highest RSS of `pid` sampled every 250 ms for `window`: an agent gives back its pages
/// after a report and maps back what its heartbeats touch, so one reading right after a release
/// would flatter it. Idle is what it holds across its heartbeats (every 15 s by default).
fn highest_rss_over(pid: u32, window: Duration) -> Rss {
    let t = Instant::now();
    let mut high = rss_of(pid);
    while t.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        let r = rss_of(pid);
        if r.now > high.now {
            high = r;
        }
    }
    high
}

fn mb(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// How long an idle agent's RSS is watched: three of its heartbeats (15 s apart by default).
const IDLE_WINDOW: Duration = Duration::from_secs(45);
/// How long an agent's RSS is watched after its report: at least one heartbeat.
const AFTER_REPORT_WINDOW: Duration = Duration::from_secs(20);

fn main() {
    let mut files = 10_000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--files") {
        files = args[i + 1].parse().expect("--files N");
    }
    let openssl_loop = !args.iter().any(|a| a == "--no-loop");
    certfleet_common::tls::install_crypto_provider();
    let agent = built_bin("agent", "certfleet-agent");
    let ctl = built_bin("release", "certfleet");
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    eprintln!("generating {files} certificate files…");
    make_files(&certs, files);
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "platforms = [\"files\"]\n[[files]]\npaths = [\"{}/*.pem\"]\n",
            certs.display()
        ),
    )
    .unwrap();

    // 1. certfleet-agent scan (warm the page cache first, as the loop below benefits from it too).
    let _ = Command::new(&agent)
        .args(["scan", "-o", "json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .status();
    let before = children_maxrss_kib();
    let t = Instant::now();
    let out = Command::new(&agent)
        .args(["scan", "-o", "json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let agent_time = t.elapsed();
    let scan_rss = children_maxrss_kib().max(before);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scan JSON");
    let found = report["certificates"].as_array().map(Vec::len).unwrap_or(0);

    // 2. The operators' loop.
    let script = format!(
        "for f in {}/*.pem; do openssl x509 -noout -enddate -in \"$f\"; done > /dev/null",
        certs.display()
    );
    let loop_time = openssl_loop.then(|| {
        let t = Instant::now();
        let st = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success());
        t.elapsed()
    });

    // 3. Idle agent on a live link.
    let data = tmp.path().join("ctl");
    assert!(
        Command::new(&ctl)
            .args(["init", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(&ctl)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ident = data.join("admin");
    let mut token = String::new();
    for _ in 0..50 {
        let o = Command::new(&ctl)
            .args(["--controller", &addr, "--identity"])
            .arg(&ident)
            .args(["token", "create", "--ttl", "5m"])
            .output()
            .unwrap();
        if o.status.success() {
            token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = tmp.path().join("agent-state");
    assert!(
        Command::new(&agent)
            .args([
                "enroll",
                "--controller",
                &addr,
                "--token",
                &token,
                "--state-dir"
            ])
            .arg(&state)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let idle_cfg = tmp.path().join("idle.toml");
    std::fs::write(&idle_cfg, "platforms = []\n").unwrap();
    let mut idle = Command::new(&agent)
        .args(["run", "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&idle_cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Welcomed, reported (nothing), trimmed 2 s later; then three heartbeats.
    std::thread::sleep(Duration::from_secs(8));
    let idle_rss = highest_rss_over(idle.id(), IDLE_WINDOW);
    let _ = idle.kill();
    let _ = idle.wait();

    // 4. The same agent running with the N files: one scan, reported to the controller.
    let run_log = tmp.path().join("agent-run.log");
    let mut running = Command::new(&agent)
        .args(["run", "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&cfg)
        .stderr(std::fs::File::create(&run_log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&run_log)
        .unwrap_or_default()
        .contains("inventory scanned")
    {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the agent never reported its scan: {}",
            std::fs::read_to_string(&run_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report_time = t.elapsed();
    // The report is on its way; give it time to leave, then read the peak and what stays.
    std::thread::sleep(Duration::from_secs(3));
    let run_hwm = rss_of(running.id()).peak;
    std::thread::sleep(Duration::from_secs(2));
    let run_after = highest_rss_over(running.id(), AFTER_REPORT_WINDOW);
    let _ = running.kill();
    let _ = running.wait();
    let _ = server.kill();
    let _ = server.wait();

    println!();
    println!("| measurement ({files} files, {found} certificates found) | value | target |");
    println!("|---|---|---|");
    if let Some(loop_time) = loop_time {
        println!(
            "| openssl x509 -enddate loop | {:.2} s | |",
            loop_time.as_secs_f64()
        );
    }
    println!(
        "| certfleet-agent scan -o json | {:.2} s | |",
        agent_time.as_secs_f64()
    );
    if let Some(loop_time) = loop_time {
        let speedup = loop_time.as_secs_f64() / agent_time.as_secs_f64();
        println!("| speed-up | {speedup:.1}x | >= 20x |");
    }
    println!(
        "| agent peak RSS while scanning (scan -o json) | {:.1} MB | <= 20 MB |",
        scan_rss as f64 / 1024.0
    );
    println!(
        "| agent RSS idle on a live link, highest over {} s of heartbeats (peak since start) | {:.1} MB ({:.1} MB) | <= 8 MB |",
        IDLE_WINDOW.as_secs(),
        mb(idle_rss.now),
        mb(idle_rss.peak)
    );
    println!(
        "| agent idle: anonymous / file-backed (binary, libc) | {:.1} MB / {:.1} MB | |",
        mb(idle_rss.anon),
        mb(idle_rss.file)
    );
    println!(
        "| agent run: peak RSS scanning and reporting (scan took {:.1} s) | {:.1} MB | <= 20 MB |",
        report_time.as_secs_f64(),
        run_hwm as f64 / 1024.0
    );
    println!(
        "| agent run: RSS after the report, highest over {} s (anonymous / file-backed) | {:.1} MB ({:.1} / {:.1}) | |",
        AFTER_REPORT_WINDOW.as_secs(),
        mb(run_after.now),
        mb(run_after.anon),
        mb(run_after.file)
    );
}

//! The controller's store failing for real: a full disk (a small tmpfs), a state directory
//! that disappeared while the CA stayed, and values damaged on disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Controller, bin, free_port, http_get, wait_for};

/// A plain HTTP GET returning (status line, body), whatever the status.
fn http_status(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a disk for real and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until writes fail.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_disk_is_reported_and_the_controller_exits_for_its_supervisor() {
    let tmp = tempfile::tempdir().unwrap();
    // The data directory on a small file system of its own; logs stay outside it.
    let mnt = tmp.path().join("data");
    let _fs = Tmpfs::mount(&mnt, "16m");
    let mut c = Controller::start(
        tmp.path(),
        &[
            "--store-probe-interval",
            "1s",
            "--store-failure-grace",
            "4s",
        ],
    );
    c.cli(&["token", "create", "--ttl", "1h"]);
    let filler = fill(&mnt);
    // Writes until the store notices: sled holds a whole segment already, so small writes
    // still fit; tokens with a 60 kB label do not for long.
    let label = format!("k={}", "x".repeat(60_000));
    let started = Instant::now();
    let (status, body) = wait_for(
        "/healthz to report the store",
        Duration::from_secs(60),
        || {
            let _ = c.cli_as(
                &c.admin(),
                &["token", "create", "--ttl", "1h", "--label", &label],
            );
            http_status(&c.http, "/healthz").filter(|(s, _)| s.contains("503"))
        },
    );
    assert!(
        body.contains("state store writes are failing"),
        "{status} {body}"
    );
    let (rstatus, rbody) = http_status(&c.http, "/readyz").unwrap();
    assert!(rstatus.contains("503"), "{rstatus} {rbody}");
    assert!(rbody.starts_with("not ready"), "{rbody}");
    let metrics = http_status(&c.http, "/metrics").unwrap().1;
    assert!(metrics.contains("store_healthy 0"), "{metrics}");

    // While writes keep failing, the controller exits non-zero so the supervisor restarts it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, addr, admin) = (stop.clone(), c.addr.clone(), c.admin());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = Command::new(bin("certfleet"))
                    .args(["--controller", &addr, "--identity"])
                    .arg(&admin)
                    .args(["token", "create", "--ttl", "1h", "--label", &label])
                    .output();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let code = c.proc.as_mut().unwrap().wait(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(
        code,
        Some(1),
        "after {:?}: {}",
        started.elapsed(),
        c.proc.as_ref().unwrap().log_text()
    );
    assert!(
        c.proc
            .as_ref()
            .unwrap()
            .log_text()
            .contains("state store writes have failed"),
        "{}",
        c.proc.as_ref().unwrap().log_text()
    );

    // Space freed, restarted: it serves again with what it had.
    std::fs::remove_file(filler).unwrap();
    c.serve();
    assert!(http_get(&c.http, "/readyz").is_some_and(|b| b.starts_with("ready")));
    let tokens = c.json(&["token", "list"]);
    assert!(!tokens.as_array().unwrap().is_empty());
}

#[test]
fn a_missing_store_next_to_the_ca_is_refused_unless_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Controller::start(tmp.path(), &[]);
    c.proc.as_mut().unwrap().term();
    let data = c.dir.join("data");
    std::fs::remove_dir_all(data.join("state")).unwrap();
    let mut serve = Command::new(bin("certfleet"));
    serve
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    // Before the fix it started serving an empty store: wait, do not hang.
    let mut p = crate::support::Proc::spawn(serve, tmp.path().join("no-store-serve.log"));
    let code = p.wait(Duration::from_secs(30));
    let err = p.log_text();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no state store"), "{err}");
    assert!(err.contains("--new-store"), "{err}");
    assert!(
        !data.join("state").exists(),
        "a refused start created a store"
    );

    // Deliberately: an empty store, and the old admin is no longer known.
    c.extra = vec!["--new-store".into()];
    c.serve();
    let out = c.cli_as(&c.admin(), &["agents", "list"]);
    assert!(!out.status.success());
}

#[test]
fn a_damaged_store_is_refused_with_what_to_do_and_export_salvages_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Controller::start(tmp.path(), &[]);
    for _ in 0..3 {
        c.cli(&["token", "create", "--ttl", "1h"]);
    }
    c.proc.as_mut().unwrap().term();
    let data = c.dir.join("data");
    // Flip one byte inside a stored token document in sled's own files. sled's log checksum
    // catches it and sled silently drops that record and every later one: the controller used
    // to start on the truncated state.
    let damaged = flip_in_value(&data.join("state"), b"\"expires_at\"");
    assert!(damaged, "no stored token document found in sled's files");

    let mut serve = Command::new(bin("certfleet"));
    serve
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    let mut p = crate::support::Proc::spawn(serve, tmp.path().join("damaged-serve.log"));
    let code = p.wait(Duration::from_secs(30));
    let err = p.log_text();
    assert_eq!(code, Some(1), "a damaged store was served:\n{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains("certfleet store export"), "{err}");

    // The documented way out: export what is readable, import into a fresh store, serve.
    let export = tmp.path().join("salvage.jsonl");
    let out = Command::new(bin("certfleet"))
        .args(["store", "export", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = std::fs::read_to_string(&export).unwrap();
    assert!(lines.contains("\"tree\":\"operators\""), "{lines}");
    std::fs::rename(data.join("state"), tmp.path().join("state.damaged")).unwrap();
    let out = Command::new(bin("certfleet"))
        .args(["store", "import", "--data-dir"])
        .arg(&data)
        .arg("--in")
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.serve();
    c.cli(&["agents", "list"]);
}

/// Flips a byte inside the first value containing `marker` in the files under `dir`.
fn flip_in_value(dir: &Path, marker: &[u8]) -> bool {
    let mut files = vec![dir.to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                files.push(e.unwrap().path());
            }
            continue;
        }
        let mut bytes = std::fs::read(&p).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            // A letter of the key: still JSON-looking, no longer the same document.
            bytes[at + 2] ^= 0x20;
            std::fs::write(&p, bytes).unwrap();
            return true;
        }
    }
    false
}

/// A byte flipped inside one stored value, written through sled itself so that sled's own log
/// checksums hold (bit rot before sled wrote it, a bad RAM page, a buggy writer): sled serves
/// it as a good record, and only the per-value checksum can tell. The controller refuses to
/// start naming the tree and key; `store export` writes every other document, lists the
/// damaged one and exits with the partial-export status (6), not 0.
#[test]
fn a_flipped_byte_inside_one_value_is_named_and_export_exits_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Controller::start(tmp.path(), &[]);
    for _ in 0..3 {
        c.cli(&["token", "create", "--ttl", "1h"]);
    }
    c.proc.as_mut().unwrap().term();
    let state = c.dir.join("data").join("state");
    let (tree, key, stored) = {
        let db = sled::open(&state).unwrap();
        let name = "tokens".to_owned();
        let t = db.open_tree(&name).unwrap();
        let stored = t.len();
        assert!(stored >= 3, "{stored} tokens stored");
        let (k, v) = t.iter().next().unwrap().unwrap();
        let mut v = v.to_vec();
        // A letter of the document's first key: still JSON, no longer the same document.
        let at = v.iter().position(|&b| b == b'"').expect("a JSON document") + 1;
        v[at] ^= 0x20;
        t.insert(&k, v).unwrap();
        db.flush().unwrap();
        let key = match std::str::from_utf8(&k) {
            Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
            _ => format!("0x{}", hex::encode(&k)),
        };
        (name, key, stored)
    };
    let named = format!("tree {tree}, key {key}: checksum mismatch");

    let data = c.dir.join("data");
    let mut serve = Command::new(bin("certfleet"));
    serve
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    let mut p = crate::support::Proc::spawn(serve, tmp.path().join("flipped-serve.log"));
    let code = p.wait(Duration::from_secs(30));
    let err = p.log_text();
    assert_eq!(code, Some(1), "a damaged store was served:\n{err}");
    assert!(
        err.contains(&named),
        "the damaged value is not named:\n{err}"
    );

    let export = tmp.path().join("salvage.jsonl");
    let out = Command::new(bin("certfleet"))
        .args(["store", "export", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(6),
        "a partial export must exit 6: {err}"
    );
    assert!(err.contains("skipped 1 unreadable value(s)"), "{err}");
    assert!(err.contains(&named), "{err}");
    assert!(err.contains("partial export"), "{err}");
    let lines = std::fs::read_to_string(&export).unwrap();
    assert!(lines.contains("\"tree\":\"operators\""), "{lines}");
    let tokens = lines
        .lines()
        .filter(|l| l.contains(&format!("\"tree\":\"{tree}\"")))
        .count();
    assert_eq!(
        tokens,
        stored - 1,
        "every intact token is exported: {lines}"
    );
}

/// The agent's state directory on a full disk (a real 1 MiB tmpfs): a step cannot journal its
/// intent, so it does not act; it fails with an error naming the intent journal and the OS
/// error, the agent stays connected, its key, certificate, journals and intents stay readable,
/// and once space returns the next plan renews for real.
#[test]
fn an_agent_whose_state_dir_is_full_acts_on_nothing_and_recovers() {
    use crate::rotation::{self, index_lines, wait_plan};
    let tmp = tempfile::tempdir().unwrap();
    let mut f = rotation::fleet(tmp.path(), 1, &[]);
    let cfg = f.apps[0].2.clone();
    let pem = f.apps[0].1.path("/etc/app/tls/app.pem");
    let before = std::fs::read(&pem).unwrap();
    let rows = index_lines(&f.ca_root);
    // The enrolled state moves onto the tmpfs; the agent runs from there.
    let small = tmp.path().join("small-state");
    let _fs = Tmpfs::mount(&small, "1m");
    f.procs[1].kill9();
    for e in std::fs::read_dir(&f.states[1]).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), small.join(e.file_name())).unwrap();
        }
    }
    let identity: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    f.procs[1] = f.c.run_agent(&small, Some(&cfg), &[]);
    f.c.wait_connected(2);
    let filler = fill(&small);

    let plan = f.c.json(&[
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 60);
    assert_eq!(done["state"], "failed", "{done:#}");
    let failed: Vec<&serde_json::Value> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{done:#}");
    let msg = failed[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot journal the intent")
            && msg.contains(&small.join("intents.jsonl").display().to_string())
            && msg.contains("No space left on device"),
        "the error does not say what and where: {msg}"
    );
    assert_eq!(std::fs::read(&pem).unwrap(), before, "the host changed");
    assert_eq!(index_lines(&f.ca_root), rows, "the CA signed");
    assert!(
        f.procs[1].child.try_wait().unwrap().is_none(),
        "the agent died"
    );
    for (p, bytes) in &identity {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} changed", p.display());
    }

    // Space returns: the next plan acts, and every journal line is whole.
    std::fs::remove_file(filler).unwrap();
    f.c.wait_connected(2);
    let plan = f.c.json(&[
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 60);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_ne!(std::fs::read(&pem).unwrap(), before);
    assert_eq!(index_lines(&f.ca_root), rows + 1);
    for name in ["journal.jsonl", "intents.jsonl"] {
        let text = std::fs::read_to_string(small.join(name)).unwrap();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .collect();
        assert!(bad.is_empty(), "{name} holds broken lines: {bad:?}");
    }
    f.procs[1].kill9();
}

/// A metric's value (the first sample whose name ends with `name`).
fn metric(m: &str, name: &str) -> i64 {
    m.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            n.ends_with(name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{m}"))
}

/// Tokens with 60 kB labels, created then revoked: every revocation rewrites a large document,
/// the garbage sled never gives back.
fn grow_with_rewrites(c: &Controller, n: usize) {
    let label = format!("k={}", "x".repeat(60_000));
    for _ in 0..n {
        c.cli(&["token", "create", "--ttl", "1h", "--label", &label]);
    }
    for t in c.json(&["token", "list"]).as_array().unwrap() {
        if t["state"]
            .as_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case("active")
        {
            c.cli(&["token", "revoke", t["id"].as_str().unwrap()]);
        }
    }
}

/// Everything an operator can list, for before/after comparisons.
fn snapshot(c: &Controller) -> Vec<serde_json::Value> {
    ["token list", "agents list", "operators list", "plan list"]
        .iter()
        .map(|cmd| {
            let args: Vec<&str> = cmd.split(' ').collect();
            let mut v = c.json(&args);
            // What changes by itself: connection state and heartbeats.
            for a in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = a.as_object_mut() {
                    for k in ["connected", "last_seen", "last_seen_ago"] {
                        o.remove(k);
                    }
                }
            }
            v
        })
        .collect()
}

/// Issue 8: sled never gave back the space of rewritten documents. The store is compacted
/// online (`certfleet store compact`) while agents report and a plan runs: its size drops to
/// near its live data, every record and the plan survive; `serve` then compacts on its own
/// once garbage passes the ratio. Before this, `store compact` did not exist and the size only
/// grew.
#[test]
fn the_store_compacts_online_while_agents_report_and_a_plan_runs() {
    use crate::rotation::{self, wait_plan};
    let tmp = tempfile::tempdir().unwrap();
    let mut f = rotation::fleet(tmp.path(), 2, &["--no-store-auto-compact"]);
    grow_with_rewrites(&f.c, 30);
    let m = f.c.metrics();
    let (grown, live) = (
        metric(&m, "store_size_bytes"),
        metric(&m, "store_live_bytes"),
    );
    eprintln!("grown {grown} live {live}");
    assert!(grown > 2 * live, "{grown} bytes on disk for {live} live");
    let before = snapshot(&f.c);
    let audit_before = f.c.json(&["audit"]).as_array().unwrap().len();

    // A plan renews both application hosts while the store is compacted.
    let plan = f.c.json(&[
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let report = f.c.json(&["store", "compact"]);
    eprintln!("{report}");
    let after = report["after_bytes"].as_i64().unwrap();
    // Smaller, and (below) near the live data. Not a fixed fraction of `grown`: with 60 kB
    // documents rewritten once, `grown` is only ~3 times the live data and a fresh copy ~2.5
    // (a "< 3/4 of grown" bound failed on a loaded CI run at 5,277,192 -> 4,451,062 bytes).
    assert!(after < grown, "{grown} -> {after} bytes");
    // sled keeps 60 kB values inline in its tree nodes and rewrites a node as it fills, so a
    // fresh copy of these documents takes about 2.5 times their size (one segment for small
    // documents: see the store's unit tests).
    assert!(
        after <= 3 * report["live_bytes"].as_i64().unwrap() + (1 << 20),
        "not near the live data: {report}"
    );
    assert!(report["pause_ms"].as_i64().unwrap() < 5_000, "{report}");
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 60);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    for (_, host, _) in &f.apps {
        let pem = std::fs::read_to_string(host.path("/etc/app/tls/app.pem")).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
    }
    let now = snapshot(&f.c);
    assert_eq!(now[0], before[0], "tokens changed");
    assert_eq!(now[2], before[2], "operators changed");
    assert_eq!(now[1].as_array().unwrap().len(), 3, "{:#}", now[1]);
    let audit = f.c.json(&["audit"]);
    let audit = audit.as_array().unwrap();
    assert!(audit.len() > audit_before, "audit entries lost");
    assert!(
        audit.iter().any(|e| e["action"] == "store.compact"),
        "compaction not audited"
    );
    let m = f.c.metrics();
    assert_eq!(metric(&m, "store_compactions"), 1);
    assert_eq!(metric(&m, "store_compaction_failures"), 0);
    assert!(metric(&m, "store_last_compaction_timestamp_seconds") > 0);
    // A viewer may not compact.
    let viewer = tmp.path().join("viewer");
    f.c.cli(&[
        "operators",
        "issue",
        "viewer",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().unwrap(),
    ]);
    let out = f.c.cli_as(&viewer, &["store", "compact"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted with the automatic trigger: more rewrites, and serve compacts on its own.
    f.c.proc.as_mut().unwrap().term();
    f.c.extra = [
        "--store-probe-interval",
        "1s",
        "--store-compact-interval",
        "1s",
        "--store-compact-min-size",
        "65536",
        "--store-compact-ratio",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // (From before the start: agents reporting while the fleet reconnects already rewrite.)
    let restarted = Instant::now();
    f.c.serve();
    f.c.wait_connected(3);
    assert_eq!(
        snapshot(&f.c)[0],
        before[0],
        "tokens changed over the restart"
    );
    grow_with_rewrites(&f.c, 20);
    // Compactions run on their own until the store is near its live data again (one may have
    // run in the middle of the rewrites: the next one, an interval later, catches up).
    let m = wait_for(
        "automatic compactions down to the live data",
        Duration::from_secs(30),
        || {
            let m = f.c.metrics();
            (metric(&m, "store_compactions") >= 1
                && metric(&m, "store_size_bytes") <= 3 * metric(&m, "store_live_bytes") + (1 << 20))
                .then_some(m)
        },
    );
    // At most one per interval (1s).
    assert!(
        metric(&m, "store_compactions") <= restarted.elapsed().as_secs() as i64 + 1,
        "{m}"
    );
    assert_eq!(
        snapshot(&f.c)[0].as_array().unwrap().len(),
        before[0].as_array().unwrap().len() + 20
    );
    assert_eq!(snapshot(&f.c)[1].as_array().unwrap().len(), 3);
}

/// (Re)starts `serve` for `c` with extra environment (the compaction kill hook).
fn serve_with_env(c: &mut Controller, env: &[(&str, &str)]) {
    let mut cmd = Command::new(bin("certfleet"));
    cmd.args(["serve", "--data-dir"])
        .arg(c.dir.join("data"))
        .args(["--listen", &c.addr, "--http", &c.http])
        .args(&c.extra)
        .envs(env.iter().copied());
    let n = std::fs::read_dir(&c.dir).unwrap().count();
    c.proc = Some(crate::support::Proc::spawn(
        cmd,
        c.dir.join(format!("controller-{n}.log")),
    ));
    let http = c.http.clone();
    wait_for("controller /healthz", Duration::from_secs(20), || {
        http_get(&http, "/healthz").filter(|b| b.starts_with("ok"))
    });
}

/// Compaction directories left next to the store.
fn leftovers(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.") && n != "state.lock")
        .collect()
}

/// The controller SIGKILLed at every point of a compaction (the copy done; the copy durable
/// under the pause; the copy renamed ready; the live store moved aside; the swap done, the old
/// store not yet removed): each restart opens a store with every record, finishing or
/// discarding the interrupted compaction. Then a full disk during a compaction: it fails,
/// says why, and leaves the live store serving with every record; once space returns it works.
#[test]
fn a_kill_at_any_point_of_a_compaction_or_a_full_disk_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("data");
    let _fs = Tmpfs::mount(&mnt, "24m");
    let mut c = Controller::start(tmp.path(), &["--no-store-auto-compact"]);
    let data = c.dir.join("data");
    let labels = |c: &Controller| -> Vec<String> {
        let mut l: Vec<String> = c
            .json(&["token", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["labels"].to_string())
            .collect();
        l.sort();
        l
    };
    c.cli(&["token", "create", "--ttl", "1h", "--label", "before=all"]);
    let mut made = 1;
    c.proc.as_mut().unwrap().kill9();
    for point in ["copied", "built", "ready", "old", "swapped"] {
        serve_with_env(&mut c, &[("CERTFLEET_TEST_COMPACT_KILL_AT", point)]);
        assert_eq!(labels(&c).len(), made, "after the kill before {point}");
        assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
        c.cli(&[
            "token",
            "create",
            "--ttl",
            "1h",
            "--label",
            &format!("during={point}"),
        ]);
        made += 1;
        let out = c.cli_as(&c.admin(), &["store", "compact"]);
        assert!(!out.status.success(), "not killed at {point}");
        let p = c.proc.as_mut().unwrap();
        p.wait(Duration::from_secs(10));
        assert!(
            p.child.try_wait().unwrap().is_some(),
            "still running after the kill point {point}"
        );
        assert!(
            p.log_text().contains("CERTFLEET_TEST_COMPACT_KILL_AT"),
            "{}",
            p.log_text()
        );
    }
    c.serve();
    let all = labels(&c);
    assert_eq!(all.len(), made, "{all:?}");
    for point in ["copied", "built", "ready", "old", "swapped"] {
        let want = format!("{{\"during\":\"{point}\"}}");
        assert!(all.contains(&want), "{all:?}");
    }
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));

    // A full disk: the copy cannot be written.
    let filler = fill(&mnt);
    let out = c.cli_as(&c.admin(), &["store", "compact"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("live store is unchanged"), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    assert_eq!(labels(&c), all);
    let m = c.metrics();
    assert_eq!(metric(&m, "store_compaction_failures"), 1, "{m}");
    std::fs::remove_file(filler).unwrap();
    c.cli(&["store", "compact"]);
    assert_eq!(labels(&c), all);
    c.proc.as_mut().unwrap().term();
    c.serve();
    assert_eq!(labels(&c), all);
}

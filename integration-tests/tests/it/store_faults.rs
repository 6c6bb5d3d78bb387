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

//! Fleet scale, the store half (issue 10): bulk enrollment with capped multi-use tokens, and a
//! store written by the schema-2 layout (one document per plan) opened by this controller.
//! One fleet setup for all of it, a few seconds in all.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{Controller, bin};

fn enroll_with(c: &Controller, token: &str, name: &str, dir: &Path) -> Output {
    // A state directory per attempt: a refused name is tried again elsewhere.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Command::new(bin("certfleet-agent"))
        .args([
            "enroll",
            "--controller",
            &c.addr,
            "--token",
            token,
            "--name",
            name,
            "--state-dir",
        ])
        .arg(dir.join(format!("agent-{name}-{n}")))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_capped_multi_use_token_enrolls_a_batch_then_refuses_and_revocation_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);

    // `--count`: one single-use token per host.
    let singles = c.cli(&["token", "create", "--ttl", "10m", "--count", "3"]);
    let singles: Vec<&str> = singles.lines().collect();
    assert_eq!(singles.len(), 3, "{singles:?}");
    assert!(singles[0] != singles[1] && singles[1] != singles[2]);
    let o = enroll_with(&c, singles[2], "single", tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));

    // A multi-use token with a cap of 3: three hosts enroll, the fourth is refused.
    let batch = c.cli(&["token", "create", "--ttl", "10m", "--uses", "3"]);
    let batch = batch.trim();
    for n in 1..=3 {
        let o = enroll_with(&c, batch, &format!("host{n}"), tmp.path());
        assert!(o.status.success(), "host{n}: {}", stderr(&o));
    }
    let o = enroll_with(&c, batch, "host4", tmp.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("used up: 3 of 3"), "{}", stderr(&o));
    // A name stays unique across the batch.
    let spare = c.cli(&["token", "create", "--ttl", "10m", "--uses", "5"]);
    let spare = spare.trim();
    let o = enroll_with(&c, spare, "host1", tmp.path());
    assert!(stderr(&o).contains("already enrolled"), "{}", stderr(&o));

    // Listed with its uses; each enrollment audited with its use number.
    let tokens = c.json(&["token", "list"]);
    let states: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "used").count(),
        2,
        "{tokens}"
    );
    let audit = c.cli(&["audit", "-o", "wide"]);
    assert!(audit.contains("token_use=3/3"), "{audit}");

    // Revoked with uses left: refused from then on.
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "active")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    for id in &id {
        c.cli(&["token", "revoke", id]);
    }
    let o = enroll_with(&c, spare, "host5", tmp.path());
    assert!(stderr(&o).contains("was revoked"), "{}", stderr(&o));
    assert_eq!(c.agents().len(), 4);
}

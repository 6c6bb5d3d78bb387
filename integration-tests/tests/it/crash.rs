//! Fault injection: agents killed at every point between a step's intent and its result, and
//! a controller killed at many random points across plan runs. Each case is judged from the
//! simulated hosts' state (the CA database has one row per signing step, installed files and
//! their copies agree, the unit restarted once, the install step's backup holds the pre-plan
//! certificate and `plan rollback` restores it byte for byte), not only from journals.
//!
//! Agents die by `CERTFLEET_TEST_CRASH_AT=<action>:<point>` (the agent SIGKILLs itself there;
//! see `agent/src/act/intent.rs`), then are started again without it, as a supervisor would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_integration_tests::sim::systemd;
use serde_json::Value;

use crate::rotation::{self, Fleet, index_lines, openssl, plan_json, wait_plan};
use crate::support::{Controller, Proc, wait_for};

/// Every point a `files` plan passes between a step's intent and its answer, and which agent
/// passes it (0: the CA host, 1: the application host).
const FILES_POINTS: &[(&str, usize)] = &[
    ("csr.create:after-intent", 1),
    ("csr.create:before-result", 1),
    ("csr.create:after-result", 1),
    ("ca.sign:after-intent", 0),
    ("ca.sign:before-sign", 0),
    ("ca.sign:after-sign", 0),
    ("ca.sign:before-result", 0),
    ("ca.sign:after-result", 0),
    ("cert.install:after-intent", 1),
    ("cert.install:after-backup", 1),
    ("cert.install:after-replace", 1),
    ("cert.install:after-restart", 1),
    ("cert.install:before-result", 1),
    ("cert.install:after-result", 1),
];

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Waits until the agent killed itself (SIGKILL) at `point`.
fn wait_killed(p: &mut Proc, point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let st = wait_for(
        &format!("the agent to die at {point}"),
        Duration::from_secs(60),
        || p.child.try_wait().unwrap(),
    );
    assert_eq!(
        st.signal(),
        Some(9),
        "the agent did not die at {point}: {st:?}\n{}",
        p.log_text()
    );
}

/// Serial (upper-case hex) of the last row of an `openssl ca` database.
fn last_db_serial(db: &Path) -> String {
    let text = String::from_utf8(read(db)).unwrap();
    let line = text.lines().last().expect("empty CA database");
    line.split('\t').nth(3).unwrap().to_owned()
}

fn cert_serial(pem: &Path) -> String {
    openssl(&["x509", "-in", pem.to_str().unwrap(), "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// The bytes the backup of step `step` keeps for the host file ending in `suffix`.
fn backed_up(state: &Path, step: &str, suffix: &str) -> Vec<u8> {
    let dir = state.join("backups").join(step);
    let m: Value = serde_json::from_slice(&read(&dir.join("manifest.json"))).unwrap();
    let f = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("backup {step} holds no {suffix}: {m:#}"));
    read(&dir.join(f["stored"].as_str().unwrap()))
}

/// No step id twice in any agent's result journal.
fn journals_have_no_duplicates(states: &[PathBuf], when: &str) {
    for st in states {
        let journal = std::fs::read_to_string(st.join("journal.jsonl")).unwrap_or_default();
        let mut ids: Vec<String> = journal
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| e["step_id"].as_str().unwrap().to_owned())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{when}: a step ran twice on {}", st.display());
    }
}

fn step_id<'a>(plan: &'a Value, action: &str, target: &str) -> &'a str {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == action && s["target"].as_str().unwrap().starts_with(target))
        .unwrap_or_else(|| panic!("no {action} step for {target}: {plan:#}"))["id"]
        .as_str()
        .unwrap()
}

fn wait_renewable_expiring(c: &Controller, n: usize) {
    c.cli(&["inventory", "rescan"]);
    wait_for(
        "the pre-plan certificates back in the inventory",
        Duration::from_secs(30),
        || {
            let inv = c.json(&[
                "inventory",
                "--role",
                "file.renewable",
                "--expiring-within",
                "30d",
            ]);
            (inv.as_array().unwrap().len() == n).then_some(())
        },
    );
}

#[test]
fn files_recipe_agent_killed_at_every_point_between_intent_and_result() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f: Fleet = rotation::fleet(tmp.path(), 1, &[]);
    let cfgs = [f.ca_root.join("agent.toml"), f.apps[0].2.clone()];
    let host = f.apps[0].1.clone();
    let db = f.ca_root.join("srv/ca/index.txt");
    let pem = host.path("/etc/app/tls/app.pem");
    let copy = host.path("/etc/app/tls/copy/app.pem");
    let key = host.path("/etc/app/tls/app.key");
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    for &(point, who) in FILES_POINTS {
        let before = read(&pem);
        let before_copy = read(&copy);
        let rows = index_lines(&f.ca_root);
        let starts = systemd::unit(&host, "app").unwrap().starts;

        f.procs[who].kill9();
        f.procs[who] = f.c.run_agent_env(
            &f.states[who],
            Some(&cfgs[who]),
            &[],
            &[("CERTFLEET_TEST_CRASH_AT", point)],
        );
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
        wait_killed(&mut f.procs[who], point);
        f.procs[who] = f.c.run_agent(&f.states[who], Some(&cfgs[who]), &[]);
        let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 90);
        assert_eq!(done["state"], "succeeded", "{point}: {done:#}");

        // One signature, the certificate installed everywhere is the one signed, for the key
        // that never moved; the unit restarted once.
        assert_eq!(
            index_lines(&f.ca_root),
            rows + 1,
            "{point}: the CA signed {} times for one step",
            index_lines(&f.ca_root) - rows
        );
        let now = read(&pem);
        assert_ne!(now, before, "{point}: the certificate was not replaced");
        assert_eq!(read(&copy), now, "{point}: the copy differs");
        assert_eq!(cert_serial(&pem), last_db_serial(&db), "{point}");
        assert_eq!(
            openssl(&["x509", "-in", pem.to_str().unwrap(), "-noout", "-pubkey"]),
            key_pub,
            "{point}"
        );
        assert_eq!(
            systemd::unit(&host, "app").unwrap().starts,
            starts + 1,
            "{point}: the unit was not restarted exactly once"
        );
        // The install step's backup holds the pre-plan certificate, never the new one.
        let install = step_id(&done, "cert.install", "app1");
        assert_eq!(
            backed_up(&f.states[1], install, "/etc/app/tls/app.pem"),
            before,
            "{point}: the backup lost the pre-plan certificate"
        );
        journals_have_no_duplicates(&f.states, point);

        // Rolled back: the pre-plan files, byte for byte.
        f.c.cli(&["plan", "rollback", &id]);
        let back = wait_plan(&f.c, &id, &["rolled_back", "failed"], 60);
        assert_eq!(back["state"], "rolled_back", "{point}: {back:#}");
        assert_eq!(read(&pem), before, "{point}: rollback did not restore");
        assert_eq!(
            read(&copy),
            before_copy,
            "{point}: rollback did not restore"
        );
        wait_renewable_expiring(&f.c, 1);
    }
    drop(f.procs);
}

/// A tiny deterministic generator (xorshift64*), seeded from the clock and printed, so a
/// failing run can be repeated with `CERTFLEET_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CERTFLEET_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("CERTFLEET_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn controller_killed_at_100_random_points_loses_and_doubles_no_step() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f: Fleet = rotation::fleet(tmp.path(), 2, &[]);
    let mut rng = Rng::new();
    let mut kills = 0;
    let mut plans = 0;
    while kills < 100 {
        let before: Vec<Vec<u8>> = f
            .apps
            .iter()
            .map(|a| read(&a.1.path("/etc/app/tls/app.pem")))
            .collect();
        let starts: Vec<u32> = f
            .apps
            .iter()
            .map(|a| systemd::unit(&a.1, "app").unwrap().starts)
            .collect();
        let rows = index_lines(&f.ca_root);
        // Renewed certificates are valid 90 days: a wide window takes them again.
        let plan = f.c.json(&[
            "plan",
            "create",
            "files",
            "--expiring-within",
            "400d",
            "--run",
        ]);
        let id = plan["id"].as_str().unwrap().to_owned();
        loop {
            // Mostly quick kills (inside one step), some later ones so the plan progresses.
            let ms = if rng.below(10) < 7 {
                rng.below(600)
            } else {
                800 + rng.below(2200)
            };
            std::thread::sleep(Duration::from_millis(ms));
            f.c.proc.as_mut().unwrap().kill9();
            kills += 1;
            f.c.serve();
            let p = plan_json(&f.c, &id);
            if p["state"] != "running" {
                break;
            }
        }
        let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 120);
        plans += 1;
        let when = format!("plan {plans} ({id}) after {kills} kills");
        assert_eq!(done["state"], "succeeded", "{when}: {done:#}");
        assert_eq!(
            index_lines(&f.ca_root),
            rows + f.apps.len(),
            "{when}: not one signature per host"
        );
        for (i, (name, host, _)) in f.apps.iter().enumerate() {
            let pem = host.path("/etc/app/tls/app.pem");
            let now = read(&pem);
            assert_ne!(now, before[i], "{when}: {name} lost its renewal");
            assert_eq!(
                read(&host.path("/etc/app/tls/copy/app.pem")),
                now,
                "{when}: {name}"
            );
            assert_eq!(
                systemd::unit(host, "app").unwrap().starts,
                starts[i] + 1,
                "{when}: {name} restarted more than once"
            );
            let install = step_id(&done, "cert.install", name);
            assert_eq!(
                backed_up(&f.states[i + 1], install, "/etc/app/tls/app.pem"),
                before[i],
                "{when}: {name}'s backup"
            );
        }
        journals_have_no_duplicates(&f.states, &when);
    }
    eprintln!("{kills} controller kills across {plans} plans");
    drop(f.procs);
}

/// The oVirt offline host recipe (`csr.create` on the host, `ovirt.enroll_request` signing in
/// the engine's PKI, `cert.install` of the four VDSM copies), agents killed at every point of
/// the engine's signing step and inside the host's install.
#[test]
fn ovirt_hosts_recipe_agents_killed_between_intent_and_result() {
    use crate::ovirt_rotation::{PKI, VDSM_CERT, check_renewed, fleet, hash_tree, not_after};
    const POINTS: &[(&str, usize)] = &[
        ("ovirt.enroll_request:after-intent", 0),
        ("ovirt.enroll_request:before-sign", 0),
        ("ovirt.enroll_request:after-sign", 0),
        ("ovirt.enroll_request:before-result", 0),
        ("csr.create:before-result", 1),
        ("cert.install:after-replace", 1),
        ("cert.install:after-restart", 1),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut f = fleet(dir.path(), &[("kvm01", 20)]);
    let roots = [f.engine.root.clone(), f.hosts["kvm01"].root.clone()];
    let states = [f.c.dir.join("agent-engine"), f.c.dir.join("agent-kvm01")];
    let cfg = dir.path().join("agent.toml");
    let db = f.engine.path(&format!("{PKI}/database.txt"));
    let rows = |db: &Path| String::from_utf8(read(db)).unwrap().lines().count();
    for &(point, who) in POINTS {
        let h = f.hosts["kvm01"].clone();
        let before = hash_tree(&h.root.join("etc"));
        let before_na = not_after(&h.path(VDSM_CERT));
        let rows_before = rows(&db);
        let root = roots[who].display().to_string();
        f._agents[who].kill9();
        f._agents[who] = f.c.run_agent_env(
            &states[who],
            Some(&cfg),
            &["--root", &root],
            &[("CERTFLEET_TEST_CRASH_AT", point)],
        );
        f.c.wait_connected(2);
        let plan = f.c.json(&[
            "plan",
            "create",
            "ovirt-hosts-offline",
            "--expiring-within",
            "30d",
            "--run",
        ]);
        let id = plan["id"].as_str().unwrap().to_owned();
        wait_killed(&mut f._agents[who], point);
        f._agents[who] = f.c.run_agent(&states[who], Some(&cfg), &["--root", &root]);
        let done = crate::ovirt_rotation::wait_plan(&f.c, &id, &["succeeded", "failed"]);
        assert_eq!(done["state"], "succeeded", "{point}: {done:#}");
        assert_eq!(
            rows(&db),
            rows_before + 1,
            "{point}: the engine CA signed more than once for one step"
        );
        assert_eq!(
            cert_serial(&h.path(VDSM_CERT)),
            last_db_serial(&db),
            "{point}"
        );
        check_renewed(&f, "kvm01", before_na);
        f.c.cli(&["plan", "rollback", &id]);
        let back = crate::ovirt_rotation::wait_plan(&f.c, &id, &["rolled_back", "failed"]);
        assert_eq!(back["state"], "rolled_back", "{point}: {back:#}");
        assert_eq!(
            hash_tree(&h.root.join("etc")),
            before,
            "{point}: kvm01 not restored byte for byte"
        );
        f.c.cli(&["inventory", "rescan"]);
        wait_for(
            "kvm01's old certificate back in the inventory",
            Duration::from_secs(30),
            || {
                let inv = f.c.json(&["inventory", "--expiring-within", "30d"]);
                inv.as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["role"] == "ovirt.node.vdsm")
                    .then_some(())
            },
        );
    }
    journals_have_no_duplicates(&states, "ovirt");
}

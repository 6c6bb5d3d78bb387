//! Fault injection: agents killed at every point between a step's intent and its result, and
//! a controller killed at many random points across plan runs. Each case is judged from the
//! simulated hosts' state (the CA database has one row per signing step, installed files and
//! their copies agree, the unit restarted once, the install step's backup holds the pre-plan
//! certificate and `plan rollback` restores it byte for byte), not only from journals.
//!
//! Agents die by `CERTFLEET_TEST_CRASH_AT=<action>:<point>` (the agent SIGKILLs itself there;
//! see `agent/src/act/intent.rs`), then are started again, as a supervisor would. To keep CI
//! time down, one plan passes every kill point of a recipe ([`run_killed_chain`]): each agent
//! is started again set to die at its next point, so each step is resumed from what the
//! previous attempt left, again and again, and the host's state is judged once at the end.

use std::collections::{BTreeMap, VecDeque};
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
    ("cert.install:restarted-unnoted", 1),
    ("cert.install:after-restart", 1),
    ("cert.install:before-result", 1),
    ("cert.install:after-result", 1),
];

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Waits until the agent killed itself (SIGKILL) at `point`.
pub(crate) fn wait_killed(p: &mut Proc, point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let st = wait_for(
        &format!("the agent to die at {point}"),
        // Generous: on a loaded 2-core CI machine, engine-setup before a kill point took
        // over a minute; only a failing run waits this long.
        Duration::from_secs(180),
        || p.child.try_wait().unwrap(),
    );
    assert_eq!(
        st.signal(),
        Some(9),
        "the agent did not die at {point}: {st:?}\n{}",
        p.log_text()
    );
}

/// Runs one plan while agents die at `points` (`(point, agent index)`, each agent's points in
/// the order the plan meets them): every agent with points is started set to die at its first
/// one (`start(i, Some(point))`); `create` then makes and runs the plan and returns its id;
/// each time an agent dies (SIGKILL, at the point it was set to, as its log says) it is
/// started again set to die at its next point, after its last plainly (`start(i, None)`).
/// Returns the plan id once every point was met.
pub(crate) fn run_killed_chain(
    agents: &mut [Proc],
    points: &[(&str, usize)],
    start: &dyn Fn(usize, Option<&str>) -> Proc,
    create: impl FnOnce() -> String,
) -> String {
    let mut queues: BTreeMap<usize, VecDeque<&str>> = BTreeMap::new();
    for &(point, i) in points {
        queues.entry(i).or_default().push_back(point);
    }
    for (&i, q) in &queues {
        agents[i].kill9();
        agents[i] = start(i, q.front().copied());
    }
    let id = create();
    while queues.values().any(|q| !q.is_empty()) {
        let pending: Vec<String> = queues.values().flatten().map(|p| p.to_string()).collect();
        let i = wait_for(
            &format!("an agent to die at its next kill point (left: {pending:?})"),
            Duration::from_secs(90),
            || {
                queues
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(&i, _)| i)
                    .find(|&i| matches!(agents[i].child.try_wait(), Ok(Some(_))))
            },
        );
        let q = queues.get_mut(&i).unwrap();
        let point = q.pop_front().unwrap();
        wait_killed(&mut agents[i], point);
        assert!(
            agents[i].log_text().contains(point),
            "agent {i} died, but not at {point}:\n{}",
            agents[i].log_text()
        );
        agents[i] = start(i, q.front().copied());
    }
    id
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
/// `plan create RECIPE ARGS --run -o json` as admin, repeated until the controller plans it
/// (a restarted agent's report may still be on its way); the plan's id.
pub(crate) fn create_when_planned(c: &Controller, args: &[&str]) -> String {
    let mut all = vec!["plan", "create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--run", "-o", "json"]);
    let plan = wait_for("plan create", Duration::from_secs(60), || {
        let out = c.cli_as(&c.admin(), &all);
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(p) if out.status.success() => Some(p),
            _ => {
                std::thread::sleep(Duration::from_millis(300));
                None
            }
        }
    });
    plan["id"].as_str().unwrap().to_owned()
}

pub(crate) fn backed_up(state: &Path, step: &str, suffix: &str) -> Vec<u8> {
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
pub(crate) fn journals_have_no_duplicates(states: &[PathBuf], when: &str) {
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

/// The id of the plan's `action` step whose target starts with `target` ("" for any).
pub(crate) fn step_id<'a>(plan: &'a Value, action: &str, target: &str) -> &'a str {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == action && s["target"].as_str().unwrap().starts_with(target))
        .unwrap_or_else(|| panic!("no {action} step for {target}: {plan:#}"))["id"]
        .as_str()
        .unwrap()
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
    let point = "every point of csr.create, ca.sign and cert.install";
    let before = read(&pem);
    let before_copy = read(&copy);
    let rows = index_lines(&f.ca_root);
    let starts = systemd::unit(&host, "app").unwrap().starts;

    let (c, states) = (&f.c, f.states.clone());
    let start = |i: usize, at: Option<&str>| match at {
        Some(p) => c.run_agent_env(
            &states[i],
            Some(&cfgs[i]),
            &[],
            &[("CERTFLEET_TEST_CRASH_AT", p)],
        ),
        None => c.run_agent(&states[i], Some(&cfgs[i]), &[]),
    };
    let id = run_killed_chain(&mut f.procs, FILES_POINTS, &start, || {
        c.wait_connected(2);
        let plan = c.json(&[
            "plan",
            "create",
            "files",
            "--expiring-within",
            "30d",
            "--run",
        ]);
        plan["id"].as_str().unwrap().to_owned()
    });
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 120);
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
/// the engine's PKI, `cert.install` of the four VDSM copies, then the serial console's OpenSSH
/// host certificate: `ovirt.vmconsole_sign` on the engine, `ovirt.vmconsole_install` on the
/// host), agents killed at every point of the engine's signing steps and inside the host's
/// installs, all in one plan. Judged from the hosts: one `openssl ca` row and one
/// `ssh-keygen -s` on the engine (a wrapper in the engine's root records each), every copy on
/// the new certificate, the serial console unit restarted exactly once, the backups holding
/// the pre-plan files, and `plan rollback` restoring the host byte for byte.
#[test]
fn ovirt_hosts_recipe_agents_killed_between_intent_and_result() {
    use certfleet_integration_tests::sim::ovirt::{EngineSpec, OvirtVersion};

    use crate::ovirt_rotation::{
        PKI, VDSM_CERT, VMCONSOLE_CERT, check_renewed, check_vmconsole_renewed, fleet_nodes, fqdn,
        hash_tree, not_after,
    };
    const POINTS: &[(&str, usize)] = &[
        ("ovirt.enroll_request:after-intent", 0),
        ("ovirt.enroll_request:before-sign", 0),
        ("ovirt.enroll_request:after-sign", 0),
        ("ovirt.enroll_request:before-result", 0),
        ("ovirt.vmconsole_sign:after-intent", 0),
        ("ovirt.vmconsole_sign:after-backup", 0),
        ("ovirt.vmconsole_sign:before-sign", 0),
        ("ovirt.vmconsole_sign:after-sign", 0),
        ("ovirt.vmconsole_sign:before-result", 0),
        ("csr.create:before-result", 1),
        ("cert.install:after-replace", 1),
        ("cert.install:after-restart", 1),
        ("ovirt.vmconsole_install:after-intent", 1),
        ("ovirt.vmconsole_install:after-backup", 1),
        ("ovirt.vmconsole_install:after-replace", 1),
        ("ovirt.vmconsole_install:restarted-unnoted", 1),
        ("ovirt.vmconsole_install:after-restart", 1),
        ("ovirt.vmconsole_install:before-result", 1),
    ];
    let dir = tempfile::tempdir().unwrap();
    // The serial console certificate was issued with the VDSM one and expires with it.
    let mut f = fleet_nodes(
        dir.path(),
        EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine")),
        &[("kvm01", 20)],
        "",
        &|n| n.vmconsole = n.vdsm,
    );
    // Every `ssh-keygen -s` the engine's agent runs is recorded, then run for real.
    let signs = dir.path().join("ssh-keygen-signs.log");
    let kg = f.engine.path("/usr/bin/ssh-keygen");
    std::fs::remove_file(&kg).unwrap();
    std::fs::write(
        &kg,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -s \"*) echo \"$*\" >> {} ;; esac\nexec /usr/bin/ssh-keygen \"$@\"\n",
            signs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let roots = [f.engine.root.clone(), f.hosts["kvm01"].root.clone()];
    let states = [f.c.dir.join("agent-engine"), f.c.dir.join("agent-kvm01")];
    let cfg = dir.path().join("agent.toml");
    let db = f.engine.path(&format!("{PKI}/database.txt"));
    let rows = |db: &Path| String::from_utf8(read(db)).unwrap().lines().count();
    let h = f.hosts["kvm01"].clone();
    let before = hash_tree(&h.root.join("etc"));
    let before_na = not_after(&h.path(VDSM_CERT));
    let console = h.path(VMCONSOLE_CERT);
    let console_before = read(&console);
    let console_meta = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&console).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    let fq = fqdn("kvm01");
    let engine_cert = f.engine.path(&format!("{PKI}/certs/{fq}-ssh-cert.pub"));
    let engine_cert_before = read(&engine_cert);
    let console_starts = systemd::unit(&h, "ovirt-vmconsole-host-sshd")
        .unwrap()
        .starts;
    let rows_before = rows(&db);

    let c = &f.c;
    let start = |i: usize, at: Option<&str>| {
        let root = roots[i].display().to_string();
        match at {
            Some(p) => c.run_agent_env(
                &states[i],
                Some(&cfg),
                &["--root", &root],
                &[("CERTFLEET_TEST_CRASH_AT", p)],
            ),
            None => c.run_agent(&states[i], Some(&cfg), &["--root", &root]),
        }
    };
    let id = run_killed_chain(&mut f._agents, POINTS, &start, || {
        c.wait_connected(2);
        let plan = c.json(&[
            "plan",
            "create",
            "ovirt-hosts-offline",
            "--expiring-within",
            "30d",
            "--run",
        ]);
        plan["id"].as_str().unwrap().to_owned()
    });
    let point = "every point of the ovirt-hosts-offline recipe";
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
    // The serial console: signed once, installed once (the unit restarted once), the
    // engine's copy is what the host got, the host's backup holds the pre-plan certificate.
    let signed = std::fs::read_to_string(&signs).unwrap_or_default();
    assert_eq!(
        signed.lines().count(),
        1,
        "{point}: the engine ran ssh-keygen -s more than once: {signed}"
    );
    check_vmconsole_renewed(&f, "kvm01", &console_before, console_meta);
    assert_eq!(
        systemd::unit(&h, "ovirt-vmconsole-host-sshd")
            .unwrap()
            .starts,
        console_starts + 1,
        "{point}: ovirt-vmconsole-host-sshd not restarted exactly once"
    );
    let install = step_id(&done, "ovirt.vmconsole_install", "kvm01");
    assert_eq!(
        backed_up(&states[1], install, VMCONSOLE_CERT),
        console_before,
        "{point}: the install step's backup lost the pre-plan serial console certificate"
    );
    let sign = step_id(&done, "ovirt.vmconsole_sign", "kvm01");
    assert_eq!(
        backed_up(&states[0], sign, &format!("certs/{fq}-ssh-cert.pub")),
        engine_cert_before,
        "{point}: the sign step's backup lost the engine's pre-plan certificate"
    );
    journals_have_no_duplicates(&states, point);

    f.c.cli(&["plan", "rollback", &id]);
    let back = crate::ovirt_rotation::wait_plan(&f.c, &id, &["rolled_back", "failed"]);
    assert_eq!(back["state"], "rolled_back", "{point}: {back:#}");
    assert_eq!(
        hash_tree(&h.root.join("etc")),
        before,
        "{point}: kvm01 not restored byte for byte"
    );
}

/// `vsphere.machine_ssl` resumed after its agent died between its backup and the restart
/// (after the backup, with VECS `__MACHINE_CERT` deleted, before the restart, one plan, each
/// resumed attempt killed at the next point; a kill after `entry create` resumes as the last
/// one does, so it is left out to keep the test short): one VMCA issuance per plan (the
/// simulated VMCA's record), VECS, the endpoint, every Lookup Service registration and VCDB's
/// vpx_ext row end on the new certificate; the step's backup keeps the certificate from before
/// the plan; the services run as before. Then `vsphere.retrust_pins` (after Machine SSL was
/// replaced behind certfleet's back) killed after its intent, its backup and its Lookup
/// Service change: everything ends trusting VECS's certificate, nothing is issued.
#[test]
fn vsphere_machine_ssl_agent_killed_between_backup_and_restart() {
    use certfleet_integration_tests::sim::vcsa::{self, VcsaSpec, VcsaVersion};
    use certfleet_integration_tests::sim::{Lifetime, SimHost};

    use crate::vsphere_rotation::{
        assert_services_as_before, fingerprint, getcert, ls_trust, served,
    };
    const POINTS: &[&str] = &[
        "vsphere.machine_ssl:after-backup",
        "vsphere.machine_ssl:after-delete-MACHINE_SSL_CERT",
        "vsphere.machine_ssl:before-restart",
    ];
    vcsa::vmdir::require_slapd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(
        dir.path().join("vcsa"),
        crate::support::bin("certfleet-sim"),
    )
    .unwrap();
    let v = vcsa::build(
        &host,
        &VcsaSpec::new(VcsaVersion::V70, "vcsa01.lab.local")
            .with("machine_ssl", Lifetime::days(720, 10)),
    )
    .unwrap();
    let services = v.start_services().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("vc1");
    let cfg = v.agent_config_path();
    let root = v.host.root.display().to_string();
    let mut agents = vec![c.run_agent(&state, Some(&cfg), &["--root", &root])];
    c.wait_connected(1);
    // The agent, as a supervisor starts it again, set to die at a point or not.
    let start = |_: usize, at: Option<&str>| match at {
        Some(p) => c.run_agent_env(
            &state,
            Some(&cfg),
            &["--root", &root],
            &[("CERTFLEET_TEST_CRASH_AT", p)],
        ),
        None => c.run_agent(&state, Some(&cfg), &["--root", &root]),
    };
    {
        let point = "every point between backup and restart";
        let old = getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
        let issued = v.state().unwrap().vmca_issued.len();
        let points: Vec<(&str, usize)> = POINTS.iter().map(|p| (*p, 0)).collect();
        let id = run_killed_chain(&mut agents, &points, &start, || {
            c.wait_connected(1);
            // The renewed certificate is valid 730 days: a wide window takes it again.
            create_when_planned(
                &c,
                &[
                    "vsphere-machine-ssl",
                    "--agent",
                    "vc1",
                    "--expiring-within",
                    "800d",
                ],
            )
        });
        let done = wait_plan(&c, &id, &["succeeded", "failed"], 180);
        assert_eq!(done["state"], "succeeded", "{point}: {done:#}");

        let st = v.state().unwrap();
        assert_eq!(
            st.vmca_issued.len(),
            issued + 1,
            "{point}: VMCA issued {} certificates for one step",
            st.vmca_issued.len() - issued
        );
        let new = getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
        assert_ne!(fingerprint(&new), fingerprint(&old), "{point}");
        let new_path = dir.path().join("new.pem");
        std::fs::write(&new_path, &new).unwrap();
        let hex = |s: &str| {
            s.trim_start_matches("0x")
                .trim_start_matches('0')
                .to_lowercase()
        };
        assert_eq!(
            hex(&cert_serial(&new_path)),
            hex(st.vmca_issued.last().unwrap()),
            "{point}: VECS holds another certificate than the one VMCA issued"
        );
        assert_eq!(served(&v), fingerprint(&new), "{point}");
        for (uri, fp) in ls_trust(&v) {
            assert_eq!(fp, fingerprint(&new), "{point}: {uri}");
        }
        let rows = vcsa::vcdb::vpx_ext(&st).unwrap();
        let vsan = rows
            .iter()
            .find(|(id, _)| id == "com.vmware.vsan.health")
            .expect("vsan health registered");
        assert_eq!(vsan.1, vcsa::thumbprint(&new).unwrap(), "{point}");
        assert_services_as_before(&v);
        let step = step_id(&done, "vsphere.machine_ssl", "vc1");
        assert_eq!(
            String::from_utf8(backed_up(&state, step, "/old.crt"))
                .unwrap()
                .trim(),
            old.trim(),
            "{point}: the step's backup lost the certificate from before the plan"
        );
        let bkp = st.store("BACKUP_STORE").expect("BACKUP_STORE created");
        assert!(bkp.entries.is_empty(), "{point}: {:?}", bkp.entries);
        journals_have_no_duplicates(std::slice::from_ref(&state), point);
    }
    {
        // `vsphere.retrust_pins` after another renewer replaced Machine SSL in VECS: its agent
        // dies after the intent, after the backup, and between the Lookup Service and the
        // `vpx_ext` change, each resumed attempt at the next. The end: every registration and
        // the vsan-health row trust VECS's certificate, the certificate is unchanged, and the
        // step's backup holds the row from before the plan (the first attempt's).
        let point = "vsphere.retrust_pins";
        let before = getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
        v.renew_machine_ssl_without_restart(Lifetime::days(720, 10))
            .unwrap();
        let now_in_vecs = getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
        let issued = v.state().unwrap().vmca_issued.len();
        let points: Vec<(&str, usize)> = [
            "vsphere.retrust_pins:after-intent",
            "vsphere.retrust_pins:after-backup",
            "vsphere.retrust_pins:after-lookup-service",
        ]
        .iter()
        .map(|p| (*p, 0))
        .collect();
        let id = run_killed_chain(&mut agents, &points, &start, || {
            c.wait_connected(1);
            // The agent reports the stale pins after its rescan.
            create_when_planned(&c, &["pins-retrust", "--agent", "vc1"])
        });
        let done = wait_plan(&c, &id, &["succeeded", "failed"], 180);
        assert_eq!(done["state"], "succeeded", "{point}: {done:#}");
        let st = v.state().unwrap();
        assert_eq!(
            st.vmca_issued.len(),
            issued,
            "{point}: a certificate was issued"
        );
        assert_eq!(
            getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT"),
            now_in_vecs,
            "{point}: the certificate changed"
        );
        for (uri, fp) in ls_trust(&v) {
            assert_eq!(fp, fingerprint(&now_in_vecs), "{point}: {uri}");
        }
        let rows = vcsa::vcdb::vpx_ext(&st).unwrap();
        let vsan = rows
            .iter()
            .find(|(id, _)| id == "com.vmware.vsan.health")
            .expect("vsan health registered");
        assert_eq!(vsan.1, vcsa::thumbprint(&now_in_vecs).unwrap(), "{point}");
        let step = step_id(&done, "vsphere.retrust_pins", "vc1");
        let saved = String::from_utf8(backed_up(&state, step, ".txt")).unwrap();
        assert!(
            saved.contains(&vcsa::thumbprint(&before).unwrap()),
            "{point}: the backup lost the row from before the plan: {saved}"
        );
        journals_have_no_duplicates(std::slice::from_ref(&state), point);
    }
    drop(agents);
    drop(services);
}

/// The oVirt engine recipe after engine-setup renewed both CAs: each host's
/// `ovirt.refresh_host_ca` agent dies at another point (kvm01 after replacing the first copy,
/// kvm02 after the restart); resumed, every copy holds the new CA with its owner and mode,
/// libvirtd restarted exactly once, and the step's backup holds the old CA.
#[test]
fn ovirt_engine_refresh_host_ca_agents_killed_and_resumed() {
    use std::os::unix::fs::MetadataExt;

    use certfleet_integration_tests::sim::Lifetime;
    use certfleet_integration_tests::sim::ovirt::{Engine, EngineSpec, OvirtVersion, setup};

    use crate::ovirt_rotation::{PKI, fleet_spec, fqdn};
    const COPIES: &[&str] = &[
        "/etc/pki/vdsm/certs/cacert.pem",
        "/etc/pki/vdsm/libvirt-spice/ca-cert.pem",
        "/etc/pki/vdsm/libvirt-vnc/ca-cert.pem",
        "/etc/pki/CA/cacert.pem",
        "/etc/pki/vdsm/ovn/ca-cert.pem",
    ];
    const POINTS: &[(&str, &str)] = &[
        ("kvm01", "ovirt.refresh_host_ca:after-replace"),
        ("kvm02", "ovirt.refresh_host_ca:after-restart"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    for ca in ["ca", "qemu-ca"] {
        spec.lifetimes.insert(ca.into(), Lifetime::days(3450, 200));
    }
    let mut f = fleet_spec(dir.path(), spec, &[("kvm01", 1500), ("kvm02", 1500)], "");
    let e = Engine::load(&f.engine).unwrap();
    setup::engine_services(&e).unwrap();
    for h in f.hosts.values() {
        systemd::define_unit(h, "ovirt-imageio", &["/etc/pki/vdsm/certs/vdsmcert.pem"]).unwrap();
    }
    wait_for(
        "the engine CA in the inventory",
        Duration::from_secs(60),
        || {
            f.c.json(&["inventory"])
                .to_string()
                .contains("/etc/pki/ovirt-engine/qemu-ca.pem")
                .then_some(())
        },
    );
    let cfg = dir.path().join("agent.toml");
    let old_ca = read(&f.engine.path(&format!("{PKI}/ca.pem")));
    let mut before = Vec::new();
    for (i, &(name, point)) in POINTS.iter().enumerate() {
        let h = f.hosts[name].clone();
        let perms: Vec<(u32, u32, u32)> = COPIES
            .iter()
            .map(|c| {
                let m = std::fs::metadata(h.path(c)).unwrap();
                (m.mode(), m.uid(), m.gid())
            })
            .collect();
        before.push((perms, systemd::unit(&h, "libvirtd").unwrap().starts));
        let root = h.root.display().to_string();
        let state = f.c.dir.join(format!("agent-{name}"));
        f._agents[i + 1].kill9();
        f._agents[i + 1] = f.c.run_agent_env(
            &state,
            Some(&cfg),
            &["--root", &root],
            &[("CERTFLEET_TEST_CRASH_AT", point)],
        );
    }
    f.c.wait_connected(3);
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-engine",
        "--expiring-within",
        "30d",
        "--failure-budget",
        "0",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    for (i, &(name, point)) in POINTS.iter().enumerate() {
        wait_killed(&mut f._agents[i + 1], point);
        let root = f.hosts[name].root.display().to_string();
        let state = f.c.dir.join(format!("agent-{name}"));
        f._agents[i + 1] = f.c.run_agent(&state, Some(&cfg), &["--root", &root]);
    }
    let done = crate::ovirt_rotation::wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let new_ca = read(&f.engine.path(&format!("{PKI}/ca.pem")));
    assert_ne!(new_ca, old_ca, "engine-setup did not renew the CA");
    let mut states = Vec::new();
    for (i, &(name, point)) in POINTS.iter().enumerate() {
        let h = &f.hosts[name];
        for (j, c) in COPIES.iter().enumerate() {
            assert_eq!(read(&h.path(c)), new_ca, "{point}: {name}{c}");
            let m = std::fs::metadata(h.path(c)).unwrap();
            assert_eq!(
                (m.mode(), m.uid(), m.gid()),
                before[i].0[j],
                "{point}: {name}{c}"
            );
        }
        let v = openssl(&[
            "verify",
            "-CAfile",
            h.path(COPIES[0]).to_str().unwrap(),
            h.path("/etc/pki/vdsm/certs/vdsmcert.pem").to_str().unwrap(),
        ]);
        assert!(v.contains(": OK"), "{point}: {v}");
        assert_eq!(
            systemd::unit(h, "libvirtd").unwrap().starts,
            before[i].1 + 1,
            "{point}: {name}'s libvirtd not restarted exactly once"
        );
        let step = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["action"] == "ovirt.refresh_host_ca" && s["agent"] == name)
            .unwrap_or_else(|| panic!("no refresh step for {name}: {done:#}"));
        assert!(
            step["message"]
                .as_str()
                .unwrap()
                .contains("refreshed 6 CA copies"),
            "{point}: {step:#}"
        );
        let state = f.c.dir.join(format!("agent-{name}"));
        assert_eq!(
            backed_up(&state, step["id"].as_str().unwrap(), COPIES[0]),
            old_ca,
            "{point}: {name}'s backup does not hold the CA from before the plan"
        );
        states.push(state);
    }
    journals_have_no_duplicates(&states, "ovirt-engine");
}

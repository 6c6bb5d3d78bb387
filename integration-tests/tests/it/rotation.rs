//! The rotation engine end to end with the generic `files` recipe: a CA host that signs with
//! the real `openssl ca`, application hosts whose keys never leave them, a simulated systemd
//! whose units refuse to start with an expired certificate. Dry runs, rollbacks, failure
//! budgets, a controller killed mid-run and an agent killed mid-step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::{SimHost, default_sim_bin, demo, systemd};
use serde_json::Value;

use crate::support::{Controller, Proc, bin, wait_for};

fn sh(cwd: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `root` (outside the simulator's private state) with its content.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".sim") {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, &mut v);
    v.sort();
    v
}

pub(crate) struct Fleet {
    pub(crate) c: Controller,
    pub(crate) ca_root: PathBuf,
    pub(crate) apps: Vec<(String, SimHost, PathBuf)>,
    pub(crate) procs: Vec<Proc>,
    pub(crate) states: Vec<PathBuf>,
}

/// A controller, a CA host and `n` application hosts whose certificates expire in 5 days.
pub(crate) fn fleet(dir: &Path, n: usize, serve_args: &[&str]) -> Fleet {
    let c = Controller::start(&dir.join("ctl"), serve_args);
    // The CA host.
    let ca_root = dir.join("ca-host");
    let ca_dir = ca_root.join("srv/ca");
    std::fs::create_dir_all(ca_dir.join("private")).unwrap();
    std::fs::create_dir_all(ca_dir.join("newcerts")).unwrap();
    std::fs::create_dir_all(ca_dir.join("requests")).unwrap();
    std::fs::create_dir_all(ca_dir.join("certs")).unwrap();
    std::fs::write(ca_dir.join("openssl.cnf"), demo::CORP_CA_CONF).unwrap();
    std::fs::write(ca_dir.join("index.txt"), "").unwrap();
    std::fs::write(ca_dir.join("serial"), "1000\n").unwrap();
    sh(
        &ca_dir,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout private/ca.key -out ca.pem -days 3650 -subj '/O=Corp/CN=Corp Issuing CA' 2>/dev/null",
    );
    let ca_cfg = ca_root.join("agent.toml");
    std::fs::write(
        &ca_cfg,
        format!(
            "root = \"{}\"\nplatforms = [\"files\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n[[files]]\npaths = [\"/srv/ca/ca.pem\"]\nrole = \"file.ca\"\n[[cas]]\nname = \"corp\"\ndir = \"/srv/ca\"\ncommand = [\"openssl\", \"ca\", \"-batch\", \"-config\", \"openssl.cnf\", \"-days\", \"{{days}}\", \"-in\", \"{{csr}}\", \"-out\", \"{{out}}\", \"-notext\"]\ndays = 90\n",
            ca_root.display()
        ),
    )
    .unwrap();
    let ca_state = c.enroll("ca-host");
    let mut procs = vec![c.run_agent(&ca_state, Some(&ca_cfg), &[])];
    let mut states = vec![ca_state];
    let mut apps = Vec::new();
    for i in 1..=n {
        let name = format!("app{i}");
        let host = SimHost::new(dir.join(&name), default_sim_bin()).unwrap();
        let tls = host.path("/etc/app/tls");
        std::fs::create_dir_all(&tls).unwrap();
        sh(
            &tls,
            &format!(
                "openssl req -new -newkey rsa:2048 -nodes -keyout app.key -out app.csr -subj '/O=Corp/CN={name}.example' 2>/dev/null && \
                 openssl x509 -req -in app.csr -CA {ca}/ca.pem -CAkey {ca}/private/ca.key -days 5 -set_serial {i} -out app.pem 2>/dev/null && \
                 chmod 600 app.key && rm app.csr",
                ca = ca_dir.display()
            ),
        );
        systemd::define_unit(&host, "app", &["/etc/app/tls/app.pem"]).unwrap();
        let cfg = host.root.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "root = \"{}\"\nplatforms = [\"files\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n[[renew]]\ncert = \"/etc/app/tls/app.pem\"\nkey = \"/etc/app/tls/app.key\"\nissuer = \"corp\"\nrestart = [\"app\"]\nalso = [\"/etc/app/tls/copy/app.pem\"]\n",
                host.root.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(host.path("/etc/app/tls/copy")).unwrap();
        std::fs::copy(tls.join("app.pem"), host.path("/etc/app/tls/copy/app.pem")).unwrap();
        let state = c.enroll(&name);
        procs.push(c.run_agent(&state, Some(&cfg), &[]));
        states.push(state);
        apps.push((name, host, cfg));
    }
    c.wait_connected(n + 1);
    // Every renewable certificate reported.
    wait_for(
        "inventory of the application hosts",
        Duration::from_secs(30),
        || {
            let inv = c.json(&["inventory", "--role", "file.renewable"]);
            (inv.as_array().unwrap().len() == n).then_some(())
        },
    );
    Fleet {
        c,
        ca_root,
        apps,
        procs,
        states,
    }
}

pub(crate) fn plan_json(c: &Controller, id: &str) -> Value {
    c.json(&["plan", "show", id])
}

pub(crate) fn wait_plan(c: &Controller, id: &str, states: &[&str], secs: u64) -> Value {
    wait_for(
        &format!("plan {id} in {states:?}"),
        Duration::from_secs(secs),
        || {
            let p = plan_json(c, id);
            states.contains(&p["state"].as_str().unwrap()).then_some(p)
        },
    )
}

fn create(c: &Controller, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "create", "files", "--expiring-within", "30d"];
    args.extend_from_slice(extra);
    c.json(&args)
}

fn not_after(pem_path: &Path) -> i64 {
    let out = openssl(&[
        "x509",
        "-in",
        pem_path.to_str().unwrap(),
        "-noout",
        "-enddate",
    ]);
    let s = out.trim().trim_start_matches("notAfter=");
    let t = time::PrimitiveDateTime::parse(
        s.trim_end_matches(" GMT"),
        &time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
        ),
    )
    .unwrap();
    t.assume_utc().unix_timestamp()
}

pub(crate) fn index_lines(ca_root: &Path) -> usize {
    std::fs::read_to_string(ca_root.join("srv/ca/index.txt"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn dry_run_touches_nothing_then_the_plan_renews_verifies_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet(tmp.path(), 2, &[]);
    let c = &f.c;
    let roots: Vec<PathBuf> = std::iter::once(f.ca_root.clone())
        .chain(f.apps.iter().map(|a| a.1.root.clone()))
        .collect();
    let before: Vec<_> = roots.iter().map(|r| snapshot(r)).collect();

    // Dry run: the whole graph, nothing touched.
    let dry = create(c, &["--dry-run"]);
    assert_eq!(dry["state"], "dry_run");
    let steps = dry["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6, "{dry:#}");
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "csr.create",
            "ca.sign",
            "cert.install",
            "csr.create",
            "ca.sign",
            "cert.install"
        ]
    );
    assert!(
        steps[0]["commands"][0]
            .as_str()
            .unwrap()
            .contains("openssl req -new -key /etc/app/tls/app.key")
    );
    assert!(
        steps[2]["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/etc/app/tls/copy/app.pem")
    );
    assert_eq!(steps[1]["agent"], "ca-host");
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<_> = roots.iter().map(|r| snapshot(r)).collect();
    assert!(
        before == after,
        "a dry run changed files on a simulated host"
    );
    let out = c.cli_as(&c.admin(), &["plan", "run", dry["id"].as_str().unwrap()]);
    assert!(!out.status.success(), "a dry-run plan must not be runnable");

    // The real thing.
    let originals: Vec<Vec<u8>> = f
        .apps
        .iter()
        .map(|a| std::fs::read(a.1.path("/etc/app/tls/app.pem")).unwrap())
        .collect();
    let keys: Vec<Vec<u8>> = f
        .apps
        .iter()
        .map(|a| std::fs::read(a.1.path("/etc/app/tls/app.key")).unwrap())
        .collect();
    let plan = create(c, &["--run"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(c, &id, &["succeeded", "failed"], 90);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let now = certfleet_common::model::now();
    for (i, (name, host, _)) in f.apps.iter().enumerate() {
        let cert = host.path("/etc/app/tls/app.pem");
        let na = not_after(&cert);
        assert!(
            (89 * 86_400..=91 * 86_400).contains(&(na - now)),
            "{name}: new certificate valid {}s",
            na - now
        );
        let issuer = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-issuer"]);
        assert!(issuer.contains("Corp Issuing CA"), "{issuer}");
        // The key never moved and still matches.
        assert_eq!(
            std::fs::read(host.path("/etc/app/tls/app.key")).unwrap(),
            keys[i]
        );
        let k = openssl(&[
            "pkey",
            "-in",
            host.path("/etc/app/tls/app.key").to_str().unwrap(),
            "-pubout",
        ]);
        let p = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        assert_eq!(k, p);
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            std::fs::read(host.path("/etc/app/tls/copy/app.pem")).unwrap()
        );
        let unit = systemd::unit(host, "app").unwrap();
        assert_eq!(unit.state, "active");
        assert!(unit.starts >= 1);
    }
    assert_eq!(index_lines(&f.ca_root), 2, "exactly one signature per host");
    // Backups are kept and listed on the host.
    let out = Command::new(bin("certfleet-agent"))
        .args(["backups", "-o", "json", "--state-dir"])
        .arg(&f.states[1])
        .output()
        .unwrap();
    let backups: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!backups.as_array().unwrap().is_empty());
    // Inventory follows (agents rescan on request).
    c.cli(&["inventory", "rescan"]);
    wait_for(
        "renewed certificates in the inventory",
        Duration::from_secs(30),
        || {
            let inv = c.json(&[
                "inventory",
                "--role",
                "file.renewable",
                "--expiring-within",
                "30d",
            ]);
            inv.as_array().unwrap().is_empty().then_some(())
        },
    );
    let audit = c.json(&["audit"]);
    let succeeded = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "step.succeeded")
        .count();
    assert_eq!(succeeded, 6);

    // Roll the whole plan back: the old files return byte for byte.
    c.cli(&["plan", "rollback", &id]);
    let rolled = wait_plan(c, &id, &["rolled_back", "failed"], 60);
    assert_eq!(rolled["state"], "rolled_back", "{rolled:#}");
    for (i, (_, host, _)) in f.apps.iter().enumerate() {
        assert_eq!(
            std::fs::read(host.path("/etc/app/tls/app.pem")).unwrap(),
            originals[i]
        );
    }
    drop(f.procs);
}

#[test]
fn a_failed_verification_rolls_back_and_the_failure_budget_halts_the_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet(tmp.path(), 3, &[]);
    let c = &f.c;
    let (_, broken_host, _) = &f.apps[1];
    systemd::set_broken(broken_host, "app", true).unwrap();
    let before_broken = std::fs::read(broken_host.path("/etc/app/tls/app.pem")).unwrap();
    let before_third = std::fs::read(f.apps[2].1.path("/etc/app/tls/app.pem")).unwrap();
    let plan = create(
        c,
        &["--run", "--max-parallel", "1", "--failure-budget", "0"],
    );
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(c, &id, &["succeeded", "failed"], 90);
    assert_eq!(done["state"], "failed");
    assert!(
        done["message"].as_str().unwrap().contains("failure budget"),
        "{done:#}"
    );
    let steps = done["steps"].as_array().unwrap();
    let failed: Vec<&Value> = steps.iter().filter(|s| s["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{done:#}");
    assert_eq!(failed[0]["agent"], "app2");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{}",
        failed[0]["message"]
    );
    // The broken host has its old certificate back, byte for byte; the third was never touched.
    assert!(
        std::fs::read(broken_host.path("/etc/app/tls/app.pem")).unwrap() == before_broken,
        "the broken host did not get its old certificate back: {}",
        c.cli(&["plan", "show", &id, "--output-lines"])
    );
    assert_eq!(
        std::fs::read(f.apps[2].1.path("/etc/app/tls/app.pem")).unwrap(),
        before_third
    );
    assert!(
        steps
            .iter()
            .filter(|s| s["agent"] == "app3")
            .all(|s| s["state"] == "skipped"),
        "{done:#}"
    );
    assert!(
        steps
            .iter()
            .filter(|s| s["target"].as_str().unwrap().starts_with("app1"))
            .all(|s| s["state"] == "succeeded")
    );
    // With a budget of one, the same situation runs to the end.
    let plan = create(
        c,
        &[
            "--run",
            "--failure-budget",
            "1",
            "--agent",
            "app2",
            "--agent",
            "app3",
        ],
    );
    let done = wait_plan(
        c,
        plan["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        90,
    );
    let steps = done["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .filter(|s| s["agent"] == "app3")
            .all(|s| s["state"] == "succeeded"),
        "{done:#}"
    );
    drop(f.procs);
}

#[test]
fn controller_killed_mid_run_resumes_and_no_step_runs_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = fleet(tmp.path(), 3, &[]);
    for (_, host, _) in &f.apps {
        systemd::set_start_delay(host, "app", 1500).unwrap();
    }
    let plan = create(&f.c, &["--run"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    // Kill it while work is in flight: at least one step done, the plan not finished.
    wait_for("a step in flight", Duration::from_secs(60), || {
        let p = plan_json(&f.c, &id);
        let steps = p["steps"].as_array().unwrap();
        (steps.iter().any(|s| s["state"] == "succeeded")
            && steps.iter().any(|s| s["state"] == "dispatched"))
        .then_some(())
    });
    f.c.proc.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(3));
    f.c.serve();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 120);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(index_lines(&f.ca_root), 3, "a CSR was signed twice");
    // Each step id appears at most once in its agent's journal.
    for st in &f.states {
        let journal = std::fs::read_to_string(st.join("journal.jsonl")).unwrap_or_default();
        let mut ids: Vec<String> = journal
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| e["step_id"].as_str().unwrap().to_owned())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "a step ran twice on {}", st.display());
    }
    drop(f.procs);
}

#[test]
fn agent_killed_mid_step_finishes_the_plan_after_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = fleet(tmp.path(), 1, &[]);
    let (_, host, cfg) = &f.apps[0];
    systemd::set_start_delay(host, "app", 4000).unwrap();
    let plan = create(&f.c, &["--run"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    wait_for("install step dispatched", Duration::from_secs(60), || {
        let p = plan_json(&f.c, &id);
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["action"] == "cert.install" && s["state"] == "dispatched")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    f.procs[1].kill9();
    systemd::set_start_delay(host, "app", 0).unwrap();
    let p = plan_json(&f.c, &id);
    assert_eq!(p["state"], "running");
    let again = f.c.run_agent(&f.states[1], Some(cfg), &[]);
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"], 90);
    assert_eq!(done["state"], "succeeded", "{done:#}\n{}", again.log_text());
    assert_eq!(index_lines(&f.ca_root), 1);
    let na = not_after(&host.path("/etc/app/tls/app.pem"));
    assert!(na - certfleet_common::model::now() > 80 * 86_400);
    f.procs.push(again);
}

#[test]
fn a_policy_plans_by_itself_and_never_waits_for_a_window_past_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet(tmp.path(), 1, &[]);
    let c = &f.c;
    // The next 29 February at 03:00 is far beyond a certificate that expires in 5 days.
    c.cli(&[
        "policy",
        "set",
        "file.renewable",
        "--renew-within",
        "30d",
        "--window",
        "0 3 29 2 *",
        "--auto-approve",
    ]);
    let policies = c.json(&["policy", "list"]);
    assert_eq!(policies[0]["role"], "file.renewable");
    let plan = wait_for(
        "a plan created by the policy",
        Duration::from_secs(60),
        || {
            c.json(&["plan", "list"])
                .as_array()
                .unwrap()
                .first()
                .cloned()
        },
    );
    assert_eq!(plan["created_by"], "policy:file.renewable");
    assert!(
        plan["message"].as_str().unwrap().contains("too late"),
        "{plan:#}"
    );
    let done = wait_plan(
        c,
        plan["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        90,
    );
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let na = not_after(&f.apps[0].1.path("/etc/app/tls/app.pem"));
    assert!(na - certfleet_common::model::now() > 80 * 86_400);
    // The engine asked the agents to rescan when the plan finished: the inventory shows it.
    wait_for(
        "renewed certificate in the inventory",
        Duration::from_secs(30),
        || {
            c.json(&[
                "inventory",
                "--role",
                "file.renewable",
                "--expiring-within",
                "30d",
            ])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
        },
    );
    drop(f.procs);
}

#[test]
fn a_canary_waits_for_approval_and_a_window_holds_the_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fleet(tmp.path(), 2, &[]);
    let c = &f.c;
    let second_before = std::fs::read(f.apps[1].1.path("/etc/app/tls/app.pem")).unwrap();

    // Canary: the first target alone, then the plan waits for an operator.
    let plan = create(c, &["--run", "--canary", "--max-parallel", "2"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let waiting = wait_plan(c, &id, &["waiting_canary", "failed", "succeeded"], 90);
    assert_eq!(waiting["state"], "waiting_canary", "{waiting:#}");
    let steps = waiting["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .filter(|s| s["canary"] == true)
            .all(|s| s["state"] == "succeeded")
    );
    assert!(
        steps
            .iter()
            .filter(|s| s["canary"] == false)
            .all(|s| s["state"] == "pending"),
        "{waiting:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::read(f.apps[1].1.path("/etc/app/tls/app.pem")).unwrap(),
        second_before,
        "the second host changed before approval"
    );
    c.cli(&["plan", "approve", &id]);
    let done = wait_plan(c, &id, &["succeeded", "failed"], 90);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_ne!(
        std::fs::read(f.apps[1].1.path("/etc/app/tls/app.pem")).unwrap(),
        second_before
    );

    // A window that is not open holds an operator's plan; abort stops it cleanly.
    let plan = c.json(&["plan", "create", "files", "--run", "--window", "0 3 29 2 *"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let held = wait_for("the window message", Duration::from_secs(20), || {
        let p = plan_json(c, &id);
        p["message"]
            .as_str()
            .unwrap_or("")
            .contains("waiting for the maintenance window")
            .then_some(p)
    });
    assert!(
        held["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "pending"),
        "{held:#}"
    );
    c.cli(&["plan", "abort", &id]);
    let aborted = plan_json(c, &id);
    assert_eq!(aborted["state"], "aborted");
    assert!(
        aborted["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "skipped")
    );
    // The audit log has the steps with their commands.
    let audit = c.json(&["audit"]);
    assert!(audit.as_array().unwrap().iter().any(|e| {
        e["action"] == "step.dispatch"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("openssl req -new -key")
    }));
    drop(f.procs);
}

#[test]
fn an_operator_supplied_issuer_signs_out_of_band() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = fleet(tmp.path(), 1, &[]);
    // This host's certificate comes from a CA no agent holds: the operator signs.
    let (_, host, cfg) = &f.apps[0];
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("issuer = \"corp\"", "issuer = \"operator\"");
    std::fs::write(cfg, text).unwrap();
    f.procs[1].kill9();
    f.procs.push(f.c.run_agent(&f.states[1], Some(cfg), &[]));
    let c = &f.c;
    c.wait_connected(2);
    // Dry runs change nothing: poll with them until the agent's new configuration arrived.
    wait_for(
        "the operator issuer in the plan",
        Duration::from_secs(30),
        || {
            let p = c.json(&[
                "plan",
                "create",
                "files",
                "--expiring-within",
                "30d",
                "--dry-run",
            ]);
            (p["steps"][1]["action"] == "operator.sign").then_some(())
        },
    );
    let plan = c.json(&[
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--run",
    ]);
    assert_eq!(plan["steps"][1]["agent"], "operator");
    let id = plan["id"].as_str().unwrap().to_owned();
    let step = plan["steps"][1]["id"].as_str().unwrap().to_owned();
    let waiting = wait_for("the operator step to wait", Duration::from_secs(30), || {
        let p = plan_json(c, &id);
        (p["steps"][1]["state"] == "dispatched").then_some(p)
    });
    assert!(
        waiting["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("certfleet plan supply"),
        "{waiting:#}"
    );
    // The CSR, signed by the "corporate" CA with the real openssl.
    let csr = c.cli(&["plan", "csr", &id, &step]);
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    let work = tmp.path().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("req.pem"), &csr).unwrap();
    let ca = f.ca_root.join("srv/ca");
    // A certificate for some other key is refused.
    sh(
        &work,
        "openssl req -new -newkey rsa:2048 -nodes -keyout other.key -out other.csr -subj '/CN=other' 2>/dev/null",
    );
    sh(
        &work,
        &format!(
            "openssl x509 -req -in other.csr -CA {c}/ca.pem -CAkey {c}/private/ca.key -days 30 -set_serial 77 -out other.pem 2>/dev/null",
            c = ca.display()
        ),
    );
    let out = c.cli_as(
        &c.admin(),
        &[
            "plan",
            "supply",
            &id,
            &step,
            work.join("other.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not for the key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sh(
        &work,
        &format!(
            "openssl x509 -req -in req.pem -CA {c}/ca.pem -CAkey {c}/private/ca.key -days 200 -set_serial 78 -out signed.pem 2>/dev/null",
            c = ca.display()
        ),
    );
    c.cli(&[
        "plan",
        "supply",
        &id,
        &step,
        work.join("signed.pem").to_str().unwrap(),
    ]);
    let done = wait_plan(c, &id, &["succeeded", "failed"], 60);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let na = not_after(&host.path("/etc/app/tls/app.pem"));
    assert!(na - certfleet_common::model::now() > 190 * 86_400);
    assert_eq!(index_lines(&f.ca_root), 0, "the CA agent signed nothing");
    drop(f.procs);
}

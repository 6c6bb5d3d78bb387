//! `certfleet-agent recover vsphere` and `certfleet-agent recover gke-kubeconfig` with no
//! controller at all (issue 11, "when the controller is down too"): only the agent binary, its
//! config and a state directory, on the simulated hosts of `recover_vsphere` (a VCSA 7.0 whose
//! STS, Machine SSL and every solution user expired five days ago; real slapd vmdir, HTTPS
//! listener, VCDB in PostgreSQL) and `recover_gke` (admin workstations with an expired
//! user-cluster kubeconfig, one with an expired admin kubeconfig too).
//!
//! vSphere, in order: the dry run prints the plan in the GSS order and changes nothing; the run
//! is SIGKILLed right after the intent of the restart that follows the STS replacement; the
//! repeated command resumes that plan (the gate and the STS step answered from the journal, the
//! restart resumed) but VECS refuses the new Machine SSL entry once, so that step fails, rolls
//! back and keeps the plan; the next repeat retries it (generation 2) without repeating the
//! finished steps (the STS replaced once), finishes, and login and TLS work again, a local scan
//! shows nothing expired, the audit has the run; a further run has nothing to do; then the VMCA
//! root expires and the command refuses (exit 3) naming it, changing nothing. GKE: the workstation whose
//! admin kubeconfig expired is refused (exit 3) naming it; on the other, a run killed during
//! the install is finished by the repeat without fetching again (backup, owner and mode kept,
//! kubectl works), and a further repeat has nothing to fetch.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use certfleet_integration_tests::sim::SimHost;
use certfleet_integration_tests::sim::vcsa;
use certfleet_integration_tests::sim::vcsa::VcsaVersion;

use crate::recover_gke::{expired_workstation, kubectl_version};
use crate::recover_vsphere::{expire_vmca_root, expired_vcsa_spec, tls_verifies};
use crate::support;
use crate::vsphere_rotation::{assert_services_as_before, hash_root, login};

/// `certfleet-agent ARGS --config CFG --state-dir STATE`, optionally with a crash point.
fn agent(args: &[&str], cfg: &Path, state: &Path, crash: Option<&str>) -> Output {
    let mut cmd = Command::new(support::bin("certfleet-agent"));
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(state)
        .env_remove("CERTFLEET_TEST_CRASH_AT");
    if let Some(c) = crash {
        cmd.env("CERTFLEET_TEST_CRASH_AT", c);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Lines of `STATE/FILE` (a JSON-lines journal) whose `key` is `value`.
fn count(state: &Path, file: &str, key: &str, value: &str) -> usize {
    std::fs::read_to_string(state.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v[key] == value)
        .count()
}

/// `(role, not_after)` of every vSphere certificate a local `certfleet-agent scan` finds.
fn local_scan(cfg: &Path) -> Vec<(String, i64)> {
    let o = Command::new(support::bin("certfleet-agent"))
        .args(["scan", "-o", "json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let certs = v["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no certificates in the scan: {v:#}"));
    certs
        .iter()
        .map(|c| {
            (
                c["role"].as_str().unwrap_or_default().to_owned(),
                c["not_after"]
                    .as_str()
                    .and_then(certfleet_common::model::parse_time)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn recovered_kinds_expired(cfg: &Path) -> Vec<String> {
    let now = certfleet_common::model::now();
    local_scan(cfg)
        .into_iter()
        .filter(|(role, na)| {
            (role.starts_with("vsphere.sts_signing")
                || role == "vsphere.machine_ssl"
                || role.starts_with("vsphere.solution_user."))
                && *na <= now
        })
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn local_recover_vsphere_resumes_after_a_kill_and_gke_kubeconfig_with_no_controller() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vcsa::vmdir::require_slapd().unwrap();
    let host = SimHost::new(d.join("vc1"), support::bin("certfleet-sim")).unwrap();
    let v = vcsa::build(&host, &expired_vcsa_spec("vc1.lab.local")).unwrap();
    let _services = v.start_services().unwrap();
    let cfg = v.agent_config_path();
    let state = d.join("vc1-state");
    let recover = |extra: &[&str], crash: Option<&str>| {
        let mut a = vec!["recover", "vsphere"];
        a.extend(extra);
        agent(&a, &cfg, &state, crash)
    };
    assert!(!login(&v).0, "the expired VCSA accepts logins");
    assert!(!tls_verifies(&v).0, "the expired Machine SSL verifies");
    let before = recovered_kinds_expired(&cfg);
    assert!(
        before.iter().any(|r| r == "vsphere.sts_signing")
            && before.iter().any(|r| r == "vsphere.solution_user.wcp"),
        "{before:?}"
    );

    // 1. Dry run: the plan in the GSS order, nothing changed.
    let hash = hash_root(&v.host.root);
    let o = recover(&["--dry-run"], None);
    let t = text(&o);
    eprintln!("dry run:\n{t}");
    assert_eq!(o.status.code(), Some(0), "{t}");
    let at = |needle: &str| {
        t.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the plan: {t}"))
    };
    assert!(
        at("(vsphere.replication_gate)") < at("(vsphere.sts)")
            && at("(vsphere.sts)") < at("(vsphere.machine_ssl)")
            && at("(vsphere.machine_ssl)") < at("(vsphere.clean_backup_store)")
            && at("(vsphere.clean_backup_store)") < at("(vsphere.solution_users)"),
        "{t}"
    );
    assert!(
        t.contains("solution user wcp EXPIRED")
            && t.contains("dry run: nothing changed")
            && t.contains("wall time"),
        "{t}"
    );
    assert_eq!(
        hash_root(&v.host.root),
        hash,
        "the dry run changed the host"
    );
    assert!(!login(&v).0);

    // 2. Killed right after the intent of the restart that follows the STS replacement.
    let o = recover(&[], Some("vsphere.restart_services:after-intent"));
    assert_eq!(o.status.signal(), Some(9), "not killed: {}", text(&o));
    assert!(state.join("recover-vsphere-plan.json").exists());
    assert_eq!(count(&state, "intents.jsonl", "action", "vsphere.sts"), 1);

    // 3. Resumed, but VECS refuses the new Machine SSL entry once: that step fails and rolls
    // back, the plan stays, and the command says how to go on.
    v.update(|st| st.deny_create.push("MACHINE_SSL_CERT".into()))
        .unwrap();
    let o = recover(&[], None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("resuming the recovery begun at")
            && t.contains("(vsphere.sts) already ran")
            && t.contains("run the command again to retry from this step"),
        "{t}"
    );
    assert!(state.join("recover-vsphere-plan.json").exists());

    // 4. Once more: finished steps from the journal (the STS replaced once, the restart after
    // it not again), the failed Machine SSL step retried, everything verified.
    let o = recover(&[], None);
    let t = text(&o);
    eprintln!("resumed run:\n{t}");
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("resuming the recovery begun at"), "{t}");
    assert!(
        t.contains("(vsphere.replication_gate) already ran")
            && t.contains("(vsphere.sts) already ran")
            && t.contains("(vsphere.restart_services) already ran"),
        "{t}"
    );
    // The Machine SSL step: generation 1 failed, generation 2 succeeded.
    let journal = std::fs::read_to_string(state.join("journal.jsonl")).unwrap();
    let ms: Vec<(String, bool)> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["step_id"]
                .as_str()
                .is_some_and(|s| s.starts_with("recover-vsphere-machine-ssl-"))
        })
        .map(|v| {
            let id = v["step_id"].as_str().unwrap();
            (id[id.len() - 2..].to_owned(), v["ok"] == true)
        })
        .collect();
    assert_eq!(
        ms,
        [("-1".to_owned(), false), ("-2".to_owned(), true)],
        "{journal}"
    );
    assert!(t.contains("recovered:") && t.contains("verified:"), "{t}");
    // The simulated node has a replication partner: the STS change is domain-wide.
    assert!(
        t.contains("restart every other vCenter of this SSO domain now")
            && t.contains("psc2.lab.local")
            && t.contains("service-control --stop --all && service-control --start --all"),
        "{t}"
    );
    assert!(t.contains("wall time"), "{t}");
    assert_eq!(
        count(&state, "intents.jsonl", "action", "vsphere.sts"),
        1,
        "the STS step ran twice"
    );
    assert!(!state.join("recover-vsphere-plan.json").exists());
    let (ok, out) = login(&v);
    assert!(ok, "login after the recovery: {out}");
    let (ok, out) = tls_verifies(&v);
    assert!(ok, "TLS after the recovery: {out}");
    assert_eq!(recovered_kinds_expired(&cfg), Vec::<String>::new());
    for user in VcsaVersion::V70.solution_users() {
        let pem = crate::vsphere_rotation::getcert(&v, user, user);
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
        let rec = certfleet_common::x509::parse_der(&der).unwrap();
        assert!(
            rec.not_after > certfleet_common::model::now() + 365 * 86_400,
            "{user}: {rec:?}"
        );
    }
    assert_services_as_before(&v);
    let audit = std::fs::read_to_string(state.join("recover-audit.jsonl")).unwrap();
    for what in [
        "recover vsphere dry run",
        "recover vsphere start",
        "recover vsphere done",
    ] {
        assert!(audit.contains(what), "{what} not audited: {audit}");
    }

    // 5. Nothing left to do.
    let o = recover(&[], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to recover"), "{}", text(&o));

    // 6. The VMCA root expires: "reset all" here too, with no controller: a new root, then
    // STS, Machine SSL and every solution user issued again from it (all valid, none due),
    // logins and TLS against the new root work.
    expire_vmca_root(&v);
    let old_root = std::fs::read_to_string(v.host.path(vcsa::VMCA_ROOT)).unwrap();
    let o = recover(&[], None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("vsphere.vmca_root"), "{t}");
    let new_root = std::fs::read_to_string(v.host.path(vcsa::VMCA_ROOT)).unwrap();
    assert_ne!(new_root, old_root, "{t}");
    assert!(login(&v).0, "login after the local reset all");
    let (ok, out) = tls_verifies(&v);
    assert!(ok, "TLS against the new root: {out}");
    let root_file = v.host.path(vcsa::VMCA_ROOT);
    for user in VcsaVersion::V70.solution_users() {
        let pem = crate::vsphere_rotation::getcert(&v, user, user);
        let f = d.join(format!("{user}.pem"));
        std::fs::write(&f, pem).unwrap();
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root_file)
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{user}: {}", text(&out));
    }
    assert_services_as_before(&v);

    // GKE: ws2's admin kubeconfig expired too: refused, naming it; ws is recovered.
    let w = expired_workstation(d, "ws", false);
    let w2 = expired_workstation(d, "ws2", true);
    let kc1 = w.ws.users[0].kubeconfig.clone();
    let kc2 = w.ws.users[1].kubeconfig.clone();
    let (old1, old2) = (std::fs::read(&kc1).unwrap(), std::fs::read(&kc2).unwrap());
    let ws_state = d.join("ws-state");
    let ws2_state = d.join("ws2-state");
    let o = agent(&["recover", "gke-kubeconfig"], &w2.config, &ws2_state, None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(
        t.contains(
            "the admin kubeconfig /home/ubuntu/kubeconfig has a client certificate that expired"
        ),
        "{t}"
    );
    let o = agent(
        &["recover", "gke-kubeconfig", "--cluster", "nope"],
        &w.config,
        &ws_state,
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("clusters: user-cluster-1, user-cluster-2"),
        "{}",
        text(&o)
    );
    let o = agent(
        &["recover", "gke-kubeconfig", "--dry-run"],
        &w.config,
        &ws_state,
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("get secret admin -n user-cluster-1")
            && !text(&o).contains("get secret admin -n user-cluster-2"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&kc1).unwrap(), old1, "the dry run changed it");
    assert!(!kubectl_version(&w.host, &kc1).status.success());
    // Killed once the install's intent is down; the repeat installs the kubeconfig already
    // fetched (not fetched twice).
    let o = agent(
        &["recover", "gke-kubeconfig"],
        &w.config,
        &ws_state,
        Some("kubeconfig.install:after-intent"),
    );
    assert_eq!(o.status.signal(), Some(9), "not killed: {}", text(&o));
    let o = agent(&["recover", "gke-kubeconfig"], &w.config, &ws_state, None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("(gke.fetch_kubeconfig) already ran"), "{t}");
    assert_eq!(
        count(&ws_state, "intents.jsonl", "action", "gke.fetch_kubeconfig"),
        1,
        "fetched twice"
    );
    assert!(
        t.contains("recovered: 1 kubeconfig(s)") && t.contains("wall time"),
        "{t}"
    );
    let o = kubectl_version(&w.host, &kc1);
    assert!(
        o.status.success(),
        "kubectl after the recovery: {}",
        text(&o)
    );
    let m = std::fs::metadata(&kc1).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o600));
    assert_eq!(
        std::fs::read(&kc2).unwrap(),
        old2,
        "the healthy copy was touched"
    );
    let o = Command::new(support::bin("certfleet-agent"))
        .args(["backups", "-o", "json", "--state-dir"])
        .arg(&ws_state)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("user-cluster-1-kubeconfig"),
        "no backup of the kubeconfig: {}",
        text(&o)
    );
    let o = agent(&["recover", "gke-kubeconfig"], &w.config, &ws_state, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to fetch"), "{}", text(&o));
}
